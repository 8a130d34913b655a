//! What each actl command does.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{anyhow, bail, Result};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};

use super::table::{human_size, render};
use super::{Cli, Command, CreateArgs, Output};
use crate::client::Endpoint;
use crate::clock::ago;
use crate::model::{ImageInfo, Instance, PortMapping, State, WaitResponse};

pub(super) fn parse_env(items: &[String]) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("bad -e {kv:?}: write KEY=VALUE"))
        })
        .collect()
}

/// `[IP:]HOST:VSOCK`
fn parse_publish(text: &str) -> Result<PortMapping> {
    let bad = || anyhow!("bad -p {text:?}: write [IP:]HOST_PORT:VSOCK_PORT, e.g. 8080:80");
    let (rest, guest) = text.rsplit_once(':').ok_or_else(bad)?;
    let (ip, host) = match rest.rsplit_once(':') {
        Some((ip, host)) => (ip.trim_matches(['[', ']']).to_owned(), host),
        None => ("127.0.0.1".to_owned(), rest),
    };
    Ok(PortMapping {
        host_ip: ip,
        host_port: host.parse().map_err(|_| bad())?,
        guest_port: guest.parse().map_err(|_| bad())?,
    })
}

/// `HOST:GUEST[:ro]`; a relative host path is taken from the current directory (as
/// docker does for `-v ./dir:/x`), since arrowd resolves nothing relative.
fn parse_volume(text: &str) -> Result<crate::volumes::Volume> {
    let mut v = crate::volumes::spec::parse_docker(text).map_err(|e| anyhow!("-v: {e}"))?;
    if !v.host_path.starts_with('/') {
        let cwd = std::env::current_dir().map_err(|e| anyhow!("-v {text:?}: {e}"))?;
        v.host_path = cwd.join(&v.host_path).display().to_string();
    }
    Ok(v)
}

fn create_body(c: &CreateArgs, start: bool) -> Result<Value> {
    let ports = c
        .publish
        .iter()
        .map(|p| parse_publish(p))
        .collect::<Result<Vec<_>>>()?;
    let volumes = c
        .volume
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<Vec<_>>>()?;
    let mut body = json!({
        "image": c.image.clone().unwrap_or_default(),
        "env": parse_env(&c.env)?,
        "ports": ports,
        "start": start,
    });
    if !volumes.is_empty() {
        body["volumes"] = json!(volumes);
    }
    if !c.args.is_empty() {
        body["args"] = json!(c.args);
    }
    if let Some(m) = &c.memory_max {
        body["memory_max"] = json!(m);
    }
    if let Some(m) = &c.memory {
        body["memory"] = json!(m);
    }
    if let Some(n) = c.cpus {
        body["vcpus"] = json!(n);
    }
    if let Some(n) = &c.name {
        body["name"] = json!(n);
    }
    if let Some(t) = &c.template {
        body["template"] = json!(t);
    }
    if c.core_dumps {
        body["core_dumps"] = json!(true);
    }
    if let Some(s) = &c.storage {
        body["storage"] = json!(s);
    }
    if c.initrd {
        body["initrd"] = json!(true);
    }
    Ok(body)
}

pub(super) fn path_of(id: &str, action: &str) -> String {
    let id: String = id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("/instances/{id}{action}")
}

/// Streams the console of `id` to stdout.
async fn stream_logs(ep: &Endpoint, id: &str, follow: bool, tail: Option<usize>) -> Result<()> {
    let mut q = format!("?follow={follow}");
    if let Some(n) = tail {
        q.push_str(&format!("&tail={n}"));
    }
    let resp = ep
        .send(Method::GET, &format!("{}{q}", path_of(id, "/logs")), None)
        .await?;
    let mut body = resp.into_body();
    let mut out = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(())
}

fn status_text(i: &Instance) -> String {
    match i.state {
        State::Running => format!("Up since {}", i.started_at.as_deref().unwrap_or("?")),
        State::Exited => format!(
            "Exited ({})",
            i.exit_code.map_or("?".into(), |c| c.to_string())
        ),
        State::Failed => format!("Failed: {}", i.reason.as_deref().unwrap_or("unknown")),
        s => s.as_str().to_owned(),
    }
}

