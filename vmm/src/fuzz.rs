//! Entry points of the coverage-guided fuzz targets (`fuzz/`, libFuzzer):
//! each takes arbitrary bytes from a hostile guest or file and must neither
//! panic nor hang. The corpora in `fuzz/corpus/<target>/` are replayed by
//! `tests/tests/fuzz_corpus.rs` in every `cargo test`; see docs/fuzzing.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::api::http;
use crate::app_spec::APP_ABI_VERSION;
use crate::devices::app_channel::AppChannel;
use crate::devices::bus::BusDevice;
use crate::devices::notify::NotifyDevice;
use crate::devices::virtio::mem::{self, HotplugMemory, SlotControl, VirtioMem};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::pmem::Pmem;
use crate::devices::virtio::vsock::{Limits, Vsock, EVQ, RXQ, TXQ};
use crate::devices::virtio::{ActivateContext, IrqTrigger, VirtioDevice};
use crate::lifecycle::Lifecycle;
use crate::snapshot::{self, memory};
use crate::GuestMemoryMmap;

/// The names of the targets, as in `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[&str] = &[
    "http_request",
    "snapshot_state",
    "notify_device",
    "vsock_queues",
    "virtio_mmio",
    "pmem_queue",
    "mem_queue",
    "app_spec",
];

/// Runs target `name` on `data` (the corpus replay uses this).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "http_request" => http_request(data),
        "snapshot_state" => snapshot_state(data),
        "notify_device" => notify_device(data),
        "vsock_queues" => vsock_queues(data),
        "virtio_mmio" => virtio_mmio(data),
        "pmem_queue" => pmem_queue(data),
        "mem_queue" => mem_queue(data),
        "app_spec" => app_spec(data),
        _ => {}
    }
}

/// The control API's request parser.
pub fn http_request(data: &[u8]) {
    let _ = http::parse(data);
}

/// `state.json` parsing and validation. First byte 0: the bytes are the
/// whole file; otherwise the rest is the JSON body and gets a valid header
/// (so the fuzzer does not have to forge SHA-256 sums to reach the JSON).
pub fn snapshot_state(data: &[u8]) {
    let dir = Path::new("/fuzz/snapshot");
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let content = if mode == 0 {
        rest.to_vec()
    } else {
        let sum: String = Sha256::digest(rest)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut c =
            format!("ARROW-SNAPSHOT {} sha256={sum}\n", snapshot::FORMAT_VERSION).into_bytes();
        c.extend_from_slice(rest);
        c
    };
    if let Ok(state) = snapshot::parse_state(dir, &content) {
        // What restore checks next, against a memory file of some length.
        let len = u64::from(mode) << 20;
        let _ = memory::validate_regions(&state.regions, len);
    }
}

/// The notify device's port I/O: 6-byte operations (offset, kind, value).
pub fn notify_device(data: &[u8]) {
    let Ok(lifecycle) = Lifecycle::new(Instant::now()) else {
        return;
    };
    let mut dev = NotifyDevice::new(Arc::new(lifecycle));
    for op in data.chunks_exact(6) {
        let offset = u64::from(op[0] % 12);
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[2..6]);
        if op[1] & 4 != 0 {
            dev.read(offset, &mut value[..len]);
        } else {
            dev.write(offset, &value[..len]);
        }
    }
}

const QSIZE: u16 = 64;
/// Guest memory of the vsock targets: rings in the first 12 KiB, buffers after.
const MEM_SIZE: usize = 0x2_0000;
/// Each queue's block: descriptor table, avail ring, used ring.
const QUEUE_BLOCK: u64 = 0x1000;
const AVAIL_OFF: u64 = 0x400;
const USED_OFF: u64 = 0x800;

/// A fresh host path for one run (several fuzz processes may share the
/// directory).
fn scratch_path(suffix: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "arrow-fuzz-{}-{}.{suffix}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn uds_path() -> PathBuf {
    scratch_path("sock")
}

/// Removes the socket or file (and nothing else) when a run ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn guest_memory(image: &[u8]) -> Option<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    let n = image.len().min(MEM_SIZE);
    mem.write_slice(&image[..n], GuestAddress(0)).ok()?;
    Some(mem)
}

