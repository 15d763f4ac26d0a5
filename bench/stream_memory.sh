#!/usr/bin/env bash
# Memory per idle event stream of the crate's server (examples/bench_server,
# tower_sse::serve): its RSS before and after N streams (default 2000)
# opened by Node's clients, over HTTP/1.1 (the lean path, one connection
# per stream) and over h2c (hyper's HTTP/2, 200 streams per connection).
# The kernel's socket buffers are not in the RSS.
#
#   bash bench/stream_memory.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
cargo build --release --example bench_server >&2
BIN=target/release/examples/bench_server
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

for mode in h1 h2; do
    log=$(mktemp)
    # The publisher never starts: the streams stay idle.
    "$BIN" --addr 127.0.0.1:0 --start-after-conns 1000000000 --threads 1 >"$log" 2>&1 &
    server=$!
    addr=
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*"listening": *"\([0-9.:]*\)".*/\1/p' "$log" | head -n 1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "bench_server did not start" >&2; cat "$log" >&2; exit 1; }
    # One stream first, so that one-time allocations are not counted.
    echo | node bench/stream_memory.mjs "http://$addr" 1 "$mode" >/dev/null
    before=$(rss_kb "$server")
    out=$(mktemp)
    # Its stdin stays open (a pipe from a sleeping process) until it is
    # killed below.
    sleep infinity | node bench/stream_memory.mjs "http://$addr" "$N" "$mode" >"$out" &
    client=$!
    for _ in $(seq 600); do grep -q ready "$out" && break; sleep 0.1; done
    grep -q ready "$out" || { echo "$mode: the streams did not all open" >&2; exit 1; }
    after=$(rss_kb "$server")
    echo "$mode: $N idle streams, server RSS $before -> $after KB: $(((after - before) * 1000 / N)) bytes per stream"
    pkill -P $$ -f "sleep infinity" 2>/dev/null || true
    kill "$client" 2>/dev/null || true
    wait "$client" 2>/dev/null || true
    rm -f "$out" "$log"
    kill "$server"
    wait "$server" 2>/dev/null || true
done
