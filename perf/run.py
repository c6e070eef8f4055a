#!/usr/bin/env python3
"""`husk run -- /bin/true` against `runc run` of the same bundle, in one run.

Builds a busybox-static bundle (rootfs + config.json from `runc spec`), then:
- runc: N runs of `runc run` (no terminal) of /bin/true, wall time each;
- husk: one `husk run` that makes the template (cold boot, reported apart),
  then N runs from the template, wall time each, with husk's own step
  timings (`--timings`): sandbox restored and agent ready, rootfs share
  mounted, stdio streams open, container created (guest: validate, claim
  streams, cgroup), started (guest: clone, namespaces, mounts, pivot_root,
  credentials, exec), exited (output drained), sandbox stopped (husk run
  does not remove the container: the VM goes).

With --guest-steps, each husk run also prints the guest agent's own
accounting of the create and the start (`husk run --guest-steps`: per
step wall time, guest CPU, page faults, context switches, counts; each
spec mount timed apart), and the p50 of each step over the runs is
printed.

Usage: perf/run.py [--runs 10] [--husk target/release/husk] [--guest-steps]
Run from the repository root after ./setup.sh, as root, with runc
installed (`apt-get install runc`). Prints Markdown.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, RUST_LOG="warn")
STEPS = ["sandbox_vm_running_s", "sandbox_agent_ready_s", "rootfs_mounted_s", "streams_open_s",
         "created_s", "started_s", "exited_s", "removed_s", "sandbox_stopped_s"]


def bundle(tmp):
    b = os.path.join(tmp, "bundle")
    rootfs = os.path.join(b, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
    out = subprocess.run([os.path.join(rootfs, "bin", "busybox"), "--list"], capture_output=True, text=True,
                         check=True).stdout
    for name in out.split():
        if name != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", name))
    subprocess.run(["runc", "spec"], cwd=b, check=True)
    with open(os.path.join(b, "config.json")) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(spec, f)
    return b, rootfs


def timed(cmd, stderr=None, **kw):
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, **kw)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stderr}")
    if stderr is not None:
        stderr.append(r.stderr)
    return dt


GUEST_COLS = ("wall", "user", "sys", "minflt", "majflt", "vcsw", "ivcsw")


def guest_steps(text):
    """`husk run --guest-steps` tables -> {(call, step): {col: value}};
    a part's step is "  <name>" (its unmeasured columns absent)."""
    out, call = {}, None
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8 and f[1] == "wall" and f[2] == "ms":
            call = f[0]
            continue
        if call is None or len(f) < 8 or f[0] == "total":
            continue
        name = ("  " + f[0]) if line.startswith("  ") else f[0]
        row = {}
        for k, v in zip(GUEST_COLS, f[1:8]):
            if v != "-":
                row[k] = float(v)
        row["count"] = " ".join(f[8:])
        out[(call, name)] = row
    return out


def read_timings(path):
    t = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(": ")
            t[k] = float(v)
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    ap.add_argument("--guest-steps", action="store_true",
                    help="also aggregate the guest agent's accounting of each create and start")
    a = ap.parse_args()
    if shutil.which("runc") is None:
        raise SystemExit("runc is needed for the baseline: apt-get install runc")
    tmp = tempfile.mkdtemp(prefix="husk-run-perf-")
    try:
        b, rootfs = bundle(tmp)
        runc = [timed(["runc", "run", f"perf{i}"], cwd=b) for i in range(a.runs)]
        store, run_dir = os.path.join(tmp, "store"), os.path.join(tmp, "run")
        husk = [a.husk, "run", "--store", store, "--run-dir", run_dir, "--rootfs", rootfs]
        tfile = os.path.join(tmp, "t")
        first = timed(husk + ["--timings", tfile, "--", "/bin/true"])
        first_t = read_timings(tfile)
        walls, steps, errs = [], [], []
        extra = ["--guest-steps"] if a.guest_steps else []
        for _ in range(a.runs):
            walls.append(timed(husk + ["--timings", tfile] + extra + ["--", "/bin/true"], stderr=errs))
            steps.append(read_timings(tfile))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    check = subprocess.run([a.husk, "check"], capture_output=True, text=True).stdout
    kind = next((l for l in check.splitlines() if l.startswith("virtualization:")), "virtualization: ?")
    p50 = statistics.median(walls)
    r50 = statistics.median(runc)
    print(f"host {kind.split(': ', 1)[1]}; guest 128 MiB, 1 vCPU; busybox-static bundle\n")
    print(f"| `/bin/true`, wall time | median of {a.runs} | min | max |")
    print("|---|---|---|---|")
    print(f"| runc run (host) | {r50:.3f} s | {min(runc):.3f} s | {max(runc):.3f} s |")
    print(f"| husk run, from the template | {p50:.3f} s | {min(walls):.3f} s | {max(walls):.3f} s |")
    print(f"| **husk / runc** | **{p50 / r50:.1f}x** | | |")
    print(f"\nfirst husk run (makes the template: cold boot + snapshot, then the run): {first:.2f} s "
          f"(agent ready at {first_t.get('sandbox_agent_ready_s', 0):.2f} s)\n")
    print("husk run steps, median of each step's duration (from the previous step's end):\n")
    print("| step | median |")
    print("|---|---|")
    for k in STEPS:
        durs = []
        for s in steps:
            if k in s:
                # From the latest step before it that this run recorded.
                before = [s[p] for p in STEPS[:STEPS.index(k)] if p in s]
                durs.append(s[k] - (before[-1] if before else 0.0))
        if durs:
            print(f"| {k[:-2]} | {statistics.median(durs) * 1000:.0f} ms |")
    if a.guest_steps:
        runs = [guest_steps(e) for e in errs]
        keys = list(dict.fromkeys(k for r in runs for k in r))
        print(f"\nthe guest agent's accounting (husk run --guest-steps), p50 of {len(runs)} runs; "
              f"a part (indented) has its wall time and count only:\n")
        print("| call | step | wall ms | user ms | sys ms | minflt | majflt | vcsw | ivcsw | count |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for call, name in keys:
            rows = [r[(call, name)] for r in runs if (call, name) in r]
            cells = []
            for c in GUEST_COLS:
                vals = [r[c] for r in rows if c in r]
                cells.append(f"{statistics.median(vals):g}" if vals else "-")
            shown = name.replace("  ", "&nbsp;&nbsp;")
            print(f"| {call} | {shown} | " + " | ".join(cells) + f" | {rows[-1]['count']} |")


if __name__ == "__main__":
    main()