/// The vsock device's queue handling with the three queues set up as a
/// driver would and guest memory taken from the input: descriptor tables,
/// avail rings, packet headers and payloads are all the fuzzer's. With the
/// first byte even, descriptor addresses are folded into guest memory so
/// that most chains reach real buffers.
pub fn vsock_queues(data: &[u8]) {
    let Some((&mode, image)) = data.split_first() else {
        return;
    };
    let Some(mem) = guest_memory(image) else {
        return;
    };
    if mode & 1 == 0 {
        for q in 0..3u64 {
            for d in 0..u64::from(QSIZE) {
                let at = GuestAddress(q * QUEUE_BLOCK + d * 16);
                if let Ok(addr) = mem.read_obj::<u64>(at) {
                    let _ = mem.write_obj(addr % MEM_SIZE as u64, at);
                }
            }
        }
    }
    let uds = uds_path();
    let _cleanup = Cleanup(uds.clone());
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let Ok(mut dev) = Vsock::new(3, &uds, limits) else {
        return;
    };
    let Ok(irq) = IrqTrigger::new() else {
        return;
    };
    let mut queues = Vec::new();
    for q in [RXQ, TXQ, EVQ] {
        let base = q as u64 * QUEUE_BLOCK;
        let Ok(mut queue) = Queue::new(QSIZE) else {
            return;
        };
        queue.set_desc_table_address(Some(base as u32), Some(0));
        queue.set_avail_ring_address(Some((base + AVAIL_OFF) as u32), Some(0));
        queue.set_used_ring_address(Some((base + USED_OFF) as u32), Some(0));
        queue.set_ready(true);
        queues.push(queue);
    }
    let ctx = ActivateContext {
        mem: mem.clone(),
        acked_features: 1 << 32,
        queues,
        irq: Arc::new(irq),
    };
    if dev.activate(ctx).is_err() {
        return;
    }
    // A few rounds: the device answers (RST, responses) on RX in later ones.
    for _ in 0..3 {
        dev.pump();
    }
}

/// virtio-mmio register accesses on a vsock transport: 7-byte operations
/// (kind, offset, value) driven like a guest driver would, the device
/// pumped after each queue notification; guest memory is the rest of the
/// input after the operations (count in the first byte).
pub fn virtio_mmio(data: &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let ops_len = (usize::from(count) * 7).min(rest.len());
    let (ops, image) = rest.split_at(ops_len);
    let Some(mem) = guest_memory(image) else {
        return;
    };
    let uds = uds_path();
    let _cleanup = Cleanup(uds.clone());
    let Ok(dev) = Vsock::new(3, &uds, Limits::default()) else {
        return;
    };
    let dev = Arc::new(Mutex::new(dev));
    let Ok(mut transport) = MmioTransport::new(mem, dev.clone() as Arc<Mutex<dyn VirtioDevice>>)
    else {
        return;
    };
    for op in ops.chunks_exact(7) {
        let kind = op[0];
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) % 0x180);
        let len = match kind >> 4 & 3 {
            0 => 4,
            1 => 1,
            2 => 2,
            _ => 8,
        };
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[3..7]);
        if kind & 1 == 0 {
            transport.read(offset, &mut value[..len]);
        } else {
            transport.write(offset, &value[..len]);
            // QueueNotify: what the ioeventfd would make the loop do.
            if offset == 0x50 {
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                if d.is_active() {
                    d.pump();
                }
            }
        }
    }
}

/// Two config-space accesses from 2-byte operations (offset, width and
/// direction), as a driver probing the device would make.
fn config_ops(dev: &mut dyn VirtioDevice, ops: &[u8]) {
    for op in ops.chunks_exact(2) {
        let offset = u64::from(op[0]);
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let mut buf = [0u8; 8];
        if op[1] & 4 != 0 {
            dev.write_config(offset, &buf[..len]);
        } else {
            dev.read_config(offset, &mut buf[..len]);
        }
    }
}

