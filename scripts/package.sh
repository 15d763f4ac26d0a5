#!/usr/bin/env bash
# Packages the crate as `cargo publish` would (`cargo package`, which builds
# the packaged copy), then runs the doc tests of that copy with every
# feature, from its own directory: nothing outside the package (no path
# dependency, no file of the repository) may be needed.
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean clone has nothing uncommitted; a working copy may.
cargo package --allow-dirty
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
crate=target/package/tower-sse-$version
rm -rf "$crate"
tar -xzf "$crate.crate" -C target/package
cd "$crate"
# A dependency on a path (the repository's own self-reference for the
# examples is dropped by cargo) would not resolve for a dependent.
if grep -n 'tower-sse\]\|^path *= *"\.' Cargo.toml; then
    echo "package: the packaged manifest depends on a path" >&2
    exit 1
fi
# Its own target directory inside the repository's, reused across runs.
CARGO_TARGET_DIR=../../package-check cargo test --doc --all-features
echo "package: $crate builds and its doc tests pass on their own"
