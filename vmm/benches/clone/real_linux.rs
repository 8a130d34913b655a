//! The clone bench's real-Linux section: arrow-vmm and Firecracker each boot
//! the same guest kernel (guest-kernel/build.sh) and initramfs (vsock-echo
//! as the idle app: it listens on vsock port 5000 and waits), 1 vCPU,
//! 128 MiB, take a snapshot of it through their own API as a template, and
//! then restore it `runs` times, one restore at a time, alternating between
//! the two VMMs so that load changes on this shared host hit both alike.
//!
//! The timed metric is the same for both and measured from outside the VMM:
//! process spawn → the VMM's API confirms the VM runs.
//! - arrow-vmm: `restore --clone …`, until `GET /vm` on its control socket
//!   answers `"state": "running"`;
//! - arrow-vmm pooled (what arrowd's warm pool does): `restore --clone
//!   --pool …` is spawned ahead and waits (not timed, as in a pool); the
//!   timed part is `PUT /vm/start` until it is answered, i.e. start request
//!   → vCPUs running the restored state;
//! - Firecracker: a new process per restore, until `PUT /snapshot/load`
//!   with `resume_vm: true` answered 204 (including the wait for its API
//!   socket to appear). Its vsock socket path is stored in the snapshot;
//!   `vsock_override` gives each restore its own.
//!
//! A restore is only counted once the guest is seen running: every
//! `VERIFY_EVERY`-th clone must answer a vsock CONNECT to vsock-echo and
//! echo a message back. Memory: `MEM_CLONES` clones of each VMM run at once
//! (so pages of the template and of the VMM binary that all of them touch
//! count as shared, as they would for a fleet), and after `SETTLE` the
//! Private_* of each process's /proc/PID/smaps_rollup is read; then each
//! of them is checked with the echo too.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::vsock_guest::{
    api_sock, api_within, echo_once, Guest, Vmm, COMPAT_FLAGS, ECHO_PORT, ECHO_READY,
};

/// vsock-peer (the initramfs's /app) execs vsock-echo at once: PID 1 is
/// the echo server, nothing else runs.
const APP_ARGS: &str = "--exec /vsock-echo --port 5000";
/// Bound on a template boot (a boot takes ~25–45 s here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on one restore until the VM runs.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the echo check of a restored clone (the guest first handles
/// the vsock TRANSPORT_RESET, 0.1–4 s here, then forks a server child).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle time of the template after its app printed that it listens, so
/// that the snapshot catches it waiting in accept().
const TEMPLATE_SETTLE: Duration = Duration::from_secs(2);
/// Idle time of a restored clone before its memory is read.
const SETTLE: Duration = Duration::from_secs(3);
/// Every how many sequential restores the guest is checked by an echo.
const VERIFY_EVERY: usize = 10;
/// Clones of each VMM alive together for the memory figure.
const MEM_CLONES: usize = 3;
/// Poll interval while waiting for a VMM's API (the same for both).
const POLL: Duration = Duration::from_millis(1);

/// What one VMM measured.
#[derive(Default)]
pub struct Side {
    pub boot_to_ready_s: f64,
    pub snapshot_ms: f64,
    /// spawn → VM running per the VMM's API, µs, one per sequential restore.
    pub restore_us: Vec<u64>,
    /// spawn → first echoed message, ms, for the checked sequential clones.
    pub echo_ms: Vec<f64>,
    /// Clones whose guest answered the echo (sequential and memory ones).
    pub verified: usize,
    /// Private_Clean + Private_Dirty per idle clone, KiB.
    pub private_kib: Vec<u64>,
    /// Private_Dirty alone per idle clone, KiB.
    pub private_dirty_kib: Vec<u64>,
    /// Pooled only: `start_us` as the VMM reports it (its own share).
    pub vmm_start_us: Vec<u64>,
    /// Pooled only: private memory of a pooled VMM before its start, KiB.
    pub pooled_idle_kib: Vec<u64>,
}

/// Result of the section for both VMMs.
pub struct Results {
    pub runs: usize,
    pub kernel: PathBuf,
    pub arrow: Side,
    pub pooled: Side,
    pub firecracker: Result<Side, String>,
}

