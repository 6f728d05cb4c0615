//! The `stunfwd` binary as a user runs it: `signal` and two `run` processes on loopback,
//! JSON logs whose lines carry the room and the peer, `--metrics` serving Prometheus
//! text, and a clear error for a bad `--log` filter.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Proc, BIN};

fn work_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("stunfwd-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_config(dir: &std::path::Path, mode: &str, room: &str, url: &str, stun: &str) -> String {
    let mappings: Vec<String> = if mode == "client" {
        vec!["tcp:127.0.0.1:0:127.0.0.1:9".into()]
    } else {
        vec![]
    };
    let v = serde_json::json!({
        "mode": mode, "room": room, "secret": "cli test secret",
        "signalUrl": url, "stunServers": [stun], "bind": "127.0.0.1:0",
        "mappings": mappings,
    });
    let p = dir.join(format!("{mode}.json"));
    std::fs::write(&p, v.to_string()).unwrap();
    p.to_string_lossy().into_owned()
}

fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn run_with_json_logs_and_metrics() {
    let dir = work_dir();
    let signal = Proc::spawn(&["signal", "--http", "127.0.0.1:0", "--stun", "127.0.0.1:0"]);
    let url = signal
        .wait_line("rendezvous on ")
        .trim_start_matches("rendezvous on ")
        .trim_end_matches('/')
        .to_owned();
    let stun = signal
        .wait_line("stun on ")
        .trim_start_matches("stun on ")
        .to_owned();
    let room = format!("cli-{}", std::process::id());
    let (s_cfg, c_cfg) = (
        write_config(&dir, "server", &room, &url, &stun),
        write_config(&dir, "client", &room, &url, &stun),
    );
    // The server logs in the default text format, the client in JSON.
    let server = Proc::spawn(&["--log", "debug", "run", &s_cfg]);
    let json = ["--log-format", "json", "--log", "debug"];
    let client = Proc::spawn(&[&json[..], &["run", &c_cfg, "--metrics", "127.0.0.1:0"]].concat());
    let metrics = client
        .wait_line("metrics on ")
        .trim_start_matches("metrics on ")
        .to_owned();
    client.wait_line("state: connected");
    server.wait_line("state: connected");

    // Prometheus text from the command-line option.
    let page = http_get(&metrics);
    assert!(
        page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200"),
        "{page}"
    );
    assert!(page.contains("\nstunfwd_connected 1\n"), "{page}");
    assert!(page.contains(&format!("room=\"{room}\"")), "{page}");

    let server_log = server.terminate();
    let client_log = client.terminate();

    // JSON: every line parses; the engine's lines carry the room in their spans, and
    // once connected the tunnel span names the peer.
    let mut in_room = 0;
    let mut with_peer = 0;
    for line in client_log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}"));
        let spans = v["spans"].as_array().cloned().unwrap_or_default();
        in_room += spans.iter().any(|s| s["room"] == room.as_str()) as usize;
        with_peer += spans.iter().any(|s| {
            s["name"] == "tunnel"
                && s["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:"))
        }) as usize;
    }
    assert!(
        in_room >= 3,
        "only {in_room} JSON lines name the room:\n{client_log}"
    );
    assert!(with_peer >= 1, "no JSON line names the peer:\n{client_log}");
    assert!(
        client_log.contains("\"level\":\"DEBUG\""),
        "--log debug printed no debug line:\n{client_log}"
    );

    // Text: spans are printed inline before the message, `engine{room=… mode=…}`, and
    // without colour codes when stderr is not a terminal.
    assert!(
        !server_log.contains('\x1b'),
        "escape codes in piped logs:\n{server_log}"
    );
    let room_field = format!("room={room}");
    assert!(
        server_log
            .lines()
            .filter(|l| l.contains(&room_field))
            .count()
            >= 3,
        "text lines do not name the room:\n{server_log}"
    );
    assert!(
        server_log
            .lines()
            .any(|l| l.contains("tunnel{peer=127.0.0.1:")),
        "no text line names the peer:\n{server_log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_log_filter_is_refused_with_a_clear_error() {
    let out = Command::new(BIN)
        .args(["--log", "stunfwd_core=loud", "run", "/nonexistent.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--log"), "{err}");
    assert!(err.contains("valid:"), "{err}");
}

/// `stunfwd --version` prints the crate's version, which is the workspace's
/// (`ffi/tests/version.rs` checks that every crate takes it, and the other artefacts).
#[test]
fn version_is_the_workspace_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success(), "stunfwd --version: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("stunfwd {}", env!("CARGO_PKG_VERSION"))
    );
}
