//! Graceful shutdown, and the [`Stats`] snapshot.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use crate::stats::{ClientStats, MappingStats, Stats, Traffic};
use crate::status::{PathKind, State};
use crate::stun::client::NatType;
use crate::sync::lock;

pub(crate) async fn shutdown(shared: &Arc<Shared>, timeout: Duration) {
    // A server's sessions first, all at once: each client is told `stopped`.
    if let Some(hub) = &shared.hub {
        // No new session from here on: the hub's loop ends with the engine's token.
        shared.root.cancel();
        let mut ended = tokio::task::JoinSet::new();
        // They stay listed, so that the final stats still count what they served.
        for session in hub.close_all() {
            ended.spawn(async move {
                close_tunnel(&session, timeout).await;
                session.set_state(State::Stopped);
                // Its events went through the engine's channel: let go of it, so the
                // event thread ends.
                lock(&session.events_tx).take();
            });
        }
        while ended.join_next().await.is_some() {}
    }
    close_tunnel(shared, timeout).await;
}

/// Cancels one peer's tasks, removes its offer, closes its tunnel and endpoint, and
/// deletes its router mapping.
pub(crate) async fn close_tunnel(shared: &Arc<Shared>, timeout: Duration) {
    shared.root.cancel();
    let budget = (timeout / 3).min(Duration::from_secs(1));
    // Our offer goes before the tunnel: a peer that sees the tunnel close and reads the
    // mailbox then must not find an offer of ours to punch toward for nothing.
    let _ = tokio::time::timeout(budget, shared.signal.delete(shared.role)).await;
    let conn = shared.conn_tx.send_replace(None);
    if let Some(c) = conn {
        c.close(0u32.into(), b"stopped");
    }
    shared.endpoint.close(0u32.into(), b"stopped");
    let _ = tokio::time::timeout(budget, shared.endpoint.wait_idle()).await;
    // The router's mapping goes last: its deletion, started by the cancel above, has
    // usually finished by now.
    shared
        .portmap
        .stopped(super::portmap::RELEASE_TIMEOUT)
        .await;
}

pub(crate) fn snapshot(shared: &Shared) -> Stats {
    match &shared.hub {
        Some(hub) => hub_snapshot(shared, &hub.sessions()),
        None => peer_snapshot(shared),
    }
}

/// A server's figures: those of its lead client (see `hub::lead`) with the engine's
/// own state, every client listed, and the sums of all.
fn hub_snapshot(engine: &Shared, sessions: &[Arc<Shared>]) -> Stats {
    let mut stats = match sessions.first() {
        Some(lead) => peer_snapshot(lead),
        None => peer_snapshot(engine),
    };
    let clients: Vec<(ClientStats, Stats)> = sessions
        .iter()
        .map(|s| {
            let one = peer_snapshot(s);
            let client = ClientStats {
                id: s.client.clone().unwrap_or_default(),
                state: one.state.clone(),
                path: one.path,
                peer_addr: one.peer_addr,
                technique: one.technique,
                peer_nat_type: one.peer_nat_type,
                rtt_ms: one.rtt_ms,
                local_addr: one.local_addr,
                totals: one.totals.clone(),
                reconnects: one.reconnects,
                last_error: one.last_error.clone(),
            };
            (client, one)
        })
        .collect();
    let mut totals = Traffic::default();
    let (mut rejected, mut requests) = (
        engine.offers_rejected.load(Ordering::Acquire),
        engine.signaling_requests.load(Ordering::Relaxed),
    );
    let (mut unauthenticated, mut reconnects) = (0, 0);
    for (_, one) in &clients {
        totals.add(&one.totals);
        rejected += one.offers_rejected;
        requests += one.signaling_requests;
        unauthenticated += one.checks_unauthenticated;
        reconnects += one.reconnects;
    }
    stats.state = engine.state();
    stats.totals = totals;
    stats.offers_rejected = rejected;
    stats.signaling_requests = requests;
    stats.checks_unauthenticated = unauthenticated;
    stats.reconnects = reconnects;
    stats.last_error = lock(&engine.last_error).clone().or(stats.last_error);
    if !stats.state.is_connected() {
        stats.path = None;
        stats.peer_addr = None;
        stats.technique = None;
        stats.rtt_ms = None;
        stats.relay_server = None;
    }
    stats.clients = clients.into_iter().map(|(c, _)| c).collect();
    stats
}

/// One peer's figures: a client engine's, or one session of a server.
fn peer_snapshot(shared: &Shared) -> Stats {
    let state = shared.state();
    let peer = lock(&shared.peer);
    let disc = lock(&shared.discovery).clone();
    let conn = shared.conn_tx.borrow().clone();
    let connected = state.is_connected();
    let mappings = lock(&shared.mappings)
        .values()
        .map(|e| MappingStats {
            id: e.info.id,
            spec: e.info.mapping.to_string(),
            listen: e.info.listen,
            traffic: e.counters.snapshot(),
        })
        .collect();
    Stats {
        mode: shared.config.mode,
        room: shared.config.room.to_string(),
        insecure: shared.config.secret.is_none(),
        path: if connected { peer.path } else { None },
        relay_server: match (connected, peer.path, shared.turn.current()) {
            (true, Some(PathKind::Relay), Some(t)) => Some(format!("{} ({})", t.url(), t.server())),
            (true, Some(PathKind::Relay), None) => peer
                .addr
                .map(|a| format!("{a} (the peer's TURN allocation)")),
            _ => None,
        },
        peer_addr: if connected { peer.addr } else { None },
        technique: match &state {
            State::Connected { technique, .. } => Some(*technique),
            _ => None,
        },
        state,
        local_addr: shared.local_addr,
        public_addr: disc.as_ref().and_then(|d| d.public_addr()),
        nat_type: disc.as_ref().map_or(NatType::Unknown, |d| d.nat),
        peer_nat_type: peer.nat,
        rtt_ms: conn.map(|c| c.rtt().as_secs_f64() * 1000.0),
        totals: shared.totals.snapshot(),
        mappings,
        timings: lock(&shared.timings).clone(),
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        path_changes: shared.path_changes.load(Ordering::Relaxed),
        birthday_sockets: shared.birthday_counters.sockets.load(Ordering::Relaxed),
        birthday_packets: shared.birthday_counters.packets.load(Ordering::Relaxed),
        stun_discoveries: shared.stun_discoveries.load(Ordering::Relaxed),
        signaling_requests: shared.signaling_requests.load(Ordering::Relaxed),
        offers_rejected: shared.offers_rejected.load(Ordering::Acquire),
        checks_unauthenticated: shared.checks_unauthenticated.load(Ordering::Relaxed),
        last_error: lock(&shared.last_error).clone(),
        port_mapping: shared.portmap.status(),
        client_id: match shared.role {
            crate::signal::proto::Role::Client => shared.client.clone(),
            crate::signal::proto::Role::Server => None,
        },
        clients: Vec::new(),
    }
}
