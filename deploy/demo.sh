#!/usr/bin/env bash
# Brings up a working single-host Corral and does real work with it (Debian 12, as root):
# installs what it needs, builds the tiny test guest, builds and starts corral-agent and
# corral-coordinator, then through the `corral` CLI and the coordinator: adds the host,
# creates a base from the guest, clones it (placed by the scheduler, with progress), starts
# the clone, exposes its port 80 and fetches a page from it.
#   deploy/demo.sh        run the demo (agent, coordinator and clone stay up afterwards)
#   deploy/demo.sh stop   remove the demo VMs and stop the demo's agent and coordinator
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=/var/lib/corral/demo
ADDR=127.0.0.1:7700
COORD=127.0.0.1:7800
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop_proc() { # name
  if [ -f "$DEMO/$1.pid" ] && kill -0 "$(cat "$DEMO/$1.pid")" 2>/dev/null; then
    kill "$(cat "$DEMO/$1.pid")"
    sleep 0.5
  fi
  rm -f "$DEMO/$1.pid"
}

if [ "${1:-}" = stop ]; then
  if [ -x target/release/corral ] && [ -f "$DEMO/agent.pid" ]; then
    for vm in demo-clone demo-base; do
      target/release/corral --agent "$ADDR" agent vm rm "$vm" --volumes 2>/dev/null || true
    done
  fi
  stop_proc coordinator
  stop_proc agent
  rm -rf "$DEMO/coordinator"
  echo "demo stopped"
  exit 0
fi

command -v cargo >/dev/null || { echo "cargo is needed (the Rust toolchain of this machine)" >&2; exit 1; }
say "Host setup (packages, libvirt, default network)"
bash deploy/setup-host.sh
say "Tiny test guest from Debian packages"
bash deploy/build-guest-image.sh /var/lib/corral/guest
say "Building corral-agent and corral"
cargo build --release --bins --quiet

# KVM cannot boot a stock kernel on every host (nested PVM here): use software emulation
# unless KVM is real. CORRAL_AGENT_DOMAIN_TYPE overrides.
# (kvm_pvm may be built in: look in /sys/module, not lsmod.)
domain_type=${CORRAL_AGENT_DOMAIN_TYPE:-}
if [ -z "$domain_type" ]; then
  domain_type=qemu
  if [ -e /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
    domain_type=kvm
  fi
fi
# The host address clients use: the first global IPv4 address that is not libvirt's bridge.
host_ip=$(ip -4 -o addr show scope global | awk '$2 != "virbr0" {split($4, a, "/"); print a[1]; exit}')
host_ip=${host_ip:-192.168.122.1}

say "Starting corral-agent on $ADDR (domain type $domain_type, host address $host_ip)"
mkdir -p "$DEMO"
stop_proc coordinator
stop_proc agent
CORRAL_AGENT_LISTEN=$ADDR CORRAL_AGENT_DOMAIN_TYPE=$domain_type CORRAL_AGENT_HOST_ADDRESS=$host_ip \
  CORRAL_AGENT_STORAGE_ROOT=/var/lib/corral/storage CORRAL_AGENT_STATE_DIR=/var/lib/corral/state \
  nohup target/release/corral-agent >"$DEMO/agent.log" 2>&1 &
echo $! >"$DEMO/agent.pid"
for _ in $(seq 50); do grep -q 'listening on' "$DEMO/agent.log" && break; sleep 0.1; done
grep -q 'listening on' "$DEMO/agent.log" || { cat "$DEMO/agent.log"; exit 1; }

# A rerun starts from scratch.
for vm in demo-clone demo-base; do
  target/release/corral --agent "$ADDR" agent vm rm "$vm" --volumes >/dev/null 2>&1 || true
done
rm -rf "$DEMO/coordinator"

say "Starting corral-coordinator on $COORD"
CORRAL_COORD_LISTEN=$COORD CORRAL_COORD_DATABASE=$DEMO/coordinator/corral.db \
  CORRAL_COORD_BOOTSTRAP_TOKEN_FILE=$DEMO/coordinator/admin.token CORRAL_COORD_HEARTBEAT_MS=500 \
  CORRAL_COORD_DOWN_AFTER_MS=3000 nohup target/release/corral-coordinator >"$DEMO/coordinator.log" 2>&1 &
echo $! >"$DEMO/coordinator.pid"
for _ in $(seq 50); do grep -q 'listening on' "$DEMO/coordinator.log" && break; sleep 0.1; done
grep -q 'listening on' "$DEMO/coordinator.log" || { cat "$DEMO/coordinator.log"; exit 1; }
export CORRAL_COORDINATOR=$COORD CORRAL_TOKEN
CORRAL_TOKEN=$(cat "$DEMO/coordinator/admin.token")

corral() { echo "+ corral $*" >&2; target/release/corral "$@"; }
say "The host joins the fleet"
corral host add local "$ADDR"
for _ in $(seq 50); do target/release/corral host ls | grep -q ' up ' && break; sleep 0.2; done
corral host ls

say "A base from the tiny guest"
G=/var/lib/corral/guest
corral base create demo-base --host local --memory 128M --vcpus 1 \
  --disk demo-base-vda.qcow2:64M:system --disk demo-base-vdb.qcow2:16M:data \
  --kernel "$G/vmlinux" --initrd "$G/initrd.gz" --cmdline "console=ttyS0 quiet corral.hostname=demo-base"
corral base publish demo-base   # bases start private: only admins clone them until published

say "Where would a clone go?"
corral vm explain demo-base
say "A copy-on-write clone, placed and started"
corral vm clone demo-base demo-clone --start
corral vm ls
say "Its port 80 exposed on $host_ip (waits for the guest's address)"
corral port expose demo-clone 80
port=$(target/release/corral -o json port list demo-clone | sed -n 's/.*"host_port": \([0-9]*\).*/\1/p' | head -n1)

say "Fetching a page from the clone: http://$host_ip:$port/"
for _ in $(seq 60); do
  if page=$(curl -s --fail --max-time 3 "http://$host_ip:$port/"); then break; fi
  sleep 1
done
echo "${page:?the clone did not answer}"
say "Done. Agent and coordinator keep running (logs in $DEMO); 'deploy/demo.sh stop' removes it all."
