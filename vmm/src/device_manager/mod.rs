//! The one place virtio devices are attached to a VM.
//!
//! For each device the manager takes a virtio-mmio slot (register window
//! and GSI, [`resources`]), registers the transport's irqfd and queue
//! ioeventfds with KVM, puts the transport on the MMIO bus and remembers the
//! `virtio_mmio.device=` fragment for the guest command line. It also
//! collects every device's snapshot state and rebuilds the devices from it.
//!
//! Restore runs in two phases, so a VM can be prepared before its memory has
//! the snapshot's content:
//! 1. [`DeviceManager::prepare_restore`] checks and claims the recorded
//!    slots, reopens and maps the pmem files and registers their KVM memory
//!    slots; it does not read guest memory.
//! 2. [`DeviceManager::restore_devices`], once guest memory holds the
//!    snapshot's content: creates the device models and their transports
//!    from the saved state (a restored transport reads ring indices from
//!    guest memory and re-activates its device), and wires them as above.

pub mod fs;
pub mod resources;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::{IoEventAddress, VmFd};

use crate::arch::layout;
use crate::config::{insert_kernel_param, PmemConfig, VsockConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::virtio::mem::{
    HotplugMemory, MemError, RequestedSizeError, VirtioMem, REGION_ALIGN,
};
use crate::devices::virtio::mmio::{MmioError, MmioTransport, MmioTransportState, NOTIFY_OFFSET};
use crate::devices::virtio::pmem::{Pmem, PmemError};
use crate::devices::virtio::vsock::{Limits, Vsock, VsockError};
use crate::devices::virtio::{cmdline_fragment, VirtioDevice, MMIO_WINDOW_SIZE};
use crate::event_loop::Subscriber;
use crate::snapshot::devices::{MemSnapshot, PmemSnapshot, VirtioStates, VsockSnapshot};
use crate::GuestMemoryMmap;
use resources::{DeviceMemory, KvmSlotAllocator, SlotAllocator};
pub use resources::{DeviceMemoryError, MmioSlot, SlotError};

/// Errors from attaching or restoring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("KVM {what} for the {device} device failed: {source}")]
    Kvm {
        device: &'static str,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("vsock device: {0}")]
    Vsock(#[from] VsockError),
    #[error("virtio-mmio transport: {0}")]
    Mmio(#[from] MmioError),
    #[error("virtio-mem device: {0}")]
    Mem(#[from] MemError),
    #[error("the snapshot has a vsock device: give it a new host socket with --vsock-uds")]
    VsockUdsMissing,
    #[error("a clone needs its own vsock CID: pass --vsock-cid")]
    VsockCidMissing,
    #[error(
        "the template has no image slot (a read-only pmem device): it cannot take an image base"
    )]
    NoImageSlot,
    #[error(
        "the template has no volume slot (a second read-only pmem device): it cannot take a packed volume image; boot the generic template with a second --pmem SLOT,ro"
    )]
    NoVolumeSlot,
    #[error("packed volume image {path} is {len} bytes; the template's volume slot holds at most {window}: pack less into it (serve large volumes with virtio-fs) or build a template with a larger slot")]
    VolumeSlotTooSmall {
        path: PathBuf,
        len: u64,
        window: u64,
    },
    #[error("pmem device: {0}")]
    Pmem(#[from] PmemError),
    #[error(transparent)]
    DeviceMemory(#[from] DeviceMemoryError),
    #[error("the snapshot has a writable pmem device ({0}): clones would write the same file; start instances with their own upper layer instead of cloning this snapshot")]
    PmemWritableClone(PathBuf),
    #[error(transparent)]
    Fs(crate::devices::virtio::fs::FsError),
    #[error("the snapshot has no vhost-user-fs device with tag {tag} (it has: {tags})")]
    NoFsTag { tag: String, tags: String },
    #[error(
        "the snapshot's vhost-user-fs device {0} had a backend: give it one with --fs {0}=SOCKET"
    )]
    FsBackendMissing(String),
    #[error(
        "restore_devices needs prepare_restore first (the snapshot's pmem devices are not mapped)"
    )]
    NotPrepared,
}

