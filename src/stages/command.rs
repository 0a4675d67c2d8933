//! Stage kind `command`: a shell command as a stage, so users can extend pipelines
//! and the engine can be exercised without ML.
//!
//! Contract (scripts outside the repo rely on it):
//! - `params.cmd` runs under `sh -c` in a fresh, empty working directory;
//! - `$OUT` is the directory whose files become the stage's output;
//! - each input `x` is at `$IN_x` (a directory, or the file itself for a file input);
//! - every other param `p` is in the environment as `$P_p` (strings as they are, other JSON
//!   values as JSON text) and is part of the cache key like any param;
//! - a non-zero exit fails the stage; its stderr tail is in the error.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command as Proc, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{InputDecl, Stage, StageContext, StageError, StageOutcome};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CommandParams {
    /// The shell command, run with `sh -c`.
    pub cmd: String,
    /// Any other param is passed as `$P_<name>`.
    #[serde(flatten)]
    pub env: BTreeMap<String, Value>,
}

pub struct Command;

fn env_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Stage for Command {
    type Params = CommandParams;
    const KIND: &'static str = "command";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Run `sh -c $cmd` with $OUT (output dir), $IN_<input> and $P_<param> in the environment";
    const INPUTS: &'static [InputDecl] = &[];
    const OPEN_INPUTS: bool = true;
    const OPEN_PARAMS: bool = true;

    fn check_params(p: &CommandParams) -> Result<(), StageError> {
        for name in p.env.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(StageError::bad_param(
                    name,
                    format!("param name {name:?}: command params become $P_<name>, so use letters, digits and '_' only"),
                ));
            }
        }
        // Linux refuses one environment string over 128 KiB ("Argument list too long", naming
        // no param: found by a hostile pass); `cmd` is an argument of sh, under the same limit.
        const MAX: usize = 128 * 1024 - 64;
        if p.cmd.len() > MAX {
            return Err(StageError::bad_param("cmd", format!("{} bytes: a command line holds at most {MAX}; put a long script in a file", p.cmd.len())));
        }
        for (name, v) in &p.env {
            let n = env_value(v).len();
            if n > MAX {
                return Err(StageError::bad_param(name, format!("{n} bytes: $P_{name} can hold at most {MAX}; pass a long value in a file")));
            }
        }
        Ok(())
    }

    fn run(p: &CommandParams, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        // The working directory lives in the stage's scratch directory (beside $OUT), so a
        // killed run leaves nothing behind that the next run does not clear.
        let scratch = ctx.out_dir.parent().map(|p| p.to_path_buf()).unwrap_or_else(std::env::temp_dir);
        let work = tempfile::Builder::new()
            .prefix("cmd-")
            .tempdir_in(&scratch)
            .map_err(|e| StageError::io(&scratch, e))?;
        // Under the supervisor when there is one: it reaps and kills what escapes both the
        // process group and the token (`setsid` + `env -i`).
        let mut proc = match crate::supervise::binary() {
            Some(exe) => {
                let mut p = Proc::new(exe);
                p.arg(crate::supervise::ARG).arg("--").arg("sh");
                p.env(crate::supervise::PARENT_VAR, std::process::id().to_string());
                p
            }
            None => Proc::new("sh"),
        };
        proc.arg("-c")
            .arg(&p.cmd)
            .current_dir(work.path())
            .env("OUT", ctx.out_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, path) in ctx.inputs {
            proc.env(format!("IN_{name}"), path);
        }
        for (name, v) in &p.env {
            proc.env(format!("P_{name}"), env_value(v));
        }
        // Own process group, so cancelling kills the whole shell pipeline, not only `sh`.
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            proc.process_group(0);
        }
        let token = new_token();
        proc.env(TOKEN_VAR, &token);
        let mut child = proc.spawn().map_err(|e| StageError::Failed(format!("cannot start sh: {e}")))?;
        let group = Group::register(child.id(), token);
        let out_reader = child.stdout.take().map(|s| {
            let progress = ctx.progress.clone();
            std::thread::spawn(move || {
                let buf = read_tail(s, TAIL_BYTES, Some(&progress));
                String::from_utf8_lossy(&buf).to_string()
            })
        });
        let err_reader = child.stderr.take().map(|s| std::thread::spawn(move || read_tail(s, TAIL_BYTES, None)));
        let status = loop {
            if ctx.cancel.is_cancelled() {
                // TERM to the whole group, KILL after a grace period: a child that ignores
                // TERM must not outlive the run.
                group.terminate(TERM_GRACE);
                let _ = child.wait();
                return Err(StageError::Cancelled);
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(StageError::Failed(format!("waiting for sh: {e}"))),
            }
        };
        // `sh` is done; whatever it left running in the background (`cmd &`) would keep
        // writing into $OUT after the commit. Kill the group and wait until it is gone.
        if !group.kill_and_wait(Duration::from_secs(10)) {
            return Err(StageError::Failed(
                "processes the command started in the background are still running 10 s after it exited and SIGKILL: nothing was committed".into(),
            ));
        }
        drop(group);
        let stdout = out_reader.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = err_reader.and_then(|h| h.join().ok()).unwrap_or_default();
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            // Redact before cutting: a cut through a secret would leave most of it.
            let tail = crate::text::cap_tail(&crate::text::strip_controls(&crate::text::redact(&tail.join("\n"))), 2048);
            return Err(StageError::Failed(format!(
                "command {}{}{}",
                describe_exit(&status),
                if tail.is_empty() { "" } else { ": " },
                tail
            )));
        }
        let mut outcome = StageOutcome::default();
        if let Some(last) = stdout.lines().rev().find(|l| !l.trim().is_empty()) {
            outcome.summary.push(last.to_string());
        }
        Ok(outcome)
    }
}

