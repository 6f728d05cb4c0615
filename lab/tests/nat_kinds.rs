//! The lab's NATs behave as they claim, seen with real STUN from a device behind
//! them: port preservation, sequential and preserving symmetric mappings, the stale
//! conntrack entries of a Linux router without an input filter (and the port
//! collision they cause, issue #16), double NAT behind a CGNAT in 100.64.0.0/10,
//! hairpinning on and off, a 30 s UDP timeout, RFC 5780 detection of every kind, and
//! the two STUN set-ups.
//!
//!   cargo test -p stunfwd-lab --test nat_kinds -- --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::ensure;
use stunfwd_lab::*;

/// Runs blocking socket work off the runtime.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<R> + Send + 'static,
) -> anyhow::Result<R> {
    tokio::task::spawn_blocking(f).await?
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Every STUN endpoint of a world: coturn's two IPs on both ports, and the plain
/// responder.
fn stun_endpoints(world: &World) -> Vec<SocketAddr> {
    let (ip0, ip1) = (world.coturn[0].ip(), world.coturn[1].ip());
    vec![
        SocketAddr::new(ip0, 3478),
        SocketAddr::new(ip1, 3479),
        SocketAddr::new(ip1, 3478),
        SocketAddr::new(ip0, 3479),
        world.plain_stun,
    ]
}

/// The mapped ports one socket gets from each of `servers`, in order.
async fn mapped_ports(sock: &UdpSocket, servers: &[SocketAddr]) -> anyhow::Result<Vec<u16>> {
    let sock = sock.try_clone()?;
    let servers = servers.to_vec();
    blocking(move || {
        servers
            .iter()
            .map(|s| Ok(stun_query(&sock, *s)?.mapped.port()))
            .collect()
    })
    .await
}

#[test]
fn stun_setups_plain_has_no_other_address_and_coturn_has_one() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let site = world
            .add_site(SiteSpec::new("st", NatKind::FullCone))
            .await?;
        let sock = udp_socket(&site.devices[0], any_port()).await?;
        let (plain, coturn) = (world.plain_stun, world.coturn[0]);
        let (p, c) =
            blocking(move || Ok((stun_query(&sock, plain)?, stun_query(&sock, coturn)?))).await?;
        println!(
            "plain STUN {plain}: mapped {} OTHER-ADDRESS {:?}",
            p.mapped, p.other
        );
        println!(
            "coturn {coturn}: mapped {} OTHER-ADDRESS {:?}",
            c.mapped, c.other
        );
        ensure!(p.other.is_none(), "the plain responder sent OTHER-ADDRESS");
        ensure!(
            c.other == Some(SocketAddr::new(world.coturn[1].ip(), 3479)),
            "coturn's OTHER-ADDRESS: {:?}",
            c.other
        );
        ensure!(world.stun_servers(StunSetup::Plain) == vec![plain.to_string()]);
        ensure!(world.stun_servers(StunSetup::Rfc5780).len() == 2);
        Ok(())
    });
}

#[test]
fn linux_masquerade_preserves_ports_and_keeps_stale_entries_that_steal_them() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let ip1 = world.coturn[1].ip();
        for (i, kind) in [NatKind::LinuxMasquerade, NatKind::PortRestricted]
            .into_iter()
            .enumerate()
        {
            let site = world
                .add_site(SiteSpec::new(&format!("lm{i}"), kind))
                .await?;
            let sock = udp_socket(&site.devices[0], any_port()).await?;
            let local = sock.local_addr()?.port();
            let ports = mapped_ports(&sock, &stun_endpoints(&world)).await?;
            println!("{kind}: local port {local}, mapped by five STUN endpoints: {ports:?}");
            ensure!(
                ports.iter().all(|p| *p == local),
                "{kind}: the mapping must keep the local port for every destination: {ports:?}"
            );
            // A peer's packet arrives first, before the device has sent to the peer.
            let peer_sock =
                udp_socket(&world.server, SocketAddr::new(ip1, 3590 + i as u16)).await?;
            let peer = Reflector::start(peer_sock)?;
            let public = SocketAddr::new(IpAddr::V4(site.public_ip()), local);
            peer.poke(public)?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let stale = conntrack_udp(&site.router, Some(peer.addr().ip()), Some(local)).await?;
            println!(
                "{kind}: conntrack after the early packet from {}: {stale:#?}",
                peer.addr()
            );
            // Now the device sends to that peer from the same socket.
            let peer_addr = peer.addr();
            let s2 = sock.try_clone()?;
            let seen = blocking(move || stun_query(&s2, peer_addr)).await?.mapped;
            println!("{kind}: the peer then sees the device at {seen} (local port {local})");
            if kind == NatKind::LinuxMasquerade {
                ensure!(
                    stale.iter().any(|l| l.contains("UNREPLIED")),
                    "no UNREPLIED entry for the early packet: {stale:?}"
                );
                ensure!(
                    seen.port() != local,
                    "the stale entry should have forced a new source port"
                );
            } else {
                ensure!(
                    stale.is_empty(),
                    "patchbay's NAT must not confirm the dropped early packet: {stale:?}"
                );
                ensure!(seen.port() == local, "the port must be kept: {seen}");
            }
        }
        Ok(())
    });
}

