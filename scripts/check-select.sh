#!/usr/bin/env bash
# Fails if any tokio::select! lacks `biased;`: unbiased select picks branches with a
# thread-local RNG that madsim does not control, so a seed would not replay.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
while IFS= read -r -d '' f; do
  # For each line with select! {, the next non-blank line must be `biased;`.
  awk -v F="$f" '
    /select!\s*\{/ { want=1; line=NR; next }
    want && NF { if ($1 != "biased;") { printf "%s:%d: select! without biased;\n", F, line; bad=1 } want=0 }
    END { exit bad }' "$f" || bad=1
done < <(find src sim chaos benches -name '*.rs' -print0)
exit $bad
