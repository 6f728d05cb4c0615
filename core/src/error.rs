//! The one error type of the engine.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// An error and its sources, `: `-separated (reqwest's Display omits the cause: refused,
/// timed out...).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Result alias used throughout `stunfwd-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in stunfwd, by kind. Messages say what was wrong and
/// what would be valid, so they can be shown to a user as they are.
///
/// Match on the variant for its details, or on [`Error::kind`] (and [`Error::code`],
/// the code every binding uses) for what kind of failure it is.
///
/// # Example
///
/// ```
/// use std::net::TcpListener;
/// use stunfwd_core::{Config, Engine, Error, ErrorKind};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A bad value: the error names the key.
/// let err = Config::from_json(r#"{"mode": "client", "room": "r", "signalUrl": "ftp://x"}"#)
///     .unwrap_err();
/// let Error::Config { key, .. } = &err else {
///     panic!("not a config error: {err}");
/// };
/// assert_eq!(key, "signalUrl");
/// assert_eq!(err.code(), "ERR_CONFIG");
///
/// // A mapping's port in use: the engine does not start, and names the port.
/// let busy = TcpListener::bind("127.0.0.1:0")?;
/// let port = busy.local_addr()?.port();
/// let config = Config::from_value(serde_json::json!({
///     "mode": "client",
///     "room": "r",
///     "signalUrl": "http://127.0.0.1:9/",
///     "bind": "127.0.0.1:0",
///     "mappings": [format!("tcp:{port}:22")],
/// }))?;
/// let err = Engine::start(config).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::AddrInUse);
/// assert!(err.to_string().contains(&format!("port {port}")), "{err}");
/// # Ok(())
/// # }
/// ```
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
    /// Any other I/O failure, with what we were doing. The OS error is its
    /// [`source`](std::error::Error::source) (match on [`IoError::kind`]).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: IoError,
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
            source: IoError::copy_of(err),
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
                source: IoError::copy_of(err),
            }
        }
    }

    /// What kind of error this is: the one thing callers (and the bindings) match on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::Config,
            Error::AddrInUse { .. } => ErrorKind::AddrInUse,
            Error::Io { .. } => ErrorKind::Io,
            Error::Signal(_) => ErrorKind::Signal,
            Error::Stun(_) => ErrorKind::Stun,
            Error::PeerAuth(_) => ErrorKind::PeerAuth,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::NoSuchMapping(_) => ErrorKind::NoSuchMapping,
            Error::Stopped => ErrorKind::Stopped,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Tunnel(_) => ErrorKind::Tunnel,
            Error::NoPath { .. } => ErrorKind::NoPath,
            Error::Relay(_) => ErrorKind::Relay,
        }
    }

    /// A short stable code for the error kind (used by the bindings).
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }
}

/// The kinds of [`Error`], without their details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::Config`].
    Config,
    /// [`Error::AddrInUse`].
    AddrInUse,
    /// [`Error::Io`].
    Io,
    /// [`Error::Signal`].
    Signal,
    /// [`Error::Stun`].
    Stun,
    /// [`Error::PeerAuth`].
    PeerAuth,
    /// [`Error::Timeout`].
    Timeout,
    /// [`Error::NoSuchMapping`].
    NoSuchMapping,
    /// [`Error::Stopped`].
    Stopped,
    /// [`Error::Cancelled`].
    Cancelled,
    /// [`Error::Tunnel`].
    Tunnel,
    /// [`Error::NoPath`].
    NoPath,
    /// [`Error::Relay`].
    Relay,
}

impl ErrorKind {
    /// A short stable code (`ERR_CONFIG`, `ERR_TIMEOUT`...), the same in every binding.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Config => "ERR_CONFIG",
            ErrorKind::AddrInUse => "ERR_ADDR_IN_USE",
            ErrorKind::Io => "ERR_IO",
            ErrorKind::Signal => "ERR_SIGNAL",
            ErrorKind::Stun => "ERR_STUN",
            ErrorKind::PeerAuth => "ERR_PEER_AUTH",
            ErrorKind::Timeout => "ERR_TIMEOUT",
            ErrorKind::NoSuchMapping => "ERR_NO_SUCH_MAPPING",
            ErrorKind::Stopped => "ERR_STOPPED",
            ErrorKind::Cancelled => "ERR_CANCELLED",
            ErrorKind::Tunnel => "ERR_TUNNEL",
            ErrorKind::NoPath => "ERR_NO_PATH",
            ErrorKind::Relay => "ERR_RELAY",
        }
    }
}

/// The OS error inside an [`Error::Io`]: shared (so `Error` stays `Clone`), compared
/// by kind and text.
#[derive(Debug, Clone)]
pub struct IoError(Arc<std::io::Error>);

impl IoError {
    /// Keeps `err`'s OS error code (or, without one, its kind and text).
    fn copy_of(err: &std::io::Error) -> Self {
        let copy = match err.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(err.kind(), err.to_string()),
        };
        IoError(Arc::new(copy))
    }

    /// The I/O error kind (`PermissionDenied`, `AddrNotAvailable`...).
    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }

    /// The OS error code, when there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.0.raw_os_error()
    }
}

impl From<std::io::Error> for IoError {
    fn from(err: std::io::Error) -> Self {
        IoError(Arc::new(err))
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl PartialEq for IoError {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for IoError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn io_errors_keep_their_source_and_kind() {
        let os = std::io::Error::from_raw_os_error(libc_eacces());
        let e = Error::io("reading the config", &os);
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.code(), "ERR_IO");
        let Error::Io { source, .. } = &e else {
            panic!("an Io error: {e:?}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
        let inner = e.source().expect("a source");
        assert_eq!(inner.to_string(), os.to_string());
        assert!(e.to_string().starts_with("reading the config: "), "{e}");
        assert_eq!(e.clone(), e, "clone compares equal");
        let busy = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(Error::bind("x", addr, &busy).kind(), ErrorKind::AddrInUse);
    }

    fn libc_eacces() -> i32 {
        13
    }
}
