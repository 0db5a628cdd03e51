#!/usr/bin/env bash
# make_shards at two sizes from a cold page cache (BENCHMARKS.md, "Scaling"): the same command
# on each source after `echo 3 > /proc/sys/vm/drop_caches` (needs root), under GNU time -v and
# bench_scale's wrapper (main and largest-worker RSS sampled each second, bytes read).
#   bash benchmarks/make_shards_cold.sh OUT SOURCE...    e.g. OUT data/c100k data/c1m
set -euo pipefail
out=$1; shift
py=${PY:-.venv/bin/python}
mkdir -p "$out"
for src in "$@"; do
  name=$(basename "$src")
  rm -rf "$out/$name"
  sync; echo 3 > /proc/sys/vm/drop_caches
  /usr/bin/time -v "$py" tools/bench_scale.py --_measure "$out/$name.json" -- \
      "$py" tools/make_shards.py clothing1m "$src" --out "$out/$name" --name "$name" --workers 2 \
      2> "$out/$name.time" | tail -1
  echo "$name: $(cat "$out/$name.json") $(grep -E 'Elapsed|Maximum resident' "$out/$name.time" | tr -s ' ' | tr '\n' ' ')"
done
