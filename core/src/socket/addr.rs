//! Addresses on the engine's dual-stack socket: canonical IPv4 for IPv4-mapped
//! names, which families a socket reaches, which interface addresses we offer as host
//! candidates, and binding sockets dual-stack (issue #17).

use std::io;
use std::net::{IpAddr, SocketAddr};

/// `addr` with an IPv4-mapped IPv6 address turned back into IPv4 (how a dual-stack
/// socket names an IPv4 peer); anything else unchanged.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// A QUIC connection's peer address, canonical (see [`canonical`]): quinn names an
/// IPv4 peer by its IPv4-mapped address on our dual-stack socket.
pub(crate) fn peer_addr(conn: &quinn::Connection) -> SocketAddr {
    canonical(conn.remote_address())
}

/// A non-blocking UDP socket bound to `addr`; on the IPv6 unspecified address a
/// dual-stack one (`IPV6_V6ONLY` off explicitly: the system default,
/// `net.ipv6.bindv6only`, may say otherwise). `buffer`: the least send and receive
/// buffer size to ask for.
pub(crate) fn bind_udp(addr: SocketAddr, buffer: Option<usize>) -> io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        s.set_only_v6(false)?;
    }
    if let Some(buffer) = buffer {
        let _ = s.set_recv_buffer_size(buffer);
        let _ = s.set_send_buffer_size(buffer);
    }
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// The accept queue a TCP listener asks for (Linux caps it at `net.core.somaxconn`,
/// 4,096 by default). std and tokio ask for 128: a burst of 300 connections into a
/// mapping overflowed that, the kernel answered with SYN cookies, and a client whose
/// handshake ACK was dropped had its next segments fail the cookie check and got a
/// reset the engine never saw (`TcpExtSyncookiesFailed`, #19's lost burst
/// connections).
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking TCP listener on `addr` with a [`LISTEN_BACKLOG`] accept queue.
/// `dual_stack`: on the IPv6 unspecified address, take IPv4 connections too (the
/// rendezvous, see [`bind_udp`]); otherwise the system's default applies, as with
/// std's and tokio's listeners (mappings).
pub(crate) fn bind_tcp(addr: SocketAddr, dual_stack: bool) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if dual_stack && addr.is_ipv6() && addr.ip().is_unspecified() {
        s.set_only_v6(false)?;
    }
    // As std and mio do: rebinding a port whose old connections linger in TIME_WAIT.
    // Not on Windows, where it would let us bind a port another program listens on.
    #[cfg(not(windows))]
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// True when a socket bound to `local` can send to `to`: the same family, or any
/// family from the IPv6 unspecified address (the engine binds that dual-stack).
pub(crate) fn reaches(local: SocketAddr, to: SocketAddr) -> bool {
    let to = canonical(to);
    match local {
        SocketAddr::V4(_) => to.is_ipv4(),
        SocketAddr::V6(l) if l.ip().is_unspecified() => true,
        SocketAddr::V6(l) if l.ip().to_ipv4_mapped().is_some() => to.is_ipv4(),
        SocketAddr::V6(_) => to.is_ipv6(),
    }
}

/// A global unicast IPv6 address (2000::/3, RFC 4291): one a peer across the
/// internet can reach. Link-local (fe80::/10) needs a scope and is useless beyond the
/// link; unique-local (fc00::/7) is not routed between sites, and where two peers
/// share one, they share an IPv4 LAN too; loopback and IPv4-mapped are not interface
/// addresses worth offering.
pub fn is_global_v6(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xe000) == 0x2000)
}

/// Our host candidates: the bound address, or every interface address the socket can
/// use when bound to the unspecified address (for `[::]`, dual-stack, the global IPv6
/// ones and the IPv4 ones). Global IPv6 addresses come first, so a working IPv6
/// direct path is the one nominated (RFC 8421 prefers IPv6 likewise), then IPv4,
/// loopback last.
pub(crate) fn host_candidates(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![canonical(local)];
    }
    let addrs = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .collect::<Vec<_>>();
    host_candidates_from(local, &addrs)
}

