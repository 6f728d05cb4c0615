//! TURN relay fallback against coturn in the lab: the hopeless NAT pairs connect through
//! the relay, cone pairs stay direct, a forced-relay transfer arrives intact, a session
//! outlives several short allocation lifetimes, and bad relay settings fail clearly.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use stunfwd_core::status::Technique;
use stunfwd_core::{Engine, Error, PathKind, State};
use stunfwd_lab::*;

fn relay_json(world: &World, password: &str) -> serde_json::Value {
    serde_json::json!({
        "url": format!("turn:{}?transport=udp", world.coturn[0]),
        "username": TURN_USER,
        "credential": password,
    })
}

struct Outcome {
    client: Arc<Engine>,
    server: Arc<Engine>,
    state: Result<State, Error>,
    cdev: patchbay::Device,
    echo_port: u16,
    millis: f64,
}

async fn connect(
    world: &World,
    server_nat: NatKind,
    client_nat: NatKind,
    extra: serde_json::Value,
) -> anyhow::Result<Outcome> {
    connect_split(world, server_nat, client_nat, extra.clone(), extra).await
}

/// [`connect`] with settings of its own for each side.
async fn connect_split(
    world: &World,
    server_nat: NatKind,
    client_nat: NatKind,
    extra: serde_json::Value,
    client_extra: serde_json::Value,
) -> anyhow::Result<Outcome> {
    let (_ra, mut da) = world.site("ra", server_nat, 1, None).await?;
    let (_rb, mut db) = world.site("rb", client_nat, 1, None).await?;
    let (sdev, cdev) = (da.pop().unwrap(), db.pop().unwrap());
    let echo = tcp_echo(&sdev).await?;
    let room = format!("relay-{}", world.id());
    let server = Arc::new(start_engine(
        &sdev,
        world.config("server", &room, extra.clone()),
    )?);
    let mut cextra = client_extra;
    cextra["mappings"] = serde_json::json!([format!("tcp:0:{echo}")]);
    let t = Instant::now();
    let client = Arc::new(start_engine(&cdev, world.config("client", &room, cextra))?);
    let c = client.clone();
    let state =
        tokio::task::spawn_blocking(move || c.wait_connected(Duration::from_secs(30))).await?;
    let millis = t.elapsed().as_secs_f64() * 1000.0;
    let echo_port = client.mappings()[0].listen.port();
    Ok(Outcome {
        client,
        server,
        state,
        cdev,
        echo_port,
        millis,
    })
}

async fn stop(o: Outcome) {
    let (c, s) = (o.client, o.server);
    let _ = tokio::task::spawn_blocking(move || {
        c.stop(Duration::from_secs(2));
        s.stop(Duration::from_secs(2));
    })
    .await;
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 13 + 1) as u8).collect()
}

/// One cell of [`hopeless_pairs_connect_through_the_relay_and_cone_pairs_stay_direct`]:
/// what the pair must end on.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Want {
    /// The relay, and it stays the path.
    Relay,
    /// Direct from the first connect.
    Direct,
    /// Whichever path answers first carries the first byte (the relay is a path like
    /// any other), and the tunnel ends direct, found by birthday punching.
    EndsDirectByBirthday,
}

