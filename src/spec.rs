//! The pipeline file: raw JSON model, `--set` overrides, and the errors both can produce.
//!
//! ```json
//! { "name": "emotion",
//!   "stages": {
//!     "a": { "kind": "command", "params": { "cmd": "echo $P_n > $OUT/a.txt", "n": 1 } },
//!     "b": { "kind": "command", "inputs": { "x": "a" }, "params": { "cmd": "..." } } } }
//! ```
//! An input value is a stage name (`"a"`), a path inside a stage's output (`"a/sub/dir"`),
//! or a file, directory or glob relative to the pipeline file's directory. A stage name
//! wins over a file of the same name.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// One problem in a pipeline file: where it is, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecIssue {
    /// JSON path, e.g. `stages.train.params.epoch`.
    pub json_path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for SpecIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.json_path.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "at {}: {}", self.json_path, self.message)?;
        }
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: cannot read: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{column}: malformed JSON: {message}", file.display())]
    Syntax { file: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: invalid pipeline:\n{}", file.display(), issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid { file: PathBuf, issues: Vec<SpecIssue> },
    #[error("--set {arg}: {message}")]
    BadOverride { arg: String, message: String },
    #[error("{}: nested {depth} levels deep{}; at most {MAX_DEPTH} (a cache entry records the params inside its own structure, and JSON readers stop at 128)", file.display(), if *overrides { " with the --set overrides" } else { "" })]
    TooDeep { file: PathBuf, depth: usize, overrides: bool },
    /// Found by a hostile pass: a secret given as a param was redacted wherever it was shown,
    /// but kept at rest in the cache entry (its key inputs), the database and a pushed remote.
    #[error("{}: {path} holds the value of {origin}{}: what a pipeline says is kept in its cache entries, the run records and any remote cache they are pushed to; let the stage read the secret from its environment instead (a command's `cmd` can say `$NAME`)", file.display(), if *overrides { " (given with --set)" } else { "" })]
    Secret { file: PathBuf, path: String, origin: String, overrides: bool },
}

/// Deepest nesting of a pipeline document (after `--set`).
pub const MAX_DEPTH: usize = 64;
/// Largest pipeline file read (a pipeline is a few KB; `/dev/zero` never ends).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Nesting depth of a JSON value, without recursion.
fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// A JSON path as an error shows it: redacted (a key may be the secret), without controls.
fn shown_path(p: &str) -> String {
    crate::text::strip_controls(&crate::text::redact(p))
}

/// The first string (or key) of the document that holds one of `known`
/// ([`crate::text::known_secrets`]): its JSON path as shown, and where the secret comes from.
fn secret_in(doc: &Value, known: &[(String, String)]) -> Option<(String, String)> {
    let found = |path: &str, origin: Option<&str>| origin.map(|o| (shown_path(path), o.to_string()));
    let mut stack = vec![(doc, String::new())];
    let join = |p: &str, k: &str| if p.is_empty() { k.to_string() } else { format!("{p}.{k}") };
    while let Some((v, path)) = stack.pop() {
        let hit = match v {
            Value::String(s) => found(&path, crate::text::secret_origin(s, known, false)),
            // a secret of digits written as a number: the whole number (a substring of its
            // digits refused `"seed": 123456789` beside a key id of 12345678)
            Value::Number(n) => found(&path, crate::text::secret_origin(&n.to_string(), known, true)),
            Value::Array(a) => {
                stack.extend(a.iter().enumerate().map(|(i, x)| (x, join(&path, &i.to_string()))));
                None
            }
            Value::Object(o) => o.iter().find_map(|(k, x)| {
                let p = join(&path, k);
                let hit = found(&p, crate::text::secret_origin(k, known, false));
                stack.push((x, p));
                hit
            }),
            _ => None,
        };
        if hit.is_some() {
            return hit;
        }
    }
    None
}

