#!/usr/bin/env bash
# IQA-CR recipes that keep both tasks (configs/clive_iqa_cr_sweep.yaml, table in
# benchmarks/results/iqa_cr_sweep.md), then the chosen recipe shipped as iqa-cr.clive and the
# quality-only IQA-CR-Q as iqa-cr-q.clive (rows of configs/clive_iqa_cr.yaml). The weights go to
# $WEIGHTS_DIR (default benchmarks/runs/weights), not over the package's: iqa-cr-q.clive is that
# model's default, which only benchmarks/ship.py replaces, once the ship gate passed.
#   CONTENTIQA_SHARED=/path/to/shared bash benchmarks/iqa_cr_sweep.sh [--device cuda]
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)  # no cd: relative paths (CONTENTIQA_SHARED, --out) are the caller's
PY=${PYTHON:-python}
WEIGHTS_DIR=${WEIGHTS_DIR:-$HERE/runs/weights}
mkdir -p "$WEIGHTS_DIR"
$PY "$HERE/iqa_cr.py" "$HERE/../configs/clive_iqa_cr_sweep.yaml" --results iqa_cr_sweep "$@" \
  --ship "focal 0.05, D = 128, MLP 256" --tag clive --weights-dir "$WEIGHTS_DIR"
$PY "$HERE/iqa_cr.py" "$HERE/../configs/clive_iqa_cr.yaml" --results iqa_cr "$@" --ship IQA-CR-Q --tag clive \
  --weights-dir "$WEIGHTS_DIR"
