//! A pooled VM: everything a clone needs that does not depend on the
//! template's content is done ahead of time (KVM VM, vCPUs and their
//! threads with seccomp on, guest memory reserved and registered with KVM,
//! devices bound to their sockets), and the process waits on its control
//! socket. `PUT /vm/start` then only maps the template's memory file over
//! the reservation and loads the saved state: the part of a restore that
//! must happen at start time.

use std::fs::File;
use std::sync::Arc;

use crate::device_manager::DeviceManager;
use crate::devices::virtio::fs::FsConfig;
use crate::shared_memory::SharedMemory;

use crate::runtime::Runtime;
use crate::snapshot::devices::VirtioStates;
use crate::snapshot::memory::{self, RegionInfo};
use crate::snapshot::{VcpuState, VmState};

/// The template state a pooled VM loads when it is started.
pub struct PendingTemplate {
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    /// The virtio devices' saved state: the devices are rebuilt and wired
    /// ahead of time; their transports (which read the rings in guest
    /// memory) load it at start.
    pub virtio: VirtioStates,
    /// The template's memory file, opened and its size checked ahead of time.
    pub memory_file: File,
    pub regions: Vec<RegionInfo>,
    /// The template's app-injection ABI (generic templates only).
    pub kernel_ready_abi: Option<u32>,
    /// Backends for the template's vhost-user-fs slots given on the
    /// command line (`PUT /vm/start` may add more).
    pub fs: Vec<FsConfig>,
}

impl PendingTemplate {
    /// Loads the template into the VM, in a restore's order: memory, vCPUs
    /// (with their LAPICs, each on its own thread, in parallel), then the
    /// interrupt controllers and clock, then devices. The vCPUs stay parked.
    ///
    /// `fs`: backends for the template's vhost-user-fs slots; with any,
    /// guest RAM is first converted to shared memory
    /// ([`SharedMemory::convert`]) and the slots connected, so that loading
    /// the transports hands the rings to the backends.
    pub fn load(self, rt: &Runtime, fs: &[FsConfig]) -> Result<(), String> {
        let mut all = self.fs.clone();
        all.extend_from_slice(fs);
        DeviceManager::check_fs_restore(&self.virtio, &all).map_err(|e| e.to_string())?;
        memory::map_over(&rt.mem, &self.memory_file, &self.regions).map_err(|e| e.to_string())?;
        if !all.is_empty() {
            let hotplug = DeviceManager::hotplug_region(&self.virtio);
            let (shared, _) =
                SharedMemory::convert(&rt.mem, &self.memory_file, &self.regions, hotplug)
                    .map_err(|e| e.to_string())?;
            let shared = Arc::new(shared);
            rt.devices
                .share_hotplug(&shared)
                .map_err(|e| e.to_string())?;
            rt.devices
                .connect_fs(&all, &shared)
                .map_err(|e| e.to_string())?;
        }
        if self.vcpus.len() != rt.handles.len() {
            return Err(format!(
                "the template has {} vCPUs, the pooled VM {}",
                self.vcpus.len(),
                rt.handles.len()
            ));
        }
        let replies: Vec<_> = rt
            .handles
            .iter()
            .zip(self.vcpus)
            .map(|(h, state)| (h.id, h.load(state)))
            .collect();
        for (id, reply) in replies {
            match reply.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("vCPU {id} is gone")),
            }
        }
        self.vm.restore(&rt.vm).map_err(|e| e.to_string())?;
        rt.devices
            .load_transport_states(&self.virtio)
            .map_err(|e| e.to_string())
    }
}
