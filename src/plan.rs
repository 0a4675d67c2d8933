//! `pipeline plan`: which stages would run, and why, without running anything.
//!
//! A stage is a `hit` when its key (computable once every upstream output is known) has a
//! usable entry. Otherwise it is a `miss`, and the reasons compare its inputs with the last
//! entry recorded for the same stage name, following changes downstream:
//! `train: input "images" changes because augment reruns (augment: params.rotation_range 20 -> 30)`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::cache::remote::{ArtifactStore, Remote};
use crate::cache::{Cache, KeyInputs};
use crate::dag::{InputSource, Pipeline};
use crate::dag::inputs::resolve_inputs;

/// Why a stage reruns (or does not run), as cargo's `DirtyReason`: one variant per cause,
/// worded by `Display`. `plan --json` gives each stage `reasons` (the sentences) and `why`
/// (these, tagged by `reason`): a stable interface, fields named as below.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum RerunReason {
    /// No entry of this stage in this cache.
    NeverRan,
    /// Same key as the last run, but its output was removed (gc, verify).
    OutputGone,
    /// A hit on an older key than the last run's (reverting a change).
    Restored { key: String },
    /// Reads the outside world: runs every time.
    Volatile,
    /// `--force`.
    Forced,
    /// Not picked by `--only` / `--from`: only looked up.
    NotSelected,
    KeyFormat { old: u32, new: u32 },
    Kind { old: String, new: String },
    KindVersion { kind: String, old: u32, new: u32 },
    /// A param changed, was added (`old` null) or removed (`new` null).
    Param { path: String, old: Option<Value>, new: Option<Value> },
    Input { name: String, source: Option<String>, old: String, new: String },
    InputAdded { name: String },
    InputRemoved { name: String },
    ParamFile { name: String },
    /// An upstream stage reruns; `root` is the first cause up the graph.
    Upstream { input: String, stage: String, root: Option<String> },
    HashFailed { message: String },
    /// The remote has an entry for the key, but a pull would refuse it (an object missing,
    /// damaged or of the wrong size): the stage runs, and its upload repairs the remote.
    RemoteIncomplete { message: String },
    KeyChanged,
    /// Not selected and not cached, so it cannot run: `run` skips it.
    NotSelectedNotCached,
    /// An upstream stage will be skipped, so this one is too.
    Blocked { stage: String },
}

