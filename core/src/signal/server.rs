//! The rendezvous server: a mailbox per room and role over HTTP(S), compatible with the
//! PHP mailbox of the original tool, plus long-polling (`wait`, `since`), `DELETE`, room
//! expiry, limits, `/healthz` and `/metrics`; optionally a STUN responder on a UDP port
//! so one small process is all a deployment needs. Rooms live in memory or in Redis
//! ([`StoreConfig`]). The protocol is in `docs/protocol.md`, operations in
//! `docs/rendezvous.md`.
//!
//! The HTTP front end is our own accept loop over hyper's HTTP/1 connection, so that
//! every connection is counted and capped per client, TLS handshakes and request heads
//! have deadlines, and shutdown can drain: stop accepting, answer long-polls at once,
//! close idle keep-alive connections, abort what is left after a timeout.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::{RateLimiter, SlotRefused, Slots};
use super::memory::MemoryStore;
use super::metrics::{self, Counters, Gauges};
use super::redis_store::RedisStore;
use super::request::{self, BadRequest};
pub use super::store::StoreConfig;
use super::store::{Notifier, Store, StoreError};
pub use super::tls::TlsFiles;
use crate::stun::responder::StunResponder;
use crate::{Error, Result};

/// Response header carrying the mailbox version of the data returned by a `GET`.
pub const VERSION_HEADER: &str = "x-stunfwd-version";

/// Longest room name the protocol allows, in bytes.
pub const MAX_ROOM_LEN: usize = request::MAX_ROOM_LEN;

/// Shortest interval between two sweeps for expired rooms.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// Longest interval between two sweeps for expired rooms (memory store).
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Longest interval between two room counts of the Redis store.
const REDIS_COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// A long-poll re-reads its mailbox at least this often, whatever notifications say.
const RECHECK: Duration = Duration::from_secs(5);

/// `Retry-After` when too many long-polls or a full store refuse a request.
const RETRY_LATER: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Settings of a [`SignalServer`]. Every limit has a default fit for a public server;
/// a limit of 0 means "unlimited" where noted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalServerConfig {
    /// HTTP(S) listen address (port 0 picks a free port).
    pub http: SocketAddr,
    /// UDP address of the STUN responder; `None` runs no STUN responder.
    pub stun: Option<SocketAddr>,
    /// Where rooms are kept. Default: in memory.
    pub store: StoreConfig,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// A room with no activity (request, or pending long-poll) for this long is removed.
    pub room_ttl: Duration,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body: usize,
    /// Cap on the `wait` a client may ask for.
    pub max_wait: Duration,
    /// Most rooms held at once; creating one more gets 503.
    pub max_rooms: usize,
    /// Longest room name accepted, in bytes (at most [`MAX_ROOM_LEN`]); longer gets 400.
    pub max_room_len: usize,
    /// Most bytes of room names and data the memory store holds; more gets 503. (Bound
    /// a Redis store with Redis's own `maxmemory`.)
    pub max_store_bytes: usize,
    /// Most bytes of offers (data plus room names) that one client address (an IPv6
    /// /64) may hold in the memory store at once; further posts get `429`. 0 = no
    /// bound. Default 4 MiB: a few thousand peers behind one address. (With Redis,
    /// bound its memory with Redis's own `maxmemory`.)
    pub max_bytes_per_client: usize,
    /// Requests per second each client address may make on average (IPv6: per /64);
    /// more get 429 with `Retry-After`. 0: unlimited. `/healthz` and `/metrics` are
    /// not limited.
    pub rate_per_ip: u32,
    /// Requests a client address may make in a burst above `rate_per_ip`.
    pub burst_per_ip: u32,
    /// Most long-polls waiting at once on this instance; more get 429. 0: unlimited.
    pub max_polls: usize,
    /// Most long-polls waiting at once per client address; more get 429. 0: unlimited.
    pub max_polls_per_ip: usize,
    /// Most open connections; more are closed at once. 0: unlimited.
    pub max_connections: usize,
    /// Most open connections per client address; more are closed at once. 0: unlimited.
    pub max_connections_per_ip: usize,
    /// A request head (and a TLS handshake) must arrive within this time; an idle
    /// keep-alive connection is closed after it.
    pub header_timeout: Duration,
    /// A request body must arrive within this time; a slower one gets 408.
    pub body_timeout: Duration,
    /// Largest request head (request line and headers), in bytes, at least 8 KiB;
    /// larger gets 431.
    pub max_header_bytes: usize,
    /// Take the client address from the last entry of `X-Forwarded-For` (for limits)
    /// instead of the TCP peer. Only for servers that are reachable solely through a
    /// reverse proxy or load balancer that appends that header.
    pub trust_forwarded_for: bool,
}

