#!/usr/bin/env python3
"""Writes the hand-made seed inputs of fuzz/corpus/ (run from the repo root).

Usage: fuzz/make_seeds.py STATE_JSON OCI_TAR
  STATE_JSON  a snapshot's state.json (arrow-vmm PUT /vm/snapshot of the test guest)
  OCI_TAR     an image exported with `asdk export` (e.g. of the test guest ELF)
Inputs that fuzzing found later are added by fuzz/run.sh's users with
`-merge=1`; this script only makes the starting points.
"""
import hashlib
import os
import struct
import sys
import tarfile
import io

C = "fuzz/corpus"


def put(target, name, data):
    os.makedirs(f"{C}/{target}", exist_ok=True)
    with open(f"{C}/{target}/{name}", "wb") as f:
        f.write(data)


# ---- control API requests
put("http_request", "get", b"GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\n")
put("http_request", "snapshot",
    b'PUT /vm/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{"dir":"/a"}\n')
put("http_request", "chunked",
    b"PUT /vm/pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")

# ---- state.json: raw file (mode 0) and body with a valid header (mode 1)
state = open(sys.argv[1], "rb").read()
body = state.split(b"\n", 1)[1]
put("snapshot_state", "raw", b"\x00" + state)
put("snapshot_state", "body", b"\x80" + body)

# ---- notify device: APP_STARTED, APP_READY 52, clone reads, APP_EXITED 3
def nop(off, kind, value):
    return bytes([off, kind]) + struct.pack("<I", value)

put("notify_device", "lifecycle",
    nop(0, 2, 0x01 << 24) + nop(0, 2, (0x02 << 24) | 52) + nop(0, 6, 0) + nop(4, 6, 0)
    + nop(0, 2, 0x05 << 24) + nop(0, 2, (0x03 << 24) | 3))

# ---- vsock: guest memory with queues at 0x0 (RX), 0x1000 (TX), 0x2000 (EV)
MEM = 0x20000
QS = 64


def vsock_image(packets):
    mem = bytearray(0x8000)

    def desc(q, i, addr, ln, flags, nxt=0):
        struct.pack_into("<QIHH", mem, q * 0x1000 + i * 16, addr, ln, flags, nxt)

    def avail(q, heads):
        struct.pack_into("<HH", mem, q * 0x1000 + 0x400, 0, len(heads))
        for i, h in enumerate(heads):
            struct.pack_into("<H", mem, q * 0x1000 + 0x404 + 2 * i, h)

    # RX: 8 device-writable 4 KiB buffers from 0x8000 (beyond the image: zero)
    for i in range(8):
        desc(0, i, 0x8000 + i * 0x1000 if 0x8000 + i * 0x1000 < MEM else 0x8000, 0x1000 // 2, 2)
    avail(0, list(range(8)))
    # EV: one buffer
    desc(2, 0, 0x7f00, 8, 2)
    avail(2, [0])
    # TX: one chain per packet, headers at 0x3000 + 0x200*i
    heads = []
    for i, (op, dst_port, payload) in enumerate(packets):
        at = 0x3000 + 0x200 * i
        hdr = struct.pack("<QQIIIHHIII", 3, 2, 1024 + i, dst_port, len(payload), 1, op, 0, 65536, 0)
        mem[at:at + 44] = hdr
        mem[at + 44:at + 44 + len(payload)] = payload
        desc(1, i, at, 44 + len(payload), 0)
        heads.append(i)
    avail(1, heads)
    return bytes(mem)


# op: 1 REQUEST, 2 RESPONSE, 3 RST, 4 SHUTDOWN, 5 RW, 6 CREDIT_UPDATE, 7 CREDIT_REQUEST
img = vsock_image([(1, 52, b""), (5, 52, b"hello"), (7, 52, b""), (4, 52, b""), (3, 52, b"")])
put("vsock_queues", "request_rw_shutdown", b"\x00" + img)
put("vsock_queues", "unfolded", b"\x01" + img)

# ---- virtio-mmio: a driver bringing the vsock device up, then notifying TX
ops = []


def w(off, val):
    ops.append(bytes([0x01]) + struct.pack("<HI", off, val))


def r(off):
    ops.append(bytes([0x00]) + struct.pack("<HI", off, 0))


for off in (0x000, 0x004, 0x008, 0x00c):
    r(off)
w(0x070, 0)          # reset
w(0x070, 1)          # ACKNOWLEDGE
w(0x070, 3)          # DRIVER
w(0x014, 1)          # device features sel 1
r(0x010)
w(0x024, 1)          # driver features sel 1
w(0x020, 1)          # VERSION_1
w(0x070, 11)         # FEATURES_OK
for q in range(3):
    base = q * 0x1000
    w(0x030, q)
    r(0x034)
    w(0x038, QS)
    w(0x080, base)
    w(0x084, 0)
    w(0x090, base + 0x400)
    w(0x094, 0)
    w(0x0a0, base + 0x800)
    w(0x0a4, 0)
    w(0x044, 1)
w(0x070, 15)         # DRIVER_OK
r(0x100)             # guest CID (config space)
w(0x050, 1)          # notify TX
w(0x064, 1)          # interrupt ACK
r(0x060)
put("virtio_mmio", "bring_up", bytes([len(ops)]) + b"".join(ops) + img)

# ---- images: OCI tar (mode 3), and its cpio, spec and manifest blobs
tar = open(sys.argv[2], "rb").read()
put("image_import", "oci_tar", b"\x03" + tar)
with tarfile.open(fileobj=io.BytesIO(tar)) as t:
    for m in t.getmembers():
        if not m.isfile() or not m.name.startswith("blobs/"):
            continue
        data = t.extractfile(m).read()
        if data.startswith(b"070701"):
            put("image_import", "cpio", b"\x00" + data)
        elif b'"schemaVersion"' in data:
            put("image_import", "manifest", b"\x02" + data)
        elif data.startswith(b"{"):
            put("image_import", "spec", b"\x01" + data)
