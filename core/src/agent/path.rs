//! Which candidates we offer, which path we try, and when the relay is used: plain
//! functions of what both offers say.

use std::net::SocketAddr;
use std::time::Duration;

use crate::agent::birthday::Side;
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
///
/// With `birthday` on, only symmetric with symmetric is hopeless: birthday punching
/// reaches a symmetric NAT from a port-restricted one.
pub fn plan_path(
    role: Role,
    our_nat: NatType,
    our_relay_count: usize,
    peer: &Offer,
    relay: RelayPlan,
    policy: RelayPolicy,
    birthday: bool,
) -> PathPlan {
    let peer_nat = NatType::from_name(&peer.nat);
    let hopeless = if birthday {
        our_nat == NatType::Symmetric && peer_nat == NatType::Symmetric
    } else {
        our_nat.hopeless_with(peer_nat)
    };
    if !hopeless || peer.relay_count > 0 || our_relay_count > 0 {
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

/// How long punching runs plain checks before birthday punching starts when a NAT
/// type is not known well enough to tell the hard side from the easy one (one STUN
/// server without RFC 5780), or when birthday punching failed for this pair before: a
/// pair that plain checks can connect does so within about 300 ms.
pub const BIRTHDAY_ESCALATION: Duration = Duration::from_secs(1);

/// One birthday session an attempt runs: our side, and how long after punching starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BirthdayStart {
    /// Hard (we open the sockets) or easy (we probe).
    pub side: Side,
    /// Delay after the start of punching.
    pub after: Duration,
}

/// Could this NAT map each destination to its own port? Known symmetric, or not
/// known.
fn may_be_hard(t: NatType) -> bool {
    matches!(t, NatType::Symmetric | NatType::Nat | NatType::Unknown)
}

/// Could this NAT be endpoint-independent but filter by port, so that plain checks
/// from a symmetric NAT cannot get in? (Full-cone and address-restricted NATs let a
/// symmetric peer's checks in; plain checks connect them.)
fn may_be_easy_and_strict(t: NatType) -> bool {
    matches!(
        t,
        NatType::PortRestricted | NatType::Cone | NatType::Nat | NatType::Unknown
    )
}

/// Which birthday sessions to run between our NAT and the peer's, from what both
/// offers say (strategy from evidence):
/// - symmetric with a port-restricted or cone NAT: the symmetric side is hard, the
///   other easy, both at once;
/// - when a type is only known as "some NAT" (a plain STUN server cannot tell a
///   symmetric NAT from a cone), the side that may be hard runs the hard part and the
///   side that may be easy the easy part, after [`BIRTHDAY_ESCALATION`] of plain checks
///   (both parts when it could be either);
/// - symmetric with symmetric, or anything with a NAT plain checks get through: none.
///
/// `failed_before`: birthday punching already failed for this pair of public
/// addresses, so plain checks go first this time.
pub fn birthday_plan(ours: NatType, peer: NatType, failed_before: bool) -> Vec<BirthdayStart> {
    let known = |t: NatType| {
        matches!(
            t,
            NatType::Symmetric | NatType::PortRestricted | NatType::Cone
        )
    };
    let after = if known(ours) && known(peer) && !failed_before {
        Duration::ZERO
    } else {
        BIRTHDAY_ESCALATION
    };
    let mut out = Vec::new();
    if may_be_hard(ours) && may_be_easy_and_strict(peer) && peer != NatType::Symmetric {
        out.push(BirthdayStart {
            side: Side::Hard,
            after,
        });
    }
    if may_be_easy_and_strict(ours) && ours != NatType::Symmetric && may_be_hard(peer) {
        out.push(BirthdayStart {
            side: Side::Easy,
            after,
        });
    }
    out
}

/// True when our checks to the peer's public address can only do harm: our NAT is
/// known symmetric and the peer's known port-restricted, so they never get in, and on
/// a Linux router without an input filter they leave conntrack entries that can move
/// the peer's port when its birthday probes go to the same port of ours. Birthday
/// punching's sockets reach it instead.
pub fn skip_public_checks(ours: NatType, peer: NatType) -> bool {
    ours == NatType::Symmetric && peer == NatType::PortRestricted
}

/// The peer's public (server-reflexive) address: its first candidate after the host
/// ones that is not relayed. Birthday punching aims at it.
pub fn peer_public(peer: &Offer) -> Option<SocketAddr> {
    direct_candidates(peer)
        .get(peer.host_count..)?
        .first()
        .copied()
}
