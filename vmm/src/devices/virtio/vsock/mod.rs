//! virtio-vsock device (virtio 1.x, 5.10) with a userspace backend: the host
//! side is one Unix socket per instance (Firecracker-compatible protocol).
//!
//! - host-initiated: a client connects to `uds_path`, sends `CONNECT <port>\n`
//!   and, once the guest accepts, reads `OK <host_port>\n`; refused or no
//!   guest listener closes the Unix connection, and so does a client that
//!   does not finish its line, or a guest that does not answer, within
//!   [`Limits::connect_timeout`];
//! - guest-initiated: a guest connection to CID 2, port P is connected to the
//!   Unix socket `<uds_path>_P`; no listener there means RST to the guest.
//!
//! Threads: the transport calls [`VirtioDevice`] methods on vCPU threads; the
//! queues and sockets are worked on the event loop ([`event_handler`]). Both
//! go through the device's mutex.
//!
//! Wiring (the VMM):
//! ```text
//! let vsock = Arc::new(Mutex::new(Vsock::new(cid, uds_path, Limits::default())?));
//! let transport = MmioTransport::new(mem.clone(), vsock.clone())?;
//! event_manager.add_subscriber(vsock.clone());   // registers queue fds, listener
//! ```

pub mod connection;
pub mod event_handler;
pub mod muxer;
pub mod packet;
mod unix;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod restore_tests;
#[cfg(test)]
mod tests;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::limited_warn as warn;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

pub use connection::ConnectionInfo;
pub use muxer::{Limits, VsockMetrics};

use super::{
    ActivateContext, ActivateError, IrqTrigger, QueueConfig, VirtioDevice, INT_VRING, TYPE_VSOCK,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use crate::GuestMemoryMmap;
use muxer::Muxer;
use packet::{Header, EVENT_SIZE, EVENT_TRANSPORT_RESET, HEADER_SIZE, MAX_PKT_DATA};

/// Queue indices.
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// TX/RX alternations per event before yielding to other event sources.
const MAX_PUMP_ROUNDS: usize = 16;

/// Errors from creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved or out of range (3..=0xfffffffe)")]
    InvalidCid(u64),
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot create timerfd: {0}")]
    TimerFd(std::io::Error),
}

/// Device state for snapshots. Host connections are not restorable; after a
/// restore the device sends TRANSPORT_RESET instead (see [`Vsock::restore`]).
///
/// `queues` (with ring positions) is informational: the transport's
/// snapshot carries the same queues and re-activates the device from them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub guest_cid: u64,
    pub acked_features: Option<u64>,
    pub queues: Vec<QueueConfig>,
    pub connections: Vec<ConnectionInfo>,
    pub metrics: VsockMetrics,
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    irq: Arc<IrqTrigger>,
    acked_features: u64,
}

/// The vsock device model and its host backend.
pub struct Vsock {
    guest_cid: u64,
    queue_evts: Vec<EventFd>,
    /// Wakes the event loop for work requested from other threads
    /// (activation, reset cleanup, TRANSPORT_RESET) or left over.
    ctl_evt: EventFd,
    /// One-shot, armed for the muxer's earliest connection-setup deadline.
    /// Only the event loop sets it: timerfd_settime is not in the vCPU
    /// threads' seccomp list.
    timer: TimerFd,
    /// The deadline `timer` is armed for.
    timer_deadline: Option<Instant>,
    active: Option<Active>,
    muxer: Muxer,
    event_reset_pending: bool,
    /// The event queue's avail index when TRANSPORT_RESET went out. The
    /// driver makes the buffer available again only after it handled the
    /// event (new CID read, old sockets reset); until the index moves on,
    /// host-initiated REQUESTs are held back.
    reset_sent_at: Option<u16>,
    /// Set by [`Vsock::restore`] until the first activation.
    restored: bool,
    /// TX chains that were already available when a restored device was
    /// activated: they belong to connections that did not survive.
    stale_tx: u16,
    /// The CID changed on restore; reported once to the transport.
    config_changed: bool,
    /// Scratch buffer for TX packets in layouts `VsockPacket` does not take.
    tx_buf: Vec<u8>,
}

fn valid_cid(cid: u64) -> bool {
    (3..u64::from(u32::MAX)).contains(&cid)
}

