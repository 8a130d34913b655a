//! Device-level tests: a simulated driver posts requests on a split queue in
//! guest memory built here; the hotplug region is real anonymous (or
//! private file) memory, KVM slots are recorded by a fake.

use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::backend::{FIRST_SLOT, SLOT_SIZE};
use super::request::*;
use super::*;
use crate::devices::virtio::INT_CONFIG;

const REGION: u64 = 1 << 32;
const REGION_SIZE: u64 = 256 << 20;
const QSIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const REQ_BUF: u64 = 0x10000;
const RESP_BUF: u64 = 0x20000;
const MIB: u64 = 1 << 20;

/// (slot, guest address, size) of every KVM slot call.
type SlotLog = Arc<Mutex<Vec<(u32, u64, u64)>>>;

#[derive(Clone, Default)]
struct FakeSlots {
    log: SlotLog,
    fail: Arc<Mutex<bool>>,
}

impl SlotControl for FakeSlots {
    fn set_slot(&self, slot: u32, guest_addr: u64, size: u64, _host: u64) -> std::io::Result<()> {
        if *self.fail.lock().unwrap() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.log.lock().unwrap().push((slot, guest_addr, size));
        Ok(())
    }
}

fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10_0000),
        (GuestAddress(REGION), REGION_SIZE as usize),
    ])
    .unwrap()
}

/// The simulated driver: one request per two-descriptor chain.
struct Driver {
    mem: GuestMemoryMmap,
    avail_idx: u16,
    used_seen: u16,
}

