//! actl: docker-like CLI over arrowd's REST API. See `docs/arrowd.md`.

use arrow_service::cli::{run, Cli};
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let is_run = matches!(cli.command, arrow_service::cli::Command::Run { .. });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("actl: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("Error: {e:#}");
            // docker run: 125 when the daemon (or the CLI) fails; other commands: 1.
            std::process::ExitCode::from(if is_run { 125 } else { 1 })
        }
    }
}
