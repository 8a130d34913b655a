//! The generic template: arrowd's guest kernel booted once with `arrow.wait_app=1` and an
//! empty read-only image slot (`--pmem <id>.slot,ro`), snapshotted at KERNEL_READY. An
//! instance of any image that has no ready template of its own starts as a clone of it,
//! with the image's EROFS base mapped into the slot and its app (path, argv, env,
//! hostname) injected (`restore --clone --image-base B --app-spec F`, or `PUT /vm/start
//! {"app", "image_base"}` to a pooled VMM). One per kernel, `--kernel-cmdline` and shape
//! (`generic-<key>`); made in the background on first need and kept (`generic_build`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::db::{self, TemplateRecord};
use super::model::{KernelIdentity, SnapshotPoint, TemplateSpec};
use crate::config::Config;
use crate::db::Record;
use crate::model::{InstanceSpec, RootFs};
use crate::supervisor::Supervisor;
use crate::volumes::Plan;

/// `"template": "generic"` names the current generic template, whatever its key.
pub const ALIAS: &str = "generic";
/// Names (and IDs) of generic templates start with this; user templates may not.
pub const PREFIX: &str = "generic-";
/// Size of the image slot: the largest image base a clone can be given. The slot file is
/// sparse (no disk), and the guest only maps what it reads.
pub const SLOT_MIB: u64 = 256;
/// Size of the volume slot (the second read-only pmem device): the largest volume pack
/// a clone can be given (`crate::volumes::pack::MAX_BYTES`).
pub const VOLUME_SLOT_MIB: u32 = (crate::volumes::pack::MAX_BYTES >> 20) as u32;

/// Whether `name` is (or is reserved for) a generic template.
pub fn is_generic_name(name: &str) -> bool {
    name == ALIAS || name.starts_with(PREFIX)
}

/// The generic template's key: the kernel's content hash, arrowd's command line, the
/// template's memory and vCPUs (`--generic-memory-mib`, `--generic-vcpus`) and its
/// volume slots (pack slot MiB, fs slots).
pub fn key(kernel_sha256: &str, cmdline: &str, memory_mib: u32, vcpus: u8, fs_slots: u8) -> String {
    let mut h = Sha256::new();
    h.update(kernel_sha256.as_bytes());
    h.update([0]);
    h.update(cmdline.as_bytes());
    h.update([0]);
    h.update(format!("{memory_mib}M {vcpus}").as_bytes());
    h.update(format!(" volumes {VOLUME_SLOT_MIB}M {fs_slots}").as_bytes());
    hex::encode(h.finalize())[..12].to_owned()
}

/// The volume slot file of generic template `id` (64 MiB of zeros, sparse).
pub fn volume_slot_path(templates_root: &Path, id: &str) -> PathBuf {
    templates_root.join(format!("{id}.volslot"))
}

/// The image slot file of generic template `id` (next to its snapshot directory: the
/// snapshot directory must be empty when arrow-vmm writes it).
pub fn slot_path(templates_root: &Path, id: &str) -> PathBuf {
    templates_root.join(format!("{id}.slot"))
}

/// The spec of a generic template for `kernel` under arrowd's configuration.
pub(super) fn spec(
    kernel: KernelIdentity,
    cfg: &Config,
    pool_size: Option<u32>,
    fs_slots: u8,
) -> TemplateSpec {
    let base_cmdline = &cfg.kernel_cmdline;
    TemplateSpec {
        image: String::new(),
        image_digest: String::new(),
        vcpus: cfg.generic_vcpus,
        memory_mib: cfg.generic_memory_mib,
        env: Default::default(),
        args: Vec::new(),
        base_cmdline: base_cmdline.clone(),
        cmdline: format!("{base_cmdline} arrow.wait_app=1"),
        kernel,
        snapshot_at: SnapshotPoint::KernelReady,
        delay_ms: 0,
        pool_size,
        vsock_cid: 0,
        generic: true,
        volume_slot_mib: VOLUME_SLOT_MIB,
        fs_slots,
    }
}

