//! The engine's one UDP socket, shared by STUN, connectivity checks and QUIC.
//!
//! quinn drives the socket; [`DemuxSocket`] sits between quinn and the real socket and
//! takes out every STUN datagram (first byte 0–3, RFC 7983) before quinn sees it, handing
//! it to the engine's STUN dispatcher. Everything the engine sends (STUN requests,
//! checks, answers) goes out through the same socket, so the address STUN reports is
//! the address the peer punches to and QUIC later uses.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{ready, Context, Poll, Waker};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use std::net::IpAddr;

use crate::stun::message::is_stun_first_byte;
use crate::sync::{lock, read, write};

/// A STUN datagram taken off the shared socket.
#[derive(Debug)]
pub(crate) struct StunDatagram {
    pub from: SocketAddr,
    pub data: Vec<u8>,
    /// It came through our TURN relay (not straight from `from`).
    pub relayed: bool,
}

/// How to reach peers through a TURN relay.
#[derive(Debug, Default)]
struct Routes {
    /// The TURN server, when we hold an allocation.
    server: Option<SocketAddr>,
    /// Peers whose packets go through the relay.
    via: HashSet<SocketAddr>,
    channels: HashMap<SocketAddr, u16>,
    by_channel: HashMap<u16, SocketAddr>,
    /// A connection's peer address → where its packets really go now (after an
    /// upgrade from relay to direct), and back.
    alias: HashMap<SocketAddr, SocketAddr>,
    unalias: HashMap<SocketAddr, SocketAddr>,
    /// Relayed peers that proved, with an authentic connectivity check that arrived
    /// directly, that they reach us directly: only their direct QUIC packets move
    /// them off the relay (a forged packet "from" the peer's address does not).
    direct_ok: HashSet<SocketAddr>,
}

/// Most peers routed through the relay at once (a stunfwd peer has one; the bound
/// keeps forged Data indications from growing the table).
pub(crate) const MAX_RELAYED_PEERS: usize = 64;

/// Wraps quinn's socket and diverts STUN datagrams to a channel. With a TURN
/// allocation it also relays: packets to peers marked "via relay" are wrapped in
/// ChannelData or Send indications for the TURN server, and relayed packets from the
/// server are unwrapped and presented as coming from the peer itself, so quinn and the
/// STUN code never see the relay.
pub(crate) struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    stun_tx: mpsc::Sender<StunDatagram>,
    /// STUN datagrams dropped because the dispatcher was behind.
    pub dropped: AtomicU64,
    routes: RwLock<Routes>,
    /// QUIC packets that arrived in Data indications, waiting for quinn.
    injected: Mutex<Injected>,
}

/// Relayed QUIC packets waiting for quinn, and the waker of quinn's receive task.
type Injected = (VecDeque<(SocketAddr, Vec<u8>)>, Option<Waker>);

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket").finish_non_exhaustive()
    }
}

