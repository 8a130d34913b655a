//! `arrow-vmm`: runs one microVM. Exit status: the app's, or one of the codes
//! documented in `arrow_vmm::exit` (125 = arrow-vmm itself failed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use arrow_vmm::api::{ApiPolicy, PeerPolicy, SnapshotPolicy};
use arrow_vmm::arch::boot::BootProtocol;
use arrow_vmm::arch::cpuid::{parse_clear_rule, ClearRule};
use arrow_vmm::config::{
    parse_size, ConsoleSink, PmemConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE,
};
use arrow_vmm::devices::virtio::fs::FsConfig;
use arrow_vmm::exit::EXIT_VMM_ERROR;
use arrow_vmm::seccomp::SeccompLevel;
use arrow_vmm::vm::{RestoreConfig, RunOptions, Vm};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "arrow-vmm",
    version,
    about = "Run one single-task Linux microVM on KVM"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn", env = "ARROW_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum HostCompat {
    /// Detect the host (nested kvm_pvm → add the guest flags).
    Auto,
    On,
    Off,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel and run the guest until it stops; exits with the app's status.
    Run(RunArgs),
    /// Restore a snapshot (or start a clone of a template) and run it until it stops.
    Restore(RestoreArgs),
}

/// How the running VM is served (both `run` and `restore`).
#[derive(clap::Args)]
struct ServeArgs {
    /// Control API (HTTP/JSON) on this Unix socket: GET /vm, PUT /vm/pause,
    /// /vm/resume, /vm/snapshot {"dir": …}, /vm/shutdown.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Let this uid use the control API too (repeatable); arrow-vmm's own
    /// uid and root always may. The socket is created mode 0600.
    #[arg(long, requires = "api_sock")]
    api_allow_uid: Vec<u32>,
    /// `PUT /vm/snapshot` writes only to new directories under DIR
    /// (default: any absolute path arrow-vmm's user may write).
    #[arg(long, requires = "api_sock")]
    snapshot_dir: Option<PathBuf>,
    /// Start with the vCPUs paused (resume through the control API).
    #[arg(long, requires = "api_sock")]
    paused: bool,
    /// Guest console output: stdout, none, or a file path.
    #[arg(long, default_value = "stdout")]
    console: ConsoleSink,
    /// A console file is rotated to PATH.1 when it would grow past this
    /// (so at most twice it is on disk); 0 = no cap.
    #[arg(long, default_value = "64M", value_parser = parse_console_max)]
    console_max_size: u64,
    /// Write a JSON report (timings, memory, exit) here when the VM stops.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Per-thread system call filters: trap (block, report, exit 125), log, off.
    #[arg(long, value_enum, default_value_t = SeccompLevel::Trap)]
    seccomp: SeccompLevel,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// Snapshot directory (state.json + memory.bin).
    #[arg(long = "from")]
    from: PathBuf,
    /// Start a clone: the guest is told (new generation and nonce), vsock
    /// connections are reset, and it needs its own --vsock-cid/--vsock-uds.
    #[arg(long)]
    clone: bool,
    /// Host Unix socket for the restored vsock device.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Guest CID for the restored vsock device (required with --clone).
    #[arg(long)]
    vsock_cid: Option<u64>,
    /// Pooled VM: do everything that does not need the guest state (KVM VM,
    /// vCPU threads, memory slots, devices, seccomp) and wait; `PUT
    /// /vm/start` on the control API then loads the snapshot and runs it.
    #[arg(long, requires = "api_sock", conflicts_with = "paused")]
    pool: bool,
    /// A clone of a generic template: the app to run, as a JSON file
    /// ({"app": "/path", "args": [...], "env": ["K=V"], "hostname": "h",
    /// "image_base": false, "upper": "tmpfs", "volumes": [{"kind": "pack",
    /// "id": "0", "read_only": true, "path": "/config"}]}).
    #[arg(long, requires = "clone")]
    app_spec: Option<PathBuf>,
    /// A clone of a generic template: the image's base (EROFS) to map into
    /// the template's image slot (its first, read-only pmem device).
    #[arg(long, requires = "app_spec")]
    image_base: Option<PathBuf>,
    /// A clone of a generic template: the packed volume image (EROFS, one
    /// top-level entry per `pack` volume of the app spec) to map into the
    /// template's volume slot (its second read-only pmem device).
    #[arg(long, requires = "app_spec")]
    volumes_base: Option<PathBuf>,
    /// Connect the snapshot's vhost-user-fs device TAG (a slot, vol0..) to
    /// the backend listening on SOCKET. Repeatable. The clone's RAM is first
    /// copied into a memfd the backend can map (data extents only).
    #[arg(long, value_name = "TAG=SOCKET")]
    fs: Vec<FsConfig>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Uncompressed kernel (vmlinux ELF).
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk (e.g. an Arrow image's cpio).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (replaces the default); app args go after `--`.
    #[arg(long, default_value = DEFAULT_CMDLINE, allow_hyphen_values = true)]
    cmdline: String,
    /// Guest memory: 128M, 1G, ... (a bare number is MiB).
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Boot protocol.
    #[arg(long, value_enum, default_value_t = BootProtocol::Auto)]
    boot_protocol: BootProtocol,
    /// Guest flags for nested-PVM hosts (see ENVIRONMENT docs).
    #[arg(long, value_enum, default_value_t = HostCompat::Auto)]
    host_compat: HostCompat,
    /// Do not filter the host CPUID (debugging only).
    #[arg(long)]
    cpuid_passthrough: bool,
    /// Hide one more CPUID bit: LEAF[.SUBLEAF]:REG:BIT (repeatable).
    #[arg(long, value_parser = parse_clear_rule)]
    cpuid_clear: Vec<ClearRule>,
    /// Add a vsock device with this guest CID (3 or more).
    #[arg(long, requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    /// Host Unix socket of the vsock device: clients send `CONNECT <port>\n`;
    /// guest connections to host port P go to `<PATH>_P`.
    #[arg(long, requires = "vsock_cid")]
    vsock_uds: Option<PathBuf>,
    /// Add a virtio-pmem device backed by this file: PATH[,ro|rw] (default
    /// ro: mapped read-only and shared). Repeatable; the guest sees them as
    /// /dev/pmem0, /dev/pmem1, ... in this order.
    #[arg(long, value_name = "PATH[,ro|rw]")]
    pmem: Vec<PmemConfig>,
    /// Store app core dumps here as core.<pid> (off by default): the guest kernel sends
    /// the ELF core of any app process killed by a core-dumping signal.
    #[arg(long, value_name = "DIR")]
    core_dir: Option<PathBuf>,
    /// Largest core file accepted (the guest kernel is given the same limit).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size, requires = "core_dir")]
    core_max: u64,
    /// Reserve a virtio-mem region of this size (128M, 1G, ...; rounded up
    /// to 128 MiB) above guest RAM: memory can then be plugged and unplugged
    /// at run time (PUT /vm/memory on the control API). Starts unplugged.
    #[arg(long, value_parser = parse_size)]
    memory_hotplug: Option<u64>,
    /// Add a vhost-user-fs device: the guest mounts it with `mount -t
    /// virtiofs TAG DIR`; a vhost-user backend (virtiofsd) must listen on
    /// SOCKET. Repeatable (at most 8 with --fs-slots). Guest RAM is then a
    /// memfd that the backends map.
    #[arg(long, value_name = "TAG=SOCKET")]
    fs: Vec<FsConfig>,
    /// Add N vhost-user-fs devices without backend, tags vol0..vol{N-1}: a
    /// generic template's volume slots, which its clones connect
    /// (`restore --clone --fs vol0=SOCKET`, or "fs" in PUT /vm/start).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=8))]
    fs_slots: u8,
    #[command(flatten)]
    serve: ServeArgs,
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn run(args: RunArgs, start: Instant) -> anyhow::Result<i32> {
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_size: args.memory,
        vcpus: args.vcpus,
        console: args.serve.console.clone(),
        console_max: args.serve.console_max_size,
        boot_protocol: args.boot_protocol,
        cpuid_passthrough: args.cpuid_passthrough,
        cpuid_clear: args.cpuid_clear,
        host_compat: match args.host_compat {
            HostCompat::Auto => None,
            HostCompat::On => Some(true),
            HostCompat::Off => Some(false),
        },
        vsock: match (args.vsock_cid, args.vsock_uds) {
            (Some(cid), Some(uds)) => Some(VsockConfig { cid, uds }),
            _ => None,
        },
        pmem: args.pmem,
        core_dumps: args
            .core_dir
            .map(|dir| arrow_vmm::devices::coredump::CoreDumpConfig {
                dir,
                max_bytes: args.core_max,
            }),
        mem_hotplug: args.memory_hotplug.filter(|&m| m > 0),
        fs: args.fs,
        fs_slots: args.fs_slots,
    };
    // Stop signals are read from a signalfd by the event loop; block them
    // before any thread exists so every thread inherits the mask.
    arrow_vmm::event_loop::block_stop_signals().context("cannot block stop signals")?;
    let vm = Vm::build(&config, start)?;
    serve(vm, &args.serve)
}

fn restore(args: RestoreArgs, start: Instant) -> anyhow::Result<i32> {
    let config = RestoreConfig {
        dir: args.from,
        clone: args.clone,
        console: args.serve.console.clone(),
        console_max: args.serve.console_max_size,
        vsock_uds: args.vsock_uds,
        vsock_cid: args.vsock_cid,
        pool: args.pool,
        app_spec: match &args.app_spec {
            Some(p) => {
                let mut spec = read_app_spec(p)?;
                spec.image_base |= args.image_base.is_some();
                Some(spec)
            }
            None => None,
        },
        image_base: args.image_base,
        volumes_base: args.volumes_base,
        fs: args.fs,
    };
    arrow_vmm::event_loop::block_stop_signals().context("cannot block stop signals")?;
    let vm = Vm::restore(&config, start)?;
    serve(vm, &args.serve)
}

fn read_app_spec(path: &std::path::Path) -> anyhow::Result<arrow_vmm::app_spec::AppSpec> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read --app-spec {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "--app-spec {} is not an app description (JSON: {{\"app\": \"/path\", \"args\": [], \"env\": [\"K=V\"]}})",
            path.display()
        )
    })
}

