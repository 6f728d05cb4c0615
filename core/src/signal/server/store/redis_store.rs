//! The Redis [`Store`]: rooms live in Redis so that several server instances behind a
//! load balancer act as one.
//!
//! Layout, under a configurable prefix `P` (default `stunfwd:`):
//!
//! * `P room:<room>`: a hash with fields `client`, `client:v`, `server`, `server:v` (data
//!   and version of each mailbox), with a TTL of the room lifetime renewed on every
//!   request naming the room. Redis removes it on expiry.
//! * `P rooms`: a sorted set of room names scored by their expiry time (Redis `TIME`,
//!   milliseconds), used to bound the number of rooms and to count them.
//! * `P version`: the version counter (`INCR`), shared by every instance.
//! * channel `P posted:<role>:<room>`: every `POST` publishes the new version there;
//!   each instance has one pattern subscription (`P posted:*`) and wakes its own
//!   long-polls of that mailbox.
//!
//! Every operation is one Lua script, so it is atomic across instances. Long-polls also
//! re-read their mailbox every few seconds, so a notification lost while the pub/sub
//! connection reconnects delays an answer but never loses it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::task::JoinHandle;

use super::{redact, Mail, Notifier, Store, StoreError, StoreFuture};
use crate::signal::proto::Role;
use crate::{Error, Result};

/// Connect and per-command timeout.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest pause between two attempts to re-establish the pub/sub connection.
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);

/// `POST`: create (bounded by the room count) or touch the room, store data and a new
/// version, publish it. Returns the version, or -1 when the store is full.
const POST_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZSCORE', KEYS[2], ARGV[1]) == false
     and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
    return -1
  end
end
local v = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3], ARGV[2] .. ':v', v)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PUBLISH', ARGV[6], v)
return v
";

/// `GET`: the mailbox's data and version (nil when absent); touches an existing room.
const GET_SCRIPT: &str = r"
local d = redis.call('HMGET', KEYS[1], ARGV[2], ARGV[2] .. ':v')
if redis.call('EXISTS', KEYS[1]) == 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
end
return d
";

/// `DELETE`: drop the mailbox; Redis removes the emptied hash, the script its index
/// entry; a room that still has data is touched.
const DELETE_SCRIPT: &str = r"
redis.call('HDEL', KEYS[1], ARGV[2], ARGV[2] .. ':v')
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
end
return 1
";

/// Housekeeping: forget expired rooms in the index, count the rest.
const COUNT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
";

/// Rooms in Redis. Dropping it stops its pub/sub listener.
pub(crate) struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    max_rooms: usize,
    rooms: AtomicUsize,
    post: redis::Script,
    get: redis::Script,
    delete: redis::Script,
    count: redis::Script,
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Escapes the glob characters of a `PSUBSCRIBE` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Runs one store command with [`REDIS_TIMEOUT`] on top of the connection's own, so a
/// request never hangs on a Redis that does not answer.
async fn bounded<T>(
    what: &str,
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REDIS_TIMEOUT, command).await {
        Ok(r) => r.map_err(|e| unavailable(what, e)),
        Err(_) => Err(unavailable(what, "timed out")),
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!(
        "the rendezvous server's Redis store failed ({what}: {e}); try again later"
    ))
}

impl RedisStore {
    /// Connects to Redis at `url` and subscribes to post notifications, so that a post
    /// on any instance made after this returns wakes our long-polls.
    pub(crate) async fn connect(
        url: &str,
        prefix: &str,
        notifier: Arc<Notifier>,
        ttl: Duration,
        max_rooms: usize,
    ) -> Result<RedisStore> {
        let cannot = |e: &dyn std::fmt::Display| {
            Error::Signal(format!(
                "cannot use the Redis store at {}: {e}",
                redact(url)
            ))
        };
        let client = redis::Client::open(url).map_err(|e| {
            Error::config(
                "store",
                redact(url),
                format!("not a Redis URL ({e})"),
                "redis://host:port or redis://user:password@host:port/db",
            )
        })?;
        // One reconnect attempt per failed command, after 1 s (the crate's backoff
        // starts at 1 s and multiplies by `factor`; capped at `max_delay` ms).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1)
            .set_factor(2)
            .set_max_delay(1000);
        let mut conn = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| cannot(&"connect timed out"))?
        .map_err(|e| cannot(&e))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| cannot(&e))?;

        let pattern = format!("{}posted:*", glob_escape(prefix));
        let pubsub = subscribe(&client, &pattern).await.map_err(|e| cannot(&e))?;
        let channel_prefix = format!("{prefix}posted:");
        let listener = tokio::spawn(listen(
            client,
            pattern,
            channel_prefix,
            pubsub,
            Arc::downgrade(&notifier),
        ));

        let store = RedisStore {
            conn,
            prefix: prefix.to_owned(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            max_rooms,
            rooms: AtomicUsize::new(0),
            post: redis::Script::new(POST_SCRIPT),
            get: redis::Script::new(GET_SCRIPT),
            delete: redis::Script::new(DELETE_SCRIPT),
            count: redis::Script::new(COUNT_SCRIPT),
            listener,
        };
        store
            .maintain()
            .await
            .map_err(|e| cannot(&format!("{e:?}")))?;
        Ok(store)
    }

    fn room_key(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}rooms", self.prefix)
    }

    fn channel(&self, room: &str, role: Role) -> String {
        format!("{}posted:{}:{room}", self.prefix, role.as_str())
    }
}

