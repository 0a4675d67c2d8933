//! A validated pipeline: stage kinds resolved, params normalised, inputs resolved, and a
//! petgraph graph with a topological order. Everything that can be wrong with a pipeline
//! file is found here, before anything runs, and reported all at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Deserialize;
use serde_json::Value;

use crate::spec::{self, Promote, RawStage, SpecError, SpecIssue};
use crate::stages::{self, DynStage};
use crate::suggest::closest;

pub mod inputs;

/// Where one named input of a stage comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// Another stage's output, or a path inside it (`"demo-data/valid"`).
    Stage { stage: String, subpath: Option<String> },
    /// A file on disk (absolute after resolution).
    File(PathBuf),
    /// A directory on disk, hashed by the content of every file in it.
    Dir(PathBuf),
    /// A glob; the stage sees a directory with the matches.
    Glob { pattern: String, matches: Vec<PathBuf> },
}

impl InputSource {
    /// How `plan --explain` names it.
    pub fn describe(&self) -> String {
        match self {
            InputSource::Stage { stage, subpath: None } => format!("stage {stage}"),
            InputSource::Stage { stage, subpath: Some(p) } => format!("stage {stage}, {p}"),
            InputSource::File(p) => format!("file {}", p.display()),
            InputSource::Dir(p) => format!("directory {}", p.display()),
            InputSource::Glob { pattern, .. } => format!("glob {pattern}"),
        }
    }
}

#[derive(Clone)]
pub struct StageNode {
    pub name: String,
    pub kind: Arc<dyn DynStage>,
    /// Canonical params, defaults filled in: exactly what goes into the key.
    pub params: Value,
    pub inputs: BTreeMap<String, InputSource>,
    pub volatile: bool,
    /// Files named by params (weights...), hashed into the key.
    pub param_files: Vec<(String, PathBuf)>,
    /// Where it runs (`executor` of the stage over the pipeline's): provenance, not in the key.
    pub executor: crate::executor::config::ExecutorConfig,
}

impl StageNode {
    /// The params that go into its cache key (see `DynStage::key_params`).
    pub fn key_params(&self) -> Value {
        let inputs: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
        self.kind.key_params(&self.params, &inputs)
    }
    pub fn upstream(&self) -> impl Iterator<Item = &str> {
        self.inputs.values().filter_map(|s| match s {
            InputSource::Stage { stage, .. } => Some(stage.as_str()),
            _ => None,
        })
    }
}

pub struct Pipeline {
    pub name: String,
    pub file: PathBuf,
    /// Directory of the pipeline file: relative paths resolve against it.
    pub base_dir: PathBuf,
    pub stages: Vec<StageNode>,
    pub graph: DiGraph<usize, ()>,
    /// Indices into `stages`, dependencies first.
    pub order: Vec<usize>,
    pub promote: Option<Promote>,
    /// The file's `remote` field (a URL), if any.
    pub remote: Option<String>,
}

impl Pipeline {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }
    pub fn stage(&self, name: &str) -> Option<&StageNode> {
        self.stages.iter().find(|s| s.name == name)
    }
    /// Stages that read `idx`'s output directly.
    pub fn dependents(&self, idx: usize) -> Vec<usize> {
        self.graph
            .neighbors_directed(NodeIndex::new(idx), petgraph::Direction::Outgoing)
            .map(|n| self.graph[n])
            .collect()
    }
    /// Which stages run (true) or are only looked up in the cache (false), for `--only` and
    /// `--from` (both empty: all run). One rule for `run` and `plan`.
    pub fn selection(&self, only: &[String], from: &[String]) -> Vec<bool> {
        let n = self.stages.len();
        if only.is_empty() && from.is_empty() {
            return vec![true; n];
        }
        let mut sel = vec![false; n];
        for s in only {
            if let Some(i) = self.index(s) {
                sel[i] = true;
            }
        }
        for s in from {
            if let Some(i) = self.index(s) {
                for j in self.downstream_closure(i) {
                    sel[j] = true;
                }
            }
        }
        sel
    }
    /// `idx` and everything downstream of it.
    pub fn downstream_closure(&self, idx: usize) -> Vec<usize> {
        let mut seen = vec![false; self.stages.len()];
        let mut stack = vec![idx];
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i], true) {
                stack.extend(self.dependents(i));
            }
        }
        (0..self.stages.len()).filter(|&i| seen[i]).collect()
    }
    /// `idx` and everything it needs.
    pub fn upstream_closure(&self, idx: usize) -> Vec<usize> {
        let mut seen = vec![false; self.stages.len()];
        let mut stack = vec![idx];
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i], true) {
                stack.extend(self.stages[i].upstream().filter_map(|n| self.index(n)));
            }
        }
        (0..self.stages.len()).filter(|&i| seen[i]).collect()
    }
}

