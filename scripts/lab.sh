#!/usr/bin/env bash
# The Switchyard lab in one command: sets the machine up, builds the release binaries, then runs
# the whole system for about half a minute and takes it all down again.
#
#   vswitch (one PMD pinned on the last core) with six ports:
#     vm1, vm2   vhost-user  two guests under vmm: Linux where the host has hardware
#                            virtualization (VT-x/AMD-V, no kvm_pvm), vmm's built-in guest otherwise
#     lin        vhost-user  a Linux guest under QEMU (software emulation, TCG)
#     pg-tx/rx   vhost-user  pktgen, a traffic generator
#     uplink     TAP         moved into a network namespace: the "host" 10.0.0.100/24
#   guests 10.0.0.1 (vm1), 10.0.0.2 (vm2), 10.0.0.3 (lin)
#
# It runs a short pktgen measurement (before the guests start: they poll on their vCPUs), shows
# pings guest <-> guest and guest <-> host and an iperf3 run Linux guest -> host, prints
# `vswitch ctl ports / stats / fdb / pmd-rxq / pmd-stats`, and ends with
# "lab: SUCCESS" (exit 0) or "lab: FAILED: <reason>" (exit 1). Everything it started (processes,
# sockets, TAP, namespace) is removed on exit, Ctrl-C included. Needs root, /dev/kvm,
# /dev/net/tun; scripts/setup.sh installs the rest.
#
#   scripts/lab.sh [--quick] [--no-setup] [--no-build]
#     --quick      1 s of pktgen and iperf3 instead of 3 s and 2 s
#     --no-setup   do not run scripts/setup.sh
#     --no-build   use the binaries already built (in $SWITCHYARD_BIN_DIR, else cargo's release dir)
#   SWITCHYARD_LAB_VMM_GUEST=linux|builtin   force the kind of guest under vmm
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

quick=0 do_setup=1 do_build=1
while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) quick=1 ;;
    --no-setup) do_setup=0 ;;
    --no-build) do_build=0 ;;
    -h | --help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "lab: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
pktgen_secs=3 iperf_secs=2
((quick)) && pktgen_secs=1 iperf_secs=1

# --- Embedded defaults ---------------------------------------------------------------------
id=$$
run=${TMPDIR:-/tmp}/switchyard-lab.$id      # sockets, logs, consoles
ns=sylab-$id                                 # the namespace playing the host
tap=sylab$id                                 # the TAP interface (<= 15 bytes)
host_ip=10.0.0.100
image=${SWITCHYARD_GUEST_IMAGE:-$repo/guest-image}
bin=${SWITCHYARD_BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/release}
ncpu=$(nproc)
pmd_core=$((ncpu - 1))
pg_core=0
# Idle PMDs may sleep up to 100 µs between polls (the lab shares the machine with guests under
# emulation); under load the PMD polls without pause.
pmd_sleep_us=100
hp=/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages

t0=$SECONDS
# The script's own stdout/stderr, for the traps: a signal can arrive while a redirected command
# (pktgen >file) runs, and the trap would print into that file.
exec 3>&1 4>&2
say() { printf '[lab %3ds] %s\n' $((SECONDS - t0)) "$*"; }
show() { sed 's/^/    /'; }

# Shows the end of the given logs and exits 1; the EXIT trap cleans up, then prints
# "lab: FAILED: <reason>".
die() {
    local msg=$1
    shift
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf '    --- last lines of %s:\n' "$(basename "$f")" >&2
        tail -n 25 "$f" | tr -d '\r' | sed -e 's/^/    /' -e '$a\' >&2
    done
    fail_msg=$msg # printed last, after the clean-up
    exit 1
}

