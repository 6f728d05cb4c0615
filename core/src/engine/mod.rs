//! The engine: one peer, one UDP socket, one runtime (DESIGN §3).
//!
//! [`Engine::start`] validates the configuration, binds everything that can fail
//! (the tunnel socket, every mapping's listener) and returns; connecting runs in the
//! background on the engine's own tokio runtime, so callers never need tokio.
//!
//! The pieces, one concern per file:
//! - this file: the [`Engine`] handle and its lifecycle (start, stop, what is kept
//!   after stop);
//! - `wait`: waiting for the tunnel, and cancelling such a wait;
//! - `shared`: the state every task of the engine shares;
//! - `setup`: binding the tunnel socket and building the QUIC endpoint;
//! - `mappings`: the mapping registry;
//! - `responder`: answering connectivity checks and routing STUN answers (the
//!   socket unwraps what our TURN server relays);
//! - `accept`: the server's incoming handshakes;
//! - `driver`: the connect/reconnect loop, which carries out the decisions of
//!   [`crate::agent`];
//! - `attempt`: one connect attempt (discover, signal, punch, handshake; our TURN
//!   allocation is `turn::allocation`'s);
//! - `session`: a connected tunnel, and its upgrade from relay to direct;
//! - `snapshot`: the stats snapshot and graceful shutdown.

mod accept;
mod attempt;
mod birthdays;
mod driver;
mod hub;
mod knock;
mod mappings;
mod offers;
mod portmap;
mod predict;
mod responder;
mod session;
mod setup;
mod shared;
mod snapshot;
#[cfg(test)]
mod tests;
mod wait;
mod watch;

use std::fmt;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use tracing::Instrument;

pub use crate::status::{Event, MappingId, MappingInfo, PathKind, State};
pub use wait::WaitCancel;

use crate::config::{Config, Mapping, Mode};
use crate::error::{Error, Result};
use crate::stats::Stats;
use crate::sync::lock;
use driver::drive;
use mappings::{add_mapping, port_busy};
use setup::setup;
use shared::{insecure_warning, Callback, Shared};
use snapshot::{shutdown, snapshot};

/// How much longer than its own budget a `stop` waits for one already running on
/// another thread.
const STOP_MARGIN: Duration = Duration::from_secs(1);

/// A running stunfwd peer. All methods are thread-safe; dropping it stops it.
///
/// Start one with [`Engine::start`] and a [`Config`]; it connects in the background on
/// a runtime of its own, so the caller needs no async runtime.
///
/// # Example
///
/// A whole tunnel on loopback: a rendezvous server, a server peer and a client peer
/// whose mapping forwards a local port to a TCP echo service beside the server.
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::{TcpListener, TcpStream};
/// use std::time::Duration;
/// use stunfwd_core::{BlockingSignalServer, Config, Engine, State};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The rendezvous (HTTP mailbox and STUN responder) both peers meet on.
/// let rendezvous = BlockingSignalServer::start_on("127.0.0.1:0", Some("127.0.0.1:0"))?;
/// let stun = rendezvous.stun_addr().expect("a STUN responder");
///
/// // The service behind the server peer: echoes one byte.
/// let echo = TcpListener::bind("127.0.0.1:0")?;
/// let target = echo.local_addr()?;
/// std::thread::spawn(move || -> std::io::Result<()> {
///     let (mut conn, _) = echo.accept()?;
///     let mut byte = [0];
///     conn.read_exact(&mut byte)?;
///     conn.write_all(&byte)
/// });
///
/// let config = |mode: &str| {
///     Config::from_value(serde_json::json!({
///         "mode": mode,
///         "room": "doc-example",
///         "secret": "a secret both peers share",
///         "signalUrl": rendezvous.url(),
///         "stunServers": [stun.to_string()],
///         "bind": "127.0.0.1:0",
///     }))
/// };
/// let server = Engine::start(config("server")?)?;
/// let client = Engine::start(config("client")?)?;
/// // The client listens on a free local port and forwards it to the echo service.
/// let id = client.add_mapping_str(&format!("tcp:0:{target}"))?;
/// let local = client.mapping_addr(id).expect("a mapping's listener");
///
/// let state = client.wait_connected(Duration::from_secs(10))?;
/// assert!(matches!(state, State::Connected { .. }), "{state}");
/// let mut conn = TcpStream::connect(local)?;
/// conn.set_read_timeout(Some(Duration::from_secs(10)))?;
/// conn.write_all(b"!")?;
/// let mut byte = [0];
/// conn.read_exact(&mut byte)?;
/// assert_eq!(&byte, b"!");
///
/// client.stop(Duration::from_secs(1));
/// server.stop(Duration::from_secs(1));
/// let stats = client.stats();
/// assert_eq!(stats.state, State::Stopped);
/// assert_eq!(stats.mappings[0].traffic.connections_opened, 1);
/// # Ok(())
/// # }
/// ```
pub struct Engine {
    /// The state the engine's tasks share while it runs; what `stop` kept of it
    /// afterwards.
    life: Mutex<Life>,
    /// Where the engine is in its life; `stopped` is notified when it gets to the end.
    phase: Mutex<Phase>,
    stopped: Condvar,
    event_thread: Mutex<Option<JoinHandle<()>>>,
    event_thread_id: ThreadId,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// The token of [`Engine::cancel_waits`]; replaced each time it is cancelled.
    waits: Mutex<WaitCancel>,
}

