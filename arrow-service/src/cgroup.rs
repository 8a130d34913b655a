//! cgroup v2 limits per instance: `<root>/<instance id>` with `cpu.max` (vCPUs × 100 %) and
//! `memory.max` (guest memory + VMM overhead). Where the host has no usable cgroup v2
//! hierarchy, arrowd says so once at startup and runs instances without limits.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Host memory allowed beyond guest memory for the VMM itself (MiB).
pub const VMM_OVERHEAD_MIB: u64 = 64;

/// Creates and removes per-instance cgroups.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: Option<PathBuf>,
}

impl Cgroups {
    /// Prepares `root` (e.g. /sys/fs/cgroup/arrow) with the cpu and memory controllers.
    /// On failure logs one warning and disables limits.
    pub fn init(root: &Path) -> Cgroups {
        match Self::prepare(root) {
            Ok(()) => {
                tracing::info!(root = %root.display(), "cgroup v2 limits enabled");
                Cgroups {
                    root: Some(root.to_owned()),
                }
            }
            Err(why) => {
                tracing::warn!(
                    "cgroup v2 CPU/memory limits are not available on this host ({why}); instances run without limits"
                );
                Cgroups { root: None }
            }
        }
    }

    /// Limits disabled.
    pub fn disabled() -> Cgroups {
        Cgroups { root: None }
    }

    /// Whether limits are applied.
    pub fn enabled(&self) -> bool {
        self.root.is_some()
    }

    fn prepare(root: &Path) -> Result<(), String> {
        let parent = root
            .parent()
            .ok_or_else(|| format!("{} has no parent", root.display()))?;
        let controllers = std::fs::read_to_string(parent.join("cgroup.controllers"))
            .map_err(|e| format!("{} is not a cgroup v2 directory: {e}", parent.display()))?;
        for c in ["cpu", "memory"] {
            if !controllers.split_whitespace().any(|x| x == c) {
                return Err(format!(
                    "controller {c} is not available in {}",
                    parent.display()
                ));
            }
        }
        let enable = |dir: &Path| {
            std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory")
                .map_err(|e| format!("cannot enable cpu/memory in {}: {e}", dir.display()))
        };
        enable(parent)?;
        std::fs::create_dir_all(root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        enable(root)
    }

    /// Creates the instance's cgroup with its limits (`extra_mib` beyond guest memory and
    /// VMM overhead: its virtiofsd processes); returns its directory and the
    /// `cgroup.procs` path to join (as a C string, for use between fork and exec).
    pub fn create(
        &self,
        id: &str,
        vcpus: u8,
        memory_mib: u32,
        extra_mib: u64,
    ) -> Option<(PathBuf, CString)> {
        let root = self.root.as_ref()?;
        let dir = root.join(id);
        let result = (|| -> std::io::Result<CString> {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join("cpu.max"),
                format!("{} 100000", u64::from(vcpus) * 100_000),
            )?;
            let bytes = (u64::from(memory_mib) + VMM_OVERHEAD_MIB + extra_mib) * 1024 * 1024;
            std::fs::write(dir.join("memory.max"), bytes.to_string())?;
            CString::new(dir.join("cgroup.procs").to_string_lossy().into_owned())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })();
        match result {
            Ok(procs) => Some((dir, procs)),
            Err(e) => {
                tracing::warn!(
                    instance = id,
                    "cannot set up cgroup {}: {e}; running without limits",
                    dir.display()
                );
                None
            }
        }
    }

    /// Raises the instance's `memory.max` to `memory_mib` of guest memory
    /// (plus VMM overhead) when the guest grows by hotplug. Never lowers it:
    /// a guest gives memory back only when its driver has unplugged it.
    pub fn raise_memory(&self, id: &str, memory_mib: u64) {
        let Some(root) = &self.root else {
            return;
        };
        let path = root.join(id).join("memory.max");
        let want = (memory_mib + VMM_OVERHEAD_MIB) * 1024 * 1024;
        let now = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if now.is_some_and(|n| n < want) {
            if let Err(e) = std::fs::write(&path, want.to_string()) {
                tracing::warn!(instance = id, "cannot raise {}: {e}", path.display());
            }
        }
    }

    /// Removes an instance's (empty) cgroup.
    pub fn remove(&self, dir: &str) {
        if self.root.is_some() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Between fork and exec: moves the calling process into the cgroup whose `cgroup.procs`
/// path is `procs`. Only async-signal-safe calls.
pub fn join_in_child(procs: &CString) -> std::io::Result<()> {
    // SAFETY: open/write/close on a valid NUL-terminated path and a stack buffer; all are
    // async-signal-safe, as required between fork and exec.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        if n != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