impl Driver {
    fn new(mem: &GuestMemoryMmap) -> Self {
        mem.write_slice(&[0u8; 0x3000], GuestAddress(DESC)).unwrap();
        Self {
            mem: mem.clone(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = GuestAddress(DESC + u64::from(i) * 16);
        self.mem.write_obj(addr, d).unwrap();
        self.mem.write_obj(len, d.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, d.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, d.unchecked_add(14)).unwrap();
    }

    /// Posts `req` (as raw bytes, `req_len` of them) with `resp_len` bytes
    /// for the answer.
    fn post_raw(&mut self, req: &[u8], resp_len: u32) {
        let slot = self.avail_idx % (QSIZE / 2);
        let head = slot * 2;
        let req_addr = REQ_BUF + u64::from(slot) * 64;
        let resp_addr = RESP_BUF + u64::from(slot) * 64;
        self.mem.write_slice(req, GuestAddress(req_addr)).unwrap();
        self.mem
            .write_slice(&[0xee; 16], GuestAddress(resp_addr))
            .unwrap();
        if resp_len > 0 {
            self.write_desc(
                head,
                req_addr,
                req.len() as u32,
                VRING_DESC_F_NEXT as u16,
                head + 1,
            );
            self.write_desc(head + 1, resp_addr, resp_len, VRING_DESC_F_WRITE as u16, 0);
        } else {
            self.write_desc(head, req_addr, req.len() as u32, 0, 0);
        }
        let ring = GuestAddress(AVAIL + 4 + u64::from(self.avail_idx % QSIZE) * 2);
        self.mem.write_obj(head, ring).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    fn post(&mut self, req_type: u16, addr: u64, nb_blocks: u16) {
        let raw = RawRequest {
            req_type,
            addr,
            nb_blocks,
            ..Default::default()
        };
        self.post_raw(vm_memory::ByteValued::as_slice(&raw), 10);
    }

    /// The next used element's length and response.
    fn take(&mut self) -> (u32, RawResponse) {
        let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_ne!(idx, self.used_seen, "no answer");
        let e = GuestAddress(USED + 4 + u64::from(self.used_seen % QSIZE) * 8);
        let id: u32 = self.mem.read_obj(e).unwrap();
        let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        let resp_addr = RESP_BUF + u64::from(id / 2) * 64;
        (len, self.mem.read_obj(GuestAddress(resp_addr)).unwrap())
    }
}

struct Fixture {
    mem: GuestMemoryMmap,
    dev: VirtioMem,
    driver: Driver,
    slots: FakeSlots,
    irq: Arc<IrqTrigger>,
}

fn backend(mem: &GuestMemoryMmap, slots: &FakeSlots) -> Box<dyn MemoryBackend> {
    Box::new(HotplugMemory::new(mem, REGION, REGION_SIZE, slots.clone()).unwrap())
}

fn activate(dev: &mut VirtioMem, mem: &GuestMemoryMmap, driver: &Driver) -> Arc<IrqTrigger> {
    let irq = Arc::new(IrqTrigger::new().unwrap());
    dev.activate(ActivateContext {
        mem: mem.clone(),
        acked_features: dev.avail_features(),
        queues: vec![driver.queue()],
        irq: irq.clone(),
    })
    .unwrap();
    irq
}

fn fixture() -> Fixture {
    let mem = guest_mem();
    let slots = FakeSlots::default();
    let mut dev = VirtioMem::new(REGION, REGION_SIZE, backend(&mem, &slots)).unwrap();
    let driver = Driver::new(&mem);
    let irq = activate(&mut dev, &mem, &driver);
    Fixture {
        mem,
        dev,
        driver,
        slots,
        irq,
    }
}

impl Fixture {
    fn request(&mut self, t: u16, addr: u64, nb: u16) -> RawResponse {
        self.driver.post(t, addr, nb);
        self.dev.process_queue();
        let (len, resp) = self.driver.take();
        assert_eq!(len, 10);
        resp
    }

    fn resp_type(&mut self, t: u16, addr: u64, nb: u16) -> u16 {
        self.request(t, addr, nb).resp_type
    }

    fn block_state(&mut self, addr: u64, nb: u16) -> u16 {
        let r = self.request(REQ_STATE, addr, nb);
        assert_eq!({ r.resp_type }, RESP_ACK);
        r.state
    }

    fn slot_calls(&self) -> Vec<(u32, u64, u64)> {
        std::mem::take(&mut *self.slots.log.lock().unwrap())
    }
}

/// Held by the tests that count resident pages. Run beside the snapshot test
/// (which maps, remaps and unmaps several 256 MiB regions in this process),
/// `plug_state_unplug_and_memory_goes_back` saw its remaining plugged pages
/// non-resident about one run in three; never when the two ran one after the
/// other, nor under strace. The cause was not found (no mapping call of either
/// test touches the other's range in the traces); see the closing note of
/// 2026-12-05.
static RESIDENCY: Mutex<()> = Mutex::new(());

fn rss_of(mem: &GuestMemoryMmap, addr: u64, len: u64) -> u64 {
    let r = mem.find_region(GuestAddress(addr)).unwrap();
    let off = addr - r.start_addr().0;
    let host = r.as_ptr() as usize + off as usize;
    let pages = (len / 4096) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: mincore only reads the page tables of a live mapping.
    let rc = unsafe { libc::mincore(host as *mut _, len as usize, vec.as_mut_ptr()) };
    assert_eq!(rc, 0);
    vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * 4096
}

#[test]
fn config_space_reports_geometry_and_sizes() {
    let mut f = fixture();
    assert_eq!(f.dev.set_requested(64 * MIB), Ok(true));
    assert_eq!(f.dev.set_requested(64 * MIB), Ok(false));
    let mut c = [0u8; CONFIG_SIZE];
    f.dev.read_config(0, &mut c);
    let field = |o: usize| u64::from_le_bytes(c[o..o + 8].try_into().unwrap());
    assert_eq!(field(0), BLOCK_SIZE);
    assert_eq!(field(16), REGION);
    assert_eq!(field(24), REGION_SIZE);
    assert_eq!(field(32), REGION_SIZE);
    assert_eq!(field(40), 0);
    assert_eq!(field(48), 64 * MIB);
    // Partial and out-of-bounds reads never panic.
    let mut four = [0u8; 4];
    f.dev.read_config(48, &mut four);
    assert_eq!(u32::from_le_bytes(four), 64 << 20);
    f.dev.read_config(54, &mut four);
    assert_eq!(four, [0; 4]);
    f.dev.read_config(u64::MAX, &mut four);
    f.dev.write_config(0, &[1, 2, 3]);
    let mut again = [0u8; CONFIG_SIZE];
    f.dev.read_config(0, &mut again);
    assert_eq!(again, c, "config is read-only");
}

#[test]
fn requested_size_is_checked() {
    let mut f = fixture();
    let e = f.dev.set_requested(REGION_SIZE + BLOCK_SIZE).unwrap_err();
    assert_eq!(e.max_mib, 256);
    assert!(
        e.to_string()
            .contains("allowed: 0 to 256 MiB in steps of 2 MiB"),
        "{e}"
    );
    let e = f.dev.set_requested(3 * MIB).unwrap_err();
    assert!(e.to_string().contains("not a multiple"), "{e}");
    assert_eq!(f.dev.status().requested_size, 0);
}

#[test]
fn plug_state_unplug_and_memory_goes_back() {
    let _one = RESIDENCY.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = fixture();
    f.dev.set_requested(132 * MIB).unwrap();
    // More than requested: NACK, nothing registered.
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 67), RESP_NACK);
    assert!(f.slot_calls().is_empty());
    // 64 blocks = the first 128 MiB slot; then 2 blocks of the second.
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 64), RESP_ACK);
    assert_eq!(f.slot_calls(), vec![(FIRST_SLOT, REGION, SLOT_SIZE)]);
    assert_eq!(
        f.resp_type(REQ_PLUG, REGION + SLOT_SIZE + 4 * MIB, 2),
        RESP_ACK
    );
    assert_eq!(
        f.slot_calls(),
        vec![(FIRST_SLOT + 1, REGION + SLOT_SIZE, SLOT_SIZE)]
    );
    assert_eq!(f.dev.plugged_size(), 132 * MIB);
    // Requested size reached: one more block is NACKed.
    assert_eq!(f.resp_type(REQ_PLUG, REGION + SLOT_SIZE, 1), RESP_NACK);
    // Plugging a plugged block is a driver error.
    f.dev.set_requested(200 * MIB).unwrap();
    assert_eq!(f.resp_type(REQ_PLUG, REGION + 126 * MIB, 2), RESP_ERROR);

    assert_eq!(f.block_state(REGION, 64), STATE_PLUGGED);
    assert_eq!(f.block_state(REGION + 126 * MIB, 3), STATE_MIXED);
    assert_eq!(f.block_state(REGION + SLOT_SIZE, 2), STATE_UNPLUGGED);

    // The guest touches plugged memory; unplugging gives it back.
    f.mem
        .write_slice(&vec![0x5a; (8 * MIB) as usize], GuestAddress(REGION))
        .unwrap();
    assert!(rss_of(&f.mem, REGION, 8 * MIB) >= 8 * MIB - 4096);
    assert_eq!(f.resp_type(REQ_UNPLUG, REGION, 2), RESP_ACK);
    assert_eq!(rss_of(&f.mem, REGION, 8 * MIB), 4 * MIB);
    assert_eq!(f.dev.status().host_resident, Some(4 * MIB));
    // Reads of untouched memory map the shared zero page: not resident.
    f.mem
        .read_slice(
            &mut vec![0u8; (16 * MIB) as usize],
            GuestAddress(REGION + 64 * MIB),
        )
        .unwrap();
    assert_eq!(f.dev.status().host_resident, Some(4 * MIB));
    assert_eq!(f.mem.read_obj::<u64>(GuestAddress(REGION)).unwrap(), 0);
    assert!(f.slot_calls().is_empty(), "slot still has plugged blocks");
    // Unplugging unplugged blocks is a driver error.
    assert_eq!(f.resp_type(REQ_UNPLUG, REGION, 1), RESP_ERROR);
    // The second slot empties: it is removed from the guest.
    assert_eq!(
        f.resp_type(REQ_UNPLUG, REGION + SLOT_SIZE + 4 * MIB, 2),
        RESP_ACK
    );
    assert_eq!(
        f.slot_calls(),
        vec![(FIRST_SLOT + 1, REGION + SLOT_SIZE, 0)]
    );
    assert_eq!(f.dev.plugged_size(), 124 * MIB);
}

