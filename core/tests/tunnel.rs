//! Two engines and a rendezvous server in one process on loopback: real sockets, real
//! QUIC. Each test reads as a user's story.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use stunfwd_core::{Engine, Error, Mapping, PathKind, Proto, State};

#[test]
fn tcp_50_mb_each_way_arrives_intact() {
    const SIZE: usize = 50 << 20;
    let rv = Rendezvous::start();
    // The target sends its own 50 MB and hashes what it receives.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    let (hash_tx, hash_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (s, _) = target.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            w.write_all(&pattern(SIZE, 2)).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut r = s;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
            hasher.update(&buf[..n]);
        }
        writer.join().unwrap();
        hash_tx.send((total, hasher.finalize().to_vec())).unwrap();
    });
    let (_server, client) = pair(&rv, &[format!("tcp:0:{}", target_addr.port())]);
    let local = mapping_addr(&client, Proto::Tcp);

    let started = Instant::now();
    let s = connect(local);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&pattern(SIZE, 1)).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = s;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        hasher.update(&buf[..n]);
    }
    writer.join().unwrap();
    let elapsed = started.elapsed();
    let (target_total, target_hash) = hash_rx.recv_timeout(Duration::from_secs(60)).unwrap();

    assert_eq!(total, SIZE, "client received everything");
    assert_eq!(
        hasher.finalize().to_vec(),
        Sha256::digest(pattern(SIZE, 2)).to_vec()
    );
    assert_eq!(target_total, SIZE, "target received everything");
    assert_eq!(target_hash, Sha256::digest(pattern(SIZE, 1)).to_vec());
    let mbps = (2 * SIZE) as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "50 MB each way through the tunnel in {:.2} s: {mbps:.0} MB/s combined ({:.0} MB/s each way)",
        elapsed.as_secs_f64(),
        mbps / 2.0
    );
    let stats = client.stats();
    assert!(stats.mappings[0].traffic.bytes_sent >= SIZE as u64);
    assert!(stats.mappings[0].traffic.bytes_received >= SIZE as u64);
}

#[test]
fn hundred_concurrent_connections_each_get_their_own_data() {
    let rv = Rendezvous::start();
    let echo = tcp_echo();
    let (_server, client) = pair(&rv, &[format!("tcp:0:{}", echo.port())]);
    let local = mapping_addr(&client, Proto::Tcp);
    let handles: Vec<_> = (0..100u64)
        .map(|i| {
            std::thread::spawn(move || {
                let data = pattern(64 * 1024 + i as usize * 13, i + 100);
                let mut s = connect(local);
                let mut w = s.try_clone().unwrap();
                let d2 = data.clone();
                let writer = std::thread::spawn(move || w.write_all(&d2).unwrap());
                let mut got = vec![0u8; data.len()];
                s.read_exact(&mut got).unwrap();
                writer.join().unwrap();
                got == data
            })
        })
        .collect();
    let ok = count_true(handles);
    assert_eq!(ok, 100);
    assert_eq!(client.stats().mappings[0].traffic.connections_opened, 100);
}

#[test]
fn half_close_client_shuts_write_and_still_reads_reply() {
    let rv = Rendezvous::start();
    // Reads until EOF, then answers with the byte count and closes.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = target.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .unwrap();
    });
    let (_server, client) = pair(&rv, &[format!("tcp:0:{}", target_addr.port())]);
    let mut s = connect(mapping_addr(&client, Proto::Tcp));
    s.write_all(b"hello, half-closed world").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 24 bytes");
}

