//! Unit tests of the engine's internals.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::setup::setup;
use crate::config::Config;
use crate::status::State;

/// Issue #14, finding 6: Data indications from the TURN server add a route (and a
/// channel bind) only for peers we gave a permission; forged ones for any other peer
/// change nothing. They arrive as datagrams on the engine's socket, which unwraps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn forged_data_indications_add_no_routes() {
    let config = Config::from_value(serde_json::json!({
        "mode": "client", "room": "r", "secret": "k",
        "signalUrl": "http://127.0.0.1:9/", "bind": "127.0.0.1:0",
    }))
    .expect("config");
    let (shared, _incoming) = setup(config, tracing::Span::none(), super::setup::Part::Engine)
        .await
        .expect("setup");
    let turn_server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let socket = shared.agent.socket().clone();
    socket.set_relay_server(Some(turn_server.local_addr().expect("addr")));
    let permitted: SocketAddr = "198.51.100.7:4000".parse().expect("addr");
    // What `TurnClient::permit` leaves after the server granted the permission.
    socket.set_permitted(&[permitted.ip()]);
    // A Data indication is a Send indication with another message type.
    let data_indication = |peer: SocketAddr| {
        let mut d = crate::turn::wire::send_indication(peer, b"\x40 not stun");
        d[1] = 0x17;
        d
    };
    let forged: Vec<SocketAddr> = (0..100u16)
        .map(|i| SocketAddr::from(([203, 0, 113, 9], 5000 + i)))
        .collect();
    for peer in forged.iter().copied().chain([permitted]) {
        turn_server
            .send_to(&data_indication(peer), shared.local_addr)
            .expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !socket.is_via_relay(permitted) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        socket.is_via_relay(permitted),
        "the permitted peer is relayed"
    );
    for peer in forged {
        assert!(
            !socket.is_via_relay(peer),
            "{peer} was added by a forged indication"
        );
    }
    assert_eq!(
        socket.take_new_relayed_peers(),
        vec![permitted],
        "only the permitted peer waits for a channel"
    );
    shared.root.cancel();
}

#[test]
fn state_display_names_reason() {
    let s = State::Reconnecting {
        attempt: 2,
        reason: "x failed".into(),
    };
    assert_eq!(s.to_string(), "reconnecting (attempt 2: x failed)");
    assert!(!s.is_connected());
    assert!(State::Stopped.is_final());
}

/// Review finding (#15): a check from a peer offer we moved on from (old, or recorded
/// and replayed) must not make us start over; we keep our offer id when we start over,
/// so without this one recorded check could restart us again and again.
#[test]
fn peer_offers_left_behind_are_remembered_and_bounded() {
    let mut peer = super::shared::PeerInfo::default();
    peer.set_offer_id(Some("a".into()));
    peer.set_offer_id(None);
    peer.set_offer_id(Some("b".into()));
    assert!(peer.left_behind("a"), "a was moved on from");
    assert!(!peer.left_behind("b"), "b is in use");
    assert_eq!(peer.offer_id(), Some("b"));
    // Coming back to an id forgets that it was left behind.
    peer.set_offer_id(Some("a".into()));
    assert!(!peer.left_behind("a"));
    assert!(peer.left_behind("b"));
    for i in 0..100 {
        peer.set_offer_id(Some(format!("x{i}")));
    }
    assert!(peer.left_behind("x98"));
    assert!(!peer.left_behind("a"), "only the most recent ones are kept");
}
