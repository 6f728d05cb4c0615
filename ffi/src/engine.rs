//! The engine handle.

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stunfwd_core::{Config, Engine, Event, PathKind, State};

use crate::boundary::{
    arg_str, boundary, boundary_void, fail, fail_with, stunfwd_result, to_c_string,
};

/// A running peer. Create with [`stunfwd_engine_start`], release with
/// [`stunfwd_engine_free`].
pub struct stunfwd_engine {
    _private: [u8; 0],
}

/// Engine states.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum stunfwd_state {
    /// Just started.
    Starting = 0,
    /// Asking STUN servers for the public address.
    Discovering = 1,
    /// Waiting for the peer's offer.
    Signaling = 2,
    /// Connectivity checks and tunnel handshake.
    Punching = 3,
    /// The tunnel is up.
    Connected = 4,
    /// Not connected, retrying (see the stats JSON `last_error` for why).
    Reconnecting = 5,
    /// Stopped.
    Stopped = 6,
    /// Gave up for good.
    Failed = 7,
}

/// The path a connected tunnel takes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum stunfwd_path {
    /// Not connected.
    None = 0,
    /// Through the NATs to the peer's public address.
    Direct = 1,
    /// To one of the peer's own interface addresses.
    Lan = 2,
    /// Through a TURN relay.
    Relay = 3,
}

/// What an event is about.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum stunfwd_event_kind {
    /// The state changed; see `state` and `path`.
    State = 0,
    /// A mapping started listening; see `mapping_id`.
    MappingAdded = 1,
    /// A mapping was removed; see `mapping_id`.
    MappingRemoved = 2,
    /// A peer offer was rejected (tampering, stale, replayed; at most one report per
    /// 5 s); see `message`.
    PeerRejected = 3,
    /// Something to know that is not a failure, e.g. running without a secret; see
    /// `message`.
    Warning = 4,
    /// Server side: one client's tunnel changed state. `message` is
    /// `client <id>: <state>` (the id: 32 hex characters), `json` is
    /// `{"event":"client_state","client":"<id>","state":{...}}`; `state` and `path`
    /// describe the engine as a whole (connected while any client is). The stats JSON
    /// lists every client under `clients`.
    ClientState = 5,
}

/// An event, valid only during the callback (copy what you keep).
#[repr(C)]
#[derive(Debug)]
pub struct stunfwd_event {
    /// What happened.
    pub kind: stunfwd_event_kind,
    /// The engine state after the event.
    pub state: stunfwd_state,
    /// The tunnel path (when `state` is connected).
    pub path: stunfwd_path,
    /// The mapping concerned (mapping events), else 0.
    pub mapping_id: u64,
    /// A human-readable description. Never NULL.
    pub message: *const c_char,
    /// The event as JSON. Never NULL.
    pub json: *const c_char,
}

/// Called for each event of one engine, on that engine's event thread.
pub type stunfwd_event_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const stunfwd_event)>;

/// A snapshot of an engine's figures (all counters since start).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct stunfwd_stats {
    /// Current state.
    pub state: stunfwd_state,
    /// Current path.
    pub path: stunfwd_path,
    /// UDP port of the tunnel socket.
    pub local_port: u16,
    /// TCP connections and UDP flows opened.
    pub connections_opened: u64,
    /// Open now.
    pub connections_active: u64,
    /// Failed (no tunnel, refused, target unreachable).
    pub connections_failed: u64,
    /// Refused by the server's allow rules.
    pub refused_by_policy: u64,
    /// Payload bytes into the tunnel.
    pub bytes_sent: u64,
    /// Payload bytes out of the tunnel.
    pub bytes_received: u64,
    /// UDP datagrams into the tunnel.
    pub datagrams_sent: u64,
    /// UDP datagrams out of the tunnel.
    pub datagrams_received: u64,
    /// Tunnels re-established after loss.
    pub reconnects: u64,
    /// STUN discoveries performed.
    pub stun_discoveries: u64,
    /// HTTP requests to the rendezvous server.
    pub signaling_requests: u64,
    /// Peer offers rejected.
    pub offers_rejected: u64,
    /// Round-trip time in milliseconds, or -1 when not connected.
    pub rtt_ms: f64,
    /// Milliseconds from the start of the last successful attempt to connected, or -1.
    pub time_to_connected_ms: f64,
}

