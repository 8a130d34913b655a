//! vCPU threads: run the guest, dispatch its exits to the buses, and turn
//! fatal exits into a VM stop with a precise reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::bus::Bus;
use crate::exit::StopReason;
use crate::lifecycle::Lifecycle;
use crate::seccomp::{self, SeccompLevel, ThreadRole};
use crate::snapshot::vcpu::{VcpuState, VcpuStateError};
use crate::GuestMemoryMmap;

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Bus,
    pub mmio: Bus,
    pub lifecycle: Arc<Lifecycle>,
    pub mem: GuestMemoryMmap,
    pub cpus: u8,
    /// Set by the control API: vCPUs park outside KVM_RUN.
    pub pause: Arc<AtomicBool>,
    /// What a state save needs to know about the host.
    pub msr_indices: Arc<Vec<u32>>,
    pub has_xcrs: bool,
    pub seccomp: SeccompLevel,
}

/// What a parked vCPU thread can be asked to do.
pub enum VcpuRequest {
    Resume,
    Save(Sender<Result<VcpuState, VcpuStateError>>),
    /// Load a saved state into a vCPU that has not run yet (pooled VM).
    Load(Box<VcpuState>, Sender<Result<(), VcpuStateError>>),
    Stop,
}

/// The signal that kicks a vCPU out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; KVM_RUN then returns EINTR on a kick.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub id: u8,
    thread: JoinHandle<()>,
    requests: Sender<VcpuRequest>,
    parked: Receiver<()>,
}

impl VcpuHandle {
    /// Interrupts KVM_RUN once so the thread can look at its state.
    pub fn kick(&self) {
        let _ = self.thread.kill(kick_signal());
    }

    /// Waits until the thread has parked (the caller set the pause flag);
    /// returns false if the thread is gone.
    pub fn wait_parked(&self) -> bool {
        loop {
            // A kick can arrive just before KVM_RUN starts and be lost, so repeat.
            self.kick();
            match self.parked.recv_timeout(Duration::from_millis(2)) {
                Ok(()) => return true,
                Err(RecvTimeoutError::Timeout) if !self.thread.is_finished() => continue,
                Err(_) => return false,
            }
        }
    }

    /// Lets a parked thread run again (the caller cleared the pause flag).
    pub fn resume(&self) {
        let _ = self.requests.send(VcpuRequest::Resume);
    }

    /// Asks a vCPU of a pooled VM to load `state`, on its own thread;
    /// returns the channel its answer comes on.
    pub fn load(&self, state: VcpuState) -> Receiver<Result<(), VcpuStateError>> {
        let (tx, rx) = mpsc::channel();
        // A thread that is gone drops `tx`: the caller's recv() fails.
        let _ = self.requests.send(VcpuRequest::Load(Box::new(state), tx));
        rx
    }

    /// Saves the state of a parked vCPU, on its own thread.
    pub fn save(&self) -> Option<Result<VcpuState, VcpuStateError>> {
        let (tx, rx) = mpsc::channel();
        self.requests.send(VcpuRequest::Save(tx)).ok()?;
        rx.recv().ok()
    }

    /// Kicks the thread out of KVM_RUN (or its parking) until it has seen
    /// the stop and exits.
    pub fn stop_and_join(self) {
        let _ = self.requests.send(VcpuRequest::Stop);
        while !self.thread.is_finished() {
            let _ = self.thread.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(2));
        }
        if self.thread.join().is_err() {
            tracing::error!(cpu = self.id, "vCPU thread panicked");
        }
    }
}

/// Whether a vCPU thread has its state, or waits for it (pooled VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuStart {
    /// Configured or restored: run (or park, if paused).
    Ready,
    /// Never entered KVM_RUN and must not: wait for `Load`, then `Resume`.
    AwaitState,
}

/// Starts the thread for one vCPU.
pub fn spawn(
    id: u8,
    vcpu: VcpuFd,
    ctx: VcpuContext,
    start: VcpuStart,
) -> std::io::Result<VcpuHandle> {
    let (requests, requests_rx) = mpsc::channel();
    let (parked_tx, parked) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || run_loop(id, vcpu, &ctx, &requests_rx, &parked_tx, start))?;
    Ok(VcpuHandle {
        id,
        thread,
        requests,
        parked,
    })
}

