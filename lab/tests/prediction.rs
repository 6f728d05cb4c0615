//! Port prediction (issue #17) between two symmetric NATs that allocate ports
//! regularly, without any relay: sequential with sequential, port-preserving with
//! port-preserving, and the two mixed, each way round, connect direct and say so;
//! symmetric with random ports against a sequential one stays hopeless and fails
//! fast with `NoPath`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use stunfwd_core::status::Technique;
use stunfwd_core::{Error, PathKind, State};
use stunfwd_lab::*;

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// Connects a server behind `s` and a client behind `c` (RFC 5780 STUN, no relay);
/// the client's state, its stats' technique and the time it took.
async fn connect(
    s: NatKind,
    c: NatKind,
) -> anyhow::Result<(Result<State, Error>, Option<Technique>, u64, Duration)> {
    let world = World::new(WorldOptions::default()).await?;
    let (_ra, mut da) = world.site("pa", s, 1, None).await?;
    let (_rb, mut db) = world.site("pb", c, 1, None).await?;
    let (sdev, cdev) = (da.pop().unwrap(), db.pop().unwrap());
    let echo = tcp_echo(&sdev).await?;
    let room = format!("predict-{}", world.id());
    let none = serde_json::json!({});
    let server = start_engine(&sdev, world.config("server", &room, none))?;
    let t = Instant::now();
    let client = start_engine(
        &cdev,
        world.config(
            "client",
            &room,
            serde_json::json!({ "mappings": [format!("tcp:0:{echo}")] }),
        ),
    )?;
    let (state, client) = tokio::task::spawn_blocking(move || {
        let state = client.wait_connected(Duration::from_secs(30));
        (state, client)
    })
    .await?;
    let took = t.elapsed();
    if state.is_ok() {
        let port = client.mappings()[0].listen.port();
        echo_through(&cdev, port, data(100_000), Duration::from_secs(20)).await?;
    }
    let stats = client.stats();
    tokio::task::spawn_blocking(move || {
        client.stop(Duration::from_secs(2));
        server.stop(Duration::from_secs(2));
    })
    .await?;
    Ok((state, stats.technique, stats.birthday_packets, took))
}

#[test]
fn two_regular_symmetric_nats_connect_direct_by_port_prediction() {
    use NatKind::*;
    run(async {
        for (s, c) in [
            (SymmetricSequential, SymmetricSequential),
            (SymmetricPreserving, SymmetricPreserving),
            (SymmetricSequential, SymmetricPreserving),
            (SymmetricPreserving, SymmetricSequential),
        ] {
            let cell = format!("server {} / client {}", s.name(), c.name());
            let (state, technique, packets, took) = connect(s, c).await?;
            let state = state.map_err(|e| anyhow::anyhow!("{cell}: {e}"))?;
            println!(
                "{cell}: {state} in {} ms, {packets} packets",
                took.as_millis()
            );
            let State::Connected { path, .. } = state else {
                anyhow::bail!("{cell}: unexpected state {state}");
            };
            anyhow::ensure!(path == PathKind::Direct, "{cell}: path {}", path.as_str());
            anyhow::ensure!(
                technique == Some(Technique::Prediction),
                "{cell}: found by {technique:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn random_ports_against_a_sequential_nat_stay_hopeless() {
    run(async {
        let (state, _, _, took) = connect(NatKind::Symmetric, NatKind::SymmetricSequential).await?;
        println!(
            "symmetric / symmetric-sequential: {state:?} after {} ms",
            took.as_millis()
        );
        anyhow::ensure!(
            matches!(state, Err(Error::NoPath { .. })),
            "expected NoPath, got {state:?}"
        );
        anyhow::ensure!(took < Duration::from_secs(15), "NoPath took {took:?}");
        Ok(())
    });
}