/// What a `stunfwd_engine *` points to.
///
/// Calls on the handle are counted while they run, and `stunfwd_engine_free` waits for
/// them before it releases the memory: a thread blocked in `_wait_connected` while
/// another frees the engine gets `STUNFWD_RESULT_STOPPED`, not a use after free. A call
/// that starts once `_free` has begun gets the same error; one made after `_free`
/// returned is the caller's bug (the handle is gone).
struct Handle {
    engine: Arc<Engine>,
    /// Calls running now; `_free` waits for 0.
    calls: Mutex<usize>,
    idle: std::sync::Condvar,
    /// `_free` has begun.
    freeing: AtomicBool,
    /// Closes the event callback: see [`EventGate`].
    events: Arc<EventGate>,
}

/// Lets `_free` guarantee that no event callback runs after it returns: each callback
/// runs under the read lock and only while `closed` is false; `_free` (from another
/// thread) takes the write lock, which waits for a running callback, and closes it.
/// `_free` from inside the event callback runs on the event thread itself, so no other
/// callback is running, and closing is enough.
#[derive(Default)]
struct EventGate {
    lock: std::sync::RwLock<()>,
    closed: AtomicBool,
}

thread_local! {
    /// True while this thread runs an engine's event callback.
    static IN_EVENT_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A running call on a handle (see [`Handle`]); ends on drop.
struct Call<'a>(&'a Handle);

impl std::ops::Deref for Call<'_> {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        self.0
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let mut calls = self.0.calls.lock().unwrap_or_else(|p| p.into_inner());
        *calls -= 1;
        if *calls == 0 {
            self.0.idle.notify_all();
        }
    }
}

fn state_code(s: &State) -> stunfwd_state {
    match s {
        State::Starting => stunfwd_state::Starting,
        State::Discovering => stunfwd_state::Discovering,
        State::Signaling => stunfwd_state::Signaling,
        State::Punching => stunfwd_state::Punching,
        State::Connected { .. } => stunfwd_state::Connected,
        State::Reconnecting { .. } => stunfwd_state::Reconnecting,
        State::Stopped => stunfwd_state::Stopped,
        State::Failed { .. } => stunfwd_state::Failed,
    }
}

fn path_code(p: Option<PathKind>) -> stunfwd_path {
    match p {
        None => stunfwd_path::None,
        Some(PathKind::Direct) => stunfwd_path::Direct,
        Some(PathKind::Lan) => stunfwd_path::Lan,
        Some(PathKind::Relay) => stunfwd_path::Relay,
    }
}

/// The user's event callback and data, sent to the event thread.
#[derive(Clone, Copy)]
struct EventSink {
    cb: unsafe extern "C" fn(*mut c_void, *const stunfwd_event),
    user_data: usize,
}

/// Calls the C callback with `event`; `state` is the engine's state after it.
fn deliver(sink: EventSink, event: &Event, state: &State) {
    let (kind, mapping_id, message) = match event {
        Event::State { state } => (stunfwd_event_kind::State, 0, state.to_string()),
        Event::MappingAdded { id, spec, listen } => (
            stunfwd_event_kind::MappingAdded,
            *id,
            format!("mapping {id} {spec} listening on {listen}"),
        ),
        Event::MappingRemoved { id } => (
            stunfwd_event_kind::MappingRemoved,
            *id,
            format!("mapping {id} removed"),
        ),
        Event::PeerRejected { reason } => (stunfwd_event_kind::PeerRejected, 0, reason.clone()),
        Event::Warning { message } => (stunfwd_event_kind::Warning, 0, message.clone()),
        Event::ClientState { client, state } => (
            stunfwd_event_kind::ClientState,
            0,
            format!("client {client}: {state}"),
        ),
    };
    let path = match state {
        State::Connected { path, .. } => Some(*path),
        _ => None,
    };
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let json = CString::new(serde_json::to_string(event).unwrap_or_default()).unwrap_or_default();
    let ev = stunfwd_event {
        kind,
        state: state_code(state),
        path: path_code(path),
        mapping_id,
        message: message.as_ptr(),
        json: json.as_ptr(),
    };
    // SAFETY: the caller registered `cb` with this `user_data` and promised it can be
    // called on the engine's event thread; `ev` and its strings outlive the call.
    unsafe { (sink.cb)(sink.user_data as *mut c_void, &ev) };
}

