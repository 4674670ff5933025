"""Would a second frozen ImageNet backbone, or more than the means of the levels, name people's
scenes better? The `iqa-cr` default's content head, probed on validation data only.

    python benchmarks/content_probe.py                      # the default extras and poolings
    python benchmarks/content_probe.py --extras efficientnet_lite2:260 --poolings --out content_probe_lite2

Why: `iqa-cr`'s content comes from a linear head on the global means of the frozen Lite0 levels
its bottleneck reads, at the photo's native resolution (``content_from="levels"``,
benchmarks/content_head.py), and stays short of issue 20's content targets. Before any model
reads a second network for its content (a slower model, a new architecture to gate and ship),
this asks the cheap way whether the features are the limit: the same multinomial logistic head
(:func:`contentiqa.training.content_head.fit_logistic`) on the levels alone, and on the levels
joined by the global mean of another frozen ImageNet backbone's last stage (its 1280-channel conv
head) on the photo resized square to a given size, or by another statistic of the same levels over
the photo (their spatial spread or maximum: the same pass, no second network).

Validation only, never a test part: the labelled photos of the training part of each of the IE-IQA
protocol's 3 clive-dev splits (the ship gate's), each scored by 5-fold cross-validation inside it
(one view per photo, no mirrored copies); the L2 strength is the one with the best mean of top-1 and
any-label accuracy over the splits (out of ``--l2``), chosen per feature set. Features are cached
under ``$CONTENTIQA_CACHE/content_probe``. Writes benchmarks/results/content_probe.json and .md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from backbone_probe import features as backbone_features
from common import ROOT, clive_splits, clive_table, command_line, md_table, results_stem, save_npz, write_results
from content_head import features as level_features
from content_head import labelled

FOLDS = 5
EXTRAS = ("efficientnet_lite0:320", "efficientnet_lite1:280", "efficientnet_lite2:260", "efficientnet_lite2:384")
POOLINGS = {"std": "spatial spreads", "max": "maxima"}
L2S = (1e-2, 3e-2, 1e-1)


def level_stats(model, images: list[str], cache: Path, stats: list[str]) -> dict[str, np.ndarray]:
    """{stat: (photos x sum C)} each level's spatial ``stats`` (``POOLINGS``) over the photo as the
    model reads it (one unmirrored view); every statistic is computed in the one pass and cached
    per backbone weights beside the means."""
    import torch
    from tqdm.auto import tqdm

    from contentiqa.data import load_image
    from contentiqa.training.cache import weights_fingerprint

    path = cache / f"level_stats_{weights_fingerprint(list(model.stages[:model.feature_end]))}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if list(z["images"]) == images and all(k in z.files for k in stats):
                return {k: z[k] for k in stats}
    reduce = {"std": lambda m: m.flatten(2).std(2), "max": lambda m: m.amax((2, 3))}
    rows: dict[str, list[np.ndarray]] = {k: [] for k in POOLINGS}
    model = model.eval()
    with torch.inference_mode():
        for p in tqdm(images, desc="level statistics"):
            maps = model.features(model.preprocess(load_image(p).image).unsqueeze(0))
            for k in POOLINGS:
                rows[k].append(torch.cat([reduce[k](m)[0] for m in maps]).double().numpy())
    arrays = {k: np.stack(v) for k, v in rows.items()}
    save_npz(path, images=np.array(images), **arrays)
    return {k: arrays[k] for k in stats}


def cv_accuracy(x: np.ndarray, main: list[str], sets: list[set[str]], categories, l2: float,
                seed: int) -> tuple[float, float]:
    """Out-of-fold (top-1, any-label) accuracy of the logistic head over every row (5 seeded folds)."""
    from contentiqa.training.content_head import accuracy, fit_logistic, soft_targets

    folds = np.random.default_rng(seed).permutation(len(main)) % FOLDS
    logits = np.empty((len(main), len(categories)))
    for f in range(FOLDS):
        tr, va = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        w, b = fit_logistic(x[tr], soft_targets([main[i] for i in tr], [sets[i] for i in tr], categories, 0.0), l2)
        logits[va] = x[va] @ w.T + b
    return accuracy(logits, main, sets, categories)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="iqa-cr", help="the model whose levels name content (default: the iqa-cr default)")
    ap.add_argument("--extras", nargs="*", default=list(EXTRAS), metavar="BACKBONE:SIZE",
                    help="second backbones joined to the levels, each at a square input size")
    ap.add_argument("--poolings", nargs="*", default=list(POOLINGS), choices=list(POOLINGS),
                    help="statistics of the same levels joined to their means")
    ap.add_argument("--l2", nargs="+", type=float, default=list(L2S))
    ap.add_argument("--out", default="content_probe", help="results file name (benchmarks/results/OUT.json/.md)")
    args = ap.parse_args()
    extras = []
    for spec in args.extras:
        name, _, size = spec.partition(":")
        if not size.isdigit():
            ap.error(f"--extras {spec!r}: give BACKBONE:SIZE, e.g. efficientnet_lite2:260")
        extras.append((name, int(size)))

    from contentiqa.models import create_model

    t0 = time.time()
    cache = Path(os.environ.get("CONTENTIQA_CACHE", ROOT.parent / "runs" / "cache")) / "content_probe"
    table = clive_table()
    splits, _ = clive_splits("ie-iqa", range(3), table)
    model = create_model(args.model)
    images = list(table["image"])
    levels = level_features(model, table, cache)[False]
    sets_x = {"the levels alone": np.stack([levels[p] for p in images])}
    cost = {"the levels alone": None}
    for name, size in extras:
        x, sec = backbone_features(name, size, images, cache, "clive-dev", levels=1)
        key = f"the levels + {name} at {size} px"
        sets_x[key], cost[key] = np.concatenate([sets_x["the levels alone"], x], 1), sec
    for k, x in (level_stats(model, images, cache, args.poolings) if args.poolings else {}).items():
        key = f"the levels' means + their {POOLINGS[k]}"
        sets_x[key], cost[key] = np.concatenate([sets_x["the levels alone"], x], 1), None

    parts = []
    for sp in splits:  # the training part only: its test part is never read
        rows, main_labels, label_sets = labelled(table.iloc[sp.indices(table, "train")])
        parts.append(([images.index(p) for p in rows["image"]], main_labels, label_sets, sp.seed))
    results = {}
    for key, x in sets_x.items():
        by_l2 = {l2: [cv_accuracy(x[idx], m, s, model.categories, l2, seed) for idx, m, s, seed in parts]
                 for l2 in args.l2}
        best = max(args.l2, key=lambda l2: np.mean([t + a for t, a in by_l2[l2]]))
        runs = np.array(by_l2[best])
        results[key] = {"l2": best, "photos": [len(m) for _, m, _, _ in parts], "sec_per_photo": cost[key],
                        **{k: {"mean": float(runs[:, i].mean()), "std": float(runs[:, i].std(ddof=1)),
                               "per_split": runs[:, i].tolist()} for i, k in enumerate(("top1", "any"))}}
        print(f"{key}: l2 {best:g}, top-1 {runs[:, 0].mean():.3f}, any {runs[:, 1].mean():.3f}", flush=True)

    def ms(r: dict, k: str) -> str:
        return f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}"

    rows = [[k, ms(r, "top1"), ms(r, "any"), f"{r['l2']:g}",
             "–" if r["sec_per_photo"] is None else f"{1000 * r['sec_per_photo']:.0f}"] for k, r in results.items()]
    minutes = (time.time() - t0) / 60
    md = (
        "# A second backbone, or richer pooling, for content? People's scene labels on validation data\n\n"
        f"One run: `{command_line()}` ({minutes:.1f} min). The content head of `{args.model}` (multinomial "
        "logistic regression on the global means of the frozen ImageNet Lite0 levels its bottleneck reads, at native "
        "resolution), alone and with the global mean of another frozen ImageNet backbone's conv head on the photo "
        "resized square to the size given, or with another statistic of the same levels over the photo (the same "
        "pass). Validation data only: the labelled photos of the training part of each "
        "of the IE-IQA protocol's 3 clive-dev splits (the ship gate's; test parts never read), each scored by "
        "5-fold cross-validation inside it, one view per photo. Top-1: the main label; any: one of the photo's "
        "labels. Mean ± std over the splits; the L2 strength with the best mean of the two (out of "
        f"{', '.join(f'{v:g}' for v in args.l2)}).\n\n"
        + md_table(["content from", "top-1", "any label", "L2", "ms/photo (the extra backbone)"], rows)
        + "\nms/photo: decode, resize and the eager forward of the extra backbone alone during extraction "
        "(benchmarks/backbone_probe.py's), a rough cost on top of the model's own; not the scoring speed. "
        "–: no second network.\n"
    )
    write_results(results_stem(ap, args, "out"), {"results": results, "model": args.model, "folds": FOLDS, "command": command_line(),
                             "minutes": minutes}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
