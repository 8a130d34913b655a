//! Entry points of the coverage-guided fuzz targets (`fuzz/`, libFuzzer):
//! each takes arbitrary bytes from a hostile guest or file and must neither
//! panic nor hang. The corpora in `fuzz/corpus/<target>/` are replayed by
//! `vmm/tests/fuzz_corpus.rs` in every `cargo test`; see docs/fuzzing.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::api::http;
use crate::devices::bus::BusDevice;
use crate::devices::notify::NotifyDevice;
use crate::devices::virtio::mmio::MmioTransport;
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
];

/// Runs target `name` on `data` (the corpus replay uses this).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "http_request" => http_request(data),
        "snapshot_state" => snapshot_state(data),
        "notify_device" => notify_device(data),
        "vsock_queues" => vsock_queues(data),
        "virtio_mmio" => virtio_mmio(data),
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

/// A fresh host socket path for one run (several fuzz processes may share
/// the directory).
fn uds_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "arrow-fuzz-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes the socket (and nothing else) when a run ends.
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
