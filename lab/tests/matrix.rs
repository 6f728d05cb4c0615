//! The traversal matrix: every pair of the four NAT types, plus two peers on one LAN,
//! each in its own freshly built lab. Prints the table; with STUNFWD_WRITE_MATRIX=1 it
//! also writes docs/nat-matrix.md:
//!
//!   STUNFWD_WRITE_MATRIX=1 cargo test -p stunfwd-lab --test matrix -- --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use stunfwd_core::{Error, PathKind, State};
use stunfwd_lab::*;

#[derive(Debug, Clone)]
struct Cell {
    server: &'static str,
    client: &'static str,
    connected: bool,
    path: Option<PathKind>,
    millis: f64,
    detected: (String, String),
    detail: String,
}

/// One cell: the server-role peer behind `a`, the client-role peer behind `b` (or both
/// behind one port-restricted NAT with hairpinning off when `same_lan`).
async fn cell(a: NatKind, b: NatKind, same_lan: bool, relay: bool) -> anyhow::Result<Cell> {
    let world = World::new(WorldOptions::default()).await?;
    let extra = if relay {
        serde_json::json!({ "relay": {
            "url": format!("turn:{}", world.coturn[0]),
            "username": TURN_USER,
            "credential": TURN_PASSWORD,
        } })
    } else {
        serde_json::json!({})
    };
    let (sdev, cdev) = if same_lan {
        let (_r, mut devs) = world.site("lan", NatKind::PortRestricted, 2, None).await?;
        let c = devs.pop().expect("two devices");
        (devs.pop().expect("two devices"), c)
    } else {
        let (_ra, mut da) = world.site("sa", a, 1, None).await?;
        let (_rb, mut db) = world.site("sb", b, 1, None).await?;
        (da.pop().expect("device"), db.pop().expect("device"))
    };
    let echo = tcp_echo(&sdev).await?;
    let room = format!("matrix-{}", world.id());
    let server = start_engine(&sdev, world.config("server", &room, extra.clone()))?;
    let started = Instant::now();
    let mut client_extra = extra;
    client_extra["mappings"] = serde_json::json!([format!("tcp:0:{echo}")]);
    let client = start_engine(&cdev, world.config("client", &room, client_extra))?;
    let client = Arc::new(client);
    let c2 = client.clone();
    let outcome =
        tokio::task::spawn_blocking(move || c2.wait_connected(Duration::from_secs(30))).await?;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let stats = client.stats();
    let detected = (
        server.stats().nat_type.as_str().to_owned(),
        stats.nat_type.as_str().to_owned(),
    );
    let (server_name, client_name) = if same_lan {
        ("same LAN", "same LAN")
    } else {
        (a.name(), b.name())
    };
    let result = match outcome {
        Ok(State::Connected { path, .. }) => {
            let port = client.mappings()[0].listen.port();
            let data: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
            let echoed = echo_through(&cdev, port, data, Duration::from_secs(10)).await;
            Cell {
                server: server_name,
                client: client_name,
                connected: echoed.is_ok(),
                path: Some(path),
                millis: stats.timings.time_to_connected_ms.unwrap_or(millis),
                detected,
                detail: match echoed {
                    Ok(()) => "64 KiB echo intact".into(),
                    Err(e) => format!("connected but echo failed: {e}"),
                },
            }
        }
        Ok(other) => anyhow::bail!("wait_connected returned {other}"),
        Err(e) => Cell {
            server: server_name,
            client: client_name,
            connected: false,
            path: None,
            millis,
            detected,
            detail: match &e {
                Error::NoPath { .. } => format!("NoPath: {e}"),
                other => other.to_string(),
            },
        },
    };
    let stop = Instant::now();
    let c = Arc::try_unwrap(client).map_err(|_| anyhow::anyhow!("engine still shared"))?;
    tokio::task::spawn_blocking(move || {
        c.stop(Duration::from_secs(2));
        server.stop(Duration::from_secs(2));
    })
    .await?;
    anyhow::ensure!(
        stop.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        stop.elapsed()
    );
    drop(world);
    Ok(result)
}

fn table(cells: &[Cell]) -> String {
    let mut out = String::from(
        "| server peer behind | client peer behind | result | path | time to connected / to failure | NAT types detected (server, client) | detail |\n|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} ms | {}, {} | {} |\n",
            c.server,
            c.client,
            if c.connected { "connected" } else { "failed" },
            c.path.map(|p| p.as_str()).unwrap_or("-"),
            c.millis,
            c.detected.0,
            c.detected.1,
            c.detail.replace('|', "/"),
        ));
    }
    out
}

