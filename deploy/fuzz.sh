#!/usr/bin/env bash
# The long fuzz run (not in CI time): every parser of untrusted text, 100,000 cases each by
# default (CORRAL_FUZZ_CASES), in release mode. Prints one line per parser with its count.
set -euo pipefail
cd "$(dirname "$0")/.."
export CORRAL_FUZZ_CASES="${CORRAL_FUZZ_CASES:-100000}"
for crate in corral-agent corral-coordinator; do
    cargo test --release -p "$crate" --lib fuzz_ -- --nocapture --test-threads 1 2>&1 \
        | grep -E '^fuzz |test result'
done
