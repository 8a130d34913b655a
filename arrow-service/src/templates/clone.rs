//! Starting an instance as a clone: hand a warm-pool VMM its `PUT /vm/start`, or (pool
//! empty, pooled VMM dead) spawn `arrow-vmm restore --clone` from the template directory.

use std::path::Path;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::Method;
use serde_json::Value;

use super::db::TemplateRecord;
use super::generic::Injection;
use super::model::CloneInfo;
use crate::client::{ClientError, Endpoint};
use crate::db::Record;
use crate::supervisor::{Supervisor, API_SOCK, VSOCK_SOCK};

/// One bounded request to an arrow-vmm control socket; the JSON answer or why not.
pub(crate) async fn vmm_api(
    sock: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let ep = Endpoint::Unix(sock.to_path_buf());
    let call = async {
        let resp = ep
            .send(method, path, body.map(|b| b.to_string().into_bytes()))
            .await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, ClientError>(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    };
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(ClientError::Api { status, message })) => Err(format!("{status}: {message}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{} did not answer {path} in 10 s", sock.display())),
    }
}

/// The app description given to a plain `restore --clone` of the generic template.
const APP_SPEC: &str = "app-spec.json";
/// The `PUT /vm/start` body sent to a pooled VMM of the generic template, kept in the
/// run directory so that an arrowd that stops before sending it sends it after restart.
pub(super) const START_BODY: &str = "start.json";

/// A started VMM: child, PID, PID start time, and how it was cloned.
pub(crate) type Started = (tokio::process::Child, i32, u64, Option<CloneInfo>);

impl Supervisor {
    /// Starts `rec` as a clone of `t`: from its claimed warm VMM if it has one, else with
    /// a plain `restore --clone`. Returns once the VM runs (or its VMM ended). `inject`:
    /// the image and app a clone of the generic template is given.
    pub(crate) async fn start_clone(
        &self,
        rec: &Record,
        t: &TemplateRecord,
        inject: Option<&Injection>,
        cgroup_procs: Option<std::ffi::CString>,
    ) -> std::io::Result<Started> {
        let run_dir = self.run_dir(&rec.id);
        let info = |pooled, t0: Instant| CloneInfo {
            template: t.name.clone(),
            template_id: t.id.clone(),
            pooled,
            generic: t.spec.generic,
            start_us: Some(t0.elapsed().as_micros() as i64),
        };
        if let Some(mut slot) = self.templates.take_claimed(&rec.id) {
            let t0 = Instant::now();
            let body = inject.map(start_body);
            if let Some(b) = &body {
                std::fs::write(run_dir.join(START_BODY), b.to_string())?;
            }
            match vmm_api(&run_dir.join(API_SOCK), Method::PUT, "/vm/start", body).await {
                Ok(_) => {
                    let ci = info(true, t0);
                    self.templates.count_hit(&t.id);
                    self.record_latency(&rec.id, t0.elapsed());
                    return Ok((slot.child, slot.pid, slot.start, Some(ci)));
                }
                Err(e) => {
                    let why = format!("pooled VMM {} did not start: {e}", slot.pid);
                    tracing::warn!(instance = %rec.id, "{why}; falling back to a plain restore");
                    self.templates.count_miss(&t.id, Some(why));
                    crate::procfs::signal(slot.pid, slot.start, libc::SIGKILL);
                    let _ = tokio::time::timeout(Duration::from_secs(5), slot.child.wait()).await;
                }
            }
        }
        self.clean_run_dir(&run_dir);
        let mut args: Vec<std::ffi::OsString> = vec![
            "restore".into(),
            "--from".into(),
            self.template_dir(&t.id).into(),
            "--clone".into(),
            "--vsock-cid".into(),
            rec.spec.vsock_cid.to_string().into(),
            "--vsock-uds".into(),
            VSOCK_SOCK.into(),
        ];
        if let Some(i) = inject {
            let spec = run_dir.join(APP_SPEC);
            std::fs::write(&spec, i.app.to_string())?;
            args.extend([
                "--app-spec".into(),
                spec.into(),
                "--image-base".into(),
                i.base.clone().into(),
            ]);
            args.extend(volume_args(i));
        }
        let t0 = Instant::now();
        let (mut child, pid, start) = self.spawn_vmm(&run_dir, args, cgroup_procs)?;
        // The reply says "running" only once the restored VM runs.
        let sock = run_dir.join(API_SOCK);
        while t0.elapsed() < Duration::from_secs(10) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            if let Ok(v) = vmm_api(&sock, Method::GET, "/vm", None).await {
                if v["state"] == "running" {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.record_latency(&rec.id, t0.elapsed());
        Ok((child, pid, start, Some(info(false, t0))))
    }
}

/// The `PUT /vm/start` body that hands a pooled VMM of the generic template its app,
/// image and volumes.
pub(crate) fn start_body(i: &Injection) -> Value {
    let mut body = serde_json::json!({ "app": i.app, "image_base": i.base });
    if let Some(v) = &i.volumes_base {
        body["volumes_base"] = serde_json::json!(v);
    }
    if !i.fs.is_empty() {
        body["fs"] =
            i.fs.iter()
                .map(|(tag, socket)| serde_json::json!({ "tag": tag, "socket": socket }))
                .collect();
    }
    body
}

/// `restore --clone` arguments that give a clone of the generic template its volumes.
pub(crate) fn volume_args(i: &Injection) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(v) = &i.volumes_base {
        args.extend(["--volumes-base".into(), v.clone().into()]);
    }
    for (tag, socket) in &i.fs {
        args.push("--fs".into());
        args.push(format!("{tag}={}", socket.display()).into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_clone_is_given_its_volumes() {
        let mut i = Injection {
            base: "/s/base.erofs".into(),
            app: json!({"app": "/app", "volumes": [{"kind": "pack", "id": "0", "read_only": true, "path": "/cfg"}]}),
            volumes_base: None,
            fs: Vec::new(),
        };
        assert_eq!(
            start_body(&i),
            json!({"app": i.app, "image_base": "/s/base.erofs"})
        );
        assert!(volume_args(&i).is_empty());
        i.volumes_base = Some("/r/volumes.erofs".into());
        i.fs = vec![("vol0".into(), "fs-vol0.sock".into())];
        assert_eq!(
            start_body(&i),
            json!({
                "app": i.app,
                "image_base": "/s/base.erofs",
                "volumes_base": "/r/volumes.erofs",
                "fs": [{"tag": "vol0", "socket": "fs-vol0.sock"}],
            })
        );
        let a: Vec<String> = volume_args(&i)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "--volumes-base",
                "/r/volumes.erofs",
                "--fs",
                "vol0=fs-vol0.sock"
            ]
        );
    }
}
