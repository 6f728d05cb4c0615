//! Operating the rendezvous server: `/healthz`, `/metrics` (rooms, waiting polls,
//! requests by status), and `stunfwd signal` draining its long-polls on SIGTERM.

#![allow(clippy::unwrap_used)]

mod signal_support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use signal_support::{eventually, Daemon};
use stunfwd_core::signal::{SignalServer, SignalServerConfig};
use tokio::time::Instant;

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn health_and_metrics() {
    let srv = SignalServer::start(SignalServerConfig::default())
        .await
        .unwrap();
    let url = srv.url();
    let health = http().get(format!("{url}healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    let post = serde_json::json!({"room": "m", "role": "client", "data": "x"}).to_string();
    assert_eq!(
        http().post(&url).body(post).send().await.unwrap().status(),
        200
    );
    for _ in 0..2 {
        let resp = http()
            .get(format!("{url}?room=m&role=server"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
    }
    assert_eq!(
        http().put(&url).send().await.unwrap().status(),
        405,
        "counted too"
    );
    let waiting = tokio::spawn(
        http()
            .get(format!("{url}?room=m&role=server&wait=10"))
            .send(),
    );
    assert!(eventually(Duration::from_secs(2), || srv.waiting_polls() == 1).await);

    let resp = http().get(format!("{url}metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.unwrap();
    for line in [
        "stunfwd_signal_rooms 1\n",
        "stunfwd_signal_waiting_polls 1\n",
        "stunfwd_signal_requests_total{status=\"200\"} 2\n", // POST and /healthz
        "stunfwd_signal_requests_total{status=\"404\"} 2\n",
        "stunfwd_signal_requests_total{status=\"405\"} 1\n",
        "# TYPE stunfwd_signal_requests_total counter\n",
        "stunfwd_stun_binding_answered_total 0\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // A mailbox may live on any path, /metrics included, when it names a room.
    let mailbox = http()
        .get(format!("{url}metrics?room=m&role=client"))
        .send()
        .await
        .unwrap();
    assert_eq!(mailbox.text().await.unwrap(), "x");

    srv.stop(Duration::from_secs(2)).await;
    assert_eq!(waiting.await.unwrap().unwrap().status(), 404);
}

/// The `stunfwd` binary of this workspace, if it has been built.
fn stunfwd_binary() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/stunfwd");
    bin.exists().then_some(bin)
}

#[tokio::test]
async fn sigterm_drains_long_polls_and_exits() {
    let Some(bin) = stunfwd_binary() else {
        println!("SKIPPED: target/debug/stunfwd is not built (cargo build -p stunfwd-cli)");
        return;
    };
    let child = Command::new(bin)
        .args(["signal", "--http", "127.0.0.1:0", "--stun", "127.0.0.1:0"])
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Daemon::new(child);
    let stdout = daemon.child().stdout.take().unwrap();
    // Read the URL, then keep draining stdout: the server prints on shutdown too.
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("rendezvous on ") {
                let _ = url_tx.send(url.to_owned());
            }
        }
    });
    let url = tokio::task::spawn_blocking(move || url_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the server prints its URL");

    let poll = tokio::spawn(
        http()
            .get(format!("{url}?room=term&role=server&wait=25"))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let resp = poll.await.unwrap().unwrap();
    assert_eq!(resp.status(), 404, "the long-poll is answered at once");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = daemon.wait_exit(Duration::from_secs(5));
        (status, daemon)
    })
    .await
    .unwrap()
    .0
    .expect("exits after draining");
    assert!(status.success(), "{status:?}");
}
