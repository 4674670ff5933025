#!/usr/bin/env bash
# On the lent GPU machine, after every chunk is staged (stage.sh): rows of an experiment config,
# one after another, each row's seeds side by side in their own processes (`--seed`; they build
# the shared cache together), then the table. A results folder takes one process at a time, so
# each seed's process has its own beside $RUNS ($RUNS.sS: the same parent, so an init_from of
# '../other/...' names the same folder), its runs/ the shared $RUNS/runs; the table pass imports
# their splits into $RUNS. What comes back in $OUT: metrics.tgz (the results
# folder's tables, per-split metrics, histories and logs) and, for the rows named in WEIGHTS,
# every seed's tested.pt without its ImageNet-identical tensors, in pieces under the return
# limit (collect.py puts them back together here).
#
#   ROWS="ROW A;ROW B" [SEEDS="0 1 2"] [WEIGHTS="ROW B"] bash benchmarks/gpu/experiment.sh configs/X.yaml
set -u -o pipefail
CONFIG=$1
D=${GPU_DATA:-/root/gpudata}
# not $OUT: what is left there comes back, unslimmed checkpoints included; absolute, as the seeds'
# links to its runs/ must be (a relative target resolves from the link's own folder)
RUNS=$(realpath -m "${GPU_RUNS:-/root/runs}")
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$D"/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
export CONTENTIQA_SHARED=$D/shared CONTENTIQA_BIQ2021=$D/biq2021 CONTENTIQA_CACHE=/root/cache
[ "${DEVICE:-cuda}" = cpu ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p "$RUNS/logs"
# Each seed's process gets its share of the CPU cores: with every process using them all, the
# CPU side of building a cache (decoding, resizing, saving) ran at a fraction of its speed.
seeds=(${SEEDS:-0 1 2})
threads=$(( $(nproc) / ${#seeds[@]} ))
threads=$(( threads > 0 ? threads : 1 ))
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
IFS=';' read -ra rows <<< "${ROWS:?name the rows: ROWS=\"ROW A;ROW B\"}"
rc=0
mkdir -p "$RUNS/runs"
for seed in "${seeds[@]}"; do
  mkdir -p "$RUNS.s$seed" && ln -sfn "$RUNS/runs" "$RUNS.s$seed/runs"
done
for row in "${rows[@]}"; do
  t0=$(date +%s)
  for seed in "${seeds[@]}"; do
    python3 -m contentiqa experiment "$CONFIG" --out "$RUNS.s$seed" --only "$row" --seed "$seed" --strict \
      --device "${DEVICE:-cuda}" >"$RUNS/logs/$(echo "$row" | tr -c 'A-Za-z0-9.+-' _)_seed$seed.txt" 2>&1 &
  done
  for job in $(jobs -p); do wait "$job" || rc=1; done
  echo "$row: $(( $(date +%s) - t0 )) s"
done
# one more pass takes every seed's finished splits into $RUNS and writes the table there (a seed whose
# process died before writing any results is left out, not the others with it)
imports=()
for seed in "${seeds[@]}"; do
  # a seed without results is a failure of this lease, whatever its process said
  if [ -f "$RUNS.s$seed/results.json" ]; then imports+=(--import "$RUNS.s$seed/results.json"); else rc=1; fi
done
python3 -m contentiqa experiment "$CONFIG" --out "$RUNS" "${imports[@]}" --table-only --quiet \
  >"$RUNS/logs/table.txt" 2>&1 || rc=1
(cd "$RUNS" && tar czf "$OUT/metrics.tgz" --ignore-failed-read results.json results.md metrics logs runs/*/seed*/metrics.jsonl \
  runs/*/seed*/config.json runs/*/seed*/recipe.json 2>/dev/null)  # ship.py --from-run reads a split's config.json
if [ -n "${WEIGHTS:-}" ]; then
  python3 benchmarks/gpu/collect.py slim "$RUNS" --rows "$WEIGHTS" --out "$OUT" || rc=1
fi
tail -n 2 "$RUNS"/logs/*.txt
exit $rc
