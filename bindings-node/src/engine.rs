//! The `Engine` class: one stunfwd peer.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use napi::bindgen_prelude::{
    FunctionCallContext, FunctionRef, JsObjectValue, JsValue, Object, This, Unknown,
};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Env, Status};
use napi_derive::napi;
use stunfwd_core as core;

use crate::abort;
use crate::args;
use crate::error::{core as core_error, invalid_arg, Failure, NapiExt, Result};
use crate::settle::{self, Deferred, Lifecycle, StopTurn};
use crate::types::{EngineEvent, EngineState, EngineStats, MappingInfo};

/// Default of `waitConnected(timeoutMs)`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default of `stop(timeoutMs)`.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The event names `on` accepts.
const EVENT_NAMES: [&str; 5] = ["state", "mapping", "error", "warning", "client"];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the engine's event thread sends to the main thread.
enum Msg {
    /// An event for the listeners.
    Event(EngineEvent),
    /// The engine has stopped; every event before this one has been delivered.
    Stopped(Vec<Deferred<()>>),
}

/// Queues messages to the main thread. Referenced (it keeps the process alive) from
/// start until stop, then released.
type EventQueue = ThreadsafeFunction<Msg, (), Option<EngineEvent>, Status, false>;

/// A JavaScript listener.
struct Listener {
    /// The event it is for; `None` for the `onEvent` callback of `start`, which gets
    /// every event as one object.
    event: Option<&'static str>,
    /// Removed after its first call.
    once: bool,
    function: FunctionRef<sys::napi_value, Unknown<'static>>,
}

type Listeners = Arc<Mutex<Vec<Arc<Listener>>>>;

/// State shared by the JavaScript object, the core's event callback and stop threads.
struct Link {
    /// Set once `start` has the engine (its first events may come before). Weak: the
    /// engine holds its event callback, which holds this.
    engine: OnceLock<Weak<core::Engine>>,
    queue: Mutex<Option<EventQueue>>,
    life: Lifecycle,
}

