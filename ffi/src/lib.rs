//! C ABI for stunfwd: `libstunfwd` and `include/stunfwd.h`.
//!
//! Conventions (after rustls-ffi):
//! - Every fallible function returns a [`stunfwd_result`]; out-parameters come last and
//!   are written only on success. After a failure, [`stunfwd_last_error_message`] on the
//!   same thread says what was wrong.
//! - Handles are opaque; each `_start` is paired with a `_free`, and `_free(NULL)` is a
//!   no-op.
//! - Every exported body runs inside a panic boundary: a panic becomes
//!   `STUNFWD_RESULT_PANIC`, never an unwind into C.
//! - Strings passed in are borrowed for the duration of the call and must be valid
//!   UTF-8; strings returned through `char **` are owned by the caller and freed with
//!   [`stunfwd_string_free`].
//!
//! Thread safety: every function may be called from any thread, and calls on one
//! engine may run concurrently. Event callbacks run on the engine's own event thread,
//! one at a time; they may call any function, including `stunfwd_engine_stop` and
//! `stunfwd_engine_free` on their own engine. The log callback runs on whichever thread
//! logs (often an engine worker thread), possibly concurrently; it must return quickly,
//! and there `stunfwd_engine_stop` returns `STUNFWD_RESULT_IN_CALLBACK` while
//! `stunfwd_engine_free` hands the stop to a helper thread.
#![allow(non_camel_case_types)]

mod boundary;
mod engine;
mod log;
// The in-process rendezvous server (default feature `server`): the embedded demo's
// default. `--no-default-features` builds the lean library an app that only runs
// peers links (issue #19's size row); its header still declares these functions.
#[cfg(feature = "server")]
mod signal;

pub use boundary::{
    stunfwd_last_error_message, stunfwd_result, stunfwd_string_free, stunfwd_version,
};
pub use engine::*;
pub use log::{stunfwd_log_callback, stunfwd_log_level, stunfwd_set_log_callback};
#[cfg(feature = "server")]
pub use signal::*;
