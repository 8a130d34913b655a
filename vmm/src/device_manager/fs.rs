//! vhost-user-fs devices in the device manager: attaching them (with a
//! backend, or as slots), saving and restoring them, and connecting a
//! clone's slots to their backends.

use std::path::Path;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;

use super::{lock, DeviceError, DeviceManager, DeviceRestoreParams, MmioSlot};
use crate::devices::virtio::fs::{FsConfig, FsError, VhostUserFs};
use crate::devices::virtio::mmio::MmioTransport;
use crate::lifecycle::Lifecycle;
use crate::shared_memory::SharedMemory;
use crate::snapshot::devices::{FsSnapshot, VirtioStates};
use crate::GuestMemoryMmap;

/// A vhost-user-fs device and its transport.
#[derive(Clone)]
pub struct FsParts {
    pub slot: MmioSlot,
    pub device: Arc<Mutex<VhostUserFs>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

impl DeviceManager {
    pub fn fs(&self) -> &[FsParts] {
        &self.fs
    }

    /// Adds a vhost-user-fs device with tag `tag`, connected to the backend
    /// at `backend` (socket, guest RAM as shared memory) or, without one, a
    /// slot that a clone connects later.
    pub fn add_fs(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        tag: &str,
        backend: Option<(&Path, Arc<SharedMemory>)>,
        lifecycle: &Arc<Lifecycle>,
    ) -> Result<(), DeviceError> {
        let slot = self.slots.allocate()?;
        let mut dev = VhostUserFs::new(tag, lifecycle.clone())?;
        let mut watched = None;
        if let Some((socket, shared)) = backend {
            dev.connect(socket, shared.clone())?;
            watched = Some(shared);
        }
        tracing::info!(tag, socket = ?dev.socket(), "vhost-user-fs device");
        let device = Arc::new(Mutex::new(dev));
        if let Some(shared) = watched {
            watch(&shared, &device);
        }
        let transport = MmioTransport::new(mem.clone(), device.clone())?;
        let transport = self.attach(vm, slot, transport, "vhost-user-fs")?;
        self.fs.push(FsParts {
            slot,
            device,
            transport,
        });
        Ok(())
    }

    pub(super) fn save_fs(&self) -> Vec<FsSnapshot> {
        self.fs
            .iter()
            .map(|f| {
                let d = lock(&f.device);
                let (device, connected) = (d.state(), d.has_backend());
                drop(d);
                FsSnapshot {
                    slot: f.slot,
                    transport: lock(&f.transport).state(),
                    device,
                    connected,
                }
            })
            .collect()
    }

    /// Checks that every `fs` names a device of the snapshot, and that
    /// every device that had a backend gets one.
    pub fn check_fs_restore(states: &VirtioStates, fs: &[FsConfig]) -> Result<(), DeviceError> {
        for f in fs {
            if !states.fs.iter().any(|s| s.device.tag == f.tag) {
                let tags: Vec<&str> = states.fs.iter().map(|s| s.device.tag.as_str()).collect();
                return Err(DeviceError::NoFsTag {
                    tag: f.tag.clone(),
                    tags: if tags.is_empty() {
                        "none".into()
                    } else {
                        tags.join(", ")
                    },
                });
            }
        }
        if let Some(s) = states
            .fs
            .iter()
            .find(|s| s.connected && !fs.iter().any(|f| f.tag == s.device.tag))
        {
            return Err(DeviceError::FsBackendMissing(s.device.tag.clone()));
        }
        Ok(())
    }

    /// Restore phase 2 for the vhost-user-fs devices: rebuilds them from
    /// `states` and connects those named in `params.fs` (guest RAM is then
    /// `params.shared`); with `load_transports`, puts the transports in
    /// their saved state, which hands the rings to connected backends.
    pub(super) fn rebuild_fs(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        states: &VirtioStates,
        params: &DeviceRestoreParams,
        load_transports: bool,
    ) -> Result<(), DeviceError> {
        if states.fs.is_empty() {
            return Ok(());
        }
        let lifecycle = params.lifecycle.clone().ok_or(DeviceError::NotPrepared)?;
        for s in &states.fs {
            let mut dev = VhostUserFs::restore(&s.device, lifecycle.clone())?;
            let backend = params.fs.iter().find(|f| f.tag == s.device.tag);
            let mut watched = None;
            if let (Some(f), Some(shared)) = (backend, &params.shared) {
                dev.connect(&f.socket, shared.clone())?;
                watched = Some(shared);
            }
            let device = Arc::new(Mutex::new(dev));
            if let Some(shared) = watched {
                watch(shared, &device);
            }
            let state = (load_transports).then_some(&s.transport);
            let transport =
                self.reattach(vm, mem, s.slot, device.clone(), state, "vhost-user-fs")?;
            self.fs.push(FsParts {
                slot: s.slot,
                device,
                transport,
            });
        }
        Ok(())
    }

    /// A pooled clone's start, before [`Self::load_transport_states`]:
    /// connects the slots named in `fs` to their backends.
    pub fn connect_fs(
        &self,
        fs: &[FsConfig],
        shared: &Arc<SharedMemory>,
    ) -> Result<(), DeviceError> {
        for f in fs {
            let parts = self
                .fs
                .iter()
                .find(|p| lock(&p.device).tag() == f.tag)
                .ok_or_else(|| DeviceError::NoFsTag {
                    tag: f.tag.clone(),
                    tags: self
                        .fs
                        .iter()
                        .map(|p| lock(&p.device).tag().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            lock(&parts.device).connect(&f.socket, shared.clone())?;
            watch(shared, &parts.device);
        }
        Ok(())
    }
}

/// The device's backend follows the hotplug slots shared from `shared`.
fn watch(shared: &Arc<SharedMemory>, device: &Arc<Mutex<VhostUserFs>>) {
    let weak: std::sync::Weak<Mutex<VhostUserFs>> = Arc::downgrade(device);
    shared.watch(weak);
}

impl From<FsError> for DeviceError {
    fn from(e: FsError) -> Self {
        DeviceError::Fs(e)
    }
}
