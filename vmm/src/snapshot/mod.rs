//! Snapshots: a directory with a checksummed, versioned state file and a
//! sparse guest-memory file.
//!
//! ```text
//! DIR/state.json   line 1: "ARROW-SNAPSHOT <version> sha256=<hex of the rest>"
//!                  rest:   JSON SnapshotState (vCPUs, VM, devices, memory layout)
//! DIR/memory.bin   guest RAM, regions back to back, holes for zero pages
//! ```
//! Restore maps memory.bin `MAP_PRIVATE`: restoring never modifies a
//! snapshot, so one snapshot is a template for any number of clones.

pub mod devices;
pub mod memory;
pub mod vcpu;
pub mod vm_state;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use devices::DeviceStates;
pub use memory::RegionInfo;
pub use vcpu::VcpuState;
pub use vm_state::VmState;

pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &str = "ARROW-SNAPSHOT";
pub const STATE_FILE: &str = "state.json";
pub const MEMORY_FILE: &str = "memory.bin";
/// A state file is a few hundred KiB at most (vCPU state, device state);
/// a larger one is not read into memory.
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// The CPU a snapshot was taken on; restoring on another model is refused
/// because the guest has already probed its features.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSignature {
    pub vendor: String,
    pub family: u32,
    pub model: u32,
}

impl CpuSignature {
    pub fn host() -> Self {
        let leaf0 = std::arch::x86_64::__cpuid(0);
        let mut vendor = Vec::with_capacity(12);
        for r in [leaf0.ebx, leaf0.edx, leaf0.ecx] {
            vendor.extend_from_slice(&r.to_le_bytes());
        }
        let eax = std::arch::x86_64::__cpuid(1).eax;
        let base_family = (eax >> 8) & 0xf;
        let family = if base_family == 0xf {
            base_family + ((eax >> 20) & 0xff)
        } else {
            base_family
        };
        let model = ((eax >> 4) & 0xf) | (((eax >> 16) & 0xf) << 4);
        Self {
            vendor: String::from_utf8_lossy(&vendor).into_owned(),
            family,
            model,
        }
    }
}

impl std::fmt::Display for CpuSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} family {:#x} model {:#x}",
            self.vendor, self.family, self.model
        )
    }
}

/// Everything needed to resume a VM, except guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    pub arrow_vmm_version: String,
    pub cpu: CpuSignature,
    pub mem_size: u64,
    pub regions: Vec<RegionInfo>,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: DeviceStates,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {dir}: {what}")]
    Io { dir: PathBuf, what: String },
    #[error("snapshot {dir} is not an Arrow snapshot (bad header in {STATE_FILE})")]
    NotASnapshot { dir: PathBuf },
    #[error("snapshot {dir} has format version {found}; this arrow-vmm reads version {FORMAT_VERSION}: take the snapshot again with this version")]
    Version { dir: PathBuf, found: String },
    #[error("snapshot {dir} is corrupted: the checksum of {STATE_FILE} does not match")]
    Checksum { dir: PathBuf },
    #[error("snapshot {dir} cannot be parsed: {reason}")]
    Parse { dir: PathBuf, reason: String },
    #[error("snapshot {dir} was taken on a {taken} CPU; this host has a {host}: restore it on the same CPU model")]
    OtherCpu {
        dir: PathBuf,
        taken: CpuSignature,
        host: CpuSignature,
    },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the state file atomically (temp file + rename).
pub fn write_state(dir: &Path, state: &SnapshotState) -> Result<(), SnapshotError> {
    let io = |what: String| SnapshotError::Io {
        dir: dir.into(),
        what,
    };
    let body = serde_json::to_vec(state).map_err(|e| io(format!("cannot serialize state: {e}")))?;
    let mut content =
        format!("{MAGIC} {FORMAT_VERSION} sha256={}\n", sha256_hex(&body)).into_bytes();
    content.extend_from_slice(&body);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    std::fs::write(&tmp, &content)
        .map_err(|e| io(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(STATE_FILE))
        .map_err(|e| io(format!("cannot rename state file: {e}")))?;
    Ok(())
}

/// Reads and checks a snapshot's state: header, version, checksum, CPU.
pub fn read_state(dir: &Path) -> Result<SnapshotState, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let io = |e: std::io::Error| SnapshotError::Io {
        dir: dir.into(),
        what: format!("cannot read {}: {e}", path.display()),
    };
    let mut content = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| {
            use std::io::Read;
            f.take(MAX_STATE_BYTES + 1).read_to_end(&mut content)
        })
        .map_err(io)?;
    if content.len() as u64 > MAX_STATE_BYTES {
        return Err(SnapshotError::Parse {
            dir: dir.into(),
            reason: format!("{STATE_FILE} is larger than {MAX_STATE_BYTES} bytes"),
        });
    }
    let state = parse_state(dir, &content)?;
    let host = CpuSignature::host();
    if state.cpu != host {
        return Err(SnapshotError::OtherCpu {
            dir: dir.into(),
            taken: state.cpu,
            host,
        });
    }
    Ok(state)
}

