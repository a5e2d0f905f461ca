#!/usr/bin/env bash
# Installs what Switchyard's demo and tests need on a fresh Debian machine (idempotent):
# Debian packages (QEMU, DPDK's testpmd, busybox, iperf3, iproute2, build tools), 2 MiB
# hugepages, and the Linux guest image (scripts/guest-image.sh). Needs root for the installs.
#
#   scripts/setup.sh            everything
#   SWITCHYARD_HUGEPAGES=N      2 MiB pages to have free (default 1024 = 2 GiB)
#   SWITCHYARD_SKIP_APT=1       do not touch packages
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

packages=(qemu-system-x86 dpdk-dev busybox-static iperf3 iproute2 tcpdump cpio kmod binutils xz-utils zstd procps)
if [[ ${SWITCHYARD_SKIP_APT:-0} != 1 ]]; then
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) != 0 ]]; then
            log "missing packages: ${missing[*]} (run as root to install them)"
        else
            log "installing: ${missing[*]}"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -q >/dev/null
            apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
        fi
    fi
fi

# Hugepages: guests and pktgen use 2 MiB pages when free (they fall back with a warning).
want=${SWITCHYARD_HUGEPAGES:-1024}
pool=/sys/kernel/mm/hugepages/hugepages-2048kB
if [[ -d $pool ]]; then
    free=$(cat $pool/free_hugepages)
    total=$(cat $pool/nr_hugepages)
    if ((free < want)); then
        if [[ $(id -u) == 0 ]]; then
            # Raise the pool by what is missing, but never past twice the wanted free count:
            # pages held by leftover processes must not ratchet the reservation up run by run.
            new=$((total + want - free))
            cap=$((2 * want))
            ((new > cap && total < cap)) && new=$cap
            ((new > total)) && echo $new > $pool/nr_hugepages || true
            log "2 MiB hugepages: $(cat $pool/nr_hugepages) reserved, $(cat $pool/free_hugepages) free"
        else
            log "only $free 2 MiB hugepages free; as root: echo $((total + want - free)) > $pool/nr_hugepages"
        fi
    fi
fi

# The Linux guest image (kernel + initramfs from Debian packages), for QEMU guests.
scripts/guest-image.sh >&2
