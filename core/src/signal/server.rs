//! The rendezvous server: an in-memory mailbox per room and role over HTTP, compatible
//! with the PHP mailbox of the original tool, plus long-polling (`wait`, `since`),
//! `DELETE`, room expiry and limits; optionally a STUN responder on a UDP port so one
//! small process is all a deployment needs. The protocol is in `docs/protocol.md`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::proto::Role;
use crate::stun::responder::StunResponder;
use crate::{Error, Result};

/// Response header carrying the mailbox version of the data returned by a `GET`.
pub const VERSION_HEADER: &str = "x-stunfwd-version";

/// Longest room name accepted, in bytes.
pub const MAX_ROOM_LEN: usize = 128;

/// Shortest interval between two sweeps for expired rooms.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// Longest interval between two sweeps for expired rooms.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Settings of a [`SignalServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalServerConfig {
    /// HTTP listen address (port 0 picks a free port).
    pub http: SocketAddr,
    /// UDP address of the STUN responder; `None` runs no STUN responder.
    pub stun: Option<SocketAddr>,
    /// A room with no activity (request, or pending long-poll) for this long is removed.
    pub room_ttl: Duration,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body: usize,
    /// Cap on the `wait` a client may ask for.
    pub max_wait: Duration,
    /// Most rooms held at once; creating one more gets 503.
    pub max_rooms: usize,
}

impl Default for SignalServerConfig {
    /// Loopback on free ports, 5 min room TTL, 16 KiB bodies, 30 s long-polls,
    /// 100 000 rooms.
    fn default() -> Self {
        SignalServerConfig {
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            stun: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            room_ttl: Duration::from_secs(5 * 60),
            max_body: 16 * 1024,
            max_wait: Duration::from_secs(30),
            max_rooms: 100_000,
        }
    }
}

/// A running rendezvous server. Stop it with [`SignalServer::stop`]; dropping it
/// aborts its tasks.
pub struct SignalServer {
    http_addr: SocketAddr,
    stun_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    serve_task: Mutex<Option<JoinHandle<()>>>,
    sweep_task: JoinHandle<()>,
    stun: Mutex<Option<StunResponder>>,
}

impl SignalServer {
    /// Binds the HTTP listener (and the STUN responder when `config.stun` is set) and
    /// spawns the server on the current tokio runtime. Returns once listening.
    pub async fn start(config: SignalServerConfig) -> Result<SignalServer> {
        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|e| Error::bind("rendezvous http", config.http, &e))?;
        let http_addr = listener
            .local_addr()
            .map_err(|e| Error::io("rendezvous http: reading the bound address", &e))?;

        let stun = match config.stun {
            Some(addr) => Some(
                StunResponder::bind(addr)
                    .await
                    .map_err(|e| rename_bind_error(e, "rendezvous stun"))?,
            ),
            None => None,
        };
        let stun_addr = stun.as_ref().map(StunResponder::local_addr);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            requests: AtomicU64::new(0),
            room_ttl: config.room_ttl,
            max_body: config.max_body,
            max_wait: config.max_wait,
            max_rooms: config.max_rooms,
            shutdown: shutdown_rx.clone(),
        });

        let app = Router::new().fallback(handle).with_state(shared.clone());
        let mut signal = shutdown_rx;
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            // An error means the server handle is gone, which is a shutdown too.
            let _ = signal.wait_for(|stop| *stop).await;
        });
        let serve_task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "rendezvous http server failed");
            }
        });

        let sweep_every = (config.room_ttl / 2).clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL);
        let sweeper = Arc::downgrade(&shared);
        let sweep_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = sweeper.upgrade() else {
                    return;
                };
                let removed = shared.lock().sweep(Instant::now(), shared.room_ttl);
                if removed > 0 {
                    tracing::debug!(removed, "rendezvous: expired rooms removed");
                }
            }
        });

        tracing::info!(%http_addr, ?stun_addr, "rendezvous server listening");
        Ok(SignalServer {
            http_addr,
            stun_addr,
            shared,
            shutdown,
            serve_task: Mutex::new(Some(serve_task)),
            sweep_task,
            stun: Mutex::new(stun),
        })
    }

    /// The mailbox URL clients use: `http://IP:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.http_addr)
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound STUN responder address, if one runs.
    pub fn stun_addr(&self) -> Option<SocketAddr> {
        self.stun_addr
    }

    /// HTTP requests served so far, all methods and outcomes.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Rooms currently held (expired rooms count until the sweeper removes them).
    pub fn rooms(&self) -> usize {
        self.shared.lock().rooms.len()
    }

    /// Stops gracefully: stops accepting connections, answers pending long-polls with
    /// 404 at once, closes idle keep-alive connections and waits up to `timeout` for
    /// requests in flight; whatever is left after that is aborted. Idempotent.
    pub async fn stop(&self, timeout: Duration) {
        self.shutdown.send_replace(true);
        self.sweep_task.abort();
        drop(lock(&self.stun).take());
        let task = lock(&self.serve_task).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(timeout, &mut task).await.is_err() {
                tracing::debug!("rendezvous server did not drain within {timeout:?}; aborting");
                task.abort();
            }
        }
    }
}

