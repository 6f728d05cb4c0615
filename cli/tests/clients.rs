//! One server peer, many clients (issue #18), on loopback with the in-process
//! rendezvous + STUN server:
//!
//! - ten clients (nine engines in this process, one `stunfwd run` child process) each
//!   forward TCP and UDP through their own tunnel to echo services, every byte checked
//!   by SHA-256; the server lists them in its stats and metrics, and names each in its
//!   events;
//! - an eleventh client is refused while ten are served, with a state reason that
//!   says so;
//! - the child process is killed (SIGKILL) in the middle of a transfer while the nine
//!   others transfer too: theirs finish intact, and their tunnels never reconnect;
//! - a client with another secret is never served, while one with the right secret
//!   connects.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use stunfwd_core::{Engine, Event, State};
use support::Proc;

use common::{config_for, pattern, room, tcp_echo, udp_echo, Rendezvous};

const SECRET: &str = "many clients secret";
const CLIENTS: usize = 10;

fn client_config(
    rv: &Rendezvous,
    room: &str,
    secret: &str,
    tcp: SocketAddr,
    udp: SocketAddr,
) -> stunfwd_core::Config {
    config_for(
        &rv.url,
        rv.stun,
        "client",
        room,
        secret,
        &[
            format!("tcp:0:{}", tcp.port()),
            format!("udp:0:{}", udp.port()),
        ],
        serde_json::json!({}),
    )
}

/// Sends `data` through the TCP mapping at `addr` while reading the echo, and
/// returns the SHA-256 of what came back. `progress` counts echoed bytes.
fn tcp_round_trip(
    addr: SocketAddr,
    data: Arc<Vec<u8>>,
    progress: Arc<Mutex<usize>>,
) -> std::io::Result<[u8; 32]> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let sent = data.clone();
    let send = std::thread::spawn(move || {
        for chunk in sent.chunks(64 * 1024) {
            writer.write_all(chunk)?;
        }
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < data.len() {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        got += n;
        *progress.lock().unwrap() = got;
    }
    send.join().unwrap()?;
    if got != data.len() {
        return Err(std::io::Error::other(format!(
            "{got} of {} bytes came back",
            data.len()
        )));
    }
    Ok(hash.finalize().into())
}

/// Sends `count` datagrams through the UDP mapping at `addr`, one at a time, each
/// retried until its echo comes back; the SHA-256 over all echoes in order.
fn udp_round_trip(addr: SocketAddr, count: usize, seed: u64) -> ([u8; 32], [u8; 32]) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let (mut sent, mut echoed) = (Sha256::new(), Sha256::new());
    let mut buf = [0u8; 2048];
    for i in 0..count {
        let payload = pattern(1000, seed * 1000 + i as u64);
        sent.update(&payload);
        let mut ok = false;
        for _ in 0..20 {
            sock.send_to(&payload, addr).unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if buf[..n] == payload[..] {
                    echoed.update(&buf[..n]);
                    ok = true;
                    break;
                }
            }
        }
        assert!(ok, "datagram {i} of client {seed} never came back");
    }
    (sent.finalize().into(), echoed.finalize().into())
}