#[test]
fn symmetric_sequential_hands_out_consecutive_ports() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let site = world
            .add_site(SiteSpec::new("sq", NatKind::SymmetricSequential))
            .await?;
        let sock = udp_socket(&site.devices[0], any_port()).await?;
        let ports = mapped_ports(&sock, &stun_endpoints(&world)).await?;
        let other = udp_socket(&site.devices[0], any_port()).await?;
        let next = mapped_ports(&other, &stun_endpoints(&world)[..1]).await?[0];
        println!(
            "symmetric-sequential: local {}, mapped {ports:?}; a second socket's first flow: {next}",
            sock.local_addr()?.port()
        );
        let base = nat::SEQUENTIAL_BASE_PORT;
        ensure!(
            ports
                .iter()
                .all(|p| (base..base + nat::SEQUENTIAL_PORTS).contains(p)),
            "ports outside the counter's range: {ports:?}"
        );
        for w in ports.windows(2) {
            ensure!(
                (1..=3).contains(&w[1].wrapping_sub(w[0])),
                "not sequential: {ports:?}"
            );
        }
        ensure!(
            (1..=3).contains(&next.wrapping_sub(*ports.last().unwrap())),
            "the next socket does not continue the sequence: {next}"
        );
        Ok(())
    });
}

#[test]
fn symmetric_preserving_keeps_the_port_for_the_first_destination_only() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let site = world
            .add_site(SiteSpec::new("sp", NatKind::SymmetricPreserving))
            .await?;
        let ends = stun_endpoints(&world);
        let sock = udp_socket(&site.devices[0], any_port()).await?;
        let local = sock.local_addr()?.port();
        // First destination, two others, then the first again.
        let ports = mapped_ports(&sock, &[ends[0], ends[1], ends[2], ends[0]]).await?;
        let other = udp_socket(&site.devices[0], any_port()).await?;
        let other_local = other.local_addr()?.port();
        let first_of_other = mapped_ports(&other, &ends[2..3]).await?[0];
        println!(
            "symmetric-preserving: local {local}: mapped {ports:?}; a second socket (local {other_local}) to its first destination: {first_of_other}"
        );
        ensure!(ports[0] == local, "first destination keeps the port");
        ensure!(
            ports[1] != local && ports[2] != local && ports[1] != ports[2],
            "later destinations get other ports: {ports:?}"
        );
        ensure!(ports[3] == local, "the first flow keeps its mapping");
        ensure!(
            first_of_other == other_local,
            "every socket's first destination keeps its port"
        );
        Ok(())
    });
}

