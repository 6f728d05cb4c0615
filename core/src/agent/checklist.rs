//! The connectivity-check list (DESIGN §4 steps 1–3), without I/O.
//!
//! Both peers first send each candidate of the other one *opener*: a check with a
//! small IP TTL ([`Opener::ttl`], in [`ChecklistConfig::opener`]) that opens our own
//! NAT's mapping toward it and expires before the peer's router. Full checks start
//! [`OPENER_LEAD`] later, by when the peer has sent its openers too, so no check of
//! ours reaches the peer's router before the peer has sent toward us. (A check that
//! did would be delivered to that router itself; a Linux router without an input
//! filter then keeps a conntrack entry for it and moves the peer's own packets to
//! another port, and the punch fails for as long as the entry is refreshed.) An
//! opener that does reach the peer (a nearby peer) and is answered succeeds like any
//! check.
//!
//! Then both peers send authenticated STUN Binding requests to every candidate of the
//! other, gently: a round every 50 ms at first, slowing by ×1.3 per round to one round
//! per 500 ms (plus up to 20 % jitter, so two peers' rounds drift apart). A pair
//! succeeds when an authentic answer comes back. Candidates are ranked by their position
//! in the peer's offer (host candidates first, then server-reflexive, then
//! peer-reflexive ones learned from the peer's own checks): the top candidate is
//! nominated at once, a lower one after [`GRACE`] if nothing better succeeded.
//!
//! [`Checklist`] is driven like quinn's `Connection`: feed it time
//! ([`Checklist::handle_timeout`]), answers ([`Checklist::on_response`]) and learned
//! addresses ([`Checklist::on_peer_reflexive`]); take the checks to send from
//! [`Checklist::poll_transmit`], sleep until [`Checklist::poll_timeout`], and stop when
//! [`Checklist::outcome`] says so. `crate::punch` is its async driver.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::stun::message::Tid;

/// Most candidates we will check (bounds the conntrack entries one connect creates).
pub const MAX_CANDIDATES: usize = 12;
/// Most peer-reflexive candidates added on top of the offered ones.
pub const MAX_PEER_REFLEXIVE: usize = 4;
/// How long a lower-priority success waits for a better pair to succeed.
pub const GRACE: Duration = Duration::from_millis(150);
/// The gap between the first two rounds of checks.
pub const FIRST_INTERVAL: Duration = Duration::from_millis(50);
/// The longest gap between two rounds.
pub const MAX_INTERVAL: Duration = Duration::from_millis(500);
/// How much longer each round's gap is than the one before.
pub const BACKOFF_FACTOR: f32 = 1.3;
/// How long after the openers the first full round goes out: long enough for the
/// peer, which learns our offer within about one rendezvous round trip of us learning
/// its, to have sent its openers.
pub const OPENER_LEAD: Duration = Duration::from_millis(100);

/// What a check list is asked to do.
#[derive(Debug, Clone)]
pub struct ChecklistConfig {
    /// The peer's candidates in priority order.
    pub remote: Vec<SocketAddr>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Keep checking after a success (the server role keeps its NAT open until the
    /// client's QUIC handshake arrives); the outcome is then decided at the timeout.
    pub keep_going: bool,
    /// Probe the direct path only: count only answers that come straight back from the
    /// address checked (the driver also sends these checks straight, never relayed).
    pub direct: bool,
    /// Open with one check per candidate at a small IP TTL, and start the full
    /// rounds a lead later; `None` starts the full rounds at once.
    pub opener: Option<Opener>,
}

/// How a check list opens: its openers' TTL and the lead before the full rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opener {
    /// IP TTL (IPv6: hop limit) of the openers.
    pub ttl: u8,
    /// How long after the openers the first full round goes out ([`OPENER_LEAD`] at
    /// first; longer after failed attempts, see `opener` in the schedule module).
    pub lead: Duration,
}

/// A succeeded pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// The peer address that answered.
    pub remote: SocketAddr,
    /// Its index in the (possibly extended) candidate list.
    pub index: usize,
}

