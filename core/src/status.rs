//! What the engine reports about itself: its [`State`], the [`PathKind`] of the
//! tunnel and the [`Event`]s delivered to subscribers. Plain data, imported by the
//! engine, the stats and the metrics alike.

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

use crate::config::Mapping;

/// Identifies a mapping within one engine.
pub type MappingId = u64;

/// How the tunnel reaches the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Through both NATs, to a public (server-reflexive or peer-reflexive) address.
    Direct,
    /// To one of the peer's own interface addresses (same LAN or same host).
    Lan,
    /// Through a TURN relay.
    Relay,
}

impl PathKind {
    /// `direct`, `lan` or `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Lan => "lan",
            PathKind::Relay => "relay",
        }
    }
}

/// Which punching technique found the path the tunnel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Technique {
    /// Connectivity checks to the candidates both offers list (interface,
    /// STUN-mapped, peer-reflexive addresses), opened by low-TTL openers.
    Checks,
    /// Birthday punching between a symmetric NAT and a port-restricted one: many
    /// sockets on one side, many probes from the other.
    Birthday,
    /// Port prediction between two symmetric NATs that allocate ports regularly: a
    /// comb of sockets on the server, one aimed check from the client
    /// (`agent::predict`).
    Prediction,
    /// The TURN relay.
    Relay,
}

impl Technique {
    /// `checks`, `birthday`, `prediction` or `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            Technique::Checks => "checks",
            Technique::Birthday => "birthday",
            Technique::Prediction => "prediction",
            Technique::Relay => "relay",
        }
    }
}

/// Where the engine is in its life.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Just started.
    Starting,
    /// Asking STUN servers for our public address.
    Discovering,
    /// Posting our offer and waiting for the peer's.
    Signaling,
    /// Running connectivity checks and the QUIC handshake.
    Punching,
    /// The tunnel is up.
    Connected {
        /// The path in use.
        path: PathKind,
        /// The peer's address on it.
        peer: SocketAddr,
        /// How that path was found.
        technique: Technique,
    },
    /// Not connected; retrying after a failure or after the tunnel was lost.
    Reconnecting {
        /// Consecutive failed attempts (0 right after a tunnel was lost).
        attempt: u32,
        /// Why: what failed last.
        reason: String,
    },
    /// Stopped by [`Engine::stop`](crate::Engine::stop) (or drop).
    Stopped,
    /// Gave up for good.
    Failed {
        /// Why.
        reason: String,
    },
}

impl State {
    /// A short lowercase name (`connected`, `signaling`...).
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Discovering => "discovering",
            State::Signaling => "signaling",
            State::Punching => "punching",
            State::Connected { .. } => "connected",
            State::Reconnecting { .. } => "reconnecting",
            State::Stopped => "stopped",
            State::Failed { .. } => "failed",
        }
    }

    /// True when the tunnel is up.
    pub fn is_connected(&self) -> bool {
        matches!(self, State::Connected { .. })
    }

    /// True when the engine will not connect any more.
    pub fn is_final(&self) -> bool {
        matches!(self, State::Stopped | State::Failed { .. })
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Connected {
                path,
                peer,
                technique,
            } => write!(
                f,
                "connected ({} to {peer}, found by {})",
                path.as_str(),
                technique.as_str()
            ),
            State::Reconnecting { attempt, reason } => {
                write!(f, "reconnecting (attempt {attempt}: {reason})")
            }
            State::Failed { reason } => write!(f, "failed: {reason}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Something that happened, delivered to [`Engine::subscribe`](crate::Engine::subscribe) callbacks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The state changed.
    State {
        /// The new state.
        state: State,
    },
    /// A mapping started listening.
    MappingAdded {
        /// Its id.
        id: MappingId,
        /// Canonical spec.
        spec: String,
        /// The address it listens on.
        listen: SocketAddr,
    },
    /// A mapping was removed; its listener and connections are closed.
    MappingRemoved {
        /// Its id.
        id: MappingId,
    },
    /// A peer offer was rejected (bad MAC, stale, replayed, wrong role, malformed);
    /// reported at most once per 5 s.
    PeerRejected {
        /// Why.
        reason: String,
    },
    /// Something the user should know that is not a failure: an engine running without
    /// a `secret` says so once, at start.
    Warning {
        /// What, and what to do about it.
        message: String,
    },
    /// Server side: one client's tunnel changed state (issue #18). `State` events
    /// describe the engine as a whole: connected while any client is.
    ClientState {
        /// The client's id (32 hex characters).
        client: String,
        /// Its new state.
        state: State,
    },
}

/// A mapping as registered in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingInfo {
    /// Its id.
    pub id: MappingId,
    /// The mapping.
    pub mapping: Mapping,
    /// The address actually bound (port 0 resolved).
    pub listen: SocketAddr,
}