impl Link {
    fn send(&self, msg: Msg) {
        if let Some(queue) = lock(&self.queue).as_ref() {
            // Fails only while Node is tearing the environment down; nothing to tell then.
            let _ = queue.call(msg, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    /// Delivers the final message and releases the queue, so the stopped engine no
    /// longer keeps the process alive.
    fn close(&self, waiting: Vec<Deferred<()>>) {
        let queue = lock(&self.queue).take();
        match queue {
            Some(queue) => {
                let _ = queue.call(
                    Msg::Stopped(waiting),
                    ThreadsafeFunctionCallMode::NonBlocking,
                );
            }
            None => settle::resolve_all(waiting),
        }
    }
}

/// Runs on the main thread for every queued message: calls the listeners.
fn dispatch(ctx: FunctionCallContext, listeners: &Listeners) -> napi::Result<()> {
    let event: Unknown = ctx.get(0)?;
    if args::is_nullish(&event) {
        return Ok(());
    }
    // SAFETY: every non-null message is an `EngineEvent`, i.e. an object.
    let object: Object = unsafe { event.cast() }?;
    let name: String = object.get_named_property("type")?;
    let payload: Unknown = object.get_named_property(&name)?;
    let targets: Vec<Arc<Listener>> = {
        let mut list = lock(listeners);
        let targets: Vec<Arc<Listener>> = list
            .iter()
            .filter(|l| l.event.is_none_or(|e| e == name))
            .cloned()
            .collect();
        list.retain(|l| !(l.once && targets.iter().any(|t| Arc::ptr_eq(t, l))));
        targets
    };
    for listener in targets {
        let function = listener.function.borrow_back(ctx.env)?;
        let arg = match listener.event {
            None => event.raw(),
            Some(_) => payload.raw(),
        };
        // A listener that throws ends the dispatch; Node reports it as an uncaught
        // exception, as it does for a throwing EventEmitter listener.
        function.call(arg)?;
    }
    Ok(())
}

/// One stunfwd peer: joins a room on the rendezvous server, punches through the NATs
/// and forwards the mapped ports through an encrypted QUIC tunnel.
///
/// A running engine keeps the Node.js process alive, like a listening server; once
/// `stop()` has resolved it no longer does.
#[napi]
pub struct Engine {
    engine: Arc<core::Engine>,
    link: Arc<Link>,
    listeners: Listeners,
}

#[napi]
impl Engine {
    /// Validates `config` (an object or a JSON string with the keys of the stunfwd config
    /// file: `mode`, `room`, `secret`, `signalUrl`, `stunServers`, `mappings`, `bind`,
    /// ...), binds the tunnel socket and every mapping, and starts connecting in the
    /// background. Returns at once; watch `state` events or await `waitConnected()`.
    ///
    /// `onEvent`, if given, receives every event (`{ type: 'state', state }`,
    /// `{ type: 'mapping', mapping }`, `{ type: 'error', error }`,
    /// `{ type: 'warning', warning }`, and on the server side
    /// `{ type: 'client', client }`) from the first
    /// state change on. Listeners added with `on()` right after `start` see every
    /// event too: events are delivered on later turns of the event loop.
    ///
    /// Throws `ERR_CONFIG` (the message names the key, the value and what is valid),
    /// `ERR_ADDR_IN_USE` (names the port), `ERR_IO` or `ERR_INVALID_ARG`.
    #[napi(
        factory,
        ts_args_type = "config: Record<string, unknown> | string, onEvent?: (event: EngineEvent) => void"
    )]
    pub fn start(env: Env, config: Unknown, on_event: Option<Unknown>) -> Result<Engine> {
        let config = args::config(&env, &config)?;
        let listeners: Listeners = Arc::new(Mutex::new(Vec::new()));
        if let Some(callback) = on_event.as_ref().filter(|v| !args::is_nullish(v)) {
            let function = args::function(callback, "`onEvent`")?;
            lock(&listeners).push(Arc::new(Listener {
                event: None,
                once: false,
                function: function.create_ref().js()?,
            }));
        }
        let dispatcher = {
            let listeners = listeners.clone();
            env.create_function_from_closure::<Option<EngineEvent>, (), _>(
                "stunfwdDispatch",
                move |ctx| dispatch(ctx, &listeners),
            )
            .js()?
        };
        let queue: EventQueue = dispatcher
            .build_threadsafe_function::<Msg>()
            .callee_handled::<false>()
            .build_callback(|ctx| match ctx.value {
                Msg::Event(event) => Ok(Some(event)),
                Msg::Stopped(waiting) => {
                    settle::resolve_all(waiting);
                    Ok(None)
                }
            })
            .js()?;
        let link = Arc::new(Link {
            engine: OnceLock::new(),
            queue: Mutex::new(Some(queue)),
            life: Lifecycle::default(),
        });
        let sink = link.clone();
        let started = core::Engine::start_with_events(config, move |event| {
            // Why the engine gave up is not in the event; the core keeps it.
            let failure = match event {
                core::Event::State {
                    state: core::State::Failed { .. },
                } => sink
                    .engine
                    .get()
                    .and_then(Weak::upgrade)
                    .and_then(|e| e.failure()),
                _ => None,
            };
            for e in EngineEvent::from_core(event, failure) {
                sink.send(Msg::Event(e));
            }
        });
        match started {
            Ok(engine) => {
                let engine = Arc::new(engine);
                let _ = link.engine.set(Arc::downgrade(&engine));
                Ok(Engine {
                    engine,
                    link,
                    listeners,
                })
            }
            Err(e) => {
                // Releases the queue: a failed start leaves nothing behind.
                lock(&link.queue).take();
                Err(core_error(&e))
            }
        }
    }

    /// Adds a mapping such as `"tcp:8080:22"`, `"tcp:0:127.0.0.1:22"` (port 0: any free
    /// port, see `mappings()`) or `"udp:5353:10.0.0.1:53"` (client mode). Binds its
    /// listener now and returns the mapping's id. Works before and after the tunnel is
    /// up.
    ///
    /// Throws `ERR_CONFIG` for a bad spec or a server-mode engine, `ERR_ADDR_IN_USE`,
    /// `ERR_STOPPED`.
    #[napi(ts_args_type = "spec: string")]
    pub fn add_mapping(&self, spec: Unknown) -> Result<i64> {
        let spec = args::string(&spec, "`spec` (a mapping such as \"tcp:8080:22\")")?;
        self.engine
            .add_mapping_str(&spec)
            .map(crate::types::id)
            .map_err(|e| core_error(&e))
    }

    /// Removes a mapping: closes its listener and its connections. Throws
    /// `ERR_NO_SUCH_MAPPING` for an unknown id.
    #[napi(ts_args_type = "id: number")]
    pub fn remove_mapping(&self, id: Unknown) -> Result<()> {
        let id = args::mapping_id(&id)?;
        self.engine.remove_mapping(id).map_err(|e| core_error(&e))
    }

    /// The registered mappings, with the ports they actually listen on.
    #[napi]
    pub fn mappings(&self) -> Vec<MappingInfo> {
        self.engine
            .mappings()
            .iter()
            .map(MappingInfo::from)
            .collect()
    }

    /// The current state's name: `starting`, `discovering`, `signaling`, `punching`,
    /// `connected`, `reconnecting`, `stopped` or `failed`. `stats().state` has the
    /// details.
    #[napi(
        getter,
        ts_return_type = "'starting' | 'discovering' | 'signaling' | 'punching' | 'connected' | 'reconnecting' | 'stopped' | 'failed'"
    )]
    pub fn state(&self) -> String {
        self.engine.state().name().to_owned()
    }

    /// The tunnel socket's local address, `host:port`. On a server, the engine's own
    /// socket; each client's tunnel has a socket of its own (`stats().clients`).
    #[napi(getter)]
    pub fn local_addr(&self) -> String {
        self.engine.local_addr().to_string()
    }

    /// A snapshot of the engine's figures: state, path, peer, traffic per mapping and in
    /// total, connect timings, counters. Once stopped, the final figures.
    #[napi]
    pub fn stats(&self) -> EngineStats {
        (&self.engine.stats()).into()
    }

    /// Resolves with the `connected` state once the tunnel is up (at once if it is).
    /// Rejects with `ERR_TIMEOUT` after `timeoutMs` (default 30000; the message says
    /// the state and the last error), `ERR_PEER_AUTH` when the peer's offer failed
    /// authentication (wrong secret), `ERR_STOPPED` when the engine stops first, the
    /// reason it gave up when it fails for good (e.g. `ERR_NO_PATH`), or
    /// `ERR_CANCELLED` when `options.signal` (an `AbortSignal`) aborts the wait (the
    /// engine keeps running).
    #[napi(
        ts_args_type = "timeoutMs?: number, options?: { signal?: AbortSignal }",
        ts_return_type = "Promise<EngineState>"
    )]
    pub fn wait_connected<'env>(
        &self,
        env: &'env Env,
        timeout_ms: Option<Unknown>,
        options: Option<Unknown>,
    ) -> Result<Object<'env>> {
        settle::or_reject(env, self.wait_connected_inner(env, timeout_ms, options))
    }

    /// Stops gracefully within about `timeoutMs` (default 2000): tells the peer, closes
    /// listeners and connections, leaves the room. Resolves once everything has
    /// stopped and the last event (state `stopped`) has been delivered; from then on
    /// the engine does not keep the process alive. Calling it again is harmless and
    /// resolves when the first call does.
    #[napi(ts_args_type = "timeoutMs?: number", ts_return_type = "Promise<void>")]
    pub fn stop<'env>(&self, env: &'env Env, timeout_ms: Option<Unknown>) -> Result<Object<'env>> {
        settle::or_reject(env, self.stop_inner(env, timeout_ms))
    }

    /// Calls `listener` for every `event`: `'state'` with an `EngineState`,
    /// `'mapping'` with a `MappingEvent`, `'error'` with an `Error` that has a `code`
    /// (a rejected peer offer, `ERR_PEER_AUTH`; giving up for good, e.g. `ERR_NO_PATH`),
    /// `'warning'` with a string (e.g. running without a secret), and on the server
    /// side `'client'` with a `ClientEvent` (one client's tunnel changed state).
    /// Listeners run on the main thread; unlike an EventEmitter, an `'error'` event
    /// without a listener is ignored (the engine keeps retrying). Returns the engine.
    #[napi(
        ts_generic_types = "K extends keyof EngineEvents",
        ts_args_type = "event: K, listener: (arg: EngineEvents[K]) => void",
        ts_return_type = "this"
    )]
    pub fn on<'env>(
        &self,
        this: This<'env>,
        event: Unknown,
        listener: Unknown,
    ) -> Result<Object<'env>> {
        self.add_listener(event, listener, false)?;
        Ok(this.object)
    }

    /// Like `on`, but the listener is removed after its first call.
    #[napi(
        ts_generic_types = "K extends keyof EngineEvents",
        ts_args_type = "event: K, listener: (arg: EngineEvents[K]) => void",
        ts_return_type = "this"
    )]
    pub fn once<'env>(
        &self,
        this: This<'env>,
        event: Unknown,
        listener: Unknown,
    ) -> Result<Object<'env>> {
        self.add_listener(event, listener, true)?;
        Ok(this.object)
    }

    /// Removes a listener added with `on` or `once` (the most recently added one if it
    /// was added several times). Returns the engine.
    #[napi(
        ts_generic_types = "K extends keyof EngineEvents",
        ts_args_type = "event: K, listener: (arg: EngineEvents[K]) => void",
        ts_return_type = "this"
    )]
    pub fn off<'env>(
        &self,
        env: &Env,
        this: This<'env>,
        event: Unknown,
        listener: Unknown,
    ) -> Result<Object<'env>> {
        let event = event_name(&event)?;
        let function = args::function(&listener, "`listener`")?;
        let mut list = lock(&self.listeners);
        let mut found = None;
        for (i, l) in list.iter().enumerate().rev() {
            if l.event == Some(event)
                && env
                    .strict_equals(l.function.borrow_back(env).js()?, function)
                    .js()?
            {
                found = Some(i);
                break;
            }
        }
        if let Some(i) = found {
            list.remove(i);
        }
        Ok(this.object)
    }

    fn add_listener(&self, event: Unknown, listener: Unknown, once: bool) -> Result<()> {
        let event = event_name(&event)?;
        let function = args::function(&listener, "`listener`")?;
        lock(&self.listeners).push(Arc::new(Listener {
            event: Some(event),
            once,
            function: function.create_ref().js()?,
        }));
        Ok(())
    }
}

