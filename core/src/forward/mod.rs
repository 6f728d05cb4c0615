//! The data plane: client-side listeners and server-side dialers for TCP and UDP
//! (DESIGN §7). Framing lives in [`proto`].

pub mod proto;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{AllowRule, Performance, Proto};
use crate::stats::Counters;
use proto::{split_target, Status};

/// QUIC application error code used when a forwarded connection is reset.
pub(crate) const RESET_CODE: u32 = 1;

/// What the data plane needs from the engine.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The current tunnel, `None` while disconnected.
    pub conn: watch::Receiver<Option<quinn::Connection>>,
    /// Buffer sizes and timeouts.
    pub perf: Performance,
    /// Engine-wide counters.
    pub totals: Arc<Counters>,
    /// Server role: what may be dialled.
    pub allow: Vec<AllowRule>,
    /// Live UDP flows by id (both roles).
    pub flows: udp::FlowTable,
    /// Next client flow id.
    pub next_flow: AtomicU64,
}

impl Ctx {
    pub fn new(
        conn: watch::Receiver<Option<quinn::Connection>>,
        perf: Performance,
        totals: Arc<Counters>,
        allow: Vec<AllowRule>,
    ) -> Arc<Self> {
        Arc::new(Ctx {
            conn,
            perf,
            totals,
            allow,
            flows: Arc::new(Mutex::new(HashMap::new())),
            next_flow: AtomicU64::new(1),
        })
    }

    /// The tunnel, waiting up to `timeout` for it to come up.
    pub async fn connection(&self, timeout: Duration) -> Option<quinn::Connection> {
        let mut rx = self.conn.clone();
        let wait = async move {
            rx.wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()))
                .await
                .ok()
                .and_then(|c| c.clone())
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }
}

/// Server role: resolves `target` and checks it against the allow rules.
pub(crate) async fn resolve_allowed(
    allow: &[AllowRule],
    proto: Proto,
    target: &str,
) -> Result<SocketAddr, Status> {
    let (host, port) = split_target(target).ok_or(Status::BadHeader)?;
    let lookup = tokio::net::lookup_host((host, port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(Duration::from_secs(5), lookup).await {
        Ok(Ok(a)) => a.collect(),
        _ => return Err(Status::ConnectFailed),
    };
    addrs
        .into_iter()
        .find(|a| allow.iter().any(|r| r.permits(proto, host, a.ip(), port)))
        .ok_or(Status::NotAllowed)
}
