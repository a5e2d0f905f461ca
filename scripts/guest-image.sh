#!/usr/bin/env bash
# Builds the Linux guest image from Debian's packages: kernel (bzImage and the ELF vmlinux inside
# it, for QEMU's fast PVH boot) and an initramfs with busybox, iperf3, the virtio-net modules
# (and pktgen) and an /init that configures eth0 from the kernel command line, prints
# SWITCHYARD-READY, runs a command and powers off.
#
#   scripts/guest-image.sh [OUTDIR]          (default OUTDIR: guest-image/ in the repository)
#
# Kernel command line understood by /init:
#   sy.ip=ADDR/LEN      address of eth0 (sy.ip1=, sy.ip2=, sy.ip3= for eth1..eth3)
#   sy.mtu=N            MTU of every configured interface
#   sy.vlan=VID:ADDR/LEN[,VID:ADDR/LEN...]
#                       802.1Q interfaces eth0.VID on eth0 with those addresses (eth0 itself
#                       is brought up, with sy.ip= or without an address)
#   sy.run="CMD ARGS"   command run by /bin/sh after the ready marker; then the guest powers off
#                       (without sy.run: an interactive shell on the console)
#   sy.quiet=1          no module/interface chatter
# The image also has `sy-pktgen DEV DST_MAC COUNT [SIZE] [DST_IP]` (the kernel's pktgen) and iperf3.
# Console markers: `SWITCHYARD-READY ...` when configured, `SWITCHYARD-EXIT=<status>` at the end.
#
# Idempotent: does nothing when OUTDIR already holds an image built by this version of the script.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/guest-image}
export DEBIAN_FRONTEND=noninteractive

mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
if [[ -s $out/vmlinuz && -s $out/vmlinux && -s $out/initramfs.cpio.gz && -f $out/STAMP &&
    $(cat "$out/STAMP") == "$stamp" ]]; then
    echo "guest-image: $out is up to date ($(cat "$out/VERSION"))"
    exit 0
fi

log() { echo "guest-image: $*"; }
die() { echo "guest-image: error: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio gzip depmod readelf; do
    command -v "$tool" >/dev/null || missing="${missing:-} $tool"
done
if [[ -n ${missing:-} ]]; then
    [[ $(id -u) == 0 ]] || die "missing tools:$missing (install cpio kmod binutils as root)"
    log "installing:$missing"
    apt-get install -y -q cpio kmod gzip binutils >/dev/null
fi

# The kernel package that linux-image-amd64 currently points at.
pick_kernel() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
pkg=$(pick_kernel)
if [[ -z $pkg ]]; then
    log "apt lists are empty; running apt-get update"
    apt-get update -q >/dev/null
    pkg=$(pick_kernel)
fi
[[ -n $pkg ]] || die "apt-cache knows no linux-image-amd64"
kver=${pkg#linux-image-}

work=$out/.work
rm -rf "$work"
mkdir -p "$work/debs" "$work/kernel" "$work/busybox" "$work/root"
# iperf3 (dynamically linked) comes with the libraries it needs, resolved below.
userland_pkgs=(iperf3 libiperf0 libsctp1 libssl3 libc6)
log "downloading $pkg, busybox-static, ${userland_pkgs[*]}"
(cd "$work/debs" && apt-get download -q "$pkg" busybox-static "${userland_pkgs[@]}" >/dev/null 2>&1) ||
    (cd "$work/debs" && apt-get download "$pkg" busybox-static "${userland_pkgs[@]}")
dpkg-deb -x "$work"/debs/linux-image-*.deb "$work/kernel"
dpkg-deb -x "$work"/debs/busybox-static_*.deb "$work/busybox"
mkdir -p "$work/userland"
for p in "${userland_pkgs[@]}"; do
    dpkg-deb -x "$work"/debs/"${p}"_*.deb "$work/userland"
done

moddir=$work/kernel/lib/modules/$kver
[[ -d $moddir ]] || die "no modules for $kver in the package"
depmod -b "$work/kernel" "$kver"

# Load order: dependencies first (modules.dep lists a module's dependencies after it).
declare -A seen=()
order=()
add_module() { # $1 = path relative to $moddir as in modules.dep
    local rel=$1 deps dep
    [[ -n ${seen[$rel]:-} ]] && return
    seen[$rel]=1
    deps=$(awk -v m="$rel:" '$1 == m { $1 = ""; print; exit }' "$moddir/modules.dep")
    for dep in $deps; do add_module "$dep"; done
    order+=("$rel")
}
for name in virtio virtio_ring virtio_pci virtio_net failover net_failover pktgen 8021q; do
    rel=$(awk -F: -v n="$name" '{ f = $1; sub(/.*\//, "", f); sub(/\.ko(\.(xz|zst|gz))?$/, "", f);
        if (f == n) { print $1; exit } }' "$moddir/modules.dep")
    [[ -n $rel ]] || die "module $name is not in $pkg (built in?)"
    add_module "$rel"
done

root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,root,lib/modules,usr/bin,usr/sbin}
install -m 0755 "$work/busybox/bin/busybox" "$root/bin/busybox"
: >"$root/lib/modules/order"
for rel in "${order[@]}"; do
    src=$moddir/$rel
    base=$(basename "$rel")
    name=${base%%.ko*}
    case $base in # busybox insmod takes plain ELF modules only
    *.ko) cp "$src" "$root/lib/modules/$name.ko" ;;
    *.ko.xz) xz -dc "$src" >"$root/lib/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$src" >"$root/lib/modules/$name.ko" ;;
    *.ko.gz) gzip -dc "$src" >"$root/lib/modules/$name.ko" ;;
    *) die "unknown module format: $base" ;;
    esac
    echo "$name" >>"$root/lib/modules/order"
