//! `_stunfwd.Engine`: a [`stunfwd_core::Engine`] with the GIL released around every call
//! that waits, and its events handed to a Python dispatcher.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;
use stunfwd_core::{Config, Engine, Error, Event, State, WaitCancel};

use crate::errors::{lock, seconds, to_py};
use crate::log;

/// How often a blocked `wait_connected` runs the signal handlers (Ctrl-C).
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
#[pyclass(name = "Engine", module = "stunfwd._stunfwd", frozen)]
pub(crate) struct NativeEngine {
    engine: Arc<Engine>,
    /// Until stopped.
    live: Mutex<Option<log::Live>>,
    dispatch: Slot,
}

/// Ends a wait from another thread: `stunfwd.Engine.wait_connected_async` cancels it
/// when its task is cancelled.
#[pyclass(name = "WaitCancel", module = "stunfwd._stunfwd", frozen)]
pub(crate) struct NativeWaitCancel {
    token: WaitCancel,
}

#[pymethods]
impl NativeWaitCancel {
    #[new]
    fn new() -> Self {
        NativeWaitCancel {
            token: WaitCancel::new(),
        }
    }

    /// Ends the waits given this token (they return `None`), now and later.
    fn cancel(&self) {
        self.token.cancel();
    }

    /// True once cancelled.
    #[getter]
    fn cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// A token that cancels a wait on Ctrl-C: every [`SLICE`] the waiting thread attaches
/// and runs the signal handlers; an exception they raise (`KeyboardInterrupt`) ends the
/// wait and is kept in `raised`.
fn on_signal(raised: Arc<Mutex<Option<PyErr>>>) -> WaitCancel {
    WaitCancel::polling(SLICE, move || {
        Python::attach(|py| match py.check_signals() {
            Ok(()) => false,
            Err(e) => {
                *lock(&raised) = Some(e);
                true
            }
        })
    })
}

/// Runs on the engine's event thread: attaches to the interpreter and calls the
/// dispatcher. An exception escaping the dispatcher goes to `sys.unraisablehook`.
fn deliver(slot: &Slot, event: &Event) {
    let Ok(json) = serde_json::to_string(event) else {
        return;
    };
    let (description, last) = match event {
        Event::State { state } => (state.to_string(), state.is_final()),
        Event::ClientState { state, .. } => (state.to_string(), false),
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
                engine: Arc::new(engine),
                live: Mutex::new(Some(log::Live::new())),
                dispatch: slot,
            }),
            Err(e) => {
                let old = lock(&slot).take();
                drop(old);
                Err(to_py(py, &e))
            }
        }
    }

    /// Runs `f` on the engine with the GIL released.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Engine) -> Result<T, Error> + Send,
    ) -> PyResult<T> {
        py.detach(|| f(&self.engine)).map_err(|e| to_py(py, &e))
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
        self.engine
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
        state_pair(&self.engine.state())
    }

    /// The tunnel socket's local address, `IP:PORT`.
    fn local_addr(&self) -> String {
        self.engine.local_addr().to_string()
    }

    /// The stats snapshot as JSON (the final figures once stopped).
    fn stats_json(&self) -> String {
        self.engine.stats_json()
    }

    /// Waits up to `timeout` seconds for the tunnel; returns the connected state as
    /// `(json, text)`, or `None` once `cancel` is cancelled. Runs the signal handlers
    /// (Ctrl-C) every 100 ms; the GIL is released in between.
    #[pyo3(signature = (timeout, cancel=None))]
    fn wait_connected(
        &self,
        py: Python<'_>,
        timeout: f64,
        cancel: Option<PyRef<'_, NativeWaitCancel>>,
    ) -> PyResult<Option<(String, String)>> {
        let timeout = seconds("timeout", timeout)?;
        let raised = Arc::new(Mutex::new(None));
        let token = match &cancel {
            Some(c) => c.token.clone(),
            None => on_signal(raised.clone()),
        };
        match py.detach(|| self.engine.wait_connected_with(timeout, &token)) {
            Ok(state) => Ok(Some(state_pair(&state))),
            Err(Error::Cancelled) => match lock(&raised).take() {
                Some(e) => Err(e),
                None => Ok(None),
            },
            Err(e) => Err(to_py(py, &e)),
        }
    }

    /// Stops the engine within about `timeout` seconds. Idempotent; safe from any
    /// thread, including inside an event callback.
    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds("timeout", timeout)?;
        py.detach(|| self.engine.stop(timeout));
        lock(&self.live).take();
        Ok(())
    }

    /// True once `stop` has returned.
    #[getter]
    fn stopped(&self) -> bool {
        self.engine.is_stopped()
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
        if self.engine.is_stopped() {
            return;
        }
        let engine = &self.engine;
        let stop = || engine.stop_in_background(Duration::from_secs(2), || {});
        // Without the GIL, should no thread be available and it stops right here.
        if Python::try_attach(|py| py.detach(stop)).is_none() {
            stop();
        }
    }
}