impl DemuxSocket {
    /// Wraps `inner`; STUN datagrams arrive on the returned receiver.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> (Arc<Self>, mpsc::Receiver<StunDatagram>) {
        let (stun_tx, stun_rx) = mpsc::channel(1024);
        (
            Arc::new(DemuxSocket {
                inner,
                stun_tx,
                dropped: AtomicU64::new(0),
                routes: RwLock::new(Routes::default()),
                injected: Mutex::new((VecDeque::new(), None)),
            }),
            stun_rx,
        )
    }

    /// Uses `server` as our TURN relay (None: no allocation, all routes direct).
    pub fn set_relay_server(&self, server: Option<SocketAddr>) {
        let mut r = write(&self.routes);
        if server.is_none() {
            *r = Routes::default();
        } else {
            r.server = server;
        }
    }

    /// The TURN server in use.
    pub fn relay_server(&self) -> Option<SocketAddr> {
        read(&self.routes).server
    }

    /// Sends to `peer` through the relay from now on. False when it already was, there
    /// is no relay, or [`MAX_RELAYED_PEERS`] are relayed already.
    pub fn route_via_relay(&self, peer: SocketAddr) -> bool {
        let mut r = write(&self.routes);
        if r.server.is_none() || (r.via.len() >= MAX_RELAYED_PEERS && !r.via.contains(&peer)) {
            return false;
        }
        r.direct_ok.remove(&peer);
        r.via.insert(peer)
    }

    /// `peer` sent an authentic connectivity check that arrived directly (not through
    /// the relay): its direct QUIC packets may now move it off the relay.
    pub fn direct_path_proven(&self, peer: SocketAddr) {
        let mut r = write(&self.routes);
        if r.via.contains(&peer) {
            r.direct_ok.insert(peer);
        }
    }

    /// Packets for `conn_addr` go to `real` (directly), and packets from `real` are
    /// presented as coming from `conn_addr`: how a relayed connection moves to a direct
    /// path without the QUIC connection noticing on our side.
    pub fn alias(&self, conn_addr: SocketAddr, real: SocketAddr) {
        let mut r = write(&self.routes);
        r.via.remove(&real);
        if conn_addr == real {
            r.via.remove(&conn_addr);
            return;
        }
        r.alias.insert(conn_addr, real);
        r.unalias.insert(real, conn_addr);
    }

    /// Sends one datagram straight to `to`, ignoring relay routes (connectivity checks
    /// that probe the direct path, and answers on the path a check came in on).
    pub async fn send_direct(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        self.send_raw(data, to).await
    }

    /// True when packets to `peer` go through the relay.
    pub fn is_via_relay(&self, peer: SocketAddr) -> bool {
        read(&self.routes).via.contains(&peer)
    }

    /// Records a bound channel.
    pub fn set_channel(&self, peer: SocketAddr, channel: u16) {
        let mut r = write(&self.routes);
        r.channels.insert(peer, channel);
        r.by_channel.insert(channel, peer);
    }

    /// Hands quinn a packet that arrived inside a Data indication from `from`.
    pub fn inject(&self, from: SocketAddr, data: Vec<u8>) {
        let waker = {
            let mut q = lock(&self.injected);
            if q.0.len() < 1024 {
                q.0.push_back((from, data));
            }
            q.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Wraps `data` for `to` if `to` is reached through the relay.
    fn encapsulate(&self, to: SocketAddr, data: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        let r = read(&self.routes);
        let server = r.server?;
        if !r.via.contains(&to) {
            return None;
        }
        Some(match r.channels.get(&to) {
            Some(&ch) => (server, crate::relay::channel_data(ch, data)),
            None => (server, crate::relay::send_indication(to, data)),
        })
    }

    /// Sends one datagram (used for STUN; QUIC sends through quinn).
    pub async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let to = self.real(to);
        let wrapped = self.encapsulate(to, data);
        let (to, data) = match &wrapped {
            Some((server, framed)) => (*server, framed.as_slice()),
            None => (to, data),
        };
        self.send_raw(data, to).await
    }

    fn real(&self, to: SocketAddr) -> SocketAddr {
        let r = read(&self.routes);
        if r.alias.is_empty() {
            return to;
        }
        r.alias.get(&to).copied().unwrap_or(to)
    }

    async fn send_raw(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        };
        let mut poller = None;
        for _ in 0..64 {
            match self.inner.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let p = poller.get_or_insert_with(|| self.inner.clone().create_io_poller());
                    poll_fn(|cx| p.as_mut().poll_writable(cx)).await?;
                }
                other => return other,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "socket stayed busy",
        ))
    }

    fn divert(&self, from: SocketAddr, data: &[u8], relayed: bool) {
        let datagram = StunDatagram {
            from,
            data: data.to_vec(),
            relayed,
        };
        if self.stun_tx.try_send(datagram).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let real = self.real(transmit.destination);
        if real != transmit.destination && !self.is_via_relay(real) {
            return self.inner.try_send(&Transmit {
                destination: real,
                ecn: transmit.ecn,
                contents: transmit.contents,
                segment_size: transmit.segment_size,
                src_ip: transmit.src_ip,
            });
        }
        if !self.is_via_relay(transmit.destination) {
            return self.inner.try_send(transmit);
        }
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for chunk in transmit.contents.chunks(segment) {
            let Some((server, framed)) = self.encapsulate(transmit.destination, chunk) else {
                continue;
            };
            self.inner.try_send(&Transmit {
                destination: server,
                ecn: transmit.ecn,
                contents: &framed,
                segment_size: None,
                src_ip: transmit.src_ip,
            })?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        {
            let mut q = lock(&self.injected);
            if !q.0.is_empty() {
                let mut n = 0;
                while n < bufs.len().min(meta.len()) {
                    let Some((from, data)) = q.0.pop_front() else {
                        break;
                    };
                    let len = data.len().min(bufs[n].len());
                    bufs[n][..len].copy_from_slice(&data[..len]);
                    meta[n] = RecvMeta {
                        addr: from,
                        len,
                        stride: len,
                        ..RecvMeta::default()
                    };
                    n += 1;
                }
                return Poll::Ready(Ok(n));
            }
            q.1 = Some(cx.waker().clone());
        }
        let relay = self.relay_server();
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let mut kept = 0;
            for i in 0..n {
                let mut m = meta[i];
                let mut through_relay = false;
                // ChannelData from our TURN server: unwrap it and make it look like it
                // came straight from the peer.
                if Some(m.addr) == relay && m.len > 0 && (0x40..=0x4f).contains(&bufs[i][0]) {
                    let unwrapped = crate::relay::parse_channel_data(&bufs[i][..m.len])
                        .map(|(ch, payload)| (ch, payload.len()));
                    let peer = unwrapped
                        .and_then(|(ch, _)| read(&self.routes).by_channel.get(&ch).copied());
                    let (Some((_, len)), Some(peer)) = (unwrapped, peer) else {
                        continue;
                    };
                    bufs[i].copy_within(4..4 + len, 0);
                    if bufs[i].first().is_some_and(|b| is_stun_first_byte(*b)) {
                        self.divert(peer, &bufs[i][..len], true);
                        continue;
                    }
                    m.addr = peer;
                    m.len = len;
                    m.stride = len;
                    meta[i] = m;
                    through_relay = true;
                }
                let stride = m.stride.max(1);
                let mut all_stun = true;
                for start in (0..m.len).step_by(stride) {
                    let end = (start + stride).min(m.len);
                    let segment = &bufs[i][start..end];
                    if segment.first().is_some_and(|b| is_stun_first_byte(*b)) {
                        self.divert(m.addr, segment, false);
                    } else {
                        all_stun = false;
                    }
                }
                // A GRO batch that mixes STUN and QUIC is left whole: quinn drops the
                // STUN segments as unparsable, the QUIC ones are kept.
                if all_stun && m.len > 0 {
                    continue;
                }
                if !through_relay && Some(m.addr) != relay {
                    let (was_relayed, proven, alias) = {
                        let r = read(&self.routes);
                        (
                            r.via.contains(&m.addr),
                            r.direct_ok.contains(&m.addr),
                            r.unalias.get(&m.addr).copied(),
                        )
                    };
                    // QUIC straight from a peer we relay to, which has proven with an
                    // authentic check that it reaches us directly: it moved to the
                    // direct path; answer it there (latest path wins). Anyone can send
                    // a packet "from" the peer's address, so without that proof the
                    // route stays (quinn drops the packet if it is not genuine).
                    if was_relayed && proven {
                        let mut r = write(&self.routes);
                        r.via.remove(&m.addr);
                        r.direct_ok.remove(&m.addr);
                    }
                    if let Some(conn_addr) = alias {
                        m.addr = conn_addr;
                        meta[i] = m;
                    }
                }
                if kept != i {
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..m.len].copy_from_slice(&tail[0][..m.len]);
                    meta[kept] = m;
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Our host candidates: the bound address, or every interface address of the socket's
/// family when bound to the unspecified address.
pub(crate) fn host_candidates(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == local.is_ipv4())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80, // no link-local
            IpAddr::V4(_) => true,
        })
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect();
    // Non-loopback first: they are the useful ones across hosts.
    out.sort_by_key(|a| a.ip().is_loopback());
    out
}

