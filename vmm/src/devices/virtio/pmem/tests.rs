//! The pmem device against guest memory built here: a simulated driver on
//! one split ring, real files in a temp dir.

use std::io::Write;

use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::DescriptorTable;
use vm_memory::{Address, Bytes, GuestAddress};

use super::request::{REQ_TYPE_FLUSH, RESP_ERR, RESP_OK};
use super::*;
use crate::devices::virtio::IrqTrigger;

const MEM_SIZE: usize = 0x10_0000;
const QSIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x8000;

fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn file_with(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(content)
        .unwrap();
    p
}

/// The driver side of the request queue.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    table: DescriptorTable<'a, GuestMemoryMmap>,
    next_desc: u16,
    avail: u16,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        mem.write_slice(&[0u8; 0x3000], GuestAddress(DESC)).unwrap();
        Self {
            mem,
            table: DescriptorTable::new(mem, GuestAddress(DESC), QSIZE),
            next_desc: 0,
            avail: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// Publishes a chain of (addr, len, flags); returns its head.
    fn push(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let (flags, next) = if i + 1 < descs.len() {
                (flags | VRING_DESC_F_NEXT as u16, (idx + 1) % QSIZE)
            } else {
                (flags, 0)
            };
            self.table
                .store(
                    idx,
                    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next)),
                )
                .unwrap();
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        let slot = u64::from(self.avail % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL + 2))
            .unwrap();
        head
    }

    /// A well-formed request of `ty`; the answer goes to BUF + 0x100 * n.
    fn request(&mut self, ty: u32, n: u64) -> u64 {
        let req = BUF + 0x100 * n;
        self.mem.write_obj(ty, GuestAddress(req)).unwrap();
        self.mem
            .write_obj(0xdeadu32, GuestAddress(req + 8))
            .unwrap();
        self.push(&[(req, 4, 0), (req + 8, 4, VRING_DESC_F_WRITE as u16)]);
        req + 8
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// (head, len) of used entry `i`.
    fn used(&self, i: u16) -> (u32, u32) {
        let e = GuestAddress(USED + 4 + 8 * u64::from(i % QSIZE));
        let id: u32 = self.mem.read_obj(e).unwrap();
        let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
        (id, len)
    }
}

fn activate(dev: &mut Pmem, mem: &GuestMemoryMmap, q: Queue) -> Arc<IrqTrigger> {
    let irq = Arc::new(IrqTrigger::new().unwrap());
    dev.activate(ActivateContext {
        mem: mem.clone(),
        acked_features: 1 << VIRTIO_F_VERSION_1,
        queues: vec![q],
        irq: irq.clone(),
    })
    .unwrap();
    irq
}

#[test]
fn file_is_mapped_shared_and_window_rounded_to_2mib() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_with(dir.path(), "base", b"hello pmem");
    let mut dev = Pmem::new(&p, true).unwrap();
    assert_eq!(dev.region_size(), REGION_ALIGN);
    assert_eq!(dev.device_type(), 27);
    let mut b = [0u8; 10];
    assert!(dev.mapping().read(0, &mut b));
    assert_eq!(&b, b"hello pmem");
    // The padding past the file reads as zeros.
    let mut tail = [1u8; 16];
    assert!(dev.mapping().read(REGION_ALIGN - 16, &mut tail));
    assert_eq!(tail, [0; 16]);
    assert!(!dev.mapping().read(REGION_ALIGN - 1, &mut tail));

    // Config space: start, size (little endian), nothing beyond.
    dev.set_guest_addr(0x1_0000_0000);
    let mut cfg = [0u8; 16];
    dev.read_config(0, &mut cfg);
    assert_eq!(
        u64::from_le_bytes(cfg[..8].try_into().unwrap()),
        0x1_0000_0000
    );
    assert_eq!(
        u64::from_le_bytes(cfg[8..].try_into().unwrap()),
        REGION_ALIGN
    );
    let mut hi = [0xffu8; 4];
    dev.read_config(12, &mut hi);
    assert_eq!(hi, [0; 4]);
    dev.read_config(u64::MAX, &mut hi);
    assert_eq!(hi, [0; 4]);
    dev.write_config(0, &[1, 2, 3, 4]);
    dev.read_config(0, &mut cfg);
    assert_eq!(
        u64::from_le_bytes(cfg[..8].try_into().unwrap()),
        0x1_0000_0000
    );

    // A file of exactly 2 MiB needs no padding.
    let two = dir.path().join("two");
    std::fs::File::create(&two)
        .unwrap()
        .set_len(REGION_ALIGN)
        .unwrap();
    assert_eq!(Pmem::new(&two, false).unwrap().region_size(), REGION_ALIGN);
}

#[test]
fn bad_files_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let e = Pmem::new(dir.path().join("missing"), true).err().unwrap();
    assert!(e.to_string().contains("cannot open pmem file"), "{e}");
    let empty = file_with(dir.path(), "empty", b"");
    let e = Pmem::new(&empty, true).err().unwrap();
    assert!(matches!(e, PmemError::Empty(_)), "{e}");
    let e = Pmem::new(dir.path(), true).err().unwrap();
    assert!(
        matches!(e, PmemError::NotAFile(_) | PmemError::Open { .. }),
        "{e}"
    );
}

