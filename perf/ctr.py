#!/usr/bin/env python3
"""`ctr run` under containerd: husk's shim against runc's, in one run.

Starts a private containerd (its own root, state, sockets and namespace
under a temp dir; PATH starts with the built shim's directory, and
`HUSK_CONFIG` names a config with the repo's guest image and a template
directory that starts empty), imports a busybox-static OCI image built
here, then:
- wall time of `ctr run --rm IMAGE ID /bin/true` for
  `io.containerd.runc.v2` and `io.containerd.husk.v2`: one runc run first
  (warm-up, not counted); husk's first pod (cold: the template store is
  empty, so the shim boots the guest, snapshots it and restores from it),
  reported apart; then N husk runs (restore from the template) and N runc
  runs, alternating, so that the host's load drifts over both alike;
- memory per running container: K `ctr run -d ... sleep 600` per runtime,
  then PSS/RSS (`/proc/PID/smaps_rollup`) of each shim and every process
  under it (runc: the shim and the container's processes; husk: the shim,
  which holds the VMM and the guest's memory), and, for husk, the guest
  RAM mapping itself (the template's `memory.bin`, mapped MAP_PRIVATE, in
  `/proc/PID/smaps`);
- then kills and deletes every container, stops containerd and checks that
  no shim, mount, socket, cgroup, runc state or pod directory is left.

Usage: perf/ctr.py [--runs 10] [--containers 5] [--shim-dir target/release]
                   [--svg perf/ctr.svg] [--keep]
Run from the repository root, as root, after
`cargo build --release -p husk-shim` and `bash guest-image/build.sh`, with
containerd, runc and busybox-static installed. Prints Markdown.
"""
import argparse
import calendar
import hashlib
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUSK = "io.containerd.husk.v2"
RUNC = "io.containerd.runc.v2"
IMAGE = "localhost/husk/busybox-perf:latest"
SHIM_SOCKETS = "/run/containerd/s"
RUNC_STATE = "/run/containerd/runc"
BUSYBOX = "/bin/busybox"


# ---------------------------------------------------------------- image