#[test]
fn unplug_all_empties_every_slot() {
    let mut f = fixture();
    f.dev.set_requested(REGION_SIZE).unwrap();
    assert_eq!(f.resp_type(REQ_PLUG, REGION + 10 * MIB, 2), RESP_ACK);
    assert_eq!(f.resp_type(REQ_PLUG, REGION + 200 * MIB, 3), RESP_ACK);
    f.slot_calls();
    // UNPLUG_ALL ignores its range fields.
    assert_eq!(f.resp_type(REQ_UNPLUG_ALL, 0xdead, 0), RESP_ACK);
    assert_eq!(f.dev.plugged_size(), 0);
    let mut calls = f.slot_calls();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            (FIRST_SLOT, REGION, 0),
            (FIRST_SLOT + 1, REGION + SLOT_SIZE, 0)
        ]
    );
    assert_eq!(f.block_state(REGION, 128), STATE_UNPLUGGED);
    // On an empty device it is still ACK.
    assert_eq!(f.resp_type(REQ_UNPLUG_ALL, 0, 0), RESP_ACK);
}

#[test]
fn hostile_requests_get_error_and_change_nothing() {
    let mut f = fixture();
    f.dev.set_requested(REGION_SIZE).unwrap();
    for (t, addr, nb) in [
        (REQ_PLUG, REGION - BLOCK_SIZE, 1),
        (REQ_PLUG, REGION + REGION_SIZE, 1),
        (REQ_PLUG, REGION + REGION_SIZE - BLOCK_SIZE, 2),
        (REQ_PLUG, REGION + 4096, 1),
        (REQ_PLUG, REGION, 0),
        (REQ_PLUG, u64::MAX - 4095, u16::MAX),
        (REQ_UNPLUG, 0, 1),
        (REQ_STATE, REGION, u16::MAX),
        (REQ_STATE, REGION + 1, 1),
        (9, REGION, 1),
        (u16::MAX, 0, 0),
    ] {
        assert_eq!(f.resp_type(t, addr, nb), RESP_ERROR, "{t} {addr:#x} {nb}");
    }
    assert_eq!(f.dev.plugged_size(), 0);
    assert!(f.slot_calls().is_empty());

    // A request shorter than 24 bytes: ERROR.
    f.driver.post_raw(&[0u8; 8], 10);
    f.dev.process_queue();
    let (len, resp) = f.driver.take();
    assert_eq!((len, { resp.resp_type }), (10, RESP_ERROR));
    // No room for the answer: the chain is returned with nothing written,
    // and the request is not carried out.
    let raw = RawRequest {
        req_type: REQ_PLUG,
        addr: REGION,
        nb_blocks: 1,
        ..Default::default()
    };
    f.driver.post_raw(vm_memory::ByteValued::as_slice(&raw), 4);
    f.dev.process_queue();
    assert_eq!(f.driver.take().0, 0);
    f.driver.post_raw(vm_memory::ByteValued::as_slice(&raw), 0);
    f.dev.process_queue();
    assert_eq!(f.driver.take().0, 0);
    // Descriptors pointing outside guest memory.
    f.driver.post(REQ_PLUG, REGION, 1);
    f.driver.write_desc(
        ((f.driver.avail_idx - 1) % 8) * 2,
        1 << 40,
        24,
        VRING_DESC_F_NEXT as u16,
        ((f.driver.avail_idx - 1) % 8) * 2 + 1,
    );
    f.dev.process_queue();
    let (_, resp) = f.driver.take();
    assert_eq!({ resp.resp_type }, RESP_ERROR);
    assert_eq!(f.dev.plugged_size(), 0);
    // The device still works afterwards.
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 1), RESP_ACK);
}

