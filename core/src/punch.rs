//! Hole punching: ICE-style connectivity checks (DESIGN §4 steps 1–3).
//!
//! Both peers send authenticated STUN Binding requests (USERNAME `<their id>:<our id>`,
//! MESSAGE-INTEGRITY keyed by the room key) to every candidate of the other, gently:
//! every 50 ms at first, slowing by ×1.3 per round to one round per 500 ms. A pair
//! succeeds when an authentic answer comes back. Candidates are ranked by their position
//! in the peer's offer (host candidates first, then server-reflexive, then peer-reflexive
//! ones learned from the peer's own checks).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::stun::client::{Response, StunAgent};
use crate::stun::message::{self, Tid};

/// Most candidates we will check (bounds the conntrack entries one connect creates).
pub const MAX_CANDIDATES: usize = 12;
/// How long a lower-priority success waits for a better pair to succeed.
const GRACE: Duration = Duration::from_millis(150);

/// One punching session.
#[derive(Debug)]
pub(crate) struct Punch {
    /// Our offer id.
    pub our_id: String,
    /// The peer's offer id.
    pub peer_id: String,
    /// Short-term STUN password (the room key).
    pub password: String,
    /// The peer's candidates in priority order.
    pub remote: Vec<SocketAddr>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Keep checking after a success (the server role keeps its NAT open until the
    /// client's QUIC handshake arrives).
    pub keep_going: bool,
    /// Probe the direct path only: send straight (never through the relay) and count
    /// only answers that come straight back from the address checked.
    pub direct: bool,
}

/// A succeeded pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Selected {
    /// The peer address that answered.
    pub remote: SocketAddr,
    /// Its index in the (possibly extended) candidate list.
    pub index: usize,
}

/// Orders candidates for checking and drops duplicates and ones we cannot reach from a
/// socket of `local`'s family / scope.
pub(crate) fn usable_candidates(local: SocketAddr, remote: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for &c in remote {
        if c.is_ipv4() != local.is_ipv4() || c.port() == 0 || c.ip().is_unspecified() {
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

/// The best (lowest index) success, if it is final: either the top candidate, or the
/// grace period since the first success has passed.
pub(crate) fn choose(
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

impl Punch {
    /// Runs the checks. Returns the chosen pair, or `None` on timeout (or, with
    /// `keep_going`, when the timeout ends the session in any case).
    pub async fn run(
        mut self,
        agent: Arc<StunAgent>,
        mut prflx: mpsc::Receiver<SocketAddr>,
    ) -> Option<Selected> {
        let (tx, mut rx) = mpsc::channel::<Response>(256);
        let mut tids: HashMap<Tid, usize> = HashMap::new();
        let username = format!("{}:{}", self.peer_id, self.our_id);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut interval = Duration::from_millis(50);
        let mut next_round = tokio::time::Instant::now();
        let mut successes: Vec<Selected> = Vec::new();
        let mut first_success = None;
        let mut outcome = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep_until(next_round) => {
                    for (index, &addr) in self.remote.iter().enumerate() {
                        if successes.iter().any(|s| s.index == index) && !self.keep_going {
                            continue;
                        }
                        self.check(&agent, &tx, &mut tids, &username, index, addr).await;
                    }
                    interval = (interval.mul_f32(1.3)).min(Duration::from_millis(500));
                    let jitter = rand::random_range(0..=interval.as_millis() as u64 / 5);
                    next_round = tokio::time::Instant::now() + interval + Duration::from_millis(jitter);
                }
                Some(addr) = prflx.recv() => {
                    if !self.remote.contains(&addr) && self.remote.len() < MAX_CANDIDATES + 4 {
                        tracing::debug!(%addr, "peer-reflexive candidate");
                        self.remote.push(addr);
                        let index = self.remote.len() - 1;
                        self.check(&agent, &tx, &mut tids, &username, index, addr).await;
                    }
                }
                Some(r) = rx.recv() => {
                    let Some(&index) = tids.get(&r.tid) else { continue };
                    if !r.success || !message::verify_integrity(&r.raw, &self.password) {
                        continue;
                    }
                    if self.direct && r.from != self.remote[index] {
                        continue;
                    }
                    if !successes.iter().any(|s| s.index == index) {
                        tracing::debug!(remote = %self.remote[index], answered_from = %r.from, index, after = ?started.elapsed(), "pair succeeded");
                        successes.push(Selected { remote: self.remote[index], index });
                        first_success.get_or_insert_with(Instant::now);
                    }
                }
                _ = tokio::time::sleep(GRACE), if first_success.is_some() && !self.keep_going => {}
            }
            if !self.keep_going {
                if let Some(s) = choose(&successes, first_success, Instant::now()) {
                    outcome = Some(s);
                    break;
                }
            }
        }
        let all: Vec<Tid> = tids.keys().copied().collect();
        agent.unregister(&all);
        outcome.or_else(|| successes.iter().min_by_key(|s| s.index).copied())
    }

    async fn check(
        &self,
        agent: &StunAgent,
        tx: &mpsc::Sender<Response>,
        tids: &mut HashMap<Tid, usize>,
        username: &str,
        index: usize,
        addr: SocketAddr,
    ) {
        let tid = message::new_tid();
        agent.register(tid, tx.clone());
        tids.insert(tid, index);
        let request = message::check_request(tid, username, &self.password);
        let sent = if self.direct {
            agent.socket().send_direct(&request, addr).await
        } else {
            agent.socket().send_to(&request, addr).await
        };
        if let Err(e) = sent {
            tracing::trace!(%addr, error = %e, "check send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("literal")
    }

    #[test]
    fn candidates_filtered_and_deduplicated() {
        let local = a("0.0.0.0:4000");
        let got = usable_candidates(
            local,
            &[
                a("192.168.1.2:5000"),
                a("[::1]:5000"),
                a("192.168.1.2:5000"),
                a("203.0.113.9:6000"),
                a("0.0.0.0:1"),
            ],
        );
        assert_eq!(got, vec![a("192.168.1.2:5000"), a("203.0.113.9:6000")]);
        let lo = usable_candidates(
            a("127.0.0.1:4000"),
            &[a("10.0.0.2:5000"), a("127.0.0.1:5000")],
        );
        assert_eq!(lo, vec![a("127.0.0.1:5000")]);
        let many: Vec<SocketAddr> = (1..100)
            .map(|p| SocketAddr::from(([10, 0, 0, 1], p)))
            .collect();
        assert_eq!(usable_candidates(local, &many).len(), MAX_CANDIDATES);
    }

    #[test]
    fn prefers_top_candidate_and_waits_grace_for_better() {
        let t0 = Instant::now();
        let s = |index| Selected {
            remote: a("10.0.0.1:1"),
            index,
        };
        assert_eq!(choose(&[], None, t0), None);
        assert_eq!(choose(&[s(0)], Some(t0), t0), Some(s(0)));
        assert_eq!(choose(&[s(2)], Some(t0), t0), None);
        assert_eq!(choose(&[s(2), s(1)], Some(t0), t0 + GRACE), Some(s(1)));
    }
}