/// The vsock device and its transport, kept for snapshots and the API.
#[derive(Clone)]
pub struct VsockParts {
    pub slot: MmioSlot,
    pub device: Arc<Mutex<Vsock>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// The virtio-mem device and its transport, kept for snapshots and the API.
#[derive(Clone)]
pub struct MemParts {
    pub slot: MmioSlot,
    pub device: Arc<Mutex<VirtioMem>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

impl MemParts {
    /// Asks the guest for `bytes` of hotplugged memory: sets the requested
    /// size and, when it changed and a driver runs, signals a configuration
    /// change (a driver that starts later reads the size itself; a guest
    /// without a driver gets no interrupt it does not expect).
    pub fn request(&self, bytes: u64) -> Result<(), RequestedSizeError> {
        let (changed, active) = {
            let mut d = lock(&self.device);
            (d.set_requested(bytes)?, d.driver_active())
        };
        // Not under the device's lock: the transport locks the device.
        if changed && active {
            lock(&self.transport).config_changed();
        }
        Ok(())
    }
}

/// A pmem device and its transport.
#[derive(Clone)]
pub struct PmemParts {
    pub slot: MmioSlot,
    pub device: Arc<Mutex<Pmem>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// What a restore changes about the saved devices (new host endpoints, a
/// clone's identity).
#[derive(Clone, Default)]
pub struct DeviceRestoreParams {
    /// Restoring as a clone of a template.
    pub clone: bool,
    /// New vsock host socket (required when the snapshot has vsock).
    pub vsock_uds: Option<PathBuf>,
    /// New guest CID (a clone must not reuse the template's).
    pub vsock_cid: Option<u64>,
    /// Backends for the snapshot's vhost-user-fs devices, by tag (guest RAM
    /// is then `shared`).
    pub fs: Vec<crate::devices::virtio::fs::FsConfig>,
    pub shared: Option<Arc<crate::shared_memory::SharedMemory>>,
    /// Stops the VM when a vhost-user-fs backend goes away.
    pub lifecycle: Option<Arc<crate::lifecycle::Lifecycle>>,
}

/// The VM's virtio devices and the MMIO bus they sit on.
#[derive(Default)]
pub struct DeviceManager {
    slots: SlotAllocator,
    mmio: Bus,
    /// `virtio_mmio.device=` fragments, in attach order.
    fragments: Vec<String>,
    vsock: Option<VsockParts>,
    pmem: Vec<PmemParts>,
    /// Guest-physical space above RAM, set up on first use.
    device_memory: Option<DeviceMemory>,
    kvm_slots: KvmSlotAllocator,
    /// Restore phase 1 output: mapped pmem devices awaiting transports.
    pending_pmem: Vec<Arc<Mutex<Pmem>>>,
    mem: Option<MemParts>,
    fs: Vec<fs::FsParts>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// The MMIO bus the vCPUs dispatch to (shares the devices).
    pub fn mmio_bus(&self) -> Bus {
        self.mmio.clone()
    }

    /// `cmdline` with every attached device announced to the guest (before
    /// a `--`, after which words are the app's arguments).
    pub fn add_to_cmdline(&self, cmdline: &str) -> String {
        self.fragments
            .iter()
            .fold(cmdline.to_string(), |c, f| insert_kernel_param(&c, f))
    }

    /// Devices with host-side work for the event loop.
    pub fn subscribers(&self) -> Vec<Subscriber> {
        let mut subs = Vec::new();
        if let Some(v) = &self.vsock {
            subs.push(v.device.clone() as Subscriber);
        }
        for p in &self.pmem {
            subs.push(p.device.clone() as Subscriber);
        }
        if let Some(m) = &self.mem {
            subs.push(m.device.clone() as Subscriber);
        }
        for f in &self.fs {
            subs.push(f.device.clone() as Subscriber);
        }
        subs
    }

