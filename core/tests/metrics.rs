//! An operator points Prometheus at `metricsAddr`: the scrape parses with a real
//! Prometheus text-format parser, every family is properly typed, and the figures are
//! the engine's own stats.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Sample, Scrape, Value};
use stunfwd_core::{Engine, Error};

/// `GET /metrics` over a plain TCP stream; returns the content type and the body.
fn scrape(addr: SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap();
    (content_type, body.to_owned())
}

/// Parses `body`, checking that the parser took every sample line.
fn parse(body: &str) -> Scrape {
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let sample_lines = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(scrape.samples.len(), sample_lines, "every sample parsed");
    scrape
}

fn find<'a>(scrape: &'a Scrape, metric: &str, label: Option<(&str, &str)>) -> &'a Sample {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("{metric} {label:?} missing"))
}

fn counter(scrape: &Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    match find(scrape, metric, label).value {
        Value::Counter(v) => v,
        ref other => panic!("{metric} is not a counter: {other:?}"),
    }
}

fn gauge(scrape: &Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    match find(scrape, metric, label).value {
        Value::Gauge(v) => v,
        ref other => panic!("{metric} is not a gauge: {other:?}"),
    }
}

#[test]
fn metrics_endpoint_serves_the_stats_as_typed_prometheus_text() {
    const SIZE: usize = 300_000;
    let rv = Rendezvous::start();
    let echo = tcp_echo();
    let room = room();
    let metrics = serde_json::json!({"metricsAddr": "127.0.0.1:0"});
    let config = |mode: &str, mappings: &[String]| {
        config_for(
            &rv.url,
            rv.stun,
            mode,
            &room,
            "s3cret",
            mappings,
            metrics.clone(),
        )
    };
    let server = Engine::start(config("server", &[])).unwrap();
    let client = Engine::start(config("client", &[format!("tcp:0:{}", echo.port())])).unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    server.wait_connected(Duration::from_secs(20)).unwrap();
    let client_metrics = client.metrics_addr().unwrap();
    assert_ne!(client_metrics.port(), 0, "the bound port is reported");
    assert_ne!(server.metrics_addr(), Some(client_metrics));

    // Forward some bytes through the echo, and wait for the connection to be closed.
    let local = client.mappings()[0].listen;
    let data = pattern(SIZE, 8);
    let mut s = connect(local);
    let mut w = s.try_clone().unwrap();
    let d2 = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&d2).unwrap());
    let mut got = vec![0u8; SIZE];
    s.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got, data);
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.stats().totals.connections_active > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    let (content_type, body) = scrape(client_metrics);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let stats = client.stats();
    let m = parse(&body);

    // Types: every counter ends in `_total`, everything else is a gauge.
    for s in &m.samples {
        match s.value {
            Value::Counter(_) => assert!(s.metric.ends_with("_total"), "{}", s.metric),
            Value::Gauge(_) => assert!(!s.metric.ends_with("_total"), "{}", s.metric),
            ref other => panic!("{} is neither counter nor gauge: {other:?}", s.metric),
        }
        assert!(m.docs.contains_key(&s.metric), "{} has # HELP", s.metric);
    }
    assert_eq!(gauge(&m, "stunfwd_connected", None), 1.0);
    assert_eq!(
        gauge(&m, "stunfwd_state", Some(("state", "connected"))),
        1.0
    );
    assert_eq!(gauge(&m, "stunfwd_state", Some(("state", "punching"))), 0.0);
    assert!(gauge(&m, "stunfwd_rtt_seconds", None) >= 0.0);
    assert!(gauge(&m, "stunfwd_time_to_connected_seconds", None) > 0.0);
    assert_eq!(gauge(&m, "stunfwd_engine_info", Some(("room", &room))), 1.0);
    assert_eq!(
        find(&m, "stunfwd_engine_info", None).labels.get("mode"),
        Some("client")
    );

    // Figures: the forwarded bytes, per mapping and in total, are the stats'.
    let traffic = &stats.mappings[0].traffic;
    assert_eq!(traffic.bytes_sent, SIZE as u64);
    assert_eq!(traffic.bytes_received, SIZE as u64);
    let id = stats.mappings[0].id.to_string();
    let mapping = Some(("mapping", id.as_str()));
    let sent = counter(&m, "stunfwd_mapping_sent_bytes_total", mapping);
    assert_eq!(sent, traffic.bytes_sent as f64);
    assert_eq!(
        counter(&m, "stunfwd_mapping_received_bytes_total", mapping),
        traffic.bytes_received as f64
    );
    assert_eq!(
        find(&m, "stunfwd_mapping_sent_bytes_total", mapping)
            .labels
            .get("spec"),
        Some(stats.mappings[0].spec.as_str())
    );
    assert_eq!(
        counter(&m, "stunfwd_sent_bytes_total", None),
        stats.totals.bytes_sent as f64
    );
    assert_eq!(
        counter(&m, "stunfwd_connections_opened_total", None),
        stats.totals.connections_opened as f64
    );
    assert_eq!(gauge(&m, "stunfwd_connections_active", None), 0.0);
    assert_eq!(
        counter(&m, "stunfwd_signaling_requests_total", None),
        stats.signaling_requests as f64
    );

    // The server side serves its own figures: what it got from the peer.
    let (_, body) = scrape(server.metrics_addr().unwrap());
    let sm = parse(&body);
    assert_eq!(
        counter(&sm, "stunfwd_received_bytes_total", None),
        server.stats().totals.bytes_received as f64
    );

    // Anything but /metrics is 404; stopping the engine stops the endpoint.
    let mut s = TcpStream::connect(client_metrics).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    client.stop(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(client_metrics).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        TcpStream::connect(client_metrics).is_err(),
        "endpoint closed"
    );
}

#[test]
fn a_metrics_port_in_use_fails_start_and_names_the_port() {
    let rv = Rendezvous::start();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = config_for(
        &rv.url,
        rv.stun,
        "server",
        &room(),
        "s3cret",
        &[],
        serde_json::json!({"metricsAddr": addr.to_string()}),
    );
    let err = Engine::start(config).unwrap_err();
    assert!(
        matches!(err, Error::AddrInUse { addr: a, .. } if a == addr),
        "{err:?}"
    );
    assert!(err.to_string().contains(&addr.port().to_string()), "{err}");
}

#[test]
fn without_metrics_addr_nothing_is_served() {
    let rv = Rendezvous::start();
    let engine = Engine::start(rv.config("server", &room(), "s3cret", &[])).unwrap();
    assert_eq!(engine.metrics_addr(), None);
}
