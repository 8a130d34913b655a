#!/usr/bin/env python3
"""Writes the hand-made seed inputs of fuzz/corpus/ (run from the repo root).

Usage: fuzz/make_seeds.py [STATE_JSON OCI_TAR]
  STATE_JSON  a snapshot's state.json (arrow-vmm PUT /vm/snapshot of the test guest)
  OCI_TAR     an image exported with `asdk export` (e.g. of the test guest ELF)
Without the two files, the seeds that need them (snapshot_state,
image_import) are left as they are.
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
FILES = len(sys.argv) == 3
if FILES:
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
if FILES:
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


# ---- split queues for pmem and virtio-mem: chains of (addr, len, flags)
def queue_image(qsize, avail_off, chains, data):
    """Guest memory: descriptor table at 0, avail ring at avail_off, one
    chain per entry of `chains`, `data` as {address: bytes}."""
    mem = bytearray(0x8000)
    i = 0
    heads = []
    for chain in chains:
        heads.append(i)
        for j, (addr, ln, flags) in enumerate(chain):
            last = j + 1 == len(chain)
            struct.pack_into("<QIHH", mem, i * 16, addr, ln, flags | (0 if last else 1),
                             0 if last else i + 1)
            i += 1
    assert i <= qsize
    struct.pack_into("<HH", mem, avail_off, 0, len(heads))
    for k, h in enumerate(heads):
        struct.pack_into("<H", mem, avail_off + 4 + 2 * k, h)
    for at, b in data.items():
        mem[at:at + len(b)] = b
    return bytes(mem)


W = 2  # VRING_DESC_F_WRITE

# pmem: FLUSH, an unknown type, a chain without a response, one without a
# request; header: mode, file length - 1 (le16), config reads (start, size)
pm = queue_image(64, 0x400, [
    [(0x3000, 4, 0), (0x3008, 4, W)],
    [(0x3010, 4, 0), (0x3018, 4, W)],
    [(0x3020, 4, 0)],
    [(0x3030, 4, W)],
], {0x3000: struct.pack("<I", 0), 0x3010: struct.pack("<I", 7)})
cfg = bytes([0, 3, 8, 3])
put("pmem_queue", "flush_ro", bytes([0]) + struct.pack("<H", 4095) + cfg + pm)
put("pmem_queue", "flush_rw", bytes([2]) + struct.pack("<H", 9999) + cfg + pm)

# virtio-mem: region at 4 GiB, 2 MiB blocks, two 128 MiB slots
REGION, BLK = 1 << 32, 2 << 20


def mem_req(t, addr, nb):
    return struct.pack("<HHHHQHHHH", t, 0, 0, 0, addr, nb, 0, 0, 0)


reqs = [
    (3, REGION, 4),                   # STATE: unplugged
    (0, REGION, 4),                   # PLUG
    (0, REGION + 126 * (1 << 20), 2), # PLUG across the two slots
    (3, REGION, 8),                   # STATE: mixed
    (1, REGION, 2),                   # UNPLUG part
    (0, REGION + BLK * 100, 16),      # PLUG over the requested size: NACK
    (1, REGION + 4096, 1),            # unaligned: ERROR
    (2, 0, 0),                        # UNPLUG_ALL
    (3, REGION + BLK * 127, 1),       # STATE of the last block
]
chains = [[(0x2000 + 0x40 * k, 24, 0), (0x2020 + 0x40 * k, 10, W)] for k in range(len(reqs))]
data = {0x2000 + 0x40 * k: mem_req(*r) for k, r in enumerate(reqs)}
mm = queue_image(128, 0x800, chains, data)
cfg = bytes([40, 3, 48, 3])
put("mem_queue", "plug_unplug", bytes([0, 0, 16]) + cfg + mm)
# The same on a clone's file mapping, with some KVM slot calls failing.
put("mem_queue", "slot_failures", bytes([2, 0x24, 16]) + cfg + mm)

# ---- app descriptions (PUT /vm/start bodies) and the guest taking one
ops = b"".join([
    bytes([0, 6]) + struct.pack("<I", 0),      # inl 0: length
    bytes([4, 6]) + struct.pack("<I", 0),      # inl 4: ABI version
    bytes([0, 2]) + struct.pack("<I", 0x10),   # outl pfn 0x10: delivered
    bytes([0, 2]) + struct.pack("<I", 0x20),   # again: nothing to deliver
])
put("app_spec", "start", bytes([1, 4]) + ops
    + b'{"app": {"app": "/app", "args": ["-v", "7"], "env": ["A=1", "B=x=y"], "hostname": "h1"}}')
put("app_spec", "image_base", bytes([1, 0])
    + b'{"app": {"app": "/srv/app", "image_base": true, "upper": "tmpfs"}, "image_base": "/img/base"}')
put("app_spec", "outside", bytes([1, 1]) + bytes([0, 2]) + struct.pack("<I", 0xffffffff)
    + b'{"app": {"app": "/a"}}')
put("app_spec", "volumes", bytes([1, 4]) + ops
    + b'{"app": {"app": "/app", "volumes": [{"kind": "pack", "id": "0", "read_only": true, "path": "/config"},'
    + b' {"kind": "fs", "id": "vol0", "path": "/data"}]}, "volumes_base": "/v/volumes.erofs"}')
