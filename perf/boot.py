#!/usr/bin/env python3
"""Boot benchmark: process start -> first guest instruction -> first console
line -> agent ready, and the VMM process's peak RSS and PSS.

Usage: perf/boot.py [--runs N] [--mem-mib M] [--kernel K] [--initrd I]
Run from the repository root after ./setup.sh (or guest-image/build.sh and
cargo build --release). Prints a Markdown table and the host kind.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mem_sample(pid):
    """(rss_kib, pss_kib, hwm_kib) of pid, or None once it is gone."""
    try:
        rss = pss = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
        hwm = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return rss, pss, hwm
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def one_boot(husk, kernel, initrd, mem_mib):
    cmd = [husk, "vm", "run", "--kernel", kernel, "--initrd", initrd, "--oneshot",
           "--timings", "--timeout", "900", "--mem-mib", str(mem_mib),
           "--console", "/dev/null"]
    env = dict(os.environ, RUST_LOG="warn")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    peak = (0, 0, 0)
    while p.poll() is None:
        s = mem_sample(p.pid)
        if s:
            peak = tuple(max(a, b) for a, b in zip(peak, s))
        time.sleep(0.05)
    out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"boot failed (exit {p.returncode}):\n{err}")
    t = {}
    for line in out.splitlines():
        k, _, v = line.partition(": ")
        if k.endswith("_s") and v != "-":
            t[k] = float(v)
    return t, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mem-mib", type=int, default=128)
    ap.add_argument("--kernel", default=os.path.join(ROOT, "target/guest-image/vmlinux"))
    ap.add_argument("--initrd", default=os.path.join(ROOT, "target/guest-image/initramfs.cpio.gz"))
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    a = ap.parse_args()
    check = subprocess.run([a.husk, "check"], capture_output=True, text=True).stdout
    kind = next((l for l in check.splitlines() if l.startswith("virtualization:")), "virtualization: ?")
    rows = []
    for i in range(a.runs):
        t, peak = one_boot(a.husk, a.kernel, a.initrd, a.mem_mib)
        rows.append((t, peak))
        print(f"run {i + 1}: ready at {t.get('agent_ready_s', float('nan')):.3f} s", file=sys.stderr)
    keys = [("first_guest_instruction_s", "process start -> first guest instruction"),
            ("first_console_line_s", "process start -> first console line"),
            ("agent_ready_s", "process start -> agent ready marker"),
            ("vm_stopped_s", "process start -> VM stopped (oneshot power-off)")]
    print(f"host {kind.split(': ', 1)[1]}; {a.runs} runs; guest {a.mem_mib} MiB, 1 vCPU\n")
    print("| metric | median | min | max |")
    print("|---|---|---|---|")
    for k, label in keys:
        vals = [r[0][k] for r in rows if k in r[0]]
        if vals:
            print(f"| {label} | {statistics.median(vals):.3f} s | {min(vals):.3f} s | {max(vals):.3f} s |")
    for idx, label in [(0, "VMM peak RSS"), (1, "VMM peak PSS"), (2, "VMM VmHWM")]:
        vals = [r[1][idx] / 1024 for r in rows]
        print(f"| {label} | {statistics.median(vals):.1f} MiB | {min(vals):.1f} MiB | {max(vals):.1f} MiB |")


if __name__ == "__main__":
    main()
