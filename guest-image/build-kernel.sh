#!/usr/bin/env bash
# Builds the husk guest kernel (ELF vmlinux) from Debian's linux-source-6.1
# with guest-image/kernel/microvm.config and guest-image/kernel/patches/*.
#
# The result is cached outside the repository, keyed by the source package
# version, the config fragment, the patches, KCFLAGS and this script, so a
# rebuild only happens when one of them changes.  target/guest-image/vmlinux
# is a symlink into the cache.
#
# Env: HUSK_CACHE (default ~/.cache/husk), HUSK_KERNEL_JOBS (default nproc).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${HUSK_CACHE:-$HOME/.cache/husk}
out_dir="$repo/target/guest-image"
src_tar=/usr/src/linux-source-6.1.tar.xz

die() { echo "build-kernel: $*" >&2; exit 1; }
[ -f "$src_tar" ] || die "$src_tar missing: apt-get install linux-source-6.1 (guest-image/install-deps.sh does it)"
src_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %s "$src_tar")

key=$( { echo "$src_ver"; cat "$here/kernel/microvm.config" "$here/kernel/kcflags" "$0"; \
         cat "$here"/kernel/patches/*.patch; } | sha256sum | cut -c1-16)
kdir="$cache/kernel/$key"
mkdir -p "$out_dir"
if [ -f "$kdir/vmlinux" ]; then
    ln -sfn "$kdir/vmlinux" "$out_dir/vmlinux"
    echo "build-kernel: cached $kdir/vmlinux"
    exit 0
fi

work="$cache/build/$key"
rm -rf "$work"; mkdir -p "$work"
echo "build-kernel: extracting $src_tar ($src_ver) into $work"
tar -C "$work" -xf "$src_tar"
ksrc="$work/linux-source-6.1"
for p in "$here"/kernel/patches/*.patch; do
    echo "build-kernel: applying $(basename "$p")"
    patch -s -p1 -d "$ksrc" < "$p"
done
make -s -C "$ksrc" allnoconfig KCONFIG_ALLCONFIG="$here/kernel/microvm.config"
# Every option the fragment asks for must have survived Kconfig resolution.
bad=0
while read -r line; do
    grep -qx "$line" "$ksrc/.config" || { echo "build-kernel: config lost: $line" >&2; bad=1; }
done < <(grep '^CONFIG_.*=y' "$here/kernel/microvm.config")
while read -r sym; do
    grep -q "^$sym=" "$ksrc/.config" && { echo "build-kernel: config still on: $sym" >&2; bad=1; }
done < <(sed -n 's/^# \(CONFIG_[A-Z0-9_]*\) is not set$/\1/p' "$here/kernel/microvm.config")
[ "$bad" = 0 ] || die "config fragment does not resolve as written"

jobs=${HUSK_KERNEL_JOBS:-$(nproc)}
echo "build-kernel: make -j$jobs vmlinux (several minutes)"
make -s -C "$ksrc" -j"$jobs" KCFLAGS="$(cat "$here/kernel/kcflags")" vmlinux
mkdir -p "$kdir"
cp "$ksrc/vmlinux" "$kdir/vmlinux.tmp"
strip --strip-debug "$kdir/vmlinux.tmp" 2>/dev/null || true
cp "$ksrc/.config" "$kdir/config"
mv "$kdir/vmlinux.tmp" "$kdir/vmlinux"
rm -rf "$work"
ln -sfn "$kdir/vmlinux" "$out_dir/vmlinux"
echo "build-kernel: built $kdir/vmlinux"