/// One connectivity check to send: a Binding request with transaction id `tid` to
/// `to`, candidate number `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The transaction id to put in the request (and to route its answer back).
    pub tid: Tid,
    /// Where to send it.
    pub to: SocketAddr,
    /// The candidate's index.
    pub index: usize,
    /// Send with this IP TTL (an opener); `None`: the socket's normal TTL.
    pub ttl: Option<u8>,
}

/// The state of one punching session: which checks are out, which pairs succeeded,
/// when the next round is due.
#[derive(Debug)]
pub struct Checklist {
    remote: Vec<SocketAddr>,
    keep_going: bool,
    direct: bool,
    /// Openers still to send (at the first `handle_timeout`), with their TTL.
    openers: Option<u8>,
    /// When the list started.
    started: Instant,
    deadline: Instant,
    interval: Duration,
    next_round: Instant,
    tids: HashMap<Tid, usize>,
    successes: Vec<Selected>,
    first_success: Option<Instant>,
    outcome: Option<Option<Selected>>,
    transmits: VecDeque<Transmit>,
    rng: StdRng,
}

impl Checklist {
    /// A check list starting at `now`; the first round is due at once.
    pub fn new(config: ChecklistConfig, now: Instant) -> Self {
        Self::with_rng(config, now, StdRng::from_os_rng())
    }

    /// Like [`Checklist::new`] with a seeded random source (jitter, transaction
    /// ids), so tests are repeatable.
    pub fn with_seed(config: ChecklistConfig, now: Instant, seed: u64) -> Self {
        Self::with_rng(config, now, StdRng::seed_from_u64(seed))
    }

    fn with_rng(config: ChecklistConfig, now: Instant, rng: StdRng) -> Self {
        Checklist {
            remote: config.remote,
            keep_going: config.keep_going,
            direct: config.direct,
            openers: config.opener.map(|o| o.ttl),
            started: now,
            deadline: now + config.timeout,
            interval: FIRST_INTERVAL,
            next_round: now + config.opener.map_or(Duration::ZERO, |o| o.lead),
            tids: HashMap::new(),
            successes: Vec::new(),
            first_success: None,
            outcome: None,
            transmits: VecDeque::new(),
            rng,
        }
    }

    /// The candidates being checked, the learned peer-reflexive ones last.
    pub fn remote(&self) -> &[SocketAddr] {
        &self.remote
    }

    /// Every transaction id this list has sent (the driver unregisters them at the end).
    pub fn tids(&self) -> impl Iterator<Item = &Tid> {
        self.tids.keys()
    }

    /// The pairs that succeeded so far, in the order they did.
    pub fn successes(&self) -> &[Selected] {
        &self.successes
    }

    /// `Some(result)` once the session is over: the chosen pair, or `None` when no
    /// check succeeded in time.
    pub fn outcome(&self) -> Option<Option<Selected>> {
        self.outcome
    }

