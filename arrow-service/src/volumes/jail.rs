//! What arrowd puts around each virtiofsd on top of virtiofsd's own sandbox
//! (docs/security.md, "virtiofsd"): the instance's cgroup, new IPC, UTS and
//! cgroup namespaces, `no_new_privs`, and limits. virtiofsd keeps root (it
//! creates files with the guest's uids), so it is not behind arrow-jailer.
//!
//! Limits, and why:
//! - RLIMIT_NOFILE (`--virtiofsd-max-files`, default [`DEFAULT_MAX_FILES`]):
//!   virtiofsd holds a descriptor per inode the guest has looked up and not
//!   forgotten, so a guest walking a huge tree could otherwise pin up to a
//!   million (virtiofsd's own default). Past the limit the guest's lookups fail
//!   with EMFILE; nothing else on the host is affected. virtiofsd is told the
//!   same number (`--rlimit-nofile`), so it does not try to raise it.
//! - RLIMIT_CORE 0: a core dump of virtiofsd holds guest memory (it maps all
//!   of guest RAM).
//! - No RLIMIT_FSIZE: a writable volume legitimately holds files of any size
//!   (a database, an upload), and the limit would also cover virtiofsd's own
//!   log on stderr, where going past it raises SIGXFSZ and kills virtiofsd.
//!   The volume's space is bounded by the host filesystem it lives on.

use std::ffi::CString;
use std::path::Path;

/// Default RLIMIT_NOFILE of a virtiofsd.
pub const DEFAULT_MAX_FILES: u64 = 65536;

/// Host memory added to the instance's cgroup limit per virtiofsd, MiB (a
/// virtiofsd's RSS is ~7 MiB, docs/benchmarks.md; the rest is room for the
/// page cache of what it writes, which is charged to the instance too).
pub const OVERHEAD_MIB: u64 = 16;

/// The namespaces a virtiofsd gets from arrowd, with their /proc/self/ns names.
const NAMESPACES: [(libc::c_int, &str); 3] = [
    (libc::CLONE_NEWIPC, "ipc"),
    (libc::CLONE_NEWUTS, "uts"),
    (libc::CLONE_NEWCGROUP, "cgroup"),
];

/// How arrowd starts each virtiofsd: decided once at startup.
#[derive(Debug, Clone)]
pub struct VfsJail {
    /// `CLONE_NEW*` flags for unshare(2) between fork and exec.
    namespaces: libc::c_int,
    max_files: u64,
}

impl VfsJail {
    /// Decides what virtiofsd gets on this host; says once what it cannot get.
    pub fn init(max_files: u64) -> VfsJail {
        let root = nix::unistd::geteuid().is_root();
        let mut namespaces = 0;
        let mut missing = Vec::new();
        for (flag, name) in NAMESPACES {
            if root && Path::new("/proc/self/ns").join(name).exists() {
                namespaces |= flag;
            } else {
                missing.push(name);
            }
        }
        if !missing.is_empty() {
            let why = if root {
                "the host kernel does not have them".to_owned()
            } else {
                format!(
                    "creating them needs root and arrowd runs as uid {}",
                    nix::unistd::geteuid()
                )
            };
            tracing::warn!(
                "virtiofsd processes run without new {} namespaces: {why}; they still get virtiofsd's own sandbox, no_new_privs and limits",
                missing.join("/")
            );
        }
        let max_files = match hard_nofile() {
            Some(hard) if max_files > hard && !has_cap_sys_resource() => {
                tracing::warn!(
                    "virtiofsd processes get at most {hard} open files, not {max_files}: that is arrowd's own hard RLIMIT_NOFILE, and raising it needs CAP_SYS_RESOURCE, which arrowd lacks; raise arrowd's limit (LimitNOFILE= in its unit) or lower --virtiofsd-max-files to silence this"
                );
                hard
            }
            _ => max_files,
        }
        .max(1);
        tracing::info!(
            max_files,
            namespaces = namespaces != 0,
            "virtiofsd processes get no_new_privs, RLIMIT_NOFILE {max_files}, no core dumps, and their instance's cgroup where it has one"
        );
        VfsJail {
            namespaces,
            max_files,
        }
    }