done
log "modules: $(tr '\n' ' ' <"$root/lib/modules/order")"

# Userland programs and, recursively, the shared libraries they name (DT_NEEDED), plus the
# dynamic loader.
ul=$work/userland
libdir=lib/x86_64-linux-gnu
mkdir -p "$root/$libdir" "$root/lib64"
cp -L "$ul/lib64/ld-linux-x86-64.so.2" "$root/lib64/"
copy_needed() { # $1 = ELF file
    local lib src
    for lib in $(LC_ALL=C readelf -d "$1" | awk '/\(NEEDED\)/ { gsub(/[][]/, "", $5); print $5 }'); do
        [[ -e $root/$libdir/$lib ]] && continue
        src=
        for dir in "$ul/$libdir" "$ul/usr/$libdir"; do
            [[ -e $dir/$lib ]] && { src=$dir/$lib; break; }
        done
        [[ -n $src ]] || die "library $lib (needed by $(basename "$1")) is in none of: ${userland_pkgs[*]}"
        cp -L "$src" "$root/$libdir/$lib"
        copy_needed "$root/$libdir/$lib"
    done
}
for prog in usr/bin/iperf3; do
    cp -L "$ul/$prog" "$root/$prog"
    copy_needed "$root/$prog"
done
log "userland: iperf3 + $(ls "$root/$libdir" | tr '\n' ' ')"

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null