/// Load, override and validate a pipeline file.
pub fn load(file: &Path, overrides: &[String]) -> Result<Pipeline, SpecError> {
    let loaded = spec::load(file, overrides)?;
    build(file, loaded)
}

pub fn build(file: &Path, loaded: spec::Loaded) -> Result<Pipeline, SpecError> {
    let invalid = |issues: Vec<SpecIssue>| SpecError::Invalid { file: file.to_path_buf(), issues };
    let issue = |path: &str, message: String, hint: Option<String>| SpecIssue { json_path: path.to_string(), message, hint };
    let mut issues = Vec::new();

    // Unknown top-level fields are reported beside every other problem, not instead of them.
    const TOP: &[&str] = &["name", "description", "stages", "promote", "executor", "remote"];
    let mut doc = loaded.doc.clone();
    if let serde_json::Value::Object(m) = &mut doc {
        let unknown: Vec<String> = m.keys().filter(|k| !TOP.contains(&k.as_str())).cloned().collect();
        for k in unknown {
            let hint = match closest(&k, TOP.iter().copied()) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!("known: {}", TOP.join(", ")),
            };
            issues.push(issue(&k, format!("unknown field `{k}`"), Some(hint)));
            m.remove(&k);
        }
    }
    let raw: spec::RawPipeline = {
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(&doc, &mut track);
        match spec::RawPipeline::deserialize(de) {
            Ok(r) => r,
            Err(e) => {
                let path = track.path().to_string();
                let (msg, hint) = explain_serde(&e.to_string(), "field");
                issues.push(issue(if path == "." { "" } else { &path }, msg, hint));
                return Err(invalid(issues));
            }
        }
    };
    for d in &loaded.duplicates {
        issues.push(issue(&format!("stages.{d}"), format!("duplicate stage name `{d}`"), Some("give each stage its own name".into())));
    }
    // found by a hostile pass: the last of two `cmd`s (or `params`, `inputs.x`, `name`) won silently
    for k in &loaded.duplicate_keys {
        issues.push(issue(k, "this key is given twice in its object (JSON readers keep only the last)".into(), Some("remove one of them".into())));
    }
    // `PIPELINE/STAGE` names an entry, and the name is printed: a `/` or a control character
    // in it would name another pipeline or rewrite the terminal
    if raw.name.trim().is_empty() || raw.name == "." || raw.name == ".." || raw.name.contains('/') || raw.name.chars().any(char::is_control) {
        issues.push(issue("name", format!("bad pipeline name {:?}", raw.name), Some("a non-empty name without '/' or control characters".into())));
    }
    if raw.stages.0.is_empty() {
        issues.push(issue("stages", "the pipeline has no stages".into(), None));
    }

    let base_dir = absolute(file.parent().unwrap_or(Path::new(".")));
    let registry: Vec<Arc<dyn DynStage>> = stages::registry().into_iter().map(Arc::from).collect();
    let kinds: Vec<&str> = registry.iter().map(|k| k.kind()).collect();
    let names: Vec<String> = raw.stages.0.iter().map(|(n, _)| n.clone()).collect();

    let mut nodes = Vec::new();
    for (name, value) in &raw.stages.0 {
        let at = format!("stages.{name}");
        // `.` and `..` too: a stage's name becomes a path component (promote exports each
        // stage's output under it; a stage named `..` wrote beside the promote target, found
        // by a hostile pass). Shown escaped, not stripped: "a\u{7}" read as a valid "a".
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            issues.push(issue(&at, format!("bad stage name {name:?}"), Some("no '/', spaces, control characters, `.`, `..` or empty names".into())));
        }
        let rs: RawStage = {
            let mut track = serde_path_to_error::Track::new();
            let de = serde_path_to_error::Deserializer::new(value, &mut track);
            match RawStage::deserialize(de) {
                Ok(r) => r,
                Err(e) => {
                    let p = track.path().to_string();
                    let (msg, hint) = explain_serde(&e.to_string(), "field");
                    issues.push(issue(&if p == "." { at.clone() } else { format!("{at}.{p}") }, msg, hint));
                    continue;
                }
            }
        };
        let Some(kind) = registry.iter().find(|k| k.kind() == rs.kind).cloned() else {
            let hint = match closest(&rs.kind, kinds.iter().copied()) {
                Some(c) => format!("did you mean `{c}`? known kinds: {}", kinds.join(", ")),
                None => format!("known kinds: {}", kinds.join(", ")),
            };
            issues.push(issue(&format!("{at}.kind"), format!("unknown stage kind `{}`", rs.kind), Some(hint)));
            continue;
        };
        let params = match kind.normalize(&rs.params) {
            Ok(p) => p,
            Err(e) => {
                let (msg, mut hint) = explain_serde(&e.message, "param");
                if hint.is_none() {
                    hint = Some(format!("see `pipeline schema {}`", kind.kind()));
                }
                let p = if e.path.is_empty() { format!("{at}.params") } else { format!("{at}.params.{}", e.path) };
                issues.push(issue(&p, msg, hint));
                continue;
            }
        };
        let mut inputs = BTreeMap::new();
        for (iname, v) in &rs.inputs {
            let ipath = format!("{at}.inputs.{iname}");
            if !kind.open_inputs() && !kind.inputs().iter().any(|d| d.name == iname) {
                let declared: Vec<&str> = kind.inputs().iter().map(|d| d.name).collect();
                let hint = match closest(iname, declared.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!("`{}` takes: {}", kind.kind(), declared.join(", ")),
                };
                issues.push(issue(&ipath, format!("unknown input `{iname}`"), Some(hint)));
                continue;
            }
            if kind.open_inputs() && !iname.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                issues.push(issue(&ipath, format!("input name `{iname}` becomes $IN_{iname}"), Some("use letters, digits and '_'".into())));
                continue;
            }
            let Some(r) = v.as_str() else {
                issues.push(issue(&ipath, "an input is a string: a stage name, `stage/path`, a file, directory or glob".into(), None));
                continue;
            };
            match resolve_input(r, &names, name, &base_dir) {
                Ok(src) => {
                    inputs.insert(iname.clone(), src);
                }
                Err((msg, hint)) => issues.push(issue(&ipath, msg, hint)),
            }
        }
        for d in kind.inputs().iter().filter(|d| d.required) {
            if !rs.inputs.contains_key(d.name) {
                issues.push(issue(&format!("{at}.inputs"), format!("missing required input `{}` ({})", d.name, d.doc), None));
            }
        }
        let param_files: Vec<(String, PathBuf)> = kind
            .param_files(&params)
            .into_iter()
            .map(|(n, p)| (n, if p.is_absolute() { p } else { base_dir.join(p) }))
            .collect();
        for (n, p) in &param_files {
            if !p.is_file() {
                // a device or a directory is there: say what it is, not that nothing is
                let what = match std::fs::metadata(p) {
                    Ok(m) if m.is_dir() => "is a directory, not a file",
                    Ok(_) => "is not a regular file (a device, FIFO or socket)",
                    Err(_) => "does not exist",
                };
                issues.push(issue(&format!("{at}.params.{n}"), format!("file {} {what}", p.display()), None));
            }
        }
        let executor = match crate::executor::config::ExecutorConfig::resolve(raw.executor.as_ref(), rs.executor.as_ref()) {
            Ok(c) => c,
            Err((p, m)) => {
                let base = if rs.executor.is_some() { format!("{at}.executor") } else { "executor".to_string() };
                let i = issue(&if p.is_empty() { base } else { format!("{base}.{p}") }, m, Some("see README, \"Slurm\"".into()));
                if !issues.contains(&i) {
                    issues.push(i);
                }
                Default::default()
            }
        };
        let volatile = kind.volatile(&params);
        nodes.push(StageNode { name: name.clone(), kind, params, inputs, volatile, param_files, executor });
    }
    if let Some(p) = &raw.promote {
        let mut seen = HashSet::new();
        for s in std::iter::once(&p.stage).chain(p.with.iter()) {
            if !names.contains(s) {
                issues.push(issue("promote", format!("no stage named `{s}`"), None));
            } else if !seen.insert(s) {
                // each is exported under its own name: twice failed only after the run
                issues.push(issue("promote.with", format!("stage `{s}` is named twice (`stage` and `with` together name each stage once)"), None));
            }
        }
        if !["max", "min"].contains(&p.goal.as_str()) {
            issues.push(issue("promote.goal", format!("`{}` is neither `max` nor `min`", p.goal), None));
        }
        // `<stage>.<metric>`: a stage that is not in the file can never report it (the run
        // said "ok" and never promoted)
        if !names.iter().any(|n| p.metric.strip_prefix(n.as_str()).is_some_and(|r| r.len() > 1 && r.starts_with('.'))) {
            issues.push(issue("promote.metric", format!("`{}` is not `<stage>.<metric>` of a stage in this file (e.g. `evaluate.accuracy`)", p.metric), None));
        }
    }
    if !issues.is_empty() {
        return Err(invalid(issues));
    }

    let mut graph = DiGraph::new();
    let idx: HashMap<String, NodeIndex> = nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), graph.add_node(i))).collect();
    for n in &nodes {
        for up in n.upstream() {
            graph.update_edge(idx[up], idx[&n.name], ());
        }
    }
    let order = match toposort(&graph, None) {
        Ok(o) => o.into_iter().map(|n| graph[n]).collect(),
        Err(_) => {
            let cycle = find_cycle(&graph, &nodes);
            return Err(invalid(vec![issue(
                "stages",
                format!("the stages form a cycle: {}", cycle.join(" -> ")),
                Some("a stage cannot depend on its own output; remove one of these inputs".into()),
            )]));
        }
    };
    Ok(Pipeline { name: raw.name, file: file.to_path_buf(), base_dir, stages: nodes, graph, order, promote: raw.promote, remote: raw.remote })
}

