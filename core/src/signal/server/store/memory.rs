//! The in-memory [`Store`]: one map of rooms behind a mutex. The default; state is lost
//! when the process exits and is not shared between instances.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{Mail, Notifier, Store, StoreError, StoreFuture};
use crate::signal::proto::Role;

/// Rooms in memory, bounded by a room count, by the bytes of data held, and by the
/// bytes held for each client (the writer of a mailbox's data and the creator of a
/// room are charged for them until they go), so one noisy client cannot fill the
/// store and lock everyone else out.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    inner: Mutex<Inner>,
    notifier: Arc<Notifier>,
    ttl: Duration,
    max_rooms: usize,
    max_bytes: usize,
    /// 0: no per-client bound.
    max_bytes_per_client: usize,
}

#[derive(Debug, Default)]
struct Inner {
    rooms: HashMap<String, Room>,
    /// Bytes of room names and data held, for the `max_bytes` bound.
    bytes: usize,
    /// Last version handed out. Versions are unique for the process's lifetime, so a
    /// mailbox's version never repeats, even when its room expires and comes back.
    last_version: u64,
    /// Bytes charged to each client key (see `limits::client_key`).
    by_client: HashMap<IpAddr, usize>,
}

impl Inner {
    fn charge(&mut self, client: IpAddr, n: usize) {
        *self.by_client.entry(client).or_default() += n;
    }

    fn refund(&mut self, client: IpAddr, n: usize) {
        if let Some(held) = self.by_client.get_mut(&client) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                self.by_client.remove(&client);
            }
        }
    }

    /// Removes room `name`, giving its bytes back to the store and to its clients.
    fn remove_room(&mut self, name: &str) {
        if let Some(room) = self.rooms.remove(name) {
            self.release(name, &room);
        }
    }

    fn release(&mut self, name: &str, room: &Room) {
        self.bytes -= room.bytes(name);
        self.refund(room.creator, name.len());
        for (mail, writer) in room.mailboxes.iter().zip(room.writers) {
            if let (Some((d, _)), Some(w)) = (mail, writer) {
                self.refund(w, d.len());
            }
        }
    }
}

#[derive(Debug)]
struct Room {
    mailboxes: [Option<Mail>; 2],
    /// Who wrote each mailbox's data (charged for it).
    writers: [Option<IpAddr>; 2],
    /// Who created the room (charged for its name).
    creator: IpAddr,
    last_active: Instant,
}

impl Room {
    fn bytes(&self, name: &str) -> usize {
        name.len()
            + self
                .mailboxes
                .iter()
                .flatten()
                .map(|(d, _)| d.len())
                .sum::<usize>()
    }
}

fn slot(role: Role) -> usize {
    match role {
        Role::Client => 0,
        Role::Server => 1,
    }
}

impl MemoryStore {
    pub(crate) fn new(
        notifier: Arc<Notifier>,
        ttl: Duration,
        max_rooms: usize,
        max_bytes: usize,
        max_bytes_per_client: usize,
    ) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            notifier,
            ttl,
            max_rooms,
            max_bytes,
            max_bytes_per_client,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the map consistent, so a panic elsewhere does
        // not make it unusable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A room is expired after `ttl` without requests, unless someone long-polls it.
    fn is_expired(&self, name: &str, room: &Room, now: Instant) -> bool {
        now.saturating_duration_since(room.last_active) >= self.ttl
            && !self.notifier.has_waiters(name)
    }