#[test]
fn double_nat_maps_through_a_cgnat_in_100_64() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let site = world
            .site_behind_cgnat("dn", NatKind::PortRestricted, 1)
            .await?;
        let home_wan = site.router.uplink_ip().unwrap();
        let public = site.public_ip();
        let cgn_net = patchbay::Ipv4Net::new(Ipv4Addr::new(100, 64, 0, 0), 10)?;
        let dev = site.devices[0].clone();
        let sock = udp_socket(&dev, any_port()).await?;
        let s2 = sock.try_clone()?;
        let ends = stun_endpoints(&world);
        let e2 = ends.clone();
        let answers: Vec<SocketAddr> =
            blocking(move || e2.iter().map(|e| Ok(stun_query(&s2, *e)?.mapped)).collect()).await?;
        println!(
            "double NAT: device {} -> home router WAN {home_wan} -> CGNAT public {public}; STUN saw {answers:?}",
            ip_of(&dev)
        );
        ensure!(
            cgn_net.contains(&home_wan),
            "home WAN {home_wan} not in 100.64.0.0/10"
        );
        ensure!(
            !cgn_net.contains(&public),
            "public address {public} in 100.64.0.0/10"
        );
        ensure!(
            answers
                .iter()
                .all(|a| *a == answers[0] && a.ip() == IpAddr::V4(public)),
            "endpoint-independent mapping to the CGNAT's address: {answers:?}"
        );
        // Filtering: an unsolicited packet is dropped, an answer to our packet passes.
        let peer = Reflector::start(
            udp_socket(&world.server, SocketAddr::new(world.coturn[1].ip(), 3595)).await?,
        )?;
        peer.poke(answers[0])?;
        let s3 = sock.try_clone()?;
        let unsolicited = blocking(move || recv_within(&s3, Duration::from_millis(500))).await?;
        let peer_addr = peer.addr();
        let s4 = sock.try_clone()?;
        blocking(move || stun_query(&s4, peer_addr)).await?;
        peer.poke(answers[0])?;
        let s5 = sock.try_clone()?;
        let solicited = blocking(move || recv_within(&s5, Duration::from_millis(1000))).await?;
        println!(
            "double NAT: unsolicited packet delivered: {unsolicited}; after we sent to it: {solicited}"
        );
        ensure!(!unsolicited && solicited, "filtering is not as expected");
        for r in site.nat_routers() {
            let n = conntrack_udp(r, None, Some(ends[0].port())).await?;
            ensure!(!n.is_empty(), "no conntrack entry on {}", r.name());
        }
        Ok(())
    });
}

/// True when a datagram that is not STUN arrives on `sock` within `wait`.
fn recv_within(sock: &UdpSocket, wait: Duration) -> anyhow::Result<bool> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let until = std::time::Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < until {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n > 0 && buf[0] >= 4 {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[test]
fn hairpin_on_delivers_to_a_neighbour_s_public_address_and_off_does_not() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        for on in [true, false] {
            let name = if on { "hp1" } else { "hp0" };
            let site = world
                .add_site(
                    SiteSpec::new(name, NatKind::PortRestricted)
                        .devices(2)
                        .hairpin(on),
                )
                .await?;
            let a = udp_socket(&site.devices[0], any_port()).await?;
            let b = udp_socket(&site.devices[1], any_port()).await?;
            let coturn = world.coturn[0];
            let a2 = a.try_clone()?;
            let public = blocking(move || Ok(stun_query(&a2, coturn)?.mapped)).await?;
            // B sends to A's public address from inside the same NAT.
            let got = blocking(move || {
                for _ in 0..5 {
                    b.send_to(b"hairpin hello", public)?;
                    if recv_within(&a, Duration::from_millis(200))? {
                        return Ok(true);
                    }
                }
                Ok(false)
            })
            .await?;
            println!(
                "hairpin {}: neighbour's packet to {public} delivered: {got}",
                if on { "on" } else { "off" }
            );
            ensure!(got == on, "hairpin {on}: delivered {got}");
        }
        Ok(())
    });
}

