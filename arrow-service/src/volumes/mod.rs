//! Volumes: host directories (and read-only files) an instance sees at guest paths
//! (`actl run -v HOST:GUEST[:ro]`, the REST body's `volumes`, CRI `mounts`).
//!
//! Two mechanisms, one rule ([`plan`], docs/volumes.md):
//! - **pack** ([`pack`]): read-only volumes are copied at each start into one per-instance
//!   EROFS image (top-level entry `<i>` per volume), attached as a read-only virtio-pmem
//!   device; no extra process, and a clone of the generic template gets it through its
//!   volume slot. At most [`pack::MAX_BYTES`] and [`pack::MAX_ENTRIES`] in all.
//! - **fs** ([`virtiofsd`]): writable volumes, and read-only directories too large to pack,
//!   are served live by one sandboxed virtiofsd per volume through a vhost-user-fs device,
//!   inside what [`jail`] adds (the instance's cgroup, namespaces, limits); [`record`]
//!   keeps what re-adopting them after an arrowd restart needs.
//!
//! [`spec`] holds the API type and its validation.

pub mod jail;
pub mod pack;
pub mod plan;
pub mod record;
pub mod spec;
pub mod virtiofsd;

pub use plan::{Kind, Placed, Plan};
pub use spec::{Volume, MAX_FS_VOLUMES, MAX_VOLUMES};
