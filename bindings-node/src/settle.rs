//! Promises settled from helper threads, and the bookkeeping of a `stop()` that several
//! callers may await at once.

use std::sync::{Arc, Mutex, MutexGuard};

use napi::bindgen_prelude::{Object, ToNapiValue};
use napi::{Env, JsDeferred};

use crate::error::{coded, Failure, NapiExt, Result};

/// What a deferred runs on the main thread to produce its value.
pub type Resolver<T> = Box<dyn FnOnce(Env) -> napi::Result<T> + Send>;

/// A promise's resolve/reject side, usable from any thread.
pub type Deferred<T> = JsDeferred<T, Resolver<T>>;

/// A new promise and the handle that settles it.
pub fn promise<T: ToNapiValue + 'static>(env: &Env) -> Result<(Deferred<T>, Object<'_>)> {
    env.create_deferred::<T, Resolver<T>>().js()
}

/// Settles `deferred` with `result`; an error becomes a JavaScript `Error` with `code`.
pub fn settle<T: ToNapiValue + Send + 'static>(
    deferred: Deferred<T>,
    result: std::result::Result<T, Failure>,
) {
    deferred.resolve(Box::new(move |env| match result {
        Ok(value) => Ok(value),
        Err(failure) => Err(failure.to_rejection(&env)),
    }));
}

/// Runs `work` on a new thread and settles the promise with its result. Every promise
/// made here settles: one left pending would keep the process alive for good.
pub fn spawn<'env, T, F>(env: &'env Env, name: &str, work: F) -> Result<Object<'env>>
where
    T: ToNapiValue + Send + 'static,
    F: FnOnce() -> std::result::Result<T, Failure> + Send + 'static,
{
    let (deferred, promise) = promise::<T>(env)?;
    let slot = Arc::new(Mutex::new(Some(deferred)));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = work();
            if let Some(deferred) = lock(&theirs).take() {
                settle(deferred, result);
            }
        });
    if let Err(e) = spawned {
        if let Some(deferred) = lock(&slot).take() {
            settle(
                deferred,
                Err(Failure::from(coded(
                    "ERR_IO",
                    format!("cannot start a thread: {e}"),
                ))),
            );
        }
    }
    Ok(promise)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Phase {
    Running,
    Stopping(Vec<Deferred<()>>),
    Stopped,
}

/// The life of something with an asynchronous `stop()`: the first call starts
/// stopping, later calls wait for the same stop, calls after it resolve at once.
pub struct Lifecycle {
    phase: Mutex<Phase>,
}

/// What a `stop()` call has to do.
pub enum StopTurn {
    /// Start stopping; settle the promise through [`Lifecycle::finish`].
    Start,
    /// Another call is stopping; the promise settles with it.
    Joined,
    /// Already stopped; settle the promise now.
    Done(Deferred<()>),
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: Mutex::new(Phase::Running),
        }
    }
}

impl Lifecycle {
    /// Registers a `stop()` call's promise.
    pub fn stop(&self, deferred: Deferred<()>) -> StopTurn {
        let mut phase = lock(&self.phase);
        match &mut *phase {
            Phase::Running => {
                *phase = Phase::Stopping(vec![deferred]);
                StopTurn::Start
            }
            Phase::Stopping(waiting) => {
                waiting.push(deferred);
                StopTurn::Joined
            }
            Phase::Stopped => StopTurn::Done(deferred),
        }
    }

    /// Marks the stop done; returns the promises to resolve.
    pub fn finish(&self) -> Vec<Deferred<()>> {
        match std::mem::replace(&mut *lock(&self.phase), Phase::Stopped) {
            Phase::Stopping(waiting) => waiting,
            _ => Vec::new(),
        }
    }

    /// Marks it stopped without any waiting promise (e.g. dropped without `stop()`);
    /// returns true if it was running.
    pub fn abandon(&self) -> bool {
        let mut phase = lock(&self.phase);
        let was_running = matches!(*phase, Phase::Running);
        if was_running {
            *phase = Phase::Stopped;
        }
        was_running
    }
}

/// Resolves `stop()` promises.
pub fn resolve_all(waiting: Vec<Deferred<()>>) {
    for d in waiting {
        d.resolve(Box::new(|_| Ok(())));
    }
}

/// The result of a Promise-returning function: a failure before the promise exists
/// (a bad argument) becomes a rejected promise, as in Node's own promise APIs.
pub fn or_reject<'env>(env: &'env Env, result: Result<Object<'env>>) -> Result<Object<'env>> {
    match result {
        Ok(promise) => Ok(promise),
        Err(e) => {
            let (deferred, promise) = promise::<()>(env)?;
            settle(deferred, Err(Failure::from(e)));
            Ok(promise)
        }
    }
}

/// Runs `work` on a new thread named `name`; if no thread can be started, runs it
/// here (blocking the caller, but the work still gets done and its promises settle).
pub fn background<F: FnOnce() + Send + 'static>(name: &str, work: F) {
    let slot = Arc::new(Mutex::new(Some(work)));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if let Some(work) = lock(&theirs).take() {
                work();
            }
        });
    if spawned.is_err() {
        if let Some(work) = lock(&slot).take() {
            work();
        }
    }
}