impl Vsock {
    /// Creates the device and binds the host listener at `uds_path`.
    pub fn new(
        guest_cid: u64,
        uds_path: impl AsRef<Path>,
        limits: Limits,
    ) -> Result<Self, VsockError> {
        if !valid_cid(guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let path = uds_path.as_ref().to_path_buf();
        let bind_err = |source| VsockError::Bind {
            path: path.clone(),
            source,
        };
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Self {
            guest_cid,
            queue_evts: vec![evt()?, evt()?, evt()?],
            ctl_evt: evt()?,
            timer: TimerFd::new().map_err(|e| VsockError::TimerFd(e.into()))?,
            timer_deadline: None,
            active: None,
            muxer: Muxer::new(guest_cid, path, listener, limits),
            event_reset_pending: false,
            reset_sent_at: None,
            restored: false,
            stale_tx: 0,
            config_changed: false,
            tx_buf: Vec::new(),
        })
    }

    /// Recreates the device from a snapshot, with a listener at `uds_path`
    /// and guest CID `guest_cid` (a clone passes a fresh CID and socket).
    ///
    /// Semantics (the transport's `MmioTransport::restore` activates the
    /// device again with the saved rings):
    /// - Host connections do not survive: the ones in `state` are dropped
    ///   (counted in the log). Once active, the device sends one
    ///   TRANSPORT_RESET on the event queue (as soon as the guest has an
    ///   event buffer there); the guest then drops its connections and
    ///   re-reads the CID.
    /// - A CID other than the saved one is also reported as a configuration
    ///   change (ConfigGeneration bump and config interrupt, done by the
    ///   transport through [`VirtioDevice::take_config_changed`]).
    /// - TX: chains the guest had made available and the device had not
    ///   consumed at snapshot time are consumed after restore (returned on
    ///   the used ring, used-ring index continuing) but never forwarded to
    ///   the host: each non-RST packet is answered with an RST, since its
    ///   connection is gone (a pending REQUEST is refused). Chains made
    ///   available after restore are handled normally.
    /// - RX: buffers the guest had made available stay available and are
    ///   filled with new packets; nothing half-written is replayed (the
    ///   device never holds a popped RX buffer across a snapshot).
    /// - Event queue: buffers stay available; the first receives the
    ///   TRANSPORT_RESET. (A snapshot taken before the driver started the
    ///   device has no connections to reset: the driver's own device reset
    ///   during probe clears the pending event.)
    /// - Metrics start from zero (they count this process's work); the
    ///   saved ones remain in the snapshot.
    pub fn restore(
        guest_cid: u64,
        uds_path: impl AsRef<Path>,
        limits: Limits,
        state: &VsockState,
    ) -> Result<Self, VsockError> {
        let mut dev = Self::new(guest_cid, uds_path, limits)?;
        if !state.connections.is_empty() {
            info!(
                "vsock: {} host connection(s) from the snapshot are not restorable; \
                 the guest gets TRANSPORT_RESET",
                state.connections.len()
            );
        }
        // Stale TX chains exist only if the driver had the device running;
        // otherwise the next activation is a fresh driver start.
        dev.restored = state.acked_features.is_some();
        dev.event_reset_pending = true;
        dev.muxer.hold_host_requests();
        dev.config_changed = state.guest_cid != guest_cid;
        debug!("vsock: restored (CID {} -> {guest_cid})", state.guest_cid);
        Ok(dev)
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub fn metrics(&self) -> &VsockMetrics {
        &self.muxer.metrics
    }

    /// Drops all connections and tells the guest with a TRANSPORT_RESET
    /// event (after restore, or for a clone with a new CID).
    pub fn transport_reset(&mut self) {
        self.muxer.reset();
        self.muxer.hold_host_requests();
        self.event_reset_pending = true;
        self.reset_sent_at = None;
        self.wake();
    }

    /// Gives a clone its own CID; also resets the transport. The VMM should
    /// then call `MmioTransport::config_changed`.
    pub fn set_guest_cid(&mut self, cid: u64) -> Result<(), VsockError> {
        if !valid_cid(cid) {
            return Err(VsockError::InvalidCid(cid));
        }
        self.guest_cid = cid;
        self.muxer.set_guest_cid(cid);
        self.transport_reset();
        Ok(())
    }

    pub fn state(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid,
            acked_features: self.active.as_ref().map(|a| a.acked_features),
            queues: self
                .active
                .as_ref()
                .map(|a| a.queues.iter().map(|q| q.state().into()).collect())
                .unwrap_or_default(),
            connections: self.muxer.connections(),
            metrics: self.muxer.metrics.clone(),
        }
    }

