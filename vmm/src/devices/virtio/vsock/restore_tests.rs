//! Snapshot / restore of the vsock device behind the real virtio-mmio
//! transport: a simulated driver brings the device up through the
//! registers, makes traffic, leaves work in flight; the states are
//! serialized, guest memory is copied, and a fresh transport and device
//! (new socket, new CID) continue the same rings.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::packet::{Header, Op, EVENT_TRANSPORT_RESET, HOST_CID};
use super::tests::{
    assert_closed, assert_loop_idle, guest_mem, hdr, ops, read_all_available, run_until, Guest,
    CID, MEM_SIZE, QSIZE, SHORT_TIMEOUT,
};
use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::mmio::{MmioTransport, MmioTransportState, NOTIFY_OFFSET};
use crate::devices::virtio::{status, INT_CONFIG};

const REG_DRIVER_FEATURES: u64 = 0x20;
const REG_DRIVER_FEATURES_SEL: u64 = 0x24;
const REG_QUEUE_SEL: u64 = 0x30;
const REG_QUEUE_NUM: u64 = 0x38;
const REG_QUEUE_READY: u64 = 0x44;
const REG_INTERRUPT_STATUS: u64 = 0x60;
const REG_STATUS: u64 = 0x70;
const REG_QUEUE_DESC_LOW: u64 = 0x80;
const REG_QUEUE_DRIVER_LOW: u64 = 0x90;
const REG_QUEUE_DEVICE_LOW: u64 = 0xa0;
const REG_CONFIG_GENERATION: u64 = 0xfc;
const CONFIG_SPACE: u64 = 0x100;
const RUNNING: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// What the Linux driver does at probe, through the registers.
fn driver_init(t: &mut MmioTransport) {
    w(t, REG_STATUS, status::ACKNOWLEDGE);
    w(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, REG_DRIVER_FEATURES_SEL, 0);
    w(t, REG_DRIVER_FEATURES, 0);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
    w(t, REG_STATUS, RUNNING & !status::DRIVER_OK);
    assert_eq!(r(t, REG_STATUS), RUNNING & !status::DRIVER_OK);
    for q in 0..3 {
        let (desc, avail, used) = Guest::ring_addrs(q);
        w(t, REG_QUEUE_SEL, q as u32);
        w(t, REG_QUEUE_NUM, u32::from(QSIZE));
        w(t, REG_QUEUE_DESC_LOW, desc as u32);
        w(t, REG_QUEUE_DRIVER_LOW, avail as u32);
        w(t, REG_QUEUE_DEVICE_LOW, used as u32);
        w(t, REG_QUEUE_READY, 1);
    }
    w(t, REG_STATUS, RUNNING);
    assert_eq!(r(t, REG_STATUS), RUNNING);
}

struct Side {
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
}

impl Side {
    fn new(dev: Vsock) -> Self {
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        Self { dev, em }
    }

    fn run(&mut self) {
        for _ in 0..50 {
            if self.em.run_with_timeout(20).unwrap() == 0 {
                return;
            }
        }
    }

    /// QueueNotify through the transport, then let the event loop work.
    fn notify(&mut self, t: &mut MmioTransport, q: usize) {
        w(t, NOTIFY_OFFSET, q as u32);
        self.run();
    }

    fn metrics(&self) -> VsockMetrics {
        self.dev.lock().unwrap().metrics().clone()
    }
}

fn side_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.to_path_buf().into_os_string();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

fn with_cid(cid: u64, h: Header) -> Header {
    Header { src_cid: cid, ..h }
}

/// Guest connects from `gport` to host port 52 (listener `l`).
fn guest_connect(
    side: &mut Side,
    t: &mut MmioTransport,
    g: &mut Guest,
    cid: u64,
    l: &UnixListener,
    gport: u32,
) -> UnixStream {
    g.send(with_cid(cid, hdr(Op::Request, gport, 52)), &[]);
    side.notify(t, TXQ);
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Response]);
    assert_eq!(pkts[0].0.dst_cid, cid);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (52, gport));
    let (s, _) = l.accept().unwrap();
    s
}

