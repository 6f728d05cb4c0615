//! coturn started from the README's command (as every lab world starts it): two
//! allocations on it reach each other relay to relay, and no peer reaches the TURN
//! host's loopback through it. Each test also runs a control coturn whose command is
//! changed so that the probe must see the opposite (a refused relay, an open
//! loopback): the probes can fail.
//!
//!   cargo test -p stunfwd-lab --test coturn -- --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context};
use stunfwd_lab::turn::{TurnClient, TurnError};
use stunfwd_lab::*;

fn any_port() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// A second coturn on the world's server, on port `port`: the README command plus
/// the words `with` (e.g. a flag the README must not have).
struct Control {
    child: tokio::process::Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn control_coturn(world: &World, with: &[String], port: u16) -> anyhow::Result<Control> {
    let (ip0, ip1) = (world.coturn[0].ip(), world.coturn[1].ip());
    let mut argv: Vec<String> = coturn::argv(coturn::README, ip0, ip1, TURN_PASSWORD)?;
    argv.extend(with.iter().cloned());
    let dir =
        std::env::temp_dir().join(format!("stunfwd-lab-control-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    argv.extend(coturn::lab_extras(&dir));
    let (min, max) = (u32::from(port) * 10, u32::from(port) * 10 + 999);
    for (flag, value) in [
        ("--listening-port", port.to_string()),
        ("--alt-listening-port", (port + 1).to_string()),
        ("--min-port", min.to_string()),
        ("--max-port", max.to_string()),
    ] {
        argv.extend([flag.to_owned(), value]);
    }
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = world.server.spawn_command(cmd)?;
    let addr = SocketAddr::new(ip0, port);
    let control = Control { child, addr, dir };
    let probe = udp_socket(&world.server, any_port()).await?;
    tokio::task::spawn_blocking(move || stun_query(&probe, addr))
        .await?
        .context("control coturn does not answer")?;
    Ok(control)
}

async fn allocate(dev: &patchbay::Device, server: SocketAddr) -> anyhow::Result<TurnClient> {
    let sock = udp_socket(dev, any_port()).await?;
    tokio::task::spawn_blocking(move || {
        TurnClient::allocate(sock, server, TURN_USER, TURN_PASSWORD)
    })
    .await?
}

/// Two allocations on `server` (from devices behind two NATs): each permits the
/// other's relayed address, then each sends to it. Returns the permission results
/// and what each side received.
async fn relay_to_relay(
    world: &World,
    server: SocketAddr,
    tag: &str,
) -> anyhow::Result<(
    Vec<Result<(), TurnError>>,
    Vec<Option<(SocketAddr, Vec<u8>)>>,
    [SocketAddr; 2],
)> {
    let a = world
        .add_site(SiteSpec::new(&format!("{tag}a"), NatKind::Symmetric))
        .await?;
    let b = world
        .add_site(SiteSpec::new(&format!("{tag}b"), NatKind::Symmetric))
        .await?;
    let mut ca = allocate(&a.devices[0], server).await?;
    let mut cb = allocate(&b.devices[0], server).await?;
    let relays = [ca.relayed, cb.relayed];
    tokio::task::spawn_blocking(move || {
        let perms = vec![
            ca.create_permission(cb.relayed)?,
            cb.create_permission(ca.relayed)?,
        ];
        ca.send(cb.relayed, b"from A")?;
        cb.send(ca.relayed, b"from B")?;
        let got = vec![
            cb.recv_data(Duration::from_secs(1))?,
            ca.recv_data(Duration::from_secs(1))?,
        ];
        Ok((perms, got, relays))
    })
    .await?
}

#[test]
fn two_allocations_on_the_readme_coturn_reach_each_other() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        println!("coturn as started: {}", world.coturn_argv.join(" "));
        let (perms, got, relays) = relay_to_relay(&world, world.coturn[0], "r").await?;
        println!(
            "README coturn: relayed {relays:?}; permissions {perms:?}; B got {:?}; A got {:?}",
            got[0]
                .as_ref()
                .map(|(p, d)| (p, String::from_utf8_lossy(d).into_owned())),
            got[1]
                .as_ref()
                .map(|(p, d)| (p, String::from_utf8_lossy(d).into_owned()))
        );
        ensure!(
            perms.iter().all(Result::is_ok),
            "permissions refused: {perms:?}"
        );
        ensure!(
            got[0] == Some((relays[0], b"from A".to_vec()))
                && got[1] == Some((relays[1], b"from B".to_vec())),
            "relay to relay did not deliver: {got:?}"
        );

        // Control: the same command denying the relay address refuses exactly this,
        // and the probe sees it.
        let deny = format!("--denied-peer-ip={}", world.coturn[0].ip());
        let control = control_coturn(&world, std::slice::from_ref(&deny), 3600).await?;
        let (perms, got, _) = relay_to_relay(&world, control.addr, "c").await?;
        println!(
            "control with {deny}: permissions {perms:?}; received {:?}",
            got.iter().map(Option::is_some).collect::<Vec<_>>()
        );
        ensure!(
            perms.iter().all(|p| matches!(p, Err(e) if e.code == 403)),
            "the control should refuse with 403: {perms:?}"
        );
        ensure!(
            got.iter().all(Option::is_none),
            "the control relayed: {got:?}"
        );
        drop(control);

        // One CreatePermission that lists a peer's relayed address together with a
        // loopback address (a peer's 127.0.0.1 host candidate) is refused as a whole:
        // asking for permissions to every candidate of a peer in one request fails on
        // a coturn that keeps loopback closed.
        let site = world
            .add_site(SiteSpec::new("rp", NatKind::FullCone))
            .await?;
        let mut c = allocate(&site.devices[0], world.coturn[0]).await?;
        let other = relays[0];
        let loopback = SocketAddr::from(([127, 0, 0, 1], other.port()));
        let (alone, batch) = tokio::task::spawn_blocking(move || {
            anyhow::Ok((
                c.create_permissions(&[other])?,
                c.create_permissions(&[other, loopback])?,
            ))
        })
        .await??;
        println!("README coturn: permission for {other} alone: {alone:?}; with {loopback} in the same request: {batch:?}");
        ensure!(alone.is_ok(), "{alone:?}");
        ensure!(matches!(&batch, Err(e) if e.code == 403), "{batch:?}");
        Ok(())
    });
}

