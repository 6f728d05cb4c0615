//! The engine's router port mapping (`portMapping`): asked for at start for the tunnel
//! socket's port, renewed at half its lifetime for the engine's life, deleted at stop.
//! Attempts offer its public address as a candidate once it exists; none waits for it
//! longer than [`PORTMAP_GATHER_WAIT`] (but behind a symmetric NAT without a relay),
//! and none behind a NAT known to be a cone.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::PortMapping;
use crate::portmap::{self, Lease, PortMapStatus};
use crate::sync::lock;

/// How long an attempt whose NAT may be symmetric waits, once discovery is done, for
/// the first answer of the router (behind a known cone NAT none waits): PCP answers in
/// one LAN round trip; UPnP's search answer may come up to 3 s
/// late (`portmap::PROBE_TIMEOUT`), and is then offered by the next attempt. The
/// relay's wait is as long and runs alongside.
pub(crate) const PORTMAP_GATHER_WAIT: Duration = Duration::from_millis(500);

/// After a router gave no mapping, when to ask again (a router rebooting or UPnP
/// switched on later); a renewal that fails asks again at once.
const RETRY_EVERY: Duration = Duration::from_secs(300);

/// The shortest renewal interval, whatever lifetime a router grants (miniupnpd's
/// `min_lifetime` defaults to 120 s).
const MIN_RENEW: Duration = Duration::from_secs(30);

/// How long the deletion at stop may take: stopping must not wait for a dead router
/// (the mapping then expires on its own).
pub(crate) const RELEASE_TIMEOUT: Duration = Duration::from_millis(500);

/// The mapping's state, shared by the task that keeps it and the attempts that offer it.
#[derive(Debug)]
pub(crate) struct PortMapper {
    /// Lock rule: held only to read or replace the status, never across an `.await`.
    status: Arc<Mutex<PortMapStatus>>,
    /// `true` once the first request has been answered (or has failed).
    probed: watch::Sender<bool>,
    /// The task that keeps the mapping; it deletes it when the engine's token is
    /// cancelled, and stop waits for that.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PortMapper {
    /// Starts keeping a mapping of `local`'s port unless `setting` is off or the socket
    /// cannot be mapped (bound to one IPv6 address, loopback); ends at `stop`. Must run inside the runtime.
    pub fn start(setting: PortMapping, local: SocketAddr, stop: CancellationToken) -> PortMapper {
        let (probed, _) = watch::channel(false);
        let skip = match setting {
            PortMapping::Off => Some("portMapping: off"),
            PortMapping::Auto if local.ip().is_loopback() => {
                Some("the tunnel socket is bound to loopback")
            }
            // A dual-stack `[::]` socket receives the IPv4 the router forwards; a socket
            // bound to one IPv6 address has no IPv4 to map.
            PortMapping::Auto if !local.is_ipv4() && !local.ip().is_unspecified() => {
                Some("IPv6-only socket (no mapping needed)")
            }
            PortMapping::Auto => None,
        };
        let mapper = PortMapper {
            status: Arc::new(Mutex::new(PortMapStatus::none(
                None,
                skip.unwrap_or("not answered yet"),
            ))),
            probed,
            task: Mutex::new(None),
        };
        if skip.is_some() {
            mapper.probed.send_replace(true);
            return mapper;
        }
        let task = crate::spawn(keep(
            local.port(),
            mapper.status.clone(),
            mapper.probed.clone(),
            stop,
        ));
        *lock(&mapper.task) = Some(task);
        mapper
    }

    /// What stats report.
    pub fn status(&self) -> PortMapStatus {
        lock(&self.status).clone()
    }

    /// The public address the router forwards to us, when it does.
    pub fn external(&self) -> Option<SocketAddr> {
        lock(&self.status).external
    }

