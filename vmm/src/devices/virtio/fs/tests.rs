//! The vhost-user-fs device: config space, tags and `--fs` parsing, and —
//! against a real virtiofsd serving a temporary directory — the whole path
//! from the guest driver's register writes through the virtio-mmio
//! transport to FUSE replies in guest memory, and a backend that dies.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::SubscriberOps;
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::{status, INT_VRING};
use crate::event_loop::{EventManager, Subscriber};

fn lifecycle() -> Arc<Lifecycle> {
    Arc::new(Lifecycle::new(Instant::now()).unwrap())
}

#[test]
fn config_space_has_tag_and_one_request_queue() {
    let dev = VhostUserFs::new("vol0", lifecycle()).unwrap();
    let mut cfg = [0xffu8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], b"vol0");
    assert!(cfg[4..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cfg[36..].try_into().unwrap()), 1);
    let mut tail = [0xffu8; 8];
    dev.read_config(38, &mut tail);
    assert_eq!(tail, [0; 8], "past the end reads zeros");
    dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    assert_eq!(
        dev.avail_features(),
        GUEST_FEATURES,
        "a slot offers the fixed set"
    );
}

#[test]
fn tags_and_fs_arguments_are_checked() {
    assert!(validate_tag("vol0").is_ok());
    assert!(validate_tag(&"a".repeat(36)).is_ok());
    for bad in ["", "a b", "a/b", "ü", &"a".repeat(37)] {
        assert!(validate_tag(bad).is_err(), "{bad:?}");
    }
    let c: FsConfig = "data=/run/v.sock".parse().unwrap();
    assert_eq!(c.tag, "data");
    assert_eq!(c.socket, PathBuf::from("/run/v.sock"));
    for bad in ["data", "=/s", "data=", "bad tag=/s"] {
        assert!(bad.parse::<FsConfig>().is_err(), "{bad:?}");
    }
    let many: Vec<FsConfig> = (0..9)
        .map(|i| format!("t{i}=/s").parse().unwrap())
        .collect();
    assert!(validate_configs(&many[..8], 0).is_ok());
    assert!(validate_configs(&many, 0)
        .unwrap_err()
        .contains("at most 8"));
    assert!(validate_configs(&many[..2], 7).is_err());
    let dup = vec![many[0].clone(), many[0].clone()];
    assert!(validate_configs(&dup, 0).unwrap_err().contains("twice"));
    let slot = vec!["vol1=/s".parse().unwrap()];
    assert!(validate_configs(&slot, 2).is_err());
    assert!(validate_configs(&slot, 1).is_ok());
}

#[test]
fn a_missing_backend_socket_is_a_clear_error() {
    let (_, shared) = SharedMemory::create(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut dev = VhostUserFs::new("data", lifecycle()).unwrap();
    let err = dev
        .connect(Path::new("/nonexistent/v.sock"), Arc::new(shared))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data") && err.contains("/nonexistent/v.sock") && err.contains("virtiofsd"),
        "{err}"
    );
}

/// virtiofsd serving `dir` on a socket in `dir`'s parent.
struct Virtiofsd {
    child: Child,
    socket: PathBuf,
}

