#!/usr/bin/env bash
# The whole test suite, as CI runs it (needs root: the end-to-end tests build network
# namespaces). Formatting, lints, unit/property/simulation/end-to-end tests, and a
# build of the fuzz targets.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Two at a time: the end-to-end tests run several daemons each on a 2-core machine.
cargo nextest run --workspace --locked --no-fail-fast --test-threads 2
# The fuzz targets must keep compiling (they run under `cargo +nightly fuzz run`).
(cd fuzz && cargo check --locked --quiet 2>/dev/null || cargo check --quiet)
echo "all tests passed"
