//! A client's knock (issue #18): its offer, posted in the room's own mailbox until the
//! server answers in the client's mailbox. Several clients knocking at once overwrite
//! each other's knocks; each knocks again after a jittered pause, so every one gets
//! read within a few rounds.

use std::future::Future;
use std::time::Duration;

use super::shared::Shared;
use crate::signal::proto::Role;

/// The pause before the first knock is repeated.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between knocks.
const MAX_PAUSE: Duration = Duration::from_secs(8);

/// Runs `wait` while knocking with `offer` (encoded) in the room's mailbox, from now
/// on and again after each pause (doubling from [`FIRST_PAUSE`] to [`MAX_PAUSE`],
/// ±50 %), and returns what `wait` returns. Without a room mailbox (the server side)
/// it only waits.
pub(crate) async fn knocking<T>(shared: &Shared, offer: &str, wait: impl Future<Output = T>) -> T {
    let Some(lobby) = &shared.lobby else {
        return wait.await;
    };
    let knocks = async {
        let mut pause = FIRST_PAUSE;
        loop {
            if let Err(e) = lobby.post(Role::Client, offer).await {
                tracing::debug!(error = %e, "knock not posted; trying again");
            }
            let jitter = 0.5 + rand::random::<f64>();
            tokio::time::sleep(pause.mul_f64(jitter)).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    };
    tokio::select! {
        r = wait => r,
        never = knocks => never,
    }
}
