#!/usr/bin/env bash
# Loopback load benchmark: the crate's SSE route (examples/bench_server.rs)
# against the usual tokio broadcast + axum Sse (bench/src/bin/bench_baseline.rs),
# driven by the load client (bench/src/bin/bench_client.rs), in one run:
#
#   bash bench/run.sh            # full run, about 10 minutes on 2 cores
#   bash bench/run.sh --quick    # smoke test, about 2 minutes
#
# Server pinned to core 0, client(s) to core 1 (SERVER_CORE / CLIENT_CORE
# override). Scenarios, each for both servers:
#   fixed    1000 connections x 100 events/s: server CPU us per delivery,
#            p50/p99/p999 latency, loss; also run against the floor
#            (bench/src/bin/bench_floor.rs: one write(2) per connection per
#            event, or per two events, and nothing else), which shows what
#            the kernel and the client alone cost at this load
#   sweep    1000 connections at rising rates: each server's highest
#            lossless rate (every connection got every event, p99 < 100 ms)
#   held     connections stepped up to 19 000 with keep-alives running:
#            idle memory per connection at 10 000, most held, idle CPU
# Writes bench/results.json and bench/sweep.png, logs under bench/out/.
# Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
RETAIN_EVENTS=20000 # the crate's replay log (its default is 2000)
CAPACITY=1024       # the baseline's broadcast channel
P99_LIMIT_US=100000 # lossless also means p99 under 100 ms
if ((QUICK)); then
    FIXED_CONNS=200 FIXED_RATE=100 FIXED_SECS=4 FIXED_ROUNDS=1
    SWEEP_CONNS=200 SWEEP_SECS=2 SWEEP_RATES="100 1000 5000" SWEEP_TRIES=1
    HOLD_STEPS="500 1000 2000" IDLE_CONNS=1000 IDLE_CPU_SECS=5
else
    FIXED_CONNS=1000 FIXED_RATE=100 FIXED_SECS=15 FIXED_ROUNDS=3
    SWEEP_CONNS=1000 SWEEP_SECS=5 SWEEP_RATES="20 50 100 200 500 1000 2000 5000" SWEEP_TRIES=2
    HOLD_STEPS="5000 10000 15000 19000" IDLE_CONNS=10000 IDLE_CPU_SECS=20
fi
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
    local rss=$(rss_kb "$SPID") psi=$(pressure)
    wait_file "$done" "$cpid" $((max_secs + 30)) || die "$name: client gave no report"
    local u1 k1
    read -r u1 k1 <<<"$(cpu_ticks "$SPID")"
    kill -TERM "$cpid" 2>/dev/null || true
    reap "$cpid"
    local stats=$(server_stats)
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
    log "  $(jq -c '{events, missed, resyncs, silent_gaps, p50_us, p99_us, p999_us, cpu_us_per_delivery, server_cpu_pct, client_cpu_pct}' <<<"$RUN")"
}