def oci_arch():
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def tar_bytes(entries):
    """A deterministic ustar of (name, kind, mode, data-or-linktarget)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, kind, mode, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = mode, 0, 0, 0, "root", "root"
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            elif kind == "link":
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                t.addfile(ti)
            else:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def busybox_oci_tar(path):
    """An OCI image-layout tar of busybox-static with every applet in /bin."""
    with open(BUSYBOX, "rb") as f:
        bb = f.read()
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    entries = [("bin", "dir", 0o755, None), ("bin/busybox", "file", 0o755, bb)]
    entries += [(f"bin/{a}", "link", 0o777, "busybox") for a in sorted(set(applets)) if a != "busybox"]
    entries += [("dev", "dir", 0o755, None), ("etc", "dir", 0o755, None),
                ("etc/group", "file", 0o644, b"root:x:0:\nnogroup:x:65534:\n"),
                ("etc/passwd", "file", 0o644, b"root:x:0:0:root:/root:/bin/sh\n"
                 b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
                ("proc", "dir", 0o555, None), ("root", "dir", 0o700, None),
                ("sys", "dir", 0o555, None), ("tmp", "dir", 0o1777, None)]
    layer = tar_bytes(entries)
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    arch = oci_arch()
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(layer)}"]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{sha(config)}", "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{sha(layer)}", "size": len(layer)}],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": f"sha256:{sha(manifest)}", "size": len(manifest),
                       "platform": {"architecture": arch, "os": "linux"},
                       "annotations": {"io.containerd.image.name": IMAGE,
                                       "org.opencontainers.image.ref.name": IMAGE.rsplit(":", 1)[1]}}],
    }).encode()
    outer = [("oci-layout", "file", 0o644, b'{"imageLayoutVersion":"1.0.0"}'),
             ("index.json", "file", 0o644, index),
             ("blobs", "dir", 0o755, None), ("blobs/sha256", "dir", 0o755, None)]
    outer += [(f"blobs/sha256/{sha(b)}", "file", 0o644, b) for b in (layer, config, manifest)]
    with open(path, "wb") as f:
        f.write(tar_bytes(outer))


# ---------------------------------------------------------------- containerd

class Containerd:
    def __init__(self, work, shim_dir, husk_config):
        self.work, self.ns = work, f"huskperf-{os.getpid()}"
        self.sock = os.path.join(work, "containerd.sock")
        self.fifo = os.path.join(work, "fifo")
        for d in ("root", "state", "fifo", "opt"):
            os.makedirs(os.path.join(work, d))
        q = json.dumps  # a TOML basic string for these paths
        disabled = ", ".join(q(p) for p in (
            "io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"))
        cfg = os.path.join(work, "config.toml")
        with open(cfg, "w") as f:
            f.write(f"version = 2\nroot = {q(work + '/root')}\nstate = {q(work + '/state')}\n"
                    f"disabled_plugins = [{disabled}]\n\n[grpc]\n  address = {q(self.sock)}\n\n"
                    f"[ttrpc]\n  address = {q(self.sock + '.ttrpc')}\n\n"
                    f"[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {q(work + '/opt')}\n")
        self.log_path = os.path.join(work, "containerd.log")
        self.ids = set()
        env = dict(os.environ, PATH=shim_dir + os.pathsep + os.environ.get("PATH", ""),
                   HUSK_CONFIG=husk_config)
        self.proc = subprocess.Popen(["containerd", "--config", cfg], cwd=work, env=env,
                                     stdin=subprocess.DEVNULL, stdout=open(self.log_path, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        end = time.time() + 20
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"containerd exited ({self.proc.returncode}):\n{self.log_tail()}")
            if os.path.exists(self.sock) and self.ctr(["version"], check=False).returncode == 0:
                break
            if time.time() > end:
                raise SystemExit(f"containerd did not answer in 20 s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n=30):
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def ctr(self, args, check=True, timeout=600):
        if args[0] == "run":
            args = ["run", "--fifo-dir", self.fifo] + args[1:]
            self.ids.add(args[args.index(IMAGE) + 1])
        r = subprocess.run(["ctr", "--address", self.sock, "-n", self.ns] + args,
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise SystemExit(f"ctr {' '.join(args)} failed ({r.returncode}): {r.stderr}\n"
                             f"containerd log:\n{self.log_tail()}")
        return r

    def shims(self):
        """{pid: container id} of the shims this containerd started."""
        out = {}
        for pid in pids():
            argv = cmdline(pid)
            if argv and os.path.basename(argv[0]).startswith("containerd-shim-") \
                    and argv_value(argv, "-address") == self.sock:
                out[pid] = argv_value(argv, "-id")
        return out

    def stop(self):
        for pid in self.shims():
            kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def listdir(d):
    try:
        return os.listdir(d)
    except OSError:
        return []


def pids():
    return [int(p) for p in listdir("/proc") if p.isdigit()]


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def argv_value(argv, flag):
    for i, a in enumerate(argv):
        if a in (flag, "-" + flag) and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "=") or a.startswith("-" + flag + "="):
            return a.split("=", 1)[1]
    return None


def kill(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def mounts_under(d):
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == d or mp.startswith(d + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def cgroup_dirs(ns):
    return [os.path.join("/sys/fs/cgroup", h, ns) for h in [""] + listdir("/sys/fs/cgroup")
            if os.path.isdir(os.path.join("/sys/fs/cgroup", h, ns))]


# ---------------------------------------------------------------- memory

def children_map():
    kids = {}
    for pid in pids():
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(pid)
    return kids


def tree(pid, kids):
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def rollup(pid):
    """kB fields of /proc/PID/smaps_rollup (Rss, Pss, Pss_Anon, ...)."""
    v = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    v[parts[0].rstrip(":")] = int(parts[-2])
    except OSError:
        pass
    return v


def guest_ram(pid, template_dir):
    """Rss/Pss/Anonymous (kB) of the VMM's guest RAM: its mappings of the
    template's memory.bin (MAP_PRIVATE; pages the guest wrote are private
    anonymous copies, the rest shared page cache of the file)."""
    tot, cur = {"Size": 0, "Rss": 0, "Pss": 0, "Anonymous": 0}, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", head[0]):
                path = head[5] if len(head) > 5 else ""
                cur = path.startswith(template_dir) and path.endswith("/memory.bin")
            elif cur and head[0].rstrip(":") in tot:
                tot[head[0].rstrip(":")] += int(head[1])
    return tot


# ---------------------------------------------------------------- runs

SPANS = {}  # id -> (epoch start, epoch end) of its `ctr run`


def timed_run(c, runtime, cid):
    t, e = time.perf_counter(), time.time()
    r = c.ctr(["run", "--rm", "--runtime", runtime, IMAGE, cid, "/bin/true"], check=False)
    dt = time.perf_counter() - t
    SPANS[cid] = (e, e + dt)
    if r.returncode != 0:
        raise SystemExit(f"ctr run ({runtime}) failed ({r.returncode}): {r.stderr}\n{c.log_tail()}")
    return dt


# The shim's info lines (and containerd's own) that mark a pod's steps, in order.
STEP_MARKS = [
    ("shim serving", r"shim serving pod=(\S+)"),
    ("VM restored, agent ready", r"sandbox started sandbox=(\S+)"),
    ("pod share mounted", r"pod VM ready pod=(\S+)"),
    ("created", r'tasks: created container="?([^"\s]+)'),
    ("started", r"tasks: started process=(\S+)"),
    ("exited", r"tasks: exited process=(\S+)"),
    ("deleted", r"tasks: deleted container=\"?([^\"\s]+)"),
    ("VM stopped", r"VM stopped vm=(\S+)"),
    ("shim gone (containerd)", r'msg="shim disconnected" id=(\S+)'),
]


def log_time(line):
    m = re.match(r'^(?:time=")?(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z', line)
    if not m:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2) or 0)


def step_times(c):
    """{pod: {step: epoch seconds}} from containerd's log (the shim's lines)."""
    out = {}
    with open(c.log_path, errors="replace") as f:
        for line in f:
            for name, rx in STEP_MARKS:
                m = re.search(rx, line)
                if m:
                    t = log_time(line)
                    if t is not None:
                        out.setdefault(m.group(1), {}).setdefault(name, t)
    return out


def pod_ready_lines(c):
    """The shim's `pod VM ready` log lines: {pod: {key: value}}."""
    out = {}
    with open(c.log_path, errors="replace") as f:
        for line in f:
            if "pod VM ready" in line:
                kv = dict(re.findall(r"(\w+)=(\S+)", line.split("pod VM ready", 1)[1]))
                if "pod" in kv:
                    out[kv["pod"]] = kv
    return out