fn ports_text(ports: &[PortMapping]) -> String {
    ports
        .iter()
        .map(|p| format!("{}:{}->{}/vsock", p.host_ip, p.host_port, p.guest_port))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs one command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    let ep = &Endpoint::parse(&cli.host, cli.token.clone());
    match cli.command {
        Command::Run { create, detach, rm } => {
            let body = create_body(&create, true)?;
            let inst: Instance = ep.json(Method::POST, "/instances", Some(&body)).await?;
            if detach {
                println!("{}", inst.id);
                return Ok(0);
            }
            stream_logs(ep, &inst.id, true, None).await?;
            let w: WaitResponse = ep
                .json(Method::POST, &path_of(&inst.id, "/wait"), None)
                .await?;
            if rm {
                ep.send(Method::DELETE, &path_of(&inst.id, ""), None)
                    .await?;
            }
            match w.exit_code {
                Some(c) => Ok(c),
                None => bail!(
                    "instance {} failed: {}",
                    inst.name,
                    w.reason.unwrap_or_default()
                ),
            }
        }
        Command::Create { create } => {
            let body = create_body(&create, false)?;
            let inst: Instance = ep.json(Method::POST, "/instances", Some(&body)).await?;
            println!("{}", inst.id);
            Ok(0)
        }
        Command::Start { instances } => {
            each(&instances, |id| async move {
                let i: Instance = ep.json(Method::POST, &path_of(&id, "/start"), None).await?;
                println!("{}", i.name);
                Ok(())
            })
            .await
        }
        Command::Ps { all, quiet, output } => {
            let list: Vec<Instance> = ep
                .json(Method::GET, &format!("/instances?all={all}"), None)
                .await?;
            if quiet {
                list.iter().for_each(|i| println!("{}", i.id));
            } else if output == Output::Json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|i| {
                        vec![
                            i.id.clone(),
                            i.spec.image.clone(),
                            ago(parse_ms(&i.created_at)),
                            status_text(i),
                            ports_text(&i.spec.ports),
                            i.name.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(
                        &[
                            "INSTANCE ID",
                            "IMAGE",
                            "CREATED",
                            "STATUS",
                            "PORTS",
                            "NAMES"
                        ],
                        &rows
                    )
                );
            }
            Ok(0)
        }
        Command::Logs {
            instance,
            follow,
            tail,
        } => {
            stream_logs(ep, &instance, follow, tail).await?;
            Ok(0)
        }
        Command::Stop { time, instances } => {
            each(&instances, |id| async move {
                let q = time.map(|t| format!("?timeout={t}")).unwrap_or_default();
                let _: Instance = ep
                    .json(Method::POST, &format!("{}{q}", path_of(&id, "/stop")), None)
                    .await?;
                println!("{id}");
                Ok(())
            })
            .await
        }
        Command::Kill { signal, instances } => {
            each(&instances, |id| {
                let signal = signal.clone();
                async move {
                    let _: Instance = ep
                        .json(
                            Method::POST,
                            &format!("{}?signal={signal}", path_of(&id, "/kill")),
                            None,
                        )
                        .await?;
                    println!("{id}");
                    Ok(())
                }
            })
            .await
        }
        Command::Rm { force, instances } => {
            each(&instances, |id| async move {
                ep.send(
                    Method::DELETE,
                    &format!("{}?force={force}", path_of(&id, "")),
                    None,
                )
                .await?;
                println!("{id}");
                Ok(())
            })
            .await
        }
        Command::Inspect { instances } => {
            let mut out = Vec::new();
            let mut code = 0;
            for id in &instances {
                match ep.json::<Value>(Method::GET, &path_of(id, ""), None).await {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            print_json(&out)?;
            Ok(code)
        }
        Command::Update { memory, instances } => {
            let body = json!({ "memory": memory });
            each(&instances, |id| {
                let body = body.clone();
                async move {
                    let _: serde_json::Value = ep
                        .json(Method::POST, &path_of(&id, "/update"), Some(&body))
                        .await?;
                    println!("{id}");
                    Ok(())
                }
            })
            .await
        }
        Command::Wait { instances } => {
            each(&instances, |id| async move {
                let w: WaitResponse = ep.json(Method::POST, &path_of(&id, "/wait"), None).await?;
                match w.exit_code {
                    Some(c) => println!("{c}"),
                    None => println!("-1"),
                }
                Ok(())
            })
            .await
        }
        Command::Template { command } => super::template::run(ep, command).await,
        Command::Cp { source, dest } => {
            let Some((id, name)) = source.split_once(':') else {
                anyhow::bail!("give the source as INSTANCE:NAME, e.g. web:core.1");
            };
            let path = path_of(id, &format!("/cores/{name}"));
            let resp = ep.send(Method::GET, &path, None).await?;
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await?
                .to_bytes();
            if dest == "-" {
                use std::io::Write;
                std::io::stdout().write_all(&bytes)?;
            } else {
                let mut target = std::path::PathBuf::from(&dest);
                if target.is_dir() {
                    target.push(name);
                }
                std::fs::write(&target, &bytes)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", target.display()))?;
                eprintln!("{} bytes -> {}", bytes.len(), target.display());
            }
            Ok(0)
        }
        Command::Pull {
            reference,
            creds,
            insecure,
        } => {
            let mut body = serde_json::json!({ "reference": reference, "insecure": insecure });
            if let Some(c) = creds {
                let Some((u, p)) = c.split_once(':') else {
                    anyhow::bail!("--creds wants USER:PASSWORD");
                };
                body["username"] = u.into();
                body["password"] = p.into();
            }
            eprintln!("Pulling {reference} (arrowd)");
            let pulled: serde_json::Value =
                ep.json(Method::POST, "/images/pull", Some(&body)).await?;
            println!("{}", pulled["digest"].as_str().unwrap_or_default());
            Ok(0)
        }
        Command::Images { quiet, output } => {
            let list: Vec<ImageInfo> = ep.json(Method::GET, "/images", None).await?;
            if quiet {
                list.iter()
                    .for_each(|i| println!("{}", short_digest(&i.digest)));
            } else if output == Output::Json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|i| {
                        let (repo, tag) =
                            i.reference.rsplit_once(':').unwrap_or((&i.reference, ""));
                        vec![
                            repo.to_owned(),
                            tag.to_owned(),
                            short_digest(&i.digest),
                            i.version.clone(),
                            human_size(i.size),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(&["REPOSITORY", "TAG", "IMAGE ID", "VERSION", "SIZE"], &rows)
                );
            }
            Ok(0)
        }
    }
}

fn short_digest(d: &str) -> String {
    d.strip_prefix("sha256:")
        .unwrap_or(d)
        .chars()
        .take(12)
        .collect()
}

/// Parses our own RFC 3339 output back to ms (for "x minutes ago").
pub(super) fn parse_ms(text: &str) -> i64 {
    let n =
        |r: std::ops::Range<usize>| text.get(r).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (inverse of clock::rfc3339).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) * 1000) + n(20..23)
}

