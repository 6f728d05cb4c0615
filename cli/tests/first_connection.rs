//! The first connection after start, made the way a user migrating from the Go tool
//! makes it (issue #13): `stunfwd run` processes with the Go tool's config spellings
//! (`roomId`, `signalingUrl`, `stunServer`), meeting through
//!
//! - the Go tool's basic PHP mailbox and its enhanced one (`core/tests/php/`, under
//!   `php -S`; no long-poll), and
//! - `stunfwd signal` (long-poll),
//!
//! started server first (3 s ahead), client first (2 s ahead) and both at once. As soon
//! as the client prints that its mappings listen, a TCP connection sends 1 MiB and a
//! UDP socket sends 8 datagrams, both before the tunnel is up; every byte and every
//! datagram must come back, the client's state stream must show `connected` once and
//! never `reconnecting`, and nothing may be counted as a tunnel-wait timeout. Prints
//! the time from the listener being ready to the first echoed byte, per variant.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[path = "../../core/tests/signal_support/mod.rs"]
mod signal_support;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::Proc;

/// Runs per mailbox variant (the orders take turns). The variants run side by side,
/// each its runs one after another.
const RUNS: usize = 20;
const TCP_BYTES: usize = 1 << 20;
const DATAGRAMS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    ServerFirst,
    ClientFirst,
    Together,
}

impl Order {
    fn of(run: usize) -> Order {
        [Order::ServerFirst, Order::ClientFirst, Order::Together][run % 3]
    }
}

/// What one run measured.
struct Outcome {
    order: Order,
    /// Listener ready (the client printed its mappings) → first echoed TCP byte, and
    /// the later of the two peers started → first echoed byte.
    first_byte: (Duration, Duration),
}

struct Services {
    tcp_echo: SocketAddr,
    udp_echo: SocketAddr,
    stun: String,
    dir: PathBuf,
}

fn write_go_config(
    dir: &Path,
    name: &str,
    mode: &str,
    room: &str,
    url: &str,
    services: &Services,
) -> String {
    let mut v = serde_json::json!({
        "mode": mode,
        "roomId": room,
        "signalingUrl": url,
        "stunServer": services.stun,
        "secret": "first connection secret",
        // Loopback only: host candidates of other interfaces are never probed here.
        "bind": "127.0.0.1:0",
    });
    if mode == "client" {
        v["mappings"] = serde_json::json!([
            format!("tcp:127.0.0.1:0:127.0.0.1:{}", services.tcp_echo.port()),
            format!("udp:127.0.0.1:0:127.0.0.1:{}", services.udp_echo.port()),
        ]);
    }
    let p = dir.join(format!("{name}-{mode}.json"));
    std::fs::write(&p, v.to_string()).unwrap();
    p.to_string_lossy().into_owned()
}

/// The address in a `mapping tcp:… listening on ADDR` line.
fn listen_addr(line: &str) -> SocketAddr {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// One run; an error says what went wrong, with both peers' output.
fn run_once(variant: &str, url: &str, run: usize, s: &Services) -> Result<Outcome, String> {
    let order = Order::of(run);
    let room = format!("first-{variant}-{}-{run}", std::process::id());
    let name = format!("{variant}-{run}");
    let server_cfg = write_go_config(&s.dir, &name, "server", &room, url, s);
    let client_cfg = write_go_config(&s.dir, &name, "client", &room, url, s);
    let start_server = || Proc::spawn(&["run", &server_cfg]);
    let mut server = None;
    if order != Order::ClientFirst {
        server = Some(start_server());
    }
    if order == Order::ServerFirst {
        std::thread::sleep(Duration::from_secs(3));
    }
    let mut both_started = Instant::now();
    let client = Proc::spawn(&["run", &client_cfg]);
    // The client's listeners are bound when it prints them (before any connect).
    let limit = Duration::from_secs(10);
    let tcp_line = client
        .wait_line_within("mapping tcp:", limit)
        .ok_or("the client printed no tcp mapping")?;
    let udp_line = client
        .wait_line_within("mapping udp:", limit)
        .ok_or("the client printed no udp mapping")?;
    let ready = Instant::now();
    let (tcp_local, udp_local) = (listen_addr(&tcp_line), listen_addr(&udp_line));

    // UDP first (a send is instant), then TCP: both within a few ms of `ready`.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..DATAGRAMS {
        udp.send_to(format!("datagram {i} of run {run}").as_bytes(), udp_local)
            .unwrap();
    }
    let mut tcp = TcpStream::connect(tcp_local).map_err(|e| format!("connect: {e}"))?;
    let opened_after = ready.elapsed();
    if opened_after > Duration::from_millis(50) {
        return Err(format!(
            "the test was slow: connections opened {opened_after:?} after the listener was ready"
        ));
    }
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let data = common::pattern(TCP_BYTES, run as u64 + 1);
    let writer = {
        let mut w = tcp.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || w.write_all(&data))
    };
    // Client first: the server comes 2 s after the connections were opened.
    let server = match server {
        Some(s) => s,
        None => {
            std::thread::sleep(Duration::from_secs(2));
            both_started = Instant::now();
            start_server()
        }
    };
    let mut echoed = vec![0u8; TCP_BYTES];
    let mut got = 0;
    let mut first_byte = None;
    while got < TCP_BYTES {
        match tcp.read(&mut echoed[got..]) {
            Ok(0) => break,
            Ok(n) => {
                first_byte.get_or_insert_with(|| (ready.elapsed(), both_started.elapsed()));
                got += n;
            }
            Err(e) => {
                let (out, err) = client.terminate_with_stdout();
                return Err(format!(
                    "tcp read after {got} bytes: {e}\nclient stdout: {out:?}\nclient log:\n{err}"
                ));
            }
        }
    }
    writer
        .join()
        .unwrap()
        .map_err(|e| format!("tcp write: {e}"))?;
    if got != TCP_BYTES || echoed != data {
        return Err(format!("tcp echo: {got} of {TCP_BYTES} bytes, or altered"));
    }
    let mut datagrams = std::collections::BTreeSet::new();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    while datagrams.len() < DATAGRAMS {
        match udp.recv_from(&mut buf) {
            Ok((n, _)) => {
                datagrams.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            Err(_) => break,
        }
    }
    // The state streams while both run: connected once, never lost or reconnecting in
    // between (a peer stopping later is not part of this).
    for (who, out) in [
        ("client", client.lines_so_far()),
        ("server", server.lines_so_far()),
    ] {
        let states: Vec<&String> = out.iter().filter(|l| l.starts_with("state: ")).collect();
        let connected = states
            .iter()
            .filter(|l| l.starts_with("state: connected"))
            .count();
        let flapped = states.iter().any(|l| l.starts_with("state: reconnecting"));
        if connected != 1 || flapped {
            return Err(format!("{who} states: {states:?}"));
        }
    }
    let (client_out, client_err) = client.terminate_with_stdout();
    drop(server);
    if datagrams.len() != DATAGRAMS {
        return Err(format!(
            "udp echo: {} of {DATAGRAMS} datagrams came back; client log:\n{client_err}",
            datagrams.len()
        ));
    }
    // The final stats (printed on stop): nothing waited in vain.
    let stats: serde_json::Value = client_out
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or("the client printed no stats")?;
    let totals = &stats["totals"];
    if totals["tunnel_wait_timeouts"] != 0 || totals["connections_failed"] != 0 {
        return Err(format!("client totals: {totals}"));
    }
    Ok(Outcome {
        order,
        first_byte: first_byte.unwrap(),
    })
}

