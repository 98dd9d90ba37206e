#!/usr/bin/env bash
# Deterministic simulation runner (see docs/SIMULATION.md).
#
#   scripts/sim.sh --seeds N [--from S] [--release] [--mix M] [--jobs J]   (SIM_CHUNK=K: K seeds per process)
#       Sweeps seeds S..S+N-1 of every fault mix (or one mix: crashes, disk, network,
#       idempotent, mixed, or cluster / cluster-disk for the 3-node test), one process per
#       seed batch. Failing seeds (violations and panics) are listed at the end with their
#       replay files.
#   scripts/sim.sh --replay FILE [--release]
#       Replays a schedule file (its seed and mix are inside) with tracing on, stamped with
#       simulated time (RUNNEL_SIM_LOG overrides the filter).
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
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

simtest() { cargo simtest "${profile[@]}" --test sim "$@"; }
# "cluster" is the 3-node test (sim/cluster.rs), "cluster-disk" the same with fsync EIO and ENOSPC;
# the other mixes are the swarm's. No mix: every test.
filter_for() {
  case "$1" in
    "") echo "" ;;
    cluster) echo "cluster::faults" ;;
    cluster-disk) echo "cluster::faults_with_disk_errors" ;;
    *) echo "swarm::$1" ;;
  esac
}

case "$mode" in
  sweep)
    [ -n "$seeds" ] || { echo "--seeds N is required" >&2; exit 2; }
    simtest --no-run >/dev/null 2>&1 || simtest --no-run
    out=$(mktemp)
    start=$(date +%s)
    # madsim runs seeds from..from+N-1 of each test; a failing seed stops that test's sweep, so
    # sweep in chunks and keep going after failures. One seed per process by default: state that
    # leaks between seeds run in one process (std's per-thread hash keys, thread RNGs) can make a
    # seed fail only after certain others, and such a failure would not replay alone.
    chunk=${SIM_CHUNK:-1}
    s=$from
    end=$((from + seeds))
    failed=0
    while [ "$s" -lt "$end" ]; do
      n=$(( end - s < chunk ? end - s : chunk ))
      chunk_out=$(mktemp)
      if ! MADSIM_TEST_SEED=$s MADSIM_TEST_NUM=$n ${jobs:+MADSIM_TEST_JOBS=$jobs} \
          simtest "$(filter_for "$mix")" -- --nocapture ${mix:+--exact} >"$chunk_out" 2>&1; then
        failed=1
        # A panic inside a node (an assertion, raft-rs) aborts the run before the checker
        # reports: list it like a violation. The cluster tests leave their replay file behind.
        if ! grep -q "SIM-FAILURE" "$chunk_out"; then
          why=$(grep -m1 -A1 "panicked at" "$chunk_out" | tail -1 || true)
          echo "SIM-FAILURE seed=$s (chunk of $n) mix=${mix:-all} first=PANIC: ${why:-cargo failed, see the output}" >>"$chunk_out"
        fi
      fi
      cat "$chunk_out" >>"$out"
      rm -f "$chunk_out"
      s=$((s + n))
    done
    wall=$(( $(date +%s) - start ))
    runs=$(grep -c "trace hash" "$out" || true)
    sim_s=$(grep -o "simulated [0-9.]*s" "$out" | awk '{gsub("s","",$2); t+=$2} END {printf "%.0f", t}')
    echo "seeds $from..$((end - 1)) ${mix:-all mixes}: $runs runs, ${sim_s}s simulated in ${wall}s wall"
    if grep -q "SIM-FAILURE" "$out"; then
      echo "FAILURES (each stops its mix's chunk; re-run with --from after the seed to continue):"
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
