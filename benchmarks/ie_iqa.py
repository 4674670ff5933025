"""IE-IQA on real photos (clive-dev, IE-IQA protocol: 80 % train / 20 % test): the distortion-only
baseline, IE-IQA without selection and with contribution selection at k = 1, 5, 20, 50 %, and
both with the distortion backbone from scratch (the paper's Fig. 5 and Tables 4-5 on one
dataset): the experiment config configs/clive_ie_iqa.yaml run by the package's runner (what
`contentiqa experiment` runs).

    python benchmarks/ie_iqa.py [CONFIG] [--results ie_iqa] [--only ROW] [--device cuda]
                                [--ship "IE-IQA, no selection (1280 features)" --tag clive]

Writes benchmarks/results/ie_iqa.{json,md} (the experiment's table + the floor); the runs live in
benchmarks/runs/clive_ie_iqa/ and resume. A run that collapses to a constant score is reported
with NaN correlations, not dropped. On a CPU the full table takes hours; run_all_gpu.sh runs it on a GPU.
"""
from __future__ import annotations

import sys

from common import ROOT, run_config_benchmark

if __name__ == "__main__":
    sys.exit(run_config_benchmark(ROOT / "configs" / "clive_ie_iqa.yaml", "ie_iqa", __doc__))
