//! The connect/reconnect loop (DESIGN §4): runs attempts, serves each tunnel, waits
//! between failures.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::Instrument;

use super::attempt::{connect_once, Attempt};
use super::session::run_connected;
use super::shared::{Incoming, Shared};
use super::watch::{peer_moved_on, peer_replaced};
use crate::agent::schedule::{self, Backoff};
use crate::error::Error;
use crate::signal::proto::Role;
use crate::status::State;
use crate::sync::lock;

/// The connect/reconnect loop (DESIGN §4).
pub(crate) async fn drive(shared: Arc<Shared>, mut incoming: Incoming) {
    let token = shared.root.clone();
    let mut backoff = Backoff::new(shared.config.performance.max_retries);
    let mut connected_before = false;
    let mut fresh_id = true;
    loop {
        if fresh_id {
            // A new attempt, a new offer id. Whatever showed the peer starting over
            // before it concerned the last attempt's id.
            shared.new_attempt_id();
            *lock(&shared.new_peer_id) = None;
        }
        let attempt = tokio::select! {
            _ = token.cancelled() => return,
            r = connect_once(&shared, &mut incoming) => r,
            id = peer_moved_on(&shared) => {
                tracing::info!(peer_offer = %id, "the peer started over; so do we");
                backoff.reset();
                // Its checks were addressed to our current offer id: it already knows
                // our offer. Starting over under the same id lets it go on; a new id
                // would look to it like we started over, and both would start over
                // in turn for ever.
                fresh_id = false;
                continue;
            }
        };
        fresh_id = true;
        // A failed certificate check is retried like any failure; `wait_connected`
        // reports it as a peer authentication failure.
        let auth_failed = matches!(attempt, Err(Attempt::AuthFailed(_)));
        shared.auth_failed.store(auth_failed, Ordering::Relaxed);
        // Once connected, a pair that looks hopeless now (a NAT that changed its
        // behaviour, or was measured while it rebooted) has been punchable before:
        // keep trying on the back-off instead of giving up for good.
        let attempt = match attempt {
            Err(Attempt::Fatal(e @ Error::NoPath { .. })) if connected_before => {
                Err(Attempt::Retry(e.to_string()))
            }
            other => other,
        };
        match attempt {
            Ok(Some((conn, path))) => {
                backoff.reset();
                if connected_before {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_before = true;
                // Every task of this tunnel logs with the peer's address and the path.
                let span = tracing::info_span!(
                    "tunnel",
                    peer = %crate::socket::peer_addr(&conn),
                    path = path.as_str(),
                );
                let mut restarted = false;
                let reason = tokio::select! {
                    _ = token.cancelled() => return,
                    r = run_connected(&shared, conn, path, &mut incoming).instrument(span) => r,
                    id = peer_replaced(&shared) => {
                        // Our tunnel goes to what the peer left behind (it restarted):
                        // drop it now instead of after the idle timeout.
                        if let Some(c) = shared.conn_tx.send_replace(None) {
                            c.close(0u32.into(), b"peer started over");
                        }
                        restarted = true;
                        format!("the peer started over (new offer {id})")
                    }
                };
                if shared.role == Role::Server {
                    // A handshake of the peer's next incarnation is held for its offer,
                    // not refused against the old certificate.
                    shared.pinned.set(None);
                }
                if token.is_cancelled() {
                    return;
                }
                tracing::info!(%reason, "tunnel lost; reconnecting");
                shared.fail_reason(reason.clone());
                shared.set_state(State::Reconnecting { attempt: 0, reason });
                if restarted {
                    // The restarted peer is punching toward our offer already: meet it
                    // at once, under the same offer id (its checks name that id).
                    fresh_id = false;
                    continue;
                }
                // Our public address may have changed with whatever broke the tunnel
                // (a NAT reboot): the next attempt asks STUN again.
                *lock(&shared.discovery) = None;
                // Give the peer a moment to notice too, then start over at once.
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(schedule::AFTER_TUNNEL_LOST) => {}
                }
            }
            // Waiting for the peer's offer timed out: nothing failed, just ask again.
            Ok(None) => {}
            Err(Attempt::Fatal(e)) => {
                let reason = e.to_string();
                tracing::warn!(%reason, "giving up");
                shared.fail_reason(reason.clone());
                *lock(&shared.failure) = Some(e);
                shared.set_state(State::Failed { reason });
                return;
            }
            Err(Attempt::Retry(reason) | Attempt::AuthFailed(reason)) => {
                let delay = backoff.failed();
                tracing::info!(attempt = backoff.failures(), %reason, "connect attempt failed");
                shared.fail_reason(reason.clone());
                shared.set_state(State::Reconnecting {
                    attempt: backoff.failures(),
                    reason,
                });
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                    id = peer_moved_on(&shared) => {
                        tracing::info!(peer_offer = %id, "the peer started over; retrying now");
                        backoff.reset();
                    }
                }
            }
        }
    }
}