fn absolute(p: &Path) -> PathBuf {
    let p = if p.as_os_str().is_empty() { Path::new(".") } else { p };
    std::fs::canonicalize(p).unwrap_or_else(|_| std::env::current_dir().unwrap_or_default().join(p))
}

fn resolve_input(r: &str, names: &[String], me: &str, base: &Path) -> Result<InputSource, (String, Option<String>)> {
    let (head, rest) = match r.split_once('/') {
        Some((h, t)) => (h, Some(t.trim_end_matches('/').to_string()).filter(|t| !t.is_empty())),
        None => (r, None),
    };
    if names.iter().any(|n| n == head) {
        if head == me {
            return Err((format!("stage `{me}` cannot read its own output"), None));
        }
        return Ok(InputSource::Stage { stage: head.to_string(), subpath: rest });
    }
    let full = if Path::new(r).is_absolute() { PathBuf::from(r) } else { base.join(r) };
    if let Some(fs) = pseudo_fs(&full) {
        // /proc/kmsg is a "regular" file of size 0 whose read never ends (and consumes the
        // kernel log); /proc and /sys files change under a stage anyway (a hostile pass hung
        // `plan` on one)
        return Err((format!("`{r}` is on {fs}, whose files are made up as they are read (some never end): copy what the stage needs into a file"), None));
    }
    if r.contains(['*', '?', '[']) {
        let pat = full.to_string_lossy().to_string();
        let mut matches: Vec<PathBuf> = glob::glob(&pat)
            .map_err(|e| (format!("bad glob `{r}`: {e}"), None))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        matches.sort();
        if matches.is_empty() {
            return Err((format!("glob `{r}` matches no file (looked in {})", base.display()), None));
        }
        return Ok(InputSource::Glob { pattern: r.to_string(), matches });
    }
    if full.is_file() {
        return Ok(InputSource::File(full));
    }
    if full.is_dir() {
        return Ok(InputSource::Dir(full));
    }
    // It exists, but as something no stage can read to the end: said as such (it was "not an
    // existing file", with a "did you mean" hint; found by a hostile pass).
    match (std::fs::symlink_metadata(&full), std::fs::metadata(&full)) {
        (Ok(_), Err(e)) => return Err((format!("`{r}` is a symbolic link that leads nowhere readable ({e})"), None)),
        (Ok(_), Ok(m)) => {
            let kind = crate::cache::ingest::special_kind(&m.file_type());
            return Err((format!("`{r}` is {kind}, not a file or directory: its reading may never end"), None));
        }
        _ => {}
    }
    let hint = closest(head, names.iter().map(|s| s.as_str()))
        .map(|c| format!("did you mean stage `{c}`?"))
        .or_else(|| Some(format!("paths are relative to {}", base.display())));
    Err((format!("`{r}` is neither a stage of this pipeline nor an existing file or directory"), hint))
}

