//! `actl template …`.

use anyhow::Result;
use hyper::Method;
use serde_json::{json, Value};

use super::commands::{each, parse_env, parse_ms, print_json};
use super::table::{human_size, render};
use super::{Output, TemplateCommand};
use crate::client::Endpoint;
use crate::clock::ago;
use crate::templates::model::Template;

fn path_of(name: &str) -> String {
    let enc: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("/templates/{enc}")
}

/// Runs one `actl template` command; returns the exit code.
pub async fn run(ep: &Endpoint, cmd: TemplateCommand) -> Result<i32> {
    match cmd {
        TemplateCommand::Create {
            generic: true,
            pool_size,
            timeout,
            ..
        } => {
            let mut body = json!({ "generic": true });
            if let Some(n) = pool_size {
                body["pool_size"] = json!(n);
            }
            if let Some(s) = timeout {
                body["timeout_s"] = json!(s);
            }
            eprintln!("booting the guest kernel to its app wait point…");
            let t: Template = ep.json(Method::POST, "/templates", Some(&body)).await?;
            eprintln!("generic template {} ready", t.name);
            println!("{}", t.id);
            Ok(0)
        }
        TemplateCommand::Create {
            name,
            image,
            args,
            env,
            memory,
            cpus,
            snapshot_at,
            delay_ms,
            timeout,
            pool_size,
            generic: false,
        } => {
            let (name, image) = (name.unwrap_or_default(), image.unwrap_or_default());
            let mut body = json!({ "name": name, "image": image, "env": parse_env(&env)? });
            if !args.is_empty() {
                body["args"] = json!(args);
            }
            for (k, v) in [
                ("memory", memory.map(Value::from)),
                ("vcpus", cpus.map(Value::from)),
                ("snapshot_at", snapshot_at.map(Value::from)),
                ("delay_ms", delay_ms.map(Value::from)),
                ("timeout_s", timeout.map(Value::from)),
                ("pool_size", pool_size.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            eprintln!("booting {image} and waiting for its snapshot point…");
            let t: Template = ep.json(Method::POST, "/templates", Some(&body)).await?;
            eprintln!(
                "template {} ready: boot → snapshot {} ms, {} on disk",
                t.name,
                t.boot_to_snapshot_ms.unwrap_or(0),
                human_size(t.disk.allocated_bytes)
            );
            println!("{}", t.id);
            Ok(0)
        }
        TemplateCommand::Ls { quiet, output } => {
            let list: Vec<Template> = ep.json(Method::GET, "/templates", None).await?;
            if quiet {
                list.iter().for_each(|t| println!("{}", t.name));
            } else if output == Output::Json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.id.clone(),
                            if t.spec.generic {
                                "(generic: any image)".to_owned()
                            } else {
                                t.spec.image.clone()
                            },
                            t.state.as_str().to_owned(),
                            t.clones.len().to_string(),
                            format!("{}/{}", t.pool.ready, t.pool.size),
                            human_size(t.disk.allocated_bytes),
                            ago(parse_ms(&t.created_at)),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(
                        &[
                            "NAME",
                            "TEMPLATE ID",
                            "IMAGE",
                            "STATE",
                            "CLONES",
                            "POOL",
                            "SIZE",
                            "CREATED"
                        ],
                        &rows
                    )
                );
            }
            Ok(0)
        }
        TemplateCommand::Inspect { templates } => {
            let mut out = Vec::new();
            let mut code = 0;
            for t in &templates {
                match ep.json::<Value>(Method::GET, &path_of(t), None).await {
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
        TemplateCommand::Rm { force, templates } => {
            each(&templates, |t| async move {
                ep.send(
                    Method::DELETE,
                    &format!("{}?force={force}", path_of(&t)),
                    None,
                )
                .await?;
                println!("{t}");
                Ok(())
            })
            .await
        }
    }
}
