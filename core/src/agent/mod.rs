//! The connection agent: how two peers get connected, as plain data and functions of
//! `(state, input, now)` that return what to do. Nothing here does I/O, takes a lock
//! or sleeps, so every decision is unit-tested with a simulated clock
//! (`agent/tests.rs`); the engine's driver (`crate::engine::driver`,
//! `crate::engine::attempt`, `crate::punch`) feeds it socket events and timers and
//! carries out its decisions.
//!
//! - [`birthday`]: birthday punching between an easy and a hard (symmetric) NAT;
//! - [`checklist`]: scheduling connectivity checks and their retransmissions,
//!   nominating a pair, giving up;
//! - [`path`]: gathering our candidates, choosing the path from both offers, when the
//!   relay is used, which kind of path a selected address is;
//! - [`schedule`]: the reconnect back-off, the relay-to-direct upgrade probes, the
//!   relay allocation's refresh, and how punching opens after failures.

pub mod birthday;
pub mod checklist;
pub mod path;
pub mod predict;
pub mod schedule;
#[cfg(test)]
mod tests;

pub use checklist::{usable_candidates, Checklist, ChecklistConfig, Opener, Selected, Transmit};
pub use path::{PathPlan, RelayPlan};
pub use schedule::{Backoff, UpgradeSchedule};
