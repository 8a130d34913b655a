//! The host files a snapshot maps besides its own directory: the pmem devices'
//! backing files (an image base, a generic template's image slot), recorded in
//! its `state.json`. A VMM restoring it in a jail must see them at the same paths.

use std::path::{Path, PathBuf};

/// A pmem backing file named by a snapshot, and whether the device writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFile {
    pub path: PathBuf,
    pub writable: bool,
}

/// The pmem backing files of the snapshot in `dir` (none when it has no
/// readable `state.json`: arrow-vmm then reports the damaged snapshot itself).
pub fn backing_files(dir: &Path) -> Vec<BackingFile> {
    match std::fs::read_to_string(dir.join("state.json")) {
        Ok(text) => parse(&text),
        Err(_) => Vec::new(),
    }
}

/// `state.json` is a header line (`ARROW-SNAPSHOT 1 sha256=…`) and JSON; only
/// `devices.pmem[].device.{path, read_only}` matter here. Anything else, or
/// an unexpected shape, yields nothing.
fn parse(text: &str) -> Vec<BackingFile> {
    let json = text.split_once('\n').map_or(text, |(_, rest)| rest);
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let Some(pmem) = v["devices"]["pmem"].as_array() else {
        return Vec::new();
    };
    pmem.iter()
        .filter_map(|p| {
            let d = &p["device"];
            let path = Path::new(d["path"].as_str()?);
            path.is_absolute().then(|| BackingFile {
                path: path.to_path_buf(),
                writable: d["read_only"].as_bool() == Some(false),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pmem_backing_files_are_read_from_the_state() {
        let text = "ARROW-SNAPSHOT 1 sha256=00\n{\"devices\":{\"pmem\":[\
            {\"slot\":{},\"device\":{\"path\":\"/var/lib/arrow/templates/g.slot\",\"read_only\":true}},\
            {\"device\":{\"path\":\"/run/x/upper.img\",\"read_only\":false}},\
            {\"device\":{\"path\":\"relative.img\",\"read_only\":true}}]}}";
        assert_eq!(
            parse(text),
            vec![
                BackingFile {
                    path: "/var/lib/arrow/templates/g.slot".into(),
                    writable: false
                },
                BackingFile {
                    path: "/run/x/upper.img".into(),
                    writable: true
                },
            ]
        );
    }

    #[test]
    fn anything_else_yields_nothing() {
        assert!(parse("").is_empty());
        assert!(parse("ARROW-SNAPSHOT 1 sha256=00\nnot json").is_empty());
        assert!(parse("ARROW-SNAPSHOT 1 sha256=00\n{\"devices\":{\"pmem\":null}}").is_empty());
        assert!(backing_files(Path::new("/nonexistent/dir")).is_empty());
    }
}