/// Runs `f` for each instance like docker: errors are printed, the exit code is 1 if any failed.
pub(super) async fn each<F, Fut>(ids: &[String], f: F) -> Result<i32>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut code = 0;
    for id in ids {
        if let Err(e) = f(id.clone()).await {
            eprintln!("Error: {}", root_message(&e));
            code = 1;
        }
    }
    Ok(code)
}

fn root_message(e: &anyhow::Error) -> String {
    e.chain().last().map(|c| c.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_forms() {
        let v = parse_volume("/srv/cfg:/etc/cfg:ro").unwrap();
        assert_eq!(
            (v.host_path.as_str(), v.guest_path.as_str(), v.read_only),
            ("/srv/cfg", "/etc/cfg", true)
        );
        let v = parse_volume("data:/data").unwrap();
        assert!(v.host_path.starts_with('/') && v.host_path.ends_with("/data") && !v.read_only);
        assert!(parse_volume("/only").is_err());
    }

    #[test]
    fn publish_forms() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.guest_port),
            ("127.0.0.1", 8080, 80)
        );
        let p = parse_publish("0.0.0.0:9000:5").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.guest_port),
            ("0.0.0.0", 9000, 5)
        );
        assert!(parse_publish("80").is_err());
        assert!(parse_publish("x:80").is_err());
    }

    #[test]
    fn time_round_trip() {
        let ms = 1_763_000_000_123;
        assert_eq!(parse_ms(&crate::clock::rfc3339(ms)), ms);
    }
}
