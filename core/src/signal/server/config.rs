//! [`SignalServerConfig`]: the server's settings, their defaults and their checks.

use std::net::SocketAddr;
use std::time::Duration;

use super::{StoreConfig, TlsFiles, MAX_ROOM_LEN};
use crate::{Error, Result};

/// Settings of a [`SignalServer`](super::SignalServer). Every limit has a default fit for a public server;
/// a limit of 0 means "unlimited" where noted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalServerConfig {
    /// HTTP(S) listen address (port 0 picks a free port).
    pub http: SocketAddr,
    /// UDP address of the STUN responder; `None` runs no STUN responder.
    pub stun: Option<SocketAddr>,
    /// Where rooms are kept. Default: in memory.
    pub store: StoreConfig,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// A room with no activity (request, or pending long-poll) for this long is removed.
    pub room_ttl: Duration,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body: usize,
    /// Cap on the `wait` a client may ask for.
    pub max_wait: Duration,
    /// Most rooms held at once; creating one more gets 503.
    pub max_rooms: usize,
    /// Longest room name accepted, in bytes (at most [`MAX_ROOM_LEN`]); longer gets 400.
    pub max_room_len: usize,
    /// Most bytes of room names and data the memory store holds; more gets 503. (Bound
    /// a Redis store with Redis's own `maxmemory`.)
    pub max_store_bytes: usize,
    /// Most bytes of offers (data plus room names) that one client address (an IPv6
    /// /64) may hold in the memory store at once; further posts get `429`. 0 = no
    /// bound. Default 4 MiB: a few thousand peers behind one address. (With Redis,
    /// bound its memory with Redis's own `maxmemory`.)
    pub max_bytes_per_client: usize,
    /// Requests per second each client address may make on average (IPv6: per /64);
    /// more get 429 with `Retry-After`. 0: unlimited. `/healthz` and `/metrics` are
    /// not limited.
    pub rate_per_ip: u32,
    /// Requests a client address may make in a burst above `rate_per_ip`.
    pub burst_per_ip: u32,
    /// Most long-polls waiting at once on this instance; more get 429. 0: unlimited.
    pub max_polls: usize,
    /// Most long-polls waiting at once per client address; more get 429. 0: unlimited.
    pub max_polls_per_ip: usize,
    /// Most open connections; more are closed at once. 0: unlimited.
    pub max_connections: usize,
    /// Most open connections per client address; more are closed at once. 0: unlimited.
    pub max_connections_per_ip: usize,
    /// A request head (and a TLS handshake) must arrive within this time; an idle
    /// keep-alive connection is closed after it.
    pub header_timeout: Duration,
    /// A request body must arrive within this time; a slower one gets 408.
    pub body_timeout: Duration,
    /// Largest request head (request line and headers), in bytes, at least 8 KiB;
    /// larger gets 431.
    pub max_header_bytes: usize,
    /// Take the client address from the last entry of `X-Forwarded-For` (for limits)
    /// instead of the TCP peer. Only for servers that are reachable solely through a
    /// reverse proxy or load balancer that appends that header.
    pub trust_forwarded_for: bool,
}

impl Default for SignalServerConfig {
    /// Loopback on free ports, in-memory store, plain HTTP, 5 min room TTL, 16 KiB
    /// bodies, 30 s long-polls, 100 000 rooms of up to 128 bytes, 256 MiB of data,
    /// 20 requests/s per client with bursts of 100, 10 000 long-polls (100 per client),
    /// 10 000 connections (256 per client), 10 s for a request head or body, 16 KiB
    /// heads.
    fn default() -> Self {
        SignalServerConfig {
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            stun: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            store: StoreConfig::Memory,
            tls: None,
            room_ttl: Duration::from_secs(5 * 60),
            max_body: 16 * 1024,
            max_wait: Duration::from_secs(30),
            max_rooms: 100_000,
            max_room_len: MAX_ROOM_LEN,
            max_store_bytes: 256 * 1024 * 1024,
            max_bytes_per_client: 4 * 1024 * 1024,
            rate_per_ip: 20,
            burst_per_ip: 100,
            max_polls: 10_000,
            max_polls_per_ip: 100,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            trust_forwarded_for: false,
        }
    }
}

impl SignalServerConfig {
    /// Refuses values no server can run with, before anything is bound or connected.
    pub(super) fn check(&self) -> Result<()> {
        let c = self;
        let positive = |key: &str, ok: bool, value: String, expected: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::config(key, value, "out of range", expected))
            }
        };
        positive(
            "max_room_len",
            (1..=MAX_ROOM_LEN).contains(&c.max_room_len),
            c.max_room_len.to_string(),
            &format!("1 to {MAX_ROOM_LEN} bytes"),
        )?;
        positive(
            "max_body",
            c.max_body >= 64,
            c.max_body.to_string(),
            "64 bytes or more",
        )?;
        positive(
            "max_rooms",
            c.max_rooms >= 1,
            c.max_rooms.to_string(),
            "1 or more",
        )?;
        positive(
            "room_ttl",
            c.room_ttl >= Duration::from_millis(100),
            format!("{:?}", c.room_ttl),
            "100 ms or more",
        )?;
        positive(
            "header_timeout",
            !c.header_timeout.is_zero() && !c.body_timeout.is_zero(),
            format!("{:?} / {:?}", c.header_timeout, c.body_timeout),
            "header and body timeouts above zero",
        )?;
        if let StoreConfig::Redis { url, prefix } = &c.store {
            if !cfg!(feature = "redis") {
                return Err(no_redis_store(url));
            }
            positive(
                "redis prefix",
                prefix.len() <= 64,
                prefix.clone(),
                "at most 64 bytes",
            )?;
        }
        Ok(())
    }
}

/// The error for a Redis store in a build without the `redis` feature (the C, Python
/// and Node packages): named as a config error, never a silent fallback to memory.
pub(super) fn no_redis_store(url: &str) -> Error {
    Error::config(
        "store",
        super::store::redact(url),
        "this build has no Redis store",
        "the in-memory store; for Redis, use the stunfwd CLI (built with the `redis` feature)",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        assert!(SignalServerConfig::default().check().is_ok());
        for bad in [
            SignalServerConfig {
                max_room_len: 0,
                ..SignalServerConfig::default()
            },
            SignalServerConfig {
                max_room_len: 129,
                ..SignalServerConfig::default()
            },
            SignalServerConfig {
                max_rooms: 0,
                ..SignalServerConfig::default()
            },
            SignalServerConfig {
                body_timeout: Duration::ZERO,
                ..SignalServerConfig::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redis_is_refused_by_name_without_the_feature() {
        let url = "redis://user:hunter2@127.0.0.1:6379/0";
        let config = SignalServerConfig {
            store: StoreConfig::redis(url),
            ..SignalServerConfig::default()
        };
        if cfg!(feature = "redis") {
            assert!(config.check().is_ok());
        } else {
            assert_eq!(config.check().unwrap_err(), no_redis_store(url));
        }
        let message = no_redis_store(url).to_string();
        assert!(
            message.contains("this build has no Redis store"),
            "{message}"
        );
        assert!(message.contains("`redis` feature"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
