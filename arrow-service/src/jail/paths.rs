//! Which host paths a VMM needs, read from the arguments arrowd gives it: files
//! it reads (kernel, initrd, read-only pmem, image base, app spec, template
//! snapshot) are bound read-only; its run directory (its working directory:
//! sockets, console.log, report.json, core dumps) and read-write pmem files are
//! writable. Every path keeps its host name in the jail, so the arguments need
//! no rewriting.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The paths a VMM's arguments name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmmPaths {
    /// Read-only.
    pub ro: Vec<PathBuf>,
    /// Writable.
    pub rw: Vec<PathBuf>,
    /// Directories that must exist but whose contents are not needed (made
    /// empty in the jail): `--snapshot-dir`, which arrow-vmm resolves at start;
    /// the one snapshot it may write is given writable by the caller.
    pub dirs: Vec<PathBuf>,
    /// Snapshot directories it restores from (`--from`; also in `ro`).
    pub snapshots: Vec<PathBuf>,
    /// Whether it is a pooled VMM (`restore --pool`): it is given an image base
    /// over its control API later, so it needs the image store's blobs.
    pub pooled: bool,
}

/// Flags whose value is a file or directory the VMM only reads.
const READ_FLAGS: [&str; 6] = [
    "--kernel",
    "--initrd",
    "--image-base",
    "--volumes-base",
    "--app-spec",
    "--from",
];
/// Flags whose value is a file the VMM creates or writes (its directory must be writable).
const WRITE_FILE_FLAGS: [&str; 4] = ["--console", "--report", "--api-sock", "--vsock-uds"];

/// The paths named by `args` (arrow-vmm's arguments, run in `run_dir`).
pub fn vmm_paths(args: &[OsString], run_dir: &Path) -> VmmPaths {
    let abs = |v: &OsString| {
        let p = Path::new(v);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            run_dir.join(p)
        }
    };
    let mut out = VmmPaths {
        rw: vec![run_dir.to_path_buf()],
        ..VmmPaths::default()
    };
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].to_string_lossy();
        // `--flag=value` or `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(OsString::from(v))),
            _ => (arg.into_owned(), None),
        };
        if flag == "--pool" {
            out.pooled = true;
        }
        let takes_value = READ_FLAGS.contains(&flag.as_str())
            || WRITE_FILE_FLAGS.contains(&flag.as_str())
            || flag == "--pmem"
            || flag == "--fs"
            || flag == "--core-dir"
            || flag == "--snapshot-dir";
        if !takes_value {
            i += 1;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                match args.get(i) {
                    Some(v) => v.clone(),
                    None => break,
                }
            }
        };
        i += 1;
        if READ_FLAGS.contains(&flag.as_str()) {
            if flag == "--from" {
                out.snapshots.push(abs(&value));
            }
            out.ro.push(abs(&value));
        } else if WRITE_FILE_FLAGS.contains(&flag.as_str()) {
            if let Some(dir) = abs(&value).parent() {
                out.rw.push(dir.to_path_buf());
            }
        } else if flag == "--snapshot-dir" {
            out.dirs.push(abs(&value));
        } else if flag == "--core-dir" {
            out.rw.push(abs(&value));
        } else if flag == "--fs" {
            // --fs TAG=SOCKET: the VMM connects to the socket (virtiofsd listens there);
            // connecting needs write access to it.
            if let Some((_, sock)) = value.to_string_lossy().split_once('=') {
                out.rw.push(abs(&sock.into()));
            }
        } else {
            // --pmem PATH[,ro|rw] (read-only by default).
            let v = value.to_string_lossy();
            match v.rsplit_once(',') {
                Some((p, "rw")) => out.rw.push(abs(&p.into())),
                Some((p, "ro")) => out.ro.push(abs(&p.into())),
                _ => out.ro.push(abs(&value)),
            }
        }
    }
    out.normalize();
    out
}

