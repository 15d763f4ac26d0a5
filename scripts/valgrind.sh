#!/usr/bin/env bash
# Runs modules of the integration test binary (`tests/it/`) under
# valgrind's leak checker and fails on any definite leak (or memory error).
# Usage: scripts/valgrind.sh [MODULE ...]
#
# The default set covers the broker, the mailbox, the wire format (with the
# spec parser it is read back with) and the mailbox routes over loopback.
# Modules with tight hang detectors for real-time behaviour (http, the mode
# tests, soak) run too slowly under valgrind to be meaningful and are left
# out; proptest cases are cut down. Each module runs in a process of its
# own, so that a leak is told by module.
set -euo pipefail
cd "$(dirname "$0")/.."

modules=("$@")
if [ ${#modules[@]} -eq 0 ]; then
    modules=(broker model mailbox wire support::sse_parser mailbox_http security probe)
fi

if ! command -v valgrind >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind
fi

# Build once and find the test binary's path.
binary=$(cargo test --all-features --test it --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it":
        print(m["executable"])
')
if [ -z "$binary" ]; then
    echo "the test binary did not build" >&2
    exit 2
fi
listed=$("$binary" --list 2>/dev/null)

status=0
for name in "${modules[@]}"; do
    # The module's tests by their exact names: a name filter alone would
    # also match other modules' tests that contain it.
    mapfile -t tests < <(printf '%s\n' "$listed" | awk -v m="$name::" 'index($0, m) == 1 && / test$/ { sub(/: test$/, ""); print }')
    if [ ${#tests[@]} -eq 0 ]; then
        echo "no test module named $name" >&2
        exit 2
    fi
    log="target/valgrind-${name//::/-}.log"
    start=$(date +%s)
    if PROPTEST_CASES=8 valgrind --leak-check=full --errors-for-leak-kinds=definite \
        --error-exitcode=3 --log-file="$log" "$binary" --exact "${tests[@]}" --test-threads=2 >"$log.out" 2>&1; then
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