#[test]
fn reset_is_propagated_to_the_client() {
    let rv = Rendezvous::start();
    // Accepts, then aborts the connection with RST.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    std::thread::spawn(move || {
        let (s, _) = target.accept().unwrap();
        let mut buf = [0u8; 5];
        let mut r = &s;
        r.read_exact(&mut buf).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let (_server, client) = pair(&rv, &[format!("tcp:0:{}", target_addr.port())]);
    let mut s = connect(mapping_addr(&client, Proto::Tcp));
    s.write_all(b"hello").unwrap();
    let mut buf = [0u8; 16];
    let err = s.read(&mut buf).expect_err("reset, not a clean EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[test]
fn udp_thousand_mixed_datagrams_arrive_intact() {
    use std::collections::HashMap;
    let rv = Rendezvous::start();
    let echo = udp_echo();
    let (_server, client) = pair(&rv, &[format!("udp:0:{}", echo.port())]);
    let local = mapping_addr(&client, Proto::Udp);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    // Sizes 1..=9000, deterministic, many above one QUIC datagram (those go over the
    // flow's stream).
    let datagrams: Vec<Vec<u8>> = (0..1000u64)
        .map(|i| {
            let size = 1 + ((i * 7919 + 13) % 9000) as usize;
            let mut d = pattern(size, i);
            d[0] = (i % 251) as u8;
            d
        })
        .collect();
    // UDP is allowed to lose datagrams (a busy machine can overflow a socket buffer),
    // so anything not echoed within 1.5 s is sent again, at most 3 times. What counts
    // is that every datagram comes back whole: nothing truncated, nothing corrupted.
    let mut outstanding: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut in_flight: Vec<Vec<u8>> = Vec::new();
    let mut next = 0;
    let mut resent = 0;
    let mut rounds_without_progress = 0;
    let mut received = 0;
    let mut buf = vec![0u8; 65_536];
    const WINDOW: usize = 16;
    while received < datagrams.len() {
        while in_flight.len() < WINDOW && next < datagrams.len() {
            let d = &datagrams[next];
            s.send_to(d, local).unwrap();
            *outstanding.entry(d.clone()).or_default() += 1;
            in_flight.push(d.clone());
            next += 1;
        }
        match s.recv_from(&mut buf) {
            Ok((n, _)) => {
                let got = &buf[..n];
                let Some(count) = outstanding.get_mut(got) else {
                    continue; // a duplicate of something resent
                };
                *count -= 1;
                if *count == 0 {
                    outstanding.remove(got);
                }
                if let Some(pos) = in_flight.iter().position(|d| d == got) {
                    in_flight.swap_remove(pos);
                }
                received += 1;
                rounds_without_progress = 0;
            }
            Err(_) => {
                rounds_without_progress += 1;
                assert!(
                    rounds_without_progress <= 3,
                    "{} datagrams never came back",
                    in_flight.len()
                );
                for d in &in_flight {
                    s.send_to(d, local).unwrap();
                    resent += 1;
                }
            }
        }
    }
    println!("1000 datagrams (1..=9000 bytes) echoed intact; {resent} resent after loss");
    assert!(outstanding.is_empty());
    let t = &client.stats().mappings[0].traffic;
    assert!(t.datagrams_sent >= 1000);
    assert!(t.datagrams_received >= 1000);
}

#[test]
fn udp_two_source_ports_are_two_flows() {
    let rv = Rendezvous::start();
    let whoami = udp_whoami();
    let (_server, client) = pair(&rv, &[format!("udp:0:{}", whoami.port())]);
    let local = mapping_addr(&client, Proto::Udp);
    let mut seen = Vec::new();
    let sockets: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for _ in 0..2 {
        for s in &sockets {
            // UDP may drop a datagram under load: ask up to 5 times.
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            let answer = (0..5).find_map(|_| {
                s.send_to(b"who am i", local).unwrap();
                s.recv_from(&mut buf).ok()
            });
            let (n, _) = answer.expect("an answer within 5 tries");
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    // Each client socket keeps its own server-side source port; the two differ.
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[1], seen[3]);
    assert_ne!(seen[0], seen[1]);
    assert_eq!(client.stats().mappings[0].traffic.connections_opened, 2);
}

#[test]
fn udp_flow_closes_when_idle_and_reopens() {
    // Once a flow is open its datagrams skip the flow's task (the listener sends them
    // itself); after the idle timeout closes it, the next datagram must open a new flow
    // rather than go out under the old, closed flow id.
    let rv = Rendezvous::start();
    let echo = udp_echo();
    let room = room();
    let perf = serde_json::json!({"performance": {"udpFlowTimeout": "1s"}});
    let mk = |mode: &str, maps: &[String]| {
        Engine::start(common::config_for(
            &rv.url,
            rv.stun,
            mode,
            &room,
            "k",
            maps,
            perf.clone(),
        ))
        .unwrap()
    };
    let server = mk("server", &[]);
    let client = mk("client", &[format!("udp:0:{}", echo.port())]);
    client.wait_connected(Duration::from_secs(20)).unwrap();
    server.wait_connected(Duration::from_secs(20)).unwrap();
    let local = mapping_addr(&client, Proto::Udp);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    let mut echoes = |round: u8| {
        (0..200u8)
            .filter(|i| {
                s.send_to(&[round, *i], local).unwrap();
                matches!(s.recv_from(&mut buf), Ok((2, _)) if buf[..2] == [round, *i])
            })
            .count()
    };
    // UDP may drop under load; nearly all must come back.
    assert!(echoes(1) >= 195, "first flow");
    let traffic = |e: &Engine| e.stats().mappings[0].traffic.clone();
    assert_eq!(traffic(&client).connections_opened, 1);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        traffic(&client).connections_active,
        0,
        "idle flow not closed"
    );
    assert!(echoes(2) >= 195, "after the idle timeout");
    let t = traffic(&client);
    assert_eq!(t.connections_opened, 2, "{t:?}");
    assert!(t.datagrams_sent >= 390, "{t:?}");
}

#[test]
fn target_forbidden_by_allow_rules_is_refused_and_counted() {
    let rv = Rendezvous::start();
    let (target, accepted) = tcp_counter();
    let room = room();
    let server = Engine::start(common::config_for(
        &rv.url,
        rv.stun,
        "server",
        &room,
        "k",
        &[],
        serde_json::json!({"allow": ["tcp:127.0.0.1:1-1000"]}),
    ))
    .unwrap();
    let client =
        Engine::start(rv.config("client", &room, "k", &[format!("tcp:0:{}", target.port())]))
            .unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    let mut s = connect(mapping_addr(&client, Proto::Tcp));
    let _ = s.write_all(b"let me in");
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the client's connection is closed without data");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().totals.refused_by_policy == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.stats().totals.refused_by_policy, 1);
    assert_eq!(client.stats().mappings[0].traffic.refused_by_policy, 1);
}

#[test]
fn wrong_secret_forms_no_tunnel_and_says_why() {
    let rv = Rendezvous::start();
    let (target, accepted) = tcp_counter();
    let room = room();
    let _server = Engine::start(rv.config("server", &room, "right", &[])).unwrap();
    let client = Engine::start(rv.config(
        "client",
        &room,
        "wrong",
        &[format!("tcp:0:{}", target.port())],
    ))
    .unwrap();
    // With a secret, the mailbox is named after room and secret: peers with different
    // secrets never see each other's offers, and the error says what to check.
    let err = client.wait_connected(Duration::from_secs(4)).unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("no valid offer from the server peer") && text.contains("secret"),
        "{text}"
    );
    assert_eq!(client.state(), State::Signaling);
    assert_eq!(client.stats().offers_rejected, 0);
    // Nothing is forwarded.
    let mut s = connect(mapping_addr(&client, Proto::Tcp));
    let _ = s.write_all(b"secret data");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn mapping_added_after_connect_works_and_removed_port_is_free() {
    let rv = Rendezvous::start();
    let echo = tcp_echo();
    let (_server, client) = pair(&rv, &[]);
    let id = client
        .add_mapping(Mapping::parse(&format!("tcp:0:{}", echo.port())).unwrap())
        .unwrap();
    let local = client.mapping_addr(id).unwrap();
    let mut s = connect(local);
    s.write_all(b"late mapping").unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"late mapping");
    client.remove_mapping(id).unwrap();
    // The live connection is closed and the port can be bound again.
    let mut rest = [0u8; 1];
    assert_eq!(s.read(&mut rest).unwrap_or(0), 0);
    TcpListener::bind(local).expect("port free after remove_mapping");
    assert!(matches!(
        client.remove_mapping(id),
        Err(Error::NoSuchMapping(_))
    ));
}

/// A removed UDP mapping frees its port at once, also after a flow carried datagrams
/// back from the tunnel (the datagram dispatcher caches flows, but must not keep their
/// sockets open), and the same port can be mapped again.
#[test]
fn removed_udp_mapping_frees_its_port_after_traffic() {
    let rv = Rendezvous::start();
    let echo = udp_echo();
    let (_server, client) = pair(&rv, &[]);
    let id = client
        .add_mapping(Mapping::parse(&format!("udp:0:{}", echo.port())).unwrap())
        .unwrap();
    let local = client.mapping_addr(id).unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut echoed = false;
    for _ in 0..10 {
        s.send_to(b"ping", local).unwrap();
        let mut buf = [0u8; 16];
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"ping");
            echoed = true;
            break;
        }
    }
    assert!(echoed, "the flow carried a datagram back");
    let started = std::time::Instant::now();
    client.remove_mapping(id).unwrap();
    let took = started.elapsed();
    UdpSocket::bind(local).expect("port free after remove_mapping");
    assert!(
        took < Duration::from_millis(1500),
        "remove_mapping waited {took:?} for the port"
    );
    let again = client
        .add_mapping(Mapping::parse(&format!("udp:{}:{}", local.port(), echo.port())).unwrap())
        .expect("the same port can be mapped again");
    assert_eq!(client.mapping_addr(again), Some(local));
}

