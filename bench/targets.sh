#!/usr/bin/env bash
# The performance targets, judged on a results file of bench/run.sh (which
# calls this at its end, with --update):
#
#   bash bench/targets.sh [RESULTS_JSON]             # the table (default bench/results.json)
#   bash bench/targets.sh --update RESULTS_JSON      # the table, and the verdicts into the file as .targets
#   bash bench/targets.sh --json RESULTS_JSON        # the verdicts only, as JSON (what --update writes)
#   bash bench/targets.sh --markdown RESULTS_JSON    # the verdicts as a Markdown table (the README's)
#
# T1  fixed rate (1000 x 100 ev/s): the crate against the floor writing
#     once per event, CPU us per delivery, p50 and p99 each <= 1.15x, in
#     every round (crate round r / floor round r; the rounds interleave
#     the servers) and for the medians; with whether the crate coalesced,
#     per round, and whether that was the same call in every round
# T2  each saturated rate of the sweep (>= 500 ev/s; --quick: its top
#     rate): CPU per delivery crate < floor writing once per two events,
#     p99 crate <= that floor's, p50 crate <= the baseline's, nothing lost
#     by the crate (missed and silent gaps 0)
# T3  criterion, publish and delivery to 1000 subscribers, per delivery:
#     crate <= 2x tokio::sync::broadcast
# T4  idle memory per connection at 10 000 connections <= 2.5 KB; highest
#     lossless rate crate / baseline >= 2
# T5  the Redis row, redis / in-memory: p50, p99, CPU per delivery,
#     highest lossless rate (information, no limit)
#
# A report, not a test: the exit status is 0 whether targets are met or
# not (2: bad arguments or no such file). Figures a run left out (--only)
# are "-", their verdict "not run".
set -euo pipefail

MODE=table
UPDATE=0
FILE=
while (($#)); do
    case $1 in
        --update) UPDATE=1 ;;
        --json) MODE=json ;;
        --markdown) MODE=markdown ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "unknown option $1 (try --help)" >&2
            exit 2
            ;;
        *)
            [[ -z $FILE ]] || { echo "one results file only (try --help)" >&2; exit 2; }
            FILE=$1
            ;;
    esac
    shift
done
FILE=${FILE:-$(dirname "$0")/results.json}
[[ -r $FILE ]] || { echo "no results file $FILE" >&2; exit 2; }
command -v jq >/dev/null || { echo "targets.sh needs jq" >&2; exit 2; }

# The results file in, the verdicts out: an array of
#   {id, target, name, unit, crate, reference, reference_name, value,
#    limit, met, status, rounds | rates, ...}
# value is the ratio (or the figure, where the limit is absolute); met is
# true, false, or null when a figure is missing; status is what the table
# prints: "met", "NOT met", "not run", "no data" or "info".
# shellcheck disable=SC2016 # jq's variables, not the shell's
TARGETS='
def ratio(a; b): if a == null or b == null or b == 0 then null else ((a / b * 1000 | round) / 1000) end;
def verdict: if length == 0 then null
    elif any(.[]; . == false) then false
    elif all(.[]; . == true) then true
    else null end;
