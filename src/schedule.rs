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

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Local, Utc};
use croner::Cron;
use tokio::sync::watch;

use crate::stages::CancelFlag;

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
    #[error("cron expression \"{expr}\" cannot be written for {target}: {reason}")]
    Untranslatable {
        expr: String,
        target: &'static str,
        reason: String,
    },
}

/// What to do with a run in progress when SIGTERM / Ctrl-C arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnShutdown {
    /// Set the run's [`CancelFlag`] and wait for it to return (stages stop between units of
    /// work and leave nothing in the cache). Default: systemd and Ctrl-C users expect a prompt exit.
    #[default]
    Cancel,
    /// Let the run finish; a second signal cancels it.
    Finish,
}

#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    /// Cron expression, e.g. "0 3 * * *" or, with seconds, "*/10 * * * * *".
    pub cron: String,
    /// IANA time zone for the cron fields; `None` is the machine's local zone.
    pub tz: Option<String>,
    /// Retries of a failed run before giving up on that tick (0: no retry).
    pub retries: u32,
    /// Delay before the first retry; doubles for each further retry.
    pub retry_delay: Duration,
    /// Upper bound on one retry delay.
    pub max_retry_delay: Duration,
    pub on_shutdown: OnShutdown,
}

impl ScheduleOptions {
    /// Defaults: 2 retries, 30 s then 60 s apart (at most 15 min), cancel on shutdown.
    pub fn new(cron: impl Into<String>) -> Self {
        Self {
            cron: cron.into(),
            tz: None,
            retries: 2,
            retry_delay: Duration::from_secs(30),
            max_retry_delay: Duration::from_secs(15 * 60),
            on_shutdown: OnShutdown::Cancel,
        }
    }
}

/// Counts shutdown requests (SIGTERM, Ctrl-C, or [`Shutdown::request`] from a test).
/// Clones share the count; a request made before anyone waits is not lost.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<watch::Sender<u32>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn request(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    pub fn requests(&self) -> u32 {
        *self.0.borrow()
    }

    /// Resolves once at least `n` requests have been made.
    pub async fn wait_for(&self, n: u32) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// A `Shutdown` fed by SIGTERM and Ctrl-C (SIGINT), each signal one request.
    /// Must be called inside a tokio runtime.
    pub fn from_signals() -> std::io::Result<Self> {
        let shutdown = Self::new();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let s = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let name = tokio::select! {
                        Some(()) = term.recv() => "SIGTERM",
                        Some(()) = int.recv() => "SIGINT",
                        else => break,
                    };
                    tracing::info!(signal = name, "shutdown requested");
                    s.request();
                }
            });
        }
        #[cfg(not(unix))]
        {
            let s = shutdown.clone();
            tokio::spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    tracing::info!(signal = "Ctrl-C", "shutdown requested");
                    s.request();
                }
            });
        }
        Ok(shutdown)
    }
}

#[derive(Debug, Clone)]
enum Zone {
    Local,
    Named(chrono_tz::Tz),
}

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
    zone: Zone,
}

const FIELDS_5: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
const FIELDS_6: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];
const FIELDS_7: [&str; 7] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
    "year",
];
const NICKNAMES: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

fn field_names(n: usize) -> Option<&'static [&'static str]> {
    match n {
        5 => Some(&FIELDS_5),
        6 => Some(&FIELDS_6),
        7 => Some(&FIELDS_7),
        _ => None,
    }
}

/// Parses a cron expression with croner; errors name the offending field.
pub fn parse_cron(expr: &str) -> Result<Cron, ScheduleError> {
    let err = |field, message: String| ScheduleError::Cron {
        expr: expr.to_string(),
        field,
        message,
    };
    let trimmed = expr.trim();
    if trimmed.starts_with('@') && !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(trimmed)) {
        return Err(err(
            None,
            format!("unknown nickname (known: {})", NICKNAMES.join(", ")),
        ));
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if !trimmed.starts_with('@') && field_names(fields.len()).is_none() {
        return Err(err(
            None,
            format!(
                "{} fields; expected 5 (minute hour day-of-month month day-of-week), \
                 6 (a seconds field first) or 7 (and a year last)",
                fields.len()
            ),
        ));
    }
    match Cron::from_str(trimmed) {
        Ok(c) => Ok(c),
        Err(e) => {
            // croner's messages do not say which field failed: re-parse each field alone
            // (all others "*") to single it out.
            let names = field_names(fields.len()).unwrap_or(&[]);
            for (i, name) in names.iter().enumerate() {
                let alone: Vec<&str> = (0..fields.len())
                    .map(|j| if j == i { fields[i] } else { "*" })
                    .collect();
                if let Err(fe) = Cron::from_str(&alone.join(" ")) {
                    return Err(err(Some(name), format!("\"{}\": {fe}", fields[i])));
                }
            }
            Err(err(None, e.to_string()))
        }
    }
}

