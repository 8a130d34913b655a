//! Command-line definitions and dispatch.

mod commands;
mod table;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Arrow SDK: package static binaries into Arrow images and manage the local image store.
#[derive(Debug, Parser)]
#[command(name = "asdk", version, about, propagate_version = true)]
pub struct Cli {
    /// Image store directory [default: $XDG_DATA_HOME/arrow/images]
    #[arg(long, global = true, env = "ASDK_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Log filter for diagnostics on stderr (error, warn, info, debug, trace)
    #[arg(
        long,
        global = true,
        env = "ASDK_LOG",
        default_value = "warn",
        value_name = "LEVEL"
    )]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable table.
    Table,
    /// JSON.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a static binary, a C source file or a Cargo project
    ///
    /// PATH is a static x86-64 ELF executable, a `.c` file (compiled with `musl-gcc -static`,
    /// installed from Debian's musl-tools if missing) or a Cargo project directory (built in
    /// release for x86_64-unknown-linux-gnu with crt-static). The spec is read from -f FILE,
    /// else from arrow.toml in the project directory or next to the file, else defaults apply.
    /// Prints the image ID on stdout; progress goes to stderr.
    Build {
        /// Binary, .c file or Cargo project directory
        path: PathBuf,
        /// Spec file (arrow.toml)
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        spec: Option<PathBuf>,
        /// Name and optionally a tag, NAME[:TAG] (repeatable) [default: <spec name>:latest]
        #[arg(short = 't', long = "tag", value_name = "NAME:TAG")]
        tags: Vec<String>,
        /// Binary target to package when the Cargo project has several
        #[arg(long, value_name = "NAME")]
        bin: Option<String>,
        /// Suppress build progress; print only the image ID
        #[arg(short, long)]
        quiet: bool,
        /// Do not build the image's shadowfs base (EROFS) now; arrowd builds it on first
        /// use. Building it needs mkfs.erofs (Debian erofs-utils, installed when missing).
        #[arg(long)]
        no_base: bool,
        /// Result format
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// List images
    #[command(alias = "ls")]
    Images {
        /// Output format
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Only show image IDs
        #[arg(short, long)]
        quiet: bool,
        /// Show full image IDs
        #[arg(long)]
        no_trunc: bool,
    },
    /// Show an image's manifest, spec and initrd as JSON
    Inspect {
        /// Reference (NAME[:TAG]), digest or ID prefix
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images (untag; blobs no other image uses are deleted)
    #[command(alias = "rmi")]
    Rm {
        /// Reference (NAME[:TAG]), digest or ID prefix
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove an image ID even when several references point to it
        #[arg(short, long)]
        force: bool,
    },
    /// Add a reference to an image
    Tag {
        /// Existing reference or ID
        source: String,
        /// New NAME[:TAG]
        target: String,
    },
    /// Print the path of an image's initrd (verified), to pass to arrow-vmm --initrd
    Initrd {
        /// Reference (NAME[:TAG]), digest or ID prefix
        image: String,
    },
    /// Write an image as an OCI image layout tar archive (an OCI artifact)
    Export {
        /// Reference (NAME[:TAG]), digest or ID prefix
        image: String,
        /// Archive to write
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Import images from an OCI image layout (tar archive or directory)
    Import {
        /// Archive or layout directory
        file: PathBuf,
        /// Name the imported image NAME[:TAG] (repeatable) instead of its recorded name
        #[arg(short = 't', long = "tag", value_name = "NAME:TAG")]
        tags: Vec<String>,
    },
    /// Upload an image to an OCI registry
    ///
    /// Blobs the registry already has are not uploaded again. The manifest is sent byte for
    /// byte, so the registry's digest is the local image ID. Prints the digest on stdout.
    Push {
        /// Local image: reference (NAME[:TAG]), digest or ID prefix
        image: String,
        /// Destination REGISTRY/REPOSITORY[:TAG], e.g. localhost:5000/hello:1
        destination: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Result format
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Download an image from an OCI registry into the store
    ///
    /// The image is stored under its full reference (REGISTRY/REPOSITORY:TAG), as docker
    /// does; every blob is verified by digest before anything is stored, blobs the store
    /// has are skipped, and an interrupted pull resumes where it stopped. Prints the image ID.
    Pull {
        /// REGISTRY/REPOSITORY[:TAG] or REGISTRY/REPOSITORY@sha256:HEX
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Result format
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Registry access flags shared by push and pull.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Credentials USER:PASSWORD [default: from the auth file]
    #[arg(
        long,
        env = "ASDK_REGISTRY_CREDS",
        value_name = "USER:PASSWORD",
        hide_env_values = true
    )]
    pub creds: Option<String>,
    /// Bearer token sent as is (instead of --creds)
    #[arg(
        long,
        env = "ASDK_REGISTRY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "creds"
    )]
    pub registry_token: Option<String>,
    /// Docker-style config.json / podman auth.json with credentials
    /// [default: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json]
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Reach this registry (HOST[:PORT]) over plain HTTP; loopback registries always are
    /// (repeatable)
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure: Vec<String>,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    commands::run(cli)
}

/// Writes to stdout; a closed pipe ends the process with success (nobody is reading).
fn write_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("Error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}