/// Enters a call on the handle (counted until the returned guard drops).
///
/// # Safety
/// `ptr` must be NULL or a live handle from [`stunfwd_engine_start`].
unsafe fn handle<'a>(ptr: *const stunfwd_engine) -> Result<Call<'a>, stunfwd_result> {
    if ptr.is_null() {
        return Err(fail_with(stunfwd_result::NullArgument, "`engine` is NULL"));
    }
    // SAFETY: per the contract it points to a Handle leaked by stunfwd_engine_start,
    // which `_free` does not release while calls are counted.
    let h = unsafe { &*(ptr as *const Handle) };
    let mut calls = h.calls.lock().unwrap_or_else(|p| p.into_inner());
    if h.freeing.load(Ordering::SeqCst) {
        return Err(fail_with(
            stunfwd_result::Stopped,
            "the engine is being freed (stunfwd_engine_free was called)",
        ));
    }
    *calls += 1;
    Ok(Call(h))
}

/// Starts an engine from a JSON config (see the README for the keys) and writes the
/// handle to `*engine_out`. Returns at once; connecting runs in the background. On
/// failure nothing is left running and `*engine_out` is untouched.
///
/// `event_callback` (may be NULL) receives every event from the first state change on,
/// on the engine's event thread, with `user_data`; it may call any stunfwd function,
/// including stopping or freeing this engine.
///
/// # Safety
/// `config_json` must be a NUL-terminated string; `engine_out` must be writable.
/// `user_data` must stay valid until the engine is freed.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_start(
    config_json: *const c_char,
    event_callback: stunfwd_event_callback,
    user_data: *mut c_void,
    engine_out: *mut *mut stunfwd_engine,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let json = match unsafe { arg_str(config_json, "config_json") } {
            Ok(s) => s,
            Err(r) => return r,
        };
        if engine_out.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`engine_out` is NULL");
        }
        let config = match Config::from_json(json) {
            Ok(c) => c,
            Err(e) => return fail(&e),
        };
        let gate = Arc::new(EventGate::default());
        let started = match event_callback {
            Some(cb) => {
                let sink = EventSink {
                    cb,
                    user_data: user_data as usize,
                };
                let gate = gate.clone();
                // The engine is not known inside its own first callbacks; the state
                // is tracked here for the events that carry none. (Events arrive one
                // at a time on the event thread.)
                let last = Mutex::new(State::Starting);
                Engine::start_with_events(config, move |e| {
                    let state = {
                        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                        if let Event::State { state } = e {
                            *last = state.clone();
                        }
                        last.clone()
                    };
                    let _open = gate.lock.read().unwrap_or_else(|p| p.into_inner());
                    if gate.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    IN_EVENT_CALLBACK.with(|c| c.set(true));
                    deliver(sink, e, &state);
                    IN_EVENT_CALLBACK.with(|c| c.set(false));
                })
            }
            None => Engine::start(config),
        };
        match started {
            Ok(engine) => {
                let h = Box::new(Handle {
                    engine: Arc::new(engine),
                    calls: Mutex::new(0),
                    idle: std::sync::Condvar::new(),
                    freeing: AtomicBool::new(false),
                    events: gate,
                });
                // SAFETY: checked non-null above.
                unsafe { *engine_out = Box::into_raw(h) as *mut stunfwd_engine };
                stunfwd_result::Ok
            }
            Err(e) => fail(&e),
        }
    })
}

/// Adds a mapping such as `"tcp:8080:22"` or `"udp:127.0.0.1:5353:10.0.0.1:53"` (client
/// mode) and writes its id to `*id_out`. Works before and after the tunnel is up.
///
/// # Safety
/// `engine` must be a live handle; `spec` NUL-terminated; `id_out` writable.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_add_mapping(
    engine: *const stunfwd_engine,
    spec: *const c_char,
    id_out: *mut u64,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let h = match unsafe { handle(engine) } {
            Ok(h) => h,
            Err(r) => return r,
        };
        // SAFETY: forwarded contract.
        let spec = match unsafe { arg_str(spec, "spec") } {
            Ok(s) => s,
            Err(r) => return r,
        };
        if id_out.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`id_out` is NULL");
        }
        match h.engine.add_mapping_str(spec) {
            Ok(id) => {
                // SAFETY: checked non-null.
                unsafe { *id_out = id };
                stunfwd_result::Ok
            }
            Err(e) => fail(&e),
        }
    })
}

/// Removes a mapping: closes its listener and its connections.
///
/// # Safety
/// `engine` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_remove_mapping(
    engine: *const stunfwd_engine,
    id: u64,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let h = match unsafe { handle(engine) } {
            Ok(h) => h,
            Err(r) => return r,
        };
        match h.engine.remove_mapping(id) {
            Ok(()) => stunfwd_result::Ok,
            Err(e) => fail(&e),
        }
    })
}

