//! Shared helpers for the integration tests: an in-process rendezvous + STUN server,
//! echo and sink services, and engine pairs, all on loopback.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stunfwd_core::{Config, Engine, Proto, SignalServer, SignalServerConfig};

/// A rendezvous + STUN server on its own small runtime.
pub struct Rendezvous {
    pub rt: tokio::runtime::Runtime,
    pub server: Option<SignalServer>,
    pub url: String,
    pub stun: SocketAddr,
}

impl Rendezvous {
    pub fn start() -> Rendezvous {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(SignalServer::start(SignalServerConfig::default()))
            .unwrap();
        let url = server.url();
        let stun = server.stun_addr().unwrap();
        Rendezvous {
            rt,
            server: Some(server),
            url,
            stun,
        }
    }

    pub fn requests(&self) -> u64 {
        self.server.as_ref().map(|s| s.requests()).unwrap_or(0)
    }

    /// A config for `mode` in `room`, bound to loopback.
    pub fn config(&self, mode: &str, room: &str, secret: &str, mappings: &[String]) -> Config {
        config_for(
            &self.url,
            self.stun,
            mode,
            room,
            secret,
            mappings,
            serde_json::json!({}),
        )
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop(Duration::from_millis(200)));
        }
    }
}

pub fn config_for(
    url: &str,
    stun: SocketAddr,
    mode: &str,
    room: &str,
    secret: &str,
    mappings: &[String],
    extra: serde_json::Value,
) -> Config {
    let mut v = serde_json::json!({
        "mode": mode,
        "room": room,
        "secret": secret,
        "signalUrl": url,
        "stunServers": [stun.to_string()],
        "bind": "127.0.0.1:0",
        "mappings": mappings,
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    Config::from_value(v).unwrap()
}

static ROOM: AtomicU64 = AtomicU64::new(0);

/// A room name unique within this process.
pub fn room() -> String {
    format!(
        "test-{}-{}",
        std::process::id(),
        ROOM.fetch_add(1, Ordering::Relaxed)
    )
}

/// A connected server/client pair; the client has `mappings`.
pub fn pair(rv: &Rendezvous, mappings: &[String]) -> (Engine, Engine) {
    let room = room();
    let server = Engine::start(rv.config("server", &room, "s3cret", &[])).unwrap();
    let client = Engine::start(rv.config("client", &room, "s3cret", mappings)).unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    server.wait_connected(Duration::from_secs(20)).unwrap();
    (server, client)
}

/// A TCP echo service; returns its address.
pub fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
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
    addr
}

/// A UDP echo service; returns its address.
pub fn udp_echo() -> SocketAddr {
    udp_echo_on("127.0.0.1:0")
}

/// A UDP echo service bound to `bind` (e.g. `[::1]:0`); returns its address.
pub fn udp_echo_on(bind: &str) -> SocketAddr {
    let socket = UdpSocket::bind(bind).unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    addr
}

/// A UDP service that answers every datagram with the source address it came from.
pub fn udp_whoami() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(from.to_string().as_bytes(), from);
        }
    });
    addr
}

/// Counts accepted TCP connections (and drops them).
pub fn tcp_counter() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    });
    (addr, count)
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A `tracing` writer that keeps everything written, for tests that read logs.
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// An authentic-looking offer of `role` with one candidate, a made-up certificate
/// fingerprint, and `client` as the client it is from or for (sign it with
/// `Offer::encode`).
pub fn offer_with(
    role: stunfwd_core::signal::proto::Role,
    candidate: SocketAddr,
    client: Option<String>,
) -> stunfwd_core::signal::proto::Offer {
    use stunfwd_core::signal::proto::Offer;
    Offer {
        role,
        id: Offer::new_id(),
        nonce: Offer::new_nonce(),
        ts: stunfwd_core::signal::unix_now(),
        candidates: vec![candidate],
        host_count: 1,
        relay_count: 0,
        turn: false,
        fp: "ab".repeat(32),
        nat: "open".into(),
        predict: None,
        comb: None,
        client,
        refused: None,
    }
}

/// The local address of `engine`'s first mapping of `proto`.
pub fn mapping_addr(engine: &Engine, proto: Proto) -> SocketAddr {
    engine
        .mappings()
        .into_iter()
        .find(|m| m.mapping.proto == proto)
        .map(|m| m.listen)
        .unwrap()
}

/// Joins `handles` and counts those that returned true.
pub fn count_true(handles: Vec<std::thread::JoinHandle<bool>>) -> usize {
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count()
}
