//! A plugin's result (CNI 0.3.0 – 1.x `ips`/`interfaces`) and its error object.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What an ADD returned (the fields arrowd uses; the raw JSON is kept beside it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AddResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

/// One interface the plugins made or touched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    #[serde(default)]
    pub name: String,
    /// The namespace path for interfaces inside the sandbox, empty on the host.
    #[serde(default)]
    pub sandbox: String,
}

/// One address: `address` in CIDR form, `interface` an index into `interfaces`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: String,
    #[serde(default)]
    pub interface: Option<usize>,
}

/// A plugin's error object on stdout.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PluginError {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl AddResult {
    /// The sandbox's addresses: those on an interface inside the sandbox (or with no
    /// interface given), without prefix length, IPv4 first.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(
                |ip| match ip.interface.and_then(|i| self.interfaces.get(i)) {
                    Some(iface) => !iface.sandbox.is_empty(),
                    None => true,
                },
            )
            .filter_map(|ip| ip.address.split('/').next()?.parse().ok())
            .collect();
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips.dedup();
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_are_the_sandbox_ones() {
        // What bridge + host-local return (CNI 1.0.0).
        let r: AddResult = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"br0","mac":"aa"},{"name":"veth1","mac":"bb"},
            {"name":"eth0","mac":"cc","sandbox":"/run/netns/x"}],
            "ips":[{"address":"fd00::5/64","interface":2},{"address":"10.213.0.5/24","gateway":"10.213.0.1","interface":2},
            {"address":"10.9.9.9/24","interface":0}],"dns":{}}"#,
        )
        .unwrap();
        let want: Vec<IpAddr> = vec!["10.213.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(r.pod_ips(), want);
        assert!(AddResult::default().pod_ips().is_empty());
    }
}
