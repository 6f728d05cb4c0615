//! Which candidates we offer, which path we try, and when the relay is used: plain
//! functions of what both offers say.

use std::net::SocketAddr;

use crate::config::RelayPolicy;
use crate::signal::proto::{Offer, Role};
use crate::status::PathKind;
use crate::stun::client::NatType;

/// How the relay may be used in this attempt, decided at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPlan {
    /// A relay is configured and the policy is not `never`: the attempt allocates
    /// before posting its offer, so the relayed candidate is gathered and checked
    /// alongside the direct ones (ICE-style).
    pub allowed: bool,
    /// Policy `always`: every packet goes through the relay.
    pub always: bool,
}

/// The relay plan of an attempt; `configured` when a TURN server is set. The relay is
/// a path like any other: when allowed it is gathered at the start and checked in
/// parallel with the direct candidates, never only after direct has failed.
pub fn relay_plan(policy: RelayPolicy, configured: bool) -> RelayPlan {
    RelayPlan {
        allowed: configured && policy != RelayPolicy::Never,
        always: policy == RelayPolicy::Always,
    }
}

/// Our candidates in offer order: interface addresses, then STUN-mapped ones, then the
/// relayed address; under policy `always` only the relayed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gathered {
    /// All candidates, in that order.
    pub candidates: Vec<SocketAddr>,
    /// How many lead the list as interface (host) addresses.
    pub host_count: usize,
    /// How many end the list as relayed addresses.
    pub relay_count: usize,
}

/// Gathers our candidates (duplicates of host addresses among the mapped ones are
/// dropped: a public host needs no server-reflexive twin).
pub fn gather(
    host: &[SocketAddr],
    mapped: impl IntoIterator<Item = SocketAddr>,
    relayed: Option<SocketAddr>,
    always: bool,
) -> Gathered {
    let mut candidates = Vec::new();
    let mut host_count = 0;
    if !always {
        candidates = host.to_vec();
        host_count = candidates.len();
        for m in mapped {
            if !candidates.contains(&m) {
                candidates.push(m);
            }
        }
    }
    let relay_count = usize::from(relayed.is_some());
    candidates.extend(relayed);
    Gathered {
        candidates,
        host_count,
        relay_count,
    }
}

/// What to do once both offers are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathPlan {
    /// Punch (toward a relayed candidate too, when either offer has one).
    Punch,
    /// Direct is hopeless and we are the side that relays: allocate, post a new offer
    /// with the relayed address, then punch.
    AllocateRelay,
    /// Direct is hopeless and the peer is the side that relays: wait for its offer
    /// with a relayed address, then punch.
    WaitForPeerRelay,
    /// Direct is hopeless and neither side can relay.
    NoPath,
}

/// Decides the path once both offers are known. When the NAT types make direct
/// hopeless and neither offer carries a relayed address, one side must relay: the
/// server allocates if it can; the client only when the server cannot.
pub fn plan_path(
    role: Role,
    our_nat: NatType,
    our_relay_count: usize,
    peer: &Offer,
    relay: RelayPlan,
    policy: RelayPolicy,
) -> PathPlan {
    if !our_nat.hopeless_with(NatType::from_name(&peer.nat))
        || peer.relay_count > 0
        || our_relay_count > 0
    {
        return PathPlan::Punch;
    }
    let we_allocate = relay.allowed && (role == Role::Server || !peer.turn);
    if we_allocate {
        PathPlan::AllocateRelay
    } else if peer.turn && policy != RelayPolicy::Never {
        PathPlan::WaitForPeerRelay
    } else {
        PathPlan::NoPath
    }
}

/// Both offers carry a global IPv6 host candidate: a firewall without NAT lets the
/// answer to our own packet in, so the pair is punchable whatever the IPv4 NAT types
/// say (issue #17), and [`plan_path`]'s verdict on them does not apply.
pub fn both_on_global_ipv6(ours: &Offer, peer: &Offer) -> bool {
    let has = |o: &Offer| {
        o.candidates[..o.host_count.min(o.candidates.len())]
            .iter()
            .any(|c| crate::socket::is_global_v6(c.ip()))
    };
    has(ours) && has(peer)
}

/// The peer's candidates this attempt checks: all of them, or under policy `always`
/// only its relayed ones (reached over the path to the TURN server; with none, the
/// peer's checks through our relay give us its address).
pub fn check_targets(peer: &Offer, always: bool) -> Vec<SocketAddr> {
    if always {
        relayed_candidates(peer).to_vec()
    } else {
        peer.candidates.clone()
    }
}

/// The peer's relayed candidates (the offer lists them last).
pub fn relayed_candidates(peer: &Offer) -> &[SocketAddr] {
    &peer.candidates[peer.candidates.len().saturating_sub(peer.relay_count)..]
}

/// The peer's direct candidates (host, server-reflexive), for the upgrade off the relay.
pub fn direct_candidates(peer: &Offer) -> &[SocketAddr] {
    &peer.candidates[..peer.candidates.len().saturating_sub(peer.relay_count)]
}

/// What kind of path `selected` is: relay when our packets to it go through our own
/// relay (`via_our_relay`) or it is one of the peer's relayed addresses, LAN when it is
/// one of the peer's interface addresses (but a global IPv6 one, which is reached
/// across the internet like a server-reflexive address), direct otherwise.
pub fn path_kind(peer: &Offer, selected: SocketAddr, via_our_relay: bool) -> PathKind {
    if via_our_relay {
        return PathKind::Relay;
    }
    match peer.candidates.iter().position(|c| *c == selected) {
        Some(i) if i < peer.host_count && !crate::socket::is_global_v6(selected.ip()) => {
            PathKind::Lan
        }
        Some(i) if i >= peer.candidates.len() - peer.relay_count => PathKind::Relay,
        _ => PathKind::Direct,
    }
}