/// Parses an IANA time zone name, suggesting the closest known name on a typo.
pub fn parse_tz(name: &str) -> Result<chrono_tz::Tz, ScheduleError> {
    chrono_tz::Tz::from_str(name).map_err(|_| {
        let suggestion = chrono_tz::TZ_VARIANTS
            .iter()
            .map(|tz| {
                (
                    strsim::jaro_winkler(&name.to_lowercase(), &tz.name().to_lowercase()),
                    tz.name(),
                )
            })
            .filter(|(score, _)| *score > 0.85)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n.to_string());
        ScheduleError::UnknownTz {
            name: name.to_string(),
            suggestion,
        }
    })
}

impl CronSchedule {
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let cron = parse_cron(expr)?;
        let zone = match tz {
            Some(name) => Zone::Named(parse_tz(name)?),
            None => Zone::Local,
        };
        Ok(Self {
            expr: expr.trim().to_string(),
            cron,
            zone,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first tick strictly after `after`, in the schedule's zone; `None` when the
    /// expression never fires again (e.g. a year field in the past).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<FixedOffset>> {
        // Any croner error here means "no such time" (its search limit, invalid dates).
        match &self.zone {
            Zone::Local => self
                .cron
                .find_next_occurrence(&after.with_timezone(&Local), false)
                .ok()
                .map(|t| t.fixed_offset()),
            Zone::Named(tz) => self
                .cron
                .find_next_occurrence(&after.with_timezone(tz), false)
                .ok()
                .map(|t| t.fixed_offset()),
        }
    }
}

/// Delay before retry number `retry` (1-based): `base * 2^(retry-1)`, at most `cap`.
pub fn backoff_delay(base: Duration, retry: u32, cap: Duration) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    base.saturating_mul(factor).min(cap)
}

/// What [`run_schedule_stats`] did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleStats {
    /// Ticks whose run was started.
    pub runs: u32,
    /// Runs that succeeded (possibly after retries).
    pub succeeded: u32,
    /// Runs that still failed after all retries.
    pub failed: u32,
    /// Runs stopped by a shutdown (cancelled, or retries abandoned).
    pub cancelled: u32,
    /// Calls of `run_once` beyond the first of each tick.
    pub retries: u32,
    /// Ticks that arrived while a run (or its retries) was still going.
    pub skipped_ticks: u32,
}

/// Sleeps until the wall clock reaches `t`. Re-checks at least every minute so a changed
/// system clock or a suspended machine does not shift a daily tick by hours.
async fn sleep_until_wall(t: DateTime<FixedOffset>) {
    loop {
        let left = t.with_timezone(&Utc) - Utc::now();
        match left.to_std() {
            Ok(d) if !d.is_zero() => tokio::time::sleep(d.min(Duration::from_secs(60))).await,
            _ => return,
        }
    }
}

/// Like [`sleep_until_wall`], but never resolves for `None`; yields the time slept until.
async fn sleep_until_opt(t: Option<DateTime<FixedOffset>>) -> Option<DateTime<FixedOffset>> {
    match t {
        Some(t) => {
            sleep_until_wall(t).await;
            Some(t)
        }
        None => std::future::pending().await,
    }
}

fn describe_wait(t: DateTime<FixedOffset>) -> String {
    let secs = (t.with_timezone(&Utc) - Utc::now()).num_seconds().max(0);
    let (d, h, m, s) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

enum Outcome {
    Succeeded,
    Failed(anyhow::Error),
    /// Cancelled via the flag, or a shutdown arrived during a retry delay.
    Stopped,
}

/// Runs `run_once` at each tick until a shutdown request; see [`run_schedule_stats`].
pub async fn run_schedule<F, Fut>(
    opts: &ScheduleOptions,
    run_once: F,
    shutdown: Shutdown,
) -> anyhow::Result<()>
where
    F: FnMut(CancelFlag) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    run_schedule_stats(opts, run_once, shutdown)
        .await
        .map(|_| ())
}

