//! What to run: the VM configuration, and parsing of user-given sizes.

use std::path::PathBuf;

use crate::arch::boot::BootProtocol;
use crate::arch::cpuid::ClearRule;

/// Where the guest console (serial) output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleSink {
    Stdout,
    None,
    File(PathBuf),
}

impl std::str::FromStr for ConsoleSink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "stdout" => ConsoleSink::Stdout,
            "none" => ConsoleSink::None,
            "" => return Err("empty console: use stdout, none or a file path".into()),
            path => ConsoleSink::File(PathBuf::from(path)),
        })
    }
}

/// A complete VM configuration.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_size: u64,
    pub vcpus: u8,
    pub console: ConsoleSink,
    /// Cap of a console file (bytes, 0 = none): see devices/console_log.rs.
    pub console_max: u64,
    pub boot_protocol: BootProtocol,
    /// Skip the CPUID filter table (debugging only).
    pub cpuid_passthrough: bool,
    /// Extra CPUID bits to hide.
    pub cpuid_clear: Vec<ClearRule>,
    /// Add the nested-PVM guest flags: None = detect the host.
    pub host_compat: Option<bool>,
    /// A vsock device: guest CID and the host Unix socket.
    pub vsock: Option<VsockConfig>,
    /// virtio-pmem devices, in the order the guest numbers them
    /// (/dev/pmem0, /dev/pmem1, ...).
    pub pmem: Vec<PmemConfig>,
    /// App core dumps to the host (off when `None`).
    pub core_dumps: Option<crate::devices::coredump::CoreDumpConfig>,
    /// A virtio-mem device that can plug up to this many bytes at run time.
    pub mem_hotplug: Option<u64>,
    /// vhost-user-fs devices with their backends (guest RAM is then a
    /// memfd the backends map).
    pub fs: Vec<crate::devices::virtio::fs::FsConfig>,
    /// vhost-user-fs devices without backend, tags vol0.. (a generic
    /// template's volume slots, connected by its clones).
    pub fs_slots: u8,
}

/// A virtio-pmem device: a host file the guest sees as persistent memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmemConfig {
    pub path: PathBuf,
    /// Mapped read-only (guest writes never reach the file); the default.
    pub read_only: bool,
}

impl std::str::FromStr for PmemConfig {
    type Err = String;
    /// `PATH[,ro|rw]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, mode) = match s.rsplit_once(',') {
            Some((p, m @ ("ro" | "rw"))) => (p, m),
            _ => (s, "ro"),
        };
        if path.is_empty() {
            return Err(format!(
                "invalid --pmem '{s}': expected PATH[,ro|rw], e.g. /images/base.erofs,ro"
            ));
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only: mode == "ro",
        })
    }
}

/// The vsock device: guest-initiated connections to port P go to `<uds>_P`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u64,
    pub uds: PathBuf,
}

/// The default command line: serial console, quiet boot, no ACPI probing.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Inserts a kernel parameter before a `--` (after it, it would be init's argv).
pub fn insert_kernel_param(cmdline: &str, param: &str) -> String {
    match cmdline.find(" -- ") {
        Some(i) => format!("{} {param}{}", &cmdline[..i], &cmdline[i..]),
        None if cmdline.starts_with("-- ") => format!("{param} {cmdline}"),
        None if cmdline.is_empty() => param.to_string(),
        None => format!("{cmdline} {param}"),
    }
}

/// Parses a memory size like `128M`, `1G`, `512MiB`, `4096K`; a bare number is MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size '{s}': expected a number with an optional unit, e.g. 128M or 1G")
    })?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 20,
        "K" | "KB" | "KIB" => 10,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "B" => 0,
        other => {
            return Err(format!(
                "invalid size unit '{other}' in '{s}': use K, M, G or T"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_params_go_before_init_args() {
        assert_eq!(insert_kernel_param("a b", "x=1"), "a b x=1");
        assert_eq!(insert_kernel_param("a -- -v", "x=1"), "a x=1 -- -v");
        assert_eq!(insert_kernel_param("-- -v", "x=1"), "x=1 -- -v");
        assert_eq!(insert_kernel_param("", "x=1"), "x=1");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64"), Ok(64 << 20));
        assert_eq!(parse_size("4096k"), Ok(4 << 20));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn pmem_options() {
        let p: PmemConfig = "/a/b.erofs".parse().unwrap();
        assert_eq!((p.path.to_str(), p.read_only), (Some("/a/b.erofs"), true));
        let p: PmemConfig = "/a/up,rw".parse().unwrap();
        assert_eq!((p.path.to_str(), p.read_only), (Some("/a/up"), false));
        let p: PmemConfig = "/a/x,y,ro".parse().unwrap();
        assert_eq!(p.path.to_str(), Some("/a/x,y"));
        assert!(",rw".parse::<PmemConfig>().is_err());
        assert!("".parse::<PmemConfig>().is_err());
    }

    #[test]
    fn console_sinks() {
        assert_eq!("stdout".parse(), Ok(ConsoleSink::Stdout));
        assert_eq!("none".parse(), Ok(ConsoleSink::None));
        assert_eq!("/tmp/x".parse(), Ok(ConsoleSink::File("/tmp/x".into())));
    }
}