    pub fn vsock(&self) -> Option<&VsockParts> {
        self.vsock.as_ref()
    }

    pub fn pmem(&self) -> &[PmemParts] {
        &self.pmem
    }

    pub fn mem(&self) -> Option<&MemParts> {
        self.mem.as_ref()
    }

    /// Reserves guest-physical space for a hotplug region of `max` bytes
    /// (rounded up to 128 MiB) in device memory above the RAM of a
    /// `mem_size` guest; returns (address, size). Call before any device
    /// memory is allocated and map the region into guest memory (not into
    /// KVM), then attach the device with [`Self::add_mem`].
    pub fn reserve_hotplug(&mut self, mem_size: u64, max: u64) -> Result<(u64, u64), DeviceError> {
        let size = max.next_multiple_of(REGION_ALIGN);
        let addr = self
            .device_memory(layout::ram_end(mem_size))
            .allocate(size)?;
        Ok((addr, size))
    }

    /// Adds a virtio-mem device for the hotplug region `[addr, addr+size)`
    /// from [`Self::reserve_hotplug`], which must be a region of `mem` that
    /// is not registered with KVM (the device registers the parts that get
    /// plugged).
    /// `shared`: guest memory is this memfd (`--fs`), which holds the region.
    pub fn add_mem(
        &mut self,
        vm: &Arc<VmFd>,
        mem: &GuestMemoryMmap,
        addr: u64,
        size: u64,
        shared: Option<Arc<crate::shared_memory::SharedMemory>>,
    ) -> Result<(), DeviceError> {
        let slot = self.slots.allocate()?;
        let mut backend =
            HotplugMemory::new(mem, addr, size, vm.clone()).map_err(MemError::from)?;
        if let Some(shared) = shared {
            backend.set_shared(shared).map_err(MemError::from)?;
        }
        let device = Arc::new(Mutex::new(VirtioMem::new(addr, size, Box::new(backend))?));
        let transport = MmioTransport::new(mem.clone(), device.clone())?;
        let transport = self.attach(vm, slot, transport, "virtio-mem")?;
        self.mem = Some(MemParts {
            slot,
            device,
            transport,
        });
        Ok(())
    }

    /// Restore phase 2 for the virtio-mem device (it needs the VM fd to
    /// register the plugged blocks' memory slots again). `pooled`: guest
    /// memory is a reservation the template's file is mapped over at start
    /// (the transport loads its state then, in `load_transport_states`).
    /// `shared`: guest memory was converted to this memfd for vhost-user
    /// backends (the region's plugged slots are shared with them).
    pub fn restore_mem(
        &mut self,
        vm: &Arc<VmFd>,
        mem: &GuestMemoryMmap,
        states: &VirtioStates,
        pooled: bool,
        shared: Option<Arc<crate::shared_memory::SharedMemory>>,
    ) -> Result<(), DeviceError> {
        let Some(ms) = &states.mem else {
            return Ok(());
        };
        let d = &ms.device;
        let mut backend =
            HotplugMemory::new(mem, d.addr, d.region_size, vm.clone()).map_err(MemError::from)?;
        if pooled {
            backend.set_file_backed();
        }
        if let Some(shared) = shared {
            backend.set_shared(shared).map_err(MemError::from)?;
        }
        let device = Arc::new(Mutex::new(VirtioMem::restore(d, Box::new(backend))?));
        let state = (!pooled).then_some(&ms.transport);
        let transport = self.reattach(vm, mem, ms.slot, device.clone(), state, "virtio-mem")?;
        self.mem = Some(MemParts {
            slot: ms.slot,
            device,
            transport,
        });
        Ok(())
    }

    /// A pooled clone's RAM became `shared` at start: the virtio-mem
    /// device's plugged slots are shared with the backends from now on.
    pub fn share_hotplug(
        &self,
        shared: &Arc<crate::shared_memory::SharedMemory>,
    ) -> Result<(), DeviceError> {
        if let Some(m) = &self.mem {
            lock(&m.device).set_shared(shared.clone())?;
        }
        Ok(())
    }

