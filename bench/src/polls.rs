//! The rendezvous under 10,000 concurrently waiting long-polls (#19): its RSS while
//! they wait, the p99 of the POSTs that wake them, and whether every poll got its 200.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{pct, post_rooms_timed, start_unlimited_signal, step, Better, Res, Table};

const POLLS: usize = 10_000;

/// The value of `stunfwd_signal_waiting_polls` on the server at `port`.
fn waiting_polls(port: u16) -> Res<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("stunfwd_signal_waiting_polls "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no stunfwd_signal_waiting_polls in /metrics".to_owned())
}

/// One long-poll for room `poll-i`: the status code of its answer.
async fn long_poll(port: u16, i: usize) -> Res<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!(
        "GET /?room=poll-{i}&role=server&wait=30 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(32)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))
}

/// The long-poll rows.
pub(crate) fn poll_rows(table: &mut Table) {
    step("rendezvous: 10,000 waiting long-polls");
    let measured = (|| -> Res<(f64, f64, f64, usize, String)> {
        let sig = start_unlimited_signal()?;
        std::thread::sleep(Duration::from_millis(300));
        let before = sig.proc.rss_kb() as f64 * 1024.0;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let port = sig.port;
        let polls: Vec<_> = (0..POLLS)
            .map(|i| rt.spawn(async move { long_poll(port, i).await }))
            .collect();
        // All waiting, as the server counts them (at most 30 s).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut waiting = 0.0;
        while Instant::now() < deadline {
            waiting = waiting_polls(port).unwrap_or(0.0);
            if waiting >= POLLS as f64 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let rss = sig.proc.rss_kb() as f64 * 1024.0;
        let mut times = post_rooms_timed(port, POLLS, "poll")?;
        let (mut ok, mut first_err) = (0, String::new());
        for p in polls {
            match rt.block_on(p).map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(200) => ok += 1,
                Ok(code) if first_err.is_empty() => first_err = format!("a poll got {code}"),
                Err(e) if first_err.is_empty() => first_err = e,
                _ => {}
            }
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "[bench] {waiting} polls waiting at once; {ok} of {POLLS} answered 200{}",
            if first_err.is_empty() {
                String::new()
            } else {
                format!(" (first error: {first_err})")
            }
        );
        Ok((rss, before, pct(&times, 0.99), ok, first_err))
    })();
    let part = |f: fn(&(f64, f64, f64, usize, String)) -> f64| -> Res<f64> {
        measured.as_ref().map(f).map_err(Clone::clone)
    };
    table.row(
        "rendezvous RSS with 10,000 waiting long-polls",
        &part(|m| m.0),
        "MB",
        "same server, no polls",
        &part(|m| m.1),
        None,
    );
    table.row(
        "rendezvous POST p99 waking 10,000 polls, one each",
        &part(|m| m.2),
        "µs",
        "-",
        &Err(String::new()),
        None,
    );
    table.row(
        "long-polls answered 200 (no error)",
        &part(|m| m.3 as f64),
        "polls",
        "-",
        &Err(String::new()),
        Some(("10000 of 10000", POLLS as f64, Better::Higher)),
    );
}