impl VmmPaths {
    /// Sorted, without duplicates, without anything a writable directory
    /// already covers; a path both read and written is writable.
    pub fn normalize(&mut self) {
        self.rw.sort();
        self.rw.dedup();
        let rw = self.rw.clone();
        self.rw
            .retain(|p| !rw.iter().any(|d| d != p && p.starts_with(d)));
        let rw = self.rw.clone();
        self.ro.sort();
        self.ro.dedup();
        self.ro.retain(|p| !rw.iter().any(|d| p.starts_with(d)));
        self.dirs.sort();
        self.dirs.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn cold_boot_with_shadowfs() {
        let run = Path::new("/s/instances/abc");
        let a = args(&[
            "run",
            "--kernel",
            "/k/vmlinux",
            "--pmem",
            "/store/blobs/sha256/aa,ro",
            "--pmem",
            "/s/instances/abc/upper.img,rw",
            "--cmdline",
            "console=ttyS0 --kernel /not/a/path",
            "--vsock-uds",
            "vsock.sock",
            "--console",
            "/s/instances/abc/console.log",
            "--report",
            "/s/instances/abc/report.json",
            "--api-sock",
            "api.sock",
        ]);
        let p = vmm_paths(&a, run);
        assert_eq!(p.ro, paths(&["/k/vmlinux", "/store/blobs/sha256/aa"]));
        assert_eq!(p.rw, paths(&["/s/instances/abc"]));
        assert!(!p.pooled);
    }

    #[test]
    fn volumes_pack_and_fs_sockets() {
        let run = Path::new("/s/instances/abc");
        let a = args(&[
            "run",
            "--pmem",
            "/store/base,ro",
            "--pmem",
            "/s/instances/abc/volumes.erofs,ro",
            "--fs",
            "vol0=fs-vol0.sock",
            "--fs",
            "vol1=/elsewhere/v1.sock",
        ]);
        let p = vmm_paths(&a, run);
        // The pack and the first socket are in the run directory, already writable.
        assert_eq!(p.ro, paths(&["/store/base"]));
        assert_eq!(p.rw, paths(&["/elsewhere/v1.sock", "/s/instances/abc"]));
        let p = vmm_paths(
            &args(&[
                "restore",
                "--from",
                "/t",
                "--clone",
                "--volumes-base",
                "/v/pack.erofs",
            ]),
            run,
        );
        assert_eq!(p.ro, paths(&["/t", "/v/pack.erofs"]));
    }

    #[test]
    fn initrd_and_pmem_default_and_inline_values() {
        let p = vmm_paths(
            &args(&["run", "--kernel=/k", "--initrd", "/i", "--pmem", "/p"]),
            Path::new("/r"),
        );
        assert_eq!(p.ro, paths(&["/i", "/k", "/p"]));
        assert_eq!(p.rw, paths(&["/r"]));
    }

    #[test]
    fn pooled_restore_and_generic_clone() {
        let p = vmm_paths(
            &args(&[
                "restore",
                "--from",
                "/s/templates/t1",
                "--clone",
                "--pool",
                "--vsock-uds",
                "vsock.sock",
            ]),
            Path::new("/s/instances/x"),
        );
        assert_eq!(p.ro, paths(&["/s/templates/t1"]));
        assert!(p.pooled);
        let p = vmm_paths(
            &args(&[
                "restore",
                "--from",
                "/s/templates/t1",
                "--app-spec",
                "/s/instances/x/app-spec.json",
                "--image-base",
                "/store/blobs/sha256/bb",
            ]),
            Path::new("/s/instances/x"),
        );
        assert_eq!(p.ro, paths(&["/s/templates/t1", "/store/blobs/sha256/bb"]));
        assert_eq!(p.rw, paths(&["/s/instances/x"]));
    }

    #[test]
    fn template_build_and_core_dumps() {
        let p = vmm_paths(
            &args(&[
                "run",
                "--kernel",
                "/k",
                "--snapshot-dir",
                "/s/templates",
                "--core-dir",
                "/s/templates/.build/t1",
                "--report",
                "/elsewhere/report.json",
            ]),
            Path::new("/s/templates/.build/t1"),
        );
        assert_eq!(p.ro, paths(&["/k"]));
        assert_eq!(p.dirs, paths(&["/s/templates"]));
        assert_eq!(p.rw, paths(&["/elsewhere", "/s/templates/.build/t1"]));
    }

    #[test]
    fn a_value_missing_at_the_end_is_ignored() {
        let p = vmm_paths(&args(&["run", "--kernel"]), Path::new("/r"));
        assert!(p.ro.is_empty());
    }
}
