//! The server's stream limit grows with its client's streams (#19): it starts at 128
//! (quinn keeps a table entry per allowed stream, so a large fixed limit cost each
//! client ~700 KB idle) and doubles as streams fill it, up to 4,096 + the UDP flow cap.
//! (What the small start saves is printed by `bench/scale`, not asserted here.)
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use stunfwd_core::Proto;

/// Three times the first limit, opened at once and all held open: every one of them
/// echoes, before and after the others opened. Without the raise, connections past the
/// 128th would wait for a stream until `tunnelWait` and fail.
#[test]
fn connections_past_the_first_stream_limit_all_work_while_held_open() {
    const N: usize = 384;
    let rv = Rendezvous::start();
    let echo = tcp_echo();
    let (_server, client) = pair(&rv, &[format!("tcp:0:{}", echo.port())]);
    let local = mapping_addr(&client, Proto::Tcp);
    let all_open = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let all_open = all_open.clone();
            std::thread::spawn(move || {
                // No panic before the barrier: one would leave the others waiting.
                let mut s = TcpStream::connect(local).ok();
                if let Some(s) = &s {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                }
                let mut round = |tag: &str| -> bool {
                    let Some(s) = s.as_mut() else {
                        return false;
                    };
                    let data = format!("{tag} {i:>4}").into_bytes();
                    let mut got = vec![0u8; data.len()];
                    s.write_all(&data).is_ok() && s.read_exact(&mut got).is_ok() && got == data
                };
                let first = round("first");
                // Every connection is open (and has echoed, or failed) before any
                // echoes again: N streams are open at once.
                all_open.wait();
                let second = round("again");
                first && second
            })
        })
        .collect();
    let ok = count_true(handles);
    assert_eq!(ok, N, "{ok} of {N} connections echoed twice");
    assert_eq!(
        client.stats().mappings[0].traffic.connections_opened,
        N as u64
    );
}
