//! Log lines carry the room, the peer and the mapping as tracing fields (issue #8): a
//! real engine pair on loopback logs through a JSON subscriber, and the lines written
//! while a connection is forwarded are parsed and checked for those fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{connect, pair, tcp_echo, udp_echo, Rendezvous};
use serde_json::Value;

/// Collects everything the subscriber writes.
type Buffer = common::LogBuffer;

/// The JSON lines written so far.
fn json_lines(buf: &Buffer) -> Vec<Value> {
    buf.text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The line whose message is `msg`, waiting up to 5 s for it to be written.
fn find(buf: &Buffer, msg: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = json_lines(buf)
            .into_iter()
            .find(|l| l["fields"]["message"] == msg)
        {
            return l;
        }
        assert!(Instant::now() < deadline, "no log line {msg:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `field` in any of the line's spans.
fn span_field(line: &Value, field: &str) -> Option<String> {
    line["spans"]
        .as_array()?
        .iter()
        .find_map(|s| s.get(field))
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        })
}

/// `line` sits in spans naming this room, peer and mapping.
fn assert_fields(line: &Value, room: &str, peer: &str, mapping: &str) {
    for (field, want) in [("room", room), ("peer", peer), ("mapping", mapping)] {
        assert_eq!(
            span_field(line, field).as_deref(),
            Some(want),
            "{field}: {line}"
        );
    }
}

#[test]
fn log_lines_carry_room_peer_and_mapping() {
    let buf = Buffer::default();
    let writer = buf.clone();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter: tracing_subscriber::filter::Targets = "stunfwd_core=debug".parse().unwrap();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish()
        .with(filter)
        .init();

    let rv = Rendezvous::start();
    let echo = tcp_echo();
    let uecho = udp_echo();
    let (server, client) = pair(
        &rv,
        &[
            format!("tcp:127.0.0.1:0:{echo}"),
            format!("udp:127.0.0.1:0:{uecho}"),
        ],
    );
    let room = client.stats().room.clone();
    let (tcp_map, udp_map) = (&client.mappings()[0], &client.mappings()[1]);
    let (tcp_addr, udp_addr) = (tcp_map.listen, udp_map.listen);
    let (tcp_spec, udp_spec) = (tcp_map.mapping.to_string(), udp_map.mapping.to_string());

    let mut s = connect(tcp_addr);
    s.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");

    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = None;
    for _ in 0..10 {
        u.send_to(b"hello", udp_addr).unwrap();
        let mut b = [0u8; 16];
        if let Ok((n, _)) = u.recv_from(&mut b) {
            got = Some(b[..n].to_vec());
            break;
        }
    }
    assert_eq!(got.as_deref(), Some(&b"hello"[..]), "no UDP echo");

    // Every line of the engines is inside `engine{room}`.
    let lines = json_lines(&buf);
    let engine_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("stunfwd_core::engine"))
        })
        .collect();
    assert!(!engine_lines.is_empty(), "the engines logged nothing");
    for l in &engine_lines {
        assert_eq!(span_field(l, "room").as_deref(), Some(room.as_str()), "{l}");
    }

    // Client side: the forwarded connection names room, mapping and peer.
    let peer = client
        .stats()
        .peer_addr
        .expect("connected client knows its peer")
        .to_string();
    let fwd = find(&buf, "tcp connection forwarded");
    assert_fields(&fwd, &room, &peer, &tcp_spec);

    // Server side: the stream names room, the peer (the client) and what it reaches.
    let client_addr = server
        .stats()
        .peer_addr
        .expect("connected server knows its peer")
        .to_string();
    let srv = find(&buf, "connected to the target");
    assert_fields(&srv, &room, &client_addr, &format!("tcp:{echo}"));

    // A UDP flow: its lines sit in the mapping's span too.
    let flow = find(&buf, "udp flow opened");
    assert_fields(&flow, &room, &peer, &udp_spec);

    client.stop(Duration::from_secs(2));
    server.stop(Duration::from_secs(2));
    // `stop` runs on this thread, outside the engine's tasks: its lines name the room too.
    let stopped: Vec<Value> = json_lines(&buf)
        .into_iter()
        .filter(|l| l["fields"]["message"] == "state" && l["fields"]["state"] == "stopped")
        .collect();
    // One per engine, and one for the server's session of its client.
    assert_eq!(
        stopped.len(),
        3,
        "one 'stopped' line per engine and session"
    );
    for l in &stopped {
        assert_eq!(span_field(l, "room").as_deref(), Some(room.as_str()), "{l}");
    }
}
