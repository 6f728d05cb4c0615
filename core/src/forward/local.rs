//! The local UDP sockets of forwarding: a UDP mapping's listener (client role) and a
//! flow's socket to its target (server role). They are read in batches (`recvmmsg`)
//! and written in batches (GSO: one `sendmsg` carries many datagrams of one size),
//! through quinn-udp, where one system call per datagram was the UDP rows' cost (#19).
//!
//! quinn-udp sets its socket up for QUIC: no fragmentation and UDP GRO. Neither suits
//! a socket that carries an application's datagrams, so both are put back: a datagram
//! larger than the path MTU is fragmented as before, and a plain read never returns
//! several datagrams run together. Off Linux, where they are not put back here, the
//! sockets read and write one datagram at a time.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams read by one [`LocalUdp::try_recv_batch`] at most.
pub(crate) const RECV_BATCH: usize = if BATCH_SIZE < 16 { BATCH_SIZE } else { 16 };

/// Largest datagram sent in a GSO batch: one that fits a 1,500-byte path over IPv6.
/// A larger one goes alone (a GSO segment above the device MTU is refused).
const GSO_MAX_SEGMENT: usize = 1452;

/// Datagrams in one GSO batch at most (the kernel's limit is 64).
const GSO_MAX_SEGMENTS: usize = 32;

/// A local UDP socket with batched reads and writes.
#[derive(Debug)]
pub(crate) struct LocalUdp {
    io: UdpSocket,
    /// quinn-udp's batched I/O; `None` where its options cannot be put back (off Linux).
    state: Option<UdpSocketState>,
    /// The address the socket is connected to, once it is.
    peer: std::sync::OnceLock<SocketAddr>,
    /// Set once the kernel refused a batch for a reason that would recur.
    no_gso: AtomicBool,
}

impl LocalUdp {
    /// Binds a UDP socket at `addr` with kernel buffers of `buffer` bytes.
    pub fn bind(addr: SocketAddr, buffer: usize) -> io::Result<LocalUdp> {
        let domain = socket2::Domain::for_address(addr);
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        let _ = s.set_recv_buffer_size(buffer);
        let _ = s.set_send_buffer_size(buffer);
        s.set_nonblocking(true)?;
        // Set up before the bind, so that no datagram arrives under quinn-udp's options.
        let state = batching(&s, addr.is_ipv6())?;
        s.bind(&addr.into())?;
        Ok(LocalUdp {
            io: UdpSocket::from_std(s.into())?,
            state,
            peer: std::sync::OnceLock::new(),
            no_gso: AtomicBool::new(false),
        })
    }

