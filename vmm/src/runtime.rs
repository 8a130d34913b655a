//! A running VM as the control API sees it: pause, resume, snapshot, state.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::VmFd;
use serde_json::json;

use crate::api::http::Response;
use crate::api::StartRequest;
use crate::device_manager::DeviceManager;
use crate::devices::app_channel::AppChannel;
use crate::devices::legacy::SerialDevice;
use crate::devices::notify::NotifyDevice;
use crate::exit::StopReason;
use crate::lifecycle::Lifecycle;
use crate::pooled::PendingTemplate;
use crate::snapshot::{self, CpuSignature, DeviceStates, SnapshotState, VmState};
use crate::vcpu::VcpuHandle;
use crate::GuestMemoryMmap;

pub struct Runtime {
    pub handles: Vec<VcpuHandle>,
    pub pause: Arc<AtomicBool>,
    pub vm: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub mem_size: u64,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub notify: Arc<Mutex<NotifyDevice>>,
    pub app_channel: Arc<Mutex<AppChannel>>,
    pub devices: DeviceManager,
    pub lifecycle: Arc<Lifecycle>,
    /// Set while the VM is pooled: the template state `start` loads.
    pub pending: Option<PendingTemplate>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runtime {
    pub fn paused(&self) -> bool {
        self.pause.load(Ordering::SeqCst)
    }

    fn state_name(&self) -> &'static str {
        if self.lifecycle.stopping() {
            "stopping"
        } else if self.pending.is_some() {
            "pooled"
        } else if self.paused() {
            "paused"
        } else {
            "running"
        }
    }

    /// Refuses what a pooled VM (no guest state yet) cannot do.
    fn check_not_pooled(&self) -> Result<(), Response> {
        if self.pending.is_some() {
            return Err(Response::error(
                409,
                "the VM is pooled and has no guest state yet: start it first (PUT /vm/start)",
            ));
        }
        Ok(())
    }

    /// Starts a pooled VM: loads the template and runs the vCPUs. A failure
    /// stops the VM (arrow-vmm exits 125): a half-loaded VM is not usable.
    ///
    /// `start.app`: what a clone of a generic template runs, with its
    /// image base and packed volumes for the template's slots and the
    /// backends of its vhost-user-fs slots; checked before anything is
    /// loaded (a bad one leaves the VM pooled: 400).
    pub fn start(&mut self, start: StartRequest) -> Result<serde_json::Value, Response> {
        if self.lifecycle.stopping() {
            return Err(Response::error(409, "the VM is stopping"));
        }
        let t = Instant::now();
        let Some(abi) = self.pending.as_ref().map(|p| p.kernel_ready_abi) else {
            return Err(Response::error(
                409,
                "the VM is not pooled: it was started already (GET /vm shows its state)",
            ));
        };
        let bad = |e: &dyn std::fmt::Display| Response::error(400, e.to_string());
        let fs = &start.fs;
        if let Some(p) = &self.pending {
            // Volumes are checked before anything is loaded (400, still pooled).
            let mut all = p.fs.clone();
            all.extend_from_slice(fs);
            crate::devices::virtio::fs::validate_configs(&all, 0)
                .map_err(|e| Response::error(400, e))?;
            crate::device_manager::DeviceManager::check_fs_restore(&p.virtio, &all)
                .map_err(|e| bad(&e))?;
        }
        if let Some(mut app) = start.app {
            app.image_base |= start.image_base.is_some();
            app.check_volumes_base(start.volumes_base.is_some())
                .map_err(|e| bad(&e))?;
            let encoded = app.encode_for(abi).map_err(|e| bad(&e))?;
            if let Some(base) = &start.image_base {
                self.devices.inject_image_base(base).map_err(|e| bad(&e))?;
            }
            if let Some(volumes) = &start.volumes_base {
                self.devices
                    .inject_volumes_base(volumes)
                    .map_err(|e| bad(&e))?;
            }
            lock(&self.app_channel).offer(encoded);
        } else if start.image_base.is_some() || start.volumes_base.is_some() {
            return Err(Response::error(
                400,
                "an image_base or volumes_base needs an app to run with it: give \"app\" too",
            ));
        }
        let Some(pending) = self.pending.take() else {
            return Err(Response::error(409, "the VM is not pooled"));
        };
        if let Err(e) = pending.load(self, fs) {
            let msg = format!("cannot start the pooled VM: {e}");
            self.lifecycle
                .request_stop(StopReason::VmmError(msg.clone()));
            return Err(Response::error(500, msg));
        }
        self.pause.store(false, Ordering::SeqCst);
        for h in &self.handles {
            h.resume();
        }
        let us = t.elapsed().as_micros() as u64;
        tracing::info!(us, "pooled VM started");
        Ok(json!({ "state": "running", "start_us": us }))
    }

