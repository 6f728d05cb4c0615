//! The process-wide log callback: the core's log forwarding
//! ([`stunfwd_core::logging`]) with a C function at the end.

use std::ffi::{c_char, c_int, c_void, CString};

use stunfwd_core::logging::{self, LogError, LogLevels, LogRecord};
use tracing::level_filters::LevelFilter;
use tracing::Level;

use crate::boundary::{boundary, fail_with, stunfwd_result};

/// Log levels, most severe first.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum stunfwd_log_level {
    /// Errors.
    Error = 1,
    /// Warnings.
    Warn = 2,
    /// Informational: state changes, mappings.
    Info = 3,
    /// Debugging detail.
    Debug = 4,
    /// Very verbose.
    Trace = 5,
}

/// Receives one log line. Called on whichever thread logs, possibly concurrently;
/// `message` is valid only during the call.
pub type stunfwd_log_callback = Option<
    unsafe extern "C" fn(user_data: *mut c_void, level: stunfwd_log_level, message: *const c_char),
>;

/// True while this thread is inside the log callback.
pub(crate) fn in_log_callback() -> bool {
    logging::in_log_callback()
}

fn level_of(l: Level) -> stunfwd_log_level {
    match l {
        Level::ERROR => stunfwd_log_level::Error,
        Level::WARN => stunfwd_log_level::Warn,
        Level::INFO => stunfwd_log_level::Info,
        Level::DEBUG => stunfwd_log_level::Debug,
        Level::TRACE => stunfwd_log_level::Trace,
    }
}

fn fail_log(e: LogError) -> stunfwd_result {
    let code = match e {
        LogError::InCallback => stunfwd_result::InCallback,
        _ => stunfwd_result::InvalidArgument,
    };
    fail_with(code, &format!("stunfwd_set_log_callback: {e}"))
}

/// Sets (or with NULL, clears) the process-wide log callback, receiving every log line
/// at `max_level` or more severe: a `stunfwd_log_level` value, 1 (errors) to 5 (trace);
/// anything else is `STUNFWD_RESULT_INVALID_ARGUMENT`. The first call installs
/// stunfwd's log subscriber for the process; if the host process already installed a
/// Rust `tracing` subscriber, this returns `STUNFWD_RESULT_INVALID_ARGUMENT` and logs
/// keep going there.
///
/// When it returns, no call of the previous callback is running any more (it waits
/// for those in flight), so the previous `user_data` may be freed. Called from inside
/// the log callback it would wait for itself: it returns `STUNFWD_RESULT_IN_CALLBACK`.
///
/// # Safety
/// `callback` must be callable from any thread with `user_data` until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_set_log_callback(
    callback: stunfwd_log_callback,
    user_data: *mut c_void,
    max_level: c_int,
) -> stunfwd_result {
    boundary(|| {
        let max_level = match max_level {
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            5 => LevelFilter::TRACE,
            other => {
                return fail_with(
                    stunfwd_result::InvalidArgument,
                    &format!(
                        "max_level {other} is not a log level; valid: 1 (STUNFWD_LOG_LEVEL_ERROR) \
                         to 5 (STUNFWD_LOG_LEVEL_TRACE)"
                    ),
                )
            }
        };
        if let Err(e) = logging::install() {
            return fail_log(e);
        }
        let user_data = user_data as usize;
        let forward = callback.map(|cb| -> logging::LogCallback {
            Box::new(move |record: &LogRecord| {
                let line = format!("{}: {}", record.target, record.message);
                let Ok(line) = CString::new(line.replace('\0', " ")) else {
                    return;
                };
                // SAFETY: the host registered `cb` for `user_data` and accepts calls
                // from any thread; `line` outlives the call.
                unsafe {
                    cb(
                        user_data as *mut c_void,
                        level_of(record.level),
                        line.as_ptr(),
                    )
                };
            })
        });
        match logging::set_logger(forward, LogLevels::all(max_level)) {
            Ok(()) => stunfwd_result::Ok,
            Err(e) => fail_log(e),
        }
    })
}