    /// The live room named `name`, touched; an expired one is removed on the spot.
    fn live<'a>(&self, inner: &'a mut Inner, name: &str, now: Instant) -> Option<&'a mut Room> {
        let room = inner.rooms.get(name)?;
        if self.is_expired(name, room, now) {
            inner.remove_room(name);
            return None;
        }
        let room = inner.rooms.get_mut(name)?;
        room.last_active = now;
        Some(room)
    }

    fn sweep(&self, inner: &mut Inner, now: Instant) -> usize {
        let expired: Vec<String> = inner
            .rooms
            .iter()
            .filter(|(name, room)| self.is_expired(name, room, now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            inner.remove_room(name);
        }
        expired.len()
    }

    fn post_now(
        &self,
        name: &str,
        role: Role,
        data: String,
        client: IpAddr,
        now: Instant,
    ) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let exists = self.live(&mut inner, name, now).is_some();
        let (old, old_writer) = inner
            .rooms
            .get(name)
            .map(|r| {
                let old = r.mailboxes[slot(role)].as_ref().map_or(0, |(d, _)| d.len());
                (old, r.writers[slot(role)])
            })
            .unwrap_or((0, None));
        let added = data.len() + if exists { 0 } else { name.len() };
        // What this client would hold afterwards (an overwrite of its own data is
        // charged only for the difference).
        let mine = inner.by_client.get(&client).copied().unwrap_or(0);
        let mine_after = mine + added - if old_writer == Some(client) { old } else { 0 };
        if self.max_bytes_per_client > 0 && mine_after > self.max_bytes_per_client {
            self.sweep(&mut inner, now);
            let mine = inner.by_client.get(&client).copied().unwrap_or(0);
            let mine_after = mine + added - if old_writer == Some(client) { old } else { 0 };
            if mine_after > self.max_bytes_per_client {
                return Err(StoreError::ClientFull(format!(
                    "this client address already holds {mine} bytes of offers, and this one \
                     would take it past its maximum of {} bytes; rooms it wrote free their \
                     bytes when they are deleted or expire",
                    self.max_bytes_per_client
                )));
            }
        }
        if (!exists && inner.rooms.len() >= self.max_rooms)
            || inner.bytes - old + added > self.max_bytes
        {
            // Expired rooms the sweeper has not reached yet should not cause a 503.
            self.sweep(&mut inner, now);
            if !exists && inner.rooms.len() >= self.max_rooms {
                return Err(StoreError::Full(format!(
                    "the rendezvous server holds its maximum of {} rooms; try again later",
                    self.max_rooms
                )));
            }
            if inner.bytes - old + added > self.max_bytes {
                return Err(StoreError::Full(format!(
                    "the rendezvous server holds its maximum of {} bytes of offers; try again later",
                    self.max_bytes
                )));
            }
        }
        inner.last_version += 1;
        let version = inner.last_version;
        inner.bytes = inner.bytes - old + added;
        // The room may have expired in a sweep above: look again.
        let exists = inner.rooms.contains_key(name);
        if let Some(w) = old_writer.filter(|_| exists) {
            inner.refund(w, old);
        }
        if !exists {
            inner.charge(client, name.len());
        }
        inner.charge(client, data.len());
        let room = inner.rooms.entry(name.to_owned()).or_insert_with(|| Room {
            mailboxes: [None, None],
            writers: [None, None],
            creator: client,
            last_active: now,
        });
        room.mailboxes[slot(role)] = Some((data, version));
        room.writers[slot(role)] = Some(client);
        drop(inner);
        self.notifier.notify(name, role);
        Ok(version)
    }

    fn get_now(&self, name: &str, role: Role, now: Instant) -> Option<Mail> {
        let mut inner = self.lock();
        let room = self.live(&mut inner, name, now)?;
        room.mailboxes[slot(role)].clone()
    }

    fn delete_now(&self, name: &str, role: Role, now: Instant) {
        let mut inner = self.lock();
        let Some(room) = self.live(&mut inner, name, now) else {
            return;
        };
        let freed = room.mailboxes[slot(role)]
            .take()
            .map_or(0, |(d, _)| d.len());
        let writer = room.writers[slot(role)].take();
        let empty = room.mailboxes.iter().all(Option::is_none);
        inner.bytes -= freed;
        if let Some(w) = writer {
            inner.refund(w, freed);
        }
        if empty && !self.notifier.has_waiters(name) {
            inner.remove_room(name);
        }
    }
}