    /// The next check to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Checklist::handle_timeout`] must be called next (`None` once over).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        if self.openers.is_some() {
            // Due at once: the openers go out when the list starts.
            return Some(self.started);
        }
        let mut at = self.deadline.min(self.next_round);
        if let Some(first) = self.first_success {
            if !self.keep_going {
                at = at.min(first + GRACE);
            }
        }
        Some(at)
    }

    /// Advances the clock: gives up at the deadline, queues a round of checks when one
    /// is due, nominates a pair whose grace period has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if now >= self.deadline {
            self.outcome = Some(self.best());
            self.transmits.clear();
            return;
        }
        if let Some(ttl) = self.openers.take() {
            for index in 0..self.remote.len() {
                self.queue(index, Some(ttl));
            }
        }
        if now >= self.next_round {
            for index in 0..self.remote.len() {
                if self.succeeded(index) && !self.keep_going {
                    continue;
                }
                self.queue_check(index);
            }
            self.interval = self.interval.mul_f32(BACKOFF_FACTOR).min(MAX_INTERVAL);
            let jitter = self
                .rng
                .random_range(0..=self.interval.as_millis() as u64 / 5);
            self.next_round = now + self.interval + Duration::from_millis(jitter);
        }
        self.nominate(now);
    }

    /// An answer to transaction `tid` came from `from`; `authentic` when it is a
    /// success response whose MESSAGE-INTEGRITY checks out with the room key.
    /// Returns whether the transaction was one of ours.
    pub fn on_response(
        &mut self,
        tid: Tid,
        from: SocketAddr,
        authentic: bool,
        now: Instant,
    ) -> bool {
        let Some(&index) = self.tids.get(&tid) else {
            return false;
        };
        if self.outcome.is_some() || !authentic {
            return true;
        }
        // Direct probes count only what came straight back from the address checked
        // (an answer from elsewhere may have come through the relay). Otherwise the
        // pair checked is what worked: our request reached the peer there, even if its
        // answer left through another port of its NAT.
        if self.direct && from != self.remote[index] {
            return true;
        }
        if !self.succeeded(index) {
            tracing::debug!(remote = %self.remote[index], answered_from = %from, index, "pair succeeded");
            self.successes.push(Selected {
                remote: self.remote[index],
                index,
            });
            self.first_success.get_or_insert(now);
        }
        self.nominate(now);
        true
    }

    /// An authentic check from the peer came from `addr`: a peer-reflexive candidate
    /// when it is new, checked at once.
    pub fn on_peer_reflexive(&mut self, addr: SocketAddr, _now: Instant) {
        if self.outcome.is_some()
            || self.remote.contains(&addr)
            || self.remote.len() >= MAX_CANDIDATES + MAX_PEER_REFLEXIVE
        {
            return;
        }
        tracing::debug!(%addr, "peer-reflexive candidate");
        self.remote.push(addr);
        self.queue_check(self.remote.len() - 1);
    }

    fn queue_check(&mut self, index: usize) {
        self.queue(index, None);
    }

    fn queue(&mut self, index: usize, ttl: Option<u8>) {
        let tid: Tid = self.rng.random();
        self.tids.insert(tid, index);
        self.transmits.push_back(Transmit {
            tid,
            to: self.remote[index],
            index,
            ttl,
        });
    }

    fn succeeded(&self, index: usize) -> bool {
        self.successes.iter().any(|s| s.index == index)
    }

    fn best(&self) -> Option<Selected> {
        self.successes.iter().min_by_key(|s| s.index).copied()
    }

    fn nominate(&mut self, now: Instant) {
        if self.keep_going || self.outcome.is_some() {
            return;
        }
        if let Some(s) = choose(&self.successes, self.first_success, now) {
            self.outcome = Some(Some(s));
            self.transmits.clear();
        }
    }
}

/// The best (lowest index) success, if it is final: either the top candidate, or the
/// grace period since the first success has passed.
pub fn choose(
    successes: &[Selected],
    first_success: Option<Instant>,
    now: Instant,
) -> Option<Selected> {
    let best = successes.iter().min_by_key(|s| s.index)?;
    if best.index == 0 || first_success.is_some_and(|t| now.duration_since(t) >= GRACE) {
        Some(*best)
    } else {
        None
    }
}

/// Orders candidates for checking and drops duplicates and ones we cannot reach from a
/// socket bound to `local` (its family, or both from a dual-stack `[::]`; its scope);
/// at most [`MAX_CANDIDATES`].
pub fn usable_candidates(local: SocketAddr, remote: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for &c in remote {
        if !crate::socket::reaches(local, c) || c.port() == 0 || c.ip().is_unspecified() {
            continue;
        }
        // A socket bound to loopback can only reach loopback.
        if local.ip().is_loopback() && !c.ip().is_loopback() {
            continue;
        }
        if !out.contains(&c) {
            out.push(c);
        }
        if out.len() == MAX_CANDIDATES {
            break;
        }
    }
    out
}