fn parse_console_max(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        Ok(0)
    } else {
        parse_size(s)
    }
}

/// Runs a built or restored VM; returns the exit code.
fn serve(vm: Vm, args: &ServeArgs) -> anyhow::Result<i32> {
    let snapshots = match &args.snapshot_dir {
        Some(dir) => SnapshotPolicy::under(dir)
            .with_context(|| format!("bad --snapshot-dir {}", dir.display()))?,
        None => SnapshotPolicy::anywhere(),
    };
    let opts = RunOptions {
        api_sock: args.api_sock.clone(),
        api_policy: ApiPolicy {
            peers: PeerPolicy::new(&args.api_allow_uid),
            snapshots,
        },
        paused: args.paused,
        seccomp: args.seccomp,
    };
    let (reason, report) = vm.run(&opts)?;
    if !reason.is_clean() {
        eprintln!("arrow-vmm: {reason}");
    } else {
        tracing::info!(%reason, "VM stopped");
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    Ok(reason.exit_code())
}

/// The error and its causes, skipping causes already quoted by their parent.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_VMM_ERROR as u8),
            };
        }
    };
    init_logging(&cli.log_level);
    let code = match cli.command {
        Command::Run(args) => run(args, start),
        Command::Restore(args) => restore(args, start),
    };
    let code = match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("arrow-vmm: error: {}", error_chain(&e));
            EXIT_VMM_ERROR
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
