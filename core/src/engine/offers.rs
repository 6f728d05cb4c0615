//! Reading the peer's offers from the room: only authentic, fresh ones, and only those
//! the caller waits for.

use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use crate::error::Result;
use crate::signal::proto::{unix_now, Offer, OfferError};
use crate::sync::lock;

/// Waits for an authentic, fresh peer offer that `want` accepts. Rejected offers are
/// counted and reported (rate-limited) and the wait goes on; reading again the offer
/// accepted last is not a rejection.
pub(crate) async fn wait_for_offer(
    shared: &Arc<Shared>,
    timeout: Duration,
    want: impl Fn(&Offer) -> bool,
) -> Result<Offer> {
    let expected = shared.role.peer();
    shared
        .signal
        .wait_for(expected, timeout, |data| {
            let offer = match Offer::decode(data, &shared.key, &shared.config.room) {
                Ok(o) => o,
                Err(e) => {
                    shared.offer_rejected(&e);
                    return None;
                }
            };
            // Each client's mailbox holds offers made for that client only.
            if offer.client != shared.client {
                shared.offer_rejected(&OfferError::WrongClient {
                    got: offer
                        .client
                        .map_or_else(|| "no client".into(), |c| format!("client {c}")),
                    expected: shared.client.clone().unwrap_or_default(),
                });
                return None;
            }
            let mut guard = lock(&shared.offer_guard);
            if guard.is_latest(&offer.nonce) {
                return None;
            }
            match guard.check(&offer, expected, unix_now()) {
                Ok(()) => want(&offer).then_some(offer),
                Err(e) => {
                    drop(guard);
                    shared.offer_rejected(&e);
                    None
                }
            }
        })
        .await
}
