//! `"executor": {...}` in a pipeline file: which executor a stage runs on, with its settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `"executor": {...}` of a stage, or of the pipeline (the default for every stage). A
/// stage's fields override the pipeline's one by one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// `local` (default) or `slurm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `sbatch --partition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `sbatch --time`, Slurm's format (`2:00:00`, `30`, `1-00:00:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `sbatch --mem` (`16G`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// `sbatch --cpus-per-task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `sbatch --gpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// More `sbatch` arguments, passed as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
    /// Work directory on a file system the nodes share (job files, status files, logs);
    /// default `<cache>/slurm`. Relative paths resolve against the pipeline file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// Resubmissions after NODE_FAIL, PREEMPTED or BOOT_FAIL (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Give up on a job still pending after this long (Slurm's time format, as `time`):
    /// `scancel` it and fail the stage with Slurm's reason. Default: wait as long as Slurm
    /// keeps it queued (a job that can never start, say on a partition that is down, is
    /// waited on with its reason shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<String>,
    /// Keep the work directory (job file, script, status, Slurm log) of a job that
    /// succeeded. Default false: it is removed once its result is read, as Snakemake's Slurm
    /// executor removes successful jobs' logs; a failed job's is kept (its error names the
    /// log) until `cache gc` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_logs: Option<bool>,
}

pub const KINDS: &[&str] = &["local", "slurm"];

impl ExecutorConfig {
    /// The stage's settings over the pipeline's; `Err` = (JSON path below `executor`, message).
    pub fn resolve(top: Option<&Value>, stage: Option<&Value>) -> Result<ExecutorConfig, (String, String)> {
        let mut merged = serde_json::Map::new();
        for v in [top, stage].into_iter().flatten() {
            match v {
                Value::Object(m) => merged.extend(m.clone()),
                Value::Null => {}
                _ => return Err((String::new(), "an executor is an object: {\"kind\": \"slurm\", ...}".into())),
            }
        }
        // `--set a.executor.time=30` gives a number, as the README writes the time `30`: taken
        // as its text (found by a hostile pass: "invalid type: integer, expected a string",
        // naming no field)
        for field in ["time", "max_pending", "mem", "partition", "account", "qos"] {
            if let Some(v) = merged.get_mut(field) {
                if let Value::Number(n) = v {
                    if n.is_u64() {
                        *v = Value::String(n.to_string());
                    } else {
                        return Err((field.into(), format!("{n}: a whole number or text")));
                    }
                }
            }
        }
        // a wrong type is named by field (serde names only the type)
        if let Some(v) = merged.get("keep_logs").filter(|v| !v.is_boolean() && !v.is_null()) {
            return Err(("keep_logs".into(), format!("{v}: true or false")));
        }
        for field in ["cpus", "gpus", "retries"] {
            if let Some(v) = merged.get(field).filter(|v| !v.is_u64() && !v.is_null()) {
                return Err((field.into(), format!("{v}: a whole number")));
            }
        }
        let cfg: ExecutorConfig = serde_json::from_value(Value::Object(merged)).map_err(|e| (String::new(), e.to_string()))?;
        if let Some(k) = &cfg.kind {
            if !KINDS.contains(&k.as_str()) {
                return Err(("kind".into(), format!("unknown executor `{k}` (known: {})", KINDS.join(", "))));
            }
        }
        if let Some(t) = &cfg.time {
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '-') {
                return Err(("time".into(), format!("`{t}` is not a Slurm time limit (`2:00:00`, `30`, `1-00:00:00`)")));
            }
        }
        if let Some(t) = &cfg.max_pending {
            match slurm_duration(t) {
                None => return Err(("max_pending".into(), format!("`{t}` is not a Slurm time (`30` minutes, `10:00`, `2:00:00`, `1-00:00:00`)"))),
                // Slurm reads a time of 0 as "no limit": taken at its word here, it cancelled
                // every job at the first poll (found by a hostile pass)
                Some(d) if d.is_zero() => return Err(("max_pending".into(), format!("`{t}` is zero, which Slurm reads as no limit: leave max_pending out to wait as long as Slurm queues the job"))),
                Some(_) => {}
            }
        }
        // Checked here, named by field, rather than by sbatch at each stage's submission.
        if let Some(m) = &cfg.mem {
            // Slurm's form: digits, an optional K/M/G/T, and an optional B after it (`16GB`)
            let unit = m.strip_suffix(['B', 'b']).filter(|u| u.ends_with(|c: char| "KMGTkmgt".contains(c))).unwrap_or(m);
            let digits = unit.trim_end_matches(|c: char| "KMGTkmgt".contains(c));
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || unit.len() - digits.len() > 1 {
                return Err(("mem".into(), format!("`{m}` is not a Slurm memory size (a whole number, optionally with K, M, G or T: `16G`)")));
            }
        }
        for (field, v) in [("partition", &cfg.partition), ("account", &cfg.account), ("qos", &cfg.qos)] {
            if let Some(v) = v {
                if v.trim().is_empty() || v.chars().any(|c| c.is_control() || c.is_whitespace() || c == ',' && field != "partition") {
                    return Err((field.into(), format!("{v:?}: a Slurm name (not empty, no spaces or control characters)")));
                }
            }
        }
        if cfg.cpus == Some(0) {
            return Err(("cpus".into(), "0: at least 1".into()));
        }
        // Flags that would undo what the executor relies on: one job id whose end means the
        // stage's end (`--array` made `run` commit the first task's output while the others
        // ran, found by a hostile pass), its log and status files, no requeue, its script.
        const LONG: &[&str] = &["--array", "--requeue", "--output", "--error", "--chdir", "--job-name", "--wrap", "--parsable", "--wait", "--dependency", "--hold"];
        const SHORT: &[char] = &['a', 'o', 'e', 'D', 'J', 'W', 'd', 'H'];
        let mut prev_takes_value = false;
        for a in &cfg.extra_args {
            if a.trim().is_empty() || a.chars().any(char::is_control) {
                return Err(("extra_args".into(), format!("{a:?}: an empty argument or one with control characters")));
            }
            // the value of the option before it (`--comment -dx`) is not an option
            let is_value = std::mem::replace(&mut prev_takes_value, a.starts_with('-') && !a.contains('='));
            if is_value && !a.starts_with("--") && a.chars().count() > 2 {
                continue;
            }
            let flag = a.split('=').next().unwrap_or("");
            // sbatch takes an unambiguous prefix of a long option (`--arr` for `--array`)
            let long = flag.len() > 2 && flag.starts_with("--") && LONG.iter().any(|l| l.starts_with(flag));
            let mut chars = flag.chars();
            let short = chars.next() == Some('-') && chars.next().is_some_and(|c| SHORT.contains(&c)) && !flag.starts_with("--");
            if long || short {
                return Err(("extra_args".into(), format!("`{a}`: the executor sets this itself (one job per stage, its own log, status file and script, no requeue)")));
            }
        }
        if let Some(w) = &cfg.workdir {
            // "" resolved to the pipeline's own directory; a backslash turns off Slurm's
            // filename patterns, so the job's log would not be found under its id
            let text = w.to_string_lossy();
            if text.is_empty() || text.contains('\\') || text.chars().any(char::is_control) {
                return Err(("workdir".into(), format!("{text:?}: a directory path, without backslashes or control characters")));
            }
        }
        Ok(cfg)
    }

    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("local")
    }
}

