#!/usr/bin/env python3
"""Agent latency benchmark: what one agent request costs, measured in one run.

- cold boot: process start -> the agent's first `Version` reply;
- restore from a template: process start -> the first ttrpc reply (husk's own
  `Reidentify` of the restored VM, `first_ttrpc_reply_s` of `--timings`);
- on a restored VM, over ONE connection (as the host keeps one per sandbox):
  the first request on the fresh connection, then N `Version` and N
  `GuestInfo` calls one after the other (median, p90); then the first
  request on a second fresh connection;
- whole CLI commands: `husk agent ping` (connect + Version + GuestInfo) and
  `husk agent exec -- /bin/true`.

The requests are sent by a minimal ttrpc client written here (hybrid vsock
`CONNECT 1024`, ttrpc framing, hand-encoded protobuf), so the figures are the
round trip through the VMM and the guest, not a client library's overhead.

Usage: perf/agent.py [--requests 50] [--restores 5] [--cli 5] [--mem-mib 128]
Run from the repository root after ./setup.sh (it needs the debug initramfs,
which has /bin/true). Prints Markdown.
"""
import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = os.path.join(ROOT, "target/guest-image/vmlinux")
INITRD = os.path.join(ROOT, "target/guest-image/initramfs-debug.cpio.gz")
ENV = dict(os.environ, RUST_LOG="warn")
SERVICE = "husk.agent.v1.Agent"
AGENT_PORT = 1024


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def fields(buf):
    """Top-level protobuf fields: {number: [value]} (varint or bytes)."""
    out, i = {}, 0
    while i < len(buf):
        key, shift = 0, 0
        while True:
            b = buf[i]; i += 1
            key |= (b & 0x7F) << shift; shift += 7
            if b < 0x80:
                break
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, shift = 0, 0
            while True:
                b = buf[i]; i += 1
                v |= (b & 0x7F) << shift; shift += 7
                if b < 0x80:
                    break
        elif wt == 2:
            n, shift = 0, 0
            while True:
                b = buf[i]; i += 1
                n |= (b & 0x7F) << shift; shift += 7
                if b < 0x80:
                    break
            v = buf[i:i + n]; i += n
        elif wt == 1:
            v = buf[i:i + 8]; i += 8
        elif wt == 5:
            v = buf[i:i + 4]; i += 4
        else:
            raise ValueError(f"wire type {wt}")
        out.setdefault(num, []).append(v)
    return out