#[test]
fn local_port_in_use_names_the_port() {
    let rv = Rendezvous::start();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err =
        Engine::start(rv.config("client", &room(), "k", &[format!("tcp:{port}:22")])).unwrap_err();
    assert!(matches!(err, Error::AddrInUse { .. }), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    let engine = Engine::start(rv.config("client", &room(), "k", &[])).unwrap();
    let err = engine
        .add_mapping_str(&format!("tcp:{port}:22"))
        .unwrap_err();
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[test]
fn stun_runs_once_whatever_the_number_of_mappings() {
    let rv = Rendezvous::start();
    let echo = tcp_echo();
    let mappings: Vec<String> = (0..8).map(|_| format!("tcp:0:{}", echo.port())).collect();
    let (server, client) = pair(&rv, &mappings);
    for m in client.mappings() {
        let mut s = connect(m.listen);
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }
    assert_eq!(client.stats().stun_discoveries, 1);
    assert_eq!(server.stats().stun_discoveries, 1);
}

#[test]
fn client_reconnects_to_a_restarted_server() {
    let rv = Rendezvous::start();
    let echo = tcp_echo();
    let room = room();
    let server = Engine::start(rv.config("server", &room, "k", &[])).unwrap();
    let client =
        Engine::start(rv.config("client", &room, "k", &[format!("tcp:0:{}", echo.port())]))
            .unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    let local = mapping_addr(&client, Proto::Tcp);
    server.stop(Duration::from_secs(2));
    drop(server);
    // The client notices, keeps its listener, and finds the new server on its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.state().is_connected() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!client.state().is_connected(), "client saw the tunnel go");
    let server2 = Engine::start(rv.config("server", &room, "k", &[])).unwrap();
    client.wait_connected(Duration::from_secs(30)).unwrap();
    server2.wait_connected(Duration::from_secs(5)).unwrap();
    let mut s = connect(local);
    s.write_all(b"again").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"again");
    assert_eq!(client.stats().reconnects, 1);
    // A lost tunnel may mean our NAT forgot us (a reboot that moved our public port):
    // the reconnect asked STUN again, once.
    assert_eq!(client.stats().stun_discoveries, 2);
}

#[test]
fn loopback_peers_use_the_lan_path_and_report_timings() {
    let rv = Rendezvous::start();
    let (server, client) = pair(&rv, &[]);
    match client.state() {
        State::Connected { path, .. } => assert_eq!(path, PathKind::Lan),
        other => panic!("{other}"),
    }
    let stats = client.stats();
    assert!(stats.timings.time_to_connected_ms.is_some());
    assert!(stats.rtt_ms.is_some());
    assert_eq!(stats.public_addr, Some(client.local_addr()));
    let json: serde_json::Value = serde_json::from_str(&server.stats_json()).unwrap();
    assert_eq!(json["state"]["state"], "connected");
    assert_eq!(json["mode"], "server");
}

/// A rendezvous that rewrites a server offer (a candidate, or the certificate
/// fingerprint) before the client reads it: the client must reject it, keep waiting,
/// and connect to the genuine server that comes later. The offer goes where a server
/// answers this client: the client's own mailbox (issue #18).
#[test]
fn tampered_offer_is_detected_and_rejected() {
    use stunfwd_core::signal::client::SignalClient;
    use stunfwd_core::signal::proto::Role;
    for field in ["fp", "candidate"] {
        let rv = Rendezvous::start();
        let target = tcp_echo();
        let room = room();
        let client =
            Engine::start(rv.config("client", &room, "k", &[format!("tcp:0:{}", target.port())]))
                .unwrap();
        let id = client.stats().client_id.expect("a client has an id");
        let key = stunfwd_core::signal::RoomKey::derive(&room, Some("k"));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let own = SignalClient::new(
            &rv.url,
            &key.client_mailbox(&id),
            Duration::from_millis(50),
            requests,
        )
        .unwrap();
        // A genuine server offer for this client, as the rendezvous operator saw one,
        // put back altered.
        let genuine = offer_with(
            Role::Server,
            "127.0.0.1:7".parse().unwrap(),
            Some(id.clone()),
        )
        .encode(&key, &room);
        let mut offer: serde_json::Value = serde_json::from_str(&genuine).unwrap();
        match field {
            "fp" => offer["fp"] = "ee".repeat(32).into(),
            _ => offer["candidates"][0] = "127.0.0.1:9".into(),
        }
        let tampered = offer.to_string();
        assert_ne!(genuine, tampered);
        rv.rt.block_on(own.post(Role::Server, &tampered)).unwrap();
        let err = client.wait_connected(Duration::from_secs(3)).unwrap_err();
        assert!(matches!(err, Error::PeerAuth(_)), "{field}: {err}");
        assert!(err.to_string().contains("MAC does not verify"), "{err}");
        // A forged offer does not knock the client out of its wait.
        assert_eq!(client.state(), State::Signaling, "{field}");
        let stats = client.stats();
        assert!(stats.offers_rejected >= 1, "{field}");
        assert!(stats.last_error.unwrap().contains("MAC does not verify"));
        // The genuine server, started now, answers the client's knock and connects.
        let server = Engine::start(rv.config("server", &room, "k", &[])).unwrap();
        client.wait_connected(Duration::from_secs(20)).unwrap();
        server.wait_connected(Duration::from_secs(5)).unwrap();
    }
}

/// Connections made while the tunnel is not up yet wait for it (up to `tunnelWait`)
/// and then carry their data: a TCP connection whose data was written before the
/// server peer even started, and UDP datagrams sent at the same moment.
#[test]
fn a_connection_accepted_before_the_tunnel_waits_and_is_carried() {
    let rv = Rendezvous::start();
    let (tcp_target, udp_target) = (tcp_echo(), udp_echo());
    let room = room();
    let client = Engine::start(rv.config(
        "client",
        &room,
        "k",
        &[
            format!("tcp:0:{}", tcp_target.port()),
            format!("udp:0:{}", udp_target.port()),
        ],
    ))
    .unwrap();
    let mut tcp = connect(mapping_addr(&client, Proto::Tcp));
    let data = pattern(256 * 1024, 13);
    // Written from a thread: nothing reads the local socket until the tunnel is up.
    let writer = {
        let (mut w, data) = (tcp.try_clone().unwrap(), data.clone());
        std::thread::spawn(move || w.write_all(&data))
    };
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..5u8 {
        udp.send_to(&[i; 100], mapping_addr(&client, Proto::Udp))
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(!client.state().is_connected());
    let server = Engine::start(rv.config("server", &room, "k", &[])).unwrap();
    let mut back = vec![0u8; data.len()];
    tcp.read_exact(&mut back).unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        back == data,
        "the bytes written before the tunnel came through"
    );
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut buf = [0u8; 200];
    while seen.len() < 5 {
        let (n, _) = udp.recv_from(&mut buf).unwrap();
        assert_eq!(n, 100);
        seen.insert(buf[0]);
    }
    let totals = client.stats().totals;
    assert_eq!(totals.tunnel_wait_timeouts, 0, "{totals:?}");
    assert_eq!(totals.connections_failed, 0, "{totals:?}");
    assert_eq!(totals.connections_opened, 2, "{totals:?}");
    drop(server);
}

/// No tunnel within `tunnelWait`: the local TCP connection is reset (not closed as if
/// the data had ended), the UDP flow is dropped, and both are counted.
#[test]
fn a_connection_that_waits_in_vain_is_reset_and_counted() {
    let rv = Rendezvous::start();
    let config = config_for(
        &rv.url,
        rv.stun,
        "client",
        &room(),
        "k",
        &["tcp:0:9".into(), "udp:0:9".into()],
        serde_json::json!({"performance": {"tunnelWait": "700ms"}}),
    );
    let client = Engine::start(config).unwrap();
    let mut tcp = connect(mapping_addr(&client, Proto::Tcp));
    tcp.write_all(b"anyone there?").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"hello?", mapping_addr(&client, Proto::Udp))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let err = tcp.read(&mut buf).expect_err("a reset, not an orderly end");
    let waited = started.elapsed();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.stats().totals.tunnel_wait_timeouts < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = client.stats();
    assert_eq!(stats.totals.tunnel_wait_timeouts, 2, "{:?}", stats.totals);
    assert_eq!(stats.totals.connections_failed, 2, "{:?}", stats.totals);
    for m in &stats.mappings {
        assert_eq!(m.traffic.tunnel_wait_timeouts, 1, "{}", m.spec);
    }
    let json: serde_json::Value = serde_json::from_str(&client.stats_json()).unwrap();
    assert_eq!(json["totals"]["tunnel_wait_timeouts"], 2);
}

