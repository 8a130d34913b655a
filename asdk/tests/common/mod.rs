//! Helpers shared by the integration tests: run the real `asdk` binary on a temp store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("asdk lives in the workspace")
        .to_owned()
}

/// Path of a sample app's C source.
pub fn app_source(app: &str) -> PathBuf {
    repo_root().join(format!("examples/apps/{app}/{app}.c"))
}

/// Runs `asdk --store <store> args…`.
pub fn asdk(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_asdk"))
        .arg("--store")
        .arg(store)
        .args(args)
        // Never fall back to the user's store, whatever the environment says.
        .env_remove("ASDK_STORE")
        .output()
        .expect("run asdk")
}

/// Runs asdk and asserts success; returns stdout.
pub fn asdk_ok(store: &Path, args: &[&str]) -> String {
    let out = asdk(store, args);
    assert!(
        out.status.success(),
        "asdk {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Builds a sample app into `store` and returns the image digest printed on stdout.
pub fn build_app(store: &Path, app: &str) -> String {
    let src = app_source(app);
    let out = asdk_ok(store, &["build", "-q", src.to_str().expect("utf-8 path")]);
    out.trim().to_owned()
}

/// Files under `dir` (recursively), for "nothing was written" checks.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A minimal static x86-64 executable (ET_EXEC, one PT_LOAD) that exits with status 42:
/// lets tests package a real ELF without any compiler.
pub fn tiny_static_elf() -> Vec<u8> {
    let code: [u8; 12] = [
        0xb8, 60, 0, 0, 0, // mov eax, 60 (exit)
        0xbf, 42, 0, 0, 0, // mov edi, 42
        0x0f, 0x05, // syscall
    ];
    let base: u64 = 0x40_0000;
    let total = 64 + 56 + code.len() as u64;
    let mut b = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    b.extend(2u16.to_le_bytes()); // ET_EXEC
    b.extend(62u16.to_le_bytes()); // EM_X86_64
    b.extend(1u32.to_le_bytes()); // EV_CURRENT
    b.extend((base + 120).to_le_bytes()); // e_entry
    b.extend(64u64.to_le_bytes()); // e_phoff
    b.extend(0u64.to_le_bytes()); // e_shoff
    b.extend(0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        b.extend(v.to_le_bytes()); // ehsize phentsize phnum shentsize shnum shstrndx
    }
    b.extend(1u32.to_le_bytes()); // PT_LOAD
    b.extend(5u32.to_le_bytes()); // R+X
    for v in [0u64, base, base, total, total, 0x1000] {
        b.extend(v.to_le_bytes()); // offset vaddr paddr filesz memsz align
    }
    b.extend_from_slice(&code);
    b
}
