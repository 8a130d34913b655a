//! Device-level tests: a simulated guest driver on `MockSplitQueue` rings in
//! guest memory built here, real Unix sockets in a temp dir, and the real
//! event-manager loop.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::VirtqUsedElem;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::DescriptorTable;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::packet::{Header, Op, HEADER_SIZE, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::devices::virtio::{IrqTrigger, VirtioDevice};

pub(super) const CID: u64 = 3;
pub(super) const QSIZE: u16 = 64;
pub(super) const MEM_SIZE: usize = 0x200_0000;
const RX_BUF: u64 = 0x10_0000;
const TX_BUF: u64 = 0x100_0000;
const EV_BUF: u64 = 0x1f0_0000;
const SLOT: u64 = 0x1_1000;
const DATA_OFF: u64 = 0x100;

const AVAIL_OFF: u64 = 0x1000;
const USED_OFF: u64 = 0x2000;

fn ring_base(q: usize) -> u64 {
    q as u64 * 0x4000
}

pub(super) fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// The guest driver's side of the three queues. Descriptor tables come from
/// virtio-queue's mock; the rings are laid out here because the mock's
/// `MockSplitQueue` places the used ring over the tail of the avail ring.
pub(super) struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    tables: [DescriptorTable<'a, GuestMemoryMmap>; 3],
    next_desc: [u16; 3],
    avail: [u16; 3],
    seen: [u16; 3],
}

impl<'a> Guest<'a> {
    pub(super) fn new(mem: &'a GuestMemoryMmap) -> Self {
        // A fresh driver starts from zeroed rings.
        mem.write_slice(&[0u8; 0xc000], GuestAddress(0)).unwrap();
        Self {
            mem,
            tables: [0, 1, 2].map(|q| DescriptorTable::new(mem, GuestAddress(ring_base(q)), QSIZE)),
            next_desc: [0; 3],
            avail: [0; 3],
            seen: [0; 3],
        }
    }

    /// The same driver state over another copy of guest memory (a
    /// restored snapshot): rings are not touched.
    pub(super) fn rebind<'b>(&self, mem: &'b GuestMemoryMmap) -> Guest<'b> {
        Guest {
            mem,
            tables: [0, 1, 2].map(|q| DescriptorTable::new(mem, GuestAddress(ring_base(q)), QSIZE)),
            next_desc: self.next_desc,
            avail: self.avail,
            seen: self.seen,
        }
    }

    /// Head index the next TX chain will get.
    pub(super) fn next_tx_head(&self) -> u16 {
        self.next_desc[TXQ]
    }

    /// (descriptor table, avail ring, used ring) of queue `q`.
    pub(super) fn ring_addrs(q: usize) -> (u64, u64, u64) {
        let b = ring_base(q);
        (b, b + AVAIL_OFF, b + USED_OFF)
    }

    /// The used index the device published for queue `q`.
    pub(super) fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(ring_base(q) + USED_OFF + 2))
            .unwrap()
    }

    pub(super) fn queues(&self) -> Vec<Queue> {
        (0..3)
            .map(|i| {
                let b = ring_base(i);
                let mut q = Queue::new(QSIZE).unwrap();
                q.set_desc_table_address(Some(b as u32), Some(0));
                q.set_avail_ring_address(Some((b + AVAIL_OFF) as u32), Some(0));
                q.set_used_ring_address(Some((b + USED_OFF) as u32), Some(0));
                q.set_ready(true);
                assert!(q.is_valid(self.mem));
                q
            })
            .collect()
    }

    /// Writes a chain and publishes it on the avail ring (wrapping properly).
    pub(super) fn push_chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc[q];
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let (flags, next) = if i + 1 < descs.len() {
                (flags | VRING_DESC_F_NEXT as u16, (idx + 1) % QSIZE)
            } else {
                (flags, 0)
            };
            self.tables[q]
                .store(
                    idx,
                    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next)),
                )
                .unwrap();
        }
        self.next_desc[q] = (head + descs.len() as u16) % QSIZE;
        let avail = GuestAddress(ring_base(q) + AVAIL_OFF);
        let slot = u64::from(self.avail[q] % QSIZE);
        self.mem
            .write_obj(head, avail.unchecked_add(4 + 2 * slot))
            .unwrap();
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail[q], avail.unchecked_add(2))
            .unwrap();
        head
    }

    fn slot_addr(base: u64, head: u16) -> u64 {
        base + u64::from(head / 2) * SLOT
    }

    /// Chains published on queue `q` and not yet returned (as far as the
    /// last `used()` call saw).
    pub(super) fn outstanding(&self, q: usize) -> usize {
        usize::from(self.avail[q].wrapping_sub(self.seen[q]))
    }

    pub(super) fn add_rx(&mut self, n: usize, data_len: u32) {
        for _ in 0..n {
            let head = self.next_desc[RXQ];
            let a = Self::slot_addr(RX_BUF, head);
            let w = VRING_DESC_F_WRITE as u16;
            self.push_chain(
                RXQ,
                &[(a, HEADER_SIZE as u32, w), (a + DATA_OFF, data_len, w)],
            );
        }
    }

    pub(super) fn send(&mut self, h: Header, data: &[u8]) {
        let h = Header {
            len: data.len() as u32,
            ..h
        };
        let head = self.next_desc[TXQ];
        let a = Self::slot_addr(TX_BUF, head);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(a))
            .unwrap();
        if data.is_empty() {
            self.push_chain(TXQ, &[(a, HEADER_SIZE as u32, 0), (a + DATA_OFF, 0, 0)]);
        } else {
            self.mem
                .write_slice(data, GuestAddress(a + DATA_OFF))
                .unwrap();
            self.push_chain(
                TXQ,
                &[
                    (a, HEADER_SIZE as u32, 0),
                    (a + DATA_OFF, data.len() as u32, 0),
                ],
            );
        }
    }

    pub(super) fn add_event_buf(&mut self) {
        let a = EV_BUF + u64::from(self.next_desc[EVQ]) * 8;
        self.push_chain(EVQ, &[(a, 8, VRING_DESC_F_WRITE as u16)]);
    }

    /// Used entries not seen yet: (head index, len).
    pub(super) fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let used = ring_base(q) + USED_OFF;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.seen[q] != idx {
            let at = used + 4 + 8 * u64::from(self.seen[q] % QSIZE);
            let e: VirtqUsedElem = self.mem.read_obj(GuestAddress(at)).unwrap();
            out.push((e.id() as u16, e.len()));
            self.seen[q] = self.seen[q].wrapping_add(1);
        }
        out
    }

    /// Packets the device put into RX buffers.
    pub(super) fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.used(RXQ)
            .into_iter()
            .map(|(head, len)| {
                let a = Self::slot_addr(RX_BUF, head);
                let mut hb = [0u8; HEADER_SIZE];
                self.mem.read_slice(&mut hb, GuestAddress(a)).unwrap();
                let h = Header::from_bytes(&hb);
                let mut data = vec![0u8; (len as usize).saturating_sub(HEADER_SIZE)];
                self.mem
                    .read_slice(&mut data, GuestAddress(a + DATA_OFF))
                    .unwrap();
                assert_eq!(
                    h.len as usize,
                    data.len(),
                    "used len matches header (head {head}, len {len})"
                );
                (h, data)
            })
            .collect()
    }

    pub(super) fn event_words(&mut self) -> Vec<u32> {
        self.used(EVQ)
            .into_iter()
            .map(|(head, len)| {
                assert_eq!(len, 4);
                self.mem
                    .read_obj::<u32>(GuestAddress(EV_BUF + u64::from(head) * 8))
                    .unwrap()
            })
            .collect()
    }
}

