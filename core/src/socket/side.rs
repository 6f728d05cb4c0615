//! The tunnel's second socket: the one of birthday punching's sockets that the peer
//! reached ([`crate::agent::birthday`]). Behind a NAT that maps every destination to a
//! new port, our main socket cannot reach an easy peer that sits behind a filtering
//! NAT, but one of the many sockets punching opened can: that socket joins
//! [`DemuxSocket`](super::DemuxSocket) and carries everything to and from that one
//! peer address (QUIC, checks, answers), while the main socket keeps STUN, TURN and
//! everyone else.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::AsyncUdpSocket;

use super::DemuxSocket;
use crate::sync::{read, write};

/// A socket that carries the traffic of one peer address.
pub(crate) struct Side {
    /// The socket, wrapped for quinn.
    pub socket: Arc<dyn AsyncUdpSocket>,
    /// The same socket unwrapped, for a send the wrapper refuses because the runtime
    /// has not yet seen it writable (right after it joined).
    raw: std::net::UdpSocket,
    /// The one peer address it serves.
    pub peer: SocketAddr,
}

impl Side {
    /// Wraps `socket` (non-blocking, bound) for the peer at `peer`.
    pub fn new(socket: std::net::UdpSocket, peer: SocketAddr) -> io::Result<Side> {
        use quinn::Runtime as _;
        socket.set_nonblocking(true)?;
        let raw = socket.try_clone()?;
        Ok(Side {
            socket: quinn::TokioRuntime.wrap_udp_socket(socket)?,
            raw,
            peer,
        })
    }

    /// Sends `transmit`. A freshly registered socket is not known writable until the
    /// runtime's next turn, and its wrapper then says `WouldBlock` without trying: the
    /// answer to the check that made it join, and the peer's first QUIC packets, would
    /// be lost (and wait for a retransmission). Those go out through the plain socket
    /// (segment by segment); only a really full buffer drops the packet.
    fn send(&self, transmit: &Transmit) -> io::Result<()> {
        match self.socket.try_send(transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let size = transmit
                    .segment_size
                    .unwrap_or(transmit.contents.len())
                    .max(1);
                for segment in transmit.contents.chunks(size) {
                    match self.raw.send_to(segment, transmit.destination) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) => return Err(e),
                        Ok(_) => {}
                    }
                }
                Ok(())
            }
            other => other,
        }
    }
}

impl DemuxSocket {
    /// Makes `socket` the path to `peer` from now on: everything sent to `peer` leaves
    /// through it, and what arrives on it is read like the main socket's (without
    /// relay framing). Replaces an earlier side socket.
    pub fn adopt_side(&self, socket: std::net::UdpSocket, peer: SocketAddr) -> io::Result<()> {
        let side = Side::new(socket, peer)?;
        let side = Side {
            peer: super::canonical(side.peer),
            ..side
        };
        *write(&self.side) = Some(side);
        self.has_side.store(true, Ordering::Release);
        self.recv_waker.wake();
        Ok(())
    }

    /// Closes the side socket, if any (a new attempt punches anew).
    pub fn clear_side(&self) {
        self.has_side.store(false, Ordering::Release);
        *write(&self.side) = None;
    }

    /// The peer address the side socket serves, if one joined.
    pub fn side_peer(&self) -> Option<SocketAddr> {
        if !self.has_side.load(Ordering::Acquire) {
            return None;
        }
        read(&self.side).as_ref().map(|s| s.peer)
    }

    /// Sends `transmit` through the side socket when it is for the side's peer;
    /// `None` when it is not. A full socket buffer drops the packet (QUIC recovers it)
    /// rather than make quinn wait on the main socket's writability.
    pub(super) fn try_send_side(
        &self,
        transmit: &Transmit,
        to: SocketAddr,
    ) -> Option<io::Result<()>> {
        if !self.has_side.load(Ordering::Acquire) {
            return None;
        }
        let side = read(&self.side);
        let side = side.as_ref().filter(|s| s.peer == to)?;
        // The side socket has the peer's own family: canonical addresses.
        let transmit = Transmit {
            destination: to,
            ecn: transmit.ecn,
            contents: transmit.contents,
            segment_size: transmit.segment_size,
            src_ip: None,
        };
        Some(side.send(&transmit))
    }

    /// Reads the side socket: `None` when it has nothing (or is gone), else how many
    /// datagrams are left for quinn once STUN is diverted.
    pub(super) fn poll_recv_side(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Option<usize> {
        let socket = read(&self.side).as_ref()?.socket.clone();
        let n = match socket.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "side socket receive failed");
                return None;
            }
            Poll::Pending => return None,
        };
        self.side_last.store(true, Ordering::Relaxed);
        let mut kept = 0;
        for i in 0..n {
            let mut m = meta[i];
            m.addr = super::canonical(m.addr);
            if self.divert_stun(&m, &bufs[i]) {
                continue;
            }
            self.direct_arrival(&mut m);
            m.addr = self.wire(m.addr);
            super::batch::keep(bufs, meta, i, kept, m);
            kept += 1;
        }
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use quinn::Runtime as _;

    use super::*;

    /// The first packets to the peer leave at once after the side socket joins (the
    /// answer to the check that made it join, the first QUIC packets), though the
    /// runtime has not yet seen the new socket writable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_side_socket_sends_at_once_after_it_joins() {
        let main = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        main.set_nonblocking(true).expect("non-blocking");
        let inner = quinn::TokioRuntime.wrap_udp_socket(main).expect("wrap");
        let (demux, _rx) = DemuxSocket::new(inner);
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        peer.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let peer_addr = peer.local_addr().expect("addr");
        for round in 0..3 {
            let side = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind side");
            let side_addr = side.local_addr().expect("addr");
            demux.adopt_side(side, peer_addr).expect("adopt");
            demux.send_direct(b"first", peer_addr).await.expect("send");
            let mut buf = [0u8; 16];
            let (n, from) = peer.recv_from(&mut buf).expect("the first packet arrives");
            assert_eq!(
                (&buf[..n], from),
                (&b"first"[..], side_addr),
                "round {round}"
            );
        }
    }
}
