//! The host side of the vsock device: the per-instance Unix listener, the
//! `CONNECT <port>` handshake, guest-initiated connects to `<uds>_<port>`,
//! and the table of live connections.
//!
//! The muxer never touches epoll itself: it records which sockets to add or
//! remove in [`Muxer::changes`], and the event handler applies them. That
//! keeps it testable without an event loop and lets vCPU-thread calls
//! (device reset) defer socket teardown to the event loop.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::limited_warn as warn;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::EventSet;

use super::connection::{ConnError, Connection, ConnectionInfo, State, Verdict};
use super::packet::{Header, Op, HEADER_SIZE, HOST_CID, TYPE_STREAM};
use super::unix::connect_nonblocking;

/// First token handed to host streams; lower ones are the device's own fds.
pub const FIRST_STREAM_TOKEN: u32 = 16;
/// Host-initiated connections get local ports from here up (as Firecracker).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Longest accepted `CONNECT <port>\n` line.
const MAX_HANDSHAKE_LINE: usize = 32;

/// Limits that bound the memory a guest (or host client) can make us use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Receive buffer we advertise per connection; guest data waiting for a
    /// slow host socket never exceeds it.
    pub buf_alloc: u32,
    /// Live connections, both directions together.
    pub max_connections: usize,
    /// Host clients that have not finished their CONNECT line.
    pub max_handshakes: usize,
    /// RST packets waiting for RX buffers; TX processing pauses at this
    /// level so a guest that posts no RX buffers cannot grow it.
    pub max_rst_backlog: usize,
    /// How long a host client may take to send its `CONNECT` line, and how
    /// long it then waits for the guest's answer (including the time its
    /// REQUEST is held after a restore) before it is closed.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
}

/// Firecracker uses 2 s; the emulated guest kernel here needs up to ~5 s
/// after a restore before it answers at all.
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            buf_alloc: 256 * 1024,
            max_connections: 256,
            max_handshakes: 64,
            max_rst_backlog: 256,
            connect_timeout: default_connect_timeout(),
        }
    }
}

/// Counters, mostly of guest and host-client misbehaviour.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockMetrics {
    pub tx_packets: u64,
    pub rx_packets: u64,
    /// TX chains `VsockPacket` rejected (bad descriptors, lengths, memory).
    pub malformed_tx: u64,
    /// RX chains unusable for a packet.
    pub malformed_rx: u64,
    pub bad_cid: u64,
    pub bad_type: u64,
    pub unknown_op: u64,
    /// Ops that do not fit the connection state, credit violations.
    pub protocol_errors: u64,
    /// Packets for connections that do not exist (often benign races).
    pub unknown_conn: u64,
    pub rst_sent: u64,
    /// RSTs dropped because the backlog was full.
    pub rst_dropped: u64,
    pub conns_guest_initiated: u64,
    pub conns_host_initiated: u64,
    /// Guest connects with no host listener at `<uds>_<port>`.
    pub conns_refused: u64,
    pub conns_over_limit: u64,
    pub handshake_errors: u64,
    pub host_io_errors: u64,
    /// Broken event queue buffers, TRANSPORT_RESET events sent.
    pub events_sent: u64,
    /// TX packets queued before a snapshot and consumed after restore
    /// (answered with RST, not forwarded).
    #[serde(default)]
    pub stale_tx: u64,
    /// TX packets in a descriptor layout gathered by the device (header
    /// or payload split over several descriptors).
    #[serde(default)]
    pub tx_gathered: u64,
    /// Host-initiated connections the guest did not answer in time.
    #[serde(default)]
    pub connect_timeouts: u64,
    /// Host clients that did not finish their CONNECT line in time.
    #[serde(default)]
    pub handshake_timeouts: u64,
}

/// (local port on the host side, peer port on the guest side).
pub type ConnKey = (u32, u32);

