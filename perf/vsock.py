#!/usr/bin/env python3
"""vsock benchmark: boot to the first ttrpc reply, then host<->guest
throughput and round-trip latency through the hybrid-vsock socket, next to
the same workload over a host Unix socket loopback measured in the same run.

Usage: perf/vsock.py [--mib 8] [--rtt-count 500] [--mem-mib 128]
Run from the repository root after ./setup.sh. Prints Markdown.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ECHO_PORT = 1026
CHUNK = 64 * 1024


def hybrid_connect(path, port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"CONNECT %d\n" % port)
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            raise RuntimeError("closed during handshake")
        line += b
    if not line.startswith(b"OK "):
        raise RuntimeError("bad handshake reply %r" % line)
    return s


def throughput(sock, nbytes):
    """Echo nbytes through sock; returns MiB/s of payload each way."""
    data = os.urandom(CHUNK)
    got = 0

    def writer():
        sent = 0
        while sent < nbytes:
            n = min(CHUNK, nbytes - sent)
            sock.sendall(data[:n])
            sent += n
        sock.shutdown(socket.SHUT_WR)

    t0 = time.perf_counter()
    w = threading.Thread(target=writer)
    w.start()
    while True:
        b = sock.recv(CHUNK)
        if not b:
            break
        got += len(b)
    w.join()
    dt = time.perf_counter() - t0
    if got != nbytes:
        raise RuntimeError(f"echoed {got} of {nbytes} bytes")
    return nbytes / dt / (1 << 20)


def rtt(sock, count):
    """Median round trip of a 64-byte message, in microseconds."""
    msg = b"x" * 64
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        sock.sendall(msg)
        got = b""
        while len(got) < len(msg):
            got += sock.recv(len(msg) - len(got))
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99) - 1]


def unix_echo_server(path):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)

    def serve(c):
        while True:
            b = c.recv(CHUNK)
            if not b:
                break
            c.sendall(b)
        c.close()

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=8)
    ap.add_argument("--rtt-count", type=int, default=500)
    ap.add_argument("--mem-mib", type=int, default=128)
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    a = ap.parse_args()
    nbytes = a.mib << 20
    tmp = tempfile.mkdtemp(prefix="husk-perf-")
    uds = os.path.join(tmp, "v.sock")
    check = subprocess.run([a.husk, "check"], capture_output=True, text=True).stdout
    kind = next((l for l in check.splitlines() if l.startswith("virtualization:")), "virtualization: ?")

    t0 = time.perf_counter()
    vm = subprocess.Popen(
        [a.husk, "vm", "run", "--kernel", os.path.join(ROOT, "target/guest-image/vmlinux"),
         "--initrd", os.path.join(ROOT, "target/guest-image/initramfs.cpio.gz"),
         "--mem-mib", str(a.mem_mib), "--vsock-uds", uds, "--console", os.path.join(tmp, "console.log"),
         "--cmdline", f"husk.echo_port={ECHO_PORT}", "--timeout", "1200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
    ping = subprocess.run([a.husk, "agent", "ping", "--uds", uds, "--timeout", "900"],
                          capture_output=True, text=True)
    t_ready = time.perf_counter() - t0
    if ping.returncode != 0:
        vm.send_signal(signal.SIGTERM)
        sys.exit("agent unreachable: " + ping.stderr)
    try:
        vs_tp = throughput(hybrid_connect(uds, ECHO_PORT), nbytes)
        vs_rtt = rtt(hybrid_connect(uds, ECHO_PORT), a.rtt_count)
    finally:
        vm.send_signal(signal.SIGTERM)
        vm.wait()
    upath = os.path.join(tmp, "echo.sock")
    srv = unix_echo_server(upath)
    def uconn():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(upath)
        return s
    ux_tp = throughput(uconn(), nbytes)
    ux_rtt = rtt(uconn(), a.rtt_count)
    srv.close()

    print(f"host {kind.split(': ', 1)[1]}; guest {a.mem_mib} MiB, 1 vCPU; echo of {a.mib} MiB, {a.rtt_count} round trips\n")
    print(f"process start -> first successful ttrpc reply (husk agent ping): {t_ready:.2f} s\n")
    print("| workload | vsock (host<->guest) | host Unix socket loopback | vsock / loopback |")
    print("|---|---|---|---|")
    print(f"| echo throughput, each way | {vs_tp:.2f} MiB/s | {ux_tp:.1f} MiB/s | {vs_tp / ux_tp:.4f} |")
    print(f"| 64-byte round trip, median | {vs_rtt[0]:.0f} us | {ux_rtt[0]:.0f} us | {vs_rtt[0] / ux_rtt[0]:.1f}x |")
    print(f"| 64-byte round trip, p99 | {vs_rtt[1]:.0f} us | {ux_rtt[1]:.0f} us | {vs_rtt[1] / ux_rtt[1]:.1f}x |")


if __name__ == "__main__":
    main()
