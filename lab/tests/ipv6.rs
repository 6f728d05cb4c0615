//! IPv6 behind firewalls (issue #17). Dual-stack sites: IPv4 behind a NAT, and a
//! global IPv6 address (2001:db8:1::/48, inside the lab's namespaces) behind a
//! stateful firewall on the same router that lets in only return traffic, no NAT66.
//!
//! - Two such sites connect directly over IPv6 by punching, even with symmetric
//!   IPv4 NATs (hopeless over IPv4) and no relay.
//! - A dual-stack site and an IPv4-only one connect over IPv4.
//! - The rendezvous server and its STUN responder answer over IPv6, and so does
//!   coturn when asked to listen there too.
//!
//!   cargo test -p stunfwd-lab --test ipv6 -- --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay::Device;
use sha2::{Digest, Sha256};
use stunfwd_core::{Engine, PathKind};
use stunfwd_lab::*;

/// Data sent through the tunnel in each test.
const DATA_LEN: usize = 1 << 20;

/// A server peer on `sdev` with a TCP echo, a client peer on `cdev` forwarding to it;
/// waits until both are connected. `extra` is added to both configs.
async fn pair(
    world: &World,
    (sdev, cdev): (&Device, &Device),
    room: &str,
    client_extra: serde_json::Value,
) -> anyhow::Result<(Arc<Engine>, Arc<Engine>, u16, Duration)> {
    let echo = tcp_echo(sdev).await?;
    let server = Arc::new(start_engine(
        sdev,
        world.config("server", room, serde_json::json!({})),
    )?);
    let mut extra = client_extra;
    extra["mappings"] = serde_json::json!([format!("tcp:0:{echo}")]);
    let started = Instant::now();
    let client = Arc::new(start_engine(cdev, world.config("client", room, extra))?);
    for e in [&client, &server] {
        let e = e.clone();
        tokio::task::spawn_blocking(move || e.wait_connected(Duration::from_secs(20))).await??;
    }
    let took = started.elapsed();
    let port = client.mappings()[0].listen.port();
    Ok((server, client, port, took))
}

