//! What the bindings build on: an engine that keeps its final figures after `stop`,
//! waits another thread can cancel, stops that wait for each other or run in the
//! background, and the blocking rendezvous server.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use stunfwd_core::{BlockingSignalServer, Engine, Error, State, WaitCancel};

const LIMIT: Duration = Duration::from_secs(2);

/// An engine alone in its room: it waits for a peer that never comes.
fn lonely(rv: &Rendezvous, mappings: &[String]) -> Engine {
    Engine::start(rv.config("client", &room(), "k", mappings)).unwrap()
}

#[test]
fn after_stop_the_final_figures_remain_and_everything_is_released() {
    let rv = Rendezvous::start();
    let engine = lonely(&rv, &["tcp:0:22".into()]);
    let id = engine.mappings()[0].id;
    let tunnel = engine.local_addr();
    std::thread::sleep(Duration::from_millis(300));
    let before = engine.stats();
    assert!(before.signaling_requests > 0);
    assert!(!engine.is_stopped());

    engine.stop(LIMIT);
    assert!(engine.is_stopped());
    drop(std::net::UdpSocket::bind(tunnel).expect("tunnel port free after stop"));
    let after = engine.stats();
    assert_eq!(after.state, State::Stopped);
    assert_eq!(after.room, before.room);
    assert_eq!(after.local_addr, tunnel);
    assert!(after.signaling_requests >= before.signaling_requests);
    assert_eq!(
        after.mappings.len(),
        1,
        "the final stats keep each mapping's traffic"
    );
    assert_eq!(engine.stats(), after, "the final figures do not change");
    assert_eq!(engine.state(), State::Stopped);
    assert_eq!(engine.failure(), None);
    assert_eq!(engine.local_addr(), tunnel);
    // Its mappings are closed: none is listed, and every call that needs the running
    // engine says it is stopped.
    assert!(engine.mappings().is_empty());
    assert_eq!(engine.mapping_addr(id), None);
    assert_eq!(engine.remove_mapping(id), Err(Error::Stopped));
    assert_eq!(engine.add_mapping_str("tcp:0:22"), Err(Error::Stopped));
    assert_eq!(engine.wait_connected(LIMIT), Err(Error::Stopped));
    assert!(engine.stats_json().contains("\"state\":\"stopped\""));
    engine.subscribe(|_| {});
}

#[test]
fn a_wait_ends_when_its_token_is_cancelled() {
    let rv = Rendezvous::start();
    let engine = Arc::new(lonely(&rv, &[]));
    let cancel = WaitCancel::new();
    let (waiting, theirs) = (engine.clone(), cancel.clone());
    let t = std::thread::spawn(move || {
        let started = Instant::now();
        (
            waiting.wait_connected_with(Duration::from_secs(30), &theirs),
            started.elapsed(),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    let cancelled = Instant::now();
    cancel.cancel();
    let (result, _) = t.join().unwrap();
    assert_eq!(result, Err(Error::Cancelled));
    assert!(cancelled.elapsed() < Duration::from_millis(500));
    assert_eq!(Error::Cancelled.code(), "ERR_CANCELLED");
    // The token stays cancelled; the engine runs on, and other waits are not affected.
    assert_eq!(
        engine.wait_connected_with(LIMIT, &cancel),
        Err(Error::Cancelled)
    );
    assert!(matches!(
        engine.wait_connected(Duration::from_millis(50)),
        Err(Error::Timeout(_))
    ));
    assert_eq!(engine.state(), State::Signaling);
    engine.stop(LIMIT);
}

#[test]
fn cancel_waits_ends_every_wait_on_the_engine() {
    let rv = Rendezvous::start();
    let engine = Arc::new(lonely(&rv, &[]));
    let waits: Vec<_> = (0..3)
        .map(|_| {
            let engine = engine.clone();
            std::thread::spawn(move || engine.wait_connected(Duration::from_secs(30)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    engine.cancel_waits();
    for w in waits {
        assert_eq!(w.join().unwrap(), Err(Error::Cancelled));
    }
    // Later waits are not cancelled.
    assert!(matches!(
        engine.wait_connected(Duration::from_millis(50)),
        Err(Error::Timeout(_))
    ));
    engine.stop(LIMIT);
}

#[test]
fn a_polled_token_is_asked_while_the_wait_blocks() {
    let rv = Rendezvous::start();
    let engine = lonely(&rv, &[]);
    let started = Instant::now();
    let token = WaitCancel::polling(Duration::from_millis(20), move || {
        started.elapsed() > Duration::from_millis(150)
    });
    assert_eq!(
        engine.wait_connected_with(Duration::from_secs(30), &token),
        Err(Error::Cancelled)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // A wait that runs out of time names its whole timeout.
    let quiet = WaitCancel::polling(Duration::from_millis(10), || false);
    let Err(Error::Timeout(message)) =
        engine.wait_connected_with(Duration::from_millis(300), &quiet)
    else {
        panic!("expected a timeout");
    };
    assert!(message.contains("after 300ms"), "{message}");
    engine.stop(LIMIT);
}

#[test]
fn a_second_stop_waits_for_the_first_and_a_blocked_wait_is_woken() {
    let rv = Rendezvous::start();
    let engine = Arc::new(lonely(&rv, &[]));
    let tunnel = engine.local_addr();
    let waiting = engine.clone();
    let wait = std::thread::spawn(move || waiting.wait_connected(Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(200));
    let stoppers: Vec<_> = (0..2)
        .map(|_| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                engine.stop(LIMIT);
                // Whichever returns first, the engine is stopped.
                engine.is_stopped()
            })
        })
        .collect();
    for s in stoppers {
        assert!(s.join().unwrap());
    }
    assert_eq!(wait.join().unwrap(), Err(Error::Stopped));
    drop(std::net::UdpSocket::bind(tunnel).expect("tunnel port free"));
}

#[test]
fn stop_in_background_returns_at_once_and_then_reports() {
    let rv = Rendezvous::start();
    let engine = Arc::new(lonely(&rv, &["tcp:0:22".into()]));
    let listen = engine.mappings()[0].listen;
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let t = Instant::now();
    engine.stop_in_background(LIMIT, move || {
        flag.store(true, Ordering::SeqCst);
        let _ = tx.send(());
    });
    assert!(t.elapsed() < Duration::from_millis(100));
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert!(engine.is_stopped());
    std::net::TcpListener::bind(listen).expect("mapping port free");
}

#[test]
fn engines_meet_on_a_blocking_signal_server() {
    let rv = BlockingSignalServer::start_on("127.0.0.1:0", Some("127.0.0.1:0")).unwrap();
    let stun = rv.stun_addr().unwrap();
    let name = room();
    let cfg = |mode| config_for(rv.url(), stun, mode, &name, "k", &[], serde_json::json!({}));
    let server = Engine::start(cfg("server")).unwrap();
    let client = Engine::start(cfg("client")).unwrap();
    assert!(client
        .wait_connected(Duration::from_secs(20))
        .unwrap()
        .is_connected());
    assert!(rv.requests() > 0);
    client.stop(LIMIT);
    server.stop(LIMIT);
    rv.stop(Duration::from_millis(200));
    assert!(rv.is_stopped());
}
