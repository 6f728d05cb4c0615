//! The one error type of the engine.

use std::net::SocketAddr;

/// Result alias used throughout `stunfwd-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in stunfwd, by kind. Messages say what was wrong and
/// what would be valid, so they can be shown to a user as they are.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid.
    #[error("invalid config `{key}`: {value}: {problem}; valid: {expected}")]
    Config {
        /// The key (JSON path style, e.g. `mappings[1]` or `performance.stunCache`).
        key: String,
        /// The offending value, as given.
        value: String,
        /// What is wrong with it.
        problem: String,
        /// What would be valid.
        expected: String,
    },
    /// A local address (listener or socket) is already taken.
    #[error("{what}: address {addr} is already in use (port {port}); pick another port or stop the program using it", port = addr.port())]
    AddrInUse {
        /// What we tried to bind.
        what: String,
        /// The address.
        addr: SocketAddr,
    },
    /// Any other I/O failure, with what we were doing.
    #[error("{context}: {message}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error text.
        message: String,
    },
    /// The rendezvous (signaling) server failed or answered nonsense.
    #[error("signaling: {0}")]
    Signal(String),
    /// STUN failed (no server answered, bad response).
    #[error("stun: {0}")]
    Stun(String),
    /// The peer could not be authenticated (offer MAC, certificate fingerprint).
    #[error("peer authentication failed: {0}")]
    PeerAuth(String),
    /// A wait ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A mapping id that does not exist.
    #[error("no such mapping: {0}")]
    NoSuchMapping(u64),
    /// The engine is stopped (or stopping) and cannot do this any more.
    #[error("engine is stopped")]
    Stopped,
    /// A wait was cancelled from another thread (a [`crate::WaitCancel`] token, or
    /// [`crate::Engine::cancel_waits`]) before it ended.
    #[error("the wait was cancelled")]
    Cancelled,
    /// The QUIC tunnel failed.
    #[error("tunnel: {0}")]
    Tunnel(String),
    /// The TURN relay failed (credentials, quota, unreachable).
    #[error("relay: {0}")]
    Relay(String),
    /// No direct path can be punched between these two NAT types, and no relay is
    /// configured.
    #[error("no path: a direct path cannot be punched between our NAT ({local_nat}) and the peer's ({peer_nat}); configure a TURN relay (`relay`) for such networks")]
    NoPath {
        /// Our NAT type.
        local_nat: String,
        /// The peer's NAT type.
        peer_nat: String,
    },
}

impl Error {
    /// Builds a [`Error::Config`].
    pub fn config(
        key: impl Into<String>,
        value: impl Into<String>,
        problem: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Error::Config {
            key: key.into(),
            value: value.into(),
            problem: problem.into(),
            expected: expected.into(),
        }
    }

    /// Wraps an I/O error with context; `AddrInUse` is kept distinct when binding.
    pub fn io(context: impl Into<String>, err: &std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            message: err.to_string(),
        }
    }

    /// Maps a bind error, naming the address when it is in use.
    pub fn bind(what: impl Into<String>, addr: SocketAddr, err: &std::io::Error) -> Self {
        let what = what.into();
        if err.kind() == std::io::ErrorKind::AddrInUse {
            Error::AddrInUse { what, addr }
        } else {
            Error::Io {
                context: format!("{what}: cannot bind {addr}"),
                message: err.to_string(),
            }
        }
    }

    /// A short stable code for the error kind (used by the bindings).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config { .. } => "ERR_CONFIG",
            Error::AddrInUse { .. } => "ERR_ADDR_IN_USE",
            Error::Io { .. } => "ERR_IO",
            Error::Signal(_) => "ERR_SIGNAL",
            Error::Stun(_) => "ERR_STUN",
            Error::PeerAuth(_) => "ERR_PEER_AUTH",
            Error::Timeout(_) => "ERR_TIMEOUT",
            Error::NoSuchMapping(_) => "ERR_NO_SUCH_MAPPING",
            Error::Stopped => "ERR_STOPPED",
            Error::Cancelled => "ERR_CANCELLED",
            Error::Tunnel(_) => "ERR_TUNNEL",
            Error::NoPath { .. } => "ERR_NO_PATH",
            Error::Relay(_) => "ERR_RELAY",
        }
    }
}
