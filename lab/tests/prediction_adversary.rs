//! Port prediction (issue #17) against a rendezvous server that drops, delays and
//! reorders the exchange's offers (it cannot forge them: it does not know the secret).
//! Two sequential symmetric NATs, no relay: whatever the rendezvous does to one
//! exchange, the peers must not give up for good (`NoPath`) on a pair they can punch;
//! they try again and connect.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stunfwd_core::status::Technique;
use stunfwd_core::{PathKind, State};
use stunfwd_lab::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the rendezvous in the middle does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Forward,
    /// Answers `200 OK` without forwarding: the offer is lost.
    Drop,
    /// Forwards it this much later.
    Delay(Duration),
}

/// Decides from a request's body (the POST's JSON, empty for a GET).
type Rule = Arc<dyn Fn(&str) -> Action + Send + Sync>;

/// Starts an HTTP proxy in front of the lab's rendezvous server (on its device, port
/// 8081) that applies `rule` to every request; its URL.
async fn rendezvous_in_the_middle(world: &World, rule: Rule) -> anyhow::Result<String> {
    let upstream: SocketAddr = world
        .signal_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()?;
    let listen = SocketAddr::new(upstream.ip(), 8081);
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let _detached = world.server.spawn(move |_| async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn, upstream, rule.clone()));
        }
    })?;
    ready.await??;
    Ok(format!("http://{listen}/"))
}

/// One client connection: requests one after the other (keep-alive), each forwarded
/// on a fresh upstream connection (`connection: close`) unless the rule drops it.
async fn serve(mut conn: tokio::net::TcpStream, upstream: SocketAddr, rule: Rule) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
        let request: Vec<u8> = buf.drain(..head_end + length).collect();
        match rule(&body) {
            Action::Drop => {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                if conn.write_all(ok).await.is_err() {
                    return;
                }
                continue;
            }
            Action::Delay(d) => tokio::time::sleep(d).await,
            Action::Forward => {}
        }
        let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
            return;
        };
        let mut out = request[..head_end - 2].to_vec();
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(&request[head_end..]);
        if up.write_all(&out).await.is_err() {
            return;
        }
        let mut answer = Vec::new();
        if up.read_to_end(&mut answer).await.is_err() {
            return;
        }
        // The answer says `connection: close`: the client opens a new connection next.
        let _ = conn.write_all(&answer).await;
        return;
    }
}

/// Connects a server and a client, each behind a sequential symmetric NAT (RFC 5780
/// STUN, no relay), through a rendezvous that applies `rule`; the client's state, the
/// technique and the time it took.
async fn connect_through(
    rule: Rule,
    within: Duration,
) -> anyhow::Result<(State, Option<Technique>, Duration)> {
    let world = World::new(WorldOptions::default()).await?;
    let url = rendezvous_in_the_middle(&world, rule).await?;
    let (_ra, mut da) = world
        .site("pa", NatKind::SymmetricSequential, 1, None)
        .await?;
    let (_rb, mut db) = world
        .site("pb", NatKind::SymmetricSequential, 1, None)
        .await?;
    let (sdev, cdev) = (da.pop().unwrap(), db.pop().unwrap());
    let echo = tcp_echo(&sdev).await?;
    let room = format!("predict-mitm-{}", world.id());
    let server = start_engine(
        &sdev,
        world.config("server", &room, serde_json::json!({ "signalUrl": url })),
    )?;
    let t = Instant::now();
    let client = start_engine(
        &cdev,
        world.config(
            "client",
            &room,
            serde_json::json!({ "signalUrl": url, "mappings": [format!("tcp:0:{echo}")] }),
        ),
    )?;
    let (state, client) = tokio::task::spawn_blocking(move || {
        let state = client.wait_connected(within);
        (state, client)
    })
    .await?;
    let took = t.elapsed();
    let stats = client.stats();
    tokio::task::spawn_blocking(move || {
        client.stop(Duration::from_secs(2));
        server.stop(Duration::from_secs(2));
    })
    .await?;
    let state = state.map_err(|e| anyhow::anyhow!("after {took:?}: {e}"))?;
    Ok((state, stats.technique, took))
}

fn is_comb(body: &str) -> bool {
    body.contains(r#"\"comb\""#)
}

fn is_predict(body: &str) -> bool {
    body.contains(r#"\"predict\""#)
}

fn from_client(body: &str) -> bool {
    body.contains(r#""role":"client""#)
}

fn ends_direct_by_prediction(
    what: &str,
    (state, technique, took): (State, Option<Technique>, Duration),
) -> anyhow::Result<()> {
    println!("{what}: {state} in {} ms", took.as_millis());
    let State::Connected { path, .. } = state else {
        anyhow::bail!("{what}: unexpected state {state}");
    };
    anyhow::ensure!(path == PathKind::Direct, "{what}: path {}", path.as_str());
    anyhow::ensure!(
        technique == Some(Technique::Prediction),
        "{what}: found by {technique:?}"
    );
    Ok(())
}

/// The server's comb offer never reaches the client (dropped, or held back longer
/// than the client waits for it): the client must try again, not fail with `NoPath`.
#[test]
fn a_lost_or_late_comb_is_tried_again() {
    run(async {
        for (what, action) in [
            ("comb dropped", Action::Drop),
            ("comb delayed 7 s", Action::Delay(Duration::from_secs(7))),
        ] {
            let combs = Arc::new(AtomicUsize::new(0));
            let rule: Rule = Arc::new(move |body| {
                if is_comb(body) && combs.fetch_add(1, Ordering::Relaxed) == 0 {
                    action
                } else {
                    Action::Forward
                }
            });
            ends_direct_by_prediction(what, connect_through(rule, Duration::from_secs(45)).await?)?;
        }
        Ok(())
    });
}

/// The rendezvous keeps the client's first offer from the server, so the first client
/// offer the server reads is already the one with `predict`: the server must answer it.
#[test]
fn a_prediction_read_as_the_first_offer_is_answered() {
    run(async {
        // A client posts its offer in its own mailbox, then knocks with the same offer
        // in the room's (issue #18): the first post of each offer is dropped, so the
        // server's session knows the client from its knock but reads the `predict`
        // offer as its first in the client's mailbox.
        let seen = std::sync::Mutex::new(std::collections::HashSet::new());
        let rule: Rule = Arc::new(move |body| {
            if !from_client(body) || body.is_empty() || is_predict(body) {
                return Action::Forward;
            }
            let data = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["data"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if seen.lock().unwrap().insert(data) {
                Action::Drop
            } else {
                Action::Forward
            }
        });
        ends_direct_by_prediction(
            "client's first offer dropped",
            connect_through(rule, Duration::from_secs(30)).await?,
        )
    });
}
