//! Types of the `/templates` API and of the stored template spec.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::MemoryArg;

/// When arrowd snapshots a template's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotPoint {
    /// APP_READY: the app listens on a vsock port (the guest kernel reports the first
    /// `listen()`, or the app writes the event itself). Default when the image declares
    /// ports or a readiness signal.
    Ready,
    /// APP_STARTED: the kernel is about to exec the app. Default otherwise.
    Started,
    /// A fixed time after arrow-vmm was spawned (`delay_ms`), whatever the guest reports.
    Delay,
    /// KERNEL_READY: the kernel waits for an app to be injected (generic templates only).
    KernelReady,
}

impl SnapshotPoint {
    /// Name as shown.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotPoint::Ready => "ready",
            SnapshotPoint::Started => "started",
            SnapshotPoint::Delay => "delay",
            SnapshotPoint::KernelReady => "kernel_ready",
        }
    }
}

/// `POST /templates`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    /// The generic template of arrowd's kernel instead of a per-image one (no name,
    /// image, env, args or snapshot point; `pool_size` and `timeout_s` apply).
    #[serde(default)]
    pub generic: bool,
    /// Unique template name (not with `generic`).
    #[serde(default)]
    pub name: String,
    /// Image reference (`name:tag`), digest or short ID (not with `generic`).
    #[serde(default)]
    pub image: String,
    /// vCPUs; default: the image's.
    #[serde(default)]
    pub vcpus: Option<u8>,
    /// Memory; default: the image's.
    #[serde(default)]
    pub memory: Option<MemoryArg>,
    /// Environment added to (and overriding) the image's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Arguments replacing the image's, if given.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Snapshot point; default: `ready` if the image declares vsock ports or a readiness
    /// signal, else `started`.
    #[serde(default)]
    pub snapshot_at: Option<SnapshotPoint>,
    /// Milliseconds to wait after the snapshot point (for `delay`: after the spawn).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Seconds to wait for the snapshot point before giving up (default 300).
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Warm pool size for this template; default: arrowd's `--pool-size`.
    #[serde(default)]
    pub pool_size: Option<u32>,
}

/// Identity of the guest kernel a template was booted with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelIdentity {
    /// Path.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
    /// `sha256:<hex>` of the file.
    pub sha256: String,
}

/// What a template runs and how it was made (stored as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateSpec {
    /// Image reference as given.
    pub image: String,
    /// Resolved image digest.
    pub image_digest: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory (MiB).
    pub memory_mib: u32,
    /// Full environment.
    pub env: BTreeMap<String, String>,
    /// Arguments after argv[0].
    pub args: Vec<String>,
    /// arrowd's `--kernel-cmdline` when the template was made.
    pub base_cmdline: String,
    /// The whole command line the template booted with.
    pub cmdline: String,
    /// The guest kernel.
    pub kernel: KernelIdentity,
    /// Snapshot point used.
    pub snapshot_at: SnapshotPoint,
    /// Extra delay used, ms.
    pub delay_ms: u64,
    /// Pool size override.
    pub pool_size: Option<u32>,
    /// vsock CID of the template VM (clones get their own).
    pub vsock_cid: u32,
    /// A generic template: the kernel paused at KERNEL_READY with an empty image slot;
    /// clones get their image and app injected (`image`, `env`, `args` are empty).
    #[serde(default)]
    pub generic: bool,
    /// A generic template's volume slot (its second read-only pmem device, MiB; 0: none,
    /// made before volumes): a clone's packed volumes are mapped there.
    #[serde(default)]
    pub volume_slot_mib: u32,
    /// A generic template's vhost-user-fs slots (`vol0`…; 0: none): a clone's fs volumes
    /// are connected to them.
    #[serde(default)]
    pub fs_slots: u8,
}

/// Where a template is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateState {
    /// arrowd is booting the image and taking the snapshot.
    Creating,
    /// Usable: clones start from it.
    Ready,
    /// Creation failed; `reason` says why. Remove it and create it again.
    Failed,
    /// Its kernel or image changed since the snapshot: never used; `reason` says what.
    Stale,
}

impl TemplateState {
    /// Name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateState::Creating => "creating",
            TemplateState::Ready => "ready",
            TemplateState::Failed => "failed",
            TemplateState::Stale => "stale",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<TemplateState> {
        [
            TemplateState::Creating,
            TemplateState::Ready,
            TemplateState::Failed,
            TemplateState::Stale,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// Disk use of a template's snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Sum of the files' apparent sizes (memory.bin is as large as guest RAM).
    pub apparent_bytes: u64,
    /// Blocks actually allocated (memory.bin is sparse: only non-zero pages).
    pub allocated_bytes: u64,
}

/// How much of the template's memory its live clones map, from /proc/PID/smaps of each
/// clone (the mappings of the template's memory.bin).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sharing {
    /// Clones measured.
    pub clones: u32,
    /// Resident template pages, summed over clones (Rss), bytes.
    pub rss_bytes: u64,
    /// Of those, pages also mapped by another process (Shared_Clean + Shared_Dirty):
    /// the page-cache pages of memory.bin that clones share.
    pub shared_bytes: u64,
    /// Pages a clone copied on write (Private_Dirty): its own, not shared.
    pub private_dirty_bytes: u64,
    /// Proportional set size of the template mappings, summed over clones.
    pub pss_bytes: u64,
}

/// The warm pool of a template.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolInfo {
    /// Target number of pooled VMMs.
    pub size: u32,
    /// Pooled VMMs waiting for a start.
    pub ready: u32,
    /// Pooled VMMs still setting up.
    pub starting: u32,
    /// Starts served from the pool since arrowd started.
    pub hits: u64,
    /// Starts that fell back to a plain restore (pool empty or pooled VMM dead).
    pub misses: u64,
    /// Why the last pooled VMM could not be started, if it failed.
    pub last_error: Option<String>,
}

/// A template as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Template {
    /// ID (16 hex digits).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// State (`stale` is computed: the kernel or image changed).
    pub state: TemplateState,
    /// Why it failed or is stale.
    pub reason: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Spawn of the template VM → snapshot written, ms.
    pub boot_to_snapshot_ms: Option<i64>,
    /// Snapshot directory (state.json + memory.bin), read-only.
    pub dir: String,
    /// What it runs and how it was made.
    pub spec: TemplateSpec,
    /// Snapshot size on disk.
    pub disk: DiskUsage,
    /// IDs of running instances cloned from it.
    pub clones: Vec<String>,
    /// Page sharing among the running clones.
    pub sharing: Sharing,
    /// Warm pool.
    pub pool: PoolInfo,
}

/// How an instance's current (or last) run was started from a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneInfo {
    /// Template name.
    pub template: String,
    /// Template ID.
    pub template_id: String,
    /// Taken from the warm pool (else a plain `restore --clone`).
    pub pooled: bool,
    /// Cloned from the generic template, with the image and app injected.
    #[serde(default)]
    pub generic: bool,
    /// Start request → VM running the restored state, µs (as arrowd measured it).
    pub start_us: Option<i64>,
}
