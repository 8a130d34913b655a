//! Types of the REST API (request and response bodies) and of the stored instance spec.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Recorded, never started (or start failed before spawning).
    Created,
    /// arrow-vmm is being spawned.
    Starting,
    /// arrow-vmm runs.
    Running,
    /// A stop was requested; arrow-vmm still runs.
    Stopping,
    /// arrow-vmm exited; `exit_code` holds its status.
    Exited,
    /// arrowd lost the process or could not start it; `reason` says why.
    Failed,
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 6] = [
        State::Created,
        State::Starting,
        State::Running,
        State::Stopping,
        State::Exited,
        State::Failed,
    ];

    /// Name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// An arrow-vmm process exists (or is being spawned).
    pub fn is_active(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }

    /// The instance has finished (it may be started again).
    pub fn is_finished(self) -> bool {
        matches!(self, State::Exited | State::Failed)
    }
}

/// A host TCP port forwarded to a guest vsock port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// Host address to listen on; default 127.0.0.1.
    #[serde(default = "default_host_ip")]
    pub host_ip: String,
    /// Host TCP port.
    pub host_port: u16,
    /// Guest vsock port.
    pub guest_port: u32,
}

fn default_host_ip() -> String {
    "127.0.0.1".to_owned()
}

/// Guest memory: a number of MiB or a string such as "256M".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MemoryArg {
    /// MiB.
    Mib(u64),
    /// "256M", "1G", …
    Text(String),
}

/// `POST /instances`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Image reference (`name:tag`), digest or short ID; may be left out with `template`.
    #[serde(default)]
    pub image: String,
    /// Unique name; default: generated from the ID.
    #[serde(default)]
    pub name: Option<String>,
    /// vCPUs; default: the image's.
    #[serde(default)]
    pub vcpus: Option<u8>,
    /// Memory; default: the image's.
    #[serde(default)]
    pub memory: Option<MemoryArg>,
    /// Most memory `POST /instances/{id}/update` may give the running
    /// instance (virtio-mem hotplug); default: 4 x `memory`; equal to
    /// `memory` turns hotplug off.
    #[serde(default)]
    pub memory_max: Option<MemoryArg>,
    /// Environment added to (and overriding) the image's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Arguments replacing the image's, if given.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Exported ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Start as a clone of this template (image, args, env, memory and vCPUs come from it).
    #[serde(default)]
    pub template: Option<String>,
    /// Start right after creating.
    #[serde(default)]
    pub start: bool,
    /// Keep app core dumps: the guest kernel sends the ELF core of any app process killed
    /// by a core-dumping signal, stored as `core.<pid>` in the run directory (cold boots
    /// only, not clones of templates).
    #[serde(default)]
    pub core_dumps: bool,
    /// Size of a persistent writable layer ("64M"): the app's changes to its
    /// files survive stop/start (kept in the run directory, deleted with the
    /// instance). Default: a tmpfs layer in guest RAM, empty at each start.
    #[serde(default)]
    pub storage: Option<MemoryArg>,
    /// Boot from the image's initrd instead of its shadowfs base (the app is
    /// copied into guest RAM; no overlay, no persistent layer).
    #[serde(default)]
    pub initrd: bool,
    /// Host directories (or read-only files) the guest sees: read-only ones as of the
    /// start, writable ones live (docs/volumes.md).
    #[serde(default)]
    pub volumes: Vec<crate::volumes::Volume>,
}

/// How an instance's root filesystem reaches the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RootFs {
    /// The image's initrd, unpacked into guest RAM.
    Initrd,
    /// The image's EROFS base on virtio-pmem (DAX, shared by every instance of
    /// the image) under an overlay with a writable layer: tmpfs, or a
    /// persistent layer of `storage_mib` MiB in the run directory.
    Shadowfs { storage_mib: Option<u32> },
}

impl RootFs {
    /// Instances recorded before shadowfs booted from their initrd.
    pub fn recorded_before_shadowfs() -> Self {
        RootFs::Initrd
    }
}