# --- Clean-up, also on Ctrl-C ----------------------------------------------------------------
pids=()
fg_pid=
cleaned=0
fail_msg=
err_line=
cleanup() {
    local rc=$?
    ((cleaned)) && return
    cleaned=1
    trap '' INT TERM HUP
    exec 1>&3 2>&4
    say "cleaning up: processes, sockets, TAP, namespace…"
    local i pid
    [[ -z $fg_pid ]] || pids+=("$fg_pid")
    # Newest first: guests and generators before the switch.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$tap" 2>/dev/null || true
    rm -rf "$run"
    # Guest and pktgen memory are memfds (no hugetlbfs files): freed when their processes end.
    say "2 MiB hugepages free after clean-up: $(cat "$hp" 2>/dev/null || echo '?')"
    say "cleaned up (exit status $rc)"
    if [[ -z $fail_msg && $rc != 0 && $rc -lt 128 ]]; then
        fail_msg="a command failed at line ${err_line:-?} of $0 (exit status $rc)"
    fi
    [[ -z $fail_msg ]] || printf 'lab: FAILED: %s\n' "$fail_msg" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'err_line=$LINENO' ERR
trap 'exec 1>&3 2>&4; echo; say "interrupted"; exit 130' INT
trap 'exec 1>&3 2>&4; say "terminated"; exit 143' TERM
trap 'exit 129' HUP

# Starts a command in the background in a session of its own (so Ctrl-C reaches only this
# script, which then stops everything in order), remembering its pid for the clean-up.
bg() {
    setsid "$@" 3>&- 4>&- &
    pids+=($!)
}

# Runs a command to completion the same way, waiting with `wait`: a signal to this script ends
# the wait at once (bash would ignore Ctrl-C that a foreground program such as ping handles).
fg() {
    setsid "$@" 3>&- 4>&- &
    fg_pid=$!
    local rc=0
    wait "$fg_pid" || rc=$?
    fg_pid=
    return "$rc"
}

# wait_for FILE PATTERN SECONDS PID WHAT [LOGS...]: waits until FILE contains PATTERN (an
# extended regex); fails when PID exits first or the time is up.
wait_for() {
    local file=$1 pattern=$2 secs=$3 pid=$4 what=$5
    shift 5
    local deadline=$((SECONDS + secs))
    until grep -qE "$pattern" "$file" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "$what: its process exited first (log above)" "$file" "$@"
        ((SECONDS < deadline)) || die "$what: not seen within $secs s" "$file" "$@"
        sleep 0.2 &
        wait $! || true
    done
}

# ns_ping ADDR WHAT: 3 pings from the host namespace (iputils, else busybox); says the summary
# line and fails unless all came back.
ns_ping() {
    local ping=(ping)
    command -v ping >/dev/null || ping=(busybox ping)
    fg ip netns exec "$ns" "${ping[@]}" -c 3 -i 0.2 -W 5 "$1" >"$run/ns-ping.txt" 2>&1 || true
    say "host ($host_ip) -> $2 ($1): $(grep 'packet loss' "$run/ns-ping.txt")"
    grep -q ' 0% packet loss' "$run/ns-ping.txt" || die "pings host -> $2 lost" "$run/ns-ping.txt"
}

ctl() { "$bin/vswitch" ctl --ctl "$run/vswitch.ctl" "$@"; }

# --- 1. Set-up and build ---------------------------------------------------------------------
say "Switchyard lab: vswitch + 2 guests under vmm + 1 Linux guest under QEMU + TAP uplink + pktgen"
[[ $(id -u) == 0 ]] || die "needs root (network namespace, TAP device, hugepages): sudo $0"
if ((do_setup)); then
    say "running scripts/setup.sh (packages, hugepages, guest image; quick when already done)…"
    fg scripts/setup.sh || die "scripts/setup.sh failed"
fi
if ((do_build)); then
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs), then run $0 again"
    say "building release binaries (cargo build --release; the first build takes a few minutes)…"
    fg cargo build --release --workspace --bins || die "cargo build failed"
fi
for b in vswitch vmm pktgen; do
    [[ -x $bin/$b ]] || die "$bin/$b is not built (run without --no-build)"
done
[[ -c /dev/kvm ]] || die "no /dev/kvm: vmm needs KVM"
[[ -c /dev/net/tun ]] || die "no /dev/net/tun: the TAP uplink needs it"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (scripts/setup.sh installs it)"
command -v ip >/dev/null || die "ip (iproute2) missing (scripts/setup.sh installs it)"
command -v iperf3 >/dev/null || die "iperf3 missing (scripts/setup.sh installs it)"
[[ -s $image/vmlinux && -s $image/initramfs.cpio.gz ]] ||
    die "no guest image in $image (scripts/setup.sh builds it)"

guest_kind=builtin
if [[ ! -e /sys/module/kvm_pvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    guest_kind=linux
fi
guest_kind=${SWITCHYARD_LAB_VMM_GUEST:-$guest_kind}
case $guest_kind in
linux) say "hardware virtualization found: the guests under vmm run the Linux image" ;;
builtin) say "no hardware virtualization (nested PVM KVM or no VT-x/AMD-V): the guests under vmm run vmm's built-in guest" ;;
*) die "SWITCHYARD_LAB_VMM_GUEST must be linux or builtin" ;;
esac

