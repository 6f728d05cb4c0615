//! [`Shared`]: everything the engine's tasks share, and the small operations on it
//! (state changes, events, rejected offers, the peer starting over).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Error;
use crate::forward::Ctx;
use crate::signal::client::SignalClient;
use crate::signal::proto::{Offer, OfferError, OfferGuard, Role, RoomKey};
use crate::stats::{Counters, Timings};
use crate::status::{Event, MappingId, MappingInfo, PathKind, State};
use crate::stun::client::{Discovery, NatType, StunAgent};
use crate::sync::lock;
use crate::tunnel::{Identity, PinnedPeer};
use crate::turn::allocation::RelayAllocation;

/// A registered mapping: what it is, how to stop it, what it counted.
pub(crate) struct MappingEntry {
    pub info: MappingInfo,
    pub token: CancellationToken,
    pub counters: Arc<Counters>,
}

/// Tunnels the server's accept loop completed, for the driver (which owns the
/// receiving end: one attempt or session at a time reads it).
pub(crate) type Incoming = mpsc::Receiver<quinn::Connection>;

/// An event subscriber.
pub(crate) type Callback = Arc<dyn Fn(&Event) + Send + Sync>;

pub(crate) fn insecure_warning(role: Role) -> String {
    match role {
        Role::Server => "running WITHOUT A SECRET (insecure: true): anyone who knows or \
                         guesses the room name can reach every service the allow rules \
                         permit; set a \"secret\" that both peers share"
            .to_owned(),
        Role::Client => "running without a secret: anyone who knows the room name can \
                         pose as the server peer; set a \"secret\" that both peers share"
            .to_owned(),
    }
}

#[derive(Default)]
pub(crate) struct PeerInfo {
    pub(crate) path: Option<PathKind>,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) nat: Option<NatType>,
    /// How the current tunnel's path was found.
    pub(crate) technique: Option<crate::status::Technique>,
    offer_id: Option<String>,
    /// Peer offer ids we have moved on from (at most [`MAX_LEFT_BEHIND`]): a check from
    /// one of them is an old or replayed packet, never a reason to start over.
    left_behind: std::collections::VecDeque<String>,
    /// The offer the current tunnel was built from.
    pub(crate) offer: Option<Offer>,
}

/// Most peer offer ids remembered as left behind.
const MAX_LEFT_BEHIND: usize = 16;

impl PeerInfo {
    /// The peer offer id in use (this attempt's, or the connected tunnel's).
    pub(crate) fn offer_id(&self) -> Option<&str> {
        self.offer_id.as_deref()
    }

    /// Moves on to the peer offer id `id` (`None`: not known yet, a new attempt); the
    /// one before is remembered as left behind.
    pub(crate) fn set_offer_id(&mut self, id: Option<String>) {
        if let Some(old) = self.offer_id.take() {
            if Some(&old) != id.as_ref() && !self.left_behind.contains(&old) {
                if self.left_behind.len() == MAX_LEFT_BEHIND {
                    self.left_behind.pop_front();
                }
                self.left_behind.push_back(old);
            }
        }
        if let Some(new) = &id {
            self.left_behind.retain(|o| o != new);
        }
        self.offer_id = id;
    }

    /// True when `id` is a peer offer we have moved on from.
    pub(crate) fn left_behind(&self, id: &str) -> bool {
        self.left_behind.iter().any(|o| o == id)
    }
}

pub(crate) struct StateCell {
    pub(crate) state: Mutex<State>,
    pub(crate) cv: Condvar,
}

