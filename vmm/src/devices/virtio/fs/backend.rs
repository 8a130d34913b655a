//! The vhost-user connection to a virtio-fs backend (virtiofsd), through
//! the `vhost` crate's [`Frontend`]: we speak only its API, never the
//! protocol by hand.
//!
//! - [`Backend::connect`]: connects (with send/receive timeouts, so a
//!   backend that hangs is an error, not a hung VMM), SET_OWNER,
//!   GET_FEATURES, and the protocol features we use (REPLY_ACK when
//!   offered: every request is then acknowledged, so a refusal is seen at
//!   once).
//! - [`Backend::start`]: on the guest's DRIVER_OK: SET_FEATURES,
//!   SET_MEM_TABLE (the memfd regions), and per queue SET_VRING_NUM /
//!   ADDR / BASE / CALL / KICK / ENABLE.
//! - [`Backend::stop`]: GET_VRING_BASE per queue (the backend stops the
//!   rings), on a driver reset.
//! - [`Backend::sync_memory`]: the hotplug slots shared with backends
//!   changed ([`crate::shared_memory`]): ADD_MEM_REG / REM_MEM_REG for the
//!   difference when the backend offers CONFIGURE_MEM_SLOTS (virtiofsd
//!   does), else SET_MEM_TABLE with the whole new table.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::shared_memory::{SharedMemory, SharedRegion};
use crate::GuestMemoryMmap;

/// VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user feature bit, never shown
/// to the guest.
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// How long one request to the backend may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "cannot connect to the vhost-user socket {path}: {source} (is virtiofsd listening there?)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vhost-user {what} failed: {source}")]
    Request {
        what: &'static str,
        source: vhost::Error,
    },
    #[error("the backend lacks the virtio features {0:#x} the guest uses")]
    Features(u64),
    #[error("queue {index}: the ring at {addr:#x} is not inside one region of guest memory")]
    RingAddress { index: usize, addr: u64 },
    #[error("guest memory is not shared (a vhost-user backend needs a memfd)")]
    NotShared,
    #[error("the backend takes at most {max} memory regions, guest memory needs {needed}")]
    TooManyRegions { max: u64, needed: usize },
}

/// What [`Backend::start`] needs of one queue, as the guest configured it
/// (the transport has checked it against guest memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VringSetup {
    pub max_size: u16,
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
}

/// A connected backend.
pub struct Backend {
    frontend: Frontend,
    socket: PathBuf,
    /// Virtio features the backend offers (without PROTOCOL_FEATURES).
    features: u64,
    protocol: bool,
    /// The backend takes ADD_MEM_REG / REM_MEM_REG (at most this many
    /// regions in all).
    mem_slots: Option<u64>,
    /// The hotplug slots in the backend's memory table.
    announced: Vec<SharedRegion>,
}

fn region_info(r: &SharedRegion, fd: RawFd) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: r.guest_addr,
        memory_size: r.size,
        userspace_addr: r.host_addr,
        mmap_offset: r.offset,
        mmap_handle: fd,
    }
}

fn req(what: &'static str) -> impl FnOnce(vhost::Error) -> BackendError {
    move |source| BackendError::Request { what, source }
}