    /// The state for `GET /vm`.
    pub fn describe(&self) -> serde_json::Value {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        let notify = lock(&self.notify);
        json!({
            "state": self.state_name(),
            "vcpus": self.handles.len(),
            "memory_bytes": self.mem_size,
            "uptime_ms": ms(self.lifecycle.elapsed()),
            "app_started_ms": self.lifecycle.app_started().map(ms),
            "app_ready_ms": self.lifecycle.app_ready().map(|(d, _)| ms(d)),
            "app_ready_port": self.lifecycle.app_ready().map(|(_, p)| p),
            "generation": notify.generation(),
            "kernel_ready_ms": self.lifecycle.kernel_ready().map(|(d, _)| ms(d)),
            "app_abi": notify.kernel_ready_abi(),
            "vsock_cid": self.devices.vsock().map(|v| lock(&v.device).guest_cid()),
            "pmem": self.devices.pmem().iter().map(|p| {
                let d = lock(&p.device);
                json!({
                    "path": d.path(),
                    "read_only": d.read_only(),
                    "guest_addr": d.guest_addr(),
                    "size": d.region_size(),
                    "flushes": d.flushes(),
                })
            }).collect::<Vec<_>>(),
            "fs": self.devices.fs().iter().map(|f| {
                let d = lock(&f.device);
                json!({ "tag": d.tag(), "socket": d.socket() })
            }).collect::<Vec<_>>(),
            "memory": self.memory(),
        })
    }

    /// Boot, plugged and requested memory (MiB); hotplug fields are absent
    /// without a virtio-mem device.
    pub fn memory(&self) -> serde_json::Value {
        let mut v = json!({ "boot_mib": self.mem_size >> 20 });
        if let Some(m) = self.devices.mem() {
            let s = lock(&m.device).status();
            v["hotplug_max_mib"] = json!(s.region_size >> 20);
            v["block_mib"] = json!(s.block_size >> 20);
            v["plugged_mib"] = json!(s.plugged_size >> 20);
            v["requested_mib"] = json!(s.requested_size >> 20);
            v["region_addr"] = json!(s.region_addr);
            v["driver_active"] = json!(s.driver_active);
            v["host_resident_kib"] = json!(s.host_resident.map(|b| b >> 10));
            v["total_mib"] = json!((self.mem_size + s.plugged_size) >> 20);
        }
        v
    }

    /// Asks the guest to reach `requested_mib` of hotplugged memory.
    pub fn set_memory(&mut self, requested_mib: u64) -> Result<serde_json::Value, Response> {
        if self.lifecycle.stopping() {
            return Err(Response::error(409, "the VM is stopping"));
        }
        let Some(m) = self.devices.mem() else {
            return Err(Response::error(
                400,
                "this VM has no hotplug memory: start it with --memory-hotplug MAX",
            ));
        };
        let bytes = requested_mib.saturating_mul(1 << 20);
        m.request(bytes)
            .map_err(|e| Response::error(400, e.to_string()))?;
        tracing::info!(requested_mib, "hotplug memory requested");
        Ok(self.memory())
    }