    fn wake(&self) {
        if let Err(e) = self.ctl_evt.write(1) {
            warn!("vsock: cannot wake the event loop: {e}");
        }
    }

    fn signal_used(act: &mut Active, q: usize) {
        match act.queues[q].needs_notification(&act.mem) {
            Ok(true) => act.irq.trigger(INT_VRING),
            Ok(false) => {}
            Err(e) => warn!("vsock: queue {q}: {e}"),
        }
    }

    /// Works the queues until TX is no longer held up by a full RX backlog;
    /// bounded, re-waking the event loop when work is left.
    pub(crate) fn pump(&mut self) {
        for _ in 0..MAX_PUMP_ROUNDS {
            // Before RX, so that released REQUESTs go out in this round.
            self.check_reset_handled();
            let tx_paused = self.process_tx();
            let rx_done = self.process_rx();
            self.process_evq();
            if !(tx_paused && rx_done > 0) {
                return;
            }
        }
        // Still busy: come back after other event sources had their turn.
        self.wake();
    }

    /// Handles the guest's TX queue; returns true when it paused because
    /// the RX backlog is full.
    fn process_tx(&mut self) -> bool {
        let Some(act) = self.active.as_mut() else {
            return false;
        };
        let mem = &act.mem;
        let q = &mut act.queues[TXQ];
        let mut used = 0usize;
        let mut paused = false;
        loop {
            let mut popped = 0usize;
            while !self.muxer.rx_backlogged() {
                let Some(mut chain) = q.pop_descriptor_chain(mem) else {
                    break;
                };
                popped += 1;
                let head = chain.head_index();
                let raw = chain.clone();
                let stale = self.stale_tx > 0;
                self.stale_tx = self.stale_tx.saturating_sub(1);
                match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                    Ok(pkt) if stale => self.muxer.on_stale_packet(&Header::of(&pkt)),
                    Ok(pkt) => self
                        .muxer
                        .on_guest_packet(&Header::of(&pkt), pkt.data_slice()),
                    // `VsockPacket` takes only the layouts Linux commonly
                    // uses (header + data in one or two descriptors); any
                    // other layout is valid virtio and is gathered here.
                    Err(first) => match gather_tx(mem, raw.clone(), &mut self.tx_buf) {
                        Ok(h) if stale => self.muxer.on_stale_packet(&h),
                        Ok(h) => {
                            self.muxer.metrics.tx_gathered += 1;
                            let data = self.tx_buf.get_mut(HEADER_SIZE..).unwrap_or_default();
                            let slice = (!data.is_empty()).then(|| VolatileSlice::from(data));
                            self.muxer.on_guest_packet(&h, slice.as_ref());
                        }
                        Err(e) => {
                            warn!("vsock: malformed TX chain: {first}; {e}");
                            // Reset the connection it names, if a whole
                            // header was readable.
                            let h = self
                                .tx_buf
                                .first_chunk::<HEADER_SIZE>()
                                .map(Header::from_bytes)
                                .or_else(|| raw_header(raw));
                            self.muxer.on_malformed(h);
                        }
                    },
                }
                if let Err(e) = q.add_used(mem, head, 0) {
                    warn!("vsock: TX used ring: {e}");
                } else {
                    used += 1;
                }
            }
            if self.muxer.rx_backlogged() {
                paused = true;
                break;
            }
            match q.enable_notification(mem) {
                Ok(true) if popped > 0 => continue,
                Ok(true) => {
                    // The avail index claims entries that cannot be popped.
                    warn!("vsock: TX avail ring is inconsistent");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    warn!("vsock: TX queue: {e}");
                    break;
                }
            }
        }
        if used > 0 {
            Self::signal_used(act, TXQ);
        }
        paused
    }

    /// Fills the guest's RX buffers with pending packets; returns how many.
    fn process_rx(&mut self) -> usize {
        let Some(act) = self.active.as_mut() else {
            return 0;
        };
        let mem = &act.mem;
        let q = &mut act.queues[RXQ];
        let mut used = 0usize;
        'rounds: loop {
            let mut popped = 0usize;
            while self.muxer.has_rx_work() {
                let Some(mut chain) = q.pop_descriptor_chain(mem) else {
                    break;
                };
                popped += 1;
                let head = chain.head_index();
                let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                    Ok(mut pkt) => match self.muxer.fill_rx(&mut pkt) {
                        Some(len) => len,
                        None => {
                            // Nothing after all (e.g. the host read would
                            // block): hand the buffer back untouched.
                            q.go_to_previous_position();
                            break 'rounds;
                        }
                    },
                    Err(e) => {
                        self.muxer.metrics.malformed_rx += 1;
                        warn!("vsock: malformed RX chain: {e}");
                        0
                    }
                };
                if let Err(e) = q.add_used(mem, head, len) {
                    warn!("vsock: RX used ring: {e}");
                } else {
                    used += 1;
                }
            }
            if !self.muxer.has_rx_work() {
                break;
            }
            // Out of RX buffers: ask the guest to notify when it adds some.
            match q.enable_notification(mem) {
                Ok(true) if popped > 0 => continue,
                Ok(true) => {
                    warn!("vsock: RX avail ring is inconsistent");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    warn!("vsock: RX queue: {e}");
                    break;
                }
            }
        }
        if used > 0 {
            Self::signal_used(act, RXQ);
        }
        used
    }

    /// Releases held host REQUESTs once the driver has handled the
    /// TRANSPORT_RESET (its event buffer came back on the avail ring);
    /// returns whether it did.
    fn check_reset_handled(&mut self) -> bool {
        let (Some(at), Some(act)) = (self.reset_sent_at, self.active.as_ref()) else {
            return false;
        };
        match act.queues[EVQ].avail_idx(&act.mem, std::sync::atomic::Ordering::Acquire) {
            Ok(idx) if idx.0 != at => {
                self.reset_sent_at = None;
                self.muxer.release_host_requests();
                debug!("vsock: the guest handled TRANSPORT_RESET");
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!("vsock: event queue: {e}");
                false
            }
        }
    }

    /// Delivers a pending TRANSPORT_RESET on the event queue.
    fn process_evq(&mut self) {
        if !self.event_reset_pending {
            return;
        }
        let Some(act) = self.active.as_mut() else {
            return;
        };
        let mem = &act.mem;
        let q = &mut act.queues[EVQ];
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut written = 0u32;
            if let Some(d) = chain.clone().next() {
                if d.is_write_only() && d.len() as usize >= EVENT_SIZE {
                    match mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr()) {
                        Ok(()) => written = EVENT_SIZE as u32,
                        Err(e) => warn!("vsock: event buffer: {e}"),
                    }
                }
            }
            if written == 0 {
                self.muxer.metrics.malformed_rx += 1;
                warn!("vsock: unusable event queue buffer");
            }
            if let Err(e) = q.add_used(mem, head, written) {
                warn!("vsock: event used ring: {e}");
            }
            used = true;
            if written > 0 {
                self.event_reset_pending = false;
                self.muxer.metrics.events_sent += 1;
                debug!("vsock: TRANSPORT_RESET sent");
                match request_kick_on_refill(q, mem) {
                    Ok(idx) => self.reset_sent_at = Some(idx),
                    Err(e) => {
                        warn!("vsock: event queue: {e}");
                        self.muxer.release_host_requests();
                    }
                }
                break;
            }
        }
        if used {
            Self::signal_used(act, EVQ);
        }
        // The driver may have refilled before it could see avail_event, so
        // no kick will come; RX already ran this round, so the released
        // REQUESTs need another pump.
        if self.check_reset_handled() {
            self.wake();
        }
    }
}

