//! Progress bars: one spinner or bar per running stage, drawn to stderr only when it is a terminal.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;
use std::time::Duration;

/// The bars of the run in progress, so that a remote transfer's bar joins them instead of
/// fighting them for the terminal.
static ACTIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Transfers smaller than this get no bar (they are over before one would draw).
pub const TRANSFER_BAR_ABOVE: u64 = 8 << 20;

/// A byte-counting bar for a remote transfer of `total` bytes: among the run's bars when a run
/// is drawing them, else on stderr when it is a terminal, else hidden.
pub fn transfer_bar(prefix: &str, total: u64) -> ProgressBar {
    use std::io::IsTerminal;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner:.cyan} {prefix:<14.bold} {elapsed:>4} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    if total < TRANSFER_BAR_ABOVE {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        return bar;
    }
    let active = ACTIVE.lock().ok().and_then(|a| a.clone());
    match active {
        Some(multi) => multi.add(bar),
        None if std::io::stderr().is_terminal() => bar,
        None => {
            bar.set_draw_target(ProgressDrawTarget::hidden());
            bar
        }
    }
}

pub fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix:<14.bold} {elapsed:>4} {wide_msg}")
        .expect("valid template")
}

pub fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix:<14.bold} {elapsed:>4} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}")
        .expect("valid template")
        .progress_chars("=> ")
}

/// The set of bars of one run; hidden when stderr is not a terminal or `quiet`.
pub struct Bars {
    multi: MultiProgress,
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Ok(mut a) = ACTIVE.lock() {
            *a = None;
        }
    }
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let multi = MultiProgress::with_draw_target(target);
        if let Ok(mut a) = ACTIVE.lock() {
            *a = Some(multi.clone());
        }
        Self { multi }
    }

    pub fn stage(&self, name: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(spinner_style());
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}
