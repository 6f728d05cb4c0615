//! Hosting the rendezvous (signaling + STUN) server from C.

use std::ffi::c_char;
use std::net::SocketAddr;
use std::time::Duration;

use stunfwd_core::{SignalServer, SignalServerConfig};

use crate::boundary::{
    arg_str, boundary, boundary_void, fail, fail_with, stunfwd_result, to_c_string,
};

/// A running rendezvous server. Create with [`stunfwd_signal_server_start`], release
/// with [`stunfwd_signal_server_free`].
pub struct stunfwd_signal_server {
    _private: [u8; 0],
}

/// Every function but `_free` may run on any thread at the same time as the others:
/// what `_stop` changes is behind a mutex, the rest never changes after `_start`.
struct Server {
    running: std::sync::Mutex<Running>,
    url: String,
    stun: Option<SocketAddr>,
}

struct Running {
    rt: Option<tokio::runtime::Runtime>,
    server: Option<SignalServer>,
}

impl Server {
    /// Stops the server; a concurrent or later call waits for the first, then returns.
    fn stop(&self, timeout: Duration) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rt) = running.rt.take() else { return };
        if let Some(s) = running.server.take() {
            let (tx, rx) = std::sync::mpsc::channel();
            rt.spawn(async move {
                s.stop(timeout).await;
                drop(s);
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(timeout + Duration::from_millis(200));
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            rt.shutdown_background();
        } else {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}

// Compile-time check: `Server` is Send + Sync (shared between threads by C).
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Server>();
};

fn parse_addr(s: &str, name: &str) -> Result<SocketAddr, stunfwd_result> {
    s.parse().map_err(|_| {
        fail_with(
            stunfwd_result::Config,
            &format!("`{name}` = {s:?} is not an address; valid: IP:PORT, e.g. 127.0.0.1:0 or [::1]:3478"),
        )
    })
}

/// # Safety
/// `ptr` must be NULL or a live handle.
unsafe fn server<'a>(ptr: *const stunfwd_signal_server) -> Result<&'a Server, stunfwd_result> {
    if ptr.is_null() {
        return Err(fail_with(stunfwd_result::NullArgument, "`server` is NULL"));
    }
    // SAFETY: per the contract it points to a Server leaked by _start.
    Ok(unsafe { &*(ptr as *const Server) })
}

/// Starts a rendezvous server: HTTP mailbox on `http_addr` and, unless `stun_addr` is
/// NULL, a STUN responder on `stun_addr` (UDP). Use port 0 for any free port and read
/// the real ones back with `_url` / `_stun_addr`.
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
        let http = match unsafe { arg_str(http_addr, "http_addr") }
            .and_then(|s| parse_addr(s, "http_addr"))
        {
            Ok(a) => a,
            Err(r) => return r,
        };
        let stun = if stun_addr.is_null() {
            None
        } else {
            // SAFETY: forwarded contract.
            match unsafe { arg_str(stun_addr, "stun_addr") }
                .and_then(|s| parse_addr(s, "stun_addr"))
            {
                Ok(a) => Some(a),
                Err(r) => return r,
            }
        };
        if server_out.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`server_out` is NULL");
        }
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stunfwd-signal")
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return fail_with(stunfwd_result::Io, &format!("cannot start a runtime: {e}"))
            }
        };
        let config = SignalServerConfig {
            http,
            stun,
            ..SignalServerConfig::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(SignalServer::start(config).await);
        });
        let started = rx.recv();
        let s = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                rt.shutdown_background();
                return fail(&e);
            }
            Err(_) => {
                rt.shutdown_background();
                return fail_with(stunfwd_result::Io, "rendezvous server failed to start");
            }
        };
        let server = Box::new(Server {
            url: s.url(),
            stun: s.stun_addr(),
            running: std::sync::Mutex::new(Running {
                server: Some(s),
                rt: Some(rt),
            }),
        });
        // SAFETY: checked non-null.
        unsafe { *server_out = Box::into_raw(server) as *mut stunfwd_signal_server };
        stunfwd_result::Ok
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
        unsafe { *url_out = to_c_string(&s.url) };
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
        let Some(stun) = s.stun else {
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
        drop(unsafe { Box::from_raw(server as *mut Server) });
    });
}
