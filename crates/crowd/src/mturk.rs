//! MTurk requester API client: ListHITs and ListAssignmentsForHIT over the JSON 1.1
//! protocol (`X-Amz-Target: MTurkRequesterServiceV20170117.<Op>`), signed with AWS
//! Signature V4 (service `mturk-requester`, region `us-east-1`), following `NextToken`.
//!
//! This is the crate's only network and file I/O (credentials file). Credentials are never
//! logged: [`Credentials`]' `Debug` prints the key id's last 4 characters only; every error
//! this module returns goes through [`Credentials::redact`] (the key id, the secret and the
//! session token replaced, the text capped at [`MAX_MESSAGE`] bytes, terminal control
//! characters removed), so a server that echoes request headers in its error body cannot
//! put them in a message, a run record or the database. The HTTP client (ureq) logs request
//! headers, the session token among them, at `debug` level through the `log` facade; the
//! client caps that facade at `info` (see [`Client::new`]). Paging stops with an error when
//! the server repeats a `NextToken` or after [`MAX_PAGES`] pages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use quick_xml::events::Event;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::amt::{answer_from_json_for, AmtRecord};
use crate::{CrowdError, Result};

pub const PRODUCTION: &str = "https://mturk-requester.us-east-1.amazonaws.com";
pub const SANDBOX: &str = "https://mturk-requester-sandbox.us-east-1.amazonaws.com";
const TARGET_PREFIX: &str = "MTurkRequesterServiceV20170117";
const SERVICE: &str = "mturk-requester";
const REGION: &str = "us-east-1";
/// At most this many bytes of a server's error text in an error message.
pub const MAX_MESSAGE: usize = 4096;
/// At most this many pages per listing (100 results each: a million HITs).
pub const MAX_PAGES: usize = 10_000;

/// `text` made safe to print and store: control characters (ANSI escapes and the like, but
/// not newlines or tabs) removed, capped at `max` bytes (on a char boundary) with a note.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 32));
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte: drop the whole CSI sequence; other escapes: ESC + 1 char
            if chars.peek() == Some(&'[') {
                chars.next();
                while let Some(&d) = chars.peek() {
                    chars.next();
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
            continue;
        }
        if (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c) {
            continue;
        }
        if out.len() + c.len_utf8() > max {
            out.push_str(&format!("... [{} more bytes cut]", text.len().saturating_sub(out.len())));
            break;
        }
        out.push(c);
    }
    out
}

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail: String = self.access_key_id.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
        write!(f, "Credentials(key id ...{tail}, secret and token redacted)")
    }
}

impl Credentials {
    /// `text` with every secret value (key id, secret key, session token) replaced by
    /// `[redacted]`, then [`sanitize`]d: what any message that may echo a request goes through.
    pub fn redact(&self, text: &str) -> String {
        let mut t = text.to_string();
        let mut secrets: Vec<&str> = vec![self.secret_access_key.as_str(), self.access_key_id.as_str()];
        if let Some(tok) = &self.session_token {
            secrets.push(tok.as_str());
        }
        // longest first, so a secret containing another is replaced whole
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in secrets {
            if s.len() >= 4 {
                t = t.replace(s, "[redacted]");
            }
        }
        sanitize(&t, MAX_MESSAGE)
    }

    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else the
    /// profile (`profile`, `AWS_PROFILE` or `default`) of `AWS_SHARED_CREDENTIALS_FILE` or
    /// `~/.aws/credentials`.
    pub fn from_env_or_profile(profile: Option<&str>) -> Result<Credentials> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        if let (Some(k), Some(s)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Credentials { access_key_id: k, secret_access_key: s, session_token: var("AWS_SESSION_TOKEN") });
        }
        let profile = profile.map(str::to_string).or_else(|| var("AWS_PROFILE")).unwrap_or_else(|| "default".into());
        let path = credentials_path().ok_or_else(|| CrowdError::Api("no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile".into()))?;
        // bounded, as the secrets' registration reads it (a file past the bound is refused
        // here too, not used with its secrets unregistered)
        let text = read_credentials_file(&path)
            .and_then(|b| String::from_utf8(b).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8")))
            .map_err(|e| {
            CrowdError::Api(format!("no AWS credentials in the environment, and {}: {e}", path.display()))
        })?;
        Self::from_profile_text(&text, &profile)
            .ok_or_else(|| CrowdError::Api(format!("{}: profile [{profile}] has no aws_access_key_id/aws_secret_access_key", path.display())))
    }

    /// The `[profile]` section of an AWS credentials (INI) file.
    pub fn from_profile_text(text: &str, profile: &str) -> Option<Credentials> {
        let mut in_section = false;
        let (mut k, mut s, mut t) = (None, None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') && line.ends_with(']') {
                let name = line[1..line.len() - 1].trim();
                in_section = name == profile || name == format!("profile {profile}");
                continue;
            }
            if !in_section {
                continue;
            }
            if let Some((key, val)) = key_value(line) {
                let val = unquoted(val).to_string();
                match key.as_str() {
                    "aws_access_key_id" => k = Some(val),
                    "aws_secret_access_key" => s = Some(val),
                    "aws_session_token" => t = Some(val),
                    _ => {}
                }
            }
        }
        Some(Credentials { access_key_id: k?, secret_access_key: s?, session_token: t })
    }
}

