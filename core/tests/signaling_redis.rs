//! The rendezvous server on the Redis store, against a real `redis-server` started on
//! loopback for each test: several instances act as one (a post on one wakes a
//! long-poll on another), rooms expire by Redis TTL, the room limit is global, and an
//! outage is answered with 503 and survived. Skips (printing `SKIPPED: ...`) when
//! redis-server is not installed.

#![allow(clippy::unwrap_used)]

mod common;
mod signal_support;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use signal_support::{eventually, Redis};
use stunfwd_core::signal::{Role, SignalClient, SignalServer, SignalServerConfig, StoreConfig};
use stunfwd_core::{Engine, Error};
use tokio::time::Instant;

/// An instance on `redis` under `prefix` (so tests sharing a Redis never meet).
async fn instance(
    redis: &Redis,
    prefix: &str,
    tweak: impl FnOnce(&mut SignalServerConfig),
) -> SignalServer {
    let mut config = SignalServerConfig {
        stun: None,
        store: StoreConfig::Redis {
            url: redis.url(),
            prefix: prefix.to_owned(),
        },
        ..SignalServerConfig::default()
    };
    tweak(&mut config);
    SignalServer::start(config).await.unwrap()
}

fn client(url: &str, room: &str) -> SignalClient {
    SignalClient::new(
        url,
        room,
        Duration::from_millis(100),
        Arc::new(AtomicU64::new(0)),
    )
    .unwrap()
}

#[tokio::test]
async fn two_instances_on_one_redis_act_as_one() {
    let Some(redis) = Redis::start() else { return };
    let a = instance(&redis, "t1:", |_| {}).await;
    let b = instance(&redis, "t1:", |_| {}).await;
    let on_a = client(&a.url(), "shared room/ü");
    let on_b = client(&b.url(), "shared room/ü");

    // A peer long-polls instance B; its peer posts to instance A.
    let poster = tokio::spawn({
        let on_a = on_a.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            on_a.post(Role::Server, "offer via A").await.unwrap();
        }
    });
    let started = Instant::now();
    let got = on_b
        .get(Role::Server, Some(Duration::from_secs(10)), None)
        .await
        .unwrap();
    let took = started.elapsed();
    poster.await.unwrap();
    let (data, v1) = got.unwrap();
    assert_eq!(data, "offer via A");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "woken by A's post through pub/sub, not by a re-check: {took:?}"
    );

    // Versions come from one counter: a post on B is newer than A's.
    on_b.post(Role::Server, "second, via B").await.unwrap();
    let (data, v2) = on_a.get(Role::Server, None, None).await.unwrap().unwrap();
    assert_eq!(data, "second, via B");
    assert!(v2.unwrap() > v1.unwrap());
    // `since` holds across instances until newer data arrives.
    let started = Instant::now();
    let none = on_a
        .get(Role::Server, Some(Duration::from_secs(1)), v2)
        .await
        .unwrap();
    assert_eq!(none, None);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // DELETE on one instance is seen by the other; the emptied room goes.
    on_b.delete(Role::Server).await.unwrap();
    assert_eq!(on_a.get(Role::Server, None, None).await.unwrap(), None);
    assert_eq!(
        redis.cmd("EXISTS \"t1:room:shared room/ü\"").as_deref(),
        Some(":0")
    );
    assert_eq!(redis.cmd("ZCARD t1:rooms").as_deref(), Some(":0"));

    a.stop(Duration::from_secs(1)).await;
    b.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn rooms_expire_through_redis_ttls() {
    let Some(redis) = Redis::start() else { return };
    let srv = instance(&redis, "t2:", |c| c.room_ttl = Duration::from_secs(1)).await;
    let c = client(&srv.url(), "expiring");
    c.post(Role::Client, "soon gone").await.unwrap();
    let pttl: i64 = redis
        .cmd("PTTL t2:room:expiring")
        .unwrap()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&pttl), "Redis holds the TTL: {pttl} ms");

    // Reading touches the room.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(c.get(Role::Client, None, None).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(c.get(Role::Client, None, None).await.unwrap().is_some());

    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(c.get(Role::Client, None, None).await.unwrap(), None);
    assert_eq!(redis.cmd("EXISTS t2:room:expiring").as_deref(), Some(":0"));
    assert!(
        eventually(Duration::from_secs(3), || srv.rooms() == 0).await,
        "the room count follows"
    );
}