mkdir -p "$run"

# --- 2. Host namespace, switch, TAP uplink ---------------------------------------------------
say "creating network namespace $ns (the host side of the uplink)"
ip netns add "$ns" || die "ip netns add $ns failed"
ip netns exec "$ns" ip link set lo up || die "cannot set lo up in $ns"

say "starting vswitch: one PMD on core $pmd_core, ports vm1 vm2 lin pg-tx pg-rx (vhost-user) + uplink (TAP $tap)"
sw_args=(run --pmd-cores "$pmd_core" --pmd-max-sleep-us "$pmd_sleep_us" --ctl "$run/vswitch.ctl")
for p in vm1 vm2 lin pg-tx pg-rx; do sw_args+=(--vhost-user "$p:$run/$p.sock"); done
sw_args+=(--tap "uplink:$tap")
bg "$bin/vswitch" "${sw_args[@]}" >"$run/vswitch.log" 2>&1
sw_pid=${pids[-1]}
for p in vm1 vm2 lin pg-tx pg-rx; do
    deadline=$((SECONDS + 10))
    until [[ -S $run/$p.sock ]]; do
        kill -0 "$sw_pid" 2>/dev/null || die "vswitch exited at start" "$run/vswitch.log"
        ((SECONDS < deadline)) || die "vswitch did not create $run/$p.sock" "$run/vswitch.log"
        sleep 0.1
    done
done
ip link show "$tap" >/dev/null 2>&1 || die "vswitch did not create TAP $tap" "$run/vswitch.log"
say "moving TAP $tap into $ns as $host_ip/24"
ip link set "$tap" netns "$ns" || die "cannot move $tap into $ns"
ip netns exec "$ns" ip addr add "$host_ip/24" dev "$tap" || die "cannot give $tap its address"
ip netns exec "$ns" ip link set "$tap" up || die "cannot set $tap up"
bg ip netns exec "$ns" iperf3 -s --forceflush -B "$host_ip" -I "$run/iperf3.pid" >"$run/iperf3-server.log" 2>&1

# --- 3. pktgen -------------------------------------------------------------------------------
# First, while the machine is quiet: the built-in guests poll their rings on their vCPUs, and
# with two cores they would share the generator's.
pg_args=(run --tx "$run/pg-tx.sock" --rx "$run/pg-rx.sock" --duration "${pktgen_secs}s" --size 64 --quiet)
((ncpu > 1)) && pg_args+=(--tx-core "$pg_core")
say "pktgen: ${pktgen_secs} s of 64-byte frames pg-tx -> vswitch -> pg-rx (generator on core $pg_core, PMD on core $pmd_core)…"
fg "$bin/pktgen" "${pg_args[@]}" >"$run/pktgen.out" 2>"$run/pktgen.err" ||
    die "pktgen failed" "$run/pktgen.out" "$run/pktgen.err" "$run/vswitch.log"
show <"$run/pktgen.out"

# --- 4. Guests -------------------------------------------------------------------------------
# vm1 pings the host, vm2 pings vm1; both keep answering afterwards.
start_vmm_guest() { # NAME N PEER
    local name=$1 n=$2 peer=$3
    local net="vhost-user:$run/$name.sock,mac=52:54:00:00:00:0$n"
    local args=(run --name "lab-$name-$id" --net "$net" --console "$run/$name.console")
    if [[ $guest_kind == linux ]]; then
        args+=(--mem 512M --kernel "$image/vmlinuz" --initrd "$image/initramfs.cpio.gz"
            --cmdline "console=ttyS0 reboot=k panic=-1 quiet sy.quiet=1 sy.ip=10.0.0.$n/24 sy.run=\"until ping -c 1 -W 1 $peer >/dev/null; do sleep 1; done; ping -c 3 $peer; sleep 100000\"")
    else
        args+=(--guest net --mem 64M
            --cmdline "ip=10.0.0.$n ping=$peer count=3 interval=200 linger=forever")
    fi
    SWITCHYARD_VMM_RUN_DIR=$run/vmm bg "$bin/vmm" "${args[@]}" </dev/null >"$run/$name.log" 2>&1
}
say "starting guest vm1 (10.0.0.1, pings the host) and vm2 (10.0.0.2, pings vm1) under vmm"
start_vmm_guest vm1 1 "$host_ip"
vm1_pid=${pids[-1]}
start_vmm_guest vm2 2 10.0.0.1
vm2_pid=${pids[-1]}

