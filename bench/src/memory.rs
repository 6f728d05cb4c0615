//! Memory rows (#19): what a peer keeps after bursts of TCP connections, and what an
//! idle UDP flow costs. Both run `stunfwd run` processes and read their `VmRSS`.

use std::net::UdpSocket;
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    free_port, start_tunnel_by, start_tunnel_with, step, tcp_echo, wait_tcp, Better, Peers, Res,
    Signal, Table, Tools,
};

/// Connections per burst, bytes each echoes, bursts: the soak of issue #19.
const BURST_CONNS: usize = 300;
const BURST_BYTES: usize = 256 * 1024;
const BURSTS: usize = 13;

/// One burst: `conns` connections to `port` at once, each writing `bytes` (a pattern
/// of its own) and reading them back through the echo server, within a minute. Returns
/// how many failed and the first failure; an error when more than a tenth failed.
fn burst(
    rt: &tokio::runtime::Runtime,
    port: u16,
    conns: usize,
    bytes: usize,
) -> Res<(usize, Option<String>)> {
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..conns {
            set.spawn(async move {
                let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let (mut r, mut w) = s.into_split();
                let data: Vec<u8> = (0..bytes).map(|k| (k.wrapping_mul(31) + i) as u8).collect();
                let writer = async {
                    w.write_all(&data).await?;
                    w.shutdown().await
                };
                let reader = async {
                    let mut got = Vec::with_capacity(bytes);
                    r.read_to_end(&mut got).await.map(|_| got)
                };
                let (wrote, got) = tokio::join!(writer, reader);
                wrote.map_err(|e| format!("write: {e}"))?;
                let got = got.map_err(|e| format!("read: {e}"))?;
                if got != data {
                    return Err(format!(
                        "{} of {bytes} bytes came back, altered or cut",
                        got.len()
                    ));
                }
                Ok(())
            });
        }
        let all = async {
            let (mut failed, mut first) = (0, None);
            while let Some(r) = set.join_next().await {
                if let Err(e) = r.map_err(|e| e.to_string()).and_then(|r| r) {
                    failed += 1;
                    first.get_or_insert(e);
                }
            }
            if failed * 10 > conns {
                return Err(format!(
                    "{failed} of {conns} connections failed, first: {}",
                    first.unwrap_or_default()
                ));
            }
            Ok((failed, first))
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .map_err(|_| "a burst did not finish within 60 s".to_owned())?
    })
}

/// RSS of both peers after `BURSTS` bursts and an idle wait, beside their idle RSS
/// before. Target (#19): within 2× the idle figure plus 10 MB.
pub(crate) fn burst_rows(t: &Tools, sig: &Signal, table: &mut Table) {
    burst_rows_by(t, sig, table, Peers::Cli, "");
    match &t.python {
        Ok(python) => burst_rows_by(t, sig, table, Peers::Python(python), " (Python binding)"),
        Err(why) => {
            let e: Res<f64> = Err(format!("not measured: {why}"));
            table.row(
                "RSS after bursts, the library under the Python binding",
                &e,
                "MB",
                "idle",
                &e,
                None,
            );
        }
    }
}

/// The burst rows with the peers run by `peers`, `label` added to each row's name.
fn burst_rows_by(t: &Tools, sig: &Signal, table: &mut Table, peers: Peers<'_>, label: &str) {
    step(&format!("memory after bursts{label}"));
    let idle_wait = if t.quick { 10 } else { 30 };
    let echo = tcp_echo();
    let local = free_port();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e: Res<f64> = Err(format!("runtime: {e}"));
            table.row("RSS after bursts", &e, "MB", "idle", &e, None);
            return;
        }
    };
    let measured = start_tunnel_by(t, sig, &[format!("tcp:{local}:{echo}")], peers).and_then(|mut tun| {
        wait_tcp(local, Duration::from_secs(5))?;
        thread::sleep(Duration::from_secs(1));
        let idle = (tun.client.rss_kb(), tun.server.rss_kb());
        let started = Instant::now();
        let mut failed = 0;
        for k in 0..BURSTS {
            let outcome = burst(&rt, local, BURST_CONNS, BURST_BYTES);
            if let Ok((n, Some(first))) = &outcome {
                eprintln!("[bench] burst {}: {n} of {BURST_CONNS} connections failed, first: {first}", k + 1);
                failed += n;
            }
            if outcome.as_ref().map_or(true, |(n, _)| *n > 0) {
                // The peers' last lines are written as the failure happens.
                thread::sleep(Duration::from_millis(500));
                for (who, p) in [("client", &mut tun.client), ("server", &mut tun.server)] {
                    let lines = p.drain();
                    eprintln!("[bench] {who}: {} lines since the last look", lines.len());
                    let telling = lines.iter().filter(|l| {
                        ["reset", "WARN", "refused", "failed", "lost", "ERROR", "error"].iter().any(|w| l.contains(w))
                    });
                    for line in telling.take(40) {
                        eprintln!("[bench] {who}: {line}");
                    }
                }
            }
            if let Err(e) = outcome {
                return Err(format!("burst {}: {e}", k + 1));
            }
        }
        let peak = (tun.client.hwm_kb(), tun.server.hwm_kb());
        eprintln!(
            "[bench] {BURSTS} bursts of {BURST_CONNS} x {} KiB echoed in {:.1} s; peak RSS client {} kB, server {} kB",
            BURST_BYTES / 1024,
            started.elapsed().as_secs_f64(),
            peak.0,
            peak.1
        );
        thread::sleep(Duration::from_secs(idle_wait));
        Ok((idle, (tun.client.rss_kb(), tun.server.rss_kb()), failed))
    });
    for (who, pick) in [
        ("client", (|p: (u64, u64)| p.0) as fn((u64, u64)) -> u64),
        ("server", |p: (u64, u64)| p.1),
    ] {
        let after: Res<f64> = measured
            .as_ref()
            .map(|(_, a, _)| pick(*a) as f64 * 1024.0)
            .map_err(Clone::clone);
        let idle: Res<f64> = measured
            .as_ref()
            .map(|(i, _, _)| pick(*i) as f64 * 1024.0)
            .map_err(Clone::clone);
        let goal = idle.as_ref().map_or(0.0, |i| 2.0 * i + 10e6);
        let target = format!("≤ 2× idle + 10 MB ({:.1} MB)", goal / 1e6);
        table.row(
            &format!(
                "RSS after {BURSTS} bursts of {BURST_CONNS} TCP conns × 256 KiB and {idle_wait} s idle, {who}{label}"
            ),
            &after,
            "MB",
            "same process idle, before",
            &idle,
            Some((&target, goal, Better::Lower)),
        );
    }
    failed_row(
        table,
        label,
        measured.as_ref().map(|m| m.2 as f64).map_err(Clone::clone),
    );
}

