//! The data plane: client-side listeners and server-side dialers for TCP and UDP
//! (DESIGN §7). Framing lives in [`proto`].

pub(crate) mod dispatch;
pub(crate) mod flows;
pub(crate) mod local;
pub mod proto;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{AllowRule, Performance, Proto};
use crate::stats::Counters;
use proto::{split_target, Status};

/// How long the peer may take to answer a stream header with its status byte (it
/// dials the target first, for up to 10 s).
const STATUS_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a tunnel that has just been given a stream header may stay silent before
/// it counts as dead (once the connection's deadline has passed).
const SILENCE_GRACE: Duration = Duration::from_secs(2);

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
    pub flows: flows::FlowTable,
    /// Next client flow id.
    pub next_flow: AtomicU64,
    /// Server role: flows refused by `maxUdpFlowsPerClient`, for a bounded log.
    pub flow_refusals: Mutex<flows::Refusals>,
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
            flow_refusals: Mutex::new(flows::Refusals::default()),
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

/// Why [`open_stream`] did not get the peer's answer.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// No tunnel came up before the deadline (`performance.tunnelWait`).
    NoTunnel,
    /// The stream failed on a tunnel that is still up, or the peer did not answer.
    Failed(String),
}

/// Client role: opens a stream through the tunnel, sends a header made by `header`
/// (called once per attempt) and reads the peer's status byte.
///
/// A tunnel that is not up yet is waited for until `deadline`. A tunnel that is lost
/// before the peer answered (a reconnect, or a tunnel that failed right after its
/// handshake) is not a failure of this connection: nothing of the local side's data has
/// been sent yet, so the header goes again through the next tunnel, as long as the
/// deadline allows.
pub(crate) async fn open_stream(
    ctx: &Ctx,
    mut header: impl FnMut() -> Vec<u8>,
    deadline: Instant,
) -> Result<(quinn::Connection, SendStream, RecvStream, Status), OpenError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(conn) = ctx.connection(left).await else {
            return Err(OpenError::NoTunnel);
        };
        let header = header();
        let heard_before = conn.stats().udp_rx.datagrams;
        let attempt = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&header).await.map_err(|e| e.to_string())?;
            let mut status = [0u8; 1];
            recv.read_exact(&mut status)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((send, recv, Status::from_byte(status[0])))
        };
        let mut attempt = std::pin::pin!(attempt);
        // Past the deadline, a tunnel that has sent us nothing since the header went
        // out is taken for dead (its idle timeout may be seconds away): the connection
        // gives up then. A tunnel that is heard from is alive, and the peer is only slow
        // to dial the target, so the status is waited for up to STATUS_TIMEOUT.
        let silent_past_deadline = async {
            // At least SILENCE_GRACE after the header went out: a live tunnel acks it
            // within a round trip.
            tokio::time::sleep_until(deadline.max(Instant::now() + SILENCE_GRACE)).await;
            loop {
                if conn.stats().udp_rx.datagrams == heard_before {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(STATUS_TIMEOUT, &mut attempt) => r,
            _ = silent_past_deadline => return Err(OpenError::NoTunnel),
        };
        match outcome {
            Ok(Ok((send, recv, status))) => return Ok((conn.clone(), send, recv, status)),
            Ok(Err(e)) if conn.close_reason().is_some() => {
                tracing::debug!(error = %e, "tunnel lost before the peer answered; waiting for the next one");
            }
            Ok(Err(e)) => return Err(OpenError::Failed(e)),
            Err(_) if conn.close_reason().is_some() => {}
            Err(_) => {
                return Err(OpenError::Failed(format!(
                    "the peer did not answer within {STATUS_TIMEOUT:?}"
                )))
            }
        }
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
