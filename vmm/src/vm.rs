//! Building a VM from a `VmConfig` and running it to its stop.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::api::ApiServer;
use crate::app_spec::AppSpec;
use crate::arch::boot::{self, BootError};
use crate::arch::layout::{self, KVM_TSS_ADDR};
use crate::arch::regs::{self, RegsError};
use crate::arch::{cpuid, mptable};
use crate::config::{ConsoleSink, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager, DeviceRestoreParams};
use crate::devices::app_channel::{AppChannel, APP_CHANNEL_LEN, APP_CHANNEL_PORT};
use crate::devices::bus::{Bus, BusError};
use crate::devices::console_log::ConsoleLog;
use crate::devices::coredump::{self, CoreWriter};
use crate::devices::legacy::{
    SerialDevice, COM1_IRQ, COM1_PORT, I8042, I8042_LEN, I8042_PORT, SERIAL_LEN,
};
use crate::devices::notify::{NotifyDevice, NOTIFY_LEN, NOTIFY_PORT};
use crate::devices::virtio::fs::slot_tag;
use crate::event_loop::{self, ConsoleInput, EventManager, SignalWatcher, StopWatcher, Subscriber};
use crate::exit::StopReason;
use crate::host::HostKind;
use crate::lifecycle::Lifecycle;
use crate::pooled::PendingTemplate;
use crate::report::RunReport;
use crate::runtime::Runtime;
use crate::seccomp::{SeccompLevel, ThreadRole};
use crate::shared_memory::SharedMemory;
use crate::snapshot;
use crate::vcpu::{self, VcpuContext, VcpuStart};
use crate::GuestMemoryMmap;
use event_manager::SubscriberOps;

/// Errors that keep a VM from starting (arrow-vmm exits 125 on them).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm does not exist: this host has no KVM (enable virtualization or load the kvm module)")]
    NoKvm,
    #[error("permission denied on /dev/kvm: run as root or add your user to the 'kvm' group")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("--memory must be at least 2 MiB (got {0} bytes)")]
    MemoryTooSmall(u64),
    #[error("--memory {asked} MiB is more than this host has ({host} MiB of RAM)")]
    MemoryTooLarge { asked: u64, host: u64 },
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    MemoryAlloc(u64, String),
    #[error("--vcpus must be at least 1")]
    NoVcpus,
    #[error("--vcpus {asked} is more than this host's KVM allows for a guest ({max})")]
    TooManyVcpus { asked: u8, max: usize },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error("device setup failed: {0}")]
    Bus(#[from] BusError),
    #[error("cannot open console file {path}: {source}")]
    Console {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error("cannot restore the snapshot: {0}")]
    Restore(String),
    #[error("{0}")]
    Fs(String),
    #[error("host setup failed ({what}): {source}")]
    Host {
        what: &'static str,
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn host_err(what: &'static str) -> impl Fn(std::io::Error) -> VmError {
    move |source| VmError::Host { what, source }
}

fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => VmError::NoKvm,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::KvmOpen(e),
    })
}

fn host_ram_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn check_limits(config: &VmConfig, kvm: &Kvm) -> Result<(), VmError> {
    if config.mem_size < (2 << 20) {
        return Err(VmError::MemoryTooSmall(config.mem_size));
    }
    if let Some(host) = host_ram_bytes() {
        if config.mem_size > host {
            return Err(VmError::MemoryTooLarge {
                asked: config.mem_size >> 20,
                host: host >> 20,
            });
        }
    }
    if config.vcpus == 0 {
        return Err(VmError::NoVcpus);
    }
    let max = kvm.get_max_vcpus().min(mptable::max_cpus()).min(254);
    if usize::from(config.vcpus) > max {
        return Err(VmError::TooManyVcpus {
            asked: config.vcpus,
            max,
        });
    }
    Ok(())
}

