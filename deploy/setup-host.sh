#!/usr/bin/env bash
# Idempotent host setup for a Corral agent host (Debian 12, run as root).
#  - installs the Debian packages Corral needs (and nothing from anywhere else)
#  - configures libvirt's QEMU driver for this host
#  - starts virtlogd/libvirtd when there is no systemd
#  - makes sure libvirt's default NAT network is defined and active
set -euo pipefail

log() { printf '[setup-host] %s\n' "$*" >&2; }

PKGS=(
  gcc libc6-dev pkg-config libvirt-dev            # build the agent (virt crate)
  libvirt-daemon-system libvirt-clients           # the real hypervisor manager
  qemu-system-x86 qemu-utils                      # QEMU + qemu-img (same command, see host-facts)
  dnsmasq-base iptables iproute2                  # NAT network, port exposure
  curl ca-certificates                            # demo fetches a page through an exposed port
  cpio xz-utils kmod                              # building the tiny test guest image
  rsync openssh-server openssh-client             # the lab benchmark compares volume sync with rsync (daemon and over ssh)
  slapd ldap-utils                                # the coordinator reads users' attributes from LDAP (tests run their own slapd)
  openssl                                         # this host's SPICE TLS certificates
)

missing=()
for p in "${PKGS[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || missing+=("$p")
done
# qemu-img must come from the same QEMU as qemu-system-x86
if ! command -v qemu-img >/dev/null 2>&1; then missing+=(qemu-utils); fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # qemu-utils must match qemu-system-x86 (a preinstalled backport would block the install)
  qver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  apt-get install -y -qq --allow-downgrades \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${PKGS[@]/#qemu-utils/qemu-utils=$qver}" >/dev/null
else
  log "packages already installed"
fi

# libvirt QEMU driver: run guests as root (here /dev/kvm is root-only) without a security driver.
QEMU_CONF=/etc/libvirt/qemu.conf
changed=0
set_conf() { # key value [file]
  local key=$1 value=$2 file=${3:-$QEMU_CONF}
  if grep -qE "^${key} = ${value}\$" "$file"; then return; fi
  sed -i -E "/^#?\s*${key}\s*=/d" "$file"
  printf '%s = %s\n' "$key" "$value" >>"$file"
  changed=1
}
set_conf user '"root"'
set_conf group '"root"'
set_conf security_driver '"none"'
# The agent keeps one connection to libvirtd, which by default serves only 5 of its calls at
# once: a class's boot storm (20 clone+starts) would queue there. Workers follow.
set_conf max_client_requests 32 /etc/libvirt/libvirtd.conf
set_conf max_workers 40 /etc/libvirt/libvirtd.conf

# SPICE over TLS: this host's own CA and server certificate where libvirt's QEMU driver looks
# for them. Made once; the agent writes the CA and the TLS port into users' .vv files.
SPICE_DIR=/etc/pki/libvirt-spice
if [ ! -s "$SPICE_DIR/server-cert.pem" ]; then
  log "making SPICE TLS certificates in $SPICE_DIR"
  tmp=$(mktemp -d)
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Corral SPICE CA $(hostname)" \
    -keyout "$tmp/ca-key.pem" -out "$tmp/ca-cert.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=corral-spice-$(hostname)" \
    -keyout "$tmp/server-key.pem" -out "$tmp/server.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    >"$tmp/ext"
  openssl x509 -req -days 3650 -in "$tmp/server.csr" -CA "$tmp/ca-cert.pem" -CAkey "$tmp/ca-key.pem" \
    -CAcreateserial -extfile "$tmp/ext" -out "$tmp/server-cert.pem" 2>/dev/null
  mkdir -p "$SPICE_DIR"
  install -m 0644 "$tmp/ca-cert.pem" "$tmp/server-cert.pem" "$SPICE_DIR/"
  install -m 0600 "$tmp/server-key.pem" "$SPICE_DIR/"
  # The CA signs this one certificate only: its key is not kept.
  rm -rf "$tmp"
fi
set_conf spice_tls 1
set_conf spice_tls_x509_cert_dir "\"$SPICE_DIR\""

have_systemd() { [ -d /run/systemd/system ]; }

start_daemons() {
  mkdir -p /var/log/libvirt /run/libvirt
  if have_systemd; then
    systemctl enable --now virtlogd.socket libvirtd.socket >/dev/null 2>&1 || true
    if [ "$changed" = 1 ]; then systemctl restart libvirtd; else systemctl start libvirtd; fi
    return
  fi
  pgrep -x virtlogd >/dev/null || virtlogd -d
  if pgrep -x libvirtd >/dev/null && [ "$changed" = 1 ]; then
    log "restarting libvirtd (config changed)"
    pkill -x libvirtd || true
    for _ in $(seq 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
  fi
  if ! pgrep -x libvirtd >/dev/null; then
    log "starting libvirtd"
    libvirtd -d -p /run/libvirtd.pid
  fi
  for _ in $(seq 100); do
    virsh -c qemu:///system version >/dev/null 2>&1 && return
    sleep 0.1
  done
  log "libvirtd did not answer"; exit 1
}
start_daemons

# libvirt's default NAT network
if ! virsh -q -c qemu:///system net-info default >/dev/null 2>&1; then
  log "defining the default network"
  virsh -q -c qemu:///system net-define /usr/share/libvirt/networks/default.xml >/dev/null
fi
virsh -q -c qemu:///system net-autostart default >/dev/null 2>&1 || true
net_info=$(virsh -q -c qemu:///system net-info default)
if ! grep -qE '^Active:\s+yes' <<<"$net_info"; then
  log "starting the default network"
  virsh -q -c qemu:///system net-start default >/dev/null
fi

# where the agent keeps volumes and state by default
mkdir -p /var/lib/corral/storage /var/lib/corral/state
log "host ready: $(virsh -c qemu:///system version --daemon | tr '\n' ' ')"
