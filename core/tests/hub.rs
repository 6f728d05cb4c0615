//! One server peer, many clients (issue #18), tried the way an outsider would: the
//! server stopped while clients knock, a refusal the rendezvous holds up, a refused
//! client waiting for a free slot, and knocks replayed by someone on the rendezvous.
//! Everything on loopback, with the in-process rendezvous + STUN server.
#![allow(clippy::unwrap_used)]

mod common;
mod signal_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use signal_support::wait_until;
use stunfwd_core::signal::{Offer, Role, RoomKey, SignalClient, SignalServerConfig};
use stunfwd_core::{Engine, SignalServer, State};

const SECRET: &str = "hub secret";

/// A rendezvous without per-address limits: every peer here shares 127.0.0.1, and
/// some tests post quickly.
fn unlimited_rendezvous() -> Rendezvous {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(SignalServer::start(SignalServerConfig {
            rate_per_ip: 0,
            max_polls_per_ip: 0,
            max_connections_per_ip: 0,
            max_bytes_per_client: 0,
            ..SignalServerConfig::default()
        }))
        .unwrap();
    let url = server.url();
    let stun = server.stun_addr().unwrap();
    Rendezvous {
        rt,
        server: Some(server),
        url,
        stun,
    }
}

fn config(
    url: &str,
    rv: &Rendezvous,
    mode: &str,
    room: &str,
    extra: serde_json::Value,
) -> stunfwd_core::Config {
    let mappings = if mode == "client" {
        vec![format!("tcp:0:{}", tcp_echo().port())]
    } else {
        vec![]
    };
    config_for(url, rv.stun, mode, room, SECRET, &mappings, extra)
}

/// The room's own mailbox (where clients knock), as someone on the rendezvous sees it.
fn lobby(url: &str, room: &str) -> SignalClient {
    let name = RoomKey::derive(room, Some(SECRET)).mailbox_name();
    SignalClient::new(url, &name, Duration::from_millis(50), Arc::default()).unwrap()
}

/// A client's own mailbox.
fn own_mailbox(url: &str, room: &str, client: &str) -> SignalClient {
    let name = RoomKey::derive(room, Some(SECRET)).client_mailbox(client);
    SignalClient::new(url, &name, Duration::from_millis(50), Arc::default()).unwrap()
}

