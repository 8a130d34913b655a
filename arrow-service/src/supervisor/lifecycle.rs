//! start / stop / kill / delete / wait.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use super::create::image_error;
use super::{Supervisor, API_SOCK, CONSOLE_LOG, REPORT, UPPER_IMG, VMM_LOG, VSOCK_SOCK};
use crate::clock::now_ms;
use crate::db::Record;
use crate::error::{Error, Result};
use crate::model::{Instance, RootFs, State, WaitResponse};
use crate::volumes::plan::insert_params;
use crate::volumes::{virtiofsd, Plan};
use crate::{cgroup, procfs, proxy};

/// `arrow-vmm run` arguments that boot an image (shared by instances and template VMs);
/// `root` gives its root filesystem (`--initrd F`, or shadowfs's `--pmem` devices).
pub(crate) fn boot_args(
    kernel: &std::path::Path,
    root: &[std::ffi::OsString],
    cmdline: &str,
    memory_mib: u32,
    vcpus: u8,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["run".into(), "--kernel".into(), kernel.into()];
    args.extend(root.iter().cloned());
    args.extend([
        "--cmdline".into(),
        cmdline.into(),
        "--memory".into(),
        format!("{memory_mib}M").into(),
        "--vcpus".into(),
        vcpus.to_string().into(),
    ]);
    args
}

/// `arrow-vmm run` arguments of a cold boot of `spec` in `run_dir` from `root` (its root
/// filesystem's `--initrd` or `--pmem` devices), with the volumes of `plan`: the pack is
/// the next pmem device after the root's (the guest numbers them in this order), its
/// `arrow.volpack=`/`arrow.vol=` parameters go before the app's, and each fs volume is a
/// `--fs TAG=SOCKET` (relative to the run directory, arrow-vmm's working directory).
pub(crate) fn cold_boot_args(
    kernel: &std::path::Path,
    root: &[std::ffi::OsString],
    spec: &crate::model::InstanceSpec,
    run_dir: &std::path::Path,
    plan: &Plan,
) -> Vec<std::ffi::OsString> {
    let pack_index = root.iter().filter(|a| *a == "--pmem").count();
    let cmdline = insert_params(&spec.cmdline, &plan.kernel_params(pack_index));
    let sockets: Vec<std::path::PathBuf> = plan
        .fs()
        .map(|p| virtiofsd::socket_name(&p.id).into())
        .collect();
    let mut devices = root.to_vec();
    devices.extend(plan.vmm_args(&sockets));
    let mut args = boot_args(kernel, &devices, &cmdline, spec.memory_mib, spec.vcpus);
    // With --fs too: arrow-vmm shares plugged memory with virtiofsd.
    if spec.memory_max_mib > spec.memory_mib {
        args.extend([
            "--memory-hotplug".into(),
            format!("{}M", spec.memory_max_mib - spec.memory_mib).into(),
        ]);
    }
    if spec.core_dumps {
        args.extend(["--core-dir".into(), run_dir.into()]);
    }
    // Always a vsock device, as every clone has (its template had one): arrowd relays to
    // it not only exported ports but also a pod's container ports and the image's
    // declared ports on the pod IP (cri/network.rs), which need no exported port.
    args.extend([
        "--vsock-cid".into(),
        spec.vsock_cid.to_string().into(),
        "--vsock-uds".into(),
        VSOCK_SOCK.into(),
    ]);
    args
}