/// Why an instance cannot start from generic template `t`, if it cannot. Its image and
/// app are injected; everything else the clone has is the template's.
pub fn ineligible(t: &TemplateSpec, s: &InstanceSpec) -> Option<String> {
    if !matches!(s.rootfs, RootFs::Shadowfs { storage_mib: None }) {
        return Some(match s.rootfs {
            RootFs::Initrd => "it boots from its initrd (\"initrd\": true)".into(),
            _ => "it has a persistent writable layer (storage)".into(),
        });
    }
    if s.core_dumps {
        return Some("core_dumps needs a guest set up for them at boot".into());
    }
    if s.memory_max_mib > s.memory_mib {
        return Some(format!(
            "memory_max {} MiB needs a hotplug region the template has not",
            s.memory_max_mib
        ));
    }
    if s.memory_mib != t.memory_mib || s.vcpus != t.vcpus {
        return Some(format!(
            "it asks for {} MiB and {} vCPU(s), the generic template has {} MiB and {}",
            s.memory_mib, s.vcpus, t.memory_mib, t.vcpus
        ));
    }
    if !s.volumes.is_empty() && t.volume_slot_mib == 0 {
        return Some("it has volumes and the generic template has no volume slot".into());
    }
    let writable = s.volumes.iter().filter(|v| !v.read_only).count();
    if writable > usize::from(t.fs_slots) {
        return Some(format!(
            "it has {writable} writable volume(s) and the generic template has {} fs slot(s)",
            t.fs_slots
        ));
    }
    None
}

/// Why an instance whose volumes were placed as `plan` cannot start from generic
/// template `t`, if it cannot: its pack must fit the volume slot and its fs volumes the
/// fs slots.
pub fn volumes_ineligible(t: &TemplateSpec, plan: &Plan) -> Option<String> {
    if plan.placed.is_empty() {
        return None;
    }
    if t.volume_slot_mib == 0 {
        return Some("it has volumes and the generic template has no volume slot".into());
    }
    if plan.pack_size > u64::from(t.volume_slot_mib) << 20 {
        return Some(format!(
            "its volume pack is {} MiB, the generic template's volume slot holds {} MiB",
            plan.pack_size.div_ceil(1 << 20),
            t.volume_slot_mib
        ));
    }
    let fs = plan.fs().count();
    if fs > usize::from(t.fs_slots) {
        return Some(format!(
            "{fs} of its volumes are served by virtiofsd and the generic template has {} fs slot(s)",
            t.fs_slots
        ));
    }
    None
}

/// Why an image base does not fit the slot, if it does not.
pub fn base_too_large(base: &Path) -> Option<String> {
    match std::fs::metadata(base) {
        Ok(m) if m.len() > SLOT_MIB << 20 => Some(format!(
            "its image base {} is {} MiB, the generic template's slot holds {SLOT_MIB} MiB",
            base.display(),
            m.len().div_ceil(1 << 20)
        )),
        Ok(_) => None,
        Err(e) => Some(format!(
            "cannot read its image base {}: {e}",
            base.display()
        )),
    }
}

/// The app description a clone is given: what a cold boot's command line would give
/// (`/app`, the image's args and merged env, the instance name as hostname), with the
/// image base as the root and a private tmpfs upper layer.
pub fn app_spec(s: &InstanceSpec, hostname: &str) -> Value {
    let env: Vec<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    json!({
        "app": asdk::image::APP_PATH,
        "args": s.args,
        "env": env,
        "hostname": hostname,
        "image_base": true,
        "upper": "tmpfs",
    })
}

/// What a start from the generic template injects.
#[derive(Debug, Clone)]
pub struct Injection {
    /// The image's EROFS base.
    pub base: PathBuf,
    /// The app description (`--app-spec` / `PUT /vm/start`'s `app`), with its `volumes`.
    pub app: Value,
    /// The volume pack for the volume slot (`--volumes-base` / `"volumes_base"`).
    pub volumes_base: Option<PathBuf>,
    /// fs slot tags and the sockets of their virtiofsd (`--fs` / `"fs"`), relative to
    /// the run directory.
    pub fs: Vec<(String, PathBuf)>,
}

impl Supervisor {
    /// The ready, up-to-date generic template, if there is one (the newest).
    pub(crate) fn generic_template(&self) -> Option<TemplateRecord> {
        let list = db::list(&self.db).ok()?;
        list.into_iter()
            .rev()
            .filter(|t| t.spec.generic && t.state == super::model::TemplateState::Ready)
            .find(|t| self.stale_reason(t).is_none())
    }

    /// The generic template an instance without its own template would clone, if
    /// arrowd uses one, one is ready, and the instance can run from it.
    pub(crate) fn generic_for_spec(&self, s: &InstanceSpec) -> Option<TemplateRecord> {
        if !self.cfg.generic_template || s.template.is_some() {
            return None;
        }
        let t = self.generic_template()?;
        ineligible(&t.spec, s).is_none().then_some(t)
    }

