//! The rendezvous server: a mailbox per room and role over HTTP(S), compatible with the
//! PHP mailbox of the original tool, plus long-polling (`wait`, `since`), `DELETE`, room
//! expiry, limits, `/healthz` and `/metrics`; optionally a STUN responder on a UDP port
//! so one small process is all a deployment needs. Rooms live in memory or in Redis
//! ([`StoreConfig`]). The protocol is in `docs/protocol.md`, operations in
//! `docs/rendezvous.md`.
//!
//! This file holds the [`SignalServer`] handle and its lifecycle (start, the sweeper,
//! graceful stop); [`SignalServerConfig`] is in `config`, the accept loop and HTTP/1
//! connections in `conn`, request handling in `routes` and `reply`, HTTPS in `tls`,
//! per-client limits in `limits`, the server's own `/metrics` in `metrics` and the
//! rooms in `store` (memory or Redis).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod config;
mod conn;
mod limits;
mod metrics;
mod reply;
mod routes;
mod store;
mod tls;

pub use super::request::{MAX_ROOM_LEN, VERSION_HEADER};
pub use config::SignalServerConfig;
pub use store::StoreConfig;
pub use tls::TlsFiles;

use crate::stun::responder::StunResponder;
use crate::{Error, Result};
use limits::{RateLimiter, Slots};
use metrics::{Counters, Gauges};
use store::memory::MemoryStore;
#[cfg(feature = "redis")]
use store::redis_store::RedisStore;
use store::{Notifier, Store};

/// Shortest interval between two sweeps for expired rooms.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// Longest interval between two sweeps for expired rooms (memory store).
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Longest interval between two room counts of the Redis store.
const REDIS_COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// A running rendezvous server. Stop it with [`SignalServer::stop`]; dropping it
/// aborts its tasks.
///
/// It runs on the tokio runtime it was started on; a host without one uses
/// [`BlockingSignalServer`](crate::BlockingSignalServer). Engines take its
/// [`url`](SignalServer::url) as `signalUrl` and its [`stun_addr`](SignalServer::stun_addr)
/// in `stunServers` ([`Engine`](crate::Engine)'s example runs a tunnel through one).
///
/// # Example
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::TcpStream;
/// use std::time::Duration;
/// use stunfwd_core::{SignalServer, SignalServerConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = tokio::runtime::Runtime::new()?;
/// // The defaults: loopback, free ports, rooms in memory, a STUN responder.
/// let server = rt.block_on(SignalServer::start(SignalServerConfig::default()))?;
/// assert!(server.url().starts_with("http://127.0.0.1:"));
/// assert!(server.stun_addr().is_some());
///
/// // It serves from the runtime's worker threads meanwhile.
/// let mut conn = TcpStream::connect(server.http_addr())?;
/// conn.set_read_timeout(Some(Duration::from_secs(5)))?;
/// conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
/// let mut reply = String::new();
/// conn.read_to_string(&mut reply)?;
/// assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
///
/// rt.block_on(server.stop(Duration::from_secs(1)));
/// # Ok(())
/// # }
/// ```
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
        config.check()?;
        let tls = match &config.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(files)?)),
            None => None,
        };

        let notifier = Arc::new(Notifier::default());
        let store = open_store(&config, notifier.clone()).await?;

        let listener = crate::socket::bind_tcp(config.http, true)
            .and_then(tokio::net::TcpListener::from_std)
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
        let serve_task = tokio::spawn(conn::accept_loop(
            listener,
            tls.clone(),
            shared.clone(),
            connections.clone(),
            kill.clone(),
        ));

        let sweep_task = tokio::spawn(sweep(Arc::downgrade(&shared), sweep_interval(&config)));

        let scheme = if tls.is_some() { "https" } else { "http" };
        let store_name = match &config.store {
            StoreConfig::Memory => "memory".to_owned(),
            StoreConfig::Redis { url, .. } => store::redact(url),
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

/// Opens the store `config` names: rooms in this process, or in Redis.
async fn open_store(
    config: &SignalServerConfig,
    notifier: Arc<Notifier>,
) -> Result<Box<dyn Store>> {
    match &config.store {
        StoreConfig::Memory => Ok(Box::new(MemoryStore::new(
            notifier,
            config.room_ttl,
            config.max_rooms,
            config.max_store_bytes,
            config.max_bytes_per_client,
        ))),
        #[cfg(feature = "redis")]
        StoreConfig::Redis { url, prefix } => Ok(Box::new(
            RedisStore::connect(url, prefix, notifier, config.room_ttl, config.max_rooms).await?,
        )),
        // `SignalServerConfig::check` has refused it already; answered the same way here
        // so that no path panics.
        #[cfg(not(feature = "redis"))]
        StoreConfig::Redis { url, .. } => Err(config::no_redis_store(url)),
    }
}

/// How often the sweeper runs: half the room TTL within bounds, and often enough to
/// keep the Redis room count fresh.
fn sweep_interval(config: &SignalServerConfig) -> Duration {
    let every = (config.room_ttl / 2).clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL);
    match config.store {
        StoreConfig::Memory => every,
        StoreConfig::Redis { .. } => every.min(REDIS_COUNT_INTERVAL),
    }
}

/// Store housekeeping (expired rooms, the room count) and forgetting idle rate-limit
/// buckets, every `every`, until the server is gone.
async fn sweep(shared: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.store.maintain().await {
            tracing::warn!(error = ?e, "rendezvous: store housekeeping failed");
        }
        shared.limiter.sweep(Instant::now());
    }
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
    /// The Prometheus text served at `/metrics`: this instance's counters and gauges.
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
