//! What a pull shows while it runs: on a terminal, a row per blob (state, bytes, rate and
//! time left while it downloads) and a total line, as ctr and nerdctl show them; otherwise
//! a plain line per change of state; nothing with `--quiet`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A pull's display.
pub enum PullDisplay {
    Quiet,
    /// Plain lines on stderr, one per blob and state.
    Lines(Mutex<HashMap<String, String>>),
    Bars(Bars),
}

/// Rows of bars on the terminal (stderr).
pub struct Bars {
    multi: MultiProgress,
    rows: Mutex<HashMap<String, ProgressBar>>,
    total: ProgressBar,
}

fn short(what: &str) -> &str {
    let hex = what.strip_prefix("sha256:").unwrap_or(what);
    &hex[..hex.len().min(12)]
}

impl PullDisplay {
    /// Bars if stderr is a terminal, lines if not, nothing if `quiet`.
    pub fn new(quiet: bool) -> Self {
        if quiet {
            return PullDisplay::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return PullDisplay::Lines(Mutex::default());
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "total {bytes}/{total_bytes} {binary_bytes_per_sec} elapsed {elapsed}",
            )
            .expect("template"),
        );
        PullDisplay::Bars(Bars {
            multi,
            rows: Mutex::default(),
            total,
        })
    }

    /// One event of the pull: blob `what` is in `state`, `done` of `total` bytes.
    pub fn event(&self, what: &str, state: &str, done: u64, total: u64) {
        match self {
            PullDisplay::Quiet => {}
            PullDisplay::Lines(last) => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.get(what).map(String::as_str) != Some(state) {
                    last.insert(what.to_string(), state.to_string());
                    eprintln!("{what}\t{state}");
                }
            }
            PullDisplay::Bars(bars) => bars.event(what, state, done, total),
        }
    }

    /// Clears the bars (the summary line follows).
    pub fn finish(&self) {
        if let PullDisplay::Bars(bars) = self {
            for bar in bars.rows.lock().unwrap_or_else(|e| e.into_inner()).values() {
                bar.finish();
            }
            bars.total.finish();
        }
    }
}

impl Bars {
    fn event(&self, what: &str, state: &str, done: u64, total: u64) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let bar = rows.entry(what.to_string()).or_insert_with(|| {
            let bar = self.multi.insert_before(&self.total, ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:14} {msg:12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {eta:>4}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            bar.set_prefix(short(what).to_string());
            // A download is announced waiting (queued) or downloading: counted once.
            if state == "waiting" || state == "downloading" {
                self.total.inc_length(total);
            }
            bar
        });
        if total > 0 {
            bar.set_length(total);
        }
        if state == "downloading" {
            let before = bar.position();
            self.total.inc(done.saturating_sub(before));
        }
        if done > 0 {
            bar.set_position(done);
        }
        bar.set_message(state.to_string());
    }
}
