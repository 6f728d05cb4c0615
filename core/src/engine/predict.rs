//! Port prediction's exchange (`agent::predict` has the plan): when both NATs are
//! symmetric, the client offers the ports its NAT will hand out next (`predict`), the
//! server lays a comb of sockets toward them and offers the ports its NAT gave them
//! (`comb`). Both offers are posted like any other, under the room key's MAC, and the
//! sessions they prepare run with the attempt's birthday sessions.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::offers::wait_for_offer;
use super::shared::Shared;
use crate::agent::birthday::{BirthdayConfig, Side};
use crate::agent::predict;
use crate::birthday::{self, BirthdaySession};
use crate::predict::Shooter;
use crate::signal::proto::{unix_now, Offer, Role};
use crate::status::Technique;
use crate::stun::allocation::{self, Allocation};
use crate::stun::client::Discovery;

/// How long either side waits for the other's half of the exchange.
const EXCHANGE_WAIT: Duration = Duration::from_secs(5);

/// A session port prediction prepared, ready to run.
pub(crate) enum Prepared {
    /// The client's shot.
    Client(Shooter),
    /// The server's comb, waiting for it.
    Server(BirthdaySession),
}

/// The STUN server allocation is measured against, and the IP prediction's sockets
/// bind: plain IPv4 sockets (NAT behaviour is an IPv4 matter, and the TTL option is
/// then the IPv4 one).
fn stun_and_bind(shared: &Shared, disc: &Discovery) -> Option<(SocketAddr, IpAddr)> {
    let (stun, _) = *disc.mapped.iter().find(|(s, _)| s.is_ipv4())?;
    let bind_ip: IpAddr = match shared.local_addr.ip() {
        IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        ip => ip,
    };
    Some((stun, bind_ip))
}

/// Measures how our NAT allocates ports (four fresh mappings).
pub(crate) async fn our_allocation(shared: &Shared, disc: &Discovery) -> Allocation {
    let Some((stun, bind_ip)) = stun_and_bind(shared, disc) else {
        return Allocation::Unknown;
    };
    let alloc = allocation::sample(stun, bind_ip).await.0;
    tracing::info!(allocation = %alloc, "our NAT's port allocation");
    alloc
}

/// How our half of the exchange ended.
pub(crate) enum Negotiated {
    /// A session is ready to run.
    Ready(Prepared),
    /// Port prediction cannot work for this pair: a NAT allocates ports no one can
    /// predict (the peer said so with an empty list, or ours does), or an offer lacks
    /// what it needs. Without a relay the pair is hopeless.
    Unpredictable,
    /// The exchange did not complete this time (a half did not come or could not be
    /// posted, our NAT's allocation could not be measured, other flows kept taking
    /// ports during the comb): the pair may well be punchable, so another attempt is
    /// worth it rather than giving up with `NoPath`.
    Missed(String),
}

/// How many times the server lays its comb again when another flow took a port in the
/// middle of it (each costs two STUN round trips and the comb's sockets).
const COMB_TRIES: usize = 3;

