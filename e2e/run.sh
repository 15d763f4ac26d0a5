#!/usr/bin/env bash
# The end-to-end tests: the demo page in headless Debian Chromium,
# driven by playwright-core; the browser's own EventSource is cut off and
# must resume with Last-Event-ID, missing nothing; then Node's own
# EventSource (undici) and npm's `eventsource` are cut off the same way and
# must resume by themselves, and so must Python's requests-sse; two Python
# parsers (sseclient-py, httpx-sse) get live events and resume from an id;
# twelve EventSources in one Chromium tab all get events live over HTTPS
# with HTTP/2 (the demo with --tls, which then shuts down with them open),
# while over HTTP/1.1 the seventh and later stall behind the first six;
# with two replicas of the demo on one redis-server of its own behind a
# balancer, Node's and npm's EventSource are cut off from one replica and
# resume on the other, their notifications (the mailbox kept in Redis)
# following them, the id one replica gave proving delivery on the other;
# and on the `upstream` example (topics fed from that
# Redis's pub/sub), they are cut off and resume within the linger, ten
# streams of a topic on one Redis subscription. Screenshots and a JSON
# report go to e2e/artifacts/.
#
#   bash e2e/run.sh
#
# Installs what is missing (Debian's chromium; playwright-core and
# eventsource from the committed package-lock.json, which never downloads a
# browser; the pinned Python clients into e2e/.venv), builds the
# demo, starts it on a free loopback port, runs the test, stops the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
E2E=$ROOT/e2e
ARTIFACTS=$E2E/artifacts
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

step() { printf '\n==> e2e: %s\n' "$*"; }

step "browser"
if [ ! -x "$CHROMIUM" ]; then
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi
"$CHROMIUM" --version 2>/dev/null

step "node packages"
if ! command -v node >/dev/null || ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)'; then
    echo "e2e: needs Node.js 20 or newer (playwright-core); found: $(node --version 2>/dev/null || echo none)" >&2
    exit 1
