//! One connect attempt: discover our public address, exchange offers, punch, and
//! complete the QUIC handshake.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::birthdays::{pair_key, start_birthdays, Birthdays};
use super::offers::wait_for_offer;
use super::predict::{Negotiated, Prepared};
use super::shared::{Incoming, Shared};
use crate::agent::path::{self, PathPlan, RelayPlan};
use crate::agent::predict;
use crate::error::Error;
use crate::portmap;
use crate::punch::{self, ChecklistConfig, Punch};
use crate::signal::proto::{unix_now, Offer, Role};
use crate::stats::Timings;
use crate::status::{PathKind, State, Technique};
use crate::stun::client::{self as stun_client, Discovery, NatType};
use crate::sync::lock;
use crate::tunnel::{self, Fingerprint};
use crate::turn::client::TurnClient;
use crate::turn::AllocError;

/// How long an attempt waits, once discovery is done, for the relay allocation it
/// started alongside (a healthy TURN server answers in two round trips, well inside).
const RELAY_GATHER_WAIT: Duration = Duration::from_millis(500);

pub(crate) fn ms(d: Duration) -> Option<f64> {
    Some(d.as_secs_f64() * 1000.0)
}

/// Our public address, from the cache when fresh. Asks every STUN server at once and
/// classifies our NAT by comparing their answers; the RFC 5780 tests, which can take
/// about 2 s behind a restricted NAT, run in the background ([`detect_in_background`])
/// and refine the type for stats and the next offers. The first byte never waits for
/// them.
pub(crate) async fn discovery(shared: &Arc<Shared>) -> Discovery {
    let cached = lock(&shared.discovery).clone();
    if let Some(d) = cached {
        if d.at.elapsed() < shared.config.performance.stun_cache {
            return d;
        }
    }
    let servers = stun_servers(shared).await;
    let mut d = stun_client::discover(
        &shared.agent,
        &servers,
        &shared.host_candidates,
        stun_client::Depth::Quick,
    )
    .await;
    shared.stun_discoveries.fetch_add(1, Ordering::Relaxed);
    for e in &d.errors {
        tracing::warn!(error = %e, "stun");
    }
    let detail = lock(&shared.nat_detail).clone();
    match detail {
        Some(detail) if detail.at.elapsed() < shared.config.performance.stun_cache => {
            refine(&mut d, &detail);
        }
        // A quick "symmetric" (two servers saw two ports) needs no refining, and the
        // tests' flows would take ports port prediction counts on.
        _ if d.nat != NatType::Symmetric => detect_in_background(shared),
        _ => {}
    }
    tracing::info!(public = ?d.public_addr(), nat = d.nat.as_str(), took = ?d.took, "stun discovery");
    *lock(&shared.discovery) = Some(d.clone());
    d
}

/// Takes the NAT type measured by RFC 5780 tests (`detail`) into a quick discovery:
/// its mapping and filtering behaviour are what comparing servers cannot tell.
fn refine(quick: &mut Discovery, detail: &Discovery) {
    let measured = matches!(
        detail.nat,
        NatType::FullCone
            | NatType::AddressRestricted
            | NatType::PortRestricted
            | NatType::Symmetric
    );
    // A quick "symmetric" is evidence from the tunnel socket itself (two servers saw
    // two ports): never weakened by a test run from another socket.
    let keep = matches!(quick.nat, NatType::Open | NatType::Symmetric);
    if measured && !keep && !quick.mapped.is_empty() {
        quick.nat = detail.nat;
        quick.mapping = detail.mapping;
        quick.filtering = detail.filtering;
    }
}

