#!/usr/bin/env bash
# Boots the Linux guest image (scripts/guest-image.sh) under QEMU with N vhost-user NICs, an IP
# and a command; the console goes to stdout (or --console FILE). QEMU runs in the foreground
# (exec), so the caller's pid is QEMU's; the guest powers off after its command.
#
#   scripts/qemu-guest.sh [--image DIR] [--mem MB] [--ip ADDR/LEN] [--ip1 ADDR/LEN]...
#       [--vhost-user SOCK[,mac=MAC][,server]]... [--user-net] [--run "CMD"]
#       [--guest-elf ELF --append "CMDLINE"] [--accel tcg|kvm] [--console FILE] [--name NAME]
#       [-- EXTRA QEMU ARGS]
#
# --vhost-user connects to a switch's socket as a client with reconnect=1 (vswitch listens);
#   `server` makes QEMU listen instead. MACs default to 52:54:00:00:<name-hash>:<index>.
# --user-net adds a NIC on QEMU's user-mode network (10.0.2.0/24, gateway 10.0.2.2).
# --guest-elf boots another PVH ELF (e.g. vmm's built-in guest) instead of the Linux image, with
#   --append as its whole command line; it exits through isa-debug-exit (status = 2 * code + 1).
# Guest memory is a shared memfd (vhost-user needs it); with TCG, virtio-net-pci gets vectors=0
# (QEMU 7.2 under TCG crashes with vhost-user and MSI-X).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=$repo/guest-image
mem=256
accel=tcg
name=guest
run=
append_extra=
guest_elf=
console=
ips=()
nics=()
user_net=0
extra=()

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
    --image) image=$2; shift 2 ;;
    --mem) mem=${2%M}; shift 2 ;;
    --ip) ips[0]=$2; shift 2 ;;
    --ip[1-3]) ips[${1#--ip}]=$2; shift 2 ;;
    --vhost-user) nics+=("$2"); shift 2 ;;
    --user-net) user_net=1; shift ;;
    --run) run=$2; shift 2 ;;
    --append) append_extra=$2; shift 2 ;;
    --guest-elf) guest_elf=$2; shift 2 ;;
    --accel) accel=$2; shift 2 ;;
    --console) console=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) usage ;;
    *) echo "qemu-guest: unknown argument $1" >&2; usage ;;
    esac
done

qemu=${QEMU:-qemu-system-x86_64}
command -v "$qemu" >/dev/null || { echo "qemu-guest: $qemu not found (apt-get install qemu-system-x86)" >&2; exit 3; }

args=(-name "$name" -M pc -accel "$accel" -m "${mem}M" -smp 1 -nographic -no-reboot
    -object "memory-backend-memfd,id=mem0,size=${mem}M,share=on" -numa node,memdev=mem0
    -device isa-debug-exit,iobase=0x501,iosize=1)
if [[ -n $console ]]; then
    args+=(-serial "file:$console" -monitor none)
fi

# A MAC prefix per guest name, so guests on one switch differ even with default MACs.
hash=$(printf '%s' "$name" | cksum | awk '{ printf "%02x", $1 % 256 }')
vectors=
[[ $accel == tcg ]] && vectors=",vectors=0"
i=0
for spec in "${nics[@]}"; do
    IFS=, read -r -a parts <<<"$spec"
    sock=${parts[0]}
    mac=$(printf '52:54:00:00:%s:%02x' "$hash" $((i + 1)))
    chardev="socket,id=chr$i,path=$sock,reconnect=1"
    for opt in "${parts[@]:1}"; do
        case $opt in
        mac=*) mac=${opt#mac=} ;;
        server) chardev="socket,id=chr$i,path=$sock,server=on,wait=off" ;;
        *) echo "qemu-guest: unknown NIC option $opt" >&2; exit 2 ;;
        esac
    done
    args+=(-chardev "$chardev" -netdev "vhost-user,id=net$i,chardev=chr$i"
        -device "virtio-net-pci,netdev=net$i,mac=$mac$vectors")
    i=$((i + 1))
done
if [[ $user_net == 1 ]]; then
    args+=(-netdev "user,id=net$i" -device "virtio-net-pci,netdev=net$i$vectors")
fi

if [[ -n $guest_elf ]]; then
    exec "$qemu" "${args[@]}" -kernel "$guest_elf" -append "$append_extra" "${extra[@]}"
fi

[[ -s $image/vmlinux && -s $image/initramfs.cpio.gz ]] ||
    { echo "qemu-guest: no image in $image (run scripts/guest-image.sh)" >&2; exit 3; }
cmdline="console=ttyS0 quiet panic=-1 tsc=reliable"
for idx in 0 1 2 3; do
    [[ -n ${ips[$idx]:-} ]] || continue
    key=sy.ip; [[ $idx != 0 ]] && key=sy.ip$idx
    cmdline+=" $key=${ips[$idx]}"
done
[[ -n $run ]] && cmdline+=" sy.run=\"$run\""
[[ -n $append_extra ]] && cmdline+=" $append_extra"
# The ELF vmlinux boots through its PVH entry, skipping the bzImage decompressor.
exec "$qemu" "${args[@]}" -kernel "$image/vmlinux" -initrd "$image/initramfs.cpio.gz" \
    -append "$cmdline" "${extra[@]}"
