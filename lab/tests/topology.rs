//! The sites are routed hops apart, as on a real path: a UDP packet sent with a small
//! IP TTL opens the sender's own NAT(s) and dies before the peer's NAT router sees it,
//! while the same packet with TTL 64 arrives. Seen with conntrack on both sides.
//!
//!   cargo test -p stunfwd-lab --test topology -- --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::ensure;
use stunfwd_lab::*;

/// The TTL that must open our own NATs and die before the peer's.
const SHORT_TTL: u32 = 3;

/// For each TTL: which of the sender's NAT routers recorded the packet, and whether
/// the receiver's outermost NAT router did.
struct Probe {
    ttl: u32,
    own: Vec<bool>,
    peer: bool,
}

async fn probe(from: &Site, to: &Site, ttl: u32, port: u16) -> anyhow::Result<Probe> {
    let sock = udp_socket(&from.devices[0], SocketAddr::from(([0, 0, 0, 0], 0))).await?;
    let dst = SocketAddr::new(IpAddr::V4(to.public_ip()), port);
    tokio::task::spawn_blocking(move || send_with_ttl(&sock, dst, ttl, b"ttl probe")).await??;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut own = Vec::new();
    for r in from.nat_routers() {
        own.push(!conntrack_udp(r, None, Some(port)).await?.is_empty());
    }
    let from_ip = IpAddr::V4(from.public_ip());
    let peer = !conntrack_udp(to.outer(), Some(from_ip), Some(port))
        .await?
        .is_empty();
    Ok(Probe { ttl, own, peer })
}

#[test]
fn a_short_ttl_opens_our_nat_and_dies_before_the_peer_s() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let a = world
            .add_site(SiteSpec::new("ta", NatKind::LinuxMasquerade))
            .await?;
        let b = world
            .add_site(SiteSpec::new("tb", NatKind::LinuxMasquerade))
            .await?;
        let d = world
            .add_site(
                SiteSpec::new("td", NatKind::PortRestricted).behind_cgnat(NatKind::PortRestricted),
            )
            .await?;
        let mut port = 42000;
        for (from, to) in [(&a, &b), (&d, &b), (&a, &d)] {
            let mut probes = Vec::new();
            for ttl in (1..=8).chain([64]) {
                port += 1;
                probes.push(probe(from, to, ttl, port).await?);
            }
            println!(
                "from {} (NAT routers {}) to {}'s public address {}:",
                from.spec.label(),
                from.nat_routers()
                    .iter()
                    .map(|r| r.name().to_owned())
                    .collect::<Vec<_>>()
                    .join(" -> "),
                to.spec.label(),
                to.public_ip()
            );
            for p in &probes {
                println!(
                    "  TTL {:>2}: recorded by own NAT routers {:?}, by the peer's NAT router: {}",
                    p.ttl, p.own, p.peer
                );
            }
            let first_own = probes
                .iter()
                .find(|p| p.own.iter().all(|o| *o))
                .map(|p| p.ttl);
            let first_peer = probes.iter().find(|p| p.peer).map(|p| p.ttl);
            println!(
                "  smallest TTL through all own NATs: {first_own:?}; smallest TTL reaching the peer's NAT router: {first_peer:?}"
            );
            let short = probes.iter().find(|p| p.ttl == SHORT_TTL).unwrap();
            let long = probes.iter().find(|p| p.ttl == 64).unwrap();
            ensure!(
                short.own.iter().all(|o| *o),
                "TTL {SHORT_TTL} must pass every NAT of the sender: {:?}",
                short.own
            );
            ensure!(
                !short.peer,
                "TTL {SHORT_TTL} must die before the peer's NAT router"
            );
            ensure!(long.peer, "TTL 64 must reach the peer's NAT router");
            ensure!(
                probes.windows(2).all(|w| w[0].peer <= w[1].peer),
                "a larger TTL must not reach less far"
            );
        }
        Ok(())
    });
}
