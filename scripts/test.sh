#!/usr/bin/env bash
# The test suite, as the README gives it: every test, every feature. The
# Redis backplane's tests start real `redis-server` processes of their own;
# if the machine has none, this installs the Debian package first (as root,
# or through sudo) and says so. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-redis.sh test.sh

exec cargo test --all-features "$@"