impl Virtiofsd {
    fn start(shared_dir: &Path, socket: &Path) -> Self {
        let bin = shadowfs::tools::find_or_install_virtiofsd().expect("virtiofsd");
        let child = Command::new(bin)
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared_dir)
            .args([
                "--sandbox",
                "none",
                "--cache",
                "never",
                "--log-level",
                "error",
            ])
            .spawn()
            .expect("start virtiofsd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            socket: socket.to_path_buf(),
        }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Guest layout of the test: queue q's rings at RINGS + q * 0x4000, buffers
// at BUFS.
const RINGS: u64 = 0x10000;
const BUFS: u64 = 0x40000;
const QSIZE: u16 = 16;

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Drives the transport as Linux's virtio-mmio and virtio-fs drivers do,
/// up to DRIVER_OK; returns the status read back.
fn driver_probe(t: &mut MmioTransport, qsize: u16) -> u32 {
    w(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    let features = GUEST_FEATURES & !(1 << VIRTIO_F_RING_EVENT_IDX);
    w(t, 0x24, 0);
    w(t, 0x20, features as u32);
    w(t, 0x24, 1);
    w(t, 0x20, (features >> 32) as u32);
    w(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..2u32 {
        let base = RINGS + u64::from(q) * 0x4000;
        w(t, 0x30, q);
        w(t, 0x38, u32::from(qsize));
        w(t, 0x80, base as u32);
        w(t, 0x84, 0);
        w(t, 0x90, (base + 0x1000) as u32);
        w(t, 0x94, 0);
        w(t, 0xa0, (base + 0x2000) as u32);
        w(t, 0xa4, 0);
        w(t, 0x44, 1);
    }
    w(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    r(t, 0x70)
}

/// Puts a FUSE request (`req`, device-readable) and a 4 KiB reply buffer
/// (device-writable) on the request queue as avail entry `n`, notifies,
/// waits for the used entry and returns the reply.
fn fuse_call(
    t: &mut MmioTransport,
    dev: &Arc<Mutex<VhostUserFs>>,
    mem: &GuestMemoryMmap,
    n: u16,
    req: &[u8],
) -> Vec<u8> {
    fuse_call_at(t, dev, mem, n, req, BUFS)
}

/// [`fuse_call`] with the request and reply buffers at `bufs`.
fn fuse_call_at(
    t: &mut MmioTransport,
    dev: &Arc<Mutex<VhostUserFs>>,
    mem: &GuestMemoryMmap,
    n: u16,
    req: &[u8],
    bufs: u64,
) -> Vec<u8> {
    let base = RINGS + 0x4000; // queue 1
    let (d0, d1) = (u64::from(n) * 2, u64::from(n) * 2 + 1);
    let (req_addr, reply_addr) = (
        bufs + u64::from(n) * 0x2000,
        bufs + u64::from(n) * 0x2000 + 0x1000,
    );
    mem.write_slice(req, GuestAddress(req_addr)).unwrap();
    // struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
    let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let a = GuestAddress(base + i * 16);
        mem.write_obj(addr, a).unwrap();
        mem.write_obj(len, a.unchecked_add(8)).unwrap();
        mem.write_obj(flags, a.unchecked_add(12)).unwrap();
        mem.write_obj(next, a.unchecked_add(14)).unwrap();
    };
    desc(d0, req_addr, req.len() as u32, 1 /* NEXT */, d1 as u16);
    desc(d1, reply_addr, 0x1000, 2 /* WRITE */, 0);
    let avail = base + 0x1000;
    mem.write_obj(
        d0 as u16,
        GuestAddress(avail + 4 + 2 * u64::from(n % QSIZE)),
    )
    .unwrap();
    mem.write_obj(n + 1, GuestAddress(avail + 2)).unwrap();
    // QueueNotify for queue 1: the eventfd virtiofsd got as kick fd.
    w(t, 0x50, 1);
    let used = base + 0x2000;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        if idx == n + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no reply from virtiofsd");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The backend signalled the call eventfd; the event loop's handling
    // raises the interrupt with the VRING bit.
    let call = dev.lock().unwrap().call_evts[1].try_clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while call.read().is_err() {
        assert!(Instant::now() < deadline, "no call from virtiofsd");
        std::thread::sleep(Duration::from_millis(5));
    }
    call.write(1).unwrap();
    dev.lock().unwrap().signal_used(1);
    assert_ne!(r(t, 0x60) & INT_VRING, 0, "InterruptStatus has VRING");
    w(t, 0x64, INT_VRING);
    let len: u32 = mem
        .read_obj(GuestAddress(used + 4 + 8 * u64::from(n % QSIZE) + 4))
        .unwrap();
    let mut reply = vec![0u8; len as usize];
    mem.read_slice(&mut reply, GuestAddress(reply_addr))
        .unwrap();
    reply
}

fn fuse_in(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    v.extend_from_slice(&opcode.to_le_bytes());
    v.extend_from_slice(&unique.to_le_bytes());
    v.extend_from_slice(&nodeid.to_le_bytes());
    v.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    v.extend_from_slice(body);
    v
}

/// A guest-side view of a FUSE reply header: (error, unique).
fn fuse_out(reply: &[u8]) -> (i32, u64) {
    assert!(reply.len() >= 16, "short reply {reply:?}");
    (
        i32::from_le_bytes(reply[4..8].try_into().unwrap()),
        u64::from_le_bytes(reply[8..16].try_into().unwrap()),
    )
}

#[test]
fn virtiofsd_answers_fuse_through_the_transport_and_its_death_stops_the_vm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("share");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("hello"), b"from the host\n").unwrap();
    let fsd = Virtiofsd::start(&dir, &tmp.path().join("fs.sock"));

    let (mem, shared) = SharedMemory::create(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let lc = lifecycle();
    let mut dev = VhostUserFs::new("myfs", lc.clone()).unwrap();
    dev.connect(&fsd.socket, Arc::new(shared)).unwrap();
    assert_eq!(dev.avail_features() & GUEST_FEATURES, dev.avail_features());
    let dev = Arc::new(Mutex::new(dev));
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    let st = driver_probe(&mut t, QSIZE);
    assert_ne!(st & status::DRIVER_OK, 0, "activated: {st:#x}");

    // FUSE_INIT (26): fuse_init_in { major 7, minor 31, max_readahead, flags, flags2, unused[11] }
    let mut init = Vec::new();
    init.extend_from_slice(&7u32.to_le_bytes());
    init.extend_from_slice(&31u32.to_le_bytes());
    init.extend_from_slice(&[0u8; 56]);
    let reply = fuse_call(&mut t, &dev, &mem, 0, &fuse_in(26, 1, 0, &init));
    assert_eq!(fuse_out(&reply), (0, 1), "FUSE_INIT");
    assert_eq!(
        u32::from_le_bytes(reply[16..20].try_into().unwrap()),
        7,
        "major"
    );

    // FUSE_LOOKUP (1) of "hello" in the root (node 1): the host file's size.
    let reply = fuse_call(&mut t, &dev, &mem, 1, &fuse_in(1, 2, 1, b"hello\0"));
    assert_eq!(fuse_out(&reply), (0, 2), "FUSE_LOOKUP");
    let size = u64::from_le_bytes(reply[64..72].try_into().unwrap());
    assert_eq!(size, std::fs::metadata(dir.join("hello")).unwrap().size());

    // "..": virtiofsd keeps the guest inside the shared directory.
    let reply = fuse_call(&mut t, &dev, &mem, 2, &fuse_in(1, 3, 1, b"..\0"));
    let (err, _) = fuse_out(&reply);
    if err == 0 {
        let ino = u64::from_le_bytes(reply[56..64].try_into().unwrap());
        assert_eq!(
            ino,
            std::fs::metadata(&dir).unwrap().ino(),
            "'..' of the root is the root"
        );
    }

    // The backend dies: the event loop sees the hang-up and stops the VM
    // with the reason.
    let mut em = EventManager::new().unwrap();
    em.add_subscriber(dev.clone() as Subscriber);
    drop(fsd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lc.reason().is_none() {
        assert!(Instant::now() < deadline, "no stop after the backend died");
        em.run_with_timeout(100).unwrap();
    }
    let reason = format!("{:?}", lc.reason().unwrap());
    assert!(
        reason.contains("vhost-user-fs myfs: backend") && reason.contains("closed the connection"),
        "{reason}"
    );
    assert_eq!(
        lc.reason().unwrap().exit_code(),
        crate::exit::EXIT_VMM_ERROR
    );
}

#[test]
fn hostile_queue_setup_never_reaches_the_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let fsd = Virtiofsd::start(tmp.path(), &tmp.path().join("fs.sock"));
    let (mem, shared) = SharedMemory::create(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut dev = VhostUserFs::new("x", lifecycle()).unwrap();
    dev.connect(&fsd.socket, Arc::new(shared)).unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    // A queue size that is not a power of two is never taken: the queue
    // keeps a valid size, and that is what the backend gets.
    let st = driver_probe(&mut t, 15);
    assert_ne!(st & status::DRIVER_OK, 0, "{st:#x}");
    {
        let d = dev.lock().unwrap();
        let act = d.active.as_ref().unwrap();
        assert!(act.queues.iter().all(|q| q.size().is_power_of_two()));
        assert!(act.started);
    }
    // Rings outside guest memory: DRIVER_OK is refused, nothing is sent.
    w(&mut t, 0x70, 0);
    w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, 0x24, 1);
    w(&mut t, 0x20, 1);
    w(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..2u32 {
        w(&mut t, 0x30, q);
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0xffff_f000);
        w(&mut t, 0x84, 0x10);
        w(&mut t, 0x44, 1);
    }
    w(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert_eq!(r(&mut t, 0x70) & status::DRIVER_OK, 0);
    assert!(dev.lock().unwrap().active.is_none());
}

#[test]
fn a_slot_activates_without_backend_and_hands_its_rings_over_on_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("share");
    std::fs::create_dir(&dir).unwrap();
    let (mem, shared) = SharedMemory::create(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let dev = Arc::new(Mutex::new(VhostUserFs::new("vol0", lifecycle()).unwrap()));
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    let st = driver_probe(&mut t, QSIZE);
    assert_ne!(st & status::DRIVER_OK, 0, "a slot activates: {st:#x}");
    // The driver kicks before any backend exists (the eventfd keeps it).
    let fsd = Virtiofsd::start(&dir, &tmp.path().join("fs.sock"));
    dev.lock()
        .unwrap()
        .connect(&fsd.socket, Arc::new(shared))
        .unwrap();
    let mut init = Vec::new();
    init.extend_from_slice(&7u32.to_le_bytes());
    init.extend_from_slice(&31u32.to_le_bytes());
    init.extend_from_slice(&[0u8; 56]);
    let reply = fuse_call(&mut t, &dev, &mem, 0, &fuse_in(26, 9, 0, &init));
    assert_eq!(fuse_out(&reply), (0, 9));
    // Snapshot view: ring positions come from the used ring.
    let qs = dev.lock().unwrap().active_queues().unwrap();
    assert_eq!((qs[1].next_avail, qs[1].next_used), (1, 1));
}

#[test]
fn a_ring_across_a_region_boundary_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let fsd = Virtiofsd::start(tmp.path(), &tmp.path().join("fs.sock"));
    // Two RAM regions back to back: both ends of a ring may be in guest
    // memory while it straddles the two mappings.
    let (mem, shared) =
        SharedMemory::create(&[(GuestAddress(0), 1 << 20), (GuestAddress(1 << 20), 1 << 20)])
            .unwrap();
    let lc = lifecycle();
    let mut dev = VhostUserFs::new("x", lc.clone()).unwrap();
    dev.connect(&fsd.socket, Arc::new(shared)).unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let mut t = MmioTransport::new(mem, dev.clone()).unwrap();
    w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, 0x24, 1);
    w(&mut t, 0x20, 1);
    w(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..2u32 {
        let base = RINGS + u64::from(q) * 0x4000;
        w(&mut t, 0x30, q);
        w(&mut t, 0x38, 16);
        // Queue 1's descriptor table: 256 bytes from 1 MiB - 128.
        let desc = if q == 1 { (1 << 20) - 128 } else { base };
        w(&mut t, 0x80, desc as u32);
        w(&mut t, 0x90, (base + 0x1000) as u32);
        w(&mut t, 0xa0, (base + 0x2000) as u32);
        w(&mut t, 0x44, 1);
    }
    w(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert_eq!(r(&mut t, 0x70) & status::DRIVER_OK, 0);
    let reason = format!("{:?}", lc.reason().expect("the VM is stopped"));
    assert!(
        reason.contains("vhost-user-fs x") && reason.contains("not inside one region"),
        "{reason}"
    );
}

#[test]
fn a_driver_reset_and_reprobe_works_with_the_same_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("share");
    std::fs::create_dir(&dir).unwrap();
    let fsd = Virtiofsd::start(&dir, &tmp.path().join("fs.sock"));
    let (mem, shared) = SharedMemory::create(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let lc = lifecycle();
    let mut dev = VhostUserFs::new("r", lc.clone()).unwrap();
    dev.connect(&fsd.socket, Arc::new(shared)).unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    let mut init = Vec::new();
    init.extend_from_slice(&7u32.to_le_bytes());
    init.extend_from_slice(&31u32.to_le_bytes());
    init.extend_from_slice(&[0u8; 56]);
    for round in 0..2u64 {
        // A fresh driver: rings zeroed, status from 0.
        mem.write_slice(&[0u8; 0xc000], GuestAddress(RINGS))
            .unwrap();
        w(&mut t, 0x70, 0);
        let st = driver_probe(&mut t, QSIZE);
        assert_ne!(st & status::DRIVER_OK, 0, "round {round}: {st:#x}");
        let reply = fuse_call(&mut t, &dev, &mem, 0, &fuse_in(26, 40 + round, 0, &init));
        assert_eq!(fuse_out(&reply).1, 40 + round, "round {round}");
    }
    assert!(lc.reason().is_none(), "{:?}", lc.reason());
}

#[test]
fn plugged_hotplug_memory_reaches_virtiofsd_and_leaves_it_on_unplug() {
    use crate::shared_memory::hotplug_slot_size as slot_size;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("share");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("hello"), b"from the host\n").unwrap();
    let fsd = Virtiofsd::start(&dir, &tmp.path().join("fs.sock"));
    let region = 1u64 << 32;
    let (mem, shared) = SharedMemory::create_with_hotplug(
        &[(GuestAddress(0), 1 << 20)],
        Some((region, 2 * slot_size())),
    )
    .unwrap();
    let shared = Arc::new(shared);
    let mut dev = VhostUserFs::new("myfs", lifecycle()).unwrap();
    dev.connect(&fsd.socket, shared.clone()).unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let weak: std::sync::Weak<Mutex<VhostUserFs>> = Arc::downgrade(&dev);
    shared.watch(weak);
    // Plugged before the driver starts: in the first SET_MEM_TABLE.
    shared.share_hotplug_slot(1, true).unwrap();
    assert!(
        dev.lock().unwrap().announced_memory().is_empty(),
        "no table yet"
    );
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    assert_ne!(driver_probe(&mut t, QSIZE) & status::DRIVER_OK, 0);
    let slot = |i: u64| {
        shared
            .table()
            .into_iter()
            .find(|r| r.guest_addr == region + i * slot_size())
    };
    assert_eq!(
        dev.lock().unwrap().announced_memory(),
        vec![slot(1).unwrap()]
    );
    let mut init = Vec::new();
    init.extend_from_slice(&7u32.to_le_bytes());
    init.extend_from_slice(&31u32.to_le_bytes());
    init.extend_from_slice(&[0u8; 56]);
    let reply = fuse_call(&mut t, &dev, &mem, 0, &fuse_in(26, 1, 0, &init));
    assert_eq!(fuse_out(&reply), (0, 1), "FUSE_INIT");

    // Plugged while the backend runs: ADD_MEM_REG (virtiofsd offers
    // CONFIGURE_MEM_SLOTS), and a request whose buffers lie there works.
    assert!(
        dev.lock()
            .unwrap()
            .backend
            .as_ref()
            .unwrap()
            .configures_mem_slots(),
        "virtiofsd takes single memory regions"
    );
    shared.share_hotplug_slot(0, true).unwrap();
    let announced = dev.lock().unwrap().announced_memory();
    assert_eq!(announced.len(), 2);
    assert!(announced.contains(&slot(0).unwrap()));
    for (n, bufs) in [
        (1u16, region + 0x10_0000),
        (2, region + slot_size() + 0x20_0000),
    ] {
        let reply = fuse_call_at(
            &mut t,
            &dev,
            &mem,
            n,
            &fuse_in(1, u64::from(n) + 1, 1, b"hello\0"),
            bufs,
        );
        assert_eq!(
            fuse_out(&reply),
            (0, u64::from(n) + 1),
            "FUSE_LOOKUP, buffers at {bufs:#x}"
        );
        let size = u64::from_le_bytes(reply[64..72].try_into().unwrap());
        assert_eq!(size, 14);
    }

    // Unplugged: REM_MEM_REG; the backend keeps serving RAM buffers.
    shared.share_hotplug_slot(0, false).unwrap();
    shared.share_hotplug_slot(1, false).unwrap();
    assert!(dev.lock().unwrap().announced_memory().is_empty());
    let reply = fuse_call(&mut t, &dev, &mem, 3, &fuse_in(1, 4, 1, b"hello\0"));
    assert_eq!(fuse_out(&reply), (0, 4), "FUSE_LOOKUP after the unplug");
    shared.punch_hotplug(0, 2 * slot_size()).unwrap();
    assert_eq!(shared.hotplug_allocated(), Some(0));
}