/// Host client connects through `uds` with `CONNECT port`; the guest
/// accepts. Returns the client (after its `OK` line) and the guest's port
/// pair.
fn host_connect(
    side: &mut Side,
    t: &mut MmioTransport,
    g: &mut Guest,
    cid: u64,
    uds: &Path,
    port: u32,
) -> (UnixStream, Header) {
    let mut c = UnixStream::connect(uds).unwrap();
    c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    side.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Request]);
    let req = pkts[0].0;
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (HOST_CID, cid, port)
    );
    let resp = Header {
        src_port: req.dst_port,
        dst_port: req.src_port,
        ..with_cid(cid, hdr(Op::Response, 0, 0))
    };
    g.send(resp, &[]);
    side.notify(t, TXQ);
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        assert_eq!(c.read(&mut b).unwrap(), 1, "OK line cut short");
        line.push(b[0]);
    }
    assert_eq!(line, format!("OK {}\n", req.src_port).into_bytes());
    (c, resp)
}

fn copy_memory(from: &GuestMemoryMmap) -> GuestMemoryMmap {
    let mut bytes = vec![0u8; MEM_SIZE];
    from.read_slice(&mut bytes, GuestAddress(0)).unwrap();
    let to = guest_mem();
    to.write_slice(&bytes, GuestAddress(0)).unwrap();
    to
}

