#!/usr/bin/env bash
# Loopback load benchmark: the crate's SSE route (examples/bench_server.rs)
# against the usual tokio broadcast + axum Sse (bench/src/bin/bench_baseline.rs),
# driven by the load client (bench/src/bin/bench_client.rs), in one run,
# then the performance targets judged on what it measured (bench/targets.sh):
#
#   bash bench/run.sh                # full run, about 11 minutes on 2 cores
#   bash bench/run.sh --quick        # smoke test, about 3 minutes
#   bash bench/run.sh --only redis   # some: fixed,sweep,held,redis,criterion
#
# Server pinned to core 0, client(s) to core 1 (SERVER_CORE / CLIENT_CORE
# override). Scenarios, the first three for both servers:
#   fixed    1000 connections x 100 events/s, 3 rounds interleaving the
#            crate, the baseline and the floor (bench/src/bin/bench_floor.rs:
#            one write(2) per connection per event, nothing else) and floor2
#            (the same, one write per two events): server CPU us per
#            delivery, p50/p99/p999 latency, loss, and whether the crate
#            coalesced (time and switches, from its /stats)
#   sweep    1000 connections at rising rates: each server's highest
#            lossless rate (every connection got every event, p99 < 100 ms);
#            at the saturated rates (>= 500 ev/s; --quick: its top rate)
#            also floor2, once, and every server at least once
#   held     connections stepped up to 19 000 with keep-alives running:
#            idle memory per connection at 10 000, most held, idle CPU
#   redis    the crate's server as two replicas of one Redis Streams
#            backplane (redis-server of the run's own, on core 0 with
#            them; installed if missing), the client's connections split
#            between them, events published on replica A: p50/p99 latency
#            at 100 events/s and each side's highest lossless rate, against
#            one in-memory broker with the same connections and rates
#   criterion  benches/broker.rs fanout/{tower_sse,broadcast}/1000 (publish
#            and delivery to 1000 subscribers, in process), short, on core 0
# Writes bench/results.json (the targets' verdicts in it as .targets) and
# bench/sweep.png (with --only, bench/out/results.json and no chart), logs
# under bench/out/; prints the figures, then the targets (met / NOT met,
# per round). The exit status does not depend on the targets.
# Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
ALL_SCENARIOS="fixed sweep held redis criterion"
SCENARIOS=$ALL_SCENARIOS
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --only | --only=*)
            if [[ $1 == --only ]]; then
                (($# >= 2)) || { echo "--only needs a list, e.g. --only redis,sweep" >&2; exit 2; }
                shift
                SCENARIOS=${1//,/ }
            else
                SCENARIOS=${1#--only=}
                SCENARIOS=${SCENARIOS//,/ }
            fi
            for scenario in $SCENARIOS; do
                [[ " $ALL_SCENARIOS " == *" $scenario "* ]] ||
                    { echo "--only: unknown scenario $scenario (one of: $ALL_SCENARIOS)" >&2; exit 2; }
            done
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument $1 (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done
ran() { [[ " $SCENARIOS " == *" $1 "* ]]; }
# A run of some scenarios only leaves the published results alone.
PARTIAL=0
[[ $(tr ' ' '\n' <<<"$SCENARIOS" | sort -u | xargs) == "$(tr ' ' '\n' <<<"$ALL_SCENARIOS" | sort -u | xargs)" ]] || PARTIAL=1

SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
RETAIN_EVENTS=20000 # the crate's replay log (its default is 2000)
CAPACITY=1024       # the baseline's broadcast channel
P99_LIMIT_US=100000 # lossless also means p99 under 100 ms
if ((QUICK)); then
    FIXED_CONNS=200 FIXED_RATE=100 FIXED_SECS=4 FIXED_ROUNDS=1
    SWEEP_CONNS=200 SWEEP_SECS=2 SWEEP_RATES="100 1000 5000" SWEEP_TRIES=1 SATURATED_RATES="5000"
    HOLD_STEPS="500 1000 2000" IDLE_CONNS=1000 IDLE_CPU_SECS=5
    REDIS_CONNS=200 REDIS_RATE=100 REDIS_SECS=4 REDIS_ROUNDS=1
    REDIS_SWEEP_SECS=2 REDIS_SWEEP_RATES="100 1000" REDIS_TRIES=1
else
    FIXED_CONNS=1000 FIXED_RATE=100 FIXED_SECS=15 FIXED_ROUNDS=3
    SWEEP_CONNS=1000 SWEEP_SECS=5 SWEEP_RATES="20 50 100 200 500 1000 2000 5000" SWEEP_TRIES=2
    SATURATED_RATES="500 1000 2000 5000"
    HOLD_STEPS="5000 10000 15000 19000" IDLE_CONNS=10000 IDLE_CPU_SECS=20
    REDIS_CONNS=1000 REDIS_RATE=100 REDIS_SECS=10 REDIS_ROUNDS=3
    REDIS_SWEEP_SECS=5 REDIS_SWEEP_RATES="100 500 1000 2000 5000" REDIS_TRIES=2
fi
# The sweep's saturated rates (target T2): floor2 runs there too, once,
# for at most FLOOR2_SECS (it writes only as fast as one core does, so its
# runs would last far longer than the others'), and a server that failed
# twice below is still measured there once.
FLOOR2_SECS=$((SWEEP_SECS + 10))
# Criterion's fan-out benchmark (target T3): short runs.
CRITERION_WARM_UP_S=1 CRITERION_MEASURE_S=3
# Redis runs on the servers' core: the server side gets one core whether
# it is one process or two replicas and Redis.
REDIS_CORE=${REDIS_CORE:-$SERVER_CORE}
# One client process holds at most this many connections (a process may
# have at most 20 000 open files here).
PER_CLIENT=9500

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
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.ready "$OUT"/*.done "$OUT"/*.tmp

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- what the machine needs ------------------------------------------------

need=()
command -v taskset >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || -n ${BENCH_FONT:-} ]] || need+=(fonts-dejavu-core)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        die "missing ${need[*]}: install them (Debian: apt-get install ${need[*]})"
    fi
fi
# The Redis row needs a redis-server binary; it starts one of its own. As
# scripts/test.sh does: install the Debian package (as root, or through
# sudo) and stop the system-wide server the package starts.
if ran redis; then
    bash scripts/ensure-redis.sh "$(date +%H:%M:%S) redis row" >&2 ||
        die "redis-server missing and not installable: install Redis (or run with --only fixed,sweep,held)"
fi
(($(nproc) >= 2)) || log "warning: fewer than 2 cores: server and client share one"

# Sockets are files: raise the soft limit as far as the hard one goes.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
CLK_TCK=$(getconf CLK_TCK)

# A sleep that forks nothing (polling must not steal CPU from the run).
NAP_FIFO=$OUT/.nap
rm -f "$NAP_FIFO"
mkfifo "$NAP_FIFO"
exec {NAP_FD}<>"$NAP_FIFO"
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }

# --- process bookkeeping ------------------------------------------------------

# Children still running, by pid; a pid leaves once waited for, so that
# cleanup never signals a pid that may have been reused.
declare -A LIVE=()
reap() { # reap PID: wait for a child we signalled or that finished
    wait "$1" 2>/dev/null || true
    unset "LIVE[$1]"
}
cleanup() {
    local pid
    for pid in "${!LIVE[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${!LIVE[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            nap 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -f "$NAP_FIFO"
    [[ -z ${REDIS_DIR:-} ]] || rm -rf "$REDIS_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu_ticks() { # "UTIME STIME" of a live process, in clock ticks
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*") "}
    local -a f
    read -r -a f <<<"$stat"
    echo "${f[11]} ${f[12]}"
}
cpu_total() { local u s; read -r u s <<<"$(cpu_ticks "$1")"; echo $((u + s)); }
pressure() { # share of the last 10 s in which runnable tasks waited for a CPU
    local line
    read -r line </proc/pressure/cpu 2>/dev/null || { echo null; return; }
    line=${line#*avg10=}
    echo "${line%% *}"
}
rss_kb() {
    local line
    while read -r line; do
        [[ $line == VmRSS:* ]] && { read -r _ kb _ <<<"$line" && echo "$kb"; return; }
    done <"/proc/$1/status"
}
# wait_file PATH PID SECONDS: until PATH exists, PID dies, or time runs out.
wait_file() {
    local deadline=$((SECONDS + $3))
    while [[ ! -e $1 ]]; do
        kill -0 "$2" 2>/dev/null || return 1
        ((SECONDS < deadline)) || return 1
        nap 0.02
    done
}

# Below the ephemeral range (32768-60999 here), so that no client connection
# of an earlier scenario can hold the next listening port.
PORT=$((10000 + RANDOM % 10000))
# start_server KIND RATE COUNT START_AFTER NAME: sets SPID, SLOG, SADDR.
start_server() {
    local kind=$1 rate=$2 count=$3 after=$4 name=$5 extra
    PORT=$((PORT + 1))
    SADDR=127.0.0.1:$PORT
    SLOG=$OUT/$name.server.log
    case $kind in
        crate) extra=(--retain-events "$RETAIN_EVENTS") kind=bench_server ;;
        baseline) extra=(--capacity "$CAPACITY") kind=bench_baseline ;;
        floor) extra=(--events-per-write 1) kind=bench_floor ;;
        floor2) extra=(--events-per-write 2) kind=bench_floor ;;
        *) die "unknown server kind $kind" ;;
    esac
    taskset -c "$SERVER_CORE" "$(bin "$kind")" --addr "$SADDR" --rate "$rate" --count "$count" \
        --start-after-conns "$after" --threads 1 "${extra[@]}" >"$SLOG" 2>&1 &
    SPID=$!
    LIVE[$SPID]=1
    for _ in $(seq 200); do
        curl -sf --max-time 1 "http://$SADDR/stats" >/dev/null 2>&1 && return 0
        kill -0 "$SPID" 2>/dev/null || { cat "$SLOG" >&2; die "$name: server exited"; }
        nap 0.05
    done
    die "$name: server not answering on $SADDR"
}
# stop_server: SIGTERM; sets FINAL to its last line ({"published","lagged_skipped","max_subscribers"}).
stop_server() {
    kill -TERM "$SPID" 2>/dev/null || true
    reap "$SPID"
    FINAL=$(grep '"lagged_skipped"' "$SLOG" | tail -n 1) || true
    [[ -n $FINAL ]] || FINAL='{}'
}
server_stats() { curl -sf --max-time 5 "http://$SADDR/stats" || echo '{}'; }

# measured_run NAME CONNS EXPECT MAX_SECS: one client against the running
# server, which it stops; sets RUN to the client's report extended with the
# server's CPU over the window [publisher start, last event received].
measured_run() {
    local name=$1 conns=$2 expect=$3 max_secs=$4
    local ready=$OUT/$name.ready done=$OUT/$name.done
    taskset -c "$CLIENT_CORE" "$(bin bench_client)" --addr "$SADDR" --conns "$conns" \
        --expect "$expect" --duration "$max_secs" --ready-file "$ready" --done-file "$done" \
        --linger 30 --label "$name" >"$OUT/$name.client.json" 2>"$OUT/$name.client.log" &
    local cpid=$!
    LIVE[$cpid]=1
    wait_file "$ready" "$cpid" 120 || die "$name: client did not connect (see $OUT/$name.client.log)"
    local rss psi
    rss=$(rss_kb "$SPID")
    psi=$(pressure)
    wait_file "$done" "$cpid" $((max_secs + 30)) || die "$name: client gave no report"
    local u1 k1
    read -r u1 k1 <<<"$(cpu_ticks "$SPID")"
    kill -TERM "$cpid" 2>/dev/null || true
    reap "$cpid"
    local stats
    stats=$(server_stats)
    stop_server
    local start u0 k0
    start=$(grep '"publisher_started"' "$SLOG" | head -n 1)
    u0=$(jq -r '.utime // empty' <<<"$start")
    k0=$(jq -r '.stime // empty' <<<"$start")
    [[ -n $u0 && -n $k0 ]] || { u0=$u1; k0=$k1; }
    local s0=$((u0 + k0)) s1=$((u1 + k1))
    RUN=$(jq -c --argjson s0 "$s0" --argjson s1 "$s1" --argjson tck "$CLK_TCK" --argjson rss "$rss" \
        --argjson user $((u1 - u0)) --argjson sys $((k1 - k0)) --arg psi "$psi" \
        --argjson stats "$stats" --argjson final "$FINAL" --argjson p99max "$P99_LIMIT_US" '
        . + {
          server_user_pct_of_cpu: (if ($user + $sys) > 0 then ($user * 100 / ($user + $sys) | round) else null end),
          cpu_pressure_avg10: ($psi | tonumber? // null),
          server_cpu_us: ((($s1 - $s0) * 1000000 / $tck) | floor),
          server_cpu_pct: (if .receive_s > 0 then (($s1 - $s0) / $tck / .receive_s * 1000 | round) / 10 else null end),
          cpu_us_per_delivery: (if .events > 0 then (($s1 - $s0) * 1000000 / $tck / .events * 1000 | round) / 1000 else null end),
          client_cpu_pct: (if .receive_s > 0 then (.cpu_ticks / $tck / .receive_s * 1000 | round) / 10 else null end),
          server_rss_kb: $rss,
          server_lagged: ($stats.lagged // null),
          coalescing_ms: ($stats.coalescing_ms // null),
          coalescing_switches: ($stats.coalescing_switches // null),
          server_published: ($final.published // null),
          lagged_skipped: ($final.lagged_skipped // null),
          ok: (.lossless and (.p99_us != null) and (.p99_us < $p99max))
        }' "$done")
}

# --- scenarios -----------------------------------------------------------------

declare -A FIXED FIXED_RUNS SWEEP SWEEP_POINTS SWEEP_FAILS IDLE HELD MAXRATE

# fixed_round KIND ROUND: one run of the fixed-rate scenario.
fixed_round() {
    local kind=$1 round=$2 count=$((FIXED_RATE * FIXED_SECS))
    log "fixed [$kind] round $round/$FIXED_ROUNDS: $FIXED_CONNS connections x $FIXED_RATE events/s for ${FIXED_SECS}s (CPU pressure $(pressure)%)"
    start_server "$kind" "$FIXED_RATE" "$count" "$FIXED_CONNS" "fixed-$kind-$round"
    measured_run "fixed-$kind-$round" "$FIXED_CONNS" "$count" $((FIXED_SECS + 30))
    FIXED_RUNS[$kind]+="$RUN"$'\n'
    log "  $(jq -c '{events, missed, resyncs, silent_gaps, p50_us, p99_us, p999_us, cpu_us_per_delivery, server_cpu_pct, client_cpu_pct}
        + if .coalescing_ms != null then {coalescing_ms, coalescing_switches} else {} end' <<<"$RUN")"
}

# The rounds of one kind of run, one JSON object each, as one: `median`,
# and `rounds(KEYS)`, the median of each of KEYS over the rounds and the
# totals of what was delivered and lost, with the runs themselves.
# shellcheck disable=SC2016 # jq's variables
JQ_ROUNDS='
def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
def rounds($keys):
    . as $runs
    | (reduce $keys[] as $k ({}; .[$k] = ($runs | map(.[$k]) | map(select(. != null)) | median)))
    + {
        rounds: ($runs | length),
        events: ($runs | map(.events) | add),
        expected_events: ($runs | map(.expected_events) | add),
        missed: ($runs | map(.missed) | add),
        resyncs: ($runs | map(.resyncs) | add),
        silent_gaps: ($runs | map(.silent_gaps) | add),
        lossless: ($runs | all(.lossless)),
        runs: $runs
      };
'

# Rounds rotate through the servers, so that all meet the same background
# load; each metric is then the median over the rounds.
# BENCH_FIXED_KINDS / BENCH_FIXED_ROUNDS narrow the fixed scenario while
# looking into one server (the published results need all four).
read -r -a FIXED_KINDS <<<"${BENCH_FIXED_KINDS:-crate baseline floor floor2}"
FIXED_ROUNDS=${BENCH_FIXED_ROUNDS:-$FIXED_ROUNDS}
scenario_fixed() {
    local round i kind n=${#FIXED_KINDS[@]}
    for ((round = 1; round <= FIXED_ROUNDS; round++)); do
        for ((i = 0; i < n; i++)); do
            fixed_round "${FIXED_KINDS[(i + round - 1) % n]}" "$round"
        done
    done
    for kind in "${FIXED_KINDS[@]}"; do
        FIXED[$kind]=$(jq -s -c "$JQ_ROUNDS"'
            rounds(["p50_us", "p99_us", "p999_us", "max_us", "cpu_us_per_delivery", "server_cpu_pct",
                    "client_cpu_pct", "server_user_pct_of_cpu", "cpu_pressure_avg10"])
            + {lagged_skipped: (map(.lagged_skipped // 0) | add)}' <<<"${FIXED_RUNS[$kind]}")
    done
}

saturated() { [[ " $SATURATED_RATES " == *" $1 "* ]]; }
# sweep_point KIND RATE: one rate of the sweep, tried again once if it
# fails (background load only ever makes a run worse), unless this server
# already failed at two lower rates in a row: then it is skipped, except at
# a saturated rate, where it runs once all the same (target T2 compares
# the servers there). floor2 runs once, for at most FLOOR2_SECS.
sweep_point() {
    local kind=$1 rate=$2 count=$(($2 * SWEEP_SECS)) try point='' tries=$SWEEP_TRIES max_secs=$((SWEEP_SECS + 30))
    if ((${SWEEP_FAILS[$kind]:-0} >= 2)); then
        if ! saturated "$rate"; then
            SWEEP_POINTS[$kind]+="{\"rate\":$rate,\"skipped\":true}"$'\n'
            return
        fi
        tries=1
    fi
    [[ $kind == floor2 ]] && tries=1 max_secs=$FLOOR2_SECS
    for ((try = 1; try <= tries; try++)); do
        log "sweep [$kind]: $SWEEP_CONNS connections x $rate events/s for ${SWEEP_SECS}s, try $try (CPU pressure $(pressure)%)"
        start_server "$kind" "$rate" "$count" "$SWEEP_CONNS" "sweep-$rate-$kind-$try"
        measured_run "sweep-$rate-$kind-$try" "$SWEEP_CONNS" "$count" "$max_secs"
        point=$(jq -c --argjson rate "$rate" --argjson attempt "$try" --argjson max_secs "$max_secs" \
            '. + {rate: $rate, tries: $attempt, max_secs: $max_secs}' <<<"$RUN")
        log "  $(jq -c '{ok, lossless, missed, resyncs, silent_gaps, p50_us, p99_us, cpu_us_per_delivery, server_cpu_pct, client_cpu_pct}
            + if .coalescing_ms != null then {coalescing_ms, coalescing_switches} else {} end' <<<"$point")"
        [[ $(jq -r .ok <<<"$point") == true ]] && break
    done
    SWEEP_POINTS[$kind]+="$point"$'\n'
    if [[ $(jq -r .ok <<<"$point") == true ]]; then
        SWEEP_FAILS[$kind]=0
    else
        SWEEP_FAILS[$kind]=$((${SWEEP_FAILS[$kind]:-0} + 1))
    fi
}

# Rates rise; at each, the servers run back to back, which goes first
# rotating: the crate and the baseline, and floor2 at the saturated rates.
scenario_sweep() {
    local rate i=0 j kinds
    for rate in $SWEEP_RATES; do
        kinds=(crate baseline)
        saturated "$rate" && kinds+=(floor2)
        for ((j = 0; j < ${#kinds[@]}; j++)); do
            sweep_point "${kinds[(i + j) % ${#kinds[@]}]}" "$rate"
        done
        i=$((i + 1))
    done
    for kind in crate baseline floor2; do
        [[ -n ${SWEEP_POINTS[$kind]:-} ]] || continue
        SWEEP[$kind]=$(jq -s -c . <<<"${SWEEP_POINTS[$kind]}")
        # The highest rate that passed with every lower rate passing too.
        MAXRATE[$kind]=$(jq '[foreach .[] as $p ({ok: true, best: 0};
                if .ok and ($p.ok // false) then {ok: true, best: $p.rate} else {ok: false, best: .best} end;
                .best)] | last // 0' <<<"${SWEEP[$kind]}")
    done
}

scenario_held() {
    local kind=$1 held=0 step rss0 clients=() reports=() steps=() ok=true
    log "held [$kind]: connections stepped up through $HOLD_STEPS, keep-alives every 15 s"
    # Never publishes: the publisher waits for more subscribers than ever come.
    start_server "$kind" 1 0 1000000000 "held-$kind"
    nap 1
    rss0=$(rss_kb "$SPID")
    IDLE[$kind]='{}'
    for step in $HOLD_STEPS; do
        local want=$((step - held)) n=0
        while ((want > 0)); do
            local part=$((want < PER_CLIENT ? want : PER_CLIENT))
            local name=held-$kind-$step-$n
            taskset -c "$CLIENT_CORE" "$(bin bench_client)" --addr "$SADDR" --conns "$part" \
                --duration 3600 --ready-file "$OUT/$name.ready" --label "$name" \
                >"$OUT/$name.client.json" 2>"$OUT/$name.client.log" &
            local cpid=$!
            LIVE[$cpid]=1
            clients+=("$cpid:$name")
            if ! wait_file "$OUT/$name.ready" "$cpid" 180; then
                log "  $name: client did not finish connecting"
                ok=false
                break
            fi
            want=$((want - part))
            n=$((n + 1))
        done
        nap 2
        local stats subs rss connected=0 failed=0 c
        stats=$(server_stats)
        subs=$(jq -r '.subscribers // 0' <<<"$stats")
        rss=$(rss_kb "$SPID")
        for c in "${clients[@]}"; do
            [[ -e $OUT/${c#*:}.ready ]] || continue
            connected=$((connected + $(jq -r .connected "$OUT/${c#*:}.ready")))
            failed=$((failed + $(jq -r .failed "$OUT/${c#*:}.ready")))
        done
        steps+=("{\"target\":$step,\"subscribers\":$subs,\"connected\":$connected,\"failed\":$failed,\"rss_kb\":$rss}")
        log "  step $step: server sees $subs subscribers, clients connected $connected (failed $failed), RSS $((rss / 1024)) MiB"
        if ((step == IDLE_CONNS)); then
            IDLE[$kind]=$(jq -n -c --argjson c "$step" --argjson a "$rss0" --argjson b "$rss" \
                '{conns: $c, rss_before_kb: $a, rss_after_kb: $b, kb_per_conn: ((($b - $a) / $c * 100 | round) / 100)}')
        fi
        if [[ $ok != true ]] || ((subs < step || failed > 0)); then
            ok=false
            break
        fi
        held=$step
    done
    local c0 c1 idle_pct
    log "  idle CPU over ${IDLE_CPU_SECS}s at $held connections"
    c0=$(cpu_total "$SPID")
    nap "$IDLE_CPU_SECS"
    c1=$(cpu_total "$SPID")
    idle_pct=$(jq -n "(($c1 - $c0) / $CLK_TCK / $IDLE_CPU_SECS * 1000 | round) / 10")
    local still
    still=$(jq -r '.subscribers // 0' <<<"$(server_stats)")
    local c
    for c in "${clients[@]}"; do kill -TERM "${c%%:*}" 2>/dev/null || true; done
    for c in "${clients[@]}"; do
        reap "${c%%:*}"
        [[ -s $OUT/${c#*:}.client.json ]] && reports+=("$(cat "$OUT/${c#*:}.client.json")")
    done
    stop_server
    HELD[$kind]=$(
        jq -n -c --argjson held "$held" --argjson still "$still" --argjson idle "$idle_pct" \
            --argjson secs "$IDLE_CPU_SECS" --argjson final "$FINAL" --arg ok "$ok" \
            --argjson steps "$(printf '%s\n' "${steps[@]}" | jq -s -c .)" \
            --argjson reports "$(printf '%s\n' "${reports[@]:-}" | jq -s -c 'map(select(. != null))')" '
            ($reports | map(.connected) | add // 0) as $conns |
            {
              held: $held, all_steps_ok: ($ok == "true"), subscribers_at_end: $still,
              max_subscribers: ($final.max_subscribers // null),
              idle_cpu_pct: $idle, idle_cpu_secs: $secs, steps: $steps,
              client_connections: $conns,
              closed_by_server: ($reports | map(.ended) | add // 0),
              keepalives_per_conn: (if $conns > 0 then (($reports | map(.comments) | add) / $conns * 100 | round) / 100 else null end)
            }'
    )
    log "  $(jq -c '{held, subscribers_at_end, max_subscribers, idle_cpu_pct, closed_by_server, keepalives_per_conn}' <<<"${HELD[$kind]}")"
    log "  idle memory: $(jq -c . <<<"${IDLE[$kind]}")"
}

# --- the Redis backplane row -------------------------------------------------

REDIS_PID='' REDIS_URL='' REDIS_DIR='' REDIS_VERSION=''
# redis_ping PORT: whether a Redis answers PING on 127.0.0.1:PORT (through
# bash's /dev/tcp: no redis-cli needed).
redis_ping() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'PING\r\n' >&3
        read -r -t 1 reply <&3 || exit 1
        [[ $reply == +PONG* ]]
    ) 2>/dev/null
}
# start_redis: a redis-server of this run's own on a free loopback port,
# nothing persisted, its files in a temporary directory; sets REDIS_PID,
# REDIS_URL. Stopped by stop_redis, or on exit with the rest.
start_redis() {
    REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tower-sse-bench-redis.XXXXXX")
    REDIS_VERSION=$(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)
    local try
    for try in 1 2 3 4 5; do
        PORT=$((PORT + 1))
        # Someone else's server there: the next port.
        redis_ping "$PORT" && continue
        taskset -c "$REDIS_CORE" redis-server --port "$PORT" --bind 127.0.0.1 --save "" \
            --appendonly no --dir "$REDIS_DIR" --daemonize no --loglevel warning \
            >"$OUT/redis.log" 2>&1 &
        REDIS_PID=$!
        LIVE[$REDIS_PID]=1
        for _ in $(seq 100); do
            kill -0 "$REDIS_PID" 2>/dev/null || break
            if redis_ping "$PORT"; then
                REDIS_URL=redis://127.0.0.1:$PORT
                log "redis-server $REDIS_VERSION (pid $REDIS_PID) on 127.0.0.1:$PORT, core $REDIS_CORE, no persistence, dir $REDIS_DIR"
                return 0
            fi
            nap 0.05
        done
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        reap "$REDIS_PID"
        log "redis-server did not start on port $PORT (try $try/5): $(tail -n 2 "$OUT/redis.log")"
    done
    die "could not start redis-server (see $OUT/redis.log)"
}
stop_redis() {
    [[ -n $REDIS_PID ]] || return 0
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    reap "$REDIS_PID"
    REDIS_PID=
    rm -rf "$REDIS_DIR"
    REDIS_DIR=
}

# launch NAME ARGS...: the crate's server on the server core with ARGS, on
# the next port, once /stats answers and (with --redis) its replica is in
# step with the stream and its warm-up publish went through; sets LPID,
# LADDR, LLOG.
launch() {
    local name=$1 stats
    shift
    PORT=$((PORT + 1))
    LADDR=127.0.0.1:$PORT
    LLOG=$OUT/$name.server.log
    taskset -c "$SERVER_CORE" "$(bin bench_server)" --addr "$LADDR" --threads 1 \
        --retain-events "$RETAIN_EVENTS" "$@" >"$LLOG" 2>&1 &
    LPID=$!
    LIVE[$LPID]=1
    for _ in $(seq 200); do
        if stats=$(curl -sf --max-time 1 "http://$LADDR/stats" 2>/dev/null) &&
            [[ $(jq -r '(.backplane.connected // true) and (.warm // true)' <<<"$stats") == true ]]; then
            return 0
        fi
        kill -0 "$LPID" 2>/dev/null || { cat "$LLOG" >&2; die "$name: server exited"; }
        nap 0.05
    done
    die "$name: not answering on $LADDR, or its replica never in step with Redis (see $LLOG)"
}
now_us() { echo $((${EPOCHREALTIME/./})); }

# backplane_run KIND RATE SECS NAME: one run of the Redis row with
# REDIS_CONNS connections, RATE events/s for SECS seconds. KIND memory:
# one server, an in-memory broker. KIND redis: replicas A and B on a
# stream of the run's own, the connections alternating between them, A
# publishing through `Replica::publish` (at most 32 publishes awaiting Redis
# at once, the server's default), B only serving. Publishing starts once
# the client is connected and every server counts its share; CPU (the
# servers' and Redis's) is read over [that moment, the last event
# received]. Sets RUN.
backplane_run() {
    local kind=$1 rate=$2 secs=$3 name=$4
    local count=$(($2 * $3)) go=$OUT/$4.go ready=$OUT/$4.ready done=$OUT/$4.done
    local -a pids=() addrs=() logs=()
    case $kind in
        memory)
            launch "$name" --rate "$rate" --count "$count" --start-after-conns "$REDIS_CONNS" --start-file "$go"
            pids+=("$LPID") addrs+=("$LADDR") logs+=("$LLOG")
            ;;
        redis)
            # A fresh stream per run: nothing of an earlier one in the way.
            local stream=tower-sse-bench:$name
            launch "$name-a" --redis "$REDIS_URL" --stream "$stream" --rate "$rate" --count "$count" \
                --start-after-conns $(((REDIS_CONNS + 1) / 2)) --start-file "$go"
            pids+=("$LPID") addrs+=("$LADDR") logs+=("$LLOG")
            # B never publishes: it waits for more subscribers than ever come.
            launch "$name-b" --redis "$REDIS_URL" --stream "$stream" --rate "$rate" --count 0 \
                --start-after-conns 1000000000
            pids+=("$LPID") addrs+=("$LADDR") logs+=("$LLOG")
            ;;
        *) die "unknown kind $kind" ;;
    esac
    local list
    list=$(IFS=,; echo "${addrs[*]}")
    taskset -c "$CLIENT_CORE" "$(bin bench_client)" --addr "$list" --conns "$REDIS_CONNS" \
        --expect "$count" --duration $((secs + 30)) --ready-file "$ready" --done-file "$done" \
        --linger 30 --label "$name" >"$OUT/$name.client.json" 2>"$OUT/$name.client.log" &
    local cpid=$!
    LIVE[$cpid]=1
    wait_file "$ready" "$cpid" 120 || die "$name: client did not connect (see $OUT/$name.client.log)"
    local addr subs n deadline=$((SECONDS + 10))
    while :; do
        subs=0
        for addr in "${addrs[@]}"; do
            n=$(curl -sf --max-time 2 "http://$addr/stats" | jq -r '.subscribers // 0') || n=0
            subs=$((subs + ${n:-0}))
        done
        ((subs >= REDIS_CONNS)) && break
        ((SECONDS < deadline)) || die "$name: the servers count $subs of $REDIS_CONNS subscribers"
        nap 0.02
    done
    local pid c0=0 c1=0 r0=0 r1=0 t0 t1
    for pid in "${pids[@]}"; do c0=$((c0 + $(cpu_total "$pid"))); done
    if [[ $kind == redis ]]; then r0=$(cpu_total "$REDIS_PID"); fi
    t0=$(now_us)
    : >"$go"
    wait_file "$done" "$cpid" $((secs + 30)) || die "$name: client gave no report"
    t1=$(now_us)
    for pid in "${pids[@]}"; do c1=$((c1 + $(cpu_total "$pid"))); done
    if [[ $kind == redis ]]; then r1=$(cpu_total "$REDIS_PID"); fi
    kill -TERM "$cpid" 2>/dev/null || true
    reap "$cpid"
    local stats=() finals=() i
    for i in "${!pids[@]}"; do
        stats+=("$(curl -sf --max-time 5 "http://${addrs[$i]}/stats" || echo '{}')")
        kill -TERM "${pids[$i]}" 2>/dev/null || true
        reap "${pids[$i]}"
        finals+=("$(grep '"lagged_skipped"' "${logs[$i]}" | tail -n 1 || true)")
    done
    RUN=$(jq -c --arg kind "$kind" --argjson rate "$rate" --argjson tck "$CLK_TCK" \
        --argjson servers $((c1 - c0)) --argjson redis $((r1 - r0)) --argjson window_us $((t1 - t0)) \
        --argjson stats "$(printf '%s\n' "${stats[@]}" | jq -s -c .)" \
        --argjson finals "$(printf '%s\n' "${finals[@]}" | jq -s -c 'map(select(. != null))')" \
        --argjson p99max "$P99_LIMIT_US" '
        ($window_us / 1e6) as $w
        | (($servers + $redis) / $tck) as $cpu_s
        | . + {
            kind: $kind, rate: $rate, window_s: (($w * 1000 | round) / 1000),
            delivered_per_s: (if $w > 0 then (.events / $w | round) else null end),
            server_cpu_pct: (if $w > 0 then ($cpu_s / $w * 1000 | round) / 10 else null end),
            redis_cpu_pct: (if $w > 0 then ($redis / $tck / $w * 1000 | round) / 10 else null end),
            cpu_us_per_delivery: (if .events > 0 then ($cpu_s * 1e6 / .events * 1000 | round) / 1000 else null end),
            client_cpu_pct: (if .receive_s > 0 then (.cpu_ticks / $tck / .receive_s * 1000 | round) / 10 else null end),
            server_lagged: ($stats | map(.lagged // 0) | add),
            publish_errors: ($finals | map(.publish_errors // 0) | add // 0),
            publish_ack_us: ($stats[0].publish_ack_us // null),
            backplane: ($stats | map(.backplane // empty) | if length > 0 then . else null end),
            servers_reported: ($finals | length), servers: ($stats | length)
          }
        | .ok = (.lossless and (.p99_us != null) and (.p99_us < $p99max) and .publish_errors == 0)' "$done")
    # Errors, not numbers: a publish Redis refused, a reader that lost
    # Redis or met entries it could not read, a server that did not say
    # goodbye.
    local trouble
    trouble=$(jq -r '[
        (if .publish_errors > 0 then "\(.publish_errors) publish errors" else empty end),
        (if .servers_reported < .servers then "a server gave no final line" else empty end),
        (.backplane // [] | to_entries[] | .value as $b | (["A", "B"][.key]) as $r |
            (if $b.connected != true then "replica \($r) not in step at the end (\($b.error))" else empty end),
            (if ($b.reconnects // 0) > 0 then "replica \($r) reconnected \($b.reconnects) times" else empty end),
            (if ($b.skipped // 0) > 0 then "replica \($r) skipped \($b.skipped) entries" else empty end))
        ] | join("; ")' <<<"$RUN")
    if [[ -n $trouble ]]; then
        log "  error in $name: $trouble (logs: ${logs[*]})"
        BP_ERRORS+=("$name: $trouble")
    fi
}

declare -A BP_FIXED_RUNS BP_FIXED BP_SWEEP_POINTS BP_SWEEP BP_SWEEP_FAILS BP_MAXRATE
BP_ERRORS=()
BP_KINDS=(memory redis)

bp_show() { # the log line of a run
    jq -c '{ok, events, missed, resyncs, silent_gaps, p50_us, p99_us, p999_us,
            by_addr: (.by_addr // null | if . then map({p50_us, p99_us}) else null end),
            ack_us: (.publish_ack_us // null | if . then {p50, p99, max} else null end),
            lag_max: (.backplane // null | if . then map(.lag) else null end),
            cpu_us_per_delivery, server_cpu_pct, redis_cpu_pct, client_cpu_pct}' <<<"$1"
}

# bp_sweep_point KIND RATE: as sweep_point, for the Redis row.
bp_sweep_point() {
    local kind=$1 rate=$2 try point=
    if ((${BP_SWEEP_FAILS[$kind]:-0} >= 2)); then
        BP_SWEEP_POINTS[$kind]+="{\"rate\":$rate,\"skipped\":true}"$'\n'
        return
    fi
    for ((try = 1; try <= REDIS_TRIES; try++)); do
        log "redis row, sweep [$kind]: $REDIS_CONNS connections x $rate events/s for ${REDIS_SWEEP_SECS}s, try $try (CPU pressure $(pressure)%)"
        backplane_run "$kind" "$rate" "$REDIS_SWEEP_SECS" "redis-sweep-$rate-$kind-$try"
        point=$(jq -c --argjson attempt "$try" '. + {tries: $attempt}' <<<"$RUN")
        log "  $(bp_show "$point")"
        [[ $(jq -r .ok <<<"$point") == true ]] && break
    done
    BP_SWEEP_POINTS[$kind]+="$point"$'\n'
    if [[ $(jq -r .ok <<<"$point") == true ]]; then
        BP_SWEEP_FAILS[$kind]=0
    else
        BP_SWEEP_FAILS[$kind]=$((${BP_SWEEP_FAILS[$kind]:-0} + 1))
    fi
}

scenario_redis() {
    start_redis
    local round i kind n=${#BP_KINDS[@]} rate
    # Rounds alternate which side goes first: both meet the same
    # background load; each metric is then the median over the rounds.
    for ((round = 1; round <= REDIS_ROUNDS; round++)); do
        for ((i = 0; i < n; i++)); do
            kind=${BP_KINDS[(i + round - 1) % n]}
            log "redis row, fixed [$kind] round $round/$REDIS_ROUNDS: $REDIS_CONNS connections x $REDIS_RATE events/s for ${REDIS_SECS}s (CPU pressure $(pressure)%)"
            backplane_run "$kind" "$REDIS_RATE" "$REDIS_SECS" "redis-fixed-$kind-$round"
            BP_FIXED_RUNS[$kind]+="$RUN"$'\n'
            log "  $(bp_show "$RUN")"
        done
    done
    for kind in "${BP_KINDS[@]}"; do
        BP_FIXED[$kind]=$(jq -s -c "$JQ_ROUNDS"'
            . as $runs
            | rounds(["p50_us", "p99_us", "p999_us", "max_us", "cpu_us_per_delivery", "server_cpu_pct",
                      "redis_cpu_pct", "client_cpu_pct", "delivered_per_s"])
            + {
                publish_errors: ($runs | map(.publish_errors) | add),
                by_addr: (if $runs[0].by_addr then
                    [range(0; $runs[0].by_addr | length) as $i
                     | {p50_us: ($runs | map(.by_addr[$i].p50_us) | map(select(. != null)) | median),
                        p99_us: ($runs | map(.by_addr[$i].p99_us) | map(select(. != null)) | median)}]
                  else null end),
                publish_ack_us: (if $runs[0].publish_ack_us then
                    {p50: ($runs | map(.publish_ack_us.p50) | map(select(. != null)) | median),
                     p99: ($runs | map(.publish_ack_us.p99) | map(select(. != null)) | median),
                     max: ($runs | map(.publish_ack_us.max) | map(select(. != null)) | max)}
                  else null end)
              }' <<<"${BP_FIXED_RUNS[$kind]}")
    done
    i=0
    for rate in $REDIS_SWEEP_RATES; do
        if ((i++ % 2)); then
            bp_sweep_point redis "$rate"
            bp_sweep_point memory "$rate"
        else
            bp_sweep_point memory "$rate"
            bp_sweep_point redis "$rate"
        fi
    done
    for kind in "${BP_KINDS[@]}"; do
        BP_SWEEP[$kind]=$(jq -s -c . <<<"${BP_SWEEP_POINTS[$kind]}")
        BP_MAXRATE[$kind]=$(jq '[foreach .[] as $p ({ok: true, best: 0};
                if .ok and ($p.ok // false) then {ok: true, best: $p.rate} else {ok: false, best: .best} end;
                .best)] | last // 0' <<<"${BP_SWEEP[$kind]}")
    done
    stop_redis
}

# --- criterion: fan-out in process --------------------------------------------

# benches/broker.rs, fanout/{tower_sse,broadcast}/1000: one event published
# and received by each of 1000 subscribers (Subscription::try_next against
# broadcast::Receiver::try_recv), on the server core; criterion's median
# ns per iteration, and per delivery (/1000). Sets CRITERION (null if the
# benchmark failed: the rest of the run stands).
CRITERION=null
CRITERION_DIR=${CRITERION_HOME:-${CARGO_TARGET_DIR:-target}/criterion}
scenario_criterion() {
    local since=$OUT/criterion.since est_t=$CRITERION_DIR/fanout/tower_sse/1000/new/estimates.json
    local est_b=$CRITERION_DIR/fanout/broadcast/1000/new/estimates.json
    log "criterion: fanout/{tower_sse,broadcast}/1000 on core $SERVER_CORE (warm-up ${CRITERION_WARM_UP_S}s, measurement ${CRITERION_MEASURE_S}s)"
    : >"$since"
    if ! taskset -c "$SERVER_CORE" cargo bench --quiet --bench broker -- \
        --warm-up-time "$CRITERION_WARM_UP_S" --measurement-time "$CRITERION_MEASURE_S" \
        'fanout/(tower_sse|broadcast)/1000$' >"$OUT/criterion.log" 2>&1; then
        log "  criterion failed (see $OUT/criterion.log): no T3 figures"
        return 0
    fi
    if [[ ! $est_t -nt $since || ! $est_b -nt $since ]]; then
        log "  criterion wrote no fresh $est_t and $est_b (see $OUT/criterion.log): no T3 figures"
        return 0
    fi
    CRITERION=$(jq -n -c --slurpfile t "$est_t" --slurpfile b "$est_b" --argjson core "$SERVER_CORE" \
        --argjson warm "$CRITERION_WARM_UP_S" --argjson measure "$CRITERION_MEASURE_S" '
        def r3: . * 1000 | round / 1000;
        def fig($e): {ns_per_iter: ($e.median.point_estimate | r3),
                      ns_per_iter_ci95: [$e.median.confidence_interval.lower_bound, $e.median.confidence_interval.upper_bound] | map(r3),
                      ns_per_delivery: ($e.median.point_estimate / 1000 | r3)};
        {
          bench: "benches/broker.rs fanout/{tower_sse,broadcast}/1000", subscribers: 1000,
          statistic: "median ns per iteration (one publish and 1000 deliveries)",
          core: $core, warm_up_s: $warm, measurement_s: $measure,
          tower_sse: fig($t[0]), broadcast: fig($b[0]),
          ratio: (if $b[0].median.point_estimate > 0 then ($t[0].median.point_estimate / $b[0].median.point_estimate | r3) else null end)
        }')
    log "  $CRITERION"
}

# --- the run -----------------------------------------------------------------

STARTED=$SECONDS
log "building (release)"
cargo build --release --example bench_server >&2
cargo build --release -p tower-sse-bench >&2
if ran criterion && ! cargo bench --quiet --bench broker --no-run >&2; then
    log "warning: benches/broker.rs does not build: the criterion scenario will have no figures"
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
PSI_BEFORE=$(pressure)
log "client parser alone (one core)"
PARSE=$(taskset -c "$CLIENT_CORE" "$(bin bench_client)" --parse-bench 2>"$OUT/parse-bench.log")
log "  $PARSE"

ran fixed && scenario_fixed
ran sweep && scenario_sweep
if ran held; then for kind in crate baseline; do scenario_held "$kind"; done; fi
ran redis && scenario_redis
ran criterion && scenario_criterion
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
PSI_AFTER=$(pressure)

# --- results -------------------------------------------------------------------

# What a scenario left out of the run is null.
server_json() {
    jq -n -c --argjson fixed "${FIXED[$1]:-null}" --argjson sweep "${SWEEP[$1]:-null}" \
        --argjson idle "${IDLE[$1]:-null}" --argjson held "${HELD[$1]:-null}" --argjson best "${MAXRATE[$1]:-null}" \
        '{fixed: $fixed, sweep: $sweep, max_lossless_rate: $best, idle: $idle, held: $held}'
}
redis_json() {
    ran redis || { echo null; return; }
    jq -n -c --argjson mf "${BP_FIXED[memory]}" --argjson rf "${BP_FIXED[redis]}" \
        --argjson ms "${BP_SWEEP[memory]}" --argjson rs "${BP_SWEEP[redis]}" \
        --argjson mbest "${BP_MAXRATE[memory]}" --argjson rbest "${BP_MAXRATE[redis]}" \
        --arg version "$REDIS_VERSION" --argjson errors "$(printf '%s\n' "${BP_ERRORS[@]:-}" | jq -R -s -c 'split("\n") | map(select(. != ""))')" '
        def ratio(a; b): if a == null or b == null or b == 0 then null else ((a / b * 1000 | round) / 1000) end;
        {
          config: {
            conns: '"$REDIS_CONNS"', replicas: 2, conns_per_replica: ('"$REDIS_CONNS"' / 2),
            publisher: "replica A: Replica::publish started in schedule order, at most 32 awaiting Redis",
            rate: '"$REDIS_RATE"', secs: '"$REDIS_SECS"', rounds: '"$REDIS_ROUNDS"',
            sweep_secs: '"$REDIS_SWEEP_SECS"', sweep_tries: '"$REDIS_TRIES"',
            sweep_rates: ("'"$REDIS_SWEEP_RATES"'" | split(" ") | map(tonumber)),
            redis_version: $version, redis_core: '"$REDIS_CORE"', redis_persistence: "none (save \"\", appendonly no)",
            server_threads_per_process: 1
          },
          memory: {fixed: $mf, sweep: $ms, max_lossless_rate: $mbest},
          redis: {fixed: $rf, sweep: $rs, max_lossless_rate: $rbest},
          errors: $errors,
          ratios: {
            p50: ratio($rf.p50_us; $mf.p50_us),
            p99: ratio($rf.p99_us; $mf.p99_us),
            p999: ratio($rf.p999_us; $mf.p999_us),
            cpu_us_per_delivery: ratio($rf.cpu_us_per_delivery; $mf.cpu_us_per_delivery),
            max_lossless_rate: ratio($rbest; $mbest)
          }
        }'
}
RESULTS=bench/results.json
((PARTIAL)) && RESULTS=$OUT/results.json
jq -n \
    --argjson crate "$(server_json crate)" --argjson baseline "$(server_json baseline)" \
    --argjson floor1 "{\"fixed\":${FIXED[floor]:-null}}" --argjson floor2 "{\"fixed\":${FIXED[floor2]:-null},\"sweep\":${SWEEP[floor2]:-null}}" \
    --argjson redis "$(redis_json)" --argjson criterion "$CRITERION" --arg scenarios "$SCENARIOS" \
    --argjson parse "$PARSE" --argjson quick "$QUICK" \
    --arg load_before "$LOAD_BEFORE" --arg load_after "$LOAD_AFTER" \
    --arg psi_before "$PSI_BEFORE" --arg psi_after "$PSI_AFTER" \
    --arg kernel "$(uname -r)" --arg rustc "$(rustc --version)" \
    --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --argjson secs $((SECONDS - STARTED)) '
    def ratio(a; b): if a == null or b == null or b == 0 then null else ((a / b * 1000 | round) / 1000) end;
    {
      config: {
        quick: ($quick == 1), scenarios: ($scenarios | split(" ") | map(select(. != ""))), cores: {server: '"$SERVER_CORE"', client: '"$CLIENT_CORE"'},
        fixed_conns: '"$FIXED_CONNS"', fixed_rate: '"$FIXED_RATE"', fixed_secs: '"$FIXED_SECS"', fixed_rounds: '"$FIXED_ROUNDS"',
        sweep_conns: '"$SWEEP_CONNS"', sweep_secs: '"$SWEEP_SECS"', sweep_tries: '"$SWEEP_TRIES"',
        sweep_rates: ("'"$SWEEP_RATES"'" | split(" ") | map(tonumber)),
        saturated_rates: ("'"$SATURATED_RATES"'" | split(" ") | map(tonumber)), floor2_sweep_max_secs: '"$FLOOR2_SECS"',
        hold_steps: ("'"$HOLD_STEPS"'" | split(" ") | map(tonumber)),
        idle_conns: '"$IDLE_CONNS"', idle_cpu_secs: '"$IDLE_CPU_SECS"',
        crate_retain_events: '"$RETAIN_EVENTS"', baseline_capacity: '"$CAPACITY"',
        keep_alive_s: 15, server_threads: 1, tcp_nodelay: true, p99_limit_us: '"$P99_LIMIT_US"',
        open_files_limit: '"$FD_LIMIT"', clk_tck: '"$CLK_TCK"',
        loadavg_before: $load_before, loadavg_after: $load_after,
        cpu_pressure_avg10_before: ($psi_before | tonumber? // null),
        cpu_pressure_avg10_after: ($psi_after | tonumber? // null),
        kernel: $kernel, rustc: $rustc, commit: $commit, run_secs: $secs
      },
      client_parse_bench: $parse,
      servers: {crate: $crate, baseline: $baseline},
      floor: {one_write_per_event: $floor1, one_write_per_two_events: $floor2},
      redis_backplane: $redis,
      criterion: $criterion,
      ratios: {
        cpu_us_per_delivery: ratio($crate.fixed.cpu_us_per_delivery; $baseline.fixed.cpu_us_per_delivery),
        p50: ratio($crate.fixed.p50_us; $baseline.fixed.p50_us),
        p99: ratio($crate.fixed.p99_us; $baseline.fixed.p99_us),
        p999: ratio($crate.fixed.p999_us; $baseline.fixed.p999_us),
        max_lossless_rate: ratio($crate.max_lossless_rate; $baseline.max_lossless_rate),
        kb_per_idle_conn: ratio($crate.idle.kb_per_conn; $baseline.idle.kb_per_conn),
        held: ratio($crate.held.held; $baseline.held.held),
        idle_cpu_pct: ratio($crate.held.idle_cpu_pct; $baseline.held.idle_cpu_pct),
        floor_p99: ratio($floor1.fixed.p99_us; $baseline.fixed.p99_us),
        floor2_p99: ratio($floor2.fixed.p99_us; $baseline.fixed.p99_us),
        floor_cpu_us_per_delivery: ratio($floor1.fixed.cpu_us_per_delivery; $baseline.fixed.cpu_us_per_delivery),
        floor2_cpu_us_per_delivery: ratio($floor2.fixed.cpu_us_per_delivery; $baseline.fixed.cpu_us_per_delivery),
        crate_to_floor_cpu_us_per_delivery: ratio($crate.fixed.cpu_us_per_delivery; $floor1.fixed.cpu_us_per_delivery),
        crate_to_floor_p50: ratio($crate.fixed.p50_us; $floor1.fixed.p50_us),
        crate_to_floor_p99: ratio($crate.fixed.p99_us; $floor1.fixed.p99_us),
        fanout_1000_ns_per_delivery: ($criterion.ratio // null)
      }
    }' >"$RESULTS"

# --- the table -------------------------------------------------------------------

R=$RESULTS
q() { jq -r "$1 // \"-\"" "$R"; }
row() { printf '%-44s %14s %14s %9s  %s\n' "$1" "$2" "$3" "$4" "${5:-}"; }
top_rate=${SWEEP_RATES##* }
echo
echo "tower-sse loopback benchmark$( ((QUICK)) && echo ' (quick)')$( ((PARTIAL)) && echo " ($SCENARIOS only)"): server on core $SERVER_CORE (1 tokio worker), client on core $CLIENT_CORE"
echo "crate: retain_events=$RETAIN_EVENTS, keep-alive 15 s | baseline: broadcast capacity $CAPACITY, KeepAlive::default() | TCP_NODELAY on both"
ran fixed && echo "fixed rate: median of $FIXED_ROUNDS alternating round(s) of ${FIXED_SECS}s per server"
echo "background: load average $LOAD_BEFORE -> $LOAD_AFTER, CPU pressure (avg10, % of time tasks waited for a CPU) $PSI_BEFORE -> $PSI_AFTER"
lossless_rate() {
    local r
    r=$(q ".servers.$1.max_lossless_rate")
    if [[ $r == "$top_rate" ]]; then echo ">=$r"; elif [[ $r == 0 ]]; then echo "<${SWEEP_RATES%% *}"; else echo "$r"; fi
}
ratio_p99=$(q .ratios.p99)
# The figures, crate against baseline; the targets are judged after
# (bench/targets.sh).
if ran fixed || ran sweep || ran held; then
    echo
    row "metric" "tower-sse" "baseline" "ratio"
    row "--------------------------------------------" "--------------" "--------------" "---------"
fi
if ran fixed; then
row "CPU us per delivery (${FIXED_CONNS}x${FIXED_RATE}/s)" "$(q .servers.crate.fixed.cpu_us_per_delivery)" "$(q .servers.baseline.fixed.cpu_us_per_delivery)" "$(q .ratios.cpu_us_per_delivery)"
row "server CPU % of a core (fixed rate)" "$(q .servers.crate.fixed.server_cpu_pct)" "$(q .servers.baseline.fixed.server_cpu_pct)" ""
row "  of which user space %" "$(q .servers.crate.fixed.server_user_pct_of_cpu)" "$(q .servers.baseline.fixed.server_user_pct_of_cpu)" ""
row "p50 latency us (fixed rate)" "$(q .servers.crate.fixed.p50_us)" "$(q .servers.baseline.fixed.p50_us)" "$(q .ratios.p50)"
row "p99 latency us (fixed rate)" "$(q .servers.crate.fixed.p99_us)" "$(q .servers.baseline.fixed.p99_us)" "$ratio_p99"
row "p999 latency us (fixed rate)" "$(q .servers.crate.fixed.p999_us)" "$(q .servers.baseline.fixed.p999_us)" "$(q .ratios.p999)"
row "events lost / resyncs / silent gaps (fixed)" \
    "$(jq -r '.servers.crate.fixed // {} | "\(.missed)/\(.resyncs)/\(.silent_gaps)"' "$R")" \
    "$(jq -r '.servers.baseline.fixed // {} | "\(.missed)/\(.resyncs)/\(.silent_gaps)"' "$R")" ""
fi
if ran sweep; then
row "highest lossless rate, ev/s x ${SWEEP_CONNS}" "$(lossless_rate crate)" "$(lossless_rate baseline)" "$(q .ratios.max_lossless_rate)"
fi
if ran held; then
row "idle memory KB per connection (@${IDLE_CONNS})" "$(q .servers.crate.idle.kb_per_conn)" "$(q .servers.baseline.idle.kb_per_conn)" "$(q .ratios.kb_per_idle_conn)"
row "connections held (steps ${HOLD_STEPS// /,})" "$(q .servers.crate.held.held)" "$(q .servers.baseline.held.held)" "$(q .ratios.held)"
row "idle CPU % of a core at that level (${IDLE_CPU_SECS}s)" "$(q .servers.crate.held.idle_cpu_pct)" "$(q .servers.baseline.held.idle_cpu_pct)" "$(q .ratios.idle_cpu_pct)"
row "keep-alives per held connection" "$(q .servers.crate.held.keepalives_per_conn)" "$(q .servers.baseline.held.keepalives_per_conn)" ""
fi
if ran fixed; then
echo
echo "the floor at the fixed rate (bench/src/bin/bench_floor.rs: each event written to every connection"
echo "with one write(2) from the publisher, nothing else; p99 ratio = against the baseline in the same run)"
printf '%-34s %12s %12s %12s %12s\n' "server" "CPU us/deliv" "p50 us" "p99 us" "p99 ratio"
floor_row() { # NAME PATH RATIO
    printf '%-34s %12s %12s %12s %12s\n' "$1" "$(q "$2.cpu_us_per_delivery")" "$(q "$2.p50_us")" "$(q "$2.p99_us")" "$3"
}
floor_row "floor, 1 write per event" .floor.one_write_per_event.fixed "$(q .ratios.floor_p99)"
floor_row "floor, 1 write per 2 events" .floor.one_write_per_two_events.fixed "$(q .ratios.floor2_p99)"
floor_row "tower-sse" .servers.crate.fixed "$ratio_p99"
floor_row "baseline" .servers.baseline.fixed "1"
fi
if ran sweep; then
echo
echo "rate sweep (${SWEEP_CONNS} connections, ${SWEEP_SECS}s per run, a failed rate tried $SWEEP_TRIES time(s); ok = every connection got every event and p99 < 100 ms;"
echo "highest lossless rate = highest rate passed with every lower rate passed; cpu% = server / client share of a core;"
echo "at the saturated rates (${SATURATED_RATES// /, } ev/s) every server runs at least once, and floor2 (bench_floor --events-per-write 2) once, for at most ${FLOOR2_SECS}s)"
# sweep_cell PATH RATE: one point of a sweep.
sweep_cell() {
    jq -r --argjson r "$2" "($1 // [])[] | select(.rate == \$r) |
        if .skipped then \"skipped (2 failures below)\" else
        \"\(if .ok then \"ok  \" else \"FAIL\" end) \(.p50_us) \(.p99_us) \(.missed)/\(.resyncs)/\(.silent_gaps) \(.cpu_us_per_delivery) srv \(.server_cpu_pct) cli \(.client_cpu_pct)\" end" "$R"
}
printf '%6s | %-60s | %-60s\n' "ev/s" "tower-sse: ok p50us p99us lost/resync/silent us/deliv cpu%" "baseline: ok p50us p99us lost/resync/silent us/deliv cpu%"
for rate in $SWEEP_RATES; do
    printf '%6s | %-60s | %-60s\n' "$rate" "$(sweep_cell .servers.crate.sweep "$rate")" "$(sweep_cell .servers.baseline.sweep "$rate")"
    if saturated "$rate"; then
        printf '%6s | %-60s\n' "" "floor2: $(sweep_cell .floor.one_write_per_two_events.sweep "$rate")"
    fi
done
fi
if ran redis; then
    B=.redis_backplane
    bq() { jq -r "$B.$1 // \"-\"" "$R"; }
    bp_rate() { # KIND: its highest lossless rate, as the sweep bounds it
        local r
        r=$(bq "$1.max_lossless_rate")
        if [[ $r == "${REDIS_SWEEP_RATES##* }" ]]; then echo ">=$r"; elif [[ $r == 0 ]]; then echo "<${REDIS_SWEEP_RATES%% *}"; else echo "$r"; fi
    }
    echo
    echo "Redis backplane: two replicas of the crate's server on one Redis stream against one in-memory broker, same run"
    echo "(${REDIS_CONNS} connections, alternating between replicas A and B; events published on A through Replica::publish,"
    echo "at most 32 awaiting Redis at once; redis-server $(bq config.redis_version), no persistence; the servers and Redis share core $SERVER_CORE,"
    echo "1 tokio worker per server; fixed rate: median of $REDIS_ROUNDS alternating round(s) of ${REDIS_SECS}s; CPU = servers + Redis)"
    echo
    row "metric" "in-memory" "redis x2" "ratio" ""
    row "--------------------------------------------" "--------------" "--------------" "---------" ""
    row "p50 latency us (${REDIS_CONNS}x${REDIS_RATE}/s)" "$(bq memory.fixed.p50_us)" "$(bq redis.fixed.p50_us)" "$(bq ratios.p50)" ""
    row "p99 latency us (${REDIS_CONNS}x${REDIS_RATE}/s)" "$(bq memory.fixed.p99_us)" "$(bq redis.fixed.p99_us)" "$(bq ratios.p99)" ""
    row "p999 latency us (${REDIS_CONNS}x${REDIS_RATE}/s)" "$(bq memory.fixed.p999_us)" "$(bq redis.fixed.p999_us)" "$(bq ratios.p999)" ""
    row "  p50 / p99 us on replica A (publishes)" "" "$(jq -r "$B.redis.fixed.by_addr[0] // {} | \"\(.p50_us)/\(.p99_us)\"" "$R")" "" ""
    row "  p50 / p99 us on replica B" "" "$(jq -r "$B.redis.fixed.by_addr[1] // {} | \"\(.p50_us)/\(.p99_us)\"" "$R")" "" ""
    row "  Replica::publish p50 / p99 / max us" "" "$(jq -r "$B.redis.fixed.publish_ack_us // {} | \"\(.p50)/\(.p99)/\(.max)\"" "$R")" "" ""
    row "CPU us per delivery (same load)" "$(bq memory.fixed.cpu_us_per_delivery)" "$(bq redis.fixed.cpu_us_per_delivery)" "$(bq ratios.cpu_us_per_delivery)" ""
    row "server-side CPU % of a core (same load)" "$(bq memory.fixed.server_cpu_pct)" "$(bq redis.fixed.server_cpu_pct)" "" ""
    row "  of which redis-server %" "" "$(bq redis.fixed.redis_cpu_pct)" "" ""
    row "events lost / resyncs / silent gaps (fixed)" \
        "$(jq -r "$B.memory.fixed | \"\(.missed)/\(.resyncs)/\(.silent_gaps)\"" "$R")" \
        "$(jq -r "$B.redis.fixed | \"\(.missed)/\(.resyncs)/\(.silent_gaps)\"" "$R")" "" ""
    row "highest lossless rate, ev/s x ${REDIS_CONNS}" "$(bp_rate memory)" "$(bp_rate redis)" "$(bq ratios.max_lossless_rate)" ""
    row "  deliveries/s at that rate" \
        "$(jq -r "$B.memory as \$k | \$k.sweep | map(select(.rate == \$k.max_lossless_rate))[0].delivered_per_s // \"-\"" "$R")" \
        "$(jq -r "$B.redis as \$k | \$k.sweep | map(select(.rate == \$k.max_lossless_rate))[0].delivered_per_s // \"-\"" "$R")" "" ""
    echo
    echo "sweep (${REDIS_SWEEP_SECS}s per run, a failed rate tried $REDIS_TRIES time(s); ok = every connection got every event, p99 < 100 ms, no publish error)"
    printf '%6s | %-44s | %-58s\n' "ev/s" "in-memory: ok p50us p99us lost/resync/silent cpu%" "redis x2: ok p50us p99us lost/resync/silent cpu% publish-p99us"
    for rate in $REDIS_SWEEP_RATES; do
        bp_cell() {
            jq -r --argjson r "$rate" --arg k "$1" "$B"'[$k].sweep[] | select(.rate == $r) |
                if .skipped then "skipped (2 failures below)" else
                "\(if .ok then "ok  " else "FAIL" end) \(.p50_us) \(.p99_us) \(.missed)/\(.resyncs)/\(.silent_gaps) \(.server_cpu_pct)"
                + (if .publish_ack_us then " \(.publish_ack_us.p99)" else "" end) end' "$R"
        }
        printf '%6s | %-44s | %-58s\n' "$rate" "$(bp_cell memory)" "$(bp_cell redis)"
    done
    echo
    echo "redis x2 against in-memory, ${REDIS_CONNS} connections: p50 x$(bq ratios.p50), p99 x$(bq ratios.p99) at ${REDIS_RATE} ev/s;" \
        "highest lossless rate $(bp_rate redis) against $(bp_rate memory) ev/s (x$(bq ratios.max_lossless_rate))"
fi
echo
ran fixed || ran sweep || ran held &&
    echo "client parser alone: $(jq -r '.client_parse_bench | to_entries | map("\(.key) \(.value.events_per_s / 1e6 * 100 | round / 100) M ev/s") | join(", ")' "$R")"
ran criterion &&
    echo "criterion, fan-out to 1000 subscribers in process (median, core $SERVER_CORE): $(jq -r '.criterion // null |
        if . == null then "no figures (see '"$OUT"'/criterion.log)" else
        "tower_sse \(.tower_sse.ns_per_delivery) ns, tokio broadcast \(.broadcast.ns_per_delivery) ns per delivery (x\(.ratio))" end' "$R")"

# The targets, judged on the file just written (into it as .targets too);
# a report: whether they are met changes nothing of the exit status.
bash bench/targets.sh --update "$RESULTS" || log "bench/targets.sh failed on $RESULTS"
echo
echo "results: $RESULTS, logs: $OUT/"

if ((PARTIAL)); then
    log "some scenarios only: bench/results.json and bench/sweep.png left as they were"
else
    cargo run --release --quiet -p tower-sse-bench --bin bench_chart -- bench/results.json bench/sweep.png >&2 || log "chart failed"
fi
log "done in $((SECONDS - STARTED)) s"
if ((${#BP_ERRORS[@]})); then
    log "errors in the Redis row:"
    for error in "${BP_ERRORS[@]}"; do log "  $error"; done
    exit 1
fi
