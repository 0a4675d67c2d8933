//! `pipeline ui`: a local, read-only web view of the cache and its run history.
//!
//! axum on the tokio runtime the engine uses; HTML rendered here, no JavaScript, nothing
//! fetched from elsewhere. It reads files only (see [`read`]): it never opens the sled
//! database, so it neither blocks a run nor waits for one. No route writes anything.

pub mod html;
pub mod pages;
pub mod read;
pub mod svg;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use pages::Page;
use read::Files;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("{}: not a pipeline cache ({why}); pass --cache DIR", path.display())]
    NoCache { path: PathBuf, why: String },
    #[error("--bind {0}: not a loopback address; the view has no authentication, so serving it to the network needs --allow-remote")]
    NotLoopback(IpAddr),
    #[error("listening on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error("only {left} file descriptors are left under this process's limit ({limit}; `ulimit -n`): the view needs at least {MIN_FDS_LEFT} to answer a page")]
    TooFewDescriptors { left: u64, limit: u64 },
}

/// Descriptors the view must have left to start: a connection and the files one page reads.
const MIN_FDS_LEFT: u64 = 4;

#[derive(Debug, Clone)]
pub struct UiOptions {
    pub cache: PathBuf,
    pub bind: IpAddr,
    pub port: u16,
    pub allow_remote: bool,
    /// Pipeline files the plan page offers besides those of recorded runs.
    pub pipelines: Vec<PathBuf>,
    /// A request's headers must arrive within this (from when the server starts waiting for
    /// them, idle keep-alive included), and a blocked write may wait this long ([`StallIo`]).
    pub idle_timeout: std::time::Duration,
}

/// A connection whose writes make no progress for `stall` (a peer that stopped reading its
/// answer) fails. Reads are bounded by hyper's header-read timeout instead (see [`serve`]),
/// so the time a page takes to compute is never counted against the client.
pub struct StallIo {
    io: tokio::net::TcpStream,
    stall: std::time::Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// A write is waiting and `deadline` is its limit.
    waiting: bool,
}

impl StallIo {
    fn new(io: tokio::net::TcpStream, stall: std::time::Duration) -> Self {
        StallIo { io, stall, deadline: Box::pin(tokio::time::sleep(stall)), waiting: false }
    }
}

impl tokio::io::AsyncRead for StallIo {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StallIo {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => {
                if !self.waiting {
                    self.waiting = true;
                    let at = tokio::time::Instant::now() + self.stall;
                    self.deadline.as_mut().reset(at);
                }
                if self.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")));
                }
                Poll::Pending
            }
            ready => {
                self.waiting = false;
                ready
            }
        }
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct AppState {
    files: Files,
    pipelines: Vec<PathBuf>,
    /// Host headers accepted when bound to loopback (a page elsewhere must not read this
    /// through DNS rebinding).
    hosts: Option<Vec<String>>,
}

type St = State<Arc<AppState>>;

pub fn router(files: Files, pipelines: Vec<PathBuf>, hosts: Option<Vec<String>>) -> Router {
    let state = Arc::new(AppState { files, pipelines, hosts });
    Router::new()
        .route("/", get(runs))
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/entries", get(entries))
        .route("/entry/{key}", get(entry))
        .route("/entry/{key}/view/{*path}", get(view))
        .route("/files/{key}/{*path}", get(file))
        .route("/compare", get(compare))
        .route("/plan", get(plan_list))
        .route("/plan/{n}", get(plan))
        // Browsers ask for it on every page; "nothing" is an answer, a 404 is a console error.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(|| async { respond(Page::NotFound("no such page".into())) })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Refuses foreign Host headers on a loopback server; sets the headers every answer carries.
async fn guard(State(st): St, req: Request, next: Next) -> Response {
    if let Some(hosts) = &st.hosts {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !hosts.iter().any(|h| h == host) {
            return (StatusCode::MISDIRECTED_REQUEST, "this view answers to its loopback address only\n").into_response();
        }
    }
    let path = req.uri().path().to_string();
    let mut res = next.run(req).await;
    tracing::debug!(path = %crate::text::cap(&path, 300), status = res.status().as_u16(), "ui request");
    let h = res.headers_mut();
    // No script runs on any page, and an artifact can never become one.
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn respond(p: Page) -> Response {
    let html = |code, title: &str, msg: &str| (code, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], pages::layout(title, &format!("<h1>{title}</h1><p>{msg}</p>"), false)).into_response();
    match p {
        Page::Html(s) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], s).into_response(),
        Page::NotFound(m) => html(StatusCode::NOT_FOUND, "Not found", &pages::esc(&m)),
        Page::BadRequest(m) => html(StatusCode::BAD_REQUEST, "Bad request", &pages::esc(&m)),
    }
}

