//! Progress of long operations (`import`, `export`): a bar on a terminal, plain
//! lines at most once a second otherwise (a log file or CI output gets a
//! readable record, not a screenful of redraws).
//!
//! **Invariant:** progress goes to stderr only; stdout carries results.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Least time between two plain progress lines.
const LINE_EVERY: Duration = Duration::from_secs(1);

pub struct Progress {
    /// `Some` on a terminal.
    bar: Option<ProgressBar>,
    what: &'static str,
    /// What 100 % is, in the unit of `position`, when known.
    total: Option<u64>,
    position: u64,
    last_line: Option<Instant>,
}

impl Progress {
    /// Progress of `what` (`imported`, `exported`), out of `total` when known.
    /// `bytes`: the position counts bytes (shown as sizes) rather than items.
    pub fn new(what: &'static str, total: Option<u64>, bytes: bool) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let template = match (total.is_some(), bytes) {
                (true, true) => "{bar:40} {bytes}/{total_bytes} {msg} ({eta} left)",
                (true, false) => "{bar:40} {pos}/{len} {msg} ({eta} left)",
                (false, _) => "{spinner} {pos} {msg}",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        Self { bar, what, total, position: 0, last_line: None }
    }

    /// Moves to `position`; `message` says what was done so far.
    pub fn set(&mut self, position: u64, message: &str) {
        self.position = position;
        if let Some(bar) = &self.bar {
            bar.set_position(position);
            bar.set_message(message.to_owned());
            return;
        }
        if self.last_line.is_none_or(|at| at.elapsed() >= LINE_EVERY) {
            self.last_line = Some(Instant::now());
            self.line(message);
        }
    }

    /// Ends the bar, or writes the last plain line.
    pub fn finish(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_owned()),
            None => self.line(message),
        }
    }

    fn line(&self, message: &str) {
        let share = match self.total {
            Some(total) if total > 0 => format!(" ({} %)", self.position * 100 / total),
            _ => String::new(),
        };
        eprintln!("{}: {message}{share}", self.what);
    }
}