/// Runs `run_once` at each tick of `opts.cron` until `shutdown` is requested.
///
/// - The next tick is logged at start and after each run.
/// - A tick that arrives while a run (or its retry delays) is going is skipped and logged.
/// - A failed run is retried up to `opts.retries` times with exponential backoff; a run that
///   still fails is logged and the schedule goes on with the next tick.
/// - On shutdown while waiting: return at once. During a run: per `opts.on_shutdown`, the
///   run's [`CancelFlag`] is set (or the run finishes; a second request cancels it), no
///   retry starts, and we return once `run_once` has returned.
///
/// Errors only for a bad cron expression or time zone, or one that never fires.
pub async fn run_schedule_stats<F, Fut>(
    opts: &ScheduleOptions,
    mut run_once: F,
    shutdown: Shutdown,
) -> anyhow::Result<ScheduleStats>
where
    F: FnMut(CancelFlag) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let sched = CronSchedule::parse(&opts.cron, opts.tz.as_deref())?;
    let zone = opts.tz.as_deref().unwrap_or("local time");
    let mut stats = ScheduleStats::default();
    // Never fire the same tick twice, even if the wall clock wakes us a hair early.
    let mut last_tick: Option<DateTime<FixedOffset>> = None;
    loop {
        let now = Utc::now();
        let from = last_tick.map_or(now, |t| t.with_timezone(&Utc).max(now));
        let Some(tick) = sched.next_after(from) else {
            if stats.runs == 0 {
                return Err(ScheduleError::NoNextTick {
                    expr: sched.expr.clone(),
                    after: from.to_rfc3339(),
                }
                .into());
            }
            tracing::info!(cron = %sched.expr, "no further ticks; scheduler exits");
            return Ok(stats);
        };
        tracing::info!(cron = %sched.expr, tz = zone, next_tick = %tick.to_rfc3339(), "next run at {tick} (in {})", describe_wait(tick));
        tokio::select! {
            biased;
            _ = shutdown.wait_for(1) => {
                tracing::info!("shutdown requested while waiting; scheduler exits");
                return Ok(stats);
            }
            _ = sleep_until_wall(tick) => {}
        }
        last_tick = Some(tick);
        stats.runs += 1;
        tracing::info!(tick = %tick.to_rfc3339(), "run started");

        let cancel = CancelFlag::new();
        // Yields the outcome and how many times `run_once` was called.
        let run = async {
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                let result = run_once(cancel.clone()).await;
                if cancel.is_cancelled() {
                    return (Outcome::Stopped, attempts);
                }
                let Err(e) = result else {
                    return (Outcome::Succeeded, attempts);
                };
                if attempts > opts.retries {
                    return (Outcome::Failed(e), attempts);
                }
                let delay = backoff_delay(opts.retry_delay, attempts, opts.max_retry_delay);
                tracing::warn!(attempt = attempts, retry_in = ?delay, "run failed: {e:#}; retrying in {delay:?}");
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(1) => return (Outcome::Stopped, attempts),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        };
        tokio::pin!(run);
        let mut skip_at = sched.next_after(tick.with_timezone(&Utc));
        let mut seen_requests = 0u32;
        let (outcome, attempts) = loop {
            tokio::select! {
                biased;
                outcome = &mut run => break outcome,
                _ = shutdown.wait_for(seen_requests + 1), if !cancel.is_cancelled() => {
                    seen_requests = shutdown.requests();
                    if opts.on_shutdown == OnShutdown::Finish && seen_requests == 1 {
                        tracing::info!("shutdown requested: letting the current run finish (signal again to cancel it)");
                    } else {
                        tracing::info!("shutdown requested: cancelling the current run");
                        cancel.cancel();
                    }
                }
                Some(t) = sleep_until_opt(skip_at) => {
                    stats.skipped_ticks += 1;
                    tracing::warn!(tick = %t.to_rfc3339(), "tick skipped: the previous run is still going");
                    skip_at = sched.next_after(t.with_timezone(&Utc));
                    last_tick = Some(t);
                }
            }
        };
        stats.retries += attempts.saturating_sub(1);
        // A tick due at the very moment the run ended lost the race in the select above;
        // it was skipped all the same, so say so.
        while let Some(t) = skip_at.filter(|t| t.with_timezone(&Utc) <= Utc::now()) {
            stats.skipped_ticks += 1;
            tracing::warn!(tick = %t.to_rfc3339(), "tick skipped: the previous run is still going");
            skip_at = sched.next_after(t.with_timezone(&Utc));
            last_tick = Some(t);
        }
        match outcome {
            Outcome::Succeeded => {
                stats.succeeded += 1;
                tracing::info!(attempts, "run succeeded");
            }
            Outcome::Failed(e) => {
                stats.failed += 1;
                tracing::error!(attempts, "run failed after {attempts} attempt(s): {e:#}");
            }
            Outcome::Stopped => {
                stats.cancelled += 1;
                tracing::info!(attempts, "run stopped by shutdown");
            }
        }
        if shutdown.requests() > 0 {
            tracing::info!("scheduler exits after shutdown request");
            return Ok(stats);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Printers for the system scheduler.

/// One cron field expanded to its values (for translation to other syntaxes).
fn expand_field(text: &str, min: u32, max: u32, names: &[(&str, u32)]) -> Result<Vec<u32>, String> {
    let value = |s: &str| -> Result<u32, String> {
        let up = s.to_ascii_uppercase();
        if let Some((_, v)) = names.iter().find(|(n, _)| *n == up) {
            return Ok(*v);
        }
        let v: u32 = s.parse().map_err(|_| {
            if up.contains(['L', 'W', '#']) {
                format!("\"{s}\" (L, W and # have no equivalent)")
            } else {
                format!("\"{s}\" is not a number")
            }
        })?;
        if v < min || v > max {
            return Err(format!("{v} is outside {min}-{max}"));
        }
        Ok(v)
    };
    let mut out = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step in \"{part}\""))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" | "?" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(r)?, max),
                None => (value(r)?, value(r)?),
            },
        };
        if lo > hi {
            return Err(format!("range \"{range}\" runs backwards"));
        }
        out.extend((lo..=hi).step_by(step as usize));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Values as systemd writes them: `*` for all, else a comma list with `a..b` runs.
