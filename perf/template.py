#!/usr/bin/env python3
"""Template benchmark: cold boot vs restore to the first ttrpc reply, restore
latency over N starts, and per-VM memory (PSS/RSS) of M VMs started from one
template next to M cold-booted VMs, all measured in the same run.

Usage: perf/template.py [--starts 20] [--vms 10] [--mem-mib 128]
Run from the repository root after ./setup.sh. Prints Markdown.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = os.path.join(ROOT, "target/guest-image/vmlinux")
INITRD = os.path.join(ROOT, "target/guest-image/initramfs.cpio.gz")
ENV = dict(os.environ, RUST_LOG="warn")


def timings(out):
    t = {}
    for line in out.splitlines():
        k, _, v = line.partition(": ")
        if k.endswith("_s") and v not in ("-", ""):
            t[k] = float(v)
    return t


def cold_oneshot(husk, tmp, mem):
    """Cold boot with vsock; process start -> first ttrpc reply (by ping)."""
    uds = os.path.join(tmp, "cold.sock")
    t0 = time.perf_counter()
    vm = subprocess.Popen([husk, "vm", "run", "--kernel", KERNEL, "--initrd", INITRD, "--mem-mib", str(mem),
                           "--vsock-uds", uds, "--console", "/dev/null", "--timeout", "900"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    r = subprocess.run([husk, "agent", "ping", "--uds", uds, "--timeout", "900"], capture_output=True, env=ENV)
    dt = time.perf_counter() - t0
    vm.terminate()
    vm.wait()
    if r.returncode != 0:
        raise SystemExit("cold boot: agent unreachable")
    return dt


def restore_oneshot(husk, tpl, tmp, i):
    uds = os.path.join(tmp, f"r{i}.sock")
    r = subprocess.run([husk, "vm", "run", "--from-template", tpl, "--vsock-uds", uds, "--oneshot",
                        "--timings", "--console", "/dev/null", "--timeout", "120", "--name", f"r{i}"],
                       capture_output=True, text=True, env=ENV)
    if r.returncode != 0:
        raise SystemExit(f"restore {i} failed: {r.stderr}")
    return timings(r.stdout)["first_ttrpc_reply_s"]


def mem_of(pid):
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def fleet(husk, tmp, n, mem, tpl=None):
    """Starts n VMs one after the other (each once the previous answers), so
    they all run at once at the end; returns [(rss, pss)] KiB."""
    procs = []
    try:
        for i in range(n):
            uds = os.path.join(tmp, f"f{'t' if tpl else 'c'}{i}.sock")
            args = ([husk, "vm", "run", "--from-template", tpl] if tpl else
                    [husk, "vm", "run", "--kernel", KERNEL, "--initrd", INITRD, "--mem-mib", str(mem)])
            args += ["--vsock-uds", uds, "--console", "/dev/null", "--timeout", "3600", "--name", f"f{i}"]
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV))
            r = subprocess.run([husk, "agent", "ping", "--uds", uds, "--timeout", "900"], capture_output=True,
                               text=True, env=ENV)
            if r.returncode != 0:
                raise SystemExit(f"fleet VM {i} unreachable: {r.stderr}")
        time.sleep(1)
        return [mem_of(p.pid) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def pct(vals, q):
    s = sorted(vals)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--mem-mib", type=int, default=128)
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="husk-tpl-")
    tpl = os.path.join(tmp, "tpl")
    check = subprocess.run([a.husk, "check"], capture_output=True, text=True).stdout
    kind = next((l for l in check.splitlines() if l.startswith("virtualization:")), "virtualization: ?")
    try:
        cold = cold_oneshot(a.husk, tmp, a.mem_mib)
        t0 = time.perf_counter()
        subprocess.run([a.husk, "template", "create", "--kernel", KERNEL, "--initrd", INITRD,
                        "--mem-mib", str(a.mem_mib), "--out", tpl],
                       check=True, capture_output=True, env=ENV)
        create = time.perf_counter() - t0
        restores = [restore_oneshot(a.husk, tpl, tmp, i) for i in range(a.starts)]
        tfleet = fleet(a.husk, tmp, a.vms, a.mem_mib, tpl)
        cfleet = fleet(a.husk, tmp, a.vms, a.mem_mib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    p50 = statistics.median(restores)
    print(f"host {kind.split(': ', 1)[1]}; guest {a.mem_mib} MiB, 1 vCPU\n")
    print("| start | process start -> first ttrpc reply |")
    print("|---|---|")
    print(f"| cold boot (1 run) | {cold:.3f} s |")
    print(f"| restore from template, p50 of {a.starts} | {p50:.3f} s |")
    print(f"| restore from template, p99 of {a.starts} | {pct(restores, 0.99):.3f} s |")
    print(f"| **cold / restore (p50)** | **{cold / p50:.1f}x** |")
    print(f"\ntemplate create (boot + snapshot): {create:.2f} s\n")
    print(f"| {a.vms} VMs running at once | PSS per VM (median) | RSS per VM (median) | PSS total |")
    print("|---|---|---|---|")
    for name, f in [("from one template", tfleet), ("cold-booted", cfleet)]:
        pss = [x[1] / 1024 for x in f]
        rss = [x[0] / 1024 for x in f]
        print(f"| {name} | {statistics.median(pss):.1f} MiB | {statistics.median(rss):.1f} MiB | {sum(pss):.1f} MiB |")


if __name__ == "__main__":
    main()