fn summary(variant: &str, outcomes: &[Outcome]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for order in [Order::ServerFirst, Order::ClientFirst, Order::Together] {
        let mut from_ready: Vec<f64> = Vec::new();
        let mut from_both: Vec<f64> = Vec::new();
        for o in outcomes.iter().filter(|o| o.order == order) {
            from_ready.push(ms(o.first_byte.0));
            from_both.push(ms(o.first_byte.1));
        }
        if from_ready.is_empty() {
            continue;
        }
        from_ready.sort_by(f64::total_cmp);
        from_both.sort_by(f64::total_cmp);
        let n = from_ready.len();
        println!(
            "{variant:<15} {:<12} {n:>2} runs; first echoed byte after the client listened: median {:>7.1} ms, max {:>7.1} ms; after both peers were started: median {:>6.1} ms, max {:>6.1} ms",
            format!("{order:?}"),
            from_ready[n / 2],
            from_ready[n - 1],
            from_both[n / 2],
            from_both[n - 1],
        );
    }
}

#[test]
fn first_connection_through_php_mailboxes_and_the_rendezvous() {
    let Some(php) = signal_support::Php::start() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("stunfwd-first-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let signal = Proc::spawn(&["signal", "--http", "127.0.0.1:0", "--stun", "127.0.0.1:0"]);
    let rendezvous = signal
        .wait_line("rendezvous on ")
        .trim_start_matches("rendezvous on ")
        .to_owned();
    let stun = signal
        .wait_line("stun on ")
        .trim_start_matches("stun on ")
        .to_owned();
    let services = std::sync::Arc::new(Services {
        tcp_echo: common::tcp_echo(),
        udp_echo: common::udp_echo(),
        stun,
        dir: dir.clone(),
    });
    let variants = [
        ("php-basic", php.url()),
        ("php-enhanced", php.enhanced_url()),
        ("stunfwd-signal", rendezvous),
    ];
    let started = Instant::now();
    let workers: Vec<_> = variants
        .into_iter()
        .map(|(name, url)| {
            let services = services.clone();
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                let mut failures = Vec::new();
                for run in 0..RUNS {
                    match run_once(name, &url, run, &services) {
                        Ok(o) => outcomes.push(o),
                        Err(e) => {
                            failures.push(format!("{name} run {run} ({:?}): {e}", Order::of(run)))
                        }
                    }
                }
                (name, outcomes, failures)
            })
        })
        .collect();
    let mut all_failures = Vec::new();
    for w in workers {
        let (name, outcomes, failures) = w.join().unwrap();
        println!("{name}: {} of {RUNS} runs worked", outcomes.len());
        summary(name, &outcomes);
        all_failures.extend(failures);
    }
    println!("{} runs in {:?}", 3 * RUNS, started.elapsed());
    drop(signal);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        all_failures.is_empty(),
        "failed runs:\n{}",
        all_failures.join("\n")
    );
}
