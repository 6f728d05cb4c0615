//! STUN transactions over the engine's shared socket, and public-address discovery.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use super::message::{self, Tid};
use crate::error::{Error, Result};
use crate::socket::DemuxSocket;
use crate::sync::lock;

/// A response matched to one of our transactions.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub tid: Tid,
    pub from: SocketAddr,
    pub mapped: Option<SocketAddr>,
    pub other: Option<SocketAddr>,
    pub success: bool,
    pub raw: Vec<u8>,
}

/// Matches responses to outstanding requests.
#[derive(Debug)]
pub(crate) struct StunAgent {
    socket: Arc<DemuxSocket>,
    pending: Mutex<HashMap<Tid, mpsc::Sender<Response>>>,
}

impl StunAgent {
    pub fn new(socket: Arc<DemuxSocket>) -> Arc<Self> {
        Arc::new(StunAgent {
            socket,
            pending: Mutex::new(HashMap::new()),
        })
    }

    pub fn socket(&self) -> &Arc<DemuxSocket> {
        &self.socket
    }

    /// How many transactions wait for an answer.
    #[cfg(test)]
    pub(crate) fn pending_count(&self) -> usize {
        self.pending().len()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Tid, mpsc::Sender<Response>>> {
        lock(&self.pending)
    }

    /// Routes a response to whoever waits for its transaction id. False if nobody does.
    pub fn on_response(&self, response: Response) -> bool {
        let tx = self.pending().get(&response.tid).cloned();
        match tx {
            Some(tx) => tx.try_send(response).is_ok(),
            None => false,
        }
    }

    /// Registers `tid` so its responses are sent to `tx`.
    pub fn register(&self, tid: Tid, tx: mpsc::Sender<Response>) {
        self.pending().insert(tid, tx);
    }

    /// Forgets `tids`.
    pub fn unregister(&self, tids: &[Tid]) {
        let mut pending = self.pending();
        for tid in tids {
            pending.remove(tid);
        }
    }

    /// One request/response transaction with retransmission: the same request is resent
    /// after `rto`, doubling up to 1.6 s, `attempts` times in all.
    pub async fn transact(
        &self,
        to: SocketAddr,
        request: &[u8],
        tid: Tid,
        rto: Duration,
        attempts: u32,
    ) -> Result<Response> {
        let (tx, mut rx) = mpsc::channel(4);
        self.register(tid, tx);
        let result = async {
            let mut wait = rto;
            for _ in 0..attempts.max(1) {
                if let Err(e) = self.socket.send_to(request, to).await {
                    tracing::debug!(%to, error = %e, "stun send failed");
                }
                if let Ok(Some(r)) = tokio::time::timeout(wait, rx.recv()).await {
                    return Ok(r);
                }
                wait = (wait * 2).min(Duration::from_millis(1600));
            }
            Err(Error::Stun(format!(
                "no answer from {to} after {} attempts",
                attempts.max(1)
            )))
        }
        .await;
        self.unregister(&[tid]);
        result
    }
}

/// What we know of our NAT from STUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    /// No STUN server answered (or none configured).
    Unknown,
    /// The mapped address equals our local address: no NAT in the way.
    Open,
    /// Endpoint-independent mapping and filtering (RFC 5780 tests).
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Every server saw the same public address, filtering unknown (no RFC 5780 server).
    Cone,
    /// Only one server answered and it cannot run RFC 5780 tests: some NAT.
    Nat,
    /// Endpoint-dependent mapping (symmetric NAT).
    Symmetric,
}

