#!/usr/bin/env bash
# Deterministic simulation runner (see docs/SIMULATION.md).
#
#   scripts/sim.sh --seeds N [--from S] [--release] [--mix M] [--jobs J]   (SIM_CHUNK=K: K seeds per process)
#       Sweeps seeds S..S+N-1 of every test (or one mix: crashes, disk, network, idempotent,
#       mixed, single_node, cluster / cluster-disk / cluster-overlap for the cluster tests), SIM_CHUNK seeds
#       (default 50) per process; after a failing seed (a violation or a panic) the sweep goes
#       on from the next one. Failing seeds are listed at the end with their replay files.
#   scripts/sim.sh --replay FILE [--release]
#       Replays a schedule file (its seed and mix are inside) with tracing on, stamped with
#       simulated time (RUNNEL_SIM_LOG overrides the filter).
#   scripts/sim.sh --shrink FILE [--release]
#       Removes faults from a failing schedule while its replay still fails the same way
#       (scripts/sim-shrink.py); writes FILE's name with .shrunk.schedule.
#   scripts/sim.sh --check-determinism [--seed S] [--mix M] [--release]
#       Runs one seed twice in separate processes and compares the trace hashes, then runs
#       it again under MADSIM_TEST_CHECK_DETERMINISM=1.
#
# Environment: CARGO_TARGET_DIR is honoured by cargo as usual (the mutant script sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=""
from=1
profile=()
mode=sweep
replay=""
mix=""
seed=""
jobs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    --release) profile=(--release); shift ;;
    --replay) mode=replay; replay="$2"; shift 2 ;;
    --check-determinism) mode=determinism; shift ;;
    --seed) seed="$2"; shift 2 ;;
    --mix) mix="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --shrink) mode=shrink; replay="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

simtest() { cargo simtest "${profile[@]}" --test sim "$@"; }
# "cluster" is the 3-node test (sim/cluster.rs), "cluster-disk" the same with fsync EIO and ENOSPC,
# "cluster-overlap" 3 or 5 nodes with overlapping faults;
# the other mixes are the swarm's. No mix: every test.
filter_for() {
  case "$1" in
    single_node) echo "single_node" ;;
    cluster) echo "cluster::faults" ;;
    cluster-disk) echo "cluster::faults_with_disk_errors" ;;
    cluster-overlap) echo "cluster::overlapping_faults" ;;
    *) echo "swarm::$1" ;;
  esac
}

case "$mode" in
  sweep)
    [ -n "$seeds" ] || { echo "--seeds N is required" >&2; exit 2; }
    simtest --no-run >/dev/null 2>&1 || simtest --no-run
    out=$(mktemp)
    start=$(date +%s)
    # madsim runs seeds from..from+N-1 of a test in one process and stops at the first failing
    # seed, so sweep in chunks and go on after the failing seed. Seeds run in one process replay
    # alone (no state leaks between them since runtime::watch, see docs/SIMULATION.md).
    chunk=${SIM_CHUNK:-50}
    end=$((from + seeds))
    failed=0
    mixes=${mix:-crashes disk network idempotent mixed single_node cluster cluster-disk cluster-overlap}
    for m in $mixes; do
      s=$from
      while [ "$s" -lt "$end" ]; do
        n=$(( end - s < chunk ? end - s : chunk ))
        part=$(mktemp)
        if MADSIM_TEST_SEED=$s MADSIM_TEST_NUM=$n ${jobs:+MADSIM_TEST_JOBS=$jobs} \
            simtest "$(filter_for "$m")" -- --exact --nocapture >"$part" 2>&1; then
          s=$((s + n))
        else
          bad=$(grep -o "SIM-FAILURE seed=[0-9]*" "$part" | tail -1 | grep -o "[0-9]*$" || true)
          if [ -z "$bad" ]; then
            bad=$(grep -o "MADSIM_TEST_SEED=[0-9]*" "$part" | tail -1 | grep -o "[0-9]*$" || true)
            echo "SIM-FAILURE seed=$bad mix=$m (panic; see the output)" >>"$part"
          fi
          if [ -z "$bad" ]; then failed=1; cat "$part" >>"$out"; rm -f "$part"; break; fi
          s=$((bad + 1))
        fi
        cat "$part" >>"$out"
        rm -f "$part"
      done
    done
    wall=$(( $(date +%s) - start ))
    runs=$(grep -c "trace hash" "$out" || true)
    sim_s=$(grep -o "simulated [0-9.]*s" "$out" | awk '{gsub("s","",$2); t+=$2} END {printf "%.0f", t}')
    echo "seeds $from..$((end - 1)) ${mix:-all mixes}: $runs runs, ${sim_s}s simulated in ${wall}s wall"
    if grep -q "SIM-FAILURE" "$out"; then
      echo "FAILURES:"
      grep "SIM-FAILURE" "$out"
      echo "full output: $out"
      exit 1
    fi
    if [ "$failed" = 1 ]; then echo "cargo failed; output in $out"; tail -30 "$out"; exit 1; fi
    echo "zero violations"
    rm -f "$out"
    ;;
  replay)
    [ -f "$replay" ] || { echo "no such file $replay" >&2; exit 2; }
    s=$(awk -F' = ' '$1=="seed"{print $2}' "$replay")
    m=$(awk -F' = ' '$1=="mix"{print $2}' "$replay")
    RUNNEL_SIM_REPLAY="$(realpath "$replay")" RUNNEL_SIM_LOG="${RUNNEL_SIM_LOG:-info}" \
      MADSIM_TEST_SEED="$s" MADSIM_TEST_NUM=1 simtest "$(filter_for "$m")" -- --exact --nocapture
    ;;
  shrink)
    [ -f "$replay" ] || { echo "no such file $replay" >&2; exit 2; }
    s=$(awk -F' = ' '$1=="seed"{print $2}' "$replay")
    m=$(awk -F' = ' '$1=="mix"{print $2}' "$replay")
    simtest --no-run >/dev/null 2>&1 || simtest --no-run
    python3 scripts/sim-shrink.py --file "$replay" --filter "$(filter_for "$m")" --seed "$s" \
      ${profile[@]+"${profile[@]}"}
    ;;
  determinism)
    s=${seed:-42}
    m=${mix:-mixed}
    t=$(filter_for "$m")
    h1=$(MADSIM_TEST_SEED=$s MADSIM_TEST_NUM=1 simtest "$t" -- --exact --nocapture 2>&1 | grep -o "trace hash [0-9a-f]*" || true)
    h2=$(MADSIM_TEST_SEED=$s MADSIM_TEST_NUM=1 simtest "$t" -- --exact --nocapture 2>&1 | grep -o "trace hash [0-9a-f]*" || true)
    echo "seed $s mix $m: run 1 $h1; run 2 $h2"
    if [ -z "$h1" ] || [ "$h1" != "$h2" ]; then echo "NOT DETERMINISTIC (or the run failed)"; exit 1; fi
    if ! MADSIM_TEST_CHECK_DETERMINISM=1 MADSIM_TEST_SEED=$s MADSIM_TEST_NUM=1 simtest "$t" -- --exact >/dev/null 2>&1; then
      echo "MADSIM_TEST_CHECK_DETERMINISM=1 failed"; exit 1
    fi
    echo "deterministic: same trace hash in two processes; MADSIM_TEST_CHECK_DETERMINISM=1 passes"
    ;;
esac
