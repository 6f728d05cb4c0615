//! Node.js bindings for stunfwd: a thin Node-API bridge over `stunfwd-core`.
//!
//! Everything here translates types, errors, promises and events between JavaScript
//! and the core; all behaviour lives in `stunfwd-core`. The TypeScript declarations
//! (`index.d.ts`) are generated from the doc comments in this crate by `napi build`.
//!
//! Threading: JavaScript calls arrive on the Node main thread. Anything that can wait
//! (`waitConnected`, `stop`, `SignalServer.start`/`stop`) runs on a helper thread and
//! settles a Promise; engine events are queued to the main thread through one
//! threadsafe function per engine, which is released when the engine stops so that a
//! stopped engine never keeps the process alive. Log records reach `setLogger`'s
//! function the same way, through a weak threadsafe function.

use napi_derive::napi;

mod abort;
mod args;
pub mod engine;
pub mod error;
pub mod log;
mod settle;
pub mod signal;
pub mod types;

/// The version of stunfwd this addon was built from, e.g. `'0.1.0'`: the Rust
/// workspace's version, which the `stunfwd` npm package and its per-platform
/// packages (`stunfwd-linux-x64-gnu`, ...) carry too.
#[napi]
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
