//! The engine: one peer, one UDP socket, one runtime (DESIGN §3).
//!
//! [`Engine::start`] validates the configuration, binds everything that can fail
//! (the tunnel socket, every mapping's listener) and returns; connecting runs in the
//! background on the engine's own tokio runtime, so callers never need tokio.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::RelayPolicy;
use crate::config::{Config, Mapping, Mode, Proto};
use crate::error::{Error, Result};
use crate::forward::{self, Ctx};
use crate::punch::{self, Punch, Selected};
use crate::relay::TurnClient;
use crate::signal::client::SignalClient;
use crate::signal::proto::{unix_now, Offer, OfferError, OfferGuard, Role, RoomKey};
use crate::socket::{DemuxSocket, StunDatagram};
use crate::stats::{Counters, MappingStats, Meter, Stats, Timings};
use crate::stun::client::{self as stun_client, Discovery, Response, StunAgent};
use crate::stun::message::{self, Parsed};
use crate::tunnel::{self, Fingerprint, Identity, PinnedPeer};

/// Identifies a mapping within one engine.
pub type MappingId = u64;

/// How the tunnel reaches the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Through both NATs, to a public (server-reflexive or peer-reflexive) address.
    Direct,
    /// To one of the peer's own interface addresses (same LAN or same host).
    Lan,
    /// Through a TURN relay.
    Relay,
}

impl PathKind {
    /// `direct`, `lan` or `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Lan => "lan",
            PathKind::Relay => "relay",
        }
    }
}

/// Where the engine is in its life.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Just started.
    Starting,
    /// Asking STUN servers for our public address.
    Discovering,
    /// Posting our offer and waiting for the peer's.
    Signaling,
    /// Running connectivity checks and the QUIC handshake.
    Punching,
    /// The tunnel is up.
    Connected {
        /// The path in use.
        path: PathKind,
        /// The peer's address on it.
        peer: SocketAddr,
    },
    /// Not connected; retrying after a failure or after the tunnel was lost.
    Reconnecting {
        /// Consecutive failed attempts (0 right after a tunnel was lost).
        attempt: u32,
        /// Why: what failed last.
        reason: String,
    },
    /// Stopped by [`Engine::stop`] (or drop).
    Stopped,
    /// Gave up for good.
    Failed {
        /// Why.
        reason: String,
    },
}

impl State {
    /// A short lowercase name (`connected`, `signaling`...).
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Discovering => "discovering",
            State::Signaling => "signaling",
            State::Punching => "punching",
            State::Connected { .. } => "connected",
            State::Reconnecting { .. } => "reconnecting",
            State::Stopped => "stopped",
            State::Failed { .. } => "failed",
        }
    }

    /// True when the tunnel is up.
    pub fn is_connected(&self) -> bool {
        matches!(self, State::Connected { .. })
    }

    /// True when the engine will not connect any more.
    pub fn is_final(&self) -> bool {
        matches!(self, State::Stopped | State::Failed { .. })
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Connected { path, peer } => write!(f, "connected ({} to {peer})", path.as_str()),
            State::Reconnecting { attempt, reason } => {
                write!(f, "reconnecting (attempt {attempt}: {reason})")
            }
            State::Failed { reason } => write!(f, "failed: {reason}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Something that happened, delivered to [`Engine::subscribe`] callbacks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The state changed.
    State {
        /// The new state.
        state: State,
    },
    /// A mapping started listening.
    MappingAdded {
        /// Its id.
        id: MappingId,
        /// Canonical spec.
        spec: String,
        /// The address it listens on.
        listen: SocketAddr,
    },
    /// A mapping was removed; its listener and connections are closed.
    MappingRemoved {
        /// Its id.
        id: MappingId,
    },
    /// A peer offer was rejected (bad MAC, stale, replayed, wrong role, malformed);
    /// reported at most once per 5 s.
    PeerRejected {
        /// Why.
        reason: String,
    },
    /// Something the user should know that is not a failure: an engine running without
    /// a `secret` says so once, at start.
    Warning {
        /// What, and what to do about it.
        message: String,
    },
}

/// The warning of an engine without a secret.
fn insecure_warning(role: Role) -> String {
    match role {
        Role::Server => "running WITHOUT A SECRET (insecure: true): anyone who knows or \
                         guesses the room name can reach every service the allow rules \
                         permit; set a \"secret\" that both peers share"
            .to_owned(),
        Role::Client => "running without a secret: anyone who knows the room name can \
                         pose as the server peer; set a \"secret\" that both peers share"
            .to_owned(),
    }
}

/// A mapping as registered in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingInfo {
    /// Its id.
    pub id: MappingId,
    /// The mapping.
    pub mapping: Mapping,
    /// The address actually bound (port 0 resolved).
    pub listen: SocketAddr,
}

type Callback = Arc<dyn Fn(&Event) + Send + Sync>;

struct MappingEntry {
    info: MappingInfo,
    token: CancellationToken,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct PeerInfo {
    path: Option<PathKind>,
    addr: Option<SocketAddr>,
    nat: Option<String>,
    offer_id: Option<String>,
    /// The offer the current tunnel was built from.
    offer: Option<Offer>,
}

struct StateCell {
    state: Mutex<State>,
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything the engine's tasks share.
struct Shared {
    config: Config,
    role: Role,
    key: RoomKey,
    password: String,
    /// Our offer id of this attempt and of the one before (checks addressed to either
    /// are answered, so a peer still punching toward the previous attempt is heard).
    our_ids: Mutex<(String, String)>,
    /// Freshness of peer offers: role, timestamp window, nonces accepted.
    offer_guard: Mutex<OfferGuard>,
    /// Rejected offers are reported at most once per [`REJECT_REPORT_GAP`].
    rejections: Mutex<RejectionReports>,
    /// Why the last peer offer was rejected, until an attempt connects.
    rejected: Mutex<Option<Error>>,
    /// An authentic check came from a peer offer id other than the one this attempt or
    /// tunnel uses: the peer started over (restarted, or began a new attempt).
    new_peer: tokio::sync::Notify,
    /// That offer id.
    new_peer_id: Mutex<Option<String>>,
    /// Where authentic checks came from recently (at most [`MAX_CHECK_SOURCES`]):
    /// handshakes from these addresses are always held for the peer's offer.
    check_sources: Mutex<HashMap<SocketAddr, Instant>>,
    identity: Identity,
    pinned: Arc<PinnedPeer>,
    state: StateCell,
    events_tx: Mutex<Option<std_mpsc::Sender<Event>>>,
    subscribers: Arc<Mutex<Vec<Callback>>>,
    totals: Arc<Counters>,
    ctx: Arc<Ctx>,
    conn_tx: watch::Sender<Option<quinn::Connection>>,
    mappings: Mutex<BTreeMap<MappingId, MappingEntry>>,
    next_mapping: AtomicU64,
    root: CancellationToken,
    endpoint: quinn::Endpoint,
    agent: Arc<StunAgent>,
    local_addr: SocketAddr,
    host_candidates: Vec<SocketAddr>,
    discovery: Mutex<Option<Discovery>>,
    signal: SignalClient,
    stun_discoveries: AtomicU64,
    signaling_requests: Arc<AtomicU64>,
    reconnects: AtomicU64,
    path_changes: AtomicU64,
    offers_rejected: AtomicU64,
    checks_unauthenticated: AtomicU64,
    timings: Mutex<Timings>,
    peer: Mutex<PeerInfo>,
    last_error: Mutex<Option<String>>,
    /// Why the engine gave up, when it did (`State::Failed`).
    failure: Mutex<Option<Error>>,
    prflx: Mutex<Option<(String, mpsc::Sender<SocketAddr>)>>,
    /// Our TURN allocation, once made.
    turn: Mutex<Option<Arc<TurnClient>>>,
    /// A direct attempt failed: offer the relay from now on (policy auto).
    relay_wanted: std::sync::atomic::AtomicBool,
    incoming: tokio::sync::Mutex<mpsc::Receiver<quinn::Connection>>,
    /// Where `/metrics` is served, when `metricsAddr` is set (port 0 resolved).
    metrics_addr: Option<SocketAddr>,
    /// `engine{room, mode}`: the parent span of every task, so each log line carries
    /// the room.
    span: tracing::Span,
    /// The tunnel socket's descriptor, owned by quinn's endpoint (see
    /// [`release_tunnel_port`]).
    #[cfg(unix)]
    tunnel_fd: std::os::fd::RawFd,
}

impl Shared {
    fn set_state(&self, new: State) {
        {
            let mut s = lock(&self.state.state);
            if *s == new || s.is_final() {
                return;
            }
            *s = new.clone();
        }
        self.state.cv.notify_all();
        // Also called from outside the engine's tasks (`stop` on the caller's thread).
        let _in_engine = self.span.enter();
        tracing::info!(state = %new, "state");
        self.emit(Event::State { state: new });
    }

