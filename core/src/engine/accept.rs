//! The server's incoming QUIC handshakes, held for the peer's offer when they come
//! before it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::shared::{Shared, CHECK_SOURCE_TTL};
use crate::sync::lock;

/// (the client punched and dialled before our poll of the mailbox came round).
pub(crate) const HOLD_FOR_OFFER: Duration = Duration::from_secs(5);

/// Most handshakes held at once for [`HOLD_FOR_OFFER`]; further ones are not held (and
/// fail in the verifier, as anything that is not the peer does), so a flood of QUIC
/// Initials holds a bounded set of buffers and causes no more mailbox reads than one
/// per [`crate::signal::WAKE_GAP`].
pub(crate) const MAX_HELD: usize = 8;

/// Server role: completes incoming QUIC handshakes (the pinned verifier rejects
/// everyone but the peer) and hands the connections to the driver.
///
/// A handshake that arrives before we have read the peer's offer in this attempt (its
/// poll of a mailbox without long-poll may be seconds away) is held, not refused: the
/// mailbox is read at once ([`SignalClient::wake`]) and the handshake goes on when the
/// offer is pinned, or after [`HOLD_FOR_OFFER`]. quinn buffers the client's
/// retransmitted Initials meanwhile.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    tx: mpsc::Sender<quinn::Connection>,
    token: CancellationToken,
) {
    let held = Arc::new(AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            _ = token.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let (tx, shared, held, token) = (tx.clone(), shared.clone(), held.clone(), token.clone());
        crate::spawn(async move {
            if shared.pinned.get().is_none() {
                let from = crate::socket::canonical(incoming.remote_address());
                // A handshake from where authentic checks came is the peer's: always
                // held. Others share MAX_HELD places, so a flood cannot crowd it out.
                let known = lock(&shared.check_sources)
                    .get(&from)
                    .is_some_and(|at| at.elapsed() < CHECK_SOURCE_TTL);
                if known || held.fetch_add(1, Ordering::Relaxed) < MAX_HELD {
                    tracing::debug!(%from, "handshake before the peer's offer; reading the mailbox now");
                    shared.signal.wake();
                    let pinned = tokio::select! {
                        _ = token.cancelled() => false,
                        p = shared.pinned.wait_pinned(HOLD_FOR_OFFER) => p,
                    };
                    if !pinned {
                        tracing::info!(%from, "no peer offer arrived for a held handshake");
                    }
                }
                if !known {
                    held.fetch_sub(1, Ordering::Relaxed);
                }
                if token.is_cancelled() {
                    return;
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), incoming).await {
                Ok(Ok(conn)) => {
                    let _ = tx.send(conn).await;
                }
                Ok(Err(e)) => tracing::info!(error = %e, "incoming tunnel handshake failed"),
                Err(_) => tracing::info!("incoming tunnel handshake timed out"),
            }
        });
    }
}