impl Supervisor {
    /// Starts a created or finished instance; a running one is left alone. An instance
    /// that names a template, or matches a ready one, starts as a clone of it.
    pub async fn start(self: &Arc<Self>, reference: &str) -> Result<Instance> {
        let rec = self.db.find(reference)?;
        if rec.state.is_active() {
            return Ok(self.view(&rec));
        }
        let run_dir = self.run_dir(&rec.id);
        std::fs::create_dir_all(&run_dir).map_err(|e| {
            Error::Internal(format!(
                "cannot create run directory {}: {e}",
                run_dir.display()
            ))
        })?;
        // Volumes first: whether the pack fits decides between a clone and a cold boot.
        let plan = self.plan_volumes(&rec).await?;
        let virtiofsd = self.virtiofsd_for(&plan).await?;
        let mut template = self.template_for(&rec)?;
        let mut inject = None;
        match &template {
            Some(t) if t.spec.generic => {
                // Asked for explicitly: an image that does not fit is the request's fault.
                inject = Some(self.injection(&rec, t, &plan).map_err(|why| {
                    Error::Invalid(format!(
                        "instance {} cannot start from the generic template {}: {why}; leave out template (it then cold-boots)",
                        rec.name, t.name
                    ))
                })?);
            }
            Some(_) => {}
            None => {
                if let Some(t) = self.want_generic(&rec.spec) {
                    match self.injection(&rec, &t, &plan) {
                        Ok(i) => {
                            inject = Some(i);
                            template = Some(t);
                        }
                        Err(why) => tracing::info!(
                            instance = %rec.id,
                            "not starting from the generic template: {why}; booting cold"
                        ),
                    }
                }
            }
        }
        if template.is_none() {
            // A warm VMM taken for a clone start that became a cold boot.
            self.release_claimed(&rec.id).await;
        }
        let boot = match template {
            Some(_) => None,
            None => Some(self.boot_files(&rec)?),
        };
        let vsock = run_dir.join(VSOCK_SOCK);
        // Bind exported ports first: a port in use fails the start before anything runs.
        let proxies = proxy::start(&rec.id, &rec.spec.ports, &vsock).await?;
        if !self.db.begin_start(
            &rec.id,
            &[State::Created, State::Exited, State::Failed],
            now_ms(),
        )? {
            return Err(Error::Conflict(format!(
                "instance {} changed state while starting; try again",
                rec.name
            )));
        }
        self.changed();
        // The instance's virtiofsd processes live in its cgroup too.
        let backends_mib = plan.fs().count() as u64 * crate::volumes::jail::OVERHEAD_MIB;
        let cg = self
            .cgroups
            .create(&rec.id, rec.spec.vcpus, rec.spec.memory_mib, backends_mib);
        let cg_procs = cg.as_ref().map(|(_, p)| p.clone());
        // The fs volumes' virtiofsd listen before the VMM starts.
        let started = self.start_backends(&rec, &plan, virtiofsd.as_deref(), cg_procs.as_ref());
        let spawned = match started {
            Err(why) => Err(std::io::Error::other(why)),
            Ok(()) => match (&boot, &template) {
                (Some((kernel, boot)), _) => {
                    self.clean_run_dir(&run_dir);
                    self.spawn(&rec, kernel, boot, &plan, cg_procs)
                        .map(|(child, pid, start)| (child, pid, start, None))
                }
                (None, Some(t)) => self.start_clone(&rec, t, inject.as_ref(), cg_procs).await,
                (None, None) => Err(std::io::Error::other("no way to start it")),
            },
        };
        match spawned {
            Ok((child, pid, start, clone)) => {
                let cg_dir = cg.map(|(d, _)| d.display().to_string());
                self.db
                    .set_running(&rec.id, pid, start, cg_dir.as_deref())?;
                self.record_clone(&rec.id, clone.as_ref());
                self.set_proxies(&rec.id, Some(proxies));
                self.metrics.start();
                tracing::info!(instance = %rec.id, pid, template = clone.as_ref().map(|c| c.template.as_str()), "started");
                self.changed();
                self.monitor_child(rec.id.clone(), child, clone.is_none());
                self.inspect(&rec.id)
            }
            Err(e) => {
                self.stop_backends(&rec.id);
                let reason = format!(
                    "cannot start arrow-vmm {}: {e}",
                    self.cfg.vmm_path().display()
                );
                self.db
                    .finish(&rec.id, State::Failed, None, &reason, now_ms())?;
                self.metrics.failure();
                self.changed();
                Err(Error::Internal(format!(
                    "{reason}; check arrowd's --vmm option (or ARROW_VMM)"
                )))
            }
        }
    }

