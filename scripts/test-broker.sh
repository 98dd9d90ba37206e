# Sourced by scripts that test the real binary with real clients (acceptance.sh, clients.sh):
#   start_test_broker PORT NAME
# starts `$BIN broker` on 127.0.0.1:PORT with a fresh data directory ($DATA, a mktemp dir named
# after NAME; log in $DATA/broker.log), stops it and removes $DATA on exit, and waits (up to
# 10 s) until the port accepts connections. Sets DATA and PID.
start_test_broker() {
  local port=$1 name=$2
  DATA=$(mktemp -d "/tmp/runnel-$name.XXXXXX")
  "$BIN" broker --override listeners=PLAINTEXT://127.0.0.1:"$port" --override log.dirs="$DATA/data" \
    --override group.initial.rebalance.delay.ms=0 >"$DATA/broker.log" 2>&1 &
  PID=$!
  trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DATA"' EXIT
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0
    sleep 0.1
  done
}