/// The file as written (after `--set`), before validation against stage kinds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub stages: Stages,
    /// Default executor of every stage (`{"kind": "slurm", ...}`); a stage's own overrides it.
    #[serde(default)]
    pub executor: Option<Value>,
    /// Copy the model + report to a stable path when a metric did not get worse.
    #[serde(default)]
    pub promote: Option<Promote>,
    /// A shared remote cache (`s3://bucket/prefix` or a directory); `--remote` and
    /// `PIPELINE_REMOTE` take precedence.
    #[serde(default)]
    pub remote: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// Stage whose output is promoted (usually `train`).
    pub stage: String,
    /// Extra stages whose outputs are copied beside it (usually `evaluate`).
    #[serde(default)]
    pub with: Vec<String>,
    /// `stage.metric` that must not get worse, e.g. `evaluate.accuracy`.
    pub metric: String,
    /// `max` (default) if bigger is better, `min` otherwise.
    #[serde(default = "default_goal")]
    pub goal: String,
    /// Destination directory, relative to the pipeline file.
    pub to: String,
}

fn default_goal() -> String {
    "max".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    pub kind: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub inputs: Map<String, Value>,
    #[serde(default = "empty_object")]
    pub params: Value,
    /// Where this stage runs (`crate::executor::ExecutorConfig`).
    #[serde(default)]
    pub executor: Option<Value>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// Stages in file order; duplicate names are kept so validation can report them
/// (serde_json would silently keep the last one).
#[derive(Debug, Clone, Default)]
pub struct Stages(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Stages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Stages;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of stages by name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Stages, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(Stages(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Read a pipeline file and apply `--set` overrides to the JSON before anything else.
/// The document after overrides, and stage names that appear more than once in the text.
#[derive(Debug)]
pub struct Loaded {
    pub doc: Value,
    pub duplicates: Vec<String>,
    /// Paths (`stages.a.params.cmd`) of other keys given twice in one object.
    pub duplicate_keys: Vec<String>,
}

/// Every key given twice in one object, as paths of its segments, in document order.
fn duplicate_keys(text: &str) -> Vec<Vec<String>> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;
    struct Walk<'a> {
        path: Vec<String>,
        out: &'a RefCell<Vec<Vec<String>>>,
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = m.next_key::<String>()? {
                let mut path = self.path.clone();
                path.push(k.clone());
                if !seen.insert(k) {
                    self.out.borrow_mut().push(path.clone());
                }
                m.next_value_seed(Walk { path, out: self.out })?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            let mut i = 0;
            loop {
                let mut path = self.path.clone();
                path.push(i.to_string());
                if s.next_element_seed(Walk { path, out: self.out })?.is_none() {
                    return Ok(());
                }
                i += 1;
            }
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let out = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_str(text);
    // the text already parsed as a Value: an error here can only be a limit, and then the
    // duplicates found so far are all there is to report
    let _ = Walk { path: Vec::new(), out: &out }.deserialize(&mut de);
    out.into_inner()
}

pub fn load(file: &Path, overrides: &[String]) -> Result<Loaded, SpecError> {
    let err = |source| SpecError::Read { file: file.to_path_buf(), source };
    // a FIFO must not hang `run`, `plan` or `schedule`, nor /dev/zero fill the memory
    let bytes = crate::regular::read_bounded(file, MAX_FILE_BYTES, "pipeline file").map_err(err)?;
    let text = String::from_utf8(bytes).map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    parse_text(file, &text, overrides)
}

pub fn parse_text(file: &Path, text: &str, overrides: &[String]) -> Result<Loaded, SpecError> {
    // Parse once as a plain Value for syntax errors with line/column, then apply overrides.
    let mut doc: Value = serde_json::from_str(text).map_err(|e| SpecError::Syntax {
        file: file.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string().split(" at line").next().unwrap_or_default().to_string(),
    })?;
    // Keys given twice only survive in the text (a Value keeps the last): a stage name is a
    // `duplicates` entry (once, in order), any other key a `duplicate_keys` path.
    let (mut duplicates, mut duplicate_paths) = (Vec::new(), Vec::new());
    for p in duplicate_keys(text) {
        match p.as_slice() {
            [top, name] if top == "stages" => {
                if !duplicates.contains(name) {
                    duplicates.push(name.clone());
                }
            }
            _ => duplicate_paths.push(p.join(".")),
        }
    }
    let file_depth = depth(&doc);
    // the secrets once for the whole document and every override
    let known = crate::text::known_secrets();
    if let Some((path, source)) = secret_in(&doc, &known) {
        return Err(SpecError::Secret { file: file.to_path_buf(), path, origin: source, overrides: false });
    }
    for arg in overrides {
        // the path as written, and the value as decoded (a hostile pass spelled the secret
        // with JSON escapes: `"\u0053x9k..."`)
        let lhs = arg.split_once('=').map_or(arg.as_str(), |(l, _)| l);
        let refuse = |origin: &str| SpecError::Secret { file: file.to_path_buf(), path: shown_path(lhs), origin: origin.to_string(), overrides: true };
        if let Some(origin) = crate::text::secret_origin(lhs, &known, false) {
            return Err(refuse(origin));
        }
        // the value as applied: a string holding a secret, or a number equal to one (a
        // number with the secret's digits inside others is another number)
        let (_, value) = apply_override(&mut doc, arg).map_err(|e| match e {
            SpecError::BadOverride { arg, message } => {
                SpecError::BadOverride { arg: crate::text::redact(&arg), message: crate::text::redact(&message) }
            }
            e => e,
        })?;
        if let Some((_, source)) = secret_in(&value, &known) {
            return Err(refuse(&source));
        }
    }
    let d = depth(&doc);
    if d > MAX_DEPTH {
        return Err(SpecError::TooDeep { file: file.to_path_buf(), depth: d, overrides: d > file_depth });
    }
    Ok(Loaded { doc, duplicates, duplicate_keys: duplicate_paths })
}

/// `stage.param=value`, `stage.param.sub=value` or `stage.inputs.x=ref`.
/// The value is JSON if it parses as JSON (`3`, `true`, `[1,2]`), else a string.
pub fn apply_override(doc: &mut Value, arg: &str) -> Result<(String, Value), SpecError> {
    // A long argument is shown by its start: the message must still say what is wrong.
    let shown = if arg.len() > 120 {
        let cut = (0..=100).rev().find(|&i| arg.is_char_boundary(i)).unwrap_or(0);
        format!("{}... ({} bytes)", &arg[..cut], arg.len())
    } else {
        arg.to_string()
    };
    let bad = |m: &str| SpecError::BadOverride { arg: shown.clone(), message: m.to_string() };
    let (lhs, rhs) = arg.split_once('=').ok_or_else(|| bad("expected stage.param=value"))?;
    let mut parts: Vec<&str> = lhs.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad("expected stage.param=value"));
    }
    // found by a hostile pass: 8,000 levels overflowed the stack, 130 made a cache entry
    // that could not be read back (the whole document is checked against MAX_DEPTH after)
    if parts.len() > MAX_DEPTH + 1 {
        return Err(bad(&format!("a param path of {} levels; at most {MAX_DEPTH}", parts.len() - 1)));
    }
    // A stage name may hold dots (`a.b`): the stage is the name `lhs` starts with; two such
    // names (`a` and `a.b` for `a.b.c`) are ambiguous (found by a hostile pass: `a`'s param
    // `b.c` was set silently).
    let stage_names: Vec<String> = doc.get("stages").and_then(|s| s.as_object()).map(|o| o.keys().cloned().collect()).unwrap_or_default();
    let matching: Vec<&String> = stage_names.iter().filter(|n| lhs.starts_with(&format!("{n}."))).collect();
    if matching.len() > 1 {
        let names: Vec<String> = matching.iter().map(|n| format!("`{n}`")).collect();
        return Err(bad(&format!("ambiguous: the stages {} all match; rename one", names.join(", "))));
    }
    let stage_owned = match matching.first() {
        Some(n) if n.contains('.') => {
            parts = lhs[n.len() + 1..].split('.').collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(bad("expected stage.param=value"));
            }
            n.to_string()
        }
        _ => parts.remove(0).to_string(),
    };
    let stage = stage_owned.as_str();
    let value: Value = serde_json::from_str(rhs).unwrap_or_else(|_| Value::String(rhs.to_string()));
    let stages = doc
        .get_mut("stages")
        .and_then(|s| s.as_object_mut())
        .ok_or_else(|| bad("the pipeline has no stages object"))?;
    let names: Vec<String> = stages.keys().cloned().collect();
    let st = stages.get_mut(stage).ok_or_else(|| {
        let hint = crate::suggest::closest(stage, names.iter().map(|s| s.as_str()))
            .map(|c| format!("; did you mean `{c}`?"))
            .unwrap_or_default();
        bad(&format!("no stage named `{stage}`{hint}"))
    })?;
    // `a.executor={"kind":"slurm",...}`: the stage's executor, whole (it became a param named
    // `executor`, in the key, and the stage ran locally; found by a hostile pass); a param of
    // that name is `a.params.executor`
    if parts == ["executor"] && value.is_object() {
        let obj = st.as_object_mut().ok_or_else(|| bad("stage is not an object"))?;
        obj.insert("executor".into(), value.clone());
        return Ok((format!("{stage}.executor"), value));
    }
    let section = if parts[0] == "inputs" {
        parts.remove(0);
        "inputs"
    } else if parts[0] == "executor" && parts.len() > 1 {
        parts.remove(0);
        "executor"
    } else {
        if parts[0] == "params" && parts.len() > 1 {
            parts.remove(0);
        }
        "params"
    };
    if parts.is_empty() {
        return Err(bad("expected stage.param=value"));
    }
    let obj = st.as_object_mut().ok_or_else(|| bad("stage is not an object"))?;
    let mut cur = obj.entry(section).or_insert_with(|| Value::Object(Map::new()));
    for (i, p) in parts.iter().enumerate() {
        let map = cur.as_object_mut().ok_or_else(|| bad(&format!("`{}` is not an object", parts[..i].join("."))))?;
        if i + 1 == parts.len() {
            map.insert(p.to_string(), value.clone());
            break;
        }
        cur = map.entry(p.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
    Ok((format!("{stage}.{section}.{}", parts.join(".")), value))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_whole_executor_is_set_as_the_stages_executor_not_a_param() {
        let mut doc: serde_json::Value = serde_json::json!({"name": "t", "stages": {"a": {"kind": "command", "params": {"cmd": "true"}}}});
        super::apply_override(&mut doc, r#"a.executor={"kind":"slurm","time":"30"}"#).unwrap();
        assert_eq!(doc["stages"]["a"]["executor"]["kind"], "slurm");
        assert!(doc["stages"]["a"]["params"].get("executor").is_none());
        super::apply_override(&mut doc, "a.params.executor=x").unwrap();
        assert_eq!(doc["stages"]["a"]["params"]["executor"], "x");
    }

    #[test]
    fn a_secret_in_the_file_or_a_set_is_refused_by_its_path_never_shown() {
        let secret = "UnitTestSecret-spec-7f3a9c";
        crate::text::register_secret(secret);
        let f = std::path::Path::new("p.json");
        let text = format!(r#"{{"name":"t","stages":{{"a":{{"kind":"command","params":{{"cmd":"curl -u me:{secret} x"}}}}}}}}"#);
        let e = parse_text(f, &text, &[]).unwrap_err().to_string();
        assert!(e.starts_with("p.json: stages.a.params.cmd holds the value of a credentials file:") && !e.contains(secret), "{e}");
        let text = r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"true"}}}}"#;
        let e = parse_text(f, text, &[format!("a.token={secret}")]).unwrap_err().to_string();
        assert!(e.contains("a.token holds the value of a credentials file (given with --set)") && !e.contains(secret), "{e}");
        // a key that is the secret is named redacted
        let text = format!(r#"{{"name":"t","stages":{{"a":{{"kind":"command","params":{{"cmd":"true","{secret}":1}}}}}}}}"#);
        let e = parse_text(f, &text, &[]).unwrap_err().to_string();
        assert!(e.contains("stages.a.params.[redacted] holds") && !e.contains(secret), "{e}");
        assert!(parse_text(f, text.replace(secret, "short").as_str(), &[]).is_ok());
        // found by a hostile pass: the value decoded from JSON escapes, and digits as a number
        let text = r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"true"}}}}"#;
        let escaped = format!("a.n=\"\\u{:04x}{}\"", secret.as_bytes()[0], &secret[1..]);
        assert!(!escaped.contains(secret));
        let e = parse_text(f, text, &[escaped]).unwrap_err().to_string();
        assert!(e.contains("a.n holds the value of a credentials file (given with --set)") && !e.contains(secret), "{e}");
        let digits = "80417733291155";
        crate::text::register_secret(digits);
        let e = parse_text(f, &format!(r#"{{"name":"t","stages":{{"a":{{"kind":"command","params":{{"cmd":"true","n":{digits}}}}}}}}}"#), &[]).unwrap_err();
        assert!(e.to_string().contains("stages.a.params.n holds"), "{e}");
        let e = parse_text(f, text, &[format!("a.n={}", digits.parse::<u64>().unwrap())]).unwrap_err();
        assert!(e.to_string().contains("a.n holds"), "{e}");
        // a number holding the digits inside others is another number
        assert!(parse_text(f, text, &[format!("a.n=9{digits}")]).is_ok());
    }

    use super::*;

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = parse_text(Path::new("p.json"), "{\n  \"name\": \"x\",\n  \"stages\": {,}\n}", &[]).unwrap_err();
        match e {
            SpecError::Syntax { line, column, .. } => {
                assert_eq!(line, 3);
                assert!(column > 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deep_documents_special_files_and_huge_files_are_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("p.json");
        std::fs::write(&f, r#"{"name":"x","stages":{"a":{"kind":"command","params":{"cmd":"true"}}}}"#).unwrap();
        assert!(load(&f, &[]).is_ok());
        let set = |n: usize| format!("a.{}=1", vec!["x"; n].join("."));
        let e = load(&f, &[set(8000)]).unwrap_err().to_string();
        assert!(e.contains("--set a.x.x") && e.contains("8000 levels"), "{e}");
        let e = load(&f, &[set(62)]).unwrap_err().to_string();
        assert!(e.contains("p.json") && e.contains("with the --set overrides") && e.contains("at most 64"), "{e}");
        assert!(load(&f, &[set(58)]).is_ok());
        // a value whose own nesting takes it past the limit
        let e = load(&f, &[format!("a.v={}1{}", "[".repeat(70), "]".repeat(70))]).unwrap_err().to_string();
        assert!(e.contains("levels deep"), "{e}");
        let e = load(Path::new("/dev/zero"), &[]).unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
        let fifo = t.path().join("fifo.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = load(&fifo, &[]).unwrap_err().to_string();
        assert!(e.contains("fifo.json") && e.contains("FIFO"), "{e}");
        let e = load(t.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let big = t.path().join("big.json");
        std::fs::File::create(&big).unwrap().set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = load(&big, &[]).unwrap_err().to_string();
        assert!(e.contains("big.json") && e.contains("at most"), "{e}");
    }

    #[test]
    fn duplicate_stage_names_are_kept_in_order() {
        let l = parse_text(Path::new("p.json"), r#"{"name":"x","stages":{"a":{"kind":"command"},"a":{"kind":"command"}}}"#, &[])
            .unwrap();
        assert_eq!(l.duplicates, vec!["a".to_string()]);
    }

    #[test]
    fn override_sets_param_as_json_or_string() {
        let mut doc: Value = serde_json::json!({"name":"x","stages":{"t":{"kind":"train","params":{"epochs":3}}}});
        apply_override(&mut doc, "t.epochs=5").unwrap();
        apply_override(&mut doc, "t.model=vgg16").unwrap();
        apply_override(&mut doc, "t.inputs.valid=data/valid").unwrap();
        assert_eq!(doc["stages"]["t"]["params"]["epochs"], 5);
        assert_eq!(doc["stages"]["t"]["params"]["model"], "vgg16");
        assert_eq!(doc["stages"]["t"]["inputs"]["valid"], "data/valid");
        apply_override(&mut doc, "t.executor.gpus=2").unwrap();
        assert_eq!(doc["stages"]["t"]["executor"]["gpus"], 2);
    }

    #[test]
    fn override_of_unknown_stage_suggests() {
        let mut doc: Value = serde_json::json!({"name":"x","stages":{"train":{"kind":"train"}}});
        let e = apply_override(&mut doc, "trian.epochs=5").unwrap_err().to_string();
        assert!(e.contains("did you mean `train`"), "{e}");
    }
}
