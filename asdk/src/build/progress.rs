//! Progress lines and child processes for builds that take time (cargo, musl-gcc, apt-get).
//!
//! Everything goes to stderr so that stdout carries only results (the image ID).

use std::process::{Command, Stdio};
use std::time::Instant;

use super::BuildError;

/// Where build progress is shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Hide progress lines and the tools' output (shown anyway when a tool fails).
    pub quiet: bool,
}

impl Progress {
    /// Prints one progress line.
    pub fn step(&self, message: &str) {
        tracing::info!("{message}");
        if !self.quiet {
            eprintln!("==> {message}");
        }
    }

    /// Runs `cmd`, its stdout and stderr going to our stderr (or captured when quiet).
    /// Fails with the command line and, when captured, the end of its output.
    pub fn run(&self, what: &str, cmd: &mut Command) -> Result<(), BuildError> {
        self.capture(what, cmd, false).map(|_| ())
    }

    /// Like [`Progress::run`] but returns the command's stdout.
    pub fn run_stdout(&self, what: &str, cmd: &mut Command) -> Result<Vec<u8>, BuildError> {
        self.capture(what, cmd, true)
    }

    fn capture(
        &self,
        what: &str,
        cmd: &mut Command,
        want_stdout: bool,
    ) -> Result<Vec<u8>, BuildError> {
        let line = format!("{cmd:?}").replace('"', "");
        tracing::debug!(command = %line, "running");
        let start = Instant::now();
        let stdout = if want_stdout || self.quiet {
            Stdio::piped()
        } else {
            Stdio::from(std::io::stderr())
        };
        let stderr = if self.quiet {
            Stdio::piped()
        } else {
            Stdio::inherit()
        };
        let output = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .output()
            .map_err(|e| BuildError::Spawn {
                command: line.clone(),
                source: e,
            })?;
        if !output.status.success() {
            let mut log = String::from_utf8_lossy(&output.stderr).into_owned();
            if self.quiet && !want_stdout {
                log.push_str(&String::from_utf8_lossy(&output.stdout));
            }
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(BuildError::CommandFailed {
                what: what.to_owned(),
                command: line,
                status: output.status.to_string(),
                output: tail.join("\n"),
            });
        }
        self.step(&format!(
            "{what}: done in {:.1}s",
            start.elapsed().as_secs_f64()
        ));
        Ok(output.stdout)
    }
}
