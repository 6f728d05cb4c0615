//! Per-client limits of the rendezvous server: a request-rate token bucket per client
//! address, and counted slots (concurrent long-polls, open connections) with a global
//! and a per-address cap. Pure bookkeeping with explicit time, so it is unit-tested
//! without sockets or sleeps.
//!
//! IPv6 clients are keyed by their /64, since one host usually holds a whole /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Most client addresses tracked by the rate limiter. When full, the least recently
/// seen client is forgotten (it had the most time to refill, so forgetting it costs it
/// the least): every client keeps a bucket of its own, and a new one costs O(1).
const MAX_TRACKED: usize = 100_000;

/// The key a client address is limited under: IPv4 as is, IPv6 by its /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per client: `rate` requests per second on average, bursts of up to
/// `burst`. A rate of 0 disables the limit. Buckets live in an LRU map of at most
/// [`MAX_TRACKED`] clients.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<lru::LruCache<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub(crate) fn new(rate_per_sec: u32, burst: u32) -> RateLimiter {
        RateLimiter::with_capacity(rate_per_sec, burst, MAX_TRACKED)
    }

    fn with_capacity(rate_per_sec: u32, burst: u32, tracked: usize) -> RateLimiter {
        let cap =
            std::num::NonZeroUsize::new(tracked.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        RateLimiter {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(lru::LruCache::new(cap)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, lru::LruCache<IpAddr, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one token for `ip` at `now`; `Err(retry_after)` when there is none.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let key = client_key(ip);
        let mut buckets = self.lock();
        let bucket = buckets.get_or_insert_mut(key, || Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// Periodic housekeeping: forgets clients whose buckets have refilled completely
    /// (they are the same as no bucket), oldest first, so an idle server holds nothing.
    pub(crate) fn sweep(&self, now: Instant) {
        if self.rate <= 0.0 {
            return;
        }
        let refill = Duration::from_secs_f64(self.burst / self.rate);
        let mut buckets = self.lock();
        while let Some((_, oldest)) = buckets.peek_lru() {
            if now.saturating_duration_since(oldest.at) < refill {
                break;
            }
            buckets.pop_lru();
        }
    }

    /// Clients currently tracked.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// Counted slots (long-polls, connections) with a cap in total and per client; 0 means
/// no cap. A taken slot is a [`Slot`] that gives itself back when dropped.
#[derive(Debug)]
pub(crate) struct Slots {
    max_total: usize,
    max_per_client: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRefused {
    /// The server-wide cap is reached.
    Total(usize),
    /// This client's cap is reached.
    PerClient(usize),
}

impl Slots {
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max_total,
            max_per_client,
            held: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for `ip`, unless a cap is reached.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, SlotRefused> {
        let key = client_key(ip);
        let mut held = self.lock();
        if self.max_total > 0 && held.0 >= self.max_total {
            return Err(SlotRefused::Total(self.max_total));
        }
        let mine = held.1.get(&key).copied().unwrap_or(0);
        if self.max_per_client > 0 && mine >= self.max_per_client {
            return Err(SlotRefused::PerClient(self.max_per_client));
        }
        held.0 += 1;
        held.1.insert(key, mine + 1);
        Ok(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Slots held now.
    pub(crate) fn held(&self) -> usize {
        self.lock().0
    }
}

/// One taken slot; released on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        held.0 = held.0.saturating_sub(1);
        if let Some(n) = held.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.1.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_allows_bursts_then_the_rate() {
        let l = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.check(ip("10.0.0.1"), t0).is_ok());
        }
        let retry = l.check(ip("10.0.0.1"), t0).unwrap_err();
        assert!(retry > Duration::ZERO && retry <= Duration::from_millis(100));
        assert!(l.check(ip("10.0.0.2"), t0).is_ok(), "per client");
        assert!(l
            .check(ip("10.0.0.1"), t0 + Duration::from_millis(100))
            .is_ok());
        assert!(l
            .check(ip("10.0.0.1"), t0 + Duration::from_millis(100))
            .is_err());
        // Refilled completely after burst / rate, and then forgotten by the sweep.
        l.sweep(t0 + Duration::from_secs(1));
        assert_eq!(l.tracked(), 0);
        assert!(RateLimiter::new(0, 0).check(ip("10.0.0.1"), t0).is_ok());
    }

    /// Issue #14, finding 7: with the table full, a flood of new addresses neither
    /// makes new clients share a bucket nor costs a scan per client; the least recently
    /// seen client is forgotten.
    #[test]
    fn a_full_table_keeps_new_clients_independent() {
        let l = RateLimiter::with_capacity(1, 2, 1000);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            assert!(l.check(IpAddr::from(i.to_be_bytes()), t0).is_ok());
        }
        assert_eq!(l.tracked(), 1000);
        // New clients each get their own full bucket, also while the table is full.
        for i in 0..50u32 {
            let ip = IpAddr::from((10_000 + i).to_be_bytes());
            assert!(l.check(ip, t0).is_ok());
            assert!(l.check(ip, t0).is_ok(), "burst of 2");
            assert!(l.check(ip, t0).is_err(), "its own bucket, now empty");
        }
        assert_eq!(l.tracked(), 1000, "bounded");
        // A busy client stays tracked (recently used) while idle ones are forgotten.
        let busy = ip("192.0.2.1");
        assert!(l.check(busy, t0).is_ok());
        assert!(l.check(busy, t0).is_ok());
        for i in 0..2000u32 {
            let _ = l.check(IpAddr::from((50_000 + i).to_be_bytes()), t0);
            if i % 100 == 0 {
                assert!(
                    l.check(busy, t0).is_err(),
                    "still limited after {i} strangers"
                );
            }
        }
    }

    #[test]
    fn ipv6_is_limited_per_64() {
        let l = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        assert!(l.check(ip("2001:db8::1"), t0).is_ok());
        assert!(l.check(ip("2001:db8::2"), t0).is_err());
        assert!(l.check(ip("2001:db8:0:1::1"), t0).is_ok());
        assert_eq!(client_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
    }

    #[test]
    fn slots_cap_total_and_per_client() {
        let s = Slots::new(3, 2);
        let a1 = s.take(ip("10.0.0.1")).unwrap();
        let _a2 = s.take(ip("10.0.0.1")).unwrap();
        assert_eq!(
            s.take(ip("10.0.0.1")).unwrap_err(),
            SlotRefused::PerClient(2)
        );
        let _b1 = s.take(ip("10.0.0.2")).unwrap();
        assert_eq!(s.take(ip("10.0.0.3")).unwrap_err(), SlotRefused::Total(3));
        drop(a1);
        assert_eq!(s.held(), 2);
        let _c = s.take(ip("10.0.0.3")).unwrap();
        let unlimited = Slots::new(0, 0);
        let many: Vec<_> = (0..100)
            .map(|_| unlimited.take(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(unlimited.held(), 100);
        drop(many);
        assert_eq!(unlimited.held(), 0);
        assert!(unlimited.lock().1.is_empty());
    }
}
