//! The `SignalServer` class: the rendezvous (mailbox + STUN) server, hosted in the
//! Node.js process (the core's [`BlockingSignalServer`], on a small runtime of its own).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use napi::bindgen_prelude::{Object, Unknown};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{Env, Status, ValueType};
use napi_derive::napi;
use stunfwd_core::{BlockingSignalServer, SignalServerConfig};

use crate::args;
use crate::error::{invalid_arg, Failure, NapiExt, Result};
use crate::settle::{self, Lifecycle, StopTurn};

/// Default of `stop(timeoutMs)`.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Never called: holding it keeps the Node.js process alive while the server runs.
type KeepAlive = ThreadsafeFunction<(), (), (), Status, false>;

/// A rendezvous server (HTTP mailbox plus, optionally, a STUN responder on UDP) running
/// inside this process. Engines use its `url` as `signalUrl` and its `stunAddr` in
/// `stunServers`.
///
/// A running server keeps the Node.js process alive, like a listening `net.Server`;
/// once `stop()` has resolved it no longer does.
#[napi]
pub struct SignalServer {
    server: Arc<BlockingSignalServer>,
    keep_alive: Arc<Mutex<Option<KeepAlive>>>,
    life: Arc<Lifecycle>,
}

#[napi]
impl SignalServer {
    /// Starts a server and resolves with it once it listens. `options.http` is the HTTP
    /// address (default `127.0.0.1:0`, any free port); `options.stun` the STUN
    /// responder's UDP address (default `127.0.0.1:0`; `null` or `false` for none).
    /// Rejects with `ERR_ADDR_IN_USE` (names the port), `ERR_CONFIG` for an address
    /// that does not parse, `ERR_INVALID_ARG`.
    #[napi(
        ts_args_type = "options?: { http?: string, stun?: string | null | false }",
        ts_return_type = "Promise<SignalServer>"
    )]
    pub fn start<'env>(env: &'env Env, options: Option<Unknown>) -> Result<Object<'env>> {
        settle::or_reject(env, Self::start_inner(env, options))
    }

    /// The mailbox URL engines use as `signalUrl`, e.g. `http://127.0.0.1:41234/`.
    #[napi(getter)]
    pub fn url(&self) -> String {
        self.server.url().to_owned()
    }

    /// The HTTP listen address, `host:port`.
    #[napi(getter)]
    pub fn http_addr(&self) -> String {
        self.server.http_addr().to_string()
    }

    /// The STUN responder's address, `host:port`, for `stunServers`; `null` when the
    /// server runs none.
    #[napi(getter)]
    pub fn stun_addr(&self) -> Option<String> {
        self.server.stun_addr().map(|a| a.to_string())
    }

    /// Stops within about `timeoutMs` (default 1000): answers pending long-polls, closes
    /// the sockets. Resolves once stopped; from then on the server does not keep the
    /// process alive. Calling it again is harmless.
    #[napi(ts_args_type = "timeoutMs?: number", ts_return_type = "Promise<void>")]
    pub fn stop<'env>(&self, env: &'env Env, timeout_ms: Option<Unknown>) -> Result<Object<'env>> {
        settle::or_reject(env, self.stop_inner(env, timeout_ms))
    }
}

impl SignalServer {
    fn start_inner<'env>(env: &'env Env, options: Option<Unknown>) -> Result<Object<'env>> {
        let defaults = SignalServerConfig::default();
        let options: Option<Object> = match options.as_ref() {
            None => None,
            Some(v) if args::is_nullish(v) => None,
            Some(v) if v.get_type().js()? == ValueType::Object => {
                // SAFETY: checked to be an object.
                Some(unsafe { v.cast() }.js()?)
            }
            Some(v) => {
                return Err(invalid_arg(format!(
                    "`options` must be an object such as {{ http: '127.0.0.1:0', stun: '127.0.0.1:0' }}, got {}",
                    args::kind(v)
                )))
            }
        };
        let http =
            args::socket_addr(options.as_ref(), "http", Some(defaults.http))?.ok_or_else(|| {
                invalid_arg("`http` cannot be turned off; give an address such as '127.0.0.1:0'")
            })?;
        let stun = args::socket_addr(options.as_ref(), "stun", defaults.stun)?;
        let config = SignalServerConfig {
            http,
            stun,
            ..defaults
        };
        // Created here, on the main thread; referenced from now until stop.
        let noop = env
            .create_function_from_closure::<(), (), _>("stunfwdKeepAlive", |_| Ok(()))
            .js()?;
        let keep_alive: KeepAlive = noop
            .build_threadsafe_function::<()>()
            .callee_handled::<false>()
            .build()
            .js()?;
        let start = move || {
            // On failure `keep_alive` is dropped with this closure, so nothing is left
            // holding the process.
            BlockingSignalServer::start(config)
                .map(|server| SignalServer {
                    server: Arc::new(server),
                    keep_alive: Arc::new(Mutex::new(Some(keep_alive))),
                    life: Arc::new(Lifecycle::default()),
                })
                .map_err(Failure::from)
        };
        settle::spawn(env, "stunfwd-signal-start", start, |_| {})
    }

    fn stop_inner<'env>(
        &self,
        env: &'env Env,
        timeout_ms: Option<Unknown>,
    ) -> Result<Object<'env>> {
        let timeout = args::timeout_ms(timeout_ms.as_ref(), "`timeoutMs`", DEFAULT_STOP_TIMEOUT)?;
        let (deferred, promise) = settle::promise::<()>(env)?;
        match self.life.stop(deferred) {
            StopTurn::Joined => {}
            StopTurn::Done(deferred) => settle::resolve_all(vec![deferred]),
            StopTurn::Start => {
                let (keep_alive, life) = (self.keep_alive.clone(), self.life.clone());
                self.server.stop_in_background(timeout, move || {
                    lock(&keep_alive).take();
                    settle::resolve_all(life.finish());
                });
            }
        }
        Ok(promise)
    }
}

impl Drop for SignalServer {
    /// Garbage collection of a running server stops it, off the main thread.
    fn drop(&mut self) {
        if self.life.abandon() {
            let keep_alive = self.keep_alive.clone();
            self.server
                .stop_in_background(DEFAULT_STOP_TIMEOUT, move || {
                    lock(&keep_alive).take();
                });
        }
    }
}
