//! Stopped engines whose handles are kept (to read their final stats, as the bindings
//! do until the garbage collector runs) hold no thread and no file descriptor. Alone in
//! its test binary so that no other test's descriptors are counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use stunfwd_core::State;

#[test]
fn stopped_engines_hold_nothing_until_dropped() {
    let rv = Rendezvous::start();
    // One warm-up pair so lazily created process-wide state exists before the baseline.
    let (s, c) = pair(&rv, &["tcp:0:9".into()]);
    s.stop(Duration::from_secs(2));
    c.stop(Duration::from_secs(2));
    drop((s, c));
    std::thread::sleep(Duration::from_millis(200));
    let threads0 = thread_count();
    let fds0 = fd_count();
    let mut kept = Vec::new();
    for _ in 0..10 {
        let (server, client) = pair(&rv, &["tcp:0:9".into()]);
        client.stop(Duration::from_secs(2));
        server.stop(Duration::from_secs(2));
        kept.push((server, client));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while (thread_count() > threads0 || fd_count() > fds0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(thread_count(), threads0, "threads back at baseline");
    assert_eq!(fd_count(), fds0, "file descriptors back at baseline");
    for (server, client) in &kept {
        assert_eq!(client.stats().state, State::Stopped);
        assert_eq!(server.state(), State::Stopped);
    }
}
