#!/usr/bin/env bash
# The hub under load: 1000 streams of one topic fed from Redis pub/sub (the
# `upstream` example) against the same streams fed by the app's own
# publishes (`bench_server`), in one run, each pinned like bench/run.sh
# (server and redis-server on core 0, the load client and the publisher
# on core 1). Each round: 2000 events at about 80/s, data `SEQ TS_NS`.
#
#   bash bench/hub.sh [ROUNDS]       # default 2 rounds of each
#
# Prints per round: the server's CPU time, the client's verdict (every
# stream got every event once, in order), p50/p99 latency, and for the
# hub `PUBSUB NUMSUB` (1: one subscription for 1000 streams) and how many
# subscribers each PUBLISH reached. Starts its own redis-server on a free
# loopback port (bash scripts/ensure-redis.sh installs one if missing) and
# stops everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
CONNS=1000
COUNT=2000
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
OUT=bench/out/hub
mkdir -p "$OUT"

bash scripts/ensure-redis.sh bench/hub.sh
cargo build --release --example upstream --example bench_server -q
cargo build --release -p tower-sse-bench --bin bench_client -q
ulimit -n 20000

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port)
REDIS_DIR=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$REDIS_DIR"
}
trap cleanup EXIT
taskset -c "$SERVER_CORE" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" \
    --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

round() {
    local mode=$1 port server client t0 t1
    port=$(free_port)
    rm -f "$OUT/ready"
    if [[ $mode == hub ]]; then
        taskset -c "$SERVER_CORE" ./target/release/examples/upstream \
            --redis "redis://127.0.0.1:$REDIS_PORT" --addr "127.0.0.1:$port" >"$OUT/server.log" 2>&1 &
    else
        taskset -c "$SERVER_CORE" ./target/release/examples/bench_server --addr "127.0.0.1:$port" \
            --rate 80 --count "$COUNT" --start-after-conns "$CONNS" >"$OUT/server.log" 2>&1 &
    fi
    server=$!
    pids+=("$server")
    for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    taskset -c "$CLIENT_CORE" ./target/release/bench_client --addr "127.0.0.1:$port" --conns "$CONNS" \
        --expect "$COUNT" --duration 120 --ready-file "$OUT/ready" >"$OUT/client.json" 2>"$OUT/client.err" &
    client=$!
    pids+=("$client")
    for _ in $(seq 300); do [[ -f $OUT/ready ]] && break; sleep 0.1; done
    t0=$(cpu_ticks "$server")
    local extra=""
    if [[ $mode == hub ]]; then
        extra="numsub=$(redis-cli -p "$REDIS_PORT" PUBSUB NUMSUB public | tail -1)"
        for ((i = 0; i < COUNT; i++)); do
            t=${EPOCHREALTIME/./}
            echo "PUBLISH public \"$i ${t}000\""
            read -r -t 0.0125 <> <(:) || true
        done | taskset -c "$CLIENT_CORE" redis-cli -p "$REDIS_PORT" >"$OUT/publish.out"
        extra+=" publish_reached=$(sort "$OUT/publish.out" | uniq -c | awk '{printf "%s×%s ", $1, $2}')"
    fi
    wait "$client" || true
    t1=$(cpu_ticks "$server")
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    python3 - "$mode" "$((t1 - t0))" "$(getconf CLK_TCK)" "$OUT/client.json" "$extra" <<'PY'
import json, sys
mode, ticks, hz, path, extra = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
c = json.load(open(path))
cpu = ticks / hz
per = cpu / c["events"] * 1e6 if c["events"] else float("nan")
print(f"{mode:6} cpu={cpu:.2f}s ({per:.2f} us/delivery) lossless={c['lossless']} "
      f"events={c['events']} resyncs={c['resyncs']} p50={c['p50_us']/1000:.1f}ms "
      f"p99={c['p99_us']/1000:.1f}ms {extra}")
PY
}

for ((r = 1; r <= ROUNDS; r++)); do
    round app
    round hub
done
