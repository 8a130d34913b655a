//! Resizing a running instance's memory: arrow-vmm's virtio-mem device
//! through its control API (`PUT /vm/memory`). The size users give is the
//! instance's whole memory (boot memory plus hotplugged memory), as with
//! `docker update --memory`.

use std::sync::Arc;
use std::time::Duration;

use super::{Supervisor, API_SOCK};
use crate::client::{ClientError, Endpoint};
use crate::error::{Error, Result};
use crate::model::{MemoryArg, MemoryStatus, State};
use crate::size::parse_mib;

/// Hotplug granularity of arrow-vmm's virtio-mem device (MiB).
pub const HOTPLUG_BLOCK_MIB: u64 = 2;

fn mib(arg: &MemoryArg) -> Result<u64> {
    match arg {
        MemoryArg::Mib(n) => Ok(*n),
        MemoryArg::Text(t) => parse_mib(t).map(u64::from).map_err(Error::Invalid),
    }
}

/// Checks a requested total size against the instance's limits; returns
/// the hotplug size to request (MiB).
pub fn hotplug_request(total_mib: u64, boot_mib: u64, max_mib: u64) -> Result<u64> {
    if max_mib <= boot_mib {
        return Err(Error::Invalid(format!(
            "this instance was created without memory hotplug (memory_max = memory = {boot_mib} MiB); create it with a larger memory_max (actl run --memory-max SIZE)"
        )));
    }
    let ok = (boot_mib..=max_mib).contains(&total_mib)
        && (total_mib - boot_mib).is_multiple_of(HOTPLUG_BLOCK_MIB);
    if !ok {
        return Err(Error::Invalid(format!(
            "memory {total_mib} MiB is not allowed: give {boot_mib} to {max_mib} MiB (boot memory plus a multiple of {HOTPLUG_BLOCK_MIB} MiB)"
        )));
    }
    Ok(total_mib - boot_mib)
}

impl Supervisor {
    /// Asks a running instance to grow or shrink to `memory` (boot +
    /// hotplug). Returns at once: the guest plugs or unplugs in the
    /// background (`current_mib` shows how far it got).
    pub async fn update_memory(
        self: &Arc<Self>,
        reference: &str,
        memory: &MemoryArg,
    ) -> Result<MemoryStatus> {
        let rec = self.db.find(reference)?;
        let boot = u64::from(rec.spec.memory_mib);
        let max = u64::from(rec.spec.memory_max_mib);
        let total = mib(memory)?;
        let hotplug = hotplug_request(total, boot, max)?;
        if rec.state != State::Running {
            return Err(Error::Conflict(format!(
                "instance {} is {}: memory can only be changed while it runs",
                rec.name,
                rec.state.as_str()
            )));
        }
        // Room in the cgroup before the guest plugs more.
        self.cgroups.raise_memory(&rec.id, total);
        let ep = Endpoint::Unix(self.run_dir(&rec.id).join(API_SOCK));
        let body = serde_json::json!({ "requested_mib": hotplug });
        // A VMM that was just spawned may not listen yet: retry briefly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let answer = loop {
            let call = ep.json::<serde_json::Value>(hyper::Method::PUT, "/vm/memory", Some(&body));
            match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(v)) => break v,
                Ok(Err(ClientError::Api { status, message })) if status.is_client_error() => {
                    return Err(Error::Invalid(message))
                }
                Ok(Err(ClientError::Connect(_, e)))
                    if tokio::time::Instant::now() + Duration::from_millis(100) < deadline =>
                {
                    tracing::debug!(instance = %rec.id, "control socket not ready: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(ClientError::Connect(_, e))) => {
                    return Err(Error::Internal(format!(
                        "cannot reach arrow-vmm of {} on its control socket: {e}",
                        rec.name
                    )))
                }
                Ok(Err(e)) => {
                    return Err(Error::Internal(format!(
                        "arrow-vmm of {} did not take the memory request: {e}",
                        rec.name
                    )))
                }
                Err(_) => {
                    return Err(Error::Internal(format!(
                        "arrow-vmm of {} did not answer the memory request in 10 s",
                        rec.name
                    )))
                }
            }
        };
        tracing::info!(instance = %rec.id, total_mib = total, "memory update requested");
        let field = |k: &str| answer.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(MemoryStatus {
            id: rec.id,
            boot_mib: boot,
            max_mib: max,
            requested_mib: boot + field("requested_mib"),
            current_mib: boot + field("plugged_mib"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_against_boot_and_max() {
        assert_eq!(hotplug_request(512, 128, 1024).unwrap(), 384);
        assert_eq!(hotplug_request(128, 128, 1024).unwrap(), 0);
        for bad in [127, 1026, 129, 0] {
            let e = hotplug_request(bad, 128, 1024).unwrap_err().to_string();
            assert!(e.contains("give 128 to 1024 MiB"), "{bad}: {e}");
        }
        let e = hotplug_request(256, 128, 128).unwrap_err().to_string();
        assert!(e.contains("without memory hotplug"), "{e}");
    }
}