#[test]
fn host_failures_answer_nack_and_busy() {
    let mut f = fixture();
    f.dev.set_requested(REGION_SIZE).unwrap();
    *f.slots.fail.lock().unwrap() = true;
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 2), RESP_NACK);
    assert_eq!(f.dev.plugged_size(), 0);
    *f.slots.fail.lock().unwrap() = false;
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 2), RESP_ACK);
    *f.slots.fail.lock().unwrap() = true;
    assert_eq!(f.resp_type(REQ_UNPLUG, REGION, 2), RESP_BUSY);
    assert_eq!(f.resp_type(REQ_UNPLUG_ALL, 0, 0), RESP_BUSY);
    *f.slots.fail.lock().unwrap() = false;
}

#[test]
fn activation_needs_the_inaccessible_feature_and_one_queue() {
    let mem = guest_mem();
    let slots = FakeSlots::default();
    let mut dev = VirtioMem::new(REGION, REGION_SIZE, backend(&mem, &slots)).unwrap();
    let driver = Driver::new(&mem);
    let ctx = |features, queues| ActivateContext {
        mem: mem.clone(),
        acked_features: features,
        queues,
        irq: Arc::new(IrqTrigger::new().unwrap()),
    };
    assert!(matches!(
        dev.activate(ctx(1 << VIRTIO_F_VERSION_1, vec![driver.queue()])),
        Err(ActivateError::MissingFeature(_))
    ));
    assert!(matches!(
        dev.activate(ctx(dev.avail_features(), vec![])),
        Err(ActivateError::QueueCount {
            expected: 1,
            got: 0
        })
    ));
    // Before activation requests are not processed.
    dev.process_queue();
    assert!(!dev.status().driver_active);
    dev.activate(ctx(dev.avail_features(), vec![driver.queue()]))
        .unwrap();
    assert!(dev.status().driver_active);
    assert!(matches!(
        dev.activate(ctx(dev.avail_features(), vec![driver.queue()])),
        Err(ActivateError::AlreadyActive)
    ));
    // Reset keeps the blocks; the driver starts again with UNPLUG_ALL.
    dev.set_requested(4 * MIB).unwrap();
    let mut f = Fixture {
        irq: Arc::new(IrqTrigger::new().unwrap()),
        mem,
        dev,
        driver,
        slots,
    };
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 2), RESP_ACK);
    f.dev.reset();
    assert_eq!(f.dev.plugged_size(), 4 * MIB);
    assert_eq!(f.dev.active_queues(), None);
}

