//! What a pull or push shows while it runs, from the Transfer service's progress events: on
//! a terminal, a row per blob (state, bytes, rate and time left while it moves; a layer's
//! unpack on its row) and a total line, as ctr and nerdctl show them; otherwise a plain line
//! per change of state; nothing with `--quiet`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use api::types::transfer::Progress;

/// A transfer's display (shared by the task that follows the progress).
#[derive(Clone)]
pub struct PullDisplay(Arc<Display>);

enum Display {
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

/// A blob's row: `<kind> <12 hex digits>`.
fn short(row: &str) -> String {
    let (kind, digest) = row.split_once('-').unwrap_or(("", row));
    let hex = digest.rsplit(':').next().unwrap_or(digest);
    format!("{kind} {}", &hex[..hex.len().min(12)])
}

impl PullDisplay {
    /// Bars if stderr is a terminal, lines if not, nothing if `quiet`.
    pub fn new(quiet: bool) -> Self {
        if quiet {
            return PullDisplay(Arc::new(Display::Quiet));
        }
        if !std::io::stderr().is_terminal() {
            return PullDisplay(Arc::new(Display::Lines(Mutex::default())));
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "total {bytes}/{total_bytes} {binary_bytes_per_sec} elapsed {elapsed}",
            )
            .expect("template"),
        );
        PullDisplay(Arc::new(Display::Bars(Bars {
            multi,
            rows: Mutex::default(),
            total,
        })))
    }

    /// One progress event. A status line (no name) and an image's show nothing; a layer's
    /// unpack shows on the layer's row.
    pub fn event(&self, p: &Progress) {
        if p.name.is_empty() || p.desc.is_none() && !p.name.starts_with("unpack-") {
            return;
        }
        let row = match p.name.strip_prefix("unpack-") {
            Some(digest) => format!("layer-{digest}"),
            None => p.name.clone(),
        };
        let (state, done, total) = (
            p.event.as_str(),
            p.progress.max(0) as u64,
            p.total.max(0) as u64,
        );
        match &*self.0 {
            Display::Quiet => {}
            Display::Lines(last) => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.get(&row).map(String::as_str) != Some(state) {
                    last.insert(row.clone(), state.to_string());
                    eprintln!("{row}\t{state}");
                }
            }
            Display::Bars(bars) => bars.event(&row, state, done, total),
        }
    }

    /// Clears the bars (the summary line follows).
    pub fn finish(&self) {
        if let Display::Bars(bars) = &*self.0 {
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
                    "{prefix:19} {msg:12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {eta:>4}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            bar.set_prefix(short(what));
            // A transfer is announced waiting (queued), downloading or uploading: counted
            // once.
            if matches!(state, "waiting" | "downloading" | "uploading") {
                self.total.inc_length(total);
            }
            bar
        });
        if total > 0 {
            bar.set_length(total);
        }
        if matches!(state, "downloading" | "uploading") {
            let before = bar.position();
            self.total.inc(done.saturating_sub(before));
        }
        if done > 0 {
            bar.set_position(done);
        }
        bar.set_message(state.to_string());
    }
}
