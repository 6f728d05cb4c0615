//! Behaviour behind real NATs: NAT discovery, keepalive under short conntrack
//! timeouts, recovery (conntrack flush, peer restart, rendezvous restart), a lossy
//! path, and how many conntrack entries one connect costs a router.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay::{Device, LinkCondition};
use stunfwd_core::{Engine, State};
use stunfwd_lab::*;

async fn wait_connected(engine: &Arc<Engine>, timeout: Duration) -> anyhow::Result<State> {
    let e = engine.clone();
    Ok(tokio::task::spawn_blocking(move || e.wait_connected(timeout)).await??)
}

async fn stop(engine: Arc<Engine>) {
    let _ = tokio::task::spawn_blocking(move || engine.stop(Duration::from_secs(2))).await;
}

/// Two port-restricted sites (the commonest home NAT), a server peer with a TCP echo
/// and a client peer forwarding to it.
struct Pair {
    world: World,
    routers: (patchbay::Router, patchbay::Router),
    sdev: Device,
    cdev: Device,
    server: Arc<Engine>,
    client: Arc<Engine>,
    local_port: u16,
    room: String,
}

async fn pair(udp_timeout: Option<u32>, extra: serde_json::Value) -> anyhow::Result<Pair> {
    pair_of(
        (NatKind::PortRestricted, NatKind::PortRestricted),
        udp_timeout,
        extra,
    )
    .await
}

/// [`pair`] with the server behind a NAT of `kinds.0`, the client behind `kinds.1`.
async fn pair_of(
    kinds: (NatKind, NatKind),
    udp_timeout: Option<u32>,
    extra: serde_json::Value,
) -> anyhow::Result<Pair> {
    let world = World::new(WorldOptions::default()).await?;
    let (ra, mut da) = world.site("sa", kinds.0, 1, udp_timeout).await?;
    let (rb, mut db) = world.site("sb", kinds.1, 1, udp_timeout).await?;
    let (sdev, cdev) = (da.pop().unwrap(), db.pop().unwrap());
    let echo = tcp_echo(&sdev).await?;
    let room = format!("behaviour-{}", world.id());
    let server = Arc::new(start_engine(
        &sdev,
        world.config("server", &room, extra.clone()),
    )?);
    let mut client_extra = extra;
    client_extra["mappings"] = serde_json::json!([format!("tcp:0:{echo}")]);
    let client = Arc::new(start_engine(
        &cdev,
        world.config("client", &room, client_extra),
    )?);
    wait_connected(&client, Duration::from_secs(20)).await?;
    wait_connected(&server, Duration::from_secs(5)).await?;
    let local_port = client.mappings()[0].listen.port();
    Ok(Pair {
        world,
        routers: (ra, rb),
        sdev,
        cdev,
        server,
        client,
        local_port,
        room,
    })
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

/// Tries a 10 kB echo through the client's mapping (each try given `per_try`) until one
/// works or `limit` has passed since `since`; how long after `since` it worked.
async fn echo_works_after(
    p: &Pair,
    since: Instant,
    limit: Duration,
    per_try: Duration,
) -> Option<Duration> {
    while since.elapsed() < limit {
        if echo_through(&p.cdev, p.local_port, data(10_000), per_try)
            .await
            .is_ok()
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(per_try / 10).await;
    }
    None
}

#[test]
fn nat_cli_reports_each_nat_type() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        for (i, kind) in NatKind::ALL.into_iter().enumerate() {
            let (_r, devs) = world.site(&format!("n{i}"), kind, 1, None).await?;
            let mut cmd = tokio::process::Command::new(stunfwd_bin());
            cmd.args([
                "nat",
                "--stun",
                &world.coturn[0].to_string(),
                "--stun",
                &world.coturn[1].to_string(),
            ])
            .stdout(std::process::Stdio::piped());
            let out = devs[0].spawn_command(cmd)?.wait_with_output().await?;
            let text = String::from_utf8_lossy(&out.stdout);
            println!("behind {}:\n{text}", kind.name());
            anyhow::ensure!(
                out.status.success(),
                "stunfwd nat failed behind {}",
                kind.name()
            );
            let (mapping, filtering) = (kind.expected_mapping(), kind.expected_filtering());
            anyhow::ensure!(
                text.contains(&format!("mapping:   {mapping}, allocation: ")),
                "mapping behind {}",
                kind.name()
            );
            anyhow::ensure!(
                text.contains(&format!("filtering: {filtering}\n")),
                "filtering behind {}",
                kind.name()
            );
            anyhow::ensure!(
                text.contains(&format!("nat type:  {}\n", kind.expected_type())),
                "type behind {}",
                kind.name()
            );
        }
        Ok(())
    });
}

