//! Watching the room: the peer's newer offers, seen in the mailbox (not only through
//! its checks, which a restricted NAT on our side drops when the peer comes back from
//! a new public port). A restarted peer is then met at once, while we are connected,
//! punching toward its old offer, or waiting between attempts.

use std::time::Duration;

use super::shared::{peer_restarted, peer_started_over, Shared};
use crate::signal::proto::{unix_now, Offer, OFFER_WINDOW};
use crate::sync::lock;

/// How long one mailbox wait lasts before it is asked again (the long-poll itself is
/// the signal client's; this bounds how long a reading taken while no peer offer was
/// in use can be ignored).
const WATCH_WAIT: Duration = Duration::from_secs(25);
/// How often to look whether this attempt has adopted a peer offer yet.
const NOT_READY_PAUSE: Duration = Duration::from_millis(100);

/// The id of the offer in `data` when it is an authentic, fresh offer of the peer that
/// supersedes the one in use (`None` when none is in use).
pub(crate) fn newer_peer_offer(shared: &Shared, data: &str) -> Option<String> {
    let offer = Offer::decode(data, &shared.key, &shared.config.room).ok()?;
    if offer.role != shared.role.peer() || offer.client != shared.client {
        return None;
    }
    let peer = lock(&shared.peer);
    let current = peer.offer.as_ref()?;
    if peer.offer_id() != Some(current.id.as_str()) {
        // This attempt has not adopted a peer offer yet: its own wait reads the room.
        return None;
    }
    let fresh = unix_now().abs_diff(offer.ts) <= OFFER_WINDOW.as_secs();
    let supersedes =
        offer.id != current.id && !peer.left_behind(&offer.id) && later(&offer, current) && fresh;
    supersedes.then_some(offer.id)
}

/// Whether `offer` came after `current`. Offers carry whole seconds: within the same
/// second only a new process (another certificate: a peer killed and started again at
/// once) counts, so a genuine offer of the same process and second that we never
/// adopted cannot be replayed to restart us.
fn later(offer: &Offer, current: &Offer) -> bool {
    offer.ts > current.ts || (offer.ts == current.ts && offer.fp != current.fp)
}

/// Resolves with the id of a newer peer offer seen in the mailbox.
pub(crate) async fn watch_room(shared: &Shared) -> String {
    loop {
        let ready = {
            let p = lock(&shared.peer);
            p.offer_id().is_some() && p.offer.as_ref().map(|o| o.id.as_str()) == p.offer_id()
        };
        if !ready {
            tokio::time::sleep(NOT_READY_PAUSE).await;
            continue;
        }
        let role = shared.role.peer();
        match shared
            .signal
            .wait_for(role, WATCH_WAIT, |data| newer_peer_offer(shared, data))
            .await
        {
            Ok(id) => return id,
            // Timed out (nothing newer) or the rendezvous is away: look again.
            Err(_) => tokio::time::sleep(NOT_READY_PAUSE).await,
        }
    }
}

/// During an attempt or between attempts: the peer started over, seen in its checks or
/// in the room.
pub(crate) async fn peer_moved_on(shared: &Shared) -> String {
    tokio::select! {
        id = peer_started_over(shared) => id,
        id = watch_room(shared) => {
            tracing::info!(peer_offer = %id, "a newer peer offer is in the room");
            id
        }
    }
}

/// While connected: the peer restarted (a new process, another certificate, seen in
/// its checks or in the room) or started a new attempt (a newer offer in the room:
/// it lost the tunnel, maybe because its NAT moved it to another public port, and
/// cannot reach us before we punch toward its new address).
pub(crate) async fn peer_replaced(shared: &Shared) -> String {
    tokio::select! {
        id = peer_restarted(shared) => id,
        id = watch_room(shared) => id,
        id = server_restarted(shared) => {
            tracing::info!(announcement = %id, "the server peer restarted");
            id
        }
    }
}

/// A client's watch on the room's own mailbox: a server process other than ours
/// announced itself there after our tunnel's offer was made (the server restarted,
/// and knows nothing of us: its sessions wait for our knock). Never resolves on the
/// server side.
async fn server_restarted(shared: &Shared) -> String {
    let Some(lobby) = &shared.lobby else {
        return std::future::pending().await;
    };
    loop {
        let current = lock(&shared.peer).offer.clone();
        let Some(current) = current else {
            tokio::time::sleep(NOT_READY_PAUSE).await;
            continue;
        };
        let newer = |data: &str| {
            let offer = Offer::decode(data, &shared.key, &shared.config.room).ok()?;
            let fresh = unix_now().abs_diff(offer.ts) <= OFFER_WINDOW.as_secs();
            let another = offer.role == crate::signal::proto::Role::Server
                && offer.client.is_none()
                && offer.fp != current.fp
                && offer.ts >= current.ts;
            (another && fresh).then_some(offer.id)
        };
        match lobby
            .wait_for(crate::signal::proto::Role::Server, WATCH_WAIT, newer)
            .await
        {
            Ok(id) => return id,
            Err(_) => tokio::time::sleep(NOT_READY_PAUSE).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::proto::Role;

    fn offer(id: &str, ts: u64, fp: &str) -> Offer {
        Offer {
            role: Role::Server,
            id: id.into(),
            nonce: Offer::new_nonce(),
            ts,
            candidates: vec![],
            host_count: 0,
            relay_count: 0,
            turn: false,
            fp: fp.into(),
            nat: "cone".into(),
            predict: None,
            comb: None,
            client: None,
            refused: None,
        }
    }

    /// Review finding (#16): within one second only a new process's offer is newer, so
    /// a replayed earlier offer of the same process cannot restart us, while a peer
    /// killed and started again within the second still is met at once.
    #[test]
    fn a_later_offer_is_a_later_second_or_a_new_process() {
        let current = offer("b", 100, "fp1");
        assert!(later(&offer("c", 101, "fp1"), &current), "a later second");
        assert!(
            later(&offer("c", 100, "fp2"), &current),
            "a new process, same second"
        );
        assert!(
            !later(&offer("a", 100, "fp1"), &current),
            "same process, same second"
        );
        assert!(
            !later(&offer("a", 99, "fp2"), &current),
            "an earlier second"
        );
    }
}