impl Engine {
    fn wait_connected_inner<'env>(
        &self,
        env: &'env Env,
        timeout_ms: Option<Unknown>,
        options: Option<Unknown>,
    ) -> Result<Object<'env>> {
        let timeout =
            args::timeout_ms(timeout_ms.as_ref(), "`timeoutMs`", DEFAULT_CONNECT_TIMEOUT)?;
        let cancel = core::WaitCancel::new();
        let watch = match args::abort_signal(options.as_ref())? {
            Some(signal) => abort::watch(env, &signal, &cancel)?,
            None => None,
        };
        let engine = self.engine.clone();
        let wait = move || {
            engine
                .wait_connected_with(timeout, &cancel)
                .map(|s| EngineState::from(&s))
                .map_err(Failure::from)
        };
        let done = move |env: &Env| {
            if let Some(watch) = watch {
                watch.end(env);
            }
        };
        settle::spawn(env, "stunfwd-wait", wait, done)
    }

    fn stop_inner<'env>(
        &self,
        env: &'env Env,
        timeout_ms: Option<Unknown>,
    ) -> Result<Object<'env>> {
        let timeout = args::timeout_ms(timeout_ms.as_ref(), "`timeoutMs`", DEFAULT_STOP_TIMEOUT)?;
        let (deferred, promise) = settle::promise::<()>(env)?;
        match self.link.life.stop(deferred) {
            StopTurn::Joined => {}
            StopTurn::Done(deferred) => settle::resolve_all(vec![deferred]),
            StopTurn::Start => {
                let link = self.link.clone();
                self.engine
                    .stop_in_background(timeout, move || link.close(link.life.finish()));
            }
        }
        Ok(promise)
    }
}

