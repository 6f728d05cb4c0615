//! Offers an attacker on the rendezvous can make (issue #14, findings 1 and 3): a
//! rewritten offer, one replayed, one left stale, one reflected into the other role's
//! mailbox, one moved from another room, and one of the old version. Each is rejected,
//! counted and reported at a bounded rate, and none knocks the waiting peer out of its
//! wait; the genuine offer that follows connects. With a secret, the mailboxes are not
//! found by the room name, and every attempt has a new offer id.
#![allow(clippy::unwrap_used)]

mod common;
mod signal_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use signal_support::wait_until;
use stunfwd_core::signal::{unix_now, Offer, Role, RoomKey, SignalClient};
use stunfwd_core::{Engine, Event, State};

const SECRET: &str = "offers secret";

/// A rendezvous client of the room's mailbox as the peers name it (derived from the
/// room key: the attacker here knows the secret, or replays what it saw).
fn mailbox(rv: &Rendezvous, room: &str) -> SignalClient {
    let name = RoomKey::derive(room, Some(SECRET)).mailbox_name();
    SignalClient::new(&rv.url, &name, Duration::from_millis(50), Arc::default()).unwrap()
}

/// A rendezvous client of one client's own mailbox, where the server answers it.
fn own_mailbox(rv: &Rendezvous, room: &str, client: &Engine) -> SignalClient {
    let id = client.stats().client_id.unwrap();
    let name = RoomKey::derive(room, Some(SECRET)).client_mailbox(&id);
    SignalClient::new(&rv.url, &name, Duration::from_millis(50), Arc::default()).unwrap()
}

/// An authentic server offer for `room` whose only candidate never answers, made for
/// the client with id `client`.
fn offer_for(role: Role, ts: u64, client: &str) -> Offer {
    Offer {
        client: Some(client.to_owned()),
        ..offer(role, ts)
    }
}

/// An authentic server offer for `room` whose only candidate never answers.
fn offer(role: Role, ts: u64) -> Offer {
    Offer {
        role,
        id: Offer::new_id(),
        nonce: Offer::new_nonce(),
        ts,
        candidates: vec!["127.0.0.1:9".parse().unwrap()],
        host_count: 1,
        relay_count: 0,
        turn: false,
        fp: "ab".repeat(32),
        nat: "open".into(),
        predict: None,
        comb: None,
        client: None,
        refused: None,
    }
}

#[test]
fn forged_stale_reflected_and_foreign_offers_do_not_disturb_the_wait() {
    let rv = Rendezvous::start();
    let room = room();
    let key = RoomKey::derive(&room, Some(SECRET));
    let events = Arc::new(Mutex::new(Vec::new()));
    let states = Arc::new(Mutex::new(Vec::new()));
    let (ev, st) = (events.clone(), states.clone());
    let client =
        Engine::start_with_events(rv.config("client", &room, SECRET, &[]), move |e| match e {
            Event::PeerRejected { reason } => ev.lock().unwrap().push(reason.clone()),
            Event::State { state } => st.lock().unwrap().push(state.name()),
            _ => {}
        })
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || client.state()
        == State::Signaling));
    let mb = own_mailbox(&rv, &room, &client);
    let id = client.stats().client_id.unwrap();
    let now = unix_now();
    let window = stunfwd_core::signal::OFFER_WINDOW.as_secs();
    let v1 = r#"{"v":1,"id":"5f0c6c1e9a3b47d2a1e0f3c4b5d6e7f8","candidates":[],"host":0,"fp":"ab","nat":"x","mac":"00"}"#;
    let genuine = offer_for(Role::Server, now, &id);
    let mut forged: serde_json::Value = serde_json::from_str(&genuine.encode(&key, &room)).unwrap();
    forged["nat"] = "open\n1\n0".into();
    forged["relay"] = 0.into();
    let mut renamed: serde_json::Value =
        serde_json::from_str(&genuine.encode(&key, &room)).unwrap();
    renamed["client"] = "0".repeat(32).into();
    let bad: Vec<(&str, String)> = vec![
        ("MAC does not verify", forged.to_string()),
        // Another client's id put in: the MAC covers it.
        ("MAC does not verify", renamed.to_string()),
        (
            "stale",
            offer_for(Role::Server, now - window - 60, &id).encode(&key, &room),
        ),
        (
            "stale",
            offer_for(Role::Server, now + window + 60, &id).encode(&key, &room),
        ),
        (
            "client peer where a server peer",
            offer_for(Role::Client, now, &id).encode(&key, &room),
        ),
        (
            "MAC does not verify",
            offer_for(Role::Server, now, &id).encode(&key, "another-room"),
        ),
        // A genuine offer the server made for another client, moved here.
        (
            "where one for client",
            offer_for(Role::Server, now, &"1".repeat(32)).encode(&key, &room),
        ),
        // The server's announcement, which names no client, moved here.
        (
            "offer for no client where",
            offer(Role::Server, now).encode(&key, &room),
        ),
        ("older stunfwd", v1.to_owned()),
    ];
    let mut reasons = Vec::new();
    for (expected, data) in &bad {
        let before = client.stats().offers_rejected;
        rv.rt.block_on(mb.post(Role::Server, data)).unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || client.stats().offers_rejected
                > before),
            "not rejected: {expected}"
        );
        let last = client.stats().last_error.unwrap_or_default();
        assert!(last.contains(expected), "{expected}: {last}");
        reasons.push(last.clone());
        assert_eq!(client.state(), State::Signaling, "after {expected}");
        assert!(!client.state().is_connected());
    }
    println!("rejection reasons: {reasons:#?}");
    // Every kind was rejected for the right reason (the first report of each burst
    // names it; later ones within 5 s are counted, not repeated).
    assert_eq!(client.stats().offers_rejected, bad.len() as u64);
    let reported = events.lock().unwrap().clone();
    assert!(
        !reported.is_empty() && reported.len() < bad.len(),
        "rejections are reported at a bounded rate: {reported:?}"
    );
    assert!(reported[0].contains("MAC does not verify"), "{reported:?}");
    assert!(
        !states.lock().unwrap().contains(&"reconnecting"),
        "{:?}",
        states.lock().unwrap()
    );
    // After the burst, the next rejection is reported again, with the count between.
    std::thread::sleep(Duration::from_secs(5));
    rv.rt
        .block_on(mb.post(
            Role::Server,
            &offer_for(Role::Client, now, &id).encode(&key, &room),
        ))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || events
        .lock()
        .unwrap()
        .len()
        > reported.len()));
    let last = events.lock().unwrap().last().cloned().unwrap();
    assert!(
        last.contains("client peer where a server peer") && last.contains("more rejected"),
        "{last}"
    );

    // The genuine server still connects.
    let server = Engine::start(rv.config("server", &room, SECRET, &[])).unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    server.wait_connected(Duration::from_secs(5)).unwrap();
}