/// The kernel's pseudo file system `p` lives on (procfs, sysfs, debugfs, tracefs...), if any.
fn pseudo_fs(p: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed statfs buffer of the right type
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    match st.f_type as i64 {
        0x9fa0 => Some("/proc (procfs)"),
        0x6265_6572 => Some("/sys (sysfs)"),
        0x6462_6720 => Some("debugfs"),
        0x7472_6163 => Some("tracefs"),
        0x2782_6a5d | 0x6367_7270 => Some("a cgroup file system"),
        0xcafe_4a11 => Some("bpffs"),
        0x7365_6375 => Some("securityfs"),
        _ => None,
    }
}

/// One concrete cycle, as stage names, first repeated at the end.
fn find_cycle(graph: &DiGraph<usize, ()>, nodes: &[StageNode]) -> Vec<String> {
    for scc in tarjan_scc(graph) {
        let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        // Walk edges inside the component until a node repeats.
        let mut path = vec![scc[0]];
        loop {
            let cur = *path.last().unwrap_or(&scc[0]);
            let Some(next) = graph.neighbors(cur).find(|n| scc.contains(n)) else { break };
            if let Some(pos) = path.iter().position(|&p| p == next) {
                // Start at the stage that comes first in the file, so the message is stable.
                let mut cyc: Vec<usize> = path[pos..].iter().map(|&n| graph[n]).collect();
                let first = (0..cyc.len()).min_by_key(|&i| cyc[i]).unwrap_or(0);
                cyc.rotate_left(first);
                cyc.push(cyc[0]);
                return cyc.into_iter().map(|i| nodes[i].name.clone()).collect();
            }
            path.push(next);
        }
    }
    Vec::new()
}

