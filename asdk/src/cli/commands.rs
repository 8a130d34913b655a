//! One function per subcommand; the library does the work, this file formats results.

use std::path::Path;

use anyhow::{Context, Result};
use asdk::build::{BuildOptions, Progress};
use asdk::{Reference, Store};
use serde_json::json;

use super::table::{human_size, render};

/// `println!` that exits quietly when stdout is closed (`asdk images | head`), as CLIs do.
macro_rules! outln {
    ($($arg:tt)*) => {
        super::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}
use super::{Cli, Command, Output};

pub fn run(cli: Cli) -> Result<()> {
    let store_dir = match cli.store {
        Some(d) => d,
        None => Store::default_dir()?,
    };
    // Opening creates the directory: builds open it only once the image is ready, so a
    // rejected binary leaves no trace.
    let open = || {
        Store::open(&store_dir)
            .context("cannot open the image store (use --store DIR to choose another)")
    };
    match cli.command {
        Command::Build {
            path,
            spec,
            tags,
            bin,
            quiet,
            no_base,
            output,
        } => {
            let refs = parse_refs(&tags)?;
            let opts = BuildOptions {
                spec_file: spec,
                bin,
                progress: Progress { quiet },
            };
            // Build first (nothing touches the store), then store.
            let built = asdk::build::build(&path, &opts)?;
            let store = open()?;
            let refs = if refs.is_empty() {
                vec![Reference::new(
                    &built.image.spec.name,
                    asdk::reference::DEFAULT_TAG,
                )?]
            } else {
                refs
            };
            store.add(&built.image, &refs)?;
            let digest = built.image.digest;
            let base = if no_base {
                None
            } else {
                if !quiet {
                    eprintln!("Building the image base (EROFS, for shadowfs)");
                }
                let image = store.image_by_digest(&digest)?;
                Some(store.base_path(&image)?)
            };
            if !quiet {
                for r in &refs {
                    eprintln!("Successfully tagged {r}");
                }
            }
            match output {
                Output::Json => {
                    let image = store.image_by_digest(&digest)?;
                    outln!(
                        "{}",
                        serde_json::to_string_pretty(&json!({
                            "id": digest,
                            "references": refs,
                            "size": image.size,
                            "initrd": store.initrd_path(&image)?,
                            "base": base,
                            "executable": built.executable.kind,
                        }))?
                    );
                }
                Output::Table => outln!("{digest}"),
            }
            Ok(())
        }
        Command::Images {
            output,
            quiet,
            no_trunc,
        } => images(&open()?, output, quiet, no_trunc),
        Command::Inspect { images } => inspect(&open()?, &images),
        Command::Rm { images, force } => rm(&open()?, &images, force),
        Command::Tag { source, target } => {
            let store = open()?;
            let digest = store.resolve(&source)?;
            store.tag(&digest, &target.parse()?)?;
            Ok(())
        }
        Command::Initrd { image } => {
            let store = open()?;
            let image = store.image(&image)?;
            outln!("{}", store.initrd_path(&image)?.display());
            Ok(())
        }
        Command::Export { image, output } => {
            let store = open()?;
            let digest = asdk::oci::export(&store, &image, &output)
                .with_context(|| format!("cannot export {image}"))?;
            eprintln!("Exported {digest} to {}", output.display());
            Ok(())
        }
        Command::Import { file, tags } => {
            let refs = parse_refs(&tags)?;
            import(&open()?, &file, &refs)
        }
        Command::Push {
            image,
            destination,
            registry,
            output,
        } => {
            let store = open()?;
            let opts = registry_options(&registry)?;
            let pushed = runtime()?
                .block_on(asdk::registry::push(&store, &image, &destination, &opts))
                .with_context(|| format!("cannot push {image} to {destination}"))?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&pushed)?),
                Output::Table => outln!("{}", pushed.digest),
            }
            Ok(())
        }
        Command::Pull {
            reference,
            registry,
            output,
        } => {
            let store = open()?;
            let opts = registry_options(&registry)?;
            let pulled = runtime()?
                .block_on(asdk::registry::pull(&store, &reference, &opts))
                .with_context(|| format!("cannot pull {reference}"))?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&pulled)?),
                Output::Table => outln!("{}", pulled.digest),
            }
            Ok(())
        }
    }
}

