"""The floor every model must beat: frozen EfficientNet-Lite0 ImageNet features, pooled over
the native-resolution feature map, and ridge regression to MOS.

    python benchmarks/floor.py [--seeds 10]

Trained and tested on ../shared/data/clive-dev with the IQA-CR split protocol (80/10/10,
stratified by SI and MOS); the ridge penalty is chosen on each split's validation part.
Writes benchmarks/results/floor.json and floor.md.
"""
from __future__ import annotations

import argparse

import numpy as np

from common import CACHE, clive_splits, command_line, md_table, require_clive, results_name, write_results


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    ym = y.mean()
    w = np.linalg.solve(xs.T @ xs + alpha * np.eye(xs.shape[1]), xs.T @ (y - ym))
    return w, ym, mu, sd


def ridge_predict(model, x):
    w, ym, mu, sd = model
    return ((x - mu) / sd) @ w + ym


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()

    from contentiqa.backbones import create_backbone
    from contentiqa.backbones.stages import backbone_stages
    from contentiqa.data import load_dataset
    from contentiqa.metrics import format_mean_std, iqa_metrics, mean_std
    from contentiqa.training.cache import stage_features

    ds = load_dataset("csv", require_clive())
    table = ds.table
    splits, split_file = clive_splits("iqa-cr", range(args.seeds), table)
    bb = create_backbone("efficientnet_lite0").eval()
    stages = backbone_stages(bb)
    feats = stage_features(stages, list(table["image"]), len(stages), bb.contentiqa_cfg.mean, bb.contentiqa_cfg.std,
                           flips=False, cache_dir=CACHE, tag="efficientnet_lite0")
    x = np.stack([f[0].float().mean(dim=(1, 2)).numpy() for f in feats]).astype(np.float64)
    y = table["mos"].to_numpy()
    runs = []
    for split in splits:
        tr, va, te = (split.indices(table, p) for p in ("train", "val", "test"))
        best = None
        for alpha in 10.0 ** np.arange(-1, 5):
            m = ridge_fit(x[tr], y[tr], alpha)
            s = iqa_metrics(ridge_predict(m, x[va]), y[va])["srocc"]
            if best is None or s > best[0]:
                best = (s, alpha)
        m = ridge_fit(x[np.concatenate([tr])], y[tr], best[1])
        res = iqa_metrics(ridge_predict(m, x[te]), y[te])
        res.update(seed=split.seed, alpha=float(best[1]))
        runs.append(res)
        print(f"seed {split.seed}: alpha {best[1]:g}  test SROCC {res['srocc']:.3f}  PLCC {res['plcc']:.3f}  RMSE {res['rmse']:.2f}")
    summary = mean_std([{k: v for k, v in r.items() if k in ("plcc", "srocc", "krocc", "rmse")} for r in runs])
    f = format_mean_std(summary, ["plcc", "srocc", "krocc", "rmse"])
    md = (
        "# Floor: frozen EfficientNet-Lite0 features + ridge (CLIVE dev, IQA-CR protocol)\n\n"
        + md_table(["model", "splits", "PLCC", "SROCC", "KROCC", "RMSE (MOS 0-100)"],
                   [["lite0 GAP + ridge", str(len(runs)), f["plcc"], f["srocc"], f["krocc"], f["rmse"]]])
        + f"\nTest parts of {len(runs)} seeded splits ({split_file.name}); ridge alpha chosen on each val part. "
        f"Command: `{command_line()}`.\n"
    )
    write_results(results_name("floor", ap, args), {"model": "efficientnet_lite0 GAP + ridge", "protocol": "iqa-cr", "runs": runs, "summary": summary,
                            "n_images": len(table)}, md)


if __name__ == "__main__":
    main()
