#!/usr/bin/env bash
# Checks that every import points down the layers (ARCHITECTURE.md):
# prints each import that points up or sideways and fails if there is one.
set -uo pipefail
cd "$(dirname "$0")/.."

status=0
# `forbid FILES PATTERN WHY`: no line of FILES may name PATTERN.
forbid() {
    local files=$1 pattern=$2 why=$3 found
    # shellcheck disable=SC2086 # FILES is a list
    # Comments (docs link anywhere) are not imports.
    found=$(grep -HnE "$pattern" $files 2>/dev/null | grep -vE '^[^:]+:[0-9]+:\s*//')
    if [[ -n $found ]]; then
        echo "$why:" >&2
        echo "$found" >&2
        status=1
    fi
}

# The wire format is a leaf: it imports nothing of the crate.
forbid src/wire.rs 'crate::' "src/wire.rs imports the crate"
# The broker knows nothing above it: no events route, mailbox, mode, HTTP.
forbid "src/broker/*.rs" 'crate::(sse|mailbox|mode|response|health|require_writable|shutdown|serve|axum|tcp|upstream|backplane)|\bhttp(_body)?::|\bhyper|\btokio' \
    "src/broker imports from above it"
# The hub's driver sits on the broker alone: no HTTP, no layer.
forbid "src/upstream/*.rs" 'crate::(sse|mailbox|mode|response|health|require_writable|shutdown|serve|axum|tcp|backplane)|\bhttp(_body)?::|\bhyper' \
    "src/upstream imports from above it"
# The backplane sits on the broker (and reports in the mode): the mailbox
# kept in Redis builds on it, never the other way round.
forbid "src/backplane/*.rs" 'crate::(sse|mailbox|response|health|require_writable|shutdown|serve|axum|tcp|upstream)|\bhttp(_body)?::|\bhyper' \
    "src/backplane imports from above it"
# The events route knows the mailbox only through its hook.
forbid "src/sse/*.rs" 'crate::(mailbox|mode|health|require_writable|shutdown|serve|axum)' \
    "src/sse imports from above it"
# The small layers share only the answers in `response`.
forbid "src/response.rs" 'crate::' "src/response.rs imports the crate"
forbid "src/health.rs src/require_writable.rs" 'crate::(sse|mailbox|serve|axum)' \
    "a small layer imports another layer"

# Metrics are recorded through `crate::metrics` alone: the facade's macros
# appear nowhere else.
forbid "$(find src -name '*.rs' ! -path src/metrics.rs | tr '\n' ' ')" '(counter|gauge|histogram)!|use ::?metrics\b' \
    "the metrics facade used outside src/metrics.rs"

if ((status == 0)); then
    echo "layers: every import points down"
fi
exit $status
