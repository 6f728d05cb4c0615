//! The in-memory [`Store`]: one map of rooms behind a mutex. The default; state is lost
//! when the process exits and is not shared between instances.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::proto::Role;
use super::store::{Mail, Notifier, Store, StoreError, StoreFuture};

/// Rooms in memory, bounded by a room count and by the bytes of data held.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    inner: Mutex<Inner>,
    notifier: Arc<Notifier>,
    ttl: Duration,
    max_rooms: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    rooms: HashMap<String, Room>,
    /// Bytes of room names and data held, for the `max_bytes` bound.
    bytes: usize,
    /// Last version handed out. Versions are unique for the process's lifetime, so a
    /// mailbox's version never repeats, even when its room expires and comes back.
    last_version: u64,
}

#[derive(Debug)]
struct Room {
    mailboxes: [Option<Mail>; 2],
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
    ) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            notifier,
            ttl,
            max_rooms,
            max_bytes,
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
            inner.bytes -= room.bytes(name);
            inner.rooms.remove(name);
            return None;
        }
        let room = inner.rooms.get_mut(name)?;
        room.last_active = now;
        Some(room)
    }

    fn sweep(&self, inner: &mut Inner, now: Instant) -> usize {
        let before = inner.rooms.len();
        let mut freed = 0;
        inner.rooms.retain(|name, room| {
            let expired = self.is_expired(name, room, now);
            if expired {
                freed += room.bytes(name);
            }
            !expired
        });
        inner.bytes -= freed;
        before - inner.rooms.len()
    }

    fn post_now(
        &self,
        name: &str,
        role: Role,
        data: String,
        now: Instant,
    ) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let exists = self.live(&mut inner, name, now).is_some();
        let old = inner
            .rooms
            .get(name)
            .and_then(|r| r.mailboxes[slot(role)].as_ref())
            .map_or(0, |(d, _)| d.len());
        let added = data.len() + if exists { 0 } else { name.len() };
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
        let room = inner.rooms.entry(name.to_owned()).or_insert_with(|| Room {
            mailboxes: [None, None],
            last_active: now,
        });
        room.mailboxes[slot(role)] = Some((data, version));
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
        let empty = room.mailboxes.iter().all(Option::is_none);
        inner.bytes -= freed;
        if empty && !self.notifier.has_waiters(name) {
            inner.bytes -= name.len();
            inner.rooms.remove(name);
        }
    }
}

impl Store for MemoryStore {
    fn post<'a>(
        &'a self,
        room: &'a str,
        role: Role,
        data: String,
    ) -> StoreFuture<'a, Result<u64, StoreError>> {
        let r = self.post_now(room, role, data, Instant::now());
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

    fn store(max_rooms: usize, max_bytes: usize) -> MemoryStore {
        MemoryStore::new(Arc::default(), TTL, max_rooms, max_bytes)
    }

    #[test]
    fn expired_rooms_are_invisible_before_the_sweep() {
        let s = store(10, 1 << 20);
        let t0 = Instant::now();
        s.post_now("r", Role::Client, "x".into(), t0).unwrap();
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
        s.post_now("r", Role::Client, "x".into(), t0).unwrap();
        let w = s.notifier.watch("r", Role::Server);
        assert_eq!(s.sweep(&mut s.lock(), t0 + TTL * 2), 0);
        drop(w);
        assert_eq!(s.sweep(&mut s.lock(), t0 + TTL * 2), 1);
    }

    #[test]
    fn full_store_reclaims_expired_rooms_first() {
        let s = store(1, 1 << 20);
        let t0 = Instant::now();
        s.post_now("a", Role::Client, "x".into(), t0).unwrap();
        assert!(matches!(
            s.post_now("b", Role::Client, "x".into(), t0),
            Err(StoreError::Full(_))
        ));
        s.post_now("a", Role::Server, "y".into(), t0).unwrap();
        s.post_now("b", Role::Client, "x".into(), t0 + TTL).unwrap();
        assert_eq!(s.rooms(), 1);
    }

    #[test]
    fn bytes_are_bounded_and_accounted() {
        let s = store(100, 10);
        let t0 = Instant::now();
        s.post_now("r", Role::Client, "12345".into(), t0).unwrap(); // 1 + 5
        s.post_now("r", Role::Client, "123456789".into(), t0)
            .unwrap(); // 1 + 9
        assert!(s.post_now("r", Role::Server, "1".into(), t0).is_err());
        assert!(s.post_now("q", Role::Server, "".into(), t0).is_err());
        s.delete_now("r", Role::Client, t0);
        assert_eq!(s.lock().bytes, 0);
        assert_eq!(s.rooms(), 0);
        s.post_now("r", Role::Server, "1".into(), t0).unwrap();
        assert_eq!(s.lock().bytes, 2);
    }

    #[test]
    fn versions_never_repeat() {
        let s = store(10, 1 << 20);
        let t0 = Instant::now();
        let a = s.post_now("r", Role::Client, "x".into(), t0).unwrap();
        s.delete_now("r", Role::Client, t0);
        let b = s.post_now("r", Role::Client, "x".into(), t0).unwrap();
        assert!(b > a);
    }
}
