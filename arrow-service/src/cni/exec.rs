//! Running one plugin: the CNI environment, the configuration on stdin, the result or
//! error object on stdout, bounded in time.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::result::PluginError;
use super::{Attachment, Cni, CniError, NetworkConfig, IFNAME};

/// A plugin that takes longer is killed (bridge + host-local take milliseconds).
const TIMEOUT: Duration = Duration::from_secs(60);
/// Largest stdout read from a plugin.
const MAX_OUTPUT: usize = 1 << 20;

/// The stdin of one plugin: its configuration plus the network's `name` and `cniVersion`
/// and, after the first plugin, `prevResult`.
pub(super) fn stdin_config(
    net: &NetworkConfig,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(net.name.clone()));
    conf.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
    match prev {
        Some(p) if !p.is_null() => {
            conf.insert("prevResult".into(), p.clone());
        }
        _ => {
            conf.remove("prevResult");
        }
    }
    Value::Object(conf)
}

/// `K1=V1;K2=V2`, dropping pairs that would break the format.
fn cni_args(args: &[(String, String)]) -> String {
    let mut out = vec!["IgnoreUnknown=1".to_owned()];
    out.extend(
        args.iter()
            .filter(|(k, v)| {
                ![k, v]
                    .iter()
                    .any(|s| s.contains([';', '=']) || s.is_empty())
            })
            .map(|(k, v)| format!("{k}={v}")),
    );
    out.join(";")
}

pub(super) async fn run(
    cni: &Cni,
    net: &NetworkConfig,
    plugin: &Map<String, Value>,
    command: &'static str,
    at: &Attachment<'_>,
    prev: Option<&Value>,
) -> Result<Value, CniError> {
    let ty = plugin.get("type").and_then(Value::as_str).unwrap_or("");
    let program = cni.find_plugin(ty, &net.name)?;
    let exec_err = |why: String| CniError::Exec {
        plugin: ty.to_owned(),
        command,
        why,
    };
    let stdin = stdin_config(net, plugin, prev).to_string();
    let mut child = tokio::process::Command::new(&program)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", at.container_id)
        .env("CNI_NETNS", at.netns)
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_ARGS", cni_args(&at.args))
        .env("CNI_PATH", cni.dirs_text())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| exec_err(format!("cannot run {}: {e}", program.display())))?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading its stdin is judged by its answer.
        let _ = input.write_all(stdin.as_bytes()).await;
    }
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| exec_err(format!("no answer within {} s (killed)", TIMEOUT.as_secs())))?
        .map_err(|e| exec_err(format!("waiting for it failed: {e}")))?;
    let stdout = &out.stdout[..out.stdout.len().min(MAX_OUTPUT)];
    if !out.status.success() {
        if let Ok(e) = serde_json::from_slice::<PluginError>(stdout) {
            if !e.msg.is_empty() {
                return Err(CniError::Plugin {
                    plugin: ty.to_owned(),
                    command,
                    code: e.code,
                    msg: e.msg,
                    details: e.details,
                });
            }
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = String::from_utf8_lossy(stdout);
        return Err(exec_err(format!(
            "{}: {}",
            out.status,
            [text.trim(), stderr.trim()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" / ")
        )));
    }
    if command != "ADD" {
        return Ok(Value::Null);
    }
    serde_json::from_slice(stdout).map_err(|e| {
        exec_err(format!(
            "its result is not JSON ({e}): {:?}",
            String::from_utf8_lossy(stdout)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn stdin_carries_name_version_and_prev_result() {
        let net = NetworkConfig::parse(
            Path::new("n.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge","bridge":"b0"},{"type":"portmap"}]}"#,
            true,
        )
        .unwrap();
        let first = stdin_config(&net, &net.plugins[0], None);
        assert_eq!(first["name"], "pods");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert_eq!(first["bridge"], "b0");
        assert!(first.get("prevResult").is_none());
        let prev = serde_json::json!({"ips":[{"address":"10.0.0.2/24"}]});
        let second = stdin_config(&net, &net.plugins[1], Some(&prev));
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["type"], "portmap");
    }

    #[test]
    fn cni_args_format() {
        let a = cni_args(&[
            ("K8S_POD_NAME".into(), "web".into()),
            ("BAD".into(), "a;b".into()),
            ("K8S_POD_NAMESPACE".into(), "default".into()),
        ]);
        assert_eq!(
            a,
            "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default"
        );
    }

    /// A plugin's error object becomes the error's text, exit status and all.
    #[tokio::test]
    async fn plugin_errors_carry_msg_and_details() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("failing");
        std::fs::write(
            &plugin,
            "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"no addresses left\",\"details\":\"range 10.0.0.0/30 is full\"}'\nexit 1\n",
        )
        .unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(
            &ok,
            "#!/bin/sh\ncat >/dev/null\necho \"{\\\"cniVersion\\\":\\\"1.0.0\\\",\\\"ips\\\":[{\\\"address\\\":\\\"10.0.0.2/30\\\"}],\\\"cmd\\\":\\\"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME\\\"}\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for p in [&plugin, &ok] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let cni = Cni::new(dir.path().join("conf"), &dir.path().display().to_string());
        let at = Attachment {
            container_id: "abc",
            netns: Path::new("/nonexistent"),
            args: vec![],
        };
        let net = |ty: &str| {
            NetworkConfig::parse(
                Path::new("x"),
                &format!(r#"{{"cniVersion":"1.0.0","name":"n","plugins":[{{"type":"{ty}"}}]}}"#),
                true,
            )
            .unwrap()
        };
        let (r, raw) = cni.add(&net("ok"), &at).await.unwrap();
        assert_eq!(raw["cmd"], "ADD abc eth0");
        assert_eq!(
            r.pod_ips(),
            vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
        let e = cni.add(&net("failing"), &at).await.unwrap_err().to_string();
        assert_eq!(
            e,
            "CNI plugin failing ADD failed (code 11): no addresses left (range 10.0.0.0/30 is full)"
        );
        let e = cni.add(&net("missing"), &at).await.unwrap_err();
        assert!(matches!(e, CniError::PluginNotFound { .. }), "{e}");
    }
}
