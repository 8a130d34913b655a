//! The rule, applied at each start: a **read-only** volume is packed while the pack stays
//! within [`pack::MAX_BYTES`] and [`pack::MAX_ENTRIES`] (volumes in the order given);
//! every other volume — writable, or a read-only directory that no longer fits — is an
//! **fs** volume served by virtiofsd. A read-only *file* that does not fit is an error
//! (virtiofsd shares directories, and sharing the file's directory would show its
//! neighbours). Pack IDs are the volumes' indexes; fs tags are `vol0`, `vol1`, … in order,
//! which are also the tags of a generic template's fs slots.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::pack::{self, Budget, CopyError};
use super::spec::{Volume, MAX_FS_VOLUMES};

/// The pack file in an instance's run directory.
pub const PACK_FILE: &str = "volumes.erofs";

/// How a volume reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// In the per-instance EROFS pack.
    Pack,
    /// Live, through virtiofsd and a vhost-user-fs device.
    Fs,
}

impl Kind {
    /// Name on the guest command line and in the app spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pack => "pack",
            Kind::Fs => "fs",
        }
    }
}

/// A volume and how it is given to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The volume.
    pub volume: Volume,
    /// Pack or fs.
    pub kind: Kind,
    /// Pack: the top-level entry's name; fs: the virtio-fs tag.
    pub id: String,
}

impl Placed {
    /// `KIND:ID:MODE:PATH`, as the guest takes it (`arrow.vol=` and the app spec ABI).
    pub fn guest_spec(&self) -> String {
        let mode = if self.volume.read_only { "ro" } else { "rw" };
        format!(
            "{}:{}:{mode}:{}",
            self.kind.as_str(),
            self.id,
            self.volume.guest_path
        )
    }
}

/// An instance's volumes for one start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every volume, in the order given.
    pub placed: Vec<Placed>,
    /// The pack (in the run directory), when some volume is packed.
    pub pack: Option<PathBuf>,
    /// Its size in bytes.
    pub pack_size: u64,
}

/// Why the volumes cannot be given to the guest.
pub type PlanError = String;

impl Plan {
    /// Applies the rule: copies the read-only volumes that fit into a pack made in
    /// `staging_parent` (a directory only arrowd writes) and moved to `run_dir/`[`PACK_FILE`].
    pub fn make(
        volumes: &[Volume],
        run_dir: &Path,
        staging_parent: &Path,
    ) -> Result<Plan, PlanError> {
        Self::make_with(
            volumes,
            run_dir,
            staging_parent,
            Budget::new(pack::MAX_BYTES, pack::MAX_ENTRIES),
        )
    }

    /// [`Plan::make`] with the given budget (tests use small ones).
    pub fn make_with(
        volumes: &[Volume],
        run_dir: &Path,
        staging_parent: &Path,
        mut budget: Budget,
    ) -> Result<Plan, PlanError> {
        let mut plan = Plan::default();
        let _ = std::fs::remove_file(run_dir.join(PACK_FILE));
        if volumes.is_empty() {
            return Ok(plan);
        }
        let staging = Staging::new(staging_parent, run_dir)?;
        let tree = staging.path().join("tree");
        std::fs::create_dir(&tree).map_err(|e| format!("cannot make {}: {e}", tree.display()))?;
        let mut fs_count = 0;
        let mut packed = 0;
        for (i, v) in volumes.iter().enumerate() {
            let mut kind = Kind::Fs;
            if v.read_only {
                let dst = tree.join(i.to_string());
                let before = budget.clone();
                match pack::copy_volume(Path::new(&v.host_path), &dst, &mut budget) {
                    Ok(()) => kind = Kind::Pack,
                    Err(CopyError::Overflow) => {
                        budget = before;
                        remove_any(&dst);
                        if !Path::new(&v.host_path).is_dir() {
                            return Err(format!(
                                "read-only file volume {} does not fit in the volume pack ({} MiB and {} entries for all read-only volumes): share its directory instead",
                                v.host_path,
                                pack::MAX_BYTES >> 20,
                                pack::MAX_ENTRIES
                            ));
                        }
                        tracing::info!(host = %v.host_path, "read-only volume too large to pack: served by virtiofsd");
                    }
                    Err(CopyError::Io(e)) => return Err(format!("volume {}: {e}", v.host_path)),
                }
            }
            let id = match kind {
                Kind::Pack => {
                    packed += 1;
                    i.to_string()
                }
                Kind::Fs => {
                    fs_count += 1;
                    format!("vol{}", fs_count - 1)
                }
            };
            plan.placed.push(Placed {
                volume: v.clone(),
                kind,
                id,
            });
        }
        if fs_count > MAX_FS_VOLUMES {
            return Err(format!(
                "{fs_count} volumes need virtiofsd (writable ones, and read-only directories too large to pack); at most {MAX_FS_VOLUMES} can: make volumes smaller or fewer"
            ));
        }
        if packed > 0 {
            let img = staging.path().join(PACK_FILE);
            plan.pack_size = pack::mkfs(&tree, &img).map_err(|e| e.to_string())?;
            let dst = run_dir.join(PACK_FILE);
            // A rename replaces whatever is there without following it.
            std::fs::rename(&img, &dst)
                .map_err(|e| format!("cannot move the volume pack to {}: {e}", dst.display()))?;
            plan.pack = Some(dst);
        }
        Ok(plan)
    }

