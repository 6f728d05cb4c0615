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
use crate::status::Technique;
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
    /// Hard side: sockets opened (and their openers sent) before the session, used
    /// instead of opening `config.sockets` new ones (port prediction's comb).
    pub premade: Vec<std::net::UdpSocket>,
    /// What a pair found here is reported as.
    pub technique: Technique,
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
    /// The technique that found it.
    pub technique: Technique,
}

/// The transaction ids a session registered with the tunnel socket's STUN agent,
/// unregistered on drop.
struct Registered<'a> {
    agent: &'a StunAgent,
    tids: Vec<Tid>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.agent.unregister(&self.tids);
    }
}

/// What arrived on one of the hard side's sockets.
struct Arrival {
    socket: usize,
    from: SocketAddr,
    data: Vec<u8>,
}

/// Descriptors given back when the process runs out while opening sockets, for the
/// rest of the engine (forwarded flows, the rendezvous connection, DNS).
const FD_RESERVE: usize = 16;

/// Opens up to `n` non-blocking sockets on `ip`, one descriptor each; fewer when the
/// process runs out of descriptors: what could be opened is used, less
/// [`FD_RESERVE`] given back.
pub(crate) fn open_sockets(n: usize, ip: IpAddr) -> Vec<std::net::UdpSocket> {
    let mut out = Vec::with_capacity(n);
    for index in 0..n {
        let opened = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).and_then(|sock| {
            sock.set_nonblocking(true)?;
            Ok(sock)
        });
        match opened {
            Ok(sock) => out.push(sock),
            Err(e) => {
                out.truncate(out.len().saturating_sub(FD_RESERVE));
                tracing::warn!(opened = index, kept = out.len(), wanted = n, error = %e, "hard-NAT punching: cannot open more sockets");
                break;
            }
        }
    }
    out
}

/// The hard side's sockets (one descriptor each) and their readers.
struct Sockets {
    socks: Vec<Arc<tokio::net::UdpSocket>>,
    readers: JoinSet<()>,
}

impl Sockets {
    /// Starts a reader on each of `opened` (sockets that cannot get one are closed).
    fn listen(opened: Vec<std::net::UdpSocket>, tx: &mpsc::Sender<Arrival>) -> Sockets {
        let mut s = Sockets {
            socks: Vec::with_capacity(opened.len()),
            readers: JoinSet::new(),
        };
        for std_sock in opened {
            let index = s.socks.len();
            let tokio_sock = match tokio::net::UdpSocket::from_std(std_sock) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(socket = index, error = %e, "hard-NAT punching: cannot read a socket");
                    continue;
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
            s.socks.push(tokio_sock);
        }
        s
    }

    /// Takes socket `index` out (its reader must have stopped) as a plain socket, for
    /// the tunnel socket to adopt.
    fn take(&mut self, index: usize) -> std::io::Result<std::net::UdpSocket> {
        let sock = self.socks.swap_remove(index);
        Arc::try_unwrap(sock)
            .map_err(|_| std::io::Error::other("the socket is still in use"))?
            .into_std()
    }
}

