#!/usr/bin/env python3
"""CRI pod density (issue 14): N pods, one busybox container each, started
through containerd's CRI with bounded concurrency, for husk and for runc in
the same invocation.

For each runtime it runs the `cri_density` example of the tests crate
(tests/examples/cri_density.rs: a private containerd with CRI, a CNI
bridge network on a /24, local pause and busybox images; one warm-up pod
first, not counted; then N pods, C at a time; then the memory census;
then every pod is removed and the leak census taken), keeps its JSON and
containerd's log (which holds the husk shim's lines), splits each husk pod
start into the shim's phases from that log, aggregates the guest agent's
own accounting of each container's create and start (the shim's `guest
steps` lines: p50/max per step over pods), writes everything to one JSON
file and an SVG (pods running over time; memory per pod), and prints
Markdown tables.

Usage (as root, from the repository root; containerd, runc, the CNI
plugins and busybox-static installed; `bash guest-image/build.sh` done):

    python3 perf/density.py --pods 100 --concurrency 2 \
        --json perf/density.json --svg perf/density.svg

Options: --runtimes husk,runc  --profile release|debug (the husk shim
build; default release)  --mem-mib M  --settle S  --no-build  --debug
(containerd and the shim log at debug level)  --logs DIR (keep
containerd's logs there)  --kubelet (kubelet's BestEffort pod cgroup parent
and container resources: cpu shares + period, oom_score_adj, unified).
"""
import argparse
import calendar
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
COLOURS = {"husk": "#dd8452", "runc": "#4c72b0"}


def sh(cmd, **kw):
    print("+ " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


# ---------------------------------------------------------------- shim phases

def log_time(line):
    """Epoch seconds of a containerd (`time="...Z"`) or shim (`...Z  INFO`) line."""
    m = re.match(r'^(?:time=")?(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z', line)
    if not m:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2) or 0)


# (mark, regex giving the id); the shim's info lines.
MARKS = [
    ("serving", r"shim serving pod=(\S+)"),
    ("restored", r"sandbox started sandbox=(\S+)"),
    ("vm_ready", r"pod VM ready pod=(\S+)"),
    ("created", r'tasks(?:::create)?: created container="?([0-9a-f]+)'),
    ("started", r"tasks: started process=([0-9a-f]+)"),
]

# (phase, from, to): marks are "<kind>.<mark>", kind pod (the sandbox id)
# or app (the container id), or the driver's own times (begin, sandbox,
# created, running).
PHASES = [
    ("RunPodSandbox -> shim serving (CRI, CNI, shim start)", "begin", "pod.serving"),
    ("VM restored, agent answered", "pod.serving", "pod.restored"),
    ("agent version, guest network configured", "pod.restored", "pod.vm_ready"),
    ("pause: task created in the guest", "pod.vm_ready", "pod.created"),
    ("pause: started (namespaces, mounts, exec)", "pod.created", "pod.started"),
    ("-> RunPodSandbox returned", "pod.started", "sandbox"),
    ("CreateContainer (containerd only)", "sandbox", "created"),
    ("app: task created in the guest", "created", "app.created"),
    ("app: started (setns, mounts, exec)", "app.created", "app.started"),
    ("-> StartContainer returned", "app.started", "running"),
]


def shim_marks(log_path):
    out = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            for name, rx in MARKS:
                m = re.search(rx, line)
                if m:
                    t = log_time(line)
                    if t is not None:
                        out.setdefault(m.group(1), {}).setdefault(name, t)
    return out


def phases(doc, log_path):
    """{phase: [seconds per pod]} for the husk pods that started."""
    marks = shim_marks(log_path)
    t0 = doc["t0_epoch"]
    out = {p[0]: [] for p in PHASES}
    for p in doc["pod_list"]:
        if not p["ok"]:
            continue
        t = {"begin": t0 + p["t_begin"], "sandbox": t0 + p["t_sandbox"],
             "created": t0 + p["t_created"], "running": t0 + p["t_running"]}
        for k, v in marks.get(p["id"], {}).items():
            t["pod." + k] = v
        for k, v in marks.get(p["container"], {}).items():
            t["app." + k] = v
        for name, a, b in PHASES:
            if a in t and b in t:
                out[name].append(t[b] - t[a])
    return out