/// Drains a [`DemuxSocket`] that has no QUIC endpoint on it, so that its STUN datagrams
/// reach the STUN channel (the endpoint driver does this in an engine).
pub(crate) async fn drain(socket: Arc<DemuxSocket>) {
    let mut storage = vec![0u8; 65_536];
    loop {
        let mut meta = [RecvMeta::default()];
        let mut bufs = [IoSliceMut::new(&mut storage)];
        if poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta))
            .await
            .is_err()
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Performance;
    use crate::tunnel::{client_config, endpoint_config, server_config, Identity, PinnedPeer};
    use quinn::Runtime as _;
    use std::time::Duration;

    fn endpoint(
        server: Option<quinn::ServerConfig>,
    ) -> (quinn::Endpoint, mpsc::Receiver<StunDatagram>) {
        let runtime = Arc::new(quinn::TokioRuntime);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        sock.set_nonblocking(true).expect("non-blocking");
        let inner = runtime.wrap_udp_socket(sock).expect("wrap");
        let (demux, rx) = DemuxSocket::new(inner);
        let config = endpoint_config();
        let ep = quinn::Endpoint::new_with_abstract_socket(config, server, demux, runtime)
            .expect("endpoint");
        (ep, rx)
    }

    /// Every QUIC packet must reach quinn through the demultiplexer. With QUIC-bit
    /// greasing on, about one short-header packet in 32 started with a byte below 4 and
    /// was taken for STUN; DATAGRAM frames in it were lost for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_quic_packet_is_mistaken_for_stun() {
        let (ids, idc) = (
            Identity::generate().expect("id"),
            Identity::generate().expect("id"),
        );
        let (ps, pc) = (PinnedPeer::new(), PinnedPeer::new());
        ps.set(Some(idc.fingerprint()));
        pc.set(Some(ids.fingerprint()));
        let perf = Performance::default();
        let (se, _srx) = endpoint(Some(server_config(&ids, ps, &perf).expect("server config")));
        let (ce, _crx) = endpoint(None);
        let addr = se.local_addr().expect("addr");
        let accept = tokio::spawn(async move {
            se.accept()
                .await
                .expect("incoming")
                .await
                .expect("connection")
        });
        let conn = ce
            .connect_with(
                client_config(&idc, pc, &perf).expect("client config"),
                addr,
                "stunfwd",
            )
            .expect("connect")
            .await
            .expect("handshake");
        let server = accept.await.expect("accept task");
        let counter = tokio::spawn(async move {
            let mut n = 0;
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(1), server.read_datagram()).await
            {
                n += 1;
            }
            n
        });
        let start = std::time::Instant::now();
        for i in 0..2000u64 {
            if let Some(w) = Duration::from_micros(250 * i).checked_sub(start.elapsed()) {
                tokio::time::sleep(w).await;
            }
            conn.send_datagram(bytes::Bytes::from(vec![i as u8; 64]))
                .expect("send datagram");
        }
        let got = counter.await.expect("counter task");
        let lost = conn.stats().path.lost_packets;
        // Loopback at 4,000 datagrams/s: nothing may go missing.
        assert_eq!(
            (got, lost),
            (2000, 0),
            "received {got} of 2000, {lost} packets lost"
        );
    }

    /// Issue #14, finding 6: a packet "from" a relayed peer's address that arrives
    /// directly does not move the peer off the relay (anyone can forge one); after an
    /// authentic direct check from that address (`direct_path_proven`), its direct
    /// packets do. The relayed set is bounded.
    #[tokio::test]
    async fn only_a_proven_peer_leaves_the_relay() {
        let runtime = Arc::new(quinn::TokioRuntime);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        sock.set_nonblocking(true).expect("non-blocking");
        let local = sock.local_addr().expect("addr");
        let (demux, _rx) = DemuxSocket::new(runtime.wrap_udp_socket(sock).expect("wrap"));
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        let peer_addr = peer.local_addr().expect("addr");
        demux.set_relay_server(Some("127.0.0.1:9".parse().expect("addr")));
        assert!(demux.route_via_relay(peer_addr));

        async fn recv(demux: &Arc<DemuxSocket>) -> SocketAddr {
            let mut storage = vec![0u8; 2048];
            let mut meta = [RecvMeta::default()];
            let mut bufs = [IoSliceMut::new(&mut storage)];
            tokio::time::timeout(
                Duration::from_secs(2),
                poll_fn(|cx| demux.poll_recv(cx, &mut bufs, &mut meta)),
            )
            .await
            .expect("a datagram")
            .expect("received");
            meta[0].addr
        }
        // A forged (or merely unproven) short-header QUIC-looking packet.
        peer.send_to(&[0x40; 40], local).expect("send");
        assert_eq!(recv(&demux).await, peer_addr);
        assert!(
            demux.is_via_relay(peer_addr),
            "moved off the relay unproven"
        );
        // Proven by an authentic direct check: the next direct packet moves it.
        demux.direct_path_proven(peer_addr);
        peer.send_to(&[0x40; 40], local).expect("send");
        assert_eq!(recv(&demux).await, peer_addr);
        assert!(
            !demux.is_via_relay(peer_addr),
            "a proven peer follows the direct path"
        );
        // Proof is not remembered for peers that are not relayed.
        demux.direct_path_proven(peer_addr);
        assert!(demux.route_via_relay(peer_addr));
        peer.send_to(&[0x40; 40], local).expect("send");
        let _ = recv(&demux).await;
        assert!(demux.is_via_relay(peer_addr));

        for i in 0..(MAX_RELAYED_PEERS as u16 * 2) {
            let _ = demux.route_via_relay(SocketAddr::from(([192, 0, 2, 1], 1000 + i)));
        }
        assert_eq!(read(&demux.routes).via.len(), MAX_RELAYED_PEERS);
    }
}
