//! `tracing` events of the library, forwarded to Python's `logging.getLogger("stunfwd")`.
//!
//! The core's log forwarding ([`stunfwd_core::logging`]) calls back on the threads that
//! log (engine workers, the rendezvous runtime); the callback never touches the
//! interpreter: it `try_send`s the record to a bounded channel. One dedicated thread,
//! `stunfwd-log`, attaches to the interpreter and hands the records to the logger. A
//! record the channel cannot take is counted and reported later instead of blocking a
//! worker. The core filters records below the logger's effective level before they
//! are formatted; that level is read again whenever an engine or a server starts,
//! after every batch the thread delivers, and every second while an engine or a server
//! runs, so a change of level takes effect within a second.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, TrySendError};
use std::sync::{Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use stunfwd_core::logging::{self, LogLevels, LogRecord};
use tracing::level_filters::LevelFilter;
use tracing::Level;

use crate::errors::lock;

/// Records waiting for the logging thread, at most.
const QUEUE: usize = 4096;

/// How often the logger's level is re-read while something runs.
const REFRESH: Duration = Duration::from_secs(1);

/// Records dropped because the queue was full, not yet reported.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static THREAD: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);
static INSTALL: Once = Once::new();
/// Engines and servers running now.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Held by every running engine and server: while one is alive, the logging thread
/// re-reads the logger's level every second.
pub(crate) struct Live(());

impl Live {
    pub(crate) fn new() -> Live {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Live(())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Record {
    record: LogRecord,
    /// The Rust thread that logged (`stunfwd-worker`, `stunfwd-events`...).
    thread: Option<String>,
}

/// Python's level number for a `tracing` level (TRACE becomes 5, below DEBUG).
fn py_level(level: Level) -> u8 {
    match level {
        Level::TRACE => 5,
        Level::DEBUG => 10,
        Level::INFO => 20,
        Level::WARN => 30,
        Level::ERROR => 40,
    }
}

/// What a Python effective level lets through: stunfwd's records at that level,
/// other crates' (quinn, rustls, hyper...) from warnings up only.
fn levels(py: i64) -> LogLevels {
    LogLevels::new(match py {
        ..=5 => LevelFilter::TRACE,
        6..=10 => LevelFilter::DEBUG,
        11..=20 => LevelFilter::INFO,
        21..=30 => LevelFilter::WARN,
        31..=40 => LevelFilter::ERROR,
        _ => LevelFilter::OFF,
    })
}

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    Ok(LOGGER
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("logging")?
                .call_method1("getLogger", ("stunfwd",))?
                .unbind())
        })?
        .bind(py))
}

/// Reads the effective level of the "stunfwd" logger into the filter.
pub(crate) fn refresh(py: Python<'_>) {
    if let Ok(level) =
        logger(py).and_then(|l| l.call_method0("getEffectiveLevel")?.extract::<i64>())
    {
        logging::set_levels(levels(level));
    }
}

fn emit(py: Python<'_>, batch: Vec<Record>) -> PyResult<()> {
    let logger = logger(py)?;
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        logger.call_method1(
            "warning",
            (format!(
                "{dropped} log records were dropped: the logging thread fell behind"
            ),),
        )?;
    }
    for Record { record, thread } in batch {
        let level = py_level(record.level);
        if !logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
            continue;
        }
        // A record made by hand rather than `Logger.log`, so that it carries the Rust
        // source location and thread instead of this thread's.
        let extra = PyDict::new(py);
        extra.set_item("rust_target", record.target)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("extra", extra)?;
        let args = (
            "stunfwd",
            level,
            record.file.unwrap_or(record.target),
            record.line.unwrap_or(0),
            record.message,
            PyTuple::empty(py),
            py.None(),
        );
        let made = logger.call_method("makeRecord", args, Some(&kwargs))?;
        if let Some(thread) = thread {
            made.setattr("threadName", thread)?;
        }
        logger.call_method1("handle", (made,))?;
    }
    Ok(())
}
fn pump(rx: Receiver<Record>) {
    loop {
        let first = match rx.recv_timeout(REFRESH) {
            Ok(record) => record,
            Err(RecvTimeoutError::Timeout) => {
                if LIVE.load(Ordering::Relaxed) > 0 && Python::try_attach(refresh).is_none() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let attached = Python::try_attach(|py| {
            if let Err(e) = emit(py, batch) {
                e.write_unraisable(py, None);
            }
            refresh(py);
        });
        if attached.is_none() {
            // The interpreter is gone or going: nobody is left to log to.
            return;
        }
    }
}

/// Installs the core's log forwarding, with a callback that queues records for the
/// logging thread, and starts that thread (once).
pub(crate) fn install(py: Python<'_>) {
    INSTALL.call_once(|| {
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("stunfwd-log".into())
            .spawn(move || pump(rx));
        let Ok(thread) = thread else {
            return;
        };
        *lock(&THREAD) = Some(thread);
        if logging::install().is_err() {
            // Another library in this process installed a Rust subscriber first; our
            // events go there. Say so once, through the logger they would have used.
            if let Ok(l) = logger(py) {
                let _ = l.call_method1(
                    "warning",
                    ("another Rust tracing subscriber is installed in this process; stunfwd's own logs go to it, not to this logger",),
                );
            }
        }
        let queue = move |record: &LogRecord| {
            let thread = std::thread::current().name().map(str::to_owned);
            let record = Record {
                record: record.clone(),
                thread,
            };
            if let Err(TrySendError::Full(_)) = tx.try_send(record) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        };
        // Not from inside the log callback: the only error there is.
        let _ = logging::set_logger(Some(Box::new(queue)), levels(30));
    });
    refresh(py);
}

/// Delivers the records still queued and ends the logging thread. Called at interpreter
/// exit, after every engine has stopped; later records are dropped.
#[pyfunction]
pub(crate) fn shutdown_logging(py: Python<'_>) {
    // Dropping the callback drops the channel's sender: the thread delivers what is
    // queued, then ends.
    let _ = logging::set_logger(None, levels(0));
    let thread = lock(&THREAD).take();
    if let Some(thread) = thread {
        // The thread needs the GIL to deliver what is queued.
        py.detach(|| {
            let _ = thread.join();
        });
    }
}
