//! Sending one datagram with a chosen IP TTL (IPv6: hop limit), without touching the
//! socket's own TTL, so QUIC packets sent at the same moment keep theirs.
//!
//! Used for the opening packets of hole punching: sent with a small TTL they leave our
//! own NAT (which records the mapping and lets the peer's packets in) but expire on the
//! way, before they reach the peer's router. A check that reached the peer's router
//! before the peer had sent anything toward us would be delivered to that router
//! itself, and on a Linux router without an input filter it leaves a conntrack entry
//! that makes the router move the peer's own packets to another port.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Sends `data` to `to` from `socket` with IP TTL (or hop limit) `ttl`, as one
/// `sendmsg` with an `IP_TTL` / `IPV6_HOPLIMIT` control message.
#[cfg(target_os = "linux")]
pub(crate) fn send_with_ttl(
    socket: &UdpSocket,
    data: &[u8],
    to: SocketAddr,
    ttl: u8,
) -> io::Result<()> {
    use std::mem::size_of;
    // An IPv4-mapped IPv6 destination leaves on the IPv4 path, which reads IP_TTL.
    let v4 = match to {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let (level, kind) = if v4 {
        (libc::IPPROTO_IP, libc::IP_TTL)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT)
    };
    let int = size_of::<libc::c_int>() as u32;
    // u64s keep the control header aligned; 32 bytes hold CMSG_SPACE(sizeof(int)).
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
    let (space, len) = unsafe { (libc::CMSG_SPACE(int) as usize, libc::CMSG_LEN(int)) };
    if space > size_of::<[u64; 4]>() {
        return Err(io::Error::other("control message does not fit"));
    }
    // SAFETY: `control` is 8-aligned (as `cmsghdr` needs) and at least `space` bytes
    // long, so the header and the int after it (CMSG_DATA) lie inside it.
    unsafe {
        let hdr = control.as_mut_ptr().cast::<libc::cmsghdr>();
        (*hdr).cmsg_len = len as _;
        (*hdr).cmsg_level = level;
        (*hdr).cmsg_type = kind;
        libc::CMSG_DATA(hdr)
            .cast::<libc::c_int>()
            .write_unaligned(libc::c_int::from(ttl));
    }
    // SAFETY: the first `space` bytes of `control` are initialised plain bytes.
    let control = unsafe { std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), space) };
    let addr = socket2::SockAddr::from(to);
    let buffers = [io::IoSlice::new(data)];
    let msg = socket2::MsgHdr::new()
        .with_addr(&addr)
        .with_buffers(&buffers)
        .with_control(control);
    socket2::SockRef::from(socket).sendmsg(&msg, 0)?;
    Ok(())
}

/// Elsewhere the opening packets go out with the socket's normal TTL.
#[cfg(not(target_os = "linux"))]
pub(crate) fn send_with_ttl(
    socket: &UdpSocket,
    data: &[u8],
    to: SocketAddr,
    _ttl: u8,
) -> io::Result<()> {
    socket.send_to(data, to).map(|_| ())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The TTL really is set per packet: a receiver with IP_RECVTTL sees it, and the
    /// socket's own TTL is left alone.
    #[test]
    fn the_packet_carries_the_ttl_and_the_socket_keeps_its_own() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let on: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option value of the right size.
        let r = unsafe {
            libc::setsockopt(
                rx.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVTTL,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(r, 0, "IP_RECVTTL");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let before = tx.ttl().expect("ttl");
        send_with_ttl(&tx, b"open", rx.local_addr().expect("addr"), 3).expect("send");
        assert_eq!(tx.ttl().expect("ttl"), before, "socket TTL unchanged");

        let mut data = [0u8; 16];
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: zeroed msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        // SAFETY: msg points at live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(rx.as_raw_fd(), &mut msg, 0) };
        assert_eq!(n, 4, "received the datagram");
        let mut ttl = None;
        // SAFETY: walking the control messages the kernel wrote into `control`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TTL {
                    ttl = Some(libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned());
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        assert_eq!(ttl, Some(3), "the datagram arrived with TTL 3");
    }
}
