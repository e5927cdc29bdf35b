#!/usr/bin/env bash
# The toy FAV step against the paper's code, interleaved in one session (BENCHMARKS.md, "Toy FAV
# step"): per round the paper's fav-toy step on PyTorch (glibc's default allocator, then the
# tuned one), then `fav bench` on 1 rank (all threads, then 1 thread) and on 2 thread ranks.
#
#   scripts/bench/toy_same_run.sh FAV_TOY_DIR [ROUNDS]    # python3 with torch, scipy, tqdm on PATH
#
# Prints one line per measurement: round, configuration, median and min ms per step.
set -euo pipefail
toy=${1:?usage: toy_same_run.sh FAV_TOY_DIR [ROUNDS]}
rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
fav=${FAV:-$here/../../target/release/fav}
tuned=(MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456)
threads=$(nproc)

reference() { # label, env...
    local label=$1
    shift
    env "$@" python3 "$here/toy_reference.py" "$toy" --runs 60 --threads "$threads" |
        python3 -c 'import json, sys
r = json.load(sys.stdin)
g = lambda k: r[k]["median_ms"]
print(sys.argv[1], "%.1f %.1f  (generator fwd %.1f, fwd+bwd %.1f, field %.1f)" % (g("step"), r["step"]["min_ms"], g("generator_forward"), g("generator_forward_backward"), g("field")))' "$label"
}

ours() { # label, fav bench args...
    local label=$1
    shift
    "$fav" bench --runs 60 --field-n 64 --field-d 8 "$@" 2>&1 |
        sed -n 's/^FAV step .*median \([0-9.]*\) ms (min \([0-9.]*\)) | per step: \(.*\) | threads.*/'"$label"' \1 \2  (\3)/p'
}

for r in $(seq 1 "$rounds"); do
    echo "# round $r"
    reference "reference-pytorch"
    reference "reference-pytorch-tuned-malloc" "${tuned[@]}"
    ours "fav-1-rank" --ranks 1
    RAYON_NUM_THREADS=1 ours "fav-1-rank-1-thread" --ranks 1
    ours "fav-$threads-thread-ranks" --ranks "$threads"
done
