//! Router port mapping against a real miniupnpd on the lab NAT (issue #17 item 3): for
//! UPnP-IGD, NAT-PMP and PCP the engine gets a mapping of its tunnel port, offers it,
//! and a symmetric peer, hopeless against a port-restricted NAT without it, connects
//! direct through it; the mapping is gone from the router after stop; `portMapping: off`
//! sends the router nothing; `stunfwd nat` says what the router offers.
//!
//!   cargo test -p stunfwd-lab --test portmap -- --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use stunfwd_core::{Engine, Error, PathKind, State};
use stunfwd_lab::miniupnpd::{redirects, Service};
use stunfwd_lab::*;

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// Peers on two sites: one behind a port-restricted NAT running miniupnpd with
/// `service`, the other behind a symmetric NAT, `mapped_role` being the mapped side.
/// No relay: without the mapping this pair is hopeless (NoPath).
struct Pair {
    mapped: Site,
    client: Arc<Engine>,
    server: Arc<Engine>,
    mapped_engine: Arc<Engine>,
    state: Result<State, Error>,
    cdev: patchbay::Device,
    echo_port: u16,
    millis: f64,
}

async fn pair(
    world: &World,
    service: Service,
    mapped_role: &str,
    extra: serde_json::Value,
) -> anyhow::Result<Pair> {
    let n = world.id();
    let mapped = world
        .add_site(SiteSpec::new(&format!("m{n}"), NatKind::PortRestricted).port_mapper(service))
        .await?;
    let other = world
        .add_site(SiteSpec::new(&format!("s{n}"), NatKind::Symmetric))
        .await?;
    let (sdev, cdev) = if mapped_role == "server" {
        (mapped.devices[0].clone(), other.devices[0].clone())
    } else {
        (other.devices[0].clone(), mapped.devices[0].clone())
    };
    let echo = tcp_echo(&sdev).await?;
    let room = format!("portmap-{n}");
    let server = Arc::new(start_engine(
        &sdev,
        world.config("server", &room, extra.clone()),
    )?);
    let mut cextra = extra;
    cextra["mappings"] = serde_json::json!([format!("tcp:0:{echo}")]);
    let t = Instant::now();
    let client = Arc::new(start_engine(&cdev, world.config("client", &room, cextra))?);
    let c = client.clone();
    let state =
        tokio::task::spawn_blocking(move || c.wait_connected(Duration::from_secs(30))).await?;
    let millis = t.elapsed().as_secs_f64() * 1000.0;
    let echo_port = client.mappings()[0].listen.port();
    let mapped_engine = if mapped_role == "server" {
        server.clone()
    } else {
        client.clone()
    };
    Ok(Pair {
        mapped,
        client,
        server,
        mapped_engine,
        state,
        cdev,
        echo_port,
        millis,
    })
}

async fn stop(client: Arc<Engine>, server: Arc<Engine>) {
    let _ = tokio::task::spawn_blocking(move || {
        client.stop(Duration::from_secs(2));
        server.stop(Duration::from_secs(2));
    })
    .await;
}

#[test]
fn each_protocol_maps_the_tunnel_port_and_a_symmetric_peer_connects_direct_through_it() {
    run(async {
        for service in Service::ALL {
            for role in ["server", "client"] {
                let world = World::new(WorldOptions::default()).await?;
                let p = pair(&world, service, role, serde_json::json!({})).await?;
                let miniupnpd = p.mapped.miniupnpd.as_ref().expect("miniupnpd");
                let state = match &p.state {
                    Ok(s) => s.clone(),
                    Err(e) => bail!(
                        "{} ({role} mapped): {e}\nminiupnpd's log:\n{}\nthe router's ruleset:\n{}\nconntrack:\n{}",
                        service.protocol(),
                        miniupnpd.log(),
                        router_output(&p.mapped.router, "nft", &["list", "ruleset"]).await?,
                        conntrack_list(&p.mapped.router).await?
                    ),
                };
                let State::Connected { path, .. } = state else {
                    bail!("unexpected state {state}");
                };
                echo_through(&p.cdev, p.echo_port, data(100_000), Duration::from_secs(20)).await?;
                let stats = p.mapped_engine.stats();
                let pm = &stats.port_mapping;
                let rules = redirects(&p.mapped.router).await?;
                println!(
                    "{} ({role} behind the mapping): {} in {:.0} ms; mapping {}; router rules {rules:?}",
                    service.protocol(),
                    path.as_str(),
                    p.millis,
                    pm.describe(),
                );
                ensure!(path == PathKind::Direct, "path {}", path.as_str());
                ensure!(
                    pm.protocol.map(|p| p.as_str()) == Some(service.protocol()),
                    "protocol: {}",
                    pm.describe()
                );
                let external = pm.external.expect("external address");
                ensure!(
                    external.ip() == std::net::IpAddr::V4(p.mapped.public_ip()),
                    "external {external} is not the site's public address"
                );
                ensure!(
                    pm.gateway == p.mapped.router.downstream_gw(),
                    "gateway {:?}",
                    pm.gateway
                );
                ensure!(
                    rules
                        .iter()
                        .any(|r| r.contains(&format!("dport {} ", external.port()))),
                    "no redirect of port {} in the router: {rules:?}",
                    external.port()
                );
                stop(p.client, p.server).await;
                let rules = redirects(&p.mapped.router).await?;
                ensure!(
                    rules.is_empty(),
                    "the mapping outlived the engine: {rules:?}\n{}",
                    miniupnpd.log()
                );
            }
        }
        Ok(())
    });
}

