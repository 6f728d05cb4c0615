//! `_stunfwd.Engine`: a [`stunfwd_core::Engine`] with the GIL released around every call
//! that waits, and its events handed to a Python dispatcher.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;
use stunfwd_core::{Config, Engine, Error, Event, State};

use crate::errors::{lock, seconds, to_py};
use crate::log;

/// How long `wait_connected` blocks between two checks for Ctrl-C (and cancellation).
const SLICE: Duration = Duration::from_millis(100);

/// The Python callable that receives every event as `(json, description)`, the
/// description being the state's one-line text for a state event and empty otherwise.
/// Shared by the class (which shows it to the garbage collector) and the engine's event
/// callback; cleared once the engine has delivered its final state, which breaks any
/// reference cycle through it. Only locked while attached to the interpreter, and never
/// held across a call into Python.
type Slot = Arc<Mutex<Option<Py<PyAny>>>>;

/// A running engine. Create it with `from_json` or `from_path`; the public class is
/// `stunfwd.Engine`.
///
/// `stop` drops the core engine once it has stopped, because the core releases the
/// tunnel's UDP socket only on drop; what is still asked afterwards (state, stats) is
/// answered from a snapshot taken at that moment.
#[pyclass(name = "Engine", module = "stunfwd._stunfwd", frozen)]
pub(crate) struct NativeEngine {
    engine: Mutex<Option<(Arc<Engine>, log::Live)>>,
    /// `(state, stats JSON)` when stopped.
    last: Mutex<Option<(State, String)>>,
    local_addr: SocketAddr,
    dispatch: Slot,
}

/// Runs on the engine's event thread: attaches to the interpreter and calls the
/// dispatcher. An exception escaping the dispatcher goes to `sys.unraisablehook`.
fn deliver(slot: &Slot, event: &Event) {
    let Ok(json) = serde_json::to_string(event) else {
        return;
    };
    let (description, last) = match event {
        Event::State { state } => (state.to_string(), state.is_final()),
        _ => (String::new(), false),
    };
    // `None` while the interpreter shuts down: the event is dropped.
    let _ = Python::try_attach(|py| {
        let dispatch = lock(slot).as_ref().map(|d| d.clone_ref(py));
        if let Some(dispatch) = dispatch {
            if let Err(e) = dispatch.call1(py, (json, description)) {
                e.write_unraisable(py, Some(dispatch.bind(py)));
            }
        }
        if last {
            let old = lock(slot).take();
            drop(old);
        }
    });
}

/// `(json, text)` of a state: its serde form and its `Display` form.
fn state_pair(state: &State) -> (String, String) {
    (
        serde_json::to_string(state).unwrap_or_else(|_| "{\"state\":\"failed\"}".into()),
        state.to_string(),
    )
}

impl NativeEngine {
    fn start(py: Python<'_>, config: Config, dispatch: Py<PyAny>) -> PyResult<Self> {
        log::refresh(py);
        let slot: Slot = Arc::new(Mutex::new(Some(dispatch)));
        let events = slot.clone();
        let started =
            py.detach(move || Engine::start_with_events(config, move |e| deliver(&events, e)));
        match started {
            Ok(engine) => Ok(NativeEngine {
                local_addr: engine.local_addr(),
                engine: Mutex::new(Some((Arc::new(engine), log::Live::new()))),
                last: Mutex::new(None),
                dispatch: slot,
            }),
            Err(e) => {
                let old = lock(&slot).take();
                drop(old);
                Err(to_py(py, &e))
            }
        }
    }

    /// The engine, unless it is stopped.
    fn running(&self) -> Option<Arc<Engine>> {
        lock(&self.engine).as_ref().map(|(e, _)| e.clone())
    }

    /// The engine, or `StoppedError` once it is stopped.
    fn engine(&self, py: Python<'_>) -> PyResult<Arc<Engine>> {
        self.running().ok_or_else(|| to_py(py, &Error::Stopped))
    }

    /// Runs `f` on the engine with the GIL released.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Engine) -> Result<T, Error> + Send,
    ) -> PyResult<T> {
        let engine = self.engine(py)?;
        py.detach(|| f(&engine)).map_err(|e| to_py(py, &e))
    }
}

#[pymethods]
impl NativeEngine {
    /// Starts an engine from a JSON config document. `dispatch(json, description)` is
    /// called for every event, on the engine's event thread.
    #[staticmethod]
    fn from_json(py: Python<'_>, text: &str, dispatch: Py<PyAny>) -> PyResult<Self> {
        let config = Config::from_json(text).map_err(|e| to_py(py, &e))?;
        Self::start(py, config, dispatch)
    }

    /// Starts an engine from a config file (`.yaml`/`.yml` as YAML, else JSON).
    #[staticmethod]
    fn from_path(py: Python<'_>, path: PathBuf, dispatch: Py<PyAny>) -> PyResult<Self> {
        let config = py
            .detach(|| Config::from_path(&path))
            .map_err(|e| to_py(py, &e))?;
        Self::start(py, config, dispatch)
    }