pub(super) fn hdr(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op: op.as_u16(),
        buf_alloc: 1 << 20,
        ..Default::default()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    irq: Arc<IrqTrigger>,
}

impl Rig {
    fn new(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = Arc::new(Mutex::new(Vsock::new(CID, &uds, limits).unwrap()));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        Self {
            _dir: dir,
            uds,
            dev,
            em,
            irq: Arc::new(IrqTrigger::new().unwrap()),
        }
    }

    fn activate(&mut self, mem: &GuestMemoryMmap, g: &Guest) {
        let ctx = ActivateContext {
            mem: mem.clone(),
            acked_features: 1 << 32,
            queues: g.queues(),
            irq: self.irq.clone(),
        };
        self.dev.lock().unwrap().activate(ctx).unwrap();
        self.run();
    }

    /// Runs the event loop until it is idle.
    fn run(&mut self) {
        for _ in 0..50 {
            if self.em.run_with_timeout(20).unwrap() == 0 {
                return;
            }
        }
    }

    fn kick(&mut self, q: usize) {
        self.dev.lock().unwrap().queue_evts()[q].write(1).unwrap();
        self.run();
    }

    fn metrics(&self) -> VsockMetrics {
        self.dev.lock().unwrap().metrics().clone()
    }

    fn side_listener(&self, port: u32) -> UnixListener {
        let mut p = self.uds.clone().into_os_string();
        p.push(format!("_{port}"));
        UnixListener::bind(Path::new(&p)).unwrap()
    }
}