/// One `key = value` line of a credentials file as botocore reads it: `=` or `:`, the key in
/// lower case, the value trimmed (quotes kept: see [`unquoted`]).
fn key_value(line: &str) -> Option<(String, &str)> {
    let (key, val) = line.split_once(['=', ':'])?;
    Some((key.trim().to_ascii_lowercase(), val.trim()))
}

/// A value without the quotes around it.
fn unquoted(v: &str) -> &str {
    v.trim_matches(|c| c == '"' || c == '\'')
}

/// Every key id, secret and token of every profile of a credentials file, as written and
/// without its quotes: what must be treated as secret wherever it appears.
pub fn credential_values(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (key, val) in text.lines().filter_map(key_value) {
        if matches!(key.as_str(), "aws_access_key_id" | "aws_secret_access_key" | "aws_session_token" | "aws_security_token") {
            out.push(val.to_string());
            out.push(unquoted(val).to_string());
        }
    }
    out
}

/// `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`.
pub fn credentials_path() -> Option<std::path::PathBuf> {
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    var("AWS_SHARED_CREDENTIALS_FILE").map(std::path::PathBuf::from).or_else(|| var("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")))
}

/// Largest AWS credentials file read (a few hundred bytes per profile).
pub const MAX_CREDENTIALS_BYTES: u64 = 16 << 20;

