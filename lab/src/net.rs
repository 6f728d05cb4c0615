//! Helpers that run inside namespaces: echo services, data through a tunnel, STUN
//! probes from a socket, a STUN reflector that can also send unsolicited packets, and
//! conntrack and sysctl in a router.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use patchbay::{Device, Router};
use stunfwd_core::stun::message::{self, Parsed};

/// Runs a blocking closure on a thread inside `dev`'s namespace and waits for it.
pub async fn in_ns<R: Send + 'static>(
    dev: &Device,
    f: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    let handle = dev.spawn_thread(f)?;
    tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

/// A UDP socket bound to `bind` inside `dev`'s namespace (it stays in that namespace
/// whichever thread later uses it).
pub async fn udp_socket(dev: &Device, bind: SocketAddr) -> Result<UdpSocket> {
    in_ns(dev, move || Ok(UdpSocket::bind(bind)?)).await
}

/// Starts a TCP echo service on 127.0.0.1 inside `dev`; returns its port.
pub async fn tcp_echo(dev: &Device) -> Result<u16> {
    in_ns(dev, || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(port)
    })
    .await
}

/// Starts a UDP echo service on 127.0.0.1 inside `dev`; returns its port.
pub async fn udp_echo(dev: &Device) -> Result<u16> {
    in_ns(dev, || {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        let port = s.local_addr()?.port();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
        Ok(port)
    })
    .await
}

/// Sends `data` through a local TCP port inside `dev` and checks the echo.
pub async fn echo_through(dev: &Device, port: u16, data: Vec<u8>, timeout: Duration) -> Result<()> {
    in_ns(dev, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(timeout))?;
        let mut w = s.try_clone()?;
        let d2 = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&d2));
        let mut got = vec![0u8; data.len()];
        s.read_exact(&mut got)?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        if got != data {
            bail!("echo differs");
        }
        Ok(())
    })
    .await
}

