//! A one-line progress bar for the firmware transfers. On a terminal it is redrawn in place
//! (carriage return) whenever the percentage changes; into a pipe or a file only the final line
//! is written, so a log of the demo stays readable.

use std::io::{IsTerminal as _, Write as _};

/// Width of the bar in characters.
const WIDTH: usize = 30;

/// A progress bar for `total` bytes.
pub(crate) struct Progress {
    label: &'static str,
    total: u64,
    drawn: Option<u64>,
    live: bool,
}

impl Progress {
    /// A bar labelled `label`.
    pub(crate) fn new(label: &'static str, total: u64) -> Self {
        Self {
            label,
            total,
            drawn: None,
            live: std::io::stdout().is_terminal(),
        }
    }

    /// `done` bytes so far; `detail` follows the numbers (block counts, state).
    pub(crate) fn update(&mut self, done: u64, detail: &str) {
        let percent = percent(done, self.total);
        if !self.live || self.drawn == Some(percent) {
            return;
        }
        self.drawn = Some(percent);
        // Clear to the end of the line: the previous line may have been longer.
        print!("\r{}\x1b[K", line(self.label, done, self.total, detail));
        let _ = std::io::stdout().flush();
    }

    /// The final state, and the end of the line.
    pub(crate) fn finish(&mut self, done: u64, detail: &str) {
        let (lead, clear) = if self.live {
            ("\r", "\x1b[K")
        } else {
            ("", "")
        };
        println!(
            "{lead}{}{clear}",
            line(self.label, done, self.total, detail)
        );
    }
}

fn percent(done: u64, total: u64) -> u64 {
    (done.min(total) * 100).checked_div(total).unwrap_or(100)
}

fn line(label: &str, done: u64, total: u64, detail: &str) -> String {
    let filled = usize::try_from(percent(done, total)).unwrap_or(100) * WIDTH / 100;
    format!(
        "   {label} [{}{}] {:3}%  {} / {}  {detail}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        percent(done, total),
        kib(done),
        kib(total),
    )
}

fn kib(bytes: u64) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_bar_percent_and_bytes() {
        let l = line("push", 512 << 10, 1 << 20, "block 512/1024");
        assert!(l.contains("[###############---------------]  50%"), "{l}");
        assert!(l.contains("512 KiB / 1024 KiB  block 512/1024"), "{l}");
        assert_eq!(percent(5, 0), 100, "an empty body is complete");
    }
}
