//! Compatibility with the Go tool's PHP mailboxes: `core/tests/php/signaling_server.php`
//! (the same POST/GET mailbox, no long-poll, no versions, no DELETE) and
//! `signaling_server_enhanced.php` (JSON store with versions, room-wide DELETE) run
//! under `php -S` on loopback, and two stunfwd engines meet through them, falling back
//! to exponential backoff. Skips (printing `SKIPPED: ...`) when php is not installed.

#![allow(clippy::unwrap_used)]

mod common;
mod signal_support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_support::Php;
use stunfwd_core::signal::{Offer, Role, RoomKey, SignalClient, WAKE_GAP};
use stunfwd_core::stun::StunResponder;
use stunfwd_core::Engine;

#[tokio::test]
async fn the_client_speaks_the_plain_php_mailbox() {
    let Some(php) = Php::start() else { return };
    let counter = Arc::new(AtomicU64::new(0));
    let c = SignalClient::new(
        &php.url(),
        "php room",
        Duration::from_millis(50),
        counter.clone(),
    )
    .unwrap();
    assert_eq!(c.get(Role::Server, None, None).await.unwrap(), None);
    c.post(Role::Client, "{\"hello\":\"php\"}").await.unwrap();
    let (data, version) = c.get(Role::Client, None, None).await.unwrap().unwrap();
    assert_eq!(data, "{\"hello\":\"php\"}", "returned exactly as posted");
    assert_eq!(version, None, "a plain mailbox has no versions");
    assert!(c.delete(Role::Client).await.is_err(), "no DELETE: 405");

    // Waiting on a mailbox that never long-polls: exponential backoff, not a busy loop.
    let key = RoomKey::derive("php room", Some("k"));
    let before = counter.load(Ordering::Relaxed);
    let started = Instant::now();
    let late = {
        let c = c.clone();
        let offer = Offer {
            role: Role::Server,
            nonce: Offer::new_nonce(),
            ts: stunfwd_core::signal::unix_now(),
            id: Offer::new_id(),
            candidates: vec!["127.0.0.1:1".parse().unwrap()],
            host_count: 1,
            relay_count: 0,
            turn: false,
            fp: "cd".repeat(32),
            nat: "none".into(),
            predict: None,
            comb: None,
            client: None,
            refused: None,
        };
        let encoded = offer.encode(&key, "php room");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            c.post(Role::Server, &encoded).await.unwrap();
            offer
        })
    };
    let got = c
        .wait_for(Role::Server, Duration::from_secs(15), |d| {
            Offer::decode(d, &key, "php room").ok()
        })
        .await
        .unwrap();
    assert_eq!(got, late.await.unwrap());
    let took = started.elapsed();
    let gets = counter.load(Ordering::Relaxed) - before - 1;
    assert!(took < Duration::from_secs(7), "{took:?}");
    // 50, 100, 200 ... 1600 ms: about 7 GETs in 3 s, whatever the timing.
    assert!((4..=10).contains(&gets), "{gets} GETs in {took:?}");
}

/// Our STUN responder (a PHP deployment would use any public STUN server), on a runtime
/// whose worker keeps serving while the test thread blocks.
fn stun_responder() -> (tokio::runtime::Runtime, StunResponder) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let stun = rt
        .block_on(StunResponder::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    (rt, stun)
}

