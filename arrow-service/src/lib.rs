//! arrow-service: `arrowd`, the daemon that owns Arrow instances (one `arrow-vmm` process per
//! instance, state in SQLite, REST API on a Unix socket), `actl`, the CLI over that API, and
//! `arrow-jailer`, which arrowd puts around each arrow-vmm ([`jail`]). See `docs/arrowd.md`
//! and `docs/security.md`.

pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cni;
pub mod config;
pub mod cores;
pub mod cri;
pub mod db;
pub mod error;
pub mod jail;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod procfs;
pub mod proxy;
pub mod size;
pub mod supervisor;
pub mod templates;
pub mod unix_socket;
pub mod volumes;

/// The OpenAPI document of the REST API, checked in as `arrow-service/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");
