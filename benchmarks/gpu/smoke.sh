#!/usr/bin/env bash
# On the lent GPU machine, with chunk 1 staged: two epochs of full fine-tuning on 60 clive-dev
# photos (the code path of the real run, on CUDA) before the other chunks are sent.
# CACHE_STAGES=N caches stages 0..N-1 with torch on the device first, as the deep rows do.
set -u -o pipefail
D=${GPU_DATA:-/root/gpudata}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$D"/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 CONTENTIQA_CACHE=/root/cache
python3 - "$D" "${CACHE_STAGES:-0}" <<'PY'
import csv, sys
d = sys.argv[1] + "/shared/data/clive-dev"
stages = int(sys.argv[2])
rows = [r for r in csv.DictReader(open(d + "/scores.csv")) if r["image"].lower().endswith(".jpg")][:60]
with open("/root/smoke.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["image", "mos"])
    for r in rows: w.writerow([d + "/" + r["image"], r["mos"]])
open("/root/smoke.yaml", "w").write(f"""name: smoke
data: {{name: csv, root: /root/smoke.csv, label: CLIVE, protocol: ie-iqa, val_fraction: 0.3}}
protocol: ie-iqa
seeds: 1
test: [split]
train: {{optimizer: sgd, lr: 0.01, backbone_lr_scale: 0.3, batch_size: 16, epochs: 2, head_only_epochs: 1,
        warmup_epochs: 1, patience: 0, score_loss: model, rank_weight: 1.0, crop: null, calibrate: true,
        cache_stages: {stages}, cache_runtime: torch, num_workers: {0 if stages else 12}}}
runs:
  - {{name: full, model: ie-iqa, model_args: {{bn_eval: true, input_size: 384, train_resize: 416, intelligibility_input_size: 224, selection: none}}}}
""")
PY
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
rm -rf /root/smoke_out  # a rerun on a warm machine (other CACHE_STAGES) trains afresh, not skips or refuses
time python3 -m contentiqa experiment /root/smoke.yaml --out /root/smoke_out --device "${DEVICE:-cuda}" --quiet 2>&1 | tail -8