#[test]
fn restore_continues_rings_resets_transport_and_serves_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let uds1 = dir.path().join("v1.sock");
    let uds2 = dir.path().join("v2.sock");
    let l1 = UnixListener::bind(side_path(&uds1, 52)).unwrap();
    let l2 = UnixListener::bind(side_path(&uds2, 52)).unwrap();
    l2.set_nonblocking(true).unwrap();

    // ---- the original VM ----
    let mem1 = guest_mem();
    let mut g = Guest::new(&mem1);
    let mut side1 = Side::new(Vsock::new(CID, &uds1, Limits::default()).unwrap());
    let mut t1 = MmioTransport::new(mem1.clone(), side1.dev.clone()).unwrap();
    driver_init(&mut t1);
    side1.run();
    g.add_rx(16, 4096);
    g.add_event_buf();
    g.add_event_buf();
    side1.notify(&mut t1, RXQ);
    side1.notify(&mut t1, EVQ);

    let mut s1 = guest_connect(&mut side1, &mut t1, &mut g, CID, &l1, 1000);
    g.send(hdr(Op::Rw, 1000, 52), b"before");
    side1.notify(&mut t1, TXQ);
    assert_eq!(read_all_available(&mut s1), b"before");
    let (mut c1, _) = host_connect(&mut side1, &mut t1, &mut g, CID, &uds1, 1234);
    // Three TX chains (REQUEST, RW, RESPONSE) and two RX buffers used.
    assert_eq!(g.used(TXQ).len(), 3);
    assert_eq!((g.used_idx(TXQ), g.used_idx(RXQ)), (3, 2));
    assert_eq!(g.used_idx(EVQ), 0);

    // In flight at snapshot time: two TX chains the device has not seen
    // (data on an existing connection, and a new connect attempt).
    let stale_rw_head = g.next_tx_head();
    g.send(hdr(Op::Rw, 1000, 52), b"in flight");
    let stale_req_head = g.next_tx_head();
    g.send(hdr(Op::Request, 1001, 52), &[]);

    // ---- snapshot (vCPUs would be paused here) ----
    let ts = t1.state();
    let vs = side1.dev.lock().unwrap().state();
    assert_eq!(ts.status, RUNNING);
    assert_eq!(ts.acked_features, 1 << 32);
    let (tx, rx, ev) = (ts.queues[TXQ], ts.queues[RXQ], ts.queues[EVQ]);
    assert_eq!((tx.next_avail, tx.next_used), (3, 3));
    assert_eq!((rx.next_avail, rx.next_used), (2, 2));
    assert_eq!((ev.next_avail, ev.next_used), (0, 0));
    assert_eq!(vs.queues, ts.queues);
    assert_eq!(vs.connections.len(), 2);
    let ts: MmioTransportState =
        serde_json::from_str(&serde_json::to_string(&ts).unwrap()).unwrap();
    let vs: VsockState = serde_json::from_str(&serde_json::to_string(&vs).unwrap()).unwrap();
    let mem2 = copy_memory(&mem1);

    // The original process goes away: its host connections close.
    drop(t1);
    drop(side1);
    assert_closed(&mut s1);
    assert_closed(&mut c1);

    // ---- restore as a clone: new socket, new CID ----
    const NEW_CID: u64 = 7;
    let mut side2 = Side::new(Vsock::restore(NEW_CID, &uds2, Limits::default(), &vs).unwrap());
    let mut t2 = MmioTransport::restore(mem2.clone(), side2.dev.clone(), &ts).unwrap();
    let mut g = g.rebind(&mem2);
    assert!(side2.dev.lock().unwrap().is_active());
    assert_eq!(r(&mut t2, REG_STATUS), RUNNING);
    // The new CID is visible in config space, announced by a generation
    // bump and a configuration interrupt.
    let mut cfg = [0u8; 8];
    t2.read(CONFIG_SPACE, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), NEW_CID);
    assert_eq!(r(&mut t2, REG_CONFIG_GENERATION), ts.config_generation + 1);
    assert_ne!(r(&mut t2, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);

    side2.run();
    // The two in-flight TX chains were consumed; the used index continues.
    assert_eq!(
        g.used(TXQ),
        vec![(stale_rw_head, 0), (stale_req_head, 0)],
        "stale TX chains returned in order"
    );
    assert_eq!(g.used_idx(TXQ), 5);
    // ... answered with RSTs (their connections are gone), in the RX
    // buffers the guest had posted before the snapshot ...
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rst, Op::Rst]);
    let ports: Vec<_> = pkts.iter().map(|(h, _)| (h.src_port, h.dst_port)).collect();
    assert_eq!(ports, vec![(52, 1000), (52, 1001)]);
    assert!(pkts.iter().all(|(h, _)| h.dst_cid == NEW_CID));
    assert_eq!(g.used_idx(RXQ), 4);
    // ... and never forwarded: the pending REQUEST did not connect.
    assert_eq!(
        l2.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    // TRANSPORT_RESET in the first event buffer; the second stays posted.
    assert_eq!(g.event_words(), vec![EVENT_TRANSPORT_RESET]);
    assert_eq!(g.outstanding(EVQ), 1);
    assert_ne!(
        r(&mut t2, REG_INTERRUPT_STATUS) & crate::devices::virtio::INT_VRING,
        0
    );
    let m = side2.metrics();
    assert_eq!((m.stale_tx, m.rst_sent, m.events_sent), (2, 2, 1));
    assert_eq!(m.conns_guest_initiated, 0);
    assert_eq!(side2.dev.lock().unwrap().muxer.connection_count(), 0);

    // ---- a host client before the guest handled TRANSPORT_RESET ----
    // Its REQUEST is held back: the guest could still answer with its old
    // CID, or reset the new connection when it handles the event.
    let mut early = UnixStream::connect(&uds2).unwrap();
    early.write_all(b"CONNECT 1234\n").unwrap();
    side2.run();
    assert!(
        g.recv().is_empty(),
        "REQUEST sent before the reset was handled"
    );
    // The driver handled the event and gives the buffer back (as Linux
    // does): the REQUEST goes out, under the new CID.
    g.add_event_buf();
    side2.notify(&mut t2, EVQ);
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Request]);
    let req = pkts[0].0;
    assert_eq!((req.dst_cid, req.dst_port), (NEW_CID, 1234));
    // The guest refuses it; the client sees its connection closed.
    g.send(
        Header {
            src_port: req.dst_port,
            dst_port: req.src_port,
            ..with_cid(NEW_CID, hdr(Op::Rst, 0, 0))
        },
        &[],
    );
    side2.notify(&mut t2, TXQ);
    assert_closed(&mut early);

    // ---- new traffic after restore, both directions, under the new CID ----
    l2.set_nonblocking(false).unwrap();
    let mut s2 = guest_connect(&mut side2, &mut t2, &mut g, NEW_CID, &l2, 2000);
    g.send(with_cid(NEW_CID, hdr(Op::Rw, 2000, 52)), b"after restore");
    side2.notify(&mut t2, TXQ);
    assert_eq!(read_all_available(&mut s2), b"after restore");
    s2.write_all(b"pong").unwrap();
    side2.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rw]);
    assert_eq!(pkts[0].1, b"pong");
    let (mut c2, resp) = host_connect(&mut side2, &mut t2, &mut g, NEW_CID, &uds2, 1234);
    c2.write_all(b"from host").unwrap();
    side2.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rw]);
    assert_eq!(pkts[0].1, b"from host");
    assert_eq!(pkts[0].0.dst_port, resp.src_port);
    // TX: 5 before + RST (the early client) + REQUEST, RW, RESPONSE.
    assert_eq!(g.used_idx(TXQ), 9);
    // Old-CID packets are no longer accepted.
    g.send(hdr(Op::Rw, 2000, 52), b"old cid");
    side2.notify(&mut t2, TXQ);
    assert_eq!(ops(&g.recv()), vec![Op::Rst]);
    assert_eq!(side2.metrics().bad_cid, 1);

    // A second snapshot of the restored device sees the continued rings.
    let ts2 = t2.state();
    assert_eq!(ts2.queues[TXQ].next_avail, 10);
    assert_eq!(ts2.queues[TXQ].next_used, 10);
}

