//! `tracing` events of the library, forwarded to Python's `logging.getLogger("stunfwd")`.
//!
//! The threads that log (engine workers, the rendezvous runtime) never touch the
//! interpreter: the layer formats the record and `try_send`s it to a bounded channel.
//! One dedicated thread, `stunfwd-log`, attaches to the interpreter and calls
//! `Logger.log`. A record the channel cannot take is counted and reported later instead
//! of blocking a worker. Records below the logger's effective level are filtered before
//! they are formatted; that level is read again whenever an engine or a server starts,
//! after every batch the thread delivers, and every second while an engine or a server
//! runs, so a change of level takes effect within a second.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, Once, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::errors::lock;

/// Python's `logging.WARNING`: dependencies (quinn, rustls, hyper...) are forwarded from
/// this level up only.
const WARNING: u8 = 30;

/// Records waiting for the logging thread, at most.
const QUEUE: usize = 4096;

/// How often the logger's level is re-read while something runs.
const REFRESH: Duration = Duration::from_secs(1);

/// The effective level of the "stunfwd" logger, as last read.
static MIN_LEVEL: AtomicU8 = AtomicU8::new(WARNING);
/// Records dropped because the queue was full, not yet reported.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static SENDER: RwLock<Option<SyncSender<Record>>> = RwLock::new(None);
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
    level: u8,
    target: String,
    message: String,
    /// Source file and line of the `tracing` call, when known.
    file: Option<&'static str>,
    line: u32,
    /// The Rust thread that logged (`stunfwd-worker`, `stunfwd-events`...).
    thread: Option<String>,
}

/// Python's level number for a `tracing` level (TRACE becomes 5, below DEBUG).
fn py_level(level: &Level) -> u8 {
    match *level {
        Level::TRACE => 5,
        Level::DEBUG => 10,
        Level::INFO => 20,
        Level::WARN => 30,
        Level::ERROR => 40,
    }
}

fn wanted(meta: &Metadata<'_>) -> bool {
    let level = py_level(meta.level());
    level >= MIN_LEVEL.load(Ordering::Relaxed)
        && (level >= WARNING || meta.target().starts_with("stunfwd"))
}

/// A record's text: its message, then ` k=v` for every other field.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

struct PythonLayer;

impl<S: Subscriber> Layer<S> for PythonLayer {
    fn register_callsite(&self, _meta: &'static Metadata<'static>) -> Interest {
        // The level can change at any time, so every callsite is asked each time.
        Interest::sometimes()
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        wanted(meta)
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !wanted(meta) {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        line.message.push_str(&line.fields);
        let record = Record {
            level: py_level(meta.level()),
            target: meta.target().to_owned(),
            message: line.message,
            file: meta.file(),
            line: meta.line().unwrap_or(0),
            thread: std::thread::current().name().map(str::to_owned),
        };
        let sender = SENDER.read().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = sender.as_ref() {
            if let Err(TrySendError::Full(_)) = tx.try_send(record) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
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
        MIN_LEVEL.store(level.clamp(0, i64::from(u8::MAX)) as u8, Ordering::Relaxed);
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
    for record in batch {
        if !logger
            .call_method1("isEnabledFor", (record.level,))?
            .is_truthy()?
        {
            continue;
        }
        // A record made by hand rather than `Logger.log`, so that it carries the Rust
        // source location and thread instead of this thread's.
        let extra = PyDict::new(py);
        extra.set_item("rust_target", &record.target)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("extra", extra)?;
        let args = (
            "stunfwd",
            record.level,
            record.file.unwrap_or(record.target.as_str()),
            record.line,
            record.message,
            PyTuple::empty(py),
            py.None(),
        );
        let made = logger.call_method("makeRecord", args, Some(&kwargs))?;
        if let Some(thread) = record.thread {
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

/// Installs the process-wide `tracing` subscriber and starts the logging thread (once).
pub(crate) fn install(py: Python<'_>) {
    INSTALL.call_once(|| {
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("stunfwd-log".into())
            .spawn(move || pump(rx));
        let Ok(thread) = thread else {
            return;
        };
        *SENDER.write().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        *lock(&THREAD) = Some(thread);
        let subscriber = tracing_subscriber::registry().with(PythonLayer);
        if tracing::subscriber::set_global_default(subscriber).is_err() {
            // Another library in this process installed a Rust subscriber first; our
            // events go there. Say so once, through the logger they would have used.
            if let Ok(l) = logger(py) {
                let _ = l.call_method1(
                    "warning",
                    ("another Rust tracing subscriber is installed in this process; stunfwd's own logs go to it, not to this logger",),
                );
            }
        }
    });
    refresh(py);
}

/// Delivers the records still queued and ends the logging thread. Called at interpreter
/// exit, after every engine has stopped; later records are dropped.
#[pyfunction]
pub(crate) fn shutdown_logging(py: Python<'_>) {
    let sender = SENDER.write().unwrap_or_else(|p| p.into_inner()).take();
    drop(sender);
    let thread = lock(&THREAD).take();
    if let Some(thread) = thread {
        // The thread needs the GIL to deliver what is queued.
        py.detach(|| {
            let _ = thread.join();
        });
    }
}