/// A connection waiting for the tunnel is reset at once when its mapping is removed
/// or the engine stops, not left open (nor forwarded later).
#[test]
fn a_waiting_connection_is_reset_when_its_mapping_goes_or_the_engine_stops() {
    let rv = Rendezvous::start();
    let client = Engine::start(rv.config(
        "client",
        &room(),
        "k",
        &["tcp:0:9".into(), "tcp:0:10".into()],
    ))
    .unwrap();
    let maps = client.mappings();
    let mut removed = connect(maps[0].listen);
    let mut stopped = connect(maps[1].listen);
    removed.write_all(b"wait").unwrap();
    stopped.write_all(b"wait").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = [0u8; 4];
    let t = Instant::now();
    client.remove_mapping(maps[0].id).unwrap();
    let err = removed.read(&mut buf).expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let t = Instant::now();
    client.stop(Duration::from_secs(2));
    let err = stopped.read(&mut buf).expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// Issue #14, finding 2: a server runs without a secret only when told to
/// (`insecure: true`), and then says so: a warning log line, a `Warning` event, and
/// `insecure` in its stats (and metrics). A client without a secret may connect to it.
#[test]
fn an_insecure_server_runs_only_on_purpose_and_says_so() {
    let rv = Rendezvous::start();
    let room = room();
    let open = |mode: &str, extra: serde_json::Value| {
        let mut v = rv.config(mode, &room, "unused", &[]).to_json();
        v.as_object_mut().unwrap().remove("secret");
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        stunfwd_core::Config::from_value(v)
    };
    let err = open("server", serde_json::json!({})).unwrap_err();
    assert!(err.to_string().contains("\"insecure\": true"), "{err}");

    let logs = LogBuffer::default();
    let writer = {
        let logs = logs.clone();
        move || logs.clone()
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .finish();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let config = open("server", serde_json::json!({"insecure": true})).unwrap();
    let server = tracing::subscriber::with_default(subscriber, || {
        Engine::start_with_events(config, move |e| {
            if let stunfwd_core::Event::Warning { message } = e {
                seen.lock().unwrap().push(message.clone());
            }
        })
    })
    .unwrap();
    let log = logs.text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("WITHOUT A SECRET")),
        "{log}"
    );
    let client = Engine::start(open("client", serde_json::json!({})).unwrap()).unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    assert!(server.stats().insecure && client.stats().insecure);
    let json: serde_json::Value = serde_json::from_str(&server.stats_json()).unwrap();
    assert_eq!(json["insecure"], true);
    let deadline = Instant::now() + Duration::from_secs(2);
    while events.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let warnings = events.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("WITHOUT A SECRET"), "{warnings:?}");
    // With a secret, none of this.
    let (server, _client) = pair(&rv, &[]);
    assert!(!server.stats().insecure);
}
