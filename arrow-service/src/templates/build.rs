//! `POST /templates`: boot the image once, wait for the snapshot point, snapshot, shut
//! the VM down, and keep the snapshot read-only.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clone::vmm_api;
use super::model::{SnapshotPoint, Template, TemplateRequest, TemplateSpec};
use super::{db, identity, pool, TEMPLATE_CID_BASE};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::supervisor::create::{check_name, new_id};
use crate::supervisor::lifecycle::boot_args;
use crate::supervisor::{Supervisor, API_SOCK, CONSOLE_LOG, VSOCK_SOCK};

/// Default bound on boot → snapshot point (a real guest kernel boots in ~25 s on
/// nested-virtualization hosts, 2-3x more under load).
const DEFAULT_TIMEOUT_S: u64 = 300;
/// Most warm VMMs one template may ask for.
pub(super) const MAX_POOL_SIZE: u32 = 64;

/// What a generic template's build failing before KERNEL_READY most likely means.
const NO_WAIT_POINT: &str = "the guest kernel does not support generic templates (it ran an app instead of waiting for one: it needs CONFIG_ARROW_WAIT_APP, guest-kernel patch 0009); rebuild it with guest-kernel/build.sh, or run arrowd with --generic-template=false";

/// The last lines of a file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Supervisor {
    /// Creates a template from an image; returns once it is ready (or failed).
    pub async fn create_template(self: &Arc<Self>, req: TemplateRequest) -> Result<Template> {
        if req.generic {
            return self.create_generic_template(req).await;
        }
        check_name(&req.name, "template")?;
        if super::generic::is_generic_name(&req.name) {
            return Err(Error::Invalid(format!(
                "template name {:?} is reserved for the generic template: choose another name (the generic template is made with {{\"generic\": true}}, `actl template create --generic`)",
                req.name
            )));
        }
        if req.snapshot_at == Some(SnapshotPoint::KernelReady) {
            return Err(Error::Invalid(
                "snapshot_at \"kernel_ready\" is the generic template's: give {\"generic\": true} instead of an image, or another snapshot point".into(),
            ));
        }
        let r = self.resolve(
            &req.image,
            req.vcpus,
            req.memory.as_ref(),
            &req.env,
            req.args.as_ref(),
        )?;
        let declares_ready =
            !r.image.spec.ports.is_empty() || r.image.spec.readiness != asdk::Readiness::Started;
        let snapshot_at = req.snapshot_at.unwrap_or(if declares_ready {
            SnapshotPoint::Ready
        } else {
            SnapshotPoint::Started
        });
        if req.pool_size.is_some_and(|n| n > MAX_POOL_SIZE) {
            return Err(Error::Invalid(format!(
                "pool_size {} is too large: give 0 to {MAX_POOL_SIZE} (each pooled VMM is a process waiting for a start)",
                req.pool_size.unwrap_or_default()
            )));
        }
        if snapshot_at == SnapshotPoint::Delay && req.delay_ms.is_none() {
            return Err(Error::Invalid(
                "snapshot_at \"delay\" needs delay_ms: the time after the VM's spawn to take the snapshot".into(),
            ));
        }
        let initrd = self
            .store
            .initrd_path(&r.image)
            .map_err(|e| crate::supervisor::create::image_error(&req.image, e))?;
        let kernel_path = self.cfg.kernel_path();
        let kernel = tokio::task::spawn_blocking(move || identity::kernel_identity(&kernel_path))
            .await
            .map_err(|e| Error::Internal(format!("kernel hash task failed: {e}")))??;
        let id = new_id()?;
        let mut spec = TemplateSpec {
            image: req.image.clone(),
            image_digest: r.image.digest.to_string(),
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            env: r.env,
            args: r.args,
            base_cmdline: self.cfg.kernel_cmdline.clone(),
            cmdline: format!(
                "{} arrow.hostname={} {}",
                self.cfg.kernel_cmdline, req.name, r.app_cmdline
            ),
            kernel,
            snapshot_at,
            delay_ms: req.delay_ms.unwrap_or(0),
            pool_size: req.pool_size,
            vsock_cid: 0,
            generic: false,
            volume_slot_mib: 0,
            fs_slots: 0,
        };
        db::insert(&self.db, &id, &req.name, &mut spec, now_ms(), |seq| {
            TEMPLATE_CID_BASE.saturating_add(u32::try_from(seq).unwrap_or(u32::MAX))
        })?;
        tracing::info!(template = %req.name, %id, image = %req.image, point = snapshot_at.as_str(), "creating template");
        let timeout = Duration::from_secs(req.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S));
        let root = vec!["--initrd".into(), initrd.into()];
        let built = self.build_snapshot_task(&id, &spec, root, timeout).await?;
        match built {
            Ok(ms) => {
                db::set_ready(&self.db, &id, ms)?;
                tracing::info!(template = %req.name, %id, boot_to_snapshot_ms = ms, "template ready");
                self.templates.wake();
            }
            Err(e) => {
                db::set_failed(&self.db, &id, &e.to_string())?;
                tracing::warn!(template = %req.name, %id, "template failed: {e}");
                return Err(e);
            }
        }
        self.inspect_template(&id)
    }

    /// Boots the template VM and snapshots it into the template directory; returns the
    /// spawn → snapshot time in ms.
    /// `root`: arrow-vmm's root filesystem arguments (the image's initrd, or the generic
    /// template's empty image slot).
    /// [`Self::build_snapshot`] in its own task, so that a client that hangs up does
    /// not leave a half-made template VM. The outer error: the task itself failed.
    pub(super) async fn build_snapshot_task(
        self: &Arc<Self>,
        id: &str,
        spec: &TemplateSpec,
        root: Vec<std::ffi::OsString>,
        timeout: Duration,
    ) -> Result<Result<i64>> {
        let sup = Arc::clone(self);
        let (id, spec) = (id.to_owned(), spec.clone());
        tokio::spawn(async move { sup.build_snapshot(&id, &spec, &root, timeout).await })
            .await
            .map_err(|e| Error::Internal(format!("template task failed: {e}")))
    }

    pub(super) async fn build_snapshot(
        &self,
        id: &str,
        spec: &TemplateSpec,
        root: &[std::ffi::OsString],
        timeout: Duration,
    ) -> Result<i64> {
        let build = self.build_root().join(id);
        let dir = self.template_dir(id);
        std::fs::create_dir_all(&build)
            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", build.display())))?;
        let mut args = boot_args(
            Path::new(&spec.kernel.path),
            root,
            &spec.cmdline,
            spec.memory_mib,
            spec.vcpus,
        );
        args.extend([
            "--vsock-cid".into(),
            spec.vsock_cid.to_string().into(),
            "--vsock-uds".into(),
            VSOCK_SOCK.into(),
            // The control API may only write snapshots under the templates directory.
            "--snapshot-dir".into(),
            self.templates_root().into(),
        ]);
        let t0 = Instant::now();
        // The one directory its snapshot may go to: made here so the jailed VMM can be
        // given it (it writes into an existing empty directory as into a new one).
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let spawned = self.spawn_vmm_writing(&build, args, None, std::slice::from_ref(&dir));
        let (mut child, pid, start) = spawned.map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            Error::Internal(format!(
                "cannot start arrow-vmm {}: {e}; check arrowd's --vmm option",
                self.cfg.vmm_path().display()
            ))
        })?;
        let result = self
            .snapshot_when_ready(&mut child, &build, &dir, spec, t0, timeout)
            .await;
        // Whatever happened, the template VM goes away.
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            crate::procfs::signal(pid, start, libc::SIGKILL);
            let _ = child.wait().await;
        }
        let _ = std::fs::remove_file(build.join(API_SOCK));
        let _ = std::fs::remove_file(build.join(VSOCK_SOCK));
        match result {
            Ok(ms) => {
                pool::make_read_only(&dir);
                Ok(ms)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn snapshot_when_ready(
        &self,
        child: &mut tokio::process::Child,
        build: &Path,
        dir: &Path,
        spec: &TemplateSpec,
        t0: Instant,
        timeout: Duration,
    ) -> Result<i64> {
        let sock = build.join(API_SOCK);
        let console = build.join(CONSOLE_LOG);
        let fail = |what: String| {
            Error::Internal(format!(
                "{what}; last console lines:\n{}\n(see {})",
                tail(&console, 10),
                console.display()
            ))
        };
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let vmm_log = build.join(crate::supervisor::VMM_LOG);
                let log = tail(&vmm_log, 3);
                let ran_app =
                    std::fs::read_to_string(&vmm_log).is_ok_and(|l| l.contains("APP_STARTED"));
                let hint = match spec.snapshot_at {
                    SnapshotPoint::KernelReady if ran_app => {
                        format!("; {NO_WAIT_POINT}")
                    }
                    _ => String::new(),
                };
                return Err(fail(format!(
                    "the template VM stopped ({st}) before its snapshot point ({}){hint}; vmm log: {log}",
                    spec.snapshot_at.as_str(),
                )));
            }
            if t0.elapsed() > timeout {
                let hint = match spec.snapshot_at {
                    SnapshotPoint::Ready => "; an app that never listens on vsock needs snapshot_at \"started\" or \"delay\"",
                    _ => "",
                };
                let _ = vmm_api(&sock, hyper::Method::PUT, "/vm/shutdown", None).await;
                return Err(fail(format!(
                    "the template VM did not reach its snapshot point ({}) within {} s{hint}",
                    spec.snapshot_at.as_str(),
                    timeout.as_secs()
                )));
            }
            let reached = match spec.snapshot_at {
                SnapshotPoint::Delay => t0.elapsed() >= Duration::from_millis(spec.delay_ms),
                point => match vmm_api(&sock, hyper::Method::GET, "/vm", None).await {
                    Ok(v) if point == SnapshotPoint::Ready => !v["app_ready_ms"].is_null(),
                    Ok(v) if point == SnapshotPoint::KernelReady => {
                        if !v["app_started_ms"].is_null() {
                            let _ = vmm_api(&sock, hyper::Method::PUT, "/vm/shutdown", None).await;
                            return Err(fail(NO_WAIT_POINT.into()));
                        }
                        !v["kernel_ready_ms"].is_null()
                    }
                    Ok(v) => !v["app_started_ms"].is_null(),
                    Err(_) => false,
                },
            };
            if reached {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if spec.snapshot_at != SnapshotPoint::Delay && spec.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(spec.delay_ms)).await;
        }
        let call = |method, path: &'static str, body| {
            let sock = sock.clone();
            async move {
                vmm_api(&sock, method, path, body)
                    .await
                    .map_err(|e| fail(format!("{path} on the template VM failed: {e}")))
            }
        };
        call(hyper::Method::PUT, "/vm/pause", None).await?;
        let snap = call(
            hyper::Method::PUT,
            "/vm/snapshot",
            Some(serde_json::json!({ "dir": dir })),
        )
        .await?;
        let ms = t0.elapsed().as_millis() as i64;
        tracing::info!(dir = %dir.display(), ms, pages = %snap["memory_pages_written"], "template snapshot written");
        call(hyper::Method::PUT, "/vm/shutdown", None).await?;
        Ok(ms)
    }
}
