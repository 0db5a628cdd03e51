#!/usr/bin/env bash
# Issue 16's training measurements on a Clothing1M-layout shard set (BENCHMARKS.md, "Scaling"),
# each through tools/bench_stream.py (JSON + the trainer's stderr in OUT/):
#   startup-A / startup-B  launch -> first optimizer step on shard sets A and B (e.g. 200 and
#                          2,000 train shards), killed after 3 steps
#   balance / subset       one epoch of --balance N against one of --max-train-samples N:
#                          bytes read and wall time
#   epoch                  one epoch over the whole train split with a --save-every checkpoint
#                          at STEP (~60%), the run folder copied once it is written
#   resume                 --resume auto from that copy: launch -> first new step
#   bash benchmarks/train_scale.sh A B OUT [N] [STEP] [stage...]    (default: every stage)
set -euo pipefail
a=$1 b=$2 out=$3 n=${4:-64000} step=${5:-9000}
shift $(( $# < 5 ? $# : 5 ))
stages=${*:-startup-A startup-B balance subset epoch resume}
py=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1
mkdir -p "$out"
train=(train/limit.py --model mnist_cnn --image-size 64 --batch-size 64 --epochs 1 --workers 2)
bench() { local name=$1; shift; "$py" tools/bench_stream.py --json "$out/$name.json" "$@"; }
for s in $stages; do
  case $s in
    startup-A) bench startup-A --stop-after-steps 3 -- "$py" "${train[@]}" --data "$a" --out "$out/run-startup-A" --overwrite ;;
    startup-B) bench startup-B --stop-after-steps 3 -- "$py" "${train[@]}" --data "$b" --out "$out/run-startup-B" --overwrite ;;
    balance)   bench balance -- "$py" "${train[@]}" --data "$a" --balance "$n" --out "$out/run-balance" --overwrite ;;
    subset)    bench subset -- "$py" "${train[@]}" --data "$a" --max-train-samples "$n" --out "$out/run-subset" --overwrite ;;
    epoch)     rm -rf "$out/run-resume"
               bench epoch --copy-at "$step" "$out/run-epoch" "$out/run-resume" -- "$py" "${train[@]}" --data "$a" \
                   --save-every "$step" --out "$out/run-epoch" --overwrite ;;
    resume)    bench resume --stop-after-steps 3 -- "$py" "${train[@]}" --data "$a" --save-every "$step" \
                   --out "$out/run-resume" --resume auto ;;
    *) echo "train_scale.sh: unknown stage $s" >&2; exit 2 ;;
  esac
done