impl Backend {
    /// Connects to `socket` and negotiates the protocol.
    pub fn connect(socket: &Path, queues: usize) -> Result<Self, BackendError> {
        let connect_err = |source| BackendError::Connect {
            path: socket.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
            .map_err(connect_err)?;
        let mut frontend = Frontend::from_stream(stream, queues as u64);
        frontend.set_owner().map_err(req("SET_OWNER"))?;
        let all = frontend.get_features().map_err(req("GET_FEATURES"))?;
        let protocol = all & PROTOCOL_FEATURES != 0;
        let mut mem_slots = None;
        if protocol {
            let offered = frontend
                .get_protocol_features()
                .map_err(req("GET_PROTOCOL_FEATURES"))?;
            let wanted = offered
                & (VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
            frontend
                .set_protocol_features(wanted)
                .map_err(req("SET_PROTOCOL_FEATURES"))?;
            if wanted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if wanted.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
                mem_slots = Some(
                    frontend
                        .get_max_mem_slots()
                        .map_err(req("GET_MAX_MEM_SLOTS"))?,
                );
            }
        }
        Ok(Self {
            frontend,
            socket: socket.to_path_buf(),
            features: all & !PROTOCOL_FEATURES,
            protocol,
            mem_slots,
            announced: Vec::new(),
        })
    }

    /// Virtio features the backend offers.
    pub fn features(&self) -> u64 {
        self.features
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the backend takes single memory regions (ADD_MEM_REG).
    pub fn configures_mem_slots(&self) -> bool {
        self.mem_slots.is_some()
    }

    /// The hotplug slots in the backend's memory table (tests, logs).
    pub fn announced(&self) -> &[SharedRegion] {
        &self.announced
    }

    fn check_room(&self, needed: usize) -> Result<(), BackendError> {
        match self.mem_slots {
            Some(max) if needed as u64 > max => Err(BackendError::TooManyRegions { max, needed }),
            _ => Ok(()),
        }
    }

    /// Brings the backend's memory table in line with `shared.table()`
    /// (only the hotplug slots change). Call once the backend has a table
    /// ([`Self::start`]).
    pub fn sync_memory(&mut self, shared: &SharedMemory) -> Result<(), BackendError> {
        let table = shared.table();
        let want: Vec<SharedRegion> = table
            .iter()
            .filter(|r| shared.is_hotplug(r))
            .copied()
            .collect();
        if want == self.announced {
            return Ok(());
        }
        let fd = shared.fd();
        if self.mem_slots.is_none() {
            let all: Vec<_> = table.iter().map(|r| region_info(r, fd)).collect();
            self.frontend
                .set_mem_table(&all)
                .map_err(req("SET_MEM_TABLE"))?;
            self.announced = want;
            return Ok(());
        }
        self.check_room(table.len())?;
        // Removals first: the backend must not map a range the guest lost.
        while let Some(pos) = self.announced.iter().position(|r| !want.contains(r)) {
            let r = self.announced[pos];
            self.frontend
                .remove_mem_region(&region_info(&r, fd))
                .map_err(req("REM_MEM_REG"))?;
            self.announced.remove(pos);
            tracing::debug!(socket = %self.socket.display(), gpa = r.guest_addr, size = r.size, "vhost-user: hotplug memory taken from the backend");
        }
        for r in want {
            if !self.announced.contains(&r) {
                self.frontend
                    .add_mem_region(&region_info(&r, fd))
                    .map_err(req("ADD_MEM_REG"))?;
                self.announced.push(r);
                tracing::debug!(socket = %self.socket.display(), gpa = r.guest_addr, size = r.size, "vhost-user: hotplug memory shared with the backend");
            }
        }
        Ok(())
    }

    /// The connection's descriptor (to watch for a hang-up).
    pub fn raw_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }

    /// Hands the backend guest memory and the rings the guest configured.
    /// `kicks[i]` is queue i's notify eventfd (KVM's ioeventfd on
    /// QueueNotify), `calls[i]` the eventfd the backend signals when it used
    /// buffers.
    pub fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        shared: &SharedMemory,
        vrings: &[VringSetup],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), BackendError> {
        if acked & !self.features != 0 {
            return Err(BackendError::Features(acked & !self.features));
        }
        let features = acked | if self.protocol { PROTOCOL_FEATURES } else { 0 };
        let f = &mut self.frontend;
        f.set_features(features).map_err(req("SET_FEATURES"))?;
        // RAM and the hotplug slots with plugged memory; later changes go
        // through sync_memory.
        let table = shared.table();
        let regions: Vec<VhostUserMemoryRegionInfo> =
            table.iter().map(|r| region_info(r, shared.fd())).collect();
        match self.mem_slots {
            Some(max) if regions.len() as u64 > max => {
                return Err(BackendError::TooManyRegions {
                    max,
                    needed: regions.len(),
                })
            }
            _ => {}
        }
        f.set_mem_table(&regions).map_err(req("SET_MEM_TABLE"))?;
        self.announced = table.into_iter().filter(|r| shared.is_hotplug(r)).collect();
        tracing::debug!(socket = %self.socket.display(), regions = regions.len(), hotplug = self.announced.len(), "vhost-user: memory table sent");
        for (index, ((v, kick), call)) in vrings.iter().zip(kicks).zip(calls).enumerate() {
            // vhost-user ring addresses are this process's addresses; each
            // ring must lie wholly inside one RAM region (the transport
            // checked its ends, not that no region boundary is in between).
            let host = |addr: u64, len: usize| {
                mem.get_slice(GuestAddress(addr), len)
                    .map(|s| s.ptr_guard().as_ptr() as u64)
                    .map_err(|_| BackendError::RingAddress { index, addr })
            };
            let n = usize::from(v.size);
            let config = VringConfigData {
                queue_max_size: v.max_size,
                queue_size: v.size,
                flags: 0,
                desc_table_addr: host(v.desc_table, 16 * n)?,
                used_ring_addr: host(v.used_ring, 6 + 8 * n)?,
                avail_ring_addr: host(v.avail_ring, 6 + 2 * n)?,
                log_addr: None,
            };
            f.set_vring_num(index, v.size)
                .map_err(req("SET_VRING_NUM"))?;
            f.set_vring_addr(index, &config)
                .map_err(req("SET_VRING_ADDR"))?;
            f.set_vring_base(index, v.next_avail)
                .map_err(req("SET_VRING_BASE"))?;
            f.set_vring_call(index, call)
                .map_err(req("SET_VRING_CALL"))?;
            f.set_vring_kick(index, kick)
                .map_err(req("SET_VRING_KICK"))?;
            if self.protocol {
                f.set_vring_enable(index, true)
                    .map_err(req("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Stops the rings (GET_VRING_BASE); errors are only logged: the
    /// device is being reset anyway.
    pub fn stop(&mut self, queues: usize) {
        for i in 0..queues {
            if let Err(e) = self.frontend.get_vring_base(i) {
                crate::limited_warn!(socket = %self.socket.display(), "vhost-user GET_VRING_BASE {i}: {e}");
            }
        }
    }
}
