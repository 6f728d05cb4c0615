//! `--scale N [--soak SECS]`: one server peer (`stunfwd run`, a process of its own) with
//! N clients (engines in this process), on 127.0.0.1 (#19). Prints the server's RSS,
//! its idle CPU and each client's TCP echo p50 beside one client's alone; with
//! `--soak`, samples the server's RSS every 10 s for that long and prints its growth.
//! Run by `bench/scale`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use stunfwd_core::{Config, Engine};

use super::{median, pct, start_unlimited_signal, step, tcp_echo, Better, Proc, Res, Table, Tools};

/// CPU time (user + system) of process `pid` so far, in seconds.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// p50 of `n` 64-byte round trips through `port`, in µs.
fn echo_p50(port: u16, n: usize) -> Res<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut v = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t0 = Instant::now();
        s.write_all(&msg).map_err(|e| e.to_string())?;
        s.read_exact(&mut back).map_err(|e| e.to_string())?;
        if i >= 20 {
            v.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    v.sort_by(f64::total_cmp);
    Ok(pct(&v, 0.50))
}

struct Peers {
    server: Proc,
    clients: Vec<Engine>,
}

fn client(url: &str, stun: &str, room: &str, echo: u16) -> Res<Engine> {
    let v = serde_json::json!({
        "mode": "client", "room": room, "secret": "bench secret", "signalUrl": url,
        "stunServers": [stun], "bind": "127.0.0.1:0",
        "mappings": [format!("tcp:0:{echo}")],
    });
    let config = Config::from_value(v).map_err(|e| e.to_string())?;
    Engine::start(config).map_err(|e| e.to_string())
}

fn local_port(e: &Engine) -> u16 {
    e.mappings().first().map_or(0, |m| m.listen.port())
}