/// The credentials file: a regular file (opened non-blocking: a FIFO there must not hang)
/// of at most [`MAX_CREDENTIALS_BYTES`], as bytes.
pub fn read_credentials_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if m.len() > MAX_CREDENTIALS_BYTES {
        return Err(std::io::Error::other(format!("{} bytes; at most {MAX_CREDENTIALS_BYTES} are read", m.len())));
    }
    let mut b = Vec::new();
    f.take(MAX_CREDENTIALS_BYTES).read_to_end(&mut b)?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` for a UNIX time.
pub fn amz_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = crate::civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// AWS Signature V4 `Authorization` header value. `headers` are (lower-case name, value)
/// and must include `host` and `x-amz-date`; all of them are signed.
#[allow(clippy::too_many_arguments)]
pub fn sigv4_authorization(
    creds: &Credentials,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    payload: &[u8],
    amz_date: &str,
    region: &str,
    service: &str,
) -> String {
    let mut h: Vec<(String, String)> =
        headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.split_whitespace().collect::<Vec<_>>().join(" "))).collect();
    h.sort();
    let canonical_headers: String = h.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed: Vec<&str> = h.iter().map(|(n, _)| n.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!("{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{}", hex(&Sha256::digest(payload)));
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let k = hmac(format!("AWS4{}", creds.secret_access_key).as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    let sig = hex(&hmac(&k, to_sign.as_bytes()));
    format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={sig}", creds.access_key_id)
}

pub struct Client {
    endpoint: String,
    creds: Credentials,
    agent: ureq::Agent,
}

/// One assignment as the API returns it, with the answer parsed.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub assignment_id: String,
    pub worker_id: String,
    pub hit_id: String,
    pub status: String,
    pub accept_time: Option<f64>,
    pub submit_time: Option<f64>,
    /// `(QuestionIdentifier, FreeText)` pairs of the QuestionFormAnswers XML.
    pub fields: Vec<(String, String)>,
}

impl Client {
    /// `endpoint`: "production", "sandbox", or a URL (a local server in tests).
    pub fn new(endpoint: &str, creds: Credentials) -> Client {
        let endpoint = match endpoint {
            "production" | "" => PRODUCTION.to_string(),
            "sandbox" => SANDBOX.to_string(),
            url => url.trim_end_matches('/').to_string(),
        };
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
        // ureq writes every request's headers (x-amz-security-token included; it hides only
        // Authorization and Cookie) to the `log` facade at debug level, which a tracing
        // subscriber would print with PIPELINE_LOG=debug. Cap that facade at info: this
        // crate's own messages never carry secrets, ureq's debug lines may.
        if log::max_level() > log::LevelFilter::Info {
            log::set_max_level(log::LevelFilter::Info);
        }
        Client { endpoint, creds, agent }
    }

    /// One JSON 1.1 call; errors redacted (see [`Credentials::redact`]).
    pub fn call(&self, op: &str, body: &Value) -> Result<Value> {
        self.call_raw(op, body).map_err(|e| match e {
            CrowdError::Api(m) => CrowdError::Api(self.creds.redact(&m)),
            other => CrowdError::Api(self.creds.redact(&other.to_string())),
        })
    }

    fn call_raw(&self, op: &str, body: &Value) -> Result<Value> {
        let payload = body.to_string();
        let host = self
            .endpoint
            .split("://")
            .nth(1)
            .unwrap_or(&self.endpoint)
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let date = amz_date(now);
        let target = format!("{TARGET_PREFIX}.{op}");
        let mut headers = vec![
            ("content-type".to_string(), "application/x-amz-json-1.1".to_string()),
            ("host".to_string(), host),
            ("x-amz-date".to_string(), date.clone()),
            ("x-amz-target".to_string(), target.clone()),
        ];
        if let Some(t) = &self.creds.session_token {
            headers.push(("x-amz-security-token".to_string(), t.clone()));
        }
        let auth = sigv4_authorization(&self.creds, "POST", "/", "", &headers, payload.as_bytes(), &date, REGION, SERVICE);
        let mut req = self.agent.post(&format!("{}/", self.endpoint));
        for (n, v) in &headers {
            if n != "host" {
                req = req.set(n, v);
            }
        }
        req = req.set("authorization", &auth);
        match req.send_string(&payload) {
            Ok(resp) => {
                let text = resp.into_string().map_err(|e| CrowdError::Api(format!("{op}: reading the response: {e}")))?;
                serde_json::from_str(&text).map_err(|e| CrowdError::Api(format!("{op}: response is not JSON: {e}")))
            }
            Err(ureq::Error::Status(code, resp)) => {
                // at most 64 KB of the body is read (the message keeps MAX_MESSAGE of it)
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut std::io::Read::take(resp.into_reader(), 64 * 1024), &mut text);
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let msg = v.get("message").or_else(|| v.get("Message")).and_then(Value::as_str).unwrap_or(&text);
                let kind = v.get("__type").and_then(Value::as_str).unwrap_or("error");
                Err(CrowdError::Api(format!("{op}: HTTP {code} {kind}: {msg}")))
            }
            Err(e) => Err(CrowdError::Api(format!("{op}: {e}"))),
        }
    }

    /// Every page of `op`, collecting the array `key`. A `NextToken` seen before (a server
    /// that would page forever) or more than `max_pages` pages is an error.
    fn paged(&self, op: &str, body: Value, key: &str) -> Result<Vec<Value>> {
        self.paged_at_most(op, body, key, MAX_PAGES)
    }

    fn paged_at_most(&self, op: &str, mut body: Value, key: &str, max_pages: usize) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for page in 1..=max_pages {
            let v = self.call(op, &body)?;
            if let Some(items) = v.get(key).and_then(Value::as_array) {
                out.extend(items.iter().cloned());
            }
            match v.get("NextToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => {
                    if !seen.insert(t.to_string()) {
                        return Err(CrowdError::Api(format!(
                            "{op}: the server returned the same NextToken again on page {page} ({});                              stopping instead of paging forever ({} results so far)",
                            sanitize(t, 64),
                            out.len()
                        )));
                    }
                    body["NextToken"] = json!(t);
                }
                _ => return Ok(out),
            }
        }
        Err(CrowdError::Api(format!(
            "{op}: still a NextToken after {max_pages} pages ({} results); stopping (a listing this long is not expected)",
            out.len()
        )))
    }

    pub fn list_hits(&self) -> Result<Vec<Value>> {
        self.paged("ListHITs", json!({"MaxResults": 100}), "HITs")
    }

    /// Assignments of one HIT in the given statuses (all when empty).
    pub fn list_assignments(&self, hit_id: &str, statuses: &[String]) -> Result<Vec<Assignment>> {
        let mut body = json!({"HITId": hit_id, "MaxResults": 100});
        if !statuses.is_empty() {
            body["AssignmentStatuses"] = json!(statuses);
        }
        let raw = self.paged("ListAssignmentsForHIT", body, "Assignments")?;
        raw.iter()
            .map(|a| {
                let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                Ok(Assignment {
                    assignment_id: s("AssignmentId"),
                    worker_id: s("WorkerId"),
                    hit_id: s("HITId"),
                    status: s("AssignmentStatus"),
                    accept_time: a.get("AcceptTime").and_then(Value::as_f64),
                    submit_time: a.get("SubmitTime").and_then(Value::as_f64),
                    fields: parse_question_form_answers(&s("Answer"))?,
                })
            })
            .collect()
    }

    /// All assignments of the HITs (optionally only those of `hit_type_id`), as records
    /// like the batch file's. Item = the image URL found in the HIT's question (the first
    /// `src="..."`), else the HIT id; the label from `*.label` fields or `taskAnswers` JSON.
    pub fn fetch_records(&self, hit_type_id: Option<&str>, statuses: &[String], question: Option<&str>) -> Result<Vec<AmtRecord>> {
        let mut out = Vec::new();
        for hit in self.list_hits()? {
            let s = |k: &str| hit.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            if let Some(t) = hit_type_id {
                if s("HITTypeId") != t {
                    continue;
                }
            }
            let hit_id = s("HITId");
            let url = image_src(&s("Question"));
            for (n, a) in self.list_assignments(&hit_id, statuses)?.into_iter().enumerate() {
                let label = label_from_fields_for(&a.fields, question)
                    .map_err(|e| CrowdError::Api(format!("HIT {hit_id}, assignment {}: {e}", a.assignment_id)))?
                    .ok_or_else(|| CrowdError::Api(format!("HIT {hit_id}, assignment {}: no label in the answer", a.assignment_id)))?;
                let mut inputs = Vec::new();
                if let Some(u) = &url {
                    inputs.push(("image_url".to_string(), u.clone()));
                }
                out.push(AmtRecord {
                    source: format!("mturk:{hit_id}"),
                    row: n + 1,
                    item: url.clone().unwrap_or_else(|| hit_id.clone()),
                    hit_id: hit_id.clone(),
                    assignment_id: a.assignment_id,
                    worker: a.worker_id,
                    status: a.status,
                    label,
                    work_time_s: match (a.accept_time, a.submit_time) {
                        (Some(x), Some(y)) => Some((y - x).max(0.0)),
                        _ => None,
                    },
                    inputs,
                });
            }
        }
        Ok(out)
    }
}

/// The image URL of a HIT's Question: the `src` of the crowd element in its HTMLContent
/// (CDATA or escaped text, read as XML), else the first `src="..."` anywhere in it.
fn image_src(question: &str) -> Option<String> {
    let html = xml_element_text(question, b"HTMLContent");
    let text = html.as_deref().unwrap_or(question);
    let i = text.find("src=\"")? + 5;
    let rest = &text[i..];
    let j = rest.find('"')?;
    // HTML attribute: its entities are HTML's, decoded here.
    Some(unescape(&rest[..j]))
}

/// The text (CDATA, entities resolved) of the first element named `local` (any namespace);
/// `None` when the document is not XML or has no such element.
fn xml_element_text(xml: &str, local: &[u8]) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut inside = 0usize;
    let mut text = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if inside > 0 || e.local_name().as_ref() == local => inside += 1,
            Event::End(_) if inside > 0 => {
                inside -= 1;
                if inside == 0 {
                    return Some(text);
                }
            }
            Event::Text(t) if inside > 0 => text.push_str(&t.decode().ok()?),
            Event::CData(c) if inside > 0 => text.push_str(&c.decode().ok()?),
            Event::GeneralRef(r) if inside > 0 => push_ref(&mut text, &r).ok()?,
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// Appends what an entity or character reference stands for; XML's five predefined entities
/// only (MTurk's documents declare no others).
fn push_ref(out: &mut String, r: &quick_xml::events::BytesRef<'_>) -> std::result::Result<(), String> {
    if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
        out.push(c);
        return Ok(());
    }
    let name = r.decode().map_err(|e| e.to_string())?;
    match quick_xml::escape::resolve_predefined_entity(&name) {
        Some(s) => {
            out.push_str(s);
            Ok(())
        }
        None => Err(format!("unknown entity &{name};")),
    }
}

/// The label of an answer: a `*.label` field, else a `taskAnswers` (or any) field holding
/// the crowd template's JSON, else a single field's text.
pub fn label_from_fields(fields: &[(String, String)]) -> Option<String> {
    label_from_fields_for(fields, None).ok().flatten()
}

/// [`label_from_fields`] for the answer to `question` (`<question>.label`, or its key in
/// the JSON); without one, an answer to several questions is an error naming them, as in
/// batch files (the first was taken silently).
pub fn label_from_fields_for(fields: &[(String, String)], question: Option<&str>) -> std::result::Result<Option<String>, String> {
    if let Some(q) = question {
        if let Some((_, v)) = fields.iter().find(|(k, _)| *k == format!("{q}.label")) {
            return Ok(Some(v.clone()));
        }
        for (_, v) in fields {
            if let Some(l) = answer_from_json_for(v, Some(q))? {
                return Ok(Some(l));
            }
        }
        return Ok(None);
    }
    let labels: Vec<&(String, String)> = fields.iter().filter(|(k, _)| k.ends_with(".label")).collect();
    if labels.len() > 1 {
        let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        return Err(format!("the answer holds several questions ({}): name the one to use with `question`", names.join(", ")));
    }
    if let Some((_, v)) = labels.first() {
        return Ok(Some(v.clone()));
    }
    for (_, v) in fields {
        if let Some(l) = answer_from_json_for(v, None)? {
            return Ok(Some(l));
        }
    }
    Ok(match fields {
        [(_, v)] if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ => None,
    })
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(j) = rest.find(';') else { break };
        let ent = &rest[1..j];
        let ch = match ent {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[j + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `(QuestionIdentifier, FreeText)` pairs of a QuestionFormAnswers document. Answers with
/// a selection instead of free text give the `SelectionIdentifier`; an answer with neither
/// gives "". Read as XML: elements by local name (any namespace prefix), entities, character
/// references and CDATA decoded.
pub fn parse_question_form_answers(xml: &str) -> Result<Vec<(String, String)>> {
    if xml.trim().is_empty() {
        return Ok(Vec::new());
    }
    let bad = |m: String| CrowdError::Api(format!("QuestionFormAnswers is not well-formed XML: {m}"));
    let mut reader = quick_xml::Reader::from_str(xml);
    // Local names of the open elements, outermost first.
    let mut open: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::new();
    // The answer being read: identifier, free text, selection.
    let mut answer: Option<(Option<String>, Option<String>, Option<String>)> = None;
    let mut text = String::new();
    let mut root = false;
    loop {
        let event = reader.read_event().map_err(|e| bad(e.to_string()))?;
        let (name, empty) = match &event {
            Event::Start(e) => (e.local_name().as_ref().to_vec(), false),
            Event::Empty(e) => (e.local_name().as_ref().to_vec(), true),
            Event::End(_) => {
                let name = open.pop().unwrap_or_default();
                close_element(&name, &mut answer, &mut text, &mut out)?;
                continue;
            }
            Event::Text(t) => {
                text.push_str(&t.decode().map_err(|e| bad(e.to_string()))?);
                continue;
            }
            Event::CData(c) => {
                text.push_str(&c.decode().map_err(|e| bad(e.to_string()))?);
                continue;
            }
            Event::GeneralRef(r) => {
                push_ref(&mut text, r).map_err(bad)?;
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        if open.is_empty() {
            if name != b"QuestionFormAnswers" {
                return Err(CrowdError::Api("answer is not a QuestionFormAnswers document".into()));
            }
            root = true;
        }
        if name == b"Answer" {
            answer = Some((None, None, None));
        }
        text.clear();
        if empty {
            close_element(&name, &mut answer, &mut text, &mut out)?;
        } else {
            open.push(name);
        }
    }
    if !root {
        return Err(CrowdError::Api("answer is not a QuestionFormAnswers document".into()));
    }
    if !open.is_empty() {
        let what = String::from_utf8_lossy(open.last().map(Vec::as_slice).unwrap_or_default()).to_string();
        return Err(CrowdError::Api(format!("unterminated <{what}> in QuestionFormAnswers")));
    }
    Ok(out)
}

/// The end of element `name` (or an empty element) inside a QuestionFormAnswers document.
fn close_element(
    name: &[u8],
    answer: &mut Option<(Option<String>, Option<String>, Option<String>)>,
    text: &mut String,
    out: &mut Vec<(String, String)>,
) -> Result<()> {
    let t = std::mem::take(text);
    match (name, answer.as_mut()) {
        (b"QuestionIdentifier", Some(a)) => a.0 = Some(t.trim().to_string()),
        (b"FreeText", Some(a)) => a.1 = Some(t),
        (b"SelectionIdentifier", Some(a)) => a.2 = Some(t),
        (b"Answer", _) => {
            let (id, free, selection) = answer.take().unwrap_or_default();
            let id = id.ok_or_else(|| CrowdError::Api("<Answer> without <QuestionIdentifier>".into()))?;
            out.push((id, free.or(selection).unwrap_or_default()));
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn profile_text_is_read_as_botocore_reads_it() {
        let c = Credentials::from_profile_text("[default]\nAWS_ACCESS_KEY_ID: AKIAUPPER1\naws_secret_access_key = \"Quoted/Secret+1\"\n", "default").unwrap();
        assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("AKIAUPPER1", "Quoted/Secret+1"));
    }

    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    fn creds() -> Credentials {
        Credentials { access_key_id: "AKIDEXAMPLE".into(), secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(), session_token: None }
    }

    #[test]
    fn sigv4_matches_the_aws_test_suite_get_vanilla() {
        let h = vec![("host".to_string(), "example.amazonaws.com".to_string()), ("x-amz-date".to_string(), "20150830T123600Z".to_string())];
        let a = sigv4_authorization(&creds(), "GET", "/", "", &h, b"", "20150830T123600Z", "us-east-1", "service");
        assert_eq!(
            a,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn amz_date_format() {
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = format!("{:?}", creds());
        assert!(!s.contains("wJalr") && !s.contains("AKIDEX") && s.contains("MPLE"), "{s}");
    }

    #[test]
    fn profile_file_parsing() {
        let t = "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n[profile lab]\naws_access_key_id=A2\naws_secret_access_key=S2\naws_session_token=T2\n";
        let c = Credentials::from_profile_text(t, "lab").unwrap();
        assert_eq!((c.access_key_id.as_str(), c.session_token.as_deref()), ("A2", Some("T2")));
        assert_eq!(Credentials::from_profile_text(t, "default").unwrap().secret_access_key, "S1");
        assert!(Credentials::from_profile_text(t, "none").is_none());
    }

    #[test]
    fn question_form_answers_free_text_json_and_fields() {
        let x = r#"<?xml version="1.0" encoding="ASCII"?><QuestionFormAnswers xmlns="http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd"><Answer><QuestionIdentifier>taskAnswers</QuestionIdentifier><FreeText>[{&quot;category&quot;:{&quot;label&quot;:&quot;fear&quot;}}]</FreeText></Answer></QuestionFormAnswers>"#;
        let f = parse_question_form_answers(x).unwrap();
        assert_eq!(label_from_fields(&f).as_deref(), Some("fear"));
        let y = "<QuestionFormAnswers><Answer><QuestionIdentifier>category.label</QuestionIdentifier><FreeText>sad</FreeText></Answer><Answer><QuestionIdentifier>comment</QuestionIdentifier><FreeText>a &amp; b</FreeText></Answer></QuestionFormAnswers>";
        let f = parse_question_form_answers(y).unwrap();
        assert_eq!(f[1], ("comment".to_string(), "a & b".to_string()));
        assert_eq!(label_from_fields(&f).as_deref(), Some("sad"));
        let two = vec![("alt.label".to_string(), "fear".to_string()), ("category.label".to_string(), "sad".to_string())];
        assert!(label_from_fields_for(&two, None).unwrap_err().contains("alt.label, category.label"));
        assert_eq!(label_from_fields_for(&two, Some("category")).unwrap().as_deref(), Some("sad"));
        assert!(parse_question_form_answers("<html/>").is_err());
    }

    /// A local server speaking the JSON 1.1 protocol; checks the signature of every request.
    #[test]
    fn question_form_answers_entities_cdata_and_character_references() {
        let x = "<QuestionFormAnswers><Answer><QuestionIdentifier> q1 </QuestionIdentifier>\
                 <FreeText>caf&#233; &#x41; &lt;b&gt; &apos;x&apos;</FreeText></Answer>\
                 <Answer><QuestionIdentifier>q2</QuestionIdentifier><FreeText><![CDATA[a <raw> & b]]></FreeText></Answer>\
                 </QuestionFormAnswers>";
        let a = parse_question_form_answers(x).unwrap();
        assert_eq!(a, vec![("q1".into(), "café A <b> 'x'".into()), ("q2".into(), "a <raw> & b".into())]);
    }

    #[test]
    fn question_form_answers_namespace_prefixes_and_selections() {
        let x = r#"<?xml version="1.0"?><q:QuestionFormAnswers xmlns:q="http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd"><q:Answer><q:QuestionIdentifier>pick</q:QuestionIdentifier><q:SelectionIdentifier>happy</q:SelectionIdentifier></q:Answer></q:QuestionFormAnswers>"#;
        assert_eq!(parse_question_form_answers(x).unwrap(), vec![("pick".into(), "happy".into())]);
        // A tag whose name merely contains "Answer" is not an answer.
        let y = "<QuestionFormAnswers><AnswerHint>x</AnswerHint></QuestionFormAnswers>";
        assert!(parse_question_form_answers(y).unwrap().is_empty());
    }

    #[test]
    fn question_form_answers_missing_fields_and_bad_documents() {
        // No FreeText (or an empty one): an empty answer, not an error.
        let x = "<QuestionFormAnswers><Answer><QuestionIdentifier>a</QuestionIdentifier></Answer>\
                 <Answer><QuestionIdentifier>b</QuestionIdentifier><FreeText/></Answer></QuestionFormAnswers>";
        assert_eq!(parse_question_form_answers(x).unwrap(), vec![("a".into(), String::new()), ("b".into(), String::new())]);
        let no_id = "<QuestionFormAnswers><Answer><FreeText>x</FreeText></Answer></QuestionFormAnswers>";
        assert!(parse_question_form_answers(no_id).unwrap_err().to_string().contains("without <QuestionIdentifier>"));
        let cut = "<QuestionFormAnswers><Answer><QuestionIdentifier>a</QuestionIdentifier>";
        assert!(parse_question_form_answers(cut).unwrap_err().to_string().contains("unterminated <Answer>"));
        let other = "<HTMLQuestion><FreeText>QuestionFormAnswers</FreeText></HTMLQuestion>";
        assert!(parse_question_form_answers(other).unwrap_err().to_string().contains("not a QuestionFormAnswers document"));
        let mismatched = "<QuestionFormAnswers><Answer></FreeText></QuestionFormAnswers>";
        assert!(parse_question_form_answers(mismatched).is_err());
        let entity = "<QuestionFormAnswers><Answer><QuestionIdentifier>a</QuestionIdentifier><FreeText>&nbsp;</FreeText></Answer></QuestionFormAnswers>";
        assert!(parse_question_form_answers(entity).unwrap_err().to_string().contains("unknown entity &nbsp;"));
        assert!(parse_question_form_answers("  ").unwrap().is_empty());
    }

    #[test]
    fn image_src_from_cdata_or_escaped_html_content() {
        let cdata = r#"<HTMLQuestion xmlns="x"><HTMLContent><![CDATA[<crowd-image-classifier src="https://x/a.jpg?s=1&amp;t=2">]]></HTMLContent></HTMLQuestion>"#;
        assert_eq!(image_src(cdata).as_deref(), Some("https://x/a.jpg?s=1&t=2"));
        let escaped = r#"<HTMLQuestion><HTMLContent>&lt;img src="https://x/b.jpg"&gt;</HTMLContent></HTMLQuestion>"#;
        assert_eq!(image_src(escaped).as_deref(), Some("https://x/b.jpg"));
        assert_eq!(image_src(r#"not xml src="https://x/c.jpg""#).as_deref(), Some("https://x/c.jpg"));
        assert_eq!(image_src("<HTMLQuestion><HTMLContent>no image</HTMLContent></HTMLQuestion>"), None);
    }

    fn serve(calls: Arc<Mutex<Vec<String>>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end().to_string();
                    if h.is_empty() {
                        break;
                    }
                    let (n, v) = h.split_once(':').unwrap();
                    headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
                let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                let len: usize = get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).unwrap();
                let target = get("x-amz-target").unwrap_or_default();
                let date = get("x-amz-date").unwrap_or_default();
                let auth = get("authorization").unwrap_or_default();
                // recompute the signature over the headers the client says it signed
                let signed_names: Vec<String> = auth
                    .split("SignedHeaders=")
                    .nth(1)
                    .and_then(|s| s.split(',').next())
                    .map(|s| s.split(';').map(str::to_string).collect())
                    .unwrap_or_default();
                let signed: Vec<(String, String)> =
                    signed_names.iter().map(|n| (n.clone(), get(n).unwrap_or_default())).collect();
                let expect = if date.len() == 16 {
                    sigv4_authorization(&creds(), "POST", "/", "", &signed, &body, &date, "us-east-1", "mturk-requester")
                } else {
                    String::new()
                };
                let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let ok = auth == expect
                    && signed_names.iter().any(|n| n == "x-amz-target")
                    && get("content-type").as_deref() == Some("application/x-amz-json-1.1");
                calls.lock().unwrap().push(format!("{target} {}", req.get("NextToken").and_then(Value::as_str).unwrap_or("-")));
                let (code, resp) = if !ok {
                    (403, json!({"__type": "InvalidSignatureException", "message": "signature mismatch"}))
                } else {
                    match (target.as_str(), req.get("NextToken").and_then(Value::as_str)) {
                        ("MTurkRequesterServiceV20170117.ListHITs", None) => (200, json!({"HITs": [
                            {"HITId": "H1", "HITTypeId": "T", "Question": "<HTMLQuestion><HTMLContent><![CDATA[<crowd-image-classifier src=\"https://x/results/fear/fear_01.jpg\" categories=\"['angry']\">]]></HTMLContent></HTMLQuestion>"}
                        ], "NextToken": "p2"})),
                        ("MTurkRequesterServiceV20170117.ListHITs", Some("p2")) => (200, json!({"HITs": [
                            {"HITId": "H2", "HITTypeId": "T", "Question": "no image here"},
                            {"HITId": "H3", "HITTypeId": "OTHER", "Question": ""}
                        ]})),
                        ("MTurkRequesterServiceV20170117.ListAssignmentsForHIT", tok) => {
                            let hit = req["HITId"].as_str().unwrap_or("").to_string();
                            let ans = |l: &str| format!("<QuestionFormAnswers><Answer><QuestionIdentifier>taskAnswers</QuestionIdentifier><FreeText>[{{&quot;category&quot;:{{&quot;label&quot;:&quot;{l}&quot;}}}}]</FreeText></Answer></QuestionFormAnswers>");
                            if tok.is_none() {
                                (200, json!({"Assignments": [
                                    {"AssignmentId": format!("{hit}a"), "WorkerId": "W1", "HITId": hit, "AssignmentStatus": "Submitted", "AcceptTime": 100.0, "SubmitTime": 112.5, "Answer": ans("fear")}
                                ], "NextToken": "a2"}))
                            } else {
                                (200, json!({"Assignments": [
                                    {"AssignmentId": format!("{hit}b"), "WorkerId": "W2", "HITId": hit, "AssignmentStatus": "Approved", "AcceptTime": 100.0, "SubmitTime": 103.0, "Answer": ans("sad")}
                                ]}))
                            }
                        }
                        _ => (400, json!({"__type": "UnknownOperationException", "message": target})),
                    }
                };
                let text = resp.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn fetches_hits_and_assignments_from_a_local_server_following_next_token() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let url = serve(calls.clone());
        let client = Client::new(&url, creds());
        let recs = client.fetch_records(Some("T"), &["Submitted".into(), "Approved".into()], None).unwrap();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0].item, "https://x/results/fear/fear_01.jpg");
        assert_eq!(recs[0].inputs, vec![("image_url".to_string(), "https://x/results/fear/fear_01.jpg".to_string())]);
        assert_eq!((recs[0].label.as_str(), recs[0].work_time_s), ("fear", Some(12.5)));
        assert_eq!((recs[1].label.as_str(), recs[1].worker.as_str()), ("sad", "W2"));
        assert_eq!(recs[2].item, "H2", "no image URL in the question: the HIT id is the item");
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.iter().filter(|c| c.contains("ListHITs")).count(), 2, "{calls:?}");
        assert!(calls.iter().any(|c| c.ends_with("ListAssignmentsForHIT a2")), "{calls:?}");
        assert!(!calls.iter().any(|c| c.contains("H3")), "{calls:?}");
    }

    #[test]
    fn a_bad_signature_is_an_error_naming_the_operation() {
        let url = serve(Arc::new(Mutex::new(Vec::new())));
        let wrong = Credentials { secret_access_key: "nope".into(), ..creds() };
        let e = Client::new(&url, wrong).list_hits().unwrap_err().to_string();
        assert!(e.contains("ListHITs") && e.contains("403") && e.contains("InvalidSignature"), "{e}");
        assert!(!e.contains("nope"), "the secret must not leak into errors");
    }

    /// A local server answering every request with `handler(target, request body, raw
    /// request head)`: (status, body). No signature check.
    fn serve_with(handler: impl Fn(&str, &Value, &str) -> (u16, String) + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let (mut target, mut len) = (String::new(), 0usize);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 {
                        break;
                    }
                    head.push_str(&h);
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((n, v)) = h.split_once(':') {
                        match n.trim().to_ascii_lowercase().as_str() {
                            "x-amz-target" => target = v.trim().to_string(),
                            "content-length" => len = v.trim().parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (code, text) = handler(&target, &req, &head);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        format!("http://{addr}")
    }

    fn creds_with_token() -> Credentials {
        Credentials { session_token: Some("FQoGZXIvYXdzEXAMPLESESSIONTOKENxyz".into()), ..creds() }
    }

    #[test]
    fn a_repeated_next_token_is_an_error_not_an_endless_loop() {
        let calls = Arc::new(Mutex::new(0usize));
        let c2 = calls.clone();
        let url = serve_with(move |_, _, _| {
            *c2.lock().unwrap() += 1;
            (200, json!({"HITs": [{"HITId": "H"}], "NextToken": "same"}).to_string())
        });
        let e = Client::new(&url, creds()).list_hits().unwrap_err().to_string();
        assert!(e.contains("ListHITs") && e.contains("same NextToken") && e.contains("page 2"), "{e}");
        assert_eq!(*calls.lock().unwrap(), 2);
    }

    #[test]
    fn paging_stops_at_the_page_cap() {
        let n = Arc::new(Mutex::new(0usize));
        let n2 = n.clone();
        let url = serve_with(move |_, _, _| {
            let mut g = n2.lock().unwrap();
            *g += 1;
            (200, json!({"HITs": [], "NextToken": format!("t{}", *g)}).to_string())
        });
        let c = Client::new(&url, creds());
        let e = c.paged_at_most("ListHITs", json!({}), "HITs", 5).unwrap_err().to_string();
        assert!(e.contains("after 5 pages"), "{e}");
        assert_eq!(*n.lock().unwrap(), 5);
    }

    #[test]
    fn error_bodies_that_echo_headers_are_redacted_capped_and_stripped() {
        // the server echoes the whole request head (with the token, the key id and the
        // signature), a terminal escape and 1 MB of padding into its error message
        let url = serve_with(|_, _, head| {
            let msg = format!("bad request; you sent:\n{head}\u{1b}[2J\u{1b}]0;owned\u{7}{}", "x".repeat(1 << 20));
            (400, json!({"__type": "ValidationException", "message": msg}).to_string())
        });
        let c = creds_with_token();
        let e = Client::new(&url, c.clone()).list_hits().unwrap_err().to_string();
        assert!(e.contains("ListHITs") && e.contains("400") && e.contains("ValidationException"), "{e}");
        assert!(e.contains("[redacted]"), "{e}");
        for secret in [c.access_key_id.as_str(), c.secret_access_key.as_str(), c.session_token.as_deref().unwrap()] {
            assert!(!e.contains(secret), "secret leaked: {e}");
        }
        assert!(!e.contains('\u{1b}') && !e.contains('\u{7}'), "control characters kept");
        assert!(e.len() < MAX_MESSAGE + 200, "{} bytes", e.len());
        assert!(e.contains("more bytes cut"));
        // a body that is not JSON at all goes the same way
        let url = serve_with(|_, _, head| (500, format!("<html>{head}</html>")));
        let e = Client::new(&url, c.clone()).list_hits().unwrap_err().to_string();
        assert!(!e.contains(c.session_token.as_deref().unwrap()) && !e.contains(&c.access_key_id), "{e}");
    }

    #[test]
    fn sanitize_keeps_text_and_newlines() {
        assert_eq!(sanitize("a\tb\nc\u{1b}[31mred\u{1b}[0m\r", 100), "a\tb\ncred");
        let s = sanitize(&"é".repeat(100), 11);
        assert!(s.starts_with("ééééé...") && s.contains("more bytes cut"), "{s}");
    }

    #[test]
    fn client_caps_the_log_facade_so_ureq_header_lines_are_not_emitted() {
        log::set_max_level(log::LevelFilter::Trace);
        let _ = Client::new("sandbox", creds_with_token());
        assert!(log::max_level() <= log::LevelFilter::Info);
    }
}