#[test]
fn used_ring_interrupt_is_raised() {
    let mut f = fixture();
    f.driver.post(REQ_STATE, REGION, 1);
    f.dev.process_queue();
    assert_eq!(f.irq.status() & INT_VRING, INT_VRING);
    assert_eq!(f.irq.status() & INT_CONFIG, 0);
}

#[test]
fn snapshot_restore_keeps_blocks_and_requested_size() {
    let _one = RESIDENCY.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = fixture();
    f.dev.set_requested(140 * MIB).unwrap();
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 64), RESP_ACK);
    assert_eq!(f.resp_type(REQ_PLUG, REGION + SLOT_SIZE, 6), RESP_ACK);
    assert_eq!(f.resp_type(REQ_UNPLUG, REGION + SLOT_SIZE, 2), RESP_ACK);
    f.mem
        .write_obj(0x1234_5678u64, GuestAddress(REGION + 8))
        .unwrap();
    let state = f.dev.state();
    assert_eq!(state.requested_size, 140 * MIB);
    assert_eq!(state.queues.len(), 1);
    // Through serde, as the snapshot file carries it.
    let state: MemState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();

    // Restore into a private mapping of a "memory file" (a clone).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.bin");
    let (regions, _) = crate::snapshot::memory::dump(&f.mem, &path).unwrap();
    let clone_mem = crate::snapshot::memory::map_private(&path, &regions).unwrap();
    let slots = FakeSlots::default();
    let mut dev = VirtioMem::restore(&state, backend(&clone_mem, &slots)).unwrap();
    let mut calls = slots.log.lock().unwrap().clone();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            (FIRST_SLOT, REGION, SLOT_SIZE),
            (FIRST_SLOT + 1, REGION + SLOT_SIZE, SLOT_SIZE)
        ]
    );
    assert_eq!(dev.status().plugged_size, 136 * MIB);
    assert_eq!(dev.status().requested_size, 140 * MIB);
    let mut driver = Driver::new(&clone_mem);
    driver.avail_idx = 0;
    activate(&mut dev, &clone_mem, &driver);
    let mut c = Fixture {
        mem: clone_mem,
        dev,
        driver,
        slots,
        irq: f.irq.clone(),
    };
    assert_eq!(c.block_state(REGION + SLOT_SIZE, 2), STATE_UNPLUGGED);
    assert_eq!(
        c.block_state(REGION + SLOT_SIZE + 4 * MIB, 4),
        STATE_PLUGGED
    );
    // The clone sees the template's data; unplugging on the private file
    // mapping drops it for good (fresh anonymous memory, not the file).
    assert_eq!(
        c.mem.read_obj::<u64>(GuestAddress(REGION + 8)).unwrap(),
        0x1234_5678
    );
    assert_eq!(c.resp_type(REQ_UNPLUG, REGION, 1), RESP_ACK);
    assert_eq!(c.mem.read_obj::<u64>(GuestAddress(REGION + 8)).unwrap(), 0);
    // (the read above mapped the zero page at REGION only)
    assert_eq!(rss_of(&c.mem, REGION + 4096, 2 * MIB - 4096), 0);
    // The clone can grow beyond what the template had plugged.
    c.dev.set_requested(REGION_SIZE).unwrap();
    assert_eq!(c.resp_type(REQ_PLUG, REGION + 200 * MIB, 20), RESP_ACK);
    // The template's memory file is untouched.
    let again = crate::snapshot::memory::map_private(&path, &regions).unwrap();
    assert_eq!(
        again.read_obj::<u64>(GuestAddress(REGION + 8)).unwrap(),
        0x1234_5678
    );

    // Inconsistent saved states are refused.
    let mut bad = state.clone();
    bad.plugged = BlockBitmap::new(3);
    assert!(matches!(
        VirtioMem::restore(&bad, backend(&c.mem, &FakeSlots::default())),
        Err(MemError::BadState(_))
    ));
    let mut bad = state.clone();
    bad.requested_size = REGION_SIZE + BLOCK_SIZE;
    assert!(VirtioMem::restore(&bad, backend(&c.mem, &FakeSlots::default())).is_err());
    let mut bad = state;
    bad.addr += 4096;
    assert!(matches!(
        VirtioMem::restore(&bad, backend(&c.mem, &FakeSlots::default())),
        Err(MemError::Geometry { .. })
    ));
}