#[test]
fn restore_with_same_cid_resets_transport_without_config_change() {
    let dir = tempfile::tempdir().unwrap();
    let mem1 = guest_mem();
    let mut g = Guest::new(&mem1);
    let mut side1 =
        Side::new(Vsock::new(CID, dir.path().join("a.sock"), Limits::default()).unwrap());
    let mut t1 = MmioTransport::new(mem1.clone(), side1.dev.clone()).unwrap();
    driver_init(&mut t1);
    g.add_rx(4, 4096);
    side1.notify(&mut t1, RXQ);
    // Ack the activation-time interrupt state so none is pending.
    let pending = r(&mut t1, REG_INTERRUPT_STATUS);
    w(&mut t1, 0x64, pending);
    let ts = t1.state();
    let vs = side1.dev.lock().unwrap().state();
    assert_eq!(ts.interrupt_status, 0);
    drop(t1);
    drop(side1);

    let mem2 = copy_memory(&mem1);
    let mut side2 =
        Side::new(Vsock::restore(CID, dir.path().join("b.sock"), Limits::default(), &vs).unwrap());
    let mut t2 = MmioTransport::restore(mem2.clone(), side2.dev.clone(), &ts).unwrap();
    let mut g = g.rebind(&mem2);
    assert_eq!(r(&mut t2, REG_CONFIG_GENERATION), ts.config_generation);
    assert_eq!(r(&mut t2, REG_INTERRUPT_STATUS), 0);
    side2.run();
    // No event buffer yet: the reset waits for one.
    assert!(g.event_words().is_empty());
    g.add_event_buf();
    side2.notify(&mut t2, EVQ);
    assert_eq!(g.event_words(), vec![EVENT_TRANSPORT_RESET]);
    // Sent once only.
    g.add_event_buf();
    side2.notify(&mut t2, EVQ);
    assert!(g.event_words().is_empty());
    assert_eq!(side2.metrics().events_sent, 1);
    assert_eq!(side2.metrics().stale_tx, 0);
}

