#!/usr/bin/env bash
# Builds Corral's tiny test guest from Debian packages (nothing is installed on the host):
#   OUT/vmlinux    the Debian kernel, uncompressed (QEMU boots the ELF directly; ~3 s faster under TCG)
#   OUT/initrd.gz  busybox userland: DHCP on eth0, httpd on :80 with CGI markers, ACPI power button
# The guest has no root disk: it runs from its initramfs. Disks attached as vda, vdb... are raw
# block devices that the CGI endpoints write markers to, so tests can tell whose writes are where:
#   GET /                          -> "corral tiny guest <hostname>"
#   GET /cgi-bin/write?dev=vda&v=X -> writes X (with fsync) at the start of /dev/vda
#   GET /cgi-bin/read?dev=vda      -> the marker stored at the start of /dev/vda
# Usage: deploy/build-guest-image.sh [OUT]   (default /var/lib/corral/guest). Idempotent.
set -euo pipefail
OUT=${1:-/var/lib/corral/guest}
log() { printf '[build-guest] %s\n' "$*" >&2; }

if [ -s "$OUT/vmlinux" ] && [ -s "$OUT/initrd.gz" ] && [ "$OUT/initrd.gz" -nt "$0" ]; then
  log "guest already built in $OUT"; exit 0
fi
for t in apt-get dpkg-deb cpio xz gzip modinfo; do
  command -v "$t" >/dev/null || { log "missing $t: run deploy/setup-host.sh first"; exit 1; }
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$kpkg" ] || { apt-get update -qq; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); }
log "fetching $kpkg, busybox-static and qemu-guest-agent"
chmod 777 "$WORK"
apt-get download -qq "$kpkg" busybox-static qemu-guest-agent 2>/dev/null
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb bb
dpkg-deb -x qemu-guest-agent_*.deb qga
KVER=$(ls kernel/lib/modules)
MODDIR=kernel/lib/modules/$KVER

# vmlinux: the bzImage payload is a single xz stream
bz=kernel/boot/vmlinuz-$KVER
off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" | head -n1 | cut -d: -f1)
tail -c +$((off + 1)) "$bz" | xz -dc --single-stream >vmlinux 2>/dev/null || true
[ "$(head -c 4 vmlinux | od -An -c | tr -d ' ')" = "177ELF" ] || { log "could not extract vmlinux"; exit 1; }

# initramfs
R=root
mkdir -p $R/bin $R/sbin $R/etc/acpi/PWRF $R/proc $R/sys $R/dev $R/tmp $R/run $R/www/cgi-bin \
  $R/usr/share/udhcpc $R/lib/modules
cp bb/bin/busybox $R/bin/busybox
for a in $($R/bin/busybox --list); do [ -e $R/bin/$a ] || ln -s busybox $R/bin/$a; done

# the QEMU guest agent and the shared libraries it needs, at the paths the loader looks in
# (the host has them: QEMU itself links the same ones)
mkdir -p $R/usr/sbin
cp qga/usr/sbin/qemu-ga $R/usr/sbin/qemu-ga
ldd qga/usr/sbin/qemu-ga | awk '/=> \// {print $3} /^[ \t]*\/lib/ {print $1}' | while read -r lib; do
  [ -e "$lib" ] || { log "qemu-ga needs $lib, which this host lacks"; exit 1; }
  mkdir -p "$R$(dirname "$lib")"
  cp -L "$lib" "$R$lib"
done

