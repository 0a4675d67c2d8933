//! `pipeline schedule`: run a pipeline at each tick of a cron expression, or print the
//! equivalent systemd timer / crontab line for users who prefer the system scheduler.
//!
//! The loop is generic over how one run is done ([`run_schedule`] takes a `run_once`
//! closure), so the engine plugs in from the CLI and the loop logic is tested here with fake
//! runs. The cache is only touched inside `run_once`, so `pipeline cache ...` and
//! `pipeline runs` work while the scheduler waits.
//!
//! Cron syntax is croner's: 5 fields (minute hour day-of-month month day-of-week), 6 with a
//! leading seconds field, 7 with a trailing year, `@daily`-style nicknames, `L`, `W`, `#`.
//! Ticks are computed in `--tz` (an IANA name) or, without it, the machine's local zone.
//!
//! - [`cron`]: parsing cron expressions and time zones, the next tick;
//! - [`run_loop`]: the loop (ticks, skipped ticks, retries, shutdown);
//! - [`system`]: the systemd timer and crontab printers.

pub mod cron;
pub mod run_loop;
pub mod system;

pub use cron::{parse_cron, parse_tz, CronSchedule};
pub use run_loop::{backoff_delay, run_schedule, run_schedule_stats, OnShutdown, ScheduleOptions, ScheduleStats, Shutdown};
pub use system::{print_cron, print_systemd, systemd_on_calendar, ScheduledRun};


#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// `field` names the offending field ("hour", "day-of-week"...) when one can be singled out.
    #[error("invalid cron expression \"{expr}\": {}{message}", field.map(|f| format!("{f} field: ")).unwrap_or_default())]
    Cron {
        expr: String,
        field: Option<&'static str>,
        message: String,
    },
    #[error("unknown time zone \"{name}\" (expected an IANA name such as Europe/Paris){}", suggestion.as_ref().map(|s| format!("; did you mean {s}?")).unwrap_or_default())]
    UnknownTz {
        name: String,
        suggestion: Option<String>,
    },
    #[error("cron expression \"{expr}\" has no tick after {after}")]
    NoNextTick { expr: String, after: String },
    #[error("cannot write {what} {value:?} into a crontab line or systemd unit: {reason}")]
    Unprintable {
        what: String,
        value: String,
        reason: String,
    },
    #[error("cron expression \"{expr}\" cannot be written for {target}: {reason}")]
    Untranslatable {
        expr: String,
        target: &'static str,
        reason: String,
    },
}