/// Sets up one split queue of `size` at guest address `base` (descriptor
/// table, then the avail and used rings at the given offsets).
fn queue_at(size: u16, base: u64, avail: u64, used: u64) -> Option<Queue> {
    let mut q = Queue::new(size).ok()?;
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + avail) as u32), Some(0));
    q.set_used_ring_address(Some((base + used) as u32), Some(0));
    q.set_ready(true);
    Some(q)
}

/// Folds the addresses of the first `count` descriptors at `table` into
/// `[0, limit)`, so that most chains reach real buffers.
fn fold_descriptors(mem: &GuestMemoryMmap, table: u64, count: u64, limit: u64) {
    for d in 0..count {
        let at = GuestAddress(table + d * 16);
        if let Ok(addr) = mem.read_obj::<u64>(at) {
            let _ = mem.write_obj(addr % limit, at);
        }
    }
}

/// The backing files of the pmem target, one per length the input can pick
/// (sub-page, a page, just over one 2 MiB window, two windows): made once
/// per process, unlinked at once (no leftovers), reopened through
/// /proc/self/fd as the device opens a path. Making a file per run would
/// cost more than the device work itself.
fn pmem_files() -> &'static [(std::fs::File, PathBuf)] {
    static FILES: std::sync::OnceLock<Vec<(std::fs::File, PathBuf)>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        use std::os::fd::AsRawFd;
        [1u64, 4096, (2 << 20) + 1, 4 << 20]
            .into_iter()
            .filter_map(|len| {
                let path = scratch_path("pmem");
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .ok();
                let _ = std::fs::remove_file(&path);
                let file = file?;
                file.set_len(len).ok()?;
                let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
                Some((file, fd_path))
            })
            .collect()
    })
}

/// The pmem device's request queue (FLUSH requests, any chain the guest
/// builds) and its config space. Input: mode (bit 0 set: descriptor
/// addresses left unfolded; bit 1: a writable file, so FLUSH does fsync),
/// the file's length (one of four), the window's guest address (in 2 MiB
/// steps above 4 GiB), two config operations (4 bytes), then guest memory:
/// queue at 0 (avail ring 0x400, used ring 0x800).
pub fn pmem_queue(data: &[u8]) {
    let Some((head, image)) = data.split_first_chunk::<7>() else {
        return;
    };
    let mode = head[0];
    let Some(mem) = guest_memory(image) else {
        return;
    };
    if mode & 1 == 0 {
        fold_descriptors(&mem, 0, u64::from(QSIZE), MEM_SIZE as u64);
    }
    let files = pmem_files();
    let Some((_, path)) = files.get(usize::from(head[1]) % files.len().max(1)) else {
        return;
    };
    let Ok(mut dev) = Pmem::new(path, mode & 2 == 0) else {
        return;
    };
    dev.set_guest_addr((1 << 32) + (u64::from(head[2]) << 21));
    config_ops(&mut dev, &head[3..7]);
    let Ok(irq) = IrqTrigger::new() else {
        return;
    };
    let Some(queue) = queue_at(QSIZE, 0, AVAIL_OFF, USED_OFF) else {
        return;
    };
    let ctx = ActivateContext {
        mem,
        acked_features: dev.avail_features(),
        queues: vec![queue],
        irq: Arc::new(irq),
    };
    if dev.activate(ctx).is_err() {
        return;
    }
    // The second round finds nothing new unless the rings are inconsistent.
    dev.process_queue();
    dev.process_queue();
}

/// Guest-physical start and size of the virtio-mem target's hotplug region
/// (two KVM slots, 128 blocks).
const MEM_REGION: u64 = 1 << 32;
const MEM_REGION_SIZE: u64 = 2 * mem::backend::SLOT_SIZE;
const MEM_QSIZE: u16 = 128;

/// Stands in for KVM's memory slots: records which are registered, and
/// fails the first call the input picks (a host out of memory or slots).
/// Only one: a second failure while undoing the first would leave KVM and
/// the device out of step whatever the device did.
struct FuzzSlots {
    registered: Arc<Mutex<Vec<bool>>>,
    /// Calls so far, and whether one has failed.
    calls: Mutex<(u32, bool)>,
    fail_mask: u8,
}