    /// Adds a mapping such as `tcp:8080:22`; returns its id.
    fn add_mapping(&self, py: Python<'_>, spec: &str) -> PyResult<u64> {
        self.call(py, |e| e.add_mapping_str(spec))
    }

    /// Removes a mapping; returns once its port is free.
    fn remove_mapping(&self, py: Python<'_>, id: u64) -> PyResult<()> {
        self.call(py, |e| e.remove_mapping(id))
    }

    /// `(id, spec, proto, listen, target)` of every mapping.
    fn mappings(&self) -> Vec<(u64, String, String, String, String)> {
        let Some(engine) = self.running() else {
            return Vec::new();
        };
        engine
            .mappings()
            .into_iter()
            .map(|m| {
                (
                    m.id,
                    m.mapping.to_string(),
                    m.mapping.proto.as_str().to_owned(),
                    m.listen.to_string(),
                    m.mapping.target(),
                )
            })
            .collect()
    }

    /// `(json, text)` of the current state.
    fn state(&self) -> (String, String) {
        match self.running() {
            Some(engine) => state_pair(&engine.state()),
            None => state_pair(
                &lock(&self.last)
                    .as_ref()
                    .map_or(State::Stopped, |l| l.0.clone()),
            ),
        }
    }

    /// The tunnel socket's local address, `IP:PORT`.
    fn local_addr(&self) -> String {
        self.local_addr.to_string()
    }

    /// The stats snapshot as JSON (the final figures once stopped).
    fn stats_json(&self) -> String {
        match self.running() {
            Some(engine) => engine.stats_json(),
            None => lock(&self.last)
                .as_ref()
                .map_or_else(|| "{}".to_owned(), |l| l.1.clone()),
        }
    }

    /// Waits up to `timeout` seconds for the tunnel; returns the connected state as
    /// `(json, text)`, or `None` once `cancel.is_set()` is true. Checks for signals
    /// (Ctrl-C) every 100 ms; the GIL is released in between.
    #[pyo3(signature = (timeout, cancel=None))]
    fn wait_connected(
        &self,
        py: Python<'_>,
        timeout: f64,
        cancel: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Option<(String, String)>> {
        let total = seconds("timeout", timeout)?;
        let engine = self.engine(py)?;
        let deadline = Instant::now().checked_add(total);
        loop {
            let remaining = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => SLICE,
            };
            let slice = remaining.min(SLICE);
            let result = py.detach(|| engine.wait_connected(slice));
            let done = slice == remaining;
            match result {
                Ok(state) => return Ok(Some(state_pair(&state))),
                // Not connected yet: a timeout, or "the peer does not authenticate" which
                // the core reports in place of a timeout; both are final only at the end.
                Err(Error::Timeout(_) | Error::PeerAuth(_)) if !done => {
                    py.check_signals()?;
                    if let Some(cancel) = &cancel {
                        if cancel.call_method0("is_set")?.is_truthy()? {
                            return Ok(None);
                        }
                    }
                }
                // The core words the message after the slice it waited; name the whole wait.
                Err(Error::Timeout(message)) => {
                    let message = message.replacen(
                        &format!("not connected after {slice:?}"),
                        &format!("not connected after {total:?}"),
                        1,
                    );
                    return Err(to_py(py, &Error::Timeout(message)));
                }
                Err(e) => return Err(to_py(py, &e)),
            }
        }
    }

    /// Stops the engine within about `timeout` seconds. Idempotent; safe from any
    /// thread, including inside an event callback.
    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds("timeout", timeout)?;
        let Some(engine) = self.running() else {
            return Ok(());
        };
        py.detach(|| engine.stop(timeout));
        let last = (engine.state(), engine.stats_json());
        let mut slot = lock(&self.engine);
        if slot.is_some() {
            *lock(&self.last) = Some(last);
        }
        let ours = slot.take();
        drop(slot);
        // The last reference frees the tunnel socket (unless another call still holds one
        // for a moment); the engine is stopped, so dropping it does not wait.
        drop(ours);
        drop(engine);
        Ok(())
    }

    /// True once `stop` has returned.
    #[getter]
    fn stopped(&self) -> bool {
        lock(&self.engine).is_none()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never blocks: a busy slot is being used by the event thread right now.
        if let Ok(slot) = self.dispatch.try_lock() {
            if let Some(dispatch) = slot.as_ref() {
                visit.call(dispatch)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let old = lock(&self.dispatch).take();
        drop(old);
    }
}

impl Drop for NativeEngine {
    /// An engine that was never stopped is stopped on a helper thread: stopping joins the
    /// event thread, which may be waiting for the GIL that the dropping thread holds.
    fn drop(&mut self) {
        let Some((engine, _live)) = lock(&self.engine).take() else {
            return;
        };
        let spare = engine.clone();
        let spawned = std::thread::Builder::new()
            .name("stunfwd-drop".into())
            .spawn(move || engine.stop(Duration::from_secs(2)));
        if spawned.is_err() {
            // No thread to be had: stop here, without holding the GIL.
            let _ = Python::try_attach(|py| py.detach(|| spare.stop(Duration::from_secs(2))));
        }
    }
}