/// Runs the full NAT detection ([`stun_client::detect_nat`], RFC 5780 when the first
/// STUN server supports it) from a fresh socket next to the tunnel socket, once at a
/// time, and stores it: the cached discovery (stats, our next offer) is refined when it
/// ends. The tunnel socket is not used, so its checks and the test's packets never mix.
pub(crate) fn detect_in_background(shared: &Arc<Shared>) {
    if shared.config.stun_servers.is_empty() || shared.detecting.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(shared);
    let servers = shared.config.stun_servers.clone();
    let bind = SocketAddr::new(shared.local_addr.ip(), 0);
    let token = shared.root.clone();
    crate::spawn(async move {
        let detected = tokio::select! {
            _ = token.cancelled() => return,
            d = stun_client::detect_nat(&servers, bind) => d,
        };
        let Some(shared) = weak.upgrade() else { return };
        shared.detecting.store(false, Ordering::Release);
        match detected {
            Ok(detail) => {
                tracing::info!(nat = detail.nat.as_str(), took = ?detail.took, "nat behaviour measured");
                if let Some(d) = lock(&shared.discovery).as_mut() {
                    refine(d, &detail);
                }
                *lock(&shared.nat_detail) = Some(detail);
            }
            Err(e) => tracing::debug!(error = %e, "background nat detection failed"),
        }
    });
}

/// The configured STUN servers, resolved, one address each that our socket reaches:
/// IPv4 where there is one (NAT behaviour is an IPv4 matter, and comparing mappings
/// across families would look like a symmetric NAT), else IPv6.
async fn stun_servers(shared: &Shared) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for s in &shared.config.stun_servers {
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(s.as_str()))
            .await
        {
            Ok(Ok(addrs)) => {
                let mut usable: Vec<SocketAddr> = addrs
                    .filter(|a| crate::socket::reaches(shared.local_addr, *a))
                    .filter(|a| !shared.local_addr.ip().is_loopback() || a.ip().is_loopback())
                    .collect();
                usable.sort_by_key(|a| a.is_ipv6());
                if let Some(&a) = usable.first() {
                    servers.push(a);
                }
            }
            _ => tracing::warn!(server = %s, "cannot resolve STUN server"),
        }
    }
    if servers.iter().any(SocketAddr::is_ipv4) {
        servers.retain(SocketAddr::is_ipv4);
    }
    servers
}

/// Our offer: the candidates [`path::gather`] lists, our identity and NAT type.
pub(crate) fn build_offer(
    shared: &Shared,
    disc: &Discovery,
    relayed: Option<SocketAddr>,
    plan: RelayPlan,
) -> Offer {
    // The router's mapping leads the server-reflexive candidates: it takes packets
    // from anyone, where the STUN-mapped address only passes what punching opened.
    let router = shared.portmap.external();
    let gathered = path::gather(
        &shared.host_candidates,
        router
            .into_iter()
            .chain(disc.mapped.iter().map(|(_, m)| *m)),
        relayed,
        plan.always,
    );
    Offer {
        role: shared.role,
        id: shared.our_id(),
        nonce: Offer::new_nonce(),
        ts: unix_now(),
        candidates: gathered.candidates,
        host_count: gathered.host_count,
        relay_count: gathered.relay_count,
        turn: plan.allowed,
        fp: shared.identity.fingerprint().to_hex(),
        nat: our_nat(shared, disc).as_str().to_owned(),
        predict: None,
        comb: None,
        client: shared.client.clone(),
        refused: None,
    }
}

/// The NAT type we offer and plan with: full-cone while the router maps our port on
/// our public address ([`portmap::effective_nat`]); stats keep the measured type.
fn our_nat(shared: &Shared, disc: &Discovery) -> NatType {
    portmap::effective_nat(disc.nat, shared.portmap.external(), disc.public_addr())
}

/// Our TURN allocation ([`crate::turn::allocation`] makes, refreshes and releases
/// it), its errors mapped to the attempt's outcome.
async fn ensure_relay(shared: &Arc<Shared>) -> std::result::Result<Arc<TurnClient>, Attempt> {
    shared.turn.ensure().await.map_err(|e| match e {
        // Wrong credentials will not fix themselves; everything else may.
        AllocError::Rejected(e) => Attempt::Fatal(e),
        other => Attempt::Retry(other.to_string()),
    })
}

/// Why an attempt did not connect.
pub(crate) enum Attempt {
    /// Worth retrying after a backoff.
    Retry(String),
    /// The tunnel handshake failed on a certificate check (ours or the peer's):
    /// retried like [`Attempt::Retry`], and reported as a peer authentication failure.
    AuthFailed(String),
    /// Retrying cannot help.
    Fatal(Error),
}