impl Default for SignalServerConfig {
    /// Loopback on free ports, in-memory store, plain HTTP, 5 min room TTL, 16 KiB
    /// bodies, 30 s long-polls, 100 000 rooms of up to 128 bytes, 256 MiB of data,
    /// 20 requests/s per client with bursts of 100, 10 000 long-polls (100 per client),
    /// 10 000 connections (256 per client), 10 s for a request head or body, 16 KiB
    /// heads.
    fn default() -> Self {
        SignalServerConfig {
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            stun: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            store: StoreConfig::Memory,
            tls: None,
            room_ttl: Duration::from_secs(5 * 60),
            max_body: 16 * 1024,
            max_wait: Duration::from_secs(30),
            max_rooms: 100_000,
            max_room_len: MAX_ROOM_LEN,
            max_store_bytes: 256 * 1024 * 1024,
            max_bytes_per_client: 4 * 1024 * 1024,
            rate_per_ip: 20,
            burst_per_ip: 100,
            max_polls: 10_000,
            max_polls_per_ip: 100,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            trust_forwarded_for: false,
        }
    }
}

/// A running rendezvous server. Stop it with [`SignalServer::stop`]; dropping it
/// aborts its tasks.
pub struct SignalServer {
    http_addr: SocketAddr,
    stun_addr: Option<SocketAddr>,
    tls: bool,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    kill: CancellationToken,
    connections: TaskTracker,
    serve_task: Mutex<Option<JoinHandle<()>>>,
    sweep_task: JoinHandle<()>,
}

impl SignalServer {
    /// Binds the HTTP listener (and the STUN responder when `config.stun` is set),
    /// connects the store, and spawns the server on the current tokio runtime. Returns
    /// once listening.
    pub async fn start(config: SignalServerConfig) -> Result<SignalServer> {
        check_config(&config)?;
        let tls = match &config.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(super::tls::server_config(
                files,
            )?)),
            None => None,
        };

        let notifier = Arc::new(Notifier::default());
        let store: Box<dyn Store> = match &config.store {
            StoreConfig::Memory => Box::new(MemoryStore::new(
                notifier.clone(),
                config.room_ttl,
                config.max_rooms,
                config.max_store_bytes,
                config.max_bytes_per_client,
            )),
            StoreConfig::Redis { url, prefix } => Box::new(
                RedisStore::connect(
                    url,
                    prefix,
                    notifier.clone(),
                    config.room_ttl,
                    config.max_rooms,
                )
                .await?,
            ),
        };

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
            store,
            notifier,
            limiter: RateLimiter::new(config.rate_per_ip, config.burst_per_ip),
            polls: Slots::new(config.max_polls, config.max_polls_per_ip),
            connections: Slots::new(config.max_connections, config.max_connections_per_ip),
            counters: Counters::default(),
            shutdown: shutdown_rx,
            stun: Mutex::new(stun),
            config: config.clone(),
        });

        let kill = CancellationToken::new();
        let connections = TaskTracker::new();
        let serve_task = tokio::spawn(accept_loop(
            listener,
            tls.clone(),
            shared.clone(),
            connections.clone(),
            kill.clone(),
        ));

        let mut sweep_every = (config.room_ttl / 2).clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL);
        if matches!(config.store, StoreConfig::Redis { .. }) {
            sweep_every = sweep_every.min(REDIS_COUNT_INTERVAL);
        }
        let sweeper = Arc::downgrade(&shared);
        let sweep_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = sweeper.upgrade() else {
                    return;
                };
                if let Err(e) = shared.store.maintain().await {
                    tracing::warn!(error = ?e, "rendezvous: store housekeeping failed");
                }
                shared.limiter.sweep(Instant::now());
            }
        });

        let scheme = if tls.is_some() { "https" } else { "http" };
        let store_name = match &config.store {
            StoreConfig::Memory => "memory".to_owned(),
            StoreConfig::Redis { url, .. } => super::redis_store::redact(url),
        };
        tracing::info!(%http_addr, %scheme, store = %store_name, ?stun_addr, "rendezvous server listening");
        Ok(SignalServer {
            http_addr,
            stun_addr,
            tls: tls.is_some(),
            shared,
            shutdown,
            kill,
            connections,
            serve_task: Mutex::new(Some(serve_task)),
            sweep_task,
        })
    }

    /// The mailbox URL clients use: `http://IP:PORT/` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.http_addr)
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound STUN responder address, if one runs.
    pub fn stun_addr(&self) -> Option<SocketAddr> {
        self.stun_addr
    }

    /// HTTP requests answered so far by this instance, all methods and outcomes.
    pub fn requests(&self) -> u64 {
        self.shared.counters.requests.load(Ordering::Relaxed)
    }

    /// Rooms currently held: exact for the memory store (expired rooms count until the
    /// sweeper removes them), as of the last count (every few seconds) for Redis.
    pub fn rooms(&self) -> usize {
        self.shared.store.rooms()
    }

    /// Long-polls waiting on this instance now.
    pub fn waiting_polls(&self) -> usize {
        self.shared.polls.held()
    }

    /// Open client connections on this instance now.
    pub fn connections(&self) -> usize {
        self.shared.connections.held()
    }

    /// The Prometheus text served at `/metrics`.
    pub fn metrics(&self) -> String {
        self.shared.metrics()
    }

    /// Stops gracefully: stops accepting connections, answers pending long-polls with
    /// 404 at once, closes idle keep-alive connections and waits up to `timeout` for
    /// requests in flight; whatever is left after that is aborted. Idempotent.
    pub async fn stop(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.shutdown.send_replace(true);
        self.sweep_task.abort();
        drop(lock(&self.shared.stun).take());
        let task = lock(&self.serve_task).take();
        if let Some(mut task) = task {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        self.connections.close();
        if tokio::time::timeout_at(deadline, self.connections.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                left = self.connections.len(),
                "rendezvous server did not drain within {timeout:?}; aborting"
            );
            self.kill.cancel();
            let _ = tokio::time::timeout(Duration::from_millis(500), self.connections.wait()).await;
        }
    }
}

