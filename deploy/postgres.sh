#!/usr/bin/env bash
# Idempotent: installs Debian's PostgreSQL, starts its cluster (without systemd when there is
# none), and makes a database the coordinator and the tests use over the local socket:
# role "root" (peer authentication as root) owning database corral.
# Prints the connection string: host=/var/run/postgresql user=root dbname=corral
set -euo pipefail
# Only the connection string goes to stdout (callers capture it): everything else, whatever
# apt, su or pg_ctlcluster print, goes to stderr. The real stdout is kept on fd 3 for the
# last line only, and no child gets fd 3: a server started here lives on after this script,
# and holding the caller's pipe open would make `$(bash deploy/postgres.sh)` wait for it to
# exit (the CI hang of stop 19).
exec 3>&1 1>&2

log() { printf '[postgres] %s\n' "$*" >&2; }

if [[ "$(dpkg-query -W -f='${Status}' postgresql 2>/dev/null)" != "install ok installed" ]]; then
  log "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    postgresql >/dev/null
fi

ver=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
if [ -z "$ver" ]; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  log "creating cluster $ver/main"
  pg_createcluster "$ver" main >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
  log "starting cluster $ver/main"
  if [ -d /run/systemd/system ]; then
    systemctl start "postgresql@$ver-main" 3>&- </dev/null
  else
    pg_ctlcluster "$ver" main start 3>&- </dev/null
  fi
fi
for _ in $(seq 1 50); do
  su postgres -c "psql -qtAc 'SELECT 1'" >/dev/null 2>&1 && break
  sleep 0.2
done
if [ "$(su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname = 'root'\"")" != 1 ]; then
  su postgres -c "createuser --superuser root"
fi
if [ "$(su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'corral'\"")" != 1 ]; then
  su postgres -c "createdb --owner root corral"
fi
log "ready: host=/var/run/postgresql user=root dbname=corral"
echo "host=/var/run/postgresql user=root dbname=corral" >&3
