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
DATA=$(mktemp -d /tmp/runnel-acceptance.XXXXXX)
LOG=$DATA/broker.log
"$BIN" broker --override listeners=PLAINTEXT://127.0.0.1:$PORT --override log.dirs="$DATA/data" \
  --override group.initial.rebalance.delay.ms=0 >"$LOG" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
  sleep 0.1
done
set +e
timeout 900 "$PY" "$SHARED/acceptance/checklist.py" --bootstrap 127.0.0.1:$PORT --only "$GROUPS_"
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  echo "--- broker log (tail) ---"
  tail -n 50 "$LOG"
fi
exit $rc