/// Pages read files: off the async threads.
async fn blocking(st: Arc<AppState>, f: impl FnOnce(&AppState) -> Page + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(move || crate::regular::exhausted_during(|| f(&st))).await {
        Ok((_, true)) => busy(),
        Ok((p, false)) => respond(p),
        Err(e) => {
            tracing::error!("a page panicked: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

/// 503: the page could not read what it needed for want of file descriptors.
fn busy() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "busy: out of file descriptors, try again\n").into_response()
}

fn page_of(q: &Option<String>) -> usize {
    q.as_deref().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("page=")?.parse().ok()).unwrap_or(0).min(1 << 40)
}

async fn runs(State(st): St) -> Response {
    blocking(st, |s| pages::runs_page(&s.files)).await
}

async fn run(State(st): St, UrlPath(id): UrlPath<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else { return respond(Page::NotFound(format!("not a run id: {}", crate::text::cap(&id, 40)))) };
    blocking(st, move |s| pages::run_page(&s.files, id)).await
}

async fn entries(State(st): St) -> Response {
    blocking(st, |s| pages::entries_page(&s.files)).await
}

async fn entry(State(st): St, UrlPath(key): UrlPath<String>, RawQuery(q): RawQuery) -> Response {
    let page = page_of(&q);
    blocking(st, move |s| pages::entry_page(&s.files, &key, page)).await
}

async fn view(State(st): St, UrlPath((key, path)): UrlPath<(String, String)>, RawQuery(q): RawQuery) -> Response {
    let page = page_of(&q);
    blocking(st, move |s| pages::view_page(&s.files, &key, &path, page)).await
}

async fn compare(State(st): St, RawQuery(q): RawQuery) -> Response {
    match pages::parse_ids(q.as_deref()) {
        Ok(ids) => blocking(st, move |s| pages::compare_page(&s.files, &ids)).await,
        Err(e) => respond(Page::BadRequest(e)),
    }
}

async fn plan_list(State(st): St) -> Response {
    blocking(st, |s| pages::plan_list_page(&s.files, &s.pipelines)).await
}

/// One plan page at a time: a plan hashes inputs and reads every manifest, and 150 of them
/// queued at once slowed every other page to seconds and grew the server to 480 MB (found by
/// a hostile pass). A request that waits more than 20 s for its turn gets 503.
static PLANS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
const PLAN_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// A turn at `sem`, or the 503 for a request that waited `wait` without getting one.
async fn turn(sem: &tokio::sync::Semaphore, wait: std::time::Duration) -> Result<tokio::sync::SemaphorePermit<'_>, Response> {
    match tokio::time::timeout(wait, sem.acquire()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err((StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], "busy: other plans are being computed, try again\n").into_response()),
    }
}

