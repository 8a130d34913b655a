//! actl: the operator CLI over arrowd's REST API (docker-like commands and exit codes).

mod commands;
mod table;
mod template;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use commands::run;

/// actl: manage Arrow instances through arrowd.
#[derive(Debug, Parser)]
#[command(name = "actl", version)]
pub struct Cli {
    /// arrowd address: unix:///path/to/arrowd.sock or tcp://host:port.
    #[arg(
        short = 'H',
        long,
        env = "ARROW_HOST",
        default_value = "unix:///run/arrow/arrowd.sock",
        global = true
    )]
    pub host: String,
    /// Bearer token for a tcp:// host.
    #[arg(long, env = "ARROW_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How listings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON, as the API returns it.
    Json,
}

/// Instance creation flags shared by `run` and `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image reference (name:tag), digest or short ID (optional with --template).
    #[arg(required_unless_present = "template")]
    pub image: Option<String>,
    /// Arguments for the app (replace the image's).
    #[arg(trailing_var_arg = true)]
    pub args: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Export a port: [IP:]HOST_PORT:VSOCK_PORT (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:VSOCK")]
    pub publish: Vec<String>,
    /// Mount a host directory (or, with :ro, a file) in the guest: HOST_PATH:GUEST_PATH[:ro]
    /// (repeatable). Read-only volumes show the host content as of the start; writable
    /// ones are live both ways (docs/volumes.md).
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]")]
    pub volume: Vec<String>,
    /// Guest memory, e.g. 256M or 1G.
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Most memory `actl update --memory` may grow the instance to
    /// (default 4 x --memory; equal to --memory: no hotplug).
    #[arg(long)]
    pub memory_max: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    pub cpus: Option<u8>,
    /// Instance name.
    #[arg(long)]
    pub name: Option<String>,
    /// Keep the app's file changes across stop/start in a persistent writable
    /// layer of this size, e.g. 256M (default: a tmpfs layer, empty at each start).
    #[arg(long, value_name = "SIZE")]
    pub storage: Option<String>,
    /// Boot from the image's initrd instead of its shadowfs base.
    #[arg(long, conflicts_with = "storage")]
    pub initrd: bool,
    /// Start as a clone of this template (see `actl template`).
    #[arg(long)]
    pub template: Option<String>,
    /// Keep app core dumps (core.<pid> in the run directory; `actl cp ID:core.<pid> .`).
    #[arg(long)]
    pub core_dumps: bool,
}

/// `actl template` subcommands.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Boot an image once and snapshot it as a template; prints the template ID.
    /// With --generic: the generic template of arrowd's kernel (any image runs from it).
    Create {
        /// The generic template (no name, image, args, env, memory or vCPUs).
        #[arg(long, conflicts_with_all = ["name", "image", "args", "env", "memory", "cpus", "snapshot_at", "delay_ms"])]
        generic: bool,
        /// Template name.
        #[arg(long, required_unless_present = "generic")]
        name: Option<String>,
        /// Image reference (name:tag), digest or short ID.
        #[arg(required_unless_present = "generic")]
        image: Option<String>,
        /// Arguments for the app (replace the image's).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Guest memory, e.g. 256M or 1G.
        #[arg(short = 'm', long)]
        memory: Option<String>,
        /// Number of vCPUs.
        #[arg(long)]
        cpus: Option<u8>,
        /// Snapshot point: ready (APP_READY), started (APP_STARTED) or delay (--delay-ms
        /// after the spawn); default: ready if the image declares ports or readiness.
        #[arg(long, value_parser = ["ready", "started", "delay"])]
        snapshot_at: Option<String>,
        /// Milliseconds to wait after the snapshot point (with delay: after the spawn).
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Seconds to wait for the snapshot point.
        #[arg(long)]
        timeout: Option<u64>,
        /// Warm VMMs kept for this template (default: arrowd's --pool-size).
        #[arg(long)]
        pool_size: Option<u32>,
    },
    /// List templates.
    #[command(alias = "list")]
    Ls {
        /// Only print names.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show templates as JSON (size on disk, clones, page sharing, pool).
    Inspect {
        /// Template names or IDs.
        #[arg(required = true)]
        templates: Vec<String>,
    },
    /// Remove templates (refused while clones run, unless -f: they are killed).
    #[command(alias = "remove")]
    Rm {
        /// Kill running clones first.
        #[arg(short = 'f', long)]
        force: bool,
        /// Template names or IDs.
        #[arg(required = true)]
        templates: Vec<String>,
    },
}

/// actl's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and start an instance; without -d, print its console and exit with its status.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Run in the background and print the instance ID.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Remove the instance when it exits (not with -d).
        #[arg(long)]
        rm: bool,
    },
    /// Create an instance without starting it; prints its ID.
    Create {
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Start instances.
    Start {
        /// Instance IDs or names.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// List instances (running only, unless -a).
    Ps {
        /// Show all instances.
        #[arg(short = 'a', long)]
        all: bool,
        /// Only print IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print an instance's console output.
    Logs {
        /// Instance ID or name.
        instance: String,
        /// Keep printing new output until the instance stops.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(short = 'n', long)]
        tail: Option<usize>,
    },
    /// Stop instances gracefully (killed after the timeout).
    Stop {
        /// Seconds to wait before killing.
        #[arg(short = 't', long)]
        time: Option<u64>,
        /// Instance IDs or names.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Send a signal (default KILL) to instances' VMMs.
    Kill {
        /// Signal name or number.
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        /// Instance IDs or names.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Remove instances.
    Rm {
        /// Kill running instances first.
        #[arg(short = 'f', long)]
        force: bool,
        /// Instance IDs or names.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Show instances as JSON.
    Inspect {
        /// Instance IDs or names.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Resize running instances' memory (memory hotplug); prints their IDs.
    Update {
        /// New memory size (boot memory plus hotplugged), e.g. 512M or 1G.
        #[arg(short = 'm', long, required = true)]
        memory: String,
        /// Instance IDs or names.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Block until instances stop; print their exit codes.
    Wait {
        /// Instance IDs or names.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Manage templates (snapshotted VMs that instances start from as clones).
    Template {
        /// The template command.
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Copy a file out of an instance: ID:core.<pid> (an app core dump) to DEST (a file, a
    /// directory, or - for stdout).
    Cp {
        /// ID:NAME, e.g. web:core.1.
        source: String,
        /// Destination file or directory, or -.
        dest: String,
    },
    /// Pull an image from an OCI registry into arrowd's store.
    Pull {
        /// REGISTRY/REPOSITORY[:TAG] or REGISTRY/REPOSITORY@sha256:HEX.
        reference: String,
        /// Credentials USER:PASSWORD [default: arrowd's auth files].
        #[arg(long, env = "ACTL_REGISTRY_CREDS", hide_env_values = true)]
        creds: Option<String>,
        /// Reach the registry over plain HTTP (loopback registries always are).
        #[arg(long)]
        insecure: bool,
    },
    /// List images in the store.
    Images {
        /// Only print image IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
}