/// Time to first byte: from `since` until one byte written to the local TCP port
/// `port` inside `dev` comes back echoed through the tunnel. Connections the engine
/// refuses or resets are retried every 20 ms; gives up at `deadline` or when `stop`
/// is set (then `Ok(None)`).
pub async fn first_byte(
    dev: &Device,
    port: u16,
    since: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
) -> Result<Option<Duration>> {
    in_ns(dev, move || {
        use std::io::{Read, Write};
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            let attempt = (|| -> std::io::Result<bool> {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
                s.set_nodelay(true)?;
                s.write_all(b"!")?;
                let mut b = [0u8; 1];
                // Short reads so that `stop` and `deadline` are looked at often; the
                // connection itself waits for the tunnel (tunnelWait).
                s.set_read_timeout(Some(Duration::from_millis(100)))?;
                loop {
                    match s.read(&mut b) {
                        Ok(1) => return Ok(b[0] == b'!'),
                        Ok(_) => return Ok(false),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                                return Ok(false);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            })();
            if let Ok(true) = attempt {
                return Ok(Some(since.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    })
    .await
}

/// What a STUN server answered to one Binding request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunAnswer {
    /// XOR-MAPPED-ADDRESS: where the server saw us.
    pub mapped: SocketAddr,
    /// OTHER-ADDRESS (RFC 5780), when the server sends one.
    pub other: Option<SocketAddr>,
    /// Where the answer came from.
    pub from: SocketAddr,
}

/// Sends a Binding request from `socket` to `server` (retransmitted for about 2 s)
/// and returns the answer. Other datagrams arriving meanwhile are skipped.
pub fn stun_query(socket: &UdpSocket, server: SocketAddr) -> Result<StunAnswer> {
    let tid = message::new_tid();
    let req = message::binding_request(tid);
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = [0u8; 1500];
    for _ in 0..8 {
        socket.send_to(&req, server)?;
        let until = Instant::now() + Duration::from_millis(250);
        while Instant::now() < until {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if let Some(Parsed::Success {
                tid: t,
                mapped: Some(mapped),
                other,
                ..
            }) = message::parse(&buf[..n])
            {
                if t == tid {
                    return Ok(StunAnswer {
                        mapped,
                        other,
                        from,
                    });
                }
            }
        }
    }
    bail!("no STUN answer from {server}")
}

/// A STUN Binding responder on a socket the test also sends from: it answers
/// requests like any STUN server, and [`Reflector::poke`] sends an unsolicited
/// datagram from the same address (the packet of a peer that arrives first).
pub struct Reflector {
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
}

impl Reflector {
    /// Starts answering on `socket` (bound in the namespace it should serve from).
    pub fn start(socket: UdpSocket) -> Result<Reflector> {
        let serve = socket.try_clone()?;
        serve.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = serve.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(Parsed::Request { tid, .. }) = message::parse(&buf[..n]) {
                    let _ = serve.send_to(&message::binding_success(tid, from, None), from);
                }
            }
        });
        Ok(Reflector { socket, stop })
    }

    /// This reflector's address.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound socket")
    }

    /// Sends a datagram (not STUN) to `to` from the reflector's address.
    pub fn poke(&self, to: SocketAddr) -> Result<()> {
        self.socket.send_to(b"early punch", to)?;
        Ok(())
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends one UDP datagram from `socket` with IP TTL `ttl` (then restores 64).
pub fn send_with_ttl(socket: &UdpSocket, to: SocketAddr, ttl: u32, data: &[u8]) -> Result<()> {
    socket.set_ttl(ttl)?;
    socket.send_to(data, to)?;
    socket.set_ttl(64)?;
    Ok(())
}

/// Runs a command in `router`'s namespace and returns its standard output.
pub async fn router_output(router: &Router, program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    let out = router.spawn_command(cmd)?.wait_with_output().await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Counts the conntrack entries (all protocols) in `router`'s namespace.
pub async fn conntrack_count(router: &Router) -> Result<usize> {
    Ok(conntrack_list(router)
        .await?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

/// Lists conntrack entries of `router` (for diagnostics).
pub async fn conntrack_list(router: &Router) -> Result<String> {
    router_output(router, "conntrack", &["-L"]).await
}

/// The UDP conntrack entries of `router` whose original direction matches the given
/// source address and/or destination port (one line each).
pub async fn conntrack_udp(
    router: &Router,
    src: Option<IpAddr>,
    dport: Option<u16>,
) -> Result<Vec<String>> {
    let mut args = vec!["-L".to_owned(), "-p".into(), "udp".into()];
    if let Some(s) = src {
        args.extend(["-s".into(), s.to_string()]);
    }
    if let Some(p) = dport {
        args.extend(["--dport".into(), p.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(router_output(router, "conntrack", &args)
        .await?
        .lines()
        .filter(|l| l.starts_with("udp"))
        .map(str::to_owned)
        .collect())
}

/// Sets a sysctl inside `router`'s namespace.
pub async fn sysctl(router: &Router, key: &str, value: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::new("sysctl");
    cmd.args(["-q", "-w", &format!("{key}={value}")])
        .stdout(Stdio::null());
    let status = router.spawn_command(cmd)?.wait().await?;
    if !status.success() {
        bail!("sysctl {key}={value} failed");
    }
    Ok(())
}

/// Reads a sysctl inside `router`'s namespace.
pub async fn sysctl_get(router: &Router, key: &str) -> Result<String> {
    Ok(router_output(router, "sysctl", &["-n", key])
        .await?
        .trim()
        .to_owned())
}

/// Runs an nftables script in `router`'s namespace.
pub async fn nft(router: &Router, rules: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = router.spawn_command(cmd)?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(rules.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "nft rules failed: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// An IP of `dev`'s first interface.
pub fn ip_of(dev: &Device) -> IpAddr {
    IpAddr::V4(dev.ip().expect("device has an IPv4 address"))
}
