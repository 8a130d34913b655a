//! CNI: the node's network plugins give each pod sandbox its network namespace's
//! interface and IP, following the CNI specification
//! (<https://github.com/containernetworking/cni/blob/main/SPEC.md>): the network
//! configuration comes from the configuration directory ([`config`]); each plugin is a
//! program found in the bin directories, run with `CNI_COMMAND` / `CNI_CONTAINERID` /
//! `CNI_NETNS` / `CNI_IFNAME` / `CNI_ARGS` / `CNI_PATH` in its environment and its
//! configuration (with `name`, `cniVersion` and the previous plugin's `prevResult`) on
//! stdin; it answers with a result, or an error object whose `msg`/`details` arrowd
//! passes on ([`exec`]).

pub mod config;
mod exec;
pub mod result;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use config::NetworkConfig;
pub use result::AddResult;

/// Default configuration directory.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Default plugin directories: the upstream location, then Debian's
/// (`containernetworking-plugins`).
pub const DEFAULT_BIN_DIRS: &str = "/opt/cni/bin:/usr/lib/cni";
/// The interface the plugins create in the sandbox.
pub const IFNAME: &str = "eth0";

/// A CNI operation failed; the text says what and, for a plugin, quotes its message.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable network configuration.
    #[error("no CNI network configuration in {}: {why}; install one (e.g. a bridge + host-local .conflist) or point arrowd's --cni-conf-dir at it", dir.display())]
    NoConfig { dir: PathBuf, why: String },
    /// A configuration file is malformed.
    #[error("CNI configuration {}: {why}", file.display())]
    Config { file: PathBuf, why: String },
    /// A plugin program is missing.
    #[error("CNI plugin {plugin:?} (network {network:?}) is not in {dirs}: install it (Debian: containernetworking-plugins) or point arrowd's --cni-bin-dir at it")]
    PluginNotFound {
        plugin: String,
        network: String,
        dirs: String,
    },
    /// A plugin reported an error.
    #[error("CNI plugin {plugin} {command} failed{}: {msg}{}", if *code > 0 { format!(" (code {code})") } else { String::new() }, if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u32,
        msg: String,
        details: String,
    },
    /// A plugin could not be run, timed out, or answered something unreadable.
    #[error("CNI plugin {plugin} {command}: {why}")]
    Exec {
        plugin: String,
        command: &'static str,
        why: String,
    },
}

/// Where arrowd finds the network configuration and the plugins.
#[derive(Debug, Clone)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

/// One sandbox's attachment: what ADD needs and DEL repeats.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// The sandbox ID (`CNI_CONTAINERID`).
    pub container_id: &'a str,
    /// Path of the pinned network namespace (`CNI_NETNS`).
    pub netns: &'a Path,
    /// `CNI_ARGS` pairs (kubelet's `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...).
    pub args: Vec<(String, String)>,
}

impl Cni {
    /// `bin_dirs` is a `:`-separated list, as in `CNI_PATH`.
    pub fn new(conf_dir: PathBuf, bin_dirs: &str) -> Cni {
        Cni {
            conf_dir,
            bin_dirs: std::env::split_paths(bin_dirs)
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
        }
    }

    fn dirs_text(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The plugin program `ty`, from the first bin directory that has it.
    pub fn find_plugin(&self, ty: &str, network: &str) -> Result<PathBuf, CniError> {
        use std::os::unix::fs::PermissionsExt;
        self.bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: ty.to_owned(),
                network: network.to_owned(),
                dirs: self.dirs_text(),
            })
    }

    /// The node's network, when its configuration loads and all its plugins exist
    /// (CRI Status's NetworkReady).
    pub fn network(&self) -> Result<NetworkConfig, CniError> {
        let net = config::load(&self.conf_dir)?;
        for ty in net.types() {
            self.find_plugin(ty, &net.name)?;
        }
        Ok(net)
    }

    /// Runs ADD through the network's plugins in order, each getting the previous one's
    /// result; returns the last result (parsed, and as JSON to keep for DEL).
    pub async fn add(
        &self,
        net: &NetworkConfig,
        at: &Attachment<'_>,
    ) -> Result<(AddResult, Value), CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            let out = exec::run(self, net, plugin, "ADD", at, prev.as_ref()).await?;
            prev = Some(out);
        }
        let raw = prev.unwrap_or(Value::Null);
        let parsed: AddResult =
            serde_json::from_value(raw.clone()).map_err(|e| CniError::Exec {
                plugin: net.types().last().copied().unwrap_or("").to_owned(),
                command: "ADD",
                why: format!("its result is not a CNI result: {e}"),
            })?;
        Ok((parsed, raw))
    }

    /// Runs DEL through the network's plugins in reverse order, with ADD's result as
    /// `prevResult`. The first failure stops it (DEL can be repeated: plugins treat a
    /// missing attachment as done).
    pub async fn del(
        &self,
        net: &NetworkConfig,
        at: &Attachment<'_>,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        for plugin in net.plugins.iter().rev() {
            exec::run(self, net, plugin, "DEL", at, prev).await?;
        }
        Ok(())
    }
}
