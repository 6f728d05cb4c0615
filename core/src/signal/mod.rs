//! Signaling: how two peers meet in a *room* on a rendezvous server.
//!
//! Each peer posts an authenticated [`Offer`] (its candidates and certificate
//! fingerprint, MACed with the [`RoomKey`]) to its role's mailbox and waits for the
//! other role's. [`proto`] holds the pure wire types, [`client`] the HTTP client that
//! long-polls (or backs off against a plain mailbox), and [`server`] the rendezvous
//! server itself. The wire protocol is described in `docs/protocol.md`.

pub mod client;
pub mod proto;
pub mod server;

pub use client::SignalClient;
pub use proto::{Offer, OfferError, Role, RoomKey};
pub use server::{SignalServer, SignalServerConfig};