    /// The kernel and arrow-vmm's root filesystem arguments for a cold boot
    /// ([`Self::boot_devices`]).
    fn boot_files(&self, rec: &Record) -> Result<(std::path::PathBuf, Vec<std::ffi::OsString>)> {
        let kernel = self.cfg.kernel_path();
        if !kernel.is_file() {
            return Err(Error::Internal(format!(
                "arrowd's guest kernel {} does not exist: restart arrowd with --kernel PATH (build one with guest-kernel/build.sh)",
                kernel.display()
            )));
        }
        let image = self
            .store
            .image_by_digest(&rec.spec.image_digest.parse().map_err(|_| {
                Error::Internal(format!(
                    "stored image digest {:?} is damaged",
                    rec.spec.image_digest
                ))
            })?)
            .map_err(|e| image_error(&rec.spec.image, e))?;
        let devices = self.boot_devices(rec, &image)?;
        Ok((kernel, devices))
    }

    /// arrow-vmm's arguments for the instance's root filesystem: the initrd,
    /// or the image's shadowfs base (built on first use) and, for a
    /// persistent writable layer, `upper.img` in the run directory (created
    /// on first start, checked with e2fsck before the others; it goes with
    /// the run directory when the instance is deleted).
    fn boot_devices(&self, rec: &Record, image: &asdk::Image) -> Result<Vec<std::ffi::OsString>> {
        let img_err = |e| image_error(&rec.spec.image, e);
        match &rec.spec.rootfs {
            RootFs::Initrd => {
                let initrd = self.store.initrd_path(image).map_err(img_err)?;
                Ok(vec!["--initrd".into(), initrd.into()])
            }
            RootFs::Shadowfs { storage_mib } => {
                let base = self.store.base_path(image).map_err(img_err)?;
                let mut args = vec!["--pmem".into(), format!("{},ro", base.display()).into()];
                if let Some(mib) = storage_mib {
                    let run_dir = self.run_dir(&rec.id);
                    let layer = run_dir.join(UPPER_IMG);
                    let made = std::fs::create_dir_all(&run_dir)
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            if layer.exists() {
                                shadowfs::upper::check(&layer).map(|_| ())
                            } else {
                                shadowfs::upper::create(&layer, u64::from(*mib) << 20).map(|_| ())
                            }
                            .map_err(|e| e.to_string())
                        });
                    made.map_err(|e| {
                        Error::Internal(format!("writable layer of instance {}: {e}", rec.name))
                    })?;
                    args.push("--pmem".into());
                    args.push(format!("{},rw", layer.display()).into());
                }
                Ok(args)
            }
        }
    }

    /// Removes the previous run's report and sockets.
    pub(crate) fn clean_run_dir(&self, run_dir: &std::path::Path) {
        let _ = std::fs::remove_file(run_dir.join(REPORT));
        let _ = std::fs::remove_file(run_dir.join(VSOCK_SOCK));
        let _ = std::fs::remove_file(run_dir.join(API_SOCK));
    }

    fn spawn(
        &self,
        rec: &Record,
        kernel: &std::path::Path,
        boot: &[std::ffi::OsString],
        plan: &Plan,
        cgroup_procs: Option<std::ffi::CString>,
    ) -> std::io::Result<(tokio::process::Child, i32, u64)> {
        let run_dir = self.run_dir(&rec.id);
        let args = cold_boot_args(kernel, boot, &rec.spec, &run_dir, plan);
        self.spawn_vmm(&run_dir, args, cgroup_procs)
    }

    /// Spawns arrow-vmm with `args` plus the run directory's console, report, control
    /// socket and log, in its own process group (and cgroup), jailed unless the jail
    /// is off (the returned PID is then arrow-jailer's).
    pub(crate) fn spawn_vmm(
        &self,
        run_dir: &std::path::Path,
        args: Vec<std::ffi::OsString>,
        cgroup_procs: Option<std::ffi::CString>,
    ) -> std::io::Result<(tokio::process::Child, i32, u64)> {
        self.spawn_vmm_writing(run_dir, args, cgroup_procs, &[])
    }

    /// [`Self::spawn_vmm`] for a VMM that also writes `extra_rw` (outside its run
    /// directory: the snapshot a template build makes).
    pub(crate) fn spawn_vmm_writing(
        &self,
        run_dir: &std::path::Path,
        mut args: Vec<std::ffi::OsString>,
        cgroup_procs: Option<std::ffi::CString>,
        extra_rw: &[std::path::PathBuf],
    ) -> std::io::Result<(tokio::process::Child, i32, u64)> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.join(VMM_LOG))?;
        let token = spawn_token()?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(run_dir.join(procfs::SPAWN_TOKEN_FILE))?;
            f.write_all(token.as_bytes())?;
        }
        args.extend([
            "--console".into(),
            run_dir.join(CONSOLE_LOG).into(),
            "--console-max-size".into(),
            match self.cfg.console_log_max_mib {
                0 => "0".to_string(),
                n => format!("{n}M"),
            }
            .into(),
            "--log-level".into(),
            "info".into(),
            "--report".into(),
            run_dir.join(REPORT).into(),
            // Relative to the run directory (arrow-vmm's working directory): a Unix
            // socket path is limited to 107 bytes, and arrow-vmm binds it through a
            // longer temporary path.
            "--api-sock".into(),
            API_SOCK.into(),
        ]);
        let (program, args) = self
            .jail
            .command(&self.cfg.vmm_path(), args, run_dir, extra_rw)?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args);
        cmd.current_dir(run_dir)
            .env("NO_COLOR", "1")
            .env(procfs::SPAWN_TOKEN_ENV, &token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: signals to arrowd's group (Ctrl-C, systemd stop of
            // arrowd) do not reach the instances.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(procs) = cgroup_procs {
            // SAFETY: the closure only calls async-signal-safe functions (open/write/close).
            unsafe {
                cmd.pre_exec(move || cgroup::join_in_child(&procs));
            }
        }
        let child = cmd.spawn()?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| std::io::Error::other("arrow-vmm exited before its PID was known"))?;
        let start = procfs::raw_start_time(pid).unwrap_or(0);
        Ok((child, pid, start))
    }

    /// Waits until `id` is no longer active (or `timeout`); returns whether it stopped.
    async fn wait_inactive(&self, id: &str, timeout: Duration) -> Result<bool> {
        let mut rx = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.db.get(id)? {
                Some(r) if r.state.is_active() => {}
                _ => return Ok(true),
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
    }

    /// Asks arrow-vmm to stop the VM through its control API (`PUT /vm/shutdown`).
    async fn shutdown_via_api(&self, id: &str) -> bool {
        let ep = crate::client::Endpoint::Unix(self.run_dir(id).join(API_SOCK));
        let call = ep.send(hyper::Method::PUT, "/vm/shutdown", None);
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::info!(
                    instance = id,
                    "control API shutdown failed ({e}); sending SIGTERM"
                );
                false
            }
            Err(_) => {
                tracing::info!(
                    instance = id,
                    "control API did not answer in 2 s; sending SIGTERM"
                );
                false
            }
        }
    }

    /// Graceful stop: `PUT /vm/shutdown` on arrow-vmm's control socket (SIGTERM if that
    /// fails), SIGKILL after `timeout`.
    pub async fn stop(self: &Arc<Self>, reference: &str, timeout: Option<u64>) -> Result<Instance> {
        let rec = self.db.find(reference)?;
        if !rec.state.is_active() {
            return Ok(self.view(&rec));
        }
        let timeout = Duration::from_secs(timeout.unwrap_or(self.cfg.stop_timeout));
        self.mark_stopping(&rec.id, true);
        self.db
            .set_state(&rec.id, &[State::Starting, State::Running], State::Stopping)?;
        self.changed();
        if !self.shutdown_via_api(&rec.id).await {
            self.signal_vmm(&rec.id, libc::SIGTERM).await?;
        }
        if !self.wait_inactive(&rec.id, timeout).await? {
            tracing::warn!(instance = %rec.id, "did not stop within {timeout:?}; killing");
            self.signal_vmm(&rec.id, libc::SIGKILL).await?;
            self.wait_inactive(&rec.id, Duration::from_secs(10)).await?;
        }
        self.inspect(&rec.id)
    }

    /// Sends `sig` to the instance's arrow-vmm (after checking it is still that process).
    pub(super) async fn signal_vmm(&self, id: &str, sig: i32) -> Result<()> {
        // A starting instance gets its PID within moments.
        for _ in 0..50 {
            match self.db.get(id)? {
                Some(Record {
                    pid: Some(pid),
                    pid_start: Some(start),
                    ..
                }) => {
                    if !procfs::signal(pid, start, sig) {
                        tracing::info!(instance = id, pid, "arrow-vmm already gone");
                    }
                    return Ok(());
                }
                Some(r) if r.state.is_active() => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Sends a signal (default KILL) to the instance's arrow-vmm.
    pub async fn kill(self: &Arc<Self>, reference: &str, signal: Option<&str>) -> Result<Instance> {
        let rec = self.db.find(reference)?;
        let name = signal.unwrap_or("KILL");
        let sig = procfs::signal_number(name).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown signal {name:?}: use a name such as KILL, TERM, INT, HUP or a number"
            ))
        })?;
        if !rec.state.is_active() {
            return Err(Error::Conflict(format!(
                "instance {} is not running (state {}): nothing to kill; `actl start` starts it",
                rec.name,
                rec.state.as_str()
            )));
        }
        if sig == libc::SIGKILL || sig == libc::SIGTERM || sig == libc::SIGINT {
            self.mark_stopping(&rec.id, true);
        }
        self.mark_signalled(&rec.id, Some(sig));
        self.signal_vmm(&rec.id, sig).await?;
        if sig == libc::SIGKILL {
            self.wait_inactive(&rec.id, Duration::from_secs(10)).await?;
        }
        self.inspect(&rec.id)
    }

    /// Removes an instance; a running one only with `force` (it is killed first).
    pub async fn delete(self: &Arc<Self>, reference: &str, force: bool) -> Result<()> {
        let rec = self.db.find(reference)?;
        if rec.state.is_active() {
            if !force {
                return Err(Error::Conflict(format!(
                    "instance {} is {}: stop it first (`actl stop {}`) or remove it by force (`actl rm -f {}`)",
                    rec.name,
                    rec.state.as_str(),
                    rec.name,
                    rec.name
                )));
            }
            self.mark_stopping(&rec.id, true);
            self.signal_vmm(&rec.id, libc::SIGKILL).await?;
            if !self.wait_inactive(&rec.id, Duration::from_secs(10)).await? {
                return Err(Error::Internal(format!(
                    "instance {} did not stop after SIGKILL within 10 s; try again",
                    rec.name
                )));
            }
        }
        if !self.db.delete(&rec.id)? {
            return Err(Error::Conflict(format!(
                "instance {} changed state while being removed; try again",
                rec.name
            )));
        }
        self.set_proxies(&rec.id, None);
        if let Some(cg) = &rec.cgroup {
            self.cgroups.remove(cg);
        }
        let _ = std::fs::remove_dir_all(self.run_dir(&rec.id));
        tracing::info!(instance = %rec.id, name = %rec.name, "removed");
        self.changed();
        Ok(())
    }

    /// Blocks until the instance has finished; returns its exit code.
    pub async fn wait(self: &Arc<Self>, reference: &str) -> Result<WaitResponse> {
        let id = self.db.find(reference)?.id;
        let mut rx = self.changes.subscribe();
        loop {
            let rec = self.db.get(&id)?.ok_or_else(|| {
                Error::NotFound(format!("instance {reference:?} was removed while waiting"))
            })?;
            if rec.state.is_finished() {
                return Ok(WaitResponse {
                    state: rec.state,
                    exit_code: rec.exit_code,
                    reason: rec.reason,
                });
            }
            if rx.changed().await.is_err() {
                return Err(Error::Internal("arrowd is shutting down".into()));
            }
        }
    }
}

