//! `asdk`: the Arrow SDK command line (docker/podman-style). Exit codes: 0 success,
//! 1 an operation failed, 2 bad usage (from clap).

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    init_logging(&args.log_level);
    if let Err(e) = cli::run(args) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

/// Logs go to stderr; `--log-level` (or `ASDK_LOG`) takes an `EnvFilter` directive.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
