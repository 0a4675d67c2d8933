//! The pages, rendered to HTML strings from what [`super::read::Files`] reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::engine::{RunRecord, StageStatus};
use crate::fmt::{fmt_ms, fmt_num, human_bytes};
use crate::runs::{count, duration, fmt_time, status_str};

use super::read::{Activity, Files, IndexFile};
use super::svg;

/// A page or an error page, before it becomes an HTTP response.
pub enum Page {
    Html(String),
    NotFound(String),
    BadRequest(String),
}

pub use super::html::esc;

/// Percent-encoding of one path segment (everything but unreserved characters).
pub fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// A relative artifact path as a URL path, each segment encoded.
pub fn enc_path(p: &str) -> String {
    p.split('/').map(enc).collect::<Vec<_>>().join("/")
}

const CSS: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
nav{background:#263238;padding:8px 16px}nav a{color:#eceff1;margin-right:18px;text-decoration:none;font-weight:600}
main{padding:12px 20px}h1{font-size:20px}h2{font-size:16px;margin-top:22px}
table{border-collapse:collapse;background:#fff;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eceff1}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ran{color:#2e7d32;font-weight:600}.cached{color:#1565c0;font-weight:600}.failed{color:#c62828;font-weight:600}.skipped,.not-selected{color:#777}
.hit{color:#2e7d32;font-weight:600}.miss{color:#c62828;font-weight:600}
.banner{background:#fff3c4;border:1px solid #e0c060;padding:8px 12px;margin:8px 0}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;max-height:40em;white-space:pre-wrap}
code{background:#eef;padding:0 3px}.muted{color:#777}.diff{background:#fff8e1}
.gallery img{max-width:160px;max-height:160px;margin:4px;border:1px solid #ccc;image-rendering:pixelated}
.md img{max-width:100%}svg{background:#fff;border:1px solid #ddd}
"#;

pub fn layout(title: &str, body: &str, refresh: bool) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">{}<title>{} · pipeline</title><style>{CSS}</style></head><body><nav><a href=\"/\">runs</a><a href=\"/entries\">cache</a><a href=\"/plan\">plan</a></nav><main>{body}</main></body></html>\n",
        if refresh { "<meta http-equiv=\"refresh\" content=\"5\">" } else { "" },
        esc(title)
    )
}

fn status_cell(s: &str) -> String {
    format!("<td class=\"{}\">{}</td>", esc(&s.replace(' ', "-")), esc(s))
}

fn activity_banner(a: &Option<Activity>) -> String {
    let Some(a) = a else { return String::new() };
    if !a.is_run {
        return format!("<div class=\"banner\">The cache is in use by pid {} (<code>{}</code>).</div>", a.pid, esc(&crate::text::redact(&a.command)));
    }
    let mut s = format!(
        "<div class=\"banner running\"><b>Run {} in progress</b> (pid {}, <code>{}</code>); this page refreshes every 5 s.",
        a.run_id.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
        a.pid,
        esc(&crate::text::redact(&a.command))
    );
    let now = crate::cache::store::now_millis();
    if !a.running.is_empty() {
        let r: Vec<String> = a.running.iter().map(|(n, ms)| format!("<b>{}</b> (for {})", esc(n), fmt_ms(now.saturating_sub(*ms)))).collect();
        s.push_str(&format!("<br>running now: {}", r.join(", ")));
    }
    if !a.committed.is_empty() {
        let c: Vec<String> = a.committed.iter().map(|e| format!("<a href=\"/entry/{}\">{}</a> ({})", e.key.0, esc(&e.stage), fmt_ms(e.duration_ms))).collect();
        s.push_str(&format!("<br>finished so far: {}", c.join(", ")));
    }
    s.push_str("</div>");
    s
}

// ---------- runs ----------

pub fn runs_page(f: &Files) -> Page {
    let runs = f.runs();
    let activity = f.activity(&runs);
    let known: BTreeSet<String> = runs.iter().take(200).flat_map(|r| r.metrics().into_keys()).collect();
    let specs: Vec<String> = crate::runs::DEFAULT_METRICS.iter().map(|s| s.to_string()).collect();
    let (cols, _) = crate::runs::metric_columns(&specs, &known);
    let mut b = String::from("<h1>Runs</h1>");
    b.push_str(&activity_banner(&activity));
    if runs.is_empty() {
        b.push_str("<p>No run is recorded in this cache yet (runs are listed once they finish; runs recorded before this version are in <code>pipeline runs</code> only).</p>");
        return Page::Html(layout("runs", &b, activity.map(|a| a.is_run).unwrap_or(false)));
    }
    // The chart: accuracy and label agreement over the last 50 runs, oldest left.
    let (chart_cols, _) = crate::runs::metric_columns(&["accuracy".to_string(), "agreement".to_string()], &known);
    let recent: Vec<&RunRecord> = runs.iter().take(50).rev().collect();
    let series: Vec<(String, Vec<Option<f64>>)> = chart_cols
        .iter()
        .take(6)
        .map(|c| (c.clone(), recent.iter().map(|r| r.metrics().get(c).copied()).collect()))
        .filter(|(_, v): &(String, Vec<Option<f64>>)| v.iter().any(|x| x.is_some()))
        .collect();
    let chart = svg::chart(&recent.iter().map(|r| r.id).collect::<Vec<_>>(), &series);
    if !chart.is_empty() {
        b.push_str(&format!("<h2>Accuracy and label agreement over runs</h2>{chart}"));
    }
    b.push_str("<form method=\"get\" action=\"/compare\"><table class=\"runs\"><tr><th></th><th>run</th><th>pipeline</th><th>started</th><th>trigger</th><th>status</th><th>ran</th><th>cached</th><th>failed</th><th>time</th>");
    for c in &cols {
        b.push_str(&format!("<th>{}</th>", esc(c)));
    }
    b.push_str("</tr>");
    for r in runs.iter().take(500) {
        let m = r.metrics();
        b.push_str(&format!(
            "<tr><td><input type=\"checkbox\" name=\"run\" value=\"{id}\"></td><td><a href=\"/runs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td>{}<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
            esc(&r.pipeline),
            esc(&fmt_time(r.started_ms)),
            esc(&r.trigger),
            status_cell(&status_str(r)),
            count(r, StageStatus::Ran),
            count(r, StageStatus::Cached),
            count(r, StageStatus::Failed),
            esc(&duration(r)),
            id = r.id,
        ));
        for c in &cols {
            b.push_str(&format!("<td class=\"num\">{}</td>", m.get(c).map(|v| fmt_num(*v)).unwrap_or_default()));
        }
        b.push_str("</tr>");
    }
    b.push_str("</table><button type=\"submit\">compare selected runs</button></form>");
    if runs.len() > 500 {
        b.push_str(&format!("<p class=\"muted\">{} older runs not shown.</p>", runs.len() - 500));
    }
    Page::Html(layout("runs", &b, activity.map(|a| a.is_run).unwrap_or(false)))
}

/// Which stage feeds which in a run: from the entries' recorded input sources, else from
/// the pipeline file as it is now (for stages without an entry: failed, skipped).
fn run_edges(f: &Files, r: &RunRecord) -> Vec<(usize, usize)> {
    let idx: BTreeMap<&str, usize> = r.stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut edges = BTreeSet::new();
    let mut unknown = false;
    for (i, s) in r.stages.iter().enumerate() {
        match s.key.as_deref().and_then(|k| f.entry(k)) {
            Some(e) => {
                for src in e.entry.input_sources.values() {
                    if let Some(rest) = src.strip_prefix("stage ") {
                        let up = rest.split(", ").next().unwrap_or(rest);
                        if let Some(&u) = idx.get(up) {
                            edges.insert((u, i));
                        }
                    }
                }
            }
            None => unknown = true,
        }
    }
    if unknown {
        if let Ok(p) = crate::dag::load(Path::new(&r.file), &r.overrides) {
            for n in &p.stages {
                for src in n.inputs.values() {
                    if let crate::dag::InputSource::Stage { stage, .. } = src {
                        if let (Some(&u), Some(&i)) = (idx.get(stage.as_str()), idx.get(n.name.as_str())) {
                            edges.insert((u, i));
                        }
                    }
                }
            }
        }
    }
    edges.into_iter().collect()
}

pub fn run_page(f: &Files, id: u64) -> Page {
    let runs = f.runs();
    let activity = f.activity(&runs);
    let Some(r) = runs.iter().find(|r| r.id == id).cloned() else {
        if let Some(a) = activity.as_ref().filter(|a| a.is_run && a.run_id == Some(id)) {
            let b = format!("<h1>Run {id}</h1>{}<p>This run is in progress: its record is written when it ends.</p>", activity_banner(&Some(a.clone())));
            return Page::Html(layout(&format!("run {id}"), &b, true));
        }
        return Page::NotFound(format!("no run {id} in this cache"));
    };
    let mut b = format!(
        "<h1>Run {} of {}</h1><table><tr><th>status</th>{}</tr><tr><th>trigger</th><td>{}</td></tr><tr><th>file</th><td><code>{}</code></td></tr><tr><th>started</th><td>{}</td></tr><tr><th>time</th><td>{}</td></tr>",
        r.id,
        esc(&r.pipeline),
        status_cell(&status_str(&r)),
        esc(&r.trigger),
        esc(&r.file),
        esc(&fmt_time(r.started_ms)),
        esc(&duration(&r))
    );
    if !r.overrides.is_empty() {
        let o: Vec<String> = r.overrides.iter().map(|o| format!("<code>--set {}</code>", esc(&crate::text::redact(o)))).collect();
        b.push_str(&format!("<tr><th>overrides</th><td>{}</td></tr>", o.join(" ")));
    }
    if let Some(p) = &r.promotion {
        b.push_str(&format!("<tr><th>promotion</th><td><code>{}</code></td></tr>", esc(&p.to_string())));
    }
    b.push_str("</table>");
    if let Some(prev) = runs.iter().find(|x| x.id < r.id && x.pipeline == r.pipeline) {
        b.push_str(&format!("<p><a href=\"/compare?run={}&amp;run={}\">compare with run {} (the previous run of {})</a></p>", prev.id, r.id, prev.id, esc(&r.pipeline)));
    }
    let nodes: Vec<svg::Node> = r
        .stages
        .iter()
        .map(|s| svg::Node {
            name: s.name.clone(),
            status: s.status.as_str().to_string(),
            detail: format!("{} · {}", s.status.as_str(), fmt_ms(s.duration_ms)),
            href: s.key.as_deref().filter(|k| f.entry(k).is_some()).map(|k| format!("/entry/{k}")),
            tooltip: format!("{} ({}): {}{}", s.name, s.kind, s.status.as_str(), s.error.as_deref().map(|e| format!(": {}", crate::text::cap(e, 300))).unwrap_or_default()),
        })
        .collect();
    b.push_str("<h2>Graph</h2>");
    b.push_str(&svg::dag(&nodes, &run_edges(f, &r)));
    b.push_str("<h2>Stages</h2><table><tr><th>stage</th><th>kind</th><th>status</th><th>time</th><th>key</th><th>metrics</th><th>error</th></tr>");
    for s in &r.stages {
        let key = match s.key.as_deref() {
            Some(k) if f.entry(k).is_some() => format!("<a href=\"/entry/{k}\"><code>{}</code></a>", &k[..12.min(k.len())]),
            Some(k) => format!("<code>{}</code>", esc(&k[..12.min(k.len())])),
            None => String::new(),
        };
        let metrics: Vec<String> = s.outcome.metrics.iter().map(|(k, v)| format!("{}={}", esc(k), fmt_num(*v))).collect();
        let err = s.error.as_deref().map(|e| format!("<pre>{}</pre>", esc(&crate::text::clean(e)))).unwrap_or_default();
        b.push_str(&format!(
            "<tr><td>{}</td><td>{}</td>{}<td class=\"num\">{}</td><td>{key}</td><td>{}</td><td>{err}</td></tr>",
            esc(&s.name),
            esc(&s.kind),
            status_cell(s.status.as_str()),
            fmt_ms(s.duration_ms),
            metrics.join("<br>")
        ));
    }
    b.push_str("</table>");
    let summaries: Vec<&crate::engine::StageRun> = r.stages.iter().filter(|s| !s.outcome.summary.is_empty()).collect();
    if !summaries.is_empty() {
        b.push_str("<h2>Summary</h2>");
        for s in summaries {
            b.push_str(&format!("<h3>{}</h3><pre>{}</pre>", esc(&s.name), esc(&crate::text::clean(&s.outcome.summary.join("\n")))));
        }
    }
    let jobs = crate::executor::describe_jobs(&r);
    if !jobs.trim().is_empty() {
        b.push_str(&format!("<h2>Jobs</h2><pre>{}</pre>", esc(&jobs)));
    }
    Page::Html(layout(&format!("run {id}"), &b, false))
}

// ---------- cache entries ----------

pub fn entries_page(f: &Files) -> Page {
    let entries = f.entries();
    let now = crate::cache::store::now_secs();
    let mut b = format!("<h1>Cache entries</h1><p>{} entries in <code>{}</code></p><table><tr><th>stage</th><th>pipeline</th><th>kind</th><th>key</th><th>files</th><th>size</th><th>age</th><th>run</th></tr>", entries.len(), esc(&f.root().display().to_string()));
    for r in entries.iter().take(2000) {
        let e = &r.entry;
        b.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/entry/{k}\"><code>{}</code></a></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td><a href=\"/runs/{run}\">{run}</a></td></tr>",
            esc(&e.stage),
            esc(&e.pipeline),
            esc(&e.key_inputs.kind),
            &e.key.0[..12],
            e.files,
            human_bytes(e.size),
            crate::fmt::human_age(now.saturating_sub(e.created)),
            k = e.key.0,
            run = e.run_id,
        ));
    }
    b.push_str("</table>");
    Page::Html(layout("cache", &b, false))
}

fn is_image(p: &str) -> Option<&'static str> {
    let l = p.to_ascii_lowercase();
    [(".png", "image/png"), (".jpg", "image/jpeg"), (".jpeg", "image/jpeg"), (".gif", "image/gif"), (".webp", "image/webp")].iter().find(|(e, _)| l.ends_with(e)).map(|(_, t)| *t)
}

/// The content type a file is served as. Only images and plain text: an artifact's HTML or
/// SVG must never run as a page of this origin.
pub fn content_type(p: &str) -> &'static str {
    if let Some(t) = is_image(p) {
        return t;
    }
    let l = p.to_ascii_lowercase();
    let text = [".csv", ".tsv", ".md", ".txt", ".log", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".html", ".svg", ".py", ".sh", ".rs"];
    if text.iter().any(|e| l.ends_with(e)) {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

const FILES_PER_PAGE: usize = 200;

pub fn entry_page(f: &Files, key: &str, page: usize) -> Page {
    let Some(IndexFile { entry: e, manifest: m }) = resolve(f, key) else {
        return Page::NotFound(format!("no cache entry {}", esc(&crate::text::cap(key, 80))));
    };
    let k = &e.key.0;
    let mut b = format!(
        "<h1>{} <span class=\"muted\">({} v{})</span></h1><table><tr><th>key</th><td><code>{k}</code></td></tr><tr><th>pipeline</th><td>{}</td></tr><tr><th>output</th><td><code>{}</code> · {} files · {}</td></tr><tr><th>created</th><td>{} by <a href=\"/runs/{run}\">run {run}</a>, took {}</td></tr>",
        esc(&e.stage),
        esc(&e.key_inputs.kind),
        e.key_inputs.kind_version,
        esc(&e.pipeline),
        &e.output[..12.min(e.output.len())],
        e.files,
        human_bytes(e.size),
        esc(&fmt_time(e.created * 1000)),
        fmt_ms(e.duration_ms),
        run = e.run_id,
    );
    b.push_str("</table><h2>Key inputs</h2><table>");
    b.push_str(&format!("<tr><th>params</th><td><pre>{}</pre></td></tr>", esc(&crate::text::redact(&serde_json::to_string_pretty(&e.key_inputs.params).unwrap_or_default()))));
    for (name, d) in &e.key_inputs.inputs {
        let src = e.input_sources.get(name).map(|s| s.as_str()).unwrap_or("");
        b.push_str(&format!("<tr><th>input {}</th><td><code>{}</code> {}</td></tr>", esc(name), esc(&d[..12.min(d.len())]), esc(src)));
    }
    for (name, d) in &e.key_inputs.param_files {
        b.push_str(&format!("<tr><th>file {}</th><td><code>{}</code></td></tr>", esc(name), esc(&d[..12.min(d.len())])));
    }
    b.push_str("</table>");
    if !e.outcome.provenance.is_empty() {
        b.push_str("<h2>Provenance</h2><table>");
        for (k2, v) in &e.outcome.provenance {
            b.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>", esc(k2), esc(&crate::runs::show_value(v))));
        }
        b.push_str("</table>");
    }
    if !e.outcome.metrics.is_empty() {
        b.push_str("<h2>Metrics</h2><table>");
        for (k2, v) in &e.outcome.metrics {
            b.push_str(&format!("<tr><th>{}</th><td class=\"num\">{}</td></tr>", esc(k2), fmt_num(*v)));
        }
        b.push_str("</table>");
    }
    let images: Vec<&crate::cache::FileEntry> = m.files.iter().filter(|x| x.path.to_ascii_lowercase().ends_with(".png")).collect();
    if !images.is_empty() {
        // Reports' figures first (they sit at the top level), then the rest, a few only.
        let mut shown: Vec<&&crate::cache::FileEntry> = images.iter().filter(|x| !x.path.contains('/')).collect();
        shown.extend(images.iter().filter(|x| x.path.contains('/')));
        b.push_str("<h2>Images</h2><div class=\"gallery\">");
        for x in shown.iter().take(24) {
            b.push_str(&format!("<a href=\"/entry/{k}/view/{p}\"><img src=\"/files/{k}/{p}\" alt=\"{a}\" title=\"{a}\"></a>", p = enc_path(&x.path), a = esc(&x.path)));
        }
        b.push_str("</div>");
        if images.len() > 24 {
            b.push_str(&format!("<p class=\"muted\">24 of {} PNGs shown; all are in the file list.</p>", images.len()));
        }
    }
    let pages = m.files.len().div_ceil(FILES_PER_PAGE).max(1);
    let page = page.min(pages - 1);
    b.push_str("<h2>Files</h2><table><tr><th>path</th><th>size</th><th>digest</th><th></th></tr>");
    for x in m.files.iter().skip(page * FILES_PER_PAGE).take(FILES_PER_PAGE) {
        let p = enc_path(&x.path);
        b.push_str(&format!(
            "<tr><td><a href=\"/entry/{k}/view/{p}\">{}</a></td><td class=\"num\">{}</td><td><code>{}</code></td><td><a href=\"/files/{k}/{p}?download=1\">download</a></td></tr>",
            esc(&x.path),
            human_bytes(x.size),
            &x.digest[..12.min(x.digest.len())]
        ));
    }
    b.push_str("</table>");
    b.push_str(&pager(&format!("/entry/{k}"), page, pages));
    Page::Html(layout(&e.stage, &b, false))
}

fn pager(base: &str, page: usize, pages: usize) -> String {
    if pages <= 1 {
        return String::new();
    }
    let mut s = format!("<p>page {} of {pages} ", page + 1);
    if page > 0 {
        s.push_str(&format!("<a href=\"{base}?page={}\">previous</a> ", page - 1));
    }
    if page + 1 < pages {
        s.push_str(&format!("<a href=\"{base}?page={}\">next</a>", page + 1));
    }
    s.push_str("</p>");
    s
}

/// A full key, or a unique prefix of at least 8 hex digits.
pub fn resolve(f: &Files, key: &str) -> Option<IndexFile> {
    if let Some(e) = f.entry(key) {
        return Some(e);
    }
    if key.len() < 8 || key.len() >= 64 || !key.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return None;
    }
    let names: Vec<String> = std::fs::read_dir(f.root().join("index"))
        .inspect_err(crate::regular::note_exhaustion)
        .ok()?
        .flatten()
        .filter_map(|d| d.file_name().to_str()?.strip_suffix(".json").map(|s| s.to_string()))
        .filter(|n| n.starts_with(key))
        .collect();
    match names.as_slice() {
        [one] => f.entry(one),
        _ => None,
    }
}

/// The file `path` of entry `key`: looked up by exact name in its manifest, never joined to a
/// directory, so no spelling of `..` or `/` can name anything else.
pub fn entry_file(f: &Files, key: &str, path: &str) -> Option<(IndexFile, crate::cache::FileEntry, PathBuf)> {
    let r = f.entry(key)?;
    let fe = r.manifest.files.iter().find(|x| x.path == path)?.clone();
    let blob = f.blob(&fe.digest, fe.size)?;
    Some((r, fe, blob))
}

const CSV_ROWS: usize = 100;
const TEXT_MAX: u64 = 512 << 10;
const MD_MAX: u64 = 4 << 20;

pub fn view_page(f: &Files, key: &str, path: &str, page: usize) -> Page {
    let Some((r, fe, blob)) = entry_file(f, key, path) else {
        return Page::NotFound(format!("entry {} has no file {}", esc(&crate::text::cap(key, 80)), esc(&crate::text::cap(path, 200))));
    };
    let raw = format!("/files/{}/{}", r.entry.key.0, enc_path(&fe.path));
    let mut b = format!(
        "<p><a href=\"/entry/{k}\">{stage}</a> / <b>{p}</b> · {} · <a href=\"{raw}?download=1\">download</a></p>",
        human_bytes(fe.size),
        k = r.entry.key.0,
        stage = esc(&r.entry.stage),
        p = esc(&fe.path)
    );
    let lower = fe.path.to_ascii_lowercase();
    if is_image(&lower).is_some() {
        b.push_str(&format!("<img src=\"{raw}\" alt=\"{}\" style=\"max-width:100%\">", esc(&fe.path)));
    } else if lower.ends_with(".md") && fe.size <= MD_MAX {
        let text = String::from_utf8_lossy(&super::read::read_regular(&blob, MD_MAX).unwrap_or_default()).to_string();
        let dir = fe.path.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
        b.push_str(&format!("<div class=\"md\">{}</div>", markdown(&text, &r.entry.key.0, &dir)));
    } else if (lower.ends_with(".csv") || lower.ends_with(".tsv")) && fe.size > 0 {
        b.push_str(&csv_table(&blob, if lower.ends_with(".tsv") { b'\t' } else { b',' }, page, &format!("/entry/{}/view/{}", r.entry.key.0, enc_path(&fe.path))));
    } else if let Some(text) = text_prefix(&blob, fe.size) {
        b.push_str(&format!("<pre>{}</pre>", esc(&text)));
        if fe.size > TEXT_MAX {
            b.push_str(&format!("<p class=\"muted\">first {} shown</p>", human_bytes(TEXT_MAX)));
        }
    } else {
        b.push_str("<p>Binary file: use the download link.</p>");
    }
    Page::Html(layout(&fe.path, &b, false))
}

/// The first [`TEXT_MAX`] bytes as text, if they look like text.
fn text_prefix(blob: &Path, size: u64) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(blob).ok()?.take(TEXT_MAX.min(size)).read_to_end(&mut buf).ok()?;
    if buf.contains(&0) {
        return None;
    }
    match std::str::from_utf8(&buf) {
        Ok(s) => Some(s.to_string()),
        // A cut through a multi-byte character at the end is still text.
        Err(e) if e.error_len().is_none() => Some(String::from_utf8_lossy(&buf[..e.valid_up_to()]).to_string()),
        Err(_) => None,
    }
}

/// Longest line the CSV view reads: the csv reader holds a whole record, with an index
/// entry per field, so a 30 MB line of commas took 1 GB (found by a hostile pass).
const CSV_LINE_MAX: usize = 1 << 20;

/// A reader that fails at a line longer than `max` bytes.
struct LineCap<R> {
    inner: R,
    since_newline: usize,
    max: usize,
}

impl<R: std::io::Read> std::io::Read for LineCap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            self.since_newline = if b == b'\n' { 0 } else { self.since_newline + 1 };
            if self.since_newline > self.max {
                return Err(std::io::Error::other(format!("a line longer than {} bytes", self.max)));
            }
        }
        Ok(n)
    }
}