#[test]
fn hopeless_pairs_connect_through_the_relay_and_cone_pairs_stay_direct() {
    use NatKind::*;
    let no_birthday = serde_json::json!({ "birthdaySockets": 0 });
    let default = serde_json::json!({});
    run(async {
        for (s, c, performance, want) in [
            // Both symmetric with random ports: nothing direct can work.
            (Symmetric, Symmetric, &default, Want::Relay),
            // A hard pair without birthday punching relays ...
            (Symmetric, PortRestricted, &no_birthday, Want::Relay),
            (PortRestricted, Symmetric, &no_birthday, Want::Relay),
            // ... and with it (the default) may start on the relay but ends direct.
            (
                Symmetric,
                PortRestricted,
                &default,
                Want::EndsDirectByBirthday,
            ),
            (
                PortRestricted,
                Symmetric,
                &default,
                Want::EndsDirectByBirthday,
            ),
            (PortRestricted, PortRestricted, &default, Want::Direct),
            (FullCone, AddressRestricted, &default, Want::Direct),
        ] {
            let world = World::new(WorldOptions::default()).await?;
            let extra = serde_json::json!({
                "relay": relay_json(&world, TURN_PASSWORD),
                "performance": performance,
            });
            let o = connect(&world, s, c, extra).await?;
            let cell = format!("{} / {} ({want:?})", s.name(), c.name());
            let state = o
                .state
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{cell}: {e}"))?;
            let State::Connected { path, .. } = state else {
                anyhow::bail!("{cell}: unexpected state {state}");
            };
            let first = *path;
            echo_through(&o.cdev, o.echo_port, data(200_000), Duration::from_secs(20)).await?;
            let stats = o.client.stats();
            println!(
                "server behind {}, client behind {}: {} in {:.0} ms (technique {:?}), relay {:?}",
                s.name(),
                c.name(),
                first.as_str(),
                o.millis,
                stats.technique,
                stats.relay_server
            );
            match want {
                Want::Relay => {
                    anyhow::ensure!(first == PathKind::Relay, "{cell}: path {}", first.as_str());
                    anyhow::ensure!(stats.relay_server.is_some(), "{cell}: stats name the relay");
                }
                Want::Direct => {
                    anyhow::ensure!(first == PathKind::Direct, "{cell}: path {}", first.as_str());
                }
                Want::EndsDirectByBirthday => {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while o.client.stats().path != Some(PathKind::Direct) {
                        anyhow::ensure!(
                            Instant::now() < deadline,
                            "{cell}: still on {:?} 20 s after connecting",
                            o.client.stats().path
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let stats = o.client.stats();
                    anyhow::ensure!(
                        stats.technique == Some(Technique::Birthday),
                        "{cell}: direct path found by {:?}, not birthday",
                        stats.technique
                    );
                    // The tunnel still carries data after any move.
                    echo_through(&o.cdev, o.echo_port, data(100_000), Duration::from_secs(20))
                        .await?;
                    println!(
                        "  {cell}: ends direct (birthday); first path was {}",
                        first.as_str()
                    );
                }
            }
            stop(o).await;
        }
        Ok(())
    });
}

#[test]
fn forced_relay_carries_20_mb_intact() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let extra = serde_json::json!({ "relay": relay_json(&world, TURN_PASSWORD), "relayPolicy": "always" });
        let o = connect(&world, NatKind::FullCone, NatKind::FullCone, extra).await?;
        let state = o.state.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            matches!(
                state,
                State::Connected {
                    path: PathKind::Relay,
                    ..
                }
            ),
            "{state}"
        );
        let t = Instant::now();
        echo_through(
            &o.cdev,
            o.echo_port,
            data(20 << 20),
            Duration::from_secs(60),
        )
        .await?;
        println!(
            "forced relay: 20 MB echoed intact in {:.1} s ({:.1} MB/s each way), relay {:?}",
            t.elapsed().as_secs_f64(),
            20.0 * 1.048_576 / t.elapsed().as_secs_f64(),
            o.client.stats().relay_server
        );
        stop(o).await;
        Ok(())
    });
}

#[test]
fn relayed_session_outlives_several_allocation_lifetimes() {
    run(async {
        let world = World::new(WorldOptions {
            coturn_args: [
                "--max-allocate-lifetime",
                "8",
                "--channel-lifetime",
                "8",
                "--permission-lifetime",
                "8",
            ]
            .map(String::from)
            .to_vec(),
            ..WorldOptions::default()
        })
        .await?;
        let extra = serde_json::json!({ "relay": relay_json(&world, TURN_PASSWORD) });
        let o = connect(&world, NatKind::Symmetric, NatKind::Symmetric, extra).await?;
        let state = o.state.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            matches!(
                state,
                State::Connected {
                    path: PathKind::Relay,
                    ..
                }
            ),
            "{state}"
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            echo_through(&o.cdev, o.echo_port, data(10_000), Duration::from_secs(10)).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let stats = o.client.stats();
        println!(
            "relayed for 30 s across 8 s allocation/permission/channel lifetimes: reconnects {}",
            stats.reconnects
        );
        anyhow::ensure!(stats.reconnects == 0, "the relayed tunnel broke");
        stop(o).await;
        Ok(())
    });
}

