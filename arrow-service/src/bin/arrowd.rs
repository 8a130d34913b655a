//! arrowd: the Arrow daemon. See `docs/arrowd.md`.

use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use arrow_service::cgroup::Cgroups;
use arrow_service::config::Config;
use arrow_service::db::Db;
use arrow_service::supervisor::Supervisor;
use arrow_service::unix_socket::{self, CheckedUnixListener, PeerPolicy};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    let cfg = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arrowd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arrowd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Holds an exclusive lock on the state directory for the life of arrowd.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("arrowd.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another arrowd already uses the state directory {}: stop it, or pass a different --state-dir",
            dir.display()
        );
    }
    Ok(f)
}

async fn bind_unix(
    path: &Path,
    flag: &str,
    cfg: &Config,
    what: &'static str,
) -> Result<CheckedUnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "{} is in use by a running daemon: stop it or pass a different {flag}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let group = cfg
        .socket_group
        .as_deref()
        .map(unix_socket::resolve_group)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let listener = unix_socket::bind_private(path, group)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    Ok(CheckedUnixListener::new(
        listener,
        PeerPolicy::new(&cfg.allow_uids, group),
        what,
    ))
}

async fn run(cfg: Config) -> Result<()> {
    if cfg.tcp.is_some() && cfg.token.as_deref().is_none_or(str::is_empty) {
        bail!("--tcp needs --token (or ARROWD_TOKEN): the TCP API is never served without one");
    }
    std::fs::create_dir_all(cfg.run_root()).with_context(|| {
        format!(
            "cannot create the state directory {}",
            cfg.state_dir.display()
        )
    })?;
    let _lock = lock_state_dir(&cfg.state_dir)?;
    let db = Db::open(&cfg.db_path())?;
    let store = match &cfg.store {
        Some(dir) => asdk::Store::open(dir),
        None => asdk::Store::open_default(),
    }
    .context("cannot open the image store (pass --store DIR)")?;
    let cgroups = if cfg.no_cgroups {
        Cgroups::disabled()
    } else {
        Cgroups::init(&cfg.cgroup_root)
    };
    if !cfg.kernel_path().is_file() {
        tracing::warn!(
            "guest kernel {} does not exist: instances cannot start until it does (--kernel PATH)",
            cfg.kernel_path().display()
        );
    }
    let jail = arrow_service::jail::Jail::init(
        &cfg.jail_options(),
        &cfg.vmm_path(),
        &cfg.state_dir,
        &store.root().join("blobs/sha256"),
    )?;
    let sup = Supervisor::new(cfg.clone(), db, store, cgroups, jail);
    sup.recover().await?;
    sup.start_templates().await?;

    // The CRI socket first: once the REST socket answers, both do.
    let cri = if cfg.no_cri {
        None
    } else {
        let cri = arrow_service::cri::Cri::new(sup.clone())?;
        let listener =
            bind_unix(&cfg.cri_socket, "--cri-socket (or --no-cri)", &cfg, "CRI").await?;
        tracing::info!(socket = %cfg.cri_socket.display(), "CRI (runtime.v1) listening");
        Some((cri, listener))
    };
    let unix = bind_unix(&cfg.socket, "--socket", &cfg, "REST API").await?;
    tracing::info!(socket = %cfg.socket.display(), "arrowd listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let mut cri_server = tokio::task::JoinSet::new();
    if let Some((cri, listener)) = cri {
        cri_server.spawn(arrow_service::cri::serve(cri, listener, stop_rx.clone()));
    }
    {
        let app = arrow_service::api::router(sup.clone());
        let mut rx = stop_rx.clone();
        servers.spawn(async move {
            axum::serve(unix, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        });
    }
    if let (Some(addr), Some(token)) = (&cfg.tcp, &cfg.token) {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on TCP {addr}"))?;
        tracing::info!(%addr, "arrowd listening on TCP (token required)");
        let app = arrow_service::api::router_with_token(sup.clone(), token.clone());
        let mut rx = stop_rx.clone();
        servers.spawn(async move {
            axum::serve(tcp, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        });
    }
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: arrowd stops; instances keep running"),
        _ = int.recv() => tracing::info!("SIGINT: arrowd stops; instances keep running"),
        r = servers.join_next() => {
            if let Some(Ok(Err(e))) = r { bail!("API server failed: {e}"); }
        }
        Some(r) = cri_server.join_next() => {
            if let Ok(Err(e)) = r { bail!("CRI server failed: {e}"); }
        }
    }
    let _ = stop_tx.send(true);
    // Long-lived requests (wait, logs -f) would hold graceful shutdown forever: bound it.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while servers.join_next().await.is_some() {}
        while cri_server.join_next().await.is_some() {}
    })
    .await;
    let _ = std::fs::remove_file(&cfg.socket);
    if !cfg.no_cri {
        let _ = std::fs::remove_file(&cfg.cri_socket);
    }
    Ok(())
}
