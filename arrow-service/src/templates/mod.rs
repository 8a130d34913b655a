//! Templates: an image booted once and snapshotted at its snapshot point, kept read-only
//! under `<state-dir>/templates/<id>/`; instances start as copy-on-write clones of it
//! (`arrow-vmm restore --clone`), taken from a warm pool of pre-started VMMs when one is
//! ready. See `docs/arrowd.md` (Templates).

mod build;
pub(crate) mod clone;
pub mod db;
pub mod generic;
mod generic_build;
mod identity;
pub mod model;
mod pool;
mod usage;

use std::path::PathBuf;
use std::sync::Arc;

use self::db::TemplateRecord;
use self::model::{CloneInfo, Template, TemplateSpec, TemplateState};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::model::{CreateRequest, InstanceSpec, MemoryArg};
use crate::supervisor::Supervisor;

pub use pool::Templates;

/// The snapshot's memory file (written by arrow-vmm).
pub const MEMORY_FILE: &str = "memory.bin";
/// The snapshot's state file (written by arrow-vmm).
pub const STATE_FILE: &str = "state.json";

/// vsock CIDs of template VMs: this base plus the template's row number.
const TEMPLATE_CID_BASE: u32 = 0x3000_0000;
/// vsock CIDs of warm-pool VMMs (and the instances they become) start above this.
const POOL_CID_BASE: u32 = 0x4000_0000;

/// Whether a template runs exactly what an instance asks for. Host-side settings (ports,
/// name) do not matter; image, arguments, environment, memory and vCPUs do.
fn fits(t: &TemplateSpec, s: &InstanceSpec) -> bool {
    !t.generic
        && t.image_digest == s.image_digest
        && t.vcpus == s.vcpus
        && t.memory_mib == s.memory_mib
        && t.env == s.env
        && t.args == s.args
        // A per-image template's snapshot has no volumes.
        && s.volumes.is_empty()
}

impl Supervisor {
    /// `<state-dir>/templates`.
    pub(crate) fn templates_root(&self) -> PathBuf {
        self.cfg.state_dir.join("templates")
    }

    /// A template's snapshot directory.
    pub(crate) fn template_dir(&self, id: &str) -> PathBuf {
        self.templates_root().join(id)
    }

    /// Where a template's VM ran while it was made (console.log, vmm.log).
    pub(crate) fn build_root(&self) -> PathBuf {
        self.templates_root().join(".build")
    }

    /// Why the template must not be used now, if it must not.
    pub(crate) fn stale_reason(&self, t: &TemplateRecord) -> Option<String> {
        identity::stale_reason(&self.cfg, &self.store, t, &self.template_dir(&t.id))
    }

    fn find_template(&self, name: &str) -> Result<TemplateRecord> {
        if name == generic::ALIAS {
            // The current generic template; else the newest one, to say why it is not.
            let newest = db::list(&self.db)?
                .into_iter()
                .rev()
                .find(|t| t.spec.generic);
            return self.generic_template().or(newest).ok_or_else(|| {
                Error::NotFound(
                    "there is no generic template yet: `actl template create --generic` makes one (arrowd also makes it on the first start that can use it)".into(),
                )
            });
        }
        db::find(&self.db, name)?.ok_or_else(|| {
            Error::NotFound(format!(
                "no template {name:?}: `actl template ls` lists templates; `actl template create --name {name} IMAGE` makes one"
            ))
        })
    }

    /// A template that clones may start from now, or why not.
    fn usable_template(&self, name: &str) -> Result<TemplateRecord> {
        let t = self.find_template(name)?;
        match t.state {
            TemplateState::Ready => {}
            TemplateState::Creating => {
                return Err(Error::Conflict(format!(
                "template {name} is still being created: wait for `actl template create` to finish"
            )))
            }
            _ => {
                return Err(Error::Conflict(format!(
                    "template {name} failed ({}): remove it and create it again",
                    t.reason.as_deref().unwrap_or("unknown reason")
                )))
            }
        }
        if let Some(why) = self.stale_reason(&t) {
            return Err(Error::Conflict(format!(
                "template {name} is stale and is not used: {why}; recreate it (`actl template rm {name}` then `actl template create`)"
            )));
        }
        Ok(t)
    }