    fn state(&self) -> State {
        lock(&self.state.state).clone()
    }

    fn emit(&self, event: Event) {
        if let Some(tx) = lock(&self.events_tx).as_ref() {
            let _ = tx.send(event);
        }
    }

    fn fail_reason(&self, reason: String) {
        *lock(&self.last_error) = Some(reason);
    }

    fn mode_str(&self) -> &'static str {
        self.config.mode.as_str()
    }

    /// Our offer id of the current attempt.
    fn our_id(&self) -> String {
        lock(&self.our_ids).0.clone()
    }

    /// Starts a new attempt's offer id; the last one is still answered in checks.
    fn new_attempt_id(&self) -> String {
        let mut ids = lock(&self.our_ids);
        let new = Offer::new_id();
        ids.1 = std::mem::replace(&mut ids.0, new.clone());
        new
    }

    /// Counts a rejected peer offer, records it as the last error, and reports it (a
    /// warning and a `PeerRejected` event) at most once per [`REJECT_REPORT_GAP`],
    /// saying how many more were rejected in between. The state does not change: a forged or stale offer must not
    /// knock a waiting peer out of its wait.
    fn offer_rejected(&self, e: &OfferError) {
        self.offers_rejected.fetch_add(1, Ordering::Relaxed);
        let error = Error::from(e.clone());
        let reason = error.to_string();
        *lock(&self.rejected) = Some(error);
        // Stats are read when asked: the last error is always the latest.
        self.fail_reason(reason.clone());
        let suppressed = {
            let mut r = lock(&self.rejections);
            if r.last.is_some_and(|t| t.elapsed() < REJECT_REPORT_GAP) {
                r.suppressed += 1;
                tracing::debug!(%reason, "peer offer rejected");
                return;
            }
            r.last = Some(Instant::now());
            std::mem::take(&mut r.suppressed)
        };
        let reason = if suppressed > 0 {
            format!("{reason} ({suppressed} more rejected before this one)")
        } else {
            reason
        };
        tracing::warn!(%reason, "peer offer rejected");
        self.emit(Event::PeerRejected { reason });
    }
}

/// Least time between two reports of rejected peer offers.
const REJECT_REPORT_GAP: Duration = Duration::from_secs(5);

/// Most recent check sources remembered for holding their handshakes.
const MAX_CHECK_SOURCES: usize = 64;

/// How long a check source counts as recent.
const CHECK_SOURCE_TTL: Duration = Duration::from_secs(30);

/// Resolves when an authentic check shows that the peer started over with an offer id
/// other than the one in use (see [`Shared::new_peer`]).
async fn peer_started_over(shared: &Shared) -> String {
    loop {
        shared.new_peer.notified().await;
        let seen = lock(&shared.new_peer_id).clone();
        let current = lock(&shared.peer).offer_id.clone();
        if let Some(seen) = seen {
            if Some(&seen) != current.as_ref() {
                return seen;
            }
        }
    }
}

/// While connected: resolves when the peer restarted, i.e. an authentic check comes
/// from a new offer whose certificate differs from the connected peer's. A new offer
/// with the same certificate is the same process in a new attempt (it lost the tunnel
/// and will dial again, which `run_connected` follows): it is adopted, not acted on.
/// Costs one mailbox read per new offer id, at most one per [`crate::signal::WAKE_GAP`].
async fn peer_restarted(shared: &Shared) -> String {
    loop {
        let id = peer_started_over(shared).await;
        let connected_fp = lock(&shared.peer).offer.as_ref().map(|o| o.fp.clone());
        let read = shared.signal.get(shared.role.peer(), None, None).await;
        let offer = match read {
            Ok(Some((data, _))) => Offer::decode(&data, &shared.key, &shared.config.room).ok(),
            _ => None,
        };
        match offer {
            Some(o) if o.id == id && Some(&o.fp) != connected_fp.as_ref() => return id,
            Some(o) if o.id == id => {
                lock(&shared.peer).offer_id = Some(id);
            }
            _ => {}
        }
        tokio::time::sleep(crate::signal::WAKE_GAP).await;
    }
}

/// When a rejected offer was last reported, and how many were not reported since.
#[derive(Debug, Default)]
struct RejectionReports {
    last: Option<Instant>,
    suppressed: u64,
}

/// A running stunfwd peer. All methods are thread-safe; dropping it stops it.
pub struct Engine {
    shared: Arc<Shared>,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    event_thread: Mutex<Option<JoinHandle<()>>>,
    event_thread_id: ThreadId,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("mode", &self.shared.mode_str())
            .field("room", &self.shared.config.room)
            .field("local_addr", &self.shared.local_addr)
            .field("state", &self.shared.state())
            .finish()
    }
}

