#!/usr/bin/env bash
# The whole test suite (Debian 12, as root): host setup and the tiny guest (idempotent),
# PostgreSQL (idempotent), then unit, test-driver integration and real-host end-to-end tests;
# the coordinator's own suite (the store's tests and the fake fleet) once more on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-host.sh
bash deploy/build-guest-image.sh /var/lib/corral/guest
CORRAL_TEST_POSTGRES=$(bash deploy/postgres.sh)
if [[ "$CORRAL_TEST_POSTGRES" != "host=/var/run/postgresql user=root dbname=corral" ]]; then
  echo "deploy/postgres.sh printed an unexpected connection string: [$CORRAL_TEST_POSTGRES]" >&2
  exit 1
fi
export CORRAL_TEST_POSTGRES
# The end-to-end tests run the agent binary.
cargo build --workspace --bins
CORRAL_E2E_REQUIRED=1 cargo test --workspace
CORRAL_E2E_REQUIRED=1 CORRAL_TEST_STORE=postgres cargo test -p corral-coordinator --lib
