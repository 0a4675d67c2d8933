//! Making text from stages and servers safe to print and store: secrets redacted, terminal
//! control sequences stripped, length capped. Every stage error and summary line passes
//! through [`clean`] before it reaches the terminal, a log, a run record or the database.

/// Longest message kept (bytes); the rest is cut with a note of how much.
pub const MAX_MESSAGE: usize = 4096;

/// Environment variables whose values are secrets wherever they appear.
const SECRET_VARS: &[&str] = &["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN"];

static REGISTERED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// A secret read from somewhere else than the environment (a credentials file): redacted
/// from every message from now on.
pub fn register_secret(s: &str) {
    if let Ok(mut r) = REGISTERED.lock() {
        if !r.iter().any(|x| x == s) {
            r.push(s.to_string());
        }
    }
}

/// The secrets known to this process, each with where it comes from (the variable's name, or
/// "a credentials file"): the environment's first, then the registered ones. Short values
/// are ignored: redacting "a" would garble every message.
pub fn known_secrets() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = SECRET_VARS.iter().filter_map(|n| std::env::var(n).ok().map(|x| (n.to_string(), x))).collect();
    v.extend(REGISTERED.lock().map(|r| r.clone()).unwrap_or_default().into_iter().map(|x| ("a credentials file".to_string(), x)));
    v.retain(|(_, s)| s.len() >= 8);
    v
}

/// The secret values known to this process.
fn secrets() -> Vec<String> {
    known_secrets().into_iter().map(|(_, s)| s).collect()
}

/// Where the first of `known` ([`known_secrets`]) found in `s` comes from, never the secret
/// itself; `whole`: only a value equal to the secret counts.
pub fn secret_origin<'a>(s: &str, known: &'a [(String, String)], whole: bool) -> Option<&'a str> {
    known.iter().find(|(_, x)| if whole { x == s } else { s.contains(x.as_str()) }).map(|(o, _)| o.as_str())
}

/// Registers every `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token` and
/// `aws_security_token` of the AWS credentials file (`AWS_SHARED_CREDENTIALS_FILE` or
/// `~/.aws/credentials`), of every profile, whatever the environment holds: the S3 remote
/// and the `amt` stage (with its own `profile`) read it. Found by hostile passes: a pipeline
/// holding that file's secret was checked before the remote read the file, and stored; only
/// one profile was registered. Read and parsed as the MTurk client and the remote read it.
pub fn register_profile_secrets() {
    use pipeline_crowd::mturk;
    let Some(bytes) = mturk::credentials_path().and_then(|p| mturk::read_credentials_file(&p).ok()) else { return };
    // invalid UTF-8 as U+FFFD: the keys sought are ASCII
    for v in mturk::credential_values(&String::from_utf8_lossy(&bytes)) {
        register_secret(&v);
    }
}

/// Replace every known secret value by `[redacted]`, and the user and password of any URL
/// (`http://user:pw@host`: an endpoint's, however short the password).
pub fn redact(s: &str) -> String {
    let mut out = strip_url_userinfo(s);
    for secret in secrets() {
        if out.contains(&secret) {
            out = out.replace(&secret, "[redacted]");
        }
    }
    out
}

/// `scheme://user:pw@host/...` -> `scheme://[redacted]@host/...`, everywhere in `s`.
fn strip_url_userinfo(s: &str) -> String {
    if !s.contains("://") || !s.contains('@') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest.find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"' || c == '\'' || c == '>' || c == ')').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            out.push_str("[redacted]");
            rest = &rest[at..];
        }
    }
    out.push_str(rest);
    out
}

/// [`redact`] on every string (keys included) of a JSON value.
pub fn redact_value(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    if secrets().is_empty() {
        return v.clone();
    }
    match v {
        Value::String(s) => Value::String(redact(s)),
        Value::Array(a) => Value::Array(a.iter().map(redact_value).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (redact(k), redact_value(x))).collect()),
        other => other.clone(),
    }
}

/// Strip ANSI escape sequences and other control characters (newlines and tabs are kept).
pub fn strip_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ESC \`, or a two-character escape.
                match chars.peek() {
                    Some('[') => {
                        chars.next();
                        while let Some(&n) = chars.peek() {
                            chars.next();
                            if ('@'..='~').contains(&n) {
                                break;
                            }
                        }
                    }
                    Some(']') => {
                        chars.next();
                        while let Some(n) = chars.next() {
                            if n == '\u{7}' || (n == '\u{1b}' && chars.peek() == Some(&'\\')) {
                                if n == '\u{1b}' {
                                    chars.next();
                                }
                                break;
                            }
                        }
                    }
                    _ => {
                        chars.next();
                    }
                }
            }
            '\n' | '\t' => out.push(c),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Standard error for the log: each event stripped of control sequences and redacted before
/// it is written. Log fields carry what users wrote (a promotion target, a path, a stage's
/// message) and reached the terminal as they were; the log has no colours for the same
/// reason (an escape in a field could not be told from the formatter's own).
pub struct CleanStderr;

impl std::io::Write for CleanStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // the formatter writes one whole event per call
        let text = redact(&strip_controls(&String::from_utf8_lossy(buf)));
        std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut std::io::stderr())
    }
}

/// Cap `s` at `max` bytes (on a character boundary), saying how much was cut.
pub fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [... {} more bytes cut]", &s[..end], s.len() - end)
}

/// Cap `s` at `max` bytes keeping its end (the end of a stderr is where the error is).
pub fn cap_tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut] {}", &s[start..])
}

/// Redact, strip and cap: what every stored or printed message goes through.
pub fn clean(s: &str) -> String {
    // stripped first: a secret split by a control character is whole again once stripped
    cap(&redact(&strip_controls(s)), MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_userinfo_is_redacted() {
        assert_eq!(super::redact("GET http://minio:pw@127.0.0.1:1/b failed"), "GET http://[redacted]@127.0.0.1:1/b failed");
        assert_eq!(super::redact("see https://example.com/a@b and s3://x"), "see https://example.com/a@b and s3://x");
        assert_eq!(super::redact("mail a@b.c, url http://h/p"), "mail a@b.c, url http://h/p");
    }

    use super::*;

    #[test]
    fn controls_are_stripped_and_text_kept() {
        assert_eq!(strip_controls("\u{1b}[31mred\u{1b}[0m ok\n\ttab\u{7}\r"), "red ok\n\ttab");
        assert_eq!(strip_controls("a\u{1b}]0;title\u{7}b"), "ab");
    }

    #[test]
    fn long_messages_are_capped_on_a_char_boundary() {
        let s = "é".repeat(5000);
        let c = cap(&s, 4097);
        assert!(c.len() < 4200 && c.contains("more bytes cut"), "{}", c.len());
    }

    #[test]
    fn a_secret_split_by_a_control_character_is_redacted_once_joined() {
        register_secret("SplitSecret-text-0042");
        let c = clean("key SplitSec\u{1}ret-text-0042 here");
        assert!(!c.contains("SplitSecret") && c.contains("[redacted]"), "{c}");
    }

    #[test]
    fn secrets_from_the_environment_are_redacted() {
        // A variable name only this test uses, so parallel tests are not affected.
        std::env::set_var("AWS_SECURITY_TOKEN", "tok-SECRET-123456");
        assert_eq!(redact("header x-amz-security-token: tok-SECRET-123456!"), "header x-amz-security-token: [redacted]!");
        std::env::remove_var("AWS_SECURITY_TOKEN");
    }
}
