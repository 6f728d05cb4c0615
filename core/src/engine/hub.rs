//! Many clients (issue #18): a server-mode engine serves each client of its room
//! through a session of its own: its own UDP socket, punched path, QUIC tunnel,
//! reconnects and figures, built and driven exactly like a one-peer engine.
//!
//! The exchange (`docs/protocol.md` §6):
//! - each client picks a random id at start and talks in a mailbox of its own, named
//!   from the room key and that id, so clients never see or overwrite each other's
//!   offers; every offer there names the client under the MAC;
//! - a client *knocks* by posting its offer in the room's own mailbox (client slot),
//!   again every few seconds until the server answers (knocks of several clients may
//!   overwrite each other; the next one gets through);
//! - the server reads the knocks, opens a session for each new client id (up to
//!   `maxClients`) and answers in the client's mailbox; at the limit it evicts a
//!   session that has no tunnel, or refuses with a signed offer that says why;
//! - the server posts an announcement (an offer naming no client) in the room's
//!   server slot at start, so that clients of a server that restarted start over at
//!   once.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use super::driver::drive;
use super::setup::{setup, Part};
use super::shared::{lead, Hub, Session, Shared};
use super::snapshot::close_tunnel;
use crate::signal::proto::{unix_now, Offer, OfferError, Role, OFFER_WINDOW};
use crate::status::State;
use crate::sync::lock;

/// A session that has had no tunnel for this long is closed (its client left, or
/// failed; one that comes back knocks again).
const IDLE_SESSION: Duration = Duration::from_secs(30);
/// How often sessions are looked over.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long one session's shutdown may take.
const SESSION_STOP: Duration = Duration::from_secs(1);
/// How many times a refusal is posted before giving up on telling the client.
const REFUSAL_TRIES: u32 = 5;
/// Knocks remembered (by their content), so a knock still in the mailbox is handled
/// once, and a bad one counted once; and authentic knocks passed on (by their nonce),
/// so one replayed later is not served again.
const KNOCKS_REMEMBERED: usize = 1024;

/// The server engine's loop: announce, read knocks, open, watch and close sessions.
pub(crate) async fn serve(primary: Arc<Shared>, hub: Arc<Hub>) {
    let token = primary.root.clone();
    primary.set_state(State::Signaling);
    announce(&primary).await;
    let (tx, mut knocks) = mpsc::channel(16);
    crate::spawn(read_knocks(primary.clone(), tx).instrument(primary.span.clone()));
    let mut look = tokio::time::interval(LOOK_EVERY);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            knock = knocks.recv() => match knock {
                Some(offer) => admit(&primary, &hub, offer).await,
                None => return,
            },
            _ = hub.changed.notified() => follow(&primary, &hub),
            _ = look.tick() => {
                close_idle(&primary, &hub);
                follow(&primary, &hub);
            }
        }
        if primary.state().is_final() {
            // Failed for every client alike (see `follow`): no more sessions.
            return;
        }
    }
}

/// Posts our announcement in the room's server slot: a signed offer naming no client,
/// whose certificate fingerprint tells clients which server process this is.
async fn announce(primary: &Shared) {
    let offer = server_note(primary, None, None);
    let data = offer.encode(&primary.key, &primary.config.room);
    if let Err(e) = primary.signal.post(Role::Server, &data).await {
        tracing::warn!(error = %e, "cannot announce this server in the room; clients still reach it by knocking");
    }
}

/// A server offer without candidates: the announcement (no client), or a refusal.
fn server_note(primary: &Shared, client: Option<String>, refused: Option<String>) -> Offer {
    Offer {
        role: Role::Server,
        id: Offer::new_id(),
        nonce: Offer::new_nonce(),
        ts: unix_now(),
        candidates: Vec::new(),
        host_count: 0,
        relay_count: 0,
        turn: false,
        fp: primary.identity.fingerprint().to_hex(),
        nat: "unknown".into(),
        predict: None,
        comb: None,
        client,
        refused,
    }
}