/// Runs our half of the exchange when both NATs are symmetric. `offer` is our offer of
/// this attempt, `peer` the peer's, `measured` our allocation if this attempt measured
/// it already.
pub(crate) async fn negotiate(
    shared: &Arc<Shared>,
    disc: &Discovery,
    offer: &Offer,
    peer: &Offer,
    measured: Option<Allocation>,
) -> Negotiated {
    use Negotiated::{Missed, Unpredictable};
    let Some((stun, bind_ip)) = stun_and_bind(shared, disc) else {
        return Unpredictable;
    };
    let Some(peer_public) = crate::agent::path::peer_public(peer) else {
        return Unpredictable;
    };
    let alloc = match measured {
        Some(a) => a,
        None => our_allocation(shared, disc).await,
    };
    // Too few STUN answers to tell: we post nothing (an empty list would tell the peer
    // our NAT is hopeless), and both sides try again.
    if alloc == Allocation::Unknown {
        return Missed("our NAT's port allocation could not be measured".into());
    }
    let timeout = shared.config.punch_timeout;
    match shared.role {
        Role::Client => {
            let Some(socket) = birthday::open_sockets(1, bind_ip).pop() else {
                return Missed("cannot open the prediction socket".into());
            };
            let Ok(local) = socket.local_addr().map(|a| a.port()) else {
                return Missed("cannot read the prediction socket's port".into());
            };
            // Where a sequential NAT is now: one fresh mapping's port.
            let last = match alloc {
                Allocation::Sequential { .. } => {
                    match allocation::fresh_mapping(stun, bind_ip).await {
                        Some(port) => port,
                        None => return Missed("no fresh mapping from the STUN server".into()),
                    }
                }
                _ => local,
            };
            let ports = if predict::regular(alloc) {
                predict::predicted_ports(alloc, last, local)
            } else {
                Vec::new()
            };
            if post(shared, offer, Some(ports.clone()), None)
                .await
                .is_none()
            {
                return Missed("cannot post our prediction".into());
            }
            if ports.is_empty() {
                return Unpredictable;
            }
            let answer = match wait_for_offer(shared, EXCHANGE_WAIT, |o| {
                o.id == peer.id && o.comb.is_some()
            })
            .await
            {
                Ok(a) => a,
                Err(e) => return Missed(format!("no comb from the server: {e}")),
            };
            let comb = answer.comb.unwrap_or_default();
            if comb.is_empty() {
                tracing::info!("port prediction: the server's NAT allocates no predictable port");
                return Unpredictable;
            }
            if comb.len() != ports.len() {
                return Missed(format!(
                    "the server's comb has {} teeth for our {} ports",
                    comb.len(),
                    ports.len()
                ));
            }
            Negotiated::Ready(Prepared::Client(Shooter {
                our_id: shared.our_id(),
                peer_id: peer.id.clone(),
                password: shared.password.clone(),
                socket,
                alloc,
                predict: ports,
                comb,
                server_ip: peer_public.ip(),
                stun,
                timeout,
                counters: shared.birthday_counters.clone(),
            }))
        }
        Role::Server => {
            // The rendezvous (or a slow read) may have shown us the client's offer with
            // `predict` as its first: that is the one to answer, and no other comes.
            let wanted = match &peer.predict {
                Some(p) => p.clone(),
                None => match wait_for_offer(shared, EXCHANGE_WAIT, |o| {
                    o.id == peer.id && o.predict.is_some()
                })
                .await
                {
                    Ok(asked) => asked.predict.unwrap_or_default(),
                    Err(e) => return Missed(format!("no prediction from the client: {e}")),
                },
            };
            if wanted.is_empty() {
                return Unpredictable;
            }
            if !predict::regular(alloc) {
                // Our NAT allocates randomly: say so, so that the client stops too.
                if post(shared, offer, None, Some(Vec::new())).await.is_none() {
                    return Missed("cannot post our empty comb".into());
                }
                return Unpredictable;
            }
            let mut comb = None;
            for _ in 0..COMB_TRIES {
                comb = lay_comb(
                    shared,
                    &peer.id,
                    alloc,
                    stun,
                    bind_ip,
                    peer_public.ip(),
                    &wanted,
                )
                .await;
                if comb.is_some() {
                    break;
                }
            }
            // Still unnamed: we post nothing (an empty comb would say our NAT is
            // hopeless); the client misses it and both sides try again.
            let Some((ports, sockets)) = comb else {
                return Missed("other flows kept taking ports during the comb".into());
            };
            if post(shared, offer, None, Some(ports.clone()))
                .await
                .is_none()
            {
                return Missed("cannot post our comb".into());
            }
            tracing::info!(teeth = ?ports, "port prediction: comb laid");
            Negotiated::Ready(Prepared::Server(BirthdaySession {
                our_id: shared.our_id(),
                peer_id: peer.id.clone(),
                password: shared.password.clone(),
                config: BirthdayConfig {
                    side: Side::Hard,
                    peer: SocketAddr::new(peer_public.ip(), wanted[0]),
                    sockets: sockets.len(),
                    probes: 0,
                    rate: shared.config.performance.birthday_rate,
                    opener_ttl: None,
                    lead: Duration::ZERO,
                    timeout,
                    premade: true,
                },
                local_ip: bind_ip,
                counters: shared.birthday_counters.clone(),
                premade: sockets,
                technique: Technique::Prediction,
            }))
        }
    }
}

/// Opens one socket per port the client predicted and sends an opener from each, in
/// order, toward the client's IP at that port (at the openers' low TTL); the ports our
/// NAT gave them and the sockets, or `None` when they cannot be named.
async fn lay_comb(
    shared: &Shared,
    peer_id: &str,
    alloc: Allocation,
    stun: SocketAddr,
    bind_ip: IpAddr,
    client_ip: IpAddr,
    wanted: &[u16],
) -> Option<(Vec<u16>, Vec<std::net::UdpSocket>)> {
    let sequential = matches!(alloc, Allocation::Sequential { .. });
    let before = if sequential {
        allocation::fresh_mapping(stun, bind_ip).await
    } else {
        None
    };
    let sockets = birthday::open_sockets(wanted.len(), bind_ip);
    if sockets.len() != wanted.len() {
        return None;
    }
    let ttl = shared.config.performance.opener_ttl();
    let username = format!("{peer_id}:{}", shared.our_id());
    let mut locals = Vec::with_capacity(sockets.len());
    for (sock, port) in sockets.iter().zip(wanted) {
        let request = crate::stun::message::check_request(
            crate::stun::message::new_tid(),
            &username,
            &shared.password,
        );
        let to = SocketAddr::new(client_ip, *port);
        let sent = match ttl {
            Some(ttl) => birthday::send_with_ttl(socket2::SockRef::from(sock), &request, to, ttl),
            None => sock.send_to(&request, to).map(|_| ()),
        };
        if let Err(e) = sent {
            tracing::debug!(%to, error = %e, "port prediction: comb opener not sent");
        }
        locals.push(sock.local_addr().ok()?.port());
    }
    let after = if sequential {
        allocation::fresh_mapping(stun, bind_ip).await
    } else {
        None
    };
    match predict::comb_ports(alloc, before, after, &locals) {
        Some(ports) => Some((ports, sockets)),
        None => {
            tracing::info!(
                ?before,
                ?after,
                n = locals.len(),
                "port prediction: another flow took a port during the comb"
            );
            None
        }
    }
}

/// Posts our offer again, fresh, with port prediction's lists.
async fn post(
    shared: &Shared,
    offer: &Offer,
    predict: Option<Vec<u16>>,
    comb: Option<Vec<u16>>,
) -> Option<()> {
    let offer = Offer {
        nonce: Offer::new_nonce(),
        ts: unix_now(),
        predict,
        comb,
        ..offer.clone()
    };
    shared
        .signal
        .post(shared.role, &offer.encode(&shared.key, &shared.config.room))
        .await
        .map_err(|e| tracing::warn!(error = %e, "port prediction: cannot post our offer"))
        .ok()
}
