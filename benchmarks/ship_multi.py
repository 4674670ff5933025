"""Train one row of a multi-dataset experiment config on all its training data and ship it as a
weights tag inside the package, with a model card.

    CONTENTIQA_BIQ2021=/path/to/BIQ2021 CONTENTIQA_CACHE=/path/to/cache \\
        python benchmarks/ship_multi.py configs/multi_clive_biq2021.yaml --row "IE-IQA, normalised" \\
            --tag clive-biq2021 [--results benchmarks/results/multi_clive_biq2021.json]

Every image of each training set trains the model except, where a set has a test part of its
own (BIQ2021's official test split), that test part, and a validation part for early stopping
(split seed 0's). Sets whose protocol makes random test parts (clive-dev) train on all their
images: the figures on the model card come from the experiment's held-out test parts (same
recipe), not from this run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import ROOT, command_line, provenance

WEIGHTS = ROOT / "src" / "contentiqa" / "weights"


def _all_training_data(cfg):
    """(train, val or None, scales, description) over every training set of ``cfg``: all of a
    set's images train, except its own official test part and split seed 0's validation part."""
    from contentiqa.data import make_splits
    from contentiqa.experiments.runner import load_data

    train_parts, val_parts, used, scales = [], [], [], {}
    for spec in cfg.train_sets:
        table, scale = load_data(spec, Path("runs") / "ship", progress=True)
        scales[spec.label] = scale
        if cfg.protocol_of(spec) == "official":
            split = make_splits(table, "official", 0)
            tr, va = split.indices(table, "train"), split.indices(table, "val")
        else:  # random test parts: all images train (figures come from the experiment)
            tr, va = np.arange(len(table)), np.array([], dtype=int)
        train_parts.append(table.iloc[tr].assign(dataset=spec.label))
        if len(va):
            val_parts.append(table.iloc[va].assign(dataset=spec.label))
        used.append(f"{spec.label}: {len(tr)} images" + (f" (+{len(va)} for early stopping)" if len(va) else ""))
    val = pd.concat(val_parts, ignore_index=True) if val_parts else None
    return pd.concat(train_parts, ignore_index=True), val, scales, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--row", required=True, help="the config's row to train")
    ap.add_argument("--tag", required=True, help="weights tag, e.g. clive-biq2021 -> <model>_clive-biq2021.pt")
    ap.add_argument("--results", type=Path, default=None, help="the experiment's results.json (figures for the card)")
    ap.add_argument("--cache", default=None, help="frozen-encoding cache (default: the config's cache_dir)")
    ap.add_argument("--from-run", type=Path, default=None, metavar="RUN_DIR",
                    help="ship the best.pt of this experiment split (runs/<row>/seed<S>) instead of training on all "
                         "the data (when the full run would take too long: the card then says which images it saw)")
    args = ap.parse_args()

    import torch

    from contentiqa.experiments import load_config
    from contentiqa.models import create_model
    from contentiqa.models.registry import model_entry, save_checkpoint
    from contentiqa.training.config import TrainConfig
    from contentiqa.training.trainer import Trainer
    from contentiqa.utils.io import atomic_write_text

    cfg = load_config(args.config)
    run = next((r for r in cfg.runs if r.name == args.row), None)
    if run is None:
        raise SystemExit(f"{args.config}: no row {args.row!r}; rows: {[r.name for r in cfg.runs]}")
    t0 = time.time()
    if args.from_run is not None:
        from contentiqa.models import load_checkpoint

        best_model = load_checkpoint(args.from_run / "best.pt")
        history = [json.loads(line) for line in (args.from_run / "metrics.jsonl").read_text().splitlines()]
        best = max(history, key=lambda r: r.get("val_srocc", float("-inf")))
        tcfg = TrainConfig.from_dict(json.loads((args.from_run / "config.json").read_text())["train_config"])
        seed = args.from_run.name.removeprefix("seed")
        used = [f"the training parts of split seed {seed} of `{args.config}` (the experiment's run "
                f"{args.from_run.parent.name}/{args.from_run.name}; its test parts were held out)"]
    else:
        train, val, scales, used = _all_training_data(cfg)
        torch.manual_seed(0)
        model = create_model(run.model, pretrained=False, **run.model_args)
        tcfg = TrainConfig.from_dict({**run.train, "seed": 0})
        out = ROOT / "benchmarks" / "runs" / f"ship_{run.model}_{args.tag}"
        trainer = Trainer(model, train, val, scales if len(scales) > 1 else next(iter(scales.values())), tcfg, out,
                          progress=True, cache_dir=args.cache or cfg.cache_dir)
        best = trainer.fit(resume=True)
        best_model = trainer.load_best() if val is not None else trainer.model
    name = f"{run.model}_{args.tag}.pt"
    path = WEIGHTS / name
    save_checkpoint(best_model, path, omit_pretrained_backbone=True, extra={
        "trained_on": "; ".join(used), "tag": args.tag, "train_config": tcfg.to_dict(), "best_epoch": best.get("epoch"),
        "val_srocc": best.get("val_srocc"), "provenance": provenance(),
    })
    seconds = time.time() - t0
    figures = "see the experiment's table"
    if args.results and args.results.is_file():
        res = json.loads(args.results.read_text())["runs"].get(run.name, {})
        figures = "; ".join(
            f"{label}: " + ", ".join(f"{k.upper()} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in s.items()
                                     if k in ("plcc", "srocc", "accuracy", "acceptable"))
            for label, s in res.get("summary", {}).items()) + f" ({len(res.get('seeds', []))} split(s))"
    prov = provenance()
    scale = best_model.scale
    card = f"""# Model card: `{run.model}.{args.tag}` ({name})

- **What**: {model_entry(run.model).description}
  Row "{run.name}" of `{args.config}`.
- **Backbone**: frozen EfficientNet-Lite0 with ImageNet weights from the pip package (not stored here:
  rebuilt at load time); only the head was trained, on cached pooled features.
- **Trained on**: {'; '.join(used)}. Several datasets at once: each dataset's MOS mapped linearly onto
  [0, 1] by its own range{', plus a fidelity ranking loss on pairs within one dataset' if tcfg.rank_weight else ''}.
- **Scores**: on the first dataset's scale, {scale.low:g}-{scale.high:g} (CLIVE's MOS range), higher is better.
  They are a normalised quality: 0 and 100 stand for the ends of each training dataset's rating scale,
  so a score is comparable across photo collections as a rank, not as any one study's MOS.
{f"- **Content categories**: {', '.join(best_model.categories)} (human scene labels of clive-dev, LIQE's nine scenes)." + chr(10) if best_model.categories else ''}- **Measured** (held-out test parts of the experiment's splits, same recipe, not this run): {figures}.
- **Training configuration**: `{json.dumps(tcfg.to_dict())}`; model arguments `{json.dumps(run.model_args)}`.
- **Reproduce**: `{command_line()}` ({seconds / 60:.1f} min on {prov['machine']}{', ' + prov['gpu'] if prov.get('gpu') else ''},
  after the cached features exist).
- **Size**: {path.stat().st_size / 1e6:.1f} MB.
"""
    atomic_write_text(WEIGHTS / f"{run.model}_{args.tag}.md", card)
    print(card)


if __name__ == "__main__":
    main()
