//! The engine's one UDP socket, shared by STUN, connectivity checks and QUIC.
//!
//! quinn drives the socket; [`DemuxSocket`] sits between quinn and the real socket and
//! takes out every STUN datagram (first byte 0–3, RFC 7983) before quinn sees it, handing
//! it to the engine's STUN dispatcher. Everything the engine sends (STUN requests,
//! checks, answers) goes out through the same socket, so the address STUN reports is
//! the address the peer punches to and QUIC later uses.

use std::fmt;
use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use std::net::IpAddr;

use crate::stun::message::is_stun_first_byte;

/// A STUN datagram taken off the shared socket.
#[derive(Debug)]
pub(crate) struct StunDatagram {
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// Wraps quinn's socket and diverts STUN datagrams to a channel.
pub(crate) struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    stun_tx: mpsc::Sender<StunDatagram>,
    /// STUN datagrams dropped because the dispatcher was behind.
    pub dropped: AtomicU64,
}

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
            }),
            stun_rx,
        )
    }

    /// Sends one datagram (used for STUN; QUIC sends through quinn).
    pub async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
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

    fn divert(&self, from: SocketAddr, data: &[u8]) {
        let datagram = StunDatagram {
            from,
            data: data.to_vec(),
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
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                let stride = m.stride.max(1);
                let mut all_stun = true;
                for start in (0..m.len).step_by(stride) {
                    let end = (start + stride).min(m.len);
                    let segment = &bufs[i][start..end];
                    if segment.first().is_some_and(|b| is_stun_first_byte(*b)) {
                        self.divert(m.addr, segment);
                    } else {
                        all_stun = false;
                    }
                }
                // A GRO batch that mixes STUN and QUIC is left whole: quinn drops the
                // STUN segments as unparsable, the QUIC ones are kept.
                if all_stun && m.len > 0 {
                    continue;
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