fn systemd_list(values: &[u32], min: u32, max: u32, fmt: impl Fn(u32) -> String) -> String {
    if values.len() as u64 == (max - min) as u64 + 1 {
        return "*".to_string();
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!("{}..{}", fmt(values[i]), fmt(values[j])));
        } else {
            parts.extend(values[i..=j].iter().map(|&v| fmt(v)));
        }
        i = j + 1;
    }
    parts.join(",")
}

const MONTHS: [(&str, u32); 12] = [
    ("JAN", 1),
    ("FEB", 2),
    ("MAR", 3),
    ("APR", 4),
    ("MAY", 5),
    ("JUN", 6),
    ("JUL", 7),
    ("AUG", 8),
    ("SEP", 9),
    ("OCT", 10),
    ("NOV", 11),
    ("DEC", 12),
];
const WEEKDAYS: [(&str, u32); 7] = [
    ("SUN", 0),
    ("MON", 1),
    ("TUE", 2),
    ("WED", 3),
    ("THU", 4),
    ("FRI", 5),
    ("SAT", 6),
];

/// The cron expression as 7 fields (second .. year), nicknames expanded.
fn seven_fields(expr: &str) -> Vec<String> {
    let t = expr.trim().to_ascii_lowercase();
    let base = match t.as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => expr.trim(),
    };
    let mut f: Vec<String> = base.split_whitespace().map(str::to_string).collect();
    if f.len() == 5 {
        f.insert(0, "0".into());
    }
    if f.len() == 6 {
        f.push("*".into());
    }
    f
}

/// `OnCalendar=` values equivalent to the cron expression (several when cron's "day of
/// month OR day of week" rule applies, since systemd ANDs them).
pub fn systemd_on_calendar(expr: &str, tz: Option<&str>) -> Result<Vec<String>, ScheduleError> {
    parse_cron(expr)?;
    if let Some(tz) = tz {
        parse_tz(tz)?;
    }
    let untranslatable = |reason: String| ScheduleError::Untranslatable {
        expr: expr.to_string(),
        target: "systemd OnCalendar",
        reason,
    };
    let f = seven_fields(expr);
    let two = |v: u32| format!("{v:02}");
    let field = |i: usize, min, max, names: &[(&str, u32)]| {
        expand_field(&f[i], min, max, names)
            .map_err(|e| untranslatable(format!("{} field {e}", FIELDS_7[i])))
    };
    let sec = systemd_list(&field(0, 0, 59, &[])?, 0, 59, two);
    let min = systemd_list(&field(1, 0, 59, &[])?, 0, 59, two);
    let hour = systemd_list(&field(2, 0, 23, &[])?, 0, 23, two);
    let dom_all = matches!(f[3].as_str(), "*" | "?");
    let dom = systemd_list(&field(3, 1, 31, &[])?, 1, 31, two);
    let month = systemd_list(&field(4, 1, 12, &MONTHS)?, 1, 12, two);
    let and_days = f[5].starts_with('+');
    let dow_text = f[5].trim_start_matches('+').to_string();
    let dow_all = matches!(dow_text.as_str(), "*" | "?");
    let dow_vals = expand_field(&dow_text, 0, 7, &WEEKDAYS)
        .map_err(|e| untranslatable(format!("day-of-week field {e}")))?;
    // systemd weeks start on Monday; cron's Sunday is 0 or 7.
    let mut mon_first: Vec<u32> = dow_vals.iter().map(|&d| (d + 6) % 7).collect();
    mon_first.sort_unstable();
    mon_first.dedup();
    const SD_DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let dow = systemd_list(&mon_first, 0, 6, |d| SD_DAYS[d as usize].to_string());
    let year = if f[6] == "*" {
        "*".to_string()
    } else {
        let years = field(6, 1970, 2199, &[])?;
        systemd_list(&years, 1970, 2199, |y| y.to_string())
    };
    let zone = tz.map(|z| format!(" {z}")).unwrap_or_default();
    let line = |dow: &str, dom: &str| {
        let prefix = if dow == "*" {
            String::new()
        } else {
            format!("{dow} ")
        };
        format!("{prefix}{year}-{month}-{dom} {hour}:{min}:{sec}{zone}")
    };
    Ok(if dom_all || dow_all || and_days {
        vec![line(if dow_all { "*" } else { &dow }, &dom)]
    } else {
        vec![line("*", &dom), line(&dow, "*")]
    })
}

