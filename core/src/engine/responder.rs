//! Everything that arrives as STUN on the tunnel socket: the peer's connectivity
//! checks (answered when authentic), responses to our own transactions, and data our
//! TURN server relays to us in Data indications.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::shared::{Shared, CHECK_SOURCE_TTL, MAX_CHECK_SOURCES};
use crate::socket::StunDatagram;
use crate::status::State;
use crate::stun::client::Response;
use crate::stun::message::{self, Parsed};
use crate::sync::lock;

/// Routes STUN datagrams: answers authentic checks, hands responses to transactions,
/// unwraps data relayed by our TURN server.
pub(crate) async fn stun_dispatch(shared: Arc<Shared>, mut rx: mpsc::Receiver<StunDatagram>) {
    let token = shared.root.clone();
    loop {
        let d = tokio::select! {
            _ = token.cancelled() => return,
            d = rx.recv() => match d { Some(d) => d, None => return },
        };
        let socket = shared.agent.socket().clone();
        if Some(d.from) == socket.relay_server() && d.data.get(..2) == Some(&[0x00, 0x17]) {
            // A Data indication: a peer's packet relayed to us.
            let Some((peer, data)) = crate::relay::parse_data_indication(&d.data) else {
                continue;
            };
            // A TURN server relays only from peers we gave a permission; anything else
            // "from" the server is forged and must not add routes or channels.
            let permitted = lock(&shared.turn)
                .as_ref()
                .is_some_and(|t| t.is_permitted(peer.ip()));
            if !permitted {
                tracing::debug!(%peer, "data indication for a peer without a permission dropped");
                continue;
            }
            if socket.route_via_relay(peer) {
                bind_channel_later(&shared, peer);
            }
            if data
                .first()
                .is_some_and(|b| message::is_stun_first_byte(*b))
            {
                handle_stun(
                    &shared,
                    StunDatagram {
                        from: peer,
                        data,
                        relayed: true,
                    },
                )
                .await;
            } else {
                socket.inject(peer, data);
            }
            continue;
        }
        handle_stun(&shared, d).await;
    }
}

/// Binds a TURN channel for `peer` in the background (cheaper framing than Send
/// indications from then on).
pub(crate) fn bind_channel_later(shared: &Arc<Shared>, peer: SocketAddr) {
    let Some(turn) = lock(&shared.turn).clone() else {
        return;
    };
    let socket = shared.agent.socket().clone();
    crate::spawn(async move {
        match turn.bind_channel(peer).await {
            Ok(ch) => socket.set_channel(peer, ch),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "channel bind failed; using Send indications")
            }
        }
    });
}

pub(crate) async fn handle_stun(shared: &Arc<Shared>, d: StunDatagram) {
    match message::parse(&d.data) {
        Some(Parsed::Request {
            tid,
            username: Some(username),
            has_integrity: true,
        }) => {
            let (to, from_id) = username.split_once(':').unwrap_or(("", ""));
            let ours = {
                let ids = lock(&shared.our_ids);
                to == ids.0 || (!ids.1.is_empty() && to == ids.1)
            };
            if !ours || !message::verify_integrity(&d.data, &shared.password) {
                shared
                    .checks_unauthenticated
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            if !d.relayed {
                // Authentic and straight from the peer: the direct path works, so its
                // direct QUIC packets may move it off the relay (socket.rs).
                shared.agent.socket().direct_path_proven(d.from);
            }
            let reply = message::binding_success(tid, d.from, Some(&shared.password));
            // Answer on the path the check came in on: a direct check probes the
            // direct path even while the tunnel is relayed.
            let socket = shared.agent.socket();
            let _ = if d.relayed {
                socket.send_to(&reply, d.from).await
            } else {
                socket.send_direct(&reply, d.from).await
            };
            {
                let mut sources = lock(&shared.check_sources);
                if sources.len() >= MAX_CHECK_SOURCES {
                    sources.retain(|_, at| at.elapsed() < CHECK_SOURCE_TTL);
                }
                if sources.len() < MAX_CHECK_SOURCES {
                    sources.insert(d.from, Instant::now());
                }
            }
            // Addressed to this attempt's offer, from an offer id other than the one we
            // use: the peer started over. Start over too, at once, rather than punch or
            // keep a tunnel toward what is gone.
            let current = lock(&shared.peer).offer_id.clone();
            if current.as_deref().is_some_and(|c| c != from_id) && to == shared.our_id() {
                *lock(&shared.new_peer_id) = Some(from_id.to_owned());
                shared.new_peer.notify_one();
                shared.signal.wake();
            }
            let prflx = lock(&shared.prflx).clone();
            let waiting = matches!(shared.state(), State::Discovering | State::Signaling);
            match prflx {
                Some((peer_id, tx)) if peer_id == from_id && !waiting => {
                    let _ = tx.try_send(d.from);
                }
                // An authentic check while we have not read the peer's offer of this
                // attempt: it has posted one, so read the mailbox now rather than at
                // the next poll (bounded by `WAKE_GAP`).
                _ if waiting || !shared.state().is_connected() => shared.signal.wake(),
                _ => {}
            }
        }
        Some(Parsed::Request { .. }) => {
            shared
                .checks_unauthenticated
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(Parsed::Success {
            tid, mapped, other, ..
        }) => {
            shared.agent.on_response(Response {
                tid,
                from: d.from,
                mapped,
                other,
                success: true,
                raw: d.data,
            });
        }
        Some(Parsed::ErrorResponse { tid }) => {
            shared.agent.on_response(Response {
                tid,
                from: d.from,
                mapped: None,
                other: None,
                success: false,
                raw: d.data,
            });
        }
        Some(Parsed::OtherResponse { tid, success }) => {
            shared.agent.on_response(Response {
                tid,
                from: d.from,
                mapped: None,
                other: None,
                success,
                raw: d.data,
            });
        }
        _ => {}
    }
}
