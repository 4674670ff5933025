#!/usr/bin/env bash
# Every CLIVE training benchmark on one GPU, each an experiment config run by the package's
# runner (benchmarks/iqa_cr.py, ie_iqa.py: the code path of `contentiqa experiment`). The models
# are small, so one GPU serves several rows at once: each row trains in its own process (--only),
# then one pass per config (finished splits are read back) writes the tables. Resumable: rerun
# it after an interruption.
#
#   CONTENTIQA_SHARED=/path/to/shared bash benchmarks/run_all_gpu.sh
#
# Logs: benchmarks/runs/logs. The shipped iqa-cr.clive / iqa-cr-q.clive come from iqa_cr_sweep.sh.
set -u
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)  # no cd: a relative CONTENTIQA_SHARED is the caller's
LOGS=$HERE/runs/logs
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
mkdir -p "$LOGS"
i=0
for row in IQA-CR IQA-CR-Q IQA-CR-C MTL-Transformer MTL-Pooled "IQA-CR, content loss 0.05, D=128"; do
  i=$((i + 1)); $PY "$HERE/iqa_cr.py" --device cuda --quiet --only "$row" >"$LOGS"/cr$i.log 2>&1 &
done
for row in "distortion only" "IE-IQA, no selection (1280 features)" "IE-IQA, contribution selection k=5%" \
           "distortion only, from scratch" "IE-IQA, contribution selection k=5%, from scratch"; do
  i=$((i + 1)); $PY "$HERE/ie_iqa.py" --device cuda --quiet --only "$row" >"$LOGS"/ie$i.log 2>&1 &
done
wait
$PY "$HERE/iqa_cr.py" --device cuda --quiet >"$LOGS"/cr_all.log 2>&1 &
$PY "$HERE/ie_iqa.py" --device cuda --quiet >"$LOGS"/ie_all.log 2>&1 &
wait
tail -n 30 "$LOGS"/cr_all.log "$LOGS"/ie_all.log
