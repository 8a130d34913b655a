//! Entry points of the coverage-guided fuzz targets for image parsing
//! (`fuzz/`, libFuzzer): OCI import, cpio archives, specs and manifests from
//! files nobody checked. The corpora in `fuzz/corpus/<target>/` are replayed
//! by `tests/tests/fuzz_corpus.rs` in every `cargo test`; see docs/fuzzing.md.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::image::Manifest;
use crate::spec::Spec;
use crate::store::Store;

/// The names of the targets, as in `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[&str] = &["image_import"];

/// Runs target `name` on `data` (the corpus replay uses this).
pub fn run(name: &str, data: &[u8]) {
    if name == "image_import" {
        image_import(data)
    }
}

/// One store for the whole fuzzing process (imports that succeed add to it).
fn store() -> Option<&'static (Store, PathBuf)> {
    static STORE: OnceLock<Option<(Store, PathBuf)>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("arrow-fuzz-store-{}", std::process::id()));
            let store = Store::open(dir.join("store")).ok()?;
            // libFuzzer ends the process with exit() after -runs or
            // -max_total_time: remove the store then too, not only when the
            // corpus replay calls `cleanup`. (A crash still leaves it, beside
            // the crash input that explains it.)
            // SAFETY: `remove_store_at_exit` is an `extern "C" fn()` that
            // neither unwinds nor calls exit; registering it has no other effect.
            let _ = unsafe { libc::atexit(remove_store_at_exit) };
            Some((store, dir))
        })
        .as_ref()
}

extern "C" fn remove_store_at_exit() {
    // A panic must not unwind into libc.
    let _ = std::panic::catch_unwind(cleanup);
}

/// Removes the store of this process (the corpus replay calls it last).
pub fn cleanup() {
    if let Some((_, dir)) = store() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// First byte selects: 0 cpio archive, 1 spec JSON, 2 manifest JSON,
/// anything else an OCI layout tar archive imported into a store.
pub fn image_import(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            let _ = crate::cpio::read(rest);
        }
        1 => {
            if let Ok(spec) = serde_json::from_slice::<Spec>(rest) {
                if spec.validate().is_ok() {
                    let _ = spec.kernel_cmdline();
                }
            }
        }
        2 => {
            if let Ok(m) = Manifest::parse(rest, "fuzz") {
                let _ = m.content_size();
            }
        }
        _ => {
            let Some((store, dir)) = store() else {
                return;
            };
            static N: AtomicU64 = AtomicU64::new(0);
            let tar = dir.join(format!("in-{}.tar", N.fetch_add(1, Ordering::Relaxed)));
            if std::fs::write(&tar, rest).is_ok() {
                let _ = crate::oci::import(store, &tar, &[]);
            }
            let _ = std::fs::remove_file(&tar);
        }
    }
}
