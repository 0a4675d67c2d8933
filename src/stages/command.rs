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
                    "command params become $P_<name>: use letters, digits and '_' only",
                ));
            }
        }
        Ok(())
    }

    fn run(p: &CommandParams, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let work = tempfile::Builder::new()
            .prefix("pipeline-cmd-")
            .tempdir()
            .map_err(|e| StageError::io(std::env::temp_dir(), e))?;
        let mut proc = Proc::new("sh");
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
        let mut child = proc.spawn().map_err(|e| StageError::Failed(format!("cannot start sh: {e}")))?;
        let out_reader = child.stdout.take().map(|mut s| {
            let progress = ctx.progress.clone();
            std::thread::spawn(move || {
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                for line in buf.lines().rev().take(1) {
                    progress.set_message(line.to_string());
                }
                buf
            })
        });
        let err_reader = child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                buf
            })
        });
        let status = loop {
            if ctx.cancel.is_cancelled() {
                #[cfg(unix)]
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGTERM);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(StageError::Cancelled);
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(StageError::Failed(format!("waiting for sh: {e}"))),
            }
        };
        let stdout = out_reader.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = err_reader.and_then(|h| h.join().ok()).unwrap_or_default();
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let code = status.code().map(|c| c.to_string()).unwrap_or_else(|| "a signal".into());
            return Err(StageError::Failed(format!(
                "command exited with {code}{}{}",
                if tail.is_empty() { "" } else { ": " },
                tail.join("\n")
            )));
        }
        let mut outcome = StageOutcome::default();
        if let Some(last) = stdout.lines().rev().find(|l| !l.trim().is_empty()) {
            outcome.summary.push(last.to_string());
        }
        Ok(outcome)
    }
}
