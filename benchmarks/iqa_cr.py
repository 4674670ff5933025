"""IQA-CR on real photos: IQA-CR vs IQA-CR-Q vs IQA-CR-C vs the MTL-modified single-task
baselines vs the floor, on ../shared/data/clive-dev under the IQA-CR split protocol.

    python benchmarks/iqa_cr.py [--seeds 5] [--models iqa-cr,iqa-cr-q,...] [--epochs 15]
                                [--cache-stages 6] [--device cuda] [--ship]

The defaults are the settings of benchmarks/results/iqa_cr.md (there run on a GPU by
benchmarks/run_all_gpu.sh; on a CPU the same takes hours).

Content labels: CLIVE has none, so the content head trains and is scored against the
pseudo-labels of `contentiqa label-content` (benchmarks/results/clive_content_labels.csv;
made here if absent). Each model trains with the same TrainConfig on each seed's train part,
early-stops on its val part and is measured on its test part. Runs resume: a finished
(model, seed) is read from benchmarks/runs/ instead of retrained.

--ship then trains --ship-model with these settings on all of clive-dev (with 10 % held out
for early stopping) and writes src/contentiqa/weights/<model>_clive.pt + model card (the
shipped iqa-cr's settings: benchmarks/iqa_cr_sweep.sh).
Writes benchmarks/results/iqa_cr.json and iqa_cr.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common import command_line, CACHE, RESULTS, ROOT, clive_splits, md_table, require_clive, write_results

RUNS = ROOT / "benchmarks" / "runs"
LABELS = RESULTS / "clive_content_labels.csv"
MODELS = ["iqa-cr", "iqa-cr-q", "iqa-cr-c", "mtl-transformer", "mtl-pooled"]


def labelled_table(csv: Path):
    """clive-dev with pseudo content labels (made once with `contentiqa label-content`)."""
    import pandas as pd

    from contentiqa.data import load_dataset

    ds = load_dataset("csv", csv)
    if not LABELS.is_file():
        from contentiqa.cli.main import main as cli

        rc = cli(["label-content", str(csv), "--out", str(LABELS), "--quiet"])
        if rc != 0:
            raise SystemExit("label-content failed")
    labels = pd.read_csv(LABELS)
    # Joined on the file name (unique in clive-dev): the data folder may live anywhere.
    labels["key"] = [Path(p).name for p in labels["image"]]
    table = ds.table.drop(columns=[c for c in ("category",) if c in ds.table])
    table["key"] = [Path(p).name for p in table["image"]]
    if labels["key"].duplicated().any() or table["key"].duplicated().any():
        raise SystemExit(f"{LABELS}: image file names are not unique; cannot join the labels")
    table = table.merge(labels[["key", "category", "category_confidence"]], on="key", how="left").drop(columns="key")
    if table["category"].isna().any():
        raise SystemExit(f"{LABELS} lacks labels for {int(table['category'].isna().sum())} images; delete it to relabel")
    return ds, table


def train_one(name: str, seed: int, split, table, scale, train_kw: dict, model_kw: dict, tag: str) -> dict:
    from contentiqa.models import create_model
    from contentiqa.training.config import TrainConfig
    from contentiqa.training.trainer import Trainer

    out = RUNS / tag / f"{name}_seed{seed}"
    done = out / "test_metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    parts = {p: table.iloc[split.indices(table, p)] for p in ("train", "val", "test")}
    import torch

    torch.manual_seed(seed)  # model initialisation, repeatable per seed
    model = create_model(name, pretrained=False, **model_kw)
    cfg = TrainConfig(seed=seed, **train_kw)
    t0 = time.time()
    trainer = Trainer(model, parts["train"], parts["val"], scale, cfg, out, progress=False, cache_dir=CACHE)
    best = trainer.fit(resume=True)
    train_s = time.time() - t0
    # Test on whole images through the cached frozen stages (identical to the image path).
    res = trainer.evaluate_table(parts["test"], trainer.load_best())
    res.update(seed=seed, best_epoch=best.get("epoch"), val_srocc=best.get("val_srocc"), val_accuracy=best.get("val_accuracy"),
               epochs_run=len(trainer.history), train_seconds=round(train_s, 1))
    from contentiqa.utils.io import atomic_write_text

    atomic_write_text(done, json.dumps(res, indent=1))
    return res


def report(results: dict, args, split_file, train_kw: dict, model_kw: dict) -> str:
    import torch

    from contentiqa.metrics import format_mean_std

    floor = json.loads((RESULTS / "floor.json").read_text()) if (RESULTS / "floor.json").is_file() else None
    rows = []
    for name, res in results.items():
        f = format_mean_std(res["summary"])
        rows.append([name, str(len(res["runs"])), f.get("plcc", "–"), f.get("srocc", "–"), f.get("rmse", "–"), f.get("accuracy", "–")])
    if floor:
        ff = format_mean_std({k: v for k, v in floor["summary"].items()})
        rows.append(["floor (lite0 GAP + ridge)", str(floor["summary"]["srocc"]["n"]), ff["plcc"], ff["srocc"], ff["rmse"], "–"])
    md = (
        "# IQA-CR on CLIVE (clive-dev, 878 photos, IQA-CR protocol 80/10/10)\n\n"
        + md_table(["model", "splits", "PLCC", "SROCC", "RMSE (0-100)", "content acc. (pseudo-labels)"], rows)
        + f"\nTest parts of seeds 0..{args.seeds - 1} ({split_file.name}; the floor row uses seeds 0..9 of the same file); "
        f"mean ± std. Backbone efficientnet_lite0 (ImageNet, offline), first {args.cache_stages} stages frozen and cached, "
        f"later stages fine-tuned; native resolution, random {args.crop}-px crops + flips; AdamW lr {args.lr} "
        f"(backbone x{args.backbone_lr_scale:g}), "
        f"batch {args.batch_size}, ≤{args.epochs} epochs, early stop on val SROCC (patience {args.patience}); "
        f"loss smooth-L1 + {args.category_weight:g} x focal ({args.loss_weighting} weighting).\n"
        f"Command: `{command_line()}`\n"
    )
    write_results(args.results_name, {"protocol": "iqa-cr", "seeds": args.seeds, "train_config": train_kw, "model_args": model_kw,
                             "results": results, "threads": torch.get_num_threads()}, md)
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--cache-stages", type=int, default=6)
    ap.add_argument("--crop", type=int, default=448)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backbone-lr-scale", type=float, default=0.3)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--tag", default=None, help="run folder name under benchmarks/runs (default from settings)")
    ap.add_argument("--model-args", default="{}", help="JSON of extra model arguments for every model")
    ap.add_argument("--ship", action="store_true", help="after the benchmark, train and ship a model on all of clive-dev")
    ap.add_argument("--ship-model", default="iqa-cr", help="which model --ship trains (iqa-cr or iqa-cr-q)")
    ap.add_argument("--category-weight", type=float, default=0.2, help="focal (content) loss weight")
    ap.add_argument("--loss-weighting", default="sum", choices=["sum", "dwa", "uncertainty"])
    ap.add_argument("--results-name", default="iqa_cr", help="results file stem under benchmarks/results")
    ap.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda)")
    ap.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    args = ap.parse_args()

    from contentiqa.metrics import mean_std

    csv = require_clive()
    ds, table = labelled_table(csv)
    splits, split_file = clive_splits("iqa-cr", range(args.seeds), table)
    train_kw = dict(epochs=args.epochs, cache_stages=args.cache_stages, crop=args.crop, lr=args.lr,
                    backbone_lr_scale=args.backbone_lr_scale, batch_size=args.batch_size, patience=args.patience,
                    category_weight=args.category_weight, loss_weighting=args.loss_weighting,
                    device=args.device, num_workers=args.workers)
    model_kw = json.loads(args.model_args)
    tag = args.tag or f"iqa_cr_c{args.cache_stages}_e{args.epochs}_bb{args.backbone_lr_scale:g}"
    if (args.category_weight, args.loss_weighting) != (0.2, "sum"):
        tag += f"_cw{args.category_weight:g}_{args.loss_weighting}"
    results = {}
    for name in args.models.split(","):
        runs = []
        for split in splits:
            t = time.time()
            r = train_one(name, split.seed, split, table, ds.scale, train_kw, model_kw, tag)
            runs.append(r)
            print(f"{name} seed {split.seed}: test SROCC {r.get('srocc', float('nan')):.3f} PLCC {r.get('plcc', float('nan')):.3f} "
                  f"acc {r.get('accuracy', float('nan')):.3f} ({time.time() - t:.0f}s)", flush=True)
        keys = [k for k in ("plcc", "srocc", "krocc", "rmse", "accuracy") if k in runs[0]]
        results[name] = {"runs": runs, "summary": mean_std([{k: r[k] for k in keys} for r in runs])}
        md = report(results, args, split_file, train_kw, model_kw)  # rewritten after each model: partial runs stay visible
    if args.ship:
        from ship import ship_model

        ship_model(args.ship_model, table, ds.scale, splits[0], train_kw, model_kw, results, md)


if __name__ == "__main__":
    main()
