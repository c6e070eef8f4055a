#!/usr/bin/env bash
# The main job, on a fresh machine: install build dependencies, build the
# guest image (kernel cached outside the repo) and husk, then boot a VM to its
# agent's ready marker and power it off. Prints the boot timings.
set -euo pipefail
cd "$(dirname "$0")"
bash guest-image/install-deps.sh
bash guest-image/build.sh
cargo build --release -q -p husk-shim --bin husk
./target/release/husk check || { echo "setup: this host cannot run husk VMs (see above)"; exit 1; }
echo "setup: booting target/guest-image/vmlinux to the agent (slow on nested PVM hosts)"
./target/release/husk vm run \
    --kernel target/guest-image/vmlinux \
    --initrd target/guest-image/initramfs.cpio.gz \
    --oneshot --timeout 600 --timings --console target/guest-image/console.log
grep -h "husk-agent ready" target/guest-image/console.log
echo "setup: done (guest console in target/guest-image/console.log)"