impl std::fmt::Debug for SignalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalServer")
            .field("url", &self.url())
            .field("stun_addr", &self.stun_addr)
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

impl Drop for SignalServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.kill.cancel();
        self.sweep_task.abort();
        if let Some(task) = lock(&self.serve_task).take() {
            task.abort();
        }
    }
}

fn check_config(c: &SignalServerConfig) -> Result<()> {
    let positive = |key: &str, ok: bool, value: String, expected: &str| {
        if ok {
            Ok(())
        } else {
            Err(Error::config(key, value, "out of range", expected))
        }
    };
    positive(
        "max_room_len",
        (1..=MAX_ROOM_LEN).contains(&c.max_room_len),
        c.max_room_len.to_string(),
        &format!("1 to {MAX_ROOM_LEN} bytes"),
    )?;
    positive(
        "max_body",
        c.max_body >= 64,
        c.max_body.to_string(),
        "64 bytes or more",
    )?;
    positive(
        "max_rooms",
        c.max_rooms >= 1,
        c.max_rooms.to_string(),
        "1 or more",
    )?;
    positive(
        "room_ttl",
        c.room_ttl >= Duration::from_millis(100),
        format!("{:?}", c.room_ttl),
        "100 ms or more",
    )?;
    positive(
        "header_timeout",
        !c.header_timeout.is_zero() && !c.body_timeout.is_zero(),
        format!("{:?} / {:?}", c.header_timeout, c.body_timeout),
        "header and body timeouts above zero",
    )?;
    if let StoreConfig::Redis { prefix, .. } = &c.store {
        positive(
            "redis prefix",
            prefix.len() <= 64,
            prefix.clone(),
            "at most 64 bytes",
        )?;
    }
    Ok(())
}

/// Names the failing socket as ours in a bind error from the STUN responder.
fn rename_bind_error(e: Error, what: &str) -> Error {
    match e {
        Error::AddrInUse { addr, .. } => Error::AddrInUse {
            what: what.to_owned(),
            addr,
        },
        Error::Io { context, source } => Error::Io {
            context: format!("{what}: {context}"),
            source,
        },
        other => other,
    }
}

