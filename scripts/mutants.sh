#!/usr/bin/env bash
# Mutation testing of the core with cargo-mutants: each mutant (a line of
# the crate changed to something wrong) is built and the tests that cover
# its area are run; a mutant the tests do not notice is "missed".
#
#   bash scripts/mutants.sh                      # the whole run: every area
#   bash scripts/mutants.sh wire broker          # some areas
#   bash scripts/mutants.sh broker --shard 0/8 --sharding round-robin
#                                                # every 8th mutant of one area
#   bash scripts/mutants.sh --in-diff [REV]      # the core lines REV (default
#                                                # HEAD~1) changed, in a budget
#
# Areas and the test modules that cover them:
#   broker     src/broker/          the log, subscriptions, mirror, hub
#   wire       src/wire.rs          ids and frames
#   mailbox    src/mailbox/         in memory and in Redis
#   backplane  src/backplane/       the Redis Streams backplane
#   upstream   src/upstream/        the upstream hub's driver and Redis bus
#   mode       src/mode/            the server's mode and its causes
#   events     src/sse/authorize.rs, src/sse/service.rs  (the events route)
#
# Each area runs in a scratch copy of the tree (the working tree is never
# touched) and writes `target/mutants/AREA/mutants.out`. The summary gives,
# per area, the mutants caught out of the viable ones (those that build)
# and lists every missed one; the script fails if any was missed.
# Mutants that no test can tell from the original are listed, with why,
# in the README's "Proof" section.
#
# `--in-diff` is what CI runs: the mutants of the core lines the last
# commit changed, in a checkout of HEAD of its own under target/ (the
# dependencies the test suite built are reused), within a budget (`MUTANTS_BUDGET` seconds, default 600). It
# prints what it tested and what the budget cut, and fails on a missed
# mutant.
#
# On 2 cores a mutant costs 20 to 60 s (build and tests); the whole run is
# about 1,700 mutants, so a day. `MUTANTS_JOBS` (default 1) builds that
# many at once; `--shard K/N --sharding round-robin` (K from 0) runs an
# even sample of every area.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=27.1.0
if ! cargo mutants --version 2>/dev/null | grep -q "$VERSION"; then
    echo "mutants.sh: installing cargo-mutants $VERSION (about 3 minutes)"
    cargo install cargo-mutants --version "$VERSION" --locked
fi

# Tests that launch an example binary are left out: `cargo test --test it`
# does not rebuild the examples, so they would run unmutated code.
SKIP=(--skip demo --skip the_upstream_example)
# Each mutant builds and runs the library's unit tests and the `it` suite
# only: not the examples, the benches or the other test targets.
TARGETS=(--cargo-arg=--lib --cargo-arg=--test=it)

files() {
    case "$1" in
        broker) echo "src/broker/*.rs" ;;
        wire) echo "src/wire.rs" ;;
        mailbox) echo "src/mailbox/*.rs src/mailbox/redis/*.rs" ;;
        backplane) echo "src/backplane/*.rs" ;;
        upstream) echo "src/upstream/*.rs" ;;
        mode) echo "src/mode/*.rs" ;;
        events) echo "src/sse/authorize.rs src/sse/service.rs" ;;
        *) echo "mutants.sh: no area named $1" >&2; exit 2 ;;
    esac
}

# Test-name filters of the `it` binary and of the library's unit tests.
tests() {
    case "$1" in
        broker) echo "broker:: model:: upstream_model:: upstream:: mailbox:: wire:: hook:: observe:: security:: sse:: backplane::" ;;
        wire) echo "wire:: http:: security:: broker::" ;;
        mailbox) echo "mailbox:: mailbox_http:: mailbox_redis:: mailbox_redis_model::" ;;
        backplane) echo "backplane:: model::mirror:: mailbox_redis:: observe::" ;;
        upstream) echo "upstream:: upstream_model:: upstream_redis::" ;;
        mode) echo "mode:: require_writable:: health:: probe:: signal::" ;;
        events) echo "http:: security:: hook:: serve:: tower_http::" ;;
    esac
}

needs_redis() {
    case "$1" in broker | mailbox | backplane | upstream) return 0 ;; *) return 1 ;; esac
}

AREAS=(broker wire mailbox backplane upstream mode events)

# Prints one area's score from its outcomes; returns 1 if any was missed.
summarize() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
area, path = sys.argv[1], sys.argv[2]
try:
    open(path)
except OSError:
    print(f"{area}: no outcomes ({path}): the run did not finish")
    sys.exit(1)
outcomes = json.load(open(path))["outcomes"]
count = {}
missed = []
for o in outcomes:
    if o["scenario"] == "Baseline":
        continue
    s = o["summary"]
    count[s] = count.get(s, 0) + 1
    if s == "MissedMutant":
        missed.append(o["scenario"]["Mutant"]["name"])
caught = count.get("CaughtMutant", 0) + count.get("Timeout", 0)
viable = caught + len(missed)
score = 100.0 * caught / viable if viable else 100.0
print(f"{area}: {caught} of {viable} viable mutants caught ({score:.1f} %), "
      f"{len(missed)} missed, {count.get('Timeout', 0)} by timeout, "
      f"{count.get('Unviable', 0)} unviable")
for name in missed:
    print(f"  MISSED {name}")
sys.exit(1 if missed else 0)
EOF
}

