//! Recovery behind real NATs (issue #16): a peer killed with SIGKILL and started again
//! at once. The server peer runs as a `stunfwd run` process so it can die without a
//! word; the client peer, behind its own restricted NAT, survives. The new process's
//! checks come from a new port that the client's NAT filters, so only the room shows
//! the client that its peer restarted. Prints the time from the new process's start
//! to the first byte echoed through a connection opened at that moment; fails when a
//! run takes longer than the old idle-timeout path (15 s) would have allowed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay::Device;
use stunfwd_lab::*;

/// Starts `stunfwd run CONFIG` inside `dev`, with the config of a server peer.
fn spawn_server(dev: &Device, config: &std::path::Path) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(stunfwd_bin());
    cmd.arg("run")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    dev.spawn_command(cmd)
}

#[test]
fn a_killed_peer_started_again_is_met_within_seconds() {
    if !stunfwd_bin().is_file() {
        println!(
            "SKIPPED: {} is not built (cargo build -p stunfwd-cli)",
            stunfwd_bin().display()
        );
        return;
    }
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let (_ra, mut da) = world.site("ka", NatKind::LinuxMasquerade, 1, None).await?;
        let (_rb, mut db) = world.site("kb", NatKind::PortRestricted, 1, None).await?;
        let (sdev, cdev) = (da.pop().unwrap(), db.pop().unwrap());
        let echo = tcp_echo(&sdev).await?;
        let room = format!("kill9-{}", world.id());
        let dir = std::env::temp_dir().join(format!("stunfwd-lab-kill9-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("server.json");
        std::fs::write(
            &config,
            serde_json::json!({
                "mode": "server",
                "room": room,
                "secret": format!("lab secret {room}"),
                "signalUrl": world.signal_url,
                "stunServers": world.stun_servers(StunSetup::Rfc5780),
            })
            .to_string(),
        )?;
        let mut server = spawn_server(&sdev, &config)?;
        let client = Arc::new(start_engine(
            &cdev,
            world.config(
                "client",
                &room,
                serde_json::json!({ "mappings": [format!("tcp:0:{echo}")] }),
            ),
        )?);
        let c = client.clone();
        tokio::task::spawn_blocking(move || c.wait_connected(Duration::from_secs(20))).await??;
        let port = client.mappings()[0].listen.port();
        echo_through(&cdev, port, vec![7u8; 4096], Duration::from_secs(10)).await?;

        let mut times = Vec::new();
        for round in 0..3 {
            server.start_kill()?;
            server.wait().await?;
            let since = Instant::now();
            server = spawn_server(&sdev, &config)?;
            // Opened at once, onto the dead tunnel: carried by the new one.
            let data: Vec<u8> = (0..65536u32).map(|i| (i * 13 + round) as u8).collect();
            echo_through(&cdev, port, data, Duration::from_secs(20))
                .await
                .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
            let took = since.elapsed();
            println!("round {round}: server killed and restarted; 64 KiB echoed after {took:?}");
            times.push(took);
        }
        let _ = server.start_kill();
        let _ = server.wait().await;
        let stats = client.stats();
        println!(
            "client: reconnects {}, state {}; times {times:?}",
            stats.reconnects,
            client.state()
        );
        let c = client.clone();
        let _ = tokio::task::spawn_blocking(move || c.stop(Duration::from_secs(2))).await;
        let _ = std::fs::remove_dir_all(&dir);
        anyhow::ensure!(
            times.iter().all(|t| *t < Duration::from_secs(10)),
            "a restart took as long as the idle timeout path: {times:?}"
        );
        Ok(())
    });
}
