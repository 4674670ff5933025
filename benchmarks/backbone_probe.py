"""Would a bigger offline backbone help? Frozen EfficientNet-Lite0 / Lite1 / Lite2 features, on
validation data only.

    python benchmarks/backbone_probe.py                 # all backbones and sizes, both datasets
    python benchmarks/backbone_probe.py --biq 0         # clive-dev only
    python benchmarks/backbone_probe.py --backbones efficientnet_lite0 --sizes 512 --levels 6 --out backbone_probe_levels6

Why: the default model reads frozen Lite0 features of a 512-px photo; issue 20 lets a bigger
offline backbone (Lite1, Lite2) be tried, chosen on validation data. Training a model family on
a new backbone costs hours on 2 CPU cores (its caches, then every recipe row), so this probe
first asks whether its frozen features rank photos better at all, the cheap way
(benchmarks/floor.py's): the global means of the last four stages (``--levels``; the levels the distortion
network reads) and ridge regression to MOS.

Validation only, never a test part: on clive-dev, the training parts of the IE-IQA protocol's
3 splits (the ship gate's), each scored by 5-fold cross-validation inside it; on BIQ2021,
``--biq`` photos drawn from the official training part, scored by 5-fold cross-validation (3
draws of the folds). The ridge penalty is the one with the best mean SROCC over the splits
(out of 6), the same choice for every backbone. Features are cached per backbone, size and
dataset under ``$CONTENTIQA_CACHE/backbone_probe`` (an interrupted run resumes there). Writes
benchmarks/results/backbone_probe.json and .md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, clive_splits, command_line, md_table, require_clive, results_stem, save_npz, write_results
from floor import ridge_fit, ridge_predict

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SIZES = (384, 512)
ALPHAS = tuple(10.0 ** k for k in range(0, 6))
FOLDS = 5


def features(backbone: str, size: int, images: list[str], cache: Path, label: str,
             levels: int = 4) -> tuple[np.ndarray, float]:
    """(photos x channels) global means of the last ``levels`` stages of the frozen ``backbone`` on
    each photo resized to ``size`` square, and seconds per photo (decode, resize and the eager
    forward, BatchNorm folded, batch 8); cached."""
    path = cache / (f"{backbone}_{size}_{label}_{len(images)}" + ("" if levels == 4 else f"_last{levels}") + ".npz")
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        if list(z["images"]) == [Path(p).name for p in images]:
            return z["x"], float(z["sec_per_photo"])
    import torch
    from tqdm.auto import tqdm

    from contentiqa.backbones import create_backbone
    from contentiqa.backbones.fusion import fold_batchnorm
    from contentiqa.backbones.stages import backbone_stages, run_stages_levels
    from contentiqa.data import load_image
    from contentiqa.models.base import resized_input

    bb = create_backbone(backbone).eval()
    cfg = bb.contentiqa_cfg
    stages = backbone_stages(bb)
    fold_batchnorm(bb, *stages)
    bb = bb.to(memory_format=torch.channels_last)
    wanted = list(range(len(stages) - levels, len(stages)))
    out, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for i in tqdm(range(0, len(images), 8), desc=f"{backbone} {size} px {label}", unit="batch"):
            xs = torch.stack([resized_input(load_image(p).image, size, cfg.mean, cfg.std) for p in images[i:i + 8]])
            maps = run_stages_levels(stages, xs.contiguous(memory_format=torch.channels_last), wanted)
            out.append(torch.cat([m.mean((2, 3)) for m in maps], 1).float().numpy())
    x = np.concatenate(out).astype(np.float64)
    sec = (time.perf_counter() - t0) / len(images)
    save_npz(path, x=x, sec_per_photo=sec, images=np.array([Path(p).name for p in images]))
    return x, sec


def cv_predictions(x: np.ndarray, y: np.ndarray, alpha: float, seed: int) -> np.ndarray:
    """Out-of-fold ridge predictions for every row (5 folds, seeded)."""
    folds = np.random.default_rng(seed).permutation(len(y)) % FOLDS
    pred = np.empty(len(y))
    for f in range(FOLDS):
        tr, va = folds != f, folds == f
        pred[va] = ridge_predict(ridge_fit(x[tr], y[tr], alpha), x[va])
    return pred


def scored(parts: list[tuple[np.ndarray, np.ndarray, int]]) -> dict:
    """Each part (features, MOS, fold seed) cross-validated at every penalty; the penalty with the
    best mean SROCC, its mean and std over the parts."""
    from contentiqa.metrics import iqa_metrics

    by_alpha = {a: [iqa_metrics(cv_predictions(x, y, a, s), y) for x, y, s in parts] for a in ALPHAS}
    best = max(ALPHAS, key=lambda a: np.mean([m["srocc"] for m in by_alpha[a]]))
    runs = by_alpha[best]
    return {"alpha": best, "n_parts": len(runs), "n_photos": [len(y) for _, y, _ in parts],
            **{k: {"mean": float(np.mean([m[k] for m in runs])), "std": float(np.std([m[k] for m in runs], ddof=1))}
               for k in ("srocc", "plcc")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument("--biq", type=int, default=2000, help="BIQ2021 training photos to use (0: skip BIQ2021)")
    ap.add_argument("--levels", type=int, default=4, help="how many of the last stages to pool (default 4)")
    ap.add_argument("--out", default="backbone_probe", help="results file name (benchmarks/results/OUT.json/.md)")
    args = ap.parse_args()
    if args.biq < 0:
        ap.error("--biq: photos of BIQ2021's training part, 0 or more")

    from contentiqa.data import load_dataset

    cache = Path(os.environ.get("CONTENTIQA_CACHE", ROOT.parent / "runs" / "cache")) / "backbone_probe"
    clive = load_dataset("csv", require_clive()).table
    splits, _ = clive_splits("ie-iqa", range(3), clive)
    biq = None
    if args.biq:
        root = Path(os.environ.get("CONTENTIQA_BIQ2021", ROOT.parent / "data" / "biq2021"))
        if not root.is_dir():
            sys.exit(f"benchmark skipped: BIQ2021 not found at {root} (set CONTENTIQA_BIQ2021, or --biq 0)")
        try:
            table = load_dataset("biq2021", root).table
        except (FileNotFoundError, ValueError) as exc:  # a folder without the release in it
            sys.exit(f"benchmark skipped: {exc} (set CONTENTIQA_BIQ2021, or --biq 0)")
        train = table[table["split"] == "train"].reset_index(drop=True)
        if args.biq > len(train):
            ap.error(f"--biq {args.biq}: BIQ2021's training part has {len(train)} photos")
        biq = train.iloc[np.sort(np.random.default_rng(0).choice(len(train), args.biq, replace=False))]

    results = {}
    for backbone in args.backbones:
        for size in args.sizes:
            key = f"{backbone} at {size} px"
            x, sec = features(backbone, size, list(clive["image"]), cache, "clive-dev", args.levels)
            y = clive["mos"].to_numpy(dtype=np.float64)
            parts = []
            for sp in splits:  # the training part only: its test part is never read
                tr = sp.indices(clive, "train")
                parts.append((x[tr], y[tr], sp.seed))
            results[key] = {"backbone": backbone, "size": size, "sec_per_photo": sec, "CLIVE": scored(parts)}
            if biq is not None:
                xb, _ = features(backbone, size, list(biq["image"]), cache, "biq2021-train", args.levels)
                yb = biq["mos"].to_numpy(dtype=np.float64)
                results[key]["BIQ2021"] = scored([(xb, yb, s) for s in range(3)])
            print(key, {k: round(v["srocc"]["mean"], 4) for k, v in results[key].items() if isinstance(v, dict)},
                  flush=True)

    def cell(r: dict, ds: str, k: str) -> str:
        return "–" if ds not in r else f"{r[ds][k]['mean']:.3f} ± {r[ds][k]['std']:.3f}"

    rows = [[k, cell(r, "CLIVE", "srocc"), cell(r, "CLIVE", "plcc"), cell(r, "BIQ2021", "srocc"),
             cell(r, "BIQ2021", "plcc"), f"{1000 * r['sec_per_photo']:.0f}"] for k, r in results.items()]
    md = (
        "# A bigger backbone? Frozen Lite0 / Lite1 / Lite2 features on validation data\n\n"
        f"One run: `{command_line()}`. Global means of the last {args.levels} stages of the frozen ImageNet "
        "backbone on the photo resized to the size given, ridge regression to MOS. Validation data only: "
        "clive-dev, 5-fold cross-validation inside the training part of each of the IE-IQA protocol's 3 "
        "splits (the ship gate's; test parts never read)"
        + (f"; BIQ2021, 5-fold cross-validation over {args.biq} photos of the official training part (3 draws of "
           "the folds)" if args.biq else " (BIQ2021 not measured: --biq 0)")
        + ". Mean ± std over the splits / draws; the ridge penalty with the best mean SROCC (out of 6).\n\n"
        + md_table(["frozen backbone", "clive-dev SROCC", "clive-dev PLCC", "BIQ2021 SROCC", "BIQ2021 PLCC",
                    "ms/photo (extraction)"], rows)
        + "\nms/photo: decode, resize and the eager PyTorch forward on this CPU during extraction "
        "(BatchNorm folded, batch 8): a rough cost, not the scoring speed "
        "(`benchmarks/cores.py` measures that).\n"
    )
    write_results(results_stem(ap, args, "out"), {"results": results, "biq_photos": args.biq, "levels": args.levels,
                             "command": command_line()}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