fn registry_options(args: &super::RegistryArgs) -> Result<asdk::registry::RegistryOptions> {
    use asdk::registry::{Credentials, ProgressMode, RegistryOptions};
    let credentials = match (&args.creds, &args.registry_token) {
        (Some(c), _) => Some(Credentials::parse_user_pass(c)?),
        (None, Some(t)) => Some(Credentials::Bearer(t.clone())),
        (None, None) => None,
    };
    Ok(RegistryOptions {
        credentials,
        auth_file: args.authfile.clone(),
        insecure_registries: args.insecure.clone(),
        progress: if args.quiet {
            ProgressMode::Quiet
        } else {
            ProgressMode::Auto
        },
        retries: None,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn parse_refs(tags: &[String]) -> Result<Vec<Reference>> {
    tags.iter()
        .map(|t| t.parse::<Reference>().map_err(anyhow::Error::from))
        .collect()
}

fn images(store: &Store, output: Output, quiet: bool, no_trunc: bool) -> Result<()> {
    let list = store.list()?;
    if quiet {
        let mut ids: Vec<String> = list
            .iter()
            .map(|s| {
                if no_trunc {
                    s.digest.to_string()
                } else {
                    s.digest.short()
                }
            })
            .collect();
        ids.dedup();
        for id in ids {
            outln!("{id}");
        }
        return Ok(());
    }
    match output {
        Output::Json => {
            let rows: Vec<_> = list
                .iter()
                .map(|s| {
                    json!({
                        "repository": s.reference.name(),
                        "tag": s.reference.tag(),
                        "reference": s.reference,
                        "id": s.digest,
                        "version": s.version,
                        "size": s.size,
                    })
                })
                .collect();
            outln!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.reference.name().to_owned(),
                        s.reference.tag().to_owned(),
                        if no_trunc {
                            s.digest.to_string()
                        } else {
                            s.digest.short()
                        },
                        s.version.clone(),
                        human_size(s.size),
                    ]
                })
                .collect();
            super::write_stdout(&render(
                &["REPOSITORY", "TAG", "IMAGE ID", "VERSION", "SIZE"],
                &rows,
            ));
        }
    }
    Ok(())
}

fn inspect(store: &Store, inputs: &[String]) -> Result<()> {
    let refs = store.references()?;
    let mut out = Vec::new();
    let mut failed = None;
    for input in inputs {
        // Like docker: print what we can, fail at the end if anything was missing.
        let result = store.image(input).and_then(|image| {
            let initrd = image.manifest.initrd();
            Ok(json!({
                "id": image.digest,
                "references": refs.iter().filter(|(_, d)| *d == image.digest).map(|(r, _)| r).collect::<Vec<_>>(),
                "size": image.size,
                "initrd": {
                    "path": store.initrd_path(&image)?,
                    "digest": initrd.digest,
                    "size": initrd.size,
                },
                "base": store.recorded_base(&image).map(|d| store.blob_path(&d)),
                "files": image.manifest.files().map(|f| json!({
                    "path": store.blob_path(&f.digest),
                    "digest": f.digest,
                    "size": f.size,
                })),
                "argv": image.spec.argv(),
                "kernel_cmdline": image.spec.kernel_cmdline().ok(),
                "spec": image.spec,
                "manifest": image.manifest,
            }))
        });
        match result {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!("Error: {input}: {e}");
                failed = Some(e);
            }
        }
    }
    outln!("{}", serde_json::to_string_pretty(&out)?);
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn rm(store: &Store, inputs: &[String], force: bool) -> Result<()> {
    let mut failures = 0;
    for input in inputs {
        match store.remove(input, force) {
            Ok(removal) => {
                for r in removal.untagged {
                    outln!("Untagged: {r}");
                }
                for d in removal.deleted {
                    outln!("Deleted: {d}");
                }
            }
            Err(e) => {
                eprintln!("Error: {input}: {e}");
                failures += 1;
            }
        }
    }
    if failures > 0 {
        anyhow::bail!(
            "{failures} of {} image(s) could not be removed",
            inputs.len()
        );
    }
    Ok(())
}

fn import(store: &Store, file: &Path, refs: &[Reference]) -> Result<()> {
    let imported = asdk::oci::import(store, file, refs)
        .with_context(|| format!("cannot import {}", file.display()))?;
    for (digest, refs) in imported {
        for r in refs {
            eprintln!("Loaded image: {r}");
        }
        outln!("{digest}");
    }
    Ok(())
}
