#!/usr/bin/env bash
# Makes sure a redis-server binary is on PATH, for the tests, the end-to-end
# run and the benchmark, which start servers of their own: says which one
# it found, or installs the Debian package (as root, or through sudo), stops
# the system-wide server the package starts, and says so.
#
#   bash scripts/ensure-redis.sh [PREFIX]   # PREFIX starts each line it prints
set -euo pipefail
prefix=${1:-ensure-redis.sh}
if command -v redis-server >/dev/null 2>&1; then
    echo "$prefix: using $(command -v redis-server) ($(redis-server --version | grep -o 'v=[0-9.]*'))"
    exit 0
fi
echo "$prefix: redis-server not found; installing the Debian package redis-server"
command -v apt-get >/dev/null || { echo "$prefix: no apt-get here: install Redis (redis-server) first" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
# The package starts a system-wide server; what needs one starts its own.
$sudo service redis-server stop >/dev/null 2>&1 || true
command -v redis-server >/dev/null || { echo "$prefix: redis-server still missing after installing it" >&2; exit 1; }
echo "$prefix: installed $(command -v redis-server)"