/// Runs the event loop until `done` holds (checked after each round) or
/// `cap` has passed; returns whether `done` held.
pub(super) fn run_until(
    em: &mut EventManager<Arc<Mutex<Vsock>>>,
    cap: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let end = Instant::now() + cap;
    loop {
        if done() {
            return true;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        em.run_with_timeout(left.as_millis().clamp(1, 20) as i32)
            .unwrap();
    }
}

/// The device has nothing left for the event loop: no timer armed, and
/// the loop goes idle (a fired timerfd left readable would wake it forever).
pub(super) fn assert_loop_idle(em: &mut EventManager<Arc<Mutex<Vsock>>>, dev: &Mutex<Vsock>) {
    assert_eq!(dev.lock().unwrap().timer_deadline, None);
    assert!(
        (0..10).any(|_| em.run_with_timeout(50).unwrap() == 0),
        "the event loop does not go idle"
    );
}

/// Short enough to keep the suite fast; the tests wait for the event
/// rather than for a fixed time, so a loaded machine only makes them slower.
pub(super) const SHORT_TIMEOUT: Duration = Duration::from_millis(200);

pub(super) fn ops(pkts: &[(Header, Vec<u8>)]) -> Vec<Op> {
    pkts.iter().map(|(h, _)| h.op().unwrap()).collect()
}

/// The peer closed: EOF, or ECONNRESET when it had unread data.
pub(super) fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        r => panic!("not closed: {r:?}"),
    }
}

pub(super) fn read_all_available(s: &mut UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 65536];
    loop {
        match s.read(&mut b) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return out
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Guest connects to host port 52 where a listener waits.
fn guest_connect(rig: &mut Rig, g: &mut Guest, l: &UnixListener, gport: u32) -> UnixStream {
    g.send(hdr(Op::Request, gport, 52), &[]);
    rig.kick(TXQ);
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Response]);
    let (h, _) = &pkts[0];
    assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, CID));
    assert_eq!((h.src_port, h.dst_port), (52, gport));
    assert_eq!(
        h.buf_alloc,
        rig.dev.lock().unwrap().muxer.limits().buf_alloc
    );
    let (s, _) = l.accept().unwrap();
    s
}

#[test]
fn guest_connect_without_listener_gets_rst() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    rig.activate(&mem, &g);
    g.add_rx(4, 4096);
    g.send(hdr(Op::Request, 1000, 52), &[]);
    rig.kick(TXQ);
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rst]);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (52, 1000));
    assert_eq!(rig.metrics().conns_refused, 1);
    assert_eq!(g.used(TXQ).len(), 1);
    // Interrupt raised for the used buffers.
    assert!(rig.irq.status() & INT_VRING != 0);
}

#[test]
fn guest_initiated_stream_rw_and_shutdown() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(8, 4096);
    let mut s = guest_connect(&mut rig, &mut g, &l, 1000);
    assert_eq!(
        rig.dev.lock().unwrap().muxer.connection_state((52, 1000)),
        Some(connection::State::Established)
    );

    // guest -> host
    g.send(hdr(Op::Rw, 1000, 52), b"hello");
    rig.kick(TXQ);
    assert_eq!(read_all_available(&mut s), b"hello");

    // host -> guest
    s.write_all(b"world").unwrap();
    rig.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rw]);
    assert_eq!(pkts[0].1, b"world");
    assert_eq!(pkts[0].0.fwd_cnt, 5);

    // guest half-closes: the host reads EOF, can still send.
    g.send(
        Header {
            flags: SHUTDOWN_SEND,
            ..hdr(Op::Shutdown, 1000, 52)
        },
        &[],
    );
    rig.kick(TXQ);
    assert_eq!(read_all_available(&mut s), b"");
    s.write_all(b"late").unwrap();
    // host closes: guest gets the data then SHUTDOWN(SEND).
    drop(s);
    rig.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rw, Op::Shutdown]);
    assert_eq!(pkts[0].1, b"late");
    assert_eq!(pkts[1].0.flags, SHUTDOWN_SEND);
    // guest closes fully: device answers RST and forgets the connection.
    g.send(
        Header {
            flags: SHUTDOWN_BOTH,
            ..hdr(Op::Shutdown, 1000, 52)
        },
        &[],
    );
    rig.kick(TXQ);
    assert_eq!(ops(&g.recv()), vec![Op::Rst]);
    assert_eq!(rig.dev.lock().unwrap().muxer.connection_count(), 0);
}

#[test]
fn guest_rst_closes_host_stream() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(4, 4096);
    let mut s = guest_connect(&mut rig, &mut g, &l, 7);
    g.send(hdr(Op::Rst, 7, 52), &[]);
    rig.kick(TXQ);
    assert_eq!(read_all_available(&mut s), b"");
    assert_eq!(rig.dev.lock().unwrap().muxer.connection_count(), 0);
    // No answer to an RST.
    assert!(g.recv().is_empty());
}

fn host_connect(rig: &mut Rig, g: &mut Guest, port: u32) -> (UnixStream, Header) {
    let mut c = UnixStream::connect(&rig.uds).unwrap();
    c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    rig.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Request]);
    let h = pkts[0].0;
    assert_eq!((h.src_cid, h.dst_cid, h.dst_port), (HOST_CID, CID, port));
    assert!(h.src_port >= 1 << 30);
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    (c, h)
}

fn response_to(req: &Header) -> Header {
    Header {
        src_port: req.dst_port,
        dst_port: req.src_port,
        ..hdr(Op::Response, 0, 0)
    }
}

