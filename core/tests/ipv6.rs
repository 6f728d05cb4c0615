//! IPv6 on loopback (issue #17): the rendezvous server and its STUN responder listen on
//! `[::]` for both families, two engines tunnel over `::1`, and an engine on the
//! default dual-stack socket talks to an IPv4-only one over IPv4.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use stunfwd_core::stun::message::{self, Parsed};
use stunfwd_core::{Engine, Proto, SignalServer, SignalServerConfig};

/// A rendezvous server on `[::]` (HTTP and STUN, dual-stack) on its own runtime.
fn dual_stack_rendezvous() -> (tokio::runtime::Runtime, SignalServer) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let any: SocketAddr = "[::]:0".parse().unwrap();
    let server = rt
        .block_on(SignalServer::start(SignalServerConfig {
            http: any,
            stun: Some(any),
            ..SignalServerConfig::default()
        }))
        .unwrap();
    (rt, server)
}

/// What the STUN server at `server` says our address is, asked from `bind`.
fn stun_mapped(bind: &str, server: SocketAddr) -> (SocketAddr, SocketAddr) {
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let tid = message::new_tid();
    let mut buf = [0u8; 512];
    for _ in 0..4 {
        s.send_to(&message::binding_request(tid), server).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if let Some(Parsed::Success {
                mapped: Some(m), ..
            }) = message::parse(&buf[..n])
            {
                return (s.local_addr().unwrap(), m);
            }
        }
    }
    panic!("no STUN answer from {server}");
}

/// One HTTP GET of `/metrics`-less root over `addr`: the server answers something.
fn http_answers(addr: SocketAddr) -> bool {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 ")
}

#[test]
fn the_rendezvous_and_its_stun_responder_listen_on_both_families() {
    let (rt, server) = dual_stack_rendezvous();
    let (http, stun) = (server.http_addr(), server.stun_addr().unwrap());
    assert!(http.ip().is_unspecified() && http.is_ipv6(), "{http}");
    let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, stun.port()).into();
    let v4: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, stun.port()).into();
    // STUN over ::1 reports the IPv6 address; over 127.0.0.1 the plain IPv4 one, not
    // the IPv4-mapped form the dual-stack socket sees.
    let (local6, mapped6) = stun_mapped("[::1]:0", v6);
    assert_eq!(mapped6, local6);
    let (local4, mapped4) = stun_mapped("127.0.0.1:0", v4);
    assert_eq!(mapped4, local4);
    assert!(mapped4.is_ipv4());
    assert!(http_answers(
        (std::net::Ipv6Addr::LOCALHOST, http.port()).into()
    ));
    assert!(http_answers(
        (std::net::Ipv4Addr::LOCALHOST, http.port()).into()
    ));
    rt.block_on(server.stop(Duration::from_millis(200)));
}

/// Echoes `data` through the client's TCP mapping and checks it.
fn echo_through(client: &Engine, data: &[u8]) {
    let local = client
        .mappings()
        .into_iter()
        .find(|m| m.mapping.proto == Proto::Tcp)
        .map(|m| m.listen)
        .unwrap();
    let mut s = connect(local);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(data).unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    assert!(got == data, "echo differs");
}

/// Two peers that have only `::1`: rendezvous, STUN and the tunnel all over IPv6.
#[test]
fn two_peers_tunnel_over_ipv6_loopback() {
    let (rt, server) = dual_stack_rendezvous();
    let url = format!("http://[::1]:{}/", server.http_addr().port());
    let stun: SocketAddr = (
        std::net::Ipv6Addr::LOCALHOST,
        server.stun_addr().unwrap().port(),
    )
        .into();
    let echo = tcp_echo();
    let room = room();
    let v6 = serde_json::json!({ "bind": "[::1]:0" });
    let s = Engine::start(config_for(
        &url,
        stun,
        "server",
        &room,
        "s3cret",
        &[],
        v6.clone(),
    ))
    .unwrap();
    let c = Engine::start(config_for(
        &url,
        stun,
        "client",
        &room,
        "s3cret",
        &[format!("tcp:0:{}", echo.port())],
        v6,
    ))
    .unwrap();
    c.wait_connected(Duration::from_secs(20)).unwrap();
    echo_through(&c, &pattern(256 * 1024, 6));
    let stats = c.stats();
    assert!(stats.peer_addr.unwrap().is_ipv6(), "{:?}", stats.peer_addr);
    assert_eq!(stats.public_addr.map(|a| a.is_ipv6()), Some(true));
    c.stop(Duration::from_secs(1));
    s.stop(Duration::from_secs(1));
    rt.block_on(server.stop(Duration::from_millis(200)));
}