/// Everything the engine's tasks share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) role: Role,
    pub(crate) key: RoomKey,
    pub(crate) password: String,
    /// Our offer id of this attempt and of the one before (checks addressed to either
    /// are answered, so a peer still punching toward the previous attempt is heard).
    pub(crate) our_ids: Mutex<(String, String)>,
    /// Freshness of peer offers: role, timestamp window, nonces accepted.
    pub(crate) offer_guard: Mutex<OfferGuard>,
    /// Rejected offers are reported at most once per [`REJECT_REPORT_GAP`].
    pub(crate) rejections: Mutex<RejectionReports>,
    /// Why the last peer offer was rejected, until an attempt connects.
    pub(crate) rejected: Mutex<Option<Error>>,
    /// An authentic check came from a peer offer id other than the one this attempt or
    /// tunnel uses: the peer started over (restarted, or began a new attempt).
    pub(crate) new_peer: tokio::sync::Notify,
    /// That offer id.
    pub(crate) new_peer_id: Mutex<Option<String>>,
    /// Where authentic checks came from recently (at most [`MAX_CHECK_SOURCES`]):
    /// handshakes from these addresses are always held for the peer's offer.
    pub(crate) check_sources: Mutex<HashMap<SocketAddr, Instant>>,
    pub(crate) identity: Identity,
    pub(crate) pinned: Arc<PinnedPeer>,
    pub(crate) state: StateCell,
    pub(crate) events_tx: Mutex<Option<std_mpsc::Sender<Event>>>,
    pub(crate) subscribers: Arc<Mutex<Vec<Callback>>>,
    pub(crate) totals: Arc<Counters>,
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) conn_tx: watch::Sender<Option<quinn::Connection>>,
    pub(crate) mappings: Mutex<BTreeMap<MappingId, MappingEntry>>,
    pub(crate) next_mapping: AtomicU64,
    pub(crate) root: CancellationToken,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) agent: Arc<StunAgent>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) host_candidates: Vec<SocketAddr>,
    pub(crate) discovery: Mutex<Option<Discovery>>,
    /// The last full NAT detection (RFC 5780 where possible), run in the background.
    pub(crate) nat_detail: Mutex<Option<Discovery>>,
    /// A background NAT detection is running.
    pub(crate) detecting: std::sync::atomic::AtomicBool,
    /// Punches that failed in a row (reset by a connect): the next opens differently
    /// (`agent::schedule::opener`).
    pub(crate) failed_punches: std::sync::atomic::AtomicU32,
    pub(crate) signal: SignalClient,
    pub(crate) stun_discoveries: AtomicU64,
    pub(crate) signaling_requests: Arc<AtomicU64>,
    pub(crate) reconnects: AtomicU64,
    pub(crate) path_changes: AtomicU64,
    pub(crate) offers_rejected: AtomicU64,
    pub(crate) checks_unauthenticated: AtomicU64,
    pub(crate) timings: Mutex<Timings>,
    pub(crate) peer: Mutex<PeerInfo>,
    pub(crate) last_error: Mutex<Option<String>>,
    /// Why the engine gave up, when it did (`State::Failed`).
    pub(crate) failure: Mutex<Option<Error>>,
    pub(crate) prflx: Mutex<Option<(String, mpsc::Sender<SocketAddr>)>>,
    /// Pairs of public IPs (ours, the peer's) for which birthday punching failed: the
    /// next attempt between them tries plain checks first (`agent::path::birthday_plan`).
    /// What birthday punching has cost so far.
    pub(crate) birthday_counters: Arc<crate::birthday::Counters>,
    pub(crate) birthday_failed:
        Mutex<std::collections::HashSet<(std::net::IpAddr, std::net::IpAddr)>>,
    /// The technique of this attempt's sessions that may add a side socket (birthday
    /// punching or port prediction): what a path through that socket is credited to.
    pub(crate) side_technique: Mutex<Option<crate::status::Technique>>,
    /// Our TURN allocation: made on first need, released at stop.
    pub(crate) turn: RelayAllocation,
    /// Our router port mapping (`portMapping`): made at start, deleted at stop.
    pub(crate) portmap: super::portmap::PortMapper,
    /// The last attempt failed on a certificate check.
    pub(crate) auth_failed: AtomicBool,
    /// Where `/metrics` is served, when `metricsAddr` is set (port 0 resolved).
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// `engine{room, mode}`: the parent span of every task, so each log line carries
    /// the room.
    pub(crate) span: tracing::Span,
    /// Many clients (issue #18). A client engine: its own id. A server's session for
    /// one client: that client's id. The server engine itself: `None`.
    pub(crate) client: Option<String>,
    /// A client engine: the room's own mailbox, where it knocks and reads the server's
    /// announcements (`signal` is its own mailbox). `None` on the server side.
    pub(crate) lobby: Option<SignalClient>,
    /// A server's session for one client: told of each state change, so the engine's
    /// own state follows its clients'.
    pub(crate) hub_changed: Option<Arc<tokio::sync::Notify>>,
    /// The server engine itself: its clients' sessions.
    pub(crate) hub: Option<Arc<Hub>>,
}

