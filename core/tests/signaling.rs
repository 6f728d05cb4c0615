//! The rendezvous server and client over real loopback sockets: the PHP-compatible
//! mailbox, long-polling, backoff against a plain mailbox, expiry, limits and shutdown.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stunfwd_core::signal::{
    Offer, Role, RoomKey, SignalClient, SignalServer, SignalServerConfig, WAKE_GAP,
};
use stunfwd_core::Error;
use tokio::time::Instant;

/// A rendezvous server on loopback with the default limits (no STUN responder unless
/// asked: these tests are about HTTP).
async fn server_with(config: SignalServerConfig) -> SignalServer {
    SignalServer::start(config).await.unwrap()
}

async fn server() -> SignalServer {
    server_with(SignalServerConfig {
        stun: None,
        ..SignalServerConfig::default()
    })
    .await
}

/// A client of `room` at `url` with its own request counter.
fn client(url: &str, room: &str) -> (SignalClient, Arc<AtomicU64>) {
    let counter = Arc::new(AtomicU64::new(0));
    let c = SignalClient::new(url, room, Duration::from_millis(100), counter.clone()).unwrap();
    (c, counter)
}

fn raw() -> reqwest::Client {
    reqwest::Client::new()
}

fn offer() -> Offer {
    Offer {
        role: Role::Server,
        nonce: Offer::new_nonce(),
        ts: stunfwd_core::signal::unix_now(),
        host_count: 0,
        relay_count: 0,
        turn: false,
        id: Offer::new_id(),
        candidates: vec!["127.0.0.1:40000".parse().unwrap()],
        fp: "ab".repeat(32),
        nat: "none".into(),
        predict: None,
        comb: None,
        client: None,
        refused: None,
    }
}