impl Store for MemoryStore {
    fn post<'a>(
        &'a self,
        room: &'a str,
        role: Role,
        data: String,
        client: IpAddr,
    ) -> StoreFuture<'a, Result<u64, StoreError>> {
        let r = self.post_now(room, role, data, client, Instant::now());
        Box::pin(async move { r })
    }

    fn get<'a>(
        &'a self,
        room: &'a str,
        role: Role,
    ) -> StoreFuture<'a, Result<Option<Mail>, StoreError>> {
        let r = self.get_now(room, role, Instant::now());
        Box::pin(async move { Ok(r) })
    }

    fn delete<'a>(&'a self, room: &'a str, role: Role) -> StoreFuture<'a, Result<(), StoreError>> {
        self.delete_now(room, role, Instant::now());
        Box::pin(async { Ok(()) })
    }

    fn maintain(&self) -> StoreFuture<'_, Result<usize, StoreError>> {
        let mut inner = self.lock();
        let removed = self.sweep(&mut inner, Instant::now());
        let rooms = inner.rooms.len();
        drop(inner);
        if removed > 0 {
            tracing::debug!(removed, "rendezvous: expired rooms removed");
        }
        Box::pin(async move { Ok(rooms) })
    }

    fn rooms(&self) -> usize {
        self.lock().rooms.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);
    const ME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    /// Issue #14, finding 7: one noisy client cannot fill the store; what it holds is
    /// given back as its rooms go, and others keep posting.
    #[test]
    fn one_client_cannot_lock_others_out() {
        let s = MemoryStore::new(Arc::default(), TTL, 1000, 10_000, 1_000);
        let t0 = Instant::now();
        let data = "x".repeat(100);
        let mut posted = 0;
        for i in 0..100 {
            match s.post_now(&format!("noisy-{i}"), Role::Client, data.clone(), ME, t0) {
                Ok(_) => posted += 1,
                Err(StoreError::ClientFull(m)) => {
                    assert!(m.contains("1000 bytes"), "{m}");
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        // 100 bytes of data + 7 or 8 of room name each: 9 fit in 1000 bytes.
        assert_eq!(posted, 9);
        assert!(s.lock().by_client[&ME] <= 1000);
        // Someone else still gets in.
        s.post_now("quiet", Role::Server, data.clone(), OTHER, t0)
            .unwrap();
        // Overwriting its own mailbox is charged for the difference only.
        s.post_now("noisy-0", Role::Client, "y".repeat(100), ME, t0)
            .unwrap();
        // Deleting and expiry give the bytes back.
        s.delete_now("noisy-0", Role::Client, t0);
        s.post_now("noisy-new", Role::Client, data.clone(), ME, t0)
            .unwrap();
        s.post_now("later", Role::Client, data.clone(), ME, t0 + TTL)
            .unwrap();
        let inner = s.lock();
        assert_eq!(inner.by_client[&ME], "later".len() + 100);
        assert!(
            !inner.by_client.contains_key(&OTHER),
            "expired with its room"
        );
        assert_eq!(inner.bytes, "later".len() + 100);
    }

    fn store(max_rooms: usize, max_bytes: usize) -> MemoryStore {
        MemoryStore::new(Arc::default(), TTL, max_rooms, max_bytes, 0)
    }

    #[test]
    fn expired_rooms_are_invisible_before_the_sweep() {
        let s = store(10, 1 << 20);
        let t0 = Instant::now();
        s.post_now("r", Role::Client, "x".into(), ME, t0).unwrap();
        assert!(s.get_now("r", Role::Client, t0 + TTL / 2).is_some());
        // Touched at TTL/2, so alive until 1.5 TTL.
        assert!(s.get_now("r", Role::Client, t0 + TTL).is_some());
        assert!(s.get_now("r", Role::Client, t0 + TTL * 3).is_none());
        assert_eq!(s.rooms(), 0, "an expired room is dropped when seen");
        assert_eq!(s.lock().bytes, 0);
    }

    #[test]
    fn waiters_keep_a_room_alive() {
        let s = store(10, 1 << 20);
        let t0 = Instant::now();
        s.post_now("r", Role::Client, "x".into(), ME, t0).unwrap();
        let w = s.notifier.watch("r", Role::Server);
        assert_eq!(s.sweep(&mut s.lock(), t0 + TTL * 2), 0);
        drop(w);
        assert_eq!(s.sweep(&mut s.lock(), t0 + TTL * 2), 1);
    }

    #[test]
    fn full_store_reclaims_expired_rooms_first() {
        let s = store(1, 1 << 20);
        let t0 = Instant::now();
        s.post_now("a", Role::Client, "x".into(), ME, t0).unwrap();
        assert!(matches!(
            s.post_now("b", Role::Client, "x".into(), ME, t0),
            Err(StoreError::Full(_))
        ));
        s.post_now("a", Role::Server, "y".into(), ME, t0).unwrap();
        s.post_now("b", Role::Client, "x".into(), ME, t0 + TTL)
            .unwrap();
        assert_eq!(s.rooms(), 1);
    }

    #[test]
    fn bytes_are_bounded_and_accounted() {
        let s = store(100, 10);
        let t0 = Instant::now();
        s.post_now("r", Role::Client, "12345".into(), ME, t0)
            .unwrap(); // 1 + 5
        s.post_now("r", Role::Client, "123456789".into(), ME, t0)
            .unwrap(); // 1 + 9
        assert!(s.post_now("r", Role::Server, "1".into(), ME, t0).is_err());
        assert!(s.post_now("q", Role::Server, "".into(), ME, t0).is_err());
        s.delete_now("r", Role::Client, t0);
        assert_eq!(s.lock().bytes, 0);
        assert_eq!(s.rooms(), 0);
        s.post_now("r", Role::Server, "1".into(), ME, t0).unwrap();
        assert_eq!(s.lock().bytes, 2);
    }

    #[test]
    fn versions_never_repeat() {
        let s = store(10, 1 << 20);
        let t0 = Instant::now();
        let a = s.post_now("r", Role::Client, "x".into(), ME, t0).unwrap();
        s.delete_now("r", Role::Client, t0);
        let b = s.post_now("r", Role::Client, "x".into(), ME, t0).unwrap();
        assert!(b > a);
    }
}