/// Parks the thread until resumed or stopped; serves state saves meanwhile.
/// Returns false when the thread must exit.
fn park(
    id: u8,
    vcpu: &mut VcpuFd,
    ctx: &VcpuContext,
    requests: &Receiver<VcpuRequest>,
    parked: &Sender<()>,
) -> bool {
    // KVM finishes an I/O or MMIO read only on the next KVM_RUN; enter once
    // with immediate_exit so the saved state has the instruction completed.
    vcpu.set_kvm_immediate_exit(1);
    match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR => {}
        other => tracing::debug!(cpu = id, ?other, "completing KVM_RUN before parking"),
    }
    vcpu.set_kvm_immediate_exit(0);
    let _ = parked.send(());
    loop {
        match requests.recv() {
            Ok(VcpuRequest::Resume) => return true,
            Ok(VcpuRequest::Save(reply)) => {
                let _ = reply.send(VcpuState::save(vcpu, id, &ctx.msr_indices, ctx.has_xcrs));
            }
            Ok(VcpuRequest::Load(_, reply)) => {
                let _ = reply.send(Err(VcpuStateError {
                    cpu: id,
                    what: "state load (the vCPU has run already)",
                    source: kvm_ioctls::Error::new(libc::EBUSY),
                }));
            }
            Ok(VcpuRequest::Stop) | Err(_) => return false,
        }
    }
}

/// A pooled vCPU: serves `Load` until told to run; false = exit the thread.
/// (Parking would enter KVM_RUN once, which a vCPU without state must not.)
fn await_state(id: u8, vcpu: &VcpuFd, requests: &Receiver<VcpuRequest>) -> bool {
    let mut loaded = false;
    loop {
        match requests.recv() {
            Ok(VcpuRequest::Load(state, reply)) => {
                let r = state.restore(vcpu);
                loaded = r.is_ok();
                let _ = reply.send(r);
            }
            Ok(VcpuRequest::Resume) if loaded => return true,
            Ok(VcpuRequest::Resume) => {
                tracing::error!(cpu = id, "resume of a pooled vCPU without state ignored")
            }
            Ok(VcpuRequest::Save(reply)) => {
                let _ = reply.send(Err(VcpuStateError {
                    cpu: id,
                    what: "state save (a pooled vCPU has no state yet)",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                }));
            }
            Ok(VcpuRequest::Stop) | Err(_) => return false,
        }
    }
}

fn run_loop(
    id: u8,
    mut vcpu: VcpuFd,
    ctx: &VcpuContext,
    requests: &Receiver<VcpuRequest>,
    parked: &Sender<()>,
    start: VcpuStart,
) {
    if let Err(e) = seccomp::install(ThreadRole::Vcpu, ctx.seccomp) {
        ctx.lifecycle
            .request_stop(StopReason::VmmError(format!("vCPU {id}: {e}")));
        return;
    }
    if start == VcpuStart::AwaitState && !await_state(id, &vcpu, requests) {
        return;
    }
    if id == 0 {
        ctx.lifecycle.mark_first_run();
    }
    while !ctx.lifecycle.stopping() {
        if ctx.pause.load(Ordering::SeqCst) {
            if !park(id, &mut vcpu, ctx, requests, parked) {
                return;
            }
            continue;
        }
        let stop = match vcpu.run() {
            Ok(exit) => handle_exit(id, exit, ctx),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                check_halted(id, &vcpu, ctx);
                None
            }
            Err(e) => Some(StopReason::VmmError(format!(
                "KVM_RUN on vCPU {id} failed: {e}"
            ))),
        };
        if let Some(reason) = stop {
            let reason = add_crash_details(id, reason, &mut vcpu, &ctx.mem);
            ctx.lifecycle.request_stop(reason);
        }
    }
}

/// After a kick: a vCPU halted with interrupts off can never run again, nor
/// can an application processor still waiting for its startup IPI once every
/// other vCPU is stuck too. (With the in-kernel irqchip KVM does not exit on
/// HLT, so we look.)
fn check_halted(id: u8, vcpu: &VcpuFd, ctx: &VcpuContext) {
    const RFLAGS_IF: u64 = 1 << 9;
    let stuck = match vcpu.get_mp_state() {
        Ok(s) if s.mp_state == kvm_bindings::KVM_MP_STATE_HALTED => {
            matches!(vcpu.get_regs(), Ok(r) if r.rflags & RFLAGS_IF == 0)
        }
        Ok(s) => s.mp_state == kvm_bindings::KVM_MP_STATE_UNINITIALIZED,
        Err(_) => false,
    };
    ctx.lifecycle.set_halted(id, stuck, ctx.cpus);
}