# kernel modules and their dependency closure, in load order (dependencies first)
declare -A seen
order=()
modpath() { find "$MODDIR" -name "$1.ko" -print -quit; }
visit() {
  local m=${1//-/_} f deps d
  [ -n "${seen[$m]:-}" ] && return
  seen[$m]=1
  f=$(modpath "$m")
  [ -n "$f" ] || return 0   # built into the kernel
  deps=$(modinfo -F depends "$f")
  for d in ${deps//,/ }; do visit "$d"; done
  order+=("$f")
}
for m in virtio_pci virtio_net virtio_blk virtio_console button evdev; do visit "$m"; done
: >$R/lib/modules/order
for f in "${order[@]}"; do
  cp "$f" $R/lib/modules/
  echo "$(basename "$f")" >>$R/lib/modules/order
done

cat >$R/init <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null; done
hostname "$(sed -n 's/.*corral.hostname=\([^ ]*\).*/\1/p' /proc/cmdline)"
[ -n "$(hostname)" ] || hostname corral-guest
ip link set lo up
ip link set eth0 up
udhcpc -b -q -i eth0 -s /usr/share/udhcpc/default.script -x hostname:"$(hostname)" >/dev/null 2>&1 &
mkdir -p /var/log /var/run
acpid -c /etc/acpi -l /var/log/acpid.log
echo "corral tiny guest $(hostname)" >/www/index.html
httpd -p 80 -h /www
# the guest agent on the virtio port libvirt names org.qemu.guest_agent.0 (when the domain has
# one), unless the kernel command line says corral.noagent (a guest without an agent, for tests)
grep -q corral.noagent /proc/cmdline && noagent=1
for i in 1 2 3 4 5 6 7 8 9 10; do
  [ -n "${noagent:-}" ] && break
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
    dev=/dev/$(basename "$p")
    [ -c "$dev" ] || mknod "$dev" c "$(cut -d: -f1 "$p/dev")" "$(cut -d: -f2 "$p/dev")"
    /usr/sbin/qemu-ga -d -m virtio-serial -p "$dev" -f /run/qemu-ga.pid -t /run && break 2
  done
  [ -d /sys/class/virtio-ports ] || break
  sleep 0.2
done
echo "corral guest up"
while true; do sleep 3600; done
INIT

cat >$R/usr/share/udhcpc/default.script <<'DHCP'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}"
    ;;
esac
exit 0
DHCP

cat >$R/etc/acpi/PWRF/00000080 <<'PWR'
#!/bin/sh
sync
poweroff -f
PWR

cat >$R/www/cgi-bin/write <<'W'
#!/bin/sh
dev=$(echo "$QUERY_STRING" | sed -n 's/.*dev=\([a-z0-9]*\).*/\1/p')
v=$(echo "$QUERY_STRING" | sed -n 's/.*v=\([A-Za-z0-9_.-]*\).*/\1/p')
echo "Content-Type: text/plain"
echo
if [ -b "/dev/$dev" ] && [ -n "$v" ]; then
  printf '%s\n' "$v" | dd of="/dev/$dev" bs=512 count=1 conv=sync,fsync 2>/dev/null && echo "ok $v"
else
  echo "error"
fi
W

cat >$R/www/cgi-bin/read <<'RD'
#!/bin/sh
dev=$(echo "$QUERY_STRING" | sed -n 's/.*dev=\([a-z0-9]*\).*/\1/p')
echo "Content-Type: text/plain"
echo
if [ -b "/dev/$dev" ]; then
  dd if="/dev/$dev" bs=512 count=1 2>/dev/null | head -n1 | tr -cd 'A-Za-z0-9_.-'
  echo
else
  echo "error"
fi
RD
chmod 755 $R/init $R/usr/share/udhcpc/default.script $R/etc/acpi/PWRF/00000080 $R/www/cgi-bin/*

mkdir -p "$OUT"
(cd $R && find . | cpio -o -H newc --quiet) | gzip -1 >"$WORK/initrd.gz"
install -m 0644 vmlinux "$OUT/vmlinux.tmp" && mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
install -m 0644 "$WORK/initrd.gz" "$OUT/initrd.gz.tmp" && mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
log "built $OUT (kernel $KVER, modules: ${#order[@]}, initrd $(du -h "$OUT/initrd.gz" | cut -f1))"
