#!/usr/bin/env python3
"""Guest kernel cost: two (or more) guest kernels side by side, same run,
same husk binary, same initramfs.

For each kernel: the image size (file, and what is loaded into guest
memory), cold boot (process start -> first `husk agent ping` answer), the
template's memory touched (allocated blocks of the sparse memory.bin),
restore -> first ttrpc reply (p50 of N `--oneshot --timings` restores),
the idle cost of restored VMs (all kernels' VMs idle side by side over the
same window: the VMM's CPU time and the vCPU thread's wake-ups, i.e. its
voluntary context switches, each one a return from the guest's HLT), and
PSS per VM with M restored VMs running at once.

Usage: perf/kernel.py --kernel NAME=PATH --kernel NAME=PATH [--restores 5]
       [--idle-s 60] [--vms 4] [--mem-mib 256] [--husk target/release/husk]
Run from the repository root after ./setup.sh. Prints Markdown.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from template import restore_oneshot  # perf/template.py: process start -> first ttrpc reply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INITRD = os.path.join(ROOT, "target/guest-image/initramfs.cpio.gz")
ENV = dict(os.environ, RUST_LOG="warn")
CLK = os.sysconf("SC_CLK_TCK")


def loaded_bytes(vmlinux):
    """Sum of the PT_LOAD segments' memory sizes (what the guest holds)."""
    out = subprocess.run(["readelf", "-lW", vmlinux], capture_output=True, text=True, check=True).stdout
    total = 0
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            total += int(f[5], 16)
    return total


def ping(husk, uds):
    r = subprocess.run([husk, "agent", "ping", "--uds", uds, "--timeout", "900"], capture_output=True, env=ENV)
    if r.returncode != 0:
        raise SystemExit(f"agent at {uds} unreachable: {r.stderr!r}")


def cold_boot(husk, kernel, tmp, mem):
    uds = os.path.join(tmp, "cold.sock")
    t0 = time.perf_counter()
    vm = subprocess.Popen([husk, "vm", "run", "--kernel", kernel, "--initrd", INITRD, "--mem-mib", str(mem),
                           "--vsock-uds", uds, "--console", "/dev/null", "--timeout", "900"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        ping(husk, uds)
        return time.perf_counter() - t0
    finally:
        vm.terminate()
        vm.wait()


def start_restored(husk, tpl, tmp, name):
    uds = os.path.join(tmp, f"{name}.sock")
    p = subprocess.Popen([husk, "vm", "run", "--from-template", tpl, "--vsock-uds", uds, "--console", "/dev/null",
                          "--timeout", "3600", "--name", name],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    ping(husk, uds)
    return p


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def vcpu_wakeups(pid):
    """Voluntary context switches of the vCPU threads (each a halt->wake)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if "vcpu" not in f.read():
                    continue
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", action="append", required=True, help="NAME=PATH (repeat)")
    ap.add_argument("--restores", type=int, default=5)
    ap.add_argument("--idle-s", type=float, default=60.0)
    ap.add_argument("--vms", type=int, default=4)
    ap.add_argument("--mem-mib", type=int, default=256)
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    a = ap.parse_args()
    kernels = [k.split("=", 1) for k in a.kernel]
    check = subprocess.run([a.husk, "check"], capture_output=True, text=True).stdout
    kind = next((l for l in check.splitlines() if l.startswith("virtualization:")), "virtualization: ?")
    tmp = tempfile.mkdtemp(prefix="husk-kperf-")
    res = {}
    try:
        tpls = {}
        for name, path in kernels:
            r = res[name] = {"file": os.path.getsize(path), "loaded": loaded_bytes(path)}
            r["cold"] = cold_boot(a.husk, path, tmp, a.mem_mib)
            tpl = tpls[name] = os.path.join(tmp, f"tpl-{name}")
            t0 = time.perf_counter()
            subprocess.run([a.husk, "template", "create", "--kernel", path, "--initrd", INITRD,
                            "--mem-mib", str(a.mem_mib), "--out", tpl], check=True, capture_output=True, env=ENV)
            r["create"] = time.perf_counter() - t0
            mem = os.path.join(tpl, "memory.bin")
            r["touched"] = os.stat(mem).st_blocks * 512 if os.path.exists(mem) else 0
            r["restore"] = statistics.median(
                [restore_oneshot(a.husk, tpl, tmp, f"{name}-{i}") for i in range(a.restores)])
        # Idle: one restored VM per kernel, side by side, same window.
        idle = {name: start_restored(a.husk, tpls[name], tmp, f"idle-{name}") for name, _ in kernels}
        try:
            time.sleep(5)
            before = {n: (cpu_ticks(p.pid), vcpu_wakeups(p.pid)) for n, p in idle.items()}
            time.sleep(a.idle_s)
            for n, p in idle.items():
                c, w = cpu_ticks(p.pid), vcpu_wakeups(p.pid)
                res[n]["idle_cpu_pct"] = 100.0 * (c - before[n][0]) / CLK / a.idle_s
                res[n]["idle_wakeups_per_min"] = (w - before[n][1]) * 60.0 / a.idle_s
        finally:
            stop(idle.values())
        for name, _ in kernels:
            procs = []
            try:
                for i in range(a.vms):
                    procs.append(start_restored(a.husk, tpls[name], tmp, f"pss-{name}-{i}"))
                time.sleep(1)
                res[name]["pss"] = statistics.median([pss_kib(p.pid) for p in procs]) / 1024
            finally:
                stop(procs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    names = [n for n, _ in kernels]
    print(f"host {kind.split(': ', 1)[1]}; guest {a.mem_mib} MiB, 1 vCPU; husk {a.husk}\n")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    rows = [
        ("vmlinux file", lambda r: f"{r['file'] / 2**20:.1f} MiB"),
        ("loaded into guest memory", lambda r: f"{r['loaded'] / 2**20:.1f} MiB"),
        ("cold boot -> agent answers", lambda r: f"{r['cold']:.2f} s"),
        ("template create (boot + snapshot)", lambda r: f"{r['create']:.2f} s"),
        ("template memory touched", lambda r: f"{r['touched'] / 2**20:.1f} MiB"),
        (f"restore -> first ttrpc reply, p50 of {a.restores}", lambda r: f"{r['restore']:.3f} s"),
        (f"idle restored VM, CPU over {a.idle_s:.0f} s", lambda r: f"{r['idle_cpu_pct']:.3f} %"),
        ("idle restored VM, vCPU wake-ups per minute", lambda r: f"{r['idle_wakeups_per_min']:.1f}"),
        (f"PSS per VM, {a.vms} restored at once (median)", lambda r: f"{r['pss']:.1f} MiB"),
    ]
    for label, f in rows:
        print(f"| {label} | " + " | ".join(f(res[n]) for n in names) + " |")


if __name__ == "__main__":
    main()
