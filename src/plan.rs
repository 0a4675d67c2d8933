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
use crate::engine::resolve_inputs;

#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    pub name: String,
    /// `hit` or `miss`.
    pub status: &'static str,
    /// For a hit: `local`, or `remote` (the remote cache has it; `run` downloads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// Known when every upstream output is known.
    pub key: Option<String>,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
}

pub fn plan(cache: &Cache, p: &Pipeline, remote: Option<&Remote>) -> Plan {
    let mut outputs: BTreeMap<String, String> = BTreeMap::new();
    let mut first_reason: BTreeMap<String, String> = BTreeMap::new();
    let mut stages = Vec::new();
    for &i in &p.order {
        let node = &p.stages[i];
        let mut reasons = Vec::new();
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
                    let mut hit = cache.usable_entry(&k).ok().flatten();
                    source = hit.as_ref().map(|_| "local");
                    if let (None, Some(r), false) = (&hit, remote, node.volatile) {
                        // An entry on the remote is a hit there (the download verifies it).
                        hit = r.get_entry(&k).ok().flatten();
                        source = hit.as_ref().map(|_| "remote");
                    }
                    if node.volatile {
                        reasons.push("reads the outside world: runs every time; its dependents rerun only if its output changes".into());
                        // Predict downstream from the last output it produced.
                        if let Some(e) = hit.or(last.clone()) {
                            outputs.insert(node.name.clone(), e.output);
                        }
                    } else if let Some(e) = hit {
                        status = "hit";
                        if last.as_ref().map(|l| l.key != k).unwrap_or(false) {
                            reasons.push(format!("restored from an earlier run (key {})", k.short()));
                        }
                        outputs.insert(node.name.clone(), e.output);
                    } else {
                        match &last {
                            None => reasons.push("never ran in this cache".into()),
                            Some(l) if l.key == k => reasons.push("its output is no longer in the cache (removed by gc or verify)".into()),
                            Some(l) => reasons.extend(diff_key(&l.key_inputs, &ki, &resolved.sources)),
                        }
                        if reasons.is_empty() {
                            reasons.push("key changed".into());
                        }
                    }
                }
                Err(e) => reasons.push(format!("cannot hash inputs: {e}")),
            }
        } else {
            for (input, up) in &missing_up {
                // Name the root cause, not the whole chain of stages in between.
                let why = first_reason.get(*up).map(|r| format!(" ({r})")).unwrap_or_default();
                reasons.push(format!("input \"{input}\" changes because {up} reruns{why}"));
            }
            if let Some(l) = &last {
                let mut now = KeyInputs::new(node.kind.kind(), node.kind.version(), &node.kind.key_params(&node.params));
                now.inputs = l.key_inputs.inputs.clone();
                now.param_files = l.key_inputs.param_files.clone();
                reasons.extend(diff_key(&l.key_inputs, &now, &BTreeMap::new()));
            }
        }
        if status == "miss" {
            let inherited = missing_up.first().and_then(|(_, up)| first_reason.get(*up).cloned());
            if let Some(r) = inherited.or_else(|| reasons.first().map(|r| format!("{}: {r}", node.name))) {
                first_reason.insert(node.name.clone(), r);
            }
        }
        let source = if status == "hit" { source } else { None };
        stages.push(StagePlan { name: node.name.clone(), status, source, key, reasons });
    }
    Plan { stages }
}

/// Every difference between the last key inputs and the new ones, as sentences.
pub fn diff_key(old: &KeyInputs, new: &KeyInputs, sources: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    if old.format != new.format {
        out.push(format!("cache key format {} -> {}", old.format, new.format));
    }
    if old.kind != new.kind {
        out.push(format!("kind {} -> {}", old.kind, new.kind));
    } else if old.kind_version != new.kind_version {
        out.push(format!("implementation of {} changed (version {} -> {})", new.kind, old.kind_version, new.kind_version));
    }
    diff_json("params", &old.params, &new.params, &mut out);
    for (name, d) in &new.inputs {
        match old.inputs.get(name) {
            None => out.push(format!("new input \"{name}\"")),
            Some(o) if o != d => {
                let src = sources.get(name).map(|s| format!(" ({s})")).unwrap_or_default();
                out.push(format!("input \"{name}\" changed{src}: {} -> {}", &o[..12.min(o.len())], &d[..12.min(d.len())]));
            }
            _ => {}
        }
    }
    for name in old.inputs.keys().filter(|n| !new.inputs.contains_key(*n)) {
        out.push(format!("input \"{name}\" removed"));
    }
    for (name, d) in &new.param_files {
        if old.param_files.get(name) != Some(d) {
            out.push(format!("file of param {name} changed"));
        }
    }
    out
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Differences between two JSON values as `path old -> new` lines.
pub fn diff_json(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                let p = format!("{path}.{k}");
                match a.get(k) {
                    Some(av) => diff_json(&p, av, bv, out),
                    None => out.push(format!("{p} added: {}", show(bv))),
                }
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                out.push(format!("{path}.{k} removed"));
            }
        }
        (a, b) if a != b => out.push(format!("{path} {} -> {}", show(a), show(b))),
        _ => {}
    }
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