#[test]
fn geometry_is_checked() {
    let mem = guest_mem();
    let slots = FakeSlots::default();
    assert!(VirtioMem::new(REGION + BLOCK_SIZE, REGION_SIZE, backend(&mem, &slots)).is_err());
    assert!(VirtioMem::new(REGION, 0, backend(&mem, &slots)).is_err());
    assert!(matches!(
        HotplugMemory::new(&mem, REGION + SLOT_SIZE, SLOT_SIZE, slots.clone()),
        Err(BackendError::NoRegion { .. })
    ));
    assert!(HotplugMemory::new(&mem, REGION, REGION_SIZE * 2, slots).is_err());
}

#[test]
fn an_avail_index_past_the_ring_does_not_hang_the_queue() {
    // Found writing the mem_queue fuzz target (fuzz/corpus/mem_queue/avail_idx_past_ring):
    // enable_notification kept reporting work that pop could never return.
    let mut f = fixture();
    f.dev.set_requested(4 * MIB).unwrap();
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 1), RESP_ACK);
    f.mem
        .write_obj(
            f.driver.avail_idx.wrapping_add(1000),
            GuestAddress(AVAIL + 2),
        )
        .unwrap();
    f.dev.process_queue();
    let used: u16 = f.mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used, 1);
}

#[test]
fn a_failed_slot_removal_keeps_the_slot_for_the_blocks_still_plugged() {
    // Caught by the mem_queue fuzz target's slot check (fuzz/corpus/mem_queue/failed_slot_removal):
    // the failed UNPLUG used to count its block out anyway, so unplugging
    // another block of the slot removed the slot under the first one.
    let mut f = fixture();
    f.dev.set_requested(16 * MIB).unwrap();
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 1), RESP_ACK);
    *f.slots.fail.lock().unwrap() = true;
    assert_eq!(f.resp_type(REQ_UNPLUG, REGION, 1), RESP_BUSY);
    *f.slots.fail.lock().unwrap() = false;
    assert_eq!(f.resp_type(REQ_PLUG, REGION + BLOCK_SIZE, 1), RESP_ACK);
    f.slot_calls();
    assert_eq!(f.resp_type(REQ_UNPLUG, REGION + BLOCK_SIZE, 1), RESP_ACK);
    assert_eq!(f.slot_calls(), vec![], "slot 0 still holds a plugged block");
    assert_eq!(f.block_state(REGION, 1), STATE_PLUGGED);
    // The retried UNPLUG of the first block empties the slot: now it goes.
    assert_eq!(f.resp_type(REQ_UNPLUG, REGION, 1), RESP_ACK);
    assert_eq!(f.slot_calls(), vec![(FIRST_SLOT, REGION, 0)]);
}