impl From<String> for Attempt {
    fn from(reason: String) -> Self {
        Attempt::Retry(reason)
    }
}

/// One attempt: discover, signal, punch, handshake. `Ok(None)` when the peer has not
/// shown up yet (not a failure). Its offer id is chosen by the driver.
pub(crate) async fn connect_once(
    shared: &Arc<Shared>,
    incoming: &mut Incoming,
) -> std::result::Result<Option<(quinn::Connection, PathKind)>, Attempt> {
    let t0 = Instant::now();
    if shared.role == Role::Server {
        // Until this attempt has read the peer's offer, handshakes are held for it
        // (`accept_loop`), not checked against an earlier peer's certificate.
        shared.pinned.set(None);
    }
    lock(&shared.peer).set_offer_id(None);
    // The last tunnel's direct pin goes with it: this attempt may need the relay to
    // the same address.
    shared.agent.socket().unpin();
    // And so does a birthday-punching socket that carried it.
    shared.agent.socket().clear_side();
    *lock(&shared.side_technique) = None;
    shared.set_state(State::Discovering);
    let policy = shared.config.relay_policy;
    let plan = path::relay_plan(policy, shared.config.relay.is_some());
    // Our public addresses and our relayed one at the same time: the relay is a
    // candidate like the others, checked alongside them. The allocation runs as its own
    // task: a slow or dead relay costs this attempt at most `RELAY_GATHER_WAIT` after
    // discovery (its candidate is then left out), and a late allocation is kept for
    // the next attempt.
    let allocation = plan.allowed.then(|| {
        let shared = shared.clone();
        // Not aborted with the attempt: an allocation cut off half-way would leave
        // the socket routing to a relay that has no allocation for us. It ends with
        // the engine, though (a stopped engine's allocation is released anyway).
        let token = shared.root.clone();
        crate::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => Err(Attempt::Retry("the engine stopped".into())),
                r = ensure_relay(&shared) => r,
            }
        })
    });
    let disc = discovery(shared).await;
    let stun_ms = disc.took;
    // Under `always` the relay is the only path: wait for it as long as it takes.
    let wait = if plan.always {
        Duration::from_secs(3600)
    } else {
        RELAY_GATHER_WAIT
    };
    // The router's first answer is waited for alongside the relay, as briefly, when
    // our NAT may be symmetric (a mapping then makes it reachable); behind a symmetric
    // NAT with no relay allowed the attempt would most likely end in NoPath without
    // one, so there the router's answer decides whether a direct path exists at all
    // (a UPnP router may delay its search answer up to 3 s). Behind a NAT known to
    // keep one port per socket (and without NAT) nothing waits: checks and birthday
    // punching reach us anyway, and a mapping that comes later is offered next time.
    // Port prediction reaches a symmetric NAT that allocates ports regularly from
    // another such NAT: only one that allocates randomly needs the mapping that much.
    let our_alloc = if disc.nat == NatType::Symmetric
        && !plan.allowed
        && shared.config.performance.birthday()
    {
        Some(super::predict::our_allocation(shared, &disc).await)
    } else {
        None
    };
    let portmap_wait = match disc.nat {
        NatType::Open
        | NatType::FullCone
        | NatType::AddressRestricted
        | NatType::PortRestricted
        | NatType::Cone => Duration::ZERO,
        NatType::Symmetric if !plan.allowed && !our_alloc.is_some_and(predict::regular) => {
            portmap::PROBE_TIMEOUT
        }
        NatType::Symmetric | NatType::Nat | NatType::Unknown => super::portmap::PORTMAP_GATHER_WAIT,
    };
    let portmap_probed = shared.portmap.wait_probed(portmap_wait);
    let relay_allocated = async {
        match allocation {
            Some(task) => Some(tokio::time::timeout(wait, task).await),
            None => None,
        }
    };
    let ((), allocated) = tokio::join!(portmap_probed, relay_allocated);
    let allocated = match allocated {
        Some(waited) => match waited {
            Ok(Ok(r)) => Some(r),
            Ok(Err(_)) => Some(Err(Attempt::Retry(
                "the relay allocation task ended".into(),
            ))),
            Err(_) => Some(Err(Attempt::Retry(format!(
                "no relay allocation within {RELAY_GATHER_WAIT:?} of discovery"
            )))),
        },
        None => None,
    };
    let relayed = match allocated {
        Some(Ok(turn)) => Some(turn.relayed),
        // Wrong credentials will not fix themselves; under `always` nothing works
        // without the relay.
        Some(Err(e @ Attempt::Fatal(_))) => return Err(e),
        Some(Err(e)) if plan.always => return Err(e),
        Some(Err(Attempt::Retry(reason) | Attempt::AuthFailed(reason))) => {
            tracing::warn!(%reason, "the relay is unavailable; this attempt checks direct paths only");
            None
        }
        None => None,
    };

    shared.set_state(State::Signaling);
    let mut offer = build_offer(shared, &disc, relayed, plan);
    let ts = Instant::now();
    let encoded = offer.encode(&shared.key, &shared.config.room);
    shared
        .signal
        .post(shared.role, &encoded)
        .await
        .map_err(|e| format!("cannot post our offer: {e}"))?;
    // A client knocks at the room's mailbox until the server answers in its own.
    let waited = super::knock::knocking(
        shared,
        &encoded,
        wait_for_offer(shared, Duration::from_secs(60), |_| true),
    );
    let mut peer = match waited.await {
        Ok(p) => p,
        Err(Error::Timeout(_)) => return Ok(None),
        Err(e) => return Err(Attempt::Retry(format!("rendezvous: {e}"))),
    };
    if let Some(why) = &peer.refused {
        return Err(Attempt::Retry(format!(
            "the server peer refused this client: {why}; retrying"
        )));
    }
    let signal_ms = ts.elapsed();
    {
        let mut p = lock(&shared.peer);
        p.nat = Some(NatType::from_name(&peer.nat));
        p.set_offer_id(Some(peer.id.clone()));
    }
    let birthday = shared.config.performance.birthday() && !plan.always;
    let global_v6 = path::both_on_global_ipv6(&offer, &peer);
    // Two symmetric NATs: only port prediction can punch them, when both allocate
    // ports regularly (its own exchange of offers).
    let negotiated = if birthday
        && !global_v6
        && our_nat(shared, &disc) == NatType::Symmetric
        && NatType::from_name(&peer.nat) == NatType::Symmetric
    {
        super::predict::negotiate(shared, &disc, &offer, &peer, our_alloc).await
    } else {
        Negotiated::Unpredictable
    };
    // An exchange that did not complete (a lost or late offer, a peer that stopped
    // half-way) says nothing about the pair: without a relay we try again instead of
    // giving up for good with `NoPath`.
    let (prediction, missed) = match negotiated {
        Negotiated::Ready(p) => (Some(p), None),
        Negotiated::Unpredictable => (None, None),
        Negotiated::Missed(reason) => (None, Some(reason)),
    };
    let path_plan = if global_v6 || prediction.is_some() {
        PathPlan::Punch
    } else {
        path::plan_path(
            shared.role,
            our_nat(shared, &disc),
            offer.relay_count,
            &peer,
            plan,
            policy,
            birthday,
        )
    };
    match path_plan {
        PathPlan::Punch => {}
        PathPlan::AllocateRelay => {
            let turn = ensure_relay(shared).await?;
            offer = build_offer(shared, &disc, Some(turn.relayed), plan);
            shared
                .signal
                .post(shared.role, &offer.encode(&shared.key, &shared.config.room))
                .await
                .map_err(|e| format!("cannot post our relayed offer: {e}"))?;
        }
        PathPlan::WaitForPeerRelay => {
            peer = wait_for_offer(shared, Duration::from_secs(20), |o| o.relay_count > 0)
                .await
                .map_err(|e| format!("the peer did not offer its relay: {e}"))?;
        }
        PathPlan::NoPath => {
            if let Some(reason) = missed {
                tracing::info!(%reason, "port prediction's exchange did not complete");
                return Err(Attempt::Retry(format!(
                    "port prediction did not complete ({reason}); trying again"
                )));
            }
            return Err(Attempt::Fatal(Error::NoPath {
                local_nat: disc.nat.as_str().to_owned(),
                peer_nat: peer.nat.clone(),
            }));
        }
    }
    let Some(fp) = Fingerprint::from_hex(&peer.fp) else {
        return Err(Attempt::Retry(
            "peer offer carries an invalid fingerprint".into(),
        ));
    };
    lock(&shared.peer).offer = Some(peer.clone());
    let turn = shared.turn.current();
    if let Some(turn) = turn {
        // Let the peer's packets in through our relay (permissions are per IP).
        let ips: Vec<std::net::IpAddr> = peer.candidates.iter().map(|c| c.ip()).collect();
        let t = turn.clone();
        if let Err(e) = t.permit(&ips).await {
            tracing::warn!(error = %e, "relay permission failed");
        }
    }
    shared.pinned.set(Some(fp));
    shared.set_state(State::Punching);
    let tp = Instant::now();
    let mut offered = path::check_targets(&peer, plan.always);
    if prediction.is_some()
        || shared.config.performance.birthday()
            && path::skip_public_checks(disc.nat, NatType::from_name(&peer.nat))
    {
        // Our symmetric NAT gives our socket a port toward the peer that its
        // port-restricted NAT never lets in; our checks there only leave conntrack
        // entries on its router that can move its port. Birthday punching's sockets
        // open the way instead.
        let public = path::peer_public(&peer);
        offered.retain(|c| Some(*c) != public);
    }
    let remote = punch::usable_candidates(shared.local_addr, &offered);
    if plan.always {
        // Everything, checks included, leaves through our own relay.
        for c in &remote {
            shared.agent.socket().route_via_relay(*c);
        }
    }
    if remote.is_empty() && !plan.always {
        return Err(Attempt::Retry(format!(
            "the peer offered no candidate reachable from {}",
            shared.local_addr
        )));
    }
    let (prflx_tx, prflx_rx) = mpsc::channel(16);
    *lock(&shared.prflx) = Some((peer.id.clone(), prflx_tx));
    let punch = Punch {
        our_id: shared.our_id(),
        peer_id: peer.id.clone(),
        password: shared.password.clone(),
        checks: ChecklistConfig {
            remote,
            timeout: shared.config.punch_timeout,
            keep_going: shared.role == Role::Server,
            direct: false,
            opener: crate::agent::schedule::opener(
                shared.config.performance.opener_ttl(),
                shared.failed_punches.load(Ordering::Relaxed),
            ),
        },
        straight: !plan.always,
    };
    let pair = pair_key(&disc, &peer);
    let mut birthdays = if birthday {
        start_birthdays(shared, &disc, &peer, pair)
    } else {
        Birthdays::default()
    };
    match prediction {
        Some(Prepared::Client(shot)) => birthdays.spawn(
            shared,
            Technique::Prediction,
            shot.run(shared.agent.clone()),
        ),
        Some(Prepared::Server(comb)) => birthdays.spawn(
            shared,
            Technique::Prediction,
            comb.run(shared.agent.clone()),
        ),
        None => {}
    }
    let result = match shared.role {
        Role::Client => {
            let punching = punch.run(shared.agent.clone(), prflx_rx);
            let (selected, technique) = birthdays.race(punching).await;
            if let Some(t) = technique {
                lock(&shared.peer).technique = Some(t);
            }
            let Some(sel) = selected else {
                shared.failed_punches.fetch_add(1, Ordering::Relaxed);
                return Err(Attempt::Retry(format!(
                    "no path: no connectivity check succeeded within {:?} (our NAT: {}, peer NAT: {})",
                    shared.config.punch_timeout,
                    disc.nat.as_str(),
                    peer.nat
                )));
            };
            if !plan.always {
                // The tunnel runs on the pair we nominated, straight from our socket
                // (to a relayed candidate of the peer too): the peer's checks of our
                // relayed address must not pull it through our relay.
                shared.agent.socket().route_direct(sel.remote);
            }
            let cfg = tunnel::client_config(
                &shared.identity,
                shared.pinned.clone(),
                &shared.config.performance,
            )
            .map_err(|e| e.to_string())?;
            let connecting = shared
                .endpoint
                .connect_with(cfg, sel.remote, tunnel::SERVER_NAME)
                .map_err(|e| format!("cannot open the tunnel: {e}"))?;
            // Connected only once the server has authenticated us too: in TLS 1.3 our
            // handshake completes before the server has checked our certificate, so
            // wait for its welcome (a server that refuses us closes instead).
            let handshake = async {
                let conn = connecting.await.map_err(|e| {
                    let reason = format!("tunnel handshake with {} failed: {e}", sel.remote);
                    if tunnel::is_auth_failure(&e) {
                        Attempt::AuthFailed(reason)
                    } else {
                        Attempt::Retry(reason)
                    }
                })?;
                if let Err(e) = tunnel::await_welcome(&conn).await {
                    conn.close(0u32.into(), b"no welcome");
                    let reason = format!(
                        "tunnel handshake with {}: the peer did not accept us: {e}",
                        sel.remote
                    );
                    return Err(if e.is_auth_failure() {
                        Attempt::AuthFailed(reason)
                    } else {
                        Attempt::Retry(reason)
                    });
                }
                Ok(conn)
            };
            let conn = tokio::time::timeout(Duration::from_secs(10), handshake)
                .await
                .map_err(|_| format!("tunnel handshake with {} timed out", sel.remote))??;
            let path = shared.path_kind(&peer, sel.remote);
            if path == PathKind::Relay {
                birthdays.upgrade_later(shared, &conn);
            }
            (conn, path)
        }
        Role::Server => {
            let agent = shared.agent.clone();
            // Aborted also when the attempt is dropped (the peer started over, or stop).
            let punching =
                tokio_util::task::AbortOnDropHandle::new(crate::spawn(punch.run(agent, prflx_rx)));
            let wait = shared.config.punch_timeout + Duration::from_secs(5);
            let got = {
                // Drop handshakes completed for an earlier peer.
                let want = shared.pinned.get();
                tokio::time::timeout(wait, async {
                    loop {
                        match incoming.recv().await {
                            Some(c) if tunnel::peer_fingerprint(&c) == want => return Some(c),
                            Some(c) => c.close(0u32.into(), b"superseded"),
                            None => return None,
                        }
                    }
                })
                .await
            };
            drop(punching);
            let won = birthdays.finished(matches!(got, Ok(Some(_))));
            let conn = match got {
                Ok(Some(c)) => c,
                _ => {
                    shared.failed_punches.fetch_add(1, Ordering::Relaxed);
                    return Err(Attempt::Retry(format!(
                        "no path: the peer's tunnel did not arrive within {wait:?} (our NAT: {}, peer NAT: {})",
                        disc.nat.as_str(),
                        peer.nat
                    )));
                }
            };
            let addr = crate::socket::peer_addr(&conn);
            // A side socket that carries the peer joined through birthday punching or
            // port prediction (whichever session reached it, even if it has not
            // reported yet).
            let found = won.iter().find(|(a, _)| *a == addr).map(|(_, t)| *t);
            let by_side = (shared.agent.socket().side_peer() == Some(addr))
                .then(|| lock(&shared.side_technique).unwrap_or(Technique::Birthday));
            lock(&shared.peer).technique = Some(found.or(by_side).unwrap_or(Technique::Checks));
            if !plan.always && !shared.agent.socket().is_via_relay(addr) {
                // It came straight: keep answering it straight, whatever relayed
                // checks of the client still arrive.
                shared.agent.socket().route_direct(addr);
            }
            let path = shared.path_kind(&peer, addr);
            if path == PathKind::Relay {
                birthdays.upgrade_later(shared, &conn);
            }
            (conn, path)
        }
    };
    *lock(&shared.prflx) = None;
    *lock(&shared.rejected) = None;
    shared.failed_punches.store(0, Ordering::Relaxed);
    *lock(&shared.timings) = Timings {
        stun_discovery_ms: ms(stun_ms),
        signaling_wait_ms: ms(signal_ms),
        punching_ms: ms(tp.elapsed()),
        time_to_connected_ms: ms(t0.elapsed()),
    };
    Ok(Some(result))
}
