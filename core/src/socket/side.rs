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
    /// The one peer address it serves.
    pub peer: SocketAddr,
}

impl Side {
    /// Wraps `socket` (non-blocking, bound) for the peer at `peer`.
    pub fn new(socket: std::net::UdpSocket, peer: SocketAddr) -> io::Result<Side> {
        use quinn::Runtime as _;
        socket.set_nonblocking(true)?;
        Ok(Side {
            socket: quinn::TokioRuntime.wrap_udp_socket(socket)?,
            peer,
        })
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
        Some(match side.socket.try_send(&transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        })
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