/// Asks the driver to notify when it makes one more buffer available on
/// `q` than now, and returns the current avail index. With EVENT_IDX that
/// means `avail_event` = the avail index (virtio-queue's
/// `enable_notification` uses the device's own position instead, which
/// does not fire while the driver still has other buffers posted).
fn request_kick_on_refill(q: &mut Queue, mem: &GuestMemoryMmap) -> Result<u16, String> {
    use std::sync::atomic::{fence, Ordering};
    let idx = q
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|e| e.to_string())?;
    if q.event_idx_enabled() {
        // struct virtq_used { le16 flags; le16 idx; elem ring[size]; le16 avail_event; }
        let addr = q
            .used_ring()
            .checked_add(4 + 8 * u64::from(q.size()))
            .ok_or("used ring address overflows")?;
        mem.write_obj(idx.0.to_le(), GuestAddress(addr))
            .map_err(|e| e.to_string())?;
    } else {
        q.enable_notification(mem).map_err(|e| e.to_string())?;
    }
    fence(Ordering::SeqCst);
    Ok(idx.0)
}

/// Why a TX chain could not be gathered.
#[derive(Debug, thiserror::Error)]
enum GatherError {
    #[error("device-writable descriptor in a TX chain")]
    WriteOnly,
    #[error("chain holds {got} bytes, the packet needs {need}")]
    Short { got: usize, need: usize },
    #[error("payload length {0} exceeds the maximum")]
    TooLong(u32),
    #[error("guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
}

