//! Where the rendezvous server keeps its rooms: the [`Store`] trait, implemented in
//! memory ([`memory`], the default) and in Redis ([`redis_store`], for
//! several instances behind a load balancer), and the [`Notifier`] that wakes this
//! instance's long-polls when a mailbox they wait on may have changed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::signal::proto::Role;

pub(super) mod memory;
#[cfg(feature = "redis")]
pub(super) mod redis_store;

/// Which store a [`super::SignalServer`] keeps its rooms in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process: fast, lost on restart, one instance only.
    #[default]
    Memory,
    /// In Redis, shared by every server instance that uses the same `url` and `prefix`:
    /// rooms expire through Redis TTLs and posts wake long-polls on every instance
    /// through pub/sub. Needs the `redis` feature (the stunfwd CLI has it); without
    /// it [`super::SignalServer::start`] refuses this store with a config error.
    Redis {
        /// `redis://[user:password@]host:port[/db]`.
        url: String,
        /// Prefix of every key and channel, so several deployments can share a Redis.
        prefix: String,
    },
}

impl StoreConfig {
    /// A Redis store at `url` with the default key prefix `stunfwd:`.
    pub fn redis(url: impl Into<String>) -> StoreConfig {
        StoreConfig::Redis {
            url: url.into(),
            prefix: "stunfwd:".to_owned(),
        }
    }
}

/// `url` without its password, for messages.
pub(super) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A boxed future, so that [`Store`] can be used as a trait object.
pub(crate) type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreError {
    /// Creating a room would exceed the room limit (answered `503`).
    Full(String),
    /// This client holds its maximum of bytes (answered `429`).
    ClientFull(String),
    /// The store cannot be reached or failed (answered `503`). Only Redis fails so.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Unavailable(String),
}

/// Data in a mailbox and its version.
pub(crate) type Mail = (String, u64);

/// The operations the HTTP front end needs. Every operation on a room counts as activity
/// that keeps it alive for the room TTL.
pub(crate) trait Store: Send + Sync {
    /// Replaces `role`'s data in `room` (creating the room) and wakes every waiter of
    /// that mailbox, on every instance. Returns the new version.
    /// `client` is the poster's client key (IPv4, or IPv6 /64), charged for the bytes
    /// where the store bounds them per client (the memory store).
    fn post<'a>(
        &'a self,
        room: &'a str,
        role: Role,
        data: String,
        client: std::net::IpAddr,
    ) -> StoreFuture<'a, Result<u64, StoreError>>;

    /// `role`'s data in `room` and its version, if any.
    fn get<'a>(
        &'a self,
        room: &'a str,
        role: Role,
    ) -> StoreFuture<'a, Result<Option<Mail>, StoreError>>;

    /// Removes `role`'s data; the room goes when it holds no data (and, in memory, has
    /// no waiters).
    fn delete<'a>(&'a self, room: &'a str, role: Role) -> StoreFuture<'a, Result<(), StoreError>>;

    /// Periodic housekeeping (expired rooms); returns how many rooms are held.
    fn maintain(&self) -> StoreFuture<'_, Result<usize, StoreError>>;

    /// Rooms held, as of the last operation or housekeeping (exact in memory).
    fn rooms(&self) -> usize;
}

/// The long-polls of this instance, by room and role. Stores call [`Notifier::notify`]
/// when a mailbox may have changed; a long-poll registers with [`Notifier::watch`]
/// *before* it reads the mailbox, so a post between the read and the wait is not missed.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    rooms: Mutex<HashMap<String, [watch::Sender<()>; 2]>>,
}

fn slot(role: Role) -> usize {
    match role {
        Role::Client => 0,
        Role::Server => 1,
    }
}

impl Notifier {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, [watch::Sender<()>; 2]>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter of `role`'s mailbox in `room`; it is woken by every later
    /// [`Notifier::notify`] of that mailbox and by [`Notifier::notify_all`].
    pub(crate) fn watch(self: &Arc<Self>, room: &str, role: Role) -> Waiter {
        let mut rooms = self.lock();
        let senders = rooms
            .entry(room.to_owned())
            .or_insert_with(|| [watch::Sender::new(()), watch::Sender::new(())]);
        Waiter {
            notifier: self.clone(),
            room: room.to_owned(),
            rx: senders[slot(role)].subscribe(),
        }
    }

    /// Wakes the waiters of `role`'s mailbox in `room`.
    pub(crate) fn notify(&self, room: &str, role: Role) {
        if let Some(senders) = self.lock().get(room) {
            senders[slot(role)].send_replace(());
        }
    }

    /// Wakes every waiter (they look at their mailbox again), e.g. after the store's
    /// notifications may have been lost (only Redis's can be).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn notify_all(&self) {
        for senders in self.lock().values() {
            for s in senders {
                s.send_replace(());
            }
        }
    }

    /// True when somebody on this instance waits on `room`.
    pub(crate) fn has_waiters(&self, room: &str) -> bool {
        self.lock()
            .get(room)
            .is_some_and(|s| s.iter().any(|s| s.receiver_count() > 0))
    }

    /// Rooms with at least one waiter on this instance.
    #[cfg(test)]
    pub(crate) fn rooms_watched(&self) -> usize {
        self.lock().len()
    }
}

/// One registered long-poll; unregisters when dropped.
#[derive(Debug)]
pub(crate) struct Waiter {
    notifier: Arc<Notifier>,
    room: String,
    rx: watch::Receiver<()>,
}

impl Waiter {
    /// Resolves at the next notification after the previous call (or the registration).
    pub(crate) async fn changed(&mut self) {
        // The sender lives in the map as long as this receiver exists, so an error
        // cannot happen; treat it as a wake-up all the same.
        let _ = self.rx.changed().await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut rooms = self.notifier.lock();
        if let Some(senders) = rooms.get(&self.room) {
            // Our own receiver still counts here.
            let others: usize = senders.iter().map(watch::Sender::receiver_count).sum();
            if others <= 1 {
                rooms.remove(&self.room);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_are_woken_and_unregistered() {
        let n = Arc::new(Notifier::default());
        let mut a = n.watch("r", Role::Client);
        let b = n.watch("r", Role::Server);
        assert!(n.has_waiters("r"));
        n.notify("r", Role::Client);
        tokio::time::timeout(Duration::from_secs(1), a.changed())
            .await
            .expect("woken");
        n.notify("r", Role::Server);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), a.changed())
                .await
                .is_err(),
            "the other mailbox's notification does not wake it"
        );
        drop(a);
        assert_eq!(n.rooms_watched(), 1);
        drop(b);
        assert_eq!(n.rooms_watched(), 0, "the last waiter removes the entry");
        assert!(!n.has_waiters("r"));
        n.notify("r", Role::Client);
        n.notify_all();
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://u:pw@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact("garbage"), "garbage");
    }
}