#[test]
fn host_initiated_connect_ok_and_data() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    rig.activate(&mem, &g);
    g.add_rx(8, 4096);
    let (mut c, req) = host_connect(&mut rig, &mut g, 1234);
    g.send(response_to(&req), &[]);
    rig.kick(TXQ);
    let mut line = [0u8; 64];
    let n = c.read(&mut line).unwrap();
    assert_eq!(
        std::str::from_utf8(&line[..n]).unwrap(),
        format!("OK {}\n", req.src_port)
    );
    c.write_all(b"ping").unwrap();
    rig.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rw]);
    assert_eq!(pkts[0].1, b"ping");
    g.send(
        Header {
            src_port: 1234,
            dst_port: req.src_port,
            ..hdr(Op::Rw, 0, 0)
        },
        b"pong",
    );
    rig.kick(TXQ);
    assert_eq!(read_all_available(&mut c), b"pong");
}

#[test]
fn host_initiated_data_after_connect_line_is_kept() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    rig.activate(&mem, &g);
    g.add_rx(8, 4096);
    let mut c = UnixStream::connect(&rig.uds).unwrap();
    c.write_all(b"CONNECT 9\nearly").unwrap();
    rig.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Request]);
    g.send(response_to(&pkts[0].0), &[]);
    rig.kick(TXQ);
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rw]);
    assert_eq!(pkts[0].1, b"early");
}

#[test]
fn host_initiated_refused_closes_client() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    rig.activate(&mem, &g);
    g.add_rx(4, 4096);
    let (mut c, req) = host_connect(&mut rig, &mut g, 80);
    g.send(
        Header {
            src_port: 80,
            dst_port: req.src_port,
            ..hdr(Op::Rst, 0, 0)
        },
        &[],
    );
    rig.kick(TXQ);
    let mut b = [0u8; 8];
    assert_eq!(c.read(&mut b).unwrap(), 0);
}

#[test]
fn host_connect_bad_line_or_inactive_device_is_closed() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    // Before the driver is up: closed at once.
    let mut c = UnixStream::connect(&rig.uds).unwrap();
    rig.run();
    assert_closed(&mut c);

    rig.activate(&mem, &g);
    g.add_rx(4, 4096);
    for bad in [&b"HELLO 5\n"[..], b"CONNECT x\n", &[b'9'; 40]] {
        let mut c = UnixStream::connect(&rig.uds).unwrap();
        c.write_all(bad).unwrap();
        rig.run();
        assert_closed(&mut c);
    }
    assert_eq!(rig.metrics().handshake_errors, 3);
    assert!(g.recv().is_empty());
}

#[test]
fn host_connect_the_guest_never_answers_times_out() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits {
        connect_timeout: SHORT_TIMEOUT,
        ..Limits::default()
    });
    rig.activate(&mem, &g);
    g.add_rx(4, 4096);
    let start = Instant::now();
    let (mut c, req) = host_connect(&mut rig, &mut g, 1234);
    // Still waiting for the guest.
    c.set_nonblocking(true).unwrap();
    assert_eq!(
        c.read(&mut [0u8; 8]).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    assert!(rig.dev.lock().unwrap().timer_deadline.is_some());
    let dev = rig.dev.clone();
    assert!(run_until(&mut rig.em, Duration::from_secs(10), || {
        dev.lock().unwrap().metrics().connect_timeouts > 0
    }));
    assert!(start.elapsed() >= SHORT_TIMEOUT, "given up early");
    c.set_nonblocking(false).unwrap();
    assert_closed(&mut c);
    // The guest had the REQUEST: it is told to drop it.
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rst]);
    let h = pkts[0].0;
    assert_eq!((h.src_port, h.dst_port), (req.src_port, req.dst_port));
    let m = rig.metrics();
    assert_eq!((m.connect_timeouts, m.handshake_timeouts), (1, 0));
    assert_eq!(rig.dev.lock().unwrap().muxer.connection_count(), 0);
    assert_loop_idle(&mut rig.em, &rig.dev);
    // A late RESPONSE finds no connection.
    g.send(response_to(&req), &[]);
    rig.kick(TXQ);
    assert_eq!(ops(&g.recv()), vec![Op::Rst]);
    assert_eq!(rig.metrics().unknown_conn, 1);
}