# Kernel command line -> one token per line, double quotes honoured ("a b" stays one token).
awk '{ s = $0
  while (length(s)) {
    sub(/^ +/, "", s); if (!length(s)) break
    if (match(s, /^[^ "]*"[^"]*"[^ ]*/)) tok = substr(s, 1, RLENGTH)
    else { match(s, /^[^ ]+/); tok = substr(s, 1, RLENGTH) }
    s = substr(s, RLENGTH + 1); gsub(/"/, "", tok); print tok
  } }' /proc/cmdline >/tmp/cmdline
ip0= ip1= ip2= ip3= mtu= run= quiet= has_run= vlans=
while IFS= read -r tok; do
    case $tok in
    sy.ip=*) ip0=${tok#*=} ;;
    sy.ip1=*) ip1=${tok#*=} ;;
    sy.ip2=*) ip2=${tok#*=} ;;
    sy.ip3=*) ip3=${tok#*=} ;;
    sy.mtu=*) mtu=${tok#*=} ;;
    sy.vlan=*) vlans=${tok#*=} ;;
    sy.run=*) run=${tok#*=}; has_run=1 ;;
    sy.quiet=*) quiet=1 ;;
    esac
done </tmp/cmdline
say() { [ -n "$quiet" ] || echo "init: $*"; }

for m in $(cat /lib/modules/order); do
    insmod /lib/modules/$m.ko || echo "init: insmod $m failed"
done
ip link set lo up
i=0
for addr in "$ip0" "$ip1" "$ip2" "$ip3"; do
    dev=eth$i; i=$((i + 1))
    [ -n "$addr" ] || continue
    n=0
    while [ ! -e /sys/class/net/$dev ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    if [ ! -e /sys/class/net/$dev ]; then echo "init: no $dev"; continue; fi
    [ -n "$mtu" ] && ip link set $dev mtu "$mtu"
    ip addr add "$addr" dev $dev
    ip link set $dev up
    say "$dev $addr $(cat /sys/class/net/$dev/address)"
done
if [ -n "$vlans" ]; then
    n=0
    while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    ip link set eth0 up
    for v in $(echo "$vlans" | tr ',' ' '); do
        vid=${v%%:*} addr=${v#*:}
        ip link add link eth0 name eth0.$vid type vlan id "$vid" || echo "init: no VLAN $vid"
        ip addr add "$addr" dev eth0.$vid
        ip link set eth0.$vid up
        say "eth0.$vid $addr"
    done
fi
echo "SWITCHYARD-READY kernel=$(uname -r) ip=${ip0:-none} mac=$(cat /sys/class/net/eth0/address 2>/dev/null || echo none)"
if [ -n "$has_run" ]; then
    sh -c "$run"
    status=$?
else
    setsid cttyhack sh
    status=$?
fi
echo "SWITCHYARD-EXIT=$status"
sync
poweroff -f
EOF
chmod 0755 "$root/init"

# sy-pktgen: the kernel's packet generator on one interface, for measurements from inside a guest.
cat >"$root/bin/sy-pktgen" <<'EOF'
#!/bin/sh
# sy-pktgen DEV DST_MAC COUNT [SIZE] [DST_IP]: sends COUNT frames of SIZE bytes (default 64) with
# the kernel's pktgen from DEV, then prints pktgen's result line.
[ $# -ge 3 ] || { echo "usage: sy-pktgen DEV DST_MAC COUNT [SIZE] [DST_IP]" >&2; exit 2; }
dev=$1 mac=$2 count=$3 size=${4:-64} ip=${5:-10.0.0.254}
pg() { echo "$2" >"/proc/net/pktgen/$1" || { echo "sy-pktgen: '$2' rejected by $1" >&2; exit 1; }; }
[ -d /proc/net/pktgen ] || { echo "sy-pktgen: pktgen is not loaded" >&2; exit 1; }
pg kpktgend_0 "rem_device_all"
pg kpktgend_0 "add_device $dev"
pg "$dev" "count $count"
pg "$dev" "pkt_size $((size - 4))"
pg "$dev" "delay 0"
pg "$dev" "dst $ip"
pg "$dev" "dst_mac $mac"
pg pgctrl "start"
grep -A2 "^Result" "/proc/net/pktgen/$dev"
EOF
chmod 0755 "$root/bin/sy-pktgen"

log "packing initramfs"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio -o -0 -H newc --quiet -R 0:0) |
    gzip -9n >"$work/initramfs.cpio.gz"

# The ELF vmlinux inside the bzImage: the setup header gives the compressed payload's place
# (payload_offset at 0x248 and payload_length at 0x24c, counted from the protected-mode code at
# (setup_sects + 1) * 512); its magic says how it is compressed.
bz=$work/kernel/boot/vmlinuz-$kver
u8() { od -An -t u1 -j "$2" -N 1 "$1" | tr -d ' '; }
u32() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }
setup_sects=$(u8 "$bz" $((0x1f1)))
[[ $setup_sects == 0 ]] && setup_sects=4
start=$(((setup_sects + 1) * 512 + $(u32 "$bz" $((0x248)))))
len=$(u32 "$bz" $((0x24c)))
dd if="$bz" of="$work/payload" iflag=skip_bytes,count_bytes bs=1M skip="$start" count="$len" status=none
magic=$(od -An -t x1 -N 6 "$work/payload" | tr -d ' ')
# The decompressors complain about the 4-byte size appended after the stream (as the kernel's
# own extract-vmlinux ignores them, so do we) and the result is checked against that size instead.
case $magic in
fd377a585a00) xz -dc "$work/payload" >"$work/vmlinux" 2>/dev/null || true ;;
1f8b*) gzip -dc "$work/payload" >"$work/vmlinux" 2>/dev/null || true ;;
28b52ffd*) zstd -qdc "$work/payload" >"$work/vmlinux" 2>/dev/null || true ;;
5d0000*) xz --format=lzma -dc "$work/payload" >"$work/vmlinux" 2>/dev/null || true ;;
*) die "unknown kernel payload compression (magic $magic)" ;;
esac
[[ $(od -An -t x1 -N 4 "$work/vmlinux" | tr -d ' ') == 7f454c46 ]] || die "extracted vmlinux is not ELF"
want=$(u32 "$work/payload" $((len - 4)))
[[ $(stat -c %s "$work/vmlinux") == "$want" ]] || die "extracted vmlinux is not $want bytes"

cp "$bz" "$out/vmlinuz"
mv "$work/vmlinux" "$out/vmlinux"
mv "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
echo "$kver" >"$out/VERSION"
rm -rf "$work"
echo "$stamp" >"$out/STAMP"
log "built $out: vmlinuz vmlinux initramfs.cpio.gz ($kver)"
