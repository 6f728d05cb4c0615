//! `stunfwd demo`: everything on loopback in one process, checked end to end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use stunfwd_core::{Config, Engine, SignalServer, SignalServerConfig};

fn step(t0: Instant, what: &str) {
    println!("[{:>8.1} ms] {what}", t0.elapsed().as_secs_f64() * 1000.0);
}

fn fail(what: &str) -> ExitCode {
    println!("FAILED: {what}");
    ExitCode::FAILURE
}

fn tcp_echo() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn udp_echo() -> std::io::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    Ok(addr)
}

pub fn run(bytes: usize) -> ExitCode {
    let t0 = Instant::now();
    println!("stunfwd demo: rendezvous, STUN and two peers in one process on loopback");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("runtime: {e}")),
    };
    let server = match rt.block_on(SignalServer::start(SignalServerConfig::default())) {
        Ok(s) => s,
        Err(e) => return fail(&format!("rendezvous: {e}")),
    };
    let Some(stun) = server.stun_addr() else {
        return fail("rendezvous has no STUN responder");
    };
    step(
        t0,
        &format!("rendezvous on {} with STUN on {stun}", server.url()),
    );

    let (Ok(tcp_target), Ok(udp_target)) = (tcp_echo(), udp_echo()) else {
        return fail("cannot start the echo services");
    };
    step(
        t0,
        &format!("echo services: tcp {tcp_target}, udp {udp_target}"),
    );

    let room = format!("demo-{:08x}", rand_u32());
    let secret = format!("{:016x}{:016x}", rand_u32(), rand_u32());
    let base = serde_json::json!({
        "room": room,
        "secret": secret,
        "signalUrl": server.url(),
        "stunServers": [stun.to_string()],
        "bind": "127.0.0.1:0",
    });
    let mut server_cfg = base.clone();
    server_cfg["mode"] = "server".into();
    let mut client_cfg = base;
    client_cfg["mode"] = "client".into();
    client_cfg["mappings"] = serde_json::json!([
        format!("tcp:127.0.0.1:0:{}:{}", tcp_target.ip(), tcp_target.port()),
        format!("udp:127.0.0.1:0:{}:{}", udp_target.ip(), udp_target.port()),
    ]);
    let (server_cfg, client_cfg) = match (
        Config::from_value(server_cfg),
        Config::from_value(client_cfg),
    ) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => return fail(&format!("config: {e}")),
    };

    let started = Instant::now();
    let exposing = match Engine::start(server_cfg) {
        Ok(e) => e,
        Err(e) => return fail(&format!("server peer: {e}")),
    };
    let connecting = match Engine::start(client_cfg) {
        Ok(e) => e,
        Err(e) => return fail(&format!("client peer: {e}")),
    };
    step(t0, "both peers started");
    let mappings = connecting.mappings();
    let (Some(tcp_map), Some(udp_map)) = (
        mappings
            .iter()
            .find(|m| m.mapping.proto == stunfwd_core::Proto::Tcp),
        mappings
            .iter()
            .find(|m| m.mapping.proto == stunfwd_core::Proto::Udp),
    ) else {
        return fail("mappings missing");
    };
    for m in &mappings {
        step(
            t0,
            &format!("client listens on {} for {}", m.listen, m.mapping.target()),
        );
    }

    match connecting.wait_connected(Duration::from_secs(20)) {
        Ok(state) => step(
            t0,
            &format!(
                "tunnel up: {state} ({:.1} ms after start)",
                started.elapsed().as_secs_f64() * 1000.0
            ),
        ),
        Err(e) => return fail(&format!("not connected: {e}")),
    }

    // TCP: send `bytes`, read them back, compare digests.
    let mut payload = vec![0u8; bytes.max(1)];
    let mut x = rand_u32() | 1;
    for b in payload.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let tcp_result = (|| -> std::io::Result<(Duration, Duration, bool)> {
        let mut s = TcpStream::connect(tcp_map.listen)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let writer_data = payload.clone();
        let mut w = s.try_clone()?;
        let sending = std::thread::spawn(move || w.write_all(&writer_data));
        let mut got = vec![0u8; payload.len()];
        s.read_exact(&mut got[..1])?;
        let first = started.elapsed();
        let t = Instant::now();
        s.read_exact(&mut got[1..])?;
        let rest = t.elapsed();
        let _ = sending.join();
        Ok((
            first,
            rest,
            Sha256::digest(&got) == Sha256::digest(&payload),
        ))
    })();
    match tcp_result {
        Ok((first, rest, true)) => {
            step(
                t0,
                &format!(
                    "first byte forwarded {:.1} ms after both peers started",
                    first.as_secs_f64() * 1000.0
                ),
            );
            step(
                t0,
                &format!(
                    "tcp echo: {} bytes round-tripped intact (sha256 matches), {:.1} MB/s",
                    payload.len(),
                    payload.len() as f64 / rest.as_secs_f64().max(1e-6) / 1e6
                ),
            );
        }
        Ok((_, _, false)) => return fail("tcp echo: data differs"),
        Err(e) => return fail(&format!("tcp echo: {e}")),
    }

    // UDP: a few sizes, including ones larger than a QUIC datagram. UDP may lose a
    // datagram (so may the tunnel's QUIC DATAGRAM frames); an unanswered one is sent
    // again, up to 3 times. What must hold is that every answer is intact.
    let udp_result = (|| -> std::io::Result<(Vec<usize>, u32)> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_read_timeout(Some(Duration::from_millis(700)))?;
        let mut ok = Vec::new();
        let mut resent = 0;
        let mut buf = vec![0u8; 65_536];
        for size in [1usize, 512, 1200, 4000, 9000, 60_000] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            let mut answer = None;
            for attempt in 0..3 {
                if attempt > 0 {
                    resent += 1;
                }
                s.send_to(&data, udp_map.listen)?;
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    answer = Some(n);
                    break;
                }
            }
            let n = answer.ok_or_else(|| {
                std::io::Error::other(format!("{size}-byte datagram not answered after 3 sends"))
            })?;
            if buf[..n] != data[..] {
                return Err(std::io::Error::other(format!(
                    "{size}-byte datagram differs"
                )));
            }
            ok.push(size);
        }
        Ok((ok, resent))
    })();
    match udp_result {
        Ok((sizes, resent)) => step(
            t0,
            &format!(
                "udp echo: datagrams of {sizes:?} bytes round-tripped intact ({resent} resent after loss)"
            ),
        ),
        Err(e) => {
            let (c, x) = (connecting.stats(), exposing.stats());
            return fail(&format!(
                "udp echo: {e} (client sent {} / received {} datagrams; server received {} / sent {})",
                c.totals.datagrams_sent,
                c.totals.datagrams_received,
                x.totals.datagrams_received,
                x.totals.datagrams_sent
            ));
        }
    }

    let stats = connecting.stats();
    println!(
        "{}",
        serde_json::to_string_pretty(&stats).unwrap_or_else(|e| e.to_string())
    );
    let ts = Instant::now();
    connecting.stop(Duration::from_secs(2));
    exposing.stop(Duration::from_secs(2));
    rt.block_on(server.stop(Duration::from_secs(1)));
    drop(server);
    step(
        t0,
        &format!("stopped in {:.1} ms", ts.elapsed().as_secs_f64() * 1000.0),
    );
    println!("demo OK");
    ExitCode::SUCCESS
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u32
}