# ------------------------------------------------ the agent's own accounting

# The shim's line per CreateContainer / StartContainer (agent API 6):
# `guest steps container=<id> pod=<pod> phase=create|start steps=[{...}]`.
GUEST_STEPS = re.compile(r'guest steps container=(\S+) pod=(\S+) phase="?(\w+)"? steps=(\[.*\])\s*$')
STEP_FIELDS = ("wall_us", "user_us", "sys_us", "minflt", "majflt", "nvcsw", "nivcsw", "count")


def guest_steps(doc, log_path):
    """{(kind, phase): {step: {field: [value per pod]}, ...}} with kind
    "pause" (the sandbox's container: its id is the pod's) or "app", for
    the pods of `doc` that started; each step's unit under "unit"; a
    step's parts (wall time and count only) as "<step> / <part>"."""
    pods = {p["id"] for p in doc["pod_list"] if p["ok"]}
    out = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            m = GUEST_STEPS.search(line)
            if not m:
                continue
            cid, pod, phase, js = m.groups()
            if pod not in pods:
                continue
            try:
                steps = json.loads(js)
            except ValueError:
                continue
            kind = "pause" if cid == pod else "app"
            table = out.setdefault((kind, phase), {})
            for st in steps:
                # A part (one spec mount, ...) under its step's name.
                name = f"{st['within']} / {st['name']}" if st.get("within") else st["name"]
                row = table.setdefault(name, {k: [] for k in STEP_FIELDS})
                row["unit"] = st.get("unit", "")
                for k in STEP_FIELDS:
                    row[k].append(st.get(k, 0))
    return out


def p50(xs):
    return statistics.median(xs) if xs else float("nan")


def guest_steps_table(steps):
    """Markdown: per (kind, phase) and step, p50 and max over pods."""
    o = ["| container, call | step | wall p50 (ms) | wall max (ms) | sys p50 (ms) | user p50 (ms) "
         "| minflt p50 | majflt p50 | vcsw/ivcsw p50 | count p50 |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for kind in ("pause", "app"):
        for phase in ("create", "start"):
            table = steps.get((kind, phase))
            if not table:
                continue
            for name, r in table.items():
                count = f"{p50(r['count']):.0f} {r['unit']}" if r["unit"] else ""
                usage = (f"{p50(r['sys_us']) / 1000:.1f} | {p50(r['user_us']) / 1000:.1f} "
                         f"| {p50(r['minflt']):.0f} | {p50(r['majflt']):.0f} "
                         f"| {p50(r['nvcsw']):.0f}/{p50(r['nivcsw']):.0f}")
                if " / " in name:
                    # A part: its wall time and count only.
                    usage, name = "- | - | - | - | -", "&nbsp;&nbsp;" + name.split(" / ", 1)[1]
                o.append(f"| {kind} {phase} (n={len(r['wall_us'])}) | {name} "
                         f"| {p50(r['wall_us']) / 1000:.1f} | {max(r['wall_us']) / 1000:.1f} "
                         f"| {usage} | {count} |")
    return "\n".join(o)


# ---------------------------------------------------------------- output

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def fmt(v, unit="", nd=2):
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.{nd}f}{unit}"


