#!/usr/bin/env bash
# The whole test suite (Debian 12, as root): host setup and the tiny guest (idempotent),
# PostgreSQL (idempotent), then unit, test-driver integration and real-host end-to-end tests;
# the coordinator's own suite (the store's tests and the fake fleet) once more on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-host.sh
bash deploy/build-guest-image.sh /var/lib/corral/guest
# The connection string goes through a file, not `$(...)`: a command substitution waits until
# every holder of its pipe is gone, and a server started on the way must not be able to hold
# the suite up. Setup steps have a time limit, so a hang fails with a message instead.
pg_out=$(mktemp)
trap 'rm -f "$pg_out"' EXIT
if ! timeout 600 bash deploy/postgres.sh >"$pg_out"; then
  echo "deploy/postgres.sh failed or took over 600 s" >&2
  exit 1
fi
CORRAL_TEST_POSTGRES=$(cat "$pg_out")
if [[ "$CORRAL_TEST_POSTGRES" != "host=/var/run/postgresql user=root dbname=corral" ]]; then
  echo "deploy/postgres.sh printed an unexpected connection string: [$CORRAL_TEST_POSTGRES]" >&2
  exit 1
fi
export CORRAL_TEST_POSTGRES
# The end-to-end tests run the agent binary.
cargo build --workspace --bins
CORRAL_E2E_REQUIRED=1 cargo test --workspace
CORRAL_E2E_REQUIRED=1 CORRAL_TEST_STORE=postgres cargo test -p corral-coordinator --lib
