//! Port prediction's client side, the *shooter* (`agent::predict` has the plan): from
//! the prediction socket, which has sent nothing before, one authenticated check at the
//! server's comb tooth made for the port our NAT gives that check. The server's side is
//! a birthday session with a premade comb ([`crate::birthday`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::birthday::{Side, Won};
use crate::agent::predict;
use crate::birthday::{Counters, Report};
use crate::status::Technique;
use crate::stun::allocation::{self, Allocation};
use crate::stun::client::StunAgent;
use crate::stun::message::{self, Parsed};

/// How often one shot is sent again before our next port is measured anew.
const RESEND: Duration = Duration::from_millis(150);
/// Sends of one shot before measuring again.
const SENDS_PER_SHOT: u32 = 3;
/// Most shots (each a new mapping of the prediction socket).
const MAX_SHOTS: usize = 6;

/// The client's side of one port-prediction exchange.
#[derive(Debug)]
pub(crate) struct Shooter {
    /// Our offer id.
    pub our_id: String,
    /// The peer's offer id.
    pub peer_id: String,
    /// Short-term STUN password (the room key).
    pub password: String,
    /// The prediction socket: non-blocking, nothing sent from it yet.
    pub socket: std::net::UdpSocket,
    /// Our NAT's allocation.
    pub alloc: Allocation,
    /// The ports we offered (`predict`).
    pub predict: Vec<u16>,
    /// The server's comb (`comb`), one port per predicted one.
    pub comb: Vec<u16>,
    /// The server's public IP.
    pub server_ip: IpAddr,
    /// The STUN server that tells our next port.
    pub stun: SocketAddr,
    /// Give up after this long.
    pub timeout: Duration,
    /// The engine's running totals.
    pub counters: Arc<Counters>,
}

impl Shooter {
    /// Shoots until a check is answered (the socket then joins the tunnel socket for
    /// the server's tooth), the shots are spent, or the timeout.
    pub async fn run(self, agent: Arc<StunAgent>) -> Report {
        let mut report = Report {
            side: Side::Easy,
            sockets: 1,
            sent: 0,
            won: None,
            technique: Technique::Prediction,
        };
        self.counters.sockets.fetch_add(1, Ordering::Relaxed);
        let Ok(sock) = self
            .socket
            .try_clone()
            .and_then(tokio::net::UdpSocket::from_std)
        else {
            return report;
        };
        let deadline = Instant::now() + self.timeout;
        let bind_ip = self
            .socket
            .local_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let username = format!("{}:{}", self.peer_id, self.our_id);
        let mut shot_at: Vec<usize> = Vec::new();
        let mut buf = vec![0u8; 2048];
        'shots: for _ in 0..MAX_SHOTS {
            // Behind a sequential NAT, how many ports other flows took since our offer
            // decides which tooth our next mapping meets.
            let now = match self.alloc {
                Allocation::Sequential { .. } => {
                    allocation::fresh_mapping(self.stun, bind_ip).await
                }
                _ => None,
            };
            let Some(index) = predict::shot_index(self.alloc, &self.predict, now) else {
                tracing::info!(measured = ?now, "port prediction: our next port is outside the predicted window");
                break;
            };
            let Some(&tooth) = self.comb.get(index) else {
                break;
            };
            let target = SocketAddr::new(self.server_ip, tooth);
            shot_at.push(index);
            tracing::debug!(%target, index, "port prediction: shot");
            // Sent again with the same transaction id, like any STUN retransmission.
            let tid = message::new_tid();
            for _ in 0..SENDS_PER_SHOT {
                let request = message::check_request(tid, &username, &self.password);
                let _ = sock.send_to(&request, target).await;
                report.sent += 1;
                self.counters.packets.fetch_add(1, Ordering::Relaxed);
                let until = (Instant::now() + RESEND).min(deadline);
                while let Ok(Ok((n, from))) =
                    tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await
                {
                    if self.answered(&sock, &buf[..n], from, target, tid).await {
                        report.won = Some(Won {
                            socket: 0,
                            remote: target,
                        });
                        break 'shots;
                    }
                }
                if Instant::now() >= deadline {
                    break 'shots;
                }
            }
        }
        drop(sock);
        if let Some(w) = report.won {
            match agent.socket().adopt_side(self.socket, w.remote) {
                Ok(()) => {
                    tracing::info!(peer = %w.remote, shots = shot_at.len(), "port prediction: the server answered; our prediction socket joins the tunnel")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "port prediction: cannot adopt the prediction socket");
                    report.won = None;
                }
            }
        }
        tracing::info!(sent = report.sent, won = ?report.won, shots = ?shot_at, "port prediction ended");
        report
    }

    /// A datagram on the prediction socket: true when it shows the pair works (an
    /// authentic answer to our check `tid`, or the server's authentic check back, which
    /// is answered), both from the tooth `target`.
    async fn answered(
        &self,
        sock: &tokio::net::UdpSocket,
        data: &[u8],
        from: SocketAddr,
        target: SocketAddr,
        tid: message::Tid,
    ) -> bool {
        if from != target {
            return false;
        }
        if let Some(check) = message::check_to(data, &self.our_id, &self.password) {
            let reply = message::binding_success(check, from, Some(&self.password));
            let _ = sock.send_to(&reply, from).await;
            return true;
        }
        matches!(message::parse(data), Some(Parsed::Success { tid: t, .. }) if t == tid)
            && message::verify_integrity(data, &self.password)
    }
}
