#!/usr/bin/env bash
# The test suite, as the README gives it: every test, every feature. The
# Redis backplane's tests start real `redis-server` processes of their own;
# if the machine has none, this installs the Debian package first (as root,
# or through sudo) and says so. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v redis-server >/dev/null 2>&1; then
    echo "test.sh: using $(command -v redis-server) ($(redis-server --version | grep -o 'v=[0-9.]*'))"
else
    echo "test.sh: redis-server not found; installing the Debian package redis-server"
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    # The package starts a system-wide server; the tests start their own.
    $sudo service redis-server stop >/dev/null 2>&1 || true
    echo "test.sh: installed $(command -v redis-server)"
fi

exec cargo test --all-features "$@"