    /// Waits until the first request has been answered, at most `within`.
    pub async fn wait_probed(&self, within: Duration) {
        let mut rx = self.probed.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|p| *p)).await;
    }

    /// Waits (at most `within`) for the keeping task to delete the mapping; the
    /// engine's token must have been cancelled.
    pub async fn stopped(&self, within: Duration) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(within, task).await;
        }
    }
}

/// Makes the mapping, keeps it and deletes it at `stop`.
async fn keep(
    port: u16,
    status: Arc<Mutex<PortMapStatus>>,
    probed: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let set = |s: PortMapStatus| *lock(&status) = s;
    let Some(gateway) = portmap::default_gateway() else {
        tracing::info!("port mapping: none (no IPv4 default gateway)");
        set(PortMapStatus::none(None, "no IPv4 default gateway"));
        probed.send_replace(true);
        return;
    };
    loop {
        let made = tokio::select! {
            _ = stop.cancelled() => return,
            r = portmap::map_udp(gateway, port, portmap::PROBE_TIMEOUT) => r,
        };
        match made {
            Ok(lease) => {
                tracing::info!(
                    protocol = %lease.protocol,
                    %gateway,
                    external = %lease.external,
                    lifetime = ?lease.lifetime,
                    "port mapping: {} on {gateway} maps {} to our port {port}",
                    lease.protocol,
                    lease.external
                );
                set(lease.status());
                probed.send_replace(true);
                let Some(lease) = hold(lease, &set, &stop).await else {
                    return;
                };
                // The renewal failed: the router may have rebooted. Ask anew.
                drop(lease);
                continue;
            }
            Err(e) => {
                let reason = format!("no UPnP, NAT-PMP or PCP answer from {gateway}");
                tracing::info!(error = %e, "port mapping: none ({reason})");
                set(PortMapStatus::none(Some(gateway), reason));
                probed.send_replace(true);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY_EVERY) => {}
        }
    }
}

/// Renews `lease` until `stop` (then deletes it and returns `None`) or until a renewal
/// fails (returns the lease, which the router may have forgotten).
async fn hold(
    mut lease: Lease,
    set: &impl Fn(PortMapStatus),
    stop: &CancellationToken,
) -> Option<Lease> {
    loop {
        let every = (lease.lifetime / 2).max(MIN_RENEW);
        tokio::select! {
            _ = stop.cancelled() => {
                let (protocol, external) = (lease.protocol, lease.external);
                let gateway = lease.gateway;
                match tokio::time::timeout(RELEASE_TIMEOUT, lease.release()).await {
                    Ok(Ok(())) => tracing::info!(%protocol, %external, "port mapping deleted"),
                    Ok(Err(e)) => tracing::warn!(%protocol, %external, error = %e, "port mapping: deletion failed; it expires on its own"),
                    Err(_) => tracing::warn!(%protocol, %external, "port mapping: {gateway} did not confirm the deletion within {RELEASE_TIMEOUT:?}; it expires on its own"),
                }
                set(PortMapStatus::none(Some(gateway), "deleted at stop"));
                return None;
            }
            _ = tokio::time::sleep(every) => {}
        }
        // Raced with stop, so a router slow to answer does not hold up the engine's stop,
        // and bounded, so it does not hold up the next renewal either.
        let renewed = tokio::select! {
            _ = stop.cancelled() => continue,
            r = tokio::time::timeout(portmap::PROBE_TIMEOUT, lease.renew()) => {
                r.unwrap_or_else(|_| {
                    Err(format!("no answer within {:?}", portmap::PROBE_TIMEOUT))
                })
            }
        };
        match renewed {
            Ok(()) => {
                tracing::debug!(protocol = %lease.protocol, external = %lease.external, "port mapping renewed");
                set(lease.status());
            }
            Err(e) => {
                tracing::warn!(protocol = %lease.protocol, error = %e, "port mapping: renewal failed");
                set(PortMapStatus::none(
                    Some(lease.gateway),
                    format!("renewal failed: {e}"),
                ));
                return Some(lease);
            }
        }
    }
}
