//! Stopping: idle, while connecting, mid-transfer. Each returns within 2 s.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use stunfwd_core::{Engine, Event, Proto, State};

const LIMIT: Duration = Duration::from_secs(2);

#[test]
fn stop_while_idle_returns_quickly() {
    let rv = Rendezvous::start();
    // Alone in its room: it waits for a peer that never comes.
    let engine = Engine::start(rv.config("client", &room(), "k", &["tcp:0:22".into()])).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(engine.state(), State::Signaling);
    let t = Instant::now();
    engine.stop(LIMIT);
    println!("stop while idle: {:?}", t.elapsed());
    assert!(t.elapsed() < LIMIT, "{:?}", t.elapsed());
    assert_eq!(engine.state(), State::Stopped);
    engine.stop(LIMIT); // twice is harmless
}

#[test]
fn stop_while_connecting_returns_quickly() {
    use stunfwd_core::signal::client::SignalClient;
    use stunfwd_core::signal::proto::{Role, RoomKey};
    let rv = Rendezvous::start();
    let room = room();
    // A "server" whose offer is authentic but whose only candidate never answers: the
    // client stays in the punching phase (for its 10 s punch timeout).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = Engine::start(rv.config("client", &room, "k", &[])).unwrap();
    let id = client.stats().client_id.unwrap();
    let offer = offer_with(Role::Server, silent.local_addr().unwrap(), Some(id.clone()));
    let key = RoomKey::derive(&room, Some("k"));
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let url = rv.url.clone();
    // The server answers a client in the client's own mailbox.
    let posted_room = key.client_mailbox(&id);
    let offer_room = room.clone();
    rv.rt
        .block_on(async move {
            let signal =
                SignalClient::new(&url, &posted_room, Duration::from_millis(100), requests)?;
            signal
                .post(Role::Server, &offer.encode(&key, &offer_room))
                .await
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.state() != State::Punching && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(client.state(), State::Punching);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    client.stop(LIMIT);
    let took = t.elapsed();
    println!("stop while connecting (punching): {took:?}");
    assert!(took < LIMIT, "{took:?}");
    assert_eq!(client.state(), State::Stopped);
}

#[test]
fn stop_mid_transfer_returns_quickly_and_closes_local_connections() {
    let rv = Rendezvous::start();
    let echo = tcp_echo();
    let (server, client) = pair(&rv, &[format!("tcp:0:{}", echo.port())]);
    let local = mapping_addr(&client, Proto::Tcp);
    let mut s = connect(local);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = pattern(1 << 20, 9);
        for _ in 0..1000 {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 1 << 20];
    s.read_exact(&mut buf).unwrap();
    let t = Instant::now();
    client.stop(LIMIT);
    let took = t.elapsed();
    println!("stop mid-transfer: {took:?}");
    assert!(took < LIMIT, "{took:?}");
    // The local connection is closed: reads end (EOF or reset) instead of hanging.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ended = false;
    for _ in 0..10_000 {
        match s.read(&mut buf) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "local connection closed by stop");
    writer.join().unwrap();
    server.stop(LIMIT);
}

#[test]
fn events_arrive_and_stop_from_inside_a_callback_does_not_deadlock() {
    let rv = Rendezvous::start();
    let room = room();
    let server = Engine::start(rv.config("server", &room, "k", &[])).unwrap();
    let client = std::sync::Arc::new(Engine::start(rv.config("client", &room, "k", &[])).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let weak = std::sync::Arc::downgrade(&client);
    client.subscribe(move |e| {
        let _ = tx.send(e.clone());
        if let Event::State { state } = e {
            if state.is_connected() {
                if let Some(c) = weak.upgrade() {
                    c.stop(Duration::from_secs(2));
                }
            }
        }
    });
    let mut saw = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::State { state }) => {
                let stopped = state == State::Stopped;
                saw.push(state.name());
                if stopped {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => {}
        }
    }
    assert!(saw.contains(&"connected"), "{saw:?}");
    assert_eq!(saw.last(), Some(&"stopped"), "{saw:?}");
    assert_eq!(client.state(), State::Stopped);
    server.stop(LIMIT);
}

#[test]
fn dropping_the_engine_stops_it_and_frees_its_ports() {
    let rv = Rendezvous::start();
    let engine = Engine::start(rv.config(
        "client",
        &room(),
        "k",
        &["tcp:0:22".into(), "udp:0:53".into()],
    ))
    .unwrap();
    let tcp = engine.mappings()[0].listen;
    let udp = engine.mappings()[1].listen;
    let tunnel = engine.local_addr();
    let t = Instant::now();
    drop(engine);
    assert!(t.elapsed() < LIMIT);
    std::net::TcpListener::bind(tcp).expect("tcp mapping port free");
    std::net::UdpSocket::bind(udp).expect("udp mapping port free");
    std::net::UdpSocket::bind(tunnel).expect("tunnel socket free");
}

// `stop` lets go of the engine's shared state, and with it the QUIC endpoint and the
// tunnel socket.
#[test]
fn stop_frees_every_port_before_the_engine_is_dropped() {
    // An application that stops an engine and starts a new one on the same fixed port
    // while still holding the old handle (to read its final stats, say).
    let rv = Rendezvous::start();
    let (server, client) = pair(&rv, &["tcp:0:22".into(), "udp:0:53".into()]);
    let tcp = client.mappings()[0].listen;
    let udp = client.mappings()[1].listen;
    let tunnel = client.local_addr();
    client.stop(LIMIT);
    assert_eq!(client.state(), State::Stopped);
    std::net::TcpListener::bind(tcp).expect("tcp mapping port free after stop");
    std::net::UdpSocket::bind(udp).expect("udp mapping port free after stop");
    drop(std::net::UdpSocket::bind(tunnel).expect("tunnel port free after stop"));
    // A new engine on that very address, while the old handle still exists.
    let again = Engine::start(common::config_for(
        &rv.url,
        rv.stun,
        "client",
        &room(),
        "k",
        &[],
        serde_json::json!({ "bind": tunnel.to_string() }),
    ))
    .expect("a new engine binds the stopped engine's address");
    assert_eq!(again.local_addr(), tunnel);
    // The stopped handle still answers.
    assert_eq!(client.stats().state, State::Stopped);
    again.stop(LIMIT);
    server.stop(LIMIT);
    drop(client);
}