    /// The guest-physical range of the hotplug region in `states`, if any
    /// (restore registers boot RAM with KVM, but not this region).
    pub fn hotplug_region(states: &VirtioStates) -> Option<(u64, u64)> {
        states
            .mem
            .as_ref()
            .map(|m| (m.device.addr, m.device.region_size))
    }

    fn device_memory(&mut self, ram_end: u64) -> &mut DeviceMemory {
        self.device_memory
            .get_or_insert_with(|| DeviceMemory::above_ram(ram_end))
    }

    /// Registers a pmem device's window with KVM (read-only slot for a
    /// read-only device: guest writes exit to the VMM and are dropped).
    fn map_pmem(&mut self, vm: &VmFd, dev: &Pmem) -> Result<(), DeviceError> {
        let region = kvm_userspace_memory_region {
            slot: self.kvm_slots.allocate(),
            guest_phys_addr: dev.guest_addr(),
            memory_size: dev.region_size(),
            userspace_addr: dev.mapping().host_addr(),
            flags: if dev.read_only() { KVM_MEM_READONLY } else { 0 },
        };
        // SAFETY: the mapping is live, exactly `memory_size` bytes, and is
        // owned by the device, which the device manager keeps as long as
        // the VM can run (vCPUs are joined before it is dropped).
        unsafe { vm.set_user_memory_region(region) }.map_err(|source| DeviceError::Kvm {
            device: "pmem",
            what: "memory slot registration",
            source,
        })
    }

    /// Adds a pmem device: maps the file above RAM (and after earlier
    /// devices) and attaches its transport. The guest numbers pmem devices
    /// in the order they are added.
    pub fn add_pmem(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        config: &PmemConfig,
    ) -> Result<(), DeviceError> {
        use vm_memory::{Address, GuestMemoryBackend};
        let slot = self.slots.allocate()?;
        let mut dev = Pmem::new(&config.path, config.read_only)?;
        let ram_end = mem.last_addr().raw_value() + 1;
        let addr = self.device_memory(ram_end).allocate(dev.region_size())?;
        dev.set_guest_addr(addr);
        self.map_pmem(vm, &dev)?;
        tracing::info!(
            path = %config.path.display(),
            read_only = config.read_only,
            guest_addr = addr,
            size = dev.region_size(),
            "pmem device"
        );
        let device = Arc::new(Mutex::new(dev));
        let transport = MmioTransport::new(mem.clone(), device.clone())?;
        let transport = self.attach(vm, slot, transport, "pmem")?;
        self.pmem.push(PmemParts {
            slot,
            device,
            transport,
        });
        Ok(())
    }

    /// Adds a vsock device (binds its host socket).
    pub fn add_vsock(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        config: &VsockConfig,
    ) -> Result<(), DeviceError> {
        let slot = self.slots.allocate()?;
        let device = Arc::new(Mutex::new(Vsock::new(
            config.cid,
            &config.uds,
            Limits::default(),
        )?));
        let transport = MmioTransport::new(mem.clone(), device.clone())?;
        let transport = self.attach(vm, slot, transport, "vsock")?;
        self.vsock = Some(VsockParts {
            slot,
            device,
            transport,
        });
        Ok(())
    }

    /// Every device's state, for a snapshot (vCPUs paused).
    pub fn save(&self) -> VirtioStates {
        VirtioStates {
            vsock: self.vsock.as_ref().map(|v| VsockSnapshot {
                slot: v.slot,
                transport: lock(&v.transport).state(),
                device: lock(&v.device).state(),
            }),
            pmem: self
                .pmem
                .iter()
                .map(|p| PmemSnapshot {
                    slot: p.slot,
                    transport: lock(&p.transport).state(),
                    device: lock(&p.device).state(),
                })
                .collect(),
            mem: self.mem.as_ref().map(|m| MemSnapshot {
                slot: m.slot,
                transport: lock(&m.transport).state(),
                device: lock(&m.device).state(),
            }),
            fs: self.save_fs(),
        }
    }

