//! Hole punching: the async driver of [`crate::agent::Checklist`] (DESIGN §4 steps
//! 1–3). It sends the checks the list asks for on the tunnel socket, routes their
//! answers back to it, feeds it peer-reflexive addresses and time, and returns the pair
//! it nominates. Every decision (which checks, when, which pair) is the list's.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

pub(crate) use crate::agent::checklist::ChecklistConfig;
pub use crate::agent::checklist::MAX_CANDIDATES;
pub(crate) use crate::agent::checklist::{usable_candidates, Selected};
use crate::agent::checklist::{Checklist, Transmit};
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
    /// What to check and how (the check list's own settings; with `direct`, checks are
    /// also sent straight, never through the relay).
    pub checks: ChecklistConfig,
    /// Send every check straight from our socket, never through our relay, even to a
    /// peer whose relayed packets have routed it there: each check tests the pair
    /// (our socket, that candidate). Off only under `relayPolicy: always`.
    pub straight: bool,
}

/// A check list whose transaction ids are unregistered from the STUN agent when it is
/// dropped.
struct Registered<'a> {
    agent: &'a StunAgent,
    list: Checklist,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let all: Vec<Tid> = self.list.tids().copied().collect();
        self.agent.unregister(&all);
    }
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
        // Unregistered however the session ends, also when it is dropped mid-way (the
        // server's punching is aborted once the tunnel arrives).
        let mut list = Registered {
            agent: &agent,
            list: Checklist::new(self.checks.clone(), now()),
        };
        let list = &mut list.list;
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
        let sent = if let Some(ttl) = t.ttl {
            agent.socket().send_opener(&request, t.to, ttl).await
        } else if self.checks.direct || self.straight {
            agent.socket().send_direct(&request, t.to).await
        } else {
            agent.socket().send_to(&request, t.to).await
        };
        if let Err(e) = sent {
            tracing::trace!(addr = %t.to, error = %e, "check send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::Runtime as _;
    use std::time::Duration;

    /// Review finding (#15): a punch that is dropped mid-way (the server's punching is
    /// aborted once the tunnel arrives) leaves no registered transaction behind.
    #[tokio::test]
    async fn a_dropped_punch_unregisters_its_transactions() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket).expect("wrap");
        let (demux, _rx) = crate::socket::DemuxSocket::new(inner);
        let agent = StunAgent::new(demux);
        // Nobody answers at this port: the checks go on until dropped.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let punch = Punch {
            our_id: "a".into(),
            peer_id: "b".into(),
            password: "p".into(),
            checks: ChecklistConfig {
                remote: vec![silent.local_addr().expect("addr")],
                timeout: Duration::from_secs(30),
                keep_going: true,
                direct: false,
                opener: None,
            },
            straight: false,
        };
        let (_tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(punch.run(agent.clone(), rx));
        let deadline = Instant::now() + Duration::from_secs(5);
        while agent.pending_count() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(agent.pending_count() >= 3, "rounds of checks went out");
        task.abort();
        let _ = task.await;
        assert_eq!(
            agent.pending_count(),
            0,
            "every transaction was unregistered"
        );
    }
}
