//! The rendezvous client: posts our data to our mailbox and waits for the peer's,
//! long-polling when the server supports it and backing off exponentially when it does
//! not (the plain PHP mailbox). One keep-alive HTTP client serves the engine's whole
//! life.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use tokio::time::Instant;

use super::proto::Role;
use super::request::{MAX_ROOM_LEN, VERSION_HEADER};
use crate::{Error, Result};

/// Longest `wait` asked of the server in one long-poll.
const LONG_POLL: Duration = Duration::from_secs(25);

/// Cap of the exponential backoff.
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Floor of the backoff start, so a zero setting cannot busy-loop.
const BACKOFF_FLOOR: Duration = Duration::from_millis(10);

/// Longest `Retry-After` honoured; a server asking for more is retried after this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// Time allowed on top of the asked `wait` for one request.
const REQUEST_SLACK: Duration = Duration::from_secs(10);

/// Largest response body read, in bytes; a larger one is an error.
const MAX_RESPONSE: usize = 256 * 1024;

/// Keep-alive connections idle longer than this are closed.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// TCP + TLS connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Least time between two GETs made early because of [`SignalClient::wake`]: however
/// often it is called, wakes add at most four GETs a second to the backoff schedule.
pub const WAKE_GAP: Duration = Duration::from_millis(250);

/// A client of one room on one rendezvous server. Cheap to clone: clones share the
/// connection pool and the request counter.
#[derive(Debug, Clone)]
pub struct SignalClient {
    http: reqwest::Client,
    url: Url,
    /// `url` without credentials or query, for messages.
    shown: Arc<str>,
    room: Arc<str>,
    backoff_start: Duration,
    requests: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
}

impl SignalClient {
    /// A client for `room` on the mailbox at `url` (`http://` or `https://`; an
    /// existing query string is kept). `backoff_start` is the first backoff step against
    /// servers that do not long-poll (at least 10 ms is used); `requests` is incremented
    /// once per HTTP request sent. An `https://` server is verified against the
    /// system's root certificates.
    pub fn new(
        url: &str,
        room: &str,
        backoff_start: Duration,
        requests: Arc<AtomicU64>,
    ) -> Result<SignalClient> {
        SignalClient::with_ca_file(url, room, backoff_start, requests, None)
    }

