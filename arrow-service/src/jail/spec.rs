//! What `arrow-jailer` is asked to build, as its command line: arrowd encodes a
//! [`JailSpec`] with [`JailSpec::to_args`], the jailer decodes it with
//! [`JailSpec::parse`]. Both sides share this code, so they cannot drift apart.

use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};

/// A jail for one arrow-vmm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// Unprivileged uid the VMM runs as.
    pub uid: u32,
    /// Its gid (also its only supplementary group).
    pub gid: u32,
    /// An empty host directory on which the per-instance tmpfs root is mounted
    /// (inside the jail's own mount namespace, so the host never sees it).
    pub root: PathBuf,
    /// Read-only and executable: the VMM binary, its loader and libraries.
    pub exec: Vec<PathBuf>,
    /// Read-only data: kernel, initrd, image bases, template snapshots.
    pub ro: Vec<PathBuf>,
    /// Writable: the run directory (sockets, logs, report), snapshot targets.
    pub rw: Vec<PathBuf>,
    /// Empty directories made in the jail (paths that must exist, contents not needed).
    pub dirs: Vec<PathBuf>,
    /// The VMM's working directory (its run directory).
    pub cwd: PathBuf,
    /// RLIMIT_NOFILE.
    pub max_files: u64,
    /// RLIMIT_FSIZE in bytes.
    pub max_file_bytes: u64,
    /// The VMM binary (also in `exec`).
    pub vmm: PathBuf,
    /// Its arguments, unchanged: every path keeps its host name inside the jail.
    pub vmm_args: Vec<OsString>,
}

/// A malformed jailer command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("unknown option {0:?}: arrow-jailer is started by arrowd (see docs/security.md)")]
    Unknown(String),
    #[error("{flag}: {value:?} is not a number")]
    NotANumber { flag: String, value: String },
    #[error("{flag}: {path:?} must be an absolute path without '.' or '..'")]
    BadPath { flag: String, path: PathBuf },
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("--uid/--gid 0: a jailed VMM never runs as root; give an unprivileged uid and gid")]
    Root,
    #[error("--cwd {0:?} is not one of the writable paths (--rw)")]
    CwdNotWritable(PathBuf),
    #[error("no VMM command after --")]
    NoCommand,
}

/// Absolute, and no `.`/`..` that could lead the bind mount elsewhere.
pub fn is_plain_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

