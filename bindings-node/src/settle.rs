//! Promises settled from helper threads, and the bookkeeping of a `stop()` that several
//! callers may await at once (the stopping itself is the core's).

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
    settle_then(deferred, result, |_| {});
}

/// [`settle`], running `done` on the main thread first (to let go of JavaScript
/// values the work needed).
fn settle_then<T: ToNapiValue + Send + 'static>(
    deferred: Deferred<T>,
    result: std::result::Result<T, Failure>,
    done: impl FnOnce(&Env) + Send + 'static,
) {
    deferred.resolve(Box::new(move |env| {
        done(&env);
        match result {
            Ok(value) => Ok(value),
            Err(failure) => Err(failure.to_rejection(&env)),
        }
    }));
}

/// Runs `work` on a new thread and settles the promise with its result, after `done`
/// has run on the main thread. Every promise made here settles: one left pending
/// would keep the process alive for good.
pub fn spawn<'env, T, F, D>(env: &'env Env, name: &str, work: F, done: D) -> Result<Object<'env>>
where
    T: ToNapiValue + Send + 'static,
    F: FnOnce() -> std::result::Result<T, Failure> + Send + 'static,
    D: FnOnce(&Env) + Send + 'static,
{
    let (deferred, promise) = promise::<T>(env)?;
    let slot = Arc::new(Mutex::new(Some((deferred, done))));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = work();
            if let Some((deferred, done)) = lock(&theirs).take() {
                settle_then(deferred, result, done);
            }
        });
    if let Err(e) = spawned {
        if let Some((deferred, done)) = lock(&slot).take() {
            let failure = coded("ERR_IO", format!("cannot start a thread: {e}"));
            settle_then(deferred, Err(Failure::from(failure)), done);
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
