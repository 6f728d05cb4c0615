//! The process-wide log callback: `tracing` events of the library, forwarded to C.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::fmt::Write as _;
use std::sync::{Once, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

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

#[derive(Clone, Copy)]
struct Sink {
    cb: unsafe extern "C" fn(*mut c_void, stunfwd_log_level, *const c_char),
    user_data: usize,
    max: stunfwd_log_level,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
static INSTALL: Once = Once::new();

thread_local! {
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// True while this thread is inside the log callback.
pub(crate) fn in_log_callback() -> bool {
    IN_CALLBACK.with(|c| c.get())
}

fn level_of(l: &Level) -> stunfwd_log_level {
    match *l {
        Level::ERROR => stunfwd_log_level::Error,
        Level::WARN => stunfwd_log_level::Warn,
        Level::INFO => stunfwd_log_level::Info,
        Level::DEBUG => stunfwd_log_level::Debug,
        Level::TRACE => stunfwd_log_level::Trace,
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

struct CallbackLayer;

impl<S: Subscriber> Layer<S> for CallbackLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        // A log line of the callback's own doing is not sent back to it (and must not
        // take the lock again).
        if in_log_callback() {
            return;
        }
        // Held for the whole call: `stunfwd_set_log_callback` takes the write lock, so
        // it returns only when no call with the old callback is in flight.
        let guard = SINK.read().unwrap_or_else(|p| p.into_inner());
        let Some(sink) = *guard else {
            return;
        };
        let level = level_of(event.metadata().level());
        if level > sink.max {
            return;
        }
        let mut line = Line(format!("{}: ", event.metadata().target()));
        event.record(&mut line);
        let Ok(message) = CString::new(line.0.replace('\0', " ")) else {
            return;
        };
        IN_CALLBACK.with(|c| c.set(true));
        let result = std::panic::catch_unwind(|| {
            // SAFETY: the host registered `cb` for `user_data` and accepts calls from
            // any thread; `message` outlives the call.
            unsafe { (sink.cb)(sink.user_data as *mut c_void, level, message.as_ptr()) };
        });
        IN_CALLBACK.with(|c| c.set(false));
        drop(result);
        drop(guard);
    }
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
            1 => stunfwd_log_level::Error,
            2 => stunfwd_log_level::Warn,
            3 => stunfwd_log_level::Info,
            4 => stunfwd_log_level::Debug,
            5 => stunfwd_log_level::Trace,
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
        if in_log_callback() {
            return fail_with(
                stunfwd_result::InCallback,
                "stunfwd_set_log_callback cannot be called from inside the log callback \
                 (it waits for running callbacks to return)",
            );
        }
        let mut installed = true;
        INSTALL.call_once(|| {
            let filter = tracing_subscriber::filter::LevelFilter::TRACE;
            let subscriber = tracing_subscriber::registry().with(CallbackLayer.with_filter(filter));
            installed = tracing::subscriber::set_global_default(subscriber).is_ok();
        });
        if !installed {
            return fail_with(
                stunfwd_result::InvalidArgument,
                "another tracing subscriber is already installed in this process",
            );
        }
        let sink = callback.map(|cb| Sink {
            cb,
            user_data: user_data as usize,
            max: max_level,
        });
        *SINK.write().unwrap_or_else(|p| p.into_inner()) = sink;
        stunfwd_result::Ok
    })
}
