#!/usr/bin/env bash
# Builds the guest image: the kernel (cached, see build-kernel.sh) and the
# initramfs whose /init is the husk agent (a static glibc binary).
# Outputs: target/guest-image/vmlinux, target/guest-image/initramfs.cpio.gz
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
echo "guest-image: $out/vmlinux -> $(readlink -f "$out/vmlinux")"
echo "guest-image: $out/initramfs.cpio.gz ($(stat -c %s "$out/initramfs.cpio.gz") bytes; agent $(stat -c %s "$agent") bytes)"
