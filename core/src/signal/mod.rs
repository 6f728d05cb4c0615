//! Signaling: how two peers meet in a *room* on a rendezvous server.
//!
//! Each peer posts an authenticated [`Offer`] (its candidates and certificate
//! fingerprint, MACed with the [`RoomKey`]) to its role's mailbox and waits for the
//! other role's. [`proto`] holds the pure wire types, [`request`] the pure parsing of
//! mailbox requests, [`client`] the HTTP client that long-polls (or backs off against a
//! plain mailbox), and `server` (feature `server`) the rendezvous server itself, which
//! keeps its rooms in memory or (feature `redis`) in Redis. The wire protocol is
//! described in `docs/protocol.md`.

pub mod client;
pub mod proto;
pub mod request;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;

pub use client::{SignalClient, WAKE_GAP};
pub use proto::{unix_now, Offer, OfferError, OfferGuard, Role, RoomKey, OFFER_WINDOW};
#[cfg(feature = "server")]
pub use server::{SignalServer, SignalServerConfig, StoreConfig, TlsFiles};
