#!/usr/bin/env bash
# Runs test binaries under valgrind's leak checker and fails on any
# definite leak (or memory error). Usage: scripts/valgrind.sh [TEST ...]
#
# The default set covers the broker, the mailbox, the wire format and the
# mailbox routes over loopback. Test binaries with tight hang detectors for
# real-time behaviour (http, server_mode, soak) run too slowly under
# valgrind to be meaningful and are left out; proptest cases are cut down.
set -euo pipefail
cd "$(dirname "$0")/.."

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    tests=(broker model mailbox wire mailbox_http security probe)
fi

if ! command -v valgrind >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind
fi

# Build once and find each test binary's path.
mapfile -t built < <(cargo test --all-features --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
')

status=0
for name in "${tests[@]}"; do
    binary=$(printf '%s\n' "${built[@]}" | awk -v n="$name" '$1 == n { print $2 }')
    if [ -z "$binary" ]; then
        echo "no test binary named $name" >&2
        exit 2
    fi
    log="target/valgrind-$name.log"
    start=$(date +%s)
    if PROPTEST_CASES=8 valgrind --leak-check=full --errors-for-leak-kinds=definite \
        --error-exitcode=3 --log-file="$log" "$binary" --test-threads=2 >"$log.out" 2>&1; then
        result=ok
    else
        result="FAILED ($?)"
        status=1
    fi
    definite=$(grep -h "definitely lost:" "$log" | head -1 | sed 's/.*definitely lost: //')
    echo "valgrind $name: $result, definitely lost: ${definite:-0 bytes}, $(( $(date +%s) - start )) s"
    if [ "$result" != ok ]; then
        tail -30 "$log.out" "$log" >&2
    fi
done
exit $status