/// A vhost-user backend's view, as the shared memory reports it: the
/// hotplug entries of the table and the KVM slot calls made so far, at
/// each change.
struct TableLog {
    shared: std::sync::Weak<crate::shared_memory::SharedMemory>,
    slots: SlotLog,
    seen: Mutex<Vec<(Vec<u64>, usize)>>,
    fail: std::sync::atomic::AtomicBool,
}

impl crate::shared_memory::MemTableListener for TableLog {
    fn mem_table_changed(&self) -> Result<(), String> {
        let shared = self.shared.upgrade().ok_or("gone")?;
        let hotplug = shared
            .table()
            .iter()
            .filter(|r| shared.is_hotplug(r))
            .map(|r| r.guest_addr)
            .collect();
        let kvm_calls = self.slots.lock().unwrap().len();
        self.seen.lock().unwrap().push((hotplug, kvm_calls));
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("backend refused the region".into());
        }
        Ok(())
    }
}

#[test]
fn with_shared_memory_plugged_slots_reach_the_backends_and_unplug_punches_the_memfd() {
    use std::sync::atomic::Ordering;
    let (mem, shared) = crate::shared_memory::SharedMemory::create_with_hotplug(
        &[(GuestAddress(0), 0x10_0000)],
        Some((REGION, REGION_SIZE)),
    )
    .unwrap();
    let shared = Arc::new(shared);
    let slots = FakeSlots::default();
    let listener = Arc::new(TableLog {
        shared: Arc::downgrade(&shared),
        slots: slots.log.clone(),
        seen: Mutex::new(Vec::new()),
        fail: Default::default(),
    });
    let weak: std::sync::Weak<TableLog> = Arc::downgrade(&listener);
    shared.watch(weak);
    let mut hp = HotplugMemory::new(&mem, REGION, REGION_SIZE, slots.clone()).unwrap();
    hp.set_shared(shared.clone()).unwrap();
    let mut dev = VirtioMem::new(REGION, REGION_SIZE, Box::new(hp)).unwrap();
    let driver = Driver::new(&mem);
    let irq = activate(&mut dev, &mem, &driver);
    let mut f = Fixture {
        mem,
        dev,
        driver,
        slots,
        irq,
    };
    f.dev.set_requested(8 * MIB).unwrap();
    let slot1 = REGION + SLOT_SIZE;

    // PLUG in slot 1: KVM first, then the backends' table.
    assert_eq!(f.resp_type(REQ_PLUG, slot1, 2), RESP_ACK);
    assert_eq!(f.slot_calls(), vec![(FIRST_SLOT + 1, slot1, SLOT_SIZE)]);
    assert_eq!(
        listener.seen.lock().unwrap().pop(),
        Some((vec![slot1], 1)),
        "the backends got slot 1 after KVM"
    );
    // Guest writes land in the memfd (and so in the backends' view).
    let data = vec![0xa5u8; 4 * MIB as usize];
    f.mem.write_slice(&data, GuestAddress(slot1)).unwrap();
    assert_eq!(f.dev.status().host_resident, Some(4 * MIB));

    // A backend refuses: the PLUG is NACKed, KVM's slot 0 taken back.
    listener.fail.store(true, Ordering::SeqCst);
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 1), RESP_NACK);
    assert_eq!(
        f.slot_calls(),
        vec![(FIRST_SLOT, REGION, SLOT_SIZE), (FIRST_SLOT, REGION, 0)]
    );
    assert_eq!(f.block_state(REGION, 1), STATE_UNPLUGGED);
    listener.fail.store(false, Ordering::SeqCst);
    listener.seen.lock().unwrap().clear();

    // UNPLUG of half: the slot stays, the block's pages leave the memfd.
    assert_eq!(f.resp_type(REQ_UNPLUG, slot1, 1), RESP_ACK);
    assert_eq!(f.slot_calls(), vec![]);
    assert!(listener.seen.lock().unwrap().is_empty());
    assert_eq!(f.dev.status().host_resident, Some(2 * MIB));
    // The last block: the backends lose the slot before KVM does, then
    // the memory goes back to the host.
    assert_eq!(f.resp_type(REQ_UNPLUG, slot1 + BLOCK_SIZE, 1), RESP_ACK);
    assert_eq!(f.slot_calls(), vec![(FIRST_SLOT + 1, slot1, 0)]);
    assert_eq!(
        listener.seen.lock().unwrap().clone(),
        vec![(vec![], 0)],
        "the backends lost slot 1 while KVM still had it"
    );
    assert_eq!(f.dev.status().host_resident, Some(0));
    assert_eq!(shared.table().len(), 1, "RAM only");
    assert_eq!(f.mem.read_obj::<u8>(GuestAddress(slot1)).unwrap(), 0);
}