impl NatType {
    /// The name used in offers and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            NatType::Unknown => "unknown",
            NatType::Open => "open",
            NatType::FullCone => "full-cone",
            NatType::AddressRestricted => "address-restricted",
            NatType::PortRestricted => "port-restricted",
            NatType::Cone => "cone",
            NatType::Nat => "nat",
            NatType::Symmetric => "symmetric",
        }
    }

    /// The type named `name` (as [`NatType::as_str`] writes it; a peer's offer carries
    /// it as text). A name this version does not know is [`NatType::Unknown`].
    pub fn from_name(name: &str) -> NatType {
        [
            NatType::Open,
            NatType::FullCone,
            NatType::AddressRestricted,
            NatType::PortRestricted,
            NatType::Cone,
            NatType::Nat,
            NatType::Symmetric,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
        .unwrap_or(NatType::Unknown)
    }

    /// True when two peers behind these NATs cannot reach each other directly: an
    /// endpoint-dependent mapping on one side with port-dependent filtering (or another
    /// endpoint-dependent mapping) on the other. Unknown types are never hopeless.
    pub fn hopeless_with(self, peer: NatType) -> bool {
        let strict = |t: NatType| matches!(t, NatType::Symmetric | NatType::PortRestricted);
        (self == NatType::Symmetric && strict(peer)) || (peer == NatType::Symmetric && strict(self))
    }
}

impl std::fmt::Display for NatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a NAT maps our socket to public addresses (RFC 4787 / RFC 5780 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingBehavior {
    /// No NAT: the server sees our own address.
    NoNat,
    /// The same public address for every destination.
    EndpointIndependent,
    /// A new public address per destination IP.
    AddressDependent,
    /// A new public address per destination IP and port.
    AddressAndPortDependent,
    /// Could not be determined.
    Unknown,
}

/// Which inbound packets a NAT lets through (RFC 4787 / RFC 5780 §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilteringBehavior {
    /// From anyone once a mapping exists.
    EndpointIndependent,
    /// Only from IPs we sent to.
    AddressDependent,
    /// Only from the IP and port we sent to.
    AddressAndPortDependent,
    /// Could not be determined.
    Unknown,
}

impl MappingBehavior {
    /// kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            MappingBehavior::NoNat => "no-nat",
            MappingBehavior::EndpointIndependent => "endpoint-independent",
            MappingBehavior::AddressDependent => "address-dependent",
            MappingBehavior::AddressAndPortDependent => "address-and-port-dependent",
            MappingBehavior::Unknown => "unknown",
        }
    }
}

impl FilteringBehavior {
    /// kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FilteringBehavior::EndpointIndependent => "endpoint-independent",
            FilteringBehavior::AddressDependent => "address-dependent",
            FilteringBehavior::AddressAndPortDependent => "address-and-port-dependent",
            FilteringBehavior::Unknown => "unknown",
        }
    }
}

/// The result of asking every configured STUN server for our public address.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// (server, the address it saw us at), for each server that answered.
    pub mapped: Vec<(SocketAddr, SocketAddr)>,
    /// Why the others did not.
    pub errors: Vec<String>,
    /// When it was performed.
    pub at: Instant,
    /// How long it took.
    pub took: Duration,
    /// What it says of our NAT.
    pub nat: NatType,
    /// Mapping behaviour (RFC 5780 tests when the first server supports them, else
    /// from comparing servers).
    pub mapping: MappingBehavior,
    /// Filtering behaviour (RFC 5780 tests only).
    pub filtering: FilteringBehavior,
    /// How the NAT picks public ports ([`detect_nat`] only; `Unknown` elsewhere).
    pub allocation: super::allocation::Allocation,
}

impl Discovery {
    /// Our public (server-reflexive) address, if any server answered.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.mapped.first().map(|(_, m)| *m)
    }
}

/// The NAT type from mapping and filtering behaviour.
pub fn nat_type(mapping: MappingBehavior, filtering: FilteringBehavior) -> NatType {
    match (mapping, filtering) {
        (MappingBehavior::NoNat, _) => NatType::Open,
        (MappingBehavior::AddressDependent | MappingBehavior::AddressAndPortDependent, _) => {
            NatType::Symmetric
        }
        (MappingBehavior::EndpointIndependent, FilteringBehavior::EndpointIndependent) => {
            NatType::FullCone
        }
        (MappingBehavior::EndpointIndependent, FilteringBehavior::AddressDependent) => {
            NatType::AddressRestricted
        }
        (MappingBehavior::EndpointIndependent, FilteringBehavior::AddressAndPortDependent) => {
            NatType::PortRestricted
        }
        (MappingBehavior::EndpointIndependent, FilteringBehavior::Unknown) => NatType::Cone,
        (MappingBehavior::Unknown, _) => NatType::Unknown,
    }
}