fn mapping(engine: &Engine, proto: &str) -> SocketAddr {
    engine
        .mappings()
        .iter()
        .find(|m| m.mapping.to_string().starts_with(proto))
        .map(|m| m.listen)
        .unwrap()
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[test]
fn ten_clients_at_once_an_eleventh_refused_and_one_killed_mid_transfer() {
    if std::env::var("STUNFWD_TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
    }
    let rv = Rendezvous::start();
    let (tcp, udp) = (tcp_echo(), udp_echo());
    let room = room();
    let events: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let seen = events.clone();
    let server = Engine::start_with_events(
        config_for(
            &rv.url,
            rv.stun,
            "server",
            &room,
            SECRET,
            &[],
            serde_json::json!({"maxClients": CLIENTS, "metricsAddr": "127.0.0.1:0"}),
        ),
        move |e| {
            if let Event::ClientState { client, state } = e {
                seen.lock()
                    .unwrap()
                    .push((client.clone(), state.name().to_owned()));
            }
        },
    )
    .unwrap();

    // Nine clients in this process, one a `stunfwd run` process.
    let engines: Vec<Engine> = (0..CLIENTS - 1)
        .map(|_| Engine::start(client_config(&rv, &room, SECRET, tcp, udp)).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("client.json");
    std::fs::write(
        &cfg,
        client_config(&rv, &room, SECRET, tcp, udp)
            .to_json()
            .to_string(),
    )
    .unwrap();
    let process = Proc::spawn(&["run", cfg.to_str().unwrap()]);
    let listen = |line: String| -> SocketAddr {
        line.rsplit("listening on ")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let process_tcp = listen(process.wait_line("mapping tcp"));
    let process_udp = listen(process.wait_line("mapping udp"));

    let started = Instant::now();
    for e in &engines {
        e.wait_connected(Duration::from_secs(60)).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(60), || server
            .stats()
            .clients
            .iter()
            .filter(|c| c.state.is_connected())
            .count()
            == CLIENTS),
        "{:#?}",
        server.stats().clients
    );
    println!("{CLIENTS} clients connected in {:?}", started.elapsed());
    let stats = server.stats();
    assert!(stats.state.is_connected());
    let ids: BTreeSet<String> = stats.clients.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), CLIENTS, "each client has its own id");
    let sockets: BTreeSet<SocketAddr> = stats.clients.iter().map(|c| c.local_addr).collect();
    assert_eq!(sockets.len(), CLIENTS, "each client has its own socket");
    for e in &engines {
        assert!(ids.contains(&e.stats().client_id.unwrap()));
    }
    let connected_events: BTreeSet<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s == "connected")
        .map(|(c, _)| c.clone())
        .collect();
    assert_eq!(
        connected_events, ids,
        "an event names each client that connected"
    );

    // Every client forwards TCP and UDP, all at once.
    let mut targets: Vec<(SocketAddr, SocketAddr)> = engines
        .iter()
        .map(|e| (mapping(e, "tcp"), mapping(e, "udp")))
        .collect();
    targets.push((process_tcp, process_udp));
    let runs: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(i, &(t, u))| {
            std::thread::spawn(move || {
                let data = Arc::new(pattern(1 << 20, i as u64));
                let back = tcp_round_trip(t, data.clone(), Arc::default()).unwrap();
                assert_eq!(back, sha(&data), "client {i}: TCP data changed");
                let (sent, echoed) = udp_round_trip(u, 20, i as u64);
                assert_eq!(sent, echoed, "client {i}: UDP data changed");
            })
        })
        .collect();
    for r in runs {
        r.join().unwrap();
    }
    let stats = server.stats();
    let sum: u64 = stats.clients.iter().map(|c| c.totals.bytes_sent).sum();
    assert_eq!(stats.totals.bytes_sent, sum, "totals sum the clients");
    assert!(stats.clients.iter().all(|c| c.totals.bytes_sent >= 1 << 20));
    let metrics = scrape(server.metrics_addr().unwrap());
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("stunfwd_client_connected{client=") && l.ends_with(" 1"))
        .count();
    assert_eq!(series, CLIENTS, "{metrics}");
    assert!(
        metrics.contains(&format!("stunfwd_clients {CLIENTS}")),
        "{metrics}"
    );

    // An eleventh client is refused, and told why.
    let eleventh = Engine::start(client_config(&rv, &room, SECRET, tcp, udp)).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || matches!(
            eleventh.state(),
            State::Reconnecting { ref reason, .. } if reason.contains("maximum of 10 clients")
        )),
        "{}",
        eleventh.state()
    );
    println!("the eleventh client: {}", eleventh.state());
    eleventh.stop(Duration::from_secs(2));
    assert_eq!(server.stats().clients.len(), CLIENTS);

    // The process client is killed in the middle of a transfer while the nine others
    // transfer too: theirs finish intact.
    let transfers: Vec<_> = engines
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let t = mapping(e, "tcp");
            std::thread::spawn(move || {
                let data = Arc::new(pattern(16 << 20, 100 + i as u64));
                let back = tcp_round_trip(t, data.clone(), Arc::default()).unwrap();
                assert_eq!(back, sha(&data), "client {i}: TCP data changed");
            })
        })
        .collect();
    let progress: Arc<Mutex<usize>> = Arc::default();
    let doomed = {
        let progress = progress.clone();
        std::thread::spawn(move || {
            tcp_round_trip(process_tcp, Arc::new(pattern(64 << 20, 999)), progress)
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || *progress.lock().unwrap()
            >= 1 << 20),
        "the process client's transfer did not start"
    );
    let killed_at = *progress.lock().unwrap();
    process.kill();
    println!("killed the process client after {killed_at} bytes echoed");
    for t in transfers {
        t.join().unwrap();
    }
    assert!(
        doomed.join().unwrap().is_err(),
        "the killed client's transfer cannot finish"
    );
    for (i, e) in engines.iter().enumerate() {
        assert!(e.state().is_connected(), "client {i}: {}", e.state());
        assert_eq!(e.stats().reconnects, 0, "client {i} was disturbed");
    }
    let still: usize = server
        .stats()
        .clients
        .iter()
        .filter(|c| c.state.is_connected() && c.reconnects == 0)
        .count();
    assert!(still >= CLIENTS - 1, "{:#?}", server.stats().clients);
    for e in engines {
        e.stop(Duration::from_secs(2));
    }
    server.stop(Duration::from_secs(3));
    assert_eq!(server.state(), State::Stopped);
}