    /// Connects the socket to `addr`: it then sends there and hears only from there.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.io.connect(addr).await?;
        let _ = self.peer.set(self.io.peer_addr()?);
        Ok(())
    }

    /// The tokio socket, for single reads.
    pub fn io(&self) -> &UdpSocket {
        &self.io
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Reads up to `bufs.len()` datagrams that have arrived, in one system call; the
    /// number read, or `WouldBlock` when none has. `meta[i]` describes `bufs[i]`.
    pub fn try_recv_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let Some(state) = &self.state else {
            // One at a time.
            let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
                return Ok(0);
            };
            let (len, addr) = self.io.try_recv_from(buf)?;
            *m = RecvMeta {
                addr,
                len,
                stride: len,
                ..RecvMeta::default()
            };
            return Ok(1);
        };
        self.io.try_io(Interest::READABLE, || {
            state.recv((&self.io).into(), bufs, meta)
        })
    }

    /// Waits for datagrams and reads them as [`try_recv_batch`](Self::try_recv_batch).
    #[cfg(test)]
    pub async fn recv_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        loop {
            self.io.readable().await?;
            match self.try_recv_batch(bufs, meta) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// Sends one datagram to `dest`, or to the connected peer when `None`, without
    /// waiting: a full socket buffer drops it, as the kernel would a datagram in flight.
    pub fn send_one(&self, payload: &[u8], dest: Option<SocketAddr>) -> io::Result<()> {
        // A direct non-blocking send: tokio's try_send* answers WouldBlock until its
        // reactor has seen the socket writable once, which dropped the first datagrams
        // of new flows.
        let sock = socket2::SockRef::from(&self.io);
        match dest {
            Some(dest) => sock.send_to(payload, &dest.into()),
            None => sock.send(payload),
        }
        .map(|_| ())
    }

    /// Whether datagrams of `len` bytes may go out together through [`send_batch`].
    ///
    /// [`send_batch`]: LocalUdp::send_batch
    pub fn batches(&self, len: usize) -> bool {
        (1..=GSO_MAX_SEGMENT).contains(&len)
            && self.max_batch() > 1
            && !self.no_gso.load(Ordering::Relaxed)
    }

    /// Datagrams one [`send_batch`](LocalUdp::send_batch) may carry.
    pub fn max_batch(&self) -> usize {
        self.state
            .as_ref()
            .map_or(1, |s| s.max_gso_segments().min(GSO_MAX_SEGMENTS))
    }

    /// Sends `contents`, datagrams of `segment` bytes laid end to end (the last may be
    /// shorter), to `dest` or the connected peer, in one system call where it can.
    ///
    /// A batch the kernel refuses is sent again one datagram at a time, so nothing is
    /// lost that single sends would have delivered: a full buffer (the datagrams that
    /// fit go), a pending ICMP error on a connected socket, or a path whose MTU is below
    /// a segment (a single datagram is fragmented; a GSO segment is refused). Any refusal
    /// but a full buffer or an ICMP error turns batching off for this socket.
    pub fn send_batch(
        &self,
        contents: &[u8],
        segment: usize,
        dest: Option<SocketAddr>,
    ) -> io::Result<()> {
        let Some(destination) = dest.or_else(|| self.peer.get().copied()) else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no destination",
            ));
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: (contents.len() > segment).then_some(segment),
            src_ip: None,
        };
        let sent = match &self.state {
            Some(state) => state.try_send((&self.io).into(), &transmit),
            None => Err(io::Error::from(io::ErrorKind::Unsupported)),
        };
        let Err(e) = sent else {
            return Ok(());
        };
        let transient = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused
        );
        if !transient {
            tracing::debug!(error = %e, segment, "GSO refused on a local UDP socket; sending datagrams one by one from now on");
            self.no_gso.store(true, Ordering::Relaxed);
        }
        let mut last = Ok(());
        for d in contents.chunks(segment.max(1)) {
            if let Err(e) = self.send_one(d, dest) {
                last = Err(e);
            }
        }
        last
    }
}

impl AsFd for LocalUdp {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

/// quinn-udp's state for socket `s`, with the options it changes put back.
#[cfg(target_os = "linux")]
fn batching(s: &socket2::Socket, v6: bool) -> io::Result<Option<UdpSocketState>> {
    let before = Options::read(s, v6);
    let state = UdpSocketState::new(s.into())?;
    before.restore(s, v6)?;
    Ok(Some(state))
}

/// Off Linux, quinn-udp's options (no fragmentation) are not put back here: the socket
/// reads and writes one datagram at a time.
#[cfg(not(target_os = "linux"))]
fn batching(_: &socket2::Socket, _: bool) -> io::Result<Option<UdpSocketState>> {
    Ok(None)
}

#[cfg(target_os = "linux")]
/// The socket options quinn-udp changes that an application's datagrams depend on.
#[derive(Debug, Clone, Copy)]
struct Options {
    mtu_discover: Option<libc::c_int>,
    v6_mtu_discover: Option<libc::c_int>,
    v6_dontfrag: Option<libc::c_int>,
}

#[cfg(target_os = "linux")]
impl Options {
    fn read(s: &impl AsFd, v6: bool) -> Options {
        let fd = s.as_fd();
        Options {
            mtu_discover: get_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            v6_mtu_discover: v6
                .then(|| get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER))
                .flatten(),
            v6_dontfrag: v6
                .then(|| get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG))
                .flatten(),
        }
    }

    /// Puts the options back, and turns UDP GRO off: a plain read of a socket with GRO
    /// on returns several datagrams as one. An option that cannot be put back fails the
    /// socket: it would refuse large datagrams or merge small ones.
    fn restore(self, s: &impl AsFd, v6: bool) -> io::Result<()> {
        let fd = s.as_fd();
        if let Some(v) = self.mtu_discover {
            set_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v)?;
        }
        if v6 {
            if let Some(v) = self.v6_mtu_discover {
                set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, v)?;
            }
            if let Some(v) = self.v6_dontfrag {
                set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, v)?;
            }
        }
        // A kernel without UDP GRO has nothing to turn off.
        if get_int(fd, libc::SOL_UDP, libc::UDP_GRO).is_some_and(|v| v != 0) {
            set_int(fd, libc::SOL_UDP, libc::UDP_GRO, 0)?;
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
/// An integer socket option, `None` when the socket has none of that name.
fn get_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given, and `fd` is an
    // open socket.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    (r == 0).then_some(value)
}

