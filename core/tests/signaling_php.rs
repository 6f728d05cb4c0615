//! Compatibility with the Go tool's PHP mailbox: `core/tests/php/signaling_server.php`
//! (the same POST/GET mailbox, no long-poll, no versions, no DELETE) runs under
//! `php -S` on loopback, and two stunfwd engines meet through it, falling back to
//! exponential backoff. Skips (printing `SKIPPED: ...`) when php is not installed.

#![allow(clippy::unwrap_used)]

mod common;
mod signal_support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_support::Php;
use stunfwd_core::signal::{Offer, Role, RoomKey, SignalClient};
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
            id: Offer::new_id(),
            candidates: vec!["127.0.0.1:1".parse().unwrap()],
            host_count: 1,
            relay_count: 0,
            turn: false,
            fp: "cd".repeat(32),
            nat: "none".into(),
        };
        let encoded = offer.encode(&key);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            c.post(Role::Server, &encoded).await.unwrap();
            offer
        })
    };
    let got = c
        .wait_for(Role::Server, Duration::from_secs(15), |d| {
            Offer::decode(d, &key).ok()
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

#[test]
fn two_engines_connect_through_the_php_mailbox() {
    let Some(php) = Php::start() else { return };
    // Our STUN responder (the PHP deployment would use any public STUN server), on a
    // runtime whose worker keeps serving while the test thread blocks.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let stun = rt
        .block_on(StunResponder::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
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