/// Locks a mutex, recovering from poisoning: every critical section leaves the data
/// consistent, so a panic elsewhere does not make it unusable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// State shared by the connections, the sweeper and the [`SignalServer`] handle.
struct Shared {
    store: Box<dyn Store>,
    notifier: Arc<Notifier>,
    limiter: RateLimiter,
    polls: Arc<Slots>,
    connections: Arc<Slots>,
    counters: Counters,
    shutdown: watch::Receiver<bool>,
    stun: Mutex<Option<StunResponder>>,
    config: SignalServerConfig,
}

impl Shared {
    fn metrics(&self) -> String {
        metrics::render(
            &self.counters,
            Gauges {
                rooms: self.store.rooms(),
                waiting_polls: self.polls.held(),
                connections: self.connections.held(),
                stun_answered: lock(&self.stun).as_ref().map(StunResponder::answered),
            },
        )
    }
}

/// Resolves once shutdown has begun (or the server handle is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accepts connections until shutdown, each on its own tracked task.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    kill: CancellationToken,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut shutdown) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "rendezvous: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Connection caps count the TCP peer: X-Forwarded-For is per request.
        let slot = match shared.connections.take(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                shared
                    .counters
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, ?why, "rendezvous: connection refused");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let kill = kill.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(tcp, peer, shared, kill).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(shared.config.header_timeout, acceptor.accept(tcp));
                    // A connection still shaking hands has no request to finish: on
                    // shutdown it is dropped instead of holding up the drain.
                    let mut shutdown = shared.shutdown.clone();
                    let stream = tokio::select! {
                        r = handshake => r,
                        _ = stopped(&mut shutdown) => return,
                        _ = kill.cancelled() => return,
                    };
                    match stream {
                        Ok(Ok(stream)) => serve_connection(stream, peer, shared, kill).await,
                        Ok(Err(e)) => {
                            shared.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "rendezvous: TLS handshake failed");
                        }
                        Err(_) => {
                            shared.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "rendezvous: TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection until the client leaves, an error or timeout
/// closes it, shutdown drains it, or `kill` aborts it.
async fn serve_connection<I>(io: I, peer: SocketAddr, shared: Arc<Shared>, kill: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown.clone();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_timeout)
        .max_buf_size(shared.config.max_header_bytes.max(8192))
        .keep_alive(true);
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(dispatch(&shared, peer, req).await) }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "rendezvous: connection closed");
                }
                return;
            }
            _ = stopped(&mut shutdown), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = kill.cancelled() => return,
        }
    }
}

/// Answers one request and counts its status.
async fn dispatch(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Response {
    let client = client_ip(peer, req.headers(), shared.config.trust_forwarded_for);
    let resp = route(shared, client, req.map(Body::new)).await;
    shared.counters.count(resp.status().as_u16());
    resp
}

/// The client's address: the TCP peer, or the last `X-Forwarded-For` entry when the
/// server is configured to trust it.
fn client_ip(peer: SocketAddr, headers: &HeaderMap, trust_forwarded_for: bool) -> IpAddr {
    if trust_forwarded_for {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        if let Some(ip) = last.and_then(|s| s.parse::<IpAddr>().ok()) {
            return ip;
        }
    }
    peer.ip()
}

/// Every method and path is the mailbox, except `GET /healthz` and `GET /metrics`
/// without a `room` parameter.
async fn route(shared: &Shared, client: IpAddr, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_owned();
    if method == Method::GET && !request::names_a_room(&query) {
        match req.uri().path() {
            "/healthz" => return (StatusCode::OK, "ok").into_response(),
            "/metrics" => {
                return (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    )],
                    shared.metrics(),
                )
                    .into_response()
            }
            _ => {}
        }
    }
    if let Err(retry) = shared.limiter.check(client, Instant::now()) {
        return too_many(
            retry,
            format!(
                "more than {} requests per second from {client}; retry later",
                shared.config.rate_per_ip
            ),
        );
    }
    let max_room_len = shared.config.max_room_len;
    if method == Method::POST {
        return post(shared, client, req).await;
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
    let q = match request::parse_query(&query, max_room_len) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    if method == Method::GET {
        get(shared, client, q).await
    } else {
        match shared.store.delete(&q.room, q.role).await {
            Ok(()) => ok(),
            Err(e) => store_error(e),
        }
    }
}