impl Shared {
    pub(crate) fn set_state(&self, new: State) {
        {
            let mut s = lock(&self.state.state);
            if *s == new || s.is_final() {
                return;
            }
            *s = new.clone();
        }
        self.state.cv.notify_all();
        // Also called from outside the engine's tasks (`stop` on the caller's thread).
        let _in_engine = self.span.enter();
        tracing::info!(state = %new, "state");
        self.emit(Event::State { state: new });
    }

    pub(crate) fn state(&self) -> State {
        lock(&self.state.state).clone()
    }

    pub(crate) fn emit(&self, event: Event) {
        // A client's session speaks for that client: its state is the client's.
        let event = match (&self.hub_changed, event) {
            (Some(changed), Event::State { state }) => {
                changed.notify_one();
                Event::ClientState {
                    client: self.client.clone().unwrap_or_default(),
                    state,
                }
            }
            (_, event) => event,
        };
        if let Some(tx) = lock(&self.events_tx).as_ref() {
            let _ = tx.send(event);
        }
    }

    pub(crate) fn fail_reason(&self, reason: String) {
        *lock(&self.last_error) = Some(reason);
    }

    /// What kind of path `selected` is (see [`crate::agent::path::path_kind`]).
    pub(crate) fn path_kind(&self, peer: &Offer, selected: SocketAddr) -> PathKind {
        crate::agent::path::path_kind(peer, selected, self.agent.socket().is_via_relay(selected))
    }

    /// Our offer id of the current attempt.
    pub(crate) fn our_id(&self) -> String {
        lock(&self.our_ids).0.clone()
    }

    /// Starts a new attempt's offer id; the last one is still answered in checks.
    pub(crate) fn new_attempt_id(&self) -> String {
        let mut ids = lock(&self.our_ids);
        let new = Offer::new_id();
        ids.1 = std::mem::replace(&mut ids.0, new.clone());
        new
    }

    /// Counts a rejected peer offer, records it as the last error, and reports it (a
    /// warning and a `PeerRejected` event) at most once per [`REJECT_REPORT_GAP`],
    /// saying how many more were rejected in between. The state does not change: a forged or stale offer must not
    /// knock a waiting peer out of its wait.
    pub(crate) fn offer_rejected(&self, e: &OfferError) {
        let error = Error::from(e.clone());
        let reason = error.to_string();
        *lock(&self.rejected) = Some(error);
        // Stats are read when asked: the last error is always the latest. The count
        // rises only after it, so a reader that sees the new count sees its reason.
        self.fail_reason(reason.clone());
        self.offers_rejected.fetch_add(1, Ordering::Release);
        let suppressed = {
            let mut r = lock(&self.rejections);
            if r.last.is_some_and(|t| t.elapsed() < REJECT_REPORT_GAP) {
                r.suppressed += 1;
                tracing::debug!(%reason, "peer offer rejected");
                return;
            }
            r.last = Some(Instant::now());
            std::mem::take(&mut r.suppressed)
        };
        let reason = if suppressed > 0 {
            format!("{reason} ({suppressed} more rejected before this one)")
        } else {
            reason
        };
        tracing::warn!(%reason, "peer offer rejected");
        self.emit(Event::PeerRejected { reason });
    }
}

/// Least time between two reports of rejected peer offers.
pub(crate) const REJECT_REPORT_GAP: Duration = Duration::from_secs(5);

/// Most recent check sources remembered for holding their handshakes.
pub(crate) const MAX_CHECK_SOURCES: usize = 64;

/// How long a check source counts as recent.
pub(crate) const CHECK_SOURCE_TTL: Duration = Duration::from_secs(30);

