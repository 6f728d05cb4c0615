//! Birthday punching: the async driver of [`crate::agent::birthday::Birthday`]. The
//! hard side opens the sockets, sends their openers and answers the probe that reaches
//! one of them; the winning socket then joins the tunnel socket
//! ([`DemuxSocket::adopt_side`]) and every other one is closed. The easy side sprays
//! its probes from the tunnel socket itself. Every decision is the agent's.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::agent::birthday::{Birthday, BirthdayConfig, Probe, Side, Won};
use crate::socket::DemuxSocket;
use crate::stun::client::{Response, StunAgent};
use crate::stun::message::{self, Parsed, Tid};

/// One birthday session.
#[derive(Debug)]
pub(crate) struct BirthdaySession {
    /// Our offer id.
    pub our_id: String,
    /// The peer's offer id.
    pub peer_id: String,
    /// Short-term STUN password (the room key).
    pub password: String,
    /// What to do.
    pub config: BirthdayConfig,
    /// The IP the hard side binds its sockets to (the tunnel socket's).
    pub local_ip: IpAddr,
    /// The engine's running totals.
    pub counters: Arc<Counters>,
}

/// What birthday punching has cost an engine so far (stats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Sockets opened by the hard side.
    pub sockets: AtomicU64,
    /// Packets sent: openers, probes, checks back.
    pub packets: AtomicU64,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    /// Our side.
    pub side: Side,
    /// Sockets opened (hard side).
    pub sockets: usize,
    /// Packets sent: openers and checks back (hard), probes (easy).
    pub sent: usize,
    /// The pair that worked; on the hard side the socket the peer reached, now the
    /// tunnel's side socket.
    pub won: Option<Won>,
}

/// What arrived on one of the hard side's sockets.
struct Arrival {
    socket: usize,
    from: SocketAddr,
    data: Vec<u8>,
}

/// The hard side's sockets: the std handles (for TTL and adoption) and their readers.
struct Sockets {
    std: Vec<std::net::UdpSocket>,
    tokio: Vec<Arc<tokio::net::UdpSocket>>,
    readers: JoinSet<()>,
}

impl Sockets {
    /// Opens up to `n` sockets on `ip`; fewer when the process runs out of descriptors
    /// (what could be opened is used).
    fn open(n: usize, ip: IpAddr, tx: &mpsc::Sender<Arrival>) -> Sockets {
        let mut s = Sockets {
            std: Vec::with_capacity(n),
            tokio: Vec::with_capacity(n),
            readers: JoinSet::new(),
        };
        for index in 0..n {
            let opened = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).and_then(|sock| {
                sock.set_nonblocking(true)?;
                let clone = sock.try_clone()?;
                Ok((sock, tokio::net::UdpSocket::from_std(clone)?))
            });
            let (std_sock, tokio_sock) = match opened {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(opened = index, wanted = n, error = %e, "birthday punching: cannot open more sockets");
                    break;
                }
            };
            let tokio_sock = Arc::new(tokio_sock);
            let (reader, tx) = (tokio_sock.clone(), tx.clone());
            s.readers.spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let Ok((len, from)) = reader.recv_from(&mut buf).await else {
                        return;
                    };
                    // Only STUN matters before the socket joins the tunnel; a QUIC
                    // packet that comes this early is retransmitted by its sender.
                    if !buf[..len]
                        .first()
                        .is_some_and(|b| message::is_stun_first_byte(*b))
                    {
                        continue;
                    }
                    let arrival = Arrival {
                        socket: index,
                        from,
                        data: buf[..len].to_vec(),
                    };
                    if tx.send(arrival).await.is_err() {
                        return;
                    }
                }
            });
            s.std.push(std_sock);
            s.tokio.push(tokio_sock);
        }
        s
    }
}