#[test]
fn host_connect_line_not_finished_in_time_is_closed() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits {
        connect_timeout: SHORT_TIMEOUT,
        max_handshakes: 2,
        ..Limits::default()
    });
    rig.activate(&mem, &g);
    g.add_rx(4, 4096);
    let start = Instant::now();
    let mut half = UnixStream::connect(&rig.uds).unwrap();
    half.write_all(b"CONNECT 12").unwrap();
    let mut silent = UnixStream::connect(&rig.uds).unwrap();
    rig.run();
    // Both hold a handshake slot: a third client is turned away.
    let mut third = UnixStream::connect(&rig.uds).unwrap();
    rig.run();
    assert_closed(&mut third);
    assert_eq!(rig.metrics().conns_over_limit, 1);
    let dev = rig.dev.clone();
    assert!(run_until(&mut rig.em, Duration::from_secs(10), || {
        dev.lock().unwrap().metrics().handshake_timeouts == 2
    }));
    assert!(start.elapsed() >= SHORT_TIMEOUT, "given up early");
    assert_closed(&mut half);
    assert_closed(&mut silent);
    let m = rig.metrics();
    assert_eq!((m.handshake_errors, m.connect_timeouts), (0, 0));
    assert!(g.recv().is_empty(), "the guest never heard of them");
    assert_loop_idle(&mut rig.em, &rig.dev);
    // The slots are free again.
    let (_c, _) = host_connect(&mut rig, &mut g, 12);
}

#[test]
fn host_connect_answered_in_time_is_not_timed_out() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits {
        connect_timeout: SHORT_TIMEOUT,
        ..Limits::default()
    });
    rig.activate(&mem, &g);
    g.add_rx(8, 4096);
    let (mut c, req) = host_connect(&mut rig, &mut g, 1234);
    g.send(response_to(&req), &[]);
    rig.kick(TXQ);
    let mut line = [0u8; 64];
    let n = c.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {}\n", req.src_port).as_bytes());
    // Nothing pending any more: the timer is off.
    assert_loop_idle(&mut rig.em, &rig.dev);
    // Well past the timeout the connection still works.
    run_until(
        &mut rig.em,
        SHORT_TIMEOUT + Duration::from_millis(100),
        || false,
    );
    c.write_all(b"ping").unwrap();
    rig.run();
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rw]);
    assert_eq!(pkts[0].1, b"ping");
    let m = rig.metrics();
    assert_eq!(
        (m.connect_timeouts, m.handshake_timeouts, m.rst_sent),
        (0, 0, 0)
    );
}

#[test]
fn guest_credit_exhaustion_stops_host_to_guest() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(16, 4096);
    g.send(
        Header {
            buf_alloc: 1000,
            ..hdr(Op::Request, 5, 52)
        },
        &[],
    );
    rig.kick(TXQ);
    assert_eq!(ops(&g.recv()), vec![Op::Response]);
    let (mut s, _) = l.accept().unwrap();
    s.write_all(&[1u8; 5000]).unwrap();
    rig.run();
    let pkts = g.recv();
    let data: usize = pkts.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(data, 1000, "no more than the guest's credit");
    assert_eq!(ops(&pkts).last(), Some(&Op::CreditRequest));
    // The guest consumed everything and says so: the rest flows.
    g.send(
        Header {
            buf_alloc: 1000,
            fwd_cnt: 1000,
            ..hdr(Op::CreditUpdate, 5, 52)
        },
        &[],
    );
    rig.kick(TXQ);
    let data: usize = g.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(data, 1000);
    g.send(
        Header {
            buf_alloc: 1 << 20,
            fwd_cnt: 2000,
            ..hdr(Op::CreditUpdate, 5, 52)
        },
        &[],
    );
    rig.kick(TXQ);
    let data: usize = g.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(data, 3000);
}

#[test]
fn rx_buffers_exhaustion_resumes_when_guest_adds_buffers() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(1, 4096);
    let _s = guest_connect(&mut rig, &mut g, &l, 5);
    let (mut s, _) = (_s, ());
    s.write_all(&[2u8; 10_000]).unwrap();
    rig.run();
    assert!(g.recv().is_empty());
    g.add_rx(3, 4096);
    rig.kick(RXQ);
    let data: usize = g.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(data, 10_000);
}

#[test]
fn host_backpressure_bounds_buffering_and_credit_updates_resume() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let limits = Limits {
        buf_alloc: 64 * 1024,
        ..Limits::default()
    };
    let mut rig = Rig::new(limits);
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(32, 4096);
    let mut s = guest_connect(&mut rig, &mut g, &l, 5);
    // Behave like a driver: never exceed the device's advertised credit.
    let (mut buf_alloc, mut fwd_cnt) = (64 * 1024u32, 0u32);
    let mut sent = 0u32;
    let chunk = [3u8; 4096];
    for _ in 0..2000 {
        let credit = buf_alloc - (sent - fwd_cnt);
        if (credit as usize) < chunk.len() {
            break;
        }
        g.send(hdr(Op::Rw, 5, 52), &chunk);
        sent += chunk.len() as u32;
        rig.kick(TXQ);
        let pkts = g.recv();
        for (h, _) in &pkts {
            buf_alloc = h.buf_alloc;
            fwd_cnt = h.fwd_cnt;
        }
        g.add_rx(pkts.len(), 4096);
    }
    // The host never read: its socket is full and the device holds at most
    // buf_alloc bytes, so the guest ran out of credit.
    let buffered = rig.dev.lock().unwrap().state().connections[0].pending_out;
    assert!(buffered > 0 && buffered <= 64 * 1024, "{buffered}");
    assert!(sent - fwd_cnt > 60 * 1024);
    // A guest that ignores credit is reset.
    // (checked separately in credit_violation_gets_rst)
    // The host drains: the device flushes and tells the guest.
    let mut got = 0usize;
    let mut b = vec![0u8; 1 << 20];
    s.set_nonblocking(true).unwrap();
    for _ in 0..100 {
        match s.read(&mut b) {
            Ok(n) => got += n,
            Err(_) => {
                rig.run();
                if got == sent as usize {
                    break;
                }
            }
        }
    }
    assert_eq!(got, sent as usize);
    let all = g.recv();
    let updates: Vec<_> = all
        .into_iter()
        .filter(|(h, _)| h.op() == Some(Op::CreditUpdate))
        .collect();
    assert_eq!(updates.last().unwrap().0.fwd_cnt, sent);
}

