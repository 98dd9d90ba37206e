#!/usr/bin/env bash
# Runs a local cluster of N combined broker+controller processes on 127.0.0.1.
#   scripts/cluster.sh start [N]    # brokers on 9092, 9093, ...; controllers on 19092, 19093, ...
#   scripts/cluster.sh stop         # SIGTERM (controlled shutdown), then wait
#   scripts/cluster.sh status       # processes, then the controller quorum (runnel quorum describe)
#   scripts/cluster.sh quorum       # the controller quorum with per-voter replication state
# Data and logs live under ${RUNNEL_CLUSTER_DIR:-./runnel-cluster}/node-<id>{,.log}.
# Topics default to replication factor min(3, N) and min.insync.replicas min(2, N).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${RUNNEL_CLUSTER_DIR:-$PWD/runnel-cluster}
BIN=${RUNNEL_BIN:-target/release/runnel}
BROKER_BASE=${RUNNEL_BROKER_BASE_PORT:-9092}
CONTROLLER_BASE=${RUNNEL_CONTROLLER_BASE_PORT:-19092}
cmd=${1:-status}
n=${2:-3}

voters() {
  local v="" i
  for i in $(seq 1 "$1"); do v+="${v:+,}$i@127.0.0.1:$((CONTROLLER_BASE + i - 1))"; done
  echo "$v"
}

# Every broker of the running cluster, for clients (size recorded by start).
bootstrap() {
  local n i b=""
  n=$(cat "$DIR/size" 2>/dev/null || echo 3)
  for i in $(seq 1 "$n"); do b+="${b:+,}127.0.0.1:$((BROKER_BASE + i - 1))"; done
  echo "$b"
}

case $cmd in
  start)
    [[ -x $BIN ]] || cargo build --release --bin runnel
    mkdir -p "$DIR"
    echo "$n" > "$DIR/size"
    rf=$(( n < 3 ? n : 3 )); isr=$(( n < 2 ? n : 2 ))
    for i in $(seq 1 "$n"); do
      if [[ -f $DIR/node-$i.pid ]] && kill -0 "$(cat "$DIR/node-$i.pid")" 2>/dev/null; then
        echo "node $i already running (pid $(cat "$DIR/node-$i.pid"))"; continue
      fi
      "$BIN" broker \
        --override node.id="$i" \
        --override process.roles=broker,controller \
        --override listeners="PLAINTEXT://127.0.0.1:$((BROKER_BASE + i - 1)),CONTROLLER://127.0.0.1:$((CONTROLLER_BASE + i - 1))" \
        --override controller.quorum.voters="$(voters "$n")" \
        --override log.dirs="$DIR/node-$i" \
        --override default.replication.factor="$rf" \
        --override min.insync.replicas="$isr" \
        --override offsets.topic.replication.factor="$rf" \
        --override group.initial.rebalance.delay.ms=0 \
        >>"$DIR/node-$i.log" 2>&1 &
      echo $! > "$DIR/node-$i.pid"
      echo "node $i: broker 127.0.0.1:$((BROKER_BASE + i - 1)), controller 127.0.0.1:$((CONTROLLER_BASE + i - 1)), pid $!, log $DIR/node-$i.log"
    done
    for i in $(seq 1 "$n"); do
      for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$((BROKER_BASE + i - 1))) 2>/dev/null && break; sleep 0.1; done
    done
    # Ready when every broker has registered with the controller quorum and been unfenced.
    for i in $(seq 1 "$n"); do
      for _ in $(seq 1 300); do grep -q "fenced=false" "$DIR/node-$i.log" 2>/dev/null && break; sleep 0.1; done
    done
    echo "cluster of $n ready"
    ;;
  stop)
    for f in "$DIR"/node-*.pid; do
      [[ -f $f ]] || continue
      pid=$(cat "$f"); kill -TERM "$pid" 2>/dev/null || true
    done
    for f in "$DIR"/node-*.pid; do
      [[ -f $f ]] || continue
      pid=$(cat "$f")
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$f"
    done
    echo "stopped"
    ;;
  status)
    for f in "$DIR"/node-*.pid; do
      [[ -f $f ]] || { echo "no cluster running under $DIR"; exit 0; }
      id=$(basename "$f" .pid); pid=$(cat "$f")
      if kill -0 "$pid" 2>/dev/null; then echo "$id: running (pid $pid)"; else echo "$id: stopped"; fi
    done
    "$BIN" quorum describe -b "$(bootstrap)" || echo "controller quorum: no answer"
    ;;
  quorum)
    "$BIN" quorum describe --status --replication -b "$(bootstrap)"
    ;;
  *) echo "usage: $0 start [N] | stop | status | quorum" >&2; exit 2 ;;
esac