impl BirthdaySession {
    /// Runs the session until a pair works, the budget and timeout are spent, or it is
    /// dropped (every socket but an adopted one is closed then).
    pub async fn run(self, agent: Arc<StunAgent>) -> Report {
        let demux = agent.socket().clone();
        let side = self.config.side;
        let (arrivals_tx, mut arrivals) = mpsc::channel::<Arrival>(256);
        let mut sockets = match side {
            Side::Hard => Sockets::open(self.config.sockets, self.local_ip, &arrivals_tx),
            Side::Easy => Sockets::open(0, self.local_ip, &arrivals_tx),
        };
        drop(arrivals_tx);
        let mut config = self.config.clone();
        if side == Side::Hard {
            config.sockets = sockets.std.len();
            self.counters
                .sockets
                .fetch_add(config.sockets as u64, Ordering::Relaxed);
        }
        let now = || Instant::now().into_std();
        let mut state = Birthday::new(config, now());
        let (tx, mut rx) = mpsc::channel::<Response>(256);
        let username = format!("{}:{}", self.peer_id, self.our_id);
        let mut registered: Vec<Tid> = Vec::new();
        let mut adopted = false;
        state.handle_timeout(now());
        loop {
            while let Some(p) = state.poll_transmit() {
                self.counters.packets.fetch_add(1, Ordering::Relaxed);
                agent.register(p.tid, tx.clone());
                registered.push(p.tid);
                self.send(&demux, &sockets, adopted, &username, p).await;
            }
            if !adopted {
                if let Some(reached) = state.reached() {
                    // The peer reached this socket: it carries the tunnel from now on.
                    // Its reader stops (the tunnel socket reads it now), every other
                    // socket is closed.
                    sockets.readers.abort_all();
                    let std = sockets.std.swap_remove(reached.socket);
                    match demux.adopt_side(std, reached.remote) {
                        Ok(()) => {
                            tracing::info!(peer = %reached.remote, socket = reached.socket, "birthday punching: the peer reached one of our sockets; it joins the tunnel")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "birthday punching: cannot adopt the winning socket")
                        }
                    }
                    sockets.std.clear();
                    sockets.tokio.clear();
                    adopted = true;
                }
            }
            if state.won().is_some() || state.gave_up() {
                break;
            }
            let Some(wake) = state.poll_timeout() else {
                break;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(Instant::from_std(wake)) => state.handle_timeout(now()),
                Some(a) = arrivals.recv() => self.arrival(&mut state, &sockets, a).await,
                Some(r) = rx.recv() => {
                    let authentic = r.success && message::verify_integrity(&r.raw, &self.password);
                    // Through the tunnel socket: the easy side's probes, or (once
                    // adopted) the hard side's check back through its side socket.
                    let socket = match (side, state.reached()) {
                        (Side::Hard, Some(r)) => r.socket,
                        _ => 0,
                    };
                    state.on_response(r.tid, socket, r.from, authentic);
                }
            }
        }
        agent.unregister(&registered);
        let report = Report {
            side,
            sockets: state.sockets(),
            sent: state.sent(),
            won: state.won().or(state.reached()),
        };
        tracing::info!(
            side = side.as_str(),
            sockets = report.sockets,
            sent = report.sent,
            won = ?report.won,
            "birthday punching ended"
        );
        report
    }

    /// A datagram on one of the hard side's sockets: an authentic check from the peer
    /// is answered from the socket it reached (the first such socket only), an
    /// answer goes to the agent.
    async fn arrival(&self, state: &mut Birthday, sockets: &Sockets, a: Arrival) {
        match message::parse(&a.data) {
            Some(Parsed::Request {
                tid,
                username: Some(username),
                has_integrity: true,
            }) => {
                let to_us = username.split_once(':').map(|(to, _)| to) == Some(&self.our_id);
                if !to_us || !message::verify_integrity(&a.data, &self.password) {
                    return;
                }
                if state.on_request(a.socket, a.from) {
                    let reply = message::binding_success(tid, a.from, Some(&self.password));
                    if let Some(s) = sockets.tokio.get(a.socket) {
                        let _ = s.send_to(&reply, a.from).await;
                    }
                }
            }
            Some(Parsed::Success { tid, .. }) => {
                let authentic = message::verify_integrity(&a.data, &self.password);
                state.on_response(tid, a.socket, a.from, authentic);
            }
            _ => {}
        }
    }

    async fn send(
        &self,
        demux: &DemuxSocket,
        sockets: &Sockets,
        adopted: bool,
        username: &str,
        p: Probe,
    ) {
        let request = message::check_request(p.tid, username, &self.password);
        let sent = match self.config.side {
            Side::Easy => demux.send_direct(&request, p.to).await,
            // Once adopted, the side socket is reached through the tunnel socket.
            Side::Hard if adopted => demux.send_direct(&request, p.to).await,
            Side::Hard => match (sockets.std.get(p.socket), sockets.tokio.get(p.socket)) {
                (Some(std), Some(sock)) => match p.ttl {
                    Some(ttl) => send_with_ttl(std, &request, p.to, ttl),
                    None => sock.send_to(&request, p.to).await.map(|_| ()),
                },
                _ => Ok(()),
            },
        };
        if let Err(e) = sent {
            tracing::trace!(to = %p.to, error = %e, "birthday packet not sent");
        }
    }
}

/// Sends one datagram with IP TTL `ttl` from a socket of our own (nobody else sends on
/// it meanwhile, so setting the socket's TTL around the send is enough).
fn send_with_ttl(
    sock: &std::net::UdpSocket,
    data: &[u8],
    to: SocketAddr,
    ttl: u8,
) -> std::io::Result<()> {
    let s = socket2::SockRef::from(sock);
    if to.is_ipv4() {
        let normal = s.ttl()?;
        s.set_ttl(u32::from(ttl))?;
        let sent = sock.send_to(data, to);
        s.set_ttl(normal)?;
        sent.map(|_| ())
    } else {
        let normal = s.unicast_hops_v6()?;
        s.set_unicast_hops_v6(u32::from(ttl))?;
        let sent = sock.send_to(data, to);
        s.set_unicast_hops_v6(normal)?;
        sent.map(|_| ())
    }
}
