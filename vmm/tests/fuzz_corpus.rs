//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! same entry points the libFuzzer targets call: every input found by a
//! fuzzing run (and every crash, once fixed) stays a regression test.

use std::path::Path;

#[test]
fn vmm_fuzz_corpora_replay_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for target in arrow_vmm::fuzz::TARGETS {
        let dir = root.join(target);
        let mut n = 0;
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            arrow_vmm::fuzz::run(target, &data);
            n += 1;
        }
        assert!(n > 0, "corpus {} is empty", dir.display());
        eprintln!("{target}: {n} inputs replayed");
    }
}
