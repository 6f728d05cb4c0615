//! The engine's TURN allocation: made on first need, refreshed for the engine's life,
//! released at stop; and the channel bindings for peers the relay starts carrying.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::AsyncUdpSocket as _;
use tokio_util::sync::CancellationToken;

use super::client::TurnClient;
use super::target::{credentials, RelayTarget};
use super::AllocError;
use crate::config::RelayConfig;
use crate::stun::client::StunAgent;
use crate::sync::lock;

/// How long resolving the TURN server's name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the release at stop may take: stopping must not wait for a dead server
/// (the allocation then expires on its own after its lifetime).
const RELEASE_TIMEOUT: Duration = Duration::from_millis(500);

/// Our allocation on the configured TURN server, once made.
pub(crate) struct RelayAllocation {
    agent: Arc<StunAgent>,
    config: Option<RelayConfig>,
    /// Cancelled at the engine's stop: the allocation is released then.
    stop: CancellationToken,
    /// Lock rule: held only to read or set the `Arc`, never across an `.await`.
    current: Mutex<Option<Arc<TurnClient>>>,
    /// Held while an allocation is being made: two attempts asking at once (one
    /// still gathering in the background) make one allocation, not two.
    making: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RelayAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayAllocation")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl RelayAllocation {
    /// An allocation on `config`'s server (none when `None`), made through `agent`
    /// and released when `stop` is cancelled.
    pub fn new(
        agent: Arc<StunAgent>,
        config: Option<RelayConfig>,
        stop: CancellationToken,
    ) -> RelayAllocation {
        RelayAllocation {
            agent,
            config,
            stop,
            current: Mutex::new(None),
            making: tokio::sync::Mutex::new(()),
        }
    }

    /// The allocation, if it has been made.
    pub fn current(&self) -> Option<Arc<TurnClient>> {
        lock(&self.current).clone()
    }

    /// The allocation: the one made earlier, or a new one, kept (refreshed) from then
    /// on until stop.
    pub async fn ensure(&self) -> Result<Arc<TurnClient>, AllocError> {
        if let Some(t) = self.current() {
            return Ok(t);
        }
        let _making = self.making.lock().await;
        if let Some(t) = self.current() {
            return Ok(t);
        }
        let cfg = self.config.as_ref().ok_or(AllocError::NotConfigured)?;
        let socket = self.agent.socket().clone();
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        let host_port = cfg.url.host_port();
        let server = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(&host_port))
            .await
            .ok()
            .and_then(|r| r.ok())
            .and_then(|addrs| {
                // IPv4 first: the relayed address is IPv4 (RFC 5766's default family),
                // which every peer reaches, whatever our socket's family.
                let mut usable: Vec<SocketAddr> = addrs
                    .filter(|a| crate::socket::reaches(local, *a))
                    .collect();
                usable.sort_by_key(|a| a.is_ipv6());
                usable.first().copied()
            })
            .ok_or(AllocError::Unresolved(host_port))?;
        let (username, password) = credentials(cfg);
        let target = RelayTarget {
            server,
            url: cfg.url.clone(),
            username,
            password,
        };
        // Answers from the server must reach the dispatcher before the allocation exists.
        socket.set_relay_server(Some(server));
        let turn = match TurnClient::allocate(self.agent.clone(), target).await {
            Ok(t) => Arc::new(t),
            Err(e) => {
                socket.set_relay_server(None);
                return Err(e);
            }
        };
        *lock(&self.current) = Some(turn.clone());
        crate::spawn(keep(turn.clone(), self.agent.clone(), self.stop.clone()));
        Ok(turn)
    }
}

/// Keeps `turn` alive until `stop`: refreshes the allocation, permissions and channels
/// well before they expire, binds a channel for each peer that the relay starts
/// carrying (cheaper framing than Send indications from then on), and releases the
/// allocation at stop.
async fn keep(turn: Arc<TurnClient>, agent: Arc<StunAgent>, stop: CancellationToken) {
    let socket = agent.socket().clone();
    let every = crate::agent::schedule::relay_refresh_every(turn.lifetime);
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = tokio::time::timeout(RELEASE_TIMEOUT, turn.refresh(Duration::ZERO)).await;
                return;
            }
            _ = socket.new_relayed_peers() => {
                for peer in socket.take_new_relayed_peers() {
                    bind_channel_later(&turn, peer);
                }
                continue;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        if let Err(e) = turn.refresh_all().await {
            tracing::warn!(server = %turn.server(), error = %e, "relay refresh failed");
        } else {
            tracing::debug!(server = %turn.server(), "relay refreshed");
        }
        next = tokio::time::Instant::now() + every;
    }
}

/// Binds a TURN channel for `peer` in the background.
fn bind_channel_later(turn: &Arc<TurnClient>, peer: SocketAddr) {
    let turn = turn.clone();
    crate::spawn(async move {
        if let Err(e) = turn.bind_channel(peer).await {
            tracing::debug!(%peer, error = %e, "channel bind failed; using Send indications");
        }
    });
}
