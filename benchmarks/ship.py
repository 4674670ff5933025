"""Train a model on all of clive-dev and ship it inside the package, with a model card.

All images but the first split's validation part (10 %, kept for early stopping) train the
shipped model; its benchmark figures come from the held-out test parts of the seeded splits
(benchmarks/results/<model>.md), not from this run, which has no test part.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from common import CACHE, ROOT, command_line, provenance

WEIGHTS = ROOT / "src" / "contentiqa" / "weights"


def ship_model(name: str, table, scale, split, train_kw: dict, model_kw: dict, results: dict, bench_md: str,
               weights_name: str | None = None, val_part: str = "val") -> Path:
    import numpy as np

    from contentiqa.models import create_model
    from contentiqa.models.registry import model_entry, save_checkpoint
    from contentiqa.training.config import TrainConfig
    from contentiqa.training.trainer import Trainer
    from contentiqa.utils.io import atomic_write_text

    val_idx = split.indices(table, val_part) if val_part else np.array([], dtype=int)
    train_idx = np.setdiff1d(np.arange(len(table)), val_idx)
    out = ROOT / "benchmarks" / "runs" / f"ship_{name}"
    import torch

    torch.manual_seed(0)  # model initialisation, repeatable per seed
    model = create_model(name, pretrained=False, **model_kw)
    cfg = TrainConfig(seed=0, **train_kw)
    t0 = time.time()
    trainer = Trainer(model, table.iloc[train_idx], table.iloc[val_idx] if len(val_idx) else None, scale, cfg, out,
                      progress=False, cache_dir=CACHE)
    best = trainer.fit(resume=True)
    best_model = trainer.load_best()
    weights_name = weights_name or model_entry(name).weights
    path = WEIGHTS / weights_name
    save_checkpoint(best_model, path, omit_pretrained_backbone=True, extra={
        "trained_on": f"clive-dev ({len(train_idx)} images; {len(val_idx)} held out for early stopping)",
        "train_config": cfg.to_dict(), "best_epoch": best.get("epoch"), "val_srocc": best.get("val_srocc"),
        "provenance": provenance(),
    })
    size_mb = path.stat().st_size / 1e6
    summary = results.get(name, {}).get("summary", {})
    figures = ", ".join(f"{k.upper()} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in summary.items())
    prov = provenance()
    machine = prov["machine"] + (f", {prov['gpu']}" if prov.get("gpu") else "")
    protocol = "IQA-CR" if name.startswith("iqa-cr") else "IE-IQA"
    content = ("- **Content labels**: pseudo-labels from `contentiqa label-content` (ImageNet classifier -> ten IQA-CR\n"
               "  categories); no human content labels exist for CLIVE.\n") if model.categories else ""
    card = f"""# Model card: `{name}` ({weights_name})

- **What**: {model_entry(name).description}
- **Backbone**: {model.cfg.to_dict().get('backbone') or model.cfg.to_dict().get('distortion_backbone')} with ImageNet weights from
  the pip package (the frozen, unchanged part is not stored here: it is rebuilt from the package at load time).
- **Trained on**: LIVE In the Wild Image Quality Challenge, the 878-photo `clive-dev` copy; {len(train_idx)}
  images for training{f", {len(val_idx)} held out for early stopping (best epoch {best.get('epoch')}, validation SROCC {best.get('val_srocc', float('nan')):.3f})" if len(val_idx) else f" for {cfg.epochs} epochs (the protocol has no validation part)"}.
  Scores are on CLIVE's MOS scale, 0-100, higher is better.
{content}- **Measured** (held-out test parts of the seeded {protocol}-protocol splits, same recipe, not this run):
  {figures or 'see benchmarks/results'}.
- **Training configuration**: `{json.dumps(cfg.to_dict())}`; model arguments `{json.dumps(model_kw)}`.
- **Reproduce**: `{command_line()}` (training time here
  {time.time() - t0:.0f} s on {machine}).
- **Size**: {size_mb:.1f} MB.
- **Caveats**: 878 training photos, mostly 500x500 phone/camera pictures with authentic distortions; scores
  on very different images (other resolutions, screenshots, synthetic distortions) extrapolate. Use it as a
  ranking signal first.

## Benchmark table

{bench_md}
"""
    atomic_write_text(WEIGHTS / (Path(weights_name).stem + ".md"), card)
    print(f"shipped {path} ({size_mb:.1f} MB)")
    return path