    /// Restore phase 1: checks and claims the slots recorded in `states`,
    /// reopens and maps the pmem files at their recorded guest addresses
    /// (above the RAM of a `mem_size` guest). Guest memory is not read; its
    /// content may still be missing.
    pub fn prepare_restore(
        &mut self,
        vm: &VmFd,
        mem_size: u64,
        states: &VirtioStates,
    ) -> Result<(), DeviceError> {
        if let Some(v) = &states.vsock {
            self.slots.claim(v.slot)?;
        }
        for p in &states.pmem {
            self.slots.claim(p.slot)?;
            let dev = Pmem::restore(&p.device)?;
            self.device_memory(layout::ram_end(mem_size))
                .claim(dev.guest_addr(), dev.region_size())?;
            self.map_pmem(vm, &dev)?;
            self.pending_pmem.push(Arc::new(Mutex::new(dev)));
        }
        for f in &states.fs {
            self.slots.claim(f.slot)?;
        }
        if let Some(m) = &states.mem {
            self.slots.claim(m.slot)?;
            self.device_memory(layout::ram_end(mem_size))
                .claim(m.device.addr, m.device.region_size)?;
        }
        Ok(())
    }

    /// Restore phase 2 (after [`Self::prepare_restore`], with guest memory
    /// holding the snapshot's content): rebuilds the devices from `states`.
    pub fn restore_devices(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        states: &VirtioStates,
        params: &DeviceRestoreParams,
    ) -> Result<(), DeviceError> {
        self.rebuild(vm, mem, states, params, true)
    }

    /// Phase 2 of a pooled VM (`crate::pooled`), before guest memory has the
    /// snapshot's content: rebuilds and wires the devices from `states`
    /// with fresh transports; [`Self::load_transport_states`] completes them
    /// at start.
    pub fn restore_devices_pooled(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        states: &VirtioStates,
        params: &DeviceRestoreParams,
    ) -> Result<(), DeviceError> {
        self.rebuild(vm, mem, states, params, false)
    }

    /// A pooled VM's start, once guest memory holds the snapshot's content:
    /// puts each transport in its saved state (re-activating its device).
    pub fn load_transport_states(&self, states: &VirtioStates) -> Result<(), DeviceError> {
        if let (Some(vs), Some(v)) = (&states.vsock, &self.vsock) {
            lock(&v.transport).restore_state(&vs.transport)?;
        }
        for (ps, p) in states.pmem.iter().zip(&self.pmem) {
            lock(&p.transport).restore_state(&ps.transport)?;
        }
        if let (Some(ms), Some(m)) = (&states.mem, &self.mem) {
            lock(&m.transport).restore_state(&ms.transport)?;
        }
        for (fs, f) in states.fs.iter().zip(&self.fs) {
            lock(&f.transport).restore_state(&fs.transport)?;
        }
        Ok(())
    }

    fn rebuild(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        states: &VirtioStates,
        params: &DeviceRestoreParams,
        load_transports: bool,
    ) -> Result<(), DeviceError> {
        if let Some(vs) = &states.vsock {
            let uds = params
                .vsock_uds
                .as_ref()
                .ok_or(DeviceError::VsockUdsMissing)?;
            let cid = match (params.vsock_cid, params.clone) {
                (Some(cid), _) => cid,
                (None, false) => vs.device.guest_cid,
                (None, true) => return Err(DeviceError::VsockCidMissing),
            };
            let device = Arc::new(Mutex::new(Vsock::restore(
                cid,
                uds,
                Limits::default(),
                &vs.device,
            )?));
            let state = (load_transports).then_some(&vs.transport);
            let transport = self.reattach(vm, mem, vs.slot, device.clone(), state, "vsock")?;
            self.vsock = Some(VsockParts {
                slot: vs.slot,
                device,
                transport,
            });
        }
        self.rebuild_fs(vm, mem, states, params, load_transports)?;
        if self.pending_pmem.len() != states.pmem.len() {
            return Err(DeviceError::NotPrepared);
        }
        let pending = std::mem::take(&mut self.pending_pmem);
        for (p, device) in states.pmem.iter().zip(pending) {
            if params.clone && !p.device.read_only {
                return Err(DeviceError::PmemWritableClone(p.device.path.clone()));
            }
            let state = (load_transports).then_some(&p.transport);
            let transport = self.reattach(vm, mem, p.slot, device.clone(), state, "pmem")?;
            self.pmem.push(PmemParts {
                slot: p.slot,
                device,
                transport,
            });
        }
        Ok(())
    }