#[cfg(target_os = "linux")]
fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is valid for reads of its size, and `fd` is an open socket.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn options(s: &LocalUdp, v6: bool) -> (Option<i32>, Option<i32>, Option<i32>, Option<i32>) {
        let o = Options::read(s.io(), v6);
        let gro = get_int(s.io().as_fd(), libc::SOL_UDP, libc::UDP_GRO);
        (o.mtu_discover, o.v6_mtu_discover, o.v6_dontfrag, gro)
    }

    /// What quinn-udp sets for QUIC is put back: fragmentation as a plain socket has it,
    /// and no GRO.
    #[tokio::test]
    async fn a_local_socket_keeps_a_plain_sockets_options() {
        for (addr, v6) in [("127.0.0.1:0", false), ("[::1]:0", true)] {
            let addr: SocketAddr = addr.parse().expect("addr");
            let Ok(plain) = std::net::UdpSocket::bind(addr) else {
                eprintln!("skipped {addr}: cannot bind (no IPv6 loopback here)");
                continue;
            };
            let o = Options::read(&plain, v6);
            let ours = LocalUdp::bind(addr, 1 << 20).expect("bind");
            assert_eq!(
                options(&ours, v6),
                (o.mtu_discover, o.v6_mtu_discover, o.v6_dontfrag, Some(0)),
                "{addr}"
            );
            assert!(
                o.mtu_discover.is_some(),
                "IP_MTU_DISCOVER readable on {addr}"
            );
        }
    }

    /// A batch sent with GSO arrives as separate datagrams of the right sizes, and a
    /// batched read returns them one per buffer.
    #[tokio::test]
    async fn a_batch_goes_out_as_datagrams_and_comes_in_as_a_batch() {
        let a = LocalUdp::bind("127.0.0.1:0".parse().expect("addr"), 1 << 20).expect("a");
        let b = LocalUdp::bind("127.0.0.1:0".parse().expect("addr"), 1 << 20).expect("b");
        let to = b.local_addr().expect("addr");
        a.connect(to).await.expect("connect");
        let sizes = [1200usize; 7];
        let mut contents = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            contents.extend(std::iter::repeat_n(i as u8, *n));
        }
        contents.extend([0xee; 300]);
        assert!(a.batches(1200), "GSO on loopback");
        a.send_batch(&contents, 1200, None).expect("send");
        a.send_one(&[0xab; 3000], None).expect("send one");
        let mut storage = vec![0u8; RECV_BATCH * 4096];
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < 9 {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.chunks_mut(4096).map(IoSliceMut::new).collect();
            let mut meta = vec![RecvMeta::default(); bufs.len()];
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                b.recv_batch(&mut bufs, &mut meta),
            )
            .await
            .expect("datagrams arrive")
            .expect("recv");
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                assert_eq!(m.stride, m.len, "no GRO: one datagram per buffer");
                assert_eq!(m.addr, a.local_addr().expect("addr"));
                got.push(buf[..m.len].to_vec());
            }
        }
        assert_eq!(got.len(), 9);
        for (i, d) in got.iter().take(7).enumerate() {
            assert_eq!(d, &vec![i as u8; 1200]);
        }
        assert_eq!(got[7], vec![0xee; 300]);
        assert_eq!(got[8], vec![0xab; 3000]);
    }

    /// A batch the kernel refuses (here: more segments than UDP GSO allows, 64 or 128) is sent one
    /// datagram at a time, nothing lost, and batching stops for that socket.
    #[tokio::test]
    async fn a_refused_batch_is_sent_one_by_one_and_batching_stops() {
        let a = LocalUdp::bind("127.0.0.1:0".parse().expect("addr"), 1 << 20).expect("a");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("b");
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        a.connect(b.local_addr().expect("addr"))
            .await
            .expect("connect");
        assert!(a.batches(100));
        let contents: Vec<u8> = (0..200u8).flat_map(|i| [i; 100]).collect();
        a.send_batch(&contents, 100, None).expect("sent one by one");
        let mut buf = [0u8; 2048];
        for i in 0..200u8 {
            let n = b.recv(&mut buf).expect("every datagram arrives");
            assert_eq!(&buf[..n], &[i; 100][..]);
        }
        assert!(!a.batches(100), "batching is off after a refusal");
    }
}
