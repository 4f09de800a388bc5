//! Progress of the long commands (`generate`, `learn`, `report`, `select`): a bar on a
//! terminal; without one (CI, a log file, a pipe), where indicatif draws nothing, one plain
//! line per step on stderr, so that a run of minutes is never silent.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps, or its plain-line stand-in.
pub(crate) struct Progress {
    bar: ProgressBar,
    /// What a step is, in the plain lines ("run", "round").
    noun: &'static str,
    plain: bool,
}

impl Progress {
    /// A bar drawn with `template` (indicatif's) over `len` steps of `noun`.
    pub(crate) fn new(len: u64, template: &str, noun: &'static str) -> Self {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Self {
            bar,
            noun,
            plain: !std::io::stderr().is_terminal(),
        }
    }

    /// What is under way now (on the bar; a plain line when stderr is no terminal).
    pub(crate) fn doing(&self, what: String) {
        if self.plain {
            errln!("{what}");
        }
        self.bar.set_message(what);
    }

    /// One step done: `what` (on the bar; a plain line when stderr is no terminal).
    pub(crate) fn done(&self, what: String) {
        self.bar.inc(1);
        if self.plain {
            errln!(
                "{} {}/{} done: {what}",
                self.noun,
                self.bar.position(),
                self.bar.length().unwrap_or(0)
            );
        }
        self.bar.set_message(what);
    }

    /// One step done, said by the caller.
    pub(crate) fn inc(&self) {
        self.bar.inc(1);
    }

    /// Prints `f`'s output without the bar drawing over it.
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