/// Runs the scale rows with `n` clients; `soak` seconds of RSS sampling after.
pub(crate) fn run_scale(t: &Tools, n: usize, soak: Option<u64>) -> Table {
    let mut table = Table::default();
    let result = (|| -> Res<()> {
        step(&format!("scale: {n} clients"));
        let sig = start_unlimited_signal()?;
        let stun = sig.stun.clone();
        let echo = tcp_echo();
        let room = format!("scale-{}", std::process::id());
        let cfg = serde_json::json!({
            "mode": "server", "room": room, "secret": "bench secret", "signalUrl": sig.url,
            "stunServers": [stun], "bind": "127.0.0.1:0", "maxClients": n.max(1),
        });
        let path = t.work.join("scale-server.json");
        std::fs::write(&path, cfg.to_string()).map_err(|e| e.to_string())?;
        let server = Proc::spawn(
            "stunfwd server",
            std::process::Command::new(&t.stunfwd)
                .args(["--log", "warn", "run"])
                .arg(&path),
        )?;
        let mut peers = Peers {
            server,
            clients: Vec::new(),
        };
        // One client alone: its echo p50 is the baseline.
        let first = client(&sig.url, &stun, &room, echo)?;
        first
            .wait_connected(Duration::from_secs(30))
            .map_err(|e| format!("first client: {e}"))?;
        let single = echo_p50(local_port(&first), 1000)?;
        peers.clients.push(first);
        thread::sleep(Duration::from_secs(2));
        let rss_one = peers.server.rss_kb() as f64 * 1024.0;

        let started = Instant::now();
        for _ in 1..n {
            peers.clients.push(client(&sig.url, &stun, &room, echo)?);
        }
        let mut connected = 0;
        for (i, c) in peers.clients.iter().enumerate() {
            let left = Duration::from_secs(180).saturating_sub(started.elapsed());
            match c.wait_connected(left) {
                Ok(_) => connected += 1,
                Err(e) => eprintln!("[bench] client {i} not connected: {e}"),
            }
        }
        eprintln!(
            "[bench] {connected} of {n} clients connected in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // Settle, then idle CPU over 10 s and the RSS.
        thread::sleep(Duration::from_secs(5));
        let pid = peers.server.pid();
        let cpu0 = cpu_secs(pid);
        thread::sleep(Duration::from_secs(10));
        let idle_cpu = (cpu_secs(pid) - cpu0) / 10.0 * 100.0;
        let rss = peers.server.rss_kb() as f64 * 1024.0;
        // Each client's echo p50, one client at a time.
        let mut p50s = Vec::new();
        for c in &peers.clients {
            if let Ok(p) = echo_p50(local_port(c), 200) {
                p50s.push(p);
            }
        }
        let worst = p50s.iter().copied().fold(0.0, f64::max);
        let med = median(p50s.clone());
        let label = format!("server peer with {connected} of {n} clients");
        table.row(
            &format!("{label}: RSS"),
            &Ok(rss),
            "MB",
            "same server with 1 client",
            &Ok(rss_one),
            Some(("≤ 30 MB", 30e6, Better::Lower)),
        );
        table.row(
            &format!("{label}: idle CPU, % of a core over 10 s"),
            &Ok(idle_cpu),
            "%",
            "-",
            &Err(String::new()),
            Some(("≤ 1 %", 1.0, Better::Lower)),
        );
        let goal = 2.0 * single;
        table.row(
            &format!(
                "{label}: TCP echo p50, worst client ({} measured)",
                p50s.len()
            ),
            &Ok(worst),
            "µs",
            "one client alone",
            &Ok(single),
            Some((
                &format!("≤ 2× one client ({goal:.0} µs)"),
                goal,
                Better::Lower,
            )),
        );
        table.row(
            &format!("{label}: TCP echo p50, median client"),
            &Ok(med),
            "µs",
            "one client alone",
            &Ok(single),
            None,
        );
        if connected < n {
            table.row(
                &format!("{label}: clients connected"),
                &Ok(connected as f64),
                "clients",
                "-",
                &Err(String::new()),
                Some((&format!("{n}"), n as f64, Better::Higher)),
            );
        }
        if let Some(secs) = soak {
            step(&format!("soak: {secs} s"));
            let mut samples = Vec::new();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(secs) {
                thread::sleep(Duration::from_secs(10));
                let kb = peers.server.rss_kb();
                eprintln!(
                    "[bench] soak {:>5.0} s: server RSS {kb} kB",
                    t0.elapsed().as_secs_f64()
                );
                samples.push(kb as f64 * 1024.0);
            }
            // From the first minute on: what grows after the clients settled.
            let skip = samples.len().min(6);
            let base = samples.get(skip.saturating_sub(1)).copied().unwrap_or(rss);
            let last = samples.last().copied().unwrap_or(rss);
            table.row(
                &format!("{label}: RSS at the end of a {secs} s soak"),
                &Ok(last),
                "MB",
                "same server after its first minute",
                &Ok(base),
                Some(("≤ 1.05× (no growth)", base * 1.05, Better::Lower)),
            );
        }
        // Every tunnel should have lived through the run: a reconnect here is a live
        // tunnel taken for dead (#19 found idle tunnels closed as "path silent").
        let reconnects: u64 = peers.clients.iter().map(|c| c.stats().reconnects).sum();
        table.row(
            &format!("{label}: tunnels lost and re-made during the run (clients' reconnects)"),
            &Ok(reconnects as f64),
            "reconnects",
            "-",
            &Err(String::new()),
            Some(("0", 0.0, Better::Lower)),
        );
        let clients = std::mem::take(&mut peers.clients);
        thread::scope(|s| {
            for chunk in clients.chunks(50) {
                s.spawn(move || {
                    for c in chunk {
                        c.stop(Duration::from_millis(500));
                    }
                });
            }
        });
        drop(clients);
        drop(peers);
        drop(sig);
        Ok(())
    })();
    if let Err(e) = result {
        table.row("scale", &Err(e), "", "-", &Err("-".into()), None);
    }
    table
}
