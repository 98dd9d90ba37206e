#!/usr/bin/env bash
# Proves the simulator finds bugs: applies each sim/mutants/*.patch to a scratch copy of the
# repository, sweeps seeds there (every fault mix) and prints a table: mutant, caught?, first
# failing seed and mix, the checker's first message. Exits non-zero if any mutant survives.
#
#   scripts/sim-mutants.sh [--seeds N] [--from S] [--only NAME]
#
# The scratch copy lives in ${MUTANT_DIR:-/tmp/runnel-mutant} and builds into its own target
# dir (${MUTANT_TARGET:-/tmp/runnel-mutant-target}, shared between mutants so only the
# runnel crate rebuilds); the working tree is never modified.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
seeds=100
from=1
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
scratch=${MUTANT_DIR:-/tmp/runnel-mutant}
export CARGO_TARGET_DIR=${MUTANT_TARGET:-/tmp/runnel-mutant-target}
table=$(mktemp)
survivors=0
for patch in "$root"/sim/mutants/*.patch; do
  name=$(basename "$patch" .patch)
  if [ -n "$only" ] && [[ "$name" != *"$only"* ]]; then continue; fi
  rm -rf "$scratch"
  mkdir -p "$scratch"
  tar -C "$root" --exclude=./target --exclude=./.git -cf - . | tar -C "$scratch" -xf -
  if ! (cd "$scratch" && git apply "$patch"); then
    printf '%s\t%s\t%s\t%s\n' "$name" "PATCH FAILED" "-" "does not apply to this tree" >>"$table"
    survivors=$((survivors + 1))
    continue
  fi
  out="$scratch/sweep.txt"
  start=$(date +%s)
  # A patch may name the sim tests that exercise it ("Sim-tests: cluster::"); default: the swarm.
  filter=$(sed -n 's/^Sim-tests: *//p' "$patch" | head -1)
  filter=${filter:-swarm::}
  (cd "$scratch" && MADSIM_TEST_SEED=$from MADSIM_TEST_NUM=$seeds \
    cargo test --release --config "build.rustflags=['--cfg','madsim']" --test sim "$filter" -- --nocapture) \
    >"$out" 2>&1 || true
  wall=$(( $(date +%s) - start ))
  first=$(grep -m1 "SIM-FAILURE" "$out" || true)
  if [ -n "$first" ]; then
    seed=$(sed -E 's/.*seed=([0-9]+) mix=([a-z]+).*/\1 (\2)/' <<<"$first")
    msg=$(sed -E 's/.* first=//' <<<"$first" | cut -c1-110)
    caught=$(grep -c "SIM-FAILURE" "$out" || true)
    printf '%s\t%s\t%s\t%s\n' "$name" "yes ($caught failing tests of $filter, ${wall}s)" "$seed" "$msg" >>"$table"
  elif grep -q "error\[" "$out"; then
    printf '%s\t%s\t%s\t%s\n' "$name" "BUILD FAILED" "-" "see $out" >>"$table"
    survivors=$((survivors + 1))
  else
    printf '%s\t%s\t%s\t%s\n' "$name" "NO (${wall}s)" "-" "survived $seeds seeds of each mix" >>"$table"
    survivors=$((survivors + 1))
  fi
  echo "done: $(tail -1 "$table")" >&2
done
echo
echo "| mutant | caught? | first failing seed (mix) | checker message |"
echo "|---|---|---|---|"
awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}' "$table"
rm -f "$table"
exit $((survivors > 0))
