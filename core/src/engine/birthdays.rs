//! The birthday-punching sessions of one connect attempt: started from the strategy
//! `agent::path::birthday_plan` picks, raced against the check list, kept alive to move
//! a relayed tunnel to a direct path, and their outcome remembered per pair of public
//! addresses.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::shared::Shared;
use crate::agent::birthday::BirthdayConfig;
use crate::agent::path;
use crate::birthday::{BirthdaySession, Report};
use crate::punch::Selected;
use crate::signal::proto::{Offer, Role};
use crate::status::Technique;
use crate::stun::client::{Discovery, NatType};
use crate::sync::lock;

/// The pair of public IPs an attempt connects (ours, the peer's), the key under which
/// failed birthday punching is remembered.
pub(crate) type PairKey = Option<(std::net::IpAddr, std::net::IpAddr)>;

pub(crate) fn pair_key(disc: &Discovery, peer: &Offer) -> PairKey {
    Some((disc.public_addr()?.ip(), path::peer_public(peer)?.ip()))
}

/// The birthday sessions of one attempt, each in its own task (aborted when this is
/// dropped); each sends its [`Report`] when it ends.
pub(crate) struct Birthdays {
    tasks: Vec<tokio_util::task::AbortOnDropHandle<()>>,
    tx: mpsc::Sender<Report>,
    reports: mpsc::Receiver<Report>,
    /// Sessions that have not reported yet.
    running: usize,
    /// Where the outcome is remembered, and for which pair.
    record: Option<(Arc<Shared>, (std::net::IpAddr, std::net::IpAddr))>,
}

impl Default for Birthdays {
    fn default() -> Self {
        let (tx, reports) = mpsc::channel(16);
        Birthdays {
            tasks: Vec::new(),
            tx,
            reports,
            running: 0,
            record: None,
        }
    }
}

/// Starts the birthday sessions [`path::birthday_plan`] picks for our NAT and the
/// peer's (none when the peer offered no public address).
pub(crate) fn start_birthdays(
    shared: &Arc<Shared>,
    disc: &Discovery,
    peer: &Offer,
    pair: PairKey,
) -> Birthdays {
    let Some(target) = path::peer_public(peer) else {
        return Birthdays::default();
    };
    let failed_before = pair.is_some_and(|p| lock(&shared.birthday_failed).contains(&p));
    let perf = &shared.config.performance;
    let plan = path::birthday_plan(disc.nat, NatType::from_name(&peer.nat), failed_before);
    let mut out = Birthdays {
        record: pair.map(|p| (shared.clone(), p)),
        ..Birthdays::default()
    };
    for start in plan {
        let session = BirthdaySession {
            our_id: shared.our_id(),
            peer_id: peer.id.clone(),
            password: shared.password.clone(),
            config: BirthdayConfig {
                side: start.side,
                peer: target,
                sockets: perf.birthday_sockets,
                probes: perf.birthday_probes,
                rate: perf.birthday_rate,
                opener_ttl: perf.opener_ttl(),
                // By then the hard side's first openers (sent at the same rate) have
                // made their mappings.
                lead: crate::agent::checklist::OPENER_LEAD,
                timeout: shared.config.punch_timeout.saturating_sub(start.after),
                premade: false,
            },
            // The tunnel socket is usually dual-stack `[::]`; plain sockets of the
            // peer's own family are simpler and keep the TTL option the right one.
            local_ip: match (target, shared.local_addr.ip()) {
                (SocketAddr::V4(_), std::net::IpAddr::V6(_)) => {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                }
                (_, ip) => ip,
            },
            counters: shared.birthday_counters.clone(),
            premade: Vec::new(),
            technique: Technique::Birthday,
        };
        tracing::info!(
            side = start.side.as_str(),
            after = ?start.after,
            our_nat = disc.nat.as_str(),
            peer_nat = %peer.nat,
            peer = %target,
            failed_before,
            "birthday punching planned"
        );
        let (agent, after) = (shared.agent.clone(), start.after);
        out.spawn(shared, Technique::Birthday, async move {
            tokio::time::sleep(after).await;
            session.run(agent).await
        });
    }
    out
}

impl Birthdays {
    /// Runs one more session (`technique` names what it finds) with the others.
    pub(crate) fn spawn(
        &mut self,
        shared: &Shared,
        technique: Technique,
        session: impl std::future::Future<Output = Report> + Send + 'static,
    ) {
        *lock(&shared.side_technique) = Some(technique);
        let mut ended = Ended {
            tx: Some(self.tx.clone()),
            technique,
        };
        self.running += 1;
        self.tasks
            .push(tokio_util::task::AbortOnDropHandle::new(crate::spawn(
                async move {
                    let report = session.await;
                    if let Some(tx) = ended.tx.take() {
                        let _ = tx.send(report).await;
                    }
                },
            )));
    }