impl std::fmt::Display for RerunReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |d: &str| d[..12.min(d.len())].to_string();
        match self {
            RerunReason::NeverRan => write!(f, "never ran in this cache"),
            RerunReason::OutputGone => write!(f, "its output is no longer in the cache, or a file of it is missing or damaged (removed by gc or verify, or changed in place)"),
            RerunReason::Restored { key } => write!(f, "restored from an earlier run (key {})", short(key)),
            RerunReason::Volatile => write!(f, "reads the outside world: runs every time; its dependents rerun only if its output changes"),
            RerunReason::Forced => write!(f, "forced (--force)"),
            RerunReason::NotSelected => write!(f, "not selected (--only / --from): only looked up in the cache"),
            RerunReason::KeyFormat { old, new } => write!(f, "cache key format {old} -> {new}"),
            RerunReason::Kind { old, new } => write!(f, "kind {old} -> {new}"),
            RerunReason::KindVersion { kind, old, new } => write!(f, "implementation of {kind} changed (version {old} -> {new})"),
            RerunReason::Param { path, old: Some(o), new: Some(n) } => write!(f, "{path} {} -> {}", show(o), show(n)),
            RerunReason::Param { path, old: None, new: Some(n) } => write!(f, "{path} added: {}", show(n)),
            RerunReason::Param { path, .. } => write!(f, "{path} removed"),
            RerunReason::Input { name, source, old, new } => {
                let src = source.as_ref().map(|s| format!(" ({s})")).unwrap_or_default();
                write!(f, "input `{name}` changed{src}: {} -> {}", short(old), short(new))
            }
            RerunReason::InputAdded { name } => write!(f, "new input `{name}`"),
            RerunReason::InputRemoved { name } => write!(f, "input `{name}` removed"),
            RerunReason::ParamFile { name } => write!(f, "file of param {name} changed"),
            RerunReason::Upstream { input, stage, root } => {
                let why = root.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
                write!(f, "input `{input}` changes because {stage} reruns{why}")
            }
            RerunReason::HashFailed { message } => write!(f, "cannot hash inputs: {message}"),
            RerunReason::RemoteIncomplete { message } => write!(f, "the remote cache has an entry, but {message}"),
            RerunReason::KeyChanged => write!(f, "key changed"),
            RerunReason::NotSelectedNotCached => write!(f, "not selected and not in the cache: run it first, or drop --only"),
            RerunReason::Blocked { stage } => write!(f, "upstream `{stage}` is skipped"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    pub name: String,
    /// `hit`, `miss`, `not-selected` (`--only` / `--from` left it out; it is only looked up),
    /// or `skipped` (it cannot run: not selected and not cached, or an upstream is skipped).
    pub status: &'static str,
    /// For a hit: `local`, or `remote` (the remote cache has it; `run` downloads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// Known when every upstream output is known.
    pub key: Option<String>,
    /// The reasons as sentences (what `plan --explain` prints).
    pub reasons: Vec<String>,
    /// The same reasons, typed.
    pub why: Vec<RerunReason>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
}

/// The run flags `plan` honours exactly as `run` does.
#[derive(Debug, Clone, Default)]
pub struct PlanFlags {
    pub only: Vec<String>,
    pub from: Vec<String>,
    pub force: Vec<String>,
}

pub fn plan(cache: &Cache, p: &Pipeline, remote: Option<&Remote>) -> Plan {
    plan_with(cache, p, remote, &PlanFlags::default())
}

pub fn plan_with(cache: &Cache, p: &Pipeline, remote: Option<&Remote>, flags: &PlanFlags) -> Plan {
    let selected = p.selection(&flags.only, &flags.from);
    let mut outputs: BTreeMap<String, String> = BTreeMap::new();
    let mut first_reason: BTreeMap<String, String> = BTreeMap::new();
    let mut skipped: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut stages = Vec::new();
    for &i in &p.order {
        let node = &p.stages[i];
        let forced = flags.force.iter().any(|f| f == &node.name);
        let mut why: Vec<RerunReason> = Vec::new();
        let last = cache.last(&p.name, &node.name).and_then(|k| cache.entry(&k).ok().flatten());
        let missing_up: Vec<(&String, &String)> = node
            .inputs
            .iter()
            .filter_map(|(name, src)| match src {
                InputSource::Stage { stage, .. } if !outputs.contains_key(stage) => Some((name, stage)),
                _ => None,
            })
            .collect();
        let mut key = None;
        let mut status = "miss";
        let mut source = None;
        if missing_up.is_empty() {
            match resolve_inputs(cache, node, &|s| outputs.get(s).cloned()) {
                Ok(resolved) => {
                    let ki = resolved.key_inputs(node);
                    let k = ki.key();
                    key = Some(k.0.clone());
                    let mut hit = cache.usable_entry_readonly(&k).ok().flatten();
                    source = hit.as_ref().map(|_| "local");
                    if let (None, Some(r), false) = (&hit, remote, node.volatile) {
                        // A hit there only if every object a pull needs is there (the pull
                        // still verifies their contents).
                        match crate::cache::remote::transfer::probe_entry(cache, r, &k) {
                            Ok(Some(Ok(()))) => hit = r.get_entry(&k).ok().flatten(),
                            Ok(Some(Err(message))) => why.push(RerunReason::RemoteIncomplete { message }),
                            Ok(None) => {}
                            Err(e) => why.push(RerunReason::RemoteIncomplete { message: format!("it cannot be read ({e})") }),
                        }
                        source = hit.as_ref().map(|_| "remote");
                    }
                    if node.volatile && selected[i] {
                        why.push(RerunReason::Volatile);
                        // Predict downstream from the last output it produced.
                        if let Some(e) = hit.or(last.clone()) {
                            outputs.insert(node.name.clone(), e.output);
                        }
                    } else if let (Some(e), false) = (&hit, forced && selected[i]) {
                        status = if selected[i] { "hit" } else { "not-selected" };
                        if !selected[i] {
                            why.push(RerunReason::NotSelected);
                        }
                        if last.as_ref().map(|l| l.key != k).unwrap_or(false) {
                            why.push(RerunReason::Restored { key: k.0.clone() });
                        }
                        outputs.insert(node.name.clone(), e.output.clone());
                    } else if forced && selected[i] {
                        why.push(RerunReason::Forced);
                        // It reruns; with the same inputs it gives the same output (early cutoff).
                        if let Some(e) = hit {
                            outputs.insert(node.name.clone(), e.output);
                        }
                    } else if !selected[i] {
                        status = "skipped";
                        why.push(RerunReason::NotSelectedNotCached);
                        skipped.insert(node.name.clone());
                    } else {
                        match &last {
                            None => why.push(RerunReason::NeverRan),
                            Some(l) if l.key == k => why.push(RerunReason::OutputGone),
                            Some(l) => why.extend(diff_key(&l.key_inputs, &ki, &resolved.sources)),
                        }
                        if why.is_empty() {
                            why.push(RerunReason::KeyChanged);
                        }
                    }
                }
                Err(e) => why.push(RerunReason::HashFailed { message: e.to_string() }),
            }
        } else if let Some((_, up)) = missing_up.iter().find(|(_, up)| skipped.contains(*up)) {
            status = "skipped";
            why.push(RerunReason::Blocked { stage: (*up).clone() });
            skipped.insert(node.name.clone());
        } else {
            if !selected[i] {
                status = "not-selected";
                why.push(RerunReason::NotSelected);
            }
            for (input, up) in &missing_up {
                // Name the root cause, not the whole chain of stages in between.
                why.push(RerunReason::Upstream { input: (*input).clone(), stage: (*up).clone(), root: first_reason.get(*up).cloned() });
            }
            if let Some(l) = &last {
                let mut now = KeyInputs::new(node.kind.kind(), node.kind.version(), &node.key_params());
                now.inputs = l.key_inputs.inputs.clone();
                now.param_files = l.key_inputs.param_files.clone();
                why.extend(diff_key(&l.key_inputs, &now, &BTreeMap::new()));
            }
        }
        if status == "miss" {
            let inherited = missing_up.first().and_then(|(_, up)| first_reason.get(*up).cloned());
            if let Some(r) = inherited.or_else(|| why.first().map(|r| format!("{}: {r}", node.name))) {
                first_reason.insert(node.name.clone(), r);
            }
        }
        let source = if status == "hit" { source } else { None };
        let reasons = why.iter().map(|r| r.to_string()).collect();
        stages.push(StagePlan { name: node.name.clone(), status, source, key, reasons, why });
    }
    Plan { stages }
}

/// Every difference between the last key inputs and the new ones.
pub fn diff_key(old: &KeyInputs, new: &KeyInputs, sources: &BTreeMap<String, String>) -> Vec<RerunReason> {
    let mut out = Vec::new();
    if old.format != new.format {
        out.push(RerunReason::KeyFormat { old: old.format, new: new.format });
    }
    if old.kind != new.kind {
        out.push(RerunReason::Kind { old: old.kind.clone(), new: new.kind.clone() });
    } else if old.kind_version != new.kind_version {
        out.push(RerunReason::KindVersion { kind: new.kind.clone(), old: old.kind_version, new: new.kind_version });
    }
    let mut params = Vec::new();
    diff_values("params", &old.params, &new.params, &mut params);
    out.extend(params.into_iter().map(|(path, old, new)| RerunReason::Param { path, old, new }));
    for (name, d) in &new.inputs {
        match old.inputs.get(name) {
            None => out.push(RerunReason::InputAdded { name: name.clone() }),
            Some(o) if o != d => out.push(RerunReason::Input { name: name.clone(), source: sources.get(name).cloned(), old: o.clone(), new: d.clone() }),
            _ => {}
        }
    }
    for name in old.inputs.keys().filter(|n| !new.inputs.contains_key(*n)) {
        out.push(RerunReason::InputRemoved { name: name.clone() });
    }
    for (name, d) in &new.param_files {
        if old.param_files.get(name) != Some(d) {
            out.push(RerunReason::ParamFile { name: name.clone() });
        }
    }
    out
}

/// Differences between two JSON values as (path, old, new); `None` = absent.
pub fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<(String, Option<Value>, Option<Value>)>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                let p = format!("{path}.{k}");
                match a.get(k) {
                    Some(av) => diff_values(&p, av, bv, out),
                    None => out.push((p, None, Some(bv.clone()))),
                }
            }
            for (k, av) in a.iter().filter(|(k, _)| !b.contains_key(*k)) {
                out.push((format!("{path}.{k}"), Some(av.clone()), None));
            }
        }
        (a, b) if a != b => out.push((path.to_string(), Some(a.clone()), Some(b.clone()))),
        _ => {}
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Differences between two JSON values as `path old -> new` lines.
pub fn diff_json(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    let mut d = Vec::new();
    diff_values(path, old, new, &mut d);
    out.extend(d.into_iter().map(|(path, old, new)| RerunReason::Param { path, old, new }.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn param_changes_are_named_with_old_and_new_values() {
        let mut out = Vec::new();
        diff_json("params", &json!({"rotation_range": 20, "fill": {"mode": "nearest"}}), &json!({"rotation_range": 30, "fill": {"mode": "reflect"}, "seed": 1}), &mut out);
        assert_eq!(out, vec!["params.rotation_range 20 -> 30", "params.fill.mode nearest -> reflect", "params.seed added: 1"]);
    }
}
