//! Parsing AMT batch-results CSV and crowd-kit `worker,task,label` CSV from text.
//!
//! Columns are found by header name, never by position; rows may be shorter than the
//! header (AMT omits trailing empty `Approve`/`Reject` fields).

use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Answers, AnswersBuilder};
use crate::{CrowdError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnknownLabel {
    /// An answer outside the class list fails, naming the row.
    #[default]
    Error,
    /// Dropped and listed in the report.
    Drop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AmtOptions {
    /// AssignmentStatus values kept (Rejected is dropped by default).
    pub statuses: Vec<String>,
    /// Keep only the first answer of a worker on the same item.
    pub dedupe: bool,
    /// Allowed labels, in class order; empty = the labels seen, sorted.
    pub classes: Vec<String>,
    pub on_unknown_label: OnUnknownLabel,
    /// Column naming the item; default `Input.image_url` when present, else `HITId`.
    pub item_column: Option<String>,
    /// The question whose answer is the label: `Answer.<question>.label`, or the
    /// `<question>` key of `Answer.taskAnswers`. Needed when a HIT asks more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
}

impl Default for AmtOptions {
    fn default() -> Self {
        AmtOptions {
            statuses: vec!["Submitted".into(), "Approved".into()],
            dedupe: true,
            classes: Vec::new(),
            on_unknown_label: OnUnknownLabel::Error,
            item_column: None,
            question: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AmtRecord {
    /// Source name and 1-based line of the row (header = line 1).
    pub source: String,
    pub row: usize,
    pub item: String,
    pub hit_id: String,
    pub assignment_id: String,
    pub worker: String,
    pub status: String,
    pub label: String,
    pub work_time_s: Option<f64>,
    /// `Input.*` columns without the prefix, in header order.
    pub inputs: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AmtReport {
    pub rows: usize,
    pub kept: usize,
    /// Rows dropped per AssignmentStatus.
    pub dropped_status: BTreeMap<String, usize>,
    /// Repeated (worker, item) answers dropped.
    pub duplicates: usize,
    /// Of those, how many gave another label than the answer kept.
    #[serde(default)]
    pub duplicates_conflicting: usize,
    /// `(source, row, label)` of answers dropped for an unknown label.
    pub unknown_labels: Vec<(String, usize, String)>,
}

/// A worker's repeated answers to an item: the first is kept, the others counted in the
/// report (and how many of them give another label). Batch files and the MTurk API alike.
#[derive(Debug, Default)]
pub struct Repeats(HashMap<(String, String), String>);

impl Repeats {
    /// Aware of the answers already kept.
    pub fn of(records: &[AmtRecord]) -> Repeats {
        Repeats(records.iter().map(|r| ((r.worker.clone(), r.item.clone()), r.label.clone())).collect())
    }

    /// Whether this answer repeats one kept before (then counted in `report`).
    pub fn is_repeat(&mut self, report: &mut AmtReport, worker: &str, item: &str, label: &str) -> bool {
        match self.0.entry((worker.to_string(), item.to_string())) {
            std::collections::hash_map::Entry::Occupied(kept) => {
                report.duplicates += 1;
                report.duplicates_conflicting += usize::from(kept.get() != label);
                true
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(label.to_string());
                false
            }
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AmtBatch {
    pub records: Vec<AmtRecord>,
    /// Names of `Input.*` columns (without prefix), union over sources, first-seen order.
    pub input_columns: Vec<String>,
    pub report: AmtReport,
    /// Each assignment's status as the files read so far give it: (status, source, row).
    #[serde(skip)]
    assignments: HashMap<String, (String, String, usize)>,
    /// Answers dropped as repeats of a kept one: one of them takes the kept answer's place if
    /// a later download rejects it (the worker lost both; found by a hostile pass).
    #[serde(skip)]
    repeats_dropped: Vec<AmtRecord>,
}

/// A requester's decision on an assignment (the other status, `Submitted`, awaits one).
fn decided(status: &str) -> bool {
    status == "Approved" || status == "Rejected"
}

impl AmtBatch {
    /// The class list: `opts.classes`, or the labels seen, sorted.
    pub fn classes(&self, opts: &AmtOptions) -> Vec<String> {
        if !opts.classes.is_empty() {
            return opts.classes.clone();
        }
        let mut v: Vec<String> = self.records.iter().map(|r| r.label.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Dense answers (items in first-seen order).
    pub fn to_answers(&self, classes: &[String]) -> Result<Answers> {
        let mut b = AnswersBuilder::new(classes);
        for r in &self.records {
            b.push(&r.item, &r.worker, &r.label).map_err(|l| CrowdError::Row {
                source_name: r.source.clone(),
                row: r.row,
                message: format!("label \"{l}\" is not one of {classes:?}"),
            })?;
        }
        b.build()
    }
}

/// The label in `Answer.taskAnswers` JSON (`[{"<question>": {"label": "fear"}}]`): of
/// `question` when given; else the only question's, and an error naming the questions when
/// the answers hold several (the first in key order was taken: another question's answers,
/// silently; found by a hostile pass).
pub(crate) fn answer_from_json_for(text: &str, question: Option<&str>) -> std::result::Result<Option<String>, String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return Ok(None) };
    // every (question key, label) pair; a bare {"label": ...} has the key ""
    fn find(v: &serde_json::Value, key: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(s)) = m.get("label") {
                    out.push((key.to_string(), s.clone()));
                }
                for (k, x) in m {
                    find(x, k, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| find(x, key, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    find(&v, "", &mut found);
    if let Some(q) = question {
        return Ok(found.into_iter().find(|(k, _)| k == q).map(|(_, l)| l));
    }
    let mut keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    keys.dedup();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() > 1 {
        return Err(format!("Answer.taskAnswers answers several questions ({}): name the one to use with `question` (`--question` for `pipeline aggregate`)", keys.join(", ")));
    }
    Ok(found.into_iter().next().map(|(_, l)| l))
}

/// Parse one batch-results CSV text and append to `batch`.
pub fn parse_amt_into(batch: &mut AmtBatch, text: &str, source: &str, opts: &AmtOptions) -> Result<()> {
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
    let header = rdr
        .headers()
        .map_err(|e| CrowdError::Format { source_name: source.into(), message: format!("header: {e}") })?
        .clone();
    let col = |name: &str| header.iter().position(|h| h == name);
    let need = |name: &str| {
        col(name).ok_or_else(|| CrowdError::MissingColumn { source_name: source.into(), column: name.into() })
    };
    let worker_c = need("WorkerId")?;
    let hit_c = need("HITId")?;
    let status_c = col("AssignmentStatus");
    let assign_c = col("AssignmentId");
    let time_c = col("WorkTimeInSeconds");
    let json_c = col("Answer.taskAnswers");
    let label_cols: Vec<usize> = (0..header.len()).filter(|&i| header[i].starts_with("Answer.") && header[i].ends_with(".label")).collect();
    let label_c = match &opts.question {
        Some(q) => {
            let want = format!("Answer.{q}.label");
            match col(&want) {
                Some(c) => Some(c),
                None if json_c.is_some() => None,
                None => return Err(CrowdError::MissingColumn { source_name: source.into(), column: want }),
            }
        }
        // several questions: which one is the label is the user's to say (the first column was
        // taken, another question's answers, silently; found by a hostile pass)
        None if label_cols.len() > 1 => {
            let names: Vec<&str> = label_cols.iter().map(|&i| &header[i]).collect();
            return Err(CrowdError::Format {
                source_name: source.into(),
                message: format!("several answer columns ({}): name the question to use with `question` (`--question` for `pipeline aggregate`; `{}` for `{}`)", names.join(", "), names[0].trim_start_matches("Answer.").trim_end_matches(".label"), names[0]),
            });
        }
        None => label_cols.first().copied(),
    };
    if label_c.is_none() && json_c.is_none() {
        return Err(CrowdError::MissingColumn {
            source_name: source.into(),
            column: "Answer.<name>.label or Answer.taskAnswers".into(),
        });
    }
    let item_c = match &opts.item_column {
        Some(c) => need(c)?,
        None => col("Input.image_url").unwrap_or(hit_c),
    };
    let inputs: Vec<(usize, String)> = header
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.strip_prefix("Input.").map(|n| (i, n.to_string())))
        .collect();
    for (_, n) in &inputs {
        if !batch.input_columns.contains(n) {
            batch.input_columns.push(n.clone());
        }
    }
    let classes: HashSet<&str> = opts.classes.iter().map(|s| s.as_str()).collect();
    let mut repeats = Repeats::of(&batch.records);
    // Assignments kept before that a later download shows rejected (or otherwise no longer
    // kept): their answers are taken out at the end. Two downloads of one batch, the newer
    // with 7 assignments rejected, kept all of them (found by a hostile pass).
    let mut revoked: HashSet<String> = HashSet::new();
    for (n, rec) in rdr.records().enumerate() {
        let line = n + 2;
        let rec = rec.map_err(|e| CrowdError::Row { source_name: source.into(), row: line, message: e.to_string() })?;
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        batch.report.rows += 1;
        let get = |i: usize| rec.get(i).unwrap_or("").trim();
        let mut status = status_c.map(get).unwrap_or("").to_string();
        let assignment = assign_c.map(get).unwrap_or("");
        if status_c.is_some() && !assignment.is_empty() {
            match batch.assignments.get(assignment).cloned() {
                None => {
                    batch.assignments.insert(assignment.to_string(), (status.clone(), source.to_string(), line));
                }
                Some((prev, psrc, prow)) if prev != status => {
                    if decided(&prev) && decided(&status) {
                        return Err(CrowdError::Row {
                            source_name: source.into(),
                            row: line,
                            message: format!(
                                "assignment {assignment} is {status} here but {prev} in {psrc} row {prow}: two downloads disagree on a decision; keep only the newer download"
                            ),
                        });
                    }
                    if decided(&prev) {
                        // a decision outlives a download made before it
                        status = prev;
                    } else {
                        // this download is the newer one: its status replaces the earlier
                        let kept_before = opts.statuses.iter().any(|s| s == &prev);
                        if kept_before && !opts.statuses.iter().any(|s| s == &status) {
                            revoked.insert(assignment.to_string());
                        }
                        batch.assignments.insert(assignment.to_string(), (status.clone(), source.to_string(), line));
                    }
                }
                Some(_) => {}
            }
        }
        if status_c.is_some() && !opts.statuses.iter().any(|s| s == &status) {
            *batch.report.dropped_status.entry(status).or_default() += 1;
            continue;
        }
        let worker = get(worker_c).to_string();
        if worker.is_empty() {
            return Err(CrowdError::Row { source_name: source.into(), row: line, message: "empty WorkerId".into() });
        }
        let item = get(item_c).to_string();
        if item.is_empty() {
            return Err(CrowdError::Row {
                source_name: source.into(),
                row: line,
                message: format!("empty item column \"{}\"", &header[item_c]),
            });
        }
        let label = match label_c.map(get).filter(|s| !s.is_empty()) {
            Some(l) => l.to_string(),
            None => {
                let row_err = |message: String| CrowdError::Row { source_name: source.into(), row: line, message };
                let from_json = match json_c.map(get) {
                    Some(t) => answer_from_json_for(t, opts.question.as_deref()).map_err(row_err)?,
                    None => None,
                };
                from_json.ok_or_else(|| row_err("no answer (empty Answer.*.label and no label in Answer.taskAnswers)".into()))?
            }
        };
        if !classes.is_empty() && !classes.contains(label.as_str()) {
            match opts.on_unknown_label {
                OnUnknownLabel::Error => {
                    return Err(CrowdError::Row {
                        source_name: source.into(),
                        row: line,
                        message: format!("label \"{label}\" is not one of {:?}", opts.classes),
                    })
                }
                OnUnknownLabel::Drop => {
                    batch.report.unknown_labels.push((source.into(), line, label));
                    continue;
                }
            }
        }
        let work_time_s = time_c.map(get).and_then(|s| s.parse::<f64>().ok());
        let record = AmtRecord {
            source: source.into(),
            row: line,
            item,
            hit_id: get(hit_c).to_string(),
            assignment_id: assign_c.map(get).unwrap_or("").to_string(),
            worker,
            status,
            label,
            work_time_s,
            inputs: inputs.iter().map(|(i, n)| (n.clone(), get(*i).to_string())).collect(),
        };
        if opts.dedupe && repeats.is_repeat(&mut batch.report, &record.worker, &record.item, &record.label) {
            batch.repeats_dropped.push(record);
            continue;
        }
        batch.records.push(record);
        batch.report.kept += 1;
    }
    if !revoked.is_empty() {
        let (assignments, report) = (&batch.assignments, &mut batch.report);
        batch.records.retain(|r| {
            if !revoked.contains(&r.assignment_id) {
                return true;
            }
            // dropped for the status it has now
            let st = assignments.get(&r.assignment_id).map(|a| a.0.clone()).unwrap_or_default();
            *report.dropped_status.entry(st).or_default() += 1;
            report.kept -= 1;
            false
        });
        // a repeat dropped for an answer now gone takes its place: the first one whose own
        // assignment is still kept, and only where no answer of that worker on that item is left
        let kept_status = |a: &str| batch.assignments.get(a).map(|x| opts.statuses.iter().any(|s| s == &x.0)).unwrap_or(true);
        let mut have: HashSet<(String, String)> = batch.records.iter().map(|r| (r.worker.clone(), r.item.clone())).collect();
        let mut back = Vec::new();
        for r in &batch.repeats_dropped {
            if !revoked.contains(&r.assignment_id) && kept_status(&r.assignment_id) && have.insert((r.worker.clone(), r.item.clone())) {
                back.push(r.clone());
            }
        }
        for r in back {
            batch.report.kept += 1;
            batch.report.duplicates = batch.report.duplicates.saturating_sub(1);
            batch.records.push(r);
        }
    }
    Ok(())
}

/// Parse one batch-results CSV text.
pub fn parse_amt_batch(text: &str, source: &str, opts: &AmtOptions) -> Result<AmtBatch> {
    let mut b = AmtBatch::default();
    parse_amt_into(&mut b, text, source, opts)?;
    Ok(b)
}

/// Parse crowd-kit style `worker,task,label` CSV (extra columns ignored). Classes: labels
/// sorted numerically when all are integers, else as text.
pub fn parse_crowdkit_csv(text: &str, source: &str) -> Result<Answers> {
    Ok(parse_crowdkit_csv_with(text, source, &[], OnUnknownLabel::Error)?.0)
}

/// [`parse_crowdkit_csv`] with a class list: `classes` empty = the labels seen (sorted as
/// there); else these classes in this order, and a label outside them fails naming the row
/// (`Error`) or is dropped (`Drop`, counted in the returned number).
///
/// One pass over the text: fields are borrowed from it (a file without `"` is split by
/// hand, one with quotes goes through the csv reader), names interned with a hash map of
/// borrowed keys, answers kept as three `u32` columns: no per-row allocation.
pub fn parse_crowdkit_csv_with(
    text: &str,
    source: &str,
    classes: &[String],
    on_unknown: OnUnknownLabel,
) -> Result<(Answers, usize)> {
    // a UTF-8 byte order mark (Excel's "CSV UTF-8") is not part of the first column's name
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let fmt_err = |message: String| CrowdError::Format { source_name: source.into(), message };
    // quoted files: the rows' fields copied once (declared first: the maps borrow from it)
    let mut owned: Vec<(String, String, String)> = Vec::new();
    let mut items: FastMap = FastMap::default();
    let mut workers: FastMap = FastMap::default();
    let mut labels: FastMap = FastMap::default();
    let (mut col_i, mut col_w, mut col_l) = (Vec::new(), Vec::new(), Vec::new());
    let mut cols: Option<(usize, usize, usize, Vec<String>)> = None;
    fn handle<'t>(
        source: &str,
        line: usize,
        fields: &[&'t str],
        cols: &(usize, usize, usize, Vec<String>),
    ) -> Result<(&'t str, &'t str, &'t str)> {
        let get = |i: usize| -> Result<&'t str> {
            match fields.get(i).map(|s| s.trim()) {
                Some(s) if !s.is_empty() => Ok(s),
                _ => Err(CrowdError::Row { source_name: source.into(), row: line, message: format!("empty field \"{}\"", cols.3[i]) }),
            }
        };
        Ok((get(cols.0)?, get(cols.1)?, get(cols.2)?))
    }
    let header_cols = |h: &[&str]| -> Result<(usize, usize, usize, Vec<String>)> {
        let need = |name: &str| {
            h.iter()
                .position(|x| x.trim() == name)
                .ok_or_else(|| CrowdError::MissingColumn { source_name: source.into(), column: name.into() })
        };
        Ok((need("worker")?, need("task")?, need("label")?, h.iter().map(|x| x.trim().to_string()).collect()))
    };
    if !text.as_bytes().contains(&b'"') {
        // the header: the first non-empty line
        let mut rest = text;
        while !rest.is_empty() {
            let (raw, tail) = match rest.find('\n') {
                Some(e) => (&rest[..e], &rest[e + 1..]),
                None => (rest, ""),
            };
            rest = tail;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if !line.is_empty() {
                let fields: Vec<&str> = line.split(',').collect();
                cols = Some(header_cols(&fields)?);
                break;
            }
        }
        if let Some(c) = &cols {
            let chunks = plain_chunks(rest);
            // the first piece's table sized for the whole file's names: the others merge into it
            let all_rows = memchr::memchr_iter(b'\n', rest.as_bytes()).count() + 1;
            let parsed: Vec<Option<Plain>> = chunks
                .par_iter()
                .enumerate()
                .map(|(n, t)| parse_plain(t, source, c, if n == 0 { all_rows } else { 0 }).ok())
                .collect();
            if parsed.iter().any(Option::is_none) {
                // the first bad row, numbered from the top: the whole body again, in one piece
                return Err(parse_plain(rest, source, c, 0).err().unwrap_or_else(|| fmt_err("unreadable row".into())));
            }
            let mut parsed = parsed.into_iter().flatten();
            let first = parsed.next().expect("at least one chunk");
            (items, workers, labels) = (first.items, first.workers, first.labels);
            (col_i, col_w, col_l) = (first.col_i, first.col_w, first.col_l);
            // Later chunks' names after the first's, in their own first-seen order: the
            // indices a single pass over the whole file gives.
            for p in parsed {
                items.reserve(p.items.names.len());
                let (ri, rw, rl) = (items.remap(&p.items), workers.remap(&p.workers), labels.remap(&p.labels));
                col_i.extend(p.col_i.iter().map(|&x| ri[x as usize]));
                col_w.extend(p.col_w.iter().map(|&x| rw[x as usize]));
                col_l.extend(p.col_l.iter().map(|&x| rl[x as usize]));
            }
        }
    } else {
        // quoted fields: the csv reader, each field copied once into a string arena
        let mut rdr = csv::ReaderBuilder::new().flexible(true).has_headers(false).from_reader(text.as_bytes());
        let mut rec = csv::StringRecord::new();
        let mut n = 0usize;
        loop {
            match rdr.read_record(&mut rec) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => return Err(CrowdError::Row { source_name: source.into(), row: n + 2, message: e.to_string() }),
            }
            let fields: Vec<&str> = rec.iter().collect();
            match &cols {
                None => cols = Some(header_cols(&fields)?),
                Some(c) => {
                    n += 1;
                    let (w, t, l) = handle(source, n + 1, &fields, c)?;
                    owned.push((w.to_string(), t.to_string(), l.to_string()));
                }
            }
        }
        for (w, t, l) in owned.iter() {
            col_i.push(items.intern(t));
            col_w.push(workers.intern(w));
            col_l.push(labels.intern(l));
        }
    }
    if cols.is_none() {
        return Err(fmt_err("header: no header row (expected worker,task,label)".into()));
    }
    // the class list and each seen label's place in it
    let seen: Vec<&str> = labels.names.clone();
    let class_list: Vec<String> = if classes.is_empty() {
        let mut c: Vec<String> = seen.iter().map(|s| s.to_string()).collect();
        c.sort();
        if c.iter().all(|x| x.parse::<i64>().is_ok()) {
            c.sort_by_key(|x| x.parse::<i64>().unwrap_or(0));
        }
        if c.is_empty() {
            // no answers at all: placeholder classes; the caller reports "no answers"
            c.push("none".into());
        }
        if c.len() < 2 {
            // a single observed label: still two classes so the models are defined
            c.push(format!("{}_other", c.first().cloned().unwrap_or_default()));
        }
        c
    } else {
        classes.to_vec()
    };
    let place: Vec<Option<u32>> = seen.iter().map(|l| class_list.iter().position(|c| c == l).map(|p| p as u32)).collect();
    let mut dropped = 0usize;
    if place.iter().any(Option::is_none) {
        match on_unknown {
            OnUnknownLabel::Error => {
                let (n, l) = col_l
                    .iter()
                    .enumerate()
                    .find(|(_, &l)| place[l as usize].is_none())
                    .map(|(n, &l)| (n, seen[l as usize]))
                    .unwrap_or((0, ""));
                return Err(CrowdError::Row {
                    source_name: source.into(),
                    row: n + 2,
                    message: format!("label \"{l}\" is not one of {class_list:?}"),
                });
            }
            OnUnknownLabel::Drop => {
                let mut keep = 0;
                for n in 0..col_l.len() {
                    if place[col_l[n] as usize].is_some() {
                        col_i[keep] = col_i[n];
                        col_w[keep] = col_w[n];
                        col_l[keep] = col_l[n];
                        keep += 1;
                    } else {
                        dropped += 1;
                    }
                }
                col_i.truncate(keep);
                col_w.truncate(keep);
                col_l.truncate(keep);
            }
        }
    }
    for l in col_l.iter_mut() {
        *l = place[*l as usize].unwrap_or(0);
    }
    let mut items: Vec<String> = items.names.par_iter().with_min_len(4096).map(|s| s.to_string()).collect();
    let mut workers: Vec<String> = workers.names.iter().map(|s| s.to_string()).collect();
    if dropped > 0 {
        // Found by a hostile pass: an item whose answers were all dropped still got a label
        // (the class prior's) and counted among the items; a worker left without answers sat
        // in the report. Both are left out, as the AMT reader does.
        keep_used(&mut items, &mut col_i);
        keep_used(&mut workers, &mut col_w);
    }
    Ok((Answers::from_columns(items, workers, class_list, &col_i, &col_w, &col_l)?, dropped))
}

/// Drops the names no index in `col` refers to, renumbering `col` (order kept).
fn keep_used(names: &mut Vec<String>, col: &mut [u32]) {
    let new = crate::data::compact_ids(names.len(), col.iter().map(|&x| x as usize));
    let mut i = 0;
    names.retain(|_| {
        i += 1;
        new[i - 1] != u32::MAX
    });
    for x in col.iter_mut() {
        *x = new[*x as usize];
    }
}

/// The empty field error of `row` (1 = the header), as the reader reports it.
fn empty_field(source: &str, row: usize, name: &str) -> CrowdError {
    CrowdError::Row { source_name: source.into(), row, message: format!("empty field \"{name}\"") }
}

/// One piece of an unquoted crowd-kit CSV, interned on its own.
struct Plain<'t> {
    items: FastMap<'t>,
    workers: FastMap<'t>,
    labels: FastMap<'t>,
    col_i: Vec<u32>,
    col_w: Vec<u32>,
    col_l: Vec<u32>,
}

/// The body of an unquoted file cut at line ends into one piece per thread (one piece when
/// small), so the pieces are parsed in parallel.
fn plain_chunks(body: &str) -> Vec<&str> {
    let parts = if body.len() >= 1 << 20 { rayon::current_num_threads().max(1) } else { 1 };
    let b = body.as_bytes();
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 1..parts {
        let target = (b.len() * p / parts).max(start);
        let end = match memchr::memchr(b'\n', &b[target..]) {
            Some(e) => target + e + 1,
            None => b.len(),
        };
        out.push(&body[start..end]);
        start = end;
    }
    out.push(&body[start..]);
    out
}

/// Data rows of an unquoted piece (rows split on `,`, fields trimmed; empty lines skipped);
/// rows are numbered from 2, as if the piece followed the header directly.
fn parse_plain<'t>(text: &'t str, source: &str, cols: &(usize, usize, usize, Vec<String>), item_rows: usize) -> Result<Plain<'t>> {
    let b = text.as_bytes();
    let rows = memchr::memchr_iter(b'\n', b).count() + 1;
    let mut p = Plain {
        items: FastMap::default(),
        workers: FastMap::default(),
        labels: FastMap::default(),
        col_i: Vec::with_capacity(rows),
        col_w: Vec::with_capacity(rows),
        col_l: Vec::with_capacity(rows),
    };
    // a guess (for `item_rows` rows, at least this piece's) that saves most rehashing
    // without holding much unused memory
    p.items.reserve(rows.max(item_rows) / 4);
    let (ci, cw, cl) = (cols.1, cols.0, cols.2);
    let need = ci.max(cw).max(cl) + 1;
    let mut n = 0usize;
    let mut pos = 0usize;
    while pos < b.len() {
        let end = memchr::memchr(b'\n', &b[pos..]).map_or(b.len(), |e| pos + e);
        let raw = &text[pos..end];
        pos = end + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        n += 1;
        // the fields the three columns name, trimmed; a missing one is empty
        let mut f: [&'t str; 3] = [""; 3];
        let mut field = 0usize;
        let mut s = 0usize;
        let lb = line.as_bytes();
        loop {
            let e = memchr::memchr(b',', &lb[s..]).map_or(lb.len(), |e| s + e);
            if field == ci {
                f[0] = line[s..e].trim();
            }
            if field == cw {
                f[1] = line[s..e].trim();
            }
            if field == cl {
                f[2] = line[s..e].trim();
            }
            field += 1;
            if e == lb.len() || field == need {
                break;
            }
            s = e + 1;
        }
        // the reader's order of checks: worker, task, label
        for (v, c) in [(f[1], cw), (f[0], ci), (f[2], cl)] {
            if v.is_empty() {
                return Err(empty_field(source, n + 1, &cols.3[c]));
            }
        }
        p.col_i.push(p.items.intern(f[0]));
        p.col_w.push(p.workers.intern(f[1]));
        p.col_l.push(p.labels.intern(f[2]));
    }
    Ok(p)
}

/// Interning: name -> first-seen index, in an open-addressing table of 8-byte slots (the
/// hash's high half and the index) with a fast non-cryptographic hash: an item table of a
/// million names is a third the size of a `HashMap<&str, u32>`, so fewer cache misses.
/// Names come from one file; nothing here is exposed to collision attacks that matter.
struct FastMap<'a> {
    /// `(hash >> 32) << 32 | (index + 1)`; 0 = empty. Length a power of two, at most half full.
    slots: Vec<u64>,
    names: Vec<&'a str>,
    last: Option<(&'a str, u32)>,
}

impl<'a> Default for FastMap<'a> {
    fn default() -> Self {
        FastMap { slots: Vec::new(), names: Vec::new(), last: None }
    }
}

impl<'a> FastMap<'a> {
    /// `local`'s names interned here, in their order: the index of each here.
    fn remap(&mut self, local: &FastMap<'a>) -> Vec<u32> {
        local.names.iter().map(|&s| self.intern_new(s)).collect()
    }

    fn reserve(&mut self, n: usize) {
        self.names.reserve(n);
        let want = ((self.names.len() + n) * 2).next_power_of_two().max(16);
        if want > self.slots.len() {
            self.rehash(want);
        }
    }

    fn rehash(&mut self, size: usize) {
        let mut slots = vec![0u64; size];
        let mask = size - 1;
        for (i, s) in self.names.iter().enumerate() {
            let h = str_hash(s.as_bytes());
            let mut p = h as usize & mask;
            while slots[p] != 0 {
                p = (p + 1) & mask;
            }
            slots[p] = (h & !0xffff_ffff) | (i as u64 + 1);
        }
        self.slots = slots;
    }

    #[inline]
    fn intern(&mut self, s: &'a str) -> u32 {
        // the same name as the row before (answers of one item are usually adjacent)
        if let Some(&(last, i)) = self.last.as_ref() {
            if last == s {
                return i;
            }
        }
        let i = self.intern_new(s);
        self.last = Some((s, i));
        i
    }

    #[inline]
    fn intern_new(&mut self, s: &'a str) -> u32 {
        if (self.names.len() + 1) * 2 > self.slots.len() {
            self.rehash((self.slots.len() * 2).max(16));
        }
        let h = str_hash(s.as_bytes());
        let tag = h & !0xffff_ffff;
        let mask = self.slots.len() - 1;
        let mut p = h as usize & mask;
        loop {
            let v = self.slots[p];
            if v == 0 {
                let n = self.names.len() as u32;
                self.slots[p] = tag | (n as u64 + 1);
                self.names.push(s);
                return n;
            }
            if v & !0xffff_ffff == tag {
                let i = (v & 0xffff_ffff) as u32 - 1;
                if same(self.names[i as usize].as_bytes(), s.as_bytes()) {
                    return i;
                }
            }
            p = (p + 1) & mask;
        }
    }
}

/// `a == b`, inline for short names (most ids), without a call to `memcmp`.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= 8 {
        let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
        x[..a.len()].copy_from_slice(a);
        y[..b.len()].copy_from_slice(b);
        return x == y;
    }
    a == b
}

/// FxHash-style (one multiply per 8 bytes), then mixed so that both halves (the slot and the
/// tag) depend on every input bit.
#[inline]
fn str_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ v).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
    }
    crate::mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: &str = "\"HITId\",\"WorkerId\",\"AssignmentStatus\",\"WorkTimeInSeconds\",\"Input.image_url\",\"Input.label\",\"Answer.category.label\",\"Approve\",\"Reject\"\n\
\"H1\",\"W1\",\"Submitted\",\"11\",\"u/a.jpg\",\"fear\",\"happy\"\n\
\"H1\",\"W2\",\"Rejected\",\"5\",\"u/a.jpg\",\"fear\",\"sad\"\n\
\"H1\",\"W1\",\"Submitted\",\"7\",\"u/a.jpg\",\"fear\",\"sad\"\n\
\"H2\",\"W2\",\"Approved\",\"3\",\"u/b.jpg\",\"sad\",\"sad\"\n";

    fn opts() -> AmtOptions {
        AmtOptions { classes: vec!["happy".into(), "sad".into()], ..AmtOptions::default() }
    }

    #[test]
    fn short_rows_status_filter_and_dedupe() {
        let b = parse_amt_batch(SHORT, "b.csv", &opts()).unwrap();
        assert_eq!(b.report.rows, 4);
        assert_eq!(b.records.len(), 2);
        assert_eq!(b.report.dropped_status.get("Rejected"), Some(&1));
        assert_eq!(b.report.duplicates, 1);
        // W1 answered happy first, then sad: the repeat disagrees
        assert_eq!(b.report.duplicates_conflicting, 1);
        let r = &b.records[0];
        assert_eq!((r.item.as_str(), r.worker.as_str(), r.label.as_str(), r.row), ("u/a.jpg", "W1", "happy", 2));
        assert_eq!(r.work_time_s, Some(11.0));
        assert_eq!(b.input_columns, vec!["image_url", "label"]);
        assert_eq!(r.inputs[1], ("label".to_string(), "fear".to_string()));
        let a = b.to_answers(&b.classes(&opts())).unwrap();
        assert_eq!((a.n_items(), a.n_workers(), a.n_answers()), (2, 2, 2));
    }

    /// Two downloads of one batch, the newer after a rejection: the rejected assignment's
    /// answers are dropped whichever file is read first (all were kept, found by a hostile
    /// pass); two downloads that disagree on a decision are an error naming both.
    #[test]
    fn a_newer_download_with_a_rejection_drops_the_assignment_in_either_order() {
        let head = "\"HITId\",\"AssignmentId\",\"WorkerId\",\"AssignmentStatus\",\"Input.image_url\",\"Answer.category.label\"\n";
        let old = format!("{head}H1,A1,W1,Submitted,u/a.jpg,happy\nH1,A2,W2,Submitted,u/a.jpg,sad\nH2,A3,W1,Submitted,u/b.jpg,sad\nH3,A4,W2,Submitted,u/a.jpg,happy\n");
        let new = format!("{head}H1,A1,W1,Approved,u/a.jpg,happy\nH1,A2,W2,Rejected,u/a.jpg,sad\nH2,A3,W1,Submitted,u/b.jpg,sad\nH3,A4,W2,Submitted,u/a.jpg,happy\n");
        for (first, second) in [(&old, &new), (&new, &old)] {
            let mut b = AmtBatch::default();
            parse_amt_into(&mut b, first, "1.csv", &opts()).unwrap();
            parse_amt_into(&mut b, second, "2.csv", &opts()).unwrap();
            // W2's other assignment on the same item (a repeat of the rejected one) is kept
            let mut kept: Vec<&str> = b.records.iter().map(|r| r.assignment_id.as_str()).collect();
            kept.sort();
            assert_eq!(kept, ["A1", "A3", "A4"], "{first} then {second}");
            assert_eq!(b.report.kept, 3);
            assert_eq!(b.report.dropped_status.get("Rejected"), Some(&2), "{:?}", b.report);
        }
        let approved_elsewhere = format!("{head}H1,A2,W2,Approved,u/a.jpg,sad\n");
        let mut b = AmtBatch::default();
        parse_amt_into(&mut b, &new, "new.csv", &opts()).unwrap();
        let e = parse_amt_into(&mut b, &approved_elsewhere, "other.csv", &opts()).unwrap_err().to_string();
        assert!(e.contains("other.csv") && e.contains("A2") && e.contains("new.csv row 3"), "{e}");
    }

    /// Found by a hostile pass: with a second question's column first, its answers were
    /// taken for the labels without a word (JSON answers too: the first key in order).
    #[test]
    fn several_questions_need_the_question_named() {
        let csv = "HITId,WorkerId,Input.image_url,Answer.alternative.label,Answer.category.label\nH1,W1,u/a.jpg,sad,happy\n";
        let e = parse_amt_batch(csv, "b.csv", &opts()).unwrap_err().to_string();
        assert!(e.contains("b.csv") && e.contains("Answer.alternative.label, Answer.category.label") && e.contains("question"), "{e}");
        let o = AmtOptions { question: Some("category".into()), ..opts() };
        assert_eq!(parse_amt_batch(csv, "b.csv", &o).unwrap().records[0].label, "happy");
        let missing = AmtOptions { question: Some("mood".into()), ..opts() };
        assert!(parse_amt_batch(csv, "b.csv", &missing).unwrap_err().to_string().contains("Answer.mood.label"));
        let json = "HITId,WorkerId,Input.image_url,Answer.taskAnswers\nH1,W1,u/a.jpg,\"[{\"\"alt\"\":{\"\"label\"\":\"\"sad\"\"},\"\"category\"\":{\"\"label\"\":\"\"happy\"\"}}]\"\n";
        let e = parse_amt_batch(json, "j.csv", &opts()).unwrap_err().to_string();
        assert!(e.contains("j.csv: row 2") && e.contains("alt, category"), "{e}");
        assert_eq!(parse_amt_batch(json, "j.csv", &o).unwrap().records[0].label, "happy");
        // one question: as before
        let one = "HITId,WorkerId,Input.image_url,Answer.taskAnswers\nH1,W1,u/a.jpg,\"[{\"\"category\"\":{\"\"label\"\":\"\"sad\"\"}}]\"\n";
        assert_eq!(parse_amt_batch(one, "j.csv", &opts()).unwrap().records[0].label, "sad");
    }

    #[test]
    fn no_dedupe_keeps_both() {
        let b = parse_amt_batch(SHORT, "b.csv", &AmtOptions { dedupe: false, ..opts() }).unwrap();
        assert_eq!(b.records.len(), 3);
    }

    #[test]
    fn unknown_label_error_names_the_row_or_drops() {
        let o = AmtOptions { classes: vec!["happy".into()], ..AmtOptions::default() };
        let e = parse_amt_batch(SHORT, "b.csv", &o).unwrap_err().to_string();
        assert!(e.contains("b.csv: row 4") && e.contains("\"sad\""), "{e}");
        let b = parse_amt_batch(SHORT, "b.csv", &AmtOptions { on_unknown_label: OnUnknownLabel::Drop, ..o }).unwrap();
        assert_eq!(b.records.len(), 1);
        assert_eq!(b.report.unknown_labels, vec![("b.csv".into(), 4, "sad".into()), ("b.csv".into(), 5, "sad".into())]);
    }

    #[test]
    fn task_answers_json_column() {
        let t = "HITId,WorkerId,AssignmentStatus,Input.image_url,Answer.taskAnswers\n\
H1,W1,Submitted,a.jpg,\"[{\"\"category\"\":{\"\"label\"\":\"\"happy\"\"}}]\"\n";
        let b = parse_amt_batch(t, "j.csv", &AmtOptions::default()).unwrap();
        assert_eq!(b.records[0].label, "happy");
        assert_eq!(b.classes(&AmtOptions::default()), vec!["happy"]);
    }

    #[test]
    fn missing_columns_are_named() {
        let e = parse_amt_batch("HITId,Answer.x.label\nH,a\n", "m.csv", &AmtOptions::default()).unwrap_err();
        assert!(e.to_string().contains("\"WorkerId\""), "{e}");
        let e = parse_amt_batch("HITId,WorkerId\nH,W\n", "m.csv", &AmtOptions::default()).unwrap_err();
        assert!(e.to_string().contains("Answer."), "{e}");
    }

    #[test]
    fn crowdkit_csv_numeric_classes() {
        let a = parse_crowdkit_csv("worker,task,label\n1,t1,10\n2,t1,2\n1,t2,2\n", "c.csv").unwrap();
        assert_eq!(a.classes, vec!["2", "10"]);
        assert_eq!(a.n_items(), 2);
        let e = parse_crowdkit_csv("worker,task\n1,2\n", "c.csv").unwrap_err();
        assert!(e.to_string().contains("\"label\""));
    }

    #[test]
    fn real_batch_file_parses() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/datasets/seed-study/amt/Batch_4350992_batch_results.csv");
        let Ok(text) = std::fs::read_to_string(p) else {
            eprintln!("skipped: {p} not found");
            return;
        };
        let o = AmtOptions { classes: crate::EMOTIONS.iter().map(|s| s.to_string()).collect(), ..AmtOptions::default() };
        let b = parse_amt_batch(&text, "batch", &o).unwrap();
        assert_eq!(b.records.len(), 2100);
        let a = b.to_answers(&o.classes).unwrap();
        assert_eq!((a.n_items(), a.n_workers()), (700, 73));
    }

    #[test]
    fn a_large_plain_file_read_in_pieces_matches_the_csv_reader() {
        // > 1 MB: the plain reader splits it across threads; names recur across the pieces
        let mut plain = String::from("task, worker ,label,extra\n");
        for r in 0..120_000usize {
            let item = (r * 7919) % 40_000;
            plain.push_str(&format!("item-{item},w{},{}{}\n", (r * 31) % 997, ["x", "y", "z"][r % 3], if r % 5 == 0 { ",more" } else { "" }));
            if r % 1000 == 0 {
                plain.push('\n');
            }
        }
        assert!(plain.len() > 1 << 20);
        let quoted = plain.replacen("task", "\"task\"", 1);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let (a, _) = pool.install(|| parse_crowdkit_csv_with(&plain, "p.csv", &[], OnUnknownLabel::Error)).unwrap();
        let (b, _) = parse_crowdkit_csv_with(&quoted, "q.csv", &[], OnUnknownLabel::Error).unwrap();
        assert_eq!((&a.items, &a.workers, &a.classes), (&b.items, &b.workers, &b.classes));
        assert_eq!((&a.offsets, &a.codes), (&b.offsets, &b.codes));
        // a bad row late in the file is named as the csv reader names it
        let at = plain.len() * 9 / 10;
        let cut = at + plain[at..].find('\n').unwrap() + 1;
        let bad = format!("{}item-1,,x\n{}", &plain[..cut], &plain[cut..]);
        let e1 = pool.install(|| parse_crowdkit_csv_with(&bad, "b.csv", &[], OnUnknownLabel::Error)).unwrap_err().to_string();
        let e2 = parse_crowdkit_csv_with(&bad.replacen("task", "\"task\"", 1), "b.csv", &[], OnUnknownLabel::Error).unwrap_err().to_string();
        assert!(e1.contains("\"worker\""), "{e1}");
        assert_eq!(e1, e2);
    }

    #[test]
    fn fast_crowdkit_reader_quoted_crlf_classes_and_drop() {
        let plain = "worker,task,label\r\nw1,t1,b\r\nw2,t1,a\r\n\r\nw1,t2,a\r\n";
        let quoted = "\"worker\",\"task\",\"label\"\nw1,\"t1\",b\nw2,t1,\"a\"\nw1,t2,a\n";
        let (a, d) = parse_crowdkit_csv_with(plain, "p.csv", &[], OnUnknownLabel::Error).unwrap();
        let (b, _) = parse_crowdkit_csv_with(quoted, "q.csv", &[], OnUnknownLabel::Error).unwrap();
        assert_eq!(d, 0);
        for x in [&a, &b] {
            assert_eq!(x.classes, vec!["a", "b"]);
            assert_eq!(x.items, vec!["t1", "t2"]);
            assert_eq!(x.workers, vec!["w1", "w2"]);
            assert_eq!(x.offsets, vec![0, 2, 3]);
        }
        assert_eq!(a.codes, b.codes);
        // given classes: order kept, an unknown label fails naming the row, or is dropped
        let cls = vec!["b".to_string(), "c".to_string()];
        let e = parse_crowdkit_csv_with(plain, "p.csv", &cls, OnUnknownLabel::Error).unwrap_err().to_string();
        assert!(e.contains("p.csv: row 3") && e.contains("\"a\""), "{e}");
        let (c, d) = parse_crowdkit_csv_with(plain, "p.csv", &cls, OnUnknownLabel::Drop).unwrap();
        assert_eq!((d, c.n_answers(), c.classes.clone()), (2, 1, cls));
        // empty fields and missing columns are named
        let e = parse_crowdkit_csv_with("worker,task,label\nw1,,a\n", "e.csv", &[], OnUnknownLabel::Error).unwrap_err();
        assert!(e.to_string().contains("row 2") && e.to_string().contains("\"task\""), "{e}");
        let (z, _) = parse_crowdkit_csv_with("worker,task,label\n", "z.csv", &[], OnUnknownLabel::Error).unwrap();
        assert_eq!(z.n_answers(), 0);
    }

    /// Found by a hostile pass: an item whose every answer was dropped (`drop`) still got a
    /// label from the class prior and counted among the items.
    #[test]
    fn items_and_workers_left_without_answers_by_drop_are_left_out() {
        let cls = vec!["a".to_string(), "b".to_string()];
        for text in ["worker,task,label\nw1,t1,a\nw2,t1,a\nw3,t2,zzz\nw1,t3,b\n", "worker,task,label\nw1,t1,a\nw2,t1,a\nw3,\"t2\",zzz\nw1,t3,b\n"] {
            let (x, d) = parse_crowdkit_csv_with(text, "d.csv", &cls, OnUnknownLabel::Drop).unwrap();
            assert_eq!(d, 1);
            assert_eq!(x.items, vec!["t1", "t3"]);
            assert_eq!(x.workers, vec!["w1", "w2"]);
            let got: Vec<Vec<(String, String)>> = (0..x.n_items())
                .map(|i| x.item_codes(i).iter().map(|&c| (x.workers[x.worker_of(c)].clone(), x.classes[x.label_of(c)].clone())).collect())
                .collect();
            assert_eq!(got, vec![vec![("w1".into(), "a".into()), ("w2".into(), "a".into())], vec![("w1".into(), "b".into())]]);
        }
    }

    #[test]
    fn a_utf8_byte_order_mark_is_not_part_of_the_header() {
        // Excel's "CSV UTF-8" starts with U+FEFF: it was read as part of "worker" (missing column)
        let small = "worker,task,label\nw1,t1,a\nw2,t1,b\nw1,t2,b\n";
        let quoted = "worker,\"task\",label\nw1,t1,a\nw2,t1,b\nw1,t2,b\n";
        let mut large = String::from("worker,task,label\n");
        for r in 0..90_000usize {
            large.push_str(&format!("w{},item-{},{}\n", r % 13, r / 3, ["x", "y"][r % 2]));
        }
        assert!(large.len() > 1 << 20);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for text in [small, quoted, large.as_str()] {
            let (a, _) = pool.install(|| parse_crowdkit_csv_with(text, "p.csv", &[], OnUnknownLabel::Error)).unwrap();
            let bom = format!("\u{feff}{text}");
            let (b, _) = pool.install(|| parse_crowdkit_csv_with(&bom, "p.csv", &[], OnUnknownLabel::Error)).unwrap();
            assert_eq!((&a.items, &a.workers, &a.classes), (&b.items, &b.workers, &b.classes));
            assert_eq!((&a.offsets, &a.codes), (&b.offsets, &b.codes));
        }
    }
}
