//! Parsing of mailbox requests, without sockets: the `POST` body and the `GET`/`DELETE`
//! query string (`room`, `role`, `wait`, `since`). The server calls these on every
//! request and the fuzz targets in `fuzz/` call them on arbitrary bytes, so they must
//! never panic and never allocate more than a small multiple of their input.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::proto::Role;

pub use crate::room::MAX_ROOM_LEN;

/// Response header carrying the mailbox version of the data returned by a `GET`.
pub const VERSION_HEADER: &str = "x-stunfwd-version";

/// Longest `wait` that parses (one day); servers cap it much lower.
const MAX_WAIT_SECS: f64 = 86_400.0;

/// A request the server refuses with `400`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRequest {}

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

/// A parsed mailbox `POST`: put `data` into `role`'s mailbox of `room`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// The room, 1 to the configured maximum bytes.
    pub room: String,
    /// Whose mailbox.
    pub role: Role,
    /// The data, stored and returned verbatim.
    pub data: String,
}

/// A parsed mailbox `GET` or `DELETE` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The room, 1 to the configured maximum bytes.
    pub room: String,
    /// Whose mailbox.
    pub role: Role,
    /// `wait`: long-poll up to this long (uncapped here; the server caps it).
    pub wait: Option<Duration>,
    /// `since`: answer only data whose version differs from this one.
    pub since: Option<u64>,
}

/// Body of a mailbox `POST`. Unknown fields are ignored.
#[derive(Deserialize)]
struct PostBody {
    room: String,
    role: String,
    data: String,
}

/// Parses a `POST` body `{"room": R, "role": "client"|"server", "data": STRING}`;
/// rooms longer than `max_room_len` bytes are refused.
pub fn parse_post(body: &[u8], max_room_len: usize) -> Result<Post, BadRequest> {
    let msg: PostBody = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "body must be JSON {{\"room\": string, \"role\": \"client\"|\"server\", \"data\": string}}: {e}"
        ))
    })?;
    check_room(&msg.room, max_room_len)?;
    let role = parse_role(&msg.role)?;
    Ok(Post {
        room: msg.room,
        role,
        data: msg.data,
    })
}

/// Parses the query string of a `GET` or `DELETE` (`application/x-www-form-urlencoded`,
/// without the `?`). The last of repeated parameters wins; unknown ones are ignored.
pub fn parse_query(query: &str, max_room_len: usize) -> Result<Query, BadRequest> {
    let mut room = None;
    let mut role = None;
    let mut wait = None;
    let mut since = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "room" => room = Some(v),
            "role" => role = Some(v),
            "wait" => wait = Some(v),
            "since" => since = Some(v),
            _ => {}
        }
    }
    let room = room.ok_or_else(|| bad("missing `room`"))?;
    check_room(&room, max_room_len)?;
    let role = parse_role(&role.ok_or_else(|| bad("missing `role`"))?)?;
    Ok(Query {
        room: room.into_owned(),
        role,
        wait: wait.map(|w| parse_wait(&w)).transpose()?,
        since: since.map(|s| parse_since(&s)).transpose()?,
    })
}

/// True when the query string names a room: `/healthz` and `/metrics` only answer
/// requests without one (a PHP-style mailbox may be mounted on any path).
pub fn names_a_room(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "room")
}

fn check_room(room: &str, max_room_len: usize) -> Result<(), BadRequest> {
    if room.is_empty() || room.len() > max_room_len {
        return Err(bad(format!(
            "`room` must be 1 to {max_room_len} bytes long, got {}",
            room.len()
        )));
    }
    Ok(())
}

fn parse_role(role: &str) -> Result<Role, BadRequest> {
    role.parse::<Role>()
        .map_err(|_| bad("`role` must be \"client\" or \"server\""))
}

/// Parses `wait`: a decimal number of seconds, 0 or more (values over a day count as a
/// day).
pub fn parse_wait(s: &str) -> Result<Duration, BadRequest> {
    match s.parse::<f64>() {
        Ok(w) if w.is_finite() && w >= 0.0 => Ok(Duration::from_secs_f64(w.min(MAX_WAIT_SECS))),
        _ => Err(bad("`wait` must be a number of seconds (0 or more)")),
    }
}

/// Parses `since`: a version number as returned in `x-stunfwd-version`.
pub fn parse_since(s: &str) -> Result<u64, BadRequest> {
    s.parse::<u64>()
        .map_err(|_| bad("`since` must be a version number as returned in x-stunfwd-version"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn post_bodies() {
        let p = parse_post(
            br#"{"room":"r","role":"server","data":"{\"x\":1}","extra":[1]}"#,
            128,
        )
        .unwrap();
        assert_eq!(p.room, "r");
        assert_eq!(p.role, Role::Server);
        assert_eq!(p.data, r#"{"x":1}"#);
        for body in [
            &b"{not json"[..],
            br#"{"room":"r","role":"client"}"#,
            br#"{"room":"r","role":"peer","data":"x"}"#,
            br#"{"room":"r","role":"client","data":5}"#,
            br#"{"room":"","role":"client","data":"x"}"#,
            br#"{"room":"abcd","role":"client","data":"x"}"#,
            b"\xff\xfe",
            b"",
        ] {
            assert!(
                parse_post(body, 3).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn queries() {
        let q = parse_query(
            "room=my+room%2F%C3%BC&role=client&wait=2.5&since=7&x=y",
            128,
        )
        .unwrap();
        assert_eq!(q.room, "my room/ü");
        assert_eq!(q.role, Role::Client);
        assert_eq!(q.wait, Some(Duration::from_millis(2500)));
        assert_eq!(q.since, Some(7));
        let q = parse_query("room=a&room=b&role=server", 128).unwrap();
        assert_eq!((q.room.as_str(), q.wait, q.since), ("b", None, None));
        for bad in [
            "",
            "role=client",
            "room=r",
            "room=r&role=x",
            "room=&role=client",
            "room=rrrr&role=client",
            "room=r&role=client&wait=soon",
            "room=r&role=client&since=-1",
            "room=%FF&role=client&wait=-1",
        ] {
            assert!(parse_query(bad, 3).is_err(), "{bad}");
        }
        assert!(names_a_room("a=1&room="));
        assert!(!names_a_room("roomy=1"));
    }

    #[test]
    fn wait_parsing() {
        assert_eq!(parse_wait("5").ok(), Some(Duration::from_secs(5)));
        assert_eq!(parse_wait("0.5").ok(), Some(Duration::from_millis(500)));
        assert!(parse_wait("-1").is_err());
        assert!(parse_wait("NaN").is_err());
        assert!(parse_wait("inf").is_err());
        assert!(parse_wait("soon").is_err());
        assert_eq!(parse_wait("1e300").ok(), Some(Duration::from_secs(86_400)));
    }
}