    /// Whether any volume is served by virtiofsd.
    pub fn has_fs(&self) -> bool {
        self.placed.iter().any(|p| p.kind == Kind::Fs)
    }

    /// The fs volumes.
    pub fn fs(&self) -> impl Iterator<Item = &Placed> {
        self.placed.iter().filter(|p| p.kind == Kind::Fs)
    }

    /// Guest kernel parameters for a cold boot whose pack is `/dev/pmem<pack_index>`.
    pub fn kernel_params(&self, pack_index: usize) -> Vec<String> {
        let mut out = Vec::new();
        if self.pack.is_some() {
            out.push(format!("arrow.volpack=/dev/pmem{pack_index}"));
        }
        out.extend(
            self.placed
                .iter()
                .map(|p| format!("arrow.vol={}", p.guest_spec())),
        );
        out
    }

    /// arrow-vmm arguments for a cold boot (after its root's `--pmem` devices):
    /// `--pmem PACK,ro` and one `--fs TAG=SOCKET` per fs volume (`sockets` in order).
    pub fn vmm_args(&self, sockets: &[PathBuf]) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        if let Some(p) = &self.pack {
            out.push("--pmem".into());
            out.push(format!("{},ro", p.display()).into());
        }
        for (p, s) in self.fs().zip(sockets) {
            out.push("--fs".into());
            out.push(format!("{}={}", p.id, s.display()).into());
        }
        out
    }

    /// The `volumes` of an app spec (generic-template clones, ABI v2).
    pub fn app_volumes(&self) -> Value {
        Value::Array(
            self.placed
                .iter()
                .map(|p| {
                    json!({
                        "kind": p.kind.as_str(),
                        "id": p.id,
                        "read_only": p.volume.read_only,
                        "path": p.volume.guest_path,
                    })
                })
                .collect(),
        )
    }
}

/// A directory only arrowd writes, removed when dropped.
struct Staging(PathBuf);