class Agent:
    """One ttrpc connection to the agent over the VM's hybrid-vsock socket."""

    def __init__(self, uds, timeout=30.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(uds)
        self.s.sendall(f"CONNECT {AGENT_PORT}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            b = self.s.recv(1)
            if not b:
                raise ConnectionError("closed during the handshake")
            line += b
        if not line.startswith(b"OK "):
            raise ConnectionError(f"handshake: {line!r}")
        self.next_id = 1

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            b = self.s.recv(n - len(buf))
            if not b:
                raise ConnectionError("connection closed")
            buf += b
        return bytes(buf)

    def call(self, method, payload=b""):
        """Sends one request, waits for its reply; returns the reply payload."""
        req = field(1, SERVICE.encode()) + field(2, method.encode()) + field(3, payload)
        sid = self.next_id
        self.next_id += 2
        self.s.sendall(struct.pack(">IIBB", len(req), sid, 1, 0) + req)
        length, rsid, typ, _ = struct.unpack(">IIBB", self.recv_exact(10))
        body = self.recv_exact(length)
        if rsid != sid or typ != 2:
            raise ConnectionError(f"reply stream {rsid} type {typ}, want {sid} type 2")
        res = fields(body)
        status = fields(res.get(1, [b""])[0])
        code = status.get(1, [0])[0]
        if code != 0:
            raise RuntimeError(f"{method}: code {code}: {status.get(2, [b''])[0].decode()}")
        return res.get(2, [b""])[0]

    def close(self):
        self.s.close()


def timed(f):
    t = time.perf_counter()
    r = f()
    return time.perf_counter() - t, r


def connect_retrying(uds, deadline):
    while True:
        try:
            a = Agent(uds, timeout=10)
            a.call("Version")
            return a
        except (OSError, ConnectionError):
            if time.perf_counter() > deadline:
                raise
            time.sleep(0.05)


def pct(vals, q):
    s = sorted(vals)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def ms(x):
    return f"{x * 1000:.1f} ms"


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, env=ENV, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--restores", type=int, default=5)
    ap.add_argument("--cli", type=int, default=5)
    ap.add_argument("--mem-mib", type=int, default=128)
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    ap.add_argument("--kernel", default=KERNEL)
    ap.add_argument("--initrd", default=INITRD)
    ap.add_argument("--skip-cold", action="store_true", help="no separate cold boot (saves ~20 s)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="husk-agent-perf-")
    tpl = os.path.join(tmp, "tpl")
    check = run([a.husk, "check"]).stdout
    kind = next((l for l in check.splitlines() if l.startswith("virtualization:")), "virtualization: ?")
    rows = []
    vm = None
    try:
        if not a.skip_cold:
            uds = os.path.join(tmp, "cold.sock")
            t0 = time.perf_counter()
            vm = subprocess.Popen([a.husk, "vm", "run", "--kernel", a.kernel, "--initrd", a.initrd,
                                   "--mem-mib", str(a.mem_mib), "--vsock-uds", uds,
                                   "--console", "/dev/null", "--timeout", "900"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
            connect_retrying(uds, t0 + 900).close()
            rows.append(("cold boot: process start -> first Version reply", ms(time.perf_counter() - t0)))
            vm.terminate()
            vm.wait()
            vm = None
        t0 = time.perf_counter()
        r = run([a.husk, "template", "create", "--kernel", a.kernel, "--initrd", a.initrd,
                 "--mem-mib", str(a.mem_mib), "--out", tpl])
        if r.returncode != 0:
            raise SystemExit(f"template create: {r.stderr}")
        rows.append(("template create (boot + snapshot)", ms(time.perf_counter() - t0)))

        restores = []
        for i in range(a.restores):
            r = run([a.husk, "vm", "run", "--from-template", tpl, "--vsock-uds", os.path.join(tmp, f"r{i}.sock"),
                     "--oneshot", "--timings", "--console", "/dev/null", "--timeout", "120", "--name", f"r{i}"])
            line = next((l for l in r.stdout.splitlines() if l.startswith("first_ttrpc_reply_s:")), None)
            if r.returncode != 0 or line is None:
                raise SystemExit(f"restore {i}: rc {r.returncode}: {r.stderr}")
            restores.append(float(line.split(": ")[1]))
        rows.append((f"restore: process start -> first reply (Reidentify), median of {a.restores}",
                     ms(statistics.median(restores))))
        rows.append((f"restore: same, max of {a.restores}", ms(max(restores))))

        # One restored VM for the request latencies.
        uds = os.path.join(tmp, "vm.sock")
        t0 = time.perf_counter()
        vm = subprocess.Popen([a.husk, "vm", "run", "--from-template", tpl, "--vsock-uds", uds,
                               "--console", "/dev/null", "--timeout", "3600", "--name", "bench"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        # Let husk's own Reidentify go first (it is part of every restore).
        time.sleep(0.5)
        deadline = time.perf_counter() + 60
        while True:
            try:
                conn = Agent(uds, timeout=30)
                break
            except (OSError, ConnectionError):
                if time.perf_counter() > deadline:
                    raise
                time.sleep(0.05)
        first, _ = timed(lambda: conn.call("Version"))
        rows.append(("restored VM, fresh connection: first Version", ms(first)))
        for method in ("Version", "GuestInfo"):
            lat = [timed(lambda: conn.call(method))[0] for _ in range(a.requests)]
            rows.append((f"restored VM, one connection: {method}, median of {a.requests}", ms(statistics.median(lat))))
            rows.append((f"restored VM, one connection: {method}, p90", ms(pct(lat, 0.9))))
        conn.close()
        conn2 = Agent(uds, timeout=30)
        second, _ = timed(lambda: conn2.call("GuestInfo"))
        conn2.close()
        rows.append(("restored VM, second fresh connection: first GuestInfo", ms(second)))

        for name, argv in [("husk agent ping", ["agent", "ping", "--uds", uds]),
                           ("husk agent exec -- /bin/true", ["agent", "exec", "--uds", uds, "--", "/bin/true"])]:
            walls = []
            for _ in range(a.cli):
                dt, r = timed(lambda: run([a.husk] + argv))
                if r.returncode != 0:
                    raise SystemExit(f"{name}: rc {r.returncode}: {r.stderr}")
                walls.append(dt)
            rows.append((f"{name} (whole command), median of {a.cli}", ms(statistics.median(walls))))
            rows.append((f"{name} (whole command), min", ms(min(walls))))
    finally:
        if vm is not None:
            vm.terminate()
            vm.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"host {kind.split(': ', 1)[1]}; guest {a.mem_mib} MiB, 1 vCPU, {os.path.basename(a.initrd)}\n")
    print("| what | time |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