    /// For a create request naming a template: checks it and fills in its image and
    /// settings where the request leaves them out.
    pub(crate) fn template_defaults(
        &self,
        req: &mut CreateRequest,
        name: &str,
    ) -> Result<TemplateRecord> {
        let t = self.usable_template(name)?;
        if t.spec.generic {
            // Any image runs from it: the request names one, and keeps its own args/env.
            if req.image.trim().is_empty() {
                return Err(Error::Invalid(
                    "the generic template runs the image a request names: give \"image\"".into(),
                ));
            }
            req.vcpus.get_or_insert(t.spec.vcpus);
            req.memory
                .get_or_insert(MemoryArg::Mib(u64::from(t.spec.memory_mib)));
            return Ok(t);
        }
        if req.image.trim().is_empty() {
            req.image = t.spec.image_digest.clone();
        }
        req.vcpus.get_or_insert(t.spec.vcpus);
        req.memory
            .get_or_insert(MemoryArg::Mib(u64::from(t.spec.memory_mib)));
        if req.args.is_none() {
            req.args = Some(t.spec.args.clone());
        }
        Ok(t)
    }

    /// Refuses an instance whose settings differ from its explicit template.
    pub(crate) fn check_template_fits(&self, t: &TemplateRecord, s: &InstanceSpec) -> Result<()> {
        if t.spec.generic {
            return match generic::ineligible(&t.spec, s) {
                None => Ok(()),
                Some(why) => Err(Error::Invalid(format!(
                    "this instance cannot start from the generic template {}: {why}; leave out template (it then cold-boots)",
                    t.name
                ))),
            };
        }
        if fits(&t.spec, s) {
            return Ok(());
        }
        let mut diff = Vec::new();
        if t.spec.image_digest != s.image_digest {
            diff.push(format!(
                "image {} (template: {})",
                s.image_digest, t.spec.image_digest
            ));
        }
        if t.spec.vcpus != s.vcpus {
            diff.push(format!("vcpus {} (template: {})", s.vcpus, t.spec.vcpus));
        }
        if t.spec.memory_mib != s.memory_mib {
            diff.push(format!(
                "memory {} MiB (template: {} MiB)",
                s.memory_mib, t.spec.memory_mib
            ));
        }
        if t.spec.env != s.env {
            diff.push("environment".into());
        }
        if t.spec.args != s.args {
            diff.push(format!("args {:?} (template: {:?})", s.args, t.spec.args));
        }
        Err(Error::Invalid(format!(
            "the request differs from template {}: {}; a clone runs exactly what its template runs: leave these out, or leave out the template",
            t.name,
            diff.join(", ")
        )))
    }

    /// The template this instance's next run clones: its explicit one (which must be
    /// usable), else a ready, up-to-date template that runs exactly the same thing.
    pub(crate) fn template_for(&self, rec: &crate::db::Record) -> Result<Option<TemplateRecord>> {
        if let Some(name) = &rec.spec.template {
            let t = self.usable_template(name)?;
            self.check_template_fits(&t, &rec.spec)?;
            return Ok(Some(t));
        }
        Ok(self.matching_template(&rec.spec))
    }