/// 32 hex digits from the kernel's random source: ties a spawned arrow-vmm (or
/// virtiofsd) to its run directory for re-adoption (see [`procfs::SPAWN_TOKEN_ENV`]).
pub(crate) fn spawn_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceSpec, RootFs};
    use crate::volumes::{Kind, Placed, Volume};

    fn spec() -> InstanceSpec {
        InstanceSpec {
            image: "hello:latest".into(),
            image_digest: String::new(),
            vcpus: 1,
            memory_mib: 64,
            memory_max_mib: 64,
            env: Default::default(),
            args: Vec::new(),
            ports: Vec::new(),
            vsock_cid: 7,
            cmdline: "console=ttyS0 arrow.hostname=a arrow.base=/dev/pmem0 arrow.upper=tmpfs arrow.app=/app K=V -- x".into(),
            template: None,
            core_dumps: false,
            rootfs: RootFs::Shadowfs { storage_mib: Some(64) },
            volumes: Vec::new(),
        }
    }

    fn strings(a: &[std::ffi::OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn cold_boot_argv_with_a_pack_and_an_fs_volume() {
        let root: Vec<std::ffi::OsString> = vec![
            "--pmem".into(),
            "/store/base.erofs,ro".into(),
            "--pmem".into(),
            "/run/x/upper.img,rw".into(),
        ];
        let vol = |host: &str, guest: &str, ro| Volume {
            host_path: host.into(),
            guest_path: guest.into(),
            read_only: ro,
        };
        let plan = Plan {
            placed: vec![
                Placed {
                    volume: vol("/srv/cfg", "/etc/cfg", true),
                    kind: Kind::Pack,
                    id: "0".into(),
                },
                Placed {
                    volume: vol("/srv/data", "/data", false),
                    kind: Kind::Fs,
                    id: "vol0".into(),
                },
            ],
            pack: Some("/run/x/volumes.erofs".into()),
            pack_size: 8192,
        };
        let a = strings(&cold_boot_args(
            std::path::Path::new("/k/vmlinux"),
            &root,
            &spec(),
            std::path::Path::new("/run/x"),
            &plan,
        ));
        assert_eq!(
            a,
            [
                "run",
                "--kernel",
                "/k/vmlinux",
                "--pmem",
                "/store/base.erofs,ro",
                "--pmem",
                "/run/x/upper.img,rw",
                // The pack is the third pmem device: /dev/pmem2 in the guest.
                "--pmem",
                "/run/x/volumes.erofs,ro",
                "--fs",
                "vol0=fs-vol0.sock",
                "--cmdline",
                "console=ttyS0 arrow.hostname=a arrow.base=/dev/pmem0 arrow.upper=tmpfs \
                 arrow.volpack=/dev/pmem2 arrow.vol=pack:0:ro:/etc/cfg arrow.vol=fs:vol0:rw:/data \
                 arrow.app=/app K=V -- x",
                "--memory",
                "64M",
                "--vcpus",
                "1",
                // No exported ports, still a vsock device (pod ports relay to it).
                "--vsock-cid",
                "7",
                "--vsock-uds",
                "vsock.sock",
            ]
        );
        // Without volumes nothing changes; an initrd root makes the pack /dev/pmem0.
        let plain = strings(&cold_boot_args(
            std::path::Path::new("/k/vmlinux"),
            &root,
            &spec(),
            std::path::Path::new("/run/x"),
            &Plan::default(),
        ));
        assert!(
            plain.contains(&spec().cmdline)
                && !plain.iter().any(|a| a.contains("volumes") || a == "--fs")
        );
        let initrd: Vec<std::ffi::OsString> = vec!["--initrd".into(), "/i".into()];
        let a = strings(&cold_boot_args(
            std::path::Path::new("/k"),
            &initrd,
            &spec(),
            std::path::Path::new("/run/x"),
            &plan,
        ));
        assert!(a.iter().any(|x| x.contains("arrow.volpack=/dev/pmem0")));
    }
}