#[test]
fn short_udp_timeout_applies_to_every_kind() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        for (i, kind) in [NatKind::PortRestricted, NatKind::LinuxMasquerade]
            .into_iter()
            .enumerate()
        {
            let site = world
                .add_site(SiteSpec::new(&format!("to{i}"), kind).udp_timeout(30))
                .await?;
            let udp = sysctl_get(&site.router, "net.netfilter.nf_conntrack_udp_timeout").await?;
            let stream = sysctl_get(
                &site.router,
                "net.netfilter.nf_conntrack_udp_timeout_stream",
            )
            .await?;
            let sock = udp_socket(&site.devices[0], any_port()).await?;
            let coturn = world.coturn[0];
            blocking(move || stun_query(&sock, coturn)).await?;
            let entries = conntrack_udp(&site.router, None, Some(3478)).await?;
            // `udp 17 <seconds left> src=...`
            let left: Vec<u32> = entries
                .iter()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
                .collect();
            println!("{kind} with a 30 s UDP timeout: sysctl udp {udp} stream {stream}; entry seconds left {left:?}");
            ensure!(udp == "30" && stream == "30", "timeouts {udp}/{stream}");
            ensure!(
                !left.is_empty() && left.iter().all(|s| *s <= 30),
                "entries: {entries:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn rfc5780_detects_every_kind_and_a_plain_server_cannot_and_allocation_is_measured() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let mut specs: Vec<SiteSpec> = NatKind::ALL
            .iter()
            .enumerate()
            .map(|(i, k)| SiteSpec::new(&format!("dk{i}"), *k))
            .collect();
        specs.push(
            SiteSpec::new("dkd", NatKind::PortRestricted).behind_cgnat(NatKind::PortRestricted),
        );
        let mut wrong = Vec::new();
        for spec in specs {
            let site = world.add_site(spec.clone()).await?;
            let mut found = Vec::new();
            for setup in StunSetup::ALL {
                let servers = world.stun_servers(setup);
                let d = site.devices[0]
                    .spawn(move |_| async move {
                        stunfwd_core::stun::detect_nat_and_allocation(
                            &servers,
                            "0.0.0.0:0".parse().unwrap(),
                        )
                        .await
                    })?
                    .await??;
                found.push((
                    setup,
                    d.nat.as_str(),
                    d.mapping.as_str(),
                    d.filtering.as_str(),
                ));
                // Port allocation is measured with either server (fresh sockets, one
                // destination each).
                if let Some(want) = spec.kind.expected_allocation() {
                    if d.allocation.to_string() != want {
                        wrong.push(format!(
                            "{} ({}): allocation {} instead of {want}",
                            spec.label(),
                            setup.name(),
                            d.allocation
                        ));
                    }
                }
            }
            println!("{:<44} {found:?}", spec.label());
            let (_, nat, _, _) = found[0];
            if nat != spec.expected_type() {
                wrong.push(format!(
                    "{}: {nat} instead of {}",
                    spec.label(),
                    spec.expected_type()
                ));
            }
            let (_, _, _, plain_filtering) = found[1];
            ensure!(
                plain_filtering == "unknown",
                "a plain STUN server cannot measure filtering: {found:?}"
            );
        }
        ensure!(wrong.is_empty(), "detection: {wrong:?}");
        Ok(())
    });
}

/// `stunfwd nat` (the real binary, run behind each symmetric kind) prints the port
/// allocation next to the mapping behaviour, e.g. `mapping: address-and-port-dependent,
/// allocation: sequential (+1)`.
#[test]
fn stunfwd_nat_reports_port_allocation() {
    if skip() {
        return;
    }
    if !stunfwd_bin().is_file() {
        println!(
            "SKIPPED: {} is not built (cargo build -p stunfwd-cli)",
            stunfwd_bin().display()
        );
        return;
    }
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        for (i, kind) in [
            NatKind::SymmetricSequential,
            NatKind::SymmetricPreserving,
            NatKind::Symmetric,
        ]
        .into_iter()
        .enumerate()
        {
            let site = world
                .add_site(SiteSpec::new(&format!("na{i}"), kind))
                .await?;
            let mut cmd = tokio::process::Command::new(stunfwd_bin());
            cmd.arg("nat")
                .arg("--stun")
                .arg(world.coturn[0].to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let out = site.devices[0]
                .spawn_command(cmd)?
                .wait_with_output()
                .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            println!("{kind}:\n{text}");
            let want = format!(
                "mapping:   address-and-port-dependent, allocation: {}",
                kind.expected_allocation()
                    .expect("fixed by the kind's rules")
            );
            ensure!(
                out.status.success() && text.lines().any(|l| l == want),
                "{kind}: expected the line {want:?} in {text:?} (stderr {:?})",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    });
}