#[tokio::test]
async fn mailbox_round_trip_delete_and_health() {
    let srv = server().await;
    assert!(srv.url().starts_with("http://127.0.0.1:"));
    assert!(srv.stun_addr().is_none());
    let (c, count) = client(&srv.url(), "round-trip");

    c.post(Role::Client, "hello from the client").await.unwrap();
    assert_eq!(srv.rooms(), 1);
    let (data, version) = c.get(Role::Client, None, None).await.unwrap().unwrap();
    assert_eq!(data, "hello from the client");
    assert!(version.is_some(), "our server sends x-stunfwd-version");
    assert_eq!(c.get(Role::Server, None, None).await.unwrap(), None);

    c.post(Role::Client, "second").await.unwrap();
    let (data, v2) = c.get(Role::Client, None, None).await.unwrap().unwrap();
    assert_eq!(data, "second");
    assert!(v2 > version, "every POST bumps the version");

    c.delete(Role::Client).await.unwrap();
    assert_eq!(c.get(Role::Client, None, None).await.unwrap(), None);
    assert_eq!(srv.rooms(), 0, "deleting the last role removes the room");
    c.delete(Role::Server).await.unwrap();

    assert_eq!(count.load(Ordering::Relaxed), 8);
    assert_eq!(srv.requests(), 8);

    let health = raw()
        .get(format!("{}healthz", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn plain_php_style_requests_work_on_any_path() {
    let srv = server().await;
    let url = format!("http://{}/signal.php", srv.http_addr());
    let resp = raw()
        .post(&url)
        .body(r#"{"room":"php","role":"server","data":"{\"x\":1}","extra":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));

    let resp = raw()
        .get(format!("{url}?room=php&role=server"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(resp.headers().contains_key("x-stunfwd-version"));
    assert_eq!(resp.text().await.unwrap(), r#"{"x":1}"#);

    let resp = raw()
        .get(format!("{url}?room=php&role=client"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_reason() {
    let srv = server().await;
    let url = srv.url();
    let post = |body: String| {
        let url = url.clone();
        async move { raw().post(url).body(body).send().await.unwrap() }
    };

    let big = format!(
        r#"{{"room":"r","role":"client","data":"{}"}}"#,
        "x".repeat(16 * 1024)
    );
    assert_eq!(post(big).await.status(), 413);

    for (body, why) in [
        ("{not json".to_owned(), "malformed JSON"),
        (r#"{"room":"r","role":"client"}"#.to_owned(), "missing data"),
        (
            r#"{"room":"r","role":"peer","data":"x"}"#.to_owned(),
            "bad role",
        ),
        (
            r#"{"room":"r","role":"client","data":5}"#.to_owned(),
            "data not a string",
        ),
        (
            r#"{"room":"","role":"client","data":"x"}"#.to_owned(),
            "empty room",
        ),
        (
            format!(
                r#"{{"room":"{}","role":"client","data":"x"}}"#,
                "r".repeat(129)
            ),
            "room too long",
        ),
    ] {
        let resp = post(body).await;
        assert_eq!(resp.status(), 400, "{why}");
        let err: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert!(err["error"].as_str().is_some(), "{why}: JSON error message");
    }

    for query in [
        "role=client",
        "room=r",
        "room=r&role=x",
        "room=r&role=client&wait=soon",
        "room=r&role=client&since=-1",
    ] {
        let resp = raw().get(format!("{url}?{query}")).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{query}");
    }
    assert_eq!(srv.rooms(), 0);
}

#[tokio::test]
async fn a_full_server_answers_503() {
    let srv = server_with(SignalServerConfig {
        stun: None,
        max_rooms: 1,
        ..SignalServerConfig::default()
    })
    .await;
    let (a, _) = client(&srv.url(), "a");
    let (b, _) = client(&srv.url(), "b");
    a.post(Role::Client, "x").await.unwrap();
    let err = b.post(Role::Client, "x").await.unwrap_err();
    assert!(
        matches!(&err, Error::Signal(m) if m.contains("503")),
        "{err}"
    );
    a.post(Role::Server, "y").await.unwrap();
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_the_peer_posts() {
    let srv = server().await;
    let (a, _) = client(&srv.url(), "long-poll");
    let (b, _) = client(&srv.url(), "long-poll");

    let poster = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.post(Role::Server, "late answer").await.unwrap();
    });
    let started = Instant::now();
    let got = a
        .get(Role::Server, Some(Duration::from_secs(5)), None)
        .await
        .unwrap();
    let took = started.elapsed();
    poster.await.unwrap();
    assert_eq!(got.map(|(d, _)| d).as_deref(), Some("late answer"));
    assert!(took >= Duration::from_millis(250), "it did wait: {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "it returned on the post: {took:?}"
    );
}

#[tokio::test]
async fn waiting_10s_for_a_late_peer_costs_at_most_3_requests() {
    let srv = server().await;
    let (a, a_count) = client(&srv.url(), "late-peer");
    let (b, b_count) = client(&srv.url(), "late-peer");
    let key = RoomKey::derive("late-peer", Some("s3cret"));
    let server_before = srv.requests();

    let b_offer = offer();
    let b_encoded = b_offer.encode(&key, "late-peer");
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        b.post(Role::Server, &b_encoded).await.unwrap();
    });

    let started = Instant::now();
    a.post(Role::Client, &offer().encode(&key, "late-peer"))
        .await
        .unwrap();
    let got = a
        .wait_for(Role::Server, Duration::from_secs(20), |data| {
            Offer::decode(data, &key, "late-peer").ok()
        })
        .await
        .unwrap();
    let took = started.elapsed();
    late.await.unwrap();

    assert_eq!(got, b_offer);
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(12),
        "{took:?}"
    );
    let a_requests = a_count.load(Ordering::Relaxed);
    let a_seen_by_server = srv.requests() - server_before - b_count.load(Ordering::Relaxed);
    assert!(a_requests <= 3, "client counted {a_requests} requests");
    assert!(
        a_seen_by_server <= 3,
        "server saw {a_seen_by_server} requests from A"
    );
    assert_eq!(a_requests, a_seen_by_server);
}

#[tokio::test]
async fn rejected_data_is_not_fetched_again_until_new_data_arrives() {
    let srv = server().await;
    let key = RoomKey::derive("tamper", Some("ours"));
    let (a, a_count) = client(&srv.url(), "tamper");
    let (b, _) = client(&srv.url(), "tamper");

    // An offer under another secret (an impostor, or a tampering operator) is ignored.
    let impostor = offer().encode(&RoomKey::derive("tamper", Some("theirs")), "tamper");
    b.post(Role::Server, &impostor).await.unwrap();
    let genuine = offer();
    let encoded = genuine.encode(&key, "tamper");
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        b.post(Role::Server, &encoded).await.unwrap();
    });

    let mut rejected = 0;
    let got = a
        .wait_for(Role::Server, Duration::from_secs(10), |data| {
            let r = Offer::decode(data, &key, "tamper");
            if matches!(r, Err(stunfwd_core::signal::OfferError::BadMac)) {
                rejected += 1;
            }
            r.ok()
        })
        .await
        .unwrap();
    later.await.unwrap();
    assert_eq!(got, genuine);
    assert_eq!(rejected, 1, "the impostor's offer was looked at once");
    assert_eq!(
        a_count.load(Ordering::Relaxed),
        2,
        "one GET, then one long-poll with since"
    );
}

#[tokio::test]
async fn since_holds_until_newer_data() {
    let srv = server().await;
    let (a, _) = client(&srv.url(), "since");
    let (b, _) = client(&srv.url(), "since");
    b.post(Role::Server, "old").await.unwrap();
    let (_, version) = a.get(Role::Server, None, None).await.unwrap().unwrap();
    let version = version.unwrap();

    let started = Instant::now();
    let got = a
        .get(Role::Server, Some(Duration::from_secs(2)), Some(version))
        .await
        .unwrap();
    assert_eq!(got, None, "old data is not returned again");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );

    let poster = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.post(Role::Server, "new").await.unwrap();
    });
    let started = Instant::now();
    let (data, newer) = a
        .get(Role::Server, Some(Duration::from_secs(5)), Some(version))
        .await
        .unwrap()
        .unwrap();
    poster.await.unwrap();
    assert_eq!(data, "new");
    assert!(newer.unwrap() > version);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn rooms_expire_without_activity() {
    let srv = server_with(SignalServerConfig {
        stun: None,
        room_ttl: Duration::from_secs(1),
        ..SignalServerConfig::default()
    })
    .await;
    let (c, _) = client(&srv.url(), "expiring");
    c.post(Role::Client, "soon gone").await.unwrap();
    assert_eq!(srv.rooms(), 1);
    assert!(c.get(Role::Client, None, None).await.unwrap().is_some());

    // The sweeper runs every ttl/2 = 500 ms.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(srv.rooms(), 0, "the sweeper removed the room");
    assert_eq!(c.get(Role::Client, None, None).await.unwrap(), None);

    c.post(Role::Client, "again").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.get(Role::Client, None, None).await.unwrap(), None);
}

#[tokio::test]
async fn stop_wakes_pending_long_polls() {
    let srv = server().await;
    let (c, _) = client(&srv.url(), "stopping");
    let poll = tokio::spawn(async move {
        let r = c
            .get(Role::Server, Some(Duration::from_secs(20)), None)
            .await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = Instant::now();
    srv.stop(Duration::from_secs(5)).await;
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        stopping.elapsed()
    );
    let (result, answered) = poll.await.unwrap();
    assert_eq!(result.unwrap(), None, "a pending long-poll answers 404");
    assert!(answered.duration_since(stopping) < Duration::from_secs(1));

    let (c, _) = client(&srv.url(), "stopping");
    assert!(
        c.get(Role::Server, None, None).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn the_rendezvous_server_also_runs_a_stun_responder() {
    let srv = server_with(SignalServerConfig::default()).await;
    let stun = srv.stun_addr().expect("a STUN responder by default");
    assert!(stun.ip().is_loopback() && stun.port() != 0);
    assert!(
        std::net::UdpSocket::bind(stun).is_err(),
        "the responder holds its port"
    );

    let taken: SignalServerConfig = SignalServerConfig {
        http: srv.http_addr(),
        stun: None,
        ..SignalServerConfig::default()
    };
    let err = SignalServer::start(taken).await.unwrap_err();
    assert_eq!(err.code(), "ERR_ADDR_IN_USE", "{err}");
    assert!(err.to_string().contains("rendezvous http"), "{err}");

    srv.stop(Duration::from_secs(1)).await;
    assert!(
        std::net::UdpSocket::bind(stun).is_ok(),
        "stop() releases the STUN port"
    );
}

/// A plain mailbox that ignores `wait` and answers 404 to everything, recording when
/// each request came.
async fn not_found_server() -> (SocketAddr, Arc<Mutex<Vec<std::time::Instant>>>) {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let recorded = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let recorded = recorded.clone();
        async move {
            recorded.lock().unwrap().push(std::time::Instant::now());
            axum::http::StatusCode::NOT_FOUND
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

#[tokio::test]
async fn backs_off_exponentially_against_a_mailbox_without_long_poll() {
    let (addr, hits) = not_found_server().await;
    let counter = Arc::new(AtomicU64::new(0));
    let c = SignalClient::new(
        &format!("http://{addr}/signal.php"),
        "plain",
        Duration::from_millis(50),
        counter.clone(),
    )
    .unwrap();

    let started = Instant::now();
    let err = c
        .wait_for(Role::Server, Duration::from_secs(7), |_| Some(()))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, Error::Timeout(m) if m.contains("plain") && m.contains("server")),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_millis(7500),
        "{took:?}"
    );

    let hits = hits.lock().unwrap().clone();
    assert_eq!(hits.len() as u64, counter.load(Ordering::Relaxed));
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1] - w[0]).collect();
    // 50, 100, 200, 400, 800, 1600, 3200 ms, then the 5 s cap overruns the timeout.
    assert!(
        (6..=9).contains(&hits.len()),
        "{} requests: {gaps:?}",
        hits.len()
    );
    assert!(gaps[0] >= Duration::from_millis(45), "{gaps:?}");
    let cap = Duration::from_secs(5);
    for pair in gaps.windows(2) {
        if pair[0] < cap {
            assert!(
                pair[1].as_secs_f64() + 0.1 >= 1.6 * pair[0].as_secs_f64(),
                "gaps must grow: {gaps:?}"
            );
        }
    }
    assert!(
        gaps.iter().all(|g| *g <= cap + Duration::from_secs(1)),
        "{gaps:?}"
    );
}

/// A peer that shows it has posted (a check, a handshake) wakes a waiting client: the
/// mailbox is read at once instead of at the next backoff step, and a flood of wakes
/// costs at most one read per `WAKE_GAP`.
#[tokio::test]
async fn a_wake_reads_early_and_a_flood_of_wakes_is_bounded() {
    let (addr, hits) = not_found_server().await;
    let counter = Arc::new(AtomicU64::new(0));
    // A backoff that reaches its 5 s cap at once: without wakes, one GET per 5 s.
    let c = SignalClient::new(
        &format!("http://{addr}/signal.php"),
        "woken",
        Duration::from_secs(5),
        counter.clone(),
    )
    .unwrap();
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.wait_for(Role::Server, Duration::from_secs(4), |_| Some(()))
                .await
        })
    };
    // One wake after 1 s: one early GET, right away.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = hits.lock().unwrap().len();
    let woke_at = std::time::Instant::now();
    c.wake();
    let limit = std::time::Instant::now() + Duration::from_secs(1);
    while hits.lock().unwrap().len() == before && std::time::Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        hits.lock().unwrap().len() > before,
        "a wake did not cause a GET within 1 s"
    );
    let early = hits.lock().unwrap()[before] - woke_at;
    assert!(early < Duration::from_millis(300), "{early:?}");

    // Then 2 s of wakes every millisecond: at most one GET per WAKE_GAP.
    let flood_start = hits.lock().unwrap().len();
    let flood = std::time::Instant::now();
    while flood.elapsed() < Duration::from_secs(2) {
        c.wake();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let during = hits.lock().unwrap().len() - flood_start;
    let bound = (2_000 / WAKE_GAP.as_millis() as usize) + 2;
    assert!(
        (4..=bound).contains(&during),
        "{during} GETs during 2 s of wakes (bound {bound})"
    );
    let err = waiter.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    assert_eq!(
        hits.lock().unwrap().len() as u64,
        counter.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn connection_errors_are_retried_until_the_timeout() {
    // A port nobody listens on: bind, learn the port, close.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let c = SignalClient::new(
        &format!("http://{addr}/"),
        "nobody",
        Duration::from_millis(50),
        counter.clone(),
    )
    .unwrap();
    let err = c
        .wait_for(Role::Client, Duration::from_secs(1), |_| Some(()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Timeout(m) if m.contains("last problem")),
        "{err}"
    );
    let n = counter.load(Ordering::Relaxed);
    assert!(
        (3..=6).contains(&n),
        "{n} attempts in 1 s with backoff from 50 ms"
    );
}
