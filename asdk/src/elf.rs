//! Checks that a binary can run as PID 1 of an Arrow guest: a static x86-64 executable.

use std::path::{Path, PathBuf};

use goblin::elf::dynamic::DF_1_PIE;
use goblin::elf::header::{machine_to_str, EM_X86_64, ET_DYN, ET_EXEC};
use goblin::elf::Elf;

/// How a static executable is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecKind {
    /// `ET_EXEC`: loaded at fixed addresses.
    Static,
    /// `ET_DYN` with `DF_1_PIE` and no interpreter: relocates itself (Rust's default with crt-static).
    StaticPie,
}

/// What the check learnt about an accepted binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticExecutable {
    /// Static or static-pie.
    pub kind: ExecKind,
    /// Entry point address from the ELF header.
    pub entry: u64,
}

/// Why a binary cannot be packaged.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The binary.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No ELF magic.
    #[error("{path} is not an ELF executable: give asdk a static x86-64 Linux binary, a Cargo project directory or a C source file (.c)")]
    NotElf {
        /// The binary.
        path: PathBuf,
    },
    /// ELF, but goblin could not parse it.
    #[error("{path} is a malformed ELF file ({reason}): rebuild it")]
    Malformed {
        /// The binary.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// A 32-bit ELF.
    #[error(
        "{path} is a 32-bit ELF: Arrow guests run 64-bit x86-64 binaries only; rebuild for x86_64"
    )]
    Not64Bit {
        /// The binary.
        path: PathBuf,
    },
    /// Another CPU architecture.
    #[error("{path} is built for {arch}: Arrow guests run x86-64 binaries only; rebuild for x86_64 (e.g. --target x86_64-unknown-linux-gnu)")]
    WrongArch {
        /// The binary.
        path: PathBuf,
        /// Architecture name from the ELF header.
        arch: String,
    },
    /// Object file, core dump or shared library.
    #[error("{path} is not an executable ({what}): give asdk a linked, static executable")]
    NotExecutable {
        /// The binary.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// Dynamically linked: needs an interpreter and/or shared libraries the guest does not have.
    #[error(
        "{path} is dynamically linked{}{}. An Arrow guest has no dynamic loader or shared \
         libraries: link the program statically, e.g. `musl-gcc -static` for C (or give asdk the \
         .c file), or `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target \
         x86_64-unknown-linux-gnu` for Rust (or give asdk the Cargo project directory)",
        interpreter.as_ref().map(|i| format!(" (interpreter {i})")).unwrap_or_default(),
        if needed.is_empty() { String::new() } else { format!("; it needs {}", needed.join(", ")) }
    )]
    Dynamic {
        /// The binary.
        path: PathBuf,
        /// `PT_INTERP`, if any.
        interpreter: Option<String>,
        /// `DT_NEEDED` libraries.
        needed: Vec<String>,
    },
}

/// Reads `path` and checks it; returns its bytes when it is a static x86-64 executable.
pub fn check_file(path: &Path) -> Result<(Vec<u8>, StaticExecutable), ElfError> {
    let bytes = std::fs::read(path).map_err(|source| ElfError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let info = check_bytes(&bytes, path)?;
    Ok((bytes, info))
}

/// Checks `bytes` (the contents of `path`, named in errors).
pub fn check_bytes(bytes: &[u8], path: &Path) -> Result<StaticExecutable, ElfError> {
    let path_buf = || path.to_owned();
    if bytes.len() < 5 || &bytes[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf { path: path_buf() });
    }
    // Class byte first: goblin would parse a 32-bit file fine, the message is clearer this way.
    if bytes[4] != goblin::elf::header::ELFCLASS64 {
        return Err(ElfError::Not64Bit { path: path_buf() });
    }
    let elf = Elf::parse(bytes).map_err(|e| ElfError::Malformed {
        path: path_buf(),
        reason: e.to_string(),
    })?;
    if elf.header.e_machine != EM_X86_64 {
        return Err(ElfError::WrongArch {
            path: path_buf(),
            arch: machine_to_str(elf.header.e_machine).to_owned(),
        });
    }
    if elf.interpreter.is_some() || !elf.libraries.is_empty() {
        return Err(ElfError::Dynamic {
            path: path_buf(),
            interpreter: elf.interpreter.map(str::to_owned),
            needed: elf.libraries.iter().map(|s| (*s).to_owned()).collect(),
        });
    }
    let kind = match elf.header.e_type {
        ET_EXEC => ExecKind::Static,
        ET_DYN => {
            let pie = elf
                .dynamic
                .as_ref()
                .is_some_and(|d| d.info.flags_1 & DF_1_PIE != 0);
            if !pie {
                return Err(ElfError::NotExecutable {
                    path: path_buf(),
                    what: "a shared library".into(),
                });
            }
            ExecKind::StaticPie
        }
        other => {
            return Err(ElfError::NotExecutable {
                path: path_buf(),
                what: format!(
                    "ELF type {}",
                    goblin::elf::header::et_to_str(other).trim_start_matches("ET_")
                ),
            })
        }
    };
    if elf.entry == 0 {
        return Err(ElfError::NotExecutable {
            path: path_buf(),
            what: "no entry point".into(),
        });
    }
    Ok(StaticExecutable {
        kind,
        entry: elf.entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("x")
    }

    #[test]
    fn rejects_non_elf() {
        let err = check_bytes(b"#!/bin/sh\necho hi\n", p()).unwrap_err();
        assert!(matches!(err, ElfError::NotElf { .. }), "{err}");
        assert!(err.to_string().contains("not an ELF"));
    }

    #[test]
    fn rejects_32_bit() {
        let mut b = b"\x7fELF\x01\x01\x01".to_vec();
        b.resize(64, 0);
        assert!(matches!(
            check_bytes(&b, p()).unwrap_err(),
            ElfError::Not64Bit { .. }
        ));
    }

    #[test]
    fn rejects_truncated_elf() {
        let b = b"\x7fELF\x02\x01\x01\x00\x00".to_vec();
        assert!(matches!(
            check_bytes(&b, p()).unwrap_err(),
            ElfError::Malformed { .. }
        ));
    }

    #[test]
    fn rejects_host_dynamic_binary() {
        // /bin/ls on any Debian-like host is dynamically linked against libc.
        let err = check_file(Path::new("/bin/ls")).unwrap_err();
        match &err {
            ElfError::Dynamic { needed, .. } => {
                assert!(
                    needed.iter().any(|n| n.starts_with("libc.so")),
                    "{needed:?}"
                )
            }
            other => panic!("unexpected {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("libc.so") && msg.contains("-static"), "{msg}");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err = check_file(Path::new("/nonexistent/asdk-test")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/asdk-test"));
    }
}
