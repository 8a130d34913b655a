//! Progress of pushes and pulls on stderr: indicatif bars on a terminal, one plain line per
//! event otherwise (logs, CI), nothing when quiet (arrowd, which logs with tracing instead).

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Plain lines on stderr.
    Plain,
    /// Nothing.
    Quiet,
}

pub(crate) struct Progress {
    bars: Option<MultiProgress>,
    plain: bool,
}

impl Progress {
    pub(crate) fn new(mode: ProgressMode) -> Self {
        let tty = std::io::stderr().is_terminal();
        match mode {
            ProgressMode::Auto if tty => Self {
                bars: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
                plain: false,
            },
            ProgressMode::Auto | ProgressMode::Plain => Self {
                bars: None,
                plain: true,
            },
            ProgressMode::Quiet => Self {
                bars: None,
                plain: false,
            },
        }
    }

    /// One line of status.
    pub(crate) fn line(&self, msg: &str) {
        tracing::info!("{msg}");
        if let Some(m) = &self.bars {
            let _ = m.println(msg);
        } else if self.plain {
            eprintln!("{msg}");
        }
    }

    /// A transfer of `size` bytes labelled `label` (a short digest).
    pub(crate) fn transfer(&self, label: &str, verb: &str, size: u64) -> Transfer {
        let bar = self.bars.as_ref().map(|m| {
            let b = m.add(ProgressBar::new(size));
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix}: {msg:<12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_owned());
            b.set_message(verb.to_owned());
            b
        });
        if self.plain {
            eprintln!("{label}: {verb} {}", human(size));
        }
        Transfer {
            bar,
            plain: self.plain,
            label: label.to_owned(),
            start: Instant::now(),
        }
    }
}

pub(crate) struct Transfer {
    bar: Option<ProgressBar>,
    plain: bool,
    label: String,
    start: Instant,
}

impl Transfer {
    pub(crate) fn set_position(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_position(n);
        }
    }

    /// A note on this transfer (a retry, a resume).
    pub(crate) fn note(&self, msg: &str) {
        tracing::info!(blob = %self.label, "{msg}");
        if let Some(b) = &self.bar {
            b.set_message(msg.to_owned());
        } else if self.plain {
            eprintln!("{}: {msg}", self.label);
        }
    }

    pub(crate) fn finish(self, msg: &str) {
        let secs = self.start.elapsed().as_secs_f64();
        if let Some(b) = &self.bar {
            b.set_message(msg.to_owned());
            b.finish();
        } else if self.plain {
            eprintln!("{}: {msg} in {secs:.1}s", self.label);
        }
    }
}

/// `31.5 KiB`-style sizes.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
