//! `_stunfwd.SignalServer`: the core's [`BlockingSignalServer`], with the GIL released
//! while it starts and stops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use stunfwd_core::BlockingSignalServer;

use crate::errors::{lock, seconds, to_py};
use crate::log;

/// A running rendezvous server; the public class is `stunfwd.SignalServer`.
#[pyclass(name = "SignalServer", module = "stunfwd._stunfwd", frozen)]
pub(crate) struct NativeSignalServer {
    server: Arc<BlockingSignalServer>,
    live: Mutex<Option<log::Live>>,
}

#[pymethods]
impl NativeSignalServer {
    /// Binds `http` (TCP) and, unless `stun` is `None`, a STUN responder on `stun` (UDP),
    /// then serves on a thread of its own.
    #[new]
    #[pyo3(signature = (http, stun=None))]
    fn new(py: Python<'_>, http: &str, stun: Option<&str>) -> PyResult<Self> {
        log::refresh(py);
        let server = py
            .detach(|| BlockingSignalServer::start_on(http, stun))
            .map_err(|e| to_py(py, &e))?;
        Ok(NativeSignalServer {
            server: Arc::new(server),
            live: Mutex::new(Some(log::Live::new())),
        })
    }

    /// The mailbox URL, `http://IP:PORT/`.
    #[getter]
    fn url(&self) -> &str {
        self.server.url()
    }

    /// The bound HTTP address, `IP:PORT`.
    #[getter]
    fn http_addr(&self) -> String {
        self.server.http_addr().to_string()
    }

    /// The bound STUN address, `IP:PORT`, or `None`.
    #[getter]
    fn stun_addr(&self) -> Option<String> {
        self.server.stun_addr().map(|a| a.to_string())
    }

    /// HTTP requests served so far (0 once stopped).
    #[getter]
    fn requests(&self) -> u64 {
        self.server.requests()
    }

    /// True once stopped.
    #[getter]
    fn stopped(&self) -> bool {
        self.server.is_stopped()
    }

    /// Stops serving within about `timeout` seconds. Idempotent.
    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds("timeout", timeout)?;
        py.detach(|| self.server.stop(timeout));
        lock(&self.live).take();
        Ok(())
    }
}

impl Drop for NativeSignalServer {
    /// Stops a server that was never stopped, on a helper thread so that the thread
    /// releasing the last reference (which holds the GIL) does not wait.
    fn drop(&mut self) {
        if !self.server.is_stopped() {
            self.server
                .stop_in_background(Duration::from_secs(1), || {});
        }
    }
}