#[test]
fn credit_violation_gets_rst() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits {
        buf_alloc: 4096,
        ..Limits::default()
    });
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(4, 4096);
    let mut s = guest_connect(&mut rig, &mut g, &l, 5);
    g.send(hdr(Op::Rw, 5, 52), &[0u8; 5000]);
    rig.kick(TXQ);
    assert_eq!(ops(&g.recv()), vec![Op::Rst]);
    assert_eq!(rig.metrics().protocol_errors, 1);
    assert_eq!(read_all_available(&mut s), b"");
}

#[test]
fn credit_request_is_answered() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(4, 4096);
    let _s = guest_connect(&mut rig, &mut g, &l, 5);
    g.send(hdr(Op::Rw, 5, 52), b"abc");
    g.send(hdr(Op::CreditRequest, 5, 52), &[]);
    rig.kick(TXQ);
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::CreditUpdate]);
    assert_eq!(pkts[0].0.fwd_cnt, 3);
}

#[test]
fn transport_reset_event_and_connections_dropped() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(4, 4096);
    let mut s = guest_connect(&mut rig, &mut g, &l, 5);
    rig.dev.lock().unwrap().transport_reset();
    rig.run();
    // No event buffer yet: stays pending.
    assert!(g.event_words().is_empty());
    assert_eq!(read_all_available(&mut s), b"");
    g.add_event_buf();
    rig.kick(EVQ);
    assert_eq!(g.event_words(), vec![packet::EVENT_TRANSPORT_RESET]);
    assert_eq!(rig.metrics().events_sent, 1);
    assert_eq!(rig.dev.lock().unwrap().muxer.connection_count(), 0);
    // A new CID for a clone; connections to the old one are gone.
    assert!(rig.dev.lock().unwrap().set_guest_cid(2).is_err());
    rig.dev.lock().unwrap().set_guest_cid(7).unwrap();
    let mut cfg = [0u8; 8];
    rig.dev.lock().unwrap().read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 7);
}

#[test]
fn device_reset_closes_everything() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(4, 4096);
    let mut s = guest_connect(&mut rig, &mut g, &l, 5);
    rig.dev.lock().unwrap().reset();
    rig.run();
    assert_eq!(read_all_available(&mut s), b"");
    assert!(!rig.dev.lock().unwrap().is_active());
    // Re-activation works (fresh rings).
    let mem2 = guest_mem();
    let mut g2 = Guest::new(&mem2);
    rig.activate(&mem2, &g2);
    g2.add_rx(4, 4096);
    let _s = guest_connect(&mut rig, &mut g2, &l, 5);
}

#[test]
fn hostile_headers_get_rst_and_are_counted() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(16, 4096);
    let mut s = guest_connect(&mut rig, &mut g, &l, 5);
    // Wrong source CID (spoofing another VM) and wrong destination.
    g.send(
        Header {
            src_cid: 4,
            ..hdr(Op::Rw, 5, 52)
        },
        b"x",
    );
    g.send(
        Header {
            dst_cid: 9,
            ..hdr(Op::Rw, 5, 52)
        },
        b"x",
    );
    // Unknown op and wrong type each reset their connection.
    g.send(
        Header {
            op: 99,
            ..hdr(Op::Rw, 6, 60)
        },
        &[],
    );
    g.send(
        Header {
            type_: 2,
            ..hdr(Op::Rw, 5, 52)
        },
        b"x",
    );
    // Ops for connections that do not exist.
    g.send(hdr(Op::Rw, 77, 52), b"x");
    g.send(hdr(Op::Response, 78, 52), &[]);
    rig.kick(TXQ);
    let pkts = g.recv();
    assert_eq!(ops(&pkts), vec![Op::Rst; 6]);
    let m = rig.metrics();
    assert_eq!(
        (m.bad_cid, m.unknown_op, m.bad_type, m.unknown_conn),
        (2, 1, 1, 2)
    );
    // The bad-type packet named the live connection: it is gone.
    assert_eq!(read_all_available(&mut s), b"");
    assert_eq!(rig.dev.lock().unwrap().muxer.connection_count(), 0);
}

