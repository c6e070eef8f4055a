#!/usr/bin/env bash
# Installs the Debian packages husk's build and tests need; does nothing when
# they are already there (so it is cheap to run every time).
set -euo pipefail
# busybox-static: the debug initramfs's tools (a static /bin/busybox), and the
# busybox OCI image of the containerd tests.
# containerd, runc, containernetworking-plugins: the end-to-end tests against a
# real containerd (tests/containerd.rs; util-linux's `script` for ctr run -t).
# protobuf-compiler: the k8s-cri crate (the CRI test client, tests/cri.rs)
# compiles the CRI protos with protoc at build time.
# iptables, nftables, fuse-overlayfs: the tools the guest-kernel feature tests
# (tests/tests/cri_guest_features.rs) copy, with their libraries, into a pod's
# image: iptables' nft and legacy backends (Istio's init container), nft, and
# a FUSE file system that mounts as root without fusermount.
pkgs=(linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio python3 gcc make xz-utils patch util-linux e2fsprogs busybox-static
      containerd runc containernetworking-plugins protobuf-compiler
      iptables nftables fuse-overlayfs)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all present"
    exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
