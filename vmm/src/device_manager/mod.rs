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
//!    slots (and maps device memory, for devices that have some); it does not
//!    read guest memory.
//! 2. [`DeviceManager::restore_devices`], once guest memory holds the
//!    snapshot's content: creates the device models and their transports
//!    from the saved state (a restored transport reads ring indices from
//!    guest memory and re-activates its device), and wires them as above.

pub mod resources;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};

use crate::config::{insert_kernel_param, VsockConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::virtio::mmio::{MmioError, MmioTransport, NOTIFY_OFFSET};
use crate::devices::virtio::vsock::{Limits, Vsock, VsockError};
use crate::devices::virtio::{cmdline_fragment, MMIO_WINDOW_SIZE};
use crate::event_loop::Subscriber;
use crate::snapshot::devices::{VirtioStates, VsockSnapshot};
use crate::GuestMemoryMmap;
use resources::SlotAllocator;
pub use resources::{MmioSlot, SlotError};

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
    #[error("the snapshot has a vsock device: give it a new host socket with --vsock-uds")]
    VsockUdsMissing,
    #[error("a clone needs its own vsock CID: pass --vsock-cid")]
    VsockCidMissing,
}

/// The vsock device and its transport, kept for snapshots and the API.
#[derive(Clone)]
pub struct VsockParts {
    pub slot: MmioSlot,
    pub device: Arc<Mutex<Vsock>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// What a restore changes about the saved devices (new host endpoints, a
/// clone's identity).
#[derive(Debug, Clone, Default)]
pub struct DeviceRestoreParams {
    /// Restoring as a clone of a template.
    pub clone: bool,
    /// New vsock host socket (required when the snapshot has vsock).
    pub vsock_uds: Option<PathBuf>,
    /// New guest CID (a clone must not reuse the template's).
    pub vsock_cid: Option<u64>,
}

/// The VM's virtio devices and the MMIO bus they sit on.
#[derive(Default)]
pub struct DeviceManager {
    slots: SlotAllocator,
    mmio: Bus,
    /// `virtio_mmio.device=` fragments, in attach order.
    fragments: Vec<String>,
    vsock: Option<VsockParts>,
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
        subs
    }

    pub fn vsock(&self) -> Option<&VsockParts> {
        self.vsock.as_ref()
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
        }
    }

    /// Restore phase 1: checks and claims the slots recorded in `states`.
    /// Guest memory is not read; its content may still be missing.
    pub fn prepare_restore(&mut self, states: &VirtioStates) -> Result<(), DeviceError> {
        if let Some(v) = &states.vsock {
            self.slots.claim(v.slot)?;
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
            let mut transport = MmioTransport::new(mem.clone(), device.clone())?;
            if load_transports {
                transport.restore_state(&vs.transport)?;
            }
            let transport = self.attach(vm, vs.slot, transport, "vsock")?;
            self.vsock = Some(VsockParts {
                slot: vs.slot,
                device,
                transport,
            });
        }
        Ok(())
    }

    /// Wires a transport at `slot`: irqfd on its GSI, one ioeventfd per
    /// queue on QueueNotify, its window on the bus, its command-line fragment.
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
