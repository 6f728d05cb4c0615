//! `setLogger`: the library's log records (the core's [`stunfwd_core::logging`]),
//! queued to a JavaScript function on the main thread.

use std::sync::atomic::{AtomicU64, Ordering};

use napi::bindgen_prelude::Unknown;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use stunfwd_core::logging::{self, LogError, LogLevels};
use tracing::Level;

use crate::args;
use crate::error::{coded, Error, NapiExt, Result};

/// Records waiting for the main thread, at most; more are dropped, and counted in a
/// warning record once there is room again.
const QUEUE: usize = 1024;

/// Records dropped because the queue was full, not yet reported.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// One log record of the library, as `setLogger`'s function receives it.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// How severe it is.
    #[napi(ts_type = "'error' | 'warn' | 'info' | 'debug' | 'trace'")]
    pub level: String,
    /// The Rust module it comes from, e.g. `stunfwd_core::engine::driver` (or another
    /// crate's, e.g. `quinn_proto::connection`).
    pub target: String,
    /// The message, then ` key=value` for each of the record's fields (`room`,
    /// `state`, `peer`...).
    pub message: String,
    /// The Rust source file, when known.
    pub file: Option<String>,
    /// Its line, when known.
    pub line: Option<u32>,
}

impl From<&logging::LogRecord> for LogRecord {
    fn from(r: &logging::LogRecord) -> Self {
        LogRecord {
            level: match r.level {
                Level::ERROR => "error",
                Level::WARN => "warn",
                Level::INFO => "info",
                Level::DEBUG => "debug",
                Level::TRACE => "trace",
            }
            .to_owned(),
            target: r.target.to_owned(),
            message: r.message.clone(),
            file: r.file.map(str::to_owned),
            line: r.line,
        }
    }
}

/// Queues records to the logger; weak, so a logger never keeps the process alive.
type LogQueue =
    ThreadsafeFunction<LogRecord, Unknown<'static>, LogRecord, Status, false, true, QUEUE>;

fn log_error(e: LogError) -> Error {
    coded("ERR_INVALID_STATE", e.to_string())
}

/// Sends every log record of the library at `level` or more severe (default `'info'`;
/// other crates' records, such as QUIC's and TLS's, from `'warn'` up only) to
/// `logger`, or with `null` stops sending them. Process-wide: the last call wins.
///
/// `logger` runs on the main thread, a little after the record was made (records are
/// queued from the threads that log; if the main thread falls more than 1024 records
/// behind, the excess is dropped and a warning record says how many). A logger that
/// throws is reported as an uncaught exception. It does not keep the process alive.
#[napi(
    ts_args_type = "logger: ((record: LogRecord) => void) | null, level?: 'error' | 'warn' | 'info' | 'debug' | 'trace'"
)]
pub fn set_logger(logger: Unknown, level: Option<Unknown>) -> Result<()> {
    let level = LogLevels::new(args::log_level(level.as_ref())?);
    if args::is_nullish(&logger) {
        return logging::set_logger(None, level).map_err(log_error);
    }
    let function = args::function(&logger, "`logger`")?;
    let queue: LogQueue = function
        .build_threadsafe_function::<LogRecord>()
        .callee_handled::<false>()
        .weak::<true>()
        .max_queue_size::<QUEUE>()
        .build_callback(|ctx| Ok(ctx.value))
        .js()?;
    logging::install().map_err(log_error)?;
    let forward = move |record: &logging::LogRecord| {
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let warning = LogRecord {
                level: "warn".to_owned(),
                target: "stunfwd".to_owned(),
                message: format!("{dropped} log records were dropped: the logger fell behind"),
                file: None,
                line: None,
            };
            if queue.call(warning, ThreadsafeFunctionCallMode::NonBlocking) == Status::QueueFull {
                DROPPED.fetch_add(dropped, Ordering::Relaxed);
            }
        }
        let status = queue.call(record.into(), ThreadsafeFunctionCallMode::NonBlocking);
        if status == Status::QueueFull {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    };
    logging::set_logger(Some(Box::new(forward)), level).map_err(log_error)
}