#[test]
fn held_host_connect_times_out_and_never_reaches_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let mem1 = guest_mem();
    let mut g = Guest::new(&mem1);
    let mut side1 =
        Side::new(Vsock::new(CID, dir.path().join("a.sock"), Limits::default()).unwrap());
    let mut t1 = MmioTransport::new(mem1.clone(), side1.dev.clone()).unwrap();
    driver_init(&mut t1);
    g.add_rx(4, 4096);
    g.add_event_buf();
    side1.notify(&mut t1, RXQ);
    side1.notify(&mut t1, EVQ);
    let ts = t1.state();
    let vs = side1.dev.lock().unwrap().state();
    drop(t1);
    drop(side1);

    let mem2 = copy_memory(&mem1);
    let uds2 = dir.path().join("b.sock");
    let limits = Limits {
        connect_timeout: SHORT_TIMEOUT,
        ..Limits::default()
    };
    let mut side2 = Side::new(Vsock::restore(CID, &uds2, limits, &vs).unwrap());
    let mut t2 = MmioTransport::restore(mem2.clone(), side2.dev.clone(), &ts).unwrap();
    let mut g = g.rebind(&mem2);
    side2.run();
    assert_eq!(g.event_words(), vec![EVENT_TRANSPORT_RESET]);

    // The guest does not hand the event buffer back: the REQUEST stays
    // held (RX buffers are there), and the client is not kept waiting
    // beyond the timeout.
    let start = Instant::now();
    let mut c = UnixStream::connect(&uds2).unwrap();
    c.write_all(b"CONNECT 1234\n").unwrap();
    side2.run();
    assert!(g.recv().is_empty());
    assert!(side2.dev.lock().unwrap().muxer.holding_host_requests());
    let dev = side2.dev.clone();
    assert!(run_until(&mut side2.em, Duration::from_secs(10), || {
        dev.lock().unwrap().metrics().connect_timeouts > 0
    }));
    assert!(start.elapsed() >= SHORT_TIMEOUT, "given up early");
    assert_closed(&mut c);
    assert!(g.recv().is_empty(), "no RST: the guest never saw a REQUEST");
    assert_loop_idle(&mut side2.em, &side2.dev);

    // The guest handles the reset late: nothing is released for the
    // client that is gone.
    g.add_event_buf();
    side2.notify(&mut t2, EVQ);
    assert!(!side2.dev.lock().unwrap().muxer.holding_host_requests());
    assert!(g.recv().is_empty(), "REQUEST of a timed-out client");
    let m = side2.metrics();
    assert_eq!(
        (m.connect_timeouts, m.conns_host_initiated, m.rst_sent),
        (1, 1, 0)
    );
    // A new client is served.
    let _ = host_connect(&mut side2, &mut t2, &mut g, CID, &uds2, 1234);
}

#[test]
fn restore_of_an_inactive_device_waits_for_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let mem = guest_mem();
    let dev = Vsock::new(CID, dir.path().join("a.sock"), Limits::default()).unwrap();
    let vs = dev.state();
    assert_eq!(vs.acked_features, None);
    let t = MmioTransport::new(mem.clone(), Arc::new(Mutex::new(dev))).unwrap();
    let ts = t.state();
    drop(t);
    let side =
        Side::new(Vsock::restore(9, dir.path().join("b.sock"), Limits::default(), &vs).unwrap());
    let mut t2 = MmioTransport::restore(mem.clone(), side.dev.clone(), &ts).unwrap();
    assert!(!side.dev.lock().unwrap().is_active());
    // No DRIVER_OK: no configuration interrupt, only the generation moves.
    assert_eq!(r(&mut t2, REG_INTERRUPT_STATUS), 0);
    assert_eq!(r(&mut t2, REG_CONFIG_GENERATION), 1);
    let mut side = side;
    let mut g = Guest::new(&mem);
    // Probe resets the device first, then brings it up from scratch.
    w(&mut t2, REG_STATUS, 0);
    driver_init(&mut t2);
    g.add_event_buf();
    side.notify(&mut t2, EVQ);
    assert!(g.event_words().is_empty(), "fresh driver: nothing to reset");
}

#[test]
fn restore_rejects_a_bad_cid_and_a_busy_socket() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Vsock::new(CID, dir.path().join("a.sock"), Limits::default()).unwrap();
    let vs = dev.state();
    assert!(matches!(
        Vsock::restore(2, dir.path().join("b.sock"), Limits::default(), &vs),
        Err(VsockError::InvalidCid(2))
    ));
    // The original still listens there.
    assert!(matches!(
        Vsock::restore(4, dir.path().join("a.sock"), Limits::default(), &vs),
        Err(VsockError::Bind { .. })
    ));
}