/// Quotes one ExecStart= argument: `%` and `$` are systemd specifiers/variables.
fn systemd_quote(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    if escaped.contains([' ', '\t', '\'', '"', ';']) || escaped.is_empty() {
        format!("\"{escaped}\"")
    } else {
        escaped
    }
}

fn unit_name(pipeline_file: &Path) -> String {
    let stem = pipeline_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        "pipeline".to_string()
    } else {
        format!("pipeline-{clean}")
    }
}

/// A systemd service + timer pair running `pipeline_bin run pipeline_file` at each tick.
/// Paths should be absolute (systemd requires it for ExecStart); the CLI passes
/// `std::env::current_exe()` and the canonicalised pipeline file.
pub fn print_systemd(
    pipeline_file: &Path,
    cron: &str,
    tz: Option<&str>,
    pipeline_bin: &Path,
) -> Result<String, ScheduleError> {
    let calendars = systemd_on_calendar(cron, tz)?;
    let name = unit_name(pipeline_file);
    let file = pipeline_file.display().to_string();
    let workdir = pipeline_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.display().to_string());
    let mut s = String::new();
    s += &format!("# /etc/systemd/system/{name}.service (or ~/.config/systemd/user/)\n");
    s += "[Unit]\n";
    s += &format!("Description=pipeline run {file}\n");
    s += "Wants=network-online.target\nAfter=network-online.target\n\n";
    s += "[Service]\nType=oneshot\n";
    if let Some(dir) = workdir {
        s += &format!("WorkingDirectory={}\n", systemd_quote(&dir));
    }
    s += &format!(
        "ExecStart={} run {}\n",
        systemd_quote(&pipeline_bin.display().to_string()),
        systemd_quote(&file)
    );
    s += "\n";
    s += &format!(
        "# /etc/systemd/system/{name}.timer; enable with: systemctl enable --now {name}.timer\n"
    );
    s += "[Unit]\n";
    s += &format!(
        "Description=Schedule for {name} (cron \"{}\"{})\n\n",
        cron.trim(),
        tz.map(|z| format!(", {z}")).unwrap_or_default()
    );
    s += "[Timer]\n";
    for c in &calendars {
        s += &format!("OnCalendar={c}\n");
    }
    // systemd's default accuracy is one minute; cron users expect the stated time.
    s += "AccuracySec=1s\n";
    // A tick missed while the machine was off runs at the next boot, like anacron.
    s += "Persistent=true\n\n";
    s += "[Install]\nWantedBy=timers.target\n";
    Ok(s)
}

/// Single-quotes for /bin/sh; `%` is a newline to cron, so it is escaped too.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''")).replace('%', "\\%")
}

