//! Our TURN allocation: made on first need, refreshed for the engine's life.

use std::sync::Arc;
use std::time::Duration;

use super::attempt::Attempt;
use super::shared::Shared;
use crate::relay::TurnClient;
use crate::sync::lock;

/// Our TURN allocation, made on first need and kept (refreshed) for the engine's life.
pub(crate) async fn ensure_relay(
    shared: &Arc<Shared>,
) -> std::result::Result<Arc<TurnClient>, Attempt> {
    if let Some(t) = lock(&shared.turn).clone() {
        return Ok(t);
    }
    let Some(cfg) = shared.config.relay.clone() else {
        return Err(Attempt::Retry("no relay configured".into()));
    };
    let host_port = cfg.url.host_port();
    let server = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host(host_port.as_str()),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .and_then(|mut addrs| addrs.find(|a| a.is_ipv4() == shared.local_addr.is_ipv4()))
    .ok_or_else(|| Attempt::Retry(format!("cannot resolve the TURN server {host_port}")))?;
    let (username, password) = crate::relay::credentials(&cfg);
    let target = crate::relay::RelayTarget {
        server,
        url: cfg.url.clone(),
        username,
        password,
    };
    let socket = shared.agent.socket().clone();
    // Answers from the server must reach the dispatcher before the allocation exists.
    socket.set_relay_server(Some(server));
    let turn = match TurnClient::allocate(shared.agent.clone(), target).await {
        Ok(t) => Arc::new(t),
        Err(e) => {
            socket.set_relay_server(None);
            let reason = e.to_string();
            // Wrong credentials will not fix themselves; everything else may.
            return Err(if reason.contains("rejected the credentials") {
                Attempt::Fatal(e)
            } else {
                Attempt::Retry(reason)
            });
        }
    };
    *lock(&shared.turn) = Some(turn.clone());
    let (t, token) = (turn.clone(), shared.root.clone());
    crate::spawn(async move {
        // Refresh allocation, permissions and channels well before they expire.
        let every = (t.lifetime / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = token.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_millis(500), t.refresh(Duration::ZERO)).await;
                    return;
                }
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = t.refresh_all().await {
                tracing::warn!(server = %t.server(), error = %e, "relay refresh failed");
            } else {
                tracing::debug!(server = %t.server(), "relay refreshed");
            }
        }
    });
    Ok(turn)
}