async fn plan(State(st): St, UrlPath(n): UrlPath<String>) -> Response {
    let Ok(n) = n.parse::<usize>() else { return respond(Page::NotFound("no such pipeline file".into())) };
    let permit = match turn(&PLANS, PLAN_WAIT).await {
        Ok(t) => t,
        Err(busy) => return busy,
    };
    // The turn goes with the work, not the request: a client that hangs up leaves the plan
    // running on its thread, and with the turn given back at the hang-up six `curl -m 1`
    // had five plans hashing at once (found by a hostile pass).
    blocking(st, move |s| {
        let _turn = permit;
        pages::plan_page(&s.files, &s.pipelines, n)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_as_rfc_9110_reads_them() {
        let r = |h: &str| byte_range(Some(h), 100);
        assert_eq!(byte_range(None, 100), None);
        assert_eq!(r("bytes=0-9"), Some(Ok((0, 9))));
        assert_eq!(r("bytes=90-"), Some(Ok((90, 99))));
        assert_eq!(r("bytes=90-1000"), Some(Ok((90, 99))));
        assert_eq!(r("bytes=-10"), Some(Ok((90, 99))));
        assert_eq!(r("bytes=-1000"), Some(Ok((0, 99))));
        assert_eq!(r("bytes=100-"), Some(Err(())));
        assert_eq!(r("bytes=-0"), Some(Err(())));
        assert_eq!(byte_range(Some("bytes=0-"), 0), Some(Err(())));
        // ignored: served whole
        for h in ["bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=-", "bytes=a-b", "bytes=99999999999999999999-", "bytes=+1-2"] {
            assert_eq!(r(h), None, "{h}");
        }
    }

    /// The plan flood (150 queued plans slowed every page to 12 s): one plan at a time, and a
    /// request that waits too long is told to come back.
    #[tokio::test]
    async fn a_plan_waits_its_turn_and_a_long_wait_answers_503() {
        let sem = tokio::sync::Semaphore::new(1);
        let wait = std::time::Duration::from_millis(100);
        let first = turn(&sem, wait).await.expect("a free turn is taken");
        let t0 = std::time::Instant::now();
        let busy = turn(&sem, wait).await.expect_err("a second plan must wait for the first");
        assert!(t0.elapsed() >= wait);
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap()), Some("5"));
        // the turn comes once the first is done
        let sem2 = &sem;
        let waiter = async move { turn(sem2, std::time::Duration::from_secs(10)).await.is_ok() };
        let release = async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(first);
        };
        let (got, ()) = tokio::join!(waiter, release);
        assert!(got);
    }
}

/// A file of an entry, streamed from its blob.
/// The byte range a `Range` header asks of a file of `size` bytes (RFC 9110, 14.1): `None` to
/// serve it whole (no header, another unit, several ranges, or a form not understood: all
/// allowed to be ignored), `Some(Err(()))` when the one range asked lies outside the file
/// (416), else `Some(Ok((first, last)))`, inclusive.
fn byte_range(h: Option<&str>, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h?.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |t: &str| -> Option<u64> { (!t.is_empty() && t.len() <= 19 && t.bytes().all(|c| c.is_ascii_digit())).then(|| t.parse().ok()).flatten() };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        // the last N bytes
        (true, false) => {
            let n = num(b)?;
            if n == 0 || size == 0 {
                return Some(Err(()));
            }
            Some(Ok((size.saturating_sub(n), size - 1)))
        }
        (false, _) => {
            let first = num(a)?;
            let last = if b.is_empty() { u64::MAX } else { num(b)? };
            if last < first {
                return None;
            }
            if first >= size {
                return Some(Err(()));
            }
            Some(Ok((first, last.min(size - 1))))
        }
        (true, true) => None,
    }
}

