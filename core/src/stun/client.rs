//! STUN transactions over the engine's shared socket, and public-address discovery.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use super::message::{self, Tid};
use crate::error::{Error, Result};
use crate::socket::DemuxSocket;

/// A response matched to one of our transactions.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub tid: Tid,
    pub from: SocketAddr,
    pub mapped: Option<SocketAddr>,
    pub success: bool,
    pub raw: Vec<u8>,
}

/// Matches responses to outstanding requests.
#[derive(Debug)]
pub(crate) struct StunAgent {
    socket: Arc<DemuxSocket>,
    pending: Mutex<HashMap<Tid, mpsc::Sender<Response>>>,
}

impl StunAgent {
    pub fn new(socket: Arc<DemuxSocket>) -> Arc<Self> {
        Arc::new(StunAgent {
            socket,
            pending: Mutex::new(HashMap::new()),
        })
    }

    pub fn socket(&self) -> &Arc<DemuxSocket> {
        &self.socket
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Tid, mpsc::Sender<Response>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes a response to whoever waits for its transaction id. False if nobody does.
    pub fn on_response(&self, response: Response) -> bool {
        let tx = self.pending().get(&response.tid).cloned();
        match tx {
            Some(tx) => tx.try_send(response).is_ok(),
            None => false,
        }
    }

    /// Registers `tid` so its responses are sent to `tx`.
    pub fn register(&self, tid: Tid, tx: mpsc::Sender<Response>) {
        self.pending().insert(tid, tx);
    }

    /// Forgets `tids`.
    pub fn unregister(&self, tids: &[Tid]) {
        let mut pending = self.pending();
        for tid in tids {
            pending.remove(tid);
        }
    }

    /// One request/response transaction with retransmission: the same request is resent
    /// after `rto`, doubling up to 1.6 s, `attempts` times in all.
    pub async fn transact(
        &self,
        to: SocketAddr,
        request: &[u8],
        tid: Tid,
        rto: Duration,
        attempts: u32,
    ) -> Result<Response> {
        let (tx, mut rx) = mpsc::channel(4);
        self.register(tid, tx);
        let result = async {
            let mut wait = rto;
            for _ in 0..attempts.max(1) {
                if let Err(e) = self.socket.send_to(request, to).await {
                    tracing::debug!(%to, error = %e, "stun send failed");
                }
                if let Ok(Some(r)) = tokio::time::timeout(wait, rx.recv()).await {
                    return Ok(r);
                }
                wait = (wait * 2).min(Duration::from_millis(1600));
            }
            Err(Error::Stun(format!(
                "no answer from {to} after {} attempts",
                attempts.max(1)
            )))
        }
        .await;
        self.unregister(&[tid]);
        result
    }
}

/// What we know of our NAT from STUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    /// No STUN server answered (or none configured).
    Unknown,
    /// The mapped address equals our local address: no NAT in the way.
    Open,
    /// Every server saw the same public address: endpoint-independent mapping (cone NAT).
    Cone,
    /// Only one server answered, so mapping behaviour could not be compared.
    Nat,
    /// Servers saw different ports: endpoint-dependent mapping (symmetric NAT).
    Symmetric,
}

impl NatType {
    /// The name used in offers and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            NatType::Unknown => "unknown",
            NatType::Open => "open",
            NatType::Cone => "cone",
            NatType::Nat => "nat",
            NatType::Symmetric => "symmetric",
        }
    }
}

/// The result of asking every configured STUN server for our public address.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// (server, the address it saw us at), for each server that answered.
    pub mapped: Vec<(SocketAddr, SocketAddr)>,
    /// Why the others did not.
    pub errors: Vec<String>,
    /// When it was performed.
    pub at: Instant,
    /// How long it took.
    pub took: Duration,
    /// What it says of our NAT.
    pub nat: NatType,
}

impl Discovery {
    /// Our public (server-reflexive) address, if any server answered.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.mapped.first().map(|(_, m)| *m)
    }
}

/// Classifies mapping behaviour from what several servers saw.
/// `host` are our own interface addresses (with the socket's port).
pub fn classify(host: &[SocketAddr], mapped: &[(SocketAddr, SocketAddr)]) -> NatType {
    let Some((_, first)) = mapped.first() else {
        return NatType::Unknown;
    };
    if mapped.iter().any(|(_, m)| m != first) {
        return NatType::Symmetric;
    }
    if host.contains(first) {
        return NatType::Open;
    }
    if mapped.len() >= 2 {
        NatType::Cone
    } else {
        NatType::Nat
    }
}

/// After the first answer, how long the others may still take (their answers are only
/// needed to compare mappings).
const STRAGGLER_GRACE: Duration = Duration::from_millis(500);

/// Asks every server in parallel (each with retransmissions) and classifies the answers.
/// A dead server costs at most [`STRAGGLER_GRACE`] once another one has answered.
pub(crate) async fn discover(
    agent: &Arc<StunAgent>,
    servers: &[SocketAddr],
    host: &[SocketAddr],
) -> Discovery {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel(servers.len().max(1));
    let mut tasks = Vec::new();
    for &server in servers {
        let (agent, tx) = (agent.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let tid = message::new_tid();
            let request = message::binding_request(tid);
            let r = agent
                .transact(server, &request, tid, Duration::from_millis(200), 6)
                .await;
            let _ = tx.send((server, r)).await;
        }));
    }
    drop(tx);
    let mut mapped = Vec::new();
    let mut errors = Vec::new();
    let mut grace_until: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace_until {
            Some(until) => match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => rx.recv().await,
        };
        let Some((server, r)) = next else { break };
        match r {
            Ok(Response {
                mapped: Some(m),
                success: true,
                ..
            }) => {
                mapped.push((server, m));
                grace_until.get_or_insert_with(|| tokio::time::Instant::now() + STRAGGLER_GRACE);
            }
            Ok(_) => errors.push(format!("{server}: answer without a mapped address")),
            Err(e) => errors.push(format!("{server}: {e}")),
        }
    }
    for t in tasks {
        t.abort();
    }
    // Keep the configured order so the first configured server's view comes first.
    mapped.sort_by_key(|(s, _)| servers.iter().position(|x| x == s));
    let nat = classify(host, &mapped);
    Discovery {
        mapped,
        errors,
        at: started,
        took: started.elapsed(),
        nat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("literal")
    }

    #[test]
    fn classification() {
        let local = &[a("10.0.0.2:5000")][..];
        assert_eq!(classify(local, &[]), NatType::Unknown);
        assert_eq!(
            classify(local, &[(a("1.1.1.1:3478"), a("10.0.0.2:5000"))]),
            NatType::Open
        );
        assert_eq!(
            classify(local, &[(a("1.1.1.1:3478"), a("203.0.113.5:6000"))]),
            NatType::Nat
        );
        assert_eq!(
            classify(
                local,
                &[
                    (a("1.1.1.1:3478"), a("203.0.113.5:6000")),
                    (a("1.1.1.2:3478"), a("203.0.113.5:6000"))
                ]
            ),
            NatType::Cone
        );
        assert_eq!(
            classify(
                local,
                &[
                    (a("1.1.1.1:3478"), a("203.0.113.5:6000")),
                    (a("1.1.1.2:3478"), a("203.0.113.5:6001"))
                ]
            ),
            NatType::Symmetric
        );
    }
}
