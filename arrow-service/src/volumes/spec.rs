//! A volume as the API takes it, and what a valid one is. REST (`POST /instances`), actl
//! (`-v`) and CRI (`mounts`) all create instances through the supervisor, which calls
//! [`validate`]: a bad volume is a 400 / CRI InvalidArgument naming what is wrong.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

/// Most volumes one instance may have (the guest kernel takes at most 16 `arrow.vol=`).
pub const MAX_VOLUMES: usize = 16;
/// Most volumes served by virtiofsd per instance (arrow-vmm attaches at most 8 `--fs`).
pub const MAX_FS_VOLUMES: usize = 8;
/// Longest guest path (it travels on the guest kernel command line).
pub const MAX_GUEST_PATH: usize = 256;

/// Guest paths a volume may not be, or be under: the guest kernel's own mounts, the app
/// binary, and where ainit mounts the packed volumes.
const RESERVED: [&str; 5] = ["/proc", "/sys", "/dev", "/.arrow", "/app"];

/// A host directory or file the guest sees at `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Absolute host path of a directory, or of a file (read-only volumes only).
    pub host_path: String,
    /// Absolute guest path (created in the guest if missing).
    pub guest_path: String,
    /// The guest cannot change it; it sees the host content as of the instance's start.
    #[serde(default)]
    pub read_only: bool,
}

/// What kind of host object a volume names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
}

/// Checks a guest path: absolute, plain components (no `.`/`..`), no whitespace, `:`,
/// `"` or control characters (it goes on the kernel command line as
/// `arrow.vol=KIND:ID:MODE:PATH`), not `/` and not /proc, /sys, /dev, /.arrow, /app or
/// under them.
pub fn check_guest_path(p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("bad guest path {p:?}: {why}"));
    if !p.starts_with('/') {
        return bad("it must be absolute, e.g. /data");
    }
    if p.len() > MAX_GUEST_PATH {
        return bad(&format!("it is longer than {MAX_GUEST_PATH} bytes"));
    }
    if let Some(c) = p
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | '"'))
    {
        return bad(&format!(
            "it contains {c:?}; whitespace, ':', '\"' and control characters cannot be passed to the guest"
        ));
    }
    let path = Path::new(p);
    if p.split('/').skip(1).any(|c| c == ".." || c == ".") {
        return bad("'.' and '..' are not allowed; give the plain path");
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return bad("give a plain absolute path");
    }
    if path.components().count() < 2 {
        return bad("a volume cannot replace the guest's root; pick a directory such as /data");
    }
    if let Some(r) = RESERVED.iter().find(|r| path.starts_with(r)) {
        return bad(&format!(
            "{r} is the guest's own (kernel filesystems, the app, Arrow's mounts); pick another path"
        ));
    }
    Ok(())
}

/// Checks a host path: absolute and an existing directory or regular file (a symlink
/// given here is followed, as docker does; symlinks inside the volume are not).
pub fn check_host_path(p: &str) -> Result<HostKind, String> {
    if !p.starts_with('/') || p.contains('\0') {
        return Err(format!(
            "bad host path {p:?}: it must be an absolute path, e.g. /srv/data"
        ));
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(HostKind::Dir),
        Ok(m) if m.is_file() => Ok(HostKind::File),
        Ok(_) => Err(format!(
            "host path {p:?} is neither a directory nor a regular file: only those can be volumes"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "host path {p:?} does not exist: create it first (volumes are not created on the host)"
        )),
        Err(e) => Err(format!("cannot read host path {p:?}: {e}")),
    }
}

/// Checks an instance's volumes; `state_dir` (arrowd's) may not be shared with a guest.
pub fn validate(volumes: &[Volume], state_dir: &Path) -> Result<(), String> {
    if volumes.len() > MAX_VOLUMES {
        return Err(format!(
            "too many volumes ({}): an instance can have at most {MAX_VOLUMES}",
            volumes.len()
        ));
    }
    let writable = volumes.iter().filter(|v| !v.read_only).count();
    if writable > MAX_FS_VOLUMES {
        return Err(format!(
            "too many writable volumes ({writable}): an instance can have at most {MAX_FS_VOLUMES} (each is served by its own virtiofsd); make some read-only (:ro)"
        ));
    }
    for (i, v) in volumes.iter().enumerate() {
        check_guest_path(&v.guest_path)?;
        if volumes[..i].iter().any(|o| o.guest_path == v.guest_path) {
            return Err(format!(
                "guest path {:?} is given to two volumes: each volume needs its own guest path",
                v.guest_path
            ));
        }
        let kind = check_host_path(&v.host_path)?;
        if kind == HostKind::File && !v.read_only {
            return Err(format!(
                "host path {:?} is a file: a file can only be a read-only volume (add :ro, or share its directory)",
                v.host_path
            ));
        }
        let host = std::fs::canonicalize(&v.host_path)
            .map_err(|e| format!("cannot resolve host path {:?}: {e}", v.host_path))?;
        let state = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        if host.starts_with(&state) || state.starts_with(&host) {
            return Err(format!(
                "host path {:?} holds (or is inside) arrowd's state directory {}: instances may not see it",
                v.host_path,
                state.display()
            ));
        }
    }
    Ok(())
}