/// Writes the local port a mapping listens on (useful with local port 0).
///
/// # Safety
/// `engine` must be a live handle; `port_out` writable.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_mapping_port(
    engine: *const stunfwd_engine,
    id: u64,
    port_out: *mut u16,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let h = match unsafe { handle(engine) } {
            Ok(h) => h,
            Err(r) => return r,
        };
        if port_out.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`port_out` is NULL");
        }
        match h.engine.mapping_addr(id) {
            Some(a) => {
                // SAFETY: checked non-null.
                unsafe { *port_out = a.port() };
                stunfwd_result::Ok
            }
            None => fail(&stunfwd_core::Error::NoSuchMapping(id)),
        }
    })
}

/// Writes the current state to `*state_out`.
///
/// # Safety
/// `engine` must be a live handle; `state_out` writable.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_state(
    engine: *const stunfwd_engine,
    state_out: *mut stunfwd_state,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let h = match unsafe { handle(engine) } {
            Ok(h) => h,
            Err(r) => return r,
        };
        if state_out.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`state_out` is NULL");
        }
        // SAFETY: checked non-null.
        unsafe { *state_out = state_code(&h.engine.state()) };
        stunfwd_result::Ok
    })
}

/// Blocks until the tunnel is up, or `timeout_ms` passes (`STUNFWD_RESULT_TIMEOUT`,
/// or `STUNFWD_RESULT_PEER_AUTH` when the peer's offer failed authentication). Ends
/// early with `STUNFWD_RESULT_STOPPED` when the engine stops, and with
/// `STUNFWD_RESULT_CANCELLED` when another thread calls `stunfwd_engine_cancel_waits`.
///
/// # Safety
/// `engine` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_wait_connected(
    engine: *const stunfwd_engine,
    timeout_ms: u32,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let h = match unsafe { handle(engine) } {
            Ok(h) => h,
            Err(r) => return r,
        };
        match h
            .engine
            .wait_connected(Duration::from_millis(u64::from(timeout_ms)))
        {
            Ok(_) => stunfwd_result::Ok,
            Err(e) => fail(&e),
        }
    })
}

/// Ends every `stunfwd_engine_wait_connected` blocked on this engine now: they
/// return `STUNFWD_RESULT_CANCELLED`. Waits that start afterwards are not affected, and
/// the engine keeps running.
///
/// # Safety
/// `engine` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_cancel_waits(
    engine: *const stunfwd_engine,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let h = match unsafe { handle(engine) } {
            Ok(h) => h,
            Err(r) => return r,
        };
        h.engine.cancel_waits();
        stunfwd_result::Ok
    })
}

/// Fills `*stats_out` with a snapshot of the engine's figures (the final ones once
/// stopped).
///
/// # Safety
/// `engine` must be a live handle; `stats_out` writable.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_stats(
    engine: *const stunfwd_engine,
    stats_out: *mut stunfwd_stats,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let h = match unsafe { handle(engine) } {
            Ok(h) => h,
            Err(r) => return r,
        };
        if stats_out.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`stats_out` is NULL");
        }
        let s = h.engine.stats();
        let t = &s.totals;
        let out = stunfwd_stats {
            state: state_code(&s.state),
            path: path_code(s.path),
            local_port: s.local_addr.port(),
            connections_opened: t.connections_opened,
            connections_active: t.connections_active,
            connections_failed: t.connections_failed,
            refused_by_policy: t.refused_by_policy,
            bytes_sent: t.bytes_sent,
            bytes_received: t.bytes_received,
            datagrams_sent: t.datagrams_sent,
            datagrams_received: t.datagrams_received,
            reconnects: s.reconnects,
            stun_discoveries: s.stun_discoveries,
            signaling_requests: s.signaling_requests,
            offers_rejected: s.offers_rejected,
            rtt_ms: s.rtt_ms.unwrap_or(-1.0),
            time_to_connected_ms: s.timings.time_to_connected_ms.unwrap_or(-1.0),
        };
        // SAFETY: checked non-null.
        unsafe { *stats_out = out };
        stunfwd_result::Ok
    })
}

