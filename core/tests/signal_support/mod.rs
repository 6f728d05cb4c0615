//! Helpers for the rendezvous-server tests: throwaway `redis-server` and `php -S`
//! processes on loopback (killed by `Drop`, so a failing test leaves none behind), a
//! temporary directory, and raw HTTP over a TCP socket for requests that well-behaved
//! clients cannot send.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "stunfwd-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) on drop.
pub struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> Daemon {
        Daemon { child }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child, e.g. to take its output pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits up to `limit` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `program` is on the PATH.
pub fn installed(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to `limit` until `check` is true.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    check()
}

/// [`wait_until`] for async tests: sleeps on the runtime instead of blocking it.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    check()
}

/// A `redis-server` on 127.0.0.1 with no persistence, in its own temp dir.
pub struct Redis {
    pub port: u16,
    daemon: Option<Daemon>,
    dir: TempDir,
}

impl Redis {
    /// Starts one, or prints `SKIPPED: ...` and returns `None` when redis-server is not
    /// installed.
    pub fn start() -> Option<Redis> {
        if !installed("redis-server") {
            println!("SKIPPED: redis-server is not installed (Debian package `redis-server`)");
            return None;
        }
        let mut redis = Redis {
            port: 0,
            daemon: None,
            dir: TempDir::new("redis"),
        };
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn() {
                return Some(redis);
            }
        }
        panic!(
            "redis-server did not start (see {})",
            redis.dir.path().display()
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning", "--logfile"])
            .arg(self.dir.path().join("redis.log"))
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child };
        let port = self.port;
        let up = wait_until(Duration::from_secs(5), || {
            daemon.alive() && redis_cmd(port, "PING").as_deref() == Some("+PONG")
        });
        self.daemon = Some(daemon);
        up
    }

    /// Kills the server (the store becomes unreachable).
    pub fn kill(&mut self) {
        self.daemon = None;
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            wait_until(Duration::from_secs(5), || self.spawn()),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// One inline command, e.g. `PTTL key`; the first line of the reply.
    pub fn cmd(&self, command: &str) -> Option<String> {
        redis_cmd(self.port, command)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.daemon = None;
    }
}

fn redis_cmd(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    Some(text.lines().next().unwrap_or("").to_owned())
}

/// PHP's built-in web server serving `core/tests/php/` on 127.0.0.1 (both of the Go
/// tool's mailboxes), with their state files in a temp dir.
pub struct Php {
    pub port: u16,
    _daemon: Daemon,
    _dir: TempDir,
}

impl Php {
    /// Starts one, or prints `SKIPPED: ...` and returns `None` when php is not
    /// installed.
    pub fn start() -> Option<Php> {
        if !installed("php") {
            println!("SKIPPED: php is not installed (Debian package `php-cli`)");
            return None;
        }
        // Through the workspace root, so that other crates' tests can include this file.
        let docroot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/php");
        let dir = TempDir::new("php");
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new("php")
                .arg("-S")
                .arg(format!("127.0.0.1:{port}"))
                .arg("-t")
                .arg(&docroot)
                .env("STUNFWD_MAILBOX_FILE", dir.path().join("mailbox.json"))
                .env(
                    "STUNFWD_ENHANCED_MAILBOX_FILE",
                    dir.path().join("enhanced.json"),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut daemon = Daemon { child };
            let up = wait_until(Duration::from_secs(5), || {
                daemon.alive()
                    && TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_ok()
            });
            if up {
                return Some(Php {
                    port,
                    _daemon: daemon,
                    _dir: dir,
                });
            }
        }
        panic!("php -S did not start");
    }

    /// The mailbox URL, as a deployment of the Go tool's server would have it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/signaling_server.php", self.port)
    }

    /// The URL of the Go tool's enhanced mailbox (JSON store with versions, room-wide
    /// DELETE, expiry; see `core/tests/php/signaling_server_enhanced.php`).
    pub fn enhanced_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/signaling_server_enhanced.php",
            self.port
        )
    }
}

/// A raw HTTP exchange: writes `request` and reads until the server closes the
/// connection or `limit` passes. Returns the status (0 when none came) and the whole
/// answer.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(request);
    let text = read_to_close(&mut s, limit);
    (status_of(&text), text)
}

/// Reads until EOF, an error, or `limit`.
pub fn read_to_close(s: &mut TcpStream, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of an HTTP/1.1 answer's first line; 0 when there is none.
pub fn status_of(text: &str) -> u16 {
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}