/// 1 MiB through the tunnel and back, compared byte for byte; returns its SHA-256.
async fn echo_checked(cdev: &Device, port: u16) -> anyhow::Result<String> {
    let data: Vec<u8> = (0..DATA_LEN as u32).map(|i| (i * 31 + 7) as u8).collect();
    let sum = hex(&Sha256::digest(&data));
    echo_through(cdev, port, data, Duration::from_secs(20)).await?;
    Ok(sum)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn stop(engines: [Arc<Engine>; 2]) {
    for e in engines {
        let _ = tokio::task::spawn_blocking(move || e.stop(Duration::from_secs(2))).await;
    }
}

/// The lab's IPv6 is what it claims: a device of a dual-stack site has a global
/// address, reaches the servers over IPv6, and its firewall drops a packet from
/// outside until the device has sent toward its source; then the answer gets in.
#[test]
fn dual_stack_sites_have_global_ipv6_behind_a_stateful_firewall() {
    run(async {
        let world = World::new(WorldOptions {
            coturn_v6: true,
            ..WorldOptions::default()
        })
        .await?;
        let a = world
            .add_site(SiteSpec::new("fa", NatKind::PortRestricted).ipv6(true))
            .await?;
        let b = world
            .add_site(SiteSpec::new("fb", NatKind::PortRestricted).ipv6(true))
            .await?;
        let (a6, b6) = (a.device_v6(0).unwrap(), b.device_v6(0).unwrap());
        println!(
            "site fa device {a6}, site fb device {b6}, servers {}",
            world.server_v6
        );
        assert_eq!(a6.segments()[0] & 0xe000, 0x2000, "global unicast");
        // The rendezvous server's STUN responder over IPv6 sees the device's own address.
        let sa = udp_socket(&a.devices[0], "[::]:0".parse()?).await?;
        let stun6 = SocketAddr::from((world.server_v6, 3480));
        let coturn6 = world.coturn_v6.unwrap();
        let (answer, turn) = in_ns(&a.devices[0], move || {
            Ok((stun_query(&sa, stun6)?, stun_query(&sa, coturn6)?))
        })
        .await?;
        println!(
            "STUN over IPv6 from fa: rendezvous says {}, coturn at {coturn6} says {}",
            answer.mapped, turn.mapped
        );
        assert_eq!(answer.mapped.ip(), IpAddr::V6(a6), "no NAT66");
        assert_eq!(turn.mapped, answer.mapped);
        // Unsolicited from fb to fa: dropped by fa's firewall.
        let ra = udp_socket(&a.devices[0], SocketAddr::from((a6, 4000))).await?;
        let sb = udp_socket(&b.devices[0], SocketAddr::from((b6, 4001))).await?;
        ra.set_read_timeout(Some(Duration::from_millis(500)))?;
        sb.set_read_timeout(Some(Duration::from_millis(500)))?;
        sb.send_to(b"unsolicited", SocketAddr::from((a6, 4000)))?;
        let mut buf = [0u8; 64];
        assert!(ra.recv_from(&mut buf).is_err(), "the firewall let it in");
        // fa sends first (its firewall now has the flow), then fb's answer gets in.
        ra.send_to(b"out", SocketAddr::from((b6, 4001)))?;
        let _ = sb.recv_from(&mut buf);
        sb.send_to(b"answer", SocketAddr::from((a6, 4000)))?;
        let (n, from) = ra.recv_from(&mut buf)?;
        assert_eq!(
            (&buf[..n], from),
            (&b"answer"[..], SocketAddr::from((b6, 4001)))
        );
        println!("firewall: unsolicited dropped, return traffic let in");
        Ok(())
    });
}

/// Both sites dual-stack with symmetric IPv4 NATs (hopeless over IPv4) and no relay:
/// the peers punch their IPv6 firewalls and tunnel directly over IPv6. The client
/// meets the rendezvous server over IPv6 too.
#[test]
fn two_firewalled_ipv6_sites_connect_directly_over_ipv6() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let s = world
            .add_site(SiteSpec::new("ss", NatKind::Symmetric).ipv6(true))
            .await?;
        let c = world
            .add_site(SiteSpec::new("cc", NatKind::Symmetric).ipv6(true))
            .await?;
        let (sdev, cdev) = (&s.devices[0], &c.devices[0]);
        let url6 = format!("http://[{}]:8080/", world.server_v6);
        let room = format!("v6-{}", world.id());
        let (server, client, port, took) = pair(
            &world,
            (sdev, cdev),
            &room,
            serde_json::json!({ "signalUrl": url6 }),
        )
        .await?;
        let sum = echo_checked(cdev, port).await?;
        let (cs, ss) = (client.stats(), server.stats());
        println!(
            "connected in {} ms; client: path {:?} peer {:?} (server device {:?}); server: path {:?} peer {:?}; 1 MiB echo sha256 {sum}",
            took.as_millis(),
            cs.path,
            cs.peer_addr,
            s.device_v6(0),
            ss.path,
            ss.peer_addr
        );
        assert_eq!(cs.path, Some(PathKind::Direct));
        assert_eq!(
            cs.peer_addr.map(|a| a.ip()),
            s.device_v6(0).map(IpAddr::V6),
            "the client reaches the server's global IPv6 address"
        );
        assert_eq!(ss.peer_addr.map(|a| a.ip()), c.device_v6(0).map(IpAddr::V6));
        stop([client, server]).await;
        Ok(())
    });
}

/// A dual-stack site and an IPv4-only one: the IPv6 candidates go unanswered and the
/// tunnel runs over IPv4 (both port-restricted, punched), with plain IPv4 addresses
/// on both sides.
#[test]
fn a_dual_stack_site_and_an_ipv4_only_site_connect_over_ipv4() {
    run(async {
        let world = World::new(WorldOptions::default()).await?;
        let s = world
            .add_site(SiteSpec::new("ds", NatKind::PortRestricted).ipv6(true))
            .await?;
        let c = world
            .add_site(SiteSpec::new("v4", NatKind::PortRestricted))
            .await?;
        assert!(c.device_v6(0).is_none());
        let room = format!("v4only-{}", world.id());
        let (server, client, port, took) = pair(
            &world,
            (&s.devices[0], &c.devices[0]),
            &room,
            serde_json::json!({}),
        )
        .await?;
        let sum = echo_checked(&c.devices[0], port).await?;
        let (cs, ss) = (client.stats(), server.stats());
        println!(
            "connected in {} ms; client: path {:?} peer {:?}; server: path {:?} peer {:?} (local {}); 1 MiB echo sha256 {sum}",
            took.as_millis(),
            cs.path,
            cs.peer_addr,
            ss.path,
            ss.peer_addr,
            ss.local_addr
        );
        assert_eq!(cs.path, Some(PathKind::Direct));
        assert_eq!(
            cs.peer_addr.map(|a| a.ip()),
            Some(IpAddr::V4(s.public_ip()))
        );
        assert!(ss.local_addr.is_ipv6(), "the server's socket is dual-stack");
        assert_eq!(
            ss.peer_addr.map(|a| a.ip()),
            Some(IpAddr::V4(c.public_ip())),
            "named as IPv4, not ::ffff:"
        );
        stop([client, server]).await;
        Ok(())
    });
}