/// Turn serde's messages into ours, with a "did you mean" for unknown fields.
fn explain_serde(msg: &str, what: &str) -> (String, Option<String>) {
    // serde: "unknown field `epoch`, expected one of `epochs`, `lr`"
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((field, tail)) = rest.split_once('`') {
            let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
            let hint = match closest(field, expected.iter().copied()) {
                Some(c) => Some(format!("did you mean `{c}`?")),
                None if !expected.is_empty() => Some(format!("known: {}", expected.join(", "))),
                None => None,
            };
            return (format!("unknown {what} `{field}`"), hint);
        }
    }
    (msg.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_str(json: &str) -> Result<Pipeline, SpecError> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(&f, json).unwrap();
        load(&f, &[])
    }

    fn issues(json: &str) -> String {
        match build_str(json) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected an error for {json}"),
        }
    }

    #[test]
    fn the_readme_example_builds_in_order() {
        let p = build_str(
            r#"{"name": "t", "stages": {
            "b": {"kind": "command", "inputs": {"x": "a"}, "params": {"cmd": "cat $IN_x/a.txt > $OUT/b.txt"}},
            "a": {"kind": "command", "params": {"cmd": "echo $P_n > $OUT/a.txt", "n": 1}}}}"#,
        )
        .unwrap();
        let order: Vec<&str> = p.order.iter().map(|&i| p.stages[i].name.as_str()).collect();
        assert_eq!(order, vec!["a", "b"]);
        assert_eq!(p.stage("a").unwrap().params["n"], 1);
    }

    #[test]
    fn cycle_is_printed() {
        let e = issues(
            r#"{"name":"t","stages":{
            "a":{"kind":"command","inputs":{"x":"c"},"params":{"cmd":"true"}},
            "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"true"}},
            "c":{"kind":"command","inputs":{"x":"b"},"params":{"cmd":"true"}}}}"#,
        );
        assert!(e.contains("cycle"), "{e}");
        assert!(e.contains("a -> b -> c -> a") || e.contains("b -> c -> a -> b") || e.contains("c -> a -> b -> c"), "{e}");
    }

    #[test]
    fn unknown_kind_suggests() {
        let e = issues(r#"{"name":"t","stages":{"a":{"kind":"comand","params":{"cmd":"true"}}}}"#);
        assert!(e.contains("stages.a.kind") && e.contains("did you mean `command`"), "{e}");
    }

    #[test]
    fn missing_input_reference_is_named() {
        let e = issues(r#"{"name":"t","stages":{"a":{"kind":"command","inputs":{"x":"nope"},"params":{"cmd":"true"}}}}"#);
        assert!(e.contains("stages.a.inputs.x") && e.contains("`nope`"), "{e}");
    }

    #[test]
    fn duplicate_names_are_reported() {
        let e = issues(r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"true"}},"a":{"kind":"command","params":{"cmd":"true"}}}}"#);
        assert!(e.contains("duplicate stage name `a`"), "{e}");
    }

    #[test]
    fn wrong_param_type_names_the_path() {
        let e = issues(r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":3}}}}"#);
        assert!(e.contains("stages.a.params"), "{e}");
    }

    #[test]
    fn unknown_top_level_field_is_reported() {
        let e = issues(r#"{"name":"t","stage":{},"stages":{"a":{"kind":"command","params":{"cmd":"true"}}}}"#);
        assert!(e.contains("unknown field `stage`") && e.contains("did you mean `stages`"), "{e}");
    }

    #[test]
    fn all_issues_are_reported_at_once() {
        let e = issues(
            r#"{"name":"t","stages":{"a":{"kind":"comand"},"b":{"kind":"command","inputs":{"x":"zz"},"params":{"cmd":"true"}}}}"#,
        );
        assert!(e.contains("stages.a.kind") && e.contains("stages.b.inputs.x"), "{e}");
    }

    #[test]
    fn file_and_glob_inputs_resolve_relative_to_the_pipeline_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/x.csv"), "1").unwrap();
        std::fs::write(dir.path().join("data/y.csv"), "2").unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(
            &f,
            r#"{"name":"t","stages":{"a":{"kind":"command","inputs":{"f":"data/x.csv","d":"data","g":"data/*.csv"},"params":{"cmd":"true"}}}}"#,
        )
        .unwrap();
        let p = load(&f, &[]).unwrap();
        let s = &p.stages[0];
        assert!(matches!(s.inputs["f"], InputSource::File(_)));
        assert!(matches!(s.inputs["d"], InputSource::Dir(_)));
        match &s.inputs["g"] {
            InputSource::Glob { matches, .. } => assert_eq!(matches.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
