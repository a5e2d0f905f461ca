#!/usr/bin/env bash
# Runs every Switchyard test: installs what the tests need (scripts/setup.sh), builds the
# binaries, then `cargo test` over the whole workspace in release mode (the tests start the
# built vswitch, pktgen and vmm binaries, guests under KVM and QEMU, TAPs in namespaces).
# Tests whose requirement is missing print `SKIPPED: <reason>`; on a machine like the
# project's (root, /dev/kvm, /dev/net/tun, hugepages) none skip.
#
#   scripts/test.sh [extra cargo test args, e.g. a test name filter]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --bins
# Two test threads: each test runs its own switch and guests on a 2-core machine.
cargo test --release --workspace "$@" -- --test-threads="${SWITCHYARD_TEST_THREADS:-2}"
