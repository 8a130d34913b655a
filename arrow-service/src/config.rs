//! arrowd's command line (each flag also reads an environment variable).

use std::path::PathBuf;

use clap::Parser;

/// arrowd: runs Arrow instances (one arrow-vmm microVM each) behind a REST API.
#[derive(Debug, Clone, Parser)]
#[command(name = "arrowd", version)]
pub struct Config {
    /// Unix socket of the REST API.
    #[arg(long, env = "ARROWD_SOCKET", default_value = "/run/arrow/arrowd.sock")]
    pub socket: PathBuf,
    /// Unix socket of the Kubernetes CRI (runtime.v1) gRPC API for kubelet and crictl.
    #[arg(long, env = "ARROWD_CRI_SOCKET", default_value = "/run/arrow/cri.sock")]
    pub cri_socket: PathBuf,
    /// Do not serve the CRI API.
    #[arg(long)]
    pub no_cri: bool,
    /// Group (name or number) that may use the REST socket too: it is then
    /// created 0660 and owned by that group (default: 0600, owner only).
    #[arg(long, env = "ARROWD_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// Also let this uid use the REST socket (repeatable); arrowd's own uid
    /// and root always may.
    #[arg(long = "allow-uid", env = "ARROWD_ALLOW_UIDS", value_delimiter = ',')]
    pub allow_uids: Vec<u32>,
    /// Also listen on this TCP address (e.g. 127.0.0.1:7070); requires --token.
    #[arg(long, env = "ARROWD_TCP")]
    pub tcp: Option<String>,
    /// Bearer token that TCP clients must send (Authorization: Bearer TOKEN).
    #[arg(long, env = "ARROWD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// State directory: arrowd.db and instances/<id>/ run directories.
    #[arg(long, env = "ARROWD_STATE_DIR", default_value = "/var/lib/arrow")]
    pub state_dir: PathBuf,
    /// Image store (shared with asdk); default: asdk's default store.
    #[arg(long, env = "ASDK_STORE")]
    pub store: Option<PathBuf>,
    /// Guest kernel (vmlinux) for every instance; default: <state-dir>/vmlinux.
    #[arg(long, env = "ARROW_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Kernel command line before arrowd's `arrow.hostname=…` and the image's app part.
    #[arg(
        long,
        env = "ARROW_KERNEL_CMDLINE",
        default_value = "console=ttyS0 reboot=k panic=-1"
    )]
    pub kernel_cmdline: String,
    /// arrow-vmm binary; default: next to arrowd, else `arrow-vmm` on PATH.
    #[arg(long, env = "ARROW_VMM")]
    pub vmm: Option<PathBuf>,
    /// Start every arrow-vmm under arrow-jailer: its own mount, PID, IPC, UTS,
    /// network and cgroup namespaces, a root holding only its files, an
    /// unprivileged uid (docs/security.md). Needs root; `--jail=false` turns it off.
    #[arg(
        long,
        env = "ARROWD_JAIL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub jail: bool,
    /// arrow-jailer binary; default: next to arrowd, else `arrow-jailer` on PATH.
    #[arg(long, env = "ARROW_JAILER")]
    pub jailer: Option<PathBuf>,
    /// virtiofsd binary for writable volumes (docs/volumes.md); default: the one the
    /// project's tools install in ~/.cache/arrow/tools (built on first use), else PATH.
    #[arg(long, env = "ARROW_VIRTIOFSD")]
    pub virtiofsd: Option<PathBuf>,
    /// Open files each virtiofsd may have (RLIMIT_NOFILE; it holds one per inode the
    /// guest has looked up): past it the guest's lookups fail with EMFILE.
    #[arg(long, env = "ARROWD_VIRTIOFSD_MAX_FILES", default_value_t = crate::volumes::jail::DEFAULT_MAX_FILES,
          value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    pub virtiofsd_max_files: u64,
    /// `USER[:GROUP]` (names or numbers) jailed VMMs run as; default: user
    /// `arrow` if it exists, else 65534 (nobody).
    #[arg(long, env = "ARROWD_JAIL_USER")]
    pub jail_user: Option<String>,
    /// Open files a jailed VMM may have (RLIMIT_NOFILE).
    #[arg(long, env = "ARROWD_JAIL_MAX_FILES", default_value_t = 4096)]
    pub jail_max_files: u64,
    /// Largest file a jailed VMM may write, MiB (RLIMIT_FSIZE); the default
    /// fits a snapshot of the largest guest (64 GiB).
    #[arg(long, env = "ARROWD_JAIL_MAX_FILE_MIB", default_value_t = 66560)]
    pub jail_max_file_mib: u64,
    /// cgroup v2 directory under which each instance gets its own cgroup.
    #[arg(
        long,
        env = "ARROWD_CGROUP_ROOT",
        default_value = "/sys/fs/cgroup/arrow"
    )]
    pub cgroup_root: PathBuf,
    /// Do not put instances into cgroups.
    #[arg(long)]
    pub no_cgroups: bool,
    /// Each instance's console.log is rotated to console.log.1 when it would
    /// grow past this many MiB (so at most twice it is on disk); 0 = no cap.
    #[arg(long, env = "ARROWD_CONSOLE_LOG_MAX_MIB", default_value_t = 16)]
    pub console_log_max_mib: u64,
    /// Seconds a graceful stop waits before killing arrow-vmm.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
    /// Warm arrow-vmm processes kept per template (0: none; clones then start with a
    /// plain restore). A template can set its own (`pool_size`).
    #[arg(long, env = "ARROWD_POOL_SIZE", default_value_t = 2)]
    pub pool_size: u32,
    /// Start instances of images without a template of their own from the generic
    /// template (the kernel booted once, the image and app injected at clone time),
    /// made in the background on first need. `--generic-template=false` turns it off.
    #[arg(
        long,
        env = "ARROWD_GENERIC_TEMPLATE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub generic_template: bool,
    /// Guest memory of the generic template, MiB: only instances with exactly this much
    /// start from it (default: asdk's default for images).
    #[arg(long, env = "ARROWD_GENERIC_MEMORY_MIB", default_value_t = asdk::spec::DEFAULT_MEMORY_MIB,
          value_parser = clap::value_parser!(u32).range(16..=65536))]
    pub generic_memory_mib: u32,
    /// vCPUs of the generic template: only instances with exactly this many start from it.
    #[arg(long, env = "ARROWD_GENERIC_VCPUS", default_value_t = asdk::spec::DEFAULT_VCPUS,
          value_parser = clap::value_parser!(u8).range(1..=asdk::spec::MAX_VCPUS as i64))]
    pub generic_vcpus: u8,
    /// CNI network configuration directory: the first .conflist/.conf/.json file in it
    /// gives pod sandboxes their network namespace and pod IP (docs/cri.md).
    #[arg(long, env = "ARROWD_CNI_CONF_DIR", default_value = crate::cni::DEFAULT_CONF_DIR)]
    pub cni_conf_dir: PathBuf,
    /// CNI plugin directories, `:`-separated (as CNI_PATH).
    #[arg(long, env = "ARROWD_CNI_BIN_DIR", default_value = crate::cni::DEFAULT_BIN_DIRS)]
    pub cni_bin_dir: String,
    /// Where pod sandboxes' network namespaces are pinned (`ip netns` lists /run/netns).
    #[arg(long, env = "ARROWD_NETNS_DIR", default_value = "/run/netns")]
    pub netns_dir: PathBuf,
    /// arrowd's log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, env = "ARROWD_LOG", default_value = "info")]
    pub log_level: String,
}