#[test]
fn flush_is_answered_after_fsync_and_unknown_requests_fail() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_with(dir.path(), "upper", &[0u8; 4096]);
    let mut dev = Pmem::new(&p, false).unwrap();
    let mem = guest_mem();
    let mut drv = Driver::new(&mem);
    let irq = activate(&mut dev, &mem, drv.queue());
    let r1 = drv.request(REQ_TYPE_FLUSH, 0);
    let r2 = drv.request(7, 1);
    dev.process_queue();
    assert_eq!(drv.used_idx(), 2);
    assert_eq!(drv.used(0), (0, 4));
    assert_eq!(drv.used(1), (2, 4));
    assert_eq!(mem.read_obj::<u32>(GuestAddress(r1)).unwrap(), RESP_OK);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(r2)).unwrap(), RESP_ERR);
    assert_eq!(dev.flushes(), 1);
    assert_eq!(irq.status(), crate::devices::virtio::INT_VRING);

    // Writes through the window reach the file (MAP_SHARED), and survive
    // the device.
    // SAFETY: the window is a live read-write mapping of at least 4 KiB.
    unsafe { *(dev.mapping().host_addr() as *mut u8).add(100) = 0x5a };
    drop(dev);
    assert_eq!(std::fs::read(&p).unwrap()[100], 0x5a);
}

#[test]
fn hostile_chains_are_returned_empty() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_with(dir.path(), "base", b"x");
    let mut dev = Pmem::new(&p, true).unwrap();
    let mem = guest_mem();
    let mut drv = Driver::new(&mem);
    activate(&mut dev, &mem, drv.queue());
    let w = VRING_DESC_F_WRITE as u16;
    let far = MEM_SIZE as u64 + 0x1000;
    // No response descriptor; response too short; request outside memory;
    // response outside memory; only a writable descriptor.
    drv.push(&[(BUF, 4, 0)]);
    drv.push(&[(BUF, 4, 0), (BUF + 8, 2, w)]);
    drv.push(&[(far, 4, 0), (BUF + 8, 4, w)]);
    drv.push(&[(BUF, 4, 0), (far, 4, w)]);
    drv.push(&[(BUF + 8, 4, w)]);
    dev.process_queue();
    assert_eq!(drv.used_idx(), 5);
    for i in 0..5 {
        assert_eq!(drv.used(i).1, 0, "chain {i}");
    }
    assert_eq!(dev.flushes(), 0);

    // An avail index far ahead of the ring: nothing popped, no hang.
    mem.write_obj(drv.avail.wrapping_add(1000), GuestAddress(AVAIL + 2))
        .unwrap();
    dev.process_queue();
    assert_eq!(drv.used_idx(), 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Arbitrary descriptor tables and avail rings never panic the device.
    #[test]
    fn random_rings_never_break_the_device(
        descs in proptest::collection::vec((any::<u64>(), any::<u32>(), any::<u16>(), any::<u16>()), 16),
        avail in proptest::collection::vec(any::<u16>(), 18),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "base", b"x");
        let mut dev = Pmem::new(&p, true).unwrap();
        let mem = guest_mem();
        let drv = Driver::new(&mem);
        activate(&mut dev, &mem, drv.queue());
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            // Half the addresses inside guest memory, to get past the
            // first checks.
            let addr = if i % 2 == 0 { addr % MEM_SIZE as u64 } else { addr };
            drv.table.store(i as u16, RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))).unwrap();
        }
        for (i, v) in avail.iter().enumerate() {
            mem.write_obj(*v, GuestAddress(AVAIL + 2 * i as u64)).unwrap();
        }
        dev.process_queue();
        dev.process_queue();
    }
}

#[test]
fn restore_needs_the_same_file_size() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_with(dir.path(), "base", &[7u8; 5000]);
    let mut dev = Pmem::new(&p, true).unwrap();
    dev.set_guest_addr(0x1_0000_0000);
    let state = dev.state();
    let back = Pmem::restore(&state).unwrap();
    assert_eq!(back.guest_addr(), 0x1_0000_0000);
    assert_eq!(back.state(), state);

    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    let e = Pmem::restore(&state).err().unwrap();
    assert!(matches!(e, PmemError::SizeChanged { .. }), "{e}");
    std::fs::remove_file(&p).unwrap();
    assert!(Pmem::restore(&state).is_err());
}

#[test]
fn image_slot_takes_another_file_in_place_and_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    // The slot: 4 MiB of zeros (a generic template's placeholder).
    let slot = dir.path().join("slot");
    std::fs::File::create(&slot)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let mut dev = Pmem::new(&slot, true).unwrap();
    let host = dev.mapping().host_addr();
    let window = dev.region_size();
    let image = file_with(dir.path(), "base", &[0xab; 5000]);
    dev.replace_file(&image).unwrap();
    assert_eq!(
        (dev.mapping().host_addr(), dev.region_size()),
        (host, window)
    );
    assert_eq!(dev.path(), image.as_path());
    let mut b = [0u8; 4];
    assert!(dev.mapping().read(4996, &mut b));
    assert_eq!(b, [0xab; 4], "the image is at the start of the window");
    assert!(dev.mapping().read(5000, &mut b));
    assert_eq!(b, [0; 4], "after the file: zeros, never beyond it");
    assert!(dev.mapping().read(window - 4, &mut b));
    assert_eq!(b, [0; 4]);
    // A snapshot of it restores with the same window.
    let st = dev.state();
    assert_eq!((st.file_len, st.region_size), (5000, window));
    let again = Pmem::restore(&st).unwrap();
    assert_eq!(again.region_size(), window);

    let big = dir.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(window + 1)
        .unwrap();
    assert!(matches!(
        dev.replace_file(&big),
        Err(PmemError::TooLargeForWindow { .. })
    ));
    assert!(matches!(
        dev.replace_file(&dir.path().join("missing")),
        Err(PmemError::Open { .. })
    ));
    let mut rw = Pmem::new(&image, false).unwrap();
    assert!(matches!(
        rw.replace_file(&image),
        Err(PmemError::NotReadOnly(_))
    ));
}
