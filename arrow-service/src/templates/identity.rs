//! What a template depends on, and the check that none of it changed: the guest kernel
//! (path, size, mtime; sha256 when those differ), the image digest (still in the store,
//! still what the template's reference names), arrowd's kernel command line, and the
//! snapshot files themselves.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::db::TemplateRecord;
use super::model::KernelIdentity;
use super::{MEMORY_FILE, STATE_FILE};
use crate::config::Config;
use crate::error::{Error, Result};

/// `sha256:<hex>` of a file, streamed.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Identity of the kernel at `path` now.
pub fn kernel_identity(path: &Path) -> Result<KernelIdentity> {
    let err = |e: std::io::Error| {
        Error::Internal(format!(
            "cannot read the guest kernel {}: {e}; restart arrowd with --kernel PATH",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    Ok(KernelIdentity {
        path: path.display().to_string(),
        size: meta.len(),
        mtime_ns: mtime_ns(&meta),
        sha256: sha256_file(path).map_err(err)?,
    })
}

/// Why the kernel no longer matches `k`, if it does not. Path, size and mtime equal means
/// unchanged; otherwise the content hash decides (a `touch` does not make a template stale).
fn kernel_change(cfg: &Config, k: &KernelIdentity) -> Option<String> {
    let now = cfg.kernel_path();
    if now.display().to_string() != k.path {
        return Some(format!(
            "arrowd's guest kernel is now {}, the template was made with {}",
            now.display(),
            k.path
        ));
    }
    let meta = match std::fs::metadata(&now) {
        Ok(m) => m,
        Err(e) => return Some(format!("the guest kernel {} is gone: {e}", k.path)),
    };
    if meta.len() == k.size && mtime_ns(&meta) == k.mtime_ns {
        return None;
    }
    match sha256_file(&now) {
        Ok(h) if h == k.sha256 => None,
        Ok(h) => Some(format!(
            "the guest kernel {} changed (was {}, now {h})",
            k.path, k.sha256
        )),
        Err(e) => Some(format!("cannot read the guest kernel {}: {e}", k.path)),
    }
}

/// Why `t` must not be used, if it must not: the kernel, the image or the command line
/// changed, or the snapshot files were damaged.
pub fn stale_reason(
    cfg: &Config,
    store: &asdk::Store,
    t: &TemplateRecord,
    dir: &Path,
) -> Option<String> {
    if let Some(why) = kernel_change(cfg, &t.spec.kernel) {
        return Some(why);
    }
    if cfg.kernel_cmdline != t.spec.base_cmdline {
        return Some(format!(
            "arrowd's --kernel-cmdline is now {:?}, the template was made with {:?}",
            cfg.kernel_cmdline, t.spec.base_cmdline
        ));
    }
    if t.spec.generic {
        if (t.spec.memory_mib, t.spec.vcpus) != (cfg.generic_memory_mib, cfg.generic_vcpus) {
            return Some(format!(
                "arrowd's generic template shape is now {} MiB and {} vCPU(s), this one has {} MiB and {}",
                cfg.generic_memory_mib, cfg.generic_vcpus, t.spec.memory_mib, t.spec.vcpus
            ));
        }
        // No image of its own: its image slot must be there instead.
        if let Some(root) = dir.parent() {
            let slot = super::generic::slot_path(root, &t.id);
            if let Err(e) = std::fs::metadata(&slot) {
                return Some(format!("its image slot {} is missing: {e}", slot.display()));
            }
        }
        return snapshot_missing(t, dir);
    }
    let digest: asdk::Digest = match t.spec.image_digest.parse() {
        Ok(d) => d,
        Err(_) => {
            return Some(format!(
                "stored image digest {:?} is damaged",
                t.spec.image_digest
            ))
        }
    };
    if let Err(e) = store.image_by_digest(&digest) {
        return Some(format!(
            "its image {} ({}) is no longer in the store: {e}",
            t.spec.image, t.spec.image_digest
        ));
    }
    match store.resolve(&t.spec.image) {
        Ok(now) if now != digest => {
            return Some(format!(
                "image {} now names {now}, the template was made from {}",
                t.spec.image, t.spec.image_digest
            ))
        }
        // A reference that was untagged still leaves the digest usable.
        _ => {}
    }
    snapshot_missing(t, dir)
}

/// Why the snapshot files in `dir` are not usable, if they are not.
fn snapshot_missing(t: &TemplateRecord, dir: &Path) -> Option<String> {
    let mem = dir.join(MEMORY_FILE);
    match std::fs::metadata(&mem) {
        Ok(m) if m.len() >= u64::from(t.spec.memory_mib) << 20 => {}
        Ok(m) => {
            return Some(format!(
                "{} is {} bytes, smaller than the template's memory",
                mem.display(),
                m.len()
            ))
        }
        Err(e) => return Some(format!("{} is missing: {e}", mem.display())),
    }
    if let Err(e) = std::fs::metadata(dir.join(STATE_FILE)) {
        return Some(format!(
            "{} is missing: {e}",
            dir.join(STATE_FILE).display()
        ));
    }
    None
}