    /// Races the check list (`punching`) against the birthday sessions: the first pair
    /// found, and by which technique (`None` when nothing was found). Sessions still
    /// running when the checks win stay in `self` (a relayed tunnel may move to the
    /// pair they find later: [`Birthdays::upgrade_later`]).
    pub(crate) async fn race(
        &mut self,
        punching: impl std::future::Future<Output = Option<Selected>>,
    ) -> (Option<Selected>, Option<Technique>) {
        let mut punching = std::pin::pin!(punching);
        let mut checks_done = false;
        loop {
            tokio::select! {
                sel = &mut punching, if !checks_done => {
                    if sel.is_some() {
                        return (sel, Some(Technique::Checks));
                    }
                    checks_done = true;
                }
                report = self.reports.recv(), if self.running > 0 => {
                    // A session that ended without reporting (it panicked) counts as
                    // ended: no branch is left disabled for good.
                    let Some(report) = report else {
                        self.running = 0;
                        continue;
                    };
                    self.running -= 1;
                    if let Some(w) = report.won {
                        self.remember(true);
                        let sel = Selected { remote: w.remote, index: usize::MAX };
                        return (Some(sel), Some(report.technique));
                    }
                }
            }
            if checks_done && self.running == 0 {
                self.remember(false);
                return (None, None);
            }
        }
    }

    /// The peer address of the first pair a session finds, and the technique; `None`
    /// once all ended without one.
    async fn next_win(&mut self) -> Option<(SocketAddr, Technique)> {
        while self.running > 0 {
            let Some(report) = self.reports.recv().await else {
                break;
            };
            self.running -= 1;
            if let Some(w) = report.won {
                self.remember(true);
                return Some((w.remote, report.technique));
            }
        }
        // Every session ended without a pair (also while a relay carried the tunnel):
        // the next attempt between these addresses starts with plain checks.
        self.remember(false);
        None
    }

    /// A tunnel went up on the relay while birthday punching still runs: keeps it
    /// running (until it ends or the tunnel closes) and, on the client, moves the
    /// tunnel to the direct pair it finds, like the relay-to-direct upgrade does. The
    /// server's sessions only need to live on: its side socket joins the tunnel by
    /// itself, and quinn follows the client to the new path.
    pub(crate) fn upgrade_later(mut self, shared: &Arc<Shared>, conn: &quinn::Connection) {
        if self.running == 0 {
            return;
        }
        let (shared, conn) = (shared.clone(), conn.clone());
        crate::spawn(async move {
            let found = tokio::select! {
                _ = conn.closed() => return,
                w = self.next_win() => w,
            };
            let Some((remote, technique)) = found else {
                return;
            };
            lock(&shared.peer).technique = Some(technique);
            if shared.role == Role::Client {
                super::session::switch_to_direct(&shared, &conn, remote, technique);
            }
            // The sessions that did not win end with `self` here.
        });
    }

    /// The server's tunnel arrived (`connected`) or the wait ran out: the peer
    /// addresses the sessions that ended found, each with its technique.
    pub(crate) fn finished(&mut self, connected: bool) -> Vec<(SocketAddr, Technique)> {
        let mut won = Vec::new();
        while let Ok(r) = self.reports.try_recv() {
            self.running = self.running.saturating_sub(1);
            won.extend(r.won.map(|w| (w.remote, r.technique)));
        }
        if !won.is_empty() {
            self.remember(true);
        } else if !connected {
            self.remember(false);
        }
        won
    }

    /// Remembers whether birthday punching worked for this pair (only when a session
    /// ran).
    fn remember(&mut self, worked: bool) {
        if self.tasks.is_empty() {
            return;
        }
        if let Some((shared, pair)) = self.record.take() {
            let mut failed = lock(&shared.birthday_failed);
            if worked {
                failed.remove(&pair);
            } else if failed.len() < MAX_REMEMBERED_PAIRS {
                failed.insert(pair);
            }
        }
    }
}

/// Reports a session that ended without a report of its own (it panicked) as one that
/// found nothing, so that no wait for it lasts for good.
struct Ended {
    tx: Option<mpsc::Sender<Report>>,
    technique: Technique,
}

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Report {
                side: crate::agent::birthday::Side::Easy,
                sockets: 0,
                sent: 0,
                won: None,
                technique: self.technique,
            });
        }
    }
}

/// Most pairs of public IPs for which a failed birthday punching is remembered.
const MAX_REMEMBERED_PAIRS: usize = 1024;
