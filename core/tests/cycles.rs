//! 50 start/stop cycles leave no thread and no file descriptor behind. Alone in its
//! test binary so that no other test's threads are counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use stunfwd_core::Engine;

#[test]
fn fifty_start_stop_cycles_return_to_baseline() {
    let rv = Rendezvous::start();
    let echo = tcp_echo();
    let mapping = format!("tcp:0:{}", echo.port());
    // One warm-up pair so lazily created process-wide state exists before the baseline.
    let (s, c) = pair(&rv, std::slice::from_ref(&mapping));
    s.stop(Duration::from_secs(2));
    c.stop(Duration::from_secs(2));
    drop((s, c));
    std::thread::sleep(Duration::from_millis(200));
    let threads0 = thread_count();
    let fds0 = fd_count();
    let started = Instant::now();
    for i in 0..50 {
        let room = room();
        let server = Engine::start(rv.config("server", &room, "k", &[])).unwrap();
        let client =
            Engine::start(rv.config("client", &room, "k", std::slice::from_ref(&mapping))).unwrap();
        // Every tenth cycle goes all the way to connected; the others stop mid-way.
        if i % 10 == 0 {
            client.wait_connected(Duration::from_secs(20)).unwrap();
        }
        client.stop(Duration::from_secs(2));
        server.stop(Duration::from_secs(2));
    }
    // Threads that were told to exit may take a moment to be reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (thread_count() > threads0 || fd_count() > fds0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (threads1, fds1) = (thread_count(), fd_count());
    println!(
        "50 cycles in {:.1} s; threads {threads0} -> {threads1}, fds {fds0} -> {fds1}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(threads1, threads0, "threads back at baseline");
    assert_eq!(fds1, fds0, "file descriptors back at baseline");
}