# Rounds rotate through the servers, so that all meet the same background
# load; each metric is then the median over the rounds.
FIXED_KINDS=(crate baseline floor floor2)
scenario_fixed() {
    local round i kind n=${#FIXED_KINDS[@]}
    for ((round = 1; round <= FIXED_ROUNDS; round++)); do
        for ((i = 0; i < n; i++)); do
            fixed_round "${FIXED_KINDS[(i + round - 1) % n]}" "$round"
        done
    done
    for kind in "${FIXED_KINDS[@]}"; do
        FIXED[$kind]=$(jq -s -c '
            def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
            . as $runs
            | (reduce ("p50_us", "p99_us", "p999_us", "max_us", "cpu_us_per_delivery", "server_cpu_pct",
                       "client_cpu_pct", "server_user_pct_of_cpu", "cpu_pressure_avg10") as $k
                 ({}; .[$k] = ($runs | map(.[$k]) | map(select(. != null)) | median)))
            + {
                rounds: ($runs | length),
                events: ($runs | map(.events) | add),
                expected_events: ($runs | map(.expected_events) | add),
                missed: ($runs | map(.missed) | add),
                resyncs: ($runs | map(.resyncs) | add),
                silent_gaps: ($runs | map(.silent_gaps) | add),
                lagged_skipped: ($runs | map(.lagged_skipped // 0) | add),
                lossless: ($runs | all(.lossless)),
                runs: $runs
              }' <<<"${FIXED_RUNS[$kind]}")
    done
}

# sweep_point KIND RATE: one rate of the sweep, tried again once if it
# fails (background load only ever makes a run worse), unless this server
# already failed at two lower rates in a row.
sweep_point() {
    local kind=$1 rate=$2 count=$(($2 * SWEEP_SECS)) try point=
    if ((${SWEEP_FAILS[$kind]:-0} >= 2)); then
        SWEEP_POINTS[$kind]+="{\"rate\":$rate,\"skipped\":true}"$'\n'
        return
    fi
    for ((try = 1; try <= SWEEP_TRIES; try++)); do
        log "sweep [$kind]: $SWEEP_CONNS connections x $rate events/s for ${SWEEP_SECS}s, try $try (CPU pressure $(pressure)%)"
        start_server "$kind" "$rate" "$count" "$SWEEP_CONNS" "sweep-$rate-$kind-$try"
        measured_run "sweep-$rate-$kind-$try" "$SWEEP_CONNS" "$count" $((SWEEP_SECS + 30))
        point=$(jq -c --argjson rate "$rate" --argjson attempt "$try" '. + {rate: $rate, tries: $attempt}' <<<"$RUN")
        log "  $(jq -c '{ok, lossless, missed, resyncs, silent_gaps, p99_us, cpu_us_per_delivery, server_cpu_pct, client_cpu_pct}' <<<"$point")"
        [[ $(jq -r .ok <<<"$point") == true ]] && break
    done
    SWEEP_POINTS[$kind]+="$point"$'\n'
    if [[ $(jq -r .ok <<<"$point") == true ]]; then
        SWEEP_FAILS[$kind]=0
    else
        SWEEP_FAILS[$kind]=$((${SWEEP_FAILS[$kind]:-0} + 1))
    fi
}

# Rates rise; at each, both servers run back to back (alternating which first).
scenario_sweep() {
    local rate i=0
    for rate in $SWEEP_RATES; do
        if ((i++ % 2)); then
            sweep_point baseline "$rate"
            sweep_point crate "$rate"
        else
            sweep_point crate "$rate"
            sweep_point baseline "$rate"
        fi
    done
    for kind in crate baseline; do
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

# --- the run -----------------------------------------------------------------

STARTED=$SECONDS
log "building (release)"
cargo build --release --example bench_server >&2
cargo build --release -p tower-sse-bench >&2

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
PSI_BEFORE=$(pressure)
log "client parser alone (one core)"
PARSE=$(taskset -c "$CLIENT_CORE" "$(bin bench_client)" --parse-bench 2>"$OUT/parse-bench.log")
log "  $PARSE"

scenario_fixed
scenario_sweep
for kind in crate baseline; do scenario_held "$kind"; done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
PSI_AFTER=$(pressure)

# --- results -------------------------------------------------------------------

server_json() {
    jq -n -c --argjson fixed "${FIXED[$1]}" --argjson sweep "${SWEEP[$1]}" \
        --argjson idle "${IDLE[$1]}" --argjson held "${HELD[$1]}" --argjson best "${MAXRATE[$1]}" \
        '{fixed: $fixed, sweep: $sweep, max_lossless_rate: $best, idle: $idle, held: $held}'
}
jq -n \
    --argjson crate "$(server_json crate)" --argjson baseline "$(server_json baseline)" \
    --argjson floor1 "{\"fixed\":${FIXED[floor]}}" --argjson floor2 "{\"fixed\":${FIXED[floor2]}}" \
    --argjson parse "$PARSE" --argjson quick "$QUICK" \
    --arg load_before "$LOAD_BEFORE" --arg load_after "$LOAD_AFTER" \
    --arg psi_before "$PSI_BEFORE" --arg psi_after "$PSI_AFTER" \
    --arg kernel "$(uname -r)" --arg rustc "$(rustc --version)" \
    --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --argjson secs $((SECONDS - STARTED)) '
    def ratio(a; b): if a == null or b == null or b == 0 then null else ((a / b * 1000 | round) / 1000) end;
    {
      config: {
        quick: ($quick == 1), cores: {server: '"$SERVER_CORE"', client: '"$CLIENT_CORE"'},
        fixed_conns: '"$FIXED_CONNS"', fixed_rate: '"$FIXED_RATE"', fixed_secs: '"$FIXED_SECS"', fixed_rounds: '"$FIXED_ROUNDS"',
        sweep_conns: '"$SWEEP_CONNS"', sweep_secs: '"$SWEEP_SECS"', sweep_tries: '"$SWEEP_TRIES"',
        sweep_rates: ("'"$SWEEP_RATES"'" | split(" ") | map(tonumber)),
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
        floor2_cpu_us_per_delivery: ratio($floor2.fixed.cpu_us_per_delivery; $baseline.fixed.cpu_us_per_delivery)
      }
    }' >bench/results.json

# --- the table -------------------------------------------------------------------

R=bench/results.json
q() { jq -r "$1 // \"-\"" "$R"; }
row() { printf '%-44s %14s %14s %9s  %s\n' "$@"; }
top_rate=${SWEEP_RATES##* }
echo
echo "tower-sse loopback benchmark$( ((QUICK)) && echo ' (quick)'): server on core $SERVER_CORE (1 tokio worker), client on core $CLIENT_CORE"
echo "crate: retain_events=$RETAIN_EVENTS, keep-alive 15 s | baseline: broadcast capacity $CAPACITY, KeepAlive::default() | TCP_NODELAY on both"
echo "fixed rate: median of $FIXED_ROUNDS alternating round(s) of ${FIXED_SECS}s per server"
echo "background: load average $LOAD_BEFORE -> $LOAD_AFTER, CPU pressure (avg10, % of time tasks waited for a CPU) $PSI_BEFORE -> $PSI_AFTER"
echo
row "metric" "tower-sse" "baseline" "ratio" "target"
row "--------------------------------------------" "--------------" "--------------" "---------" "------"
lossless_rate() {
    local r
    r=$(q ".servers.$1.max_lossless_rate")
    if [[ $r == "$top_rate" ]]; then echo ">=$r"; elif [[ $r == 0 ]]; then echo "<${SWEEP_RATES%% *}"; else echo "$r"; fi
}
met() { [[ $1 == true ]] && echo "met" || echo "NOT met"; }
ratio_cpu=$(q .ratios.cpu_us_per_delivery)
ratio_p99=$(q .ratios.p99)
ratio_rate=$(q .ratios.max_lossless_rate)
row "CPU us per delivery (${FIXED_CONNS}x${FIXED_RATE}/s)" "$(q .servers.crate.fixed.cpu_us_per_delivery)" "$(q .servers.baseline.fixed.cpu_us_per_delivery)" "$ratio_cpu" \
    "<= 0.6x: $(met "$(jq -r '.ratios.cpu_us_per_delivery != null and .ratios.cpu_us_per_delivery <= 0.6' "$R")")"
row "server CPU % of a core (fixed rate)" "$(q .servers.crate.fixed.server_cpu_pct)" "$(q .servers.baseline.fixed.server_cpu_pct)" "" ""
row "  of which user space %" "$(q .servers.crate.fixed.server_user_pct_of_cpu)" "$(q .servers.baseline.fixed.server_user_pct_of_cpu)" "" ""
row "p50 latency us (fixed rate)" "$(q .servers.crate.fixed.p50_us)" "$(q .servers.baseline.fixed.p50_us)" "$(q .ratios.p50)" ""
row "p99 latency us (fixed rate)" "$(q .servers.crate.fixed.p99_us)" "$(q .servers.baseline.fixed.p99_us)" "$ratio_p99" \
    "<= 0.5x: $(met "$(jq -r '.ratios.p99 != null and .ratios.p99 <= 0.5' "$R")")"
row "p999 latency us (fixed rate)" "$(q .servers.crate.fixed.p999_us)" "$(q .servers.baseline.fixed.p999_us)" "$(q .ratios.p999)" ""
row "events lost / resyncs / silent gaps (fixed)" \
    "$(jq -r '.servers.crate.fixed | "\(.missed)/\(.resyncs)/\(.silent_gaps)"' "$R")" \
    "$(jq -r '.servers.baseline.fixed | "\(.missed)/\(.resyncs)/\(.silent_gaps)"' "$R")" "" ""
row "highest lossless rate, ev/s x ${SWEEP_CONNS}" "$(lossless_rate crate)" "$(lossless_rate baseline)" "$ratio_rate" \
    ">= 2x: $(met "$(jq -r '(.servers.crate.max_lossless_rate > 0 and .servers.baseline.max_lossless_rate == 0) or (.ratios.max_lossless_rate != null and .ratios.max_lossless_rate >= 2)' "$R")")"
row "idle memory KB per connection (@${IDLE_CONNS})" "$(q .servers.crate.idle.kb_per_conn)" "$(q .servers.baseline.idle.kb_per_conn)" "$(q .ratios.kb_per_idle_conn)" \
    "<= 8 KB: $(met "$(jq -r '.servers.crate.idle.kb_per_conn != null and .servers.crate.idle.kb_per_conn <= 8' "$R")")"
row "connections held (steps ${HOLD_STEPS// /,})" "$(q .servers.crate.held.held)" "$(q .servers.baseline.held.held)" "$(q .ratios.held)" \
    "${HOLD_STEPS##* }: $(met "$(jq -r --argjson top "${HOLD_STEPS##* }" '.servers.crate.held.held >= $top' "$R")")"
row "idle CPU % of a core at that level (${IDLE_CPU_SECS}s)" "$(q .servers.crate.held.idle_cpu_pct)" "$(q .servers.baseline.held.idle_cpu_pct)" "$(q .ratios.idle_cpu_pct)" \
    "< 5 %: $(met "$(jq -r '.servers.crate.held.idle_cpu_pct != null and .servers.crate.held.idle_cpu_pct < 5' "$R")")"
row "keep-alives per held connection" "$(q .servers.crate.held.keepalives_per_conn)" "$(q .servers.baseline.held.keepalives_per_conn)" "" ""
echo
echo "the floor at the fixed rate (bench/src/bin/bench_floor.rs: each event written to every connection"
echo "with one write(2) from the publisher, nothing else; ratio = against the baseline in the same run)"
printf '%-34s %12s %12s %12s %12s\n' "server" "CPU us/deliv" "p50 us" "p99 us" "p99 ratio"
floor_row() { # NAME PATH RATIO
    printf '%-34s %12s %12s %12s %12s\n' "$1" "$(q "$2.cpu_us_per_delivery")" "$(q "$2.p50_us")" "$(q "$2.p99_us")" "$3"
}
floor_row "floor, 1 write per event" .floor.one_write_per_event.fixed "$(q .ratios.floor_p99)"
floor_row "floor, 1 write per 2 events" .floor.one_write_per_two_events.fixed "$(q .ratios.floor2_p99)"
floor_row "tower-sse" .servers.crate.fixed "$ratio_p99"
floor_row "baseline" .servers.baseline.fixed "1"
echo
echo "rate sweep (${SWEEP_CONNS} connections, ${SWEEP_SECS}s per run, a failed rate tried $SWEEP_TRIES time(s); ok = every connection got every event and p99 < 100 ms;"
echo "highest lossless rate = highest rate passed with every lower rate passed; cpu% = server / client share of a core)"
printf '%6s | %-50s | %-50s\n' "ev/s" "tower-sse: ok p99us lost/resync/silent us/deliv cpu%" "baseline: ok p99us lost/resync/silent us/deliv cpu%"
for rate in $SWEEP_RATES; do
    cell() {
        jq -r --argjson r "$rate" --arg k "$1" '.servers[$k].sweep[] | select(.rate == $r) |
            if .skipped then "skipped (2 failures below)" else
            "\(if .ok then "ok  " else "FAIL" end) \(.p99_us) \(.missed)/\(.resyncs)/\(.silent_gaps) \(.cpu_us_per_delivery) srv \(.server_cpu_pct) cli \(.client_cpu_pct)" end' "$R"
    }
    printf '%6s | %-50s | %-50s\n' "$rate" "$(cell crate)" "$(cell baseline)"
done
echo
echo "client parser alone: $(jq -r '.client_parse_bench | to_entries | map("\(.key) \(.value.events_per_s / 1e6 * 100 | round / 100) M ev/s") | join(", ")' "$R")"
echo "results: bench/results.json, logs: $OUT/"

cargo run --release --quiet -p tower-sse-bench --bin bench_chart -- bench/results.json bench/sweep.png >&2 || log "chart failed"
log "done in $((SECONDS - STARTED)) s"
