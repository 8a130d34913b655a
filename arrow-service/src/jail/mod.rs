//! The jail arrowd puts around every arrow-vmm it starts (docs/security.md):
//! arrowd runs `arrow-jailer` with a [`JailSpec`] naming exactly what the VMM
//! may see; the jailer builds the namespaces and the per-instance root, drops
//! to an unprivileged uid and execs arrow-vmm (src/bin/arrow-jailer).
//!
//! This module decides, once at startup, whether and how VMMs are jailed, and
//! turns each VMM command line into the jailer's.

pub mod libs;
pub mod owner;
pub mod paths;
pub mod snapshot;
pub mod spec;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use paths::{vmm_paths, VmmPaths};
pub use spec::JailSpec;

/// Files in the run directory that stay arrowd's (the VMM may not replace them).
pub const KEPT_FILES: [&str; 4] = [
    crate::procfs::SPAWN_TOKEN_FILE,
    crate::supervisor::VMM_LOG,
    crate::volumes::virtiofsd::LOG,
    crate::volumes::record::FILE,
];

/// Why arrowd cannot jail its VMMs as configured.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("arrow-jailer not found at {0}: install it next to arrowd, pass --jailer PATH, or run with --jail=false (VMMs then run unjailed)")]
    NoJailer(PathBuf),
    #[error("--jail-user {0:?}: no such user or group (give USER[:GROUP] names or numbers)")]
    NoUser(String),
    #[error("--jail-user {0:?} is root: a jailed VMM must run unprivileged; give another user")]
    RootUser(String),
    #[error("cannot find the files arrow-vmm needs to run in a jail: {0}")]
    Libs(#[from] libs::LibsError),
    #[error("cannot create the jail mount point {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// arrowd's jail settings (its command line).
#[derive(Debug, Clone)]
pub struct JailOptions {
    /// Jail at all.
    pub enabled: bool,
    /// The arrow-jailer binary.
    pub jailer: PathBuf,
    /// `USER[:GROUP]`, names or numbers; `None`: the user `arrow` if it exists, else 65534.
    pub user: Option<String>,
    /// RLIMIT_NOFILE of a jailed VMM.
    pub max_files: u64,
    /// RLIMIT_FSIZE of a jailed VMM, MiB.
    pub max_file_mib: u64,
}

/// The user a jailed VMM runs as when none is configured and `arrow` does not exist.
pub const FALLBACK_ID: u32 = 65534;

/// How arrowd starts VMMs: jailed or not.
#[derive(Debug, Clone, Default)]
pub struct Jail {
    active: Option<Active>,
}

#[derive(Debug, Clone)]
struct Active {
    jailer: PathBuf,
    uid: u32,
    gid: u32,
    root: PathBuf,
    /// The VMM binary and its loader/libraries.
    exec: Vec<PathBuf>,
    /// Read-only in every jail (host facts arrow-vmm reads, e.g. /sys/module/kvm_pvm).
    common_ro: Vec<PathBuf>,
    /// Read-only in pooled VMMs' jails: the store's blobs (image bases come later).
    pooled_ro: Vec<PathBuf>,
    max_files: u64,
    max_file_bytes: u64,
}

impl Jail {
    /// VMMs run unjailed.
    pub fn disabled() -> Jail {
        Jail { active: None }
    }

    /// Decides how VMMs are jailed; logs once what is not available. Errors are
    /// the cases where going on would quietly give less isolation than asked.
    pub fn init(
        opts: &JailOptions,
        vmm: &Path,
        state_dir: &Path,
        store_blobs: &Path,
    ) -> Result<Jail, JailError> {
        if !opts.enabled {
            tracing::warn!("--jail=false: arrow-vmm processes run unjailed, as arrowd's user in its namespaces");
            return Ok(Jail::disabled());
        }
        if !nix::unistd::geteuid().is_root() {
            tracing::warn!(
                "the VMM jail needs root (namespaces, mounts, a uid change) and arrowd runs as uid {}: arrow-vmm processes run unjailed as that user; run arrowd as root to jail them, or pass --jail=false to silence this",
                nix::unistd::geteuid()
            );
            return Ok(Jail::disabled());
        }
        if !opts.jailer.is_file() {
            return Err(JailError::NoJailer(opts.jailer.clone()));
        }
        let (uid, gid) = resolve_user(opts.user.as_deref())?;
        let vmm = std::fs::canonicalize(vmm).unwrap_or_else(|_| vmm.to_path_buf());
        let exec = libs::runtime_files(&vmm)?;
        let root = state_dir.join("jail");
        std::fs::create_dir_all(&root).map_err(|source| JailError::Root {
            path: root.clone(),
            source,
        })?;
        let common_ro = [Path::new("/sys/module/kvm_pvm")]
            .into_iter()
            .filter(|p| p.exists())
            .map(Path::to_path_buf)
            .collect();
        let mib = opts.max_file_mib;
        tracing::info!(
            uid,
            gid,
            max_files = opts.max_files,
            max_file_mib = mib,
            "arrow-vmm processes run jailed"
        );
        Ok(Jail {
            active: Some(Active {
                jailer: opts.jailer.clone(),
                uid,
                gid,
                root,
                exec,
                common_ro,
                pooled_ro: vec![store_blobs.to_path_buf()],
                max_files: opts.max_files,
                max_file_bytes: mib.saturating_mul(1 << 20),
            }),
        })
    }

    /// Whether VMMs are jailed.
    pub fn enabled(&self) -> bool {
        self.active.is_some()
    }

    /// The uid and gid of jailed VMMs.
    pub fn ids(&self) -> Option<(u32, u32)> {
        self.active.as_ref().map(|a| (a.uid, a.gid))
    }

    /// The program and arguments that start `vmm args` in `run_dir`: the
    /// jailer's when jailed (after giving the VMM its run directory and the
    /// `extra_rw` paths, e.g. the snapshot a template build writes), else the
    /// VMM's own.
    pub fn command(
        &self,
        vmm: &Path,
        args: Vec<OsString>,
        run_dir: &Path,
        extra_rw: &[PathBuf],
    ) -> std::io::Result<(PathBuf, Vec<OsString>)> {
        let Some(a) = &self.active else {
            return Ok((vmm.to_path_buf(), args));
        };
        let mut paths = vmm_paths(&args, run_dir);
        paths.rw.extend(extra_rw.iter().cloned());
        // A restored snapshot maps its pmem files again (a generic template's image
        // slot lives beside its snapshot directory, not in it).
        for dir in &paths.snapshots {
            for f in snapshot::backing_files(dir) {
                if f.writable {
                    paths.rw.push(f.path);
                } else {
                    paths.ro.push(f.path);
                }
            }
        }
        paths.ro.extend(a.common_ro.iter().cloned());
        if paths.pooled {
            paths.ro.extend(a.pooled_ro.iter().cloned());
        }
        paths.normalize();
        owner::prepare_run_dir(run_dir, a.uid, a.gid, &KEPT_FILES)?;
        for p in &paths.rw {
            if !p.starts_with(run_dir) {
                owner::give(p, a.uid, a.gid)?;
            }
        }
        let vmm = std::fs::canonicalize(vmm)?;
        let spec = JailSpec {
            uid: a.uid,
            gid: a.gid,
            root: a.root.clone(),
            exec: a.exec.clone(),
            ro: paths.ro,
            rw: paths.rw,
            dirs: paths.dirs,
            cwd: run_dir.to_path_buf(),
            max_files: a.max_files,
            max_file_bytes: a.max_file_bytes,
            vmm,
            vmm_args: args,
        };
        Ok((a.jailer.clone(), spec.to_args()))
    }
}

/// `USER[:GROUP]` (names or numbers) → uid, gid; none given: `arrow`, else 65534.
fn resolve_user(spec: Option<&str>) -> Result<(u32, u32), JailError> {
    use nix::unistd::{Group, User};
    let Some(spec) = spec else {
        return Ok(match User::from_name("arrow") {
            Ok(Some(u)) => (u.uid.as_raw(), u.gid.as_raw()),
            _ => {
                tracing::warn!(
                    "no user 'arrow' for jailed VMMs: they run as uid/gid {FALLBACK_ID} (nobody), shared with other software; create a dedicated user (useradd --system --no-create-home arrow) or pass --jail-user"
                );
                (FALLBACK_ID, FALLBACK_ID)
            }
        });
    };
    let no_user = || JailError::NoUser(spec.to_owned());
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, user_gid) = match user.parse::<u32>() {
        Ok(n) => (n, None),
        Err(_) => {
            let u = User::from_name(user).ok().flatten().ok_or_else(no_user)?;
            (u.uid.as_raw(), Some(u.gid.as_raw()))
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(no_user)?
                .gid
                .as_raw(),
        },
        None => user_gid.unwrap_or(uid),
    };
    if uid == 0 || gid == 0 {
        return Err(JailError::RootUser(spec.to_owned()));
    }
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(resolve_user(Some("1234")).unwrap(), (1234, 1234));
        assert_eq!(resolve_user(Some("1234:99")).unwrap(), (1234, 99));
        assert!(matches!(
            resolve_user(Some("root")),
            Err(JailError::RootUser(_))
        ));
        assert!(matches!(
            resolve_user(Some("0:5")),
            Err(JailError::RootUser(_))
        ));
        assert!(matches!(
            resolve_user(Some("no-such-user-here")),
            Err(JailError::NoUser(_))
        ));
        assert!(resolve_user(None).is_ok());
    }

    #[test]
    fn unjailed_command_is_the_vmm_itself() {
        let (prog, args) = Jail::disabled()
            .command(
                Path::new("/bin/vmm"),
                vec!["run".into()],
                Path::new("/r"),
                &[],
            )
            .unwrap();
        assert_eq!(prog, PathBuf::from("/bin/vmm"));
        assert_eq!(args, vec![OsString::from("run")]);
    }

    #[test]
    fn jailed_command_names_every_path() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: the jail needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let blobs = dir.path().join("blobs");
        let jailer = dir.path().join("arrow-jailer");
        std::fs::write(&jailer, "").unwrap();
        let me = std::env::current_exe().unwrap();
        let opts = JailOptions {
            enabled: true,
            jailer: jailer.clone(),
            user: Some("4321:4322".into()),
            max_files: 100,
            max_file_mib: 2,
        };
        let jail = Jail::init(&opts, &me, dir.path(), &blobs).unwrap();
        let snap = dir.path().join("templates/t1");
        std::fs::create_dir_all(&snap).unwrap();
        let args: Vec<OsString> = vec![
            "restore".into(),
            "--from".into(),
            "/t".into(),
            "--pool".into(),
        ];
        let (prog, jargs) = jail
            .command(&me, args.clone(), &run, std::slice::from_ref(&snap))
            .unwrap();
        assert_eq!(prog, jailer);
        let spec = JailSpec::parse(&jargs).unwrap();
        assert_eq!((spec.uid, spec.gid), (4321, 4322));
        assert_eq!(spec.vmm_args, args);
        assert!(spec.ro.contains(&PathBuf::from("/t")));
        assert!(
            spec.ro.contains(&blobs),
            "pooled VMMs see the store's blobs"
        );
        assert!(spec.rw.contains(&run) && spec.rw.contains(&snap));
        assert!(spec.exec.contains(&me));
        assert_eq!(spec.max_file_bytes, 2 << 20);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&snap).unwrap().uid(), 4321);
    }
}
