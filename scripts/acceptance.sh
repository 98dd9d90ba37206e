#!/usr/bin/env bash
# Starts the real runnel binary on 127.0.0.1 with a fresh data directory and runs the shared
# acceptance checklist against it with real Kafka clients.
#   scripts/acceptance.sh PYTHON [GROUPS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?python with confluent-kafka and kafka-python (from ../shared/acceptance/setup.sh)}
GROUPS_=${2:-basics,badinput,keys}
SHARED=${RUNNEL_SHARED:-$PWD/../shared}
BIN=${RUNNEL_BIN:-target/release/runnel}
PORT=${ACCEPTANCE_PORT:-29092}
source scripts/test-broker.sh
start_test_broker "$PORT" acceptance
LOG=$DATA/broker.log
set +e
timeout 900 "$PY" "$SHARED/acceptance/checklist.py" --bootstrap 127.0.0.1:$PORT --only "$GROUPS_"
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  echo "--- broker log (tail) ---"
  tail -n 50 "$LOG"
fi
exit $rc
