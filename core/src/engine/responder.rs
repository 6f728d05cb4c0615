//! Everything that arrives as STUN on the tunnel socket: the peer's connectivity
//! checks (answered when authentic) and responses to our own transactions. Data our
//! TURN server relays to us is unwrapped before, in the socket layer (`socket.rs`).

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

/// Routes STUN datagrams: answers authentic checks, hands responses to transactions.
pub(crate) async fn stun_dispatch(shared: Arc<Shared>, mut rx: mpsc::Receiver<StunDatagram>) {
    let token = shared.root.clone();
    loop {
        let d = tokio::select! {
            _ = token.cancelled() => return,
            d = rx.recv() => match d { Some(d) => d, None => return },
        };
        handle_stun(&shared, d).await;
    }
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
            // keep a tunnel toward what is gone. Not for an offer id we moved on from:
            // that check is old or replayed (we keep our id when we start over, so a
            // recorded check would otherwise make us start over again and again).
            let started_over = {
                let peer = lock(&shared.peer);
                peer.offer_id().is_some_and(|c| c != from_id) && !peer.left_behind(from_id)
            };
            if started_over && to == shared.our_id() {
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
