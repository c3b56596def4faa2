#!/usr/bin/env bash
# The whole test suite (Debian 12, as root): host setup and the tiny guest (idempotent),
# then unit, test-driver integration and real-host end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-host.sh
bash deploy/build-guest-image.sh /var/lib/corral/guest
# The end-to-end tests run the agent binary.
cargo build --workspace --bins
CORRAL_E2E_REQUIRED=1 cargo test --workspace