#[test]
fn malformed_chains_are_dropped_and_counted() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    rig.activate(&mem, &g);
    g.add_rx(8, 4096);
    let w = VRING_DESC_F_WRITE as u16;
    let h = hdr(Op::Rw, 5, 52);
    mem.write_slice(&Header { len: 100, ..h }.to_bytes(), GuestAddress(TX_BUF))
        .unwrap();
    // Header descriptor too short.
    g.push_chain(TXQ, &[(TX_BUF, 10, 0)]);
    // Write-only TX descriptor.
    g.push_chain(TXQ, &[(TX_BUF, 44, w)]);
    // Data shorter than the header's len.
    g.push_chain(TXQ, &[(TX_BUF, 44, 0), (TX_BUF + 0x100, 50, 0)]);
    // Data outside guest memory.
    g.push_chain(TXQ, &[(TX_BUF, 44, 0), (1 << 40, 100, 0)]);
    // Header outside guest memory.
    g.push_chain(TXQ, &[(u64::MAX - 10, 44, 0)]);
    // len larger than the maximum packet.
    mem.write_slice(
        &Header { len: 1 << 20, ..h }.to_bytes(),
        GuestAddress(TX_BUF + SLOT * 8),
    )
    .unwrap();
    g.push_chain(TXQ, &[(TX_BUF + SLOT * 8, 44, 0), (TX_BUF, 1 << 20, 0)]);
    rig.kick(TXQ);
    assert_eq!(g.used(TXQ).len(), 6, "every chain is returned");
    assert_eq!(rig.metrics().malformed_tx, 6);
    // Readable headers got an RST for the connection they named.
    assert!(ops(&g.recv()).iter().all(|&o| o == Op::Rst));
}

#[test]
fn bad_rx_buffers_are_skipped() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    rig.activate(&mem, &g);
    // A read-only RX buffer, then a good one.
    g.push_chain(RXQ, &[(RX_BUF, 44, 0), (RX_BUF + 0x100, 100, 0)]);
    g.add_rx(1, 4096);
    g.send(hdr(Op::Rw, 1, 2), b"x"); // unknown connection -> RST
    rig.kick(TXQ);
    let used = g.used(RXQ);
    assert_eq!(used.len(), 2);
    assert_eq!(used[0].1, 0);
    assert_eq!(used[1].1, HEADER_SIZE as u32);
    assert_eq!(rig.metrics().malformed_rx, 1);
}

#[test]
fn rst_backlog_pauses_tx_until_rx_buffers_arrive() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let limits = Limits {
        max_rst_backlog: 8,
        ..Limits::default()
    };
    let mut rig = Rig::new(limits);
    rig.activate(&mem, &g);
    for i in 0..20 {
        g.send(hdr(Op::Rw, 100 + i, 52), b"x");
    }
    rig.kick(TXQ);
    assert_eq!(g.used(TXQ).len(), 8, "TX paused at the backlog limit");
    assert_eq!(rig.dev.lock().unwrap().muxer.rst_backlog(), 8);
    g.add_rx(30, 4096);
    rig.kick(RXQ);
    assert_eq!(g.used(TXQ).len(), 12);
    assert_eq!(ops(&g.recv()), vec![Op::Rst; 20]);
}

#[test]
fn connection_limit_is_enforced() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits {
        max_connections: 2,
        ..Limits::default()
    });
    let _l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(8, 4096);
    for p in 0..3 {
        g.send(hdr(Op::Request, p, 52), &[]);
    }
    rig.kick(TXQ);
    let mut got = ops(&g.recv());
    got.sort_by_key(|o| o.as_u16());
    assert_eq!(got, vec![Op::Response, Op::Response, Op::Rst]);
    assert_eq!(rig.metrics().conns_over_limit, 1);
}