/// Copies a TX packet laid out over any number of device-readable
/// descriptors into `buf` (header, then payload); returns the header.
/// Reads at most `HEADER_SIZE + MAX_PKT_DATA` bytes whatever the chain
/// claims; the chain iterator itself is bounded by the queue size.
fn gather_tx<M: GuestMemory>(
    mem: &M,
    chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    buf: &mut Vec<u8>,
) -> Result<Header, GatherError> {
    buf.clear();
    let mut header: Option<Header> = None;
    let mut need = HEADER_SIZE;
    for d in chain {
        if d.is_write_only() {
            return Err(GatherError::WriteOnly);
        }
        let mut addr = d.addr();
        let mut left = d.len() as usize;
        while left > 0 && buf.len() < need {
            let n = left.min(need - buf.len());
            let at = buf.len();
            buf.resize(at + n, 0);
            mem.read_slice(&mut buf[at..], addr)
                .map_err(GatherError::Memory)?;
            left -= n;
            addr = addr.checked_add(n as u64).ok_or(GatherError::Memory(
                vm_memory::GuestMemoryError::InvalidGuestAddress(addr),
            ))?;
            if header.is_none() && buf.len() >= HEADER_SIZE {
                let mut b = [0u8; HEADER_SIZE];
                b.copy_from_slice(&buf[..HEADER_SIZE]);
                let h = Header::from_bytes(&b);
                if h.len > MAX_PKT_DATA {
                    return Err(GatherError::TooLong(h.len));
                }
                need = HEADER_SIZE + h.len as usize;
                header = Some(h);
            }
        }
        if buf.len() >= need {
            break;
        }
    }
    match header {
        Some(h) if buf.len() >= need => Ok(h),
        _ => Err(GatherError::Short {
            got: buf.len(),
            need,
        }),
    }
}

/// Reads the header of a rejected TX chain, if its head buffer holds one,
/// so the connection it names can be reset.
fn raw_header<M>(mut chain: DescriptorChain<M>) -> Option<Header>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let d = chain.next()?;
    if d.is_write_only() || (d.len() as usize) < HEADER_SIZE {
        return None;
    }
    let mut b = [0u8; HEADER_SIZE];
    chain.memory().read_slice(&mut b, d.addr()).ok()?;
    Some(Header::from_bytes(&b))
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_RING_EVENT_IDX)
    }

    fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let cfg = self.guest_cid.to_le_bytes();
        super::read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn!("vsock: guest wrote read-only config at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: ctx.queues.len(),
            });
        }
        if self.restored {
            // Chains available now were made available before the
            // snapshot (the vCPUs have not run since). Bounded by the ring
            // size whatever the guest wrote.
            let q = &ctx.queues[TXQ];
            self.stale_tx = match q.avail_idx(&ctx.mem, std::sync::atomic::Ordering::Acquire) {
                Ok(idx) => (idx - std::num::Wrapping(q.next_avail())).0.min(q.size()),
                Err(e) => {
                    warn!("vsock: restored TX ring unreadable: {e}");
                    0
                }
            };
            self.restored = false;
            debug!(
                "vsock: {} TX chain(s) pending from the snapshot",
                self.stale_tx
            );
        }
        self.ctl_evt.write(1).map_err(ActivateError::Signal)?;
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            irq: ctx.irq,
            acked_features: ctx.acked_features,
        });
        debug!("vsock: activated, guest CID {}", self.guest_cid);
        Ok(())
    }

    fn active_queues(&self) -> Option<Vec<QueueConfig>> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| q.state().into()).collect())
    }

    fn take_config_changed(&mut self) -> bool {
        std::mem::take(&mut self.config_changed)
    }

    fn reset(&mut self) {
        self.active = None;
        self.event_reset_pending = false;
        self.reset_sent_at = None;
        self.restored = false;
        self.stale_tx = 0;
        self.muxer.reset();
        // A fresh driver start has no stale connections to worry about.
        self.muxer.release_host_requests();
        // Sockets are unregistered and closed on the event loop.
        self.wake();
    }
}
