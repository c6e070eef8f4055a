#!/usr/bin/env python3
"""Writes a gzip'd cpio (newc) initramfs with the husk agent as /init.

Usage: mkinitramfs.py OUT AGENT_BINARY

Made without root and reproducibly: fixed owners, mtimes and inode numbers,
and /dev/console as a device node (the kernel opens it for init's stdio).

The gzip stream is *stored* (level 0): the guest kernel unpacks the initramfs
in its own code, and on nested PVM hosts every kernel instruction is emulated
(~1 us each): inflating ~1 MB took ~30 s there, copying stored blocks takes a
fraction of a second. The VMM reads the file at host speed either way.
Set HUSK_INITRAMFS_GZIP_LEVEL to compress anyway.
"""
import gzip
import os
import sys


def entry(ino, name, mode, data=b"", rdev=(0, 0), nlink=1):
    name_b = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = hdr + name_b
    out += b"\0" * ((4 - len(out) % 4) % 4)
    out += data
    out += b"\0" * ((4 - len(out) % 4) % 4)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out, agent = sys.argv[1], sys.argv[2]
    with open(agent, "rb") as f:
        init = f.read()
    items = [
        ("dev", 0o040755, b"", (0, 0), 2),
        ("dev/console", 0o020600, b"", (5, 1), 1),
        ("proc", 0o040755, b"", (0, 0), 2),
        ("sys", 0o040755, b"", (0, 0), 2),
        ("run", 0o040755, b"", (0, 0), 2),
        ("tmp", 0o041777, b"", (0, 0), 2),
        ("init", 0o100755, init, (0, 0), 1),
    ]
    blob = b"".join(entry(i + 1, n, m, d, r, l) for i, (n, m, d, r, l) in enumerate(items))
    blob += entry(0, "TRAILER!!!", 0, nlink=1)
    blob += b"\0" * ((512 - len(blob) % 512) % 512)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        level = int(os.environ.get("HUSK_INITRAMFS_GZIP_LEVEL", "0"))
        f.write(gzip.compress(blob, compresslevel=level, mtime=0))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