#[test]
fn a_client_with_another_secret_is_never_served() {
    let rv = Rendezvous::start();
    let (tcp, udp) = (tcp_echo(), udp_echo());
    let room = room();
    let server = Engine::start(config_for(
        &rv.url,
        rv.stun,
        "server",
        &room,
        SECRET,
        &[],
        serde_json::json!({}),
    ))
    .unwrap();
    let wrong = Engine::start(client_config(&rv, &room, "another secret", tcp, udp)).unwrap();
    let right = Engine::start(client_config(&rv, &room, SECRET, tcp, udp)).unwrap();
    right.wait_connected(Duration::from_secs(30)).unwrap();
    let data = Arc::new(pattern(256 << 10, 7));
    let back = tcp_round_trip(mapping(&right, "tcp"), data.clone(), Arc::default()).unwrap();
    assert_eq!(back, sha(&data));
    // The wrong client knocks for a while (in the mailbox its own room key names,
    // which is not the server's): it is never served.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(wrong.state(), State::Signaling, "{}", wrong.state());
    let stats = server.stats();
    assert_eq!(stats.clients.len(), 1, "{:#?}", stats.clients);
    assert_eq!(stats.clients[0].id, right.stats().client_id.unwrap());
    wrong.stop(Duration::from_secs(2));
    right.stop(Duration::from_secs(2));
    server.stop(Duration::from_secs(2));
}

/// The server peer (a `stunfwd run` process) is killed with SIGKILL while three
/// clients are connected, and a new one started: its announcement in the room makes
/// every client start over at once (not after the tunnel's idle timeout), knock, and
/// connect to it.
#[test]
fn a_killed_and_restarted_server_brings_every_client_back() {
    let rv = Rendezvous::start();
    let (tcp, udp) = (tcp_echo(), udp_echo());
    let room = room();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.json");
    let server_config = config_for(
        &rv.url,
        rv.stun,
        "server",
        &room,
        SECRET,
        &[],
        serde_json::json!({}),
    );
    std::fs::write(&cfg, server_config.to_json().to_string()).unwrap();
    let first = Proc::spawn(&["run", cfg.to_str().unwrap()]);
    let clients: Vec<Engine> = (0..3)
        .map(|_| Engine::start(client_config(&rv, &room, SECRET, tcp, udp)).unwrap())
        .collect();
    for c in &clients {
        c.wait_connected(Duration::from_secs(30)).unwrap();
    }
    first.kill();
    let killed = Instant::now();
    let second = Proc::spawn(&["run", cfg.to_str().unwrap()]);
    for (i, c) in clients.iter().enumerate() {
        assert!(
            wait_until(Duration::from_secs(30), || c.stats().reconnects >= 1
                && c.state().is_connected()),
            "client {i}: {}",
            c.state()
        );
        let data = Arc::new(pattern(256 << 10, 50 + i as u64));
        let back = tcp_round_trip(mapping(c, "tcp"), data.clone(), Arc::default()).unwrap();
        assert_eq!(back, sha(&data), "client {i}");
    }
    let took = killed.elapsed();
    println!("3 clients back on the restarted server {took:?} after the kill");
    // Faster than the tunnel's idle timeout would have noticed the dead server.
    assert!(took < Duration::from_secs(15), "{took:?}");
    let lines = second.terminate_with_stdout().0;
    let served: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("client "))
        .filter(|l| l.ends_with("connected") || l.contains(": connected"))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert_eq!(
        served.len(),
        3,
        "the new server names each client: {lines:#?}"
    );
    for c in clients {
        c.stop(Duration::from_secs(2));
    }
}

/// `GET /metrics` from `addr`.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
