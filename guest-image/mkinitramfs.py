#!/usr/bin/env python3
"""Writes a gzip'd cpio (newc) initramfs with the husk agent as /init.

Usage: mkinitramfs.py OUT AGENT_BINARY [--busybox BUSYBOX_BINARY]

Made without root and reproducibly: fixed owners, mtimes and inode numbers,
and /dev/console as a device node (the kernel opens it for init's stdio).

--busybox (the debug image) adds a statically linked busybox as /bin/busybox
and a symlink to it for each applet, at the paths `busybox --list-full`
gives (e.g. usr/bin/sha256sum), so `husk agent exec` has tools to run. The
applets that would replace the agent as init (init, linuxrc, sbin/init) are
left out.

The gzip stream is *stored* (level 0): the guest kernel unpacks the initramfs
in its own code, and on nested PVM hosts every kernel instruction is emulated
(~1 us each): inflating ~1 MB took ~30 s there, copying stored blocks takes a
fraction of a second. The VMM reads the file at host speed either way.
Set HUSK_INITRAMFS_GZIP_LEVEL to compress anyway.
"""
import argparse
import gzip
import os
import posixpath
import subprocess
import sys

DIR = 0o040755
FILE = 0o100755
SYMLINK = 0o120777
BUSYBOX = "bin/busybox"
# Applets that must not shadow the agent as the kernel's init.
NOT_INIT = {"init", "linuxrc", "sbin/init"}


def entry(ino, name, mode, data=b"", rdev=(0, 0), nlink=1):
    name_b = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = hdr + name_b
    out += b"\0" * ((4 - len(out) % 4) % 4)
    out += data
    out += b"\0" * ((4 - len(out) % 4) % 4)
    return out


def busybox_items(busybox):
    """The entries for busybox and its applet links: parent directories
    first, then /bin/busybox, then one symlink per applet, sorted."""
    with open(busybox, "rb") as f:
        binary = f.read()
    listing = subprocess.run(
        [busybox, "--list-full"], check=True, capture_output=True, text=True
    ).stdout
    links = sorted(
        p.strip().lstrip("/")
        for p in listing.splitlines()
        if p.strip() and p.strip().lstrip("/") not in NOT_INIT | {BUSYBOX}
    )
    if not links:
        sys.exit(f"mkinitramfs: {busybox} --list-full listed no applets")
    dirs = set()
    for path in links + [BUSYBOX]:
        parent = posixpath.dirname(path)
        while parent:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    items = [(d, DIR, b"", (0, 0), 2) for d in sorted(dirs)]
    items.append((BUSYBOX, FILE, binary, (0, 0), 1))
    items += [(p, SYMLINK, b"/" + BUSYBOX.encode(), (0, 0), 1) for p in links]
    return items


def main():
    ap = argparse.ArgumentParser(
        description="Writes a gzip'd cpio initramfs with the husk agent as /init."
    )
    ap.add_argument("out")
    ap.add_argument("agent")
    ap.add_argument("--busybox", help="a static busybox to add with its applet links")
    args = ap.parse_args()
    with open(args.agent, "rb") as f:
        init = f.read()
    items = [
        ("dev", DIR, b"", (0, 0), 2),
        ("dev/console", 0o020600, b"", (5, 1), 1),
        ("proc", DIR, b"", (0, 0), 2),
        ("sys", DIR, b"", (0, 0), 2),
        ("run", DIR, b"", (0, 0), 2),
        ("tmp", 0o041777, b"", (0, 0), 2),
        ("init", FILE, init, (0, 0), 1),
    ]
    if args.busybox:
        items += busybox_items(args.busybox)
    blob = b"".join(entry(i + 1, n, m, d, r, l) for i, (n, m, d, r, l) in enumerate(items))
    blob += entry(0, "TRAILER!!!", 0, nlink=1)
    blob += b"\0" * ((512 - len(blob) % 512) % 512)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        level = int(os.environ.get("HUSK_INITRAMFS_GZIP_LEVEL", "0"))
        f.write(gzip.compress(blob, compresslevel=level, mtime=0))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