/// What an instance runs, fixed at creation (stored as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Image reference as given.
    pub image: String,
    /// Resolved image digest.
    pub image_digest: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory at boot (MiB).
    pub memory_mib: u32,
    /// Most memory hotplug may grow the instance to (MiB); 0 or
    /// `memory_mib`: no hotplug (records from before hotplug have 0).
    #[serde(default)]
    pub memory_max_mib: u32,
    /// Full environment (image's merged with the request's).
    pub env: BTreeMap<String, String>,
    /// Arguments after argv[0].
    pub args: Vec<String>,
    /// Exported ports.
    pub ports: Vec<PortMapping>,
    /// Guest vsock CID.
    pub vsock_cid: u32,
    /// Guest kernel command line arrowd passes (without the VMM's host-compat flags).
    pub cmdline: String,
    /// The template it was created from explicitly (`--template`): it always starts as a
    /// clone of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// App core dumps are kept (`core.<pid>` in the run directory).
    #[serde(default)]
    pub core_dumps: bool,
    /// Root filesystem: shadowfs (default) or the initrd.
    #[serde(default = "RootFs::recorded_before_shadowfs")]
    pub rootfs: RootFs,
    /// Volumes (docs/volumes.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::volumes::Volume>,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// ID (16 hex digits).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Current state.
    pub state: State,
    /// arrow-vmm's PID while active.
    pub pid: Option<i32>,
    /// Exit code of the last run.
    pub exit_code: Option<i32>,
    /// Why it stopped or failed.
    pub reason: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last start (RFC 3339).
    pub started_at: Option<String>,
    /// Last finish (RFC 3339).
    pub finished_at: Option<String>,
    /// Milliseconds from spawn to the app's start (APP_STARTED), last run.
    pub start_latency_ms: Option<i64>,
    /// Times started.
    pub start_count: i64,
    /// Run directory (console.log, vmm.log, report.json, vsock socket).
    pub run_dir: String,
    /// cgroup v2 directory, when limits apply.
    pub cgroup: Option<String>,
    /// What it runs.
    pub spec: InstanceSpec,
    /// The template its current (or last) run was cloned from; null for a cold boot.
    #[serde(default)]
    pub clone: Option<crate::templates::model::CloneInfo>,
    /// App core dumps in the run directory (newest last); download them with
    /// `GET /instances/{id}/cores/{name}` or `actl cp ID:NAME DEST`.
    #[serde(default)]
    pub cores: Vec<CoreFile>,
}

/// An app core dump an instance left.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoreFile {
    /// File name, `core.<pid>` (guest PID).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Host path.
    pub path: String,
    /// When it was written (RFC 3339).
    pub created_at: String,
}

/// `POST /instances/{id}/wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitResponse {
    /// Final state.
    pub state: State,
    /// arrow-vmm's exit code (the app's status), if it exited.
    pub exit_code: Option<i32>,
    /// Why it stopped.
    pub reason: Option<String>,
}

/// An entry of `GET /images`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageInfo {
    /// `name:tag`.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// App version.
    pub version: String,
    /// Bytes.
    pub size: u64,
}

/// Error body of every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// `POST /instances/{id}/update`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// New memory size of the running instance (boot memory plus
    /// hotplugged memory): a number of MiB or a string such as "512M".
    #[serde(default)]
    pub memory: Option<MemoryArg>,
}

/// The memory of a running instance, as `POST /instances/{id}/update`
/// answers it (MiB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStatus {
    /// Instance ID.
    pub id: String,
    /// Memory at boot.
    pub boot_mib: u64,
    /// Most memory the instance may have.
    pub max_mib: u64,
    /// The size asked for (boot + requested hotplug).
    pub requested_mib: u64,
    /// The size the guest has now (boot + plugged); it reaches
    /// `requested_mib` once the guest driver has plugged or unplugged.
    pub current_mib: u64,
}