#[test]
fn two_engines_connect_through_the_php_mailbox() {
    let Some(php) = Php::start() else { return };
    let (_rt, stun) = stun_responder();
    let stun_addr = stun.local_addr();

    let echo = common::tcp_echo();
    let room = common::room();
    let perf = serde_json::json!({"performance": {"signalBackoff": "200ms"}});
    let started = Instant::now();
    let server = Engine::start(common::config_for(
        &php.url(),
        stun_addr,
        "server",
        &room,
        "php secret",
        &[],
        perf.clone(),
    ))
    .unwrap();
    let client = Engine::start(common::config_for(
        &php.url(),
        stun_addr,
        "client",
        &room,
        "php secret",
        &[format!("tcp:0:{}", echo.port())],
        perf,
    ))
    .unwrap();
    client.wait_connected(Duration::from_secs(30)).unwrap();
    server.wait_connected(Duration::from_secs(30)).unwrap();
    let took = started.elapsed();

    let local = client.mappings()[0].listen;
    let mut s = std::net::TcpStream::connect(local).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"through the PHP mailbox").unwrap();
    let mut buf = [0u8; 23];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"through the PHP mailbox");

    let requests = client.stats().signaling_requests + server.stats().signaling_requests;
    println!("connected through php -S in {took:?} with {requests} mailbox requests");
    assert!(
        requests < 60,
        "backoff, not a busy loop: {requests} requests in {took:?}"
    );
    // Stopping sends DELETE, which this mailbox refuses; that must not hold up stop.
    let stopping = Instant::now();
    client.stop(Duration::from_secs(3));
    server.stop(Duration::from_secs(3));
    assert!(stopping.elapsed() < Duration::from_secs(4));
}

