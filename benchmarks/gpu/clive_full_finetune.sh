#!/usr/bin/env bash
# On the lent GPU machine, after every chunk is staged: clive_finetune.yaml's fully fine-tuned
# rows (3 seeds each, clive-dev test parts and BIQ2021's test), each row in its own process on
# the one GPU. What comes back ($OUT): the logs and the per-split metrics, which `contentiqa
# experiment ... --only ROW` here turns into the table (benchmarks/gpu/README.md).
#   ROWS="IE-IQA, fully fine-tuned;IE-IQA, fully fine-tuned, 20 epochs" bash benchmarks/gpu/clive_full_finetune.sh
set -u -o pipefail
D=${GPU_DATA:-/root/gpudata}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$D"/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
export CONTENTIQA_SHARED=$D/shared CONTENTIQA_BIQ2021=$D/biq2021 CONTENTIQA_CACHE=/root/cache
[ "${DEVICE:-cuda}" = cpu ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
IFS=';' read -ra rows <<< "${ROWS:-IE-IQA, fully fine-tuned}"
i=0
for row in "${rows[@]}"; do
  i=$((i + 1))
  python3 -m contentiqa experiment configs/clive_finetune.yaml --out /root/out --only "$row" --device "${DEVICE:-cuda}" --quiet >"$OUT/log$i.txt" 2>&1 &
done
wait
# one more pass writes the table from the finished splits
python3 -m contentiqa experiment configs/clive_finetune.yaml --out /root/out --only "${rows[0]}" --quiet >"$OUT/log.txt" 2>&1
rc=$?
(cd /root/out && tar czf "$OUT/metrics.tgz" results.json results.md metrics runs/*/seed*/metrics.jsonl 2>/dev/null)
tail -n 3 "$OUT"/log*.txt
exit $rc
