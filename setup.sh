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
# A container in a VM of its own: a busybox rootfs, the first run makes the
# template (a cold boot), the container prints hello.
rootfs=target/busybox-rootfs
if [ ! -x "$rootfs/bin/busybox" ]; then
    mkdir -p "$rootfs/bin"
    cp /bin/busybox "$rootfs/bin/busybox"
    for app in $("$rootfs/bin/busybox" --list); do
        [ "$app" = busybox ] || ln -sf busybox "$rootfs/bin/$app"
    done
fi
echo "setup: husk run --rootfs $rootfs -- echo hello from a container"
./target/release/husk run --rootfs "$rootfs" -- echo hello from a container
echo "setup: done (guest console in target/guest-image/console.log)"
