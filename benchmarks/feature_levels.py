"""Which frozen EfficientNet-Lite0 features carry CLIVE's quality signal: a cheap probe behind two
design choices (multi-level base features; IE-IQA's input size on CLIVE).

    python benchmarks/feature_levels.py

For every clive-dev photo: the globally average-pooled output of each backbone stage at native
resolution, and of the last stage after resizing the photo to 224 and 384 px. Ridge regression,
scored on validation data only: 5-fold cross-validation inside each split's photos outside its
test part (test parts are never read), the penalty with the best mean SROCC, on
- the last stage only (= benchmarks/floor.py's features), the last four stages, the last six (the
  IQA-CR protocol's 10 splits);
- the last stage at 224 px (IE-IQA's input size) vs 384 px vs native (the IE-IQA 80/20 splits).
Writes benchmarks/results/feature_levels.json and feature_levels.md.
"""
from __future__ import annotations

import numpy as np

from backbone_probe import ALPHAS, FOLDS, scored
from common import clive_splits, command_line, md_table, require_clive, write_results


def main() -> None:
    import torch

    from contentiqa.backbones import create_backbone
    from contentiqa.backbones.stages import backbone_stages
    from contentiqa.data import load_dataset, load_image
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

    def validation(protocol: str, seeds: range):
        """Each split's photos outside its test part, for :func:`backbone_probe.scored`."""
        splits, _ = clive_splits(protocol, seeds, table)
        rows = [np.sort(np.setdiff1d(np.arange(len(table)), sp.indices(table, "test"))) for sp in splits]
        return lambda x: scored([(x[r], y[r], sp.seed) for r, sp in zip(rows, splits)])

    iqa_cr_protocol = validation("iqa-cr", range(10))
    ie_iqa_protocol = validation("ie-iqa", range(3))

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

    def cells(r: dict) -> list[str]:
        return [f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}" for k in ("plcc", "srocc")] + [f"{r['alpha']:g}"]

    rows = [[k, "IQA-CR 10 seeds", *cells(v)] for k, v in results["levels"].items()]
    rows += [[f"last stage at {k}", "IE-IQA 3 seeds", *cells(v)] for k, v in results["input_size"].items()]
    md = (
        "# Frozen EfficientNet-Lite0 features + ridge on CLIVE: which depths, which input size\n\n"
        f"One run: `{command_line()}`. Validation data only: 5-fold cross-validation inside each split's "
        "photos outside its test part (test parts never read); mean ± std over the splits; the ridge penalty "
        f"with the best mean SROCC (out of {len(ALPHAS)}, {FOLDS} folds).\n\n"
        + md_table(["pooled features", "splits", "PLCC", "SROCC", "ridge penalty"], rows)
        + "\nGlobal average pooling of each stage's output; ridge regression to MOS.\n"
    )
    write_results("feature_levels", {"results": results, "command": command_line()}, md)


if __name__ == "__main__":
    import argparse

    # no options: --help prints what it does instead of starting the run
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
