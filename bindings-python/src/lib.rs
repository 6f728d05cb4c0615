//! `stunfwd._stunfwd`, the native half of the `stunfwd` Python package.
//!
//! This crate translates between Python and `stunfwd-core` and nothing else: it wraps
//! [`stunfwd_core::Engine`] and [`stunfwd_core::BlockingSignalServer`], releases the
//! GIL around everything that waits, turns core errors into the exception classes of
//! `stunfwd._errors`, hands events to a Python dispatcher and forwards the core's log
//! records to the `logging` module. The Pythonic API (enums, dataclasses, context managers,
//! asyncio) is the pure-Python layer in `python/stunfwd/`.

use pyo3::prelude::*;

mod engine;
mod errors;
mod log;
mod signal;

/// Native module of the stunfwd package; use the `stunfwd` package instead.
#[pymodule]
mod _stunfwd {
    use pyo3::prelude::*;

    #[pymodule_export]
    use super::engine::NativeEngine;
    #[pymodule_export]
    use super::engine::NativeWaitCancel;
    #[pymodule_export]
    use super::log::shutdown_logging;
    #[pymodule_export]
    use super::signal::NativeSignalServer;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        super::log::install(m.py());
        Ok(())
    }
}