/// A socket registration change for the event loop.
#[derive(Debug)]
pub enum EpollChange {
    Add {
        fd: RawFd,
        token: u32,
    },
    /// Unregister and then close (the stream is dropped after removal so
    /// its fd number cannot be reused while still registered).
    Remove(UnixStream),
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    /// `None`: the timeout is too large to represent (no deadline).
    deadline: Option<Instant>,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    limits: Limits,
    listener: UnixListener,
    handshakes: HashMap<u32, Handshake>,
    conns: HashMap<ConnKey, Connection>,
    by_token: HashMap<u32, ConnKey>,
    /// Connections that may have a packet for the guest, round robin.
    rx_queue: VecDeque<ConnKey>,
    /// RSTs for connections that no longer (or never) existed.
    rsts: VecDeque<ConnKey>,
    next_token: u32,
    next_local_port: u32,
    /// While set, host-initiated REQUESTs wait in `held` (see
    /// [`Muxer::hold_host_requests`]).
    hold_requests: bool,
    held: Vec<ConnKey>,
    /// Deadlines of host-initiated connections still in `LocalInit`.
    connecting: HashMap<ConnKey, Instant>,
    pub(super) changes: Vec<EpollChange>,
    pub(super) metrics: VsockMetrics,
}

enum Handshaken {
    Pending,
    Port(u32),
    Failed,
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\n')?;
    let s = s.strip_suffix('\r').unwrap_or(s);
    let port = s.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener, limits: Limits) -> Self {
        Self {
            guest_cid,
            uds_path,
            limits,
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_token: HashMap::new(),
            rx_queue: VecDeque::new(),
            rsts: VecDeque::new(),
            next_token: FIRST_STREAM_TOKEN,
            hold_requests: false,
            held: Vec::new(),
            connecting: HashMap::new(),
            next_local_port: FIRST_LOCAL_PORT,
            changes: Vec::new(),
            metrics: VsockMetrics::default(),
        }
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn set_guest_cid(&mut self, cid: u64) {
        self.guest_cid = cid;
    }

    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.conns.values().map(Connection::info).collect()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn rst_backlog(&self) -> usize {
        self.rsts.len()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = match self.next_token.checked_add(1) {
                Some(n) => n,
                None => FIRST_STREAM_TOKEN,
            };
            if !self.handshakes.contains_key(&t) && !self.by_token.contains_key(&t) {
                return t;
            }
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = match self.next_local_port.checked_add(1) {
                Some(n) if n != u32::MAX => n,
                _ => FIRST_LOCAL_PORT,
            };
            if !self.conns.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    fn schedule(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.queued && c.has_rx_work() {
                c.queued = true;
                self.rx_queue.push_back(key);
            }
        }
    }

    fn push_rst(&mut self, key: ConnKey) {
        if self.rsts.len() >= 2 * self.limits.max_rst_backlog + self.limits.max_connections {
            // Unreachable with the TX pause in place; a hard stop regardless.
            self.metrics.rst_dropped += 1;
            return;
        }
        self.rsts.push_back(key);
    }

    /// Closes a connection; `rst` tells the guest.
    fn kill(&mut self, key: ConnKey, rst: bool) {
        if let Some(c) = self.conns.remove(&key) {
            self.by_token.remove(&c.token);
            let _ = c.stream.shutdown(Shutdown::Both);
            self.changes.push(EpollChange::Remove(c.stream));
        }
        self.connecting.remove(&key);
        // A held REQUEST must not be released for a later connection that
        // happens to get the same ports (`held` is empty outside the short
        // wait after a restore).
        self.held.retain(|k| *k != key);
        if rst {
            self.push_rst(key);
        }
    }

    fn kill_on_error(&mut self, key: ConnKey, e: &ConnError) {
        match e {
            ConnError::Io(_) => {
                self.metrics.host_io_errors += 1;
                debug!("vsock: connection {key:?}: {e}");
            }
            _ => {
                self.metrics.protocol_errors += 1;
                warn!("vsock: connection {key:?} reset: {e}");
            }
        }
        self.kill(key, true);
    }

    /// Drops every connection without telling the guest (device reset, or
    /// the guest is told through TRANSPORT_RESET).
    pub fn reset(&mut self) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for k in keys {
            self.kill(k, false);
        }
        for (_, h) in self.handshakes.drain() {
            self.changes.push(EpollChange::Remove(h.stream));
        }
        self.rsts.clear();
        self.rx_queue.clear();
        self.held.clear();
    }

    /// Holds back REQUESTs of new host-initiated connections (the host
    /// client waits for its `OK`) until [`Muxer::release_host_requests`].
    /// After a TRANSPORT_RESET the guest may still use its old CID and
    /// would reset a connection it accepted before handling the event.
    pub fn hold_host_requests(&mut self) {
        self.hold_requests = true;
    }

    pub fn release_host_requests(&mut self) {
        self.hold_requests = false;
        for key in std::mem::take(&mut self.held) {
            self.schedule(key);
        }
    }

    #[cfg(test)]
    pub fn holding_host_requests(&self) -> bool {
        self.hold_requests
    }

    // ---- setup timeouts ----

    /// The earliest setup deadline (CONNECT line or guest answer), if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let hs = self.handshakes.values().filter_map(|h| h.deadline);
        hs.chain(self.connecting.values().copied()).min()
    }

    /// Closes host clients whose setup deadline is at or before `now`: the
    /// client sees EOF, as for a refusal. A guest that had got the REQUEST
    /// gets an RST so it drops its half of the connection.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<u32> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline.is_some_and(|d| d <= now))
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            if let Some(h) = self.handshakes.remove(&t) {
                self.metrics.handshake_timeouts += 1;
                debug!(
                    "vsock: host client sent no CONNECT line in time (got {:?})",
                    String::from_utf8_lossy(&h.line)
                );
                self.changes.push(EpollChange::Remove(h.stream));
            }
        }
        let late: Vec<ConnKey> = self
            .connecting
            .iter()
            .filter(|(_, &d)| d <= now)
            .map(|(&k, _)| k)
            .collect();
        for key in late {
            let sent = self.conns.get(&key).is_some_and(|c| !c.request_pending());
            self.metrics.connect_timeouts += 1;
            info!(
                "vsock: guest port {} did not answer host connection {} within {:?} ({})",
                key.1,
                key.0,
                self.limits.connect_timeout,
                if sent {
                    "REQUEST sent"
                } else if self.hold_requests {
                    "REQUEST held until the guest handles TRANSPORT_RESET"
                } else {
                    "REQUEST not yet delivered"
                }
            );
            self.kill(key, sent);
        }
    }

    // ---- host side ----

    /// Accepts host clients. While the guest driver is not up (`active`
    /// false) they are closed at once, which the client sees as "refused".
    pub fn on_listener_readable(&mut self, active: bool, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("vsock: accept on the host socket failed: {e}");
                    return;
                }
            };
            if !active
                || self.handshakes.len() >= self.limits.max_handshakes
                || self.conns.len() + self.handshakes.len() >= self.limits.max_connections
            {
                if active {
                    self.metrics.conns_over_limit += 1;
                }
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                warn!("vsock: cannot make host stream non-blocking: {e}");
                continue;
            }
            let token = self.alloc_token();
            self.changes.push(EpollChange::Add {
                fd: stream.as_raw_fd(),
                token,
            });
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: Vec::with_capacity(MAX_HANDSHAKE_LINE),
                    deadline: now.checked_add(self.limits.connect_timeout),
                },
            );
        }
    }

    /// A host stream (handshake or connection) is ready.
    pub fn on_stream_event(&mut self, token: u32, ev: EventSet, now: Instant) {
        if self.handshakes.contains_key(&token) {
            self.on_handshake_event(token, now);
            return;
        }
        let Some(&key) = self.by_token.get(&token) else {
            debug!("vsock: event for stale token {token}");
            return;
        };
        if ev.contains(EventSet::ERROR) {
            self.metrics.host_io_errors += 1;
            self.kill(key, true);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if ev.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            c.on_host_readable();
        }
        if ev.contains(EventSet::OUT) {
            match c.flush() {
                Ok(Verdict::Keep) => {}
                Ok(Verdict::Close) => {
                    self.kill(key, true);
                    return;
                }
                Err(e) => {
                    self.kill_on_error(key, &e);
                    return;
                }
            }
        }
        self.schedule(key);
    }

    fn read_handshake(h: &mut Handshake) -> Handshaken {
        // Byte by byte: whatever follows the newline is stream payload and
        // must stay in the socket.
        let mut b = [0u8; 1];
        loop {
            match h.stream.read(&mut b) {
                Ok(0) => return Handshaken::Failed,
                Ok(_) => {
                    h.line.push(b[0]);
                    if b[0] == b'\n' {
                        return match parse_connect(&h.line) {
                            Some(p) => Handshaken::Port(p),
                            None => Handshaken::Failed,
                        };
                    }
                    if h.line.len() >= MAX_HANDSHAKE_LINE {
                        return Handshaken::Failed;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Handshaken::Pending,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Handshaken::Failed,
            }
        }
    }

    fn on_handshake_event(&mut self, token: u32, now: Instant) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        match Self::read_handshake(h) {
            Handshaken::Pending => {}
            Handshaken::Failed => {
                self.metrics.handshake_errors += 1;
                if let Some(h) = self.handshakes.remove(&token) {
                    debug!(
                        "vsock: bad handshake {:?}",
                        String::from_utf8_lossy(&h.line)
                    );
                    self.changes.push(EpollChange::Remove(h.stream));
                }
            }
            Handshaken::Port(peer_port) => {
                let Some(h) = self.handshakes.remove(&token) else {
                    return;
                };
                let local = self.alloc_local_port(peer_port);
                let key = (local, peer_port);
                debug!("vsock: host connect to guest port {peer_port} as {local}");
                self.metrics.conns_host_initiated += 1;
                let c = Connection::host_initiated(
                    h.stream,
                    token,
                    local,
                    peer_port,
                    self.limits.buf_alloc,
                );
                self.by_token.insert(token, key);
                self.conns.insert(key, c);
                if let Some(d) = now.checked_add(self.limits.connect_timeout) {
                    self.connecting.insert(key, d);
                }
                self.schedule(key);
            }
        }
    }

    // ---- guest side ----

    /// A TX chain `VsockPacket` rejected; `hdr` is its header if readable.
    pub fn on_malformed(&mut self, hdr: Option<Header>) {
        self.metrics.malformed_tx += 1;
        if let Some(h) = hdr {
            if h.src_cid == self.guest_cid && h.op != Op::Rst.as_u16() {
                let key = (h.dst_port, h.src_port);
                let known = self.conns.contains_key(&key);
                self.kill(key, true);
                if !known {
                    debug!("vsock: malformed packet for unknown connection {key:?}");
                }
            }
        }
    }

    /// A TX packet the guest queued before a snapshot: its connection did
    /// not survive the restore, so it is answered with RST (unless it is
    /// one) and never forwarded.
    pub fn on_stale_packet(&mut self, h: &Header) {
        self.metrics.stale_tx += 1;
        if h.op != Op::Rst.as_u16() {
            self.push_rst((h.dst_port, h.src_port));
        }
    }

    /// A packet from the guest's TX queue.
    pub fn on_guest_packet<B: BitmapSlice>(
        &mut self,
        h: &Header,
        data: Option<&VolatileSlice<'_, B>>,
    ) {
        self.metrics.tx_packets += 1;
        let key = (h.dst_port, h.src_port);
        let is_rst = h.op == Op::Rst.as_u16();
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            self.metrics.bad_cid += 1;
            warn!(
                "vsock: packet {} -> {} with wrong CIDs (guest is {})",
                h.src_cid, h.dst_cid, self.guest_cid
            );
            if !is_rst {
                self.push_rst(key);
            }
            return;
        }
        if h.type_ != TYPE_STREAM {
            self.metrics.bad_type += 1;
            warn!("vsock: packet of unsupported type {}", h.type_);
            self.kill(key, !is_rst);
            return;
        }
        let Some(op) = h.op() else {
            self.metrics.unknown_op += 1;
            warn!("vsock: unknown op {}", h.op);
            self.kill(key, true);
            return;
        };
        if op == Op::Request {
            self.on_request(h);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if op != Op::Rst {
                self.metrics.unknown_conn += 1;
                debug!("vsock: {op:?} for unknown connection {key:?}");
                self.push_rst(key);
            }
            return;
        };
        c.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        let result = match op {
            Op::Request => Ok(Verdict::Keep), // handled above
            Op::Rst => {
                self.kill(key, false);
                return;
            }
            Op::Response => {
                let r = c.on_response();
                if r.is_ok() {
                    self.connecting.remove(&key);
                }
                r.map(|()| Verdict::Keep)
            }
            Op::Rw => c.on_rw(data).map(|()| Verdict::Keep),
            Op::Shutdown => c.on_shutdown(h.flags),
            Op::CreditUpdate => Ok(Verdict::Keep),
            Op::CreditRequest => {
                c.on_credit_request();
                Ok(Verdict::Keep)
            }
        };
        match result {
            Ok(Verdict::Keep) => self.schedule(key),
            Ok(Verdict::Close) => self.kill(key, true),
            Err(e) => self.kill_on_error(key, &e),
        }
    }

    fn on_request(&mut self, h: &Header) {
        let key = (h.dst_port, h.src_port);
        if self.conns.contains_key(&key) {
            self.metrics.protocol_errors += 1;
            warn!("vsock: REQUEST for existing connection {key:?}");
            self.kill(key, true);
            return;
        }
        if self.conns.len() + self.handshakes.len() >= self.limits.max_connections {
            self.metrics.conns_over_limit += 1;
            self.push_rst(key);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let stream = match connect_nonblocking(std::path::Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                debug!("vsock: guest connect to {path:?}: {e}");
                self.metrics.conns_refused += 1;
                self.push_rst(key);
                return;
            }
        };
        self.metrics.conns_guest_initiated += 1;
        let token = self.alloc_token();
        self.changes.push(EpollChange::Add {
            fd: stream.as_raw_fd(),
            token,
        });
        let c = Connection::guest_initiated(stream, token, h, self.limits.buf_alloc);
        self.by_token.insert(token, key);
        self.conns.insert(key, c);
        self.schedule(key);
    }

    // ---- RX ----

    /// Whether a packet is waiting for an RX buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_queue.is_empty()
    }

    /// Whether TX processing must pause until RX buffers drain the backlog.
    pub fn rx_backlogged(&self) -> bool {
        self.rsts.len() >= self.limits.max_rst_backlog
    }

    fn rst_header(&self, (local, peer): ConnKey) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local,
            dst_port: peer,
            type_: TYPE_STREAM,
            op: Op::Rst.as_u16(),
            ..Default::default()
        }
    }

    /// Writes the next packet for the guest into `pkt`; returns the used
    /// length, or `None` when there is nothing to send (then `has_rx_work`
    /// is false).
    pub fn fill_rx<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        loop {
            if let Some(key) = self.rsts.pop_front() {
                if let Err(e) = self.rst_header(key).write_to(pkt) {
                    self.metrics.malformed_rx += 1;
                    warn!("vsock: cannot write RX header: {e}");
                    return Some(0);
                }
                self.metrics.rst_sent += 1;
                self.metrics.rx_packets += 1;
                return Some(HEADER_SIZE as u32);
            }
            let key = self.rx_queue.pop_front()?;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            if self.hold_requests && c.request_pending() {
                self.held.push(key);
                continue;
            }
            match c.fill_rx(self.guest_cid, pkt) {
                Ok(Some(len)) => {
                    self.metrics.rx_packets += 1;
                    self.schedule(key);
                    return Some(len);
                }
                Ok(None) => {}
                Err(ConnError::Packet(e)) => {
                    // The guest's buffer is at fault, not the connection.
                    self.metrics.malformed_rx += 1;
                    warn!("vsock: bad RX buffer: {e}");
                    self.schedule(key);
                    return Some(0);
                }
                Err(e) => self.kill_on_error(key, &e),
            }
        }
    }

    /// State of a connection, for tests and diagnostics.
    pub fn connection_state(&self, key: ConnKey) -> Option<State> {
        self.conns.get(&key).map(Connection::state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r\n"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\n"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296\n"), None);
        assert_eq!(parse_connect(b"CONNECT -1\n"), None);
        assert_eq!(parse_connect(b"CONNECT +1\n"), None);
        assert_eq!(parse_connect(b"CONNECT \n"), None);
        assert_eq!(parse_connect(b"connect 5\n"), None);
        assert_eq!(parse_connect(b"CONNECT 5"), None);
        assert_eq!(parse_connect(b"CONNECT\xff5\n"), None);
    }

    #[test]
    fn limits_without_connect_timeout_still_parse() {
        let mut v = serde_json::to_value(Limits::default()).unwrap();
        v.as_object_mut()
            .unwrap()
            .remove("connect_timeout")
            .unwrap();
        let l: Limits = serde_json::from_value(v).unwrap();
        assert_eq!(l, Limits::default());
        assert_eq!(l.connect_timeout, Duration::from_secs(10));
        let m: VsockMetrics = serde_json::from_str(
            r#"{"tx_packets":1,"rx_packets":0,
            "malformed_tx":0,"malformed_rx":0,"bad_cid":0,"bad_type":0,"unknown_op":0,
            "protocol_errors":0,"unknown_conn":0,"rst_sent":0,"rst_dropped":0,
            "conns_guest_initiated":0,"conns_host_initiated":0,"conns_refused":0,
            "conns_over_limit":0,"handshake_errors":0,"host_io_errors":0,"events_sent":0}"#,
        )
        .unwrap();
        assert_eq!((m.tx_packets, m.connect_timeouts), (1, 0));
    }

    /// Deadlines with an injected clock: the CONNECT line has its own
    /// timeout from accept, the guest's answer its own from the line.
    #[test]
    fn setup_deadlines_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let timeout = Duration::from_secs(10);
        let limits = Limits {
            connect_timeout: timeout,
            ..Limits::default()
        };
        let mut m = Muxer::new(3, path.clone(), listener, limits);
        let ns = Duration::from_nanos(1);
        let t0 = Instant::now();
        assert_eq!(m.next_deadline(), None);

        let mut a = UnixStream::connect(&path).unwrap();
        let mut b = UnixStream::connect(&path).unwrap();
        m.on_listener_readable(true, t0);
        assert_eq!(m.handshakes.len(), 2);
        assert_eq!(m.next_deadline(), Some(t0 + timeout));
        // `a` finishes its line late in its handshake time: its connection
        // gets a full timeout of its own.
        let t1 = t0 + timeout - ns;
        a.write_all(b"CONNECT 5\n").unwrap();
        let tokens: Vec<u32> = m.handshakes.keys().copied().collect();
        for t in tokens {
            m.on_stream_event(t, EventSet::IN, t1);
        }
        assert_eq!((m.handshakes.len(), m.conns.len()), (1, 1));
        let key = *m.conns.keys().next().unwrap();
        m.expire(t0 + timeout - ns);
        assert_eq!(m.metrics.handshake_timeouts, 0);
        m.expire(t0 + timeout);
        assert_eq!(m.metrics.handshake_timeouts, 1);
        assert!(m.handshakes.is_empty());
        assert!(matches!(m.changes.pop(), Some(EpollChange::Remove(_))));
        drop(m.changes.drain(..));
        b.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(std::io::Read::read(&mut b, &mut [0u8; 4]).unwrap(), 0);

        assert_eq!(m.next_deadline(), Some(t1 + timeout));
        m.expire(t1 + timeout - ns);
        assert_eq!(m.connection_state(key), Some(State::LocalInit));
        m.expire(t1 + timeout);
        assert_eq!(m.metrics.connect_timeouts, 1);
        assert_eq!(m.connection_count(), 0);
        // The REQUEST was still queued (no RX buffer came): no RST.
        assert_eq!(m.rst_backlog(), 0);
        assert_eq!(m.next_deadline(), None);

        // A huge timeout means no deadline rather than an overflow.
        m.limits.connect_timeout = Duration::MAX;
        let _c = UnixStream::connect(&path).unwrap();
        m.on_listener_readable(true, t0);
        assert_eq!(m.handshakes.len(), 1);
        assert_eq!(m.next_deadline(), None);
    }
}
