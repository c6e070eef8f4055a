#!/usr/bin/env python3
"""Writes the seed corpora under corpus/<target>/ (valid inputs, one per
file). The committed seeds came from here; the input layouts are described
at the top of each fuzz_targets/<target>.rs. snapshot_load's seed is a real
snapshot.json (see README.md)."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

NEXT, WRITE, INDIRECT = 1, 2, 4
DATA = 0x3000  # where virtq_chain and blk_request copy the input's tail


def u8(v): return struct.pack("<B", v)
def u16(v): return struct.pack("<H", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)


def desc(addr, length, flags, nxt=0):
    return u64(addr) + u32(length) + u16(flags) + u16(nxt)


def chain(bufs, first=0):
    """Descriptors first.. linked in order: [(addr, len, flags)]."""
    out = b""
    for i, (a, l, f) in enumerate(bufs):
        last = i + 1 == len(bufs)
        out += desc(a, l, f if last else f | NEXT, first + i + 1)
    return out


def blk_hdr(type_, sector):
    return u32(type_) + u32(0) + u64(sector)


def vsock_hdr(op, length=0, src_port=5000, dst_port=1234, buf_alloc=65536, fwd_cnt=0, flags=0):
    return (u64(3) + u64(2) + u32(src_port) + u32(dst_port) + u32(length) + u16(1)
            + u16(op) + u32(flags) + u32(buf_alloc) + u32(fwd_cnt))


def data_area(pieces):
    """Bytes for guest memory at DATA: {address: bytes}."""
    end = max(a + len(b) for a, b in pieces.items()) - DATA
    buf = bytearray(end)
    for a, b in pieces.items():
        buf[a - DATA:a - DATA + len(b)] = b
    return bytes(buf)


def ring_input(heads, table, data, size=256, next_avail=0, avail_idx=None, prefix=b""):
    avail_idx = len(heads) if avail_idx is None else avail_idx
    out = prefix
    if size is not None:
        out += u16(size) + u16(next_avail) + u16(avail_idx)
    out += u8(len(heads)) + b"".join(u16(h) for h in heads)
    return out + u16(len(table)) + table + data


def virtq_chain():
    read = chain([(0x3000, 16, 0), (0x4000, 512, WRITE), (0x5000, 1, WRITE)])
    yield "blk_read", ring_input([0], read, data_area({0x3000: blk_hdr(0, 1)}))
    pkt = vsock_hdr(5, 5) + b"hello"
    yield "vsock_tx", ring_input([0], desc(0x3000, len(pkt), 0), data_area({0x3000: pkt}))
    yield "rx_buffer", ring_input([0], chain([(0x3000, 44, WRITE), (0x4000, 4096, WRITE)]),
                                  data_area({0x3000: b"\0"}))
    itable = chain([(0x3000, 16, 0), (0x4000, 512, WRITE), (0x5000, 1, WRITE)])
    yield "indirect", ring_input([0], desc(0x3100, len(itable), INDIRECT),
                                 data_area({0x3000: blk_hdr(0, 0), 0x3100: itable}))
    loop = desc(0x3000, 44, NEXT, 1) + desc(0x3000, 44, NEXT, 0)
    yield "loop", ring_input([0], loop, data_area({0x3000: vsock_hdr(5, 0)}), size=16)
    yield "two_chains", ring_input([0, 3], read + chain([(0x3000, 49, 0)], first=3),
                                   data_area({0x3000: pkt}))


def blk_request():
    def req(type_, sector, bufs, extra=None, flags=0):
        pieces = {0x3000: blk_hdr(type_, sector)}
        pieces.update(extra or {})
        return ring_input([0], chain(bufs), data_area(pieces), size=None, prefix=u8(flags))
    status = (0x5000, 1, WRITE)
    yield "read", req(0, 2, [(0x3000, 16, 0), (0x4000, 1024, WRITE), status])
    yield "read_ro", req(0, 2, [(0x3000, 16, 0), (0x4000, 512, WRITE), status], flags=1)
    yield "write", req(1, 4, [(0x3000, 16, 0), (0x4000, 512, 0), status],
                       {0x4000: bytes(range(256)) * 2})
    yield "flush", req(4, 0, [(0x3000, 16, 0), status])
    yield "get_id", req(8, 0, [(0x3000, 16, 0), (0x4000, 20, WRITE), status])
    seg = u64(8) + u32(8) + u32(0)
    yield "discard", req(11, 0, [(0x3000, 16, 0), (0x4000, 16, 0), status], {0x4000: seg})
    seg = u64(16) + u32(4) + u32(1)
    yield "write_zeroes", req(13, 0, [(0x3000, 16, 0), (0x4000, 16, 0), status], {0x4000: seg})
    # Three requests in one kick: read, a bad type, a write.
    table = (chain([(0x3000, 16, 0), (0x4000, 512, WRITE), (0x5000, 1, WRITE)])
             + chain([(0x3010, 16, 0), (0x5001, 1, WRITE)], first=3)
             + chain([(0x3020, 16, 0), (0x4200, 512, 0), (0x5002, 1, WRITE)], first=5))
    pieces = {0x3000: blk_hdr(0, 0) + blk_hdr(0x55, 0) + blk_hdr(1, 9)}
    yield "batch", ring_input([0, 3, 5], table, data_area(pieces), size=None, prefix=u8(0))


def fuse_in(op, nodeid, args, unique=1):
    return u32(40 + len(args)) + u32(op) + u64(unique) + u64(nodeid) + bytes(16) + args


def fuse_request():
    def req(reqs, flags=0):
        """reqs: [(fuse request bytes)], each answered into 512 bytes."""
        pieces, table, heads = {}, b"", []
        for i, r in enumerate(reqs):
            a, w = 0x3000 + 0x200 * i, 0x5000 + 0x200 * i
            pieces[a] = r
            heads.append(2 * i)
            table += chain([(a, len(r), 0), (w, 512, WRITE)], first=2 * i)
        pieces[0x5000 + 0x200 * len(reqs)] = b"\0"
        return ring_input(heads, table, data_area(pieces), size=None, prefix=u8(flags))
    init = fuse_in(26, 0, u32(7) + u32(36) + u32(0x20000) + u32((1 << 5) | (1 << 22)))
    yield "init", req([init])
    yield "init_ro", req([init], flags=1)
    yield "init_lookup_readlink", req([init, fuse_in(1, 1, b"up\0", 2), fuse_in(5, 2, b"", 3)])
    yield "lookup_dotdot", req([init, fuse_in(1, 1, b"..\0", 2)])
    # MKDIR(mode 0755, umask 0, "d") then CREATE(flags O_RDWR, mode 0644, "f")
    yield "mkdir_create", req([init, fuse_in(9, 1, u32(0o755) + u32(0) + b"d\0", 2),
                               fuse_in(35, 1, u32(2) + u32(0o644) + u32(0) + u32(0) + b"f\0", 3)])
    yield "hiprio_forget", req([fuse_in(2, 1, u64(1))], flags=2)


def fuse_names():
    """Ops: (op, parent selector, ...) as fuzz_targets/fuse_names.rs reads them."""
    def raw(n): return u8(len(n)) + n
    def bad(i): return u8(0x80 | i)
    def mode(perm, kind=0): return u16((kind << 12) | perm)
    CREATE, MKDIR, MKNOD, SYMLINK, LINK, RENAME, RENAME2, SETATTR, LOOKUP = range(9)
    yield "create_setid", u8(CREATE) + u8(0) + mode(0o6755) + raw(b"f")
    yield "mkdir_create_inside", (u8(MKDIR) + u8(0) + mode(0o2775, 1) + raw(b"d")
                                  + u8(CREATE) + u8(1) + mode(0o644) + raw(b"x"))
    yield "hostile", (u8(CREATE) + u8(0) + mode(0o644) + bad(0)
                      + u8(MKDIR) + u8(0) + mode(0o755, 1) + bad(5)
                      + u8(SYMLINK) + u8(0) + bad(6) + raw(b"t")
                      + u8(RENAME) + u8(0) + u8(0) + raw(b"file") + bad(6)
                      + u8(RENAME2) + u8(0) + u8(0) + u8(2) + raw(b"dir") + bad(8)
                      + u8(LINK) + u8(0) + u8(0) + bad(11)
                      + u8(MKNOD) + u8(0) + mode(0o644, 2) + bad(9))
    yield "through_links", (u8(LOOKUP) + u8(0) + raw(b"up")
                            + u8(CREATE) + u8(1) + mode(0o644) + raw(b"x")
                            + u8(LOOKUP) + u8(0) + raw(b"abs")
                            + u8(MKDIR) + u8(2) + mode(0o755, 1) + raw(b"x"))
    yield "chmod_setuid", (u8(LOOKUP) + u8(0) + raw(b"file")
                           + u8(SETATTR) + u8(1) + mode(0o4755))
    yield "long_names", (u8(CREATE) + u8(0) + mode(0o644) + bad(20)
                         + u8(CREATE) + u8(0) + mode(0o644) + bad(21)
                         + u8(MKDIR) + u8(0) + mode(0o755, 1) + bad(23))


def vsock_packet():
    def tx(op, dst_sel=0, data=b"", src_sel=0, buf_alloc=65536, fwd=0, flags=0, hflags=0):
        return (u8(0) + u8(flags) + u8(src_sel) + u8(dst_sel) + u16(op) + u32(hflags)
                + u32(buf_alloc) + u32(fwd) + u16(len(data)) + data[:16])

    def rx(n=8, size=4096, kind=3):
        return u8(2) + u8(n - 1) + u16(size) + u8(kind)

    def answer(i, sel, data=b"", hflags=0, buf_alloc=65536, fwd=0):
        return (u8(7) + u8(i) + u8(sel) + u16(len(data)) + u32(hflags) + u32(buf_alloc)
                + u32(fwd) + data[:16])

    connect = rx() + tx(1)
    yield "guest_connect_and_send", connect + tx(5, data=b"hello") + (
        u8(5) + u8(0) + u16(3) + b"abc")
    yield "guest_credit_request", connect + tx(7) + tx(6, fwd=5)
    yield "guest_shutdown", connect + tx(4, hflags=3)
    yield "guest_refused", rx() + tx(1, dst_sel=2)
    # Host CONNECT 1024, the guest answers RESPONSE, then data both ways.
    yield "host_connect", (rx() + u8(4) + u8(2) + answer(0, 0)
                           + u8(5) + u8(0) + u16(5) + b"hello" + answer(0, 1, b"world"))
    yield "host_connect_bad_line", rx() + u8(4) + u8(1) + u8(9) + b"CONNECT x"
    yield "transport_reset", u8(3) + u8(8) + connect + u8(8)
    raw = u8(1) + u8(1) + u64(0x1_0000) + u32(44) + u16(NEXT) + u16(1) \
        + u64(0x1_0000) + u32(44) + u16(NEXT) + u16(0) + u8(1)
    yield "raw_loop", rx() + raw


def mmio_regs():
    def rec(kind, offset, value):
        return u8(kind) + u16(offset) + u32(value)
    init_q0 = rec(0x16, 16, 0x1_0000)
    yield "generic_init", u8(0) + init_q0 + rec(1, 0x50, 0) + rec(5, 0, 0) + rec(7, 0, 0)
    manual = [(0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x70, 11), (0x30, 1), (0x38, 8),
              (0x80, 0x2_0000), (0x90, 0x2_1000), (0xa0, 0x2_2000), (0x44, 1), (0x70, 15),
              (0x50, 1), (0x64, 1)]
    yield "generic_manual", u8(0) + b"".join(rec(1, o, v) for o, v in manual) + rec(5, 0, 0)
    yield "generic_reads", u8(0) + b"".join(rec(0, o, 0) for o in range(0, 0x100, 4)) \
        + rec(2 | (4 << 3), 0x100, 0) + rec(3 | (2 << 3), 0x102, 7)
    yield "blk_init", u8(1) + rec(0x16, 256, 0x1_0000) + rec(1, 0x50, 0) + rec(5, 0, 0)


def varint(v):
    out = b""
    while True:
        b = v & 0x7f
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, payload):
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def agent_proto():
    reid = (field(1, bytes(range(32))) + field(2, b"pod-1.local") + field(3, b"4f1c2b7e-0d3a")
            + varint(4 << 3) + varint(1_700_000_000_000_000_000))
    yield "reidentify", u8(0) + reid
    info = (field(1, b"0.1.0") + field(2, b"6.1.0-husk") + field(3, b"boot") + field(4, b"h")
            + varint(5 << 3) + varint(131072) + varint(6 << 3) + varint(100000)
            + bytes([7 << 3 | 1]) + struct.pack("<d", 1.5) + field(8, b"id"))
    yield "guest_info_response", u8(7) + info
    yield "version_response", u8(5) + field(1, b"0.1.0") + varint(2 << 3) + varint(2)
    req = field(1, b"husk.agent.v1.Agent") + field(2, b"Reidentify") + field(3, reid)
    yield "frame_request", u8(10) + struct.pack(">IIBB", len(req), 1, 1, 0) + req
    resp = field(2, info)
    yield "frame_response", u8(10) + struct.pack(">IIBB", len(resp), 1, 2, 0) + resp
    mount = varint(1 << 3) + varint(2) + field(2, b"pod") + field(3, b"/mnt/pod")
    yield "mount_request", u8(12) + mount
    yield "mount_block", u8(12) + varint(1 << 3) + varint(1) + field(2, b"data") + field(3, b"/mnt/d") + field(4, b"ext4")
    exe = field(1, b"/bin/sh") + field(1, b"-c") + field(1, b"echo hi") + field(2, b"A=B") + field(3, b"/")
    yield "exec_request", u8(14) + exe
    req = field(1, b"husk.agent.v1.Agent") + field(2, b"Exec") + field(3, exe)
    yield "frame_exec", u8(10) + struct.pack(">IIBB", len(req), 1, 1, 0) + req


def net_frame():
    """features byte (bit 0 MRG_RXBUF, bit 1 offloads; high nibble picks the
    tap's offloads), then actions: 1 = TX frame (len, cut, 16 seed bytes),
    2 = RX chains (n-1, size, kind), 3 = host frame (mode, len)."""
    def tx(length, cut=0):
        return u8(1) + u16(length) + u16(cut) + bytes(range(16))[:length]

    def rx(n=8, size=2048, kind=4):
        return u8(2) + u8(n - 1) + u16(size - 1) + u8(kind)

    def host(length):
        return u8(3) + u8(1) + u16(length) + bytes(16)

    yield "tx_rx", u8(0) + tx(72, 12) + rx() + host(100)
    yield "mergeable_big", u8(0x11) + rx(16, 1500) + host(9000) + host(60)
    yield "offloads_no_buffers", u8(0x22) + host(1514) + host(60) + rx(4, 4096)
    yield "bad_rx_then_good", u8(1) + rx(2, 2048, 0) + rx(2, 2048, 1) + rx(4) + host(200)


def main():
    for name, gen in [("virtq_chain", virtq_chain), ("blk_request", blk_request),
                      ("vsock_packet", vsock_packet), ("mmio_regs", mmio_regs),
                      ("agent_proto", agent_proto), ("fuse_request", fuse_request),
                      ("net_frame", net_frame), ("fuse_names", fuse_names)]:
        d = os.path.join(HERE, "corpus", name)
        os.makedirs(d, exist_ok=True)
        for seed, data in gen():
            with open(os.path.join(d, seed), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
