#!/usr/bin/env bash
# End-to-end throughput and latency against a real broker on 127.0.0.1, with runnel perf and
# with kcat (librdkafka). Prints a table to paste into docs/PERFORMANCE.md. Uses a fresh data
# directory under /tmp and stops its broker at the end. Not part of CI (figures are noisy).
#   scripts/bench.sh [RECORDS_1K] [RECORDS_100B]
set -euo pipefail
cd "$(dirname "$0")/.."
N1K=${1:-500000}
N100=${2:-2000000}
cargo build --release --bin runnel >/dev/null
BIN=target/release/runnel
PORT=${BENCH_PORT:-39092}
B=127.0.0.1:$PORT
DATA=$(mktemp -d /tmp/runnel-bench.XXXXXX)
"$BIN" broker --override listeners=PLAINTEXT://$B --override log.dirs="$DATA/data" >"$DATA/broker.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
hz=$(getconf CLK_TCK)

run_perf() { # size n acks
  local t0 t1 out gb
  gb=$(echo "$1 * $2 / 1073741824" | bc -l)
  t0=$(cpu)
  out=$("$BIN" perf produce -b $B --topic "perf-$1-$3" --num-records "$2" --record-size "$1" --acks "$3" \
    --batch-size 262144 --in-flight 8 2>&1 | tail -n 1)
  t1=$(cpu)
  printf '| runnel perf | %s B | acks=%s | %s | %.2f s/GB |\n' "$1" "$3" "$out" "$(echo "($t1 - $t0) / $hz / $gb" | bc -l)"
  t0=$(cpu)
  out=$("$BIN" perf consume -b $B --topic "perf-$1-$3" 2>&1 | tail -n 1)
  t1=$(cpu)
  printf '| runnel perf | %s B | acks=%s | %s | %.2f s/GB |\n' "$1" "$3" "$out" "$(echo "($t1 - $t0) / $hz / $gb" | bc -l)"
}

run_kcat() { # size n acks
  local f="$DATA/in-$1.txt"
  [[ -f $f ]] || python3 -c "import sys; l=('x'*($1-1)+'\n').encode(); sys.stdout.buffer.write(l*$2)" >"$f"
  local topic="kcat-$1-$3" t0 t1 s e
  t0=$(cpu); s=$(date +%s.%N)
  kcat -b $B -P -t "$topic" -X acks=$3 -X linger.ms=5 -X batch.size=1000000 -X queue.buffering.max.kbytes=1048576 -l "$f"
  e=$(date +%s.%N); t1=$(cpu)
  local bytes=$(( $1 * $2 ))
  printf '| kcat (librdkafka) | %s B | acks=%s | produce %.1f MB/s | %.2f s/GB |\n' "$1" "$3" \
    "$(echo "$bytes / 1048576 / ($e - $s)" | bc -l)" "$(echo "($t1 - $t0) / $hz / ($bytes / 1073741824)" | bc -l)"
  t0=$(cpu); s=$(date +%s.%N)
  kcat -b $B -C -t "$topic" -o beginning -e -q -X fetch.max.bytes=52428800 >/dev/null
  e=$(date +%s.%N); t1=$(cpu)
  printf '| kcat (librdkafka) | %s B | acks=%s | consume %.1f MB/s | %.2f s/GB |\n' "$1" "$3" \
    "$(echo "$bytes / 1048576 / ($e - $s)" | bc -l)" "$(echo "($t1 - $t0) / $hz / ($bytes / 1073741824)" | bc -l)"
}

echo "| tool | record | acks | result | broker CPU per GB |"
echo "| --- | --- | --- | --- | --- |"
for acks in 1 all; do
  run_perf 1024 "$N1K" "$acks"
  run_perf 100 "$N100" "$acks"
  run_kcat 1024 "$N1K" "$acks"
  run_kcat 100 "$N100" "$acks"
done