#[test]
fn traversal_matrix() {
    if skip() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let cells = rt.block_on(async {
        let mut jobs = Vec::new();
        for relay in [false, true] {
            for (i, &a) in NatKind::ALL.iter().enumerate() {
                for &b in &NatKind::ALL[i..] {
                    jobs.push((a, b, false, relay));
                }
            }
            jobs.push((
                NatKind::PortRestricted,
                NatKind::PortRestricted,
                true,
                relay,
            ));
        }
        // A few labs at a time: the machine has two cores.
        let limit = Arc::new(tokio::sync::Semaphore::new(3));
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(a, b, lan, relay)| {
                let limit = limit.clone();
                tokio::spawn(async move {
                    let _permit = limit.acquire().await.expect("semaphore");
                    cell(a, b, lan, relay).await.map(|c| (relay, c))
                })
            })
            .collect();
        let mut cells = Vec::new();
        for h in handles {
            cells.push(h.await.expect("cell task").expect("cell setup"));
        }
        cells
    });
    let direct_cells: Vec<Cell> = cells
        .iter()
        .filter(|(r, _)| !r)
        .map(|(_, c)| c.clone())
        .collect();
    let relay_cells: Vec<Cell> = cells
        .iter()
        .filter(|(r, _)| *r)
        .map(|(_, c)| c.clone())
        .collect();
    let table_direct = table(&direct_cells);
    let table_relay = table(&relay_cells);
    println!("\nwithout a relay:\n{table_direct}\nwith coturn as relay:\n{table_relay}");
    println!(
        "matrix measured in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if std::env::var_os("STUNFWD_WRITE_MATRIX").is_some() {
        let doc = format!(
            "# NAT traversal matrix\n\nMeasured by `STUNFWD_WRITE_MATRIX=1 cargo test -p stunfwd-lab --test matrix -- --nocapture` \
             on {} (2 cores). Each cell is a fresh lab: Linux network namespaces, nftables NATs built by \
             patchbay, our rendezvous server and coturn (STUN with RFC 5780, and TURN) on an isolated \"internet\". The client peer forwards \
             a TCP port to an echo service next to the server peer; a connected cell has echoed 64 KiB through the tunnel.\n\n\
             ## Without a relay\n\n{table_direct}\n## With coturn configured as relay (`relayPolicy: auto`)\n\n{table_relay}\n\
             The NAT types in column 6 are what each engine detected (RFC 5780 against coturn); they must match the NAT the lab built. \
             Times behind restricted NATs are dominated by the RFC 5780 filtering test, which waits 1.75 s for answers such NATs never let through.\n",
            std::process::Command::new("date")
                .arg("-u")
                .arg("+%Y-%m-%d")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        );
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/nat-matrix.md");
        std::fs::write(&path, doc).unwrap();
        println!("wrote {}", path.display());
    }

    let hopeless = |a: &str, b: &str| {
        let strict = |s: &str| s == "symmetric" || s == "port-restricted";
        (a == "symmetric" && strict(b)) || (b == "symmetric" && strict(a))
    };
    for c in &relay_cells {
        if c.server == "same LAN" {
            assert_eq!(c.path, Some(PathKind::Lan), "{c:?}");
            continue;
        }
        assert!(c.connected, "with a relay every pair connects: {c:?}");
        if hopeless(c.server, c.client) {
            assert_eq!(
                c.path,
                Some(PathKind::Relay),
                "hopeless pairs go through the relay: {c:?}"
            );
        } else {
            assert_ne!(
                c.path,
                Some(PathKind::Relay),
                "the relay is never chosen when direct works: {c:?}"
            );
        }
    }
    for c in &direct_cells {
        if c.server == "same LAN" {
            assert!(c.connected, "same LAN must connect: {c:?}");
            assert_eq!(
                c.path,
                Some(PathKind::Lan),
                "same LAN uses host candidates: {c:?}"
            );
            continue;
        }
        // Every engine detected the NAT the lab built.
        assert_eq!(c.detected.0, c.server, "server NAT detection: {c:?}");
        assert_eq!(c.detected.1, c.client, "client NAT detection: {c:?}");
        if c.server != "symmetric" && c.client != "symmetric" {
            assert!(c.connected, "cone pair must connect: {c:?}");
            assert_eq!(c.path, Some(PathKind::Direct), "{c:?}");
        } else if hopeless(c.server, c.client) {
            assert!(!c.connected, "{c:?}");
            assert!(c.detail.starts_with("NoPath"), "fails with NoPath: {c:?}");
            assert!(
                c.detail.contains(c.server) && c.detail.contains(c.client),
                "NoPath names both NAT types: {c:?}"
            );
            assert!(
                c.millis < 10_000.0,
                "fails quickly, not after a hang: {c:?}"
            );
        } else {
            // Symmetric with a full-cone or address-restricted NAT: the cone side
            // accepts the symmetric side's fresh port (it has sent to that IP), so the
            // peer-reflexive pair works directly.
            assert!(c.connected, "symmetric with a cone NAT connects: {c:?}");
            assert_eq!(c.path, Some(PathKind::Direct), "{c:?}");
        }
    }
}
