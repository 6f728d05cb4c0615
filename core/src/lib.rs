//! stunfwd engine: two peers meet in a room on a rendezvous server, learn their public
//! addresses with STUN, punch through their NATs and forward TCP and UDP ports through a
//! mutually authenticated QUIC tunnel.
//!
//! The public API is [`Engine`], [`Config`], [`Mapping`] and, with the `server` feature,
//! the rendezvous `SignalServer`; everything runs on a runtime the engine owns. Hosts
//! without an async runtime (the C, Python and Node.js bindings) use the facades of
//! [`blocking`] and forward logs with [`logging`].
//!
//! Features (none by default): `server` adds the rendezvous server with rooms in memory
//! (the C, Python and Node packages enable it for their in-process `SignalServer`);
//! `redis` adds its Redis store (the stunfwd CLI enables it).
//!
//! # Examples
//!
//! Each main type has one that runs as a doc-test, on loopback only: [`Engine`] (a
//! rendezvous server and two peers tunnelling a byte), [`Config`], [`Mapping::parse`],
//! [`Error`] and, with `server`, `SignalServer` and `BlockingSignalServer`.
//! `cargo run -p stunfwd-cli -- demo` runs the same on a larger scale.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod agent;
pub(crate) mod birthday;
pub mod blocking;
pub mod config;
pub mod engine;
pub mod error;
pub mod forward;
pub mod logging;
pub mod metrics;
pub mod portmap;
pub(crate) mod predict;
pub mod punch;
pub mod redact;
pub mod room;
pub mod signal;
pub(crate) mod socket;
pub mod stats;
pub mod status;
pub mod stun;
pub(crate) mod sync;
pub(crate) mod trim;
pub mod tunnel;
pub(crate) mod turn;

#[cfg(feature = "server")]
pub use blocking::BlockingSignalServer;
pub use config::{AllowRule, Config, Mapping, Mode, Performance, Proto};
pub use engine::{Engine, Event, MappingId, MappingInfo, PathKind, State, WaitCancel};
pub use error::{Error, ErrorKind, Result};
#[cfg(feature = "server")]
pub use signal::server::{SignalServer, SignalServerConfig};
pub use stats::{MappingStats, Stats, Timings, Traffic};

/// `tokio::spawn` inside the current tracing span: a task's log lines keep the `room`,
/// `peer` and `mapping` fields of the code that started it (tokio tasks do not inherit
/// spans by themselves).
pub(crate) fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(tracing::Instrument::in_current_span(fut))
}
