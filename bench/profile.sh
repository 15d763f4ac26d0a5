#!/usr/bin/env bash
# Where each benchmark server spends its CPU: perf samples (software
# cpu-clock event, so it works in VMs without hardware counters) of the
# server under the fixed-rate load, split kernel / user space, with the top
# symbols of each.
#
#   bash bench/profile.sh [RATE [CONNS [SECONDS]]]     # default 100 1000 8
#
# Needs `perf` (Debian: linux-perf). Output: bench/out/profile-*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-100} CONNS=${2:-1000} SECS=${3:-8}
OUT=bench/out
# The crate's server is its example; the other tools are the `bench`
# workspace member's binaries.
bin() {
    case $1 in
        bench_server) echo target/release/examples/bench_server ;;
        *) echo "target/release/$1" ;;
    esac
}
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf is not installed (Debian: apt-get install linux-perf)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --example bench_server >&2
cargo build --release -p tower-sse-bench >&2

SPID= CPID=
cleanup() {
    for pid in $CPID $SPID; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Below the ephemeral range, so that no client connection holds the port.
PORT=$((10000 + RANDOM % 10000))
for kind in ${PROFILE_KINDS:-bench_server bench_baseline bench_floor}; do
    PORT=$((PORT + 1))
    count=$((RATE * (SECS + 4)))
    taskset -c 0 "$(bin "$kind")" --addr "127.0.0.1:$PORT" --rate "$RATE" --count "$count" \
        --start-after-conns "$CONNS" >"$OUT/profile-$kind.server.log" 2>&1 &
    SPID=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/stats" >/dev/null && break; sleep 0.05; done
    kill -0 "$SPID" 2>/dev/null || { cat "$OUT/profile-$kind.server.log" >&2; exit 1; }
    taskset -c 1 "$(bin bench_client)" --addr "127.0.0.1:$PORT" --conns "$CONNS" --expect "$count" \
        --duration $((SECS + 30)) >"$OUT/profile-$kind.client.json" 2>/dev/null &
    CPID=$!
    sleep 2
    perf record -q -e cpu-clock -F 1999 -p "$SPID" -o "$OUT/profile-$kind.data" -- sleep "$SECS" ||
        { echo "perf record failed (perf_event_paranoid? try: sysctl kernel.perf_event_paranoid=1)" >&2; exit 1; }
    wait "$CPID" || true
    kill -TERM "$SPID"
    wait "$SPID" || true
    CPID= SPID=
    {
        echo "== $kind, $CONNS connections x $RATE events/s: samples by kernel / user space"
        perf report -i "$OUT/profile-$kind.data" --no-children --sort dso --stdio 2>/dev/null |
            grep -v -e '^#' -e '^$' | head -8 || true
        echo "== top symbols"
        perf report -i "$OUT/profile-$kind.data" --no-children --sort dso,sym --stdio 2>/dev/null |
            grep -v -e '^#' -e '^$' | head -40 || true
    } >"$OUT/profile-$kind.txt"
    cat "$OUT/profile-$kind.txt"
    echo
done