/// An authentic, fresh knock of a made-up client (its only candidate never answers).
fn knock(room: &str) -> String {
    let id = Offer::new_id();
    let offer = offer_with(Role::Client, "127.0.0.1:9".parse().unwrap(), Some(id));
    offer.encode(&RoomKey::derive(room, Some(SECRET)), room)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Review finding: `Engine::stop` drained the server's sessions while its hub kept
/// reading knocks, so a session set up during the drain (or admitted right after it)
/// was put in the hub after the drain and never shut down: it was still listed, in
/// state `signaling`, in the stopped engine's final stats, its tunnel never told
/// `stopped`, its offer never deleted.
#[test]
fn no_session_is_left_behind_by_a_stop_while_clients_knock() {
    let rv = unlimited_rendezvous();
    for round in 0..8 {
        let room = room();
        let server =
            Engine::start(config(&rv.url, &rv, "server", &room, serde_json::json!({}))).unwrap();
        let pumping = Arc::new(AtomicBool::new(true));
        let pump = {
            let (url, room, pumping) = (rv.url.clone(), room.clone(), pumping.clone());
            std::thread::spawn(move || {
                let rt = rt();
                let lobby = lobby(&url, &room);
                while pumping.load(Ordering::Relaxed) {
                    let _ = rt.block_on(lobby.post(Role::Client, &knock(&room)));
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        assert!(wait_until(Duration::from_secs(10), || server
            .stats()
            .clients
            .len()
            >= 4));
        let stopping = Instant::now();
        server.stop(Duration::from_secs(2));
        let took = stopping.elapsed();
        pumping.store(false, Ordering::Relaxed);
        pump.join().unwrap();
        // Every session stays listed in the final stats (what it served counts), and
        // every one was stopped: none joined after the stop began.
        let left: Vec<String> = server
            .stats()
            .clients
            .iter()
            .filter(|c| c.state != State::Stopped)
            .map(|c| format!("{} {}", c.id, c.state))
            .collect();
        assert!(
            left.is_empty(),
            "round {round}: sessions not stopped by the stop: {left:?}"
        );
        assert!(
            took < Duration::from_secs(4),
            "round {round}: stop took {took:?}"
        );
    }
}

/// A plain-HTTP relay to the rendezvous that never answers a POST whose body carries a
/// refusal (a rendezvous that is slow, or drops that one request).
struct HoldingProxy {
    addr: SocketAddr,
    held: Arc<AtomicU64>,
}

impl HoldingProxy {
    fn start(upstream: SocketAddr) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(AtomicU64::new(0));
        let counter = held.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || relay(conn, upstream, &counter));
            }
        });
        HoldingProxy { addr, held }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// Relays the one request on `conn` over a fresh upstream connection, both closed
/// after the answer (which says `connection: close`).
fn relay(mut conn: TcpStream, upstream: SocketAddr, held: &AtomicU64) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let length = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if conn.read_exact(&mut body).is_err() {
        return;
    }
    if text.starts_with("POST") && String::from_utf8_lossy(&body).contains("refused") {
        held.fetch_add(1, Ordering::Relaxed);
        // Never answered; the connection stays open a while.
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let mut request: String = text
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    request.push_str("Connection: close\r\n\r\n");
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    if up.write_all(request.as_bytes()).is_err() || up.write_all(&body).is_err() {
        return;
    }
    let mut response = Vec::new();
    let _ = up.read_to_end(&mut response);
    let _ = conn.write_all(&response);
}

/// Review finding: the hub posted a refusal (up to five tries, a second apart) inside
/// its one loop, so while the rendezvous held that request up (10 s a try) the server
/// admitted no one: a client that came while a slot was free waited close to a minute.
#[test]
fn a_refusal_the_rendezvous_holds_up_does_not_stall_the_server() {
    let rv = Rendezvous::start();
    let proxy = HoldingProxy::start(rv.server.as_ref().unwrap().http_addr());
    let room = room();
    let server = Engine::start(config(
        &proxy.url(),
        &rv,
        "server",
        &room,
        serde_json::json!({"maxClients": 1}),
    ))
    .unwrap();
    let first =
        Engine::start(config(&rv.url, &rv, "client", &room, serde_json::json!({}))).unwrap();
    first.wait_connected(Duration::from_secs(20)).unwrap();
    // A second client is refused; the rendezvous holds that refusal up.
    let refused =
        Engine::start(config(&rv.url, &rv, "client", &room, serde_json::json!({}))).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || proxy
            .held
            .load(Ordering::Relaxed)
            >= 1),
        "no refusal posted: {:#?}",
        server.stats().clients
    );
    // The first client leaves: its slot is free.
    first.stop(Duration::from_secs(2));
    assert!(wait_until(Duration::from_secs(10), || server
        .stats()
        .clients
        .iter()
        .all(|c| !c.state.is_connected())));
    let third =
        Engine::start(config(&rv.url, &rv, "client", &room, serde_json::json!({}))).unwrap();
    let started = Instant::now();
    let got = third.wait_connected(Duration::from_secs(20));
    println!("the third client: {got:?} after {:?}", started.elapsed());
    assert!(
        got.is_ok(),
        "{got:?}; server: {:#?}",
        server.stats().clients
    );
    for e in [third, refused, server] {
        e.stop(Duration::from_secs(2));
    }
}

/// A refused client is told why, and gets in once a slot frees (a client leaving
/// gracefully frees its slot at once).
#[test]
fn a_refused_client_gets_in_once_a_slot_frees() {
    let rv = Rendezvous::start();
    let room = room();
    let server = Engine::start(config(
        &rv.url,
        &rv,
        "server",
        &room,
        serde_json::json!({"maxClients": 1}),
    ))
    .unwrap();
    let first =
        Engine::start(config(&rv.url, &rv, "client", &room, serde_json::json!({}))).unwrap();
    first.wait_connected(Duration::from_secs(20)).unwrap();
    let second =
        Engine::start(config(&rv.url, &rv, "client", &room, serde_json::json!({}))).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || matches!(
            second.state(),
            State::Reconnecting { ref reason, .. } if reason.contains("maximum of 1 clients")
        )),
        "{}",
        second.state()
    );
    first.stop(Duration::from_secs(2));
    let left = Instant::now();
    second.wait_connected(Duration::from_secs(45)).unwrap();
    println!(
        "the refused client got in {:?} after the first left",
        left.elapsed()
    );
    assert!(server.state().is_connected());
    let stats = server.stats();
    assert_eq!(stats.clients.len(), 1, "{:#?}", stats.clients);
    assert_eq!(stats.clients[0].id, second.stats().client_id.unwrap());
    second.stop(Duration::from_secs(2));
    server.stop(Duration::from_secs(2));
}