/// Parses and checks a state file's bytes (header, version, checksum, JSON,
/// and the parts that need no other file: the region table, the vCPU list).
/// Public so that the fuzz targets can drive it.
pub fn parse_state(dir: &Path, content: &[u8]) -> Result<SnapshotState, SnapshotError> {
    let not_snapshot = || SnapshotError::NotASnapshot { dir: dir.into() };
    let nl = content
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(not_snapshot)?;
    let header = std::str::from_utf8(&content[..nl]).map_err(|_| not_snapshot())?;
    let mut words = header.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(not_snapshot());
    }
    let version = words.next().ok_or_else(not_snapshot)?;
    if version != FORMAT_VERSION.to_string() {
        return Err(SnapshotError::Version {
            dir: dir.into(),
            found: version.to_string(),
        });
    }
    let sum = words
        .next()
        .and_then(|w| w.strip_prefix("sha256="))
        .ok_or_else(not_snapshot)?;
    let body = &content[nl + 1..];
    if sha256_hex(body) != sum {
        return Err(SnapshotError::Checksum { dir: dir.into() });
    }
    let state: SnapshotState = serde_json::from_slice(body).map_err(|e| SnapshotError::Parse {
        dir: dir.into(),
        reason: e.to_string(),
    })?;
    memory::validate_regions(&state.regions, u64::MAX)?;
    let parse = |reason: String| SnapshotError::Parse {
        dir: dir.into(),
        reason,
    };
    if state.vcpus.is_empty() || state.vcpus.len() > usize::from(u8::MAX) {
        return Err(parse(format!("{} vCPUs", state.vcpus.len())));
    }
    if let Some((i, v)) = state
        .vcpus
        .iter()
        .enumerate()
        .find(|(i, v)| usize::from(v.id) != *i)
    {
        return Err(parse(format!("vCPU {i} has id {}", v.id)));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(id: u8) -> VcpuState {
        VcpuState {
            id,
            cpuid: vec![],
            msrs: vec![],
            regs: Default::default(),
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: None,
            debugregs: Default::default(),
            lapic: Default::default(),
            mp_state: Default::default(),
            events: Default::default(),
        }
    }

    #[test]
    fn parse_refuses_bad_layouts_before_any_file_is_mapped() {
        let dir = tempfile::tempdir().unwrap();
        type Change = Box<dyn Fn(&mut SnapshotState)>;
        let cases: Vec<(&str, Change)> = vec![
            ("no vCPUs", Box::new(|s| s.vcpus.clear())),
            ("vCPU ids", Box::new(|s| s.vcpus[0].id = 3)),
            (
                "overflowing region",
                Box::new(|s| s.regions[0].file_offset = u64::MAX - 4095),
            ),
            (
                "overflowing sum",
                Box::new(|s| {
                    s.regions = vec![
                        RegionInfo {
                            guest_addr: 0,
                            size: 1 << 63,
                            file_offset: 0,
                        },
                        RegionInfo {
                            guest_addr: 1 << 63,
                            size: 1 << 63,
                            file_offset: 1 << 63,
                        },
                    ]
                }),
            ),
        ];
        for (what, change) in cases {
            let mut s = sample();
            change(&mut s);
            write_state(dir.path(), &s).unwrap();
            let e = read_state(dir.path()).unwrap_err();
            assert!(
                matches!(e, SnapshotError::Parse { .. } | SnapshotError::Memory(_)),
                "{what}: {e}"
            );
        }
    }

    fn sample() -> SnapshotState {
        SnapshotState {
            arrow_vmm_version: "test".into(),
            cpu: CpuSignature::host(),
            mem_size: 1 << 20,
            regions: vec![RegionInfo {
                guest_addr: 0,
                size: 1 << 20,
                file_offset: 0,
            }],
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: vec![vcpu(0)],
            devices: DeviceStates::default(),
        }
    }

    #[test]
    fn state_round_trips_and_rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        write_state(dir.path(), &sample()).unwrap();
        let back = read_state(dir.path()).unwrap();
        assert_eq!(back.mem_size, 1 << 20);

        let path = dir.path().join(STATE_FILE);
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        let last = bad.len() - 2;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            read_state(dir.path()),
            Err(SnapshotError::Checksum { .. })
        ));

        let other = String::from_utf8(good.clone()).unwrap().replacen(
            "ARROW-SNAPSHOT 1",
            "ARROW-SNAPSHOT 9",
            1,
        );
        std::fs::write(&path, other).unwrap();
        assert!(matches!(
            read_state(dir.path()),
            Err(SnapshotError::Version { .. })
        ));

        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(
            read_state(dir.path()),
            Err(SnapshotError::NotASnapshot { .. })
        ));
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(matches!(
            read_state(dir.path()),
            Err(SnapshotError::Checksum { .. })
        ));

        let mut s = sample();
        s.cpu.model ^= 0xff;
        write_state(dir.path(), &s).unwrap();
        let e = read_state(dir.path()).unwrap_err();
        assert!(matches!(e, SnapshotError::OtherCpu { .. }), "{e}");
        assert!(e.to_string().contains("restore it on the same CPU model"));
    }
}
