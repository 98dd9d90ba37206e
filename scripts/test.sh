#!/usr/bin/env bash
# Runs every test: installs what it needs (rustfmt, clippy, kcat, the Python Kafka clients),
# then formatting, lints, unit/property tests, real-process tests, the simulation build and
# seed sweep, and the acceptance checks with real Kafka clients against the real binary.
#
#   scripts/test.sh            # everything
#   SKIP_ACCEPTANCE=1 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${RUNNEL_SHARED:-$ROOT/../shared}
step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "acceptance clients (kcat, confluent-kafka, kafka-python)"
PY=""
if [[ -x $SHARED/acceptance/setup.sh ]] || [[ -f $SHARED/acceptance/setup.sh ]]; then
  PY=$(bash "$SHARED/acceptance/setup.sh" | tail -n 1)
  echo "python: $PY"
else
  echo "no $SHARED/acceptance: acceptance checks will be skipped"
fi
export RUNNEL_ACCEPTANCE_PYTHON=$PY

step "architecture invariants (biased select!, filesystem and madsim only in runtime, sans-IO cores)"
scripts/check-invariants.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "build (release binary for process tests and acceptance)"
cargo build --release --bin runnel
export RUNNEL_BIN=$ROOT/target/release/runnel

step "unit, property and real-process tests"
cargo test --release -- --test-threads=2

step "simulation build and fast seed sweep (cfg madsim)"
# Seeds are pinned (1..20 of every test) so a CI result replays exactly; scripts/sim.sh sweeps
# new seeds (see docs/SIMULATION.md for the open failures those sweeps found).
MADSIM_TEST_SEED=${MADSIM_TEST_SEED:-1} MADSIM_TEST_NUM=${MADSIM_TEST_NUM:-20} cargo simtest --release --test sim
cargo simclippy --release --test sim -- -D warnings

if [[ -z ${SKIP_ACCEPTANCE:-} && -n $PY ]]; then
  step "acceptance checks with real clients"
  scripts/acceptance.sh "$PY" basics,badinput,keys,groups,eos

  step "more real clients: aiokafka and kafkajs"
  scripts/clients.sh "$PY"

  step "failover with real clients: 3-node cluster, SIGKILL of the partition leader"
  scripts/failover.sh "$PY"
fi
echo
echo "all tests passed"