/// Classifies mapping behaviour from what several servers saw.
/// `host` are our own interface addresses (with the socket's port).
pub fn classify(host: &[SocketAddr], mapped: &[(SocketAddr, SocketAddr)]) -> NatType {
    let Some((_, first)) = mapped.first() else {
        return NatType::Unknown;
    };
    if mapped.iter().any(|(_, m)| m != first) {
        return NatType::Symmetric;
    }
    if host.contains(first) {
        return NatType::Open;
    }
    if mapped.len() >= 2 {
        NatType::Cone
    } else {
        NatType::Nat
    }
}

/// After the first answer, how long the others may still take (their answers are only
/// needed to compare mappings).
const STRAGGLER_GRACE: Duration = Duration::from_millis(500);

/// How much of the NAT's behaviour [`discover`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Every server at once, classified by comparing what they saw: our public
    /// addresses in one round trip (the engine's connect path).
    Quick,
    /// Also the RFC 5780 mapping and filtering tests when the first server supports
    /// them (up to about 2 s behind restricted NATs; [`detect_nat`], the engine's
    /// background detection).
    Rfc5780,
}

/// Asks every server (each with retransmissions) and classifies the answers.
///
/// With [`Depth::Quick`] all servers are asked at once. With [`Depth::Rfc5780`] the
/// first server is asked alone first: if it supports RFC 5780 (it sends
/// OTHER-ADDRESS), the filtering tests run before we have sent anything to its
/// alternate address — a packet to that address would open an address-dependent
/// filter and make the NAT look endpoint-independent. Then the other servers are asked
/// in parallel, and a dead one costs at most [`STRAGGLER_GRACE`] after an answer.
pub(crate) async fn discover(
    agent: &Arc<StunAgent>,
    servers: &[SocketAddr],
    host: &[SocketAddr],
    depth: Depth,
) -> Discovery {
    let started = Instant::now();
    let mut mapped = Vec::new();
    let mut errors = Vec::new();
    let mut filtering = FilteringBehavior::Unknown;
    let mut rfc5780_server = None;
    let mut rest: Vec<SocketAddr> = servers.to_vec();
    let first = servers.first().filter(|_| depth == Depth::Rfc5780);
    if let Some(&first) = first {
        let tid = message::new_tid();
        let request = message::binding_request(tid);
        // A short schedule (about 1.4 s): a dead first server must not stall the rest.
        match agent
            .transact(first, &request, tid, Duration::from_millis(200), 3)
            .await
        {
            Ok(Response {
                mapped: Some(m),
                other,
                success: true,
                ..
            }) => {
                mapped.push((first, m));
                if let Some(other) = other {
                    if !host.contains(&m) {
                        filtering = rfc5780_filtering(agent, first, other).await;
                    }
                    rfc5780_server = Some((first, m, other));
                }
            }
            Ok(_) => errors.push(format!("{first}: answer without a mapped address")),
            // Asked again with the others, on the full schedule.
            Err(_) => rest.push(first),
        }
        rest.remove(0);
    }
    let (tx, mut rx) = mpsc::channel(rest.len().max(1));
    let mut tasks = Vec::new();
    for &server in &rest {
        let (agent, tx) = (agent.clone(), tx.clone());
        tasks.push(crate::spawn(async move {
            let tid = message::new_tid();
            let request = message::binding_request(tid);
            let r = agent
                .transact(server, &request, tid, Duration::from_millis(200), 6)
                .await;
            let _ = tx.send((server, r)).await;
        }));
    }
    drop(tx);
    let mut grace_until: Option<tokio::time::Instant> =
        (!mapped.is_empty()).then(|| tokio::time::Instant::now() + STRAGGLER_GRACE);
    loop {
        let next = match grace_until {
            Some(until) => match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => rx.recv().await,
        };
        let Some((server, r)) = next else { break };
        match r {
            Ok(Response {
                mapped: Some(m),
                success: true,
                ..
            }) => {
                mapped.push((server, m));
                grace_until.get_or_insert_with(|| tokio::time::Instant::now() + STRAGGLER_GRACE);
            }
            Ok(_) => errors.push(format!("{server}: answer without a mapped address")),
            Err(e) => errors.push(format!("{server}: {e}")),
        }
    }
    for t in tasks {
        t.abort();
    }
    // Keep the configured order so the first configured server's view comes first.
    mapped.sort_by_key(|(s, _)| servers.iter().position(|x| x == s));
    let mut nat = classify(host, &mapped);
    let mut mapping = match nat {
        NatType::Open => MappingBehavior::NoNat,
        NatType::Symmetric => MappingBehavior::AddressAndPortDependent,
        NatType::Cone => MappingBehavior::EndpointIndependent,
        _ => MappingBehavior::Unknown,
    };
    if let Some((server, m1, other)) = rfc5780_server {
        if nat != NatType::Open {
            let mb = rfc5780_mapping(agent, server, m1, other).await;
            if mb != MappingBehavior::Unknown {
                mapping = mb;
            }
            nat = nat_type(mapping, filtering);
        }
    }
    Discovery {
        mapped,
        errors,
        at: started,
        took: started.elapsed(),
        nat,
        mapping,
        filtering,
        allocation: super::allocation::Allocation::Unknown,
    }
}

