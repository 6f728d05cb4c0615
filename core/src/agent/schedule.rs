//! Timers the agent decides: the reconnect back-off, the relay-to-direct upgrade
//! probes, and the relay allocation's refresh (its keep-alive).

use std::time::Duration;

use super::checklist::{Opener, OPENER_LEAD};

/// Pause after a tunnel was lost before starting over (the peer notices too).
pub const AFTER_TUNNEL_LOST: Duration = Duration::from_millis(200);
/// The first retry waits this long; each failure doubles it.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The wait once `maxRetries` quick retries are used up.
pub const SETTLED_RETRY: Duration = Duration::from_secs(30);

/// The reconnect back-off: counts consecutive failed attempts and says how long to
/// wait before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    max_retries: u32,
}

impl Backoff {
    /// A back-off allowing `max_retries` quick (doubling) retries before settling.
    pub fn new(max_retries: u32) -> Self {
        Backoff {
            failures: 0,
            max_retries,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// An attempt failed: the wait before the next one.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        retry_delay(self.failures, self.max_retries)
    }

    /// An attempt connected, or the peer started over: the next failure waits the
    /// shortest time again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Back-off before attempt `n` (1-based) after failures: 0.5 s doubling per failure
/// (at most ×64), then 30 s once `max_retries` are used.
pub fn retry_delay(n: u32, max_retries: u32) -> Duration {
    if n > max_retries.max(1) {
        return SETTLED_RETRY;
    }
    FIRST_RETRY * (1u32 << (n.saturating_sub(1)).min(6))
}

/// While relayed, the direct candidates are probed again and again, further apart
/// each time: 2 s, 4 s, … at most 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeSchedule {
    wait: Duration,
}

impl Default for UpgradeSchedule {
    fn default() -> Self {
        UpgradeSchedule { wait: Self::FIRST }
    }
}

impl UpgradeSchedule {
    /// The first probe comes this long after the relayed tunnel is up.
    pub const FIRST: Duration = Duration::from_secs(2);
    /// The longest gap between probes.
    pub const MAX: Duration = Duration::from_secs(60);
    /// How long one round of probes may take.
    pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

    /// How long to wait before the next probe; each call doubles the next wait.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.wait;
        self.wait = (self.wait * 2).min(Self::MAX);
        wait
    }
}

/// How often a TURN allocation (and its permissions and channels) is refreshed: at
/// half its lifetime, between 1 s and 60 s, well before anything expires.
pub fn relay_refresh_every(lifetime: Duration) -> Duration {
    (lifetime / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The longest lead between openers and full checks.
pub const MAX_OPENER_LEAD: Duration = Duration::from_secs(1);

/// How the next punch opens, after `failed` consecutive failed punches: openers at
/// `ttl` (none when `None`), with a lead of [`OPENER_LEAD`] at first and four times
/// longer after each failure up to [`MAX_OPENER_LEAD`]. A failure with the short lead
/// most likely means the two peers started further apart than it (a slow rendezvous),
/// so repeating it would fail the same way.
pub fn opener(ttl: Option<u8>, failed: u32) -> Option<Opener> {
    let lead = OPENER_LEAD
        .saturating_mul(4u32.saturating_pow(failed.min(8)))
        .min(MAX_OPENER_LEAD);
    ttl.map(|ttl| Opener { ttl, lead })
}