async fn post(shared: &Shared, client: IpAddr, req: Request<Body>) -> Response {
    let max_body = shared.config.max_body;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {max_body} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return too_large();
    }
    let read = async {
        let mut stream = req.into_body().into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Some(e.to_string()))?;
            if bytes.len() + chunk.len() > max_body {
                return Err(None::<String>);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let bytes = match tokio::time::timeout(shared.config.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(None)) => return too_large(),
        Ok(Err(Some(e))) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    shared.config.body_timeout
                ),
            )
        }
    };
    let msg = match request::parse_post(&bytes, shared.config.max_room_len) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let key = super::limits::client_key(client);
    match shared.store.post(&msg.room, msg.role, msg.data, key).await {
        Ok(_) => ok(),
        Err(e) => store_error(e),
    }
}

async fn get(shared: &Shared, client: IpAddr, q: request::Query) -> Response {
    let wait = q
        .wait
        .map(|w| w.min(shared.config.max_wait))
        .filter(|w| !w.is_zero());
    let Some(wait) = wait else {
        return match shared.store.get(&q.room, q.role).await {
            Ok(Some((data, version))) if q.since != Some(version) => found(data, version),
            Ok(_) => not_found(),
            Err(e) => store_error(e),
        };
    };
    let _slot = match shared.polls.take(client) {
        Ok(slot) => slot,
        Err(why) => {
            let msg = match why {
                SlotRefused::Total(n) => {
                    format!("the server already holds its maximum of {n} long-polls")
                }
                SlotRefused::PerClient(n) => {
                    format!("{client} already holds its maximum of {n} long-polls")
                }
            };
            return too_many(RETRY_LATER, format!("{msg}; retry later"));
        }
    };
    let deadline = Instant::now() + wait;
    let mut shutdown = shared.shutdown.clone();
    // Registered before the first read, so a post right after the read still wakes us.
    let mut waiter = shared.notifier.watch(&q.room, q.role);
    loop {
        match shared.store.get(&q.room, q.role).await {
            // Versions never repeat, so "differs from since" means "newer".
            Ok(Some((data, version))) if q.since != Some(version) => return found(data, version),
            Ok(_) => {}
            Err(e) => return store_error(e),
        }
        let now = Instant::now();
        if now >= deadline || *shutdown.borrow() {
            return not_found();
        }
        tokio::select! {
            _ = waiter.changed() => {}
            _ = tokio::time::sleep_until((now + RECHECK).min(deadline)) => {}
            _ = stopped(&mut shutdown) => return not_found(),
        }
    }
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

fn ok() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
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

fn store_error(e: StoreError) -> Response {
    let msg = match e {
        StoreError::ClientFull(m) => return too_many(RETRY_LATER, m),
        StoreError::Full(m) => m,
        StoreError::Unavailable(m) => {
            tracing::warn!("{m}");
            m
        }
    };
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, retry_after(RETRY_LATER));
    resp
}

/// `429 Too Many Requests` with `Retry-After` in whole seconds (at least 1).
fn too_many(retry: Duration, message: String) -> Response {
    let mut resp = error(StatusCode::TOO_MANY_REQUESTS, message);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, retry_after(retry));
    resp
}

fn retry_after(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"status": "error", "error": message.into()});
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        h.append("x-forwarded-for", "3.3.3.3 , 4.4.4.4".parse().unwrap());
        assert_eq!(client_ip(peer, &h, false), peer.ip());
        assert_eq!(
            client_ip(peer, &h, true),
            "4.4.4.4".parse::<IpAddr>().unwrap()
        );
        let mut bad = HeaderMap::new();
        bad.insert("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(client_ip(peer, &bad, true), peer.ip());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after(Duration::from_millis(1)), "1");
        assert_eq!(retry_after(Duration::from_millis(1500)), "2");
        assert_eq!(retry_after(Duration::ZERO), "1");
    }

    #[test]
    fn config_is_checked() {
        assert!(check_config(&SignalServerConfig::default()).is_ok());
        for bad in [
            SignalServerConfig {
                max_room_len: 0,
                ..SignalServerConfig::default()
            },
            SignalServerConfig {
                max_room_len: 129,
                ..SignalServerConfig::default()
            },
            SignalServerConfig {
                max_rooms: 0,
                ..SignalServerConfig::default()
            },
            SignalServerConfig {
                body_timeout: Duration::ZERO,
                ..SignalServerConfig::default()
            },
        ] {
            assert!(check_config(&bad).is_err(), "{bad:?}");
        }
    }
}
