#!/usr/bin/env bash
# Sets up everything Arrow needs on a fresh Debian machine and runs the main
# job: a static microservice (examples/apps/hello) as PID 1 of a microVM.
#
# Steps: build arrow-vmm and asdk; build the guest kernel (Debian's
# linux-source-6.12 + our patches, cached); package the app with asdk;
# boot it with arrow-vmm. The app prints its argv/env and exits 3, and so
# does arrow-vmm.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'demo failed at step: %s\n' "$*" >&2; exit 1; }

step "build arrow-vmm (static-pie, see make vmm-static) and asdk (cargo, release)"
make --no-print-directory vmm-static || fail "cargo build of arrow-vmm"
cargo build --release -p asdk || fail "cargo build of asdk"
VMM=target/x86_64-unknown-linux-gnu/release/arrow-vmm
ASDK=target/release/asdk

step "build the guest kernel (first run: several minutes; then cached)"
VMLINUX=$(bash guest-kernel/build.sh | tail -n 1) || fail "guest kernel build"
[ -f "$VMLINUX" ] || fail "guest kernel build did not produce vmlinux"

step "package examples/apps/hello as an Arrow image"
STORE=${ARROW_DEMO_STORE:-$PWD/target/demo-store}
$ASDK --store "$STORE" build examples/apps/hello/hello.c -t hello:demo || fail "asdk build"
INITRD=$($ASDK --store "$STORE" initrd hello:demo) || fail "asdk initrd"

step "boot it: arrow-vmm run (about 25 s on nested-KVM hosts, where the guest kernel is emulated)"
set +e
time $VMM --log-level info run --kernel "$VMLINUX" --initrd "$INITRD" --memory 128M \
  --cmdline "console=ttyS0 reboot=k panic=-1 quiet arrow.app=/app GREETING=hi-from-arrow -- --exit 3 demo-arg"
code=$?
set -e
echo "arrow-vmm exited with $code (the app's exit status)" >&2
[ "$code" -eq 3 ] || fail "expected exit status 3 from the app"
