#!/usr/bin/env python3
"""Storage benchmark: sequential and random read/write throughput and IOPS
in the guest on virtio-blk (ext4 on a raw image) and on virtio-fs, next to
the same workload on the host file system holding the image and the shared
directory, measured in the same run with the same static binary
(perf/iobench.c, run in the guest through `husk agent exec`).

Usage: perf/storage.py [--size-mib 64] [--seconds 5] [--mem-mib 256]
Run from the repository root after ./setup.sh. Prints Markdown.

Page caches: blk runs use O_DIRECT in the guest and on the host. virtio-fs
has no O_DIRECT in this configuration (iobench notes the fallback), so the
guest's reads go through its page cache; the guest drops its caches before
each read pass, the host's page cache stays warm (as it would for a pod).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(ROOT, "target/guest-image")

# (mode, block KiB)
PASSES = [("seqwrite", 1024), ("seqread", 1024), ("randwrite", 4), ("randread", 4)]


def build_iobench(out):
    subprocess.run(["gcc", "-O2", "-static", "-o", out, os.path.join(ROOT, "perf/iobench.c")],
                   check=True)


def run_host(bench, path, size, seconds, direct):
    rows = {}
    for mode, bs in PASSES:
        args = [bench, mode, path, str(size), str(bs), str(seconds)] + (["direct"] if direct else [])
        rows[mode] = json.loads(subprocess.run(args, check=True, capture_output=True,
                                               text=True).stdout)
    return rows


class Guest:
    def __init__(self, husk, uds):
        self.husk, self.uds = husk, uds

    def agent(self, *args, timeout=900):
        r = subprocess.run([self.husk, "agent", *args[:1], "--uds", self.uds, *args[1:]],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"husk agent {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def exec(self, *cmd, timeout_s=600):
        return self.agent("exec", "--timeout", str(timeout_s), "--", *cmd)

    def bench(self, bench, path, size, seconds, direct):
        rows = {}
        for mode, bs in PASSES:
            if mode.endswith("read"):
                self.exec("/bin/sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches")
            args = [bench, mode, path, str(size), str(bs), str(seconds)] + (["direct"] if direct else [])
            rows[mode] = json.loads(self.exec(*args))
        return rows


def fmt_row(name, guest, host, metric):
    g, h = guest[metric], host[metric]
    unit = "MiB/s" if metric == "mib_s" else "IOPS"
    return f"| {name} | {g:,.1f} {unit} | {h:,.1f} {unit} | {g / h:.3f} |"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--mem-mib", type=int, default=256)
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="husk-perf-storage-")
    share = os.path.join(tmp, "share")
    os.makedirs(share)
    bench_host = os.path.join(tmp, "iobench")
    build_iobench(bench_host)
    shutil.copy(bench_host, os.path.join(share, "iobench"))
    img = os.path.join(tmp, "disk.img")
    with open(img, "wb") as f:
        f.truncate((a.size_mib * 2 + 64) << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
    uds = os.path.join(tmp, "v.sock")
    check = subprocess.run([a.husk, "check"], capture_output=True, text=True).stdout
    kind = next((l for l in check.splitlines() if l.startswith("virtualization:")),
                "virtualization: ?")

    host_blk = run_host(bench_host, os.path.join(tmp, "host-direct.dat"), a.size_mib, a.seconds, True)
    host_fs = run_host(bench_host, os.path.join(tmp, "host-cached.dat"), a.size_mib, a.seconds, False)

    vm = subprocess.Popen(
        [a.husk, "vm", "run", "--kernel", os.path.join(IMAGE, "vmlinux"),
         "--initrd", os.path.join(IMAGE, "initramfs-debug.cpio.gz"),
         "--mem-mib", str(a.mem_mib), "--vsock-uds", uds,
         "--console", os.path.join(tmp, "console.log"), "--timeout", "3600",
         "--disk", f"{img},id=bench", "--share", f"bench={share}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
    try:
        g = Guest(a.husk, uds)
        g.agent("ping", "--timeout", "900")
        g.agent("mount", "--disk", "bench", "--target", "/mnt/blk")
        g.agent("mount", "--share", "bench", "--target", "/mnt/fs")
        t0 = time.perf_counter()
        g.exec("/bin/true")
        exec_s = time.perf_counter() - t0
        bench = "/mnt/fs/iobench"
        guest_blk = g.bench(bench, "/mnt/blk/bench.dat", a.size_mib, a.seconds, True)
        guest_fs = g.bench(bench, "/mnt/fs/bench.dat", a.size_mib, a.seconds, False)
        g.agent("umount", "--target", "/mnt/blk")
    finally:
        vm.send_signal(signal.SIGTERM)
        vm.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"host {kind.split(': ', 1)[-1].split(' (')[0]}; guest {a.mem_mib} MiB, 1 vCPU; "
          f"{a.size_mib} MiB file, random passes {a.seconds:g} s; "
          f"one `husk agent exec` of /bin/true: {exec_s * 1000:.0f} ms\n")
    for title, guest, host, note in [
        ("virtio-blk (ext4, O_DIRECT)", guest_blk, host_blk, "host file, O_DIRECT"),
        ("virtio-fs (page cache)", guest_fs, host_fs, "host file, page cache"),
    ]:
        print(f"**{title}**\n")
        print(f"| workload | guest | {note} | guest / host |")
        print("|---|---|---|---|")
        print(fmt_row("sequential write 1 MiB + fsync", guest["seqwrite"], host["seqwrite"], "mib_s"))
        print(fmt_row("sequential read 1 MiB", guest["seqread"], host["seqread"], "mib_s"))
        print(fmt_row("random write 4 KiB", guest["randwrite"], host["randwrite"], "iops"))
        print(fmt_row("random read 4 KiB", guest["randread"], host["randread"], "iops"))
        print()
        if not guest["seqread"]["direct"] and "O_DIRECT" in title:
            print("(note: the guest fell back to the page cache)\n")


if __name__ == "__main__":
    sys.exit(main())
