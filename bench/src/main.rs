//! stunfwd benchmark: every figure beside a baseline measured in the same run, on
//! 127.0.0.1 only. Prints one table; exits 0 whether targets are met or not.
//!
//! Usage: stunfwd-bench --stunfwd PATH --lib PATH [--lib-lean PATH]
//!        [--dumbpipe PATH | --no-dumbpipe WHY]
//!        [--iperf3 PATH] [--socat PATH] [--wrk PATH] [--quick]
//!        [--python PATH | --no-python WHY]   (a Python with the `stunfwd` package)

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod memory;
mod polls;
mod scale;
mod throughput;

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------- processes

/// A child process killed (and reaped) on drop; its stdout/stderr lines are collected.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Res<Proc> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{name}: cannot start: {e}"))?;
        let (tx, rx) = mpsc::channel();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            lines: rx,
            seen: Vec::new(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line containing `needle`; returns when it was printed, and the line.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> Res<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, line)) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok((t, line));
                    }
                }
                Err(_) => {
                    let tail: Vec<&String> = self.seen.iter().rev().take(5).collect();
                    return Err(format!(
                        "{}: no `{needle}` within {timeout:?} (last lines: {tail:?})",
                        self.name
                    ));
                }
            }
        }
    }

    /// Lines printed since the last look, without waiting.
    fn drain(&mut self) -> Vec<String> {
        let fresh: Vec<String> = self.lines.try_iter().map(|(_, l)| l).collect();
        self.seen.extend(fresh.iter().cloned());
        fresh
    }

    fn rss_kb(&self) -> u64 {
        status_kb(self.pid(), "VmRSS:")
    }

    fn hwm_kb(&self) -> u64 {
        status_kb(self.pid(), "VmHWM:")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Resets the peak RSS counter so VmHWM covers only what follows.
fn reset_hwm(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback UDP port")
}

fn wait_tcp(port: u16, timeout: Duration) -> Res<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(format!("nothing listens on 127.0.0.1:{port}"))
}

// ---------------------------------------------------------------- services

/// A TCP echo service (thread per connection).
fn tcp_echo() -> u16 {
    let l = listener("echo");
    let port = l.local_addr().expect("echo addr").port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut s = s;
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A loopback listener with the accept queue the engine's listeners have (4,096, as
/// `stunfwd_core`'s `LISTEN_BACKLOG`): std asks for 128, which a burst of 300
/// connections overflows, and the kernel then resets some of them (SYN cookies).
fn listener(what: &str) -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{what} listener: {e}"));
    // SAFETY: listen(2) on a socket this function owns; calling it again on a
    // listening socket only changes its backlog.
    if unsafe { listen(l.as_raw_fd(), 4096) } != 0 {
        panic!(
            "{what} listener: listen: {}",
            std::io::Error::last_os_error()
        );
    }
    l
}

extern "C" {
    fn listen(fd: i32, backlog: i32) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const std::ffi::c_void, len: u32) -> i32;
    fn getrlimit(resource: i32, rlim: *mut [u64; 2]) -> i32;
    fn setrlimit(resource: i32, rlim: *const [u64; 2]) -> i32;
}

/// Raises this process's descriptor soft limit to the hard one: the flow and long-poll
/// rows hold 10,000 sockets each (the `stunfwd` CLI does the same for itself).
fn raise_fd_limit() {
    const RLIMIT_NOFILE: i32 = 7;
    let mut lim = [0u64; 2];
    // SAFETY: Linux's `struct rlimit` is two u64 (soft, hard), read and written here only.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut lim) == 0 && lim[0] < lim[1] {
            lim[0] = lim[1];
            setrlimit(RLIMIT_NOFILE, &lim);
        }
    }
}

