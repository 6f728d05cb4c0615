//! The engine: one peer, one UDP socket, one runtime (DESIGN §3).
//!
//! [`Engine::start`] validates the configuration, binds everything that can fail
//! (the tunnel socket, every mapping's listener) and returns; connecting runs in the
//! background on the engine's own tokio runtime, so callers never need tokio.
//!
//! The pieces, one concern per file:
//! - this file: the [`Engine`] handle and its lifecycle (start, stop, waiting);
//! - [`shared`]: the state every task of the engine shares;
//! - [`setup`]: binding the tunnel socket and building the QUIC endpoint;
//! - [`mappings`]: the mapping registry;
//! - [`responder`]: answering connectivity checks, unwrapping relayed data;
//! - [`relay`]: our TURN allocation and its refresh;
//! - [`accept`]: the server's incoming handshakes;
//! - [`driver`]: the connect/reconnect loop, which carries out the decisions of
//!   [`crate::agent`];
//! - [`attempt`]: one connect attempt (discover, signal, punch, handshake);
//! - [`session`]: a connected tunnel, and its upgrade from relay to direct;
//! - [`snapshot`]: the stats snapshot and graceful shutdown.

mod accept;
mod attempt;
mod driver;
mod mappings;
mod relay;
mod responder;
mod session;
mod setup;
mod shared;
mod snapshot;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use tracing::Instrument;

pub use crate::status::{Event, MappingId, PathKind, State};
pub use mappings::MappingInfo;

use crate::config::{Config, Mapping, Mode};
use crate::error::{Error, Result};
use crate::stats::Stats;
use crate::sync::lock;
use driver::drive;
use mappings::{add_mapping, port_busy};
use setup::setup;
use shared::{insecure_warning, Callback, Shared};
use snapshot::{shutdown, snapshot};

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
        handle.spawn(drive(shared, incoming).instrument(span));
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
            (State::Reconnecting { reason, .. }, _)
                if self.shared.auth_failed.load(std::sync::atomic::Ordering::Relaxed) =>
            {
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
