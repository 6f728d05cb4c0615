//! Forwarding the library's `tracing` events to a host's own logger (a C callback,
//! Python's `logging`, a JavaScript function): one process-wide callback receives each
//! event as a [`LogRecord`].
//!
//! [`install`] makes [`ForwardLayer`] the process's `tracing` subscriber (once);
//! [`set_logger`] sets or clears the callback and the levels it receives. A host that
//! has a subscriber of its own can add [`ForwardLayer`] to it instead.

use std::cell::Cell;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::sync::{read, write};

/// One log event, as the callback receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogRecord {
    /// How severe it is.
    pub level: Level,
    /// Where it comes from: a module path such as `stunfwd_core::engine::driver`, or
    /// another crate's (`quinn_proto::connection`).
    pub target: &'static str,
    /// The message, then ` key=value` for each of the event's other fields.
    pub message: String,
    /// The source file of the `tracing` call, when known.
    pub file: Option<&'static str>,
    /// Its line, when known.
    pub line: Option<u32>,
}

/// The process-wide log callback. Called on whichever thread logs (often an engine
/// worker), possibly on several at once; it should return quickly and must not wait
/// for the engine.
pub type LogCallback = Box<dyn Fn(&LogRecord) + Send + Sync>;

/// The most verbose level forwarded, for stunfwd's own events and for those of the
/// crates it uses (quinn, rustls, hyper...), which are noisy below warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevels {
    /// For targets starting with `stunfwd`.
    pub stunfwd: LevelFilter,
    /// For every other target.
    pub others: LevelFilter,
}

impl LogLevels {
    /// `level` for stunfwd's events, and for the other crates' no more verbose than
    /// warnings: what a host's "debug" usually means.
    pub fn new(level: LevelFilter) -> Self {
        LogLevels {
            stunfwd: level,
            others: level.min(LevelFilter::WARN),
        }
    }

    /// `level` for every event, the other crates' included.
    pub fn all(level: LevelFilter) -> Self {
        LogLevels {
            stunfwd: level,
            others: level,
        }
    }
}

/// Why a logging call did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// Another `tracing` subscriber was installed in this process first: events go
    /// there, not to the callback (add [`ForwardLayer`] to that subscriber instead).
    #[error("another tracing subscriber is already installed in this process")]
    OtherSubscriber,
    /// Called from inside the log callback, where it would wait for itself.
    #[error("the log callback cannot be changed from inside the log callback (it waits for running callbacks to return)")]
    InCallback,
}

static CALLBACK: RwLock<Option<LogCallback>> = RwLock::new(None);
/// The two [`LevelFilter`]s of [`LogLevels`], coded by [`code`]; off until a callback
/// is set.
static STUNFWD_LEVEL: AtomicU8 = AtomicU8::new(0);
static OTHERS_LEVEL: AtomicU8 = AtomicU8::new(0);
static INSTALLED: OnceLock<bool> = OnceLock::new();

thread_local! {
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// True while this thread runs the log callback.
pub fn in_log_callback() -> bool {
    IN_CALLBACK.with(Cell::get)
}

/// Makes [`ForwardLayer`] the process-wide `tracing` subscriber. Only the first call
/// does anything; later ones return its outcome again.
pub fn install() -> Result<(), LogError> {
    let installed = *INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(ForwardLayer))
            .is_ok()
    });
    if installed {
        Ok(())
    } else {
        Err(LogError::OtherSubscriber)
    }
}

/// Sets (or with `None`, clears) the log callback and the levels it receives. When it
/// returns, no call of the previous callback is running any more: it waits for those
/// in flight, then drops the previous callback. From inside the callback it would wait
/// for itself: [`LogError::InCallback`].
pub fn set_logger(callback: Option<LogCallback>, levels: LogLevels) -> Result<(), LogError> {
    if in_log_callback() {
        return Err(LogError::InCallback);
    }
    let on = callback.is_some();
    let previous = std::mem::replace(&mut *write(&CALLBACK), callback);
    set_levels(if on {
        levels
    } else {
        LogLevels::all(LevelFilter::OFF)
    });
    drop(previous);
    Ok(())
}

/// Changes the levels the callback receives (a host whose logger's level changed).
pub fn set_levels(levels: LogLevels) {
    let stunfwd = STUNFWD_LEVEL.swap(code(levels.stunfwd), Ordering::SeqCst);
    let others = OTHERS_LEVEL.swap(code(levels.others), Ordering::SeqCst);
    if (stunfwd, others) != (code(levels.stunfwd), code(levels.others)) {
        // Callsites cache whether they are enabled: ask them again.
        tracing::callsite::rebuild_interest_cache();
    }
}