say "starting a Linux guest under QEMU (lin, 10.0.0.3): pings vm1 and the host, then iperf3 to the host"
lin_run="ping -c 3 -W 5 10.0.0.1 && ping -c 3 -W 5 $host_ip && iperf3 -c $host_ip -t $iperf_secs; echo LAB-LINUX-DONE=\$?; sleep 100000"
bg scripts/qemu-guest.sh --image "$image" --name "lab-lin-$id" --ip 10.0.0.3/24 \
    --vhost-user "$run/lin.sock,mac=52:54:00:00:00:03" --append sy.quiet=1 \
    --run "$lin_run" --console "$run/lin.console" </dev/null >"$run/qemu.log" 2>&1
lin_pid=${pids[-1]}

if [[ $guest_kind == linux ]]; then
    result='packet loss' ok=' 0% packet loss' boot_secs=120
    say "waiting for the Linux guests under vmm to boot (KVM, a few seconds)…"
else
    result='^ping: [0-9]+/[0-9]+' ok='^ping: 3/3 replies' boot_secs=30
    say "waiting for the built-in guests under vmm (KVM, well under a second each)…"
fi
wait_for "$run/vm1.console" "$result" "$boot_secs" "$vm1_pid" "vm1's pings to the host" "$run/vm1.log" "$run/vswitch.log"
wait_for "$run/vm2.console" "$result" "$boot_secs" "$vm2_pid" "vm2's pings to vm1" "$run/vm2.log" "$run/vswitch.log"
say "guest vm1 (10.0.0.1) -> host ($host_ip): $(grep -E "$result" "$run/vm1.console" | tail -1)"
grep -qE "$ok" "$run/vm1.console" || die "pings vm1 -> host lost" "$run/vm1.console"
say "guest vm2 (10.0.0.2) -> guest vm1 (10.0.0.1): $(grep -E "$result" "$run/vm2.console" | tail -1)"
grep -qE "$ok" "$run/vm2.console" || die "pings vm2 -> vm1 lost" "$run/vm2.console"

ns_ping 10.0.0.1 "guest vm1"
ns_ping 10.0.0.2 "guest vm2"

say "waiting for the Linux guest under QEMU to boot (software emulation, ~10 s)…"
wait_for "$run/lin.console" 'SWITCHYARD-READY' 240 "$lin_pid" "the Linux guest's ready marker" "$run/qemu.log"
say "Linux guest is up; waiting for its pings and iperf3 (~$((iperf_secs + 8)) s)…"
wait_for "$run/lin.console" 'LAB-LINUX-DONE=' 120 "$lin_pid" "the Linux guest's pings and iperf3" "$run/qemu.log" "$run/iperf3-server.log"
tr -d '\r' <"$run/lin.console" >"$run/lin.txt"
mapfile -t losses < <(grep 'packet loss' "$run/lin.txt")
say "Linux guest lin (10.0.0.3) -> guest vm1 (10.0.0.1): ${losses[0]:-no result}"
say "Linux guest lin (10.0.0.3) -> host ($host_ip): ${losses[1]:-no result}"
grep -q 'LAB-LINUX-DONE=0' "$run/lin.txt" || die "the Linux guest's pings or iperf3 failed" "$run/lin.txt"
rate=$(grep -E 'receiver$' "$run/lin.txt" | tail -1 | grep -oE '[0-9.]+ [KMG]?bits/sec' || true)
say "iperf3 TCP Linux guest -> host through vswitch and the TAP (${iperf_secs} s): ${rate:-?}"
ns_ping 10.0.0.3 "Linux guest lin"

# --- 5. Tables -------------------------------------------------------------------------------
for t in ports stats fdb pmd-rxq pmd-stats; do
    say "vswitch ctl $t"
    ctl "$t" | show || die "vswitch ctl $t failed" "$run/vswitch.log"
done

kind=$([[ $guest_kind == linux ]] && echo "Linux guests" || echo "built-in guests")
echo "lab: SUCCESS: vswitch, 2 $kind under vmm, a Linux guest under QEMU, the TAP uplink and pktgen all worked ($((SECONDS - t0)) s)"
