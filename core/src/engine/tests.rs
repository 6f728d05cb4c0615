//! Unit tests of the engine's internals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::responder::stun_dispatch;
use super::setup::setup;
use crate::config::Config;
use crate::socket::StunDatagram;
use crate::status::State;
use crate::sync::lock;

/// Issue #14, finding 6: Data indications "from" the TURN server add a route (and
/// a channel bind) only for peers we gave a permission; forged ones for any other
/// peer change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn forged_data_indications_add_no_routes() {
    let config = Config::from_value(serde_json::json!({
        "mode": "client", "room": "r", "secret": "k",
        "signalUrl": "http://127.0.0.1:9/", "bind": "127.0.0.1:0",
    }))
    .expect("config");
    let (shared, _incoming) = setup(config, tracing::Span::none()).await.expect("setup");
    let turn_server: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let socket = shared.agent.socket().clone();
    socket.set_relay_server(Some(turn_server));
    let permitted: SocketAddr = "198.51.100.7:4000".parse().expect("addr");
    *lock(&shared.turn) = Some(Arc::new(crate::relay::TurnClient::for_test(
        shared.agent.clone(),
        turn_server,
        vec![permitted.ip()],
    )));
    let (tx, rx) = mpsc::channel(8);
    let dispatch = tokio::spawn(stun_dispatch(shared.clone(), rx));
    // A Data indication is a Send indication with another message type.
    let data_indication = |peer: SocketAddr| {
        let mut d = crate::relay::send_indication(peer, b"\x40 not stun");
        d[1] = 0x17;
        d
    };
    let forged: Vec<SocketAddr> = (0..100u16)
        .map(|i| SocketAddr::from(([203, 0, 113, 9], 5000 + i)))
        .collect();
    for peer in forged.iter().copied().chain([permitted]) {
        let d = StunDatagram {
            from: turn_server,
            data: data_indication(peer),
            relayed: false,
        };
        tx.send(d).await.expect("dispatch runs");
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
    shared.root.cancel();
    dispatch.abort();
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
