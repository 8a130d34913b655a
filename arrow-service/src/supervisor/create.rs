//! `create`: validates a request against the image and records a new instance.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use asdk::store::StoreError;

use super::{guest_env, Supervisor};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::model::{CreateRequest, Instance, InstanceSpec, MemoryArg, PortMapping, RootFs};
use crate::proxy;
use crate::size::{parse_mib, MAX_MEMORY_MIB, MIN_MEMORY_MIB};

/// Most vCPUs one instance may ask for: the same bound as an image's spec.
pub const MAX_VCPUS: u8 = asdk::spec::MAX_VCPUS;

/// Maps an image-store error to an API error with what to do.
pub(crate) fn image_error(reference: &str, e: StoreError) -> Error {
    match e {
        StoreError::NotFound(_) => Error::NotFound(format!(
            "image {reference:?} not found: build it with `asdk build`, import it with `asdk import`, or pick one from `actl images`"
        )),
        StoreError::Ambiguous(_) | StoreError::Reference(_) => Error::Invalid(e.to_string()),
        other => Error::Internal(format!("image store: {other}")),
    }
}

/// Checks an instance's or template's (`what`) name.
pub(crate) fn check_name(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "bad {what} name {name:?}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )))
    }
}

fn memory(arg: &MemoryArg) -> Result<u32> {
    match arg {
        MemoryArg::Mib(n) if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(n) => Ok(*n as u32),
        MemoryArg::Mib(n) => Err(Error::Invalid(format!(
            "bad memory size {n} MiB: give between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, or a string such as \"256M\""
        ))),
        MemoryArg::Text(t) => parse_mib(t).map_err(Error::Invalid),
    }
}

/// An image's own memory size, held to arrowd's bounds like a requested one.
fn image_memory(image: &str, mib: u32) -> Result<u32> {
    if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&u64::from(mib)) {
        Ok(mib)
    } else {
        Err(Error::Invalid(format!(
            "image {image:?} asks for {mib} MiB of memory; arrowd runs instances with {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB: give --memory"
        )))
    }
}

/// Size of a persistent writable layer, in MiB (16 MiB to 1 TiB).
fn storage_size(arg: &MemoryArg) -> Result<u32> {
    let bad = |what: String| {
        Error::Invalid(format!(
            "bad storage size {what}: give between 16M and 1024G, e.g. \"256M\" or \"1G\""
        ))
    };
    let mib = match arg {
        MemoryArg::Mib(n) => Some(*n),
        MemoryArg::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let n: Option<u64> = num.parse().ok();
            match unit.trim().to_ascii_lowercase().as_str() {
                "" | "m" | "mb" | "mib" => n,
                "g" | "gb" | "gib" => n.and_then(|n| n.checked_mul(1024)),
                _ => None,
            }
        }
    };
    match mib {
        Some(m) if (16..=1 << 20).contains(&m) => Ok(m as u32),
        _ => Err(bad(match arg {
            MemoryArg::Mib(n) => format!("{n} MiB"),
            MemoryArg::Text(t) => format!("{t:?}"),
        })),
    }
}