#[test]
fn idle_tunnel_outlives_three_conntrack_timeouts() {
    // Routers forget idle UDP mappings after 10 s; the default keep-alive (5 s) keeps
    // ours. The tunnel stays idle for 30 s and must still carry data, unbroken.
    run(async {
        let p = pair(Some(10), serde_json::json!({})).await?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(31) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            anyhow::ensure!(
                p.client.state().is_connected(),
                "tunnel dropped after {:?}",
                t.elapsed()
            );
        }
        echo_through(
            &p.cdev,
            p.local_port,
            data(100_000),
            Duration::from_secs(10),
        )
        .await?;
        let stats = p.client.stats();
        println!(
            "idle 31 s behind 10 s conntrack timeouts: reconnects {}, rtt {:?} ms",
            stats.reconnects, stats.rtt_ms
        );
        anyhow::ensure!(stats.reconnects == 0, "the tunnel had to reconnect");
        stop(p.client).await;
        stop(p.server).await;
        Ok(())
    });
}

#[test]
fn conntrack_flush_mid_transfer_recovers() {
    run(async {
        let p = pair(None, serde_json::json!({})).await?;
        // A long transfer is running when the client's router forgets every mapping.
        let transfer = {
            let (cdev, port) = (p.cdev.clone(), p.local_port);
            tokio::spawn(async move {
                echo_through(&cdev, port, data(30 << 20), Duration::from_secs(30)).await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = conntrack_count(&p.routers.1).await?;
        p.routers.1.flush_nat_state().await?;
        let flushed_at = Instant::now();
        let after = conntrack_count(&p.routers.1).await?;
        println!(
            "conntrack entries on the client router: {before} before flush, {after} right after"
        );
        // New TCP connections work within 10 s.
        let ok_after = echo_works_after(
            &p,
            flushed_at,
            Duration::from_secs(10),
            Duration::from_secs(2),
        )
        .await
        .ok_or_else(|| anyhow::anyhow!("no new connection worked within 10 s of the flush"))?;
        let transfer = transfer.await?;
        let stats = p.client.stats();
        println!(
            "after conntrack -F: new connection worked after {ok_after:?}; running transfer: {}; reconnects {}, path changes {}",
            if transfer.is_ok() { "completed intact".to_owned() } else { format!("{transfer:?}") },
            stats.reconnects,
            stats.path_changes
        );
        // The flush either broke the tunnel (then a reconnect is counted) or the
        // mapping came back on the same port and the connection carried on (then the
        // long transfer completed intact).
        anyhow::ensure!(
            stats.reconnects >= 1 || transfer.is_ok(),
            "neither recovered nor counted"
        );
        stop(p.client).await;
        stop(p.server).await;
        Ok(())
    });
}

#[test]
fn restarted_peer_is_found_again_without_restarting_the_other() {
    run(async {
        let p = pair(None, serde_json::json!({})).await?;
        stop(p.server.clone()).await;
        let server2 = Arc::new(start_engine(
            &p.sdev,
            p.world.config("server", &p.room, serde_json::json!({})),
        )?);
        let t = Instant::now();
        // Wait until the client has seen the old tunnel go and come back.
        loop {
            if p.client.stats().reconnects >= 1 && p.client.state().is_connected() {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "client did not reconnect: {}",
                p.client.state()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        echo_through(&p.cdev, p.local_port, data(50_000), Duration::from_secs(10)).await?;
        println!(
            "client reconnected to the restarted peer in {:?}",
            t.elapsed()
        );
        stop(p.client).await;
        stop(server2).await;
        Ok(())
    });
}

#[test]
fn rendezvous_restart_does_not_disturb_the_tunnel() {
    run(async {
        let mut p = pair(None, serde_json::json!({})).await?;
        let (http, stun) = p.world.stop_signal().await?;
        // While it is down the tunnel carries on.
        tokio::time::sleep(Duration::from_secs(2)).await;
        echo_through(&p.cdev, p.local_port, data(50_000), Duration::from_secs(10)).await?;
        p.world.start_signal(http, stun).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        echo_through(&p.cdev, p.local_port, data(50_000), Duration::from_secs(10)).await?;
        anyhow::ensure!(p.client.state().is_connected() && p.server.state().is_connected());
        anyhow::ensure!(p.client.stats().reconnects == 0, "the tunnel was rebuilt");
        stop(p.client).await;
        stop(p.server).await;
        Ok(())
    });
}

#[test]
fn lossy_path_still_delivers_intact() {
    run(async {
        let p = pair(None, serde_json::json!({})).await?;
        let udp = udp_echo(&p.sdev).await?;
        let id = p.client.add_mapping_str(&format!("udp:0:{udp}"))?;
        let udp_local = p.client.mapping_addr(id).unwrap().port();
        if World::netem_available() {
            p.world
                .impair(
                    &p.cdev,
                    LinkCondition::new().latency_ms(40).random_loss(3.0),
                )
                .await?;
            println!("impairment: tc netem, 40 ms delay and 3% loss each way on the client's link");
        } else {
            // This kernel has no sch_netem: loss comes from nftables, delay cannot be added.
            p.world.udp_loss(&p.routers.1, 3.0).await?;
            println!("impairment: 3% UDP loss each way at the client's router (nftables); no delay: this kernel lacks sch_netem");
        }
        let t = Instant::now();
        echo_through(
            &p.cdev,
            p.local_port,
            data(20 << 20),
            Duration::from_secs(120),
        )
        .await?;
        let took = t.elapsed();
        println!("rtt after transfer: {:?} ms", p.client.stats().rtt_ms);
        // UDP keeps delivering: 200 datagrams, paced, each echoed back whole or lost.
        let delivered = in_ns(&p.cdev, move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut ok = 0;
            let mut buf = [0u8; 2048];
            for i in 0..200u32 {
                let msg = format!("datagram {i:04}");
                s.send_to(msg.as_bytes(), ("127.0.0.1", udp_local))?;
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    if &buf[..n] == msg.as_bytes() {
                        ok += 1;
                    }
                }
            }
            Ok(ok)
        })
        .await?;
        println!(
            "lossy path: 20 MB echoed intact in {:.1} s ({:.2} MB/s each way); UDP {delivered}/200 echoed",
            took.as_secs_f64(),
            20.0 * 1.048_576 / took.as_secs_f64()
        );
        // Each datagram crosses the lossy link four times (about 12% lost end to end).
        anyhow::ensure!(delivered >= 150, "UDP stopped delivering: {delivered}/200");
        stop(p.client).await;
        stop(p.server).await;
        Ok(())
    });
}

#[test]
fn one_connect_costs_a_router_few_conntrack_entries() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let (ra, mut da) = world.site("ga", NatKind::PortRestricted, 1, None).await?;
        let (rb, mut db) = world.site("gb", NatKind::PortRestricted, 1, None).await?;
        let (sdev, cdev) = (da.pop().unwrap(), db.pop().unwrap());
        let before = (conntrack_count(&ra).await?, conntrack_count(&rb).await?);
        let room = format!("gentle-{}", world.id());
        let server = Arc::new(start_engine(
            &sdev,
            world.config("server", &room, serde_json::json!({})),
        )?);
        let client = Arc::new(start_engine(
            &cdev,
            world.config("client", &room, serde_json::json!({})),
        )?);
        wait_connected(&client, Duration::from_secs(20)).await?;
        wait_connected(&server, Duration::from_secs(5)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = (conntrack_count(&ra).await?, conntrack_count(&rb).await?);
        let created = (after.0 - before.0, after.1 - before.1);
        println!(
            "conntrack entries created by one connect: server router {}, client router {}",
            created.0, created.1
        );
        println!("client router entries:\n{}", conntrack_list(&rb).await?);
        anyhow::ensure!(
            created.0 <= 16 && created.1 <= 16,
            "too many entries: {created:?}"
        );
        stop(client).await;
        stop(server).await;
        Ok(())
    });
}

/// Issue #16: the client's router reboots mid-transfer: its conntrack table is flushed
/// and it hands out ports from another range, so the client's public port changes. The
/// tunnel's packets go unanswered; the engine notices within its silence limit (2 s,
/// not the 15 s idle timeout), asks STUN again, meets the server anew, and new
/// connections work. Prints the time from the reboot to the first new echo.
#[test]
fn nat_reboot_with_a_new_public_port_recovers_within_seconds() {
    run(async {
        let p = pair_of(
            (NatKind::PortRestricted, NatKind::LinuxMasquerade),
            None,
            serde_json::json!({}),
        )
        .await?;
        let before = p.client.stats().public_addr;
        // A long transfer is running when the router reboots.
        let transfer = {
            let (cdev, port) = (p.cdev.clone(), p.local_port);
            tokio::spawn(async move {
                echo_through(&cdev, port, data(200 << 20), Duration::from_secs(30)).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rb = &p.routers.1;
        let wan = rb
            .interfaces()
            .first()
            .map(|i| i.name().to_owned())
            .unwrap();
        // After the "reboot" the router maps the client's socket to port 40000 for
        // every destination (still endpoint-independent, a new public port).
        let wan_ip = rb.uplink_ip().unwrap();
        let cport = p.client.local_addr().port();
        nft(
            rb,
            &format!(
                "flush chain ip nat postrouting\n\
                 add rule ip nat postrouting oif \"{wan}\" udp sport {cport} snat to {wan_ip}:40000\n\
                 add rule ip nat postrouting oif \"{wan}\" masquerade\n"
            ),
        )
        .await?;
        rb.flush_nat_state().await?;
        let rebooted = Instant::now();
        let ok_after = echo_works_after(
            &p,
            rebooted,
            Duration::from_secs(20),
            Duration::from_millis(500),
        )
        .await;
        let transfer = transfer.await?;
        let stats = p.client.stats();
        println!(
            "NAT reboot (public port {:?} -> {:?}): a new connection worked after {ok_after:?}; running transfer: {}; reconnects {}",
            before,
            stats.public_addr,
            if transfer.is_ok() { "completed".to_owned() } else { "broken (the tunnel was rebuilt)".to_owned() },
            stats.reconnects
        );
        let ok_after = ok_after
            .ok_or_else(|| anyhow::anyhow!("no new connection within 20 s of the reboot"))?;
        anyhow::ensure!(
            stats.public_addr != before,
            "the router did not move the client's public port: {before:?}"
        );
        // Before the silence limit, the tunnel stayed dead until its 15 s idle timeout.
        anyhow::ensure!(
            ok_after < Duration::from_secs(10),
            "took {ok_after:?}: as long as the idle timeout path"
        );
        stop(p.client).await;
        stop(p.server).await;
        Ok(())
    });
}
