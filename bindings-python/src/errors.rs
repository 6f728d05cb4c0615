//! Core errors as Python exceptions, and argument conversions shared by the classes.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use stunfwd_core::Error;

/// `stunfwd._errors._from_native(code, message, details)`, which builds the exception.
static FACTORY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The longest wait accepted; `math.inf` means this.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The Python exception for a core error: the class that `Error::code()` maps to in
/// `stunfwd._errors`, with the structured fields of the error as attributes.
pub(crate) fn to_py(py: Python<'_>, err: &Error) -> PyErr {
    match build(py, err) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

fn build<'py>(py: Python<'py>, err: &Error) -> PyResult<Bound<'py, PyAny>> {
    let factory = FACTORY.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py
            .import("stunfwd._errors")?
            .getattr("_from_native")?
            .unbind())
    })?;
    let details = PyDict::new(py);
    match err {
        Error::Config {
            key,
            value,
            problem,
            expected,
        } => {
            details.set_item("key", key)?;
            details.set_item("value", value)?;
            details.set_item("problem", problem)?;
            details.set_item("expected", expected)?;
        }
        Error::AddrInUse { what, addr } => {
            details.set_item("what", what)?;
            details.set_item("address", addr.to_string())?;
            details.set_item("port", addr.port())?;
        }
        Error::NoSuchMapping(id) => details.set_item("mapping_id", id)?,
        Error::NoPath {
            local_nat,
            peer_nat,
        } => {
            details.set_item("local_nat", local_nat)?;
            details.set_item("peer_nat", peer_nat)?;
        }
        _ => {}
    }
    factory
        .bind(py)
        .call1((err.code(), err.to_string(), details))
}

/// A timeout argument in seconds: finite and non-negative, or `math.inf` for no limit.
pub(crate) fn seconds(name: &str, secs: f64) -> PyResult<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return Err(PyValueError::new_err(format!(
            "`{name}` must be a number of seconds >= 0 (math.inf for no limit), got {secs}"
        )));
    }
    Ok(Duration::try_from_secs_f64(secs)
        .unwrap_or(FOREVER)
        .min(FOREVER))
}

/// Locks a mutex, recovering from poisoning (every critical section here leaves the data
/// consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