/// 16 hex digits from the kernel's random source.
pub(crate) fn new_id() -> Result<String> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| {
            Error::Internal(format!("cannot read /dev/urandom for an instance ID: {e}"))
        })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Supervisor {
    fn check_ports(&self, ports: &[PortMapping]) -> Result<()> {
        let active = self.db.list()?;
        for (i, m) in ports.iter().enumerate() {
            if ports[..i]
                .iter()
                .any(|o| o.host_port == m.host_port && o.host_ip == m.host_ip)
            {
                return Err(Error::Invalid(format!(
                    "host port {} is mapped twice: give each -p a different host port",
                    m.host_port
                )));
            }
            if let Some(other) = active.iter().find(|r| {
                !r.state.is_finished() && r.spec.ports.iter().any(|o| o.host_port == m.host_port)
            }) {
                return Err(Error::Conflict(format!(
                    "host port {} is already exported by instance {} ({}): choose another host port or remove that instance",
                    m.host_port, other.name, other.id
                )));
            }
            proxy::check_bindable(m)?;
        }
        Ok(())
    }

    /// Resolves an image and the request's overrides into what a VM runs.
    pub(crate) fn resolve(
        &self,
        image_ref: &str,
        vcpus: Option<u8>,
        memory_arg: Option<&MemoryArg>,
        env: &BTreeMap<String, String>,
        args: Option<&Vec<String>>,
    ) -> Result<Resolved> {
        if image_ref.trim().is_empty() {
            return Err(Error::Invalid(
                "no image given: set \"image\" to a reference such as hello:latest (see `actl images`)".into(),
            ));
        }
        let image = self
            .store
            .image(image_ref)
            .map_err(|e| image_error(image_ref, e))?;
        let vcpus = vcpus.unwrap_or(image.spec.vcpus);
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(Error::Invalid(format!(
                "bad vCPU count {vcpus}: give 1 to {MAX_VCPUS} (--cpus)"
            )));
        }
        let memory_mib = match memory_arg {
            Some(m) => memory(m)?,
            None => image_memory(image_ref, image.spec.memory_mib)?,
        };
        let mut spec = image.spec.clone();
        guest_env::check_keys(env.keys())?;
        for (k, v) in env {
            spec.env.insert(k.clone(), v.clone());
        }
        if let Some(args) = args {
            spec.args = args.clone();
        }
        guest_env::check_counts(&spec.env, &spec.args)?;
        let app_cmdline = spec
            .kernel_cmdline()
            .map_err(|e| Error::Invalid(format!("{e}; change the value")))?;
        Ok(Resolved {
            image,
            vcpus,
            memory_mib,
            env: spec.env,
            args: spec.args,
            app_cmdline,
        })
    }

    /// Creates an instance (and starts it when `req.start`).
    pub async fn create(self: &Arc<Self>, mut req: CreateRequest) -> Result<Instance> {
        let image_given = !req.image.trim().is_empty();
        let template = match req.template.clone() {
            Some(t) => Some(self.template_defaults(&mut req, &t)?),
            None => None,
        };
        let r = self.resolve(
            &req.image,
            req.vcpus,
            req.memory.as_ref(),
            &req.env,
            req.args.as_ref(),
        )?;
        // Hotplug headroom. A clone of a template has what its template has:
        // arrowd's templates are booted without a hotplug region for now.
        let memory_max_mib = match (&req.memory_max, &template) {
            (Some(_), Some(t)) => {
                return Err(Error::Invalid(format!(
                    "memory_max cannot be set for a clone of template {}: a clone has its template's memory; leave memory_max out",
                    t.name
                )))
            }
            (None, Some(_)) => r.memory_mib,
            (Some(m), None) => memory(m)?,
            // Writable volumes (virtiofsd) and hotplug combine: arrow-vmm shares the
            // plugged memory with the file server (docs/arrow-vmm.md).
            (None, None) => r
                .memory_mib
                .saturating_mul(4)
                .min(MAX_MEMORY_MIB as u32)
                .max(r.memory_mib),
        };
        if memory_max_mib < r.memory_mib {
            return Err(Error::Invalid(format!(
                "memory_max {memory_max_mib} MiB is less than memory {} MiB: give at least the boot memory",
                r.memory_mib
            )));
        }
        if let Some(n) = &req.name {
            check_name(n, "instance")?;
        }
        self.check_ports(&req.ports)?;
        crate::volumes::spec::validate(&req.volumes, &self.cfg.state_dir)
            .map_err(Error::Invalid)?;
        if let (Some(t), false) = (&template, req.volumes.is_empty()) {
            if !t.spec.generic {
                return Err(Error::Invalid(format!(
                    "template {} cannot start an instance with volumes: a per-image template's snapshot was taken without them; leave out template (the instance then cold-boots, or starts from the generic template)",
                    t.name
                )));
            }
        }
        let rootfs = match (&req.storage, req.initrd) {
            (Some(_), true) => return Err(Error::Invalid(
                "a persistent writable layer (storage) needs the shadowfs root: drop \"initrd\""
                    .into(),
            )),
            (None, true) => RootFs::Initrd,
            (storage, false) => RootFs::Shadowfs {
                storage_mib: storage.as_ref().map(storage_size).transpose()?,
            },
        };
        if let (
            Some(t),
            RootFs::Shadowfs {
                storage_mib: Some(_),
            },
        ) = (&template, &rootfs)
        {
            return Err(Error::Invalid(format!(
                "a clone of template {} runs from the template's memory and cannot have its own persistent layer: leave out storage, or the template",
                t.name
            )));
        }
        // ainit's shadowfs parameters go before the app's (which end in `-- args`).
        let shadowfs_params = match &rootfs {
            RootFs::Initrd => String::new(),
            RootFs::Shadowfs { storage_mib } => {
                let upper = match storage_mib {
                    Some(_) => shadowfs::Upper::Persistent,
                    None => shadowfs::Upper::Tmpfs { size_mib: None },
                };
                shadowfs::kernel_params(&upper).join(" ") + " "
            }
        };
        let mut ispec = InstanceSpec {
            image: match &template {
                Some(t) if !image_given => t.spec.image.clone(),
                _ => req.image.clone(),
            },
            image_digest: r.image.digest.to_string(),
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            memory_max_mib,
            env: r.env,
            args: r.args,
            ports: req.ports.clone(),
            vsock_cid: 0,
            cmdline: String::new(),
            // The generic template by its alias: a later start uses the current one.
            template: template.as_ref().map(|t| {
                if t.spec.generic {
                    crate::templates::generic::ALIAS.to_owned()
                } else {
                    t.name.clone()
                }
            }),
            core_dumps: req.core_dumps,
            rootfs,
            volumes: req.volumes.clone(),
        };
        if template.is_none() && req.memory_max.is_none() {
            // Without an explicit hotplug maximum, an instance that runs what a ready
            // template runs starts as its clone, which has no hotplug region.
            let mut probe = ispec.clone();
            probe.memory_max_mib = probe.memory_mib;
            if self.matching_template(&probe).is_some() || self.generic_for_spec(&probe).is_some() {
                ispec.memory_max_mib = ispec.memory_mib;
            }
        }
        if let Some(t) = &template {
            if ispec.core_dumps {
                return Err(Error::Invalid(format!(
                    "core_dumps needs a cold boot; instances cloned from template {} cannot send cores (leave out template)",
                    t.name
                )));
            }
            self.check_template_fits(t, &ispec)?;
        }
        // A start that will be a clone takes a warm VMM now: the instance gets its ID,
        // run directory and CID.
        let slot = if req.start {
            self.pool_slot_for(template.as_ref(), &ispec)
        } else {
            None
        };
        let id = match &slot {
            Some(s) => s.id.clone(),
            None => new_id()?,
        };
        let name = match &req.name {
            Some(n) => n.clone(),
            None => format!("arrow-{}", &id[..8]),
        };
        ispec.cmdline = format!(
            "{} arrow.hostname={name} {shadowfs_params}{}",
            self.cfg.kernel_cmdline, r.app_cmdline
        );
        // Room for the volumes' parameters, added at each start (docs/volumes.md).
        let with_volumes = format!(
            "{}{}",
            ispec.cmdline,
            " ".repeat(crate::volumes::plan::max_params_len(&ispec.volumes))
        );
        if let Err(e) = guest_env::check_cmdline(&with_volumes) {
            if let Some(s) = slot {
                self.templates.put_back(s);
            }
            return Err(e);
        }
        if let Err(e) = self.db.insert_with_cid(
            &id,
            &name,
            &mut ispec,
            now_ms(),
            slot.as_ref().map(|s| s.cid),
        ) {
            if let Some(s) = slot {
                self.templates.put_back(s);
            }
            return Err(e);
        }
        if let Some(s) = slot {
            self.templates.claim(s);
        }
        tracing::info!(instance = %id, %name, image = %ispec.image, "created");
        self.changed();
        if req.start {
            let started = self.start(&id).await;
            if started.is_err() {
                // A warm VMM handed to this instance and never started must not linger.
                self.release_claimed(&id).await;
            }
            return started;
        }
        self.inspect(&id)
    }
}

/// An image plus a request's overrides.
pub(crate) struct Resolved {
    /// The image.
    pub image: asdk::Image,
    /// vCPUs.
    pub vcpus: u8,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Whole environment.
    pub env: BTreeMap<String, String>,
    /// Arguments after argv[0].
    pub args: Vec<String>,
    /// The app's part of the kernel command line.
    pub app_cmdline: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_memory_is_held_to_arrowds_bounds() {
        assert_eq!(image_memory("a", 128).unwrap(), 128);
        let e = image_memory("big:1", 1 << 20).unwrap_err().to_string();
        assert!(e.contains("1048576 MiB") && e.contains("--memory"), "{e}");
        assert!(image_memory("tiny:1", 8).is_err());
        assert_eq!(MAX_VCPUS, asdk::spec::MAX_VCPUS);
    }
}
