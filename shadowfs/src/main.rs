//! `shadowfs`: build and check image bases, manage writable layers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shadowfs::{base, upper};

#[derive(Parser)]
#[command(
    name = "shadowfs",
    version,
    about = "Arrow's layered image filesystem, host side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an EROFS image base from a directory (reproducible).
    Build {
        /// Directory whose content becomes the base's root.
        dir: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check an image base (EROFS superblock and fsck.erofs).
    Check { base: PathBuf },
    /// Create a persistent writable layer (ext4, sparse file).
    CreateUpper {
        path: PathBuf,
        /// Size: 64M, 1G, ... (rounded up to 2 MiB, at least 16 MiB).
        #[arg(long, default_value = "64M")]
        size: String,
    },
    /// Grow a writable layer (the instance must be stopped).
    ResizeUpper {
        path: PathBuf,
        #[arg(long)]
        size: String,
    },
    /// List what an instance changed in its writable layer.
    Diff {
        path: PathBuf,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        output: String,
    },
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("invalid size '{s}': expected e.g. 64M or 1G"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 20,
        "K" | "KB" | "KIB" => 10,
        "G" | "GB" | "GIB" => 30,
        other => anyhow::bail!("invalid size unit '{other}' in '{s}': use K, M or G"),
    };
    n.checked_mul(1 << shift)
        .with_context(|| format!("size '{s}' is too large"))
}

/// The entries of a directory tree, for [`base::build`].
fn entries(root: &std::path::Path) -> anyhow::Result<Vec<base::Entry>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let rel_path = rel.join(e.file_name());
            let path = rel_path.to_string_lossy().into_owned();
            let meta = e.metadata()?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.push(base::Entry::Dir { path, mode });
                stack.push(rel_path);
            } else if meta.is_file() {
                let data = std::fs::read(e.path())?;
                out.push(base::Entry::File { path, mode, data });
            } else {
                anyhow::bail!(
                    "{}: only directories and regular files go into a base",
                    e.path().display()
                );
            }
        }
    }
    Ok(out)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build { dir, output } => {
            let digest = base::build(&entries(&dir)?, &output)?;
            println!("{digest}");
        }
        Command::Check { base: path } => {
            base::check(&path)?;
            println!("{}: ok", path.display());
        }
        Command::CreateUpper { path, size } => {
            let size = upper::create(&path, parse_size(&size)?)?;
            println!("{} ({} MiB)", path.display(), size >> 20);
        }
        Command::ResizeUpper { path, size } => {
            let size = upper::resize(&path, parse_size(&size)?)?;
            println!("{} ({} MiB)", path.display(), size >> 20);
        }
        Command::Diff { path, output } => {
            let changes = upper::changes(&path)?;
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&changes)?),
                "table" => {
                    println!("{:<10} {:>10}  PATH", "CHANGE", "SIZE");
                    for c in changes {
                        let kind = match c.kind {
                            upper::ChangeKind::Dir => "dir",
                            upper::ChangeKind::OpaqueDir => "replaced",
                            upper::ChangeKind::Written => "written",
                            upper::ChangeKind::Deleted => "deleted",
                        };
                        let size = c.size.map(|s| s.to_string()).unwrap_or_default();
                        println!("{kind:<10} {size:>10}  {}", c.path);
                    }
                }
                other => anyhow::bail!("unknown --output {other}: use table or json"),
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadowfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