impl JailSpec {
    /// The jailer's arguments (without argv\[0\]).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--root".into(),
            self.root.clone().into(),
        ];
        for (flag, list) in [
            ("--exec", &self.exec),
            ("--ro", &self.ro),
            ("--rw", &self.rw),
            ("--dir", &self.dirs),
        ] {
            for p in list {
                a.push(flag.into());
                a.push(p.clone().into());
            }
        }
        a.extend([
            "--cwd".into(),
            self.cwd.clone().into(),
            "--max-files".into(),
            self.max_files.to_string().into(),
            "--max-file-size".into(),
            self.max_file_bytes.to_string().into(),
            "--".into(),
            self.vmm.clone().into(),
        ]);
        a.extend(self.vmm_args.iter().cloned());
        a
    }

    /// Parses the jailer's arguments (without argv\[0\]).
    pub fn parse(args: &[OsString]) -> Result<JailSpec, SpecError> {
        let mut uid = None;
        let mut gid = None;
        let mut root = None;
        let mut cwd = None;
        let (mut exec, mut ro, mut rw, mut dirs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut max_files = None;
        let mut max_file_bytes = None;
        let mut it = args.iter();
        let mut command = None;
        while let Some(flag) = it.next() {
            let name = flag.to_string_lossy().into_owned();
            if name == "--" {
                command = Some(it.as_slice());
                break;
            }
            let value = it
                .next()
                .ok_or_else(|| SpecError::MissingValue(name.clone()))?;
            let num = |v: &OsStr| {
                v.to_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| SpecError::NotANumber {
                        flag: name.clone(),
                        value: v.to_string_lossy().into_owned(),
                    })
            };
            let path = |v: &OsStr| {
                let p = PathBuf::from(v);
                if is_plain_absolute(&p) {
                    Ok(p)
                } else {
                    Err(SpecError::BadPath {
                        flag: name.clone(),
                        path: p,
                    })
                }
            };
            let id = |v: &OsStr| {
                u32::try_from(num(v)?).map_err(|_| SpecError::NotANumber {
                    flag: name.clone(),
                    value: v.to_string_lossy().into_owned(),
                })
            };
            match name.as_str() {
                "--uid" => uid = Some(id(value)?),
                "--gid" => gid = Some(id(value)?),
                "--root" => root = Some(path(value)?),
                "--cwd" => cwd = Some(path(value)?),
                "--exec" => exec.push(path(value)?),
                "--ro" => ro.push(path(value)?),
                "--rw" => rw.push(path(value)?),
                "--dir" => dirs.push(path(value)?),
                "--max-files" => max_files = Some(num(value)?),
                "--max-file-size" => max_file_bytes = Some(num(value)?),
                _ => return Err(SpecError::Unknown(name)),
            }
        }
        let command = command.ok_or(SpecError::NoCommand)?;
        let (vmm, vmm_args) = command.split_first().ok_or(SpecError::NoCommand)?;
        let (uid, gid) = (
            uid.ok_or(SpecError::Missing("--uid"))?,
            gid.ok_or(SpecError::Missing("--gid"))?,
        );
        if uid == 0 || gid == 0 {
            return Err(SpecError::Root);
        }
        let cwd = cwd.ok_or(SpecError::Missing("--cwd"))?;
        if !rw.iter().any(|d| cwd.starts_with(d)) {
            return Err(SpecError::CwdNotWritable(cwd));
        }
        let vmm = PathBuf::from(vmm);
        if !is_plain_absolute(&vmm) {
            return Err(SpecError::BadPath {
                flag: "the VMM command".into(),
                path: vmm,
            });
        }
        Ok(JailSpec {
            uid,
            gid,
            root: root.ok_or(SpecError::Missing("--root"))?,
            exec,
            ro,
            rw,
            dirs,
            cwd,
            max_files: max_files.ok_or(SpecError::Missing("--max-files"))?,
            max_file_bytes: max_file_bytes.ok_or(SpecError::Missing("--max-file-size"))?,
            vmm,
            vmm_args: vmm_args.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JailSpec {
        JailSpec {
            uid: 1000,
            gid: 1001,
            root: "/var/lib/arrow/jail".into(),
            exec: vec![
                "/usr/bin/arrow-vmm".into(),
                "/lib64/ld-linux-x86-64.so.2".into(),
            ],
            ro: vec!["/k/vmlinux".into()],
            rw: vec!["/var/lib/arrow/instances/abc".into()],
            dirs: vec!["/var/lib/arrow/templates".into()],
            cwd: "/var/lib/arrow/instances/abc".into(),
            max_files: 4096,
            max_file_bytes: 1 << 30,
            vmm: "/usr/bin/arrow-vmm".into(),
            vmm_args: vec!["run".into(), "--rw".into(), "--".into()],
        }
    }

    #[test]
    fn round_trip_keeps_vmm_arguments_verbatim() {
        let s = spec();
        assert_eq!(JailSpec::parse(&s.to_args()).unwrap(), s);
    }

    #[test]
    fn refuses_what_would_weaken_the_jail() {
        let mut s = spec();
        s.uid = 0;
        assert_eq!(JailSpec::parse(&s.to_args()), Err(SpecError::Root));
        let mut s = spec();
        s.ro.push("/k/../etc".into());
        assert!(matches!(
            JailSpec::parse(&s.to_args()),
            Err(SpecError::BadPath { .. })
        ));
        let mut s = spec();
        s.rw.push("relative".into());
        assert!(matches!(
            JailSpec::parse(&s.to_args()),
            Err(SpecError::BadPath { .. })
        ));
        let mut s = spec();
        s.cwd = "/elsewhere".into();
        assert!(matches!(
            JailSpec::parse(&s.to_args()),
            Err(SpecError::CwdNotWritable(_))
        ));
        let a: Vec<OsString> = vec!["--uid".into()];
        assert_eq!(
            JailSpec::parse(&a),
            Err(SpecError::MissingValue("--uid".into()))
        );
        let a: Vec<OsString> = vec!["--bogus".into(), "1".into(), "--".into(), "/x".into()];
        assert!(matches!(JailSpec::parse(&a), Err(SpecError::Unknown(_))));
        let mut a = spec().to_args();
        a.truncate(a.len() - 4);
        assert_eq!(JailSpec::parse(&a), Err(SpecError::NoCommand));
    }
}
