//! The scheduler's loop: one run per tick, retries with backoff, skipped ticks, shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use tokio::sync::watch;

use super::cron::CronSchedule;
use super::ScheduleError;
use crate::stages::CancelFlag;

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

enum Outcome<E> {
    Succeeded,
    Failed(E),
    /// Cancelled via the flag, or a shutdown arrived during a retry delay.
    Stopped,
}

/// Runs `run_once` at each tick until a shutdown request; see [`run_schedule_stats`].
/// A failed run is logged with `{e:#}` (an `anyhow::Error` shows its chain) and retried; it
/// never ends the schedule, so `E` needs only `Display`.
pub async fn run_schedule<F, Fut, E>(
    opts: &ScheduleOptions,
    run_once: F,
    shutdown: Shutdown,
) -> Result<(), ScheduleError>
where
    F: FnMut(CancelFlag) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
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
pub async fn run_schedule_stats<F, Fut, E>(
    opts: &ScheduleOptions,
    mut run_once: F,
    shutdown: Shutdown,
) -> Result<ScheduleStats, ScheduleError>
where
    F: FnMut(CancelFlag) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
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
                    expr: sched.expr().to_string(),
                    after: from.to_rfc3339(),
                });
            }
            tracing::info!(cron = %sched.expr(), "no further ticks; scheduler exits");
            return Ok(stats);
        };
        tracing::info!(cron = %sched.expr(), tz = zone, next_tick = %tick.to_rfc3339(), "next run at {tick} (in {})", describe_wait(tick));
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


#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

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
                    Ok::<(), anyhow::Error>(())
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
        let stats = run_schedule_stats(&fast_opts("0 0 1 1 *"), |_c| async { Ok::<(), anyhow::Error>(()) }, shutdown)
            .await
            .unwrap();
        assert_eq!(stats, ScheduleStats::default());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn bad_cron_or_tz_is_an_error_before_any_run() {
        let err = run_schedule(
            &fast_opts("0 99 * * *"),
            |_c| async { Ok::<(), anyhow::Error>(()) },
            Shutdown::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("hour field"), "{err}");
        let mut opts = fast_opts("0 3 * * *");
        opts.tz = Some("Mars/Olympus".into());
        let err = run_schedule(&opts, |_c| async { Ok::<(), anyhow::Error>(()) }, Shutdown::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown time zone \"Mars/Olympus\""),
            "{err}"
        );
    }
}
