//! Progress bars: one spinner or bar per running stage, drawn to stderr only when it is a terminal.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Duration;

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

impl Bars {
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Self { multi: MultiProgress::with_draw_target(target) }
    }

    pub fn stage(&self, name: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(spinner_style());
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}