/// Which VMM a restored clone runs under.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Arrow,
    ArrowPooled,
    Firecracker,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Arrow => "arrow-vmm",
            Kind::ArrowPooled => "arrow-vmm pooled",
            Kind::Firecracker => "firecracker",
        }
    }

    /// Prefix of a clone's file names.
    fn tag(self) -> &'static str {
        match self {
            Kind::Arrow => "ar",
            Kind::ArrowPooled => "ap",
            Kind::Firecracker => "fc",
        }
    }
}

/// A restored clone; killed on drop.
struct Restored {
    kind: Kind,
    child: Child,
    api: PathBuf,
    vsock: PathBuf,
    log: PathBuf,
    spawned: Instant,
    /// Pooled: the answer to `PUT /vm/start`.
    start_body: String,
}

impl Restored {
    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Stops the VMM: arrow-vmm through its API (it must exit 0), Firecracker
    /// by SIGKILL (it has no stop request on x86 short of a guest reboot).
    fn stop(mut self) -> Result<(), String> {
        let r = match self.kind {
            Kind::Arrow | Kind::ArrowPooled => http(&self.api, "PUT", "/vm/shutdown", "")
                .and_then(|(st, body)| match st {
                    200 | 204 => Ok(()),
                    _ => Err(format!("PUT /vm/shutdown: {st} {body}")),
                })
                .and_then(|()| wait_exit(&mut self.child, Duration::from_secs(20)))
                .and_then(|code| match code {
                    Some(0) => Ok(()),
                    c => Err(format!("arrow-vmm exited with {c:?} after shutdown")),
                }),
            Kind::Firecracker => Ok(()),
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in [&self.api, &self.vsock] {
            let _ = std::fs::remove_file(p);
        }
        r.map_err(|e| format!("{e}\n{}", self.log_tail()))
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    format!("  {} (tail):\n    {}", path.display(), tail.join("\n    "))
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<i32>, String> {
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st.code()),
            Ok(None) if t.elapsed() < timeout => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => return Err(format!("did not exit within {timeout:?}")),
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// One request on a VMM's API socket (arrow-vmm's or Firecracker's).
fn http(sock: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    api_within(sock, method, path, body, Duration::from_secs(60))
}

/// Private_Clean and Private_Dirty of a process, KiB.
fn private_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Private_Clean:"), field("Private_Dirty:"))
}

fn log_file(path: &Path) -> Result<(Stdio, Stdio), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let g = f.try_clone().map_err(|e| e.to_string())?;
    Ok((f.into(), g.into()))
}

/// Paths of the template snapshot of each VMM.
struct Templates {
    arrow: PathBuf,
    fc_state: PathBuf,
    fc_mem: PathBuf,
}

/// Boots arrow-vmm, waits for vsock-echo, snapshots through the control API.
fn arrow_template(
    bin: &Path,
    kernel: &Path,
    initrd: &Path,
    dir: &Path,
    side: &mut Side,
) -> Result<PathBuf, String> {
    let uds = dir.join("arrow-tpl.vsock");
    let snap = dir.join("arrow-snapshot");
    let mut g = Guest::boot(
        &Vmm::Arrow(bin.to_path_buf()),
        kernel,
        initrd,
        &uds,
        APP_ARGS,
        BOOT_TIMEOUT,
    )?;
    let ready = g
        .wait_for(ECHO_READY)
        .map_err(|e| format!("{e}\nconsole:\n{}", g.console()))?;
    side.boot_to_ready_s = ready.as_secs_f64();
    eprintln!("clone bench: arrow-vmm template: vsock-echo ready after {ready:.1?}; snapshot");
    std::thread::sleep(TEMPLATE_SETTLE);
    let t = Instant::now();
    let (st, body) = http(
        &api_sock(&uds),
        "PUT",
        "/vm/snapshot",
        &serde_json::json!({ "dir": snap }).to_string(),
    )?;
    if st != 200 {
        return Err(format!("PUT /vm/snapshot: {st} {body}"));
    }
    side.snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = http(&api_sock(&uds), "PUT", "/vm/shutdown", "");
    g.kill();
    Ok(snap)
}

/// Boots Firecracker configured through its API, waits for vsock-echo,
/// pauses and takes a full snapshot. Returns (state file, memory file).
fn fc_template(
    bin: &Path,
    kernel: &Path,
    initrd: &Path,
    dir: &Path,
    side: &mut Side,
) -> Result<(PathBuf, PathBuf), String> {
    let api = dir.join("fc-tpl.api");
    let log = dir.join("fc-tpl.log");
    let (out, err) = log_file(&log)?;
    let spawned = Instant::now();
    let child = Command::new(bin)
        .arg("--api-sock")
        .arg(&api)
        .args(["--level", "Warn"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut c = Restored {
        kind: Kind::Firecracker,
        child,
        api: api.clone(),
        vsock: dir.join("fc-tpl.vsock"),
        log: log.clone(),
        spawned,
        start_body: String::new(),
    };
    wait_api(&mut c)?;
    let put = |path: &str, body: serde_json::Value| -> Result<(), String> {
        match http(&api, "PUT", path, &body.to_string())? {
            (204, _) => Ok(()),
            (st, b) => Err(format!("PUT {path}: {st} {b}\n{}", log_tail(&log))),
        }
    };
    put(
        "/boot-source",
        serde_json::json!({
            "kernel_image_path": kernel,
            "initrd_path": initrd,
            "boot_args": format!(
                "console=ttyS0 panic=-1 {COMPAT_FLAGS} arrow.app=/app -- {APP_ARGS}"
            ),
        }),
    )?;
    put(
        "/machine-config",
        serde_json::json!({ "vcpu_count": 1, "mem_size_mib": 128 }),
    )?;
    put(
        "/vsock",
        serde_json::json!({ "guest_cid": 3, "uds_path": c.vsock }),
    )?;
    put(
        "/actions",
        serde_json::json!({ "action_type": "InstanceStart" }),
    )?;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(ECHO_READY) {
            break;
        }
        if let Ok(Some(st)) = c.child.try_wait() {
            return Err(format!(
                "firecracker exited while booting ({st})\n{}",
                c.log_tail()
            ));
        }
        if spawned.elapsed() > BOOT_TIMEOUT {
            return Err(format!(
                "no {ECHO_READY:?} within {BOOT_TIMEOUT:?}\n{}",
                c.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    side.boot_to_ready_s = spawned.elapsed().as_secs_f64();
    eprintln!(
        "clone bench: firecracker template: vsock-echo ready after {:.1}s; pause and snapshot",
        side.boot_to_ready_s
    );
    std::thread::sleep(TEMPLATE_SETTLE);
    let (state, mem) = (dir.join("fc-snapshot.state"), dir.join("fc-snapshot.mem"));
    let t = Instant::now();
    match http(&api, "PATCH", "/vm", r#"{"state":"Paused"}"#)? {
        (204, _) => {}
        (st, b) => return Err(format!("PATCH /vm Paused: {st} {b}\n{}", c.log_tail())),
    }
    put(
        "/snapshot/create",
        serde_json::json!({
            "snapshot_type": "Full",
            "snapshot_path": state,
            "mem_file_path": mem,
        }),
    )?;
    side.snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
    c.stop()?;
    Ok((state, mem))
}

/// Waits until the clone's API socket accepts a connection.
fn wait_api(c: &mut Restored) -> Result<(), String> {
    loop {
        if UnixStream::connect(&c.api).is_ok() {
            return Ok(());
        }
        if let Ok(Some(st)) = c.child.try_wait() {
            return Err(format!(
                "{} exited before its API came up ({st})\n{}",
                c.kind.name(),
                c.log_tail()
            ));
        }
        if c.spawned.elapsed() > RESTORE_TIMEOUT {
            return Err(format!(
                "{} API socket {} not up within {RESTORE_TIMEOUT:?}\n{}",
                c.kind.name(),
                c.api.display(),
                c.log_tail()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Restores the template as clone `tag`; returns the clone and the time
/// from spawn until the VMM's API confirmed the VM runs.
fn restore(
    kind: Kind,
    bin: &Path,
    tpl: &Templates,
    dir: &Path,
    tag: &str,
    cid: u32,
) -> Result<(Restored, Duration), String> {
    let api = dir.join(format!("{tag}.api"));
    let vsock = dir.join(format!("{tag}.vsock"));
    let log = dir.join(format!("{tag}.log"));
    let (out, err) = log_file(&log)?;
    let mut cmd = Command::new(bin);
    match kind {
        Kind::Arrow | Kind::ArrowPooled => {
            if kind == Kind::ArrowPooled {
                cmd.arg("--log-level").arg("info");
            }
            cmd.arg("restore")
                .arg("--from")
                .arg(&tpl.arrow)
                .arg("--clone")
                .args(["--vsock-cid", &cid.to_string()])
                .arg("--vsock-uds")
                .arg(&vsock)
                .arg("--api-sock")
                .arg(&api);
            if kind == Kind::ArrowPooled {
                cmd.arg("--pool");
            }
        }
        Kind::Firecracker => {
            cmd.arg("--api-sock").arg(&api).args(["--level", "Warn"]);
        }
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let spawned = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut c = Restored {
        kind,
        child,
        api,
        vsock,
        log,
        spawned,
        start_body: String::new(),
    };
    let mut timed_from = spawned;
    match kind {
        Kind::ArrowPooled => {
            loop {
                if let Ok((200, body)) = http(&c.api, "GET", "/vm", "") {
                    if body.contains(r#""state":"pooled""#) {
                        break;
                    }
                    return Err(format!("pooled VMM is not pooled: {body}"));
                }
                wait_api_step(&mut c)?;
            }
            timed_from = Instant::now();
            match http(&c.api, "PUT", "/vm/start", "")? {
                (200, body) => c.start_body = body,
                (st, b) => return Err(format!("PUT /vm/start: {st} {b}\n{}", c.log_tail())),
            }
        }
        Kind::Arrow => loop {
            // The control socket may not exist or not listen yet: retry.
            if let Ok((200, body)) = http(&c.api, "GET", "/vm", "") {
                let v: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| format!("GET /vm: {e} in {body:?}"))?;
                if v["state"] == "running" {
                    break;
                }
            }
            wait_api_step(&mut c)?;
        },
        Kind::Firecracker => {
            wait_api(&mut c)?;
            let body = serde_json::json!({
                "snapshot_path": tpl.fc_state,
                "mem_backend": { "backend_type": "File", "backend_path": tpl.fc_mem },
                "resume_vm": true,
                "vsock_override": { "uds_path": c.vsock },
            });
            match http(&c.api, "PUT", "/snapshot/load", &body.to_string())? {
                (204, _) => {}
                (st, b) => {
                    return Err(format!("PUT /snapshot/load: {st} {b}\n{}", c.log_tail()));
                }
            }
        }
    }
    let dt = timed_from.elapsed();
    Ok((c, dt))
}

fn wait_api_step(c: &mut Restored) -> Result<(), String> {
    if let Ok(Some(st)) = c.child.try_wait() {
        return Err(format!(
            "{} exited during the restore ({st})\n{}",
            c.kind.name(),
            c.log_tail()
        ));
    }
    if c.spawned.elapsed() > RESTORE_TIMEOUT {
        return Err(format!(
            "{} not running within {RESTORE_TIMEOUT:?}\n{}",
            c.kind.name(),
            c.log_tail()
        ));
    }
    std::thread::sleep(POLL);
    Ok(())
}

/// Checks that the restored guest runs: retries CONNECT + echo until it
/// works (a guest still handling the vsock reset refuses or resets) or the
/// deadline passes. Returns spawn → echoed.
fn verify(c: &mut Restored) -> Result<Duration, String> {
    let msg = format!("clone bench {} {}\n", c.kind.name(), c.vsock.display());
    let start = Instant::now();
    loop {
        let left = VERIFY_TIMEOUT.saturating_sub(start.elapsed());
        match echo_once(
            &c.vsock,
            ECHO_PORT,
            msg.as_bytes(),
            left.max(Duration::from_millis(10)),
        ) {
            Ok(()) => return Ok(c.spawned.elapsed()),
            Err(e) => {
                if let Ok(Some(st)) = c.child.try_wait() {
                    return Err(format!(
                        "{} exited ({st}); last echo error: {e}\n{}",
                        c.kind.name(),
                        c.log_tail()
                    ));
                }
                if start.elapsed() >= VERIFY_TIMEOUT {
                    return Err(format!(
                        "{}: guest did not echo within {VERIFY_TIMEOUT:?}: {e}\n{}",
                        c.kind.name(),
                        c.log_tail()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One sequential restore: timed, checked when `check`, stopped.
fn one(
    kind: Kind,
    bin: &Path,
    tpl: &Templates,
    dir: &Path,
    i: usize,
    check: bool,
    side: &mut Side,
) -> Result<(), String> {
    let tag = format!("{}-c{i}", kind.tag());
    let cid = if kind == Kind::ArrowPooled { 1000 } else { 100 } + i as u32;
    let (mut c, dt) = restore(kind, bin, tpl, dir, &tag, cid)?;
    side.restore_us.push(dt.as_micros() as u64);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&c.start_body) {
        if let Some(us) = v["start_us"].as_u64() {
            side.vmm_start_us.push(us);
        }
    }
    if check {
        let t = verify(&mut c)?;
        side.echo_ms.push(t.as_secs_f64() * 1e3);
        side.verified += 1;
    }
    c.stop()
}

/// `MEM_CLONES` clones alive together; memory after `SETTLE`, then each
/// is checked by an echo.
fn memory(
    kind: Kind,
    bin: &Path,
    tpl: &Templates,
    dir: &Path,
    side: &mut Side,
) -> Result<(), String> {
    let mut clones = Vec::new();
    let base = if kind == Kind::ArrowPooled { 2000 } else { 200 };
    for i in 0..MEM_CLONES {
        let tag = format!("{}-m{i}", kind.tag());
        clones.push(restore(kind, bin, tpl, dir, &tag, base + i as u32)?.0);
    }
    std::thread::sleep(SETTLE);
    for c in &clones {
        let (clean, dirty) = private_kib(c.child.id());
        side.private_kib.push(clean + dirty);
        side.private_dirty_kib.push(dirty);
    }
    for c in &mut clones {
        verify(c)?;
        side.verified += 1;
    }
    for c in clones {
        c.stop()?;
    }
    Ok(())
}

/// `MEM_CLONES` pooled VMMs waiting together: their memory before start.
fn pooled_idle(bin: &Path, tpl: &Templates, dir: &Path, side: &mut Side) -> Result<(), String> {
    let mut pool = Vec::new();
    for i in 0..MEM_CLONES {
        let api = dir.join(format!("pi{i}.api"));
        let log = dir.join(format!("pi{i}.log"));
        let (out, err) = log_file(&log)?;
        let child = Command::new(bin)
            .arg("restore")
            .arg("--from")
            .arg(&tpl.arrow)
            .arg("--clone")
            .args(["--vsock-cid", &(3000 + i).to_string()])
            .arg("--vsock-uds")
            .arg(dir.join(format!("pi{i}.vsock")))
            .arg("--api-sock")
            .arg(&api)
            .arg("--pool")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut c = Restored {
            kind: Kind::ArrowPooled,
            child,
            api,
            vsock: dir.join(format!("pi{i}.vsock")),
            log,
            spawned: Instant::now(),
            start_body: String::new(),
        };
        wait_api(&mut c)?;
        pool.push(c);
    }
    std::thread::sleep(SETTLE);
    for c in &pool {
        let (clean, dirty) = private_kib(c.child.id());
        side.pooled_idle_kib.push(clean + dirty);
    }
    for c in pool {
        c.stop()?;
    }
    Ok(())
}

/// Runs the section. arrow-vmm failures panic (the bench is about it);
/// Firecracker failures are returned in `firecracker` with their output.
pub fn run(arrow_bin: &Path, fc_bin: &Path, kernel: &Path, initrd: &Path, runs: usize) -> Results {
    // Removed (with both snapshots) when the section ends.
    let tmp = tempfile::Builder::new()
        .prefix("arrow-clone-bench-linux-")
        .tempdir()
        .expect("creating the bench's temp dir");
    let dir = tmp.path();
    let mut arrow = Side::default();
    let mut pooled = Side::default();
    let mut fc_side = Side::default();

    eprintln!("clone bench: booting the arrow-vmm template (real guest kernel, ~25–45 s)");
    let arrow_snap = arrow_template(arrow_bin, kernel, initrd, dir, &mut arrow)
        .unwrap_or_else(|e| panic!("arrow-vmm template failed: {e}"));
    eprintln!(
        "clone bench: booting the firecracker template ({})",
        fc_bin.display()
    );
    let mut fc: Result<(), String> = Ok(());
    let mut tpl = Templates {
        arrow: arrow_snap,
        fc_state: PathBuf::new(),
        fc_mem: PathBuf::new(),
    };
    match fc_template(fc_bin, kernel, initrd, dir, &mut fc_side) {
        Ok((state, mem)) => (tpl.fc_state, tpl.fc_mem) = (state, mem),
        Err(e) => fc = Err(format!("template boot/snapshot failed: {e}")),
    }

    eprintln!(
        "clone bench: {runs} restores per VMM, alternating; every {VERIFY_EVERY}th checked by a vsock echo"
    );
    for i in 0..runs {
        let check = i % VERIFY_EVERY == 0;
        one(Kind::Arrow, arrow_bin, &tpl, dir, i, check, &mut arrow)
            .unwrap_or_else(|e| panic!("arrow-vmm restore {i} failed: {e}"));
        one(
            Kind::ArrowPooled,
            arrow_bin,
            &tpl,
            dir,
            i,
            check,
            &mut pooled,
        )
        .unwrap_or_else(|e| panic!("arrow-vmm pooled start {i} failed: {e}"));
        if fc.is_ok() {
            if let Err(e) = one(Kind::Firecracker, fc_bin, &tpl, dir, i, check, &mut fc_side) {
                fc = Err(format!("restore {i} failed: {e}"));
            }
        }
        if (i + 1) % 10 == 0 {
            eprintln!("clone bench: {} of {runs} restores done", i + 1);
        }
    }

    eprintln!(
        "clone bench: memory: {MEM_CLONES} idle clones of each VMM together, read after {SETTLE:?}"
    );
    memory(Kind::Arrow, arrow_bin, &tpl, dir, &mut arrow)
        .unwrap_or_else(|e| panic!("arrow-vmm memory clones failed: {e}"));
    memory(Kind::ArrowPooled, arrow_bin, &tpl, dir, &mut pooled)
        .unwrap_or_else(|e| panic!("arrow-vmm pooled memory clones failed: {e}"));
    pooled_idle(arrow_bin, &tpl, dir, &mut pooled)
        .unwrap_or_else(|e| panic!("arrow-vmm idle pooled VMMs failed: {e}"));
    // Pooled clones start from arrow-vmm's template.
    pooled.boot_to_ready_s = arrow.boot_to_ready_s;
    pooled.snapshot_ms = arrow.snapshot_ms;
    if fc.is_ok() {
        if let Err(e) = memory(Kind::Firecracker, fc_bin, &tpl, dir, &mut fc_side) {
            fc = Err(format!("memory clones failed: {e}"));
        }
    }
    Results {
        runs,
        kernel: kernel.to_path_buf(),
        arrow,
        pooled,
        firecracker: fc.map(|()| fc_side),
    }
}

fn pct(v: &[f64], p: f64) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s.get(i.min(s.len().saturating_sub(1))).copied()
}

fn summary(v: &[f64]) -> serde_json::Value {
    serde_json::json!({
        "p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": pct(v, 1.0), "n": v.len(),
    })
}

/// Prints the table and adds `real_linux_template` to the bench's JSON.
pub fn report(r: &Results, json: &mut serde_json::Map<String, serde_json::Value>) {
    type Get = fn(&Side) -> Vec<f64>;
    let rows: [(&str, &str, Get); 8] = [
        ("restore_to_vm_running", "µs", |s| {
            s.restore_us.iter().map(|&x| x as f64).collect()
        }),
        ("pooled_vmm_side_start", "µs", |s| {
            s.vmm_start_us.iter().map(|&x| x as f64).collect()
        }),
        ("restore_spawn_to_guest_echo", "ms", |s| s.echo_ms.clone()),
        ("private_memory_per_idle_clone", "KiB", |s| {
            s.private_kib.iter().map(|&x| x as f64).collect()
        }),
        ("private_dirty_per_idle_clone", "KiB", |s| {
            s.private_dirty_kib.iter().map(|&x| x as f64).collect()
        }),
        ("pooled_vmm_idle_private", "KiB", |s| {
            s.pooled_idle_kib.iter().map(|&x| x as f64).collect()
        }),
        ("template_boot_to_app_ready", "s", |s| {
            vec![s.boot_to_ready_s]
        }),
        ("template_snapshot", "ms", |s| vec![s.snapshot_ms]),
    ];
    let fc = r.firecracker.as_ref().ok();
    println!();
    println!(
        "real-Linux template (same kernel + initramfs, vsock-echo idle, 1 vCPU / 128 MiB): \
         {} restores per VMM, alternating; {MEM_CLONES} clones each together for memory",
        r.runs
    );
    println!(
        "restore = arrow-vmm / firecracker: process spawn → API says the VM runs; \
         pooled = arrow-vmm --pool spawned ahead, PUT /vm/start → answered (VM running)"
    );
    println!(
        "{:<30} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "metric",
        "unit",
        "arrow p50",
        "p99",
        "pool p50",
        "p99",
        "fc p50",
        "p99",
        "pool/fc",
        "arw/fc"
    );
    let cell = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
    let c3 = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
    let ratio = |a: Option<f64>, f: Option<f64>| match (a, f) {
        (Some(a), Some(f)) if f > 0.0 => Some(a / f),
        _ => None,
    };
    let mut metrics = serde_json::Map::new();
    for (name, unit, get) in rows {
        let a = get(&r.arrow);
        let p = get(&r.pooled);
        let f = fc.map(get);
        let (a50, a99) = (pct(&a, 0.5), pct(&a, 0.99));
        let (p50, p99) = (pct(&p, 0.5), pct(&p, 0.99));
        let (f50, f99) = (
            f.as_deref().and_then(|f| pct(f, 0.5)),
            f.as_deref().and_then(|f| pct(f, 0.99)),
        );
        let single = a.len() <= 1 && p.len() <= 1;
        let (pr, ar) = (ratio(p50, f50), ratio(a50, f50));
        let opt = |x: Option<f64>| if single { String::new() } else { cell(x) };
        println!(
            "{name:<30} {unit:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
            cell(a50),
            opt(a99),
            cell(p50),
            opt(p99),
            cell(f50),
            opt(f99),
            c3(pr),
            c3(ar)
        );
        metrics.insert(
            name.into(),
            serde_json::json!({
                "unit": unit,
                "arrow": summary(&a),
                "arrow_pooled": summary(&p),
                "firecracker": f.as_deref().map(summary),
                "pooled_over_firecracker": {"p50": pr, "p99": ratio(p99, f99)},
                "arrow_over_firecracker": {"p50": ar, "p99": ratio(a99, f99)},
            }),
        );
    }
    println!(
        "(ratios below 1: arrow-vmm is faster / smaller; verified clones: arrow-vmm {}, pooled {}, firecracker {})",
        r.arrow.verified,
        r.pooled.verified,
        fc.map_or(0, |f| f.verified)
    );
    if let Err(e) = &r.firecracker {
        println!("firecracker: {e}");
    }
    json.insert(
        "real_linux_template".into(),
        serde_json::json!({
            "kernel": r.kernel,
            "runs": r.runs,
            "mem_clones": MEM_CLONES,
            "settle_s": SETTLE.as_secs_f64(),
            "firecracker": match &r.firecracker {
                Ok(_) => "ran".to_string(),
                Err(e) => e.clone(),
            },
            "verified": {"arrow": r.arrow.verified, "pooled": r.pooled.verified, "firecracker": fc.map(|f| f.verified)},
            "metrics": metrics,
            "arrow_restore_us": r.arrow.restore_us,
            "pooled_start_us": r.pooled.restore_us,
            "firecracker_restore_us": fc.map(|f| f.restore_us.clone()),
        }),
    );
}
