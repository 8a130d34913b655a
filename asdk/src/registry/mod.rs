//! Images through OCI distribution registries: `asdk push` / `asdk pull`, arrowd's
//! `POST /images/pull` and the CRI `PullImage` all call [`push`] and [`pull`].
//!
//! The wire protocol is `oci-client`'s (rustls with the ring provider, no OpenSSL). What
//! this module adds: Arrow's media types, the local [`Store`], credentials from docker-style
//! auth files ([`auth`]), plain HTTP only for loopback or explicitly insecure registries,
//! digest verification of everything pulled (a tampered blob is refused and nothing is
//! stored), no upload of blobs the registry already has, resumed and retried downloads, and
//! progress on stderr ([`ProgressMode`]). See docs/asdk.md "Registries".

pub mod auth;
mod progress;
mod pull;
mod push;

use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;

use crate::digest::Digest;
use crate::reference::Reference;
use crate::store::StoreError;

pub use auth::Credentials;
pub use progress::ProgressMode;
pub use pull::{pull, Pulled};
pub use push::{push, Pushed};

/// What went wrong talking to a registry; each names the registry or reference involved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference is not `[REGISTRY/]REPOSITORY[:TAG|@DIGEST]`.
    #[error("invalid registry reference '{input}': {reason}")]
    BadReference {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Credentials could not be read.
    #[error("registry credentials: {0}")]
    Credentials(String),
    /// The registry refused the credentials (or needs some).
    #[error("{registry}: authentication failed ({detail}); give credentials with --creds USER:PASSWORD, --registry-token or an auth file (--authfile, ~/.docker/config.json)")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// The registry's answer.
        detail: String,
    },
    /// The registry has no such image.
    #[error("{reference}: not found in the registry ({detail})")]
    NotFound {
        /// The remote reference.
        reference: String,
        /// The registry's answer.
        detail: String,
    },
    /// Talking to the registry failed (network, TLS, a server error).
    #[error("{registry}: {source}{hint}")]
    Client {
        /// Registry host.
        registry: String,
        /// The client error.
        #[source]
        source: OciDistributionError,
        /// A hint for the user, or empty.
        hint: String,
    },
    /// Content did not match its digest.
    #[error("{what} from {registry} hashes to {actual}, not {expected}: the registry served corrupted or tampered content; nothing was stored")]
    Tampered {
        /// Registry host.
        registry: String,
        /// Which object (manifest, blob).
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// The registry's content is not an Arrow image (or not a valid one).
    #[error("{reference}: {reason}")]
    NotArrow {
        /// The remote reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The local image store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, RegistryError>;

/// How to reach a registry and what to show while doing it.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Credentials; `None` looks them up in the auth files ([`auth::lookup`]).
    pub credentials: Option<Credentials>,
    /// A docker-style `config.json` / podman `auth.json` to read instead of the default ones.
    pub auth_file: Option<PathBuf>,
    /// Registries (`HOST[:PORT]`) to reach over plain HTTP. Loopback registries
    /// (`localhost`, `127.0.0.0/8`, `[::1]`) always are.
    pub insecure_registries: Vec<String>,
    /// Progress on stderr.
    pub progress: ProgressMode,
    /// Attempts per network operation after the first (default 4).
    pub retries: Option<u32>,
}

impl RegistryOptions {
    fn retries(&self) -> u32 {
        self.retries.unwrap_or(4)
    }
}

/// A remote image reference and the local name it is stored under.
#[derive(Debug, Clone)]
pub struct RemoteRef {
    oci: oci_client::Reference,
    /// Registry host as written (`localhost:5000`, `docker.io`).
    pub registry: String,
    /// `REGISTRY/REPOSITORY:TAG` (or `@DIGEST`) as shown to the user.
    pub display: String,
    /// The local reference a pull stores the image under: `REGISTRY/REPOSITORY:TAG`, as
    /// docker does (Docker Hub names in their short form); `None` for a pull by digest.
    pub local: Option<Reference>,
}

impl RemoteRef {
    /// Parses `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`; without a registry host, Docker Hub.
    pub fn parse(input: &str) -> Result<Self> {
        let bad = |reason: String| RegistryError::BadReference {
            input: input.to_owned(),
            reason,
        };
        let oci: oci_client::Reference = input.parse().map_err(|e: oci_client::ParseError| {
            bad(format!(
                "{e}; expected [REGISTRY/]REPOSITORY[:TAG] or REPOSITORY@sha256:HEX"
            ))
        })?;
        if let Some(d) = oci.digest() {
            d.parse::<Digest>().map_err(|e| bad(e.0))?;
        }
        let registry = oci.registry().to_owned();
        let short_repo = match registry.as_str() {
            "docker.io" | "index.docker.io" => oci
                .repository()
                .strip_prefix("library/")
                .unwrap_or(oci.repository())
                .to_owned(),
            _ => format!("{registry}/{}", oci.repository()),
        };
        let local = match (oci.digest(), oci.tag()) {
            (Some(_), None) => None,
            (_, tag) => Some(
                Reference::new(&short_repo, tag.unwrap_or(crate::reference::DEFAULT_TAG))
                    .map_err(|e| bad(e.reason))?,
            ),
        };
        let display = match (oci.tag(), oci.digest()) {
            (_, Some(d)) => format!("{registry}/{}@{d}", oci.repository()),
            (Some(t), None) => format!("{registry}/{}:{t}", oci.repository()),
            (None, None) => format!("{registry}/{}:latest", oci.repository()),
        };
        Ok(Self {
            oci,
            registry,
            display,
            local,
        })
    }
}

/// Whether a registry host is reached over plain HTTP: loopback hosts and the listed ones.
pub fn uses_plain_http(registry: &str, insecure: &[String]) -> bool {
    if insecure.iter().any(|h| h == registry) {
        return true;
    }
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn client(target: &RemoteRef, opts: &RegistryOptions) -> oci_client::Client {
    // reqwest is built without a default TLS provider: use ring (Rust + asm, no OpenSSL or
    // cmake). rustls deprecates it for lacking post-quantum key exchange, which registry
    // traffic does not need. An error only means a provider is installed already.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if uses_plain_http(&target.registry, &opts.insecure_registries) {
        ClientProtocol::HttpsExcept(vec![target.registry.clone()])
    } else {
        ClientProtocol::Https
    };
    oci_client::Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(60)),
        user_agent: concat!("asdk/", env!("CARGO_PKG_VERSION")),
        // Arrow manifests are not multi-platform: an index is refused, not resolved.
        platform_resolver: None,
        ..Default::default()
    })
}