/// Handles one exit; returns a reason when the VM must stop.
fn handle_exit(id: u8, exit: VcpuExit<'_>, ctx: &VcpuContext) -> Option<StopReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(u64::from(port), data) {
                tracing::debug!(
                    port = format_args!("{port:#x}"),
                    len = data.len(),
                    "read from unknown I/O port"
                );
                data.fill(0xff);
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            if !ctx.pio.write(u64::from(port), data) {
                tracing::debug!(
                    port = format_args!("{port:#x}"),
                    ?data,
                    "write to unknown I/O port ignored"
                );
            }
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                tracing::debug!(
                    addr = format_args!("{addr:#x}"),
                    "read from unknown MMIO address"
                );
                data.fill(0);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                tracing::debug!(
                    addr = format_args!("{addr:#x}"),
                    "write to unknown MMIO address ignored"
                );
            }
            None
        }
        VcpuExit::Hlt => Some(StopReason::Halted { cpu: id }),
        VcpuExit::Shutdown => Some(StopReason::TripleFault { cpu: id, rip: 0 }),
        VcpuExit::FailEntry(reason, _) => Some(StopReason::FailEntry { cpu: id, reason }),
        VcpuExit::InternalError => Some(StopReason::InternalError {
            cpu: id,
            suberror: 0,
            rip: 0,
            insn: Vec::new(),
        }),
        VcpuExit::SystemEvent(kind, _) => {
            tracing::debug!(kind, "KVM system event");
            Some(StopReason::GuestReset)
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
        other => {
            tracing::debug!(cpu = id, exit = ?other, "unhandled KVM exit ignored");
            None
        }
    }
}

/// Fills in RIP, the KVM internal-error details and instruction bytes, and
/// logs the registers at debug level.
fn add_crash_details(
    id: u8,
    reason: StopReason,
    vcpu: &mut VcpuFd,
    mem: &GuestMemoryMmap,
) -> StopReason {
    let needs_regs = matches!(
        reason,
        StopReason::TripleFault { .. } | StopReason::InternalError { .. }
    );
    if !needs_regs {
        return reason;
    }
    let regs = vcpu.get_regs().ok();
    if let Some(r) = &regs {
        tracing::debug!(cpu = id, ?r, sregs = ?vcpu.get_sregs().ok(), "vCPU registers at fatal exit");
    }
    let rip = regs.map(|r| r.rip).unwrap_or(0);
    match reason {
        StopReason::TripleFault { cpu, .. } => StopReason::TripleFault { cpu, rip },
        StopReason::InternalError { cpu, .. } => {
            let (suberror, mut insn) = internal_error_data(vcpu);
            if insn.is_empty() {
                insn = read_insn_at(vcpu, mem, rip);
            }
            StopReason::InternalError {
                cpu,
                suberror,
                rip,
                insn,
            }
        }
        other => other,
    }
}

/// Reads `kvm_run.internal`: the suberror and, for emulation failures, the
/// instruction bytes KVM reports.
fn internal_error_data(vcpu: &mut VcpuFd) -> (u32, Vec<u8>) {
    let run = vcpu.get_kvm_run();
    // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal`
    // member of the exit union; every bit pattern is a valid u32/u64 array.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let ndata = (internal.ndata as usize).min(internal.data.len());
    const FLAG_INSN_BYTES: u64 = 1;
    let mut insn = Vec::new();
    // emulation_failure layout: flags (data[0]), then insn_size and 15 bytes.
    if internal.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
        && ndata >= 3
        && internal.data[0] & FLAG_INSN_BYTES != 0
    {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&internal.data[1].to_le_bytes());
        raw[8..].copy_from_slice(&internal.data[2].to_le_bytes());
        let size = usize::from(raw[0]).min(15);
        insn.extend_from_slice(&raw[1..1 + size]);
    }
    (internal.suberror, insn)
}

/// Reads up to 15 bytes at the guest's RIP through its page tables.
fn read_insn_at(vcpu: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> Vec<u8> {
    let Ok(t) = vcpu.translate_gva(rip) else {
        return Vec::new();
    };
    if t.valid == 0 {
        return Vec::new();
    }
    let mut buf = [0u8; 15];
    // Stop at the page end: the next page may map elsewhere.
    let len = (0x1000 - (t.physical_address & 0xfff)).min(15) as usize;
    match mem.read_slice(&mut buf[..len], GuestAddress(t.physical_address)) {
        Ok(()) => buf[..len].to_vec(),
        Err(_) => Vec::new(),
    }
}