/// Reads the clients' knocks from the room's client slot: authentic, fresh client
/// offers naming a client, each passed on once.
async fn read_knocks(primary: Arc<Shared>, tx: mpsc::Sender<Offer>) {
    let mut seen = Remembered::default();
    // Authentic knocks passed on, by nonce: only the clients' own knocks get in here,
    // so junk posted in the slot cannot push one out to have it read again.
    let mut passed = Remembered::default();
    loop {
        let got = primary
            .signal
            .wait_for(Role::Client, Duration::from_secs(60), |data| {
                if !seen.insert(hash(data)) {
                    return None;
                }
                match knock(&primary, data) {
                    Ok(offer) if !passed.insert(hash(&offer.nonce)) => {
                        primary.offer_rejected(&OfferError::Replayed);
                        None
                    }
                    Ok(offer) => Some(offer),
                    Err(e) => {
                        primary.offer_rejected(&e);
                        None
                    }
                }
            })
            .await;
        match got {
            Ok(offer) => {
                if tx.send(offer).await.is_err() {
                    return;
                }
            }
            // Nothing new for a while, or the rendezvous is away: read again.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The last [`KNOCKS_REMEMBERED`] digests seen.
#[derive(Default)]
struct Remembered {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Remembered {
    /// Remembers `digest`; false when it was remembered already.
    fn insert(&mut self, digest: u64) -> bool {
        if !self.set.insert(digest) {
            return false;
        }
        if self.order.len() == KNOCKS_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(digest);
        true
    }
}

fn hash(data: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// A knock: an authentic client offer, fresh, naming its client.
fn knock(primary: &Shared, data: &str) -> Result<Offer, OfferError> {
    let offer = Offer::decode(data, &primary.key, &primary.config.room)?;
    if offer.role != Role::Client {
        return Err(OfferError::WrongRole {
            got: offer.role,
            expected: Role::Client,
        });
    }
    let age = unix_now() as i64 - offer.ts as i64;
    if age.unsigned_abs() > OFFER_WINDOW.as_secs() {
        return Err(OfferError::Stale {
            age,
            window: OFFER_WINDOW.as_secs(),
        });
    }
    if offer.client.is_none() {
        return Err(OfferError::WrongClient {
            got: "no client".into(),
            expected: "any".into(),
        });
    }
    Ok(offer)
}

/// Opens a session for the client that knocked, unless it has one; at `maxClients`,
/// closes one without a tunnel to make room, or refuses.
async fn admit(primary: &Arc<Shared>, hub: &Arc<Hub>, knock: Offer) {
    let Some(client) = knock.client.clone() else {
        return;
    };
    let max = primary.config.max_clients;
    // What to do, decided under the lock; done after it.
    enum Room {
        Free,
        Evict(String, Arc<Shared>),
        Full,
    }
    let room = {
        let mut sessions = lock(&hub.sessions);
        if hub.closed.load(Ordering::Acquire) {
            return;
        }
        if sessions.contains_key(&client) {
            // Its session reads the client's own mailbox, where the offer is too.
            return;
        }
        if sessions.len() < max {
            Room::Free
        } else {
            let idle = sessions
                .iter()
                .filter_map(|(id, s)| s.idle_since.map(|t| (t, id.clone())))
                .min();
            match idle.and_then(|(_, id)| sessions.remove(&id).map(|s| (id, s.shared))) {
                Some((id, shared)) => Room::Evict(id, shared),
                None => Room::Full,
            }
        }
    };
    let evicted = match room {
        Room::Free => None,
        Room::Evict(id, shared) => Some((id, shared)),
        Room::Full => {
            // In the background: the hub goes on admitting (a slot may free) while a
            // busy or slow rendezvous holds the refusal up.
            let task = refuse(primary.clone(), hub.clone(), client, max);
            crate::spawn(task.instrument(primary.span.clone()));
            return;
        }
    };
    if let Some((id, shared)) = evicted {
        tracing::info!(client = %short(&id), "closing a session without a tunnel to make room for a new client");
        close(shared);
    }
    let span = tracing::info_span!(parent: &primary.span, "client", client = %short(&client));
    let mut config = primary.config.clone();
    config.bind = std::net::SocketAddr::new(primary.config.bind.ip(), 0);
    config.metrics_addr = None;
    config.mappings.clear();
    let part = Part::Session {
        client: client.clone(),
        changed: hub.changed.clone(),
        identity: primary.identity.clone(),
    };
    let (shared, incoming) = match setup(config, span.clone(), part).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("cannot open a session for client {}: {e}", short(&client));
            tracing::warn!(%reason);
            primary.fail_reason(reason);
            return;
        }
    };
    {
        let mut sessions = lock(&hub.sessions);
        // The engine began stopping while this session was set up: its sessions are
        // drained already, and this one would be left running.
        if hub.closed.load(Ordering::Acquire) {
            drop(sessions);
            close(shared);
            return;
        }
        *lock(&shared.events_tx) = lock(&primary.events_tx).clone();
        sessions.insert(
            client,
            Session {
                shared: shared.clone(),
                idle_since: Some(Instant::now()),
                connected_at: None,
                opened: Instant::now(),
            },
        );
    }
    tracing::info!(parent: &span, "a new client knocked; serving it");
    crate::spawn(drive(shared, incoming).instrument(span));
}

/// Tells a client, in its own mailbox, that the server serves its maximum of clients.
async fn refuse(primary: Arc<Shared>, hub: Arc<Hub>, client: String, max: usize) {
    let reason = format!(
        "the server peer serves its maximum of {max} clients (maxClients), each with a tunnel"
    );
    tracing::info!(client = %short(&client), %reason, "refusing a client");
    let offer = server_note(&primary, Some(client.clone()), Some(reason));
    let mailbox = primary
        .signal
        .for_room(&primary.key.client_mailbox(&client));
    let data = offer.encode(&primary.key, &primary.config.room);
    let token = primary.root.clone();
    // The client knocks again with the same offer, which is not read twice: the
    // answer must get there (a busy rendezvous answers 429 for a while).
    for attempt in 1..=REFUSAL_TRIES {
        // Served meanwhile (its next knock found a free slot): a refusal now would
        // overwrite its session's offer.
        if lock(&hub.sessions).contains_key(&client) {
            return;
        }
        let posted = tokio::select! {
            _ = token.cancelled() => return,
            r = mailbox.post(Role::Server, &data) => r,
        };
        match posted {
            Ok(()) => return,
            Err(e) if attempt == REFUSAL_TRIES => {
                tracing::warn!(error = %e, "cannot tell a refused client why");
            }
            Err(_) => tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            },
        }
    }
}

/// Notes which sessions have a tunnel, and sets the engine's state from theirs:
/// connected while any client is (as the client connected last), else as the client
/// that came last, else waiting for clients.
fn follow(primary: &Shared, hub: &Hub) {
    if let Some(e) = own_failure(hub) {
        // What broke one session breaks every one: the engine fails with it.
        let reason = e.to_string();
        tracing::warn!(%reason, "giving up: a client's session failed on this server's own settings");
        primary.fail_reason(reason.clone());
        *lock(&primary.failure) = Some(e);
        primary.set_state(State::Failed { reason });
        return;
    }
    let state = {
        let mut sessions = lock(&hub.sessions);
        let now = Instant::now();
        for s in sessions.values_mut() {
            let up = s.shared.state().is_connected();
            match (up, s.idle_since) {
                (true, Some(_)) => {
                    s.idle_since = None;
                    s.connected_at = Some(now);
                }
                (false, None) => s.idle_since = Some(now),
                _ => {}
            }
        }
        // The engine itself never goes back to starting or discovering: while its
        // lead client's session gets there, it waits for clients.
        match lead(&sessions).map(|(_, s)| s.shared.state()) {
            Some(State::Failed { .. } | State::Stopped | State::Starting | State::Discovering)
            | None => State::Signaling,
            Some(state) => state,
        }
    };
    primary.set_state(state);
}

/// A session's failure that is about this server's own settings, not about its
/// client (TURN credentials or relay settings, a config value): every other session
/// would fail the same way.
fn own_failure(hub: &Hub) -> Option<crate::error::Error> {
    let sessions = lock(&hub.sessions);
    sessions.values().find_map(|s| {
        let failure = lock(&s.shared.failure).clone()?;
        matches!(
            failure,
            crate::error::Error::Relay(_) | crate::error::Error::Config { .. }
        )
        .then_some(failure)
    })
}

/// Closes the sessions whose client is gone: failed for good, or without a tunnel
/// for [`IDLE_SESSION`].
fn close_idle(primary: &Shared, hub: &Hub) {
    let gone: Vec<(String, Arc<Shared>)> = {
        let mut sessions = lock(&hub.sessions);
        let ids: Vec<String> = sessions
            .iter()
            .filter(|(_, s)| {
                matches!(s.shared.state(), State::Failed { .. })
                    || s.idle_since.is_some_and(|t| t.elapsed() >= IDLE_SESSION)
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| sessions.remove(&id).map(|s| (id, s.shared)))
            .collect()
    };
    for (id, shared) in gone {
        let why = match shared.state() {
            State::Failed { reason } => reason,
            _ => format!("no tunnel for {} s", IDLE_SESSION.as_secs()),
        };
        tracing::info!(client = %short(&id), %why, "closing the client's session");
        if matches!(shared.state(), State::Failed { .. }) {
            primary.fail_reason(format!("client {}: {why}", short(&id)));
        }
        close(shared);
    }
}

/// Shuts a session down in the background (its tunnel closed with `stopped`, its
/// socket and tasks gone).
fn close(shared: Arc<Shared>) {
    crate::spawn(async move {
        close_tunnel(&shared, SESSION_STOP).await;
        shared.set_state(State::Stopped);
        lock(&shared.events_tx).take();
    });
}

/// The first 8 characters of a client id, for logs.
pub(crate) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