impl std::fmt::Debug for SignalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalServer")
            .field("http_addr", &self.http_addr)
            .field("stun_addr", &self.stun_addr)
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

impl Drop for SignalServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.sweep_task.abort();
        if let Some(task) = lock(&self.serve_task).take() {
            task.abort();
        }
    }
}

/// Names the failing socket as ours in a bind error from the STUN responder.
fn rename_bind_error(e: Error, what: &str) -> Error {
    match e {
        Error::AddrInUse { addr, .. } => Error::AddrInUse {
            what: what.to_owned(),
            addr,
        },
        Error::Io { context, message } => Error::Io {
            context: format!("{what}: {context}"),
            message,
        },
        other => other,
    }
}

/// State shared by the request handlers, the sweeper and the [`SignalServer`] handle.
#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    requests: AtomicU64,
    room_ttl: Duration,
    max_body: usize,
    max_wait: Duration,
    max_rooms: usize,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }
}

/// Locks a mutex, recovering from poisoning: every critical section leaves the data
/// consistent, so a panic elsewhere does not make it unusable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Default)]
struct Store {
    rooms: HashMap<String, Room>,
    /// Last version handed out. Versions are unique for the server's lifetime, so a
    /// mailbox's version never repeats, even when its room expires and comes back.
    last_version: u64,
}

#[derive(Debug)]
struct Room {
    mailboxes: [Mailbox; 2],
    last_active: Instant,
}

#[derive(Debug)]
struct Mailbox {
    data: Option<String>,
    version: u64,
    /// Pinged on every POST; long-polls hold a receiver.
    posted: watch::Sender<()>,
}

impl Mailbox {
    fn new() -> Mailbox {
        Mailbox {
            data: None,
            version: 0,
            posted: watch::Sender::new(()),
        }
    }
}

impl Room {
    fn new(now: Instant) -> Room {
        Room {
            mailboxes: [Mailbox::new(), Mailbox::new()],
            last_active: now,
        }
    }

    fn has_waiters(&self) -> bool {
        self.mailboxes.iter().any(|m| m.posted.receiver_count() > 0)
    }

    fn is_empty(&self) -> bool {
        self.mailboxes.iter().all(|m| m.data.is_none())
    }

    /// A room is expired after `ttl` without requests, unless someone is long-polling it.
    fn is_expired(&self, now: Instant, ttl: Duration) -> bool {
        now.saturating_duration_since(self.last_active) >= ttl && !self.has_waiters()
    }
}

fn slot(role: Role) -> usize {
    match role {
        Role::Client => 0,
        Role::Server => 1,
    }
}

/// Why a room could not be created.
struct Full;

impl Store {
    /// The live room named `name`, touched; an expired one is removed on the spot.
    fn live(&mut self, name: &str, now: Instant, ttl: Duration) -> Option<&mut Room> {
        if self.rooms.get(name)?.is_expired(now, ttl) {
            self.rooms.remove(name);
            return None;
        }
        let room = self.rooms.get_mut(name)?;
        room.last_active = now;
        Some(room)
    }