def memory(c, runtime, k, prefix, template_dir, settle):
    ids = [f"{prefix}{i}" for i in range(k)]
    starts = []
    for cid in ids:
        t = time.perf_counter()
        c.ctr(["run", "-d", "--runtime", runtime, IMAGE, cid, "sleep", "600"])
        starts.append(time.perf_counter() - t)
    time.sleep(settle)
    shims = {v: p for p, v in c.shims().items()}
    kids = children_map()
    rows = []
    for cid in ids:
        spid = shims.get(cid)
        if spid is None:
            raise SystemExit(f"no shim process found for {cid}")
        procs = tree(spid, kids)
        sh = rollup(spid)
        tot = [rollup(p) for p in procs]
        row = {"id": cid, "procs": len(procs), "shim_pss": sh.get("Pss", 0), "shim_rss": sh.get("Rss", 0),
               "pss": sum(t.get("Pss", 0) for t in tot), "rss": sum(t.get("Rss", 0) for t in tot),
               "pss_anon": sum(t.get("Pss_Anon", 0) for t in tot),
               "pss_file": sum(t.get("Pss_File", 0) for t in tot)}
        if runtime == HUSK:
            row["guest"] = guest_ram(spid, template_dir)
        rows.append(row)
    for cid in ids:
        c.ctr(["task", "kill", "-s", "SIGKILL", cid], check=False)
    for cid in ids:
        end = time.time() + 120
        while time.time() < end:
            st = c.ctr(["task", "ls"], check=False).stdout
            line = next((l.split() for l in st.splitlines()[1:] if l.split()[:1] == [cid]), None)
            if line is None or line[-1] == "STOPPED":
                break
            time.sleep(0.2)
        c.ctr(["task", "delete", cid], check=False)
        c.ctr(["container", "delete", cid], check=False)
    return rows, starts


def wait_no_shims(c, timeout=60):
    end = time.time() + timeout
    while c.shims() and time.time() < end:
        time.sleep(0.2)
    return c.shims()


def mib(kb):
    return kb / 1024.0