/// Issue #18 on the plain PHP mailbox (no long-poll, no versions, no DELETE): three
/// clients started at once, whose knocks overwrite each other in the room's one client
/// slot, are all served by one server peer, and each forwards through its own tunnel.
#[test]
fn three_clients_at_once_connect_through_the_php_mailbox() {
    let Some(php) = Php::start() else { return };
    let (_rt, stun) = stun_responder();
    let echo = common::tcp_echo();
    let room = common::room();
    let perf = serde_json::json!({"performance": {"signalBackoff": "200ms"}});
    let config = |mode: &str, mappings: &[String]| {
        common::config_for(
            &php.url(),
            stun.local_addr(),
            mode,
            &room,
            "php secret",
            mappings,
            perf.clone(),
        )
    };
    let server = Engine::start(config("server", &[])).unwrap();
    let started = Instant::now();
    let clients: Vec<Engine> = (0..3)
        .map(|_| Engine::start(config("client", &[format!("tcp:0:{}", echo.port())])).unwrap())
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let got = c.wait_connected(Duration::from_secs(60));
        assert!(got.is_ok(), "client {i}: {got:?}");
    }
    println!("3 clients through php -S in {:?}", started.elapsed());
    for (i, c) in clients.iter().enumerate() {
        let mut s = std::net::TcpStream::connect(c.mappings()[0].listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = format!("client {i} through the PHP mailbox");
        s.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    let stats = server.stats();
    assert_eq!(stats.clients.len(), 3, "{:#?}", stats.clients);
    assert!(stats.clients.iter().all(|c| c.state.is_connected()));
    for c in clients {
        c.stop(Duration::from_secs(2));
    }
    server.stop(Duration::from_secs(2));
}

/// The client's side of the Go tool's enhanced mailbox: JSON answers, versions only
/// inside the POST answer (no header), and a `DELETE` that removes the whole room.
#[tokio::test]
async fn the_client_speaks_the_enhanced_php_mailbox() {
    let Some(php) = Php::start() else { return };
    let c = SignalClient::new(
        &php.enhanced_url(),
        "enhanced room",
        Duration::from_millis(50),
        Arc::new(AtomicU64::new(0)),
    )
    .unwrap();
    assert_eq!(c.get(Role::Server, None, None).await.unwrap(), None);
    c.post(Role::Server, "{\"from\":\"server\"}").await.unwrap();
    c.post(Role::Client, "{\"from\":\"client\"}").await.unwrap();
    c.post(Role::Client, "{\"from\":\"client\",\"n\":2}")
        .await
        .unwrap();
    let (data, version) = c.get(Role::Client, None, None).await.unwrap().unwrap();
    assert_eq!(
        data, "{\"from\":\"client\",\"n\":2}",
        "the latest, as posted"
    );
    assert_eq!(version, None, "versions are not sent as a header");
    // Our DELETE names a role, but this mailbox removes the whole room.
    c.delete(Role::Client).await.unwrap();
    assert_eq!(c.get(Role::Server, None, None).await.unwrap(), None);
    assert_eq!(c.get(Role::Client, None, None).await.unwrap(), None);
    // The POST answer carries the versions in JSON, and every answer is JSON.
    let resp = reqwest::Client::new()
        .post(php.enhanced_url())
        .body(r#"{"room":"v","role":"server","data":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["participant_version"], 1);
    assert_eq!(body["room_version"], 2);
}

/// A server peer's session that has not read its client's offer holds incoming
/// handshakes and reads the mailbox early, but a flood of handshakes (anyone can send
/// QUIC Initials) costs a bounded number of mailbox reads: held handshakes are capped,
/// and early reads come at most once per `WAKE_GAP`. The session is opened by a knock
/// whose client never posts its own offer (issue #18: each client has a session with
/// its own socket, which is what the flood targets).
#[test]
fn a_flood_of_handshakes_causes_a_bounded_number_of_mailbox_reads() {
    let Some(php) = Php::start() else { return };
    let (rt, stun) = stun_responder();
    // A backoff of 60 s: after its first GET the server would not poll again within the
    // test, so every later GET is an early read caused by a handshake.
    let room = common::room();
    // A knock from a client that posts nothing in its own mailbox.
    let key = RoomKey::derive(&room, Some("flood secret"));
    let knock = common::offer_with(
        Role::Client,
        "127.0.0.1:9".parse().unwrap(),
        Some("c".repeat(32)),
    );
    let lobby = SignalClient::new(
        &php.url(),
        &key.mailbox_name(),
        Duration::from_millis(50),
        Arc::default(),
    )
    .unwrap();
    // Posted before the server starts: its first read of the room finds it (with a
    // 60 s backoff it would not read again within the test).
    rt.block_on(lobby.post(Role::Client, &knock.encode(&key, &room)))
        .unwrap();
    let server = Engine::start(common::config_for(
        &php.url(),
        stun.local_addr(),
        "server",
        &room,
        "flood secret",
        &[],
        serde_json::json!({"performance": {"signalBackoff": "60s"}}),
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().clients.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let session = server.stats().clients.first().map(|c| c.local_addr);
    let target = session.expect("the knock opened a session");
    // Settled: the session posted its offer and read the client's mailbox once.
    let mut before = server.stats().signaling_requests;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = server.stats().signaling_requests;
        if now == before || Instant::now() > deadline {
            break;
        }
        before = now;
    }
    assert_eq!(before, server.stats().signaling_requests, "not settled");

    let flood_for = Duration::from_secs(3);
    let attempts = rt.block_on(flood(target, flood_for));
    let reads = server.stats().signaling_requests - before;
    let bound = (flood_for.as_millis() / WAKE_GAP.as_millis()) as u64 + 2;
    println!("{attempts} handshakes in {flood_for:?} caused {reads} mailbox reads (bound {bound})");
    assert!(attempts > 200, "{attempts}");
    assert!(reads >= 1, "a held handshake reads the mailbox early");
    assert!(reads <= bound, "{reads} reads for {attempts} handshakes");
    assert!(
        !server.state().is_connected() && !server.state().is_final(),
        "{}",
        server.state()
    );

    server.stop(Duration::from_secs(2));
}

/// Starts QUIC handshakes to `target` every 5 ms for `duration` (each with a random
/// certificate nobody pinned) and waits for them to end; returns how many.
async fn flood(target: std::net::SocketAddr, duration: Duration) -> u32 {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    // Any client config: these handshakes are refused anyway, and only their Initials
    // matter here.
    let ca = rcgen::generate_simple_self_signed(vec!["elsewhere".to_owned()]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    endpoint.set_default_client_config(
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap(),
    );
    let started = Instant::now();
    let mut attempts = 0u32;
    let mut pending = Vec::new();
    while started.elapsed() < duration {
        let connecting = endpoint.connect(target, "stunfwd").unwrap();
        pending.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(8), connecting).await;
        }));
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for p in pending {
        let _ = p.await;
    }
    attempts
}