/// Runs `fut` on `handle` and blocks the calling thread for its result. Works from any
/// thread, including inside another runtime (unlike `block_on`) and on one of
/// `handle`'s own workers.
fn run_blocking<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std_mpsc::channel();
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    let same_runtime = tokio::runtime::Handle::try_current().is_ok_and(|current| {
        current.id() == handle.id()
            && current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    if same_runtime {
        // On one of the engine's own workers (a log line's callback calling back in):
        // blocking it would starve the task with a single worker. `block_in_place`
        // hands the worker's queue to another thread first.
        return tokio::task::block_in_place(|| rx.recv().ok());
    }
    rx.recv().ok()
}

/// Frees the tunnel socket's local port once the runtime is shut down. quinn's endpoint
/// (held until the `Engine` is dropped) owns the descriptor, so it cannot be closed
/// here; instead a fresh, unbound UDP socket is `dup3`ed (or `dup2`ed) over it. That
/// closes the bound socket (its port is free for a new engine at once), and the
/// descriptor the endpoint closes later is the unbound stand-in.
#[cfg(unix)]
fn release_tunnel_port(shared: &Shared) {
    let domain = socket2::Domain::for_address(shared.local_addr);
    let Ok(spare) = socket2::Socket::new(domain, socket2::Type::DGRAM, None) else {
        return;
    };
    let spare_fd = std::os::fd::AsRawFd::as_raw_fd(&spare);
    // SAFETY: `tunnel_fd` is open: the endpoint that owns it lives as long as `shared`.
    // dup2/dup3 replace what the number refers to atomically and leave `spare`'s own
    // descriptor to its owner. The stand-in keeps close-on-exec, as the original had.
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let rc = unsafe { libc::dup3(spare_fd, shared.tunnel_fd, libc::O_CLOEXEC) };
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let rc = unsafe {
        let rc = libc::dup2(spare_fd, shared.tunnel_fd);
        if rc >= 0 {
            libc::fcntl(shared.tunnel_fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        rc
    };
    if rc < 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "tunnel port not released");
    }
}

impl Engine {
    /// Validates `config`, binds the tunnel socket and every mapping, and starts
    /// connecting in the background. Returns at once; errors are returned only for
    /// things that cannot work (bad config, address in use), and then nothing is left
    /// running.
    pub fn start(config: Config) -> Result<Engine> {
        Self::start_inner(config, None)
    }

    /// Like [`Engine::start`], with `callback` subscribed before anything runs, so it
    /// sees every event from the first state change on.
    pub fn start_with_events(
        config: Config,
        callback: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<Engine> {
        Self::start_inner(config, Some(Arc::new(callback)))
    }

    fn start_inner(config: Config, callback: Option<Callback>) -> Result<Engine> {
        config.validate()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.performance.workers)
            .thread_name("stunfwd-worker")
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the engine runtime", &e))?;
        let handle = rt.handle().clone();
        let span = tracing::info_span!(
            "engine",
            room = %config.room,
            mode = if config.mode == Mode::Client { "client" } else { "server" },
        );
        let setup = {
            let config = config.clone();
            run_blocking(&handle, setup(config, span.clone()).instrument(span))
        };
        let shared = match setup {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                rt.shutdown_timeout(Duration::from_secs(1));
                return Err(e);
            }
            None => {
                rt.shutdown_timeout(Duration::from_secs(1));
                return Err(Error::Tunnel("engine setup task died".into()));
            }
        };
        // Events are delivered on one dedicated thread, so callbacks never run on the
        // runtime and may call back into the engine (even stop it).
        if let Some(cb) = callback {
            lock(&shared.subscribers).push(cb);
        }
        let (events_tx, events_rx) = std_mpsc::channel::<Event>();
        *lock(&shared.events_tx) = Some(events_tx);
        let subscribers = shared.subscribers.clone();
        let event_thread = std::thread::Builder::new()
            .name("stunfwd-events".into())
            .spawn(move || {
                while let Ok(event) = events_rx.recv() {
                    let subs: Vec<Callback> = lock(&subscribers).clone();
                    for cb in subs {
                        if catch_unwind(AssertUnwindSafe(|| cb(&event))).is_err() {
                            tracing::error!("an event callback panicked; it stays subscribed");
                        }
                    }
                }
            })
            .map_err(|e| Error::io("cannot start the event thread", &e))?;
        let event_thread_id = event_thread.thread().id();
        let engine = Engine {
            shared: shared.clone(),
            rt: Mutex::new(Some(rt)),
            handle: handle.clone(),
            event_thread: Mutex::new(Some(event_thread)),
            event_thread_id,
        };
        // Mappings from the config; on failure the whole engine is torn down.
        for mapping in config.mappings.clone() {
            if let Err(e) = engine.add_mapping(mapping) {
                engine.stop(Duration::from_secs(2));
                return Err(e);
            }
        }
        if shared.config.secret.is_none() {
            let message = insecure_warning(shared.role);
            {
                let _in_engine = shared.span.enter();
                tracing::warn!("{message}");
            }
            shared.emit(Event::Warning { message });
        }
        let span = shared.span.clone();
        handle.spawn(drive(shared).instrument(span));
        Ok(engine)
    }

    /// Adds a mapping (client role). Works before and after the tunnel is up. Binds its
    /// local listener now, so a port in use is reported here.
    pub fn add_mapping(&self, mapping: Mapping) -> Result<MappingId> {
        if self.shared.config.mode != Mode::Client {
            return Err(Error::config(
                "mappings",
                mapping.to_string(),
                "mappings are opened on the client side; this engine runs in server mode",
                "no mappings in server mode (the server side only dials what its allow rules permit)",
            ));
        }
        if self.shared.root.is_cancelled() {
            return Err(Error::Stopped);
        }
        let shared = self.shared.clone();
        let span = shared.span.clone();
        run_blocking(&self.handle, add_mapping(shared, mapping).instrument(span))
            .unwrap_or(Err(Error::Stopped))
    }

    /// Adds a mapping given as a spec string such as `tcp:8080:22`.
    pub fn add_mapping_str(&self, spec: &str) -> Result<MappingId> {
        self.add_mapping(Mapping::parse(spec)?)
    }

    /// Removes a mapping: closes its listener and its live connections.
    pub fn remove_mapping(&self, id: MappingId) -> Result<()> {
        let entry = lock(&self.shared.mappings)
            .remove(&id)
            .ok_or(Error::NoSuchMapping(id))?;
        entry.token.cancel();
        // The listener socket is closed by its task; wait (briefly) until the port is free.
        let listen = entry.info.listen;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && port_busy(entry.info.mapping.proto, listen) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.shared.emit(Event::MappingRemoved { id });
        Ok(())
    }

    /// The registered mappings.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        lock(&self.shared.mappings)
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    /// The address a mapping listens on.
    pub fn mapping_addr(&self, id: MappingId) -> Option<SocketAddr> {
        lock(&self.shared.mappings).get(&id).map(|e| e.info.listen)
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.shared.state()
    }

    /// Why the engine gave up, when its state is `Failed`.
    pub fn failure(&self) -> Option<Error> {
        lock(&self.shared.failure).clone()
    }

    /// The tunnel socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Where `/metrics` is served (the bound address, port 0 resolved), when
    /// `metricsAddr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.shared.metrics_addr
    }

    /// Calls `callback` for every event from now on, on the engine's event thread.
    /// Callbacks may call any engine method, including `stop`.
    pub fn subscribe(&self, callback: impl Fn(&Event) + Send + Sync + 'static) {
        lock(&self.shared.subscribers).push(Arc::new(callback));
    }

    /// Blocks until the tunnel is up (returns the `Connected` state), the engine
    /// stops or fails (error), or `timeout` passes (`Error::Timeout`).
    pub fn wait_connected(&self, timeout: Duration) -> Result<State> {
        let deadline = Instant::now() + timeout;
        let mut s = lock(&self.shared.state.state);
        loop {
            if s.is_connected() {
                return Ok(s.clone());
            }
            if *s == State::Stopped {
                return Err(Error::Stopped);
            }
            if let State::Failed { reason } = &*s {
                let failure = lock(&self.shared.failure).clone();
                return Err(failure.unwrap_or_else(|| Error::Tunnel(reason.clone())));
            }
            let now = Instant::now();
            if now >= deadline {
                let state = s.clone();
                drop(s);
                return Err(self.not_connected(timeout, &state));
            }
            s = self
                .shared
                .state
                .cv
                .wait_timeout(s, (deadline - now).min(Duration::from_millis(100)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn not_connected(&self, timeout: Duration, state: &State) -> Error {
        let last = lock(&self.shared.last_error).clone();
        // Still waiting because every offer we read was rejected: say so (a wrong
        // secret, a tampering rendezvous), not just "timed out".
        if let Some(Error::PeerAuth(reason)) = lock(&self.shared.rejected).clone() {
            if !matches!(state, State::Punching) {
                return Error::PeerAuth(format!(
                    "not connected after {timeout:?} (state: {}): {reason}",
                    state.name()
                ));
            }
        }
        match (state, last) {
            (State::Reconnecting { reason, .. }, _) if reason.contains("authentication") => {
                Error::PeerAuth(reason.clone())
            }
            (State::Signaling, last) if lock(&self.shared.peer).offer_id.is_none() => {
                Error::Timeout(format!(
                    "not connected after {timeout:?}; state: signaling; no valid offer from the {} peer yet: it is \
                 not running, or it uses another room, secret or rendezvous URL (with a \
                 secret, peers meet in a mailbox named after room and secret, so peers with \
                 different secrets never see each other){}",
                    self.shared.role.peer(),
                    last.map(|l| format!("; last error: {l}"))
                        .unwrap_or_default()
                ))
            }
            (_, Some(last)) => Error::Timeout(format!(
                "not connected after {timeout:?}; state: {state}; last error: {last}"
            )),
            _ => Error::Timeout(format!("not connected after {timeout:?}; state: {state}")),
        }
    }

    /// A snapshot of the engine's figures.
    pub fn stats(&self) -> Stats {
        snapshot(&self.shared)
    }

    /// [`Engine::stats`] as JSON.
    pub fn stats_json(&self) -> String {
        serde_json::to_string(&self.stats()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Stops gracefully within about `timeout`: closes listeners and connections, tells
    /// the peer, leaves the room, and ends every task and thread of the engine.
    /// Calling it again (or from an event callback) is harmless.
    pub fn stop(&self, timeout: Duration) {
        let Some(rt) = lock(&self.rt).take() else {
            return;
        };
        let started = Instant::now();
        let shared = self.shared.clone();
        let (tx, rx) = std_mpsc::channel();
        let span = shared.span.clone();
        rt.spawn(
            async move {
                shutdown(&shared, timeout).await;
                let _ = tx.send(());
            }
            .instrument(span),
        );
        let _ = rx.recv_timeout(timeout);
        self.shared.set_state(State::Stopped);
        let rest = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(100));
        if tokio::runtime::Handle::try_current().is_ok() {
            // Inside some async context blocking is not allowed; threads end on their own.
            rt.shutdown_background();
        } else {
            rt.shutdown_timeout(rest);
            // Free the tunnel port now, not when the engine is dropped. The runtime's
            // tasks are gone (should shutdown have timed out, a straggler can at worst
            // send from the unbound stand-in, which the kernel binds to a random port).
            #[cfg(unix)]
            release_tunnel_port(&self.shared);
        }
        // Closing the channel ends the event thread once it has delivered `Stopped`.
        lock(&self.shared.events_tx).take();
        if std::thread::current().id() != self.event_thread_id {
            if let Some(t) = lock(&self.event_thread).take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

fn port_busy(proto: Proto, addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match proto {
        Proto::Tcp => std::net::TcpListener::bind(addr).is_err(),
        Proto::Udp => std::net::UdpSocket::bind(addr).is_err(),
    }
}

async fn setup(config: Config, span: tracing::Span) -> Result<Arc<Shared>> {
    let role = match config.mode {
        Mode::Client => Role::Client,
        Mode::Server => Role::Server,
    };
    let key = RoomKey::derive(&config.room, config.secret.as_deref());
    let password = key.stun_password();
    let identity = Identity::generate()?;
    let pinned = PinnedPeer::new();

    let std_socket = bind_tunnel_socket(config.bind, config.performance.udp_buffer_size)?;
    #[cfg(unix)]
    let tunnel_fd = std::os::fd::AsRawFd::as_raw_fd(&std_socket);
    let local_addr = std_socket
        .local_addr()
        .map_err(|e| Error::io("tunnel socket: local address", &e))?;
    let host_candidates = crate::socket::host_candidates(local_addr);
    let metrics_listener = config.metrics_addr.map(crate::metrics::bind).transpose()?;
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(
            l.local_addr()
                .map_err(|e| Error::io("metrics: local address", &e))?,
        ),
        None => None,
    };
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let inner = runtime
        .wrap_udp_socket(std_socket)
        .map_err(|e| Error::io("tunnel socket", &e))?;
    let (demux, stun_rx) = DemuxSocket::new(inner);
    let server_config = match role {
        Role::Server => Some(tunnel::server_config(
            &identity,
            pinned.clone(),
            &config.performance,
        )?),
        Role::Client => None,
    };
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        tunnel::endpoint_config(),
        server_config,
        demux.clone(),
        runtime,
    )
    .map_err(|e| Error::io("quic endpoint", &e))?;
    let agent = StunAgent::new(demux);

    let signaling_requests = Arc::new(AtomicU64::new(0));
    // With a secret the rendezvous sees a name derived from the room key, so knowing
    // the room name alone finds (and can overwrite or delete) nothing.
    let mailbox = match config.secret.as_deref() {
        Some(s) if !s.is_empty() => key.mailbox_name(),
        _ => config.room.clone(),
    };
    let signal = SignalClient::with_ca_file(
        &config.signal_url,
        &mailbox,
        config.performance.signal_backoff,
        signaling_requests.clone(),
        config.signal_ca_file.as_deref(),
    )?;
    let totals = Arc::new(Counters::default());
    let (conn_tx, conn_rx) = watch::channel(None);
    let ctx = Ctx::new(
        conn_rx,
        config.performance.clone(),
        totals.clone(),
        config.allow.clone(),
    );
    let (incoming_tx, incoming_rx) = mpsc::channel(4);
    let shared = Arc::new(Shared {
        role,
        password,
        key,
        our_ids: Mutex::new((Offer::new_id(), String::new())),
        offer_guard: Mutex::new(OfferGuard::new()),
        rejections: Mutex::new(RejectionReports::default()),
        rejected: Mutex::new(None),
        new_peer: tokio::sync::Notify::new(),
        new_peer_id: Mutex::new(None),
        check_sources: Mutex::new(HashMap::new()),
        identity,
        pinned,
        state: StateCell {
            state: Mutex::new(State::Starting),
            cv: Condvar::new(),
        },
        events_tx: Mutex::new(None),
        subscribers: Arc::new(Mutex::new(Vec::new())),
        totals,
        ctx,
        conn_tx,
        mappings: Mutex::new(BTreeMap::new()),
        next_mapping: AtomicU64::new(1),
        root: CancellationToken::new(),
        endpoint: endpoint.clone(),
        agent,
        local_addr,
        host_candidates,
        discovery: Mutex::new(None),
        signal,
        stun_discoveries: AtomicU64::new(0),
        signaling_requests,
        reconnects: AtomicU64::new(0),
        path_changes: AtomicU64::new(0),
        offers_rejected: AtomicU64::new(0),
        checks_unauthenticated: AtomicU64::new(0),
        timings: Mutex::new(Timings::default()),
        peer: Mutex::new(PeerInfo::default()),
        last_error: Mutex::new(None),
        failure: Mutex::new(None),
        prflx: Mutex::new(None),
        turn: Mutex::new(None),
        relay_wanted: std::sync::atomic::AtomicBool::new(false),
        incoming: tokio::sync::Mutex::new(incoming_rx),
        metrics_addr,
        span,
        #[cfg(unix)]
        tunnel_fd,
        config,
    });
    if let Some(listener) = metrics_listener {
        let (s, token) = (shared.clone(), shared.root.clone());
        crate::spawn(async move {
            let stats = move || snapshot(&s);
            if let Err(e) = crate::metrics::serve(listener, stats, token).await {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        });
    }
    crate::spawn(stun_dispatch(shared.clone(), stun_rx));
    if role == Role::Server {
        crate::spawn(accept_loop(
            shared.clone(),
            endpoint,
            incoming_tx,
            shared.root.clone(),
        ));
    }
    Ok(shared)
}

fn bind_tunnel_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(|e| Error::io("tunnel socket", &e))?;
    let _ = s.set_recv_buffer_size(buffer.max(2 << 20));
    let _ = s.set_send_buffer_size(buffer.max(2 << 20));
    s.bind(&addr.into())
        .map_err(|e| Error::bind("tunnel socket (bind)", addr, &e))?;
    s.set_nonblocking(true)
        .map_err(|e| Error::io("tunnel socket", &e))?;
    Ok(s.into())
}

async fn add_mapping(shared: Arc<Shared>, mapping: Mapping) -> Result<MappingId> {
    let id = shared.next_mapping.fetch_add(1, Ordering::Relaxed);
    let counters = Arc::new(Counters::default());
    let meter = Meter::new(Some(counters.clone()), shared.totals.clone());
    let token = shared.root.child_token();
    let what = format!("mapping {mapping}");
    let span = tracing::info_span!("mapping", id, mapping = %mapping);
    let listen = match mapping.proto {
        Proto::Tcp => {
            let listener = TcpListener::bind(mapping.listen)
                .await
                .map_err(|e| Error::bind(what, mapping.listen, &e))?;
            let listen = listener
                .local_addr()
                .map_err(|e| Error::io("mapping listener", &e))?;
            crate::spawn(
                forward::tcp::run_listener(
                    listener,
                    mapping.clone(),
                    meter,
                    shared.ctx.clone(),
                    token.clone(),
                )
                .instrument(span),
            );
            listen
        }
        Proto::Udp => {
            let socket =
                forward::udp::bind_udp(mapping.listen, shared.config.performance.udp_buffer_size)
                    .map_err(|e| Error::bind(what, mapping.listen, &e))?;
            let listen = socket
                .local_addr()
                .map_err(|e| Error::io("mapping socket", &e))?;
            crate::spawn(
                forward::udp::run_listener(
                    Arc::new(socket),
                    mapping.clone(),
                    meter,
                    shared.ctx.clone(),
                    token.clone(),
                )
                .instrument(span),
            );
            listen
        }
    };
    let info = MappingInfo {
        id,
        mapping: mapping.clone(),
        listen,
    };
    lock(&shared.mappings).insert(
        id,
        MappingEntry {
            info,
            token,
            counters,
        },
    );
    tracing::info!(mapping = %mapping, %listen, id, "mapping added");
    shared.emit(Event::MappingAdded {
        id,
        spec: mapping.to_string(),
        listen,
    });
    Ok(id)
}

/// Routes STUN datagrams: answers authentic checks, hands responses to transactions,
/// unwraps data relayed by our TURN server.
async fn stun_dispatch(shared: Arc<Shared>, mut rx: mpsc::Receiver<StunDatagram>) {
    let token = shared.root.clone();
    loop {
        let d = tokio::select! {
            _ = token.cancelled() => return,
            d = rx.recv() => match d { Some(d) => d, None => return },
        };
        let socket = shared.agent.socket().clone();
        if Some(d.from) == socket.relay_server() && d.data.get(..2) == Some(&[0x00, 0x17]) {
            // A Data indication: a peer's packet relayed to us.
            let Some((peer, data)) = crate::relay::parse_data_indication(&d.data) else {
                continue;
            };
            // A TURN server relays only from peers we gave a permission; anything else
            // "from" the server is forged and must not add routes or channels.
            let permitted = lock(&shared.turn)
                .as_ref()
                .is_some_and(|t| t.is_permitted(peer.ip()));
            if !permitted {
                tracing::debug!(%peer, "data indication for a peer without a permission dropped");
                continue;
            }
            if socket.route_via_relay(peer) {
                bind_channel_later(&shared, peer);
            }
            if data
                .first()
                .is_some_and(|b| message::is_stun_first_byte(*b))
            {
                handle_stun(
                    &shared,
                    StunDatagram {
                        from: peer,
                        data,
                        relayed: true,
                    },
                )
                .await;
            } else {
                socket.inject(peer, data);
            }
            continue;
        }
        handle_stun(&shared, d).await;
    }
}

/// Binds a TURN channel for `peer` in the background (cheaper framing than Send
/// indications from then on).
fn bind_channel_later(shared: &Arc<Shared>, peer: SocketAddr) {
    let Some(turn) = lock(&shared.turn).clone() else {
        return;
    };
    let socket = shared.agent.socket().clone();
    crate::spawn(async move {
        match turn.bind_channel(peer).await {
            Ok(ch) => socket.set_channel(peer, ch),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "channel bind failed; using Send indications")
            }
        }
    });
}

async fn handle_stun(shared: &Arc<Shared>, d: StunDatagram) {
    match message::parse(&d.data) {
        Some(Parsed::Request {
            tid,
            username: Some(username),
            has_integrity: true,
        }) => {
            let (to, from_id) = username.split_once(':').unwrap_or(("", ""));
            let ours = {
                let ids = lock(&shared.our_ids);
                to == ids.0 || (!ids.1.is_empty() && to == ids.1)
            };
            if !ours || !message::verify_integrity(&d.data, &shared.password) {
                shared
                    .checks_unauthenticated
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            if !d.relayed {
                // Authentic and straight from the peer: the direct path works, so its
                // direct QUIC packets may move it off the relay (socket.rs).
                shared.agent.socket().direct_path_proven(d.from);
            }
            let reply = message::binding_success(tid, d.from, Some(&shared.password));
            // Answer on the path the check came in on: a direct check probes the
            // direct path even while the tunnel is relayed.
            let socket = shared.agent.socket();
            let _ = if d.relayed {
                socket.send_to(&reply, d.from).await
            } else {
                socket.send_direct(&reply, d.from).await
            };
            {
                let mut sources = lock(&shared.check_sources);
                if sources.len() >= MAX_CHECK_SOURCES {
                    sources.retain(|_, at| at.elapsed() < CHECK_SOURCE_TTL);
                }
                if sources.len() < MAX_CHECK_SOURCES {
                    sources.insert(d.from, Instant::now());
                }
            }
            // Addressed to this attempt's offer, from an offer id other than the one we
            // use: the peer started over. Start over too, at once, rather than punch or
            // keep a tunnel toward what is gone.
            let current = lock(&shared.peer).offer_id.clone();
            if current.as_deref().is_some_and(|c| c != from_id) && to == shared.our_id() {
                *lock(&shared.new_peer_id) = Some(from_id.to_owned());
                shared.new_peer.notify_one();
                shared.signal.wake();
            }
            let prflx = lock(&shared.prflx).clone();
            let waiting = matches!(shared.state(), State::Discovering | State::Signaling);
            match prflx {
                Some((peer_id, tx)) if peer_id == from_id && !waiting => {
                    let _ = tx.try_send(d.from);
                }
                // An authentic check while we have not read the peer's offer of this
                // attempt: it has posted one, so read the mailbox now rather than at
                // the next poll (bounded by `WAKE_GAP`).
                _ if waiting || !shared.state().is_connected() => shared.signal.wake(),
                _ => {}
            }
        }
        Some(Parsed::Request { .. }) => {
            shared
                .checks_unauthenticated
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(Parsed::Success {
            tid, mapped, other, ..
        }) => {
            shared.agent.on_response(Response {
                tid,
                from: d.from,
                mapped,
                other,
                success: true,
                raw: d.data,
            });
        }
        Some(Parsed::ErrorResponse { tid }) => {
            shared.agent.on_response(Response {
                tid,
                from: d.from,
                mapped: None,
                other: None,
                success: false,
                raw: d.data,
            });
        }
        Some(Parsed::OtherResponse { tid, success }) => {
            shared.agent.on_response(Response {
                tid,
                from: d.from,
                mapped: None,
                other: None,
                success,
                raw: d.data,
            });
        }
        _ => {}
    }
}

/// Our TURN allocation, made on first need and kept (refreshed) for the engine's life.
async fn ensure_relay(shared: &Arc<Shared>) -> std::result::Result<Arc<TurnClient>, Attempt> {
    if let Some(t) = lock(&shared.turn).clone() {
        return Ok(t);
    }
    let Some(cfg) = shared.config.relay.clone() else {
        return Err(Attempt::Retry("no relay configured".into()));
    };
    let host_port = crate::relay::host_port(&cfg.url);
    let server = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host(host_port.as_str()),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .and_then(|mut addrs| addrs.find(|a| a.is_ipv4() == shared.local_addr.is_ipv4()))
    .ok_or_else(|| Attempt::Retry(format!("cannot resolve the TURN server {host_port}")))?;
    let (username, password) = crate::relay::credentials(&cfg);
    let target = crate::relay::RelayTarget {
        server,
        url: cfg.url.clone(),
        username,
        password,
    };
    let socket = shared.agent.socket().clone();
    // Answers from the server must reach the dispatcher before the allocation exists.
    socket.set_relay_server(Some(server));
    let turn = match TurnClient::allocate(shared.agent.clone(), target).await {
        Ok(t) => Arc::new(t),
        Err(e) => {
            socket.set_relay_server(None);
            let reason = e.to_string();
            // Wrong credentials will not fix themselves; everything else may.
            return Err(if reason.contains("rejected the credentials") {
                Attempt::Fatal(e)
            } else {
                Attempt::Retry(reason)
            });
        }
    };
    *lock(&shared.turn) = Some(turn.clone());
    let (t, token) = (turn.clone(), shared.root.clone());
    crate::spawn(async move {
        // Refresh allocation, permissions and channels well before they expire.
        let every = (t.lifetime / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = token.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_millis(500), t.refresh(Duration::ZERO)).await;
                    return;
                }
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = t.refresh_all().await {
                tracing::warn!(server = %t.server(), error = %e, "relay refresh failed");
            } else {
                tracing::debug!(server = %t.server(), "relay refreshed");
            }
        }
    });
    Ok(turn)
}

/// Longest a server holds an incoming handshake while it has not read the peer's offer
/// (the client punched and dialled before our poll of the mailbox came round).
const HOLD_FOR_OFFER: Duration = Duration::from_secs(5);

/// Most handshakes held at once for [`HOLD_FOR_OFFER`]; further ones are not held (and
/// fail in the verifier, as anything that is not the peer does), so a flood of QUIC
/// Initials holds a bounded set of buffers and causes no more mailbox reads than one
/// per [`crate::signal::WAKE_GAP`].
const MAX_HELD: usize = 8;

/// Server role: completes incoming QUIC handshakes (the pinned verifier rejects
/// everyone but the peer) and hands the connections to the driver.
///
/// A handshake that arrives before we have read the peer's offer in this attempt (its
/// poll of a mailbox without long-poll may be seconds away) is held, not refused: the
/// mailbox is read at once ([`SignalClient::wake`]) and the handshake goes on when the
/// offer is pinned, or after [`HOLD_FOR_OFFER`]. quinn buffers the client's
/// retransmitted Initials meanwhile.
async fn accept_loop(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    tx: mpsc::Sender<quinn::Connection>,
    token: CancellationToken,
) {
    let held = Arc::new(AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            _ = token.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let (tx, shared, held, token) = (tx.clone(), shared.clone(), held.clone(), token.clone());
        crate::spawn(async move {
            if shared.pinned.get().is_none() {
                let from = incoming.remote_address();
                // A handshake from where authentic checks came is the peer's: always
                // held. Others share MAX_HELD places, so a flood cannot crowd it out.
                let known = lock(&shared.check_sources)
                    .get(&from)
                    .is_some_and(|at| at.elapsed() < CHECK_SOURCE_TTL);
                if known || held.fetch_add(1, Ordering::Relaxed) < MAX_HELD {
                    tracing::debug!(%from, "handshake before the peer's offer; reading the mailbox now");
                    shared.signal.wake();
                    let pinned = tokio::select! {
                        _ = token.cancelled() => false,
                        p = shared.pinned.wait_pinned(HOLD_FOR_OFFER) => p,
                    };
                    if !pinned {
                        tracing::info!(%from, "no peer offer arrived for a held handshake");
                    }
                }
                if !known {
                    held.fetch_sub(1, Ordering::Relaxed);
                }
                if token.is_cancelled() {
                    return;
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), incoming).await {
                Ok(Ok(conn)) => {
                    let _ = tx.send(conn).await;
                }
                Ok(Err(e)) => tracing::info!(error = %e, "incoming tunnel handshake failed"),
                Err(_) => tracing::info!("incoming tunnel handshake timed out"),
            }
        });
    }
}

/// Backoff before attempt `n` (1-based) after failures.
fn retry_delay(n: u32, max_retries: u32) -> Duration {
    if n > max_retries.max(1) {
        return Duration::from_secs(30);
    }
    Duration::from_millis(500u64 << (n - 1).min(6))
}

/// The connect/reconnect loop (DESIGN §4).
async fn drive(shared: Arc<Shared>) {
    let token = shared.root.clone();
    let mut failures = 0u32;
    let mut connected_before = false;
    loop {
        let attempt = tokio::select! {
            _ = token.cancelled() => return,
            r = connect_once(&shared) => r,
            id = peer_started_over(&shared) => {
                tracing::info!(peer_offer = %id, "the peer started over; so do we");
                failures = 0;
                continue;
            }
        };
        match attempt {
            Ok(Some((conn, path))) => {
                failures = 0;
                if connected_before {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_before = true;
                // Every task of this tunnel logs with the peer's address and the path.
                let span = tracing::info_span!(
                    "tunnel",
                    peer = %conn.remote_address(),
                    path = path.as_str(),
                );
                let reason = tokio::select! {
                    _ = token.cancelled() => return,
                    r = run_connected(&shared, conn, path).instrument(span) => r,
                    id = peer_restarted(&shared) => {
                        // Our tunnel goes to what the peer left behind (it restarted):
                        // drop it now instead of after the idle timeout.
                        if let Some(c) = shared.conn_tx.send_replace(None) {
                            c.close(0u32.into(), b"peer started over");
                        }
                        format!("the peer restarted (checks from its new offer {id}, with another certificate)")
                    }
                };
                if shared.role == Role::Server {
                    // A handshake of the peer's next incarnation is held for its offer,
                    // not refused against the old certificate.
                    shared.pinned.set(None);
                }
                if token.is_cancelled() {
                    return;
                }
                tracing::info!(%reason, "tunnel lost; reconnecting");
                shared.fail_reason(reason.clone());
                shared.set_state(State::Reconnecting { attempt: 0, reason });
                // Give the peer a moment to notice too, then start over at once.
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            // Waiting for the peer's offer timed out: nothing failed, just ask again.
            Ok(None) => {}
            Err(Attempt::Fatal(e)) => {
                let reason = e.to_string();
                tracing::warn!(%reason, "giving up");
                shared.fail_reason(reason.clone());
                *lock(&shared.failure) = Some(e);
                shared.set_state(State::Failed { reason });
                return;
            }
            Err(Attempt::Retry(reason)) => {
                failures += 1;
                tracing::info!(attempt = failures, %reason, "connect attempt failed");
                shared.fail_reason(reason.clone());
                shared.set_state(State::Reconnecting {
                    attempt: failures,
                    reason,
                });
                let delay = retry_delay(failures, shared.config.performance.max_retries);
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                    id = peer_started_over(&shared) => {
                        tracing::info!(peer_offer = %id, "the peer started over; retrying now");
                        failures = 0;
                    }
                }
            }
        }
    }
}

fn ms(d: Duration) -> Option<f64> {
    Some(d.as_secs_f64() * 1000.0)
}

/// Our public address, from the cache when fresh.
async fn discovery(shared: &Shared) -> Discovery {
    let cached = lock(&shared.discovery).clone();
    if let Some(d) = cached {
        if d.at.elapsed() < shared.config.performance.stun_cache {
            return d;
        }
    }
    let mut servers = Vec::new();
    for s in &shared.config.stun_servers {
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(s.as_str()))
            .await
        {
            Ok(Ok(addrs)) => {
                if let Some(a) = addrs
                    .filter(|a| a.is_ipv4() == shared.local_addr.is_ipv4())
                    .find(|a| !shared.local_addr.ip().is_loopback() || a.ip().is_loopback())
                {
                    servers.push(a);
                }
            }
            _ => tracing::warn!(server = %s, "cannot resolve STUN server"),
        }
    }
    let d = stun_client::discover(&shared.agent, &servers, &shared.host_candidates).await;
    shared.stun_discoveries.fetch_add(1, Ordering::Relaxed);
    for e in &d.errors {
        tracing::warn!(error = %e, "stun");
    }
    tracing::info!(public = ?d.public_addr(), nat = d.nat.as_str(), took = ?d.took, "stun discovery");
    *lock(&shared.discovery) = Some(d.clone());
    d
}

fn candidate_kind(shared: &Shared, peer: &Offer, selected: SocketAddr) -> PathKind {
    // Through our own relay, or to the peer's relayed address: relay.
    if shared.agent.socket().is_via_relay(selected) {
        return PathKind::Relay;
    }
    // The peer lists its interface addresses first and relayed ones last.
    let pos = peer.candidates.iter().position(|c| *c == selected);
    match pos {
        Some(i) if i < peer.host_count => PathKind::Lan,
        Some(i) if i >= peer.candidates.len() - peer.relay_count => PathKind::Relay,
        _ => PathKind::Direct,
    }
}

/// Our offer: host candidates, STUN-mapped ones, and the relayed address when given
/// (only the relayed one under relayPolicy always).
fn build_offer(
    shared: &Shared,
    disc: &Discovery,
    relayed: Option<SocketAddr>,
    always: bool,
    can_relay: bool,
) -> Offer {
    let mut candidates = Vec::new();
    let mut host_count = 0;
    if !always {
        candidates = shared.host_candidates.clone();
        host_count = candidates.len();
        for (_, m) in &disc.mapped {
            if !candidates.contains(m) {
                candidates.push(*m);
            }
        }
    }
    let mut relay_count = 0;
    if let Some(r) = relayed {
        candidates.push(r);
        relay_count = 1;
    }
    Offer {
        role: shared.role,
        id: shared.our_id(),
        nonce: Offer::new_nonce(),
        ts: unix_now(),
        candidates,
        host_count,
        relay_count,
        turn: can_relay,
        fp: shared.identity.fingerprint().to_hex(),
        nat: disc.nat.as_str().to_owned(),
    }
}

/// Waits for an authentic, fresh peer offer that `want` accepts. Rejected offers are
/// counted and reported (rate-limited) and the wait goes on; reading again the offer
/// accepted last is not a rejection.
async fn wait_for_offer(
    shared: &Arc<Shared>,
    timeout: Duration,
    want: impl Fn(&Offer) -> bool,
) -> Result<Offer> {
    let expected = shared.role.peer();
    shared
        .signal
        .wait_for(expected, timeout, |data| {
            let offer = match Offer::decode(data, &shared.key, &shared.config.room) {
                Ok(o) => o,
                Err(e) => {
                    shared.offer_rejected(&e);
                    return None;
                }
            };
            let mut guard = lock(&shared.offer_guard);
            if guard.is_latest(&offer.nonce) {
                return None;
            }
            match guard.check(&offer, expected, unix_now()) {
                Ok(()) => want(&offer).then_some(offer),
                Err(e) => {
                    drop(guard);
                    shared.offer_rejected(&e);
                    None
                }
            }
        })
        .await
}

/// Why an attempt did not connect.
enum Attempt {
    /// Worth retrying after a backoff.
    Retry(String),
    /// Retrying cannot help.
    Fatal(Error),
}

impl From<String> for Attempt {
    fn from(reason: String) -> Self {
        Attempt::Retry(reason)
    }
}

/// One attempt: discover, signal, punch, handshake. `Ok(None)` when the peer has not
/// shown up yet (not a failure).
async fn connect_once(
    shared: &Arc<Shared>,
) -> std::result::Result<Option<(quinn::Connection, PathKind)>, Attempt> {
    let t0 = Instant::now();
    if shared.role == Role::Server {
        // Until this attempt has read the peer's offer, handshakes are held for it
        // (`accept_loop`), not checked against an earlier peer's certificate.
        shared.pinned.set(None);
    }
    shared.new_attempt_id();
    lock(&shared.peer).offer_id = None;
    shared.set_state(State::Discovering);
    let disc = discovery(shared).await;
    let stun_ms = disc.took;

    shared.set_state(State::Signaling);
    let relay_allowed =
        shared.config.relay.is_some() && shared.config.relay_policy != RelayPolicy::Never;
    let always = shared.config.relay_policy == RelayPolicy::Always;
    let mut relayed = None;
    if relay_allowed && (always || shared.relay_wanted.load(Ordering::Relaxed)) {
        relayed = Some(ensure_relay(shared).await?.relayed);
    }
    let mut offer = build_offer(shared, &disc, relayed, always, relay_allowed);
    let ts = Instant::now();
    shared
        .signal
        .post(shared.role, &offer.encode(&shared.key, &shared.config.room))
        .await
        .map_err(|e| format!("cannot post our offer: {e}"))?;
    let peer = wait_for_offer(shared, Duration::from_secs(60), |_| true).await;
    let mut peer = match peer {
        Ok(p) => p,
        Err(Error::Timeout(_)) => return Ok(None),
        Err(e) => return Err(Attempt::Retry(format!("rendezvous: {e}"))),
    };
    let signal_ms = ts.elapsed();
    {
        let mut p = lock(&shared.peer);
        p.nat = Some(peer.nat.clone());
        p.offer_id = Some(peer.id.clone());
    }
    if disc.nat.hopeless_with(&peer.nat) && peer.relay_count == 0 && offer.relay_count == 0 {
        // Direct is hopeless: one side must relay. The server allocates if it can;
        // the client only when the server cannot.
        let we_allocate = relay_allowed && (shared.role == Role::Server || !peer.turn);
        if we_allocate {
            let turn = ensure_relay(shared).await?;
            shared.relay_wanted.store(true, Ordering::Relaxed);
            offer = build_offer(shared, &disc, Some(turn.relayed), always, relay_allowed);
            shared
                .signal
                .post(shared.role, &offer.encode(&shared.key, &shared.config.room))
                .await
                .map_err(|e| format!("cannot post our relayed offer: {e}"))?;
        } else if peer.turn && shared.config.relay_policy != RelayPolicy::Never {
            peer = wait_for_offer(shared, Duration::from_secs(20), |o| o.relay_count > 0)
                .await
                .map_err(|e| format!("the peer did not offer its relay: {e}"))?;
        } else {
            return Err(Attempt::Fatal(Error::NoPath {
                local_nat: disc.nat.as_str().to_owned(),
                peer_nat: peer.nat.clone(),
            }));
        }
    }
    let Some(fp) = Fingerprint::from_hex(&peer.fp) else {
        return Err(Attempt::Retry(
            "peer offer carries an invalid fingerprint".into(),
        ));
    };
    lock(&shared.peer).offer = Some(peer.clone());
    let turn = lock(&shared.turn).clone();
    if let Some(turn) = turn {
        // Let the peer's packets in through our relay (permissions are per IP).
        let ips: Vec<std::net::IpAddr> = peer.candidates.iter().map(|c| c.ip()).collect();
        let t = turn.clone();
        if let Err(e) = t.permit(&ips).await {
            tracing::warn!(error = %e, "relay permission failed");
        }
    }
    shared.pinned.set(Some(fp));
    shared.set_state(State::Punching);
    let tp = Instant::now();
    let offered: Vec<SocketAddr> = if always {
        // Only the peer's relayed addresses (reached over the path to the TURN server);
        // with none, the peer's checks through our relay give us its address.
        peer.candidates[peer.candidates.len() - peer.relay_count..].to_vec()
    } else {
        peer.candidates.clone()
    };
    let remote = punch::usable_candidates(shared.local_addr, &offered);
    if always {
        // Everything, checks included, leaves through our own relay.
        for c in &remote {
            shared.agent.socket().route_via_relay(*c);
        }
    }
    if remote.is_empty() && !always {
        return Err(Attempt::Retry(format!(
            "the peer offered no candidate reachable from {}",
            shared.local_addr
        )));
    }
    let (prflx_tx, prflx_rx) = mpsc::channel(16);
    *lock(&shared.prflx) = Some((peer.id.clone(), prflx_tx));
    let punch = Punch {
        our_id: shared.our_id(),
        peer_id: peer.id.clone(),
        password: shared.password.clone(),
        remote,
        timeout: shared.config.punch_timeout,
        keep_going: shared.role == Role::Server,
        direct: false,
    };
    let result = match shared.role {
        Role::Client => {
            let selected: Option<Selected> = punch.run(shared.agent.clone(), prflx_rx).await;
            let Some(sel) = selected else {
                shared.relay_wanted.store(relay_allowed, Ordering::Relaxed);
                return Err(Attempt::Retry(format!(
                    "no path: no connectivity check succeeded within {:?} (our NAT: {}, peer NAT: {})",
                    shared.config.punch_timeout,
                    disc.nat.as_str(),
                    peer.nat
                )));
            };
            let cfg = tunnel::client_config(
                &shared.identity,
                shared.pinned.clone(),
                &shared.config.performance,
            )
            .map_err(|e| e.to_string())?;
            let connecting = shared
                .endpoint
                .connect_with(cfg, sel.remote, tunnel::SERVER_NAME)
                .map_err(|e| format!("cannot open the tunnel: {e}"))?;
            // Connected only once the server has authenticated us too: in TLS 1.3 our
            // handshake completes before the server has checked our certificate, so
            // wait for its welcome (a server that refuses us closes instead).
            let handshake = async {
                let conn = connecting
                    .await
                    .map_err(|e| format!("tunnel handshake with {} failed: {e}", sel.remote))?;
                if let Err(e) = tunnel::await_welcome(&conn).await {
                    conn.close(0u32.into(), b"no welcome");
                    return Err(format!(
                        "tunnel handshake with {}: the peer did not accept us: {e}",
                        sel.remote
                    ));
                }
                Ok(conn)
            };
            let conn = tokio::time::timeout(Duration::from_secs(10), handshake)
                .await
                .map_err(|_| format!("tunnel handshake with {} timed out", sel.remote))??;
            let path = candidate_kind(shared, &peer, sel.remote);
            (conn, path)
        }
        Role::Server => {
            let agent = shared.agent.clone();
            // Aborted also when the attempt is dropped (the peer started over, or stop).
            let punching =
                tokio_util::task::AbortOnDropHandle::new(crate::spawn(punch.run(agent, prflx_rx)));
            let wait = shared.config.punch_timeout + Duration::from_secs(5);
            let got = {
                let mut incoming = shared.incoming.lock().await;
                // Drop handshakes completed for an earlier peer.
                let want = shared.pinned.get();
                tokio::time::timeout(wait, async {
                    loop {
                        match incoming.recv().await {
                            Some(c) if peer_fp(&c) == want => return Some(c),
                            Some(c) => c.close(0u32.into(), b"superseded"),
                            None => return None,
                        }
                    }
                })
                .await
            };
            drop(punching);
            let conn = match got {
                Ok(Some(c)) => c,
                _ => {
                    shared.relay_wanted.store(relay_allowed, Ordering::Relaxed);
                    return Err(Attempt::Retry(format!(
                        "no path: the peer's tunnel did not arrive within {wait:?} (our NAT: {}, peer NAT: {})",
                        disc.nat.as_str(),
                        peer.nat
                    )));
                }
            };
            let path = candidate_kind(shared, &peer, conn.remote_address());
            (conn, path)
        }
    };
    *lock(&shared.prflx) = None;
    *lock(&shared.rejected) = None;
    *lock(&shared.timings) = Timings {
        stun_discovery_ms: ms(stun_ms),
        signaling_wait_ms: ms(signal_ms),
        punching_ms: ms(tp.elapsed()),
        time_to_connected_ms: ms(t0.elapsed()),
    };
    Ok(Some(result))
}

fn peer_fp(conn: &quinn::Connection) -> Option<Fingerprint> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.first().map(|c| Fingerprint::of(c))
}

/// Serves one tunnel until it is lost; returns why.
async fn run_connected(
    shared: &Arc<Shared>,
    mut conn: quinn::Connection,
    path: PathKind,
) -> String {
    loop {
        let peer = conn.remote_address();
        {
            let mut p = lock(&shared.peer);
            p.path = Some(path);
            p.addr = Some(peer);
        }
        shared.conn_tx.send_replace(Some(conn.clone()));
        shared.set_state(State::Connected { path, peer });
        let conn_token = shared.root.child_token();
        let datagrams = crate::spawn(forward::udp::dispatch_datagrams(
            conn.clone(),
            shared.ctx.flows.clone(),
        ));
        if path == PathKind::Relay {
            crate::spawn(upgrade_to_direct(
                shared.clone(),
                conn.clone(),
                conn_token.clone(),
            ));
        }
        if shared.role == Role::Server {
            let (c, ctx, t) = (conn.clone(), shared.ctx.clone(), conn_token.clone());
            crate::spawn(async move {
                // The client reports connected only after this (see `await_welcome`).
                if let Err(e) = tunnel::send_welcome(&c).await {
                    tracing::debug!(error = %e, "welcome not sent");
                    return;
                }
                loop {
                    let stream = tokio::select! {
                        _ = t.cancelled() => return,
                        s = c.accept_bi() => s,
                    };
                    match stream {
                        Ok((send, recv)) => {
                            crate::spawn(forward::tcp::serve_stream(
                                send,
                                recv,
                                c.clone(),
                                ctx.clone(),
                                t.clone(),
                            ));
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        let replaced = async {
            if shared.role != Role::Server {
                return std::future::pending::<quinn::Connection>().await;
            }
            let mut incoming = shared.incoming.lock().await;
            loop {
                match incoming.recv().await {
                    // A handshake that passed the pinned verifier: the peer came back
                    // (its old connection is dead from its point of view).
                    Some(c) if peer_fp(&c) == shared.pinned.get() => return c,
                    Some(c) => c.close(0u32.into(), b"superseded"),
                    None => return std::future::pending().await,
                }
            }
        };
        let mut replaced = std::pin::pin!(replaced);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut current = peer;
        let outcome = loop {
            tokio::select! {
                e = conn.closed() => break Err(e),
                c = &mut replaced => break Ok(c),
                _ = tick.tick() => {
                    // quinn follows a peer whose NAT mapping changed (QUIC migration);
                    // report the new address and count the change.
                    let now = conn.remote_address();
                    let (offer, reported) = {
                        let p = lock(&shared.peer);
                        (p.offer.clone(), p.path)
                    };
                    let new_path = match (shared.role, offer) {
                        // The client's own upgrade reports itself; its address is aliased.
                        (Role::Client, _) | (_, None) => reported.unwrap_or(path),
                        (Role::Server, Some(o)) => candidate_kind(shared, &o, now),
                    };
                    if now != current || Some(new_path) != reported {
                        tracing::info!(old = %current, new = %now, path = new_path.as_str(), "tunnel path changed");
                        let span = tracing::Span::current();
                        span.record("peer", tracing::field::display(now));
                        span.record("path", new_path.as_str());
                        current = now;
                        shared.path_changes.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut p = lock(&shared.peer);
                            p.addr = Some(now);
                            p.path = Some(new_path);
                        }
                        shared.set_state(State::Connected { path: new_path, peer: now });
                    }
                }
            }
        };
        shared.conn_tx.send_replace(None);
        conn_token.cancel();
        datagrams.abort();
        match outcome {
            Err(e) => {
                let reason = format!("tunnel to {peer} lost: {e}");
                return reason;
            }
            Ok(new_conn) => {
                tracing::info!(old = %peer, new = %new_conn.remote_address(), "peer reconnected; switching tunnel");
                tracing::Span::current()
                    .record("peer", tracing::field::display(new_conn.remote_address()));
                conn.close(0u32.into(), b"replaced");
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                conn = new_conn;
            }
        }
    }
}

/// While relayed, keeps probing the peer's direct candidates (2 s, 4 s, … 60 s apart).
/// When one answers straight back, the connection's packets are aliased to it: the
/// same QUIC connection carries on directly and the peer's side migrates to the new
/// path when our packets arrive on it. Live streams are not interrupted.
async fn upgrade_to_direct(shared: Arc<Shared>, conn: quinn::Connection, token: CancellationToken) {
    let Some(offer) = lock(&shared.peer).offer.clone() else {
        return;
    };
    let direct: Vec<SocketAddr> =
        offer.candidates[..offer.candidates.len() - offer.relay_count].to_vec();
    let remote = punch::usable_candidates(shared.local_addr, &direct);
    if remote.is_empty() || shared.config.relay_policy == RelayPolicy::Always {
        return;
    }
    let mut wait = Duration::from_secs(2);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let punch = Punch {
            our_id: shared.our_id(),
            peer_id: offer.id.clone(),
            password: shared.password.clone(),
            remote: remote.clone(),
            timeout: Duration::from_secs(2),
            keep_going: false,
            direct: true,
        };
        let (_tx, rx) = mpsc::channel(1);
        let found = punch.run(shared.agent.clone(), rx).await;
        if shared.role == Role::Server {
            // The server's probes open its own NAT toward the client; the client moves
            // the connection, and we follow when its packets arrive directly.
            if lock(&shared.peer).path != Some(PathKind::Relay) {
                return;
            }
            wait = (wait * 2).min(Duration::from_secs(60));
            continue;
        }
        if let Some(sel) = found {
            let conn_addr = conn.remote_address();
            shared.agent.socket().alias(conn_addr, sel.remote);
            let path = candidate_kind(&shared, &offer, sel.remote);
            tracing::info!(from = %conn_addr, to = %sel.remote, "tunnel upgraded from relay to a direct path");
            // This task runs in the tunnel's span: later lines name the new path.
            let span = tracing::Span::current();
            span.record("peer", tracing::field::display(sel.remote));
            span.record("path", path.as_str());
            shared.path_changes.fetch_add(1, Ordering::Relaxed);
            {
                let mut p = lock(&shared.peer);
                p.path = Some(path);
                p.addr = Some(sel.remote);
            }
            shared.set_state(State::Connected {
                path,
                peer: sel.remote,
            });
            return;
        }
        wait = (wait * 2).min(Duration::from_secs(60));
    }
}

async fn shutdown(shared: &Arc<Shared>, timeout: Duration) {
    shared.root.cancel();
    let budget = (timeout / 3).min(Duration::from_secs(1));
    // Our offer goes before the tunnel: a peer that sees the tunnel close and reads the
    // mailbox then must not find an offer of ours to punch toward for nothing.
    let _ = tokio::time::timeout(budget, shared.signal.delete(shared.role)).await;
    let conn = shared.conn_tx.send_replace(None);
    if let Some(c) = conn {
        c.close(0u32.into(), b"stopped");
    }
    shared.endpoint.close(0u32.into(), b"stopped");
    let _ = tokio::time::timeout(budget, shared.endpoint.wait_idle()).await;
}

fn snapshot(shared: &Shared) -> Stats {
    let state = shared.state();
    let peer = lock(&shared.peer);
    let disc = lock(&shared.discovery).clone();
    let conn = shared.conn_tx.borrow().clone();
    let connected = state.is_connected();
    let mappings = lock(&shared.mappings)
        .values()
        .map(|e| MappingStats {
            id: e.info.id,
            spec: e.info.mapping.to_string(),
            listen: e.info.listen,
            traffic: e.counters.snapshot(),
        })
        .collect();
    Stats {
        mode: shared.mode_str().to_owned(),
        room: shared.config.room.clone(),
        insecure: shared.config.secret.is_none(),
        path: if connected { peer.path } else { None },
        relay_server: match (connected, peer.path, lock(&shared.turn).as_ref()) {
            (true, Some(PathKind::Relay), Some(t)) => Some(format!("{} ({})", t.url(), t.server())),
            (true, Some(PathKind::Relay), None) => peer
                .addr
                .map(|a| format!("{a} (the peer's TURN allocation)")),
            _ => None,
        },
        peer_addr: if connected { peer.addr } else { None },
        state,
        local_addr: shared.local_addr,
        public_addr: disc.as_ref().and_then(|d| d.public_addr()),
        nat_type: disc
            .as_ref()
            .map(|d| d.nat.as_str())
            .unwrap_or("unknown")
            .to_owned(),
        peer_nat_type: peer.nat.clone(),
        rtt_ms: conn.map(|c| c.rtt().as_secs_f64() * 1000.0),
        totals: shared.totals.snapshot(),
        mappings,
        timings: lock(&shared.timings).clone(),
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        path_changes: shared.path_changes.load(Ordering::Relaxed),
        stun_discoveries: shared.stun_discoveries.load(Ordering::Relaxed),
        signaling_requests: shared.signaling_requests.load(Ordering::Relaxed),
        offers_rejected: shared.offers_rejected.load(Ordering::Relaxed),
        checks_unauthenticated: shared.checks_unauthenticated.load(Ordering::Relaxed),
        last_error: lock(&shared.last_error).clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #14, finding 6: Data indications "from" the TURN server add a route (and
    /// a channel bind) only for peers we gave a permission; forged ones for any other
    /// peer change nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn forged_data_indications_add_no_routes() {
        let config = Config::from_value(serde_json::json!({
            "mode": "client", "room": "r", "secret": "k",
            "signalUrl": "http://127.0.0.1:9/", "bind": "127.0.0.1:0",
        }))
        .expect("config");
        let shared = setup(config, tracing::Span::none()).await.expect("setup");
        let turn_server: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let socket = shared.agent.socket().clone();
        socket.set_relay_server(Some(turn_server));
        let permitted: SocketAddr = "198.51.100.7:4000".parse().expect("addr");
        *lock(&shared.turn) = Some(Arc::new(crate::relay::TurnClient::for_test(
            shared.agent.clone(),
            turn_server,
            vec![permitted.ip()],
        )));
        let (tx, rx) = mpsc::channel(8);
        let dispatch = tokio::spawn(stun_dispatch(shared.clone(), rx));
        // A Data indication is a Send indication with another message type.
        let data_indication = |peer: SocketAddr| {
            let mut d = crate::relay::send_indication(peer, b"\x40 not stun");
            d[1] = 0x17;
            d
        };
        let forged: Vec<SocketAddr> = (0..100u16)
            .map(|i| SocketAddr::from(([203, 0, 113, 9], 5000 + i)))
            .collect();
        for peer in forged.iter().copied().chain([permitted]) {
            let d = StunDatagram {
                from: turn_server,
                data: data_indication(peer),
                relayed: false,
            };
            tx.send(d).await.expect("dispatch runs");
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !socket.is_via_relay(permitted) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            socket.is_via_relay(permitted),
            "the permitted peer is relayed"
        );
        for peer in forged {
            assert!(
                !socket.is_via_relay(peer),
                "{peer} was added by a forged indication"
            );
        }
        shared.root.cancel();
        dispatch.abort();
    }

    #[test]
    fn retry_schedule_doubles_then_settles() {
        assert_eq!(retry_delay(1, 3), Duration::from_millis(500));
        assert_eq!(retry_delay(2, 3), Duration::from_millis(1000));
        assert_eq!(retry_delay(3, 3), Duration::from_millis(2000));
        assert_eq!(retry_delay(4, 3), Duration::from_secs(30));
    }

    #[test]
    fn state_display_names_reason() {
        let s = State::Reconnecting {
            attempt: 2,
            reason: "x failed".into(),
        };
        assert_eq!(s.to_string(), "reconnecting (attempt 2: x failed)");
        assert!(!s.is_connected());
        assert!(State::Stopped.is_final());
    }
}