/// The default dual-stack socket (`[::]`) against a peer that has only IPv4: the
/// tunnel runs over IPv4, and both sides name each other by plain IPv4 addresses
/// (never `::ffff:a.b.c.d`).
#[test]
fn a_dual_stack_peer_and_an_ipv4_only_peer_tunnel_over_ipv4() {
    let rv = Rendezvous::start();
    let echo = tcp_echo();
    let room = room();
    let s = Engine::start(config_for(
        &rv.url,
        rv.stun,
        "server",
        &room,
        "s3cret",
        &[],
        serde_json::json!({ "bind": "[::]:0" }),
    ))
    .unwrap();
    assert!(s.local_addr().is_ipv6(), "{}", s.local_addr());
    let c = Engine::start(rv.config(
        "client",
        &room,
        "s3cret",
        &[format!("tcp:0:{}", echo.port())],
    ))
    .unwrap();
    c.wait_connected(Duration::from_secs(20)).unwrap();
    s.wait_connected(Duration::from_secs(20)).unwrap();
    echo_through(&c, &pattern(256 * 1024, 7));
    let (ss, cs) = (s.stats(), c.stats());
    assert_eq!(
        cs.peer_addr.map(|a| a.ip()),
        Some("127.0.0.1".parse().unwrap())
    );
    let seen = ss.peer_addr.unwrap();
    assert!(seen.is_ipv4(), "the server names its IPv4 peer {seen}");
    assert_eq!(seen, c.local_addr());
    assert!(ss.public_addr.unwrap().is_ipv4());
    c.stop(Duration::from_secs(1));
    s.stop(Duration::from_secs(1));
}

/// 32 MB echoed through a tunnel whose server side binds `server_bind`; returns MB/s
/// (both directions counted) and checks every byte.
fn echo_rate(rv: &Rendezvous, server_bind: &str) -> f64 {
    const SIZE: usize = 32 << 20;
    let echo = tcp_echo();
    let room = room();
    let s = Engine::start(config_for(
        &rv.url,
        rv.stun,
        "server",
        &room,
        "s3cret",
        &[],
        serde_json::json!({ "bind": server_bind }),
    ))
    .unwrap();
    let c = Engine::start(rv.config(
        "client",
        &room,
        "s3cret",
        &[format!("tcp:0:{}", echo.port())],
    ))
    .unwrap();
    c.wait_connected(Duration::from_secs(20)).unwrap();
    let data = pattern(SIZE, 9);
    let started = std::time::Instant::now();
    echo_through(&c, &data);
    let rate = (2 * SIZE) as f64 / started.elapsed().as_secs_f64() / 1e6;
    c.stop(Duration::from_secs(1));
    s.stop(Duration::from_secs(1));
    rate
}

/// The design decision's measurement (docs/architecture.md, "One dual-stack socket"):
/// IPv4 traffic through the dual-stack socket (IPv4-mapped in the kernel, translated
/// in `DemuxSocket`) against a plain IPv4 socket, alternating, three rounds each.
/// Printed, not asserted.
#[test]
fn ipv4_through_the_dual_stack_socket_runs_at_ipv4_speed() {
    let rv = Rendezvous::start();
    let (mut v4, mut dual) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        v4.push(echo_rate(&rv, "127.0.0.1:0"));
        dual.push(echo_rate(&rv, "[::]:0"));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "32 MB echo over IPv4 loopback: server on 127.0.0.1 {:.0} MB/s, on [::] (dual-stack) {:.0} MB/s (medians of 3; runs {v4:.0?} / {dual:.0?})",
        median(&mut v4),
        median(&mut dual)
    );
}