#[tokio::test]
async fn the_room_limit_is_shared_by_all_instances() {
    let Some(redis) = Redis::start() else { return };
    let a = instance(&redis, "t3:", |c| c.max_rooms = 2).await;
    let b = instance(&redis, "t3:", |c| c.max_rooms = 2).await;
    client(&a.url(), "one")
        .post(Role::Client, "x")
        .await
        .unwrap();
    client(&b.url(), "two")
        .post(Role::Client, "x")
        .await
        .unwrap();
    let err = client(&a.url(), "three")
        .post(Role::Client, "x")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Signal(m) if m.contains("503")),
        "{err}"
    );
    // Existing rooms still take posts.
    client(&b.url(), "one")
        .post(Role::Server, "y")
        .await
        .unwrap();
    client(&a.url(), "one").delete(Role::Client).await.unwrap();
    client(&a.url(), "one").delete(Role::Server).await.unwrap();
    client(&a.url(), "three")
        .post(Role::Client, "x")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_redis_outage_is_503_and_is_survived() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let a = instance(&redis, "t4:", |_| {}).await;
    let b = instance(&redis, "t4:", |_| {}).await;
    let on_a = client(&a.url(), "outage");
    let on_b = client(&b.url(), "outage");
    on_a.post(Role::Client, "before").await.unwrap();

    redis.kill();
    let raw = reqwest::Client::new()
        .get(format!("{}?room=outage&role=client", a.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 503);
    assert_eq!(raw.headers()["retry-after"], "1");
    assert!(raw.text().await.unwrap().contains("Redis"));
    assert!(on_a.post(Role::Client, "during").await.is_err());

    redis.restart();
    // The store reconnects on its own; B re-subscribes to post notifications.
    let up = async {
        for _ in 0..50 {
            if on_a.post(Role::Client, "after").await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    assert!(up.await, "the store came back");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let poster = tokio::spawn({
        let on_a = on_a.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            on_a.post(Role::Server, "woken").await.unwrap();
        }
    });
    let started = Instant::now();
    let got = on_b
        .get(Role::Server, Some(Duration::from_secs(10)), None)
        .await
        .unwrap();
    poster.await.unwrap();
    assert_eq!(got.map(|(d, _)| d).as_deref(), Some("woken"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "re-subscribed: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_redis_fails_at_start_with_the_reason() {
    let port = signal_support::free_port();
    let err = SignalServer::start(SignalServerConfig {
        stun: None,
        store: StoreConfig::redis(format!("redis://user:hunter2@127.0.0.1:{port}/")),
        ..SignalServerConfig::default()
    })
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Redis") && msg.contains("127.0.0.1"), "{msg}");
    assert!(!msg.contains("hunter2"), "the password is not shown: {msg}");

    let err = SignalServer::start(SignalServerConfig {
        stun: None,
        store: StoreConfig::redis("http://not-redis/"),
        ..SignalServerConfig::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), "ERR_CONFIG", "{err}");
}

/// Two engines meet through two different instances that share a Redis.
#[test]
fn engines_connect_through_two_instances() {
    let Some(redis) = Redis::start() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let a = rt.block_on(instance(&redis, "t6:", |c| {
        c.stun = Some("127.0.0.1:0".parse().unwrap())
    }));
    let b = rt.block_on(instance(&redis, "t6:", |_| {}));
    let stun = a.stun_addr().unwrap();
    let echo = common::tcp_echo();
    let room = common::room();
    let json = serde_json::json!({});
    let server = Engine::start(common::config_for(
        &a.url(),
        stun,
        "server",
        &room,
        "s3cret",
        &[],
        json.clone(),
    ))
    .unwrap();
    let client = Engine::start(common::config_for(
        &b.url(),
        stun,
        "client",
        &room,
        "s3cret",
        &[format!("tcp:0:{}", echo.port())],
        json,
    ))
    .unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    server.wait_connected(Duration::from_secs(20)).unwrap();

    let local = client.mappings()[0].listen;
    let mut s = std::net::TcpStream::connect(local).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"through two rendezvous instances").unwrap();
    let mut buf = [0u8; 32];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"through two rendezvous instances");

    client.stop(Duration::from_secs(2));
    server.stop(Duration::from_secs(2));
    rt.block_on(async {
        a.stop(Duration::from_secs(1)).await;
        b.stop(Duration::from_secs(1)).await;
    });
}