impl Config {
    /// Directory holding one run directory per instance.
    pub fn run_root(&self) -> PathBuf {
        self.state_dir.join("instances")
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("arrowd.db")
    }

    /// The guest kernel.
    pub fn kernel_path(&self) -> PathBuf {
        self.kernel
            .clone()
            .unwrap_or_else(|| self.state_dir.join("vmlinux"))
    }

    /// The arrow-vmm binary.
    pub fn vmm_path(&self) -> PathBuf {
        self.vmm.clone().unwrap_or_else(|| sibling("arrow-vmm"))
    }

    /// The arrow-jailer binary.
    pub fn jailer_path(&self) -> PathBuf {
        self.jailer
            .clone()
            .unwrap_or_else(|| sibling("arrow-jailer"))
    }

    /// The jail settings.
    pub fn jail_options(&self) -> crate::jail::JailOptions {
        crate::jail::JailOptions {
            enabled: self.jail,
            jailer: self.jailer_path(),
            user: self.jail_user.clone(),
            max_files: self.jail_max_files,
            max_file_mib: self.jail_max_file_mib,
        }
    }
}

/// `name` next to arrowd's own binary, else found on PATH.
fn sibling(name: &str) -> PathBuf {
    let here = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    if let Some(p) = here {
        return p;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}