    /// RLIMIT_NOFILE of each virtiofsd (also its `--rlimit-nofile`).
    pub fn max_files(&self) -> u64 {
        self.max_files
    }

    /// Whether virtiofsd gets new namespaces.
    pub fn namespaces(&self) -> bool {
        self.namespaces != 0
    }

    /// Between fork and exec of virtiofsd: join the instance's cgroup (its
    /// `cgroup.procs` path), then the new namespaces (the cgroup namespace's root is
    /// then the instance's cgroup), limits and `no_new_privs`. Only
    /// async-signal-safe calls (plain system calls, no allocation).
    pub fn enter_in_child(&self, cgroup_procs: Option<&CString>) -> std::io::Result<()> {
        if let Some(procs) = cgroup_procs {
            crate::cgroup::join_in_child(procs)?;
        }
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: unshare, setrlimit and prctl are single system calls on values
        // (and a stack struct); none allocates or takes a lock, so they are safe
        // between fork and exec.
        unsafe {
            if self.namespaces != 0 {
                check(libc::unshare(self.namespaces))?;
            }
            let files = libc::rlimit {
                rlim_cur: self.max_files,
                rlim_max: self.max_files,
            };
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &files))?;
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(libc::setrlimit(libc::RLIMIT_CORE, &none))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

/// arrowd's own hard RLIMIT_NOFILE.
fn hard_nofile() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r.rlim_max)
}

/// CAP_SYS_RESOURCE's bit (linux/capability.h).
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether arrowd may raise hard limits (CAP_SYS_RESOURCE in its effective set).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn status_field(text: &str, key: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// A real child gets no_new_privs, the limits and (as root) its own IPC, UTS and
    /// cgroup namespaces.
    #[test]
    fn a_child_is_jailed() {
        let jail = VfsJail::init(1234);
        assert_eq!(jail.max_files(), 1234);
        // Above arrowd's own hard limit only with CAP_SYS_RESOURCE.
        let hard = hard_nofile().unwrap();
        let high = VfsJail::init(hard + 1).max_files();
        assert_eq!(
            high,
            if has_cap_sys_resource() {
                hard + 1
            } else {
                hard
            }
        );
        let j = jail.clone();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "cat /proc/self/status /proc/self/limits; readlink /proc/self/ns/ipc /proc/self/ns/uts",
        ]);
        // SAFETY: the closure only makes system calls (VfsJail::enter_in_child).
        unsafe {
            cmd.pre_exec(move || j.enter_in_child(None));
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(status_field(&text, "NoNewPrivs:"), "1", "{text}");
        // "Max open files  1234  1234  files": soft and hard are the two before the unit.
        let limit = |name: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or("");
            let mut w: Vec<String> = line
                .split_whitespace()
                .rev()
                .skip(1)
                .take(2)
                .map(str::to_owned)
                .collect();
            w.reverse();
            w
        };
        assert_eq!(limit("Max open files"), ["1234", "1234"], "{text}");
        assert_eq!(limit("Max core file size"), ["0", "0"], "{text}");
        let mine = |k: &str| std::fs::read_link(format!("/proc/self/ns/{k}")).unwrap();
        let theirs: Vec<&str> = text.lines().filter(|l| l.contains(":[")).collect();
        assert_eq!(theirs.len(), 2, "{text}");
        if jail.namespaces() {
            assert_ne!(Path::new(theirs[0]), mine("ipc"));
            assert_ne!(Path::new(theirs[1]), mine("uts"));
        } else {
            eprintln!("not root: no new namespaces to check");
            assert_eq!(Path::new(theirs[0]), mine("ipc"));
        }
    }
}