    /// Like [`Self::generic_for_spec`]; when none is ready but the instance could run
    /// from one (hotplug headroom aside), starts making it in the background.
    pub(crate) fn want_generic(self: &Arc<Self>, s: &InstanceSpec) -> Option<TemplateRecord> {
        if !self.cfg.generic_template || s.template.is_some() {
            return None;
        }
        if let Some(t) = self.generic_for_spec(s) {
            return Some(t);
        }
        let mut probe = s.clone();
        probe.memory_max_mib = probe.memory_mib;
        let shape = spec(
            placeholder_kernel(),
            &self.cfg,
            None,
            crate::volumes::MAX_FS_VOLUMES as u8,
        );
        if self.generic_template().is_none() && ineligible(&shape, &probe).is_none() {
            self.ensure_generic();
        }
        None
    }

    /// What a start of `rec` from generic template `t` injects, or why it cannot.
    pub(crate) fn injection(
        &self,
        rec: &Record,
        t: &TemplateRecord,
        plan: &Plan,
    ) -> std::result::Result<Injection, String> {
        if let Some(why) = ineligible(&t.spec, &rec.spec) {
            return Err(why);
        }
        if let Some(why) = volumes_ineligible(&t.spec, plan) {
            return Err(why);
        }
        let digest: asdk::Digest =
            rec.spec.image_digest.parse().map_err(|_| {
                format!("stored image digest {:?} is damaged", rec.spec.image_digest)
            })?;
        let image = self
            .store
            .image_by_digest(&digest)
            .map_err(|e| format!("image {}: {e}", rec.spec.image))?;
        let base = self
            .store
            .base_path(&image)
            .map_err(|e| format!("image base of {}: {e}", rec.spec.image))?;
        if let Some(why) = base_too_large(&base) {
            return Err(why);
        }
        let mut app = app_spec(&rec.spec, &rec.name);
        if !plan.placed.is_empty() {
            app["volumes"] = plan.app_volumes();
        }
        Ok(Injection {
            base,
            app,
            volumes_base: plan.pack.clone(),
            fs: plan
                .fs()
                .map(|p| {
                    (
                        p.id.clone(),
                        PathBuf::from(crate::volumes::virtiofsd::socket_name(&p.id)),
                    )
                })
                .collect(),
        })
    }
}

