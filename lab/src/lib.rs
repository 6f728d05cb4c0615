//! The NAT lab: real Linux NATs in network namespaces (built with `patchbay`: netns,
//! veth, nftables, tc, plus raw nftables rules for the NATs patchbay cannot express),
//! a routed "internet" with our rendezvous server and coturn, and stunfwd engines on
//! devices behind the NATs.
//!
//! - [`World`]: the internet (an IX, the servers, coturn from the README's command)
//!   and [`World::add_site`] for a site from a [`SiteSpec`] (NAT kind, devices,
//!   hairpinning, a short UDP timeout, double NAT behind a CGNAT);
//! - [`NatKind`]: the NAT behaviours, including a plain Linux masquerade router and
//!   sequential and port-preserving symmetric NATs;
//! - [`StunSetup`]: coturn's two addresses (RFC 5780) or one plain STUN server;
//! - [`coturn`]: the README's coturn command, which the lab starts;
//! - [`turn::TurnClient`]: a small TURN client for tests of what coturn relays;
//! - [`net`]: helpers that run inside namespaces (echo, STUN probes, conntrack).
//!
//! Every address used lives inside namespaces the lab creates; dropping a [`World`]
//! tears all of it down (namespaces, nftables rules, the coturn process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod coturn;
pub mod miniupnpd;
pub mod nat;
pub mod net;
pub mod turn;
pub mod world;

use anyhow::Result;
use patchbay::Device;
use stunfwd_core::{Config, Engine};

pub use nat::NatKind;
pub use net::*;
pub use world::{Site, SiteSpec, StunSetup, World, WorldOptions};

/// The long-term TURN user of the README's coturn command.
pub const TURN_USER: &str = "stunfwd";
/// The password the lab puts in place of the README's `CHANGE-ME`.
pub const TURN_PASSWORD: &str = "lab-secret";
/// The TURN realm of the README's coturn command.
pub const TURN_REALM: &str = "stunfwd";

/// Why the lab cannot run here, if it cannot (then tests print it and skip).
pub fn unavailable() -> Option<String> {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if euid != "0" {
        return Some("the NAT lab needs root (network namespaces, nftables)".into());
    }
    for tool in ["nft", "tc", "ip", "turnserver", "conntrack"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "`{tool}` is not installed (Debian packages: nftables iproute2 coturn conntrack)"
            ));
        }
    }
    if std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        return Some("`ip netns` does not work on this machine".into());
    }
    None
}

/// Runs a lab test body on a fresh two-worker runtime, or prints why the lab is
/// skipped here.
pub fn run(body: impl std::future::Future<Output = Result<()>>) {
    if skip() {
        return;
    }
    // `STUNFWD_LAB_LOG=debug` (a level) prints the engines' logs.
    if let Ok(level) = std::env::var("STUNFWD_LAB_LOG") {
        let level = level.parse().unwrap_or(tracing::Level::DEBUG);
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_test_writer()
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(body) {
        panic!("{e:#}");
    }
}

/// Prints why the lab is skipped and returns true when it is.
pub fn skip() -> bool {
    match unavailable() {
        Some(why) => {
            println!("SKIPPED: NAT lab not run: {why}");
            true
        }
        None => false,
    }
}

/// Starts an engine inside `dev`'s network namespace (its runtime threads, sockets and
/// everything they later create stay there).
pub fn start_engine(dev: &Device, config: Config) -> Result<Engine> {
    dev.run_sync(move || Ok(Engine::start(config)?))
}

/// The path of the `stunfwd` binary of this build (for CLI tests).
pub fn stunfwd_bin() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/stunfwd")
}