/// Connections of the bursts that did not come back intact (see burst_rows).
fn failed_row(table: &mut Table, label: &str, failed: Res<f64>) {
    table.row(
        &format!(
            "burst connections not echoed intact (of {}){label}",
            BURSTS * BURST_CONNS
        ),
        &failed,
        "conns",
        "-",
        &Err(String::new()),
        Some(("0", 0.0, Better::Lower)),
    );
}

/// Flows for the UDP flow row.
const FLOWS: usize = 10_000;

/// A UDP echo server on one socket, answering every datagram to where it came from.
fn udp_echo() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("udp echo");
    super::big_rcvbuf(&s);
    let port = s.local_addr().expect("udp echo addr").port();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    port
}

/// Opens `n` flows through the mapping on `port`: each from a socket of its own, one
/// datagram echoed back. Returns the sockets (the flows stay open while they live) and
/// how many flows answered. Sent in batches of 250 with one retry, so that the
/// sockets' own buffers are not what drops datagrams.
fn open_flows(port: u16, n: usize) -> Res<(Vec<UdpSocket>, usize)> {
    let mut socks = Vec::with_capacity(n);
    let mut answered = 0;
    let mut buf = [0u8; 64];
    for chunk in 0..n.div_ceil(250) {
        let batch: Vec<UdpSocket> = (0..250.min(n - chunk * 250))
            .map(|_| UdpSocket::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("socket {} of {n}: {e}", socks.len() + 1))?;
        let mut pending: Vec<&UdpSocket> = batch.iter().collect();
        for _attempt in 0..2 {
            for s in &pending {
                let _ = s.send_to(b"flow", ("127.0.0.1", port));
            }
            let mut left = Vec::new();
            for s in pending {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                match s.recv(&mut buf) {
                    Ok(4) => answered += 1,
                    _ => left.push(s),
                }
            }
            pending = left;
            if pending.is_empty() {
                break;
            }
        }
        socks.extend(batch);
    }
    Ok((socks, answered))
}

/// Memory per idle UDP flow on both peers with `FLOWS` flows open. Target (#19): at
/// most 8 KB a flow.
pub(crate) fn flow_rows(t: &Tools, sig: &Signal, table: &mut Table) {
    step("udp flows");
    let echo = udp_echo();
    let local = super::free_udp_port();
    let perf = serde_json::json!({
        "maxUdpFlowsPerMapping": FLOWS + 100,
        "maxUdpFlowsPerClient": FLOWS + 100,
        "udpFlowTimeout": "10m",
    });
    let measured = start_tunnel_with(t, sig, &[format!("udp:{local}:{echo}")], true, perf)
        .and_then(|tun| {
            // One flow first, so the mapping's own buffers are in the idle figure.
            let (warm, _) = open_flows(local, 1)?;
            thread::sleep(Duration::from_secs(1));
            let before = (tun.client.rss_kb(), tun.server.rss_kb());
            let started = Instant::now();
            let (socks, answered) = open_flows(local, FLOWS)?;
            eprintln!(
                "[bench] {answered} of {FLOWS} udp flows answered in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            if answered < FLOWS * 9 / 10 {
                return Err(format!("only {answered} of {FLOWS} flows answered"));
            }
            thread::sleep(Duration::from_secs(2));
            let after = (tun.client.rss_kb(), tun.server.rss_kb());
            drop((socks, warm));
            Ok((before, after, answered))
        });
    for (who, pick) in [
        ("client", (|p: (u64, u64)| p.0) as fn((u64, u64)) -> u64),
        ("server", |p: (u64, u64)| p.1),
    ] {
        let per_flow: Res<f64> = measured
            .as_ref()
            .map(|(b, a, n)| (pick(*a) as f64 - pick(*b) as f64) * 1024.0 / *n as f64)
            .map_err(Clone::clone);
        let before: Res<f64> = measured
            .as_ref()
            .map(|(b, _, _)| pick(*b) as f64 * 1024.0)
            .map_err(Clone::clone);
        let n = measured.as_ref().map_or(0, |m| m.2);
        table.row(
            &format!("memory per idle UDP flow ({n} flows), {who}"),
            &per_flow,
            "KB",
            "-",
            &Err(String::new()),
            Some(("≤ 8 KB", 8000.0, Better::Lower)),
        );
        table.row(
            &format!("RSS with {n} idle UDP flows, {who}"),
            &measured
                .as_ref()
                .map(|(_, a, _)| pick(*a) as f64 * 1024.0)
                .map_err(Clone::clone),
            "MB",
            "same process with 1 flow",
            &before,
            None,
        );
    }
}
