#!/usr/bin/env bash
# The main job, on a fresh machine: install what husk needs (Debian
# packages incl. containerd), build the guest image (kernel cached outside
# the repo) and husk, then run a container in a pod VM through containerd:
# a private containerd (its own root, state and sockets under
# target/demo-containerd, stopped at the end) with the husk shim on its
# PATH runs `ctr run --runtime io.containerd.husk.v2 busybox ... echo`.
# The first pod makes the VM template (a cold boot); a second pod restores.
set -euo pipefail
cd "$(dirname "$0")"
bash guest-image/install-deps.sh
bash guest-image/build.sh
cargo build --release -q -p husk-shim --bins
./target/release/husk check || { echo "setup: this host cannot run husk VMs (see above)"; exit 1; }
image_tar=$(cargo run --release -q -p husk-tests --example busybox_image)

work=$PWD/target/demo-containerd
# husk install into the demo's own prefix (a real node: `husk install`).
./target/release/husk install --bin-dir "$work/bin" --share-dir "$work/share" \
    --config "$work/husk.toml" >/dev/null
rm -rf "$work/root" "$work/state"
cat >"$work/containerd.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
TOML
HUSK_CONFIG="$work/husk.toml" PATH="$work/bin:$PATH" \
    containerd --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 </dev/null &
ctrd=$!
ctr=(ctr --address "$work/containerd.sock" -n husk-demo)
stop() {
    "${ctr[@]}" tasks kill -s SIGKILL demo2 >/dev/null 2>&1 || true
    kill "$ctrd" 2>/dev/null || true
    wait "$ctrd" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 100); do "${ctr[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
"${ctr[@]}" images import "$image_tar" >/dev/null
for id in demo1 demo2; do
    t0=$(date +%s.%N)
    "${ctr[@]}" run --rm --runtime io.containerd.husk.v2 localhost/husk/busybox:latest "$id" \
        sh -c 'echo "hello from a pod VM: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU"'
    echo "setup: ctr run $id took $(echo "$(date +%s.%N) - $t0" | bc) s"
done
echo "setup: done (containerd log: $work/containerd.log; host kernel $(uname -r))"