impl BirthdaySession {
    /// Runs the session until a pair works, the budget and timeout are spent, or it is
    /// dropped (every socket but an adopted one is closed then).
    pub async fn run(mut self, agent: Arc<StunAgent>) -> Report {
        let demux = agent.socket().clone();
        let side = self.config.side;
        let (arrivals_tx, mut arrivals) = mpsc::channel::<Arrival>(256);
        let opened = match side {
            Side::Hard if !self.premade.is_empty() => std::mem::take(&mut self.premade),
            Side::Hard => open_sockets(self.config.sockets, self.local_ip),
            Side::Easy => Vec::new(),
        };
        let mut sockets = Sockets::listen(opened, &arrivals_tx);
        drop(arrivals_tx);
        let mut config = self.config.clone();
        if side == Side::Hard {
            config.sockets = sockets.socks.len();
            self.counters
                .sockets
                .fetch_add(config.sockets as u64, Ordering::Relaxed);
        }
        let now = || Instant::now().into_std();
        let mut state = Birthday::new(config, now());
        let (tx, mut rx) = mpsc::channel::<Response>(256);
        let username = format!("{}:{}", self.peer_id, self.our_id);
        // Unregistered when the session ends or is dropped mid-way (aborted when the
        // check list wins or the attempt ends).
        let mut registered = Registered {
            agent: &agent,
            tids: Vec::new(),
        };
        let mut adopted = false;
        // The answer to the first check that reached us, sent once its socket joined
        // the tunnel socket: the peer opens QUIC the moment it has it, and a QUIC
        // packet reaching the socket before that would be dropped (and wait for a
        // retransmission, about 300 ms).
        let mut first_reply: Option<(Vec<u8>, SocketAddr)> = None;
        state.handle_timeout(now());
        loop {
            if !adopted {
                if let Some(reached) = state.reached() {
                    // The peer reached this socket: it carries the tunnel from now on.
                    // Its reader stops (the tunnel socket reads it now), every other
                    // socket is closed.
                    sockets.readers.abort_all();
                    // Wait for the aborted readers to let go of their sockets, so the
                    // losers are closed (their ports free) from here on.
                    while sockets.readers.join_next().await.is_some() {}
                    let adopted_side = sockets
                        .take(reached.socket)
                        .and_then(|std| demux.adopt_side(std, reached.remote));
                    match adopted_side {
                        Ok(()) => {
                            tracing::info!(peer = %reached.remote, socket = reached.socket, "birthday punching: the peer reached one of our sockets; it joins the tunnel")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "birthday punching: cannot adopt the winning socket")
                        }
                    }
                    sockets.socks.clear();
                    adopted = true;
                }
            }
            if let Some((reply, to)) = first_reply.take() {
                if let Err(e) = demux.send_direct(&reply, to).await {
                    tracing::debug!(%to, error = %e, "birthday punching: answer not sent");
                }
            }
            while let Some(p) = state.poll_transmit() {
                self.counters.packets.fetch_add(1, Ordering::Relaxed);
                agent.register(p.tid, tx.clone());
                registered.tids.push(p.tid);
                self.send(&demux, &sockets, adopted, &username, p).await;
            }
            if state.won().is_some() || state.gave_up() {
                break;
            }
            let Some(wake) = state.poll_timeout() else {
                break;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(Instant::from_std(wake)) => state.handle_timeout(now()),
                Some(a) = arrivals.recv() => {
                    if let Some(reply) = self.arrival(&mut state, &sockets, a).await {
                        first_reply = Some(reply);
                    }
                }
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
        drop(registered);
        let report = Report {
            side,
            sockets: state.sockets(),
            sent: state.sent(),
            won: state.won().or(state.reached()),
            technique: self.technique,
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
    /// answer goes to the agent. The answer to the check that first reached a socket
    /// is returned instead: it goes out once that socket joined the tunnel socket.
    async fn arrival(
        &self,
        state: &mut Birthday,
        sockets: &Sockets,
        a: Arrival,
    ) -> Option<(Vec<u8>, SocketAddr)> {
        if let Some(tid) = message::check_to(&a.data, &self.our_id, &self.password) {
            let first = state.reached().is_none();
            if state.on_request(a.socket, a.from) {
                let reply = message::binding_success(tid, a.from, Some(&self.password));
                if first {
                    return Some((reply, a.from));
                }
                if let Some(s) = sockets.socks.get(a.socket) {
                    let _ = s.send_to(&reply, a.from).await;
                }
            }
            return None;
        }
        if let Some(Parsed::Success { tid, .. }) = message::parse(&a.data) {
            let authentic = message::verify_integrity(&a.data, &self.password);
            state.on_response(tid, a.socket, a.from, authentic);
        }
        None
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
            Side::Hard => match sockets.socks.get(p.socket) {
                Some(sock) => match p.ttl {
                    Some(ttl) => {
                        send_with_ttl(socket2::SockRef::from(&**sock), &request, p.to, ttl)
                    }
                    None => sock.send_to(&request, p.to).await.map(|_| ()),
                },
                None => Ok(()),
            },
        };
        if let Err(e) = sent {
            tracing::trace!(to = %p.to, error = %e, "birthday packet not sent");
        }
    }
}

/// Sends one datagram with IP TTL `ttl` from a socket of our own (nobody else sends on
/// it meanwhile, so setting the socket's TTL around the send is enough). The send is
/// the plain system call, whether or not a runtime has seen the socket writable yet.
pub(crate) fn send_with_ttl(
    s: socket2::SockRef<'_>,
    data: &[u8],
    to: SocketAddr,
    ttl: u8,
) -> std::io::Result<()> {
    let to = socket2::SockAddr::from(to);
    if to.is_ipv4() {
        let normal = s.ttl()?;
        s.set_ttl(u32::from(ttl))?;
        let sent = s.send_to(data, &to);
        s.set_ttl(normal)?;
        sent.map(|_| ())
    } else {
        let normal = s.unicast_hops_v6()?;
        s.set_unicast_hops_v6(u32::from(ttl))?;
        let sent = s.send_to(data, &to);
        s.set_unicast_hops_v6(normal)?;
        sent.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use quinn::Runtime as _;

    use super::*;

    /// A tunnel socket with a STUN dispatcher, as an engine has.
    fn agent() -> Arc<StunAgent> {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_nonblocking(true).expect("non-blocking");
        let inner = quinn::TokioRuntime.wrap_udp_socket(sock).expect("wrap");
        let (demux, mut rx) = DemuxSocket::new(inner);
        let agent = StunAgent::new(demux.clone());
        crate::spawn(crate::socket::drain(demux));
        let a = agent.clone();
        crate::spawn(async move {
            while let Some(d) = rx.recv().await {
                if let Some(Parsed::Success {
                    tid, mapped, other, ..
                }) = message::parse(&d.data)
                {
                    a.on_response(Response {
                        tid,
                        from: d.from,
                        mapped,
                        other,
                        success: true,
                        raw: d.data,
                    });
                }
            }
        });
        agent
    }

    fn recv(sock: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = [0u8; 1500];
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        Some((buf[..n].to_vec(), from))
    }

    fn bound(port: u16) -> bool {
        UdpSocket::bind(("127.0.0.1", port)).is_err()
    }

    /// The hard side on loopback, with this test as the easy peer: 16 authenticated
    /// openers from 16 sockets; a probe without the room key is not answered; the
    /// first authentic probe is answered from the socket it reached, which checks back
    /// and joins the tunnel socket; the 15 others are closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reached_socket_joins_the_tunnel_and_the_others_close() {
        let easy = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let easy_addr = easy.local_addr().expect("addr");
        let agent = agent();
        let demux = agent.socket().clone();
        let session = BirthdaySession {
            our_id: "hard".into(),
            peer_id: "easy".into(),
            password: "room key".into(),
            config: BirthdayConfig {
                side: Side::Hard,
                peer: easy_addr,
                sockets: 16,
                probes: 1,
                rate: 10_000,
                opener_ttl: Some(3),
                lead: Duration::ZERO,
                timeout: Duration::from_secs(10),
                premade: false,
            },
            local_ip: "127.0.0.1".parse().expect("ip"),
            counters: Arc::default(),
            premade: Vec::new(),
            technique: Technique::Birthday,
        };
        let counters = session.counters.clone();
        let run = tokio::spawn(session.run(agent));

        let easy2 = easy.try_clone().expect("clone");
        let openers = tokio::task::spawn_blocking(move || {
            let mut from = Vec::new();
            while from.len() < 16 {
                let Some((data, addr)) = recv(&easy2, Duration::from_secs(5)) else {
                    break;
                };
                assert!(
                    message::verify_integrity(&data, "room key"),
                    "openers are authenticated"
                );
                from.push(addr);
            }
            from
        })
        .await
        .expect("openers");
        assert_eq!(openers.len(), 16, "one opener per socket");
        assert!(openers.iter().all(|a| bound(a.port())));
        assert_eq!(counters.sockets.load(Ordering::Relaxed), 16);

        let (easy3, target, forged_target) =
            (easy.try_clone().expect("clone"), openers[5], openers[3]);
        let (won_reply, forged_reply) = tokio::task::spawn_blocking(move || {
            // Without the room key: no answer.
            let forged = message::check_request(message::new_tid(), "hard:easy", "guess");
            easy3.send_to(&forged, forged_target).expect("send");
            let forged_reply = recv(&easy3, Duration::from_millis(300));
            // Authentic: answered from that very socket, then a check back.
            let tid = message::new_tid();
            easy3
                .send_to(
                    &message::check_request(tid, "hard:easy", "room key"),
                    target,
                )
                .expect("send");
            let mut answered = None;
            for _ in 0..4 {
                let Some((data, from)) = recv(&easy3, Duration::from_secs(2)) else {
                    break;
                };
                match message::parse(&data) {
                    Some(Parsed::Success { tid: t, .. }) if t == tid => {
                        assert!(message::verify_integrity(&data, "room key"));
                        answered = Some(from);
                    }
                    Some(Parsed::Request { tid: back, .. }) => {
                        assert_eq!(from, target, "the check back comes from the socket reached");
                        let ok = message::binding_success(back, from, Some("room key"));
                        easy3.send_to(&ok, from).expect("answer");
                    }
                    _ => {}
                }
                if answered.is_some() {
                    // The check back may still be on its way: answer it too.
                    if let Some((data, from)) = recv(&easy3, Duration::from_millis(500)) {
                        if let Some(Parsed::Request { tid: back, .. }) = message::parse(&data) {
                            let ok = message::binding_success(back, from, Some("room key"));
                            easy3.send_to(&ok, from).expect("answer");
                        }
                    }
                    break;
                }
            }
            (answered, forged_reply)
        })
        .await
        .expect("probe");
        assert!(
            forged_reply.is_none(),
            "a forged probe is not answered: {forged_reply:?}"
        );
        assert_eq!(won_reply, Some(target), "answered from the socket reached");

        let report = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the session ends once the check back is answered")
            .expect("task");
        assert_eq!(
            report.won,
            Some(Won {
                socket: 5,
                remote: easy_addr
            })
        );
        assert_eq!(demux.side_peer(), Some(easy_addr));
        for (i, a) in openers.iter().enumerate() {
            assert_eq!(
                bound(a.port()),
                i == 5,
                "socket {i} ({a}) open only if it won"
            );
        }
        demux.clear_side();
        assert!(
            !bound(target.port()),
            "the side socket closes with clear_side"
        );
    }
}

#[cfg(test)]
mod review_tests;