async fn subscribe(
    client: &redis::Client,
    pattern: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.psubscribe(pattern).await?;
        Ok(pubsub)
    };
    match tokio::time::timeout(REDIS_TIMEOUT, connect).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "pub/sub subscribe timed out",
        ))),
    }
}

/// Wakes local long-polls on every post notification; re-subscribes when the pub/sub
/// connection breaks (and then wakes every long-poll, since notifications may have been
/// missed). Ends when the notifier is gone.
async fn listen(
    client: redis::Client,
    pattern: String,
    channel_prefix: String,
    first: redis::aio::PubSub,
    notifier: std::sync::Weak<Notifier>,
) {
    let mut pubsub = Some(first);
    let mut pause = Duration::from_millis(100);
    loop {
        if let Some(ps) = pubsub.take() {
            let mut messages = ps.into_on_message();
            while let Some(msg) = messages.next().await {
                let Some(notifier) = notifier.upgrade() else {
                    return;
                };
                let channel: Vec<u8> = msg.get_channel().unwrap_or_default();
                let Some(rest) = channel.strip_prefix(channel_prefix.as_bytes()) else {
                    continue;
                };
                let (role, room) = match rest.iter().position(|b| *b == b':') {
                    Some(i) => (&rest[..i], &rest[i + 1..]),
                    None => continue,
                };
                let (Ok(role), Ok(room)) = (
                    std::str::from_utf8(role).map(str::parse::<Role>),
                    std::str::from_utf8(room),
                ) else {
                    continue;
                };
                if let Ok(role) = role {
                    notifier.notify(room, role);
                }
            }
            tracing::warn!("rendezvous: Redis pub/sub connection lost; re-subscribing");
        }
        let Some(n) = notifier.upgrade() else {
            return;
        };
        n.notify_all();
        drop(n);
        tokio::time::sleep(pause).await;
        match subscribe(&client, &pattern).await {
            Ok(ps) => {
                tracing::info!("rendezvous: Redis pub/sub re-subscribed");
                pubsub = Some(ps);
                pause = Duration::from_millis(100);
                if let Some(n) = notifier.upgrade() {
                    n.notify_all();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "rendezvous: Redis pub/sub re-subscribe failed");
                pause = (pause * 2).min(RESUBSCRIBE_MAX);
            }
        }
    }
}

impl Store for RedisStore {
    fn post<'a>(
        &'a self,
        room: &'a str,
        role: Role,
        data: String,
        _client: std::net::IpAddr,
    ) -> StoreFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut script = self.post.prepare_invoke();
            script
                .key(self.room_key(room))
                .key(self.index_key())
                .key(format!("{}version", self.prefix))
                .arg(room)
                .arg(role.as_str())
                .arg(data)
                .arg(self.ttl_ms)
                .arg(self.max_rooms)
                .arg(self.channel(room, role));
            let v: i64 = bounded("POST", script.invoke_async(&mut conn)).await?;
            if v < 0 {
                return Err(StoreError::Full(format!(
                    "the rendezvous server holds its maximum of {} rooms; try again later",
                    self.max_rooms
                )));
            }
            Ok(v.unsigned_abs())
        })
    }

    fn get<'a>(
        &'a self,
        room: &'a str,
        role: Role,
    ) -> StoreFuture<'a, Result<Option<Mail>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut script = self.get.prepare_invoke();
            script
                .key(self.room_key(room))
                .key(self.index_key())
                .arg(room)
                .arg(role.as_str())
                .arg(self.ttl_ms);
            let (data, version): (Option<Vec<u8>>, Option<u64>) =
                bounded("GET", script.invoke_async(&mut conn)).await?;
            Ok(match (data, version) {
                (Some(d), Some(v)) => Some((String::from_utf8_lossy(&d).into_owned(), v)),
                _ => None,
            })
        })
    }

    fn delete<'a>(&'a self, room: &'a str, role: Role) -> StoreFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut script = self.delete.prepare_invoke();
            script
                .key(self.room_key(room))
                .key(self.index_key())
                .arg(room)
                .arg(role.as_str())
                .arg(self.ttl_ms);
            let _: i64 = bounded("DELETE", script.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn maintain(&self) -> StoreFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut script = self.count.prepare_invoke();
            script.key(self.index_key());
            let n: usize = bounded("counting rooms", script.invoke_async(&mut conn)).await?;
            self.rooms.store(n, Ordering::Relaxed);
            Ok(n)
        })
    }

    fn rooms(&self) -> usize {
        self.rooms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
