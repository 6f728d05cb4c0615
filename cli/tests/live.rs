//! The Go tool's habits (issue #18), with the real binary: `stunfwd run` finds
//! `config.yml` / `config.yaml` / `config.json` in the current directory and takes
//! `--config PATH`; SIGHUP or a change to the file applies the mapping differences
//! live, keeping the connections of unchanged mappings, and a broken file leaves the
//! running config in place; on a terminal the `mapping>` prompt adds, lists and
//! removes mappings (driven through a pseudo-terminal).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stunfwd_core::Engine;
use support::{Proc, BIN};

fn client_json(rv: &common::Rendezvous, room: &str, mappings: &[String]) -> String {
    serde_json::json!({
        "mode": "client", "room": room, "secret": "live secret",
        "signalUrl": rv.url, "stunServers": [rv.stun.to_string()],
        "bind": "127.0.0.1:0", "mappings": mappings,
    })
    .to_string()
}

fn server(rv: &common::Rendezvous, room: &str) -> Engine {
    Engine::start(rv.config("server", room, "live secret", &[])).unwrap()
}

fn listen_addr(line: &str) -> SocketAddr {
    line.rsplit("listening on ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Writes `msg` and reads the echo back.
fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

#[test]
fn run_finds_config_yml_here_and_takes_config_path() {
    let rv = common::Rendezvous::start();
    let room = common::room();
    let echo_addr = common::tcp_echo();
    let _server = server(&rv, &room);
    let dir = tempfile::tempdir().unwrap();
    // Nothing here: the error names the files looked for.
    let out = Command::new(BIN)
        .arg("run")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("config.yml, config.yaml, config.json"),
        "{err}"
    );
    // YAML is a superset of JSON: the JSON text is a valid config.yml.
    let json = client_json(&rv, &room, &[format!("tcp:0:{}", echo_addr.port())]);
    std::fs::write(dir.path().join("config.yml"), &json).unwrap();
    let found = Proc::spawn_in(&["run"], dir.path());
    let mut s = connect(listen_addr(&found.wait_line("mapping tcp:")));
    found.wait_line("state: connected");
    echo(&mut s, b"found config.yml");
    drop(s);
    found.terminate();
    // --config PATH, from anywhere.
    let other = tempfile::tempdir().unwrap();
    let path = other.path().join("peer.json");
    std::fs::write(&path, &json).unwrap();
    let given = Proc::spawn(&["run", "--config", path.to_str().unwrap()]);
    let mut s = connect(listen_addr(&given.wait_line("mapping tcp:")));
    given.wait_line("state: connected");
    echo(&mut s, b"--config works");
    drop(s);
    given.terminate();
}

#[test]
fn sighup_and_file_changes_apply_mapping_differences_live() {
    let rv = common::Rendezvous::start();
    let room = common::room();
    let (one, two) = (common::tcp_echo(), common::tcp_echo());
    let _server = server(&rv, &room);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.json");
    let first = format!("tcp:0:{}", one.port());
    let second = format!("tcp:0:{}", two.port());
    std::fs::write(&path, client_json(&rv, &room, std::slice::from_ref(&first))).unwrap();
    let peer = Proc::spawn(&["run", path.to_str().unwrap()]);
    let a = listen_addr(&peer.wait_line("mapping tcp:"));
    peer.wait_line("state: connected");
    let mut live = connect(a);
    echo(&mut live, b"before the reload");

    // A second mapping, applied on SIGHUP: the live connection of the first goes on.
    std::fs::write(
        &path,
        client_json(&rv, &room, &[first.clone(), second.clone()]),
    )
    .unwrap();
    let pid = libc::pid_t::try_from(peer.pid()).unwrap();
    // SAFETY: kill(2) on our own child, still running.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let added = peer.wait_line("mapping tcp:");
    let b = listen_addr(&added);
    let summary = peer.wait_line("config reloaded");
    assert!(
        summary.contains("1 mapping(s) added, 0 removed, 1 unchanged"),
        "{summary}"
    );
    echo(&mut live, b"after the reload, same connection");
    let mut fresh = connect(b);
    echo(&mut fresh, b"through the new mapping");
    drop(fresh);

    // A broken file: reported, the running config stays.
    std::fs::write(&path, "{ not a config").unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let failed = peer.wait_line("config reload failed");
    assert!(failed.contains("the running config stays"), "{failed}");
    echo(&mut live, b"still here");
    echo(&mut connect(b), b"and the second mapping too");

    // A change to the file alone (no signal): the second mapping goes.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&path, client_json(&rv, &room, std::slice::from_ref(&first))).unwrap();
    let summary = peer.wait_line("config reloaded");
    assert!(
        summary.contains("0 mapping(s) added, 1 removed, 1 unchanged"),
        "{summary}"
    );
    assert!(
        TcpStream::connect(b).is_err(),
        "the removed mapping still listens"
    );
    echo(
        &mut live,
        b"the first mapping's connection outlived every reload",
    );
    drop(live);
    peer.terminate();
}

/// A child process killed when dropped, also when a test fails half-way (none is left
/// running behind a failed assertion).
struct Reaped(std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A pseudo-terminal: the child's stdin, stdout and stderr; we read and write the
/// other end.
struct Pty {
    master: std::fs::File,
    out: Arc<Mutex<String>>,
}

impl Pty {
    fn spawn(args: &[&str]) -> (Pty, Reaped) {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty(3) with out-pointers to two ints; NULL name, termios, winsize.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty");
        // SAFETY: both descriptors were just opened by openpty and are owned here.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .unwrap();
        let master = std::fs::File::from(master);
        let out = Arc::new(Mutex::new(String::new()));
        let (mut reader, kept) = (master.try_clone().unwrap(), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (Pty { master, out }, Reaped(child))
    }

    /// Waits for `text` after `from` (a byte offset) and returns all the output after
    /// `from` (the terminal echoes what we type, too).
    fn wait(&self, from: usize, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.out.lock().unwrap().clone();
            let after = &out[from.min(out.len())..];
            if after.contains(text) {
                return after.to_owned();
            }
            assert!(Instant::now() < deadline, "no {text:?} in {out:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn len(&self) -> usize {
        self.out.lock().unwrap().len()
    }

    fn send(&mut self, line: &str) -> usize {
        let at = self.len();
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        at
    }
}

#[test]
fn the_mapping_prompt_adds_lists_and_removes_on_a_terminal() {
    let rv = common::Rendezvous::start();
    let room = common::room();
    let (one, two) = (common::tcp_echo(), common::tcp_echo());
    let _server = server(&rv, &room);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.json");
    std::fs::write(
        &path,
        client_json(&rv, &room, &[format!("tcp:0:{}", one.port())]),
    )
    .unwrap();
    let (mut pty, mut child) = Pty::spawn(&["run", path.to_str().unwrap()]);
    pty.wait(0, "mapping> ");
    pty.wait(0, "state: connected");

    let at = pty.send(&format!("add 0:{}", two.port()));
    pty.wait(at, "added 2: listening on ");
    // The whole line is there once the next prompt is.
    let added = pty.wait(at, "mapping> ");
    let line = added.lines().find(|l| l.contains("added 2")).unwrap();
    let b: SocketAddr = line
        .rsplit("listening on ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    echo(&mut connect(b), b"added at the prompt");

    let at = pty.send("list");
    let listed = pty.wait(at, "mapping> ");
    assert!(
        listed.contains(&format!(":{}  listening on", one.port())),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("2  tcp:127.0.0.1:0:127.0.0.1:{}", two.port())),
        "{listed}"
    );

    let at = pty.send("add 2222:nonsense/sctp");
    let refused = pty.wait(at, "error: ");
    assert!(refused.contains("/sctp"), "{refused}");

    let at = pty.send("remove 2");
    pty.wait(at, "removed 2");
    assert!(
        TcpStream::connect(b).is_err(),
        "the removed mapping still listens"
    );

    let at = pty.send("remove");
    pty.wait(at, "error: remove what?");

    // The engine's spelling, as `list` shows it, is taken at the prompt and by
    // `connect` alike.
    let at = pty.send(&format!("add tcp:0:{}", two.port()));
    pty.wait(at, "listening on ");

    let at = pty.send("help");
    pty.wait(at, "remove ID|SPEC");
    pty.send("quit");
    wait_exit(&mut child, "quit");
    pty.wait(0, "stopping");
}

fn wait_exit(child: &mut std::process::Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "{what} did not stop the process");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{what}: {status}");
}

/// Ctrl-D at the prompt ends the commands, not the tunnel, and says so.
#[test]
fn ctrl_d_at_the_prompt_says_the_mappings_keep_running() {
    let rv = common::Rendezvous::start();
    let room = common::room();
    let one = common::tcp_echo();
    let _server = server(&rv, &room);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.json");
    std::fs::write(
        &path,
        client_json(&rv, &room, &[format!("tcp:0:{}", one.port())]),
    )
    .unwrap();
    let (mut pty, mut child) = Pty::spawn(&["run", path.to_str().unwrap()]);
    pty.wait(0, "mapping> ");
    let at = pty.len();
    pty.master.write_all(b"\x04").unwrap();
    pty.wait(at, "Ctrl-C stops stunfwd");
    assert!(child.try_wait().unwrap().is_none(), "Ctrl-D stopped it");
    // SAFETY: kill(2) on the child this test spawned.
    unsafe { libc::kill(libc::pid_t::try_from(child.id()).unwrap(), libc::SIGTERM) };
    wait_exit(&mut child, "SIGTERM");
}

/// On a terminal `expose` draws a live status line (state, clients, bytes/s); piped,
/// `connect` prints plain lines only; `stunfwd status ADDR` reads the server's stats
/// from its metrics address and lists its client.
#[test]
fn a_status_line_on_a_terminal_and_stunfwd_status() {
    let rv = common::Rendezvous::start();
    let echo_addr = common::tcp_echo();
    let stun = rv.stun.to_string();
    let service = format!("tcp:{}", echo_addr.port());
    let (pty, mut child) = Pty::spawn(&[
        "expose",
        "--signal",
        &rv.url,
        "--stun",
        &stun,
        "--metrics",
        "127.0.0.1:0",
        "--bind",
        "127.0.0.1:0",
        &service,
    ]);
    let out = pty.wait(0, "metrics on http://");
    let metrics: SocketAddr = out
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split("/metrics").next())
        .unwrap()
        .parse()
        .unwrap();
    let token = pty
        .wait(0, "on the client:")
        .lines()
        .find_map(|l| l.trim().strip_prefix("token ").map(str::to_owned))
        .unwrap();
    // The status line is redrawn in place (carriage return, erase line).
    pty.wait(0, "\r\x1b[2Ksignaling | 0 client(s)");

    let port = format!("0:{}", echo_addr.port());
    let client = Proc::spawn(&["connect", &token, &port, "--bind", "127.0.0.1:0"]);
    let mut s = connect(listen_addr(&client.wait_line("mapping tcp:")));
    client.wait_line("state: connected");
    echo(&mut s, b"seen in the status");
    let line = pty.wait(0, "| 1 client(s) | ");
    assert!(line.contains("connected (lan to"), "{line:?}");

    let out = Command::new(BIN)
        .args(["status", &metrics.to_string()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.starts_with("server in room "), "{report}");
    assert!(report.contains("clients: 1"), "{report}");
    assert!(
        report.contains(": connected (lan to 127.0.0.1:"),
        "{report}"
    );
    // The URL the peer printed is taken too.
    let out = Command::new(BIN)
        .args(["status", "--json", &format!("http://{metrics}/metrics")])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{json}");
    assert!(json.contains("\"mode\":\"server\""), "{json}");
    let (lines, _) = client.terminate_with_stdout();
    assert!(
        lines
            .iter()
            .all(|l| !l.contains('\x1b') && !l.contains('\r')),
        "piped output has no status line: {lines:?}"
    );
    // SAFETY: kill(2) on our own child, still running.
    unsafe { libc::kill(libc::pid_t::try_from(child.id()).unwrap(), libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    // Nothing answers there any more: a clear error, exit code 1.
    let out = Command::new(BIN)
        .args(["status", &metrics.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a peer running with --metrics"), "{err}");
    // Something that takes the connection and never answers: said so, not EAGAIN.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(BIN)
        .args(["status", &silent.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no answer within 5 s"), "{err}");
    let out = Command::new(BIN)
        .args(["status", "nonsense"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HOST:PORT"), "{err}");
}