/// Bytes of stdout/stderr kept (the end of each): error messages need the tail, and a
/// command that prints 20 MB must not put 20 MB in every run record.
const TAIL_BYTES: usize = 64 << 10;

/// How long a cancelled command gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Read a pipe to its end, keeping only the last `max` bytes.
fn read_tail(mut r: impl Read, max: usize, progress: Option<&super::Progress>) -> Vec<u8> {
    let mut keep: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                keep.extend(&buf[..n]);
                if keep.len() > max {
                    let extra = keep.len() - max;
                    keep.drain(..extra);
                }
                if let Some(p) = progress {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if let Some(l) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                        p.set_message(crate::text::cap(&crate::text::strip_controls(l), 200));
                    }
                }
            }
        }
    }
    keep.into()
}

/// "exited with 3", "was killed by signal 9 (SIGKILL)".
fn describe_exit(status: &std::process::ExitStatus) -> String {
    if let Some(c) = status.code() {
        return format!("exited with {c}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                1 => "SIGHUP",
                2 => "SIGINT",
                3 => "SIGQUIT",
                4 => "SIGILL",
                6 => "SIGABRT",
                7 => "SIGBUS",
                8 => "SIGFPE",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                13 => "SIGPIPE",
                14 => "SIGALRM",
                15 => "SIGTERM",
                24 => "SIGXCPU",
                25 => "SIGXFSZ",
                _ => "",
            };
            return if name.is_empty() { format!("was killed by signal {sig}") } else { format!("was killed by signal {sig} ({name})") };
        }
    }
    "ended without an exit status".into()
}

/// Running commands, so that a process that exits after abandoning stages (see
/// `engine::CANCEL_GRACE`) can still kill them: [`kill_all_running`].
static RUNNING: std::sync::Mutex<Vec<(i32, String)>> = std::sync::Mutex::new(Vec::new());

/// The environment variable that marks every process a command starts: descendants that
/// leave the process group (`timeout`, `setsid`) keep it, so they can be found and killed.
const TOKEN_VAR: &str = "PIPELINE_STAGE_TOKEN";

fn new_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{}-{t}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// SIGKILL every command still running (called before the process exits).
pub fn kill_all_running() {
    let groups: Vec<(i32, String)> = RUNNING.lock().map(|g| g.clone()).unwrap_or_default();
    for (g, token) in groups {
        let group = Group { pgid: g, token };
        group.signal(libc::SIGKILL);
        std::mem::forget(group);
    }
}

/// One command's processes: its process group (id = `sh`'s pid) and every process that
/// carries its token.
struct Group {
    pgid: i32,
    token: String,
}

impl Group {
    fn register(pid: u32, token: String) -> Group {
        let g = pid as i32;
        if let Ok(mut r) = RUNNING.lock() {
            r.push((g, token.clone()));
        }
        Group { pgid: g, token }
    }

    fn signal(&self, sig: i32) {
        #[cfg(unix)]
        unsafe {
            libc::kill(-self.pgid, sig);
            for pid in live_members(self.pgid, &self.token) {
                libc::kill(pid, sig);
            }
        }
        let _ = sig;
    }

    /// Whether a live (not zombie) process of the command is left.
    fn alive(&self) -> bool {
        !live_members(self.pgid, &self.token).is_empty()
    }

    fn wait_gone(&self, within: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while self.alive() {
            if t0.elapsed() > within {
                return false;
            }
            self.signal(libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn kill_and_wait(&self, within: Duration) -> bool {
        self.signal(libc::SIGKILL);
        self.wait_gone(within)
    }

    fn terminate(&self, grace: Duration) {
        self.signal(libc::SIGTERM);
        let t0 = std::time::Instant::now();
        while self.alive() && t0.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill_and_wait(Duration::from_secs(5));
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(mut r) = RUNNING.lock() {
            r.retain(|g| g.0 != self.pgid);
        }
    }
}

/// Linux: the live (not zombie) processes in process group `pgid` or carrying `token` in
/// their environment, found by scanning /proc. (A killed grandchild stays a zombie until its
/// new parent reaps it, and `kill(-pgid, 0)` counts zombies.) Elsewhere: the group only.
fn live_members(pgid: i32, token: &str) -> Vec<i32> {
    #[cfg(target_os = "linux")]
    {
        let me = std::process::id() as i32;
        let needle = format!("{TOKEN_VAR}={token}");
        let marked = |pid: i32| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        };
        crate::supervise::live_processes()
            .into_iter()
            .filter(|p| p.pid != me && (p.pgrp == pgid || marked(p.pid)))
            .map(|p| p.pid)
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = token;
        if unsafe { libc::kill(-pgid, 0) } == 0 {
            vec![-pgid]
        } else {
            Vec::new()
        }
    }
}
