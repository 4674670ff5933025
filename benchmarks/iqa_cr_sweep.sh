#!/usr/bin/env bash
# IQA-CR recipes that keep both tasks (configs/clive_iqa_cr_sweep.yaml, table in
# benchmarks/results/iqa_cr_sweep.md), then the chosen recipe shipped as iqa-cr.clive and the
# quality-only IQA-CR-Q as iqa-cr-q.clive (rows of configs/clive_iqa_cr.yaml).
#   CONTENTIQA_SHARED=/path/to/shared bash benchmarks/iqa_cr_sweep.sh [--device cuda]
set -eu
cd "$(dirname "$0")"
PY=${PYTHON:-python}
$PY iqa_cr.py ../configs/clive_iqa_cr_sweep.yaml --results iqa_cr_sweep "$@" --ship "focal 0.05, D = 128, MLP 256" --tag clive
$PY iqa_cr.py ../configs/clive_iqa_cr.yaml --results iqa_cr "$@" --ship IQA-CR-Q --tag clive
