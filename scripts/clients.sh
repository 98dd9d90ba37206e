#!/usr/bin/env bash
# More real clients against the real binary: aiokafka (PyPI) and kafkajs (npm), each driving
# admin, idempotent and transactional producers, a group consumer and group administration
# (tests/clients/). Installs what it needs; starts a fresh broker on 127.0.0.1.
#   scripts/clients.sh PYTHON        (a venv python, e.g. from ../shared/acceptance/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?python venv to install aiokafka into}
BIN=${RUNNEL_BIN:-target/release/runnel}
PORT=${CLIENTS_PORT:-29192}
"$PY" -m pip install -q aiokafka lz4 >/dev/null
NODE_DIR=${RUNNEL_NODE_DIR:-$HOME/.cache/runnel-clients-node}
if command -v node >/dev/null && command -v npm >/dev/null; then
  if [[ ! -d $NODE_DIR/node_modules/kafkajs ]]; then
    mkdir -p "$NODE_DIR"
    (cd "$NODE_DIR" && npm init -y >/dev/null && npm install --silent kafkajs@2 >/dev/null)
  fi
  HAVE_NODE=1
else
  echo "node/npm not found: the kafkajs check is skipped"
  HAVE_NODE=""
fi
source scripts/test-broker.sh
start_test_broker "$PORT" clients
rc=0
timeout 300 "$PY" tests/clients/aiokafka_check.py 127.0.0.1:$PORT || rc=1
if [[ -n $HAVE_NODE ]]; then
  NODE_PATH=$NODE_DIR/node_modules timeout 300 node tests/clients/kafkajs_check.js 127.0.0.1:$PORT || rc=1
fi
if [[ $rc -ne 0 ]]; then
  echo "--- broker log (tail) ---"
  tail -n 40 "$DATA/broker.log"
fi
exit $rc