    pub(crate) fn matching_template(&self, s: &InstanceSpec) -> Option<TemplateRecord> {
        if s.core_dumps || s.memory_max_mib > s.memory_mib {
            // Cores are sent by a guest set up for them at boot, and memory hotplug needs a
            // region templates are not booted with: such instances cold-boot.
            return None;
        }
        // A persistent shadowfs layer is the instance's own: it boots cold with it.
        if matches!(
            s.rootfs,
            crate::model::RootFs::Shadowfs {
                storage_mib: Some(_)
            }
        ) {
            return None;
        }
        let list = match db::list(&self.db) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("cannot list templates: {e}; starting without one");
                return None;
            }
        };
        for t in list {
            if t.state != TemplateState::Ready || !fits(&t.spec, s) {
                continue;
            }
            match self.stale_reason(&t) {
                None => return Some(t),
                Some(why) => tracing::warn!(
                    template = %t.name,
                    "a matching template is stale and is not used: {why}"
                ),
            }
        }
        None
    }

    /// Records (or clears) the template link of an instance's current run.
    pub(crate) fn record_clone(&self, id: &str, info: Option<&CloneInfo>) {
        if let Err(e) = db::set_clone(&self.db, id, info) {
            tracing::warn!(instance = id, "cannot record the template link: {e}");
        }
    }

    /// The API view of a template, with its measured disk use, clones and pool.
    fn template_view(&self, t: &TemplateRecord) -> Template {
        let dir = self.template_dir(&t.id);
        let (state, reason) = match t.state {
            TemplateState::Ready => match self.stale_reason(t) {
                Some(why) => (TemplateState::Stale, Some(why)),
                None => (TemplateState::Ready, None),
            },
            s => (s, t.reason.clone()),
        };
        let clones = db::active_clones(&self.db, &t.id).unwrap_or_default();
        let mut sharing = model::Sharing::default();
        let mem = dir.join(MEMORY_FILE);
        let mem = std::fs::canonicalize(&mem).unwrap_or(mem);
        for pid in clones.iter().filter_map(|(_, p)| *p) {
            usage::add_process(&mut sharing, pid, &mem);
        }
        Template {
            id: t.id.clone(),
            name: t.name.clone(),
            state,
            reason,
            created_at: rfc3339(t.created_at),
            boot_to_snapshot_ms: t.boot_to_snapshot_ms,
            dir: dir.display().to_string(),
            spec: t.spec.clone(),
            disk: usage::disk_usage(&dir),
            clones: clones.into_iter().map(|(id, _)| id).collect(),
            sharing,
            pool: self.templates.pool_info(&t.id, self.pool_target(t)),
        }
    }

    /// How many warm VMMs the template should have.
    fn pool_target(&self, t: &TemplateRecord) -> u32 {
        t.spec.pool_size.unwrap_or(self.cfg.pool_size)
    }

    /// All templates.
    pub fn list_templates(&self) -> Result<Vec<Template>> {
        Ok(db::list(&self.db)?
            .iter()
            .map(|t| self.template_view(t))
            .collect())
    }

    /// One template by name or ID.
    pub fn inspect_template(&self, name: &str) -> Result<Template> {
        Ok(self.template_view(&self.find_template(name)?))
    }

    /// Removes a template: refused while clones run unless `force` (then they are
    /// killed). Its warm VMMs are stopped and its files removed.
    pub async fn delete_template(self: &Arc<Self>, name: &str, force: bool) -> Result<()> {
        let t = self.find_template(name)?;
        if t.state == TemplateState::Creating {
            return Err(Error::Conflict(format!(
                "template {} is being created: wait until `actl template create` returns",
                t.name
            )));
        }
        let clones = db::active_clones(&self.db, &t.id)?;
        if !clones.is_empty() && !force {
            let ids: Vec<&str> = clones.iter().map(|(id, _)| id.as_str()).collect();
            return Err(Error::Conflict(format!(
                "template {} has {} running clone(s) ({}): stop them first, or remove it by force (`actl template rm -f {}`), which kills them",
                t.name,
                ids.len(),
                ids.join(", "),
                t.name
            )));
        }
        for (id, _) in &clones {
            if let Err(e) = self.kill(id, Some("KILL")).await {
                tracing::warn!(instance = %id, "cannot kill a clone of the removed template: {e}");
            }
        }
        db::delete(&self.db, &t.id)?;
        self.drain_pool(&t.id).await;
        let dir = self.template_dir(&t.id);
        pool::make_writable(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(self.build_root().join(&t.id));
        if t.spec.generic {
            let _ = std::fs::remove_file(generic::slot_path(&self.templates_root(), &t.id));
        }
        tracing::info!(template = %t.name, id = %t.id, "template removed");
        Ok(())
    }
}
