//! Making the generic template ([`super::generic`]): in the background on first need
//! (one build at a time), or on `POST /templates {"generic": true}`; replacing a failed or
//! stale one, and removing generic templates of an old kernel or shape.

use std::sync::Arc;
use std::time::Duration;

use super::db::{self, TemplateRecord};
use super::generic::{key, slot_path, spec, volume_slot_path, PREFIX, SLOT_MIB, VOLUME_SLOT_MIB};
use super::model::{Template, TemplateRequest};
use super::{identity, pool, TEMPLATE_CID_BASE};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::supervisor::Supervisor;

/// Default bound on boot → KERNEL_READY.
const DEFAULT_TIMEOUT_S: u64 = 300;
/// A generic template that failed is made again on need only after this long (a broken
/// kernel is not booted on every start); an explicit create retries at once.
const AUTO_RETRY_MS: i64 = 10 * 60 * 1000;

impl Supervisor {
    /// Starts making the generic template in the background unless that is under way.
    pub(crate) fn ensure_generic(self: &Arc<Self>) {
        // Skip the task (and its kernel hash) while a build runs or after a recent failure.
        let newest = db::list(&self.db)
            .ok()
            .and_then(|l| l.into_iter().rev().find(|t| t.spec.generic));
        if let Some(t) = newest {
            use super::model::TemplateState as S;
            let recent = now_ms() - t.created_at < AUTO_RETRY_MS;
            if t.state == S::Creating || (t.state == S::Failed && recent) {
                return;
            }
        }
        let sup = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(_busy) = sup.templates.generic_build.try_lock() else {
                return;
            };
            match sup.build_generic(None, None, true).await {
                Ok(t) => tracing::info!(template = %t.name, "generic template ready"),
                Err(e) => tracing::warn!("generic template not made: {e}"),
            }
        });
    }

    /// `POST /templates {"generic": true}`: the current generic template, made now if
    /// there is none (a failed or stale one is replaced). Waits for a background build.
    pub(crate) async fn create_generic_template(
        self: &Arc<Self>,
        req: TemplateRequest,
    ) -> Result<Template> {
        let extra = !req.name.is_empty()
            || !req.image.is_empty()
            || !req.env.is_empty()
            || req.args.is_some()
            || req.vcpus.is_some()
            || req.memory.is_some()
            || req.snapshot_at.is_some()
            || req.delay_ms.is_some();
        if extra {
            return Err(Error::Invalid(
                "a generic template takes only pool_size and timeout_s: its name, memory and vCPUs are arrowd's, and images are given to its clones".into(),
            ));
        }
        if req
            .pool_size
            .is_some_and(|n| n > super::build::MAX_POOL_SIZE)
        {
            return Err(Error::Invalid(format!(
                "pool_size is too large: give 0 to {}",
                super::build::MAX_POOL_SIZE
            )));
        }
        let _busy = self.templates.generic_build.lock().await;
        let timeout = req.timeout_s.map(Duration::from_secs);
        let t = self.build_generic(req.pool_size, timeout, false).await?;
        self.inspect_template(&t.id)
    }

    /// Returns the current generic template, making it if needed. `auto`: a build
    /// nobody asked for, which retries one that failed only after [`AUTO_RETRY_MS`]
    /// (removing it, or creating it explicitly, retries now). The caller holds
    /// `templates.generic_build`.
    async fn build_generic(
        self: &Arc<Self>,
        pool_size: Option<u32>,
        timeout: Option<Duration>,
        auto: bool,
    ) -> Result<TemplateRecord> {
        let kernel_path = self.cfg.kernel_path();
        let kernel = tokio::task::spawn_blocking(move || identity::kernel_identity(&kernel_path))
            .await
            .map_err(|e| Error::Internal(format!("kernel hash task failed: {e}")))??;
        let vmm = self.cfg.vmm_path();
        let fs_slots = tokio::task::spawn_blocking(move || vmm_fs_slots(&vmm))
            .await
            .unwrap_or(0);
        let id = format!(
            "{PREFIX}{}",
            key(
                &kernel.sha256,
                &self.cfg.kernel_cmdline,
                self.cfg.generic_memory_mib,
                self.cfg.generic_vcpus,
                fs_slots,
            )
        );
        // Generic templates of other kernels (or command lines) are never used again.
        for old in db::list(&self.db)? {
            if old.spec.generic && old.id != id && self.stale_reason(&old).is_some() {
                self.remove_generic_files(&old, "its kernel or command line changed");
            }
        }
        if let Some(t) = db::find(&self.db, &id)? {
            use super::model::TemplateState as S;
            match (t.state, self.stale_reason(&t)) {
                (S::Ready, None) => {
                    if pool_size.is_some() && pool_size != t.spec.pool_size {
                        tracing::info!(template = %id, "the generic template exists: its pool size stays; remove it to change it");
                    }
                    return Ok(t);
                }
                (S::Failed, _) if auto && now_ms() - t.created_at < AUTO_RETRY_MS => {
                    return Err(Error::Conflict(format!(
                        "generic template {id} failed ({}); arrowd retries 10 minutes after the failed attempt, `actl template create --generic` now",
                        t.reason.as_deref().unwrap_or("unknown reason")
                    )))
                }
                _ => self.remove_generic_files(&t, "it is being replaced"),
            }
        }
        let mut spec = spec(kernel, &self.cfg, pool_size, fs_slots);
        db::insert(&self.db, &id, &id, &mut spec, now_ms(), |seq| {
            TEMPLATE_CID_BASE.saturating_add(u32::try_from(seq).unwrap_or(u32::MAX))
        })?;
        tracing::info!(template = %id, "creating the generic template");
        let slot = slot_path(&self.templates_root(), &id);
        let vslot = volume_slot_path(&self.templates_root(), &id);
        // Both slots are sparse files of zeros: the image slot, then the volume slot
        // (the template's pmem0 and pmem1).
        let made = std::fs::create_dir_all(self.templates_root())
            .and_then(|()| std::fs::File::create(&slot))
            .and_then(|f| f.set_len(SLOT_MIB << 20))
            .and_then(|()| std::fs::File::create(&vslot))
            .and_then(|f| f.set_len(u64::from(VOLUME_SLOT_MIB) << 20));
        if let Err(e) = made {
            let why = format!(
                "cannot create the image and volume slots {}: {e}",
                slot.display()
            );
            db::set_failed(&self.db, &id, &why)?;
            return Err(Error::Internal(why));
        }
        let mut root: Vec<std::ffi::OsString> = vec![
            "--pmem".into(),
            format!("{},ro", slot.display()).into(),
            "--pmem".into(),
            format!("{},ro", vslot.display()).into(),
        ];
        if fs_slots > 0 {
            root.extend(["--fs-slots".into(), fs_slots.to_string().into()]);
        }
        let timeout = timeout.unwrap_or(Duration::from_secs(DEFAULT_TIMEOUT_S));
        let built = self.build_snapshot_task(&id, &spec, root, timeout).await?;
        match built {
            Ok(ms) => {
                pool::make_file_read_only(&slot);
                pool::make_file_read_only(&vslot);
                db::set_ready(&self.db, &id, ms)?;
                tracing::info!(template = %id, boot_to_snapshot_ms = ms, "generic template ready");
                self.templates.wake();
            }
            Err(e) => {
                let _ = std::fs::remove_file(&slot);
                let _ = std::fs::remove_file(&vslot);
                db::set_failed(&self.db, &id, &e.to_string())?;
                return Err(e);
            }
        }
        db::find(&self.db, &id)?
            .ok_or_else(|| Error::Internal(format!("generic template {id} vanished")))
    }

    /// Forgets a generic template that has no running clones (else leaves it).
    pub(super) fn remove_generic_files(&self, t: &TemplateRecord, why: &str) {
        match db::active_clones(&self.db, &t.id) {
            Ok(c) if c.is_empty() => {}
            _ => return,
        }
        if db::delete(&self.db, &t.id).is_err() {
            return;
        }
        let dir = self.template_dir(&t.id);
        pool::make_writable(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(slot_path(&self.templates_root(), &t.id));
        let _ = std::fs::remove_file(volume_slot_path(&self.templates_root(), &t.id));
        let _ = std::fs::remove_dir_all(self.build_root().join(&t.id));
        tracing::info!(template = %t.name, "removed an old generic template: {why}");
    }
}

/// How many vhost-user-fs slots generic templates get: [`crate::volumes::MAX_FS_VOLUMES`]
/// when this arrow-vmm has `run --fs-slots`, else none (fs volumes then cold-boot).
pub(crate) fn vmm_fs_slots(vmm: &std::path::Path) -> u8 {
    let help = std::process::Command::new(vmm)
        .args(["run", "--help"])
        .stdin(std::process::Stdio::null())
        .output();
    match help {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("--fs-slots") => {
            crate::volumes::MAX_FS_VOLUMES as u8
        }
        _ => 0,
    }
}
