#!/usr/bin/env bash
# Builds the guest image: the kernel (cached, see build-kernel.sh) and the
# initramfs whose /init is the husk agent (a static glibc binary), plus a
# debug initramfs that adds a static busybox and its applet links (tools for
# `husk agent exec` in tests and by hand).
# Outputs: target/guest-image/vmlinux, target/guest-image/initramfs.cpio.gz,
#          target/guest-image/initramfs-debug.cpio.gz
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out="$repo/target/guest-image"
mkdir -p "$out"

bash "$here/build-kernel.sh"

# No musl target here: link glibc statically (the agent uses no NSS).
echo "guest-image: building husk-agent (static)"
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -q --profile guest -p husk-agent \
    --target x86_64-unknown-linux-gnu --target-dir "$repo/target/agent")
agent="$repo/target/agent/x86_64-unknown-linux-gnu/guest/husk-agent"
if ldd "$agent" 2>&1 | grep -q '=>'; then
    echo "guest-image: $agent is not static" >&2; exit 1
fi
python3 "$here/mkinitramfs.py" "$out/initramfs.cpio.gz" "$agent"
# Debian busybox-static (install-deps.sh); a dynamic busybox would not run in
# a guest without a libc.
busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" 2>&1 | grep -q '=>'; then
    echo "guest-image: $busybox is missing or not static (install busybox-static)" >&2; exit 1
fi
python3 "$here/mkinitramfs.py" "$out/initramfs-debug.cpio.gz" "$agent" --busybox "$busybox"
echo "guest-image: $out/vmlinux -> $(readlink -f "$out/vmlinux")"
echo "guest-image: $out/initramfs.cpio.gz ($(stat -c %s "$out/initramfs.cpio.gz") bytes; agent $(stat -c %s "$agent") bytes)"
echo "guest-image: $out/initramfs-debug.cpio.gz ($(stat -c %s "$out/initramfs-debug.cpio.gz") bytes; + busybox $(stat -c %s "$busybox") bytes)"