/// Resolves when an authentic check shows that the peer started over with an offer id
/// other than the one in use (see [`Shared::new_peer`]).
pub(crate) async fn peer_started_over(shared: &Shared) -> String {
    loop {
        shared.new_peer.notified().await;
        let seen = lock(&shared.new_peer_id).clone();
        let started_over = {
            let peer = lock(&shared.peer);
            seen.filter(|s| peer.offer_id() != Some(s) && !peer.left_behind(s))
        };
        if let Some(seen) = started_over {
            return seen;
        }
    }
}

/// While connected: resolves when the peer restarted, i.e. an authentic check comes
/// from a new offer whose certificate differs from the connected peer's. A new offer
/// with the same certificate is the same process in a new attempt (it lost the tunnel
/// and will dial again, which `run_connected` follows): it is adopted, not acted on.
/// Costs one mailbox read per new offer id, at most one per [`crate::signal::WAKE_GAP`].
pub(crate) async fn peer_restarted(shared: &Shared) -> String {
    loop {
        let id = peer_started_over(shared).await;
        let connected_fp = lock(&shared.peer).offer.as_ref().map(|o| o.fp.clone());
        let read = shared.signal.get(shared.role.peer(), None, None).await;
        let offer = match read {
            Ok(Some((data, _))) => Offer::decode(&data, &shared.key, &shared.config.room).ok(),
            _ => None,
        };
        match offer {
            Some(o) if o.id == id && Some(&o.fp) != connected_fp.as_ref() => return id,
            Some(o) if o.id == id => {
                lock(&shared.peer).set_offer_id(Some(id));
            }
            _ => {}
        }
        tokio::time::sleep(crate::signal::WAKE_GAP).await;
    }
}

/// When a rejected offer was last reported, and how many were not reported since.
#[derive(Debug, Default)]
pub(crate) struct RejectionReports {
    pub(crate) last: Option<Instant>,
    pub(crate) suppressed: u64,
}

/// The server engine's clients (issue #18; `hub` runs them).
pub(crate) struct Hub {
    pub(crate) sessions: Mutex<BTreeMap<String, Session>>,
    /// A session changed state.
    pub(crate) changed: Arc<tokio::sync::Notify>,
    /// The engine is stopping: its sessions were drained, and no new one may join
    /// (set under the `sessions` lock, so a session set up meanwhile sees it).
    pub(crate) closed: AtomicBool,
}

pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    /// When the session last had no tunnel (`None` while it has one).
    pub(crate) idle_since: Option<Instant>,
    /// When its tunnel came up last.
    pub(crate) connected_at: Option<Instant>,
    pub(crate) opened: Instant,
}

impl Hub {
    pub(crate) fn new() -> Arc<Hub> {
        Arc::new(Hub {
            sessions: Mutex::new(BTreeMap::new()),
            changed: Arc::new(tokio::sync::Notify::new()),
            closed: AtomicBool::new(false),
        })
    }

    /// The sessions, the one the engine's own figures follow first.
    pub(crate) fn sessions(&self) -> Vec<Arc<Shared>> {
        let sessions = lock(&self.sessions);
        let lead = lead(&sessions);
        let mut list: Vec<Arc<Shared>> = Vec::with_capacity(sessions.len());
        list.extend(lead.map(|(_, s)| s.shared.clone()));
        list.extend(
            sessions
                .iter()
                .filter(|(id, _)| Some(*id) != lead.map(|(l, _)| l))
                .map(|(_, s)| s.shared.clone()),
        );
        list
    }

    /// Every session, for the engine's shutdown; no session joins after. They stay
    /// listed, so that the final stats still count what they served.
    pub(crate) fn close_all(&self) -> Vec<Arc<Shared>> {
        let sessions = lock(&self.sessions);
        self.closed.store(true, Ordering::Release);
        sessions.values().map(|s| s.shared.clone()).collect()
    }
}

/// The session the engine's state and top-level figures follow: the client connected
/// last, or, with none connected, the one that came last.
pub(crate) fn lead(sessions: &BTreeMap<String, Session>) -> Option<(&String, &Session)> {
    sessions
        .iter()
        .filter(|(_, s)| s.connected_at.is_some() && s.idle_since.is_none())
        .max_by_key(|(_, s)| s.connected_at)
        .or_else(|| sessions.iter().max_by_key(|(_, s)| s.opened))
}
