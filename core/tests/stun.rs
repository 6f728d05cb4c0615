//! STUN discovery on the engine's one socket: several servers asked in parallel,
//! retransmission when a server drops requests, and the NAT verdict from comparing them.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stunfwd_core::stun::message::{self, Parsed};
use stunfwd_core::Engine;

/// A STUN server that ignores the first `drop_first` requests of each transaction
/// and then answers; `seen` counts the copies of the first transaction it saw (the
/// engine's own discovery; its background NAT detection asks later, from another
/// socket). `lie_port` answers with a different
/// port (as a second server behind a symmetric NAT would see us).
fn lossy_stun(drop_first: u64, lie_port: bool) -> (SocketAddr, Arc<AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let mut per_tid = std::collections::HashMap::new();
        let mut first = None;
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if let Some(Parsed::Request { tid, .. }) = message::parse(&buf[..n]) {
                if *first.get_or_insert(tid) == tid {
                    s.fetch_add(1, Ordering::Relaxed);
                }
                let count = per_tid.entry(tid).or_insert(0u64);
                *count += 1;
                if *count <= drop_first {
                    continue;
                }
                let mapped = if lie_port {
                    SocketAddr::new(from.ip(), from.port().wrapping_add(1))
                } else {
                    from
                };
                let _ = socket.send_to(&message::binding_success(tid, mapped, None), from);
            }
        }
    });
    (addr, seen)
}

fn engine_with_stun(rv: &Rendezvous, servers: &[SocketAddr]) -> Engine {
    let cfg = serde_json::json!({
        "mode": "client",
        "room": room(),
        "signalUrl": rv.url,
        "stunServers": servers.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "bind": "127.0.0.1:0",
    });
    Engine::start(stunfwd_core::Config::from_value(cfg).unwrap()).unwrap()
}

fn wait_for_discovery(engine: &Engine) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.stats().stun_discoveries == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(engine.stats().stun_discoveries, 1);
}

#[test]
fn retransmits_until_a_lossy_server_answers() {
    let rv = Rendezvous::start();
    let (lossy, seen) = lossy_stun(2, false);
    let engine = engine_with_stun(&rv, &[lossy]);
    wait_for_discovery(&engine);
    let stats = engine.stats();
    // The lossy server answered only the third copy of the request.
    assert_eq!(seen.load(Ordering::Relaxed), 3);
    assert_eq!(stats.public_addr, Some(engine.local_addr()));
    // It saw us at our own address: no NAT.
    assert_eq!(stats.nat_type.as_str(), "open");
}

#[test]
fn servers_that_disagree_on_the_port_reveal_a_symmetric_nat() {
    let rv = Rendezvous::start();
    let (liar, _) = lossy_stun(0, true);
    let engine = engine_with_stun(&rv, &[rv.stun, liar]);
    wait_for_discovery(&engine);
    assert_eq!(engine.stats().nat_type.as_str(), "symmetric");
}

#[test]
fn servers_are_asked_in_parallel_and_a_dead_one_does_not_stall_discovery() {
    let rv = Rendezvous::start();
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap(); // never answers
    let t = std::time::Instant::now();
    let engine = engine_with_stun(&rv, &[dead.local_addr().unwrap(), rv.stun]);
    wait_for_discovery(&engine);
    // The live server's answer is used after a short grace, not after the dead one's
    // full retransmission schedule (about 6 s).
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let stats = engine.stats();
    assert_eq!(stats.public_addr, Some(engine.local_addr()));
    // One server of two answered: the mapping behaviour could not be compared.
    assert_eq!(stats.nat_type.as_str(), "open");
}
