//! TURN (RFC 8656) on the engine's shared socket, in three layers:
//! - [`wire`]: the framing of relayed data (Send/Data indications, ChannelData), pure
//!   functions that the socket layer uses to wrap and unwrap packets;
//! - [`client`]: [`TurnClient`](client::TurnClient), one allocation with long-term or
//!   REST-API credentials, its permissions, channel bindings and refreshes;
//! - [`allocation`]: [`RelayAllocation`](allocation::RelayAllocation), the engine's
//!   allocation, made on first need, refreshed for the engine's life, released at stop;
//! - [`target`]: which server to use and how to authenticate, from the config.
//!
//! The relay only ever carries QUIC packets and connectivity checks; the tunnel stays
//! end-to-end encrypted between the peers.

pub(crate) mod allocation;
pub(crate) mod client;
pub(crate) mod target;
pub(crate) mod wire;

use crate::error::Error;

/// Why our TURN allocation could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AllocError {
    /// There is no `relay` in the config.
    #[error("no relay configured")]
    NotConfigured,
    /// The relay's host (the `HOST:PORT` shown) has no address of the tunnel
    /// socket's family.
    #[error("cannot resolve the TURN server {0}")]
    Unresolved(String),
    /// The server rejected our credentials: trying again will not help.
    #[error(transparent)]
    Rejected(Error),
    /// Anything else (no answer, quota, a refusal by policy): a later attempt may
    /// succeed.
    #[error(transparent)]
    Failed(Error),
}