/// A duration in Slurm's time format (`sbatch --time`): `minutes`, `minutes:seconds`,
/// `hours:minutes:seconds`, `days-hours`, `days-hours:minutes`, `days-hours:minutes:seconds`.
/// `None` for anything else, or a value past a year (a typo, not a wait).
pub fn slurm_duration(t: &str) -> Option<std::time::Duration> {
    let num = |s: &str| -> Option<u64> { (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten() };
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, t),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Option<_>>()?;
    let secs = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return None,
    };
    (secs <= 366 * 86400).then(|| std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_durations_in_every_form() {
        let d = |t: &str| slurm_duration(t).map(|d| d.as_secs());
        assert_eq!(d("30"), Some(1800));
        assert_eq!(d("0:05"), Some(5));
        assert_eq!(d("10:00"), Some(600));
        assert_eq!(d("2:00:00"), Some(7200));
        assert_eq!(d("1-2"), Some(93600));
        assert_eq!(d("1-00:30"), Some(88200));
        assert_eq!(d("1-00:00:01"), Some(86401));
        for bad in ["", "-", "1-", ":", "1::2", "a", "1:2:3:4", "1-2-3", "99999999999", "400-00:00:00", " 5", "+5"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
        let e = ExecutorConfig::resolve(Some(&serde_json::json!({"kind": "slurm", "max_pending": "soon"})), None).unwrap_err();
        assert_eq!(e.0, "max_pending");
        let c = ExecutorConfig::resolve(Some(&serde_json::json!({"kind": "slurm", "max_pending": 2})), None).unwrap();
        assert_eq!(c.max_pending.as_deref(), Some("2"));
        for zero in [serde_json::json!("0"), serde_json::json!(0), serde_json::json!("0:00"), serde_json::json!("0-0")] {
            let e = ExecutorConfig::resolve(Some(&serde_json::json!({"kind": "slurm", "max_pending": zero})), None).unwrap_err();
            assert!(e.0 == "max_pending" && e.1.contains("no limit"), "{e:?}");
        }
        for (field, v) in [("keep_logs", serde_json::json!("yes")), ("keep_logs", serde_json::json!(1)), ("cpus", serde_json::json!("8")), ("retries", serde_json::json!(-1))] {
            let e = ExecutorConfig::resolve(Some(&serde_json::json!({"kind": "slurm", field: v})), None).unwrap_err();
            assert_eq!(e.0, field, "{e:?}");
        }
        assert_eq!(ExecutorConfig::resolve(Some(&serde_json::json!({"keep_logs": true})), None).unwrap().keep_logs, Some(true));
    }
}