    /// Parks every vCPU outside KVM_RUN.
    pub fn pause(&mut self) -> Result<serde_json::Value, Response> {
        if self.lifecycle.stopping() {
            return Err(Response::error(409, "the VM is stopping"));
        }
        self.check_not_pooled()?;
        if !self.pause.swap(true, Ordering::SeqCst) {
            let t = Instant::now();
            for h in &self.handles {
                if !h.wait_parked() {
                    return Err(Response::error(500, format!("vCPU {} is gone", h.id)));
                }
            }
            tracing::info!(us = t.elapsed().as_micros() as u64, "VM paused");
        }
        Ok(json!({ "state": "paused" }))
    }

    pub fn resume(&mut self) -> Result<serde_json::Value, Response> {
        if self.lifecycle.stopping() {
            return Err(Response::error(409, "the VM is stopping"));
        }
        self.check_not_pooled()?;
        if self.pause.swap(false, Ordering::SeqCst) {
            for h in &self.handles {
                h.resume();
            }
            tracing::info!("VM resumed");
        }
        Ok(json!({ "state": "running" }))
    }

    pub fn shutdown(&mut self) -> serde_json::Value {
        self.lifecycle.request_stop(StopReason::Shutdown);
        json!({ "state": "stopping" })
    }

    /// Writes a snapshot to `dir` (created; must not exist or be empty).
    /// A running VM is paused for the duration and resumed afterwards.
    pub fn snapshot(&mut self, dir: &Path) -> Result<serde_json::Value, Response> {
        self.check_not_pooled()?;
        let t = Instant::now();
        prepare_dir(dir).map_err(|e| Response::error(400, e))?;
        let was_running = !self.paused();
        self.pause()?;
        let result = self.write_snapshot(dir);
        if was_running {
            self.resume()?;
        }
        let pages = result.map_err(|e| Response::error(500, format!("snapshot failed: {e}")))?;
        let ms = t.elapsed().as_millis() as u64;
        tracing::info!(dir = %dir.display(), pages, ms, "snapshot written");
        Ok(json!({ "dir": dir, "memory_pages_written": pages, "ms": ms }))
    }

    fn write_snapshot(&self, dir: &Path) -> Result<u64, String> {
        let mut vcpus = Vec::with_capacity(self.handles.len());
        for h in &self.handles {
            match h.save() {
                Some(Ok(s)) => vcpus.push(s),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err(format!("vCPU {} is gone", h.id)),
            }
        }
        let vm = VmState::save(&self.vm).map_err(|e| e.to_string())?;
        let (generation, kernel_ready_abi) = {
            let n = lock(&self.notify);
            (n.generation(), n.kernel_ready_abi())
        };
        let devices = DeviceStates {
            serial: lock(&self.serial).0.state(),
            generation,
            kernel_ready_abi,
            virtio: self.devices.save(),
        };
        let unplugged = devices
            .virtio
            .mem
            .as_ref()
            .map(|m| m.device.unplugged_ranges())
            .unwrap_or_default();
        let (regions, pages) = snapshot::memory::dump_skipping(
            &self.mem,
            &dir.join(snapshot::MEMORY_FILE),
            &unplugged,
        )
        .map_err(|e| e.to_string())?;
        let state = SnapshotState {
            arrow_vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            cpu: CpuSignature::host(),
            mem_size: self.mem_size,
            regions,
            vm,
            vcpus,
            devices,
        };
        snapshot::write_state(dir, &state).map_err(|e| e.to_string())?;
        Ok(pages)
    }
}

fn prepare_dir(dir: &Path) -> Result<(), String> {
    if dir.as_os_str().is_empty() || !dir.is_absolute() {
        return Err(format!(
            "snapshot dir must be an absolute path, got '{}'",
            dir.display()
        ));
    }
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(format!(
                "{} exists and is not an empty directory: choose a new one",
                dir.display()
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}