    /// The live room named `name`, created when absent (unless the store is full).
    fn live_or_create(
        &mut self,
        name: &str,
        now: Instant,
        ttl: Duration,
        max_rooms: usize,
    ) -> Result<&mut Room, Full> {
        if self.live(name, now, ttl).is_none() {
            if self.rooms.len() >= max_rooms {
                // Expired rooms the sweeper has not reached yet should not cause a 503.
                self.sweep(now, ttl);
                if self.rooms.len() >= max_rooms {
                    return Err(Full);
                }
            }
            self.rooms.insert(name.to_owned(), Room::new(now));
        }
        self.rooms.get_mut(name).ok_or(Full)
    }

    fn sweep(&mut self, now: Instant, ttl: Duration) -> usize {
        let before = self.rooms.len();
        self.rooms.retain(|_, room| !room.is_expired(now, ttl));
        before - self.rooms.len()
    }

    fn next_version(&mut self) -> u64 {
        self.last_version += 1;
        self.last_version
    }
}

/// Body of a mailbox `POST`. Unknown fields are ignored.
#[derive(Deserialize)]
struct PostBody {
    room: String,
    role: String,
    data: String,
}

/// The one handler: every method and path is the mailbox, except `GET /healthz`.
async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    if method == Method::POST {
        return post(&shared, req.into_body()).await;
    }
    if method != Method::GET && method != Method::DELETE {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} is not supported; use GET, POST or DELETE"),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        return resp;
    }
    let query = match Query::<HashMap<String, String>>::try_from_uri(req.uri()) {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query string: {e}")),
    };
    if method == Method::GET {
        if req.uri().path() == "/healthz" && !query.contains_key("room") {
            return (StatusCode::OK, "ok").into_response();
        }
        get(&shared, &query).await
    } else {
        delete(&shared, &query)
    }
}

async fn post(shared: &Shared, body: Body) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, shared.max_body).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {} bytes", shared.max_body),
        );
    };
    let msg: PostBody = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "body must be JSON {{\"room\": string, \"role\": \"client\"|\"server\", \"data\": string}}: {e}"
                ),
            )
        }
    };
    let role = match parse_room_role(Some(&msg.room), Some(&msg.role)) {
        Ok((_, role)) => role,
        Err(e) => return e.into(),
    };

    let now = Instant::now();
    let mut store = shared.lock();
    let version = store.next_version();
    let room = match store.live_or_create(&msg.room, now, shared.room_ttl, shared.max_rooms) {
        Ok(room) => room,
        Err(Full) => return full(shared.max_rooms),
    };
    let mailbox = &mut room.mailboxes[slot(role)];
    mailbox.data = Some(msg.data);
    mailbox.version = version;
    mailbox.posted.send_replace(());
    drop(store);
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn get(shared: &Shared, query: &HashMap<String, String>) -> Response {
    let (room_name, role) = match parse_room_role(query.get("room"), query.get("role")) {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    let wait = match query.get("wait").map(|w| parse_wait(w)) {
        None => None,
        Some(Ok(w)) => Some(w.min(shared.max_wait)),
        Some(Err(e)) => return e.into(),
    };
    let since = match query.get("since").map(|s| parse_since(s)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return e.into(),
    };
    let deadline = wait.map(|w| Instant::now() + w);
    let mut shutdown = shared.shutdown.clone();

    loop {
        let now = Instant::now();
        let (mut posted, deadline) = {
            let mut store = shared.lock();
            if let Some(room) = store.live(room_name, now, shared.room_ttl) {
                let mailbox = &room.mailboxes[slot(role)];
                if let Some(data) = &mailbox.data {
                    // Versions never repeat, so "differs from since" means "newer".
                    if since != Some(mailbox.version) {
                        return found(data.clone(), mailbox.version);
                    }
                }
            }
            let Some(deadline) = deadline else {
                return not_found();
            };
            if now >= deadline || *shutdown.borrow() {
                return not_found();
            }
            match store.live_or_create(room_name, now, shared.room_ttl, shared.max_rooms) {
                Ok(room) => (room.mailboxes[slot(role)].posted.subscribe(), deadline),
                Err(Full) => return full(shared.max_rooms),
            }
        };
        tokio::select! {
            // Err means the room was removed (DELETE or expiry): look again.
            _ = posted.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.wait_for(|stop| *stop) => return not_found(),
        }
    }
}

fn delete(shared: &Shared, query: &HashMap<String, String>) -> Response {
    let (room_name, role) = match parse_room_role(query.get("room"), query.get("role")) {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    let mut store = shared.lock();
    if let Some(room) = store.live(room_name, Instant::now(), shared.room_ttl) {
        room.mailboxes[slot(role)].data = None;
        if room.is_empty() && !room.has_waiters() {
            store.rooms.remove(room_name);
        }
    }
    drop(store);
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// A 400 answer's message.
struct BadRequest(String);

impl From<BadRequest> for Response {
    fn from(e: BadRequest) -> Response {
        error(StatusCode::BAD_REQUEST, e.0)
    }
}

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

fn parse_room_role<'a>(
    room: Option<&'a String>,
    role: Option<&String>,
) -> Result<(&'a str, Role), BadRequest> {
    let room = room.ok_or_else(|| bad("missing `room`"))?;
    if room.is_empty() || room.len() > MAX_ROOM_LEN {
        return Err(bad(format!(
            "`room` must be 1 to {MAX_ROOM_LEN} bytes long, got {}",
            room.len()
        )));
    }
    let role = role.ok_or_else(|| bad("missing `role`"))?;
    let role = role
        .parse::<Role>()
        .map_err(|_| bad("`role` must be \"client\" or \"server\""))?;
    Ok((room, role))
}

fn parse_wait(s: &str) -> Result<Duration, BadRequest> {
    match s.parse::<f64>() {
        Ok(w) if w.is_finite() && w >= 0.0 => Ok(Duration::from_secs_f64(w.min(86_400.0))),
        _ => Err(bad("`wait` must be a number of seconds (0 or more)")),
    }
}

fn parse_since(s: &str) -> Result<u64, BadRequest> {
    s.parse::<u64>()
        .map_err(|_| bad("`since` must be a version number as returned in x-stunfwd-version"))
}

fn found(data: String, version: u64) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::HeaderName::from_static(VERSION_HEADER),
                HeaderValue::from(version),
            ),
        ],
        data,
    )
        .into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no data for this room and role")
}

