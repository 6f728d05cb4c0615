//! UDP flow caps (#19): a mapping carries at most `maxUdpFlowsPerMapping` flows on the
//! client, a client at most `maxUdpFlowsPerClient` on the server; flows beyond are
//! refused, counted and logged, and the flows already open carry on.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use stunfwd_core::{Engine, Proto};

/// A client/server pair with `perf` as the `performance` object of `client_perf` and
/// `server_perf`; the client maps `udp:0:ECHO`. Logs of both go to the returned buffer.
fn capped_pair(
    rv: &Rendezvous,
    echo: SocketAddr,
    client_perf: serde_json::Value,
    server_perf: serde_json::Value,
) -> (Engine, Engine, SocketAddr, LogBuffer) {
    let room = room();
    let logs = logs();
    let (server, client) = {
        let server = Engine::start(config_for(
            &rv.url,
            rv.stun,
            "server",
            &room,
            "k",
            &[],
            serde_json::json!({ "performance": server_perf }),
        ))
        .unwrap();
        let client = Engine::start(config_for(
            &rv.url,
            rv.stun,
            "client",
            &room,
            "k",
            &[format!("udp:0:{}", echo.port())],
            serde_json::json!({ "performance": client_perf }),
        ))
        .unwrap();
        (server, client)
    };
    client.wait_connected(Duration::from_secs(20)).unwrap();
    server.wait_connected(Duration::from_secs(20)).unwrap();
    let local = client
        .mappings()
        .into_iter()
        .find(|m| m.mapping.proto == Proto::Udp)
        .map(|m| m.listen)
        .unwrap();
    (server, client, local, logs)
}

/// Everything the engines of this test binary log (one global subscriber: the engines
/// log from their own threads). Tests tell their lines apart by the echo's port.
fn logs() -> LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
        logs
    })
    .clone()
}

/// True when a datagram from `s` to `local` comes back from the echo (5 tries: UDP may
/// drop under load).
fn echoes(s: &UdpSocket, local: SocketAddr) -> bool {
    echoes_within(s, local, 5)
}

/// [`echoes`] with `tries` tries of 700 ms each.
fn echoes_within(s: &UdpSocket, local: SocketAddr, tries: u8) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 64];
    (0..tries).any(|i| {
        s.send_to(&[b'e', i], local).unwrap();
        matches!(s.recv_from(&mut buf), Ok((2, _)) if buf[..2] == [b'e', i])
    })
}

fn sockets(n: usize) -> Vec<UdpSocket> {
    (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect()
}

/// Waits up to 5 s for `f` to hold.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn flows_beyond_the_mappings_cap_are_refused_counted_and_logged() {
    let rv = Rendezvous::start();
    let echo = udp_echo();
    let (_server, client, local, logs) = capped_pair(
        &rv,
        echo,
        serde_json::json!({"maxUdpFlowsPerMapping": 3}),
        serde_json::json!({}),
    );
    let socks = sockets(5);
    for s in &socks[..3] {
        assert!(echoes(s, local), "a flow within the cap is carried");
    }
    for s in &socks[3..] {
        assert!(!echoes(s, local), "a fourth and fifth flow are refused");
    }
    // The three open flows are not disturbed by the refusals.
    for s in &socks[..3] {
        assert!(echoes(s, local), "an open flow keeps working");
    }
    let t = client.stats().mappings[0].traffic.clone();
    // Each refused source counts once (not each of its 5 datagrams).
    assert_eq!(t.flows_refused, 2, "{t:?}");
    assert_eq!(client.stats().totals.flows_refused, 2);
    assert_eq!(t.connections_active, 3, "{t:?}");
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("udp flow refused") && l.contains(&echo.to_string()))
        .collect();
    // One line for the burst (then at most one per 10 s; the refusals take about 7 s,
    // so a slow machine may see a second), naming the setting.
    assert!((1..=2).contains(&lines.len()), "{text}");
    assert!(
        lines[0].contains("performance.maxUdpFlowsPerMapping") && lines[0].contains("3 flows"),
        "{}",
        lines[0]
    );
    let metrics = stunfwd_core::metrics::render(&client.stats());
    let sample = metrics
        .lines()
        .find(|l| l.starts_with("stunfwd_mapping_udp_flows_refused_total{"))
        .unwrap_or_else(|| panic!("no refused-flows series in {metrics}"));
    assert!(sample.ends_with(" 2"), "{sample}");
}

#[test]
fn flows_beyond_the_servers_cap_per_client_are_refused_and_a_closed_flow_frees_a_place() {
    let rv = Rendezvous::start();
    let echo = udp_echo();
    let (server, client, local, logs) = capped_pair(
        &rv,
        echo,
        serde_json::json!({"udpFlowTimeout": "4s"}),
        serde_json::json!({"maxUdpFlowsPerClient": 2, "udpFlowTimeout": "4s"}),
    );
    let socks = sockets(3);
    assert!(echoes(&socks[0], local));
    assert!(echoes(&socks[1], local));
    // Two tries (1.4 s), well within the 4 s the first two flows stay open idle.
    assert!(
        !echoes_within(&socks[2], local, 2),
        "a third flow is refused by the server"
    );
    assert!(
        eventually(|| server.stats().totals.flows_refused >= 1),
        "{:?}",
        server.stats().totals
    );
    // The client hears why: the refusal is counted on its side too.
    assert!(eventually(|| client.stats().totals.flows_refused >= 1));
    assert!(eventually(|| logs.text().lines().any(|l| {
        l.contains("performance.maxUdpFlowsPerClient") && l.contains(&echo.to_string())
    })));
    // The first two flows still work.
    assert!(echoes(&socks[0], local));
    // Once the second flow has been idle for udpFlowTimeout, the third gets its place.
    let idle_from = Instant::now();
    while idle_from.elapsed() < Duration::from_millis(5000) {
        assert!(echoes(&socks[0], local));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        eventually(|| server.stats().totals.connections_active == 1),
        "{:?}",
        server.stats().totals
    );
    assert!(echoes(&socks[2], local), "a closed flow frees a place");
}

#[test]
fn a_cap_out_of_range_is_refused_with_the_valid_range() {
    let rv = Rendezvous::start();
    for bad in [serde_json::json!(0), serde_json::json!(100_000)] {
        let v = serde_json::json!({
            "mode": "client", "room": "r", "secret": "k", "signalUrl": rv.url,
            "performance": {"maxUdpFlowsPerMapping": bad},
        });
        let err = stunfwd_core::Config::from_value(v).unwrap_err().to_string();
        assert!(
            err.contains("performance.maxUdpFlowsPerMapping") && err.contains("65536"),
            "{err}"
        );
    }
}
