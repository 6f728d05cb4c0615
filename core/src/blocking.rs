//! Blocking facades for hosts without an async runtime (the C ABI, Python, Node.js):
//! the rendezvous server on a small runtime of its own, and work that must not block
//! its caller moved to a helper thread. The engine is blocking already
//! ([`crate::Engine`] owns its runtime).

use std::net::SocketAddr;
#[cfg(feature = "server")]
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
#[cfg(feature = "server")]
use std::time::Duration;

use crate::error::{Error, Result};
#[cfg(feature = "server")]
use crate::signal::server::{SignalServer, SignalServerConfig};
use crate::sync::lock;

#[cfg(feature = "server")]
/// How long dropping a running [`BlockingSignalServer`] lets requests in flight finish.
const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(1);

#[cfg(feature = "server")]
/// How long the runtime's last tasks get once the server has stopped.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

#[cfg(feature = "server")]
/// A rendezvous server (HTTP mailbox and, optionally, a STUN responder) running on a
/// one-worker runtime of its own, driven from plain threads. Every method may be
/// called from any thread, also concurrently; dropping it stops it.
///
/// ```
/// use std::time::Duration;
/// use stunfwd_core::BlockingSignalServer;
///
/// let server = BlockingSignalServer::start_on("127.0.0.1:0", Some("127.0.0.1:0"))?;
/// println!("signalUrl {}, STUN on {:?}", server.url(), server.stun_addr());
/// server.stop(Duration::from_secs(1));
/// assert!(server.is_stopped());
///
/// // An address that does not parse names its key.
/// let err = BlockingSignalServer::start_on("localhost:80", None).unwrap_err();
/// assert!(err.to_string().starts_with("invalid config `http`"), "{err}");
/// # Ok::<(), stunfwd_core::Error>(())
/// ```
pub struct BlockingSignalServer {
    /// The server and its runtime until stopped. Held for the whole of `stop`, so a
    /// second `stop` returns once the first is done.
    running: Mutex<Option<Hosted>>,
    url: String,
    http_addr: SocketAddr,
    stun_addr: Option<SocketAddr>,
}

#[cfg(feature = "server")]
struct Hosted {
    rt: tokio::runtime::Runtime,
    server: SignalServer,
}

#[cfg(feature = "server")]
impl std::fmt::Debug for BlockingSignalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingSignalServer")
            .field("url", &self.url)
            .field("stun_addr", &self.stun_addr)
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

#[cfg(feature = "server")]
impl BlockingSignalServer {
    /// Starts a server with `config` and returns once it listens. Works from any
    /// thread, also one inside another tokio runtime.
    pub fn start(config: SignalServerConfig) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stunfwd-signal")
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the rendezvous server's runtime", &e))?;
        let server = match on(&rt, SignalServer::start(config), None) {
            Some(Ok(server)) => server,
            Some(Err(e)) => {
                rt.shutdown_background();
                return Err(e);
            }
            None => {
                rt.shutdown_background();
                return Err(Error::Signal(
                    "the rendezvous server's start-up task died".into(),
                ));
            }
        };
        Ok(BlockingSignalServer {
            url: server.url(),
            http_addr: server.http_addr(),
            stun_addr: server.stun_addr(),
            running: Mutex::new(Some(Hosted { rt, server })),
        })
    }

    /// Starts a server on `http` (TCP) and, unless `stun` is `None`, a STUN responder
    /// on `stun` (UDP), both given as text `IP:PORT` (port 0 picks a free port), with
    /// the other settings at their defaults. An address that does not parse is an
    /// [`Error::Config`] naming the key `http` or `stun`.
    pub fn start_on(http: &str, stun: Option<&str>) -> Result<Self> {
        let config = SignalServerConfig {
            http: listen_addr("http", http)?,
            stun: stun.map(|s| listen_addr("stun", s)).transpose()?,
            ..SignalServerConfig::default()
        };
        Self::start(config)
    }

    /// The mailbox URL engines use as `signalUrl`, e.g. `http://127.0.0.1:41234/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound STUN responder address, if one runs.
    pub fn stun_addr(&self) -> Option<SocketAddr> {
        self.stun_addr
    }

    /// HTTP requests answered so far (0 once stopped).
    pub fn requests(&self) -> u64 {
        lock(&self.running)
            .as_ref()
            .map_or(0, |h| h.server.requests())
    }

    /// True once stopped.
    pub fn is_stopped(&self) -> bool {
        lock(&self.running).is_none()
    }

    /// Stops within about `timeout`: answers pending long-polls at once, closes the
    /// sockets, ends the runtime's threads. Idempotent; a call while another thread is
    /// stopping returns once that stop is done.
    pub fn stop(&self, timeout: Duration) {
        let mut running = lock(&self.running);
        let Some(Hosted { rt, server }) = running.take() else {
            return;
        };
        let stopped = async move {
            server.stop(timeout).await;
            drop(server);
        };
        // Should it overrun, the runtime's shutdown below drops what is left.
        on(&rt, stopped, Some(timeout + RUNTIME_SHUTDOWN));
        if tokio::runtime::Handle::try_current().is_ok() {
            rt.shutdown_background();
        } else {
            rt.shutdown_timeout(RUNTIME_SHUTDOWN);
        }
    }

    /// [`BlockingSignalServer::stop`] on a helper thread, then `then` on that thread;
    /// returns at once (for a garbage collector's finalizer, or a thread that must not
    /// wait). Should no thread be available, it stops on the calling thread.
    pub fn stop_in_background(
        self: &Arc<Self>,
        timeout: Duration,
        then: impl FnOnce() + Send + 'static,
    ) {
        let server = self.clone();
        in_background("stunfwd-signal-stop", move || {
            server.stop(timeout);
            drop(server);
            then();
        });
    }
}