/// Writes the full stats as a JSON string to `*json_out`; free it with
/// `stunfwd_string_free`.
///
/// # Safety
/// `engine` must be a live handle; `json_out` writable.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_stats_json(
    engine: *const stunfwd_engine,
    json_out: *mut *mut c_char,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let h = match unsafe { handle(engine) } {
            Ok(h) => h,
            Err(r) => return r,
        };
        if json_out.is_null() {
            return fail_with(stunfwd_result::NullArgument, "`json_out` is NULL");
        }
        let s = to_c_string(&h.engine.stats_json());
        if s.is_null() {
            return fail_with(stunfwd_result::Io, "cannot allocate the stats string");
        }
        // SAFETY: checked non-null.
        unsafe { *json_out = s };
        stunfwd_result::Ok
    })
}

/// Stops the engine gracefully within about `timeout_ms` (tells the peer, closes
/// listeners and connections, leaves the room) and closes every socket: the tunnel's
/// and the mappings' ports are free when it returns. Afterwards `_stats` gives the
/// final figures, `_add_mapping` and `_remove_mapping` return `STUNFWD_RESULT_STOPPED`
/// and `_mapping_port` `STUNFWD_RESULT_NO_SUCH_MAPPING`. Stopping twice is harmless (a
/// second call from another thread returns once the first is done). From
/// inside the log callback this returns `STUNFWD_RESULT_IN_CALLBACK` (it would block a
/// thread the engine needs); from an event callback it works.
///
/// # Safety
/// `engine` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_stop(
    engine: *const stunfwd_engine,
    timeout_ms: u32,
) -> stunfwd_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let h = match unsafe { handle(engine) } {
            Ok(h) => h,
            Err(r) => return r,
        };
        if crate::log::in_log_callback() {
            return fail_with(
                stunfwd_result::InCallback,
                "stunfwd_engine_stop cannot be called from the log callback; call it from your own thread or an event callback",
            );
        }
        h.engine.stop(Duration::from_millis(u64::from(timeout_ms)));
        stunfwd_result::Ok
    })
}

/// Stops (if needed, with a 2 s budget) and frees the engine. `stunfwd_engine_free(NULL)`
/// is a no-op. The handle must not be used afterwards.
///
/// Once it returns, the event callback is not called again (not even with the
/// `stopped` state), also when it is called from inside that callback. Calls on the
/// engine running in other threads (e.g. a blocked `_wait_connected`) end with
/// `STUNFWD_RESULT_STOPPED` before the memory is released; calls that start while it
/// runs get the same. From inside the event or the log callback, the stop and release
/// happen on a helper thread after this returns (waiting there could wait for itself).
///
/// # Safety
/// `engine` must be NULL or a live handle that is not used again after this returns.
#[no_mangle]
pub unsafe extern "C" fn stunfwd_engine_free(engine: *mut stunfwd_engine) {
    if engine.is_null() {
        return;
    }
    boundary_void(|| {
        // SAFETY: per the contract, a live handle from stunfwd_engine_start, freed once.
        let h = unsafe { &*(engine as *const Handle) };
        h.freeing.store(true, Ordering::SeqCst);
        let on_event_thread = IN_EVENT_CALLBACK.with(|c| c.get());
        if on_event_thread {
            // We are the only callback running (they run one at a time on this
            // thread): closing the gate is enough for none to run after we return.
            h.events.closed.store(true, Ordering::SeqCst);
        }
        let ptr = engine as usize;
        // Once the engine has stopped (which wakes blocked calls: they return
        // STUNFWD_RESULT_STOPPED, also one inside a running event callback, and ends
        // the event thread), let go of the handle.
        let release = move || {
            // SAFETY: the handle stays allocated until the Box below is dropped.
            let h = unsafe { &*(ptr as *const Handle) };
            {
                // No event callback after this (one still running is waited for).
                let _closing = h.events.lock.write().unwrap_or_else(|p| p.into_inner());
                h.events.closed.store(true, Ordering::SeqCst);
            }
            // Then wait for every running call to leave the handle.
            let mut calls = h.calls.lock().unwrap_or_else(|p| p.into_inner());
            while *calls > 0 {
                calls = h.idle.wait(calls).unwrap_or_else(|p| p.into_inner());
            }
            drop(calls);
            // SAFETY: came from Box::into_raw in stunfwd_engine_start; no call uses it
            // any more and none can start (`freeing`).
            drop(unsafe { Box::from_raw(ptr as *mut Handle) });
        };
        if on_event_thread || crate::log::in_log_callback() {
            // Waiting here could wait for ourselves: another thread may be inside a call
            // (e.g. `stop`, which joins this event thread), or this logging thread may
            // be inside a call on this engine. A helper thread waits instead.
            h.engine.stop_in_background(Duration::from_secs(2), release);
        } else {
            h.engine.stop(Duration::from_secs(2));
            release();
        }
    });
}
