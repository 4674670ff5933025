#!/usr/bin/env bash
# IQA-CR's loss balance (content-loss weight, weighting scheme): configs/clive_iqa_cr_loss.yaml,
# run by the experiment runner; table in benchmarks/results/iqa_cr_loss_ablation.md.
#   CONTENTIQA_SHARED=/path/to/shared bash benchmarks/iqa_cr_loss_ablation.sh [--device cuda]
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)  # no cd: relative paths (CONTENTIQA_SHARED, --out) are the caller's
${PYTHON:-python} "$HERE/iqa_cr.py" "$HERE/../configs/clive_iqa_cr_loss.yaml" --results iqa_cr_loss_ablation "$@"