/// Guest RAM plus, with `hotplug`, the virtio-mem region (reserved address
/// space: nothing is allocated or shown to KVM until blocks are plugged).
fn create_memory(
    vm: &VmFd,
    mem_size: u64,
    hotplug: Option<(u64, u64)>,
) -> Result<GuestMemoryMmap, VmError> {
    let mut ranges = layout::ram_regions(mem_size);
    if let Some((addr, size)) = hotplug {
        ranges.push((GuestAddress(addr), size as usize));
    }
    let mem = GuestMemoryMmap::from_ranges(&ranges)
        .map_err(|e| VmError::MemoryAlloc(mem_size >> 20, e.to_string()))?;
    register_memory(vm, &mem, hotplug)?;
    Ok(mem)
}

/// Tells KVM about every region of `mem` except the hotplug region (the
/// virtio-mem device registers its plugged parts itself).
fn register_memory(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    hotplug: Option<(u64, u64)>,
) -> Result<(), VmError> {
    let ram = mem
        .iter()
        .filter(|r| hotplug.is_none_or(|(addr, _)| r.start_addr().raw_value() != addr));
    for (slot, region) in ram.enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem` of exactly
        // `memory_size` bytes, and `mem` outlives the VM (both live in `Vm`).
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("set user memory region"))?;
    }
    Ok(())
}

fn console_writer(sink: &ConsoleSink, max: u64) -> Result<Box<dyn Write + Send>, VmError> {
    Ok(match sink {
        ConsoleSink::Stdout => Box::new(std::io::stdout()),
        ConsoleSink::None => Box::new(std::io::sink()),
        ConsoleSink::File(path) => {
            Box::new(
                ConsoleLog::create(path, max).map_err(|source| VmError::Console {
                    path: path.clone(),
                    source,
                })?,
            )
        }
    })
}

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub dir: PathBuf,
    /// Restore as a clone: new generation and nonce, new vsock identity.
    pub clone: bool,
    /// Cap of a console file (bytes, 0 = none): see devices/console_log.rs.
    pub console_max: u64,
    pub console: ConsoleSink,
    /// New vsock host socket (required when the snapshot has vsock).
    pub vsock_uds: Option<PathBuf>,
    /// New guest CID (a clone must not reuse the template's).
    pub vsock_cid: Option<u64>,
    /// Prepare everything but the guest state and wait for `PUT /vm/start`
    /// on the control API (a pooled VM, `crate::pooled`).
    pub pool: bool,
    /// The app a clone of a generic template runs (`crate::app_spec`).
    pub app_spec: Option<AppSpec>,
    /// The image base to map into the template's image slot (pmem0).
    pub image_base: Option<PathBuf>,
    /// The packed volume image to map into the template's volume slot (pmem1).
    pub volumes_base: Option<PathBuf>,
    /// Backends for the snapshot's vhost-user-fs devices (slots), by tag.
    pub fs: Vec<crate::devices::virtio::fs::FsConfig>,
}

/// How the running VM is served.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Control API socket.
    pub api_sock: Option<PathBuf>,
    /// Who may use it, and where it may write snapshots.
    pub api_policy: crate::api::ApiPolicy,
    /// Start with vCPUs parked (resume through the API).
    pub paused: bool,
    /// Per-thread system call filters.
    pub seccomp: SeccompLevel,
}

/// A configured VM, ready to run.
pub struct Vm {
    // Field order matters for drop: vCPUs and the VM fd go before memory.
    vcpus: Vec<VcpuFd>,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    mem_size: u64,
    ctx: VcpuContext,
    serial: Arc<Mutex<SerialDevice>>,
    notify: Arc<Mutex<NotifyDevice>>,
    app_channel: Arc<Mutex<AppChannel>>,
    devices: DeviceManager,
    lifecycle: Arc<Lifecycle>,
    console_is_stdout: bool,
    /// A pooled VM's template state, loaded on `PUT /vm/start`.
    pending: Option<PendingTemplate>,
    /// Writes app core dumps (when enabled).
    cores: Option<CoreWriter>,
}

/// KVM VM with irqchip and PIT, as every VM needs them.
fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm_err("set TSS address"))?;
    vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create PIT"))?;
    Ok(vm)
}

/// The port-I/O bus with the devices the VM keeps handles to.
struct LegacyDevices {
    pio: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    notify: Arc<Mutex<NotifyDevice>>,
    app_channel: Arc<Mutex<AppChannel>>,
}

/// Serial, i8042, notify and the app channel on the port-I/O bus.
fn legacy_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    lifecycle: &Arc<Lifecycle>,
    serial: SerialDevice,
    serial_irq: &EventFd,
    notify: NotifyDevice,
) -> Result<LegacyDevices, VmError> {
    vm.register_irqfd(serial_irq, COM1_IRQ)
        .map_err(kvm_err("register serial irqfd"))?;
    let serial = Arc::new(Mutex::new(serial));
    let notify = Arc::new(Mutex::new(notify));
    let mut pio = Bus::new();
    pio.insert(serial.clone(), u64::from(COM1_PORT), SERIAL_LEN)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(lifecycle.clone()))),
        u64::from(I8042_PORT),
        I8042_LEN,
    )?;
    pio.insert(notify.clone(), u64::from(NOTIFY_PORT), NOTIFY_LEN)?;
    let app_channel = Arc::new(Mutex::new(AppChannel::new(mem.clone(), lifecycle.clone())));
    pio.insert(
        app_channel.clone(),
        u64::from(APP_CHANNEL_PORT),
        APP_CHANNEL_LEN,
    )?;
    Ok(LegacyDevices {
        pio,
        serial,
        notify,
        app_channel,
    })
}

/// What `build` and `restore` hand to `assemble`.
struct Parts {
    vm: Arc<VmFd>,
    vcpus: Vec<VcpuFd>,
    mem: GuestMemoryMmap,
    mem_size: u64,
    legacy: LegacyDevices,
    devices: DeviceManager,
    lifecycle: Arc<Lifecycle>,
    console_is_stdout: bool,
    pending: Option<PendingTemplate>,
    cores: Option<CoreWriter>,
}

/// MSRs a snapshot must carry, and whether XCRs exist on this host.
fn snapshot_host_info(kvm: &Kvm) -> Result<(Arc<Vec<u32>>, bool), VmError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("get MSR index list"))?;
    let has_xcrs = kvm.check_extension(kvm_ioctls::Cap::Xcrs);
    Ok((Arc::new(list.as_slice().to_vec()), has_xcrs))
}

impl Vm {
    /// Creates the VM, loads the guest and sets up devices and vCPUs.
    pub fn build(config: &VmConfig, start: Instant) -> Result<Self, VmError> {
        let kvm = open_kvm()?;
        check_limits(config, &kvm)?;
        let vm = Arc::new(create_vm(&kvm)?);
        let mut devices = DeviceManager::new();
        // The hotplug region is part of guest memory (so devices reach
        // plugged blocks) but takes its place in device memory first.
        let hotplug = match config.mem_hotplug {
            Some(max) => Some(devices.reserve_hotplug(config.mem_size, max)?),
            None => None,
        };
        crate::devices::virtio::fs::validate_configs(&config.fs, config.fs_slots.into())
            .map_err(VmError::Fs)?;
        let (mem, shared) = if config.fs.is_empty() {
            (create_memory(&vm, config.mem_size, hotplug)?, None)
        } else {
            // The hotplug region too: backends reach plugged blocks.
            let (mem, shared) =
                SharedMemory::create_with_hotplug(&layout::ram_regions(config.mem_size), hotplug)
                    .map_err(|e| VmError::MemoryAlloc(config.mem_size >> 20, e.to_string()))?;
            register_memory(&vm, &mem, hotplug)?;
            (mem, Some(Arc::new(shared)))
        };
        let lifecycle = Arc::new(Lifecycle::new(start).map_err(host_err("eventfd"))?);
        let host = match config.host_compat {
            Some(true) => HostKind::NestedPvm,
            Some(false) => HostKind::Hardware,
            None => HostKind::detect(),
        };
        if let Some(vs) = &config.vsock {
            devices.add_vsock(&vm, &mem, vs)?;
        }
        for p in &config.pmem {
            devices.add_pmem(&vm, &mem, p)?;
        }
        for f in &config.fs {
            let shared = shared.clone().map(|s| (f.socket.as_path(), s));
            devices.add_fs(&vm, &mem, &f.tag, shared, &lifecycle)?;
        }
        for i in 0..usize::from(config.fs_slots) {
            devices.add_fs(&vm, &mem, &slot_tag(i), None, &lifecycle)?;
        }
        if let Some((addr, size)) = hotplug {
            devices.add_mem(&vm, &mem, addr, size, shared.clone())?;
        }
        let mut cmdline = devices.add_to_cmdline(&host.adapt_cmdline(&config.cmdline));
        if let Some(c) = &config.core_dumps {
            cmdline = crate::config::insert_kernel_param(&cmdline, &coredump::kernel_param(c));
        }
        tracing::debug!(?host, %cmdline, "guest command line");
        let (entry, kernel_end) = boot::load_kernel(&mem, &config.kernel, config.boot_protocol)?;
        let initrd = match &config.initrd {
            Some(p) => Some(boot::load_initrd(&mem, p, kernel_end, config.mem_size)?),
            None => None,
        };
        boot::write_boot_params(&mem, entry, &cmdline, initrd, config.mem_size)?;
        mptable::write(&mem, config.vcpus)?;

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("eventfd"))?;
        let serial = SerialDevice::new(
            serial_irq.try_clone().map_err(host_err("eventfd"))?,
            console_writer(&config.console, config.console_max)?,
        );
        let mut notify = NotifyDevice::new(lifecycle.clone());
        let mut cores = None;
        if let Some(c) = &config.core_dumps {
            let (collector, writer) =
                coredump::channel(c, mem.clone()).map_err(host_err("eventfd"))?;
            notify = notify.with_core_dumps(collector);
            cores = Some(writer);
        }
        let legacy = legacy_devices(&vm, &mem, &lifecycle, serial, &serial_irq, notify)?;

        let base_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for id in 0..config.vcpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create vCPU"))?;
            let mut c = base_cpuid.clone();
            if !config.cpuid_passthrough {
                cpuid::apply_rules(&mut c, cpuid::FILTER);
            }
            cpuid::apply_rules(&mut c, &config.cpuid_clear);
            cpuid::set_topology(&mut c, id, config.vcpus);
            vcpu.set_cpuid2(&c).map_err(kvm_err("set CPUID"))?;
            regs::setup_msrs(&vcpu, id)?;
            regs::setup_fpu(&vcpu, id)?;
            regs::setup_lapic(&vcpu, id)?;
            if id == 0 {
                // Application processors wait for INIT/SIPI from the guest.
                regs::setup_sregs(&mem, &vcpu, id, entry.mode)?;
                regs::setup_regs(&vcpu, id, entry.addr, entry.mode)?;
            }
            vcpus.push(vcpu);
        }
        Self::assemble(
            &kvm,
            Parts {
                vm,
                vcpus,
                mem,
                mem_size: config.mem_size,
                legacy,
                devices,
                lifecycle,
                console_is_stdout: config.console == ConsoleSink::Stdout,
                pending: None,
                cores,
            },
        )
    }

    /// Puts the pieces built by `build` or `restore` together.
    fn assemble(kvm: &Kvm, p: Parts) -> Result<Self, VmError> {
        let (msr_indices, has_xcrs) = snapshot_host_info(kvm)?;
        let ctx = VcpuContext {
            pio: p.legacy.pio,
            mmio: p.devices.mmio_bus(),
            lifecycle: p.lifecycle.clone(),
            mem: p.mem.clone(),
            cpus: p.vcpus.len() as u8,
            pause: Arc::new(AtomicBool::new(false)),
            msr_indices,
            has_xcrs,
            seccomp: SeccompLevel::default(),
        };
        Ok(Self {
            vcpus: p.vcpus,
            vm: p.vm,
            mem: p.mem,
            mem_size: p.mem_size,
            ctx,
            serial: p.legacy.serial,
            notify: p.legacy.notify,
            app_channel: p.legacy.app_channel,
            devices: p.devices,
            lifecycle: p.lifecycle,
            console_is_stdout: p.console_is_stdout,
            pending: p.pending,
            cores: p.cores,
        })
    }

    /// Recreates a VM from a snapshot directory; the guest continues where
    /// it was paused. Every check (format, checksum, CPU, memory file) runs
    /// before any guest code does.
    ///
    /// With `config.pool` the guest state is not loaded: guest memory is
    /// only reserved, vCPUs are created bare, and the state waits in
    /// `pending` for `PUT /vm/start` (see `crate::pooled`).
    pub fn restore(config: &RestoreConfig, start: Instant) -> Result<Self, VmError> {
        let state = snapshot::read_state(&config.dir)?;
        let kvm = open_kvm()?;
        let vcpu_count = u8::try_from(state.vcpus.len()).map_err(|_| VmError::NoVcpus)?;
        if vcpu_count == 0 {
            return Err(VmError::NoVcpus);
        }
        let vm = Arc::new(create_vm(&kvm)?);
        crate::devices::virtio::fs::validate_configs(&config.fs, 0).map_err(VmError::Fs)?;
        if !config.pool {
            DeviceManager::check_fs_restore(&state.devices.virtio, &config.fs)
                .map_err(|e| VmError::Restore(e.to_string()))?;
        }
        let mut devices = DeviceManager::new();
        devices
            .prepare_restore(&vm, state.mem_size, &state.devices.virtio)
            .map_err(|e| VmError::Restore(e.to_string()))?;
        let mem_path = config.dir.join(snapshot::MEMORY_FILE);
        let (mem, memory_file) = if config.pool {
            let file = snapshot::memory::open_checked(&mem_path, &state.regions)
                .map_err(snapshot::SnapshotError::from)?;
            let mem =
                snapshot::memory::reserve(&state.regions).map_err(snapshot::SnapshotError::from)?;
            (mem, Some(file))
        } else {
            let mem = snapshot::memory::map_private(&mem_path, &state.regions)
                .map_err(snapshot::SnapshotError::from)?;
            (mem, None)
        };
        let hotplug = DeviceManager::hotplug_region(&state.devices.virtio);
        register_memory(&vm, &mem, hotplug)?;
        // Backends must map guest RAM: a clone's private mapping of the
        // template becomes a memfd copy (a pooled VM does it at start).
        let shared = if !config.pool && !config.fs.is_empty() {
            let file = std::fs::File::open(&mem_path).map_err(host_err("memory file"))?;
            let (shared, _) = SharedMemory::convert(&mem, &file, &state.regions, hotplug)
                .map_err(|e| VmError::Restore(e.to_string()))?;
            Some(Arc::new(shared))
        } else {
            None
        };
        // vCPUs (and their LAPICs) before the interrupt controllers: setting
        // the IOAPIC re-delivers its pending interrupts, which must find the
        // restored LAPICs (an IOAPIC restored first keeps an undeliverable
        // edge pending and never delivers that pin again); the devices'
        // irqfds, registered below, may fire at once too.
        let mut vcpus = Vec::with_capacity(state.vcpus.len());
        for (i, vs) in state.vcpus.iter().enumerate() {
            if usize::from(vs.id) != i {
                return Err(VmError::Restore(format!(
                    "vCPU {i} of the snapshot has id {}",
                    vs.id
                )));
            }
            let vcpu = vm.create_vcpu(i as u64).map_err(kvm_err("create vCPU"))?;
            if !config.pool {
                vs.restore(&vcpu)
                    .map_err(|e| VmError::Restore(e.to_string()))?;
            }
            vcpus.push(vcpu);
        }
        if !config.pool {
            state
                .vm
                .restore(&vm)
                .map_err(|e| VmError::Restore(e.to_string()))?;
        }

        let lifecycle = Arc::new(Lifecycle::new(start).map_err(host_err("eventfd"))?);
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("eventfd"))?;
        let serial = SerialDevice::from_state(
            &state.devices.serial,
            serial_irq.try_clone().map_err(host_err("eventfd"))?,
            console_writer(&config.console, config.console_max)?,
        )
        .map_err(|e| VmError::Restore(format!("serial state: {e}")))?;
        let (generation, nonce) = if config.clone {
            (state.devices.generation.wrapping_add(1), clone_nonce())
        } else {
            (state.devices.generation, 0)
        };
        let notify = NotifyDevice::restored(
            lifecycle.clone(),
            generation,
            nonce,
            state.devices.kernel_ready_abi,
        );
        let legacy = legacy_devices(&vm, &mem, &lifecycle, serial, &serial_irq, notify)?;
        if let Some(spec) = &config.app_spec {
            // A description the guest cannot take is refused before it runs.
            let encoded = spec
                .check_volumes_base(config.volumes_base.is_some())
                .and_then(|()| spec.encode_for(state.devices.kernel_ready_abi))
                .map_err(|e| VmError::Restore(format!("{}: {e}", config.dir.display())))?;
            legacy
                .app_channel
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .offer(encoded);
        }

        let params = DeviceRestoreParams {
            clone: config.clone,
            vsock_uds: config.vsock_uds.clone(),
            vsock_cid: config.vsock_cid,
            fs: if config.pool {
                Vec::new()
            } else {
                config.fs.clone()
            },
            shared: shared.clone(),
            lifecycle: Some(lifecycle.clone()),
        };
        // A pooled VM's memory has no content yet: its devices are built and
        // wired now, their transports put in the saved state at start.
        if let Some(base) = &config.image_base {
            devices
                .inject_image_base(base)
                .map_err(|e| VmError::Restore(e.to_string()))?;
        }
        if let Some(volumes) = &config.volumes_base {
            devices
                .inject_volumes_base(volumes)
                .map_err(|e| VmError::Restore(e.to_string()))?;
        }
        devices
            .restore_mem(
                &vm,
                &mem,
                &state.devices.virtio,
                memory_file.is_some(),
                shared.clone(),
            )
            .map_err(|e| VmError::Restore(e.to_string()))?;
        let pending = match memory_file {
            Some(memory_file) => {
                devices
                    .restore_devices_pooled(&vm, &mem, &state.devices.virtio, &params)
                    .map_err(|e| VmError::Restore(e.to_string()))?;
                Some(PendingTemplate {
                    vcpus: state.vcpus,
                    vm: state.vm,
                    virtio: state.devices.virtio,
                    memory_file,
                    regions: state.regions,
                    kernel_ready_abi: state.devices.kernel_ready_abi,
                    fs: config.fs.clone(),
                })
            }
            None => {
                devices
                    .restore_devices(&vm, &mem, &state.devices.virtio, &params)
                    .map_err(|e| VmError::Restore(e.to_string()))?;
                None
            }
        };

        tracing::debug!(dir = %config.dir.display(), clone = config.clone, pool = config.pool, generation, "restored");
        Self::assemble(
            &kvm,
            Parts {
                vm,
                vcpus,
                mem,
                mem_size: state.mem_size,
                legacy,
                devices,
                lifecycle,
                console_is_stdout: config.console == ConsoleSink::Stdout,
                pending,
                cores: None,
            },
        )
    }

    /// Runs the guest until it stops; returns why, with timing figures.
    pub fn run(mut self, opts: &RunOptions) -> Result<(StopReason, RunReport), VmError> {
        let mut em = EventManager::new().map_err(|e| VmError::Host {
            what: "event manager",
            source: std::io::Error::other(format!("{e:?}")),
        })?;
        em.add_subscriber(Arc::new(Mutex::new(StopWatcher(self.lifecycle.clone()))) as Subscriber);
        let signals = SignalWatcher::new(self.lifecycle.clone()).map_err(host_err("signalfd"))?;
        em.add_subscriber(Arc::new(Mutex::new(signals)) as Subscriber);
        for sub in self.devices.subscribers() {
            em.add_subscriber(sub);
        }
        let cores = self.cores.take().map(|w| Arc::new(Mutex::new(w)));
        if let Some(w) = &cores {
            em.add_subscriber(w.clone() as Subscriber);
        }
        if self.console_is_stdout {
            if let Some(input) = ConsoleInput::from_tty_stdin(self.serial.clone()) {
                em.add_subscriber(Arc::new(Mutex::new(input)) as Subscriber);
            }
        }

        vcpu::install_kick_handler().map_err(host_err("vCPU kick signal handler"))?;
        self.ctx.seccomp = opts.seccomp;
        if opts.seccomp != SeccompLevel::Off {
            crate::seccomp::install_sigsys_handler().map_err(host_err("SIGSYS handler"))?;
        }
        let pending = self.pending.take();
        let start = if pending.is_some() {
            VcpuStart::AwaitState
        } else {
            VcpuStart::Ready
        };
        let pause = self.ctx.pause.clone();
        pause.store(opts.paused || pending.is_some(), Ordering::SeqCst);
        let mut handles = Vec::new();
        for (id, fd) in self.vcpus.drain(..).enumerate() {
            match vcpu::spawn(id as u8, fd, self.ctx.clone(), start) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    self.lifecycle.request_stop(StopReason::VmmError(format!(
                        "cannot start vCPU thread: {e}"
                    )));
                    break;
                }
            }
        }
        let runtime = Arc::new(Mutex::new(Runtime {
            handles,
            pause,
            vm: self.vm.clone(),
            mem: self.mem.clone(),
            mem_size: self.mem_size,
            serial: self.serial.clone(),
            notify: self.notify.clone(),
            app_channel: self.app_channel.clone(),
            devices: std::mem::take(&mut self.devices),
            lifecycle: self.lifecycle.clone(),
            pending,
        }));
        if let Some(path) = &opts.api_sock {
            match ApiServer::bind(path, runtime.clone(), opts.api_policy.clone()) {
                Ok(server) => {
                    em.add_subscriber(Arc::new(Mutex::new(server)) as Subscriber);
                }
                Err(e) => self.lifecycle.request_stop(StopReason::VmmError(format!(
                    "cannot listen on control socket {}: {e}",
                    path.display()
                ))),
            }
        }
        // Everything this thread opens from here on is in its filter's list.
        if let Err(e) = crate::seccomp::install(ThreadRole::EventLoop, opts.seccomp) {
            self.lifecycle
                .request_stop(StopReason::VmmError(e.to_string()));
        }
        // Each second, let every running vCPU look whether it is halted for good.
        event_loop::run_until_stopped(&mut em, &self.lifecycle, || {
            let rt = runtime.lock().unwrap_or_else(|e| e.into_inner());
            if !rt.paused() {
                rt.handles.iter().for_each(|h| h.kick());
            }
        });
        let handles =
            std::mem::take(&mut runtime.lock().unwrap_or_else(|e| e.into_inner()).handles);
        for h in handles {
            h.stop_and_join();
        }
        // Dropping the event manager closes the control socket (and removes it).
        drop(em);
        // A core sent just before the app's exit may still wait for the writer.
        if let Some(w) = &cores {
            w.lock().unwrap_or_else(|e| e.into_inner()).drain();
        }
        let reason = self
            .lifecycle
            .reason()
            .unwrap_or_else(|| StopReason::VmmError("stopped without a reason".into()));
        let report = RunReport::collect(&self.lifecycle, &reason, &self.mem);
        Ok((reason, report))
    }
}

/// A random 32-bit value for a clone's notify nonce (never 0).
fn clone_nonce() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most b.len() bytes into the valid buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let v = if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        std::process::id() ^ 0x9e37_79b9
    };
    v.max(1)
}
