#!/usr/bin/env bash
# Where each benchmark server spends its CPU: perf samples (software
# cpu-clock event, so it works in VMs without hardware counters) of the
# server under the fixed-rate load, split kernel / user space, with the top
# symbols of each.
#
#   bash bench/profile.sh [RATE [CONNS [SECONDS]]]     # default 100 1000 8
#
# Then, for each server, its CPU per delivery split by what the time went
# to, from the symbols of the samples (user space by name; the kernel's
# share is the write itself: the syscall and loopback TCP, both ends'
# softirq work included, which the floor pays too):
#   the write (kernel) | the write (user: send, readiness, the writer) |
#   the wake | the task poll | broker lock and cursors | clock reads |
#   framing and copies (bytes, memcpy, allocation) | the stream's own
#   bookkeeping (body, metrics, coalescing) | other
# PROFILE_KINDS narrows the servers (default: all three).
#
# Needs `perf` (Debian: linux-perf). Output: bench/out/profile-*.txt and
# bench/out/profile-split.txt.
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
    ticks0=$(awk '{print $14 + $15}' "/proc/$SPID/stat")
    perf record -q -e cpu-clock -F 1999 -p "$SPID" -o "$OUT/profile-$kind.data" -- sleep "$SECS" ||
        { echo "perf record failed (perf_event_paranoid? try: sysctl kernel.perf_event_paranoid=1)" >&2; exit 1; }
    ticks1=$(awk '{print $14 + $15}' "/proc/$SPID/stat")
    # Seconds of CPU the server spent in the sampled window.
    echo "($ticks1 - $ticks0) / $(getconf CLK_TCK)" >"$OUT/profile-$kind.cpu"
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

# CPU per delivery by what it went to: the server's CPU time over the
# sampled window (from /proc) over the deliveries the schedule made in it,
# split by the samples' shares.
split() { # KIND
    local cpu_us
    cpu_us=$(jq -n "$(cat "$OUT/profile-$1.cpu")")
    perf report -i "$OUT/profile-$1.data" --no-children --sort dso,sym --stdio 2>/dev/null |
        grep -v -e '^#' -e '^$' |
        awk -v cpu="$cpu_us" -v deliveries="$((RATE * CONNS * SECS))" -v name="$1" '
        {
            pct = $1; sub("%", "", pct)
            line = $0
            if ($2 ~ /kernel/) cat = "the write (kernel)"
            else if (line ~ /clock_gettime|Instant|Timespec|SystemClock|vdso/) cat = "clock reads"
            else if (line ~ /wake|Waker|notified|schedule_local|push_back|take_topic_wakers|Overflow|unpark/) cat = "the wake"
            else if (line ~ /broker::|Subscription|Reader::|futex|pthread_mutex|Mutex|Slab|slab/) cat = "broker lock and cursors"
            else if (line ~ /memcpy|memmove|memset|bytes::|BytesMut|Batch|size_line|malloc|free|realloc|alloc::/) cat = "framing and copies"
            else if (line ~ /send|__write|mio::|poll_write|poll_read|ScheduledIo|Registration|readiness|watch_peer|write_body|Chunk|serve::|epoll/) cat = "the write (user)"
            else if (line ~ /run_task|Harness|Core<T,S>::poll|task::raw|transition_to|Context::run|with_scheduler|TaskIdGuard|coop|budget|scheduler|runtime::task|runtime::context|park/) cat = "the task poll"
            else if (line ~ /EventStream|sse::|metrics|Coalesc|ResponseBody|hand_out|PollFn|poll_fn|StreamMetrics/) cat = "the stream bookkeeping"
            else cat = "other"
            share[cat] += pct
            total += pct
        }
        END {
            per = cpu * 1e6 / deliveries
            printf "== %s: CPU %.2f us per delivery (%.1f s of CPU, %d deliveries)\n", name, per, cpu, deliveries
            printf "%-28s %10s %10s\n", "", "% of CPU", "us/deliv"
            n = split("the write (kernel)|the write (user)|the wake|the task poll|broker lock and cursors|clock reads|framing and copies|the stream bookkeeping|other", order, "|")
            for (i = 1; i <= n; i++) {
                s = share[order[i]] * 100 / (total > 0 ? total : 1)
                printf "%-28s %10.1f %10.3f\n", order[i], s, per * s / 100
            }
        }'
}
{
    for kind in ${PROFILE_KINDS:-bench_server bench_baseline bench_floor}; do
        split "$kind"
        echo
    done
} | tee "$OUT/profile-split.txt"