enum Phase {
    Running(tokio::runtime::Runtime),
    Stopping(Instant),
    Stopped,
}

#[derive(Clone)]
enum Life {
    /// The shared state, and a handle of the runtime to run calls on (which, like
    /// the state, holds descriptors: the runtime's epoll and waker).
    Running(Arc<Shared>, tokio::runtime::Handle),
    /// `stop` let go of the shared state once the runtime was down: that last
    /// reference owned the QUIC endpoint, the tunnel socket and the rendezvous client,
    /// so dropping it closed them.
    Stopped(Arc<Last>),
}

/// An engine's figures as `stop` left them.
struct Last {
    stats: Stats,
    failure: Option<Error>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.stats();
        f.debug_struct("Engine")
            .field("mode", &stats.mode)
            .field("room", &stats.room)
            .field("local_addr", &self.local_addr)
            .field("state", &stats.state)
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

/// Drops `stop`'s reference to the shared state once calls in flight on other threads
/// (a `stats()`, a `wait_connected` waking up) have let go of theirs, so that the
/// tunnel port is free when `stop` returns. Waits at most `within`; a reference still
/// held after that frees the port when its call returns.
fn release(shared: Arc<Shared>, within: Duration) {
    let deadline = Instant::now() + within;
    while Arc::strong_count(&shared) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
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
            run_blocking(
                &handle,
                setup(config, span.clone(), setup::Part::Engine).instrument(span),
            )
        };
        let (shared, incoming) = match setup {
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
        // Freed memory goes back to the system after bursts (issue #19).
        handle.spawn(crate::trim::run());
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
            life: Mutex::new(Life::Running(shared.clone(), handle.clone())),
            phase: Mutex::new(Phase::Running(rt)),
            stopped: Condvar::new(),
            event_thread: Mutex::new(Some(event_thread)),
            event_thread_id,
            local_addr: shared.local_addr,
            metrics_addr: shared.metrics_addr,
            waits: Mutex::new(WaitCancel::new()),
        };
        // Mappings from the config; on failure the whole engine is torn down.
        for mapping in config.mappings.clone() {
            if let Err(e) = engine.add_mapping(mapping) {
                drop((shared, incoming));
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
        match shared.hub.clone() {
            // A server serves each client of its room through a session of its own.
            Some(hub) => {
                drop(incoming);
                handle.spawn(hub::serve(shared, hub).instrument(span));
            }
            None => {
                handle.spawn(drive(shared, incoming).instrument(span));
            }
        }
        Ok(engine)
    }

    /// The shared state, unless the engine has stopped.
    fn live(&self) -> Option<Arc<Shared>> {
        match &*lock(&self.life) {
            Life::Running(shared, _) => Some(shared.clone()),
            Life::Stopped(_) => None,
        }
    }

    fn life(&self) -> Life {
        lock(&self.life).clone()
    }

    /// Adds a mapping (client role). Works before and after the tunnel is up. Binds its
    /// local listener now, so a port in use is reported here.
    pub fn add_mapping(&self, mapping: Mapping) -> Result<MappingId> {
        let Life::Running(shared, handle) = self.life() else {
            return Err(Error::Stopped);
        };
        if shared.config.mode != Mode::Client {
            return Err(Error::config(
                "mappings",
                mapping.to_string(),
                "mappings are opened on the client side; this engine runs in server mode",
                "no mappings in server mode (the server side only dials what its allow rules permit)",
            ));
        }
        if shared.root.is_cancelled() {
            return Err(Error::Stopped);
        }
        let span = shared.span.clone();
        run_blocking(&handle, add_mapping(shared, mapping).instrument(span))
            .unwrap_or(Err(Error::Stopped))
    }

    /// Adds a mapping given as a spec string such as `tcp:8080:22`.
    pub fn add_mapping_str(&self, spec: &str) -> Result<MappingId> {
        self.add_mapping(Mapping::parse(spec)?)
    }

    /// Removes a mapping: closes its listener and its live connections.
    /// `Error::Stopped` once the engine has stopped (its mappings are closed then).
    pub fn remove_mapping(&self, id: MappingId) -> Result<()> {
        let shared = self.live().ok_or(Error::Stopped)?;
        let entry = lock(&shared.mappings)
            .remove(&id)
            .ok_or(Error::NoSuchMapping(id))?;
        entry.token.cancel();
        // The listener socket is closed by its task; wait (briefly) until the port is free.
        let listen = entry.info.listen;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && port_busy(entry.info.mapping.proto, listen) {
            std::thread::sleep(Duration::from_millis(5));
        }
        shared.emit(Event::MappingRemoved { id });
        Ok(())
    }

    /// The registered mappings (none once the engine has stopped; the final stats
    /// still list each mapping's traffic).
    pub fn mappings(&self) -> Vec<MappingInfo> {
        let Some(shared) = self.live() else {
            return Vec::new();
        };
        let list = lock(&shared.mappings)
            .values()
            .map(|e| e.info.clone())
            .collect();
        list
    }

    /// The address a mapping listens on (`None` once the engine has stopped).
    pub fn mapping_addr(&self, id: MappingId) -> Option<SocketAddr> {
        let shared = self.live()?;
        let addr = lock(&shared.mappings).get(&id).map(|e| e.info.listen);
        addr
    }

    /// The current state.
    pub fn state(&self) -> State {
        match self.life() {
            Life::Running(shared, _) => shared.state(),
            Life::Stopped(last) => last.stats.state.clone(),
        }
    }

    /// Why the engine gave up, when its state is `Failed`.
    pub fn failure(&self) -> Option<Error> {
        match self.life() {
            Life::Running(shared, _) => lock(&shared.failure).clone(),
            Life::Stopped(last) => last.failure.clone(),
        }
    }

    /// The tunnel socket's local address (the one it had, once stopped). On a server,
    /// the engine's own socket, bound at start (so a `bind` port in use is reported
    /// then); each client's tunnel has a socket of its own, listed in
    /// [`Stats::clients`](crate::stats::Stats::clients).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served (the bound address, port 0 resolved), when
    /// `metricsAddr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Calls `callback` for every event from now on, on the engine's event thread.
    /// Callbacks may call any engine method, including `stop`. Once the engine has
    /// stopped there are no more events, and this does nothing.
    pub fn subscribe(&self, callback: impl Fn(&Event) + Send + Sync + 'static) {
        if let Some(shared) = self.live() {
            lock(&shared.subscribers).push(Arc::new(callback));
        }
    }

    /// A snapshot of the engine's figures; once stopped, the final ones (state
    /// `stopped`, or `failed` if it had given up).
    pub fn stats(&self) -> Stats {
        match self.life() {
            Life::Running(shared, _) => snapshot(&shared),
            Life::Stopped(last) => last.stats.clone(),
        }
    }

    /// [`Engine::stats`] as JSON.
    pub fn stats_json(&self) -> String {
        serde_json::to_string(&self.stats()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// True once [`Engine::stop`] has finished.
    pub fn is_stopped(&self) -> bool {
        matches!(*lock(&self.phase), Phase::Stopped)
    }

    /// Stops gracefully within about `timeout`: closes listeners and connections, tells
    /// the peer, leaves the room, ends every task and thread of the engine and closes
    /// every socket, so the tunnel's and the mappings' ports are free when it returns.
    /// Afterwards [`Engine::stats`] returns the final figures.
    ///
    /// Calling it again is harmless: a call while another thread is stopping waits
    /// for that stop to finish, except from an event callback (the stopping thread
    /// waits for the callback), where it returns at once.
    pub fn stop(&self, timeout: Duration) {
        let rt = {
            let mut phase = lock(&self.phase);
            let deadline = Instant::now() + timeout + STOP_MARGIN;
            match std::mem::replace(&mut *phase, Phase::Stopping(deadline)) {
                Phase::Running(rt) => rt,
                Phase::Stopping(first) => {
                    // Wait for the first stop: as long as it may take, not as long as
                    // this call's own timeout says.
                    *phase = Phase::Stopping(first);
                    if std::thread::current().id() != self.event_thread_id {
                        let left = first.saturating_duration_since(Instant::now());
                        let _ = self
                            .stopped
                            .wait_timeout_while(phase, left, |p| matches!(p, Phase::Stopping(_)));
                    }
                    return;
                }
                Phase::Stopped => {
                    *phase = Phase::Stopped;
                    return;
                }
            }
        };
        if let Some(shared) = self.live() {
            self.shut_down(shared, rt, timeout);
        }
        if std::thread::current().id() != self.event_thread_id {
            if let Some(t) = lock(&self.event_thread).take() {
                let _ = t.join();
            }
        }
        *lock(&self.phase) = Phase::Stopped;
        self.stopped.notify_all();
    }

    fn shut_down(&self, shared: Arc<Shared>, rt: tokio::runtime::Runtime, timeout: Duration) {
        let started = Instant::now();
        let (tx, rx) = std_mpsc::channel();
        let span = shared.span.clone();
        let task = shared.clone();
        rt.spawn(
            async move {
                shutdown(&task, timeout).await;
                let _ = tx.send(());
            }
            .instrument(span),
        );
        let _ = rx.recv_timeout(timeout);
        shared.set_state(State::Stopped);
        let rest = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(100));
        let in_async = tokio::runtime::Handle::try_current().is_ok();
        if in_async {
            // Inside some async context blocking is not allowed; threads end on their own.
            rt.shutdown_background();
        } else {
            rt.shutdown_timeout(rest);
        }
        let last = Last {
            stats: snapshot(&shared),
            failure: lock(&shared.failure).clone(),
        };
        // Closing the channel ends the event thread once it has delivered `Stopped`.
        lock(&shared.events_tx).take();
        // The runtime's tasks are gone with their references: this is the last one
        // but for calls still running on other threads.
        *lock(&self.life) = Life::Stopped(Arc::new(last));
        if !in_async {
            release(shared, rest.min(STOP_MARGIN));
        }
    }

    /// [`Engine::stop`] on a helper thread, then `then` on that thread; returns at once.
    /// For a caller that must not block: a garbage collector's finalizer, or a thread
    /// holding a lock the event callbacks need (Python's GIL). Should no thread be
    /// available, it stops on the calling thread.
    pub fn stop_in_background(
        self: &Arc<Self>,
        timeout: Duration,
        then: impl FnOnce() + Send + 'static,
    ) {
        let engine = self.clone();
        crate::blocking::in_background("stunfwd-stop", move || {
            engine.stop(timeout);
            drop(engine);
            then();
        });
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}
