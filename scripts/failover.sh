#!/usr/bin/env bash
# Starts a 3-node cluster (scripts/cluster.sh) in a scratch directory and runs the shared
# failover check against it: SIGKILL of the partition leader under acks=all load.
#   scripts/failover.sh PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?python with confluent-kafka (from ../shared/acceptance/setup.sh)}
SHARED=${RUNNEL_SHARED:-$PWD/../shared}
export RUNNEL_CLUSTER_DIR=$(mktemp -d /tmp/runnel-failover.XXXXXX)
cleanup() { scripts/cluster.sh stop >/dev/null 2>&1 || true; pkill -9 -f "$RUNNEL_CLUSTER_DIR" 2>/dev/null || true; rm -rf "$RUNNEL_CLUSTER_DIR"; }
trap cleanup EXIT
scripts/cluster.sh start 3
set +e
timeout 300 "$PY" "$SHARED/acceptance/failover.py" --bootstrap 127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094 --max-unavailable 5
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  for f in "$RUNNEL_CLUSTER_DIR"/node-*.log; do echo "--- $f (tail)"; tail -n 30 "$f"; done
fi
exit $rc