/// Detects our public address and NAT behaviour from a fresh socket bound to `bind`,
/// asking `servers` ("host:port"). With a server that supports RFC 5780 (two
/// addresses, e.g. coturn) the mapping and filtering behaviour are measured; otherwise
/// the mapping is judged by comparing what the servers saw. The engine's background
/// detection uses it; `stunfwd nat` uses [`detect_nat_and_allocation`].
pub async fn detect_nat(servers: &[String], bind: SocketAddr) -> crate::Result<Discovery> {
    use crate::socket::{drain, host_candidates, DemuxSocket};
    use quinn::Runtime as _;
    let socket =
        std::net::UdpSocket::bind(bind).map_err(|e| Error::bind("stun probe socket", bind, &e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| Error::io("stun probe socket", &e))?;
    let local = socket
        .local_addr()
        .map_err(|e| Error::io("stun probe socket", &e))?;
    let inner = quinn::TokioRuntime
        .wrap_udp_socket(socket)
        .map_err(|e| Error::io("stun probe socket", &e))?;
    let (demux, mut rx) = DemuxSocket::new(inner);
    let agent = StunAgent::new(demux.clone());
    let drainer = crate::spawn(drain(demux));
    let dispatcher = {
        let agent = agent.clone();
        crate::spawn(async move {
            while let Some(d) = rx.recv().await {
                if let Some(message::Parsed::Success {
                    tid, mapped, other, ..
                }) = message::parse(&d.data)
                {
                    agent.on_response(Response {
                        tid,
                        from: d.from,
                        mapped,
                        other,
                        success: true,
                        raw: d.data,
                    });
                }
            }
        })
    };
    let mut resolved = Vec::new();
    for s in servers {
        let addrs =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(s.as_str()))
                .await
                .map_err(|_| Error::Stun(format!("resolving {s} timed out")))?
                .map_err(|e| Error::Stun(format!("cannot resolve {s}: {e}")))?;
        let mut usable: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| crate::socket::reaches(local, *a))
            .collect();
        usable.sort_by_key(|a| a.is_ipv6());
        match usable.first().copied() {
            Some(a) => resolved.push(a),
            None => {
                return Err(Error::Stun(format!(
                    "{s} has no address of the socket's family"
                )))
            }
        }
    }
    let d = discover(&agent, &resolved, &host_candidates(local), Depth::Rfc5780).await;
    drainer.abort();
    dispatcher.abort();
    if d.mapped.is_empty() {
        return Err(Error::Stun(format!(
            "no STUN server answered: {}",
            d.errors.join("; ")
        )));
    }
    Ok(d)
}