impl Staging {
    fn new(parent: &Path, run_dir: &Path) -> Result<Staging, PlanError> {
        let name = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!(".volumes-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .recursive(false)
            .create(&dir)
            .map_err(|e| format!("cannot make the staging directory {}: {e}", dir.display()))?;
        Ok(Staging(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn remove_any(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// Longest `arrow.vol=` parameters a volume may add to the command line (with the one
/// `arrow.volpack=/dev/pmemN`): what create reserves so that a start never runs out.
pub fn max_params_len(volumes: &[Volume]) -> usize {
    if volumes.is_empty() {
        return 0;
    }
    // "arrow.vol=pack:15:ro:" is shorter than "arrow.vol=fs:vol7:rw:".
    let per = " arrow.vol=fs:vol7:rw:".len();
    " arrow.volpack=/dev/pmem9".len()
        + volumes
            .iter()
            .map(|v| per + v.guest_path.len())
            .sum::<usize>()
}

/// `cmdline` with `params` before the app's part (`arrow.app=…`), where ainit's other
/// parameters are.
pub fn insert_params(cmdline: &str, params: &[String]) -> String {
    if params.is_empty() {
        return cmdline.to_owned();
    }
    let joined = params.join(" ");
    match cmdline.find(" arrow.app=") {
        Some(at) => format!("{} {joined}{}", &cmdline[..at], &cmdline[at..]),
        None => format!("{joined} {cmdline}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::spec::tests::vol;

    #[test]
    fn read_only_volumes_are_packed_and_the_rest_served_live() {
        let dir = tempfile::tempdir().unwrap();
        let (run, stage) = (dir.path().join("run"), dir.path().join("stage"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(&stage).unwrap();
        let cfg = dir.path().join("cfg");
        std::fs::create_dir(&cfg).unwrap();
        std::fs::write(cfg.join("k"), "v").unwrap();
        let big = dir.path().join("big");
        std::fs::create_dir(&big).unwrap();
        std::fs::write(big.join("blob"), vec![0u8; 64 << 10]).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "secret").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let vols = [
            vol(&cfg, "/etc/cfg", true),
            vol(&data, "/data", false),
            vol(&big, "/big", true),
            vol(&token, "/run/token", true),
        ];
        let plan = Plan::make_with(&vols, &run, &stage, Budget::new(32 << 10, 100)).unwrap();
        let kinds: Vec<(Kind, &str)> = plan
            .placed
            .iter()
            .map(|p| (p.kind, p.id.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (Kind::Pack, "0"),
                (Kind::Fs, "vol0"),
                (Kind::Fs, "vol1"),
                (Kind::Pack, "3")
            ]
        );
        let pack = plan.pack.clone().unwrap();
        assert_eq!(pack, run.join(PACK_FILE));
        assert_eq!(std::fs::metadata(&pack).unwrap().len(), plan.pack_size);
        // Nothing is left in the staging directory.
        assert_eq!(std::fs::read_dir(&stage).unwrap().count(), 0);
        assert_eq!(
            plan.kernel_params(1),
            [
                "arrow.volpack=/dev/pmem1",
                "arrow.vol=pack:0:ro:/etc/cfg",
                "arrow.vol=fs:vol0:rw:/data",
                "arrow.vol=fs:vol1:ro:/big",
                "arrow.vol=pack:3:ro:/run/token",
            ]
        );
        let socks = [run.join("fs-vol0.sock"), run.join("fs-vol1.sock")];
        let args: Vec<String> = plan
            .vmm_args(&socks)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--pmem".to_owned(),
                format!("{},ro", pack.display()),
                "--fs".into(),
                format!("vol0={}", socks[0].display()),
                "--fs".into(),
                format!("vol1={}", socks[1].display()),
            ]
        );
        assert_eq!(
            plan.app_volumes()[1],
            json!({"kind": "fs", "id": "vol0", "read_only": false, "path": "/data"})
        );
        // A read-only file that does not fit is refused with the reason.
        let big_file = big.join("blob");
        let e = Plan::make_with(
            &[vol(&big_file, "/f", true)],
            &run,
            &stage,
            Budget::new(32 << 10, 100),
        )
        .unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        // No volumes: no pack, and a stale pack of an earlier start is gone.
        let none = Plan::make(&[], &run, &stage).unwrap();
        assert_eq!(none, Plan::default());
        assert!(!run.join(PACK_FILE).exists());
    }

    #[test]
    fn too_many_volumes_for_virtiofsd() {
        let dir = tempfile::tempdir().unwrap();
        let vols: Vec<Volume> = (0..=MAX_FS_VOLUMES)
            .map(|i| vol(dir.path(), &format!("/d{i}"), true))
            .collect();
        // Nothing fits the pack: every read-only directory would need virtiofsd.
        let e = Plan::make_with(&vols, dir.path(), dir.path(), Budget::new(0, 0)).unwrap_err();
        assert!(e.contains("at most 8"), "{e}");
    }

    #[test]
    fn params_go_before_the_app() {
        let c = "console=ttyS0 arrow.hostname=a arrow.base=/dev/pmem0 arrow.app=/app K=V -- x";
        assert_eq!(
            insert_params(c, &["arrow.vol=fs:vol0:rw:/d".into()]),
            "console=ttyS0 arrow.hostname=a arrow.base=/dev/pmem0 arrow.vol=fs:vol0:rw:/d arrow.app=/app K=V -- x"
        );
        assert_eq!(insert_params(c, &[]), c);
        let v = [Volume {
            host_path: "/h".into(),
            guest_path: "/data".into(),
            read_only: false,
        }];
        assert!(max_params_len(&v) >= " arrow.volpack=/dev/pmem1 arrow.vol=fs:vol0:rw:/data".len());
        assert_eq!(max_params_len(&[]), 0);
    }
}
