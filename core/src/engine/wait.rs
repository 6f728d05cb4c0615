//! Waiting for the tunnel: [`Engine::wait_connected`], and [`WaitCancel`], which ends
//! such a wait early from another thread (a host's Ctrl-C, an aborted promise).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::shared::Shared;
use super::Engine;
use crate::error::{Error, Result};
use crate::status::State;
use crate::sync::lock;

/// Longest a blocked wait sleeps before it looks again (a safety net: state changes
/// and cancellations wake it at once).
const RECHECK: Duration = Duration::from_millis(100);

/// Ends blocked [`Engine::wait_connected_with`] calls early, from any thread: they
/// return [`Error::Cancelled`]. Clones share one token; once cancelled it stays
/// cancelled, so make a new one per wait that may be cancelled on its own.
#[derive(Clone, Default)]
pub struct WaitCancel {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    /// The engines of the waits blocked on this token, by wait, so that `cancel` can
    /// wake them. Locked only to add, remove or copy the list, never while waiting.
    waiting: Mutex<Vec<(u64, Weak<Shared>)>>,
    next_wait: AtomicU64,
    poll: Option<Poll>,
}

/// A check run while a wait blocks, for hosts that can only look for cancellation
/// themselves (Python's signal handlers run only when the waiting thread asks).
struct Poll {
    every: Duration,
    cancelled: Box<dyn Fn() -> bool + Send + Sync>,
}

impl fmt::Debug for WaitCancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitCancel")
            .field("cancelled", &self.is_cancelled())
            .field("polled", &self.inner.poll.is_some())
            .finish()
    }
}

impl WaitCancel {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token that a blocked wait also polls: it calls `cancelled` on the waiting
    /// thread about every `every` (at least every 100 ms), without holding any engine
    /// lock, and returns [`Error::Cancelled`] once it says true. For a host that must
    /// run code on the waiting thread to notice a cancellation, e.g. Python checking
    /// for Ctrl-C.
    pub fn polling(every: Duration, cancelled: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        WaitCancel {
            inner: Arc::new(Inner {
                poll: Some(Poll {
                    every: every.clamp(Duration::from_millis(1), RECHECK),
                    cancelled: Box::new(cancelled),
                }),
                ..Inner::default()
            }),
        }
    }

    /// Cancels: every wait blocked on this token returns [`Error::Cancelled`] now, and
    /// every later wait with it at once.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        let waiting: Vec<Weak<Shared>> = lock(&self.inner.waiting)
            .iter()
            .map(|(_, w)| w.clone())
            .collect();
        for shared in waiting.iter().filter_map(Weak::upgrade) {
            // Taking the state lock orders this after the waiter's check of the flag:
            // it is either before that check (and sees the flag) or already waiting.
            drop(lock(&shared.state.state));
            shared.state.cv.notify_all();
        }
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// How long a wait with this token may sleep between two looks.
    fn recheck(&self) -> Duration {
        self.inner.poll.as_ref().map_or(RECHECK, |p| p.every)
    }

    /// Runs the poll, if any; it cancels the token when it says so.
    fn poll(&self) {
        if let Some(poll) = &self.inner.poll {
            if !self.is_cancelled() && (poll.cancelled)() {
                self.inner.cancelled.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Registers a wait on `shared`'s state, so that `cancel` wakes it, until the
    /// returned guard drops.
    fn register(&self, shared: &Arc<Shared>) -> Registered<'_> {
        let id = self.inner.next_wait.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.waiting).push((id, Arc::downgrade(shared)));
        Registered { token: self, id }
    }
}

struct Registered<'a> {
    token: &'a WaitCancel,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.token.inner.waiting).retain(|(id, _)| *id != self.id);
    }
}

impl Engine {
    /// Blocks until the tunnel is up (returns the `Connected` state), the engine
    /// stops or fails (error), or `timeout` passes (`Error::Timeout`, or
    /// `Error::PeerAuth` when every offer of the peer failed authentication).
    pub fn wait_connected(&self, timeout: Duration) -> Result<State> {
        self.wait_connected_with(timeout, &WaitCancel::new())
    }