/// A crontab entry running `pipeline_bin run pipeline_file` at each tick. crontab has no
/// seconds or year field, so expressions using them are refused; a time zone becomes a
/// `CRON_TZ=` line (cronie and systemd-cron honour it, Debian's cron does not).
pub fn print_cron(
    pipeline_file: &Path,
    cron: &str,
    tz: Option<&str>,
    pipeline_bin: &Path,
) -> Result<String, ScheduleError> {
    parse_cron(cron)?;
    if let Some(tz) = tz {
        parse_tz(tz)?;
    }
    let f = seven_fields(cron);
    let untranslatable = |reason: &str| ScheduleError::Untranslatable {
        expr: cron.to_string(),
        target: "crontab",
        reason: reason.to_string(),
    };
    if f[0] != "0" {
        return Err(untranslatable(
            "crontab has no seconds field (use --print-systemd, or pipeline schedule)",
        ));
    }
    if f[6] != "*" {
        return Err(untranslatable("crontab has no year field"));
    }
    let mut s = format!(
        "# pipeline: run {} at cron \"{}\"\n",
        pipeline_file.display(),
        cron.trim()
    );
    if let Some(tz) = tz {
        s += &format!("CRON_TZ={tz}\n");
    }
    let cd = pipeline_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| format!("cd {} && ", sh_quote(&p.display().to_string())))
        .unwrap_or_default();
    s += &format!(
        "{} {cd}{} run {}\n",
        f[1..6].join(" "),
        sh_quote(&pipeline_bin.display().to_string()),
        sh_quote(&pipeline_file.display().to_string())
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = parse_cron("0 25 * * *").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid cron expression \"0 25 * * *\": hour field: \"25\""),
            "{e}"
        );
        let e = parse_cron("0 3 * * FOO").unwrap_err().to_string();
        assert!(e.contains("day-of-week field"), "{e}");
        let e = parse_cron("61 * * * * *").unwrap_err().to_string();
        assert!(e.contains("second field: \"61\""), "{e}");
        let e = parse_cron("* * * 13 *").unwrap_err().to_string();
        assert!(e.contains("month field"), "{e}");
        let e = parse_cron("0 3 * *").unwrap_err().to_string();
        assert!(e.contains("4 fields; expected 5"), "{e}");
        let e = parse_cron("@nightly").unwrap_err().to_string();
        assert!(e.contains("unknown nickname"), "{e}");
        assert!(parse_cron("").is_err());
        assert!(parse_cron("*/5 * * * * *").is_ok());
        assert!(parse_cron("@daily").is_ok());
    }

    #[test]
    fn tz_errors_suggest_a_name() {
        let e = parse_tz("Asia/Tokio").unwrap_err().to_string();
        assert!(e.contains("did you mean Asia/Tokyo?"), "{e}");
        assert!(parse_tz("Europe/Paris").is_ok());
    }

    #[test]
    fn next_tick_in_a_time_zone() {
        let s = CronSchedule::parse("0 3 * * *", Some("Asia/Tokyo")).unwrap();
        // 00:00Z is 09:00 in Tokyo, so the next 03:00 JST is the next day, 18:00Z today.
        let next = s.next_after(utc("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-01-02T03:00:00+09:00");
        assert_eq!(next.with_timezone(&Utc), utc("2026-01-01T18:00:00Z"));
        // Across a DST change: Paris moves to UTC+2 on 2026-03-29.
        let s = CronSchedule::parse("0 3 * * *", Some("Europe/Paris")).unwrap();
        let next = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-03-29T03:00:00+02:00");
        // Strictly after: a tick exactly at `after` is not repeated.
        let s = CronSchedule::parse("*/10 * * * * *", Some("UTC")).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:10Z"))
                .unwrap()
                .with_timezone(&Utc),
            utc("2026-01-01T00:00:20Z")
        );
        // A year in the past never fires again.
        let s = CronSchedule::parse("0 0 0 1 1 * 2020", Some("UTC")).unwrap();
        assert!(s.next_after(utc("2026-01-01T00:00:00Z")).is_none());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Duration::from_secs(10);
        let cap = Duration::from_secs(60);
        let got: Vec<u64> = (1..=5)
            .map(|r| backoff_delay(b, r, cap).as_secs())
            .collect();
        assert_eq!(got, vec![10, 20, 40, 60, 60]);
        // Huge retry counts saturate instead of overflowing.
        assert_eq!(backoff_delay(b, 200, cap), cap);
    }

    fn fast_opts(cron: &str) -> ScheduleOptions {
        ScheduleOptions {
            cron: cron.into(),
            tz: Some("UTC".into()),
            retries: 0,
            retry_delay: Duration::from_millis(50),
            max_retry_delay: Duration::from_secs(1),
            on_shutdown: OnShutdown::Cancel,
        }
    }

    /// Waits until the cancel flag is set or `limit` passes; returns whether it was cancelled.
    async fn sleep_or_cancel(cancel: &CancelFlag, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if cancel.is_cancelled() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn overlapping_tick_is_skipped_and_two_runs_happen() {
        let shutdown = Shutdown::new();
        let calls = AtomicU32::new(0);
        let stats = run_schedule_stats(
            &fast_opts("* * * * * *"),
            |_cancel| {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let shutdown = shutdown.clone();
                async move {
                    if n == 1 {
                        // Slower than one tick: the next tick must be skipped, not queued.
                        tokio::time::sleep(Duration::from_millis(1300)).await;
                    } else {
                        shutdown.request();
                    }
                    Ok(())
                }
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!((stats.runs, stats.succeeded), (2, 2));
        assert!(stats.skipped_ticks >= 1, "{stats:?}");
    }

    #[tokio::test]
    async fn failed_run_is_retried_with_backoff() {
        let shutdown = Shutdown::new();
        let calls = AtomicU32::new(0);
        let mut opts = fast_opts("* * * * * *");
        opts.retries = 3;
        let started = Instant::now();
        let mut first_call = None;
        let stats = run_schedule_stats(
            &opts,
            |_cancel| {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                first_call.get_or_insert_with(Instant::now);
                let shutdown = shutdown.clone();
                async move {
                    if n < 3 {
                        anyhow::bail!("flaky upstream (attempt {n})");
                    }
                    shutdown.request();
                    Ok(())
                }
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            (stats.runs, stats.succeeded, stats.failed, stats.retries),
            (1, 1, 0, 2)
        );
        // Two delays: 50 ms then 100 ms.
        assert!(first_call.unwrap().elapsed() >= Duration::from_millis(150));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn exhausted_retries_fail_the_tick_and_the_schedule_goes_on() {
        let shutdown = Shutdown::new();
        let calls = AtomicU32::new(0);
        let mut opts = fast_opts("* * * * * *");
        opts.retries = 1;
        let stats = run_schedule_stats(
            &opts,
            |_cancel| {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let shutdown = shutdown.clone();
                async move {
                    // Ticks 1 (calls 1, 2) fail; tick 2 (call 3) succeeds and stops the loop.
                    if n == 3 {
                        shutdown.request();
                        return Ok(());
                    }
                    anyhow::bail!("broken")
                }
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            (stats.runs, stats.failed, stats.succeeded, stats.retries),
            (2, 1, 1, 1)
        );
    }

    #[tokio::test]
    async fn shutdown_cancels_the_current_run_and_does_not_retry() {
        let shutdown = Shutdown::new();
        let calls = AtomicU32::new(0);
        let mut opts = fast_opts("* * * * * *");
        opts.retries = 5;
        let saw_cancel = AtomicU32::new(0);
        let s2 = shutdown.clone();
        tokio::spawn(async move {
            // Lands during the first run (which starts within 1 s and lasts up to 5 s).
            tokio::time::sleep(Duration::from_millis(1500)).await;
            s2.request();
        });
        let started = Instant::now();
        let stats = run_schedule_stats(
            &opts,
            |cancel| {
                calls.fetch_add(1, Ordering::SeqCst);
                let saw_cancel = &saw_cancel;
                async move {
                    if sleep_or_cancel(&cancel, Duration::from_secs(5)).await {
                        saw_cancel.fetch_add(1, Ordering::SeqCst);
                        anyhow::bail!("cancelled");
                    }
                    Ok(())
                }
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(saw_cancel.load(Ordering::SeqCst), 1);
        assert_eq!((stats.runs, stats.cancelled, stats.retries), (1, 1, 0));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn finish_mode_lets_the_run_complete_then_exits() {
        let shutdown = Shutdown::new();
        let mut opts = fast_opts("* * * * * *");
        opts.on_shutdown = OnShutdown::Finish;
        let stats = run_schedule_stats(
            &opts,
            |cancel| {
                let shutdown = shutdown.clone();
                async move {
                    shutdown.request();
                    // Give the scheduler time to react; it must not cancel us.
                    let cancelled = sleep_or_cancel(&cancel, Duration::from_millis(300)).await;
                    anyhow::ensure!(!cancelled, "cancelled although on_shutdown is Finish");
                    Ok(())
                }
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert_eq!((stats.runs, stats.succeeded, stats.cancelled), (1, 1, 0));
    }

    #[tokio::test]
    async fn shutdown_while_waiting_returns_promptly() {
        let shutdown = Shutdown::new();
        let s2 = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s2.request();
        });
        let started = Instant::now();
        // Once a year: only the shutdown can end this wait.
        let stats = run_schedule_stats(&fast_opts("0 0 1 1 *"), |_c| async { Ok(()) }, shutdown)
            .await
            .unwrap();
        assert_eq!(stats, ScheduleStats::default());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn bad_cron_or_tz_is_an_error_before_any_run() {
        let err = run_schedule(
            &fast_opts("0 99 * * *"),
            |_c| async { Ok(()) },
            Shutdown::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("hour field"), "{err}");
        let mut opts = fast_opts("0 3 * * *");
        opts.tz = Some("Mars/Olympus".into());
        let err = run_schedule(&opts, |_c| async { Ok(()) }, Shutdown::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown time zone \"Mars/Olympus\""),
            "{err}"
        );
    }

    #[test]
    fn on_calendar_translation() {
        let t = |e: &str, tz: Option<&str>| systemd_on_calendar(e, tz).unwrap();
        assert_eq!(
            t("0 3 * * *", Some("Asia/Tokyo")),
            vec!["*-*-* 03:00:00 Asia/Tokyo"]
        );
        assert_eq!(
            t("*/15 9-17 * * MON-FRI", None),
            vec!["Mon..Fri *-*-* 09..17:00,15,30,45:00"]
        );
        assert_eq!(t("*/20 * * * * *", None), vec!["*-*-* *:*:00,20,40"]);
        assert_eq!(
            t("0 0 1 */3 0,6", None),
            vec![
                "*-01,04,07,10-01 00:00:00",
                "Sat,Sun *-01,04,07,10-* 00:00:00"
            ]
        );
        assert_eq!(t("0 12 * * 7", None), vec!["Sun *-*-* 12:00:00"]);
        assert_eq!(t("@daily", None), vec!["*-*-* 00:00:00"]);
        let e = systemd_on_calendar("0 0 L * *", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot be written for systemd OnCalendar: day-of-month field"),
            "{e}"
        );
    }

    #[test]
    fn systemd_units_run_pipeline_run() {
        let out = print_systemd(
            Path::new("/srv/study/nightly.yaml"),
            "0 3 * * *",
            Some("Asia/Tokyo"),
            Path::new("/usr/local/bin/pipeline"),
        )
        .unwrap();
        let expected = "\
# /etc/systemd/system/pipeline-nightly.service (or ~/.config/systemd/user/)
[Unit]
Description=pipeline run /srv/study/nightly.yaml
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
WorkingDirectory=/srv/study
ExecStart=/usr/local/bin/pipeline run /srv/study/nightly.yaml

# /etc/systemd/system/pipeline-nightly.timer; enable with: systemctl enable --now pipeline-nightly.timer
[Unit]
Description=Schedule for pipeline-nightly (cron \"0 3 * * *\", Asia/Tokyo)

[Timer]
OnCalendar=*-*-* 03:00:00 Asia/Tokyo
AccuracySec=1s
Persistent=true

[Install]
WantedBy=timers.target
";
        assert_eq!(out, expected);
        let out = print_systemd(
            Path::new("/my data/a%b.yaml"),
            "0 3 * * *",
            None,
            Path::new("/bin/pipeline"),
        )
        .unwrap();
        assert!(
            out.contains("ExecStart=/bin/pipeline run \"/my data/a%%b.yaml\"\n"),
            "{out}"
        );
        assert!(print_systemd(
            Path::new("/a.yaml"),
            "0 3 * *",
            None,
            Path::new("/bin/pipeline")
        )
        .is_err());
    }

    #[test]
    fn crontab_line() {
        let out = print_cron(
            Path::new("/srv/study/nightly.yaml"),
            "0 3 * * *",
            Some("Asia/Tokyo"),
            Path::new("/usr/local/bin/pipeline"),
        )
        .unwrap();
        assert_eq!(
            out,
            "# pipeline: run /srv/study/nightly.yaml at cron \"0 3 * * *\"\nCRON_TZ=Asia/Tokyo\n\
             0 3 * * * cd '/srv/study' && '/usr/local/bin/pipeline' run '/srv/study/nightly.yaml'\n"
        );
        let out = print_cron(
            Path::new("/it's/50%.yaml"),
            "@daily",
            None,
            Path::new("/bin/pipeline"),
        )
        .unwrap();
        assert!(
            out.ends_with(
                "0 0 * * * cd '/it'\\''s' && '/bin/pipeline' run '/it'\\''s/50\\%.yaml'\n"
            ),
            "{out}"
        );
        let e = print_cron(
            Path::new("/a.yaml"),
            "*/10 * * * * *",
            None,
            Path::new("/bin/pipeline"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("crontab has no seconds field"), "{e}");
    }
}