fn csv_table(blob: &Path, delim: u8, page: usize, base: &str) -> String {
    let Ok(file) = std::fs::File::open(blob) else {
        return "<p>cannot read the file</p>".into();
    };
    let capped = LineCap { inner: std::io::BufReader::new(file), since_newline: 0, max: CSV_LINE_MAX };
    let mut rd = csv::ReaderBuilder::new().has_headers(false).flexible(true).delimiter(delim).from_reader(capped);
    let cell = |x: &[u8]| esc(&crate::text::cap(&String::from_utf8_lossy(x), 300));
    let mut recs = rd.byte_records();
    let mut s = String::from("<table class=\"csv\">");
    match recs.next() {
        Some(Ok(h)) => {
            s.push_str("<tr>");
            for x in h.iter().take(100) {
                s.push_str(&format!("<th>{}</th>", cell(x)));
            }
            s.push_str("</tr>");
        }
        Some(Err(e)) if e.to_string().contains("a line longer than") => return format!("<p>not shown: {}; download it</p>", esc(&e.to_string())),
        _ => return "<p>empty or not CSV</p>".into(),
    }
    let mut shown = 0;
    let mut more = false;
    for (i, rec) in recs.enumerate().skip(page * CSV_ROWS) {
        if shown == CSV_ROWS {
            more = true;
            break;
        }
        let Ok(rec) = rec else {
            s.push_str(&format!("<tr><td class=\"muted\">row {}: not CSV</td></tr>", i + 2));
            break;
        };
        s.push_str("<tr>");
        for x in rec.iter().take(100) {
            s.push_str(&format!("<td>{}</td>", cell(x)));
        }
        s.push_str("</tr>");
        shown += 1;
    }
    s.push_str("</table>");
    if shown == 0 {
        s.push_str("<p>no rows on this page ");
    } else {
        s.push_str(&format!("<p>rows {}–{} ", page * CSV_ROWS + 1, page * CSV_ROWS + shown));
    }
    if page > 0 {
        s.push_str(&format!("<a href=\"{base}?page={}\">previous</a> ", page - 1));
    }
    if more {
        s.push_str(&format!("<a href=\"{base}?page={}\">next</a>", page + 1));
    }
    s.push_str("</p>");
    s
}

