//! Builds a Cargo project statically: release profile, `x86_64-unknown-linux-gnu`,
//! `-C target-feature=+crt-static` (a static-pie binary with glibc linked in).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, Progress};

/// The only target Arrow guests run.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// A binary built from a Cargo project.
#[derive(Debug)]
pub struct CargoBinary {
    /// Where cargo put it.
    pub path: PathBuf,
    /// Its contents.
    pub bytes: Vec<u8>,
    /// Binary target name.
    pub name: String,
    /// Package version, or `0.0.0` when it is inherited from a workspace.
    pub version: String,
}

/// Rust flags for the child cargo: the caller's, plus crt-static and a path remap so the
/// project's location does not leak into the binary (reproducible across checkouts).
fn rustflags(dir: &Path) -> String {
    let mut flags: Vec<String> = match std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        Ok(s) if !s.is_empty() => s.split('\x1f').map(str::to_owned).collect(),
        _ => std::env::var("RUSTFLAGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    };
    flags.extend(["-C".into(), "target-feature=+crt-static".into()]);
    flags.push(format!("--remap-path-prefix={}=.", dir.display()));
    flags.join("\x1f")
}

fn package_version(dir: &Path) -> String {
    let manifest = dir.join("Cargo.toml");
    std::fs::read_to_string(manifest)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.get("package")?
                .get("version")?
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "0.0.0".to_owned())
}

/// Builds the project in `dir` (optionally only binary `bin`) and returns the binary.
pub fn build(
    dir: &Path,
    bin: Option<&str>,
    progress: &Progress,
) -> Result<CargoBinary, BuildError> {
    let dir = dir.canonicalize().map_err(|e| BuildError::Io {
        path: dir.to_owned(),
        source: e,
    })?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    progress.step(&format!(
        "building Cargo project {} (release, {TARGET}, +crt-static)",
        dir.display()
    ));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&dir)
        .args(["build", "--release", "--target", TARGET])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags(&dir));
    if let Some(b) = bin {
        cmd.args(["--bin", b]);
    }
    let stdout = progress.run_stdout("cargo build", &mut cmd)?;

    let mut bins: Vec<(String, PathBuf)> = Vec::new();
    for line in stdout.split(|&b| b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_bin = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "bin"));
        if let (true, Some(exe), Some(name)) = (
            is_bin,
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
        ) {
            // Only the project's own binaries: dependencies do not produce bin artifacts here.
            bins.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    let (name, path) = match bins.len() {
        1 => bins.remove(0),
        0 => {
            return Err(BuildError::Cargo {
                dir,
                message: "cargo built no binary: the project needs a [[bin]] target (src/main.rs)"
                    .into(),
            })
        }
        _ => {
            let names: Vec<_> = bins.iter().map(|(n, _)| n.as_str()).collect();
            return Err(BuildError::Cargo {
                dir,
                message: format!(
                    "the project has several binaries ({}): choose one with --bin NAME",
                    names.join(", ")
                ),
            });
        }
    };
    let bytes = std::fs::read(&path).map_err(|e| BuildError::Io {
        path: path.clone(),
        source: e,
    })?;
    Ok(CargoBinary {
        path,
        bytes,
        name,
        version: package_version(&dir),
    })
}