# The runs of one kind, each with its round (from its label, fixed-KIND-R;
# else its place: they are stored in the order they ran).
def by_round: [(. // []) | to_entries[] | .key as $i | .value as $v
    | {round: ((($v.label // "") | capture("-(?<r>[0-9]+)$") | .r | tonumber)? // ($i + 1)), run: $v}];
def point($points; $rate): (($points // []) | map(select(.rate == $rate)) | .[0]) // null;

. as $R
| ($R.config // {}) as $cfg
| ($cfg.scenarios // ["fixed", "sweep", "held", "redis"]) as $scenarios
| def status($scenario; $met):
    if ($scenarios | index($scenario)) == null then "not run"
    elif $met == true then "met" elif $met == false then "NOT met" else "no data" end;
  ($R.servers.crate.fixed // null) as $cf
| ($R.floor.one_write_per_event.fixed // null) as $ff
| ($cf.runs | by_round) as $cr
| ($ff.runs | by_round) as $fr
| "\($cfg.fixed_conns // "?")x\($cfg.fixed_rate // "?")/s" as $load

# T1: crate / floor, each round and the medians.
| def t1($key; $what; $unit):
    ($cr | map(.round as $r | .run[$key] as $c
        | (($fr | map(select(.round == $r)) | .[0].run[$key]) // null) as $f
        | {round: $r, crate: $c, reference: $f, value: ratio($c; $f),
           met: (if $c == null or $f == null or $f == 0 then null else ($c / $f <= 1.15) end)})) as $rounds
    | ($cf[$key] // null) as $c | ($ff[$key] // null) as $f
    | (if $c == null or $f == null or $f == 0 then null else ($c / $f <= 1.15) end) as $median_met
    | ([$median_met] + ($rounds | map(.met)) | verdict) as $met
    | {id: "T1.\($key)", target: "T1", name: "\($what), crate / floor (1 write per event), \($load), median", unit: $unit,
       crate: $c, reference: $f, reference_name: "floor", value: ratio($c; $f), limit: "<= 1.15",
       median_met: $median_met, met: $met, status: status("fixed"; $met), rounds: $rounds};
  ($cr | map(.round as $r | .run as $run
      | ($run.coalescing_ms // null) as $ms
      | {round: $r, coalescing_ms: $ms, coalescing_switches: ($run.coalescing_switches // null),
         run_ms: (if $run.receive_s then ($run.receive_s * 1000 | round) else null end),
         share: (if $ms == null or ($run.receive_s // 0) == 0 then null
                 else ([$ms / ($run.receive_s * 1000), 1] | min * 1000 | round / 1000) end)})) as $coalescing
| (if ($coalescing | length) == 0 or any($coalescing[]; .share == null) then null
   else (all($coalescing[]; .share < 0.1) or all($coalescing[]; .share > 0.9)) end) as $stable

# T2: the saturated rates of the sweep.
| ($cfg.sweep_rates // []) as $rates
| ($cfg.saturated_rates // (if $cfg.quick then $rates[-1:] else ($rates | map(select(. >= 500))) end)) as $sat
| ($R.servers.crate.sweep // null) as $cs
| ($R.servers.baseline.sweep // null) as $bs
| ($R.floor.one_write_per_two_events.sweep // null) as $f2s
| def t2($id; $key; $what; $unit; $against; $points; $strict; $limit):
    ($sat | map(. as $rate | point($cs; $rate) as $c | point($points; $rate) as $o
        | {rate: $rate,
           crate: (if $c.skipped then "skipped" else $c[$key] end),
           reference: (if $o.skipped then "skipped" else $o[$key] end),
           reference_missed: (if $o == null or $o.skipped then null else $o.missed end), reference_name: $against,
           value: (if ($c.skipped // false) or ($o.skipped // false) then null else ratio($c[$key]; $o[$key]) end),
           met: (if ($c.skipped // false) then false
                 elif $c == null or $o == null or ($o.skipped // false) or $c[$key] == null or $o[$key] == null then null
                 elif $strict then $c[$key] < $o[$key] else $c[$key] <= $o[$key] end)})) as $points
    | ($points | map(.met) | verdict) as $met
    | ($points | map(.value) | map(select(. != null)) | max) as $worst
    | {id: $id, target: "T2", name: "\($what), crate / \($against), worst of \($sat | map(tostring) | join(", ")) ev/s", unit: $unit,
       crate: ($points | map(select(.value == $worst)) | .[0].crate),
       reference: ($points | map(select(.value == $worst)) | .[0].reference),
       reference_name: $against, value: $worst, limit: $limit,
       met: $met, status: status("sweep"; $met), rates: $points};
  ($sat | map(. as $rate | point($cs; $rate) as $c
      | {rate: $rate,
         crate: (if $c == null then null elif $c.skipped then "skipped" else "\($c.missed)/\($c.silent_gaps)" end),
         value: (if $c == null or ($c.skipped // false) then null else ($c.missed + $c.silent_gaps) end),
         met: (if $c == null then null elif ($c.skipped // false) then false
               else ($c.missed == 0 and $c.silent_gaps == 0) end)})) as $lost

# T3, T4, T5.
| ($R.criterion // null) as $crit
| ($crit.tower_sse.ns_per_delivery // null) as $tn
| ($crit.broadcast.ns_per_delivery // null) as $bn
| ($R.servers.crate.idle // null) as $idle
| ($R.servers.crate.max_lossless_rate // null) as $crate_rate
| ($R.servers.baseline.max_lossless_rate // null) as $base_rate
| ($R.redis_backplane // null) as $bp
| [
    t1("cpu_us_per_delivery"; "CPU us per delivery"; "us"),
    t1("p50_us"; "p50 latency us"; "us"),
    t1("p99_us"; "p99 latency us"; "us"),
    {id: "T1.coalescing", target: "T1", name: "crate coalescing, each round (stable: < 10 % of the run in every round, or > 90 % in every)",
     unit: "ms", value: $stable, limit: null, met: null,
     status: (if ($scenarios | index("fixed")) == null then "not run" else "info" end), rounds: $coalescing},
    t2("T2.cpu_us_per_delivery"; "cpu_us_per_delivery"; "CPU us per delivery"; "us"; "floor2"; $f2s; true; "< 1"),
    t2("T2.p99_us"; "p99_us"; "p99 latency us"; "us"; "floor2"; $f2s; false; "<= 1"),
    t2("T2.p50_us"; "p50_us"; "p50 latency us"; "us"; "baseline"; $bs; false; "<= 1"),
    (($lost | map(.met) | verdict) as $met
     | {id: "T2.lost", target: "T2", name: "events lost by the crate (missed + silent gaps) at \($sat | map(tostring) | join(", ")) ev/s",
        unit: "events", crate: ($lost | map(.value) | if any(.[]; . != null) then map(. // 0) | add else null end),
        value: ($lost | map(.value) | if any(.[]; . != null) then map(. // 0) | add else null end),
        limit: "0", met: $met, status: status("sweep"; $met), rates: $lost}),
    ((if $tn == null or $bn == null or $bn == 0 then null else ($tn / $bn <= 2) end) as $met
     | {id: "T3.fanout_1000", target: "T3", name: "fan-out to 1000 subscribers (criterion), ns per delivery, crate / tokio broadcast",
        unit: "ns", crate: $tn, reference: $bn, reference_name: "broadcast", value: ratio($tn; $bn), limit: "<= 2",
        met: $met, status: status("criterion"; $met)}),
    (($idle.kb_per_conn // null) as $kb
     | (if $kb == null then null else ($kb <= 2.5) end) as $met
     | {id: "T4.kb_per_idle_conn", target: "T4", name: "idle memory KB per connection, crate, at \($idle.conns // "?") connections",
        unit: "KB", crate: $kb, value: $kb, limit: "<= 2.5 KB", conns: ($idle.conns // null),
        met: $met, status: status("held"; $met)}),
    ((if $crate_rate == null or $base_rate == null then null
      elif $base_rate == 0 then $crate_rate > 0
      else ($crate_rate / $base_rate >= 2) end) as $met
     | {id: "T4.max_lossless_rate", target: "T4", name: "highest lossless rate ev/s, crate / baseline (capped by the sweep at \($rates[-1:][0] // "?"))",
        unit: "ev/s", crate: $crate_rate, reference: $base_rate, reference_name: "baseline",
        value: ($R.ratios.max_lossless_rate // ratio($crate_rate; $base_rate)), limit: ">= 2",
        met: $met, status: status("sweep"; $met)}),
    ({key: "p50", what: "p50 latency us", field: "p50_us", unit: "us"},
     {key: "p99", what: "p99 latency us", field: "p99_us", unit: "us"},
     {key: "cpu_us_per_delivery", what: "CPU us per delivery (servers + Redis)", field: "cpu_us_per_delivery", unit: "us"},
     {key: "max_lossless_rate", what: "highest lossless rate ev/s", field: null, unit: "ev/s"}
     | . as $m
     | {id: "T5.\($m.key)", target: "T5", name: "Redis backplane, \($m.what), redis x2 / in-memory", unit: $m.unit,
        crate: (if $m.field then $bp.redis.fixed[$m.field] else $bp.redis.max_lossless_rate end),
        reference: (if $m.field then $bp.memory.fixed[$m.field] else $bp.memory.max_lossless_rate end),
        reference_name: "in-memory", value: ($bp.ratios[$m.key] // null), limit: null, met: null,
        status: (if ($scenarios | index("redis")) == null then "not run" elif $bp == null then "no data" else "info" end)})
  ]
'

targets=$(jq -c "$TARGETS" "$FILE")

if ((UPDATE)); then
    tmp=$FILE.targets.tmp
    jq --argjson targets "$targets" '.targets = $targets' "$FILE" >"$tmp" && mv "$tmp" "$FILE"
fi

if [[ $MODE == json ]]; then
    jq . <<<"$targets"
    exit 0
fi

# How a figure reads: "-" when missing, "skipped" as such.
# shellcheck disable=SC2016
JQ_FMT='
def f: if . == null then "-" elif type == "number" then (. * 1000 | round / 1000 | tostring) else tostring end;
def figs: if .reference_name then "\(.crate | f) / \(.reference | f)" else (.crate | f) end;
def verdict_of: if .met == true then "met" elif .met == false then "NOT met" else "-" end;
'

if [[ $MODE == markdown ]]; then
    jq -r "$JQ_FMT"'
        "| target | figures | ratio | limit | verdict |",
        "|---|---|---|---|---|",
        (.[] | if .id == "T1.coalescing" then
            "| T1 crate coalescing per round | \(.rounds | map("r\(.round): \(.coalescing_ms | f) ms, \(.coalescing_switches | f) switches") | join("; ")) | | | stable: \(if .value == null then "-" elif .value then "yes" else "no" end) |"
          else
            "| \(.target) \(.name) | \(figs)\(if .rounds then " (rounds: " + (.rounds | map("\(.value | f)") | join(", ")) + ")" else "" end)\(if .rates then " (" + (.rates | map("\(.rate): \(.value | f)") | join(", ")) + ")" else "" end) | \(if .limit == "0" or (.limit // "" | test("KB")) then "" else (.value | f) end) | \(.limit // "") | \(.status) |"
          end)' <<<"$targets"
    exit 0
fi

# The table.
rows=$(jq -r "$JQ_FMT"'
    def row($a; $b; $c; $d; $e): [$a, $b, $c, $d, $e, ""] | join("\u001f");
    def row($a; $b; $c; $d; $e; $note): [$a, $b, $c, $d, $e, $note] | join("\u001f");
    .[]
    | if .id == "T1.coalescing" then
        (.rounds[] | row("     crate round \(.round): coalesced \(.coalescing_ms | f) ms of \(.run_ms | f) ms (\(if .share == null then "-" else "\(.share * 100 | round) %" end)), \(.coalescing_switches | f) switches"; ""; ""; ""; "")),
        row("     coalescing decision stable across rounds: \(if .status == "not run" then "not run" elif .value == null then "- (no coalescing figures)" elif .value then "yes" else "no" end)"; ""; ""; ""; "")
      else
        row("\(.target) \(.name)"; figs; (if .limit == "0" or (.limit // "" | test("KB")) then "" else (.value | f) end); (.limit // ""); .status),
        (.rounds // [] | .[] | row("     round \(.round)"; "\(.crate | f) / \(.reference | f)"; (.value | f); "<= 1.15"; verdict_of)),
        (if .status == "not run" then empty else .rates // [] | .[] end | row("     @ \(.rate) ev/s"; (if .reference == null and .reference_missed == null and (.crate | type) == "string" then (.crate | f) else "\(.crate | f) / \(.reference | f)" end);
            (.value | f); ""; verdict_of; (if (.reference_missed // 0) > 0 then "(\(.reference_name) missed \(.reference_missed))" else "" end)))
      end' <<<"$targets")

echo
echo "performance targets ($FILE$(jq -r 'if .config.quick then ", quick run: smaller loads, the verdicts only indicative" else "" end' "$FILE"))"
echo "T1: every round (crate round r / floor round r, the rounds interleaving crate, baseline, floor, floor2) and the median; floor = bench_floor, one write(2) per event"
echo "T2: floor2 = bench_floor --events-per-write 2, one try per rate. It never drops an event to keep up: past what one core writes"
echo "    (~1 write per connection per 8-9 us here) its publisher falls behind and publishes late, in bursts, each event stamped when"
echo "    it is published, so that delay is NOT in its latency (its p99 is a write loop and the client's reading). Its run then lasts"
echo "    longer than the others'; its client stops at the run's time limit, and what was not written by then counts as missed"
echo "    (shown as \"floor2 missed N\"); a connection whose socket buffer cannot take a write would be closed and counted too."
line() { printf '%-88s %-24s %8s %10s  %-7s %s\n' "$@"; }
line "target" "figure(s)" "ratio" "limit" "verdict" ""
line "$(printf '%.0s-' {1..88})" "------------------------" "--------" "----------" "-------" ""
while IFS=$'\x1f' read -r a b c d e note; do
    line "$a" "$b" "$c" "$d" "$e" "$note"
done <<<"$rows" | sed 's/ *$//'
