#!/usr/bin/env bash
# The GPU checks of issues 5, 8 and 16 as one prepared run (about 7 minutes on one H100/H200):
# DALI "mixed" decoding, CUDA AMP, ResNet-50 img/s for CE / LIMIT / LIMIT-head, and each
# decode backend feeding ResNet-50 training steps, and a DALI epoch over 10^5 synthetic
# Clothing1M-layout samples in ~1,000 shards (issue 16). Prints everything; BENCHMARKS.md quotes it.
#   WHEELS=DIR bash tools/gpu_check.sh      (DIR: wheels for packages the machine lacks)
set -u
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl || exit 3
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
section() { echo; echo "==== $* ($(date +%T))"; }

section machine
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
nproc; python3 - <<'PY'
import sys, torch, timm
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "timm", timm.__version__)
try:
    import nvidia.dali as d; print("DALI", d.__version__)
except Exception as e:
    print("DALI missing:", e)
PY

section "tests touching GPU branches (DALI mixed decode, AMP)"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_dali.py tests/test_limit_grad.py 2>&1 | grep -E "passed|failed|Error|assert" | tail -12

section "ResNet-50 step time, bf16 autocast, channels_last, batch 256, synthetic on-device batches"
timeout 150 python3 tools/bench_step.py --model resnet50 --image-size 224 --batch-size 256 \
    --steps 20 --warmup 8 --methods ce,limit,limit-head

section "decode backends alone and feeding ResNet-50 (bench_pipeline --gpu)"
timeout 300 python3 tools/bench_pipeline.py --gpu --json 2>&1 | tail -40
section "train/limit.py end to end on the benchmark shards: LIMIT, ResNet-50, bf16, 3 epochs"
DATA=$(ls -d /tmp/limit-bench/shards-*/orig | head -1)
for backend in auto cpu; do
  timeout 150 python3 train/limit.py --data "$DATA" --model resnet50 --method limit --epochs 3 \
      --batch-size 256 --workers "$(nproc)" --mixed-precision bf16 --backend $backend \
      --optimizer sgd --lr 0.1 --out /tmp/run-$backend 2>&1 | grep -E "^limit|^ce|^epoch [0-9]+:|done|rror" | grep -v "it/s"
done
section "issue 16: one DALI epoch over 10^5 synthetic samples in ~1,000 shards (bench_stream tenths)"
C=/tmp/c100k
timeout 120 python3 tools/synth_clothing.py $C/src --n 100000 --workers "$(nproc)" | tail -1
timeout 120 python3 tools/make_shards.py clothing1m $C/src --out $C/shards --name c1m \
    --workers "$(nproc)" --shard-size 100 2>&1 | tail -1
timeout 240 python3 tools/bench_stream.py --json "$OUT/dali-epoch-100k.json" -- python3 train/limit.py \
    --data $C/shards --model resnet18 --image-size 64 --batch-size 256 --epochs 1 --backend dali \
    --workers "$(nproc)" --mixed-precision bf16 --out $C/run --overwrite 2>&1 | tail -12
section done
