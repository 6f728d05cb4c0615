//! `_stunfwd.SignalServer`: the rendezvous (mailbox + STUN) server on its own one-worker
//! runtime, the pattern of `ffi/src/signal.rs`.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use stunfwd_core::{Error, SignalServer, SignalServerConfig};

use crate::errors::{lock, seconds, to_py};
use crate::log;

/// A running server and the runtime it runs on.
struct Running {
    rt: tokio::runtime::Runtime,
    server: SignalServer,
    _live: log::Live,
}

impl Running {
    fn start(config: SignalServerConfig) -> Result<Running, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stunfwd-signal")
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the rendezvous server runtime", &e))?;
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(SignalServer::start(config).await);
        });
        match rx.recv() {
            Ok(Ok(server)) => Ok(Running {
                rt,
                server,
                _live: log::Live::new(),
            }),
            Ok(Err(e)) => {
                rt.shutdown_background();
                Err(e)
            }
            Err(_) => {
                rt.shutdown_background();
                Err(Error::Signal(
                    "the rendezvous server failed to start".into(),
                ))
            }
        }
    }

    fn stop(self, timeout: Duration) {
        let Running { rt, server, .. } = self;
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            server.stop(timeout).await;
            drop(server);
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(timeout + Duration::from_millis(200));
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

fn parse_addr(key: &str, text: &str) -> Result<SocketAddr, Error> {
    text.parse().map_err(|_| {
        Error::config(
            key,
            text,
            "not an IP:PORT address",
            "IP:PORT, e.g. \"127.0.0.1:0\" (0 picks a free port) or \"[::1]:3478\"",
        )
    })
}

/// A running rendezvous server; the public class is `stunfwd.SignalServer`.
#[pyclass(name = "SignalServer", module = "stunfwd._stunfwd", frozen)]
pub(crate) struct NativeSignalServer {
    running: Mutex<Option<Running>>,
    url: String,
    http_addr: String,
    stun_addr: Option<String>,
}

#[pymethods]
impl NativeSignalServer {
    /// Binds `http` (TCP) and, unless `stun` is `None`, a STUN responder on `stun` (UDP),
    /// then serves on a thread of its own.
    #[new]
    #[pyo3(signature = (http, stun=None))]
    fn new(py: Python<'_>, http: &str, stun: Option<&str>) -> PyResult<Self> {
        log::refresh(py);
        let http = parse_addr("http", http).map_err(|e| to_py(py, &e))?;
        let stun = stun
            .map(|s| parse_addr("stun", s))
            .transpose()
            .map_err(|e| to_py(py, &e))?;
        let config = SignalServerConfig {
            http,
            stun,
            ..SignalServerConfig::default()
        };
        let running = py
            .detach(|| Running::start(config))
            .map_err(|e| to_py(py, &e))?;
        Ok(NativeSignalServer {
            url: running.server.url(),
            http_addr: running.server.http_addr().to_string(),
            stun_addr: running.server.stun_addr().map(|a| a.to_string()),
            running: Mutex::new(Some(running)),
        })
    }

    /// The mailbox URL, `http://IP:PORT/`.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    /// The bound HTTP address, `IP:PORT`.
    #[getter]
    fn http_addr(&self) -> &str {
        &self.http_addr
    }

    /// The bound STUN address, `IP:PORT`, or `None`.
    #[getter]
    fn stun_addr(&self) -> Option<&str> {
        self.stun_addr.as_deref()
    }

    /// HTTP requests served so far (0 once stopped).
    #[getter]
    fn requests(&self) -> u64 {
        lock(&self.running)
            .as_ref()
            .map(|r| r.server.requests())
            .unwrap_or(0)
    }

    /// True once stopped.
    #[getter]
    fn stopped(&self) -> bool {
        lock(&self.running).is_none()
    }

    /// Stops serving within about `timeout` seconds. Idempotent.
    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds("timeout", timeout)?;
        let running = lock(&self.running).take();
        if let Some(running) = running {
            py.detach(|| running.stop(timeout));
        }
        Ok(())
    }
}

impl Drop for NativeSignalServer {
    /// Stops a server that was never stopped, on a helper thread so that the thread
    /// releasing the last reference (which holds the GIL) does not wait.
    fn drop(&mut self) {
        if let Some(running) = lock(&self.running).take() {
            let _ = std::thread::Builder::new()
                .name("stunfwd-drop".into())
                .spawn(move || running.stop(Duration::from_secs(1)));
        }
    }
}
