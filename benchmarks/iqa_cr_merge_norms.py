"""How much the residual stream grows per IQA-CR encoder layer, in the models trained by
configs/iqa_cr_merge.yaml (the layer-merge ablation): the reason that ablation exists is that
the literal Z' = Z_CR + Z_QA counts the shared encoding twice.

    contentiqa experiment configs/iqa_cr_merge.yaml --out RUN        # trains the rows
    python benchmarks/iqa_cr_merge_norms.py --run RUN [--photos 32]  # this table

For each row and seed it loads ``best.pt``, feeds the first --photos clive-dev photos (sorted
by name) and records, per encoder layer, mean over photos of ||layer output|| / ||layer input||
(Frobenius norm over the token grid). Writes benchmarks/results/iqa_cr_merge_norms.{json,md}.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import command_line, md_table, positive_int, require_clive, results_name, write_results


def layer_growth(model, images) -> list[float]:
    import torch

    ratios: list[list[float]] = [[] for _ in model.layers]
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: ratios[k].append(float(o.norm() / i[0].norm())))
             for k, layer in enumerate(model.layers)]
    try:
        with torch.inference_mode():
            for im in images:
                model(model.preprocess(im)[None])
    finally:
        for h in hooks:
            h.remove()
    return [float(np.mean(r)) for r in ratios]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="the experiment's --out folder")
    ap.add_argument("--photos", type=positive_int, default=32)
    args = ap.parse_args()
    import contentiqa
    from PIL import Image

    clive = require_clive()
    folder = clive.parent / "images"
    names = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))[: args.photos]
    images = [Image.open(p).convert("RGB") for p in names]
    t0 = time.time()
    rows, table = [], []
    for row_dir in sorted((args.run / "runs").iterdir()):
        seeds = sorted(row_dir.glob("seed*/best.pt"))
        if not seeds:
            continue
        per_seed = []
        for ckpt in seeds:
            model = contentiqa.create_model(str(ckpt)).eval()
            per_seed.append(layer_growth(model, images))
        growth = np.mean(per_seed, axis=0)
        merge = model.cfg.merge
        rows.append({"row": row_dir.name, "merge": merge, "depth": model.cfg.depth, "seeds": len(seeds),
                     "growth_per_layer": [float(g) for g in growth], "growth_total": float(np.prod(growth))})
        table.append([row_dir.name, merge, str(len(seeds)), " / ".join(f"{g:.2f}" for g in growth), f"{np.prod(growth):.2f}"])
    md = [
        "# IQA-CR: residual-stream growth per encoder layer (trained models)",
        "",
        f"Command: `{command_line()}`; models from `contentiqa experiment configs/iqa_cr_merge.yaml` "
        f"(run folder {args.run.name}); {len(images)} clive-dev photos (first by name), mean over photos and seeds of "
        "||layer output|| / ||layer input||.",
        "",
        md_table(["row", "merge", "seeds", "growth per layer", "growth over all layers"], table),
        "",
        f"{time.time() - t0:.0f} s on this machine.",
    ]
    write_results(results_name("iqa_cr_merge_norms", ap, args, ignore=("run",)), {"rows": rows, "photos": len(images), "command": command_line()}, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