#[test]
fn bad_relay_settings_fail_clearly_without_hanging() {
    run(async {
        // Wrong password: the allocating side gives up with a clear reason. A server
        // finds out when a client's session first allocates (issue #18: it allocates
        // per client); every other session would fail alike, so the engine fails.
        let world = World::new(WorldOptions::default()).await?;
        let wrong = serde_json::json!({ "relay": relay_json(&world, "wrong password") });
        let t = Instant::now();
        let o = connect(
            &world,
            NatKind::Symmetric,
            NatKind::Symmetric,
            wrong.clone(),
        )
        .await?;
        anyhow::ensure!(o.state.is_err(), "connected with a wrong TURN password");
        println!(
            "wrong TURN password after {:?}: client {:?}",
            t.elapsed(),
            o.state.as_ref().err()
        );
        anyhow::ensure!(
            matches!(o.state.as_ref().err(), Some(stunfwd_core::Error::Relay(r)) if r.contains("rejected the credentials")),
            "client: {:?}",
            o.state
        );
        stop(o).await;
        let (_r, mut d) = world.site("ws", NatKind::Symmetric, 1, None).await?;
        let server = Arc::new(start_engine(
            &d.pop().unwrap(),
            world.config("server", "wrong-2", wrong),
        )?);
        let (_r2, mut d2) = world.site("wc", NatKind::Symmetric, 1, None).await?;
        let client = Arc::new(start_engine(
            &d2.pop().unwrap(),
            world.config("client", "wrong-2", serde_json::json!({})),
        )?);
        let t = Instant::now();
        while !server.state().is_final() && t.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let server_state = server.state();
        println!(
            "a server with a wrong TURN password, when a client knocks: {server_state} after {:?}",
            t.elapsed()
        );
        anyhow::ensure!(
            matches!(&server_state, State::Failed { reason } if reason.contains("rejected the credentials")),
            "server state: {server_state}"
        );
        let _ = tokio::task::spawn_blocking(move || {
            client.stop(Duration::from_secs(2));
            server.stop(Duration::from_secs(2));
        })
        .await;
        drop(world);

        // Unreachable TURN server: retried with the reason in the state, no hang.
        let world = World::new(WorldOptions::default()).await?;
        let extra = serde_json::json!({ "relay": {
            "url": format!("turn:{}:3999", world.coturn[0].ip()),
            "username": TURN_USER, "credential": TURN_PASSWORD } });
        let o = connect(&world, NatKind::Symmetric, NatKind::Symmetric, extra).await?;
        let server_state = o.server.state();
        let last = o.server.stats().last_error.unwrap_or_default();
        println!("unreachable TURN server: server {server_state}; last error: {last}");
        // Retried: between attempts the server says why; during the next one it waits
        // for a fresh client offer (an offer already used is not used again).
        anyhow::ensure!(
            last.contains("did not answer")
                && matches!(&server_state, State::Reconnecting { .. } | State::Signaling),
            "server state: {server_state}; last error: {last}"
        );
        stop(o).await;
        drop(world);

        // Allocation quota: coturn allows one allocation per user; a second pair fails
        // with 486 and says so.
        let world = World::new(WorldOptions {
            coturn_args: vec!["--user-quota".into(), "1".into()],
            ..WorldOptions::default()
        })
        .await?;
        let extra = serde_json::json!({ "relay": relay_json(&world, TURN_PASSWORD) });
        // The server's session allocates the one allocation (its client has no relay
        // of its own: with one, the client, which allocates before it knocks, would
        // take it first).
        let first = connect_split(
            &world,
            NatKind::Symmetric,
            NatKind::Symmetric,
            extra.clone(),
            serde_json::json!({}),
        )
        .await?;
        anyhow::ensure!(
            first.state.is_ok(),
            "first relayed pair: {:?}",
            first.state.as_ref().err()
        );
        let (_r, mut d) = world.site("rq", NatKind::Symmetric, 1, None).await?;
        let third = Arc::new(start_engine(
            &d.pop().unwrap(),
            world.config("server", "quota-2", extra),
        )?);
        let (_r2, mut d2) = world.site("rq2", NatKind::Symmetric, 1, None).await?;
        let fourth = Arc::new(start_engine(
            &d2.pop().unwrap(),
            world.config("client", "quota-2", serde_json::json!({})),
        )?);
        let t = Instant::now();
        let reason = loop {
            if let State::Reconnecting { reason, .. } = third.state() {
                if reason.contains("486") {
                    break reason;
                }
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(20),
                "no quota error: {}",
                third.state()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("second allocation of a one-allocation user: {reason}");
        let _ = tokio::task::spawn_blocking(move || {
            third.stop(Duration::from_secs(2));
            fourth.stop(Duration::from_secs(2));
        })
        .await;
        stop(first).await;
        Ok(())
    });
}

#[test]
fn relay_policy_never_fails_with_no_path_even_with_a_relay_configured() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let extra = serde_json::json!({ "relay": relay_json(&world, TURN_PASSWORD), "relayPolicy": "never" });
        let o = connect(&world, NatKind::Symmetric, NatKind::Symmetric, extra).await?;
        match &o.state {
            Err(Error::NoPath {
                local_nat,
                peer_nat,
            }) => {
                println!(
                    "relayPolicy never: NoPath ({local_nat} / {peer_nat}) after {:.0} ms",
                    o.millis
                );
                anyhow::ensure!(o.millis < 10_000.0, "NoPath must come quickly");
            }
            other => anyhow::bail!("expected NoPath, got {other:?}"),
        }
        stop(o).await;
        Ok(())
    });
}

