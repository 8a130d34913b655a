//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! same entry points the libFuzzer targets call (arrow-vmm's and asdk's): every
//! input found by a fuzzing run (and every crash, once fixed) stays a
//! regression test.

use std::path::Path;

type Entry = fn(&str, &[u8]);

#[test]
fn fuzz_corpora_replay_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let crates: [(&[&str], Entry); 2] = [
        (arrow_vmm::fuzz::TARGETS, arrow_vmm::fuzz::run),
        (asdk::fuzz::TARGETS, asdk::fuzz::run),
    ];
    for (targets, run) in crates {
        for target in targets {
            let dir = root.join(target);
            let mut n = 0;
            for entry in
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                run(target, &data);
                n += 1;
            }
            assert!(n > 0, "corpus {} is empty", dir.display());
            eprintln!("{target}: {n} inputs replayed");
        }
    }
    asdk::fuzz::cleanup();
}
