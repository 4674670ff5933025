"""Which frozen EfficientNet-Lite0 features carry CLIVE's quality signal: a cheap probe that
decided two design choices (multi-level base features; IE-IQA's input size on CLIVE).

    python benchmarks/feature_levels.py

For every clive-dev photo: the globally average-pooled output of each backbone stage at native
resolution, and of the last stage after resizing the photo to 224 and 384 px. Ridge regression
(penalty chosen on each split's val part) on
- the last stage only (= benchmarks/floor.py), the last four stages, the last six;
- the last stage at 224 px (IE-IQA's input size) vs 384 px vs native (on the IE-IQA 80/20
  splits, penalty fixed at 1000 since that protocol has no val part).
Writes benchmarks/results/feature_levels.json and feature_levels.md.
"""
from __future__ import annotations

import numpy as np

from common import clive_splits, md_table, require_clive, write_results
from floor import ridge_fit, ridge_predict


def main() -> None:
    import torch

    from contentiqa.backbones import create_backbone
    from contentiqa.backbones.stages import backbone_stages
    from contentiqa.data import load_dataset, load_image
    from contentiqa.metrics import iqa_metrics, mean_std, format_mean_std
    from tqdm.auto import tqdm

    ds = load_dataset("csv", require_clive())
    table = ds.table
    bb = create_backbone("efficientnet_lite0").eval()
    cfg = bb.contentiqa_cfg
    stages = backbone_stages(bb)
    from contentiqa.models.base import pil_to_tensor

    levels: dict[int, list] = {i: [] for i in range(len(stages))}
    resized: dict[int, list] = {224: [], 384: []}
    with torch.inference_mode():
        for p in tqdm(table["image"], desc="features", unit="img"):
            img = load_image(p).image
            x = pil_to_tensor(img, cfg.mean, cfg.std)[None]
            for i, s in enumerate(stages):
                x = s(x)
                levels[i].append(x.mean((2, 3))[0].numpy())
            for size in resized:
                xs = pil_to_tensor(img.resize((size, size)), cfg.mean, cfg.std)[None]
                resized[size].append(bb.forward_features(xs).mean((2, 3))[0].numpy())
    F = {i: np.asarray(v, dtype=np.float64) for i, v in levels.items()}
    R = {s: np.asarray(v, dtype=np.float64) for s, v in resized.items()}
    y = table["mos"].to_numpy()
    n = len(stages)

    cr_splits, _ = clive_splits("iqa-cr", range(10), table)

    def iqa_cr_protocol(x):
        runs = []
        for sp in cr_splits:
            tr, va, te = (sp.indices(table, q) for q in ("train", "val", "test"))
            alpha = max(10.0 ** np.arange(-1, 6), key=lambda a: iqa_metrics(ridge_predict(ridge_fit(x[tr], y[tr], a), x[va]), y[va])["srocc"])
            runs.append(iqa_metrics(ridge_predict(ridge_fit(x[tr], y[tr], alpha), x[te]), y[te]))
        return mean_std(runs)

    ie_splits, _ = clive_splits("ie-iqa", range(3), table)

    def ie_iqa_protocol(x):
        runs = []
        for sp in ie_splits:
            tr, te = sp.indices(table, "train"), sp.indices(table, "test")
            runs.append(iqa_metrics(ridge_predict(ridge_fit(x[tr], y[tr], 1000.0), x[te]), y[te]))
        return mean_std(runs)

    results = {
        "levels": {
            "last stage (1280)": iqa_cr_protocol(F[n - 1]),
            "last four stages": iqa_cr_protocol(np.concatenate([F[i] for i in range(n - 4, n)], 1)),
            "last six stages": iqa_cr_protocol(np.concatenate([F[i] for i in range(n - 6, n)], 1)),
        },
        "input_size": {
            "224 px": ie_iqa_protocol(R[224]),
            "384 px": ie_iqa_protocol(R[384]),
            "native (500 px)": ie_iqa_protocol(F[n - 1]),
        },
    }
    rows = [[k, "IQA-CR 10 seeds", *format_mean_std(v, ["plcc", "srocc"]).values()] for k, v in results["levels"].items()]
    rows += [[f"last stage at {k}", "IE-IQA 3 seeds", *format_mean_std(v, ["plcc", "srocc"]).values()]
             for k, v in results["input_size"].items()]
    md = (
        "# Frozen EfficientNet-Lite0 features + ridge on CLIVE: which depths, which input size\n\n"
        + md_table(["pooled features", "splits", "PLCC", "SROCC"], rows)
        + "\nGlobal average pooling of each stage's output; ridge regression to MOS. Command: "
        "`python benchmarks/feature_levels.py`.\n"
    )
    write_results("feature_levels", {"results": results}, md)


if __name__ == "__main__":
    import argparse

    # no options: --help prints what it does instead of starting the run
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