run_area() {
    local area=$1
    shift
    local out=target/mutants/$area
    local args=(--no-shuffle --output "$out" --all-features)
    for f in $(files "$area"); do args+=(--file "$f"); done
    echo "==> mutants: $area ($(files "$area"))"
    mkdir -p "$out"
    # Exit status 2 (missed mutants) and 3 (timeouts) are for the summary
    # to judge; 1 and 4 (a usage error, a failing baseline) are not.
    local status=0
    # shellcheck disable=SC2046
    cargo mutants "${args[@]}" --jobs "${MUTANTS_JOBS:-1}" "${TARGETS[@]}" "$@" \
        -- -- $(tests "$area") "${SKIP[@]}" || status=$?
    if [ "$status" = 1 ] || [ "$status" = 4 ]; then
        echo "mutants.sh: cargo mutants failed for $area (status $status)" >&2
        return 1
    fi
}

in_diff() {
    local rev=${1:-HEAD~1}
    local budget=${MUTANTS_BUDGET:-600}
    local root=target/mutants/in-diff
    local diff=$root/last-commit.diff
    rm -rf "$root"
    mkdir -p "$root"
    if ! git rev-parse -q --verify "$rev^{commit}" >/dev/null; then
        echo "mutants.sh: no $rev to compare with; nothing to mutate"
        return 0
    fi
    git diff "$rev" HEAD -- src >"$diff"
    # The mutants are made in a checkout of HEAD of its own, so that an
    # interrupted run (the budget's end) cannot leave a working tree
    # mutated; it builds into this target directory, reusing what the
    # test suite built.
    local tree=$root/tree
    git worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"
    git worktree prune
    git worktree add -q --detach "$tree" HEAD
    export CARGO_TARGET_DIR=$PWD/target
    local deadline=$((SECONDS + budget)) total=0 tested=0 failed=0
    echo "==> mutants of the core lines changed since $rev (budget ${budget} s)"
    for area in "${AREAS[@]}"; do
        local files=()
        for f in $(files "$area"); do files+=(--file "$f"); done
        local listed count
        listed=$(cd "$tree"; cargo mutants --list --in-diff ../last-commit.diff "${files[@]}" 2>/dev/null) || true
        count=$(printf '%s' "$listed" | grep -c . || true)
        [ "$count" = 0 ] && continue
        total=$((total + count))
        echo "$area: $count mutants"
        printf '%s\n' "$listed" | sed 's/^/  /'
        local left=$((deadline - SECONDS)) out=$root/$area status=0
        if [ "$left" -le 0 ]; then
            echo "  cut: the budget is spent"
            continue
        fi
        # shellcheck disable=SC2046
        (cd "$tree" && timeout --signal=INT "$left" cargo mutants --in-place --no-shuffle \
            --all-features --output "$PWD/../$area" --in-diff "$PWD/../last-commit.diff" \
            "${files[@]}" "${TARGETS[@]}" -- -- $(tests "$area") "${SKIP[@]}") \
            >"$root/$area.log" 2>&1 || status=$?
        local dir=$out/mutants.out done_here=0
        for f in caught missed timeout unviable; do
            [ -f "$dir/$f.txt" ] && done_here=$((done_here + $(grep -c . "$dir/$f.txt" || true)))
            [ -s "$dir/$f.txt" ] && sed "s/^/  $f: /" "$dir/$f.txt"
        done
        tested=$((tested + done_here))
        if [ "$done_here" -lt "$count" ]; then
            printf '%s\n' "$listed" | while IFS= read -r m; do
                grep -qxF "$m" "$dir"/*.txt 2>/dev/null || echo "  cut by the budget: $m"
            done
        fi
        if [ -s "$dir/missed.txt" ]; then
            failed=1
        elif [ "$done_here" -lt "$count" ] && [ "$status" != 0 ] && [ "$left" -gt 0 ] &&
            [ "$SECONDS" -lt "$deadline" ]; then
            # It stopped early without running out of time: say why.
            echo "mutants.sh: cargo mutants failed for $area (status $status):" >&2
            tail -20 "$root/$area.log" >&2
            failed=1
        fi
    done
    git worktree remove --force "$tree"
    if [ "$total" = 0 ]; then
        echo "nothing to mutate: the commit changes no core line"
        return 0
    fi
    echo "tested $tested of $total mutants within the budget; the budget cut $((total - tested))"
    if [ "$failed" = 1 ]; then
        echo "MISSED (the tests do not notice these lines broken), or a failed run: see above"
        return 1
    fi
}

if [ "${1:-}" = "--in-diff" ]; then
    bash scripts/ensure-redis.sh mutants.sh
    export CARGO_TERM_COLOR=never
    # Each mutant rebuilds only what changed since the one before.
    export CARGO_INCREMENTAL=1
    in_diff "${2:-}"
    exit
fi

areas=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --*) extra+=("$@"); break ;;
        *) areas+=("$1"); shift ;;
    esac
done
[ ${#areas[@]} -gt 0 ] || areas=("${AREAS[@]}")

for area in "${areas[@]}"; do
    if needs_redis "$area"; then
        bash scripts/ensure-redis.sh mutants.sh
        break
    fi
done

# Less debug info: a mutant's build is mostly linking.
export CARGO_PROFILE_DEV_DEBUG=0
failed=0
for area in "${areas[@]}"; do
    run_area "$area" "${extra[@]}" || failed=1
done
echo
echo "==> mutation score"
for area in "${areas[@]}"; do
    summarize "$area" "target/mutants/$area/mutants.out/outcomes.json" || failed=1
done
exit "$failed"
