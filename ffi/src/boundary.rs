//! Result codes, the thread-local last error, and the panic boundary.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use stunfwd_core::Error;

/// The outcome of a call. Values are fixed and never renumbered; new ones are only
/// ever added at the end.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum stunfwd_result {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = 2,
    /// The configuration (or a mapping spec) is invalid; the message names the key.
    Config = 3,
    /// A local address is already in use; the message names the port.
    AddrInUse = 4,
    /// An I/O error.
    Io = 5,
    /// The rendezvous server failed.
    Signal = 6,
    /// STUN failed.
    Stun = 7,
    /// The peer could not be authenticated (wrong secret, tampered offer).
    PeerAuth = 8,
    /// A wait ran out of time.
    Timeout = 9,
    /// No mapping has that id.
    NoSuchMapping = 10,
    /// The engine is stopped.
    Stopped = 11,
    /// The QUIC tunnel failed.
    Tunnel = 12,
    /// An internal error (a bug): a panic was caught at the boundary.
    Panic = 13,
    /// An argument is out of range.
    InvalidArgument = 14,
    /// The call is not allowed from inside this callback.
    InCallback = 15,
    /// No direct path can be punched between the two NAT types and no relay is
    /// configured; the message names both NAT types.
    NoPath = 16,
    /// The TURN relay failed (credentials, quota, unreachable); the message says which.
    Relay = 17,
    /// A wait was cancelled by `stunfwd_engine_cancel_waits` before it ended.
    Cancelled = 18,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

pub(crate) fn clear_last_error() {
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::default());
}

/// Maps a core error to its code and records its message.
pub(crate) fn fail(err: &Error) -> stunfwd_result {
    set_last_error(&err.to_string());
    match err {
        Error::Config { .. } => stunfwd_result::Config,
        Error::AddrInUse { .. } => stunfwd_result::AddrInUse,
        Error::Io { .. } => stunfwd_result::Io,
        Error::Signal(_) => stunfwd_result::Signal,
        Error::Stun(_) => stunfwd_result::Stun,
        Error::PeerAuth(_) => stunfwd_result::PeerAuth,
        Error::Timeout(_) => stunfwd_result::Timeout,
        Error::NoSuchMapping(_) => stunfwd_result::NoSuchMapping,
        Error::Stopped => stunfwd_result::Stopped,
        Error::Cancelled => stunfwd_result::Cancelled,
        Error::Tunnel(_) => stunfwd_result::Tunnel,
        Error::NoPath { .. } => stunfwd_result::NoPath,
        Error::Relay(_) => stunfwd_result::Relay,
        _ => stunfwd_result::Io,
    }
}

/// Records `message` and returns `code`.
pub(crate) fn fail_with(code: stunfwd_result, message: &str) -> stunfwd_result {
    set_last_error(message);
    code
}

/// Runs `body` so that no panic crosses into C.
pub(crate) fn boundary(body: impl FnOnce() -> stunfwd_result) -> stunfwd_result {
    clear_last_error();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (please report): {what}"));
            stunfwd_result::Panic
        }
    }
}

/// Like [`boundary`] for functions without a result.
pub(crate) fn boundary_void(body: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(body));
}

/// Borrows a C string argument as UTF-8.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string valid for the call.
pub(crate) unsafe fn arg_str<'a>(
    ptr: *const c_char,
    name: &str,
) -> Result<&'a str, stunfwd_result> {
    if ptr.is_null() {
        return Err(fail_with(
            stunfwd_result::NullArgument,
            &format!("`{name}` is NULL"),
        ));
    }
    // SAFETY: non-null and NUL-terminated per the function contract.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str().map_err(|e| {
        fail_with(
            stunfwd_result::InvalidUtf8,
            &format!(
                "`{name}` is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Hands a Rust string to C (freed with [`stunfwd_string_free`]).
pub(crate) fn to_c_string(s: &str) -> *mut c_char {
    CString::new(s.replace('\0', " "))
        .map(CString::into_raw)
        .unwrap_or(std::ptr::null_mut())
}

/// The library version, e.g. `"0.1.0"`. A static string: do not free it.
#[no_mangle]
pub extern "C" fn stunfwd_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread ("" if the last call
/// succeeded). The pointer is valid until the next stunfwd call on this thread; copy
/// the text if you need it longer. Never NULL.
#[no_mangle]
pub extern "C" fn stunfwd_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Frees a string returned by stunfwd through a `char **` out-parameter.
/// `stunfwd_string_free(NULL)` is a no-op.
///
/// # Safety
/// `s` must be NULL or a string returned by stunfwd that has not been freed yet.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_string_free(s: *mut c_char) {
    if s.is_null() {
        return;
    }
    boundary_void(|| {
        // SAFETY: per the contract, `s` came from CString::into_raw in this library.
        drop(unsafe { CString::from_raw(s) });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_result_code_with_a_message() {
        let rc = boundary(|| panic!("boom"));
        assert_eq!(rc, stunfwd_result::Panic);
        // SAFETY: the pointer is valid until the next call on this thread.
        let msg = unsafe { CStr::from_ptr(stunfwd_last_error_message()) };
        assert!(msg.to_str().unwrap().contains("boom"));
        assert_eq!(boundary(|| stunfwd_result::Ok), stunfwd_result::Ok);
        // SAFETY: as above.
        let cleared = unsafe { CStr::from_ptr(stunfwd_last_error_message()) };
        assert!(cleared.to_bytes().is_empty());
    }

    #[test]
    fn strings_are_checked() {
        // SAFETY: NULL is allowed; the others are NUL-terminated literals.
        unsafe {
            assert_eq!(
                arg_str(std::ptr::null(), "x"),
                Err(stunfwd_result::NullArgument)
            );
            let bad = b"\xff\xfe\0";
            assert_eq!(
                arg_str(bad.as_ptr().cast(), "x"),
                Err(stunfwd_result::InvalidUtf8)
            );
            assert_eq!(arg_str(c"ok".as_ptr(), "x"), Ok("ok"));
        }
    }

    #[test]
    fn result_codes_are_stable() {
        // Renumbering breaks every C program built against an older header.
        let fixed = [
            (stunfwd_result::Ok, 0),
            (stunfwd_result::NullArgument, 1),
            (stunfwd_result::InvalidUtf8, 2),
            (stunfwd_result::Config, 3),
            (stunfwd_result::AddrInUse, 4),
            (stunfwd_result::Io, 5),
            (stunfwd_result::Signal, 6),
            (stunfwd_result::Stun, 7),
            (stunfwd_result::PeerAuth, 8),
            (stunfwd_result::Timeout, 9),
            (stunfwd_result::NoSuchMapping, 10),
            (stunfwd_result::Stopped, 11),
            (stunfwd_result::Tunnel, 12),
            (stunfwd_result::Panic, 13),
            (stunfwd_result::InvalidArgument, 14),
            (stunfwd_result::InCallback, 15),
            (stunfwd_result::NoPath, 16),
            (stunfwd_result::Relay, 17),
            (stunfwd_result::Cancelled, 18),
        ];
        for (code, value) in fixed {
            assert_eq!(code as i32, value, "{code:?}");
        }
    }
}