fi
# npm ci when nothing is installed or the lock changed since the install.
if [ ! -f "$E2E/node_modules/playwright-core/package.json" ] ||
   [ ! -f "$E2E/node_modules/eventsource/package.json" ] ||
   [ "$E2E/package-lock.json" -nt "$E2E/node_modules/.package-lock.json" ]; then
    (cd "$E2E" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
node -e 'console.log("playwright-core " + require(process.argv[1]).version)' "$E2E/node_modules/playwright-core/package.json"

# example_bin NAME: builds the example and prints where cargo put it
# (CARGO_TARGET_DIR or a configured target-dir included).
example_bin() {
    cargo build --example "$1" --message-format=json-render-diagnostics |
        node -e '
            const name = process.argv[1];
            let exe = "";
            for (const line of require("fs").readFileSync(0, "utf8").split("\n")) {
                if (!line.startsWith("{")) continue;
                const m = JSON.parse(line);
                if (m.reason === "compiler-artifact" && m.target.name === name && m.executable) exe = m.executable;
            }
            if (!exe) { console.error(`e2e: cargo reported no ${name} executable`); process.exit(1); }
            console.log(exe);
        ' "$1"
}

# listening_url LOG PID WHAT: waits (30 s at most) for the process PID to
# print `listening on http://...` (or https://) into LOG, and prints that URL.
listening_url() {
    local log=$1 pid=$2 what=$3 url=
    for _ in $(seq 300); do
        # The log may not exist yet: the shell that opens it runs in the background.
        url=$( { sed -n 's|^listening on \(https\{0,1\}://127\.0\.0\.1:[0-9]*\).*|\1|p' "$log" 2>/dev/null || true; } | head -n 1)
        [ -n "$url" ] && { echo "$url"; return 0; }
        kill -0 "$pid" 2>/dev/null || { echo "e2e: $what exited:" >&2; cat "$log" >&2; return 1; }
        sleep 0.1
    done
    echo "e2e: $what did not print its address within 30 s:" >&2
    cat "$log" >&2
    return 1
}

step "build the demo"
DEMO_BIN=$(example_bin demo)
echo "$DEMO_BIN"

step "start the demo"
mkdir -p "$ARTIFACTS"
DEMO_LOG=$ARTIFACTS/demo.log
DEMO_PID=
stop_demo() {
    if [ -n "$DEMO_PID" ] && kill -0 "$DEMO_PID" 2>/dev/null; then
        kill "$DEMO_PID" 2>/dev/null || true
        # It drains for at most a few seconds; do not wait for ever.
        for _ in $(seq 50); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
}
# What the replicas step starts: two more demos and a redis-server.
EXTRA_PIDS=()
REDIS_DIR=
stop_all() {
    stop_demo
    for pid in "${EXTRA_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    [ -z "$REDIS_DIR" ] || rm -rf "$REDIS_DIR"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Port 0: the kernel picks a free port, the demo prints it.
"$DEMO_BIN" --addr 127.0.0.1:0 >"$DEMO_LOG" 2>&1 &
DEMO_PID=$!
DEMO_URL=$(listening_url "$DEMO_LOG" "$DEMO_PID" "the demo")
echo "demo pid $DEMO_PID at $DEMO_URL"

step "browser test"
# The test bounds itself to 60 s; timeout(1) is the backstop.
DEMO_URL=$DEMO_URL CHROMIUM=$CHROMIUM E2E_ARTIFACTS=$ARTIFACTS \
    timeout --kill-after=5 90 node "$E2E/browser.test.mjs"

step "two more EventSource implementations: Node's own and npm's eventsource"
if node -e 'process.exit(typeof EventSource === "function" ? 0 : 1)'; then
    ES_FLAG=
elif node --experimental-eventsource -e 'process.exit(typeof EventSource === "function" ? 0 : 1)' 2>/dev/null; then
    ES_FLAG=--experimental-eventsource
else
    echo "e2e: this Node has no EventSource; needs Node 20.17 or newer" >&2
    exit 1
fi
DEMO_URL=$DEMO_URL timeout --kill-after=5 90 node $ES_FLAG "$E2E/eventsource.test.mjs"

step "Python's SSE clients: requests-sse, sseclient-py, httpx-sse"
VENV=$E2E/.venv
# A fresh virtual environment when there is none or the pins changed.
if [ ! -x "$VENV/bin/python" ] || [ "$E2E/requirements.txt" -nt "$VENV/.installed" ]; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV"; then
        # Debian's own python3 keeps venv in a package of its own.
        rm -rf "$VENV"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$E2E/requirements.txt"
    touch "$VENV/.installed"
fi
DEMO_URL=$DEMO_URL timeout --kill-after=5 120 "$VENV/bin/python" "$E2E/python_clients.py"

step "twelve EventSources in Chromium: all live over HTTPS with HTTP/2 (the demo with --tls), six over HTTP/1.1"
TLS_LOG=$ARTIFACTS/demo-tls.log
"$DEMO_BIN" --tls --addr 127.0.0.1:0 >"$TLS_LOG" 2>&1 &
TLS_PID=$!
EXTRA_PIDS+=("$TLS_PID")
TLS_URL=$(listening_url "$TLS_LOG" "$TLS_PID" "the demo with --tls")
echo "demo --tls pid $TLS_PID at $TLS_URL"
# The test stops the TLS demo itself (SIGTERM with its streams open) and
# reads in TLS_LOG that it stopped; the plain demo keeps running.
DEMO_URL=$DEMO_URL TLS_URL=$TLS_URL TLS_PID=$TLS_PID TLS_LOG=$TLS_LOG CHROMIUM=$CHROMIUM E2E_ARTIFACTS=$ARTIFACTS \
    timeout --kill-after=5 90 node "$E2E/http2.test.mjs"
# It printed `stopped`: it exits now, and with status 0.
for _ in $(seq 50); do kill -0 "$TLS_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$TLS_PID" 2>/dev/null; then
    echo "e2e: the demo with --tls still runs 5 s after it printed stopped" >&2
    exit 1
fi
TLS_STATUS=0
wait "$TLS_PID" || TLS_STATUS=$?
[ "$TLS_STATUS" -eq 0 ] || { echo "e2e: the demo with --tls exited with status $TLS_STATUS" >&2; exit 1; }
echo "demo --tls exited with status 0"

step "two replicas of the demo on one Redis, behind a balancer: EventSource resumes across them, and its notifications follow"
bash scripts/ensure-redis.sh e2e
free_port() {
    node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}
REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tower-sse-e2e-redis.XXXXXX")
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" \
    --daemonize no --loglevel warning >"$ARTIFACTS/redis.log" 2>&1 &
EXTRA_PIDS+=($!)
echo "redis-server pid $! on 127.0.0.1:$REDIS_PORT"
# start_replica NAME: a demo with --redis on a free port; sets REPLICA_URL.
start_replica() {
    local log=$ARTIFACTS/demo-$1.log url=
    "$DEMO_BIN" --addr 127.0.0.1:0 --redis "redis://127.0.0.1:$REDIS_PORT" >"$log" 2>&1 &
    local pid=$!
    EXTRA_PIDS+=("$pid")
    for _ in $(seq 300); do
        # The log may not exist yet: the shell that opens it runs in the background.
        url=$( { sed -n 's|^listening on \(http://127\.0\.0\.1:[0-9]*\).*|\1|p' "$log" 2>/dev/null || true; } | head -n 1)
        # Listening, and in step with Redis (ready).
        if [ -n "$url" ] && node -e 'fetch(process.argv[1]).then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))' "$url/ready"; then
            REPLICA_URL=$url
            echo "replica $1: pid $pid at $url"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "e2e: replica $1 exited:" >&2; cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    echo "e2e: replica $1 not ready within 30 s:" >&2
    cat "$log" >&2
    exit 1
}
start_replica a
A_URL=$REPLICA_URL
start_replica b
B_URL=$REPLICA_URL
A_URL=$A_URL B_URL=$B_URL timeout --kill-after=5 90 node $ES_FLAG "$E2E/replicas.test.mjs"

step "topics fed from Redis pub/sub (the upstream example): EventSource resumes within the linger, one subscription"
UPSTREAM_BIN=$(example_bin upstream)
UPSTREAM_LOG=$ARTIFACTS/upstream.log
"$UPSTREAM_BIN" --addr 127.0.0.1:0 --redis "redis://127.0.0.1:$REDIS_PORT" --linger-ms 10000 >"$UPSTREAM_LOG" 2>&1 &
UPSTREAM_PID=$!
EXTRA_PIDS+=("$UPSTREAM_PID")
UPSTREAM_URL=$(listening_url "$UPSTREAM_LOG" "$UPSTREAM_PID" "the upstream example")
echo "upstream example pid $UPSTREAM_PID at $UPSTREAM_URL"
UPSTREAM_URL=$UPSTREAM_URL REDIS_PORT=$REDIS_PORT timeout --kill-after=5 90 node $ES_FLAG "$E2E/upstream.test.mjs"
