//! The files a dynamically linked VMM binary needs to start: its ELF interpreter
//! (PT_INTERP) and the shared libraries the interpreter resolves for it
//! (`<interpreter> --list <binary>`, what `ldd` does). They are bound read-only
//! and executable into every jail; a static binary needs none.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Why the runtime files of the VMM binary are unknown.
#[derive(Debug, thiserror::Error)]
pub enum LibsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not an ELF executable: pass arrowd the arrow-vmm binary (--vmm)")]
    NotElf(PathBuf),
    #[error("cannot run {interp} --list {bin}: {why}")]
    List {
        interp: PathBuf,
        bin: PathBuf,
        why: String,
    },
    #[error("{bin} needs {lib}, which the loader cannot find: install it, or build arrow-vmm statically")]
    NotFound { bin: PathBuf, lib: String },
}

/// The binary itself, its interpreter and its libraries (absolute host paths).
pub fn runtime_files(bin: &Path) -> Result<Vec<PathBuf>, LibsError> {
    let mut files = vec![bin.to_path_buf()];
    if let Some(interp) = interpreter(bin)? {
        let out = std::process::Command::new(&interp)
            .arg("--list")
            .arg(bin)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| LibsError::List {
                interp: interp.clone(),
                bin: bin.to_path_buf(),
                why: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(LibsError::List {
                interp,
                bin: bin.to_path_buf(),
                why: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        files.push(interp);
        files.extend(parse_list(&String::from_utf8_lossy(&out.stdout), bin)?);
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// PT_INTERP of `bin`, if it has one. Only the headers are read (a debug
/// build of arrow-vmm is large).
fn interpreter(bin: &Path) -> Result<Option<PathBuf>, LibsError> {
    use goblin::elf::program_header;
    let read_err = |source| LibsError::Read {
        path: bin.to_path_buf(),
        source,
    };
    let mut head = Vec::new();
    std::fs::File::open(bin)
        .map_err(read_err)?
        .take(64 << 10)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    let not_elf = || LibsError::NotElf(bin.to_path_buf());
    let h = goblin::elf::Elf::parse_header(&head).map_err(|_| not_elf())?;
    let ctx = goblin::container::Ctx::new(
        h.container().map_err(|_| not_elf())?,
        h.endianness().map_err(|_| not_elf())?,
    );
    let phs = program_header::ProgramHeader::parse(
        &head,
        usize::try_from(h.e_phoff).map_err(|_| not_elf())?,
        usize::from(h.e_phnum),
        ctx,
    )
    .map_err(|_| not_elf())?;
    let Some(ph) = phs.iter().find(|p| p.p_type == program_header::PT_INTERP) else {
        return Ok(None);
    };
    let start = usize::try_from(ph.p_offset).map_err(|_| not_elf())?;
    let end = start
        .checked_add(usize::try_from(ph.p_filesz).map_err(|_| not_elf())?)
        .ok_or_else(not_elf)?;
    let raw = head.get(start..end).ok_or_else(not_elf)?;
    let name = raw.split(|b| *b == 0).next().unwrap_or_default();
    let path = PathBuf::from(String::from_utf8_lossy(name).into_owned());
    if !path.is_absolute() {
        return Err(not_elf());
    }
    Ok(Some(path))
}

/// The absolute paths in the loader's `--list` output: `name => /path (0x…)`
/// and `/path (0x…)`; the vDSO has no file.
fn parse_list(text: &str, bin: &Path) -> Result<Vec<PathBuf>, LibsError> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(LibsError::NotFound {
                        bin: bin.to_path_buf(),
                        lib: name.trim().to_owned(),
                    });
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_list_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f05)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f05)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f05)\n";
        assert_eq!(
            parse_list(text, Path::new("/b")).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(matches!(
            parse_list("\tlibfoo.so => not found\n", Path::new("/b")),
            Err(LibsError::NotFound { .. })
        ));
    }

    #[test]
    fn this_test_binary_and_a_script() {
        // The test binary is linked like arrow-vmm: it runs, so its files exist.
        let me = std::env::current_exe().unwrap();
        let files = runtime_files(&me).unwrap();
        assert!(files.contains(&me));
        assert!(
            files.iter().all(|f| f.is_absolute() && f.exists()),
            "{files:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(matches!(runtime_files(&script), Err(LibsError::NotElf(_))));
    }
}
