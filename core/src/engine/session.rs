//! A connected tunnel: serving it until it is lost, following the peer's address,
//! and upgrading a relayed tunnel to a direct path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::shared::{Incoming, Shared};
use crate::agent::path;
use crate::agent::UpgradeSchedule;
use crate::config::RelayPolicy;
use crate::forward;
use crate::punch::{self, ChecklistConfig, Punch};
use crate::signal::proto::Role;
use crate::status::{PathKind, State, Technique};
use crate::sync::lock;
use crate::tunnel;

/// Serves one tunnel until it is lost; returns why.
pub(crate) async fn run_connected(
    shared: &Arc<Shared>,
    mut conn: quinn::Connection,
    path: PathKind,
    incoming: &mut Incoming,
) -> String {
    loop {
        let peer = crate::socket::peer_addr(&conn);
        {
            let mut p = lock(&shared.peer);
            p.path = Some(path);
            p.addr = Some(peer);
        }
        shared.conn_tx.send_replace(Some(conn.clone()));
        let found = lock(&shared.peer).technique.unwrap_or(Technique::Checks);
        shared.set_state(State::Connected {
            path,
            peer,
            technique: technique(path, found),
        });
        let conn_token = shared.root.child_token();
        let datagrams = crate::spawn(forward::dispatch::dispatch_datagrams(
            conn.clone(),
            shared.ctx.flows.clone(),
        ));
        if path == PathKind::Relay {
            crate::spawn(upgrade_to_direct(
                shared.clone(),
                conn.clone(),
                conn_token.clone(),
            ));
        }
        if shared.role == Role::Server {
            let (c, ctx, t) = (conn.clone(), shared.ctx.clone(), conn_token.clone());
            let budget = tunnel::StreamBudget::new(conn.clone(), &shared.config.performance);
            crate::spawn(async move {
                // The client reports connected only after this (see `await_welcome`).
                if let Err(e) = tunnel::send_welcome(&c).await {
                    tracing::debug!(error = %e, "welcome not sent");
                    return;
                }
                loop {
                    let stream = tokio::select! {
                        _ = t.cancelled() => return,
                        s = c.accept_bi() => s,
                    };
                    match stream {
                        Ok((send, recv)) => {
                            let open = budget.opened();
                            let serve = forward::tcp::serve_stream(
                                send,
                                recv,
                                c.clone(),
                                ctx.clone(),
                                t.clone(),
                            );
                            crate::spawn(async move {
                                let _open = open;
                                serve.await;
                            });
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        let replaced = async {
            if shared.role != Role::Server {
                return std::future::pending::<quinn::Connection>().await;
            }
            loop {
                match incoming.recv().await {
                    // A handshake that passed the pinned verifier: the peer came back
                    // (its old connection is dead from its point of view).
                    Some(c) if tunnel::peer_fingerprint(&c) == shared.pinned.get() => return c,
                    Some(c) => c.close(0u32.into(), b"superseded"),
                    None => return std::future::pending().await,
                }
            }
        };
        let mut replaced = std::pin::pin!(replaced);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut current = peer;
        let mut liveness = Liveness::new(&conn);
        let outcome = loop {
            tokio::select! {
                e = conn.closed() => break Err(format!("tunnel to {peer} lost: {e}")),
                c = &mut replaced => break Ok(c),
                _ = tick.tick() => {
                    if let Some(silent) = liveness.dead(&conn) {
                        // Our packets go unanswered: a NAT on the way forgot us (it
                        // rebooted, or moved us to another port). Waiting for the idle
                        // timeout would leave the tunnel dead for seconds more.
                        conn.close(0u32.into(), b"path silent");
                        break Err(format!(
                            "tunnel to {peer} lost: nothing heard for {silent:?} while sending (a NAT on the path forgot the mapping?)"
                        ));
                    }
                    // quinn follows a peer whose NAT mapping changed (QUIC migration);
                    // report the new address and count the change.
                    let now = crate::socket::peer_addr(&conn);
                    let (offer, reported) = {
                        let p = lock(&shared.peer);
                        (p.offer.clone(), p.path)
                    };
                    let new_path = match (shared.role, offer) {
                        // The client's own upgrade reports itself; its address is aliased.
                        (Role::Client, _) | (_, None) => reported.unwrap_or(path),
                        (Role::Server, Some(o)) => shared.path_kind(&o, now),
                    };
                    if now != current || Some(new_path) != reported {
                        tracing::info!(old = %current, new = %now, path = new_path.as_str(), "tunnel path changed");
                        let span = tracing::Span::current();
                        span.record("peer", tracing::field::display(now));
                        span.record("path", new_path.as_str());
                        current = now;
                        shared.path_changes.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut p = lock(&shared.peer);
                            p.addr = Some(now);
                            p.path = Some(new_path);
                        }
                        let found = lock(&shared.peer).technique.unwrap_or(found);
                        shared.set_state(State::Connected {
                            path: new_path,
                            peer: now,
                            technique: technique(new_path, found),
                        });
                    }
                }
            }
        };
        shared.conn_tx.send_replace(None);
        conn_token.cancel();
        datagrams.abort();
        match outcome {
            Err(reason) => return reason,
            Ok(new_conn) => {
                tracing::info!(old = %peer, new = %crate::socket::peer_addr(&new_conn), "peer reconnected; switching tunnel");
                tracing::Span::current().record(
                    "peer",
                    tracing::field::display(crate::socket::peer_addr(&new_conn)),
                );
                conn.close(0u32.into(), b"replaced");
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                conn = new_conn;
            }
        }
    }
}

/// The technique to report for a tunnel on `path` whose path was found by `found`:
/// a relayed path is the relay's, whatever found it.
fn technique(path: PathKind, found: Technique) -> Technique {
    if path == PathKind::Relay {
        Technique::Relay
    } else {
        found
    }
}

/// While relayed, keeps probing the peer's direct candidates (2 s, 4 s, … 60 s apart).
/// When one answers straight back, the connection's packets are aliased to it: the
/// same QUIC connection carries on directly and the peer's side migrates to the new
/// path when our packets arrive on it. Live streams are not interrupted.
///
/// The client also probes, at once, every address the server's own probes come from
/// (peer-reflexive): behind a symmetric NAT the server is reached only there, as when
/// our router maps our port (its probes come in; ours to its STUN-mapped address never
/// get through its NAT).
pub(crate) async fn upgrade_to_direct(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    token: CancellationToken,
) {
    let Some(offer) = lock(&shared.peer).offer.clone() else {
        return;
    };
    let remote = punch::usable_candidates(shared.local_addr, path::direct_candidates(&offer));
    if remote.is_empty() || shared.config.relay_policy == RelayPolicy::Always {
        return;
    }
    let mut remote = remote;
    let client = shared.role == Role::Client;
    let (seen_tx, mut seen) = mpsc::channel(16);
    let listening = client.then(|| Reflexive::listen(&shared, &offer.id, &seen_tx));
    let mut schedule = UpgradeSchedule::default();
    loop {
        let sleep = tokio::time::sleep(schedule.next_wait());
        tokio::select! {
            _ = token.cancelled() => return,
            _ = sleep => {}
            Some(addr) = seen.recv() => {
                tracing::debug!(%addr, "the relayed peer's probe came from a new address: probing it");
                if !remote.contains(&addr) {
                    remote.push(addr);
                }
            }
        }
        while let Ok(addr) = seen.try_recv() {
            if !remote.contains(&addr) {
                remote.push(addr);
            }
        }
        if lock(&shared.peer).path != Some(PathKind::Relay) {
            // Moved off the relay meanwhile (birthday punching found a pair).
            return;
        }
        let punch = Punch {
            our_id: shared.our_id(),
            peer_id: offer.id.clone(),
            password: shared.password.clone(),
            checks: ChecklistConfig {
                remote: remote.clone(),
                timeout: UpgradeSchedule::PROBE_TIMEOUT,
                keep_going: false,
                direct: true,
                // No openers: a live relayed tunnel broke when its upgrade probes opened
                // with them (lab `relayed_tunnel_moves_to_direct_when_the_direct_path_opens`).
                opener: None,
            },
            straight: true,
        };
        // Addresses the server's probes come from while this round runs join it.
        let (tx, rx) = mpsc::channel(16);
        let round = client.then(|| Reflexive::listen(&shared, &offer.id, &tx));
        let found = punch.run(shared.agent.clone(), rx).await;
        drop(round);
        if let Some(l) = &listening {
            l.resume(&shared);
        }
        if shared.role == Role::Server {
            // The server's probes open its own NAT toward the client; the client moves
            // the connection, and we follow when its packets arrive directly.
            if lock(&shared.peer).path != Some(PathKind::Relay) {
                return;
            }
            continue;
        }
        if let Some(sel) = found {
            // Through a socket birthday punching or port prediction added, the path is
            // theirs (the probe only found it before their own report came).
            let side = shared.agent.socket().side_peer() == Some(sel.remote);
            let found_by = match *lock(&shared.side_technique) {
                Some(t) if side => t,
                _ => Technique::Checks,
            };
            switch_to_direct(&shared, &conn, sel.remote, found_by);
            return;
        }
    }
}

/// Where the responder reports the peer's checks from addresses we did not probe
/// (`Shared::prflx`) while a relayed tunnel looks for a direct path; taken back on drop.
struct Reflexive {
    shared: Arc<Shared>,
    peer_id: String,
    tx: mpsc::Sender<std::net::SocketAddr>,
}

impl Reflexive {
    fn listen(
        shared: &Arc<Shared>,
        peer_id: &str,
        tx: &mpsc::Sender<std::net::SocketAddr>,
    ) -> Reflexive {
        *lock(&shared.prflx) = Some((peer_id.to_owned(), tx.clone()));
        Reflexive {
            shared: shared.clone(),
            peer_id: peer_id.to_owned(),
            tx: tx.clone(),
        }
    }

    /// Reports go to this listener again (after a round's own listener was dropped).
    fn resume(&self, shared: &Shared) {
        *lock(&shared.prflx) = Some((self.peer_id.clone(), self.tx.clone()));
    }
}

impl Drop for Reflexive {
    fn drop(&mut self) {
        let mut prflx = lock(&self.shared.prflx);
        if prflx
            .as_ref()
            .is_some_and(|(_, tx)| tx.same_channel(&self.tx))
        {
            *prflx = None;
        }
    }
}

/// Moves the client's relayed tunnel to the direct pair ending at `remote`: the
/// connection's packets are aliased to it, so the same QUIC connection carries on
/// directly and the peer migrates when our packets arrive on the new path.
pub(crate) fn switch_to_direct(
    shared: &Shared,
    conn: &quinn::Connection,
    remote: std::net::SocketAddr,
    found_by: Technique,
) {
    let Some(offer) = lock(&shared.peer).offer.clone() else {
        return;
    };
    let conn_addr = crate::socket::peer_addr(conn);
    shared.agent.socket().alias(conn_addr, remote);
    let path = shared.path_kind(&offer, remote);
    tracing::info!(from = %conn_addr, to = %remote, technique = found_by.as_str(), "tunnel upgraded from relay to a direct path");
    // Called in the tunnel's span: later lines name the new path.
    let span = tracing::Span::current();
    span.record("peer", tracing::field::display(remote));
    span.record("path", path.as_str());
    shared.path_changes.fetch_add(1, Ordering::Relaxed);
    {
        let mut p = lock(&shared.peer);
        p.path = Some(path);
        p.addr = Some(remote);
        p.technique = Some(found_by);
    }
    shared.set_state(State::Connected {
        path,
        peer: remote,
        technique: technique(path, found_by),
    });
}

/// Declares a tunnel dead when it has heard nothing for [`SILENT_LIMIT`] (or four
/// round trips, if longer) although it has sent since it last heard something: QUIC
/// answers every ack-eliciting packet within a round trip plus its ACK delay, so a
/// live path is never that quiet while we send. An idle tunnel sends only its
/// keep-alives, so it is judged at the next one. Faster than the idle timeout (15 s)
/// after a NAT reboot that changed our public port.
pub(crate) struct Liveness {
    rx: u64,
    tx_when_heard: u64,
    heard_at: tokio::time::Instant,
}

/// Silence, while sending, after which a tunnel is taken for dead.
pub(crate) const SILENT_LIMIT: Duration = Duration::from_secs(2);

impl Liveness {
    pub(crate) fn new(conn: &quinn::Connection) -> Liveness {
        let s = conn.stats();
        Liveness {
            rx: s.udp_rx.datagrams,
            tx_when_heard: s.udp_tx.datagrams,
            heard_at: tokio::time::Instant::now(),
        }
    }

    /// How long the tunnel has been silent while sending, once that is too long.
    pub(crate) fn dead(&mut self, conn: &quinn::Connection) -> Option<Duration> {
        let s = conn.stats();
        let now = tokio::time::Instant::now();
        if s.udp_rx.datagrams != self.rx {
            self.rx = s.udp_rx.datagrams;
            self.tx_when_heard = s.udp_tx.datagrams;
            self.heard_at = now;
            return None;
        }
        let silent = now.duration_since(self.heard_at);
        let limit = SILENT_LIMIT.max(conn.rtt() * 4);
        (s.udp_tx.datagrams > self.tx_when_heard && silent >= limit).then_some(silent)
    }
}