#[test]
fn many_concurrent_connections_megabyte_both_ways() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(30, 65536 - 0x100);
    const N: u32 = 4;
    const TOTAL: usize = 256 * 1024;
    let mut socks: Vec<UnixStream> = (0..N)
        .map(|p| guest_connect(&mut rig, &mut g, &l, p))
        .collect();
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    let pattern = |i: usize| (i % 251) as u8;
    let src: Vec<u8> = (0..TOTAL).map(pattern).collect();
    // host -> guest on every connection at once, guest -> host likewise.
    let mut host_sent = vec![0usize; N as usize];
    let mut guest_got = vec![Vec::new(); N as usize];
    let mut guest_sent = vec![0usize; N as usize];
    let mut host_got = vec![Vec::new(); N as usize];
    for _round in 0..10_000 {
        for (i, s) in socks.iter_mut().enumerate() {
            if host_sent[i] < TOTAL {
                if let Ok(n) = s.write(&src[host_sent[i]..]) {
                    host_sent[i] += n;
                }
            }
            let mut b = [0u8; 65536];
            while let Ok(n) = s.read(&mut b) {
                if n == 0 {
                    break;
                }
                host_got[i].extend_from_slice(&b[..n]);
            }
            if guest_sent[i] < TOTAL {
                let n = (TOTAL - guest_sent[i]).min(16 * 1024);
                g.send(
                    hdr(Op::Rw, i as u32, 52),
                    &src[guest_sent[i]..guest_sent[i] + n],
                );
                guest_sent[i] += n;
            }
        }
        rig.kick(TXQ);
        let pkts = g.recv();
        let n = pkts.len();
        for (h, d) in pkts {
            if h.op() == Some(Op::Rw) {
                guest_got[h.dst_port as usize].extend_from_slice(&d);
            }
        }
        // The guest consumes at once and reports it on its next packets.
        g.add_rx(n, 65536 - 0x100);
        for (i, got) in guest_got.iter().enumerate() {
            g.send(
                Header {
                    fwd_cnt: got.len() as u32,
                    ..hdr(Op::CreditUpdate, i as u32, 52)
                },
                &[],
            );
        }
        rig.kick(TXQ);
        if guest_got.iter().all(|d| d.len() == TOTAL) && host_got.iter().all(|d| d.len() == TOTAL) {
            break;
        }
    }
    for i in 0..N as usize {
        assert!(guest_got[i] == src, "host->guest stream {i} intact");
        assert!(host_got[i] == src, "guest->host stream {i} intact");
    }
}

#[test]
fn tx_in_any_descriptor_layout_is_gathered() {
    let mem = guest_mem();
    let mut g = Guest::new(&mem);
    let mut rig = Rig::new(Limits::default());
    let l = rig.side_listener(52);
    rig.activate(&mem, &g);
    g.add_rx(8, 4096);
    let mut s = guest_connect(&mut rig, &mut g, &l, 1000);

    // Header split 20 + 24 bytes, payload split 5 + 1 + 6 bytes, each piece
    // somewhere else in guest memory.
    let base = 0x1a0_0000u64;
    let data = b"hello world!";
    let h = Header {
        len: data.len() as u32,
        ..hdr(Op::Rw, 1000, 52)
    }
    .to_bytes();
    let pieces: [(&[u8], u64); 5] = [
        (&h[..20], base),
        (&h[20..], base + 0x1000),
        (&data[..5], base + 0x2000),
        (&data[5..6], base + 0x3000),
        (&data[6..], base + 0x4000),
    ];
    let mut descs = Vec::new();
    for (bytes, at) in pieces {
        mem.write_slice(bytes, GuestAddress(at)).unwrap();
        descs.push((at, bytes.len() as u32, 0u16));
    }
    g.push_chain(TXQ, &descs);
    rig.kick(TXQ);
    assert_eq!(read_all_available(&mut s), data);
    assert_eq!(rig.metrics().tx_gathered, 1);
    assert_eq!(rig.metrics().malformed_tx, 0);

    // Header and payload in one descriptor followed by an empty one: also
    // fine. A header claiming more payload than the chain holds is not.
    let h = Header {
        len: 3,
        ..hdr(Op::Rw, 1000, 52)
    }
    .to_bytes();
    mem.write_slice(&h, GuestAddress(base)).unwrap();
    mem.write_slice(b"abc", GuestAddress(base + HEADER_SIZE as u64))
        .unwrap();
    g.push_chain(
        TXQ,
        &[(base, HEADER_SIZE as u32 + 3, 0), (base + 0x1000, 0, 0)],
    );
    rig.kick(TXQ);
    assert_eq!(read_all_available(&mut s), b"abc");

    let h = Header {
        len: 100,
        ..hdr(Op::Rw, 1000, 52)
    }
    .to_bytes();
    mem.write_slice(&h, GuestAddress(base)).unwrap();
    g.push_chain(
        TXQ,
        &[(base, 30, 0), (base + 30, 14, 0), (base + 0x2000, 60, 0)],
    );
    rig.kick(TXQ);
    assert_eq!(rig.metrics().malformed_tx, 1);
    // The connection it named is reset.
    assert_eq!(ops(&g.recv()), vec![Op::Rst]);
    assert_closed(&mut s);

    // Device-writable descriptors in a TX chain are refused too.
    let _s2 = guest_connect(&mut rig, &mut g, &l, 1001);
    let h = Header {
        len: 4,
        ..hdr(Op::Rw, 1001, 52)
    }
    .to_bytes();
    mem.write_slice(&h, GuestAddress(base)).unwrap();
    g.push_chain(
        TXQ,
        &[
            (base, 10, 0),
            (base + 10, 34, 0),
            (base + 0x2000, 4, VRING_DESC_F_WRITE as u16),
        ],
    );
    rig.kick(TXQ);
    assert_eq!(rig.metrics().malformed_tx, 2);
    // Every chain was returned to the guest.
    g.used(TXQ);
    assert_eq!(g.outstanding(TXQ), 0);
}