impl SlotControl for FuzzSlots {
    fn set_slot(&self, slot: u32, _guest: u64, size: u64, _host: u64) -> std::io::Result<()> {
        let fail = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            calls.0 += 1;
            let fail = !calls.1 && self.fail_mask & (1 << (calls.0 % 8)) != 0;
            calls.1 |= fail;
            fail
        };
        if fail {
            return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        }
        let i = slot.wrapping_sub(mem::backend::FIRST_SLOT) as usize;
        let mut reg = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = reg.get_mut(i) {
            *r = size > 0;
        }
        Ok(())
    }
}

/// The virtio-mem device's request queue: PLUG, UNPLUG, UNPLUG_ALL and
/// STATE requests with guest-chosen addresses and block counts, any chain
/// the guest builds, and its config space. Input: mode (bit 0 set:
/// descriptor addresses left unfolded; bit 1: the region is a clone's file
/// mapping; bit 2: the driver did not ack UNPLUGGED_INACCESSIBLE), which
/// KVM slot call fails (a mask of call numbers mod 8), the requested size
/// in blocks, two config operations (4 bytes), then guest memory: queue at
/// 0 (avail ring 0x800, used ring 0x1000). The hotplug region is real
/// memory at 4 GiB.
///
/// Checked after the requests: every slot with a plugged block is
/// registered with KVM and no other is (else the guest would lose plugged
/// memory, or keep memory it gave back).
pub fn mem_queue(data: &[u8]) {
    let Some((head, image)) = data.split_first_chunk::<7>() else {
        return;
    };
    let mode = head[0];
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MEM_SIZE),
        (GuestAddress(MEM_REGION), MEM_REGION_SIZE as usize),
    ]) else {
        return;
    };
    let n = image.len().min(MEM_SIZE);
    if mem.write_slice(&image[..n], GuestAddress(0)).is_err() {
        return;
    }
    if mode & 1 == 0 {
        fold_descriptors(&mem, 0, u64::from(MEM_QSIZE), MEM_SIZE as u64);
    }
    let slots = (MEM_REGION_SIZE / mem::backend::SLOT_SIZE) as usize;
    let registered = Arc::new(Mutex::new(vec![false; slots]));
    let fuzz_slots = FuzzSlots {
        registered: registered.clone(),
        calls: Mutex::new((0, false)),
        fail_mask: head[1],
    };
    let Ok(mut backend) = HotplugMemory::new(&mem, MEM_REGION, MEM_REGION_SIZE, fuzz_slots) else {
        return;
    };
    if mode & 2 != 0 {
        backend.set_file_backed();
    }
    let Ok(mut dev) = VirtioMem::new(MEM_REGION, MEM_REGION_SIZE, Box::new(backend)) else {
        return;
    };
    // Too large a size is refused, as the API would refuse it.
    let _ = dev.set_requested(u64::from(head[2]) * mem::BLOCK_SIZE);
    config_ops(&mut dev, &head[3..7]);
    let Ok(irq) = IrqTrigger::new() else {
        return;
    };
    let Some(queue) = queue_at(MEM_QSIZE, 0, 0x800, 0x1000) else {
        return;
    };
    let mut acked_features = dev.avail_features();
    if mode & 4 != 0 {
        acked_features &= !(1 << mem::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE);
    }
    let ctx = ActivateContext {
        mem,
        acked_features,
        queues: vec![queue],
        irq: Arc::new(irq),
    };
    if dev.activate(ctx).is_ok() {
        dev.process_queue();
        dev.process_queue();
    }
    let state = dev.state();
    let per_slot = mem::backend::SLOT_SIZE / mem::BLOCK_SIZE;
    let reg = registered.lock().unwrap_or_else(|e| e.into_inner());
    for (i, &on) in reg.iter().enumerate() {
        let first = i as u64 * per_slot;
        let plugged = (first..first + per_slot).any(|b| state.plugged.is_plugged(b));
        assert_eq!(
            on, plugged,
            "virtio-mem: KVM slot {i} registered={on} but plugged blocks in it={plugged}"
        );
    }
}