fn full(max_rooms: usize) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the rendezvous server holds its maximum of {max_rooms} rooms; try again later"),
    )
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"status": "error", "error": message.into()});
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn expired_rooms_are_invisible_before_the_sweep() {
        let mut store = Store::default();
        let t0 = Instant::now();
        assert!(store.live_or_create("r", t0, TTL, 10).is_ok());
        assert!(store.live("r", t0 + TTL / 2, TTL).is_some());
        // Touched at TTL/2, so alive until 1.5 TTL.
        assert!(store.live("r", t0 + TTL, TTL).is_some());
        assert!(store.live("r", t0 + TTL * 3, TTL).is_none());
        assert!(
            store.rooms.is_empty(),
            "an expired room is dropped when seen"
        );
    }

    #[test]
    fn waiters_keep_a_room_alive() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let room = store.live_or_create("r", t0, TTL, 10).ok().unwrap();
        let rx = room.mailboxes[0].posted.subscribe();
        assert_eq!(store.sweep(t0 + TTL * 2, TTL), 0);
        drop(rx);
        assert_eq!(store.sweep(t0 + TTL * 2, TTL), 1);
    }

    #[test]
    fn full_store_reclaims_expired_rooms_first() {
        let mut store = Store::default();
        let t0 = Instant::now();
        assert!(store.live_or_create("a", t0, TTL, 1).is_ok());
        assert!(store.live_or_create("b", t0, TTL, 1).is_err());
        assert!(store.live_or_create("b", t0 + TTL, TTL, 1).is_ok());
        assert_eq!(store.rooms.len(), 1);
    }

    #[test]
    fn versions_never_repeat() {
        let mut store = Store::default();
        let a = store.next_version();
        store.rooms.clear();
        let b = store.next_version();
        assert!(b > a);
    }

    #[test]
    fn wait_parsing() {
        assert_eq!(parse_wait("5").ok(), Some(Duration::from_secs(5)));
        assert_eq!(parse_wait("0.5").ok(), Some(Duration::from_millis(500)));
        assert!(parse_wait("-1").is_err());
        assert!(parse_wait("NaN").is_err());
        assert!(parse_wait("inf").is_err());
        assert!(parse_wait("soon").is_err());
        assert!(parse_wait("1e300").is_ok());
    }
}
