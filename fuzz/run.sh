#!/usr/bin/env bash
# Fuzzes every target of this cargo-fuzz project for a bounded time, after
# replaying every input kept under fuzz/regressions/TARGET/. Exits non-zero
# if any target crashes (a panic, a failed check, a timeout, out of memory).
#
#   fuzz/run.sh                     every target, 60 s each
#   fuzz/run.sh --seconds 3600      a long run
#   fuzz/run.sh encoder topics      some targets only
#   fuzz/run.sh --sanitizer address with AddressSanitizer (several times slower)
#
# The crate and the harnesses are safe Rust, so the default is no sanitizer:
# every check is an assertion, and debug assertions (overflow checks among
# them) are on. The toolchain is stable: cargo-fuzz passes nightly `-Z`
# flags, so its commands, and only they, run with RUSTC_BOOTSTRAP=1.
#
# The corpus grows in fuzz/corpus/TARGET (not in git), seeded from
# fuzz/seeds/TARGET and fuzz/regressions/TARGET; a crash is written to
# fuzz/artifacts/TARGET/ and each target's log to fuzz/artifacts/logs/.
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
seconds=60
sanitizer=none
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="${2:?--seconds needs a number}"; shift 2 ;;
        --seconds=*) seconds="${1#*=}"; shift ;;
        --sanitizer) sanitizer="${2:?--sanitizer needs a name}"; shift 2 ;;
        --sanitizer=*) sanitizer="${1#*=}"; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
case "$seconds" in
    ''|*[!0-9]*) echo "--seconds takes a whole number of seconds" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

fuzz() { RUSTC_BOOTSTRAP=1 cargo fuzz "$@"; }
build_flags=(--sanitizer "$sanitizer" --debug-assertions)

if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(fuzz list)
fi

echo "==> building the fuzz targets"
fuzz build "${build_flags[@]}"

mkdir -p artifacts/logs
failed=()
summary=()
for target in "${targets[@]}"; do
    regressions=()
    if [ -d "regressions/$target" ]; then
        mapfile -t regressions < <(find "regressions/$target" -type f | sort)
    fi
    if [ ${#regressions[@]} -gt 0 ]; then
        echo "==> $target: replaying ${#regressions[@]} kept input(s)"
        if ! fuzz run "${build_flags[@]}" "$target" "${regressions[@]}" -- -runs=1; then
            failed+=("$target (regression)")
            continue
        fi
    fi

    echo "==> $target: fuzzing for ${seconds} s"
    mkdir -p "corpus/$target"
    corpora=("corpus/$target")
    for dir in "seeds/$target" "regressions/$target"; do
        if [ -d "$dir" ]; then corpora+=("$dir"); fi
    done
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    if [ -f "dict/$target.dict" ]; then args+=(-dict="dict/$target.dict"); fi
    log="artifacts/logs/$target.log"
    status=0
    fuzz run "${build_flags[@]}" "$target" "${corpora[@]}" -- "${args[@]}" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    summary+=("$(printf '%-14s %12s runs %9s exec/s  exit %s' "$target" "${runs:-?}" "${rate:-?}" "$status")")
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        failed+=("$target")
        echo "==> $target FAILED (exit $status); the input is in fuzz/artifacts/$target/, the log in fuzz/$log"
    else
        grep -E '^(Done|#[0-9]+ +DONE)' "$log" | tail -n 1 || true
    fi
done

echo "==> summary (${seconds} s per target, sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "==> crashed: ${failed[*]}" >&2
    exit 1
fi
echo "==> no crash"
