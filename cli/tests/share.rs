//! `stunfwd expose` / `stunfwd connect` (issue #18): the whole set-up is one token.
//! The real binary, with `stunfwd signal` as the rendezvous: `expose` prints a token
//! (never in its logs), `connect TOKEN` opens the ports asked for, and TCP and UDP
//! arrive intact; a bad or truncated token is refused with the part that is wrong.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use support::{Proc, BIN};

fn listen_addr(line: &str) -> SocketAddr {
    line.rsplit("listening on ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn expose_and_connect_with_a_token() {
    let (tcp, udp) = (common::tcp_echo(), common::udp_echo());
    let signal = Proc::spawn(&["signal", "--http", "127.0.0.1:0", "--stun", "127.0.0.1:0"]);
    let url = signal
        .wait_line("rendezvous on ")
        .trim_start_matches("rendezvous on ")
        .to_owned();
    let stun = signal
        .wait_line("stun on ")
        .trim_start_matches("stun on ")
        .to_owned();
    let tcp_service = format!("tcp:{}", tcp.port());
    let udp_service = format!("udp:{}", udp.port());
    let expose = Proc::spawn(&[
        "expose",
        "--signal",
        &url,
        "--stun",
        &stun,
        "--bind",
        "127.0.0.1:0",
        &tcp_service,
        &udp_service,
    ]);
    let warning = expose.wait_line("share token");
    assert!(warning.contains("holds the secret"), "{warning}");
    let token = expose
        .wait_line("token ")
        .trim_start_matches("token ")
        .to_owned();
    assert!(token.starts_with("stunfwd1."), "{token}");

    let tcp_port = format!("0:{}", tcp.port());
    let udp_port = format!("0:{}/udp", udp.port());
    let connect = Proc::spawn(&[
        "connect",
        &token,
        &tcp_port,
        &udp_port,
        "--bind",
        "127.0.0.1:0",
    ]);
    let tcp_local = listen_addr(&connect.wait_line("mapping tcp:"));
    let udp_local = listen_addr(&connect.wait_line("mapping udp:"));
    connect.wait_line("state: connected");

    let data = common::pattern(1 << 20, 3);
    let mut s = TcpStream::connect(tcp_local).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sent = data.clone();
    let w = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    w.join().unwrap();
    assert!(back == data, "TCP data changed");
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = None;
    for _ in 0..20 {
        u.send_to(b"ping through a token", udp_local).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = u.recv_from(&mut buf) {
            got = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(got.as_deref(), Some(&b"ping through a token"[..]));

    let (client_out, client_err) = connect.terminate_with_stdout();
    let (server_out, server_err) = expose.terminate_with_stdout();
    // The token (and the secret in it) is printed once, on stdout, and never logged.
    let secret_part = token.split('.').nth(1).unwrap();
    for (what, text) in [
        ("client stderr", client_err.as_str()),
        ("server stderr", server_err.as_str()),
        ("client stdout", &client_out.join("\n")),
    ] {
        assert!(!text.contains(secret_part), "{what} holds the token");
    }
    assert_eq!(
        server_out
            .iter()
            .filter(|l| l.contains(secret_part))
            .count(),
        1,
        "the token is printed once"
    );
    drop(signal);
}

#[test]
fn a_bad_token_or_port_is_refused_with_what_is_wrong() {
    // A token needs a rendezvous only when used: make one against a fake URL.
    let expose = Proc::spawn(&[
        "expose",
        "--signal",
        "http://127.0.0.1:9/",
        "--stun",
        "127.0.0.1:9",
        "--bind",
        "127.0.0.1:0",
        "tcp:22",
    ]);
    let token = expose
        .wait_line("token ")
        .trim_start_matches("token ")
        .to_owned();
    drop(expose);
    assert!(token.starts_with("stunfwd1."), "{token}");
    let cases = [
        // Ten characters lost from the middle of the body.
        (format!("{}{}", &token[..20], &token[30..]), "check"),
        (
            token[..token.rfind('.').unwrap()].to_owned(),
            "dot-separated part",
        ),
        (token.replacen("stunfwd1", "stunfwd9", 1), "version `9`"),
        ("ssh://example".to_owned(), "not a stunfwd share token"),
    ];
    for (bad, expected) in cases {
        let out = Command::new(BIN)
            .args(["connect", &bad, "2222:22"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(expected), "{bad}: {err}");
    }
    // What copying adds (a line break where it wrapped, quotes, the `token ` label)
    // is not a bad token: these get as far as the ports, where `/sctp` is refused,
    // after `tcp:2222:22` (the engine's spelling) was taken.
    let (a, b) = token.split_at(50);
    for copied in [
        format!("{a}\n{b}"),
        format!("\"{token}\""),
        format!("token {token}"),
    ] {
        let out = Command::new(BIN)
            .args(["connect", &copied, "tcp:2222:22", "2222:22/sctp"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{copied:?}: {err}");
        assert!(
            err.contains("`2222:22/sctp`") && !err.contains("token"),
            "{copied:?}: {err}"
        );
    }
    let out = Command::new(BIN)
        .args(["connect", &token, "2222:22/sctp"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/sctp") && err.contains("valid: LOCAL:REMOTE"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["expose", "--signal", "http://127.0.0.1:9/", "ssh"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("service `ssh`"), "{err}");
    let out = Command::new(BIN)
        .env_remove("STUNFWD_SIGNAL")
        .args(["expose", "tcp:22"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--signal URL or set STUNFWD_SIGNAL"), "{err}");
}
