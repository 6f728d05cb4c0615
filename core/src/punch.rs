//! Hole punching: the async driver of [`crate::agent::Checklist`] (DESIGN §4 steps
//! 1–3). It sends the checks the list asks for on the tunnel socket, routes their
//! answers back to it, feeds it peer-reflexive addresses and time, and returns the pair
//! it nominates. Every decision (which checks, when, which pair) is the list's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

pub use crate::agent::checklist::MAX_CANDIDATES;
pub(crate) use crate::agent::checklist::{usable_candidates, Selected};
use crate::agent::checklist::{Checklist, ChecklistConfig, Transmit};
use crate::stun::client::{Response, StunAgent};
use crate::stun::message::{self, Tid};

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

impl Punch {
    /// Runs the checks. Returns the chosen pair, or `None` on timeout (or, with
    /// `keep_going`, when the timeout ends the session in any case).
    pub async fn run(
        self,
        agent: Arc<StunAgent>,
        mut prflx: mpsc::Receiver<SocketAddr>,
    ) -> Option<Selected> {
        let (tx, mut rx) = mpsc::channel::<Response>(256);
        let username = format!("{}:{}", self.peer_id, self.our_id);
        let now = || Instant::now().into_std();
        let mut list = Checklist::new(
            ChecklistConfig {
                remote: self.remote.clone(),
                timeout: self.timeout,
                keep_going: self.keep_going,
                direct: self.direct,
            },
            now(),
        );
        list.handle_timeout(now());
        let outcome = loop {
            while let Some(t) = list.poll_transmit() {
                self.send(&agent, &tx, &username, t).await;
            }
            if let Some(outcome) = list.outcome() {
                break outcome;
            }
            let Some(wake) = list.poll_timeout() else {
                break None;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(Instant::from_std(wake)) => list.handle_timeout(now()),
                Some(addr) = prflx.recv() => list.on_peer_reflexive(addr, now()),
                Some(r) = rx.recv() => {
                    let authentic = r.success && message::verify_integrity(&r.raw, &self.password);
                    list.on_response(r.tid, r.from, authentic, now());
                }
            }
        };
        let all: Vec<Tid> = list.tids().copied().collect();
        agent.unregister(&all);
        outcome
    }

    async fn send(
        &self,
        agent: &StunAgent,
        tx: &mpsc::Sender<Response>,
        username: &str,
        t: Transmit,
    ) {
        agent.register(t.tid, tx.clone());
        let request = message::check_request(t.tid, username, &self.password);
        let sent = if self.direct {
            agent.socket().send_direct(&request, t.to).await
        } else {
            agent.socket().send_to(&request, t.to).await
        };
        if let Err(e) = sent {
            tracing::trace!(addr = %t.to, error = %e, "check send failed");
        }
    }
}