#[test]
fn replayed_offers_are_refused_and_every_attempt_has_a_new_id() {
    let rv = Rendezvous::start();
    let room = room();
    let key = RoomKey::derive(&room, Some(SECRET));
    let client = Engine::start(rv.config("client", &room, SECRET, &[])).unwrap();
    let mb = own_mailbox(&rv, &room, &client);
    let lobby = mailbox(&rv, &room);

    // With a secret the rendezvous has nothing under the room name.
    let by_name =
        SignalClient::new(&rv.url, &room, Duration::from_millis(50), Arc::default()).unwrap();
    assert!(wait_until(Duration::from_secs(5), || rv
        .rt
        .block_on(lobby.get(Role::Client, None, None))
        .unwrap()
        .is_some()));
    assert_eq!(
        rv.rt
            .block_on(by_name.get(Role::Client, None, None))
            .unwrap(),
        None,
        "the room name alone finds nothing"
    );

    let client_offer = |mb: &SignalClient| {
        let (data, _) = rv
            .rt
            .block_on(mb.get(Role::Client, None, None))
            .unwrap()
            .unwrap();
        Offer::decode(&data, &key, &room).unwrap()
    };
    let first_server = Engine::start(rv.config("server", &room, SECRET, &[])).unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    let (replay, _) = rv
        .rt
        .block_on(mb.get(Role::Server, None, None))
        .unwrap()
        .unwrap();
    let first_id = client_offer(&mb).id;
    first_server.stop(Duration::from_secs(2));
    drop(first_server);

    let second_server = Engine::start(rv.config("server", &room, SECRET, &[])).unwrap();
    client.wait_connected(Duration::from_secs(30)).unwrap();
    let second_id = client_offer(&mb).id;
    assert_ne!(first_id, second_id, "a new offer id for the new attempt");
    second_server.stop(Duration::from_secs(2));
    drop(second_server);

    // The first server's offer, still inside the time window, is replayed.
    assert!(wait_until(Duration::from_secs(10), || !client
        .state()
        .is_connected()));
    let before = client.stats().offers_rejected;
    rv.rt.block_on(mb.post(Role::Server, &replay)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || client.stats().offers_rejected
            > before),
        "the replay was not rejected; state {}",
        client.state()
    );
    assert!(
        client
            .stats()
            .last_error
            .unwrap_or_default()
            .contains("replayed"),
        "{:?}",
        client.stats().last_error
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!client.state().is_connected());
    assert_eq!(client.state(), State::Signaling);
}
