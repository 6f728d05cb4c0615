//! Our TURN allocation as a connect attempt sees it: [`crate::turn::allocation`]
//! makes, refreshes and releases it; this maps its errors to the attempt's outcome.

use std::sync::Arc;

use super::attempt::Attempt;
use super::shared::Shared;
use crate::turn::client::TurnClient;
use crate::turn::AllocError;

/// Our TURN allocation, made on first need and kept (refreshed) for the engine's life.
pub(crate) async fn ensure_relay(
    shared: &Arc<Shared>,
) -> std::result::Result<Arc<TurnClient>, Attempt> {
    shared.turn.ensure().await.map_err(|e| match e {
        // Wrong credentials will not fix themselves; everything else may.
        AllocError::Rejected(e) => Attempt::Fatal(e),
        other => Attempt::Retry(other.to_string()),
    })
}
