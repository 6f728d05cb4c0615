//! Router port mapping: asks the default gateway, and nothing else, to forward a public
//! UDP port to the tunnel socket, with PCP (RFC 6887), NAT-PMP (RFC 6886) or UPnP-IGD.
//! A router that grants one stops being a NAT for that port: any peer's packets reach
//! us, so a symmetric peer can connect straight to us where punching cannot work.
//!
//! [`map_udp`] makes a mapping ([`Lease`]), which is renewed and released by its holder
//! (the engine: `engine::portmap`); [`probe`] tells `stunfwd nat` what the router
//! offers. The pure parts (the gateway from the routing table, the NAT type a mapping
//! gives us) have unit tests; the protocols are tested against miniupnpd in the lab.

mod gateway;
mod upnp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU16;
use std::time::Duration;

use serde::Serialize;

pub use self::gateway::{default_gateway, parse_proc_net_route};
use crate::stun::client::NatType;

/// How long a mapping is asked for. RFC 6886 recommends two hours; the holder renews
/// at half of what the router grants, so a router that shortens it is followed.
pub const LEASE_SECONDS: u32 = 7200;

/// The description UPnP routers list the mapping under.
const DESCRIPTION: &str = "stunfwd";

/// How long PCP and NAT-PMP wait for the first answer before one retry: a router on the
/// LAN answers within milliseconds, and the two tries fit in [`PROBE_TIMEOUT`].
const PMP_FIRST_WAIT: Duration = Duration::from_millis(250);

/// The budget of one attempt to map a port, all protocols together: a UPnP device may
/// delay its answer to a search by up to the search's MX (1 s in ours; igd-next's, used
/// before, said 3 s, and against miniupnpd the UPnP mapping then took over 500 ms in 16
/// runs of 20), and three HTTP requests follow.
/// Attempts wait for this only behind a symmetric NAT without a relay; otherwise they
/// offer what they have after `PORTMAP_GATHER_WAIT` (behind a known cone NAT at once),
/// and a mapping that arrives later
/// is offered by the next attempt.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// The protocol a router mapped our port with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum Protocol {
    /// Port Control Protocol (RFC 6887).
    #[serde(rename = "PCP")]
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    #[serde(rename = "NAT-PMP")]
    NatPmp,
    /// UPnP Internet Gateway Device (WANIPConnection).
    #[serde(rename = "UPnP-IGD")]
    Upnp,
}

impl Protocol {
    /// `PCP`, `NAT-PMP` or `UPnP-IGD`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP-IGD",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The port mapping of an engine, as its stats report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PortMapStatus {
    /// The protocol the router mapped our port with, when it did.
    pub protocol: Option<Protocol>,
    /// The router asked (the default gateway).
    pub gateway: Option<Ipv4Addr>,
    /// The public address the router forwards to the tunnel socket.
    pub external: Option<SocketAddr>,
    /// Why there is no mapping (`off`, no gateway, no answer...), when there is none.
    pub reason: Option<String>,
}

impl PortMapStatus {
    /// A status with no mapping, for `reason`.
    pub fn none(gateway: Option<Ipv4Addr>, reason: impl Into<String>) -> PortMapStatus {
        PortMapStatus {
            gateway,
            reason: Some(reason.into()),
            ..PortMapStatus::default()
        }
    }

    /// `PCP on 10.0.0.1 (198.51.100.7:4000)` or `none (why)`: the line `stunfwd nat`
    /// prints after `port mapping: `.
    pub fn describe(&self) -> String {
        match (self.protocol, self.gateway, self.external) {
            (Some(p), Some(g), Some(e)) => format!("{p} on {g} ({e})"),
            _ => format!(
                "none ({})",
                self.reason.as_deref().unwrap_or("not asked yet")
            ),
        }
    }
}

/// The NAT type our offer carries: with a router mapping whose public address is the
/// one STUN saw (`stun_public`; or no STUN answer at all), anyone's packets reach us
/// there, which is what endpoint-independent mapping and filtering mean. A mapping on a
/// router behind another NAT (its external address is not our public one) changes
/// nothing.
pub fn effective_nat(
    nat: NatType,
    router_mapped: Option<SocketAddr>,
    stun_public: Option<SocketAddr>,
) -> NatType {
    match router_mapped {
        Some(m) if stun_public.is_none_or(|p| p.ip() == m.ip()) && nat != NatType::Open => {
            NatType::FullCone
        }
        _ => nat,
    }
}