/// [`detect_nat`], then the port allocation measured from a few fresh sockets toward
/// the first server that answered ([`super::allocation`]; not when there is no NAT).
pub async fn detect_nat_and_allocation(
    servers: &[String],
    bind: SocketAddr,
) -> crate::Result<Discovery> {
    let mut d = detect_nat(servers, bind).await?;
    if let (Some(&(server, _)), false) = (d.mapped.first(), d.nat == NatType::Open) {
        d.allocation = super::allocation::measure(server, bind.ip()).await;
    }
    Ok(d)
}

/// One Binding request (optionally with CHANGE-REQUEST) and its answer, accepted only
/// from `expect_from` when given.
async fn probe(
    agent: &StunAgent,
    to: SocketAddr,
    change: Option<(bool, bool)>,
    expect_from: Option<SocketAddr>,
) -> Option<Response> {
    let tid = message::new_tid();
    let request = match change {
        Some((ip, port)) => message::change_request(tid, ip, port),
        None => message::binding_request(tid),
    };
    match agent
        .transact(to, &request, tid, Duration::from_millis(250), 3)
        .await
    {
        Ok(r) if r.success && expect_from.is_none_or(|e| e == r.from) => Some(r),
        _ => None,
    }
}

/// RFC 5780 §4.4: filtering behaviour. Must run before anything is sent to the
/// server's alternate IP.
async fn rfc5780_filtering(
    agent: &StunAgent,
    primary: SocketAddr,
    other: SocketAddr,
) -> FilteringBehavior {
    let alt_port = SocketAddr::new(primary.ip(), other.port());
    let (both, port_only) = tokio::join!(
        probe(agent, primary, Some((true, true)), Some(other)),
        probe(agent, primary, Some((false, true)), Some(alt_port)),
    );
    if both.is_some() {
        FilteringBehavior::EndpointIndependent
    } else if port_only.is_some() {
        FilteringBehavior::AddressDependent
    } else {
        FilteringBehavior::AddressAndPortDependent
    }
}

/// RFC 5780 §4.3: mapping behaviour, from what the alternate addresses see.
async fn rfc5780_mapping(
    agent: &StunAgent,
    primary: SocketAddr,
    m1: SocketAddr,
    other: SocketAddr,
) -> MappingBehavior {
    let alt_ip = SocketAddr::new(other.ip(), primary.port());
    match probe(agent, alt_ip, None, None)
        .await
        .and_then(|r| r.mapped)
    {
        None => MappingBehavior::Unknown,
        Some(m2) if m2 == m1 => MappingBehavior::EndpointIndependent,
        Some(m2) => match probe(agent, other, None, None).await.and_then(|r| r.mapped) {
            Some(m3) if m3 == m2 => MappingBehavior::AddressDependent,
            Some(_) => MappingBehavior::AddressAndPortDependent,
            None => MappingBehavior::Unknown,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("literal")
    }

    #[test]
    fn classification() {
        let local = &[a("10.0.0.2:5000")][..];
        assert_eq!(classify(local, &[]), NatType::Unknown);
        assert_eq!(
            classify(local, &[(a("1.1.1.1:3478"), a("10.0.0.2:5000"))]),
            NatType::Open
        );
        assert_eq!(
            classify(local, &[(a("1.1.1.1:3478"), a("203.0.113.5:6000"))]),
            NatType::Nat
        );
        assert_eq!(
            classify(
                local,
                &[
                    (a("1.1.1.1:3478"), a("203.0.113.5:6000")),
                    (a("1.1.1.2:3478"), a("203.0.113.5:6000"))
                ]
            ),
            NatType::Cone
        );
        assert_eq!(
            classify(
                local,
                &[
                    (a("1.1.1.1:3478"), a("203.0.113.5:6000")),
                    (a("1.1.1.2:3478"), a("203.0.113.5:6001"))
                ]
            ),
            NatType::Symmetric
        );
    }
}