async fn file(State(st): St, UrlPath((key, path)): UrlPath<(String, String)>, RawQuery(q): RawQuery, headers: axum::http::HeaderMap) -> Response {
    let download = q.as_deref().unwrap_or("").split('&').any(|kv| kv == "download=1" || kv == "download");
    let found = tokio::task::spawn_blocking(move || crate::regular::exhausted_during(|| pages::entry_file(&st.files, &key, &path).map(|(_, fe, blob)| (fe, blob))))
        .await
        .ok();
    let found = match found {
        Some((_, true)) => return busy(),
        Some((r, false)) => r,
        None => None,
    };
    let Some((fe, blob)) = found else { return respond(Page::NotFound("no such file in that entry".into())) };
    let mut f = match tokio::fs::File::open(&blob).await {
        Ok(f) => f,
        Err(e) if crate::regular::is_exhaustion(&e) => return busy(),
        Err(_) => return respond(Page::NotFound("the blob is gone".into())),
    };
    // One byte range, for resumed downloads of big models and seeking (ignored before: a
    // resumed download got the whole file again)
    let range = byte_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), fe.size);
    let (first, len) = match range {
        Some(Err(())) => {
            let mut r = (StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", fe.size)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        Some(Ok((a, b))) => (a, b - a + 1),
        None => (0, fe.size),
    };
    if first > 0 {
        use tokio::io::AsyncSeekExt;
        if f.seek(std::io::SeekFrom::Start(first)).await.is_err() {
            return respond(Page::NotFound("the blob is gone".into()));
        }
    }
    let stream = futures::stream::unfold((f, len), |(mut f, left)| async move {
        use tokio::io::AsyncReadExt;
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; (64u64 << 10).min(left) as usize];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    let name = fe.path.rsplit('/').next().unwrap_or("file");
    let ascii: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '_' }).collect();
    let mut res = Response::new(Body::from_stream(stream));
    if let Some(Ok((a, b))) = range {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{}", fe.size)) {
            res.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    let h = res.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(pages::content_type(&fe.path)));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let disp = if download || pages::content_type(&fe.path) == "application/octet-stream" {
        format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{}", pages::enc(name))
    } else {
        format!("inline; filename=\"{ascii}\"")
    };
    if let Ok(v) = HeaderValue::from_str(&disp) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// Serve until `shutdown` resolves. Prints the address on stdout once listening.
pub fn serve(opts: UiOptions, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), UiError> {
    let files = Files::open(&opts.cache)?;
    if !opts.bind.is_loopback() && !opts.allow_remote {
        return Err(UiError::NotLoopback(opts.bind));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(16).enable_all().build().map_err(UiError::Serve)?;
    rt.block_on(async move {
        let addr = SocketAddr::new(opts.bind, opts.port);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| UiError::Bind(addr, e))?;
        let local = listener.local_addr().map_err(UiError::Serve)?;
        let hosts = opts.bind.is_loopback().then(|| {
            let p = local.port();
            // the bound address too: `--bind 127.0.0.2` printed a URL answered 421
            let own = if local.is_ipv6() { format!("[{}]", local.ip()) } else { local.ip().to_string() };
            let mut h = vec![format!("localhost:{p}"), format!("127.0.0.1:{p}"), format!("[::1]:{p}"), format!("{own}:{p}")];
            if p == 80 {
                h.extend(["localhost".into(), "127.0.0.1".into(), "[::1]".into(), own]);
            }
            h
        });
        if !opts.bind.is_loopback() {
            eprintln!("warning: serving the cache on {local} to anyone who can reach it: the view has no authentication (every artifact can be read and downloaded)");
        }
        // before the address is printed: a caller waits for it to mean "serving"
        let (cap, left, fd_limit) = max_connections();
        if left < MIN_FDS_LEFT {
            return Err(UiError::TooFewDescriptors { left, limit: fd_limit });
        }
        let url = if local.is_ipv6() { format!("http://[{}]:{}/", local.ip(), local.port()) } else { format!("http://{local}/") };
        println!("pipeline ui: serving {} read-only at {url}", files.root().display());
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // Not axum::serve: it sets no header-read timeout, and connections that sent half a
        // request (or trickled a byte every few seconds) held the server for ever, 1,100 of
        // them starving it of descriptors (found by hostile passes). hyper's own timeout is an
        // absolute deadline for each request's headers, whatever the client trickles.
        let app = router(files, opts.pipelines, hosts);
        let mut shutdown = std::pin::pin!(shutdown);
        // Found by a hostile pass: connections had no cap, so a flood of them took every
        // descriptor and the pages' own file reads failed. Past the cap, new connections
        // wait in the listen backlog until one closes (each idles out after `idle_timeout`).
        // With few connections, one a client keeps alive and idle would hold a slot for the
        // idle timeout (found by a hostile pass: 30 s for everyone else at `ulimit -n 16`):
        // each connection then answers one request and closes.
        let keep_alive = cap >= 16;
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cap));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            let io = tokio::select! {
                r = listener.accept() => match r {
                    Ok((io, _)) => io,
                    // out of descriptors is worth a pause, not an exit (as axum::serve)
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let limit = opts.idle_timeout;
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(StallIo::new(io, limit));
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limit).keep_alive(keep_alive);
                let _ = b.serve_connection(io, service).await;
                drop(permit);
            });
        }
        Ok::<(), UiError>(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Connections served at once: 256, and at most a quarter of the descriptors this process
/// may still open (the rest are for the cache files the pages read), at least 1; with the
/// descriptors left and the limit.
fn max_connections() -> (usize, u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    let fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur } else { 1024 };
    // those already open (the database, the listener, the runtime's): a dozen at rest
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(16);
    let left = fds.saturating_sub(open);
    ((left / 4).clamp(1, 256) as usize, left, fds)
}
