//! The app spec: `arrow.toml` as the user writes it, and the resolved [`Spec`] stored in images.
//!
//! See `docs/image-format.md` for every field and its default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::reference::validate_name;

/// Version of the resolved spec's JSON schema.
pub const SPEC_SCHEMA_VERSION: u32 = 1;
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// Most vCPUs an image may ask for; arrowd accepts the same range.
pub const MAX_VCPUS: u8 = 32;
/// Default guest directory where shadowfs serves the app's files.
pub const DEFAULT_DATA_DIR: &str = "/data";
/// Largest vsock port: the notify device's APP_READY payload has 24 bits.
pub const MAX_PORT: u32 = 0x00FF_FFFF;

/// `arrow.toml` as written by the user: every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// Image name; default: the program's name.
    pub name: Option<String>,
    /// App version (metadata); default: the Cargo package version, else `0.0.0`.
    pub version: Option<String>,
    /// Arguments after argv\[0\] (argv\[0\] is always `/app`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// vsock ports the app listens on (exported to the host).
    #[serde(default)]
    pub ports: Vec<u32>,
    /// Number of vCPUs.
    pub vcpus: Option<u8>,
    /// Guest memory in MiB.
    pub memory_mib: Option<u32>,
    /// Guest directory where the shipped files appear (through shadowfs).
    pub data_dir: Option<String>,
    /// Files and directories shipped as the app's read-only data.
    #[serde(default)]
    pub files: Vec<FileSource>,
    /// How the app tells it is ready.
    pub readiness: Option<Readiness>,
}

/// One `[[files]]` entry of `arrow.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// File or directory on the build host, relative to the directory of `arrow.toml`.
    pub source: PathBuf,
    /// Path under `data_dir`; default: the source's file name.
    pub target: Option<String>,
}

/// How the host learns that the app is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Readiness {
    /// Ready as soon as the kernel execs the app (the APP_STARTED event).
    Started,
    /// APP_READY on the notify device: sent by the guest kernel when PID 1 first
    /// listens on a vsock port, or written by the app itself (I/O port 0x0AE0).
    Notify,
    /// Ready when a host connection to this guest vsock port succeeds.
    Vsock {
        /// One of the spec's `ports`.
        port: u32,
    },
}

/// The resolved spec stored in an image (config blob and `/arrow/spec.json` in the initrd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Always [`SPEC_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Image name.
    pub name: String,
    /// App version.
    pub version: String,
    /// Arguments after argv\[0\].
    pub args: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Exported vsock ports.
    pub ports: Vec<u32>,
    /// vCPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Readiness signal.
    pub readiness: Readiness,
    /// Guest directory where shadowfs serves `files`.
    pub data_dir: String,
    /// Shipped read-only files, sorted by path.
    pub files: Vec<ShippedFile>,
}

/// A file or directory in the image's files layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShippedFile {
    /// Path relative to `data_dir`, `/`-separated.
    pub path: String,
    /// `0755`-style permission bits (normalized to 0755 or 0644 for reproducibility).
    pub mode: u32,
    /// Whether this is a directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Digest of the contents (absent for directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