/// Review finding: the server remembered the last 1024 mailbox contents it read from
/// the room's client slot, junk included, as its only defence against a knock read
/// again. Someone on the rendezvous (who sees every knock but not the secret) posts
/// 1100 junk offers and replays a departed client's knock (fresh for 5 minutes): the
/// server opened a session for it again (here, at its limit, posted a refusal for it).
#[test]
fn a_knock_replayed_after_a_flood_of_junk_is_not_read_again() {
    let rv = unlimited_rendezvous();
    let room = room();
    let reports = Arc::new(AtomicU64::new(0));
    let counted = reports.clone();
    let server = Engine::start_with_events(
        config(
            &rv.url,
            &rv,
            "server",
            &room,
            serde_json::json!({"maxClients": 1}),
        ),
        move |e| {
            if matches!(e, stunfwd_core::Event::PeerRejected { .. }) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        },
    )
    .unwrap();
    let rt = rt();
    let lobby = lobby(&rv.url, &room);
    let first =
        Engine::start(config(&rv.url, &rv, "client", &room, serde_json::json!({}))).unwrap();
    first.wait_connected(Duration::from_secs(20)).unwrap();
    let first_id = first.stats().client_id.unwrap();
    // What the rendezvous saw of the first client's knock.
    let (captured, _) = rt
        .block_on(lobby.get(Role::Client, None, None))
        .unwrap()
        .unwrap();
    assert!(captured.contains(&first_id));
    first.stop(Duration::from_secs(2));
    // A second client takes the slot (the first one's session, without a tunnel, goes).
    let second =
        Engine::start(config(&rv.url, &rv, "client", &room, serde_json::json!({}))).unwrap();
    second.wait_connected(Duration::from_secs(20)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || server
        .stats()
        .clients
        .len()
        == 1));
    let own = own_mailbox(&rv.url, &room, &first_id);
    assert_eq!(
        rt.block_on(own.get(Role::Server, None, None)).unwrap(),
        None
    );
    // Junk, each read by the server (counted as rejected), then the replay.
    let rejected = server.stats().offers_rejected;
    let flood = Instant::now();
    for i in 0..1100u64 {
        rt.block_on(lobby.post(Role::Client, &format!("{{\"junk\":{i}}}")))
            .unwrap();
        let want = rejected + i + 1;
        let deadline = Instant::now() + Duration::from_secs(2);
        while server.stats().offers_rejected < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert!(server.stats().offers_rejected >= rejected + 1000);
    // Reported at a bounded rate: once, then at most once per 5 s.
    let bound = flood.elapsed().as_secs() / 5 + 2;
    let n = reports.load(Ordering::Relaxed);
    assert!(n <= bound, "{n} rejection reports in {:?}", flood.elapsed());
    rt.block_on(lobby.post(Role::Client, &captured)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let answer = rt.block_on(own.get(Role::Server, None, None)).unwrap();
    assert_eq!(answer, None, "the replayed knock was answered");
    let ids: Vec<String> = server
        .stats()
        .clients
        .iter()
        .map(|c| c.id.clone())
        .collect();
    assert!(!ids.contains(&first_id), "{ids:?}");
    second.stop(Duration::from_secs(2));
    server.stop(Duration::from_secs(2));
}

/// Someone on the rendezvous replays announcements in the room: an earlier server
/// process's (another certificate, made before the client's tunnel) and the running
/// server's own. Neither makes a connected client start over.
#[test]
fn replayed_announcements_do_not_make_clients_start_over() {
    let rv = Rendezvous::start();
    let room = room();
    let rt = rt();
    let lobby = lobby(&rv.url, &room);
    let announcement = |rt: &tokio::runtime::Runtime| {
        let mut got = None;
        assert!(wait_until(Duration::from_secs(10), || {
            got = rt.block_on(lobby.get(Role::Server, None, None)).unwrap();
            got.is_some()
        }));
        got.unwrap().0
    };
    let earlier =
        Engine::start(config(&rv.url, &rv, "server", &room, serde_json::json!({}))).unwrap();
    let old = announcement(&rt);
    earlier.stop(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(1100));
    let server =
        Engine::start(config(&rv.url, &rv, "server", &room, serde_json::json!({}))).unwrap();
    let current = announcement(&rt);
    assert_ne!(old, current);
    let client =
        Engine::start(config(&rv.url, &rv, "client", &room, serde_json::json!({}))).unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    for _ in 0..3 {
        rt.block_on(lobby.post(Role::Server, &old)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        rt.block_on(lobby.post(Role::Server, &current)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(client.state().is_connected(), "{}", client.state());
    assert_eq!(client.stats().reconnects, 0);
    client.stop(Duration::from_secs(2));
    server.stop(Duration::from_secs(2));
}
