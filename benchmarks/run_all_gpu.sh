#!/usr/bin/env bash
# Every CLIVE training benchmark on one GPU, each an experiment config run by the package's
# runner (benchmarks/iqa_cr.py, ie_iqa.py: the code path of `contentiqa experiment`). The models
# are small, so one GPU serves the two configs at once, one process each (a results folder takes
# one process at a time: rows of one config side by side were refused, and each --only pass wrote
# a one-row table over the published one). Resumable: rerun it after an interruption.
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
$PY "$HERE/iqa_cr.py" --device cuda --quiet >"$LOGS"/cr_all.log 2>&1 &
cr=$!
$PY "$HERE/ie_iqa.py" --device cuda --quiet >"$LOGS"/ie_all.log 2>&1 &
ie=$!
rc=0  # either benchmark failing fails the script (the tail below would say 0)
wait "$cr" || rc=1
wait "$ie" || rc=1
tail -n 30 "$LOGS"/cr_all.log "$LOGS"/ie_all.log
exit $rc