/// A spec problem, with the field and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// arrow.toml could not be read.
    #[error("cannot read spec {path}: {source}")]
    Read {
        /// The spec file.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// arrow.toml is not valid TOML or has unknown/mistyped fields.
    #[error("invalid spec {path}: {message}")]
    Parse {
        /// The spec file.
        path: PathBuf,
        /// Parser message (names the field and line).
        message: String,
    },
    /// A field has a value Arrow cannot use.
    #[error("invalid spec field `{field}`: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A `[[files]]` source could not be read.
    #[error("cannot ship file {path}: {message}")]
    File {
        /// Host path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl SpecFile {
    /// Reads and parses `arrow.toml`.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of `arrow.toml` (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// A shipped file's contents, kept next to the [`Spec`] until the image is assembled.
#[derive(Debug, Clone)]
pub struct FileData {
    /// Entry as recorded in the spec.
    pub entry: ShippedFile,
    /// Contents (empty for directories).
    pub data: Vec<u8>,
}

impl Spec {
    /// Applies defaults to `file` and validates it. `default_name`/`default_version` come from
    /// the program being packaged; `base_dir` is where `[[files]]` sources are relative to.
    pub fn resolve(
        file: &SpecFile,
        default_name: &str,
        default_version: &str,
        base_dir: &Path,
    ) -> Result<(Spec, Vec<FileData>), SpecError> {
        let data_dir = file
            .data_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned());
        let files = collect_files(&file.files, base_dir)?;
        let spec = Spec {
            schema_version: SPEC_SCHEMA_VERSION,
            name: file.name.clone().unwrap_or_else(|| default_name.to_owned()),
            version: file
                .version
                .clone()
                .unwrap_or_else(|| default_version.to_owned()),
            args: file.args.clone(),
            env: file.env.clone(),
            ports: file.ports.clone(),
            vcpus: file.vcpus.unwrap_or(DEFAULT_VCPUS),
            memory_mib: file.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            readiness: file.readiness.clone().unwrap_or(Readiness::Started),
            data_dir,
            files: files.iter().map(|f| f.entry.clone()).collect(),
        };
        spec.validate()?;
        Ok((spec, files))
    }

    /// Checks every field; used on build and again when an image is read or imported.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.schema_version != SPEC_SCHEMA_VERSION {
            return Err(invalid(
                "schema_version",
                format!(
                    "version {} is not supported (this asdk reads {SPEC_SCHEMA_VERSION}): upgrade asdk",
                    self.schema_version
                ),
            ));
        }
        validate_name(&self.name).map_err(|m| invalid("name", m))?;
        if self.version.is_empty() || self.version.chars().any(char::is_whitespace) {
            return Err(invalid(
                "version",
                "must be non-empty, without spaces (e.g. \"1.0.0\")",
            ));
        }
        if let Some(a) = self.args.iter().find(|a| a.contains('\0')) {
            return Err(invalid(
                "args",
                format!("argument {a:?} contains a NUL byte"),
            ));
        }
        for (key, value) in &self.env {
            let mut chars = key.chars();
            let key_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !key_ok {
                return Err(invalid(
                    "env",
                    format!("variable name {key:?} must match [A-Za-z_][A-Za-z0-9_]*"),
                ));
            }
            if value.contains(['\0', '\n']) {
                return Err(invalid(
                    "env",
                    format!("value of {key} contains a NUL or newline"),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for &port in &self.ports {
            if port == 0 || port > MAX_PORT {
                return Err(invalid(
                    "ports",
                    format!("port {port} is out of range: use 1..={MAX_PORT} (the ready event carries 24 bits)"),
                ));
            }
            if !seen.insert(port) {
                return Err(invalid("ports", format!("port {port} is listed twice")));
            }
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(invalid(
                "vcpus",
                format!("{} is out of range: use 1..={MAX_VCPUS}", self.vcpus),
            ));
        }
        if !(8..=1 << 20).contains(&self.memory_mib) {
            return Err(invalid(
                "memory_mib",
                format!("{} MiB is out of range: use 8..=1048576", self.memory_mib),
            ));
        }
        if let Readiness::Vsock { port } = self.readiness {
            if !self.ports.contains(&port) {
                return Err(invalid(
                    "readiness.port",
                    format!("port {port} is not in `ports`: add it there"),
                ));
            }
        }
        let dd = Path::new(&self.data_dir);
        let reserved = ["/", "/app", "/arrow", "/dev", "/proc", "/sys"];
        if !dd.is_absolute()
            || dd
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            || reserved.contains(&self.data_dir.trim_end_matches('/'))
            || self.data_dir.is_empty()
        {
            return Err(invalid(
                "data_dir",
                format!(
                    "{:?} must be an absolute guest directory other than {}, without '..' (e.g. \"/data\")",
                    self.data_dir,
                    reserved.join(", ")
                ),
            ));
        }
        for f in &self.files {
            check_relative(&f.path).map_err(|m| invalid("files", m))?;
        }
        Ok(())
    }

    /// Full argv as the guest runs it: `/app` followed by `args`.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(crate::image::APP_PATH.to_owned())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// The guest kernel command-line part that starts the app, per the guest-kernel contract:
    /// `arrow.app=/app`, then the environment as `KEY=VALUE` parameters, then `--` and the
    /// arguments. Values with spaces are double-quoted (the kernel strips the quotes); a value
    /// containing `"` cannot be expressed on a kernel command line and is an error.
    pub fn kernel_cmdline(&self) -> Result<String, SpecError> {
        fn word(field: &str, s: &str) -> Result<String, SpecError> {
            if s.contains('"') || s.contains(char::is_control) {
                return Err(invalid(
                    field,
                    format!("{s:?} contains '\"' or a control character, which a kernel command line cannot carry"),
                ));
            }
            Ok(if s.is_empty() || s.contains(char::is_whitespace) {
                format!("\"{s}\"")
            } else {
                s.to_owned()
            })
        }
        let mut parts = vec![format!("arrow.app={}", crate::image::APP_PATH)];
        for (k, v) in &self.env {
            let v = word("env", v)?;
            parts.push(match v.strip_prefix('"') {
                // The kernel wants the quote before the key: "KEY=a b".
                Some(rest) => format!("\"{k}={rest}"),
                None => format!("{k}={v}"),
            });
        }
        if !self.args.is_empty() {
            parts.push("--".to_owned());
            for a in &self.args {
                parts.push(word("args", a)?);
            }
        }
        Ok(parts.join(" "))
    }

    /// Serialized JSON, byte-for-byte deterministic (fields in declaration order, maps sorted).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty()
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
        || path.contains('\\')
        || path.ends_with('/')
    {
        return Err(format!(
            "target {path:?} must be a relative path under data_dir without '.', '..' or a trailing '/'"
        ));
    }
    Ok(())
}

/// Reads every `[[files]]` source (directories recursively) into sorted entries.
fn collect_files(sources: &[FileSource], base_dir: &Path) -> Result<Vec<FileData>, SpecError> {
    let mut out: BTreeMap<String, FileData> = BTreeMap::new();
    for src in sources {
        let host = base_dir.join(&src.source);
        let target = match &src.target {
            Some(t) => t.trim_start_matches("./").to_owned(),
            None => host
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
                .ok_or_else(|| SpecError::File {
                    path: host.clone(),
                    message: "has no usable file name: set `target`".into(),
                })?,
        };
        check_relative(&target).map_err(|m| invalid("files", m))?;
        // Parent directories of a nested target are part of the tree too.
        let mut parent = Path::new(&target).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let key = p.to_string_lossy().into_owned();
            out.entry(key.clone()).or_insert_with(|| dir_entry(key));
            parent = p.parent();
        }
        add_path(&host, target, &mut out)?;
    }
    Ok(out.into_values().collect())
}

fn dir_entry(path: String) -> FileData {
    FileData {
        entry: ShippedFile {
            path,
            mode: 0o755,
            dir: true,
            size: 0,
            digest: None,
        },
        data: Vec::new(),
    }
}

fn add_path(
    host: &Path,
    target: String,
    out: &mut BTreeMap<String, FileData>,
) -> Result<(), SpecError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |message: String| SpecError::File {
        path: host.to_owned(),
        message,
    };
    let meta = std::fs::symlink_metadata(host).map_err(|e| fail(e.to_string()))?;
    if meta.is_dir() {
        out.insert(target.clone(), dir_entry(target.clone()));
        let mut children: Vec<_> = std::fs::read_dir(host)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let name = child.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| fail(format!("{:?} is not a UTF-8 file name: rename it", name)))?;
            add_path(&child.path(), format!("{target}/{name}"), out)?;
        }
        Ok(())
    } else if meta.is_file() {
        let data = std::fs::read(host).map_err(|e| fail(e.to_string()))?;
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        if out.contains_key(&target) {
            return Err(fail(format!("target {target:?} is shipped twice")));
        }
        out.insert(
            target.clone(),
            FileData {
                entry: ShippedFile {
                    path: target,
                    mode,
                    dir: false,
                    size: data.len() as u64,
                    digest: Some(Digest::of(&data)),
                },
                data,
            },
        );
        Ok(())
    } else {
        Err(fail(
            "is neither a regular file nor a directory (symlinks and devices are not shipped): copy the file it points to".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<Spec, SpecError> {
        let f = SpecFile::parse(text, Path::new("arrow.toml"))?;
        Spec::resolve(&f, "hello", "0.0.0", Path::new(".")).map(|(s, _)| s)
    }

    #[test]
    fn defaults_when_empty() {
        let s = resolve("").unwrap();
        assert_eq!(s.name, "hello");
        assert_eq!(s.vcpus, DEFAULT_VCPUS);
        assert_eq!(s.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(s.readiness, Readiness::Started);
        assert_eq!(s.argv(), vec!["/app".to_owned()]);
        assert_eq!(s.data_dir, "/data");
    }

    #[test]
    fn full_spec() {
        let s = resolve(
            r#"
            name = "echo"
            version = "1.2.3"
            args = ["--port", "5000"]
            env = { RUST_LOG = "info" }
            ports = [5000]
            vcpus = 2
            memory_mib = 64
            readiness = { kind = "vsock", port = 5000 }
            "#,
        )
        .unwrap();
        assert_eq!(s.argv(), ["/app", "--port", "5000"]);
        assert_eq!(s.readiness, Readiness::Vsock { port: 5000 });
        assert_eq!(s.env["RUST_LOG"], "info");
        // JSON round trip is lossless and deterministic.
        let json = s.to_json();
        let back: Spec = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.to_json(), json);
    }

    #[test]
    fn kernel_cmdline_quotes_spaces() {
        let s = resolve(
            "args = [\"--port\", \"5000\", \"two words\"]\nenv = { A = \"1\", B = \"x y\" }",
        )
        .unwrap();
        assert_eq!(
            s.kernel_cmdline().unwrap(),
            "arrow.app=/app A=1 \"B=x y\" -- --port 5000 \"two words\""
        );
        assert_eq!(
            resolve("").unwrap().kernel_cmdline().unwrap(),
            "arrow.app=/app"
        );
        let bad = resolve("args = [\"say \\\"hi\\\"\"]").unwrap();
        assert!(bad.kernel_cmdline().is_err());
    }

    #[test]
    fn rejects_bad_values_with_field_names() {
        let cases = [
            ("vcpus = 0", "vcpus"),
            ("memory_mib = 1", "memory_mib"),
            ("ports = [0]", "ports"),
            ("ports = [1, 1]", "ports"),
            ("env = { \"1X\" = \"a\" }", "env"),
            (
                "readiness = { kind = \"vsock\", port = 9 }",
                "readiness.port",
            ),
            ("data_dir = \"relative\"", "data_dir"),
            ("name = \"Bad Name\"", "name"),
        ];
        for (text, field) in cases {
            let err = resolve(text).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let err = resolve("vcpu = 2").unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn collects_files_sorted_with_parents() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf")).unwrap();
        std::fs::write(dir.path().join("conf/b.txt"), "b").unwrap();
        std::fs::write(dir.path().join("conf/a.sh"), "a").unwrap();
        std::fs::set_permissions(
            dir.path().join("conf/a.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(dir.path().join("x.json"), "{}").unwrap();
        let f = SpecFile::parse(
            "files = [{ source = \"conf\" }, { source = \"x.json\", target = \"etc/x.json\" }]",
            Path::new("arrow.toml"),
        )
        .unwrap();
        let (spec, data) = Spec::resolve(&f, "app", "0", dir.path()).unwrap();
        let paths: Vec<_> = spec.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["conf", "conf/a.sh", "conf/b.txt", "etc", "etc/x.json"]
        );
        assert_eq!(spec.files[1].mode, 0o755);
        assert_eq!(spec.files[2].mode, 0o644);
        assert_eq!(data[4].data, b"{}");
        let bad = SpecFile::parse("files = [{ source = \"missing\" }]", Path::new("a")).unwrap();
        let err = Spec::resolve(&bad, "app", "0", dir.path()).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
