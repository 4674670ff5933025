#!/usr/bin/env bash
# IQA-CR's loss balance on one GPU: the content (focal) loss weight and the multi-task
# weighting scheme, 5 seeds each, in parallel. Results: benchmarks/results/iqa_cr_loss_*.md.
#   CONTENTIQA_SHARED=/path/to/shared bash benchmarks/iqa_cr_loss_ablation.sh
set -u
PY=${PYTHON:-python}
cd "$(dirname "$0")"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
A="--models iqa-cr --seeds 5 --epochs 15 --patience 5 --cache-stages 6 --device cuda"
mkdir -p runs/logs
$PY iqa_cr.py $A --category-weight 0.05 --results-name iqa_cr_loss_cw0.05 >runs/logs/abl1.log 2>&1 &
$PY iqa_cr.py $A --category-weight 1 --results-name iqa_cr_loss_cw1 >runs/logs/abl2.log 2>&1 &
$PY iqa_cr.py $A --loss-weighting uncertainty --results-name iqa_cr_loss_uncertainty >runs/logs/abl3.log 2>&1 &
$PY iqa_cr.py $A --loss-weighting dwa --results-name iqa_cr_loss_dwa >runs/logs/abl4.log 2>&1 &
wait
$PY - <<'PY'
# One table: the default recipe (results/iqa_cr.json: focal weight 0.2, plain sum) and each variant.
import json
from common import format_row_table
rows = [("0.2, sum (default, results/iqa_cr.md)", "iqa_cr")] + [
    (label, f"iqa_cr_loss_{stem}") for label, stem in
    (("0.05, sum", "cw0.05"), ("1, sum", "cw1"), ("0.2, uncertainty", "uncertainty"), ("0.2, DWA", "dwa"))]
format_row_table(rows, "iqa-cr", "iqa_cr_loss_ablation",
                 "# IQA-CR: weight of the content (focal) loss vs. quality on CLIVE\n\n",
                 "focal weight, weighting",
                 "\nSame splits (IQA-CR protocol, seeds 0..4) and recipe as results/iqa_cr.md; only the loss balance "
                 "changes. Content accuracy is against pseudo-labels. Command: `bash benchmarks/iqa_cr_loss_ablation.sh`\n")
PY
