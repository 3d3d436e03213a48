#!/bin/sh
# Decode throughput of a cluster of moerun-worker ranks for ep = 1, 2, 4 (pp = 1) on this
# machine, with the share of step time the ranks spend waiting in the data plane (dispatch /
# combine) and the largest resident memory of a rank, and of a 2-stage pipeline with 1 and 2 micro-batches (stages overlap only with
# more than one). Not run by ctest.
#
#   bench/cluster_decode.sh BUILD_DIR [MODEL_DIR] [CORES]
#
# MODEL_DIR defaults to /tmp/dsv4-small (made with moerun-mkmodel --preset small if missing).
# CORES (default: nproc) are shared among the ranks: ep=1 gets CORES kernel threads, ep=E
# gets max(1, CORES/E) per rank. 8 prompts of 8 tokens decode 32 tokens each; throughput is
# measured over the steps that hold only decode tokens and reported as a ratio to ep=1 from
# the same run.
set -eu
build=$1
model=${2:-/tmp/dsv4-small}
cores=${3:-$(nproc)}
worker=$build/worker/moerun-worker
[ -x "$worker" ] || { echo "no $worker (build first)" >&2; exit 2; }
if [ ! -f "$model/config.json" ]; then
  "$build/tools/mkmodel/moerun-mkmodel" --preset small --out "$model"
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -c "
import random
r = random.Random(3)
for _ in range(8): print(' '.join(str(r.randrange(2, 1000)) for _ in range(8)))
" > "$tmp/prompts.txt"
run() {  # run NAME RANKS LAYOUT [worker options...]
  name=$1 np=$2 layout=$3
  shift 3
  threads=$((cores / np)); [ "$threads" -ge 1 ] || threads=1
  OMP_NUM_THREADS=$threads mpirun -np "$np" --oversubscribe --bind-to none --mca pml ob1 \
    --mca mpi_yield_when_idle 1 "$worker" --model "$model" --prompts "$tmp/prompts.txt" \
    --max-new-tokens 32 --max-sequences 8 --threads "$threads" --layout "$layout" \
    --out "$tmp/$name.json" "$@" > /dev/null
}
for ep in 1 2 4; do run "ep$ep" "$ep" "pp=1,ep=$ep"; done
run pp2mb1 2 pp=2,ep=1 --micro-batches 1
run pp2mb2 2 pp=2,ep=1 --micro-batches 2
python3 - "$tmp" <<'PY'
import json, sys
base = None
print(f"{'run':>7} {'decode tok/s':>13} {'vs ep=1':>8} {'ms/step':>8} {'comm share':>11} "
      f"{'dispatch B/tok/layer':>21} {'combine B/tok/layer':>20} {'max RSS/rank MB':>16}")
for name in ("ep1", "ep2", "ep4", "pp2mb1", "pp2mb2"):
    j = json.load(open(f"{sys.argv[1]}/{name}.json"))
    tps = j["decode_tokens"] / j["decode_seconds"]
    base = base or tps
    ranks = j.get("ranks", [])
    step = sum(r["step_seconds"] for r in ranks)
    comm = sum(r["comm_seconds"] for r in ranks)
    toks = sum(r["dispatch_tokens"] for r in ranks)
    disp = sum(r["dispatch_bytes_sent"] for r in ranks) / toks if toks else 0
    comb = sum(r["combine_bytes_sent"] for r in ranks) / toks if toks else 0
    print(f"{name:>7} {tps:>13.1f} {tps / base:>8.2f} {1e3 * j['decode_seconds'] / j['decode_steps']:>8.1f} "
          f"{(comm / step if step else 0):>11.2f} {disp:>21.0f} {comb:>20.0f} "
          f"{max((r['resident_bytes'] for r in ranks), default=0) / 1e6:>16.0f}")
PY
