#!/usr/bin/env bash
# Checks architecture invariants that a grep can prove (docs/ARCHITECTURE.md):
# - every tokio::select! is `biased;` (scripts/check-select.sh);
# - only src/runtime/ touches the filesystem (std::fs, tokio::fs) or names madsim;
# - the sans-IO cores (protocol, log, controller, replication, group, txn) spawn nothing,
#   sleep never and open no sockets;
# - nothing outside src/runtime uses tokio::sync::watch (its wake-up order is not seeded).
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
scripts/check-select.sh || bad=1
# Test modules may use tempdirs; skip lines in files named tests.rs / model_tests.rs.
if grep -rnE 'std::fs|tokio::fs|madsim' src --include='*.rs' \
    | grep -v '^src/runtime/' | grep -vE '/(tests|model_tests)\.rs:' | grep -vE '^\S+:\s*//'; then
  echo "error: only src/runtime may touch the filesystem or name madsim (lines above)"; bad=1
fi
if grep -rnE 'tokio::spawn|tokio::time::sleep|TcpStream|TcpListener|std::thread::spawn' \
    src/protocol src/log src/controller src/replication src/group src/txn --include='*.rs' \
    | grep -vE '/(tests|model_tests)\.rs:' | grep -vE '^\S+:\s*//'; then
  echo "error: sans-IO cores must not spawn, sleep or open sockets (lines above)"; bad=1
fi
# tokio's watch wakes receivers through one of 8 Notify slots picked by a process-global RNG:
# runs of one seed diverge inside one process (docs/SIMULATION.md, Determinism). sim/shims holds
# third-party code (madsim's own uses are madsim's business).
if grep -rnE 'tokio::sync::watch|sync::\{[^}]*\bwatch\b' src sim --include='*.rs' \
    | grep -v '^src/runtime/' | grep -v '^sim/shims/' | grep -vE '^\S+:\s*//'; then
  echo "error: use runtime::watch, not tokio::sync::watch (lines above)"; bad=1
fi
# Every planted bug must still apply, or scripts/sim-mutants.sh silently proves less (mutant 08
# stopped applying after a change to the offsets code and nothing noticed for a session).
for patch in sim/mutants/*.patch; do
  if ! git apply --check "$patch" 2>/dev/null; then
    echo "error: $patch no longer applies to this tree; regenerate it (docs/SIMULATION.md, mutants)"; bad=1
  fi
done
[[ $bad -eq 0 ]] && echo "architecture invariants hold"
exit $bad