fn event_name(value: &Unknown) -> Result<&'static str> {
    let name = args::string(
        value,
        "`event` ('state', 'mapping', 'error', 'warning' or 'client')",
    )?;
    EVENT_NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .ok_or_else(|| {
            invalid_arg(format!(
                "unknown event {name:?}; valid: 'state', 'mapping', 'error', 'warning', 'client'"
            ))
        })
}

impl Drop for Engine {
    /// Garbage collection of a running engine stops it, off the main thread.
    fn drop(&mut self) {
        if self.link.life.abandon() {
            let link = self.link.clone();
            self.engine
                .stop_in_background(DEFAULT_STOP_TIMEOUT, move || link.close(Vec::new()));
        }
    }
}

/// The payload type of each event name, for `on`, `once` and `off`.
#[napi(object, object_from_js = false)]
pub struct EngineEvents {
    /// The state changed.
    pub state: EngineState,
    /// A mapping was added or removed.
    pub mapping: crate::types::MappingEvent,
    /// A peer offer was rejected (`ERR_PEER_AUTH`) or the engine gave up for good
    /// (state `failed`; e.g. `ERR_NO_PATH`).
    #[napi(
        ts_type = "Error & {\n/** The stable error code, e.g. `ERR_PEER_AUTH`. */\ncode: string\n}"
    )]
    pub error: Failure,
    /// Something to know that is not a failure (an engine without a `secret` says so
    /// once, at start).
    pub warning: String,
    /// Server side: one client's tunnel changed state.
    pub client: crate::types::ClientEvent,
}