#[cfg(feature = "server")]
impl Drop for BlockingSignalServer {
    fn drop(&mut self) {
        self.stop(DROP_STOP_TIMEOUT);
    }
}

/// Parses a listen address given as text, `IP:PORT`; the error names `key`.
pub fn listen_addr(key: &str, text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        Error::config(
            key,
            text,
            "not an IP:PORT address",
            "IP:PORT, e.g. 127.0.0.1:0 (port 0 picks a free port) or [::1]:3478",
        )
    })
}

/// Runs `fut` on `rt` and blocks for its result, at most `limit` (`None`: no limit).
/// Unlike `block_on` this works from any thread, also inside another runtime. `None`
/// if the task died or ran out of time.
#[cfg(feature = "server")]
fn on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T> + Send + 'static,
    limit: Option<Duration>,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    match limit {
        Some(limit) => rx.recv_timeout(limit).ok(),
        None => rx.recv().ok(),
    }
}

/// Runs `work` on a new thread named `name`, or on this one if no thread can be
/// started (it is then late, but done).
pub(crate) fn in_background(name: &str, work: impl FnOnce() + Send + 'static) {
    let slot = Arc::new(Mutex::new(Some(work)));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if let Some(work) = lock(&theirs).take() {
                work();
            }
        });
    if spawned.is_err() {
        if let Some(work) = lock(&slot).take() {
            work();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_address_is_a_config_error_naming_the_key() {
        let err = BlockingSignalServer::start_on("127.0.0.1:0", Some("localhost-ish"))
            .expect_err("not an address");
        assert_eq!(err.code(), "ERR_CONFIG");
        let Error::Config { key, value, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((key.as_str(), value.as_str()), ("stun", "localhost-ish"));
    }

    #[test]
    fn starts_serves_and_stops_from_plain_threads() {
        let server = Arc::new(BlockingSignalServer::start_on("127.0.0.1:0", None).expect("start"));
        assert!(server.url().starts_with("http://127.0.0.1:"));
        assert_eq!(server.stun_addr(), None);
        let taken = BlockingSignalServer::start_on(&server.http_addr().to_string(), None)
            .expect_err("the port is taken");
        assert_eq!(taken.code(), "ERR_ADDR_IN_USE");
        // Two threads stop at once: both return once it is stopped.
        let other = server.clone();
        let t = std::thread::spawn(move || {
            other.stop(Duration::from_millis(200));
            other.is_stopped()
        });
        server.stop(Duration::from_millis(200));
        assert!(server.is_stopped());
        assert!(t.join().expect("stopper"));
        assert_eq!(server.requests(), 0);
        // The port is free again.
        let again = BlockingSignalServer::start_on(&server.http_addr().to_string(), None)
            .expect("the port was released");
        let (tx, rx) = mpsc::channel();
        Arc::new(again).stop_in_background(Duration::from_millis(200), move || {
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("stopped in the background");
    }

    #[test]
    fn starts_inside_another_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let server =
                BlockingSignalServer::start_on("127.0.0.1:0", Some("127.0.0.1:0")).expect("start");
            assert!(server.stun_addr().is_some());
            drop(server);
        });
    }
}