    /// Maps `path` (an image's base) into the first pmem device's window,
    /// the image slot of a generic template, before the guest reads it.
    pub fn inject_image_base(&mut self, path: &Path) -> Result<(), DeviceError> {
        let device = self.pmem_device(0).ok_or(DeviceError::NoImageSlot)?;
        lock(&device).replace_file(path)?;
        tracing::debug!(path = %path.display(), "image base mapped into the image slot");
        Ok(())
    }

    /// Maps `path` (a packed volume image, EROFS) into the second pmem
    /// device's window, the volume slot of a generic template, before the
    /// guest reads it.
    pub fn inject_volumes_base(&mut self, path: &Path) -> Result<(), DeviceError> {
        let device = self.pmem_device(1).ok_or(DeviceError::NoVolumeSlot)?;
        let result = lock(&device).replace_file(path);
        match result {
            Ok(()) => {}
            Err(PmemError::TooLargeForWindow { path, len, window }) => {
                return Err(DeviceError::VolumeSlotTooSmall { path, len, window })
            }
            Err(e) => return Err(e.into()),
        }
        tracing::debug!(path = %path.display(), "packed volumes mapped into the volume slot");
        Ok(())
    }

    /// The `index`th pmem device, wired or (pooled VM) waiting for its state.
    fn pmem_device(&self, index: usize) -> Option<Arc<Mutex<Pmem>>> {
        match self.pmem.get(index) {
            Some(p) => Some(p.device.clone()),
            None if self.pmem.is_empty() => self.pending_pmem.get(index).cloned(),
            None => None,
        }
    }

    /// Wires a transport at `slot`: irqfd on its GSI, one ioeventfd per
    /// queue on QueueNotify, its window on the bus, its command-line fragment.
    /// Attaches a restored device at its snapshot's slot; its transport's
    /// registers come from `state` (None: a pooled VM loads them later).
    fn reattach(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        slot: MmioSlot,
        device: Arc<Mutex<dyn VirtioDevice>>,
        state: Option<&MmioTransportState>,
        what: &'static str,
    ) -> Result<Arc<Mutex<MmioTransport>>, DeviceError> {
        let mut transport = MmioTransport::new(mem.clone(), device)?;
        if let Some(state) = state {
            transport.restore_state(state)?;
        }
        self.attach(vm, slot, transport, what)
    }

    fn attach(
        &mut self,
        vm: &VmFd,
        slot: MmioSlot,
        transport: MmioTransport,
        device: &'static str,
    ) -> Result<Arc<Mutex<MmioTransport>>, DeviceError> {
        let kvm = |what| {
            move |source| DeviceError::Kvm {
                device,
                what,
                source,
            }
        };
        vm.register_irqfd(transport.irq_evt(), slot.irq)
            .map_err(kvm("irqfd registration"))?;
        let notify = IoEventAddress::Mmio(slot.base + NOTIFY_OFFSET);
        for (i, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(evt, &notify, i as u32)
                .map_err(kvm("ioeventfd registration"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), slot.base, MMIO_WINDOW_SIZE)?;
        self.fragments.push(cmdline_fragment(slot.base, slot.irq));
        tracing::debug!(
            device,
            base = slot.base,
            irq = slot.irq,
            "virtio device attached"
        );
        Ok(transport)
    }
}

#[cfg(test)]
mod tests;
