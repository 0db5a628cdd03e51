#!/usr/bin/env bash
# Issue 16's "done when" for make_shards at any N (BENCHMARKS.md, "Scaling"): against a finished
# reference conversion REF of SRC, a conversion SIGKILLed at about half and rerun, and one done as
# --part 1/2 + --part 2/2 + --merge, must both give byte-identical shards, indexes, card and
# manifest (the card differs only in its "out" option, which names the folder).
#   bash benchmarks/make_shards_restarts.sh SRC REF SCRATCH [WORKERS]
set -euo pipefail
src=$1 ref=$2 scratch=$3 workers=${4:-2}
py=${PY:-.venv/bin/python}
ms() { "$py" tools/make_shards.py clothing1m "$src" --name c1m --workers "$workers" "$@"; }
total=$(ls "$ref"/*.tar | wc -l)

same_as_ref() {                        # every file of REF equal in $1, the card up to "out"
  local d=$1 bad=0
  for f in "$ref"/*; do
    b=$(basename "$f")
    if [ "$b" = c1m.json ]; then
      diff <(grep -v '"out":' "$f") <(grep -v '"out":' "$d/$b") >/dev/null || { echo "DIFF $b"; bad=1; }
    else
      cmp -s "$f" "$d/$b" || { echo "DIFF $b"; bad=1; }
    fi
  done
  [ "$(ls "$d" | wc -l)" = "$(ls "$ref" | wc -l)" ] || { echo "DIFF file count"; bad=1; }
  [ $bad = 0 ] && echo "identical to $ref: $d ($(ls "$d" | wc -l) files)"
  return $bad
}

rm -rf "$scratch" && mkdir -p "$scratch"
# 1. SIGKILL the whole conversion (main and workers) once half the tars exist, then rerun
( setsid bash -c "exec $py tools/make_shards.py clothing1m '$src' --out '$scratch/killed' --name c1m --workers $workers" \
    > "$scratch/killed.log" 2>&1 & echo $! > "$scratch/pid"; wait ) &
while [ "$(ls "$scratch/killed"/*.tar 2>/dev/null | wc -l)" -lt $((total / 2)) ]; do sleep 1; done
kill -KILL -- -"$(cat "$scratch/pid")"
wait
echo "killed at $(ls "$scratch/killed"/*.tar | wc -l) of $total tars ($(date -u +%T))"
t=$(date +%s.%N)
ms --out "$scratch/killed"
echo "rerun after the kill: $(echo "$(date +%s.%N) - $t" | bc) s"
same_as_ref "$scratch/killed"

# 2. two parts into one folder, then the merge
t=$(date +%s.%N)
ms --out "$scratch/parts" --part 1/2
ms --out "$scratch/parts" --part 2/2
ms --out "$scratch/parts" --merge
echo "parts 1/2 + 2/2 + merge, one after the other: $(echo "$(date +%s.%N) - $t" | bc) s"
same_as_ref "$scratch/parts"