/// An app description as `PUT /vm/start` takes it (JSON), checked and
/// encoded for the guest, then offered on the app channel, which the guest
/// drives with port I/O. Input: the template's ABI version (0: not a
/// generic template; 1: this one's; other: a mismatch), a count of 6-byte
/// port operations (offset, kind, value), the operations, then the body.
///
/// Checked: an encoding that is accepted decodes back to the same
/// description (what the guest's ainit reads).
pub fn app_spec(data: &[u8]) {
    let Some((&[abi, count], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let ops_len = (usize::from(count) * 6).min(rest.len());
    let (ops, body) = rest.split_at(ops_len);
    let Ok(crate::api::StartRequest {
        app: Some(spec),
        volumes_base,
        ..
    }) = crate::api::start_body(body)
    else {
        return;
    };
    if spec.check_volumes_base(volumes_base.is_some()).is_err() {
        return;
    }
    let template_abi = match abi {
        0 => None,
        1 => Some(APP_ABI_VERSION),
        v => Some(u32::from(v)),
    };
    let Ok(encoded) = spec.encode_for(template_abi) else {
        return;
    };
    check_app_encoding(&spec, &encoded);
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    let Ok(lifecycle) = Lifecycle::new(Instant::now()) else {
        return;
    };
    let mut channel = AppChannel::new(mem, Arc::new(lifecycle));
    channel.offer(encoded);
    for op in ops.chunks_exact(6) {
        let offset = u64::from(op[0] % 8);
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[2..6]);
        if op[1] & 4 != 0 {
            channel.read(offset, &mut value[..len]);
        } else {
            channel.write(offset, &value[..len]);
        }
    }
}

/// Decodes the app channel's wire format (`crate::app_spec`) the way the
/// guest does and asserts it gives back `spec`.
fn check_app_encoding(spec: &crate::app_spec::AppSpec, b: &[u8]) {
    let word = |at: usize| {
        b.get(at..at + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map(u32::from_le_bytes)
    };
    assert_eq!(b.get(..8), Some(&b"ARWAPP2\0"[..]), "app spec: magic");
    assert_eq!(word(8), u32::try_from(b.len()).ok(), "app spec: length");
    let flags = word(12).unwrap_or(0);
    assert_eq!(
        flags & crate::app_spec::FLAG_VOLPACK != 0,
        spec.uses_volume_pack(),
        "app spec: volpack flag"
    );
    let (argc, envc, volc) = (word(16), word(20), word(24));
    assert_eq!(
        argc,
        u32::try_from(spec.args.len() + 1).ok(),
        "app spec: argc"
    );
    assert_eq!(envc, u32::try_from(spec.env.len()).ok(), "app spec: envc");
    assert_eq!(
        volc,
        u32::try_from(spec.volumes.len()).ok(),
        "app spec: volc"
    );
    assert!(spec.volumes.len() <= crate::app_spec::MAX_VOLUMES);
    let strings: Vec<&[u8]> = b
        .get(28..)
        .and_then(|s| s.strip_suffix(b"\0"))
        .map(|s| s.split(|&c| c == 0).collect())
        .unwrap_or_default();
    let volumes: Vec<String> = spec.volumes.iter().map(|v| v.param()).collect();
    let expected: Vec<&[u8]> = [&spec.app, &spec.hostname, &spec.app]
        .into_iter()
        .chain(&spec.args)
        .chain(&spec.env)
        .chain(&volumes)
        .map(|s| s.as_bytes())
        .collect();
    assert_eq!(strings, expected, "app spec: strings");
    // What the guest's ainit checks again: four fields, an absolute path
    // without whitespace, read-only packs.
    for v in &volumes {
        let f: Vec<&str> = v.splitn(4, ':').collect();
        assert_eq!(f.len(), 4, "app spec: volume {v}");
        assert!(
            matches!(f[0], "fs" | "pack") && matches!(f[2], "ro" | "rw"),
            "{v}"
        );
        assert!(f[0] != "pack" || f[2] == "ro", "{v}");
        assert!(
            f[3].starts_with('/') && !f[3].contains(char::is_whitespace),
            "{v}"
        );
    }
}