/// A port mapping the router holds for us. Renew it before [`Lease::lifetime`] is up
/// ([`Lease::renew`]) and release it when done ([`Lease::release`]); dropping it
/// leaves it on the router until it expires.
pub struct Lease {
    /// The protocol that made it.
    pub protocol: Protocol,
    /// The router holding it.
    pub gateway: Ipv4Addr,
    /// Our LAN address and port it forwards to.
    pub internal: SocketAddrV4,
    /// The public address it forwards.
    pub external: SocketAddr,
    /// How long the router granted it for.
    pub lifetime: Duration,
    inner: Inner,
}

enum Inner {
    Pmp(crab_nat::PortMapping),
    Upnp(upnp::Igd),
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("protocol", &self.protocol)
            .field("gateway", &self.gateway)
            .field("internal", &self.internal)
            .field("external", &self.external)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl Lease {
    /// The status stats report for this mapping.
    pub fn status(&self) -> PortMapStatus {
        PortMapStatus {
            protocol: Some(self.protocol),
            gateway: Some(self.gateway),
            external: Some(self.external),
            reason: None,
        }
    }

    /// Asks the router to extend the mapping by another [`LEASE_SECONDS`] (the external
    /// port may change: read [`Lease::external`] afterwards).
    pub async fn renew(&mut self) -> Result<(), String> {
        match &mut self.inner {
            Inner::Pmp(m) => {
                m.renew().await.map_err(|e| e.to_string())?;
                self.external = SocketAddr::new(self.external.ip(), m.external_port().get());
                self.lifetime = Duration::from_secs(m.lifetime().into());
            }
            Inner::Upnp(g) => {
                g.add_port(
                    self.external.port(),
                    self.internal,
                    LEASE_SECONDS,
                    DESCRIPTION,
                )
                .await
                .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Deletes the mapping on the router.
    pub async fn release(self) -> Result<(), String> {
        match self.inner {
            Inner::Pmp(m) => m.try_drop().await.map_err(|(e, _)| e.to_string()),
            Inner::Upnp(g) => g
                .remove_port(self.external.port())
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// Asks `gateway` to forward a public UDP port to `port` of the address we reach it
/// from, with PCP (NAT-PMP when the router answers only that) and UPnP-IGD at the same
/// time; PCP/NAT-PMP wins when both could. UPnP's search goes to the gateway's unicast
/// address, not to the multicast group, so no other host on the LAN is asked. Gives up
/// after `budget`; the error says what each protocol answered.
pub async fn map_udp(gateway: Ipv4Addr, port: u16, budget: Duration) -> Result<Lease, String> {
    let local = local_ip_towards(gateway).map_err(|e| format!("no route to {gateway}: {e}"))?;
    let internal = SocketAddrV4::new(local, port);
    let Some(port) = NonZeroU16::new(port) else {
        return Err("the tunnel socket has no port".into());
    };
    let work = async {
        let pmp = or_absent(
            map_pmp(gateway, local, port),
            gateway,
            PMP_PORT,
            &[0, 0],
            Some(PMP_FIRST_WAIT * 3),
        );
        let upnp = or_absent(
            upnp::search(gateway, local, SSDP_SEARCH),
            gateway,
            SSDP_PORT,
            SSDP_SEARCH,
            Some(SSDP_PRESENCE_WAIT),
        );
        tokio::pin!(pmp, upnp);
        // PCP/NAT-PMP first: one UDP round trip and no HTTP. The UPnP search runs
        // alongside and is used only when PCP/NAT-PMP failed.
        let (pmp_result, upnp_found) = tokio::select! {
            r = &mut pmp => (r, None),
            u = &mut upnp => {
                let r = pmp.await;
                (r, Some(u))
            }
        };
        let pmp_err = match pmp_result {
            Ok(lease) => return Ok(lease),
            Err(e) => e,
        };
        let found = match upnp_found {
            Some(u) => u,
            None => upnp.await,
        };
        let upnp_err = match found {
            Ok(g) => match add_upnp(g, gateway, internal).await {
                Ok(lease) => return Ok(lease),
                Err(e) => e,
            },
            Err(e) => e,
        };
        Err(format!("{pmp_err}; UPnP-IGD: {upnp_err}"))
    };
    match tokio::time::timeout(budget, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer from {gateway} within {budget:?}")),
    }
}

/// NAT-PMP and PCP's port on the gateway.
const PMP_PORT: u16 = 5351;
/// UPnP's search port on the gateway.
const SSDP_PORT: u16 = 1900;
/// A search for an IGD with an MX of 1 s: its answer comes within 1 s (igd-next's, used
/// before, said 3 s, and could wait that long for the answer that tells whether UPnP is
/// there).
const SSDP_SEARCH: &[u8] = b"M-SEARCH * HTTP/1.1\r\nHost:239.255.255.250:1900\r\n\
    ST:urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nMan:\"ssdp:discover\"\r\nMX:1\r\n\r\n";
/// How long [`SSDP_SEARCH`] may go unanswered before UPnP counts as absent.
const SSDP_PRESENCE_WAIT: Duration = Duration::from_millis(1200);

/// `work`, or an error as soon as `probe`, sent to the gateway's `port`, shows nothing
/// listens there: refused (an ICMP port unreachable, which the crates' sockets never
/// see), or, with `answer_within`, not answered in that time. Routers rate-limit ICMP
/// and firewalls drop silently, so silence must count too; an answer lets `work` go on.
async fn or_absent<T>(
    work: impl std::future::Future<Output = Result<T, String>>,
    gateway: Ipv4Addr,
    port: u16,
    probe: &[u8],
    answer_within: Option<Duration>,
) -> Result<T, String> {
    let refused = async {
        let Ok(socket) = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
            return std::future::pending().await;
        };
        if socket.connect((gateway, port)).await.is_err() || socket.send(probe).await.is_err() {
            return std::future::pending().await;
        }
        let mut buf = [0u8; 1500];
        // A connected socket gets the ICMP error on its next receive.
        let wait = answer_within.unwrap_or(Duration::MAX);
        match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
            Err(_) => "no answer",
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        r = work => r,
        why = refused => Err(format!("{gateway}:{port}: {why}")),
    }
}

/// A PCP ANNOUNCE request from `client` (RFC 6887 §14.1): harmless, and refused by a
/// router that refuses PCP.
fn pcp_announce(client: Ipv4Addr) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0] = 2;
    p[8..24].copy_from_slice(&client.to_ipv6_mapped().octets());
    p
}

/// What `stunfwd nat` prints: a mapping made (and deleted again at once) for a fresh
/// port of ours, or why there is none.
pub async fn probe() -> PortMapStatus {
    let Some(gateway) = default_gateway() else {
        return PortMapStatus::none(None, "no IPv4 default gateway");
    };
    let socket = match std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        Ok(s) => s,
        Err(e) => return PortMapStatus::none(Some(gateway), format!("cannot bind: {e}")),
    };
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    match map_udp(gateway, port, PROBE_TIMEOUT).await {
        Ok(lease) => {
            let status = lease.status();
            if let Err(e) = lease.release().await {
                tracing::debug!(error = %e, "port mapping probe: release failed");
            }
            status
        }
        Err(e) => {
            tracing::debug!(error = %e, "port mapping probe");
            PortMapStatus::none(
                Some(gateway),
                format!("no UPnP, NAT-PMP or PCP answer from {gateway}"),
            )
        }
    }
}

/// The address of ours that packets to `gateway` leave from (a connected UDP socket
/// sends nothing).
fn local_ip_towards(gateway: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.connect((gateway, PMP_PORT))?;
    match s.local_addr()?.ip() {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(std::io::Error::other("an IPv6 route")),
    }
}

async fn map_pmp(gateway: Ipv4Addr, local: Ipv4Addr, port: NonZeroU16) -> Result<Lease, String> {
    let options = crab_nat::PortMappingOptions {
        // The same public port when free: easier to read in a router's table.
        external_port: Some(port),
        lifetime_seconds: Some(LEASE_SECONDS),
        timeout_config: Some(crab_nat::TimeoutConfig {
            initial_timeout: PMP_FIRST_WAIT,
            max_retries: 1,
            max_retry_timeout: Some(PMP_FIRST_WAIT * 2),
        }),
    };
    let udp = crab_nat::InternetProtocol::Udp;
    let request = crab_nat::pcp::BaseMapRequest::new(gateway.into(), local.into(), udp, port);
    // NAT-PMP after any PCP failure, not only after a NAT-PMP router's "unsupported
    // version" answer: some routers without PCP drop or refuse its packets instead.
    let pcp = async {
        crab_nat::pcp::port_mapping(request, None, None, options)
            .await
            .map_err(|e| e.to_string())
    };
    let mapping = match or_absent(pcp, gateway, PMP_PORT, &pcp_announce(local), None).await {
        Ok(m) => m,
        Err(pcp) => crab_nat::natpmp::port_mapping(gateway.into(), udp, port, options)
            .await
            .map_err(|e| format!("PCP: {pcp}; NAT-PMP: {e}"))?,
    };
    let (protocol, external_ip) = match mapping.mapping_type() {
        crab_nat::PortMappingType::Pcp { external_ip, .. } => (Protocol::Pcp, external_ip),
        crab_nat::PortMappingType::NatPmp => {
            let ip =
                crab_nat::natpmp::external_address(gateway.into(), Some(mapping.timeout_config))
                    .await
                    .map_err(|e| format!("mapped, but no external address: {e}"))?;
            (Protocol::NatPmp, IpAddr::V4(ip))
        }
    };
    Ok(Lease {
        protocol,
        gateway,
        internal: SocketAddrV4::new(local, port.get()),
        external: SocketAddr::new(external_ip, mapping.external_port().get()),
        lifetime: Duration::from_secs(mapping.lifetime().into()),
        inner: Inner::Pmp(mapping),
    })
}

async fn add_upnp(
    (g, external_ip): (upnp::Igd, IpAddr),
    gateway: Ipv4Addr,
    internal: SocketAddrV4,
) -> Result<Lease, String> {
    let port = match g
        .add_port(internal.port(), internal, LEASE_SECONDS, DESCRIPTION)
        .await
    {
        Ok(()) => internal.port(),
        // Taken by someone else (or refused for this port): any free port.
        Err(_) => g
            .add_any_port(internal, LEASE_SECONDS, DESCRIPTION)
            .await
            .map_err(|e| e.to_string())?,
    };
    Ok(Lease {
        protocol: Protocol::Upnp,
        gateway,
        internal,
        external: SocketAddr::new(external_ip, port),
        lifetime: Duration::from_secs(LEASE_SECONDS.into()),
        inner: Inner::Upnp(g),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_on_our_public_address_makes_us_full_cone() {
        let public: SocketAddr = "203.0.113.5:4000".parse().expect("addr");
        let mapped: SocketAddr = "203.0.113.5:4001".parse().expect("addr");
        let inner: SocketAddr = "100.64.0.9:4001".parse().expect("addr");
        let nat = NatType::Symmetric;
        assert_eq!(effective_nat(nat, None, Some(public)), nat);
        assert_eq!(
            effective_nat(nat, Some(mapped), Some(public)),
            NatType::FullCone
        );
        assert_eq!(effective_nat(nat, Some(mapped), None), NatType::FullCone);
        // A home router behind a CGNAT maps a port of an address nobody reaches.
        assert_eq!(effective_nat(nat, Some(inner), Some(public)), nat);
        assert_eq!(
            effective_nat(NatType::Open, Some(mapped), Some(public)),
            NatType::Open
        );
    }

    #[test]
    fn status_lines() {
        let s = PortMapStatus::none(
            Some(Ipv4Addr::new(10, 0, 0, 1)),
            "no UPnP, NAT-PMP or PCP answer from 10.0.0.1",
        );
        assert_eq!(
            s.describe(),
            "none (no UPnP, NAT-PMP or PCP answer from 10.0.0.1)"
        );
        let s = PortMapStatus {
            protocol: Some(Protocol::Pcp),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            external: Some("203.0.113.5:4000".parse().expect("addr")),
            reason: None,
        };
        assert_eq!(s.describe(), "PCP on 10.0.0.1 (203.0.113.5:4000)");
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["protocol"], "PCP");
        assert_eq!(json["external"], "203.0.113.5:4000");
    }
}
