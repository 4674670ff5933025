"""IQA-CR on real photos: IQA-CR vs IQA-CR-Q vs IQA-CR-C vs the MTL-modified single-task
baselines (and the shipped recipe) on clive-dev, IQA-CR split protocol: the experiment config
configs/clive_iqa_cr.yaml run by the package's runner (what `contentiqa experiment` runs).

    python benchmarks/iqa_cr.py [CONFIG] [--results iqa_cr] [--only ROW] [--device cuda]
                                [--ship "IQA-CR, content loss 0.05, D=128" --tag clive]

Writes benchmarks/results/iqa_cr.{json,md} (the experiment's table + the floor); the runs live in
benchmarks/runs/clive_iqa_cr/ and resume. The loss ablation and the recipe sweep are configs too
(configs/clive_iqa_cr_loss.yaml, clive_iqa_cr_sweep.yaml: see iqa_cr_loss_ablation.sh,
iqa_cr_sweep.sh). On a CPU the full table takes hours; run_all_gpu.sh runs it on a GPU.
"""
from __future__ import annotations

import sys

from common import ROOT, run_config_benchmark

if __name__ == "__main__":
    sys.exit(run_config_benchmark(ROOT / "configs" / "clive_iqa_cr.yaml", "iqa_cr", __doc__))
