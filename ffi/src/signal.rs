//! Hosting the rendezvous (signaling + STUN) server from C: a
//! [`BlockingSignalServer`] behind an opaque pointer.

use std::ffi::c_char;
use std::time::Duration;

use stunfwd_core::BlockingSignalServer;

use crate::boundary::{
    arg_str, boundary, boundary_void, fail, fail_with, stunfwd_result, to_c_string,
};

/// A running rendezvous server. Create with [`stunfwd_signal_server_start`], release
/// with [`stunfwd_signal_server_free`].
pub struct stunfwd_signal_server {
    _private: [u8; 0],
}

// Compile-time check: the server is Send + Sync (shared between threads by C).
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<BlockingSignalServer>();
};

/// # Safety
/// `ptr` must be NULL or a live handle.
unsafe fn server<'a>(
    ptr: *const stunfwd_signal_server,
) -> Result<&'a BlockingSignalServer, stunfwd_result> {
    if ptr.is_null() {
        return Err(fail_with(stunfwd_result::NullArgument, "`server` is NULL"));
    }
    // SAFETY: per the contract it points to a server leaked by _start.
    Ok(unsafe { &*(ptr as *const BlockingSignalServer) })
}

/// Starts a rendezvous server: HTTP mailbox on `http_addr` and, unless `stun_addr` is
/// NULL, a STUN responder on `stun_addr` (UDP). Use port 0 for any free port and read
/// the real ones back with `_url` / `_stun_addr`. An address that is not `IP:PORT` is
/// `STUNFWD_RESULT_CONFIG` (the message names `http` or `stun`), a port in use
/// `STUNFWD_RESULT_ADDR_IN_USE`.
///
/// # Safety
/// Strings NUL-terminated (`stun_addr` may be NULL); `server_out` writable.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_signal_server_start(
    http_addr: *const c_char,
    stun_addr: *const c_char,
    server_out: *mut *mut stunfwd_signal_server,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let http = match unsafe { arg_str(http_addr, "http_addr") } {
            Ok(s) => s,
            Err(r) => return r,
        };
        let stun = if stun_addr.is_null() {
            None
        } else {
            // SAFETY: forwarded contract.
            match unsafe { arg_str(stun_addr, "stun_addr") } {
                Ok(s) => Some(s),
                Err(r) => return r,
            }
        };
        if server_out.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`server_out` is NULL");
        }
        match BlockingSignalServer::start_on(http, stun) {
            Ok(server) => {
                // SAFETY: checked non-null.
                unsafe {
                    *server_out = Box::into_raw(Box::new(server)) as *mut stunfwd_signal_server
                };
                stunfwd_result::Ok
            }
            Err(e) => fail(&e),
        }
    })
}

/// Writes the server's URL (e.g. `http://127.0.0.1:41234/`) to `*url_out`; free it with
/// `stunfwd_string_free`.
///
/// # Safety
/// `server` must be a live handle; `url_out` writable.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_signal_server_url(
    server: *const stunfwd_signal_server,
    url_out: *mut *mut c_char,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let s = match unsafe { self::server(server) } {
            Ok(s) => s,
            Err(r) => return r,
        };
        if url_out.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`url_out` is NULL");
        }
        // SAFETY: checked non-null.
        unsafe { *url_out = to_c_string(s.url()) };
        stunfwd_result::Ok
    })
}

/// Writes the STUN responder's address (e.g. `127.0.0.1:3478`) to `*addr_out`; free it
/// with `stunfwd_string_free`. `STUNFWD_RESULT_INVALID_ARGUMENT` if it has none.
///
/// # Safety
/// `server` must be a live handle; `addr_out` writable.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_signal_server_stun_addr(
    server: *const stunfwd_signal_server,
    addr_out: *mut *mut c_char,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let s = match unsafe { self::server(server) } {
            Ok(s) => s,
            Err(r) => return r,
        };
        if addr_out.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`addr_out` is NULL");
        }
        let Some(stun) = s.stun_addr() else {
            return fail_with(
                stunfwd_result::InvalidArgument,
                "this server runs no STUN responder",
            );
        };
        // SAFETY: checked non-null.
        unsafe { *addr_out = to_c_string(&stun.to_string()) };
        stunfwd_result::Ok
    })
}

/// Stops the server (wakes pending long-polls, closes its sockets) within about
/// `timeout_ms`. Stopping twice is harmless. Safe to call from several threads at
/// once, and while others call `_url` or `_stun_addr`: a second `_stop` returns once
/// the server is stopped.
///
/// # Safety
/// `server` must be a live handle, not used concurrently with `_free`.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_signal_server_stop(
    server: *mut stunfwd_signal_server,
    timeout_ms: u32,
) -> stunfwd_result {
    boundary(|| {
        if server.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`server` is NULL");
        }
        // SAFETY: live handle per the contract; only shared references are made, and
        // what stop changes is behind a mutex.
        let s = match unsafe { self::server(server) } {
            Ok(s) => s,
            Err(r) => return r,
        };
        s.stop(Duration::from_millis(u64::from(timeout_ms)));
        stunfwd_result::Ok
    })
}

/// Stops (if needed) and frees the server. `stunfwd_signal_server_free(NULL)` is a no-op.
///
/// # Safety
/// `server` must be NULL or a live handle that is not used again.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_signal_server_free(server: *mut stunfwd_signal_server) {
    if server.is_null() {
        return;
    }
    boundary_void(|| {
        // SAFETY: came from Box::into_raw in _start and is released once.
        drop(unsafe { Box::from_raw(server as *mut BlockingSignalServer) });
    });
}