def svg_chart(path, groups):
    """A hand-written SVG of horizontal bar groups: [(title, unit, log, [(label, value, colour)])]."""
    w, lab, bar_w, row_h, pad = 760, 230, 420, 26, 16
    h = sum(40 + row_h * len(g[3]) + pad for g in groups) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="13">', f'<rect width="{w}" height="{h}" fill="white"/>']
    y = 10
    import math
    for title, unit, log, bars in groups:
        out.append(f'<text x="10" y="{y + 18}" font-weight="bold">{title}</text>')
        y += 30
        top = max(v for _, v, _ in bars)
        if log:
            lo = 10 ** math.floor(math.log10(min(v for _, v, _ in bars)))
            hi = 10 ** math.ceil(math.log10(top))
            scale = lambda v: bar_w * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))  # noqa
            ticks = [lo * 10 ** i for i in range(int(round(math.log10(hi / lo))) + 1)]
        else:
            scale = lambda v: bar_w * v / top  # noqa: E731
            ticks = []
        y0 = y
        for label, v, colour in bars:
            bw = max(scale(v), 1.0)
            out.append(f'<text x="{lab - 8}" y="{y + 17}" text-anchor="end">{label}</text>')
            out.append(f'<rect x="{lab}" y="{y + 4}" width="{bw:.1f}" height="{row_h - 8}" fill="{colour}"/>')
            out.append(f'<text x="{lab + bw + 6:.1f}" y="{y + 17}">{v:.3g} {unit}</text>')
            y += row_h
        for t in ticks:
            x = lab + scale(t)
            out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y}" stroke="#bbb" '
                       f'stroke-dasharray="2,3"/>')
            out.append(f'<text x="{x:.1f}" y="{y + 12}" text-anchor="middle" font-size="10" '
                       f'fill="#666">{t:g}</text>')
        y += pad + (12 if ticks else 0)
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--containers", type=int, default=5)
    ap.add_argument("--shim-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR") or
                                                       os.path.join(ROOT, "target"), "release"))
    ap.add_argument("--mem-mib", type=int, default=None, help="memory_mib in the husk config (shim default 256)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds between starting and measuring")
    ap.add_argument("--svg", default=None, help="write a bar chart here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, config)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (containerd)")
    for b in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
        if shutil.which(b) is None:
            raise SystemExit(f"{b} is missing: apt-get install containerd runc")
    shim_dir = os.path.abspath(a.shim_dir)
    shim = os.path.join(shim_dir, "containerd-shim-husk-v2")
    kernel = os.path.join(ROOT, "target/guest-image/vmlinux")
    initrd = os.path.join(ROOT, "target/guest-image/initramfs.cpio.gz")
    for p, how in ((shim, "cargo build --release -p husk-shim"), (kernel, "bash guest-image/build.sh"),
                   (initrd, "bash guest-image/build.sh"), (BUSYBOX, "apt-get install busybox-static")):
        if not os.path.exists(p):
            raise SystemExit(f"{p} is missing: {how}")

    tmp = tempfile.mkdtemp(prefix="husk-ctr-perf-")
    tdir = os.path.join(tmp, "templates")
    run_dir = os.path.join(tmp, "pods")
    hcfg = os.path.join(tmp, "husk.toml")
    with open(hcfg, "w") as f:
        f.write(f"kernel = {json.dumps(kernel)}\ninitramfs = {json.dumps(initrd)}\n"
                f"template_dir = {json.dumps(tdir)}\nrun_dir = {json.dumps(run_dir)}\n"
                f"console_dir = {json.dumps(os.path.join(tmp, 'console'))}\n")
        if a.mem_mib:
            f.write(f"memory_mib = {a.mem_mib}\n")
    os.makedirs(os.path.join(tmp, "console"))
    load0 = os.getloadavg()
    c = None
    leaks = {}
    try:
        tar = os.path.join(tmp, "busybox.tar")
        busybox_oci_tar(tar)
        c = Containerd(os.path.join(tmp, "ctrd"), shim_dir, hcfg)
        c.ctr(["images", "import", tar])

        timed_run(c, RUNC, "runc-warm")
        cold = timed_run(c, HUSK, "husk-cold")
        runc, husk = [], []
        for i in range(a.runs):
            husk.append(timed_run(c, HUSK, f"husk-{i}"))
            runc.append(timed_run(c, RUNC, f"runc-{i}"))
        ready = pod_ready_lines(c)
        steps = step_times(c)
        tpl_bytes = tpl_alloc = 0
        for d, _, files in os.walk(tdir):
            for fn in files:
                st = os.stat(os.path.join(d, fn))
                tpl_bytes += st.st_size
                tpl_alloc += st.st_blocks * 512

        mem_husk, start_husk = memory(c, HUSK, a.containers, "husk-mem-", tdir, a.settle)
        mem_runc, start_runc = memory(c, RUNC, a.containers, "runc-mem-", tdir, a.settle)
        left = wait_no_shims(c)
        leaks["shims"] = [f"{p} {cmdline(p)}" for p in left]
        leaks["tasks"] = c.ctr(["tasks", "ls", "-q"], check=False).stdout.split()
        leaks["containers"] = c.ctr(["containers", "ls", "-q"], check=False).stdout.split()
    finally:
        if c is not None:
            c.stop()
            leaks["mounts"] = mounts_under(tmp)
            # runc leaves the namespace's own (empty) cgroup dirs; a container's is a leak.
            leaks["cgroups"] = [os.path.join(d, e) for d in cgroup_dirs(c.ns) for e in listdir(d)
                                if os.path.isdir(os.path.join(d, e))]
            leaks["runc_state"] = listdir(os.path.join(RUNC_STATE, c.ns))
            leaks["pod_dirs"] = [os.path.join(r, d) for r, ds, _ in os.walk(run_dir) for d in ds
                                 if r.count("/") - run_dir.count("/") >= 1]
            # Our shims' sockets (containerd's convention: sha256 of address/ns/id);
            # other containerds on the host may have theirs there too.
            ours = {hashlib.sha256(f"{c.sock}/{c.ns}/{i}".encode()).hexdigest() for i in c.ids}
            leaks["sockets"] = [s for s in listdir(SHIM_SOCKETS) if s in ours]
            # Clean whatever is left (only this run's: its namespace, its dirs).
            for m in mounts_under(tmp):
                subprocess.run(["umount", "-l", m], capture_output=True)
            for d in sorted(cgroup_dirs(c.ns), key=len, reverse=True):
                for r, ds, _ in sorted(os.walk(d), key=lambda x: -len(x[0])):
                    for sub in ds:
                        try:
                            os.rmdir(os.path.join(r, sub))
                        except OSError:
                            pass
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            shutil.rmtree(os.path.join(RUNC_STATE, c.ns), ignore_errors=True)
        if a.keep:
            print(f"(work dir kept: {tmp})\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()

    husk_bin = os.path.join(shim_dir, "husk")
    kind = "?"
    if os.path.exists(husk_bin):
        check = subprocess.run([husk_bin, "check"], capture_output=True, text=True).stdout
        kind = next((l.split(": ", 1)[1] for l in check.splitlines() if l.startswith("virtualization:")), "?")
    mem = a.mem_mib or 256
    r50, h50 = statistics.median(runc), statistics.median(husk)
    print(f"host {kind}; guest {mem} MiB, 1 vCPU; shim {shim}; busybox-static image; "
          f"load average {load0[0]:.1f} before, {load1[0]:.1f} after (on {os.cpu_count()} CPUs)\n")
    print(f"| `ctr run --rm ... /bin/true`, wall time | median of {a.runs} | min | max |")
    print("|---|---|---|---|")
    print(f"| runc (`{RUNC}`) | {r50:.3f} s | {min(runc):.3f} s | {max(runc):.3f} s |")
    print(f"| husk (`{HUSK}`), later pods (restore) | {h50:.3f} s | {min(husk):.3f} s | {max(husk):.3f} s |")
    print(f"| husk, first pod (cold: template made), 1 run | {cold:.3f} s | | |")
    print(f"| **husk restore / runc** | **{h50 / r50:.1f}x** | | |")
    print(f"| husk cold / runc | {cold / r50:.0f}x | | |")
    cold_ready = ready.get("husk-cold", {})
    restore_ready = [float(ready[k]["agent_ready_s"]) for k in ready
                     if k.startswith("husk-") and k != "husk-cold" and not k.startswith("husk-mem-")
                     and "agent_ready_s" in ready[k]]
    if cold_ready:
        print(f"\nshim log, `pod VM ready`: first pod agent_ready_s {float(cold_ready.get('agent_ready_s', 0)):.2f} "
              f"(template_created={cold_ready.get('template_created')}); later pods median "
              f"{statistics.median(restore_ready) if restore_ready else float('nan'):.3f} s "
              f"(restored={ready.get('husk-0', {}).get('restored')})")
    def breakdown(cid):
        """[(step, seconds since the previous mark)] of one husk run."""
        st, (t0, t1) = steps.get(cid, {}), SPANS[cid]
        marks = [("ctr run started", t0)] + [(n, st[n]) for n, _ in STEP_MARKS if n in st] + [("ctr returned", t1)]
        return [(marks[i][0], marks[i][1] - marks[i - 1][1]) for i in range(1, len(marks))]

    rest = [breakdown(f"husk-{i}") for i in range(a.runs)]
    first = breakdown("husk-cold")
    names = [n for n, _ in first]
    print("\nhusk, where a `ctr run` went (from the shim's log lines in containerd's log, "
          "each step from the previous mark):\n")
    print(f"| step | first pod (cold) | later pods, median of {a.runs} |")
    print("|---|---|---|")
    for n in names:
        d = [dict(b).get(n) for b in rest]
        d = [x for x in d if x is not None]
        print(f"| {n} | {dict(first)[n]:.3f} s | {statistics.median(d) if d else float('nan'):.3f} s |")
    print()
    print(f"template store after the first pod: {tpl_bytes / 2**20:.0f} MiB of files, "
          f"{tpl_alloc / 2**20:.1f} MiB allocated (memory.bin is sparse)\n")

    def col(rows, key):
        return [r[key] for r in rows]

    print(f"Memory per running container ({a.containers} x `ctr run -d ... sleep 600` per runtime, "
          f"measured {a.settle:.0f} s after the last start; median over containers, MiB):\n")
    print("| runtime | PSS, shim + its processes | RSS, same | PSS, shim alone | processes | "
          "`ctr run -d`, median |")
    print("|---|---|---|---|---|---|")
    for name, rows, starts in (("runc", mem_runc, start_runc), ("husk", mem_husk, start_husk)):
        print(f"| {name} | {mib(statistics.median(col(rows, 'pss'))):.1f} | "
              f"{mib(statistics.median(col(rows, 'rss'))):.1f} | {mib(statistics.median(col(rows, 'shim_pss'))):.1f} | "
              f"{statistics.median(col(rows, 'procs')):.0f} | {statistics.median(starts):.3f} s |")
    hp, rp = statistics.median(col(mem_husk, "pss")), statistics.median(col(mem_runc, "pss"))
    print(f"| **husk / runc (PSS)** | **{hp / rp:.1f}x** | | | | |")
    print(f"\ntotal PSS of the {a.containers}: husk {mib(sum(col(mem_husk, 'pss'))):.1f} MiB, "
          f"runc {mib(sum(col(mem_runc, 'pss'))):.1f} MiB\n")
    g = [r["guest"] for r in mem_husk]
    print("husk's guest RAM (the VMM's MAP_PRIVATE mapping of the template's memory.bin), median per VM:\n")
    print("| mapped | RSS | PSS | private (written by the guest) | rest of the shim's PSS |")
    print("|---|---|---|---|---|")
    print(f"| {mib(statistics.median(x['Size'] for x in g)):.0f} MiB | {mib(statistics.median(x['Rss'] for x in g)):.1f} MiB | "
          f"{mib(statistics.median(x['Pss'] for x in g)):.1f} MiB | {mib(statistics.median(x['Anonymous'] for x in g)):.1f} MiB | "
          f"{mib(statistics.median(r['pss'] - r['guest']['Pss'] for r in mem_husk)):.1f} MiB |")
    pa = [(mib(r["pss_anon"]), mib(r["pss_file"])) for r in mem_husk]
    if any(x != (0, 0) for x in pa):
        print(f"\nhusk PSS split, median: anonymous {statistics.median(x[0] for x in pa):.1f} MiB, "
              f"file {statistics.median(x[1] for x in pa):.1f} MiB; runc: anonymous "
              f"{mib(statistics.median(col(mem_runc, 'pss_anon'))):.1f} MiB, file "
              f"{mib(statistics.median(col(mem_runc, 'pss_file'))):.1f} MiB")
    left = {k: v for k, v in leaks.items() if v}
    print(f"\nleft behind after the run: {left if left else 'nothing'} "
          "(shims, tasks, containers, mounts, cgroups, runc state, pod dirs, shim sockets)")

    if a.svg:
        svg_chart(a.svg, [
            ("ctr run --rm ... /bin/true, wall time (log scale)", "s", True, [
                ("runc, median", r50, "#4c72b0"),
                ("husk, restore, median", h50, "#dd8452"),
                ("husk, first pod (cold)", cold, "#c44e52")]),
            (f"PSS per running container (sleep 600, {a.containers} of each)", "MiB", False, [
                ("runc: shim + container", mib(rp), "#4c72b0"),
                ("husk: shim (VMM + guest)", mib(hp), "#dd8452"),
                ("  of which guest RAM", mib(statistics.median(x["Pss"] for x in g)), "#f2b880")]),
        ])


if __name__ == "__main__":
    main()