    /// Like [`SignalClient::new`], but when `ca_file` is given an `https://` server is
    /// verified against the CA certificates in that PEM file only (the `signalCaFile`
    /// setting), e.g. a private CA, instead of the system's roots.
    pub fn with_ca_file(
        url: &str,
        room: &str,
        backoff_start: Duration,
        requests: Arc<AtomicU64>,
        ca_file: Option<&Path>,
    ) -> Result<SignalClient> {
        let parsed = Url::parse(url).map_err(|e| {
            Error::config(
                "signalUrl",
                crate::redact::url(url),
                format!("not a URL ({e})"),
                "an http:// or https:// URL, e.g. https://example.com/signal.php",
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(Error::config(
                "signalUrl",
                crate::redact::url(url),
                "not an http(s) URL with a host",
                "an http:// or https:// URL, e.g. https://example.com/signal.php",
            ));
        }
        if room.is_empty() || room.len() > MAX_ROOM_LEN {
            return Err(Error::config(
                "room",
                room,
                format!("{} bytes long", room.len()),
                format!("a name of 1 to {MAX_ROOM_LEN} bytes"),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .pool_idle_timeout(POOL_IDLE)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("stunfwd/", env!("CARGO_PKG_VERSION")));
        if parsed.scheme() == "http" && ca_file.is_none() {
            // Plain HTTP needs no trust store, and parsing the system's roots cost an
            // idle engine 0.27 MB of heap (docs/benchmarks.md). A redirect to https
            // then fails certificate verification: give the https:// URL instead.
            builder = builder.tls_built_in_root_certs(false);
        }
        if let Some(path) = ca_file {
            builder = builder.tls_built_in_root_certs(false);
            for cert in read_ca_file(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::Signal(format!("cannot create the HTTP client: {e}")))?;
        Ok(SignalClient {
            http,
            shown: crate::redact::url(parsed.as_str()).into(),
            url: parsed,
            room: room.into(),
            backoff_start: backoff_start.max(BACKOFF_FLOOR),
            requests,
            wake: Arc::default(),
        })
    }

    /// The room this client talks about.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// A client of another room on the same server, sharing this one's HTTP
    /// connections and request counter (its own wake-ups). `room` is one this code
    /// derived (a mailbox name), so it is not checked again.
    pub fn for_room(&self, room: &str) -> SignalClient {
        SignalClient {
            room: room.into(),
            wake: Arc::default(),
            ..self.clone()
        }
    }

    /// Asks a [`SignalClient::wait_for`] that is sleeping between polls (against a
    /// mailbox that does not long-poll) to read the mailbox now: the peer has shown
    /// that it posted something (it sent us a check or a handshake). Cheap and safe to
    /// call often: a wake that comes while no one sleeps is kept for the next pause,
    /// several wakes count as one, and an early read comes at most once per
    /// [`WAKE_GAP`].
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Posts `data` to `role`'s mailbox, replacing what was there.
    pub async fn post(&self, role: Role, data: &str) -> Result<()> {
        let body = serde_json::json!({"room": &*self.room, "role": role.as_str(), "data": data});
        let req = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(REQUEST_SLACK);
        let resp = self.send(req, "POST").await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = read_body(resp).await.unwrap_or_default();
        Err(Error::Signal(format!(
            "POST to {} for role {role} in room `{}` refused: {status}: {}",
            self.shown,
            self.room,
            snippet(&text)
        )))
    }

    /// Removes `role`'s data from the room (when the engine stops). A server that does
    /// not know `DELETE` answers an error, which callers may ignore.
    pub async fn delete(&self, role: Role) -> Result<()> {
        let url = self.query_url(role, None, None);
        let req = self.http.delete(url).timeout(REQUEST_SLACK);
        let resp = self.send(req, "DELETE").await?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        let text = read_body(resp).await.unwrap_or_default();
        Err(Error::Signal(format!(
            "DELETE of role {role} in room `{}` refused: {status}: {}",
            self.room,
            snippet(&text)
        )))
    }

    /// One `GET` of `role`'s mailbox, long-polling up to `wait` (whole seconds are sent)
    /// for data newer than version `since`. `Ok(None)` when there is none (404); else
    /// the data and its `x-stunfwd-version` if the server sent one.
    pub async fn get(
        &self,
        role: Role,
        wait: Option<Duration>,
        since: Option<u64>,
    ) -> Result<Option<(String, Option<u64>)>> {
        self.get_once(role, wait, since).await.map_err(|(e, _)| e)
    }

    /// [`SignalClient::get`], also returning the server's `Retry-After` with an error.
    async fn get_once(
        &self,
        role: Role,
        wait: Option<Duration>,
        since: Option<u64>,
    ) -> Result<Option<(String, Option<u64>)>, (Error, Option<Duration>)> {
        let wait_secs = wait.map(|w| w.as_secs()).filter(|s| *s > 0);
        let url = self.query_url(role, wait_secs, since);
        let timeout = Duration::from_secs(wait_secs.unwrap_or(0)) + REQUEST_SLACK;
        let req = self.http.get(url).timeout(timeout);
        let resp = self.send(req, "GET").await.map_err(|e| (e, None))?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let version = header(VERSION_HEADER);
        let retry_after = header(reqwest::header::RETRY_AFTER.as_str()).map(Duration::from_secs);
        let text = read_body(resp).await.map_err(|e| (e, None))?;
        if !status.is_success() {
            let e = Error::Signal(format!(
                "GET of role {role} in room `{}` failed: {status}: {}",
                self.room,
                snippet(&text)
            ));
            return Err((e, retry_after));
        }
        Ok(unwrap_data(text).map(|data| (data, version)))
    }

    /// Waits up to `timeout` until `role`'s mailbox holds data that `accept` turns into
    /// `Some`, and returns that.
    ///
    /// Long-polls with `wait=25` (bounded by the time left). A 404 that comes back much
    /// faster than asked means the server does not long-poll: the client then sleeps
    /// with exponential backoff (the configured start, ×2 per consecutive fast answer, at
    /// most 5 s, or the start when that is longer). Rejected data is not fetched again: the next GET passes `since`, or,
    /// against a server without versions, waits a backoff step first. HTTP errors are
    /// retried with the same backoff, or after the server's `Retry-After` (429, 503) when
    /// that is longer. Never busy-loops; cancel by dropping the future.
    pub async fn wait_for<T>(
        &self,
        role: Role,
        timeout: Duration,
        mut accept: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut backoff = self.backoff_start;
        // A configured start above the usual cap is kept, not halved after one step.
        let cap = BACKOFF_CAP.max(self.backoff_start);
        let mut since: Option<u64> = None;
        let mut last_early: Option<Instant> = None;
        let mut last_problem: Option<String> = None;

        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let remaining = deadline - now;
            let wait = LONG_POLL.min(remaining);
            let asked = Duration::from_secs(wait.as_secs());
            let got =
                tokio::time::timeout_at(deadline, self.get_once(role, Some(wait), since)).await;
            let elapsed = now.elapsed();
            let pause = match got {
                Err(_) => break,
                Ok(Ok(Some((data, version)))) => {
                    if let Some(value) = accept(&data) {
                        return Ok(value);
                    }
                    tracing::debug!(room = %self.room, %role, ?version, "rendezvous data rejected; waiting for newer data");
                    last_problem = Some(
                        "data was posted but not taken (not authentic, stale, already used, \
                         or not what was waited for)"
                            .into(),
                    );
                    match version {
                        // First rejection of this version: long-poll for a newer one.
                        Some(v) if since != Some(v) => {
                            since = Some(v);
                            backoff = self.backoff_start;
                            None
                        }
                        // No versions, or a server that ignores `since`.
                        _ => Some(next_backoff(&mut backoff, cap)),
                    }
                }
                Ok(Ok(None)) => {
                    let fast = asked.is_zero() || elapsed < Duration::from_secs(1).min(asked / 2);
                    if fast {
                        Some(next_backoff(&mut backoff, cap))
                    } else {
                        backoff = self.backoff_start;
                        None
                    }
                }
                Ok(Err((e, retry_after))) => {
                    tracing::debug!(room = %self.room, %role, error = %e, "rendezvous request failed; retrying");
                    last_problem = Some(e.to_string());
                    // A busy server (429, 503) says when to come back; do not come sooner.
                    let asked = retry_after.unwrap_or_default().min(RETRY_AFTER_CAP);
                    Some(next_backoff(&mut backoff, cap).max(asked))
                }
            };
            if let Some(pause) = pause {
                let woken = tokio::select! {
                    _ = tokio::time::sleep_until((Instant::now() + pause).min(deadline)) => false,
                    _ = self.wake.notified() => true,
                };
                if woken {
                    if let Some(last) = last_early {
                        tokio::time::sleep_until((last + WAKE_GAP).min(deadline)).await;
                    }
                    tracing::debug!(room = %self.room, %role, "woken: reading the mailbox early");
                    last_early = Some(Instant::now());
                }
            }
        }

        let mut msg = format!(
            "no data from the {role} peer in room `{}` within {timeout:?}",
            self.room
        );
        if let Some(problem) = last_problem {
            msg.push_str(&format!(" (last problem: {problem})"));
        }
        Err(Error::Timeout(msg))
    }

    /// Counts and sends one request, naming the server in errors.
    async fn send(&self, req: reqwest::RequestBuilder, method: &str) -> Result<reqwest::Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        req.send().await.map_err(|e| {
            // reqwest quotes the whole URL, credentials and token included.
            let e = e.without_url();
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "failed"
            };
            let chain = crate::redact::in_text(&crate::error::chain(&e), self.url.as_str());
            Error::Signal(format!("{method} {} {what}: {chain}", self.shown))
        })
    }

    /// The mailbox URL with `room`, `role` and the optional parameters appended to any
    /// query the configured URL already has.
    fn query_url(&self, role: Role, wait_secs: Option<u64>, since: Option<u64>) -> Url {
        let mut url = self.url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("room", &self.room);
            q.append_pair("role", role.as_str());
            if let Some(w) = wait_secs {
                q.append_pair("wait", &w.to_string());
            }
            if let Some(s) = since {
                q.append_pair("since", &s.to_string());
            }
        }
        url
    }
}

/// The CA certificates of a PEM bundle, for `signalCaFile`.
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    const EXPECTED: &str = "a readable PEM file with one or more CA certificates";
    let invalid = |problem: String| {
        Error::config(
            "signalCaFile",
            path.display().to_string(),
            problem,
            EXPECTED,
        )
    };
    let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot be read ({e})")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| invalid(format!("is not PEM ({})", crate::error::chain(&e))))?;
    if certs.is_empty() {
        return Err(invalid("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Returns the current backoff step and doubles it for next time, up to `cap`.
fn next_backoff(backoff: &mut Duration, cap: Duration) -> Duration {
    let current = *backoff;
    *backoff = (current * 2).min(cap);
    current
}

/// Reads a response body of at most [`MAX_RESPONSE`] bytes as (lossy) UTF-8.
async fn read_body(mut resp: reqwest::Response) -> Result<String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        Error::Signal(format!(
            "reading the rendezvous response: {}",
            crate::error::chain(&e.without_url())
        ))
    })? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(Error::Signal(format!(
                "rendezvous response larger than {MAX_RESPONSE} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Mailboxes that wrap the data as JSON `{"data": "..."}` are unwrapped; `{"data": null}`
/// and an empty body mean "no data". Anything else is the data itself.
fn unwrap_data(body: String) -> Option<String> {
    if body.trim().is_empty() {
        return None;
    }
    if body.trim_start().starts_with('{') {
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&body) {
            match map.get("data") {
                Some(serde_json::Value::String(s)) => return Some(s.clone()),
                Some(serde_json::Value::Null) => return None,
                _ => {}
            }
        }
    }
    Some(body)
}

/// The first 200 characters of a server message, for error texts.
fn snippet(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn client(url: &str) -> SignalClient {
        SignalClient::new(url, "my room/ü&x", Duration::ZERO, Arc::default()).unwrap()
    }

    #[test]
    fn query_is_appended_and_encoded() {
        let c = client("http://127.0.0.1:1/signal.php");
        let u = c.query_url(Role::Server, Some(25), Some(7));
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:1/signal.php?room=my+room%2F%C3%BC%26x&role=server&wait=25&since=7"
        );
        let c = client("http://127.0.0.1:1/s?token=abc");
        let u = c.query_url(Role::Client, None, None);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:1/s?token=abc&room=my+room%2F%C3%BC%26x&role=client"
        );
    }

    #[test]
    fn new_validates_url_and_room() {
        let n = Arc::<AtomicU64>::default;
        assert!(SignalClient::new("ftp://x/", "r", Duration::ZERO, n()).is_err());
        assert!(SignalClient::new("not a url", "r", Duration::ZERO, n()).is_err());
        assert!(SignalClient::new("http://x/", "", Duration::ZERO, n()).is_err());
        assert!(SignalClient::new("http://x/", &"r".repeat(129), Duration::ZERO, n()).is_err());
        let c = SignalClient::new("https://x/", &"r".repeat(128), Duration::ZERO, n()).unwrap();
        assert_eq!(c.backoff_start, BACKOFF_FLOOR);
    }

    #[test]
    fn ca_file_errors_name_the_key() {
        let n = Arc::<AtomicU64>::default;
        let missing = Path::new("/nonexistent/ca.pem");
        let err = SignalClient::with_ca_file("https://x/", "r", Duration::ZERO, n(), Some(missing))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "signalCaFile"),
            "{err}"
        );
        let empty =
            std::env::temp_dir().join(format!("stunfwd-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = SignalClient::with_ca_file("https://x/", "r", Duration::ZERO, n(), Some(&empty))
            .unwrap_err();
        let _ = std::fs::remove_file(&empty);
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn wrapped_data_is_unwrapped() {
        assert_eq!(unwrap_data("abc".into()), Some("abc".into()));
        assert_eq!(unwrap_data("".into()), None);
        assert_eq!(unwrap_data(" \n".into()), None);
        assert_eq!(
            unwrap_data(r#"{"data":"{\"v\":1}","status":"ok"}"#.into()),
            Some(r#"{"v":1}"#.into())
        );
        assert_eq!(unwrap_data(r#"{"data":null}"#.into()), None);
        assert_eq!(
            unwrap_data(r#"{"v":1,"id":"x"}"#.into()),
            Some(r#"{"v":1,"id":"x"}"#.into())
        );
        assert_eq!(unwrap_data("{broken".into()), Some("{broken".into()));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Duration::from_millis(50);
        let steps: Vec<u128> = (0..9)
            .map(|_| next_backoff(&mut b, BACKOFF_CAP).as_millis())
            .collect();
        assert_eq!(steps, [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // A start above the cap (signalBackoff up to 60 s) stays the step.
        let mut b = Duration::from_secs(20);
        let cap = BACKOFF_CAP.max(b);
        let steps: Vec<u64> = (0..3)
            .map(|_| next_backoff(&mut b, cap).as_secs())
            .collect();
        assert_eq!(steps, [20, 20, 20]);
    }
}