/// A [`LevelFilter`] as a number, more verbose ones larger (OFF is 0).
fn code(filter: LevelFilter) -> u8 {
    match filter.into_level() {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(Level::TRACE) => 5,
    }
}

fn level_code(level: &Level) -> u8 {
    code(LevelFilter::from_level(*level))
}

fn filter_of(code: u8) -> LevelFilter {
    match code {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Whether events of `meta` are forwarded at the current levels.
fn wanted(meta: &Metadata<'_>) -> bool {
    let limit = if meta.target().starts_with("stunfwd") {
        &STUNFWD_LEVEL
    } else {
        &OTHERS_LEVEL
    };
    level_code(meta.level()) <= limit.load(Ordering::Relaxed)
}

/// Turns an event into a [`LogRecord`].
pub fn record_of(event: &Event<'_>) -> LogRecord {
    let meta = event.metadata();
    let mut text = Text::default();
    event.record(&mut text);
    text.message.push_str(&text.fields);
    LogRecord {
        level: *meta.level(),
        target: meta.target(),
        message: text.message,
        file: meta.file(),
        line: meta.line(),
    }
}

/// An event's text: its message, and ` k=v` for every other field.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
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

/// The `tracing` layer that hands events to the callback of [`set_logger`], filtered
/// by its [`LogLevels`]. An event logged by the callback itself is not sent back to it,
/// and a callback that panics is not unwound into the code that logged.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardLayer;

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if wanted(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        wanted(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let most = STUNFWD_LEVEL
            .load(Ordering::Relaxed)
            .max(OTHERS_LEVEL.load(Ordering::Relaxed));
        Some(filter_of(most))
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if in_log_callback() || !wanted(event.metadata()) {
            return;
        }
        // Held for the whole call: `set_logger` takes the write lock, so it returns
        // only when no call of the old callback is in flight.
        let callback = read(&CALLBACK);
        let Some(callback) = callback.as_ref() else {
            return;
        };
        let record = record_of(event);
        IN_CALLBACK.with(|c| c.set(true));
        let _ = catch_unwind(AssertUnwindSafe(|| callback(&record)));
        IN_CALLBACK.with(|c| c.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn records_carry_message_fields_and_levels() {
        let seen = Arc::new(Mutex::new(Vec::<LogRecord>::new()));
        let sink = seen.clone();
        let subscriber = tracing_subscriber::registry().with(ForwardLayer);
        tracing::subscriber::with_default(subscriber, || {
            set_logger(
                Some(Box::new(move |r: &LogRecord| {
                    crate::sync::lock(&sink).push(r.clone());
                    // Logged by the callback itself: not forwarded again.
                    tracing::warn!("from inside");
                    assert_eq!(
                        set_logger(None, LogLevels::all(LevelFilter::OFF)),
                        Err(LogError::InCallback)
                    );
                })),
                LogLevels::new(LevelFilter::INFO),
            )
            .expect("set");
            tracing::info!(target: "stunfwd_core::test", room = "r", n = 3, "state {}", "up");
            tracing::debug!(target: "stunfwd_core::test", "too verbose");
            tracing::info!(target: "quinn::conn", "a dependency's info");
            tracing::warn!(target: "quinn::conn", "a dependency's warning");
            set_logger(None, LogLevels::all(LevelFilter::TRACE)).expect("clear");
            tracing::error!(target: "stunfwd_core::test", "after clearing");
        });
        let seen = crate::sync::lock(&seen);
        let lines: Vec<(Level, &str, &str)> = seen
            .iter()
            .map(|r| (r.level, r.target, r.message.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (Level::INFO, "stunfwd_core::test", "state up room=r n=3"),
                (Level::WARN, "quinn::conn", "a dependency's warning"),
            ]
        );
        assert!(seen[0].file.is_some_and(|f| f.ends_with("logging.rs")));
    }

    #[test]
    fn level_codes_order_by_verbosity() {
        for f in [
            LevelFilter::OFF,
            LevelFilter::ERROR,
            LevelFilter::WARN,
            LevelFilter::INFO,
            LevelFilter::DEBUG,
            LevelFilter::TRACE,
        ] {
            assert_eq!(filter_of(code(f)), f);
        }
        assert!(level_code(&Level::TRACE) > level_code(&Level::ERROR));
        assert_eq!(LogLevels::new(LevelFilter::DEBUG).others, LevelFilter::WARN);
    }
}