/// Asks for an 8 MiB receive buffer (SO_RCVBUFFORCE as root, else SO_RCVBUF), so the
/// sink's own buffer is not what limits a packet-rate measurement.
fn big_rcvbuf(s: &UdpSocket) {
    const SOL_SOCKET: i32 = 1;
    const SO_RCVBUF: i32 = 8;
    const SO_RCVBUFFORCE: i32 = 33;
    let size: i32 = 8 << 20;
    for opt in [SO_RCVBUFFORCE, SO_RCVBUF] {
        // SAFETY: a valid socket fd and a pointer to an i32 of the given length.
        let r = unsafe {
            setsockopt(
                s.as_raw_fd(),
                SOL_SOCKET,
                opt,
                (&size as *const i32).cast(),
                4,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// A UDP sink that counts datagrams.
fn udp_sink() -> (u16, Arc<AtomicU64>) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("udp sink");
    big_rcvbuf(&s);
    let port = s.local_addr().expect("sink addr").port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while s.recv(&mut buf).is_ok() {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    (port, count)
}

/// The floor of HTTP/1.1 on this machine: answers every request `200 {"status":"ok"}`
/// with keep-alive, reading the body by Content-Length; no store behind it.
fn http_floor() -> u16 {
    let l = listener("http floor");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut w = s;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if !first {
                            if let Some((k, v)) = line.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    len = v.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        first = false;
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let resp = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

// ---------------------------------------------------------------- stunfwd

struct Tools {
    stunfwd: PathBuf,
    lib: PathBuf,
    /// `libstunfwd.so` built with `--no-default-features` (no rendezvous server).
    lib_lean: Result<PathBuf, String>,
    dumbpipe: Result<PathBuf, String>,
    /// A Python interpreter that imports `stunfwd` (the burst rows under the binding).
    python: Result<PathBuf, String>,
    iperf3: Result<PathBuf, String>,
    socat: Result<PathBuf, String>,
    wrk: Result<PathBuf, String>,
    work: PathBuf,
    quick: bool,
}

struct Signal {
    proc: Proc,
    port: u16,
    url: String,
    stun: String,
}

/// The bench's own in-process rendezvous server (no per-client rate limit).
fn start_unlimited_signal() -> Res<Signal> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut proc = Proc::spawn(
        "rendezvous (unlimited)",
        Command::new(exe).arg("--serve-signal"),
    )?;
    let (_, stun) = proc.wait_line("stun on", Duration::from_secs(10))?;
    let stun = stun.trim_start_matches("stun on ").trim().to_owned();
    let (_, line) = proc.wait_line("rendezvous on", Duration::from_secs(10))?;
    let url = line.trim_start_matches("rendezvous on ").trim().to_owned();
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in {url}"))?;
    Ok(Signal {
        proc,
        port,
        url,
        stun,
    })
}

fn start_signal(t: &Tools) -> Res<Signal> {
    let port = free_port();
    let stun = format!("127.0.0.1:{}", free_udp_port());
    let mut proc = Proc::spawn(
        "stunfwd signal",
        Command::new(&t.stunfwd).args([
            "--log",
            "warn",
            "signal",
            "--http",
            &format!("127.0.0.1:{port}"),
            "--stun",
            &stun,
            // Every peer of the bench is 127.0.0.1: the per-address limits (20/s, 100
            // long-polls) would throttle them as one client. After 8 of the 20
            // time-to-connected runs, each connect waited out a 429 (0.5-1 s).
            "--rate-per-ip",
            "0",
            "--max-polls-per-ip",
            "0",
        ]),
    )?;
    proc.wait_line("rendezvous on", Duration::from_secs(10))?;
    Ok(Signal {
        proc,
        port,
        url: format!("http://127.0.0.1:{port}/"),
        stun,
    })
}

static ROOM: AtomicU64 = AtomicU64::new(0);

struct Tunnel {
    server: Proc,
    client: Proc,
    /// When both processes had been spawned.
    started: Instant,
}

/// Starts a server and a client `stunfwd run` with `mappings` (`tcp:LOCAL:REMOTE`...).
fn start_tunnel(t: &Tools, sig: &Signal, mappings: &[String], wait: bool) -> Res<Tunnel> {
    start_tunnel_with(t, sig, mappings, wait, serde_json::Value::Null)
}

/// What runs each peer of a tunnel.
#[derive(Clone, Copy)]
enum Peers<'a> {
    /// `stunfwd run CONFIG`.
    Cli,
    /// `bench/py_peer.py CONFIG` under this Python: the library under the binding.
    Python(&'a Path),
}

/// [`start_tunnel`] with its peers run by `peers`.
fn start_tunnel_by(t: &Tools, sig: &Signal, mappings: &[String], peers: Peers<'_>) -> Res<Tunnel> {
    start_tunnel_full(t, sig, mappings, true, serde_json::Value::Null, peers)
}

/// [`start_tunnel`] with a `performance` object in both configs (`Null`: none).
fn start_tunnel_with(
    t: &Tools,
    sig: &Signal,
    mappings: &[String],
    wait: bool,
    performance: serde_json::Value,
) -> Res<Tunnel> {
    start_tunnel_full(t, sig, mappings, wait, performance, Peers::Cli)
}

fn start_tunnel_full(
    t: &Tools,
    sig: &Signal,
    mappings: &[String],
    wait: bool,
    performance: serde_json::Value,
    peers: Peers<'_>,
) -> Res<Tunnel> {
    let room = format!(
        "bench-{}-{}",
        std::process::id(),
        ROOM.fetch_add(1, Ordering::Relaxed)
    );
    let write = |mode: &str, maps: &[String]| -> Res<PathBuf> {
        let mut v = serde_json::json!({
            "mode": mode, "room": room, "secret": "bench secret",
            "signalUrl": sig.url, "stunServers": [sig.stun], "bind": "127.0.0.1:0",
            "mappings": maps,
        });
        if !performance.is_null() {
            v["performance"] = performance.clone();
        }
        let p = t.work.join(format!("{room}-{mode}.json"));
        std::fs::write(&p, v.to_string()).map_err(|e| e.to_string())?;
        Ok(p)
    };
    let (sp, cp) = (write("server", &[])?, write("client", mappings)?);
    // STUNFWD_BENCH_LOG=info (or debug) to see more of the peers when a row fails.
    let level = std::env::var("STUNFWD_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let run = |p: &Path| match peers {
        Peers::Cli => {
            let mut c = Command::new(&t.stunfwd);
            c.args(["--log", &level, "run"]).arg(p);
            c
        }
        Peers::Python(python) => {
            let mut c = Command::new(python);
            c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("py_peer.py"))
                .arg(p);
            c
        }
    };
    let started = Instant::now();
    let server = Proc::spawn("stunfwd server", &mut run(&sp))?;
    let client = Proc::spawn("stunfwd client", &mut run(&cp))?;
    let mut tunnel = Tunnel {
        server,
        client,
        started,
    };
    if wait {
        tunnel
            .server
            .wait_line("state: connected", Duration::from_secs(20))?;
        tunnel
            .client
            .wait_line("state: connected", Duration::from_secs(20))?;
    }
    Ok(tunnel)
}

// ---------------------------------------------------------------- dumbpipe

struct Dumbpipe {
    listen: Proc,
    connect: Proc,
    started: Instant,
}

const IROH_SECRET: &str = "6b9f1f2a0c1d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdde";

/// A ticket for a listener with our fixed secret key on `port`, so that later runs can
/// start both sides at once (dumbpipe prints its ticket only after its relay wait).
fn dumbpipe_ticket(bin: &Path, port: u16) -> Res<String> {
    let mut l = Proc::spawn(
        "dumbpipe listen-tcp",
        Command::new(bin)
            .env("IROH_SECRET", IROH_SECRET)
            .args(["listen-tcp", "--host", "127.0.0.1:9"])
            .args(["--ipv4-addr", &format!("127.0.0.1:{port}")]),
    )?;
    let (_, line) = l.wait_line("dumbpipe connect-tcp", Duration::from_secs(30))?;
    line.split_whitespace()
        .find(|w| w.starts_with("endpoint"))
        .map(str::to_owned)
        .ok_or_else(|| format!("no ticket in `{line}`"))
}

fn start_dumbpipe(bin: &Path, ticket: &str, qport: u16, target: u16, local: u16) -> Res<Dumbpipe> {
    let started = Instant::now();
    let listen = Proc::spawn(
        "dumbpipe listen-tcp",
        Command::new(bin)
            .env("IROH_SECRET", IROH_SECRET)
            .args(["listen-tcp", "--host", &format!("127.0.0.1:{target}")])
            .args(["--ipv4-addr", &format!("127.0.0.1:{qport}")]),
    )?;
    let connect = Proc::spawn(
        "dumbpipe connect-tcp",
        Command::new(bin).args([
            "connect-tcp",
            "--addr",
            &format!("127.0.0.1:{local}"),
            ticket,
        ]),
    )?;
    Ok(Dumbpipe {
        listen,
        connect,
        started,
    })
}

/// From `since` until one byte went through `port` to the echo and back.
fn time_to_first_byte(port: u16, since: Instant, timeout: Duration) -> Res<Duration> {
    let deadline = since + timeout;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut b = [0u8; 1];
            if s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() {
                return Ok(since.elapsed());
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
    Err(format!(
        "no byte through 127.0.0.1:{port} within {timeout:?}"
    ))
}

// ---------------------------------------------------------------- measurements

/// Receiver bits/s of an iperf3 run of `secs` with `streams` parallel streams.
fn iperf3(t: &Tools, port: u16, secs: u32, streams: u32) -> Res<f64> {
    let bin = t.iperf3.as_ref().map_err(Clone::clone)?;
    let out = Command::new(bin)
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
        ])
        .args(["-J", "-O", "1", "-P", &streams.to_string()])
        .output()
        .map_err(|e| format!("iperf3: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    if let Some(err) = v.get("error") {
        return Err(format!("iperf3: {err}"));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| "iperf3: no sum_received".to_owned())
}

/// Sends `size`-byte datagrams to `port` at `rate`/s for `dur`; returns (sent, received).
fn udp_trial(
    s: &UdpSocket,
    sink: &AtomicU64,
    size: usize,
    rate: f64,
    dur: Duration,
) -> (u64, u64, f64) {
    let buf = vec![0x5au8; size];
    let before = sink.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let el = start.elapsed();
        if el >= dur {
            break;
        }
        let due = (el.as_secs_f64() * rate) as u64;
        if sent < due {
            for _ in 0..(due - sent).min(256) {
                if s.send(&buf).is_ok() {
                    sent += 1;
                }
            }
        } else {
            // Leave the CPU to the receivers (2 cores): send in small bursts.
            thread::sleep(Duration::from_micros(200));
        }
    }
    let actual = sent as f64 / start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(300));
    (sent, sink.load(Ordering::Relaxed) - before, actual)
}

/// Highest send rate with < 1% loss (doubling, then bisection).
fn udp_max_rate(port: u16, sink: &AtomicU64, size: usize, quick: bool) -> f64 {
    let dur = Duration::from_millis(if quick { 500 } else { 1000 });
    // One source address for every trial: one flow through the tunnel, measured in its
    // steady state.
    let s = UdpSocket::bind("127.0.0.1:0").expect("udp sender");
    s.connect(("127.0.0.1", port)).expect("udp connect");
    // Warm up the flow (the tunnel opens it on the first datagram).
    let before = sink.load(Ordering::Relaxed);
    for _ in 0..50 {
        udp_trial(&s, sink, size, 200.0, Duration::from_millis(50));
        if sink.load(Ordering::Relaxed) > before {
            break;
        }
    }
    let ok = |rate: f64| {
        let (sent, got, actual) = udp_trial(&s, sink, size, rate, dur);
        let loss = 1.0 - got as f64 / sent.max(1) as f64;
        (loss < 0.01, actual)
    };
    let (mut good, mut bad) = (0.0f64, None::<f64>);
    let mut rate = 5_000.0;
    while bad.is_none() && rate <= 4_000_000.0 {
        let (pass, actual) = ok(rate);
        if pass {
            good = good.max(actual);
            if actual < rate * 0.9 {
                return good; // the sender itself is the limit
            }
            rate *= 2.0;
        } else {
            bad = Some(rate);
        }
    }
    if let Some(mut hi) = bad {
        let mut lo = good;
        for _ in 0..if quick { 3 } else { 5 } {
            let mid = (lo + hi) / 2.0;
            let (pass, actual) = ok(mid);
            if pass {
                good = good.max(actual);
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    good
}

/// TCP request/response round trips of 64 bytes through `port`: (p50, p99) in µs.
fn latency(port: u16, n: usize) -> Res<(f64, f64)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let req = [7u8; 64];
    let mut resp = [0u8; 64];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t0 = Instant::now();
        s.write_all(&req).map_err(|e| e.to_string())?;
        s.read_exact(&mut resp).map_err(|e| e.to_string())?;
        if i >= 200 {
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    samples.sort_by(f64::total_cmp);
    Ok((pct(&samples, 0.50), pct(&samples, 0.99)))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One figure of a measured pair, or the pair's error.
fn part(r: &Res<(f64, f64)>, f: fn(&(f64, f64)) -> f64) -> Res<f64> {
    r.as_ref().map(f).map_err(Clone::clone)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    pct(&v, 0.5)
}

/// `wrk` requests/s against `url` with an optional Lua script.
fn wrk(t: &Tools, url: &str, script: Option<&Path>, secs: u32) -> Res<f64> {
    let bin = t.wrk.as_ref().map_err(Clone::clone)?;
    let mut c = Command::new(bin);
    c.args(["-t", "2", "-c", "32", "-d", &format!("{secs}s")]);
    if let Some(s) = script {
        c.arg("-s").arg(s);
    }
    let out = c.arg(url).output().map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let non2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .map(str::trim)
        .map(str::to_owned);
    if let Some(n) = non2xx {
        return Err(format!("wrk: {n}"));
    }
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("wrk: no Requests/sec in {text}"))
}

/// POSTs `n` rooms over one keep-alive connection.
fn post_rooms(port: u16, n: usize, prefix: &str) -> Res<()> {
    post_rooms_timed(port, n, prefix).map(|_| ())
}

/// [`post_rooms`], returning each POST's round trip in µs. The rooms are
/// `{prefix}-0` to `{prefix}-{n-1}`.
fn post_rooms_timed(port: u16, n: usize, prefix: &str) -> Res<Vec<f64>> {
    let mut times = Vec::with_capacity(n);
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    for i in 0..n {
        let body = format!(
            "{{\"room\":\"{prefix}-{i}\",\"role\":\"server\",\"data\":\"{}\"}}",
            "x".repeat(200)
        );
        // One write per request (several small writes would meet Nagle and delayed ACK).
        let req = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let t0 = Instant::now();
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut len = 0usize;
        let mut line = String::new();
        let mut status = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("rendezvous closed the connection".into());
            }
            if status.is_empty() {
                status = line.clone();
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut b = vec![0u8; len];
        r.read_exact(&mut b).map_err(|e| e.to_string())?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        if !status.contains(" 200") {
            return Err(format!("POST room {i}: {}", status.trim()));
        }
    }
    Ok(times)
}

fn stripped_size(path: &Path, work: &Path) -> Res<u64> {
    let name = path
        .file_name()
        .ok_or("no file name")?
        .to_string_lossy()
        .into_owned();
    let copy = work.join(format!("stripped-{name}"));
    std::fs::copy(path, &copy).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = Command::new("strip")
        .arg(&copy)
        .status()
        .map_err(|e| format!("strip: {e}"))?;
    if !st.success() {
        return Err("strip failed".into());
    }
    std::fs::metadata(&copy)
        .map(|m| m.len())
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- the table

#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

struct Row {
    what: String,
    figure: Res<f64>,
    unit: &'static str,
    baseline_name: String,
    baseline: Res<f64>,
    /// (text, met?) when there is a target.
    target: Option<(String, Res<bool>)>,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

fn fmt_val(v: f64, unit: &str) -> String {
    match unit {
        "Gbit/s" => format!("{:.2} Gbit/s", v / 1e9),
        "pkt/s" => format!("{:.0} pkt/s", v),
        "µs" => format!("{:.0} µs", v),
        "ms" => format!("{:.0} ms", v),
        "MB" => format!("{:.1} MB", v / 1e6),
        "KB" => format!("{:.1} KB", v / 1e3),
        "req/s" => format!("{:.0} req/s", v),
        _ if v.fract() == 0.0 => format!("{v:.0} {unit}"),
        _ => format!("{v:.2} {unit}"),
    }
}

impl Table {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        what: &str,
        figure: &Res<f64>,
        unit: &'static str,
        baseline_name: &str,
        baseline: &Res<f64>,
        target: Option<(&str, f64, Better)>,
    ) {
        let target = target.map(|(text, goal, better)| {
            let met = figure.as_ref().map_err(Clone::clone).map(|f| match better {
                Better::Higher => *f >= goal,
                Better::Lower => *f <= goal,
            });
            (text.to_owned(), met)
        });
        self.rows.push(Row {
            what: what.to_owned(),
            figure: figure.clone(),
            unit,
            baseline_name: baseline_name.to_owned(),
            baseline: baseline.clone(),
            target,
        });
    }

    /// Makes the last row's target a ratio of its figure to its baseline.
    fn ratio_target(&mut self, text: &str, goal: f64, better: Better) {
        let Some(r) = self.rows.last_mut() else {
            return;
        };
        let met = match (&r.figure, &r.baseline) {
            (Ok(a), Ok(b)) if *b != 0.0 => Ok(match better {
                Better::Higher => a / b >= goal,
                Better::Lower => a / b <= goal,
            }),
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
            _ => Err("baseline is 0".into()),
        };
        r.target = Some((text.to_owned(), met));
    }

    fn print(&self) -> String {
        let mut out = String::new();
        let header = [
            "measurement",
            "stunfwd",
            "baseline",
            "ratio",
            "target",
            "result",
        ];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                let fig = match &r.figure {
                    Ok(v) => fmt_val(*v, r.unit),
                    Err(e) => format!("not measured: {e}"),
                };
                let base = match &r.baseline {
                    _ if r.baseline_name == "-" => "-".to_owned(),
                    Ok(v) => format!("{} ({})", fmt_val(*v, r.unit), r.baseline_name),
                    Err(e) => format!("{}: not measured: {e}", r.baseline_name),
                };
                let ratio = match (&r.figure, &r.baseline) {
                    (Ok(a), Ok(b)) if *b != 0.0 => format!("{:.2}×", a / b),
                    _ => "-".into(),
                };
                let (target, result) = match &r.target {
                    None => ("-".into(), "-".into()),
                    Some((t, Ok(true))) => (t.clone(), "met".into()),
                    Some((t, Ok(false))) => (t.clone(), "missed".into()),
                    Some((t, Err(_))) => (t.clone(), "not measured".into()),
                };
                [r.what.clone(), fig, base, ratio, target, result]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for c in &cells {
            for (i, s) in c.iter().enumerate() {
                widths[i] = widths[i].max(s.chars().count());
            }
        }
        let line = |out: &mut String, c: &[String]| {
            let _ = write!(out, "|");
            for (i, s) in c.iter().enumerate() {
                let pad = widths[i] - s.chars().count();
                let _ = write!(out, " {s}{} |", " ".repeat(pad));
            }
            let _ = writeln!(out);
        };
        line(&mut out, &header.map(str::to_owned));
        let _ = write!(out, "|");
        for w in widths {
            let _ = write!(out, "{}|", "-".repeat(w + 2));
        }
        let _ = writeln!(out);
        for c in &cells {
            line(&mut out, c);
        }
        out
    }
}

// ---------------------------------------------------------------- main

fn tool(args: &HashMap<String, String>, key: &str, default: &str) -> Result<PathBuf, String> {
    if let Some(why) = args.get(&format!("no-{key}")) {
        return Err(why.clone());
    }
    let p = PathBuf::from(args.get(key).map(String::as_str).unwrap_or(default));
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} not found", p.display()))
    }
}

/// `--serve-signal`: a rendezvous server on a free loopback port without per-client
/// limits; prints `rendezvous on URL` and runs until killed.
fn serve_signal() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stun: std::net::SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let config = stunfwd_core::SignalServerConfig {
        stun: Some(stun),
        rate_per_ip: 0,
        max_polls_per_ip: 0,
        max_connections_per_ip: 0,
        // Room for the long-poll row's 10,000 polls beside the connections that wake
        // them (the defaults are 10,000 each).
        max_polls: 20_000,
        max_connections: 20_000,
        ..stunfwd_core::SignalServerConfig::default()
    };
    let server = rt
        .block_on(stunfwd_core::SignalServer::start(config))
        .expect("rendezvous server");
    println!("stun on {stun}");
    println!("rendezvous on {}", server.url());
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    raise_fd_limit();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--serve-signal") {
        serve_signal();
        return;
    }
    let mut args = HashMap::new();
    let mut i = 0;
    while i < argv.len() {
        let k = argv[i].trim_start_matches("--").to_owned();
        if [
            "quick",
            "udp-only",
            "latency-only",
            "memory-only",
            "polls-only",
            "tcp-only",
        ]
        .contains(&k.as_str())
        {
            args.insert(k, String::new());
            i += 1;
        } else {
            args.insert(k, argv.get(i + 1).cloned().unwrap_or_default());
            i += 2;
        }
    }
    let work = std::env::temp_dir().join(format!("stunfwd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let t = Tools {
        stunfwd: PathBuf::from(args.get("stunfwd").cloned().unwrap_or_default()),
        lib: PathBuf::from(args.get("lib").cloned().unwrap_or_default()),
        lib_lean: args
            .get("lib-lean")
            .map(PathBuf::from)
            .ok_or_else(|| "no --lib-lean (bench/run builds it)".to_owned()),
        dumbpipe: tool(&args, "dumbpipe", ""),
        python: tool(&args, "python", ""),
        iperf3: tool(&args, "iperf3", "/usr/bin/iperf3"),
        socat: tool(&args, "socat", "/usr/bin/socat"),
        wrk: tool(&args, "wrk", "/usr/bin/wrk"),
        work: work.clone(),
        quick: args.contains_key("quick"),
    };
    let table = if let Some(n) = args.get("scale") {
        let n = n.parse().unwrap_or(100);
        let soak = args.get("soak").and_then(|s| s.parse().ok());
        scale::run_scale(&t, n, soak)
    } else if args.contains_key("polls-only") {
        let mut table = Table::default();
        polls::poll_rows(&mut table);
        table
    } else if args.contains_key("tcp-only") {
        tcp_only(&t)
    } else if args.contains_key("memory-only") {
        memory_only(&t)
    } else if args.contains_key("udp-only") || args.contains_key("latency-only") {
        run_only(&t, args.contains_key("udp-only"))
    } else {
        run(&t)
    };
    print!("{}", table.print());
    let _ = std::fs::remove_dir_all(&work);
}

fn step(what: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t0 = START.get_or_init(Instant::now);
    eprintln!("[bench {:>5.1} s] {what}", t0.elapsed().as_secs_f64());
}

/// `--memory-only`: the memory rows (bursts, UDP flows), for trying a change.
fn memory_only(t: &Tools) -> Table {
    let mut table = Table::default();
    match start_signal(t) {
        Ok(sig) => {
            memory::burst_rows(t, &sig, &mut table);
            memory::flow_rows(t, &sig, &mut table);
        }
        Err(e) => table.row("rendezvous", &Err(e), "", "-", &Err("-".into()), None),
    }
    table
}

/// `--tcp-only`: the throughput rows, for trying a change.
fn tcp_only(t: &Tools) -> Table {
    let mut table = Table::default();
    match start_signal(t) {
        Ok(sig) => {
            throughput::tcp_rows(t, &sig, &mut table, &throughput::dumbpipe_ticket(t));
        }
        Err(e) => table.row("rendezvous", &Err(e), "", "-", &Err("-".into()), None),
    }
    table
}

/// `--udp-only` / `--latency-only`: just those rows, for trying a change quickly.
fn run_only(t: &Tools, udp: bool) -> Table {
    let mut table = Table::default();
    let sig = match start_signal(t) {
        Ok(s) => s,
        Err(e) => {
            table.row("rendezvous", &Err(e), "", "-", &Err("-".into()), None);
            return table;
        }
    };
    if udp {
        udp_rows(t, &sig, &mut table);
    } else {
        latency_rows(t, &sig, &mut table, tcp_echo());
    }
    table
}

fn run(t: &Tools) -> Table {
    let mut table = Table::default();
    let sig = match start_signal(t) {
        Ok(s) => s,
        Err(e) => {
            table.row("rendezvous", &Err(e), "", "-", &Err("-".into()), None);
            return table;
        }
    };

    // 1. TCP throughput (one stream and 8) + 5. RSS under load.
    let dp_ticket = throughput::dumbpipe_ticket(t);
    let tput = throughput::tcp_rows(t, &sig, &mut table, &dp_ticket);
    let (tunnel_tput, dp_tput) = (tput.tunnel, tput.dumbpipe);
    let (load_rss, dp_rss) = (tput.tunnel_rss, tput.dumbpipe_rss);

    udp_rows(t, &sig, &mut table);

    // 3. Request/response latency.
    let echo = tcp_echo();
    latency_rows(t, &sig, &mut table, echo);

    // 4. Time to connected (median of 20), and time to first byte, vs dumbpipe.
    step("time to connected");
    let runs = if t.quick { 5 } else { 20 };
    let mut ttc = Vec::new();
    let mut ttfb = Vec::new();
    let mut err = None;
    for _ in 0..runs {
        let local = free_port();
        match start_tunnel(t, &sig, &[format!("tcp:{local}:{echo}")], false).and_then(|mut tun| {
            let fb = time_to_first_byte(local, tun.started, Duration::from_secs(20))?;
            let (a, _) = tun
                .server
                .wait_line("state: connected", Duration::from_secs(20))?;
            let (b, _) = tun
                .client
                .wait_line("state: connected", Duration::from_secs(20))?;
            Ok((a.max(b) - tun.started, fb))
        }) {
            Ok((c, fb)) => {
                ttc.push(c.as_secs_f64() * 1e3);
                ttfb.push(fb.as_secs_f64() * 1e3);
            }
            Err(e) => err = Some(e),
        }
    }
    let to_res = |v: Vec<f64>| {
        if v.is_empty() {
            Err(err.clone().unwrap_or_default())
        } else {
            Ok(median(v))
        }
    };
    let (ttc, ttfb) = (to_res(ttc), to_res(ttfb));
    let dp_runs = if t.quick { 2 } else { 5 };
    let dp_ttfb = dp_ticket.clone().and_then(|(bin, ticket, qport)| {
        let mut v = Vec::new();
        for _ in 0..dp_runs {
            let local = free_port();
            let dp = start_dumbpipe(&bin, &ticket, qport, echo, local)?;
            v.push(
                time_to_first_byte(local, dp.started, Duration::from_secs(30))?.as_secs_f64() * 1e3,
            );
            drop(dp);
            thread::sleep(Duration::from_millis(200));
        }
        Ok(median(v))
    });
    table.row(
        &format!("time to connected, median of {runs}"),
        &ttc,
        "ms",
        "dumbpipe first byte",
        &dp_ttfb,
        Some(("≤ 250 ms", 250.0, Better::Lower)),
    );
    table.row(
        &format!("time to first byte, median (dumbpipe: of {dp_runs})"),
        &ttfb,
        "ms",
        "dumbpipe",
        &dp_ttfb,
        None,
    );

    // Memory after bursts of connections, and per idle UDP flow (#19).
    memory::burst_rows(t, &sig, &mut table);
    memory::flow_rows(t, &sig, &mut table);

    // 5. RSS: idle engine with 10 mappings; each process under load.
    step("rss");
    let maps: Vec<String> = (0..10).map(|_| format!("tcp:0:{echo}")).collect();
    let idle = start_tunnel(t, &sig, &maps, true).map(|tun| {
        thread::sleep(Duration::from_secs(1));
        (
            tun.client.rss_kb() as f64 * 1024.0,
            tun.server.rss_kb() as f64 * 1024.0,
        )
    });
    let dp_idle = dp_ticket.clone().and_then(|(bin, ticket, qport)| {
        let local = free_port();
        let dp = start_dumbpipe(&bin, &ticket, qport, echo, local)?;
        time_to_first_byte(local, dp.started, Duration::from_secs(30))?;
        thread::sleep(Duration::from_secs(1));
        Ok((
            dp.connect.rss_kb() as f64 * 1024.0,
            dp.listen.rss_kb() as f64 * 1024.0,
        ))
    });
    table.row(
        "RSS idle, client engine, 10 mappings",
        &part(&idle, |x| x.0),
        "MB",
        "dumbpipe connect-tcp, 1 pipe",
        &part(&dp_idle, |x| x.0),
        Some(("≤ 6 MB", 6.0e6, Better::Lower)),
    );
    table.row(
        "RSS idle, server engine",
        &part(&idle, |x| x.1),
        "MB",
        "dumbpipe listen-tcp",
        &part(&dp_idle, |x| x.1),
        Some(("≤ 8 MB", 8.0e6, Better::Lower)),
    );
    // The peak over all throughput runs of that process.
    let get = |v: &[(String, Res<f64>)], k: &str| {
        v.iter()
            .filter(|(n, _)| n == k)
            .filter_map(|(_, r)| r.as_ref().ok().copied())
            .reduce(f64::max)
            .ok_or_else(|| "no load run".to_owned())
    };
    let tput_err = |r: Res<f64>, e: &Res<f64>| match e {
        Err(e) => Err(e.clone()),
        Ok(_) => r,
    };
    table.row(
        "peak RSS under iperf3 load, client",
        &tput_err(get(&load_rss, "client"), &tunnel_tput),
        "MB",
        "dumbpipe connect-tcp",
        &tput_err(get(&dp_rss, "connect"), &dp_tput),
        None,
    );
    table.row(
        "peak RSS under iperf3 load, server",
        &tput_err(get(&load_rss, "server"), &tunnel_tput),
        "MB",
        "dumbpipe listen-tcp",
        &tput_err(get(&dp_rss, "listen"), &dp_tput),
        None,
    );

    // 6. Sizes.
    step("sizes");
    let dp_size = t.dumbpipe.clone().and_then(|p| stripped_size(&p, &t.work));
    let size_mb = |p: &Path| stripped_size(p, &t.work).map(|v| v as f64);
    table.row(
        "stripped size, stunfwd binary",
        &size_mb(&t.stunfwd),
        "MB",
        "dumbpipe binary",
        &dp_size.clone().map(|v| v as f64),
        None,
    );
    table.row(
        "stripped size, libstunfwd.so without the rendezvous server",
        &t.lib_lean
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|p| size_mb(p)),
        "MB",
        "dumbpipe binary",
        &dp_size.clone().map(|v| v as f64),
        Some(("≤ 4 MB", 4.0e6, Better::Lower)),
    );
    table.row(
        "stripped size, libstunfwd.so (default: with the rendezvous server)",
        &size_mb(&t.lib),
        "MB",
        "dumbpipe binary",
        &dp_size.map(|v| v as f64),
        None,
    );

    // 7. Rendezvous: POST and GET rates, memory with 10,000 rooms.
    step("rendezvous");
    let floor = http_floor();
    let rv_secs = if t.quick { 3 } else { 5 };
    let post_lua = t.work.join("post.lua");
    let get_lua = t.work.join("get.lua");
    let _ = std::fs::write(
        &post_lua,
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  local body = '{\"room\":\"wrk-' .. (counter % 1000) .. '\",\"role\":\"client\",\"data\":\"' .. string.rep('x', 200) .. '\"}'\n  return wrk.format('POST', '/', {['Content-Type']='application/json'}, body)\nend\n",
    );
    let _ = std::fs::write(
        &get_lua,
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format('GET', '/?room=get-' .. (counter % 100) .. '&role=server')\nend\n",
    );
    let rv = match start_unlimited_signal() {
        Ok(rv) => rv,
        Err(e) => {
            table.row("rendezvous", &Err(e), "", "-", &Err("-".into()), None);
            return table;
        }
    };
    let rv_url = format!("http://127.0.0.1:{}/", rv.port);
    let floor_url = format!("http://127.0.0.1:{floor}/");
    let post = wrk(t, &rv_url, Some(&post_lua), rv_secs);
    let post_floor = wrk(t, &floor_url, Some(&post_lua), rv_secs);
    let get =
        post_rooms(rv.port, 100, "get").and_then(|()| wrk(t, &rv_url, Some(&get_lua), rv_secs));
    let get_floor = wrk(t, &floor_url, Some(&get_lua), rv_secs);
    table.row(
        "rendezvous POST",
        &post,
        "req/s",
        "HTTP floor (std, no store)",
        &post_floor,
        None,
    );
    table.row(
        "rendezvous GET",
        &get,
        "req/s",
        "HTTP floor (std, no store)",
        &get_floor,
        None,
    );
    // A fresh server, so the rooms above do not count.
    drop(rv);
    let mem = start_unlimited_signal().and_then(|s| {
        thread::sleep(Duration::from_millis(300));
        let before = s.proc.rss_kb() as f64 * 1024.0;
        post_rooms(s.port, 10_000, "mem")?;
        thread::sleep(Duration::from_millis(300));
        Ok((s.proc.rss_kb() as f64 * 1024.0, before))
    });
    table.row(
        "rendezvous RSS with 10,000 rooms",
        &part(&mem, |x| x.0),
        "MB",
        "same server, 0 rooms",
        &part(&mem, |x| x.1),
        None,
    );
    polls::poll_rows(&mut table);
    drop(sig);
    // One server peer with 100 clients (bench/scale runs it alone, and the soak).
    table.rows.extend(scale::run_scale(t, 100, None).rows);
    step("done");
    table
}

/// 2. UDP packets per second below 1% loss, 64 and 1,200-byte datagrams.
fn udp_rows(t: &Tools, sig: &Signal, table: &mut Table) {
    for size in [64usize, 1200] {
        step(&format!("udp {size} B"));
        let (sink_port, sink) = udp_sink();
        let direct = Ok(udp_max_rate(sink_port, &sink, size, t.quick));
        let local = free_udp_port();
        let tun = start_tunnel(t, sig, &[format!("udp:{local}:{sink_port}")], true);
        let (rate, cost) = match &tun {
            Ok(tun) => (
                Ok(udp_max_rate(local, &sink, size, t.quick)),
                udp_cpu_cost(local, &sink, size, tun),
            ),
            Err(e) => (Err(e.clone()), Err(e.clone())),
        };
        drop(tun);
        table.row(
            &format!("UDP {size} B datagrams/s, < 1% loss"),
            &rate,
            "pkt/s",
            "direct",
            &direct,
            None,
        );
        table.ratio_target("≥ 0.75× direct", 0.75, Better::Higher);
        table.row(
            &format!("  CPU of both peers per {size} B datagram, at {UDP_COST_RATE} pkt/s"),
            &cost,
            "µs/datagram",
            "-",
            &Err("-".into()),
            None,
        );
    }
}

/// The fixed rate at which [`udp_cpu_cost`] measures: below every peer's limit.
const UDP_COST_RATE: u32 = 40_000;

/// CPU time (user + system) both peers of `tun` spend per datagram they carry, at
/// [`UDP_COST_RATE`] for 3 s: a figure that a busy machine disturbs less than a rate.
fn udp_cpu_cost(port: u16, sink: &AtomicU64, size: usize, tun: &Tunnel) -> Res<f64> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    s.connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    udp_trial(&s, sink, size, 1000.0, Duration::from_millis(200));
    let pids = [tun.client.child.id(), tun.server.child.id()];
    let cpu = || pids.iter().map(|p| scale::cpu_secs(*p)).sum::<f64>();
    let c0 = cpu();
    let (_, got, _) = udp_trial(&s, sink, size, UDP_COST_RATE.into(), Duration::from_secs(3));
    let used = cpu() - c0;
    if got == 0 {
        return Err("no datagram arrived".into());
    }
    Ok(used / got as f64 * 1e6)
}

/// 3. TCP request/response latency through the tunnel and directly.
fn latency_rows(t: &Tools, sig: &Signal, table: &mut Table, echo: u16) {
    step("latency");
    let n = if t.quick { 2000 } else { 10_000 };
    let direct = latency(echo, n);
    let local = free_port();
    let tun = start_tunnel(t, sig, &[format!("tcp:{local}:{echo}")], true).and_then(|_tun| {
        wait_tcp(local, Duration::from_secs(5))?;
        latency(local, n)
    });
    let added = match (&tun, &direct) {
        (Ok(a), Ok(b)) => Ok(a.0 - b.0),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    };
    table.row(
        "TCP 64 B request/response p50",
        &part(&tun, |x| x.0),
        "µs",
        "direct",
        &part(&direct, |x| x.0),
        None,
    );
    table.row(
        "  added latency at p50 (tunnel − direct)",
        &added,
        "µs",
        "direct p50",
        &part(&direct, |x| x.0),
        Some(("≤ 25 µs", 25.0, Better::Lower)),
    );
    table.row(
        "TCP 64 B request/response p99",
        &part(&tun, |x| x.1),
        "µs",
        "direct",
        &part(&direct, |x| x.1),
        None,
    );
    table.ratio_target("≤ 1.5× direct p99", 1.5, Better::Lower);
}