/// `HOST:GUEST[:ro|:rw]` (docker's `-v` syntax) as a volume.
pub fn parse_docker(text: &str) -> Result<Volume, String> {
    let bad = || {
        format!("bad volume {text:?}: write HOST_PATH:GUEST_PATH or HOST_PATH:GUEST_PATH:ro, e.g. /srv/data:/data:ro")
    };
    let parts: Vec<&str> = text.split(':').collect();
    let (host, guest, read_only) = match parts.as_slice() {
        [h, g] => (h, g, false),
        [h, g, "ro"] => (h, g, true),
        [h, g, "rw"] => (h, g, false),
        _ => return Err(bad()),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(bad());
    }
    Ok(Volume {
        host_path: (*host).to_owned(),
        guest_path: (*guest).to_owned(),
        read_only,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A volume for tests (also the plan's).
    pub(crate) fn vol(host: &Path, guest: &str, ro: bool) -> Volume {
        Volume {
            host_path: host.display().to_string(),
            guest_path: guest.into(),
            read_only: ro,
        }
    }

    #[test]
    fn guest_paths() {
        for ok in [
            "/data",
            "/etc/config",
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "/devices",
            "/application",
        ] {
            check_guest_path(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (p, why) in [
            ("data", "absolute"),
            ("/", "root"),
            ("/a/../etc", "'..'"),
            ("/a/./b", "'.'"),
            ("/proc", "/proc"),
            ("/sys/fs", "/sys"),
            ("/dev/termination-log", "/dev"),
            ("/.arrow/volumes", "/.arrow"),
            ("/app", "/app"),
            ("/a b", "whitespace"),
            ("/a\tb", "whitespace"),
            ("/a:b", "':'"),
            ("/a\"b", "'\"'"),
        ] {
            let e = check_guest_path(p).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
        assert!(check_guest_path(&format!("/{}", "a".repeat(MAX_GUEST_PATH))).is_err());
    }

    #[test]
    fn volumes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 x\n").unwrap();
        validate(
            &[vol(&data, "/data", false), vol(&file, "/etc/hosts", true)],
            &state,
        )
        .unwrap();
        let e = validate(&[vol(&dir.path().join("nope"), "/d", true)], &state).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let e = validate(&[vol(&file, "/etc/hosts", false)], &state).unwrap_err();
        assert!(e.contains("read-only"), "{e}");
        let e = validate(&[vol(&data, "/d", true), vol(&data, "/d", false)], &state).unwrap_err();
        assert!(e.contains("two volumes"), "{e}");
        let e = validate(&[vol(&state.join("."), "/d", true)], &state).unwrap_err();
        assert!(e.contains("state directory"), "{e}");
        let e = validate(&[vol(dir.path(), "/d", true)], &state).unwrap_err();
        assert!(e.contains("state directory"), "{e}");
        let e = validate(&[vol(Path::new("/dev/null"), "/d", true)], &state).unwrap_err();
        assert!(e.contains("neither"), "{e}");
        let many: Vec<Volume> = (0..=MAX_VOLUMES)
            .map(|i| vol(&data, &format!("/d{i}"), true))
            .collect();
        assert!(validate(&many, &state).unwrap_err().contains("at most 16"));
        let rw: Vec<Volume> = (0..=MAX_FS_VOLUMES)
            .map(|i| vol(&data, &format!("/d{i}"), false))
            .collect();
        assert!(validate(&rw, &state).unwrap_err().contains("writable"));
        let e = validate(&[vol(Path::new("rel"), "/d", true)], &state).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn docker_syntax() {
        assert_eq!(
            parse_docker("/srv:/data:ro").unwrap(),
            Volume {
                host_path: "/srv".into(),
                guest_path: "/data".into(),
                read_only: true
            }
        );
        assert!(!parse_docker("/srv:/data").unwrap().read_only);
        assert!(!parse_docker("/srv:/data:rw").unwrap().read_only);
        for bad in ["/srv", "/srv:/data:rx", ":/data", "/srv:", "/a:/b:ro:x"] {
            assert!(parse_docker(bad).is_err(), "{bad}");
        }
    }
}