/// Markdown to HTML with raw HTML shown as text (a report is data, not markup of this
/// site) and relative image and link targets pointing at the entry's files.
pub fn markdown(text: &str, key: &str, dir: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag};
    let fix = |url: &str, raw: bool| -> String {
        let l = url.trim().to_ascii_lowercase();
        if l.starts_with("http://") || l.starts_with("https://") || l.starts_with('#') || l.starts_with("mailto:") {
            return url.to_string();
        }
        if l.contains(':') || url.starts_with('/') {
            return "#".to_string();
        }
        let joined = if dir.is_empty() { url.to_string() } else { format!("{dir}/{url}") };
        if raw {
            format!("/files/{key}/{}", enc_path(&joined))
        } else {
            format!("/entry/{key}/view/{}", enc_path(&joined))
        }
    };
    let parser = Parser::new_ext(text, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(|ev| match ev {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Image { link_type, dest_url, title, id }) => Event::Start(Tag::Image { link_type, dest_url: fix(&dest_url, true).into(), title, id }),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => Event::Start(Tag::Link { link_type, dest_url: fix(&dest_url, false).into(), title, id }),
        e => e,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

// ---------- compare ----------

pub fn compare_page(f: &Files, ids: &[u64]) -> Page {
    if ids.len() < 2 {
        return Page::BadRequest("pick at least two runs to compare (check them on the runs page)".into());
    }
    let mut runs = Vec::new();
    for &id in ids.iter().take(20) {
        match f.run(id) {
            Some(r) => runs.push(r),
            None => return Page::NotFound(format!("no run {id} in this cache")),
        }
    }
    let manifests = f.manifests();
    let read = |o: &str, p: &str| f.read(&manifests, o, p);
    let c = crate::runs::compare_records(&runs, &read);
    let mut b = String::from("<h1>Compare runs</h1><table class=\"compare\"><tr><th></th>");
    for r in &c.runs {
        b.push_str(&format!("<th><a href=\"/runs/{id}\">run {id}</a></th>", id = r.id));
    }
    b.push_str("</tr>");
    let row = |b: &mut String, name: &str, vals: Vec<String>| {
        let differ = vals.iter().any(|v| v != &vals[0]);
        b.push_str(&format!("<tr{}><th>{}</th>", if differ { " class=\"diff\"" } else { "" }, esc(name)));
        for v in vals {
            b.push_str(&format!("<td class=\"num\">{}</td>", esc(&v)));
        }
        b.push_str("</tr>");
    };
    row(&mut b, "pipeline", c.runs.iter().map(|r| r.pipeline.clone()).collect());
    row(&mut b, "started", c.runs.iter().map(|r| fmt_time(r.started_ms)).collect());
    row(&mut b, "status", c.runs.iter().map(|r| r.status.clone()).collect());
    row(&mut b, "time", c.runs.iter().map(|r| r.duration_ms.map(fmt_ms).unwrap_or_else(|| "running".into())).collect());
    row(&mut b, "--set", c.runs.iter().map(|r| crate::text::redact(&r.overrides.join(" "))).collect());
    if !c.params.is_empty() {
        b.push_str(&format!("<tr><th colspan=\"{}\">params that differ</th></tr>", c.runs.len() + 1));
    }
    for p in &c.params {
        row(&mut b, &p.name, p.values.iter().map(crate::runs::show_value).collect());
    }
    if !c.inputs.is_empty() {
        b.push_str(&format!("<tr><th colspan=\"{}\">input digests that differ</th></tr>", c.runs.len() + 1));
    }
    for i in &c.inputs {
        row(&mut b, &i.name, i.values.iter().map(|d| d.as_deref().map(|d| d[..12.min(d.len())].to_string()).unwrap_or_else(|| "-".into())).collect());
    }
    for fl in &c.flipped {
        row(&mut b, &fl.name, fl.values.iter().map(|x| x.as_ref().map(|x| x.count.to_string()).unwrap_or_else(|| "-".into())).collect());
    }
    if !c.metrics.is_empty() {
        b.push_str(&format!("<tr><th colspan=\"{}\">metrics</th></tr>", c.runs.len() + 1));
    }
    for m in &c.metrics {
        row(&mut b, &m.name, m.values.iter().map(|v| v.map(fmt_num).unwrap_or_else(|| "-".into())).collect());
    }
    b.push_str("</table>");
    if c.params.is_empty() && c.inputs.is_empty() {
        b.push_str("<p>No params or inputs differ.</p>");
    }
    b.push_str("<h2>Changes, run by run</h2>");
    for w in runs.windows(2) {
        b.push_str(&format!("<pre>{}</pre>", esc(&crate::runs::diff_records(&w[0], &w[1], &read))));
    }
    Page::Html(layout("compare", &b, false))
}

/// `run=1&run=2` (also `runs=1,2`): the run ids of a query string, in order.
pub fn parse_ids(query: Option<&str>) -> Result<Vec<u64>, String> {
    let mut ids = Vec::new();
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k == "run" || k == "runs" {
            for x in v.split([',', '+']).filter(|s| !s.is_empty()) {
                let id: u64 = x.trim().parse().map_err(|_| format!("not a run id: {}", crate::text::cap(x, 40)))?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    Ok(ids)
}

// ---------- plan ----------

/// Pipeline files the plan page offers: those given to `pipeline ui --pipeline`, then those
/// of recorded runs (newest first), as paths from here. Never a path from the URL.
pub fn pipeline_files(f: &Files, extra: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = extra.iter().map(|p| (p.clone(), String::from("--pipeline"))).collect();
    for r in f.runs() {
        let p = PathBuf::from(&r.file);
        if !out.iter().any(|(q, _)| q == &p) {
            out.push((p, format!("pipeline {}, last run {}", r.pipeline, r.id)));
        }
    }
    out
}

pub fn plan_list_page(f: &Files, extra: &[PathBuf]) -> Page {
    let files = pipeline_files(f, extra);
    let mut b = String::from("<h1>Plan</h1><p>What <code>pipeline run FILE</code> would do now, from the files the cache keeps (the remote cache is not consulted). Pipeline files are those of recorded runs and those passed to <code>pipeline ui --pipeline</code>.</p><table><tr><th>file</th><th>from</th></tr>");
    for (i, (p, from)) in files.iter().enumerate() {
        let exists = p.is_file();
        b.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>",
            if exists { format!("<a href=\"/plan/{i}\"><code>{}</code></a>", esc(&p.display().to_string())) } else { format!("<code>{}</code> <span class=\"muted\">(not found from here)</span>", esc(&p.display().to_string())) },
            esc(from)
        ));
    }
    b.push_str("</table>");
    Page::Html(layout("plan", &b, false))
}

pub fn plan_page(f: &Files, extra: &[PathBuf], n: usize) -> Page {
    let files = pipeline_files(f, extra);
    let Some((file, _)) = files.get(n) else { return Page::NotFound(format!("no pipeline file number {n}")) };
    let p = match crate::dag::load(file, &[]) {
        Ok(p) => p,
        Err(e) => return Page::Html(layout("plan", &format!("<h1>Plan of <code>{}</code></h1><pre>{}</pre>", esc(&file.display().to_string()), esc(&crate::text::clean(&e.to_string()))), false)),
    };
    let snap = match crate::cache::Cache::snapshot(f.root()) {
        Ok(c) => c,
        Err(e) => return Page::Html(layout("plan", &format!("<p>cannot read the cache: {}</p>", esc(&e.to_string())), false)),
    };
    let plan = crate::plan::plan(&snap, &p, None);
    let mut b = format!("<h1>Plan of {} <span class=\"muted\">(<code>{}</code>)</span></h1><table><tr><th>stage</th><th>status</th><th>key</th><th>why</th></tr>", esc(&p.name), esc(&file.display().to_string()));
    for s in &plan.stages {
        let key = match s.key.as_deref() {
            Some(k) if f.entry(k).is_some() => format!("<a href=\"/entry/{k}\"><code>{}</code></a>", &k[..12]),
            Some(k) => format!("<code>{}</code>", esc(&k[..12.min(k.len())])),
            None => String::new(),
        };
        let why: Vec<String> = s
            .why
            .iter()
            .map(|r| {
                let tag = serde_json::to_value(r).ok().and_then(|v| v["reason"].as_str().map(|s| s.to_string())).unwrap_or_default();
                format!("{} <code class=\"reason\">{}</code>", esc(&r.to_string()), esc(&tag))
            })
            .collect();
        b.push_str(&format!("<tr><td>{}</td>{}<td>{key}</td><td>{}</td></tr>", esc(&s.name), status_cell(s.status), why.join("<br>")));
    }
    b.push_str("</table>");
    Page::Html(layout("plan", &b, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_shows_raw_html_as_text_and_points_relative_images_at_the_entry() {
        let h = markdown("# R\n<script>alert(1)</script>\n\n![c](confusion.png) [x](javascript:alert(1)) [y](../up.md)", &"a".repeat(64), "");
        assert!(!h.contains("<script>") && h.contains("&lt;script&gt;"), "{h}");
        assert!(h.contains(&format!("src=\"/files/{}/confusion.png\"", "a".repeat(64))), "{h}");
        assert!(!h.contains("javascript:"), "{h}");
        // `..` is encoded as a segment and then matches no manifest path.
        assert!(h.contains("/view/..%2Fup.md") || h.contains("/view/../up.md") || h.contains("/view/.."), "{h}");
    }

    #[test]
    fn query_ids_parse_in_order_without_repeats() {
        assert_eq!(parse_ids(Some("run=3&run=1&x=2&run=3")).unwrap(), [3, 1]);
        assert_eq!(parse_ids(Some("runs=1,2")).unwrap(), [1, 2]);
        assert!(parse_ids(Some("run=abc")).is_err());
        assert!(parse_ids(None).unwrap().is_empty());
    }

    #[test]
    fn artifact_html_and_svg_are_served_as_text() {
        assert_eq!(content_type("report.html"), "text/plain; charset=utf-8");
        assert_eq!(content_type("x.SVG"), "text/plain; charset=utf-8");
        assert_eq!(content_type("a/b.png"), "image/png");
        assert_eq!(content_type("model.mpk"), "application/octet-stream");
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(enc_path("a b/c#?.png"), "a%20b/c%23%3F.png");
        assert_eq!(esc("<\"&'>"), "&lt;&quot;&amp;&#39;&gt;");
    }
}
