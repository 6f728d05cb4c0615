//! The rendezvous server faces the internet: every limit is checked here (request rate,
//! concurrent long-polls, connections, body size, room-name length, rooms, bytes held),
//! and so is its answer to abuse (malformed JSON, wrong methods, huge headers, slow
//! heads and bodies, junk). It answers the right 4xx or closes the connection, never
//! panics, and gives back what each connection held.

#![allow(clippy::unwrap_used)]

mod signal_support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use signal_support::{eventually, raw_exchange, read_to_close, status_of, wait_until};
use stunfwd_core::signal::{SignalServer, SignalServerConfig};
use tokio::time::Instant;

async fn server(tweak: impl FnOnce(&mut SignalServerConfig)) -> SignalServer {
    let mut config = SignalServerConfig {
        stun: None,
        ..SignalServerConfig::default()
    };
    tweak(&mut config);
    SignalServer::start(config).await.unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Runs blocking socket code off the test's runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn request_rate_is_limited_per_client_with_retry_after() {
    let srv = server(|c| {
        c.rate_per_ip = 2;
        c.burst_per_ip = 3;
    })
    .await;
    let url = format!("{}?room=r&role=client", srv.url());
    for _ in 0..3 {
        assert_eq!(http().get(&url).send().await.unwrap().status(), 404);
    }
    let limited = http()
        .get(&url)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        limited.status(),
        429,
        "X-Forwarded-For is not trusted by default"
    );
    assert_eq!(limited.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_str(&limited.text().await.unwrap()).unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("requests per second"));

    let health = http()
        .get(format!("{}healthz", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health checks are not limited");

    // 2 per second: a token is back after 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(http().get(&url).send().await.unwrap().status(), 404);
    assert_eq!(http().get(&url).send().await.unwrap().status(), 429);
    assert!(srv
        .metrics()
        .contains("stunfwd_signal_requests_total{status=\"429\"} 2"));
}

#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_told_apart_by_forwarded_for() {
    let srv = server(|c| {
        c.rate_per_ip = 1;
        c.burst_per_ip = 1;
        c.trust_forwarded_for = true;
    })
    .await;
    let url = format!("{}?room=r&role=client", srv.url());
    let from = |ip: &'static str| {
        let url = url.clone();
        async move {
            http()
                .get(url)
                .header("x-forwarded-for", format!("10.9.9.9, {ip}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(from("198.51.100.1").await, 404);
    assert_eq!(from("198.51.100.1").await, 429);
    assert_eq!(from("198.51.100.2").await, 404);
    assert_eq!(from("2001:db8::1").await, 404);
    assert_eq!(
        from("2001:db8::2").await,
        429,
        "IPv6 clients are limited per /64"
    );
}

#[tokio::test]
async fn concurrent_long_polls_are_capped() {
    let srv = server(|c| {
        c.max_polls = 3;
        c.max_polls_per_ip = 2;
        c.trust_forwarded_for = true;
    })
    .await;
    let poll = |ip: &'static str| {
        let url = format!("{}?room=polls&role=server&wait=5", srv.url());
        async move {
            let resp = http()
                .get(url)
                .header("x-forwarded-for", ip)
                .send()
                .await
                .unwrap();
            (resp.status(), resp.headers().get("retry-after").cloned())
        }
    };
    let a1 = tokio::spawn(poll("198.51.100.1"));
    let a2 = tokio::spawn(poll("198.51.100.1"));
    assert!(eventually(Duration::from_secs(2), || srv.waiting_polls() == 2).await);
    let (status, retry) = poll("198.51.100.1").await;
    assert_eq!(status, 429, "a third long-poll from the same client");
    assert_eq!(retry.unwrap(), "1");
    let b1 = tokio::spawn(poll("198.51.100.2"));
    assert!(eventually(Duration::from_secs(2), || srv.waiting_polls() == 3).await);
    assert_eq!(poll("198.51.100.3").await.0, 429, "the server-wide cap");
    assert!(srv.metrics().contains("stunfwd_signal_waiting_polls 3\n"));
    // Plain reads are not long-polls and still work.
    let plain = http()
        .get(format!("{}?room=polls&role=server", srv.url()))
        .header("x-forwarded-for", "198.51.100.3")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 404);

    let started = Instant::now();
    srv.stop(Duration::from_secs(2)).await;
    for task in [a1, a2, b1] {
        assert_eq!(task.await.unwrap().0, 404, "drained by stop");
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(srv.waiting_polls(), 0, "slots are given back");
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let srv = server(|c| c.max_body = 1024).await;
    let url = srv.url();
    let big = format!(
        r#"{{"room":"r","role":"client","data":"{}"}}"#,
        "x".repeat(1100)
    );
    let resp = http().post(&url).body(big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 413, "declared Content-Length over the limit");

    // Chunked, no Content-Length: counted while read.
    let addr = srv.http_addr();
    let (status, _) = blocking(move || {
        let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for chunk in big.as_bytes().chunks(100) {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        raw_exchange(addr, &req, Duration::from_secs(3))
    })
    .await;
    assert_eq!(status, 413);

    let fits = format!(
        r#"{{"room":"r","role":"client","data":"{}"}}"#,
        "x".repeat(900)
    );
    assert_eq!(
        http().post(&url).body(fits).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn room_names_over_the_limit_get_400() {
    let srv = server(|c| c.max_room_len = 8).await;
    let url = srv.url();
    let post = |room: &str| {
        let body = serde_json::json!({"room": room, "role": "client", "data": "x"}).to_string();
        http().post(&url).body(body).send()
    };
    assert_eq!(post("12345678").await.unwrap().status(), 200);
    let resp = post("123456789").await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("1 to 8 bytes"));
    for method in ["GET", "DELETE"] {
        let resp = http()
            .request(
                method.parse().unwrap(),
                format!("{url}?room=123456789&role=client"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{method}");
    }
    assert_eq!(srv.rooms(), 1);
}

#[tokio::test]
async fn rooms_and_bytes_held_are_bounded() {
    let srv = server(|c| {
        c.max_rooms = 2;
        c.max_store_bytes = 1000;
    })
    .await;
    let url = srv.url();
    let post = |room: &str, data: String| {
        let body = serde_json::json!({"room": room, "role": "client", "data": data}).to_string();
        http().post(&url).body(body).send()
    };
    assert_eq!(post("a", "x".into()).await.unwrap().status(), 200);
    assert_eq!(post("b", "x".into()).await.unwrap().status(), 200);
    let full = post("c", "x".into()).await.unwrap();
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "1");
    assert!(full.text().await.unwrap().contains("maximum of 2 rooms"));
    let resp = post("a", "y".repeat(1000)).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("bytes"));
    assert_eq!(post("a", "y".repeat(900)).await.unwrap().status(), 200);
    assert_eq!(srv.rooms(), 2);
}

/// Requests no well-behaved client sends, and the status each must get.
#[tokio::test]
async fn malformed_requests_get_the_right_4xx_and_the_server_survives() {
    let srv = server(|c| c.max_header_bytes = 8192).await;
    let addr = srv.http_addr();
    let deep = format!(
        r#"{{"room":"r","role":"client","data":{}"x"{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("junk request line", b"HELLO\r\n\r\n".to_vec(), 400),
        ("binary junk", vec![0u8, 159, 146, 150, 13, 10, 13, 10], 400),
        (
            "PUT",
            b"PUT /?room=r&role=client HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
        (
            "OPTIONS",
            b"OPTIONS / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            405,
        ),
        (
            "huge header",
            format!(
                "GET /?room=r&role=client HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            )
            .into_bytes(),
            431,
        ),
        (
            "many headers",
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n",
                (0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            )
            .into_bytes(),
            431,
        ),
        (
            "bad Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: lots\r\n\r\n".to_vec(),
            400,
        ),
        (
            "malformed JSON",
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 9\r\n\r\n{not json".to_vec(),
            400,
        ),
        (
            "deeply nested JSON",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{deep}",
                deep.len()
            )
            .into_bytes(),
            400,
        ),
        ("invalid UTF-8 in JSON", {
            let body = b"{\"room\":\"\xff\xfe\",\"role\":\"client\",\"data\":\"\"}";
            let mut req =
                format!("POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len())
                    .into_bytes();
            req.extend_from_slice(body);
            req
        }, 400),
        (
            "bad percent-encoding",
            b"GET /?room=%ZZ%&role=client&wait=%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (what, request, expected) in cases {
        let (status, text) =
            blocking(move || raw_exchange(addr, &request, Duration::from_secs(3))).await;
        assert_eq!(
            status,
            expected,
            "{what}: {}",
            text.lines().next().unwrap_or("")
        );
    }
    let health = http()
        .get(format!("{}healthz", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "still serving");
    assert!(
        eventually(Duration::from_secs(2), || srv.connections() <= 1).await,
        "every abusive connection was closed: {}",
        srv.connections()
    );
    assert_eq!(srv.rooms(), 0);
}

#[tokio::test]
async fn slow_heads_and_idle_connections_are_cut_off() {
    let srv = server(|c| c.header_timeout = Duration::from_secs(1)).await;
    let addr = srv.http_addr();
    blocking(move || {
        // Slowloris: a request head trickling in a byte at a time.
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        let head = b"GET /?room=r&role=client HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let mut closed = false;
        for b in head
            .iter()
            .chain(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter())
        {
            if s.write_all(&[*b]).is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let rest = read_to_close(&mut s, Duration::from_secs(3));
        assert!(closed || status_of(&rest) != 200, "{rest}");
        assert!(
            started.elapsed() < Duration::from_millis(3500),
            "cut off after the 1 s head timeout: {:?}",
            started.elapsed()
        );

        // A connection that never sends anything.
        let started = std::time::Instant::now();
        let mut idle = TcpStream::connect(addr).unwrap();
        assert_eq!(read_to_close(&mut idle, Duration::from_secs(5)), "");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{took:?}"
        );

        // An idle keep-alive connection after a request.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let started = std::time::Instant::now();
        let text = read_to_close(&mut s, Duration::from_secs(5));
        assert_eq!(status_of(&text), 200);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
    assert!(eventually(Duration::from_secs(2), || srv.connections() == 0).await);
}

#[tokio::test]
async fn slow_bodies_get_408() {
    let srv = server(|c| c.body_timeout = Duration::from_secs(1)).await;
    let addr = srv.http_addr();
    let (status, took) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"room\":")
            .unwrap();
        let started = std::time::Instant::now();
        let text = read_to_close(&mut s, Duration::from_secs(5));
        (status_of(&text), started.elapsed())
    })
    .await;
    assert_eq!(status, 408);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// Opens `n` connections that send nothing, and waits until the server counts them.
fn hold(addr: SocketAddr, srv_connections: impl Fn() -> usize, n: usize) -> Vec<TcpStream> {
    let held: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert!(wait_until(Duration::from_secs(2), || srv_connections() == n));
    held
}

/// True when a new connection is closed by the server without an answer.
fn refused(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    status_of(&read_to_close(&mut s, Duration::from_secs(2))) == 0
}

#[tokio::test]
async fn connections_are_capped_per_client_and_in_total() {
    for (total, per_client) in [(0, 2), (2, 0)] {
        let srv = std::sync::Arc::new(
            server(|c| {
                c.max_connections = total;
                c.max_connections_per_ip = per_client;
            })
            .await,
        );
        let addr = srv.http_addr();
        let s = srv.clone();
        blocking(move || {
            let held = hold(addr, || s.connections(), 2);
            assert!(refused(addr), "a third connection is closed at once");
            drop(held);
            assert!(wait_until(Duration::from_secs(2), || s.connections() == 0));
            assert!(!refused(addr), "room again once one closed");
        })
        .await;
        assert!(srv
            .metrics()
            .contains("stunfwd_signal_connections_refused_total 1\n"));
    }
}

/// A STUN Binding request: header, then `attrs` (already padded).
fn binding_request(attrs: &[u8]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
    m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    m.extend_from_slice(&rand::random::<[u8; 12]>());
    m.extend_from_slice(attrs);
    m
}

#[tokio::test]
async fn the_stun_responder_never_amplifies() {
    let stun = stunfwd_core::stun::StunResponder::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let exchange = |req: Vec<u8>| {
        let sock = &sock;
        let to = stun.local_addr();
        async move {
            sock.send_to(&req, to).await.unwrap();
            let mut buf = [0u8; 2048];
            match tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) => Some(n),
                _ => None,
            }
        }
    };
    // XOR-MAPPED-ADDRESS for IPv4: 4 bytes of attribute header + 8 of value.
    const XMA_V4: usize = 12;
    let minimal = binding_request(&[]);
    let n = exchange(minimal.clone()).await.expect("answered");
    assert!(
        n <= minimal.len() + XMA_V4,
        "{n} bytes for a {}-byte request",
        minimal.len()
    );
    // SOFTWARE (0x8022), 100 bytes: the answer does not echo it.
    let mut software = vec![0x80, 0x22, 0x00, 100];
    software.extend_from_slice(&[b'x'; 100]);
    let padded = binding_request(&software);
    let n = exchange(padded.clone()).await.expect("answered");
    assert!(n <= minimal.len() + XMA_V4 && n <= padded.len() + XMA_V4);

    // Not answered at all: junk, responses, truncated requests.
    let mut response = binding_request(&[]);
    response[0] = 0x01;
    response[1] = 0x01;
    for silent in [
        b"hello, is this stun?".to_vec(),
        vec![0u8; 19],
        response,
        minimal[..10].to_vec(),
    ] {
        assert_eq!(exchange(silent).await, None);
    }
    assert_eq!(stun.answered(), 2);
}

/// Issue #14, finding 7: one noisy address fills its own share of the store, then
/// gets `429`, while another address still posts and the store is far from full.
#[tokio::test]
async fn one_noisy_client_cannot_lock_others_out() {
    let srv = server(|c| {
        c.rate_per_ip = 0;
        c.max_bytes_per_client = 64 * 1024;
    })
    .await;
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let noisy = from([127, 0, 0, 2]);
    let quiet = from([127, 0, 0, 3]);
    let data = "x".repeat(8 * 1024);
    let post = |c: &reqwest::Client, room: String| {
        let body = serde_json::json!({"room": room, "role": "client", "data": data}).to_string();
        let req = c.post(srv.url()).body(body);
        async move { req.send().await.unwrap() }
    };
    let mut accepted = 0;
    let refusal = loop {
        let resp = post(&noisy, format!("noisy-{accepted}")).await;
        if resp.status() != 200 {
            break resp;
        }
        accepted += 1;
        assert!(accepted < 100, "the per-client bound never applied");
    };
    assert_eq!(refusal.status(), 429);
    assert_eq!(refusal.headers()["retry-after"], "1");
    let body = refusal.text().await.unwrap();
    assert!(body.contains("65536 bytes"), "{body}");
    // 8 KiB of data plus a short room name: 7 fit in 64 KiB.
    assert_eq!(accepted, 7);
    assert_eq!(post(&quiet, "quiet".into()).await.status(), 200);
    // Deleting a room gives its bytes back.
    let del = noisy
        .delete(format!("{}?room=noisy-0&role=client", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(post(&noisy, "noisy-again".into()).await.status(), 200);
}
