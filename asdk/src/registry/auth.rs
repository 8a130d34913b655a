//! Registry credentials: given explicitly (`--creds`, `--registry-token`) or read from a
//! docker-style `config.json` / podman `auth.json`.
//!
//! Files searched, first match for the registry wins: the `--authfile` if given (and only
//! it), else `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. An entry under `auths` is keyed
//! by the registry host (`localhost:5000`), optionally with a scheme and path
//! (`https://index.docker.io/v1/` for Docker Hub), and holds `auth` (base64 of
//! `user:password`), or `username` + `password`, or `registrytoken` (a bearer token).
//! Credential helpers (`credsStore`, `credHelpers`) are not run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::{RegistryError, Result};

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials.
    Anonymous,
    /// HTTP basic (or exchanged for a token when the registry asks for one).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// A bearer token sent as is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Parses `USER:PASSWORD` (as podman's `--creds`); a missing password is an error.
    pub fn parse_user_pass(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials::Basic {
                username: u.to_owned(),
                password: p.to_owned(),
            }),
            _ => Err(RegistryError::Credentials(
                "--creds wants USER:PASSWORD".into(),
            )),
        }
    }

    pub(crate) fn to_oci(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// The auth files searched when none is given, in order.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        out.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        out.push(PathBuf::from(d).join("containers/auth.json"));
    }
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => out.push(PathBuf::from(d).join("config.json")),
        None => {
            if let Some(h) = std::env::var_os("HOME") {
                out.push(PathBuf::from(h).join(".docker/config.json"));
            }
        }
    }
    out
}

/// Credentials for `registry`: the explicit ones if given, else the first auth file entry
/// for it, else anonymous.
pub fn lookup(
    registry: &str,
    explicit: Option<&Credentials>,
    auth_file: Option<&Path>,
) -> Result<Credentials> {
    if let Some(c) = explicit {
        return Ok(c.clone());
    }
    let files = match auth_file {
        Some(f) => {
            if !f.is_file() {
                return Err(RegistryError::Credentials(format!(
                    "auth file {} does not exist",
                    f.display()
                )));
            }
            vec![f.to_owned()]
        }
        None => default_auth_files(),
    };
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(RegistryError::Io { path: f, source }),
        };
        let file: AuthFile = serde_json::from_str(&text).map_err(|e| {
            RegistryError::Credentials(format!("{} is not a valid auth file: {e}", f.display()))
        })?;
        if let Some(c) = from_file(&file, registry, &f)? {
            tracing::debug!(registry, file = %f.display(), "credentials from auth file");
            return Ok(c);
        }
    }
    Ok(Credentials::Anonymous)
}

/// The host part of an `auths` key: `https://host:port/v1/` → `host:port`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn same_registry(a: &str, b: &str) -> bool {
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    a == b || (hub(a) && hub(b))
}

fn from_file(file: &AuthFile, registry: &str, path: &Path) -> Result<Option<Credentials>> {
    let entry = file
        .auths
        .iter()
        .find(|(k, _)| same_registry(key_host(k), registry))
        .map(|(_, e)| e);
    let Some(entry) = entry else {
        if file
            .cred_helpers
            .keys()
            .any(|k| same_registry(key_host(k), registry))
            || file.creds_store.is_some()
        {
            tracing::warn!(
                registry,
                file = %path.display(),
                "credential helpers are not supported; give --creds or an `auths` entry"
            );
        }
        return Ok(None);
    };
    let bad = |why: &str| {
        RegistryError::Credentials(format!("{}: entry for {registry}: {why}", path.display()))
    };
    if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::Bearer(token.to_owned())));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("`auth` is not base64"))?;
        let text = String::from_utf8(raw).map_err(|_| bad("`auth` is not UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| bad("`auth` is not base64 of USER:PASSWORD"))?;
        return Ok(Some(Credentials::Basic {
            username: u.to_owned(),
            password: p.to_owned(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials::Basic {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Err(bad("no `auth`, `username`/`password` or `registrytoken`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config_entries() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        std::fs::write(
            &f,
            format!(
                r#"{{"auths":{{"localhost:5000":{{"auth":"{auth}"}},
                  "https://index.docker.io/v1/":{{"username":"bob","password":"pw"}},
                  "ghcr.io":{{"registrytoken":"tok"}}}}}}"#
            ),
        )
        .unwrap();
        assert_eq!(
            lookup("localhost:5000", None, Some(&f)).unwrap(),
            Credentials::Basic {
                username: "alice".into(),
                password: "s3cret:x".into()
            }
        );
        assert_eq!(
            lookup("docker.io", None, Some(&f)).unwrap(),
            Credentials::Basic {
                username: "bob".into(),
                password: "pw".into()
            }
        );
        assert_eq!(
            lookup("ghcr.io", None, Some(&f)).unwrap(),
            Credentials::Bearer("tok".into())
        );
        assert_eq!(
            lookup("other:1", None, Some(&f)).unwrap(),
            Credentials::Anonymous
        );
        let explicit = Credentials::Bearer("t".into());
        assert_eq!(
            lookup("localhost:5000", Some(&explicit), Some(&f)).unwrap(),
            explicit
        );
        assert!(lookup("x", None, Some(&dir.path().join("missing.json"))).is_err());
    }

    #[test]
    fn rejects_broken_entries_and_parses_creds_flag() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, r#"{"auths":{"r.example":{"auth":"!!"}}}"#).unwrap();
        let e = lookup("r.example", None, Some(&f)).unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        assert!(Credentials::parse_user_pass("u:p").is_ok());
        assert!(Credentials::parse_user_pass("nopass").is_err());
        assert!(
            !format!("{:?}", Credentials::parse_user_pass("u:hunter2").unwrap())
                .contains("hunter2")
        );
    }
}