/// From a TURN client on a device: a permission towards each of `targets`, then a
/// Send indication to it. Returns the permission results and whether `listener` (in
/// the server's namespace) received anything.
async fn reach_loopback(
    world: &World,
    server: SocketAddr,
    tag: &str,
    targets: Vec<SocketAddr>,
    listener: UdpSocket,
) -> anyhow::Result<(
    Vec<(SocketAddr, Result<(), TurnError>)>,
    Vec<(SocketAddr, String)>,
)> {
    let site = world
        .add_site(SiteSpec::new(tag, NatKind::FullCone))
        .await?;
    let mut client = allocate(&site.devices[0], server).await?;
    tokio::task::spawn_blocking(move || {
        let mut perms = Vec::new();
        for t in &targets {
            perms.push((*t, client.create_permission(*t)?));
            client.send(*t, format!("to {t}").as_bytes())?;
        }
        listener.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut heard = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 1500];
        while std::time::Instant::now() < until {
            if let Ok((n, from)) = listener.recv_from(&mut buf) {
                heard.push((from, String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        }
        Ok((perms, heard))
    })
    .await?
}

#[test]
fn no_peer_reaches_the_turn_host_s_loopback_through_the_relay() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let open = ["--allow-loopback-peers".to_owned()];
        for (i, with) in [&[][..], &open[..]].into_iter().enumerate() {
            // Something listening on the TURN host: every local address, one port.
            let listener = udp_socket(&world.server, any_port()).await?;
            let port = listener.local_addr()?.port();
            let targets: Vec<SocketAddr> = ["127.0.0.1", "127.1.2.3", "0.0.0.0", "::1"]
                .iter()
                .map(|ip| SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port))
                .collect();
            let (server, _control) = if with.is_empty() {
                (world.coturn[0], None)
            } else {
                let c = control_coturn(&world, with, 3610).await?;
                (c.addr, Some(c))
            };
            let (perms, heard) =
                reach_loopback(&world, server, &format!("lo{i}"), targets, listener).await?;
            let name = if with.is_empty() {
                "README coturn"
            } else {
                "control with --allow-loopback-peers"
            };
            println!("{name}: permissions {perms:?}");
            println!("{name}: the TURN host's listener on port {port} heard {heard:?}");
            if with.is_empty() {
                ensure!(
                    perms.iter().all(|(_, p)| p.is_err()),
                    "a loopback permission was granted: {perms:?}"
                );
                ensure!(
                    perms
                        .iter()
                        .filter(|(t, _)| t.is_ipv4())
                        .all(|(_, p)| matches!(p, Err(e) if e.code == 403)),
                    "IPv4 loopback must be refused with 403: {perms:?}"
                );
                ensure!(
                    heard.is_empty(),
                    "data reached the TURN host's loopback: {heard:?}"
                );
            } else {
                ensure!(
                    !heard.is_empty(),
                    "the control must show that the probe can see a leak: {perms:?}"
                );
            }
        }
        Ok(())
    });
}