#[test]
fn relayed_tunnel_moves_to_direct_when_the_direct_path_opens() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let (ra, mut da) = world.site("ua", NatKind::PortRestricted, 1, None).await?;
        let (rb, mut db) = world.site("ub", NatKind::PortRestricted, 1, None).await?;
        let (sdev, cdev) = (da.pop().unwrap(), db.pop().unwrap());
        let b_ip = std::net::IpAddr::V4(rb.uplink_ip().unwrap());
        // Punching is blocked between the two sites; the relay is reachable.
        world.block_udp(&ra, b_ip).await?;
        let echo = tcp_echo(&sdev).await?;
        let extra =
            serde_json::json!({ "relay": relay_json(&world, TURN_PASSWORD), "punchTimeout": "3s" });
        let server = Arc::new(start_engine(
            &sdev,
            world.config("server", "upgrade", extra.clone()),
        )?);
        let mut cextra = extra;
        cextra["mappings"] = serde_json::json!([format!("tcp:0:{echo}")]);
        let client = Arc::new(start_engine(
            &cdev,
            world.config("client", "upgrade", cextra),
        )?);
        let c = client.clone();
        let state = tokio::task::spawn_blocking(move || c.wait_connected(Duration::from_secs(40)))
            .await??;
        anyhow::ensure!(
            matches!(
                state,
                State::Connected {
                    path: PathKind::Relay,
                    ..
                }
            ),
            "started {state}"
        );
        let port = client.mappings()[0].listen.port();
        // A TCP connection that lives across the switch: one echo every 100 ms.
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let live = cdev.spawn_thread(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut rounds = 0u32;
            while stop_rx.try_recv().is_err() {
                let msg = format!("round {rounds:06}");
                s.write_all(msg.as_bytes())?;
                let mut got = vec![0u8; msg.len()];
                s.read_exact(&mut got)?;
                anyhow::ensure!(got == msg.as_bytes(), "echo differs in round {rounds}");
                rounds += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(rounds)
        })?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        world.unblock_udp(&ra).await?;
        let lifted = Instant::now();
        loop {
            if matches!(
                client.state(),
                State::Connected {
                    path: PathKind::Direct,
                    ..
                }
            ) {
                break;
            }
            anyhow::ensure!(
                lifted.elapsed() < Duration::from_secs(40),
                "still {} after the block was lifted",
                client.state()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let upgraded_after = lifted.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = stop_tx.send(());
        let rounds = tokio::task::spawn_blocking(move || live.join())
            .await?
            .map_err(|_| anyhow::anyhow!("live connection thread panicked"))??;
        let (cs, ss) = (client.stats(), server.stats());
        println!(
            "relay -> direct {upgraded_after:?} after the block was lifted; live TCP connection: {rounds} echo rounds without a break; client path {:?} changes {}, server path {:?}, reconnects {}",
            cs.path, cs.path_changes, ss.path, cs.reconnects
        );
        anyhow::ensure!(
            cs.reconnects == 0 && ss.reconnects == 0,
            "the same connection must continue"
        );
        anyhow::ensure!(cs.path_changes >= 1);
        anyhow::ensure!(
            ss.path == Some(PathKind::Direct),
            "server path {:?}",
            ss.path
        );
        let _ = tokio::task::spawn_blocking(move || {
            client.stop(Duration::from_secs(2));
            server.stop(Duration::from_secs(2));
        })
        .await;
        Ok(())
    });
}