def table(docs):
    rts = list(docs)
    rows = []

    def row(label, f, unit="", nd=2):
        rows.append([label] + [fmt(f(docs[r]), unit, nd) if docs[r] else "-" for r in rts])

    rows.append(["pods started / failed"] + [f'{d["pods_ok"]} / {d["pods_failed"]}' for d in docs.values()])
    row("total time, phase start -> last container running", lambda d: d["total_s"], " s", 1)
    row("pods/s", lambda d: d["pods_per_s"], "", 3)
    row("pod start p50 (RunPodSandbox -> container running)", lambda d: d["start_s"]["p50"], " s")
    row("pod start p99", lambda d: d["start_s"]["p99"], " s")
    row("  RunPodSandbox p50", lambda d: d["run_pod_sandbox_s"]["p50"], " s")
    row("  CreateContainer p50", lambda d: d["create_container_s"]["p50"], " s")
    row("  StartContainer p50", lambda d: d["start_container_s"]["p50"], " s")
    row("CPU per pod start, whole machine (/proc/stat)", lambda d: d["cpu"]["machine_busy_s_per_pod"], " s")
    row("  same, less the load measured before the phase", lambda d: d["cpu"]["machine_busy_s_per_pod_minus_baseline"], " s")
    row("CPU per pod, its processes at the census, p50", lambda d: d["cpu"]["pod_processes_s"]["p50"], " s")
    row("  of which until RunPodSandbox returned", lambda d: d["cpu"]["pod_processes_at_sandbox_s"]["p50"], " s")
    row("  during StartContainer", lambda d: d["cpu"]["pod_processes_start_container_s"]["p50"], " s")
    row("CPU per pod, its host cgroups, p50", lambda d: d["cpu"]["pod_cgroup_s"]["p50"], " s")
    row("idle pod CPU over the settle, its processes, p50 (% of a core)",
        lambda d: (d.get("idle_cpu_pct") or {}).get("p50"), " %", 2)
    idle = lambda d, k, scale=1.0: ((d.get("vm_idle_per_s") or {}).get(k) or {}).get("p50", float("nan")) * scale  # noqa: E731
    row("  of which the vCPU thread (husk pods counters), p50", lambda d: idle(d, "vcpu_cpu_ms", 0.1), " %", 3)
    row("  idle VM: KVM exits per s, p50",
        lambda d: idle(d, "kvm_exits"), "", 1)
    row("    interrupts injected per s, p50", lambda d: idle(d, "irq_injections"), "", 1)
    row("    halt wake-ups per s, p50", lambda d: idle(d, "halt_wakeup"), "", 1)
    row("    emulated instructions per s, p50", lambda d: idle(d, "insn_emulation"), "", 0)
    row("containerd CPU per pod", lambda d: d["cpu"]["containerd_s_per_pod"], " s")
    row("PSS per pod, shim + its processes, p50", lambda d: d["memory_kib"]["pss"]["p50"] / 1024, " MiB", 1)
    row("RSS per pod, same, p50", lambda d: d["memory_kib"]["rss"]["p50"] / 1024, " MiB", 1)
    row("husk guest RAM touched (RSS of the memory.bin mapping), p50",
        lambda d: (d["memory_kib"]["guest_ram_rss"]["p50"] or float("nan")) / 1024, " MiB", 1)
    row("  of which written since restore (private), p50",
        lambda d: (d["memory_kib"]["guest_ram_private"]["p50"] or float("nan")) / 1024, " MiB", 1)
    row("  guest RAM PSS, p50", lambda d: (d["memory_kib"]["guest_ram_pss"]["p50"] or float("nan")) / 1024, " MiB", 1)
    row("pod host cgroup memory.usage, p50", lambda d: d["memory_kib"]["cgroup_mib"]["p50"], " MiB", 1)
    row("teardown (stop + remove all)", lambda d: d["teardown_s"], " s", 1)
    rows.append(["left behind"] + ["nothing" if not d["leaks"] else "LEAKS" for d in docs.values()])
    out = ["| metric | " + " | ".join(rts) + " |", "|---|" + "---|" * len(rts)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def svg(path, docs, goal_s=120.0):
    """Left: pods running over time (each runtime's phase from 0). Right:
    memory per pod (bars)."""
    W, H = 980, 400
    px, py, pw, ph = 60, 50, 520, 290
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>']
    ends = [p["t_running"] for d in docs.values() if d for p in d["pod_list"] if p["ok"]]
    xmax = max([goal_s] + ends) * 1.05
    n = max(d["pods"] for d in docs.values() if d)
    ymax = n
    X = lambda t: px + pw * t / xmax  # noqa: E731
    Y = lambda k: py + ph - ph * k / ymax  # noqa: E731
    o.append(f'<text x="{px}" y="25" font-weight="bold">Pods running over time (RunPodSandbox -> container running), '
             f'N={n}</text>')
    o.append(f'<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    step = next(s for s in (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200) if xmax / s <= 10)
    t = 0
    while t <= xmax:
        o.append(f'<line x1="{X(t):.1f}" y1="{py}" x2="{X(t):.1f}" y2="{py + ph}" stroke="#eee"/>')
        o.append(f'<text x="{X(t):.1f}" y="{py + ph + 15}" text-anchor="middle" font-size="10">{t:g}</text>')
        t += step
    ystep = next(s for s in (1, 2, 5, 10, 20, 25, 50) if ymax / s <= 10)
    k = 0
    while k <= ymax:
        o.append(f'<line x1="{px}" y1="{Y(k):.1f}" x2="{px + pw}" y2="{Y(k):.1f}" stroke="#eee"/>')
        o.append(f'<text x="{px - 5}" y="{Y(k) + 4:.1f}" text-anchor="end" font-size="10">{k}</text>')
        k += ystep
    o.append(f'<text x="{px + pw / 2}" y="{py + ph + 32}" text-anchor="middle">seconds since the first RunPodSandbox</text>')
    o.append(f'<text x="15" y="{py + ph / 2}" transform="rotate(-90 15 {py + ph / 2})" text-anchor="middle">pods running</text>')
    o.append(f'<line x1="{X(goal_s):.1f}" y1="{py}" x2="{X(goal_s):.1f}" y2="{py + ph}" stroke="#c44e52" stroke-dasharray="4,3"/>')
    o.append(f'<text x="{X(goal_s) + 3:.1f}" y="{py + 12}" fill="#c44e52" font-size="10">goal: {n} in {goal_s:g} s</text>')
    ly = py + 20
    for rt, d in docs.items():
        if not d:
            continue
        ts = sorted(p["t_running"] for p in d["pod_list"] if p["ok"])
        pts, c = [(X(0), Y(0))], 0
        for t in ts:
            pts.append((X(t), Y(c)))
            c += 1
            pts.append((X(t), Y(c)))
        pts.append((X(xmax), Y(c)))
        o.append(f'<polyline fill="none" stroke="{COLOURS.get(rt, "#333")}" stroke-width="2" points="'
                 + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        o.append(f'<text x="{px + pw - 8}" y="{ly}" text-anchor="end" fill="{COLOURS.get(rt, "#333")}">'
                 f'{rt}: {d["pods_ok"]} pods in {d["total_s"]:.1f} s (C={d["concurrency"]}, '
                 f'p50 {d["start_s"]["p50"] or 0:.1f} s)</text>')
        ly += 16
    # Memory bars.
    bx, bw = 700, 200
    o.append(f'<text x="{bx - 60}" y="25" font-weight="bold">Memory per pod, p50 (MiB)</text>')
    bars = []
    for rt, d in docs.items():
        if not d:
            continue
        m = d["memory_kib"]
        bars.append((f"{rt}: PSS", m["pss"]["p50"], COLOURS.get(rt)))
        bars.append((f"{rt}: RSS", m["rss"]["p50"], "#bbbbbb"))
        if m["guest_ram_rss"]["p50"] is not None:
            bars.append(("husk guest RAM touched", m["guest_ram_rss"]["p50"], "#f2b880"))
            bars.append(("  of it written (private)", m["guest_ram_private"]["p50"], "#f7d3a8"))
            bars.append(("husk guest RAM PSS", m["guest_ram_pss"]["p50"], "#f2b880"))
    top = max([b[1] or 0 for b in bars] + [1]) / 1024
    y = py
    for label, v, colour in bars:
        v = (v or 0) / 1024
        w = bw * v / top
        o.append(f'<text x="{bx - 6}" y="{y + 14}" text-anchor="end">{label}</text>')
        o.append(f'<rect x="{bx}" y="{y + 3}" width="{max(w, 1):.1f}" height="15" fill="{colour}"/>')
        o.append(f'<text x="{bx + w + 4:.1f}" y="{y + 14}">{v:.1f}</text>')
        y += 24
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--runtimes", default="husk,runc")
    ap.add_argument("--profile", default="release", choices=("release", "debug"))
    ap.add_argument("--mem-mib", type=int, default=None)
    ap.add_argument("--kernel", default=None, help="guest kernel for husk (default: target/guest-image/vmlinux)")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--svg", default=None, help="write the plot here")
    ap.add_argument("--logs", default=None, help="keep containerd's logs in this dir")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--kubelet", action="store_true",
                    help="kubelet's BestEffort pod cgroup parent and container resources")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (containerd, CNI)")
    rts = [r for r in a.runtimes.split(",") if r]
    shim = os.path.join(TARGET, a.profile, "containerd-shim-husk-v2")
    if not a.no_build:
        sh(["cargo", "build", "-q", "-p", "husk-tests", "--example", "cri_density"])
        if "husk" in rts:
            sh(["cargo", "build", "-q", "-p", "husk-shim", "--bins"] + (["--release"] if a.profile == "release" else []))
    example = os.path.join(TARGET, "debug", "examples", "cri_density")
    logs = a.logs or tempfile.mkdtemp(prefix="husk-density-")
    os.makedirs(logs, exist_ok=True)
    docs, husk_phases, husk_steps = {}, None, None
    for rt in rts:
        out = os.path.join(logs, f"{rt}.json")
        log = os.path.join(logs, f"containerd-{rt}.log")
        cmd = [example, "--runtime", rt, "--pods", str(a.pods), "--concurrency", str(a.concurrency),
               "--settle", str(a.settle), "--out", out, "--log", log]
        if rt == "husk":
            cmd += ["--shim", shim]
            if a.mem_mib:
                cmd += ["--mem-mib", str(a.mem_mib)]
            if a.kernel:
                cmd += ["--kernel", a.kernel]
        if a.debug:
            cmd.append("--debug")
        if a.kubelet:
            cmd.append("--kubelet")
        print("+ " + " ".join(cmd), file=sys.stderr)
        r = subprocess.run(cmd, cwd=ROOT)
        if r.returncode != 0 or not os.path.exists(out):
            print(f"{rt}: the driver failed ({r.returncode}); see {log}", file=sys.stderr)
            docs[rt] = None
            continue
        with open(out) as f:
            docs[rt] = json.load(f)
        if rt == "husk" and os.path.exists(log):
            husk_phases = phases(docs[rt], log)
            husk_steps = guest_steps(docs[rt], log)
    ok = {k: v for k, v in docs.items() if v}
    if not ok:
        raise SystemExit("no runtime produced results")
    any_doc = next(iter(ok.values()))
    host = any_doc["host"]
    print(f"host: {'PVM (nested, kvm_pvm: guest kernel code emulated)' if host['pvm'] else 'KVM'}, "
          f"{host['cpus']} CPUs, {host['mem_total_mib'] / 1024:.0f} GiB; N={a.pods}, concurrency {a.concurrency}; "
          f"husk shim {a.profile} build, guest {ok.get('husk', {}).get('husk', {}).get('memory_mib', '-')} MiB; "
          f"load before: " + "; ".join(f"{k} {v['load_before'].split()[0]}" for k, v in ok.items()) + "\n")
    print(table(docs))
    for rt, d in ok.items():
        bad = [p for p in d["pod_list"] if not p["ok"]]
        for p in bad:
            print(f"\n{rt}: {p['name']} FAILED: {p['error']}")
        if d["leaks"]:
            print(f"\n{rt}: left behind: {d['leaks']}")
    if husk_phases:
        print("\nhusk: where a pod start went (from the shim's log lines), seconds per pod:\n")
        print("| phase | p50 | max |")
        print("|---|---|---|")
        for name, _, _ in PHASES:
            v = husk_phases.get(name, [])
            print(f"| {name} | {fmt(med(v))} | {fmt(max(v) if v else None)} |")
    if husk_steps:
        print("\nhusk: the guest agent's accounting of each container's create and start "
              "(its `guest steps` log lines), over pods:\n")
        print(guest_steps_table(husk_steps))
    if "husk" in ok:
        th = {}
        for p in ok["husk"]["pod_list"]:
            for k, v in (p.get("threads_cpu_s") or {}).items():
                th.setdefault(k, []).append(v)
        if th:
            print("\nhusk shim CPU by thread name at the census, p50 per pod (s): "
                  + ", ".join(f"{k} {med(v):.2f}" for k, v in sorted(th.items(), key=lambda x: -med(x[1]))))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": docs, "husk_phases": husk_phases,
                       "husk_guest_steps": {f"{k} {p}": v for (k, p), v in (husk_steps or {}).items()}},
                      f, indent=1)
            f.write("\n")
    if a.svg:
        svg(a.svg, ok)
    if not a.logs:
        print(f"\n(logs and per-runtime JSON in {logs})", file=sys.stderr)


if __name__ == "__main__":
    main()