    /// [`Engine::wait_connected`] that another thread can end early: it returns
    /// [`Error::Cancelled`] as soon as `cancel` (or [`Engine::cancel_waits`]) cancels.
    pub fn wait_connected_with(&self, timeout: Duration, cancel: &WaitCancel) -> Result<State> {
        let Some(shared) = self.live() else {
            return Err(Error::Stopped);
        };
        let ours = lock(&self.waits).clone();
        let _woken = (cancel.register(&shared), ours.register(&shared));
        let deadline = Instant::now().checked_add(timeout);
        loop {
            {
                let s = lock(&shared.state.state);
                if s.is_connected() {
                    return Ok(s.clone());
                }
                if *s == State::Stopped {
                    return Err(Error::Stopped);
                }
                if let State::Failed { reason } = &*s {
                    let failure = lock(&shared.failure).clone();
                    return Err(failure.unwrap_or_else(|| Error::Tunnel(reason.clone())));
                }
                if cancel.is_cancelled() || ours.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let left =
                    deadline.map_or(RECHECK, |d| d.saturating_duration_since(Instant::now()));
                if left.is_zero() {
                    let state = s.clone();
                    drop(s);
                    return Err(not_connected(&shared, timeout, &state));
                }
                let nap = left.min(cancel.recheck());
                drop(shared.state.cv.wait_timeout(s, nap));
            }
            // Outside the state lock: a poll may wait for a host's lock (Python's GIL)
            // whose holder may be asking the engine for its state.
            cancel.poll();
        }
    }

    /// Cancels every wait blocked in [`Engine::wait_connected`] or
    /// [`Engine::wait_connected_with`] on this engine now: they return
    /// [`Error::Cancelled`]. Waits that start afterwards are not affected.
    pub fn cancel_waits(&self) {
        let old = std::mem::take(&mut *lock(&self.waits));
        old.cancel();
    }
}

/// Why a wait of `timeout` ended unconnected in `state`.
fn not_connected(shared: &Shared, timeout: Duration, state: &State) -> Error {
    let last = lock(&shared.last_error).clone();
    // Still waiting because every offer we read was rejected: say so (a wrong
    // secret, a tampering rendezvous), not just "timed out".
    if let Some(Error::PeerAuth(reason)) = lock(&shared.rejected).clone() {
        if !matches!(state, State::Punching) {
            return Error::PeerAuth(format!(
                "not connected after {timeout:?} (state: {}): {reason}",
                state.name()
            ));
        }
    }
    match (state, last) {
        // The last attempt failed on a certificate check (see `Attempt::AuthFailed`).
        (State::Reconnecting { reason, .. }, _)
            if shared.auth_failed.load(std::sync::atomic::Ordering::Relaxed) =>
        {
            Error::PeerAuth(reason.clone())
        }
        (State::Signaling, last) if lock(&shared.peer).offer_id().is_none() => {
            Error::Timeout(format!(
                "not connected after {timeout:?}; state: signaling; no valid offer from the {} peer yet: it is \
                 not running, or it uses another room, secret or rendezvous URL (with a \
                 secret, peers meet in a mailbox named after room and secret, so peers with \
                 different secrets never see each other){}",
                shared.role.peer(),
                last.map(|l| format!("; last error: {l}"))
                    .unwrap_or_default()
            ))
        }
        (_, Some(last)) => Error::Timeout(format!(
            "not connected after {timeout:?}; state: {state}; last error: {last}"
        )),
        _ => Error::Timeout(format!("not connected after {timeout:?}; state: {state}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polled_token_cancels_when_its_check_says_so() {
        let asked = Arc::new(AtomicU64::new(0));
        let counter = asked.clone();
        let token = WaitCancel::polling(Duration::from_millis(5), move || {
            counter.fetch_add(1, Ordering::SeqCst) >= 2
        });
        assert_eq!(token.recheck(), Duration::from_millis(5));
        token.poll();
        token.poll();
        assert!(!token.is_cancelled());
        token.poll();
        assert!(token.is_cancelled());
        // Once cancelled, the check is not asked again.
        token.poll();
        assert_eq!(asked.load(Ordering::SeqCst), 3);
        assert_eq!(WaitCancel::new().recheck(), RECHECK);
    }

    #[test]
    fn clones_share_the_cancellation() {
        let token = WaitCancel::new();
        let other = token.clone();
        assert!(!other.is_cancelled());
        token.cancel();
        assert!(other.is_cancelled());
    }
}