/// [`host_candidates`] from a given list of interface addresses.
fn host_candidates_from(local: SocketAddr, addrs: &[IpAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|ip| match ip {
            IpAddr::V4(_) => local.is_ipv4() || reaches(local, SocketAddr::new(*ip, 1)),
            IpAddr::V6(_) => local.is_ipv6() && is_global_v6(*ip),
        })
        .map(|ip| SocketAddr::new(ip, local.port()))
        .fold(Vec::new(), |mut seen, a| {
            if !seen.contains(&a) {
                seen.push(a);
            }
            seen
        });
    // IPv6 first, then IPv4; loopback last (it is only useful on one host).
    out.sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv4()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn canonical_unmaps_ipv4_and_leaves_the_rest() {
        assert_eq!(canonical(addr("[::ffff:10.0.0.2]:5")), addr("10.0.0.2:5"));
        assert_eq!(canonical(addr("10.0.0.2:5")), addr("10.0.0.2:5"));
        assert_eq!(canonical(addr("[2001:db8::1]:5")), addr("[2001:db8::1]:5"));
        // IPv4-compatible (deprecated ::a.b.c.d) is not IPv4-mapped.
        assert_eq!(canonical(addr("[::1]:5")), addr("[::1]:5"));
    }

    #[test]
    fn a_dual_stack_socket_reaches_both_families_others_their_own() {
        let (v4, v6) = (addr("192.0.2.1:1"), addr("[2001:db8::1]:1"));
        assert!(reaches(addr("[::]:0"), v4) && reaches(addr("[::]:0"), v6));
        assert!(reaches(addr("0.0.0.0:0"), v4) && !reaches(addr("0.0.0.0:0"), v6));
        assert!(!reaches(addr("[2001:db8::2]:0"), v4) && reaches(addr("[2001:db8::2]:0"), v6));
        assert!(reaches(addr("0.0.0.0:0"), addr("[::ffff:192.0.2.1]:1")));
    }

    /// Only global unicast IPv6 (2000::/3) is offered: not link-local, unique-local,
    /// loopback or mapped. IPv6 leads, loopback trails; an IPv4 socket offers IPv4 only.
    #[test]
    fn host_candidates_offer_global_ipv6_first() {
        let ips: Vec<IpAddr> = [
            "127.0.0.1",
            "10.0.0.2",
            "::1",
            "fe80::1",
            "fd00::2",
            "2001:db8:1:1::2",
            "::ffff:10.0.0.3",
            "10.0.0.2",
        ]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
        assert_eq!(
            host_candidates_from(addr("[::]:4000"), &ips),
            [
                addr("[2001:db8:1:1::2]:4000"),
                addr("10.0.0.2:4000"),
                addr("127.0.0.1:4000")
            ]
        );
        assert_eq!(
            host_candidates_from(addr("0.0.0.0:4000"), &ips),
            [addr("10.0.0.2:4000"), addr("127.0.0.1:4000")]
        );
        assert!(is_global_v6("2001:db8::1".parse().expect("ip")));
        assert!(!is_global_v6("fd10::1".parse().expect("ip")));
        assert!(!is_global_v6("10.0.0.1".parse().expect("ip")));
        assert_eq!(
            host_candidates(addr("[::ffff:127.0.0.1]:9")),
            [addr("127.0.0.1:9")]
        );
    }

    /// 300 connections at once into a listener nobody accepts from yet (a mapping's
    /// listener under a burst, its engine busy) all complete their handshake: the
    /// accept queue holds them. With std's or tokio's 128, the 129th and later SYNs
    /// are dropped (`ListenOverflows`) and those connects hang or are later reset.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_of_connections_fits_the_accept_queue() {
        const CONNS: usize = 300;
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        if somaxconn <= CONNS {
            eprintln!(
                "skipped: net.core.somaxconn is {somaxconn}, which caps any backlog below {CONNS}"
            );
            return;
        }
        let listener = bind_tcp(addr("127.0.0.1:0"), false).expect("listener");
        let to = listener.local_addr().expect("addr");
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..CONNS {
            set.spawn(async move {
                tokio::time::timeout(
                    std::time::Duration::from_secs(3),
                    tokio::net::TcpStream::connect(to),
                )
                .await
            });
        }
        let mut open = Vec::new();
        let mut failed = 0;
        while let Some(r) = set.join_next().await {
            match r.expect("task") {
                Ok(Ok(s)) => open.push(s),
                _ => failed += 1,
            }
        }
        assert_eq!(failed, 0, "{failed} of {CONNS} connects did not complete");
        drop(listener);
    }
}