/// Maps a client error to what the user should see.
fn client_error(target: &RemoteRef, e: OciDistributionError) -> RegistryError {
    match e {
        OciDistributionError::AuthenticationFailure(detail) => RegistryError::Unauthorized {
            registry: target.registry.clone(),
            detail,
        },
        OciDistributionError::UnauthorizedError { url } => RegistryError::Unauthorized {
            registry: target.registry.clone(),
            detail: format!("401 from {url}"),
        },
        OciDistributionError::ServerError { code, .. } if code == 401 || code == 403 => {
            RegistryError::Unauthorized {
                registry: target.registry.clone(),
                detail: e.to_string(),
            }
        }
        OciDistributionError::RequestError(ref r)
            if matches!(r.status().map(|s| s.as_u16()), Some(401 | 403)) =>
        {
            RegistryError::Unauthorized {
                registry: target.registry.clone(),
                detail: r.status().map(|s| s.to_string()).unwrap_or_default(),
            }
        }
        OciDistributionError::RequestError(ref r)
            if r.status().map(|s| s.as_u16()) == Some(404) =>
        {
            RegistryError::NotFound {
                reference: target.display.clone(),
                detail: e.to_string(),
            }
        }
        OciDistributionError::ImageManifestNotFoundError(detail) => RegistryError::NotFound {
            reference: target.display.clone(),
            detail,
        },
        OciDistributionError::ServerError { code: 404, .. } => RegistryError::NotFound {
            reference: target.display.clone(),
            detail: e.to_string(),
        },
        OciDistributionError::RegistryError { ref envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::Unauthorized
                        | oci_client::errors::OciErrorCode::Denied
                )
            }) =>
        {
            RegistryError::Unauthorized {
                registry: target.registry.clone(),
                detail: e.to_string(),
            }
        }
        OciDistributionError::RegistryError { ref envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                )
            }) =>
        {
            RegistryError::NotFound {
                reference: target.display.clone(),
                detail: e.to_string(),
            }
        }
        e => {
            let hint = if matches!(e, OciDistributionError::RequestError(ref r) if r.is_connect())
                && !uses_plain_http(&target.registry, &[])
            {
                format!(" (HTTPS is used for {}; for a registry that only speaks plain HTTP, pass --insecure-registry {})", target.registry, target.registry)
            } else {
                String::new()
            };
            RegistryError::Client {
                registry: target.registry.clone(),
                source: e,
                hint,
            }
        }
    }
}

/// Whether retrying may help: network trouble and server-side (5xx, 429) errors.
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => match r.status() {
            Some(s) => s.is_server_error() || s.as_u16() == 429,
            None => {
                r.is_timeout() || r.is_connect() || r.is_request() || r.is_body() || r.is_decode()
            }
        },
        OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

/// Backoff before retry `attempt` (1-based): 0.5 s, 1 s, 2 s, 4 s, … capped at 8 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64 << attempt.saturating_sub(1).min(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(uses_plain_http(r, &[]), "{r}");
        }
        for r in [
            "registry.example.com",
            "10.0.0.1:5000",
            "localhost.example.com:5000",
        ] {
            assert!(!uses_plain_http(r, &[]), "{r}");
        }
        assert!(uses_plain_http("10.0.0.1:5000", &["10.0.0.1:5000".into()]));
    }

    #[test]
    fn remote_references_map_to_local_names() {
        let r = RemoteRef::parse("localhost:5000/hello:1").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.local.unwrap().to_string(), "localhost:5000/hello:1");
        let r = RemoteRef::parse("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(
            r.local.unwrap().to_string(),
            "127.0.0.1:5000/team/app:latest"
        );
        assert_eq!(r.display, "127.0.0.1:5000/team/app:latest");
        let r = RemoteRef::parse("hello:2").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.local.unwrap().to_string(), "hello:2");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = RemoteRef::parse(&format!("localhost:5000/hello@{d}")).unwrap();
        assert!(r.local.is_none());
        assert!(RemoteRef::parse("localhost:5000/Hello").is_err());
        assert!(RemoteRef::parse("").is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(9), Duration::from_secs(8));
    }
}