#[test]
fn port_mapping_off_asks_the_router_nothing() {
    run(async {
        for service in [Service::Pcp, Service::Upnp] {
            let world = World::new(WorldOptions::default()).await?;
            let p = pair(
                &world,
                service,
                "server",
                // Birthday punching off too: it connects this pair without a mapping
                // (issue #17), and the test is about what `off` leaves hopeless.
                serde_json::json!({"portMapping": "off", "performance": {"birthdaySockets": 0}}),
            )
            .await?;
            let miniupnpd = p.mapped.miniupnpd.as_ref().expect("miniupnpd");
            let log = miniupnpd.log();
            let dev_ip = p.mapped.devices[0].ip().expect("ip").to_string();
            let asked: Vec<&str> = log.lines().filter(|l| l.contains(&dev_ip)).collect();
            let stats = p.mapped_engine.stats();
            println!(
                "{} router, portMapping off: {:?}; mapping {}; miniupnpd lines naming {dev_ip}: {asked:?}",
                service.protocol(),
                p.state.as_ref().map(|s| s.to_string()),
                stats.port_mapping.describe()
            );
            ensure!(asked.is_empty(), "miniupnpd was asked: {asked:?}");
            ensure!(stats.port_mapping.protocol.is_none());
            ensure!(redirects(&p.mapped.router).await?.is_empty());
            ensure!(
                matches!(p.state, Err(Error::NoPath { .. })),
                "without the mapping the pair must stay hopeless: {:?}",
                p.state
            );
            stop(p.client, p.server).await;
        }
        Ok(())
    });
}

#[test]
fn nat_cli_reports_port_mapping() {
    run(async {
        ensure!(
            stunfwd_bin().is_file(),
            "build the CLI first: cargo build -p stunfwd-cli"
        );
        let world = World::new(WorldOptions::default()).await?;
        let plain = world
            .add_site(SiteSpec::new("cli-none", NatKind::PortRestricted))
            .await?;
        let mut sites = vec![(None, plain)];
        for service in Service::ALL {
            let spec = SiteSpec::new(&format!("cli-{}", service.name()), NatKind::PortRestricted)
                .port_mapper(service);
            sites.push((Some(service), world.add_site(spec).await?));
        }
        for (service, site) in &sites {
            let mut cmd = tokio::process::Command::new(stunfwd_bin());
            cmd.args(["nat", "--stun", &world.coturn[0].to_string()])
                .stdout(std::process::Stdio::piped());
            let out = site.devices[0]
                .spawn_command(cmd)?
                .wait_with_output()
                .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find(|l| l.starts_with("port mapping: "))
                .unwrap_or("(no port mapping line)");
            println!("{}: {line}", site.spec.label());
            let gw = site.router.downstream_gw().expect("gateway");
            let want = match service {
                Some(s) => format!(
                    "port mapping: {} on {gw} ({}:",
                    s.protocol(),
                    site.public_ip()
                ),
                None => format!("port mapping: none (no UPnP, NAT-PMP or PCP answer from {gw})"),
            };
            ensure!(line.starts_with(&want), "{line:?} is not {want:?}…");
            if service.is_some() {
                ensure!(
                    redirects(&site.router).await?.is_empty(),
                    "`stunfwd nat` left its probe mapping on the router"
                );
            }
        }
        Ok(())
    });
}