#[test]
fn a_snapshot_skips_the_unplugged_ranges() {
    // Maps and reads 256 MiB regions, as the snapshot test does.
    let _one = RESIDENCY.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = fixture();
    assert_eq!(
        f.dev.state().unplugged_ranges(),
        vec![(REGION, REGION_SIZE)]
    );
    f.dev.set_requested(8 * MIB).unwrap();
    assert_eq!(f.resp_type(REQ_PLUG, REGION + BLOCK_SIZE, 2), RESP_ACK);
    assert_eq!(
        f.dev.state().unplugged_ranges(),
        vec![
            (REGION, BLOCK_SIZE),
            (REGION + 3 * BLOCK_SIZE, REGION_SIZE - 3 * BLOCK_SIZE)
        ]
    );
    // Unplugged memory is never read (so never allocated on a memfd): a
    // page written there behind the device's back stays out of the file.
    f.mem.write_obj(9u8, GuestAddress(REGION + 0x1000)).unwrap();
    f.mem
        .write_obj(5u8, GuestAddress(REGION + BLOCK_SIZE))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.bin");
    let (regions, pages) =
        crate::snapshot::memory::dump_skipping(&f.mem, &path, &f.dev.state().unplugged_ranges())
            .unwrap();
    let restored = crate::snapshot::memory::map_private(&path, &regions).unwrap();
    assert_eq!(
        restored
            .read_obj::<u8>(GuestAddress(REGION + BLOCK_SIZE))
            .unwrap(),
        5
    );
    assert_eq!(
        restored
            .read_obj::<u8>(GuestAddress(REGION + 0x1000))
            .unwrap(),
        0
    );
    assert!(pages >= 1);
}

#[test]
fn a_removed_slot_gives_back_unplugged_blocks_a_hostile_guest_wrote() {
    let (mem, shared) = crate::shared_memory::SharedMemory::create_with_hotplug(
        &[(GuestAddress(0), 0x10_0000)],
        Some((REGION, REGION_SIZE)),
    )
    .unwrap();
    let shared = Arc::new(shared);
    let slots = FakeSlots::default();
    let mut hp = HotplugMemory::new(&mem, REGION, REGION_SIZE, slots.clone()).unwrap();
    hp.set_shared(shared.clone()).unwrap();
    let mut dev = VirtioMem::new(REGION, REGION_SIZE, Box::new(hp)).unwrap();
    let driver = Driver::new(&mem);
    let irq = activate(&mut dev, &mem, &driver);
    let mut f = Fixture {
        mem,
        dev,
        driver,
        slots,
        irq,
    };
    f.dev.set_requested(2 * MIB).unwrap();
    assert_eq!(f.resp_type(REQ_PLUG, REGION, 1), RESP_ACK);
    // The slot is registered: the guest can write its unplugged blocks
    // (UNPLUGGED_INACCESSIBLE forbids it; a hostile guest does it anyway).
    let junk = vec![1u8; 8 * MIB as usize];
    f.mem
        .write_slice(&junk, GuestAddress(REGION + 16 * MIB))
        .unwrap();
    assert_eq!(f.dev.status().host_resident, Some(8 * MIB));
    assert_eq!(f.resp_type(REQ_UNPLUG, REGION, 1), RESP_ACK);
    assert_eq!(
        f.slot_calls(),
        vec![(FIRST_SLOT, REGION, SLOT_SIZE), (FIRST_SLOT, REGION, 0)]
    );
    assert_eq!(
        f.dev.status().host_resident,
        Some(0),
        "the whole slot went back with it"
    );
}