/// A kernel identity for comparing shapes only (memory, vCPUs).
fn placeholder_kernel() -> KernelIdentity {
    KernelIdentity {
        path: String::new(),
        size: 0,
        mtime_ns: 0,
        sha256: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    const MEMORY_MIB: u32 = asdk::spec::DEFAULT_MEMORY_MIB;

    fn config(extra: &[&str]) -> Config {
        let mut args = vec!["arrowd", "--kernel-cmdline", "console=ttyS0"];
        args.extend_from_slice(extra);
        Config::parse_from(args)
    }

    fn instance() -> InstanceSpec {
        InstanceSpec {
            image: "hello:latest".into(),
            image_digest: String::new(),
            vcpus: 1,
            memory_mib: MEMORY_MIB,
            memory_max_mib: MEMORY_MIB,
            env: [("A".to_owned(), "1".to_owned()), ("B".into(), "x y".into())].into(),
            args: vec!["--n".into(), "two words".into()],
            ports: Vec::new(),
            vsock_cid: 0,
            cmdline: String::new(),
            template: None,
            core_dumps: false,
            rootfs: RootFs::Shadowfs { storage_mib: None },
            volumes: Vec::new(),
        }
    }

    #[test]
    fn key_follows_kernel_and_cmdline() {
        let k = key("sha256:aa", "console=ttyS0", 128, 1, 0);
        assert_eq!(k.len(), 12);
        assert_eq!(k, key("sha256:aa", "console=ttyS0", 128, 1, 0));
        assert_ne!(k, key("sha256:ab", "console=ttyS0", 128, 1, 0));
        assert_ne!(k, key("sha256:aa", "console=ttyS0 quiet", 128, 1, 0));
        assert_ne!(k, key("sha256:aa", "console=ttyS0", 64, 1, 0));
        assert_ne!(k, key("sha256:aa", "console=ttyS0", 128, 2, 0));
        assert_ne!(k, key("sha256:aa", "console=ttyS0", 128, 1, 8));
        assert!(is_generic_name(&format!("{PREFIX}{k}")));
        assert!(is_generic_name("generic"));
        assert!(!is_generic_name("web"));
    }

    #[test]
    fn only_default_shaped_shadowfs_instances_are_eligible() {
        let t = spec(placeholder_kernel(), &config(&[]), None, 0);
        assert_eq!(t.cmdline, "console=ttyS0 arrow.wait_app=1");
        assert_eq!((t.memory_mib, t.vcpus), (MEMORY_MIB, 1));
        let small = spec(
            placeholder_kernel(),
            &config(&["--generic-memory-mib", "64"]),
            None,
            0,
        );
        assert!(ineligible(&small, &instance()).is_some());
        assert!(Config::try_parse_from(["arrowd", "--generic-memory-mib", "8"]).is_err());
        assert!(!config(&["--generic-template=false"]).generic_template);
        assert!(config(&["--generic-template"]).generic_template);
        assert!(ineligible(&t, &instance()).is_none());
        let mut s = instance();
        s.rootfs = RootFs::Initrd;
        assert!(ineligible(&t, &s).unwrap().contains("initrd"));
        let mut s = instance();
        s.rootfs = RootFs::Shadowfs {
            storage_mib: Some(64),
        };
        assert!(ineligible(&t, &s).unwrap().contains("persistent"));
        let mut s = instance();
        s.core_dumps = true;
        assert!(ineligible(&t, &s).is_some());
        let mut s = instance();
        s.memory_max_mib = 4 * MEMORY_MIB;
        assert!(ineligible(&t, &s).unwrap().contains("hotplug"));
        let mut s = instance();
        s.memory_mib = 256;
        s.memory_max_mib = 256;
        assert!(ineligible(&t, &s).unwrap().contains("256 MiB"));
        let mut s = instance();
        s.vcpus = 2;
        assert!(ineligible(&t, &s).is_some());
    }

    #[test]
    fn volumes_need_the_templates_slots() {
        use crate::volumes::{Kind, Placed, Volume};
        let vol = |ro| Volume {
            host_path: "/h".into(),
            guest_path: "/g".into(),
            read_only: ro,
        };
        let mut t = spec(placeholder_kernel(), &config(&[]), None, 0);
        let mut s = instance();
        s.volumes = vec![vol(true)];
        assert!(ineligible(&t, &s).is_none());
        s.volumes.push(vol(false));
        assert!(ineligible(&t, &s).unwrap().contains("0 fs slot"));
        t.fs_slots = 8;
        assert!(ineligible(&t, &s).is_none());
        let mut old = t.clone();
        old.volume_slot_mib = 0;
        assert!(ineligible(&old, &s).unwrap().contains("no volume slot"));
        let placed = |kind, id: &str| Placed {
            volume: vol(kind == Kind::Pack),
            kind,
            id: id.into(),
        };
        let mut plan = Plan {
            placed: vec![placed(Kind::Pack, "0"), placed(Kind::Fs, "vol0")],
            pack: Some("/r/volumes.erofs".into()),
            pack_size: 1 << 20,
        };
        assert!(volumes_ineligible(&t, &plan).is_none());
        plan.pack_size = (u64::from(VOLUME_SLOT_MIB) << 20) + 1;
        assert!(volumes_ineligible(&t, &plan)
            .unwrap()
            .contains("volume slot holds"));
        plan.pack_size = 4096;
        t.fs_slots = 0;
        assert!(volumes_ineligible(&t, &plan).unwrap().contains("virtiofsd"));
        assert!(volumes_ineligible(&old, &Plan::default()).is_none());
    }

    #[test]
    fn app_spec_is_what_a_cold_boot_gives() {
        let v = app_spec(&instance(), "arrow-1234");
        assert_eq!(
            v,
            json!({
                "app": "/app",
                "args": ["--n", "two words"],
                "env": ["A=1", "B=x y"],
                "hostname": "arrow-1234",
                "image_base": true,
                "upper": "tmpfs",
            })
        );
    }

    #[test]
    fn oversized_bases_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.erofs");
        std::fs::File::create(&small)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert!(base_too_large(&small).is_none());
        let big = dir.path().join("big.erofs");
        std::fs::File::create(&big)
            .unwrap()
            .set_len((SLOT_MIB << 20) + 1)
            .unwrap();
        assert!(base_too_large(&big).unwrap().contains("slot holds"));
        assert!(base_too_large(&dir.path().join("none")).is_some());
        assert_eq!(
            slot_path(Path::new("/s/templates"), "generic-abc"),
            Path::new("/s/templates/generic-abc.slot")
        );
    }
}
