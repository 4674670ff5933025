#!/usr/bin/env bash
# Every training benchmark on one GPU. The models are small, so one GPU serves several training
# processes at once; then one aggregating pass per benchmark writes the combined tables and
# ships IE-IQA (src/contentiqa/weights). Resumable: rerun it after an interruption.
#
#   CONTENTIQA_SHARED=/path/to/shared bash benchmarks/run_all_gpu.sh
#
# Seeds: IQA_CR_SEEDS (default 5), IE_IQA_SEEDS (3), SCRATCH_SEEDS (2). Logs: benchmarks/runs/logs.
set -u
PY=${PYTHON:-python}
cd "$(dirname "$0")"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
S=${IQA_CR_SEEDS:-5}; E=${IE_IQA_SEEDS:-3}; SCR=${SCRATCH_SEEDS:-2}
CR="--epochs 15 --patience 5 --cache-stages 6 --device cuda"
IE="--epochs 10 --scratch-epochs 10 --input-size 384 --device cuda"
mkdir -p runs/logs
$PY iqa_cr.py --models iqa-cr --seeds "$S" $CR >runs/logs/cr1.log 2>&1 &
$PY iqa_cr.py --models iqa-cr-q,iqa-cr-c --seeds "$S" $CR >runs/logs/cr2.log 2>&1 &
$PY iqa_cr.py --models mtl-transformer,mtl-pooled --seeds "$S" $CR >runs/logs/cr3.log 2>&1 &
$PY ie_iqa.py --seeds "$E" --scratch-seeds 0 $IE >runs/logs/ie1.log 2>&1 &
$PY ie_iqa.py --seeds 0 --scratch-seeds "$SCR" --workers 6 $IE >runs/logs/ie2.log 2>&1 &
wait
# (the shipped iqa-cr and iqa-cr-q come from benchmarks/iqa_cr_sweep.sh, which runs after this)
$PY iqa_cr.py --models iqa-cr,iqa-cr-q,iqa-cr-c,mtl-transformer,mtl-pooled --seeds "$S" $CR >runs/logs/cr_all.log 2>&1 &
$PY ie_iqa.py --seeds "$E" --scratch-seeds "$SCR" $IE --ship >runs/logs/ie_all.log 2>&1 &
wait
tail -n 30 runs/logs/cr_all.log runs/logs/ie_all.log
