//! Wire types of the rendezvous protocol: peer roles, the room key and the
//! authenticated *offer* each peer posts to its mailbox.
//!
//! Everything here is pure (no I/O) so the security-relevant parts — key derivation,
//! the offer MAC and the strict decoder — are unit-tested without sockets. The exact
//! byte formats are specified in `docs/protocol.md`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

mod canonical;
mod fields;
use canonical::Canonical;
use fields::{count_field, is_lower_hex, malformed, ports_field, str_field, text_field, truncate};

type HmacSha256 = Hmac<Sha256>;

/// The only offer version this build reads and writes. Version 1 (whose MAC input was
/// ambiguous) is refused with [`OfferError::OldVersion`].
pub const OFFER_VERSION: u64 = 2;

/// How far an offer's timestamp may be from the receiver's clock, either way. A waiting
/// peer posts a new offer at least every ~70 s (one 60 s wait plus a backoff), so peers
/// whose clocks differ by up to about 3.5 minutes still meet; an offer left in a
/// mailbox for longer than this is refused as stale.
pub const OFFER_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// Most nonces an [`OfferGuard`] remembers.
pub const MAX_NONCES: usize = 4096;

/// Largest encoded offer [`Offer::decode`] accepts, in bytes (the rendezvous server's
/// body limit, so an offer that fits the server also fits here).
pub const MAX_OFFER_LEN: usize = 16 * 1024;

/// Most candidates an offer may carry.
pub const MAX_CANDIDATES: usize = 32;

/// Length in hex characters of an offer id (16 random bytes).
const ID_HEX_LEN: usize = 32;

/// Length in hex characters of a certificate fingerprint (SHA-256).
const FP_HEX_LEN: usize = 64;

/// Domain-separation tag that starts the offer MAC's canonical bytes.
const OFFER_MAC_DOMAIN: &[u8] = b"stunfwd-offer-v2\0";

/// Domain-separation message of the mailbox name derivation.
const MAILBOX_DOMAIN: &str = "stunfwd/v2/mailbox";
/// Domain of a client's own mailbox name.
const CLIENT_MAILBOX_DOMAIN: &str = "stunfwd/v2/mailbox/client/";

/// Domain-separation prefix of the room key derivation.
const ROOM_KEY_DOMAIN: &str = "stunfwd/v1/";

/// Which end of the tunnel a peer is: the client listens locally and dials through the
/// tunnel, the server accepts the tunnel and dials its allowed targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The peer that opens the QUIC connection and owns the local listeners.
    Client,
    /// The peer that accepts the QUIC connection and dials the mapped targets.
    Server,
}

impl Role {
    /// The wire name: `"client"` or `"server"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }

    /// The other role: the one whose mailbox a peer of this role reads.
    pub fn peer(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = crate::Error;

    /// Parses the wire name exactly (`"client"` or `"server"`).
    fn from_str(s: &str) -> Result<Role, crate::Error> {
        match s {
            "client" => Ok(Role::Client),
            "server" => Ok(Role::Server),
            other => Err(crate::Error::Signal(format!(
                "unknown role `{}`: expected `client` or `server`",
                other.escape_debug()
            ))),
        }
    }
}

/// The 32-byte key shared by the two peers of a room. It authenticates offers (their
/// MAC) and the STUN connectivity checks (as the short-term credential password).
///
/// `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct RoomKey([u8; 32]);

impl RoomKey {
    /// Derives the room key: HMAC-SHA256(key = `secret` or, without one, `room`;
    /// message = `"stunfwd/v1/" + room`).
    ///
    /// An empty secret counts as no secret, so a peer configured with `secret: ""` and
    /// one with no secret at all derive the same key. Without a secret anybody who
    /// knows the room name (the rendezvous operator included) can derive the key.
    pub fn derive(room: &str, secret: Option<&str>) -> RoomKey {
        let key = match secret {
            Some(s) if !s.is_empty() => s.as_bytes(),
            _ => room.as_bytes(),
        };
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(ROOM_KEY_DOMAIN.as_bytes());
        mac.update(room.as_bytes());
        RoomKey(mac.finalize().into_bytes().into())
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The STUN short-term credential password for connectivity checks: the key as
    /// 64 lowercase hex characters.
    pub fn stun_password(&self) -> String {
        hex::encode(self.0)
    }

    /// The room name the rendezvous server sees when the peers share a secret: 64 hex
    /// characters, HMAC-SHA256(room key, `"stunfwd/v2/mailbox"`). Without the secret,
    /// knowing the room name finds nothing on the server.
    pub fn mailbox_name(&self) -> String {
        let mut mac = self.mac();
        mac.update(MAILBOX_DOMAIN.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The mailbox of one client of the room (issue #18): 64 hex characters,
    /// HMAC-SHA256(room key, `"stunfwd/v2/mailbox/client/"` + `client`). Only the
    /// client and the server peer (which reads `client` from its knock) can name it.
    pub fn client_mailbox(&self, client: &str) -> String {
        let mut mac = self.mac();
        mac.update(CLIENT_MAILBOX_DOMAIN.as_bytes());
        mac.update(client.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoomKey(..)")
    }
}

/// What a peer tells the other through the rendezvous server: how to reach it and
/// which certificate it will present. Authenticated with the room key, bound to the
/// room and the sender's role, and fresh: a nonce and a timestamp let the receiver
/// refuse replays and stale offers ([`OfferGuard`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The sender's role.
    pub role: Role,
    /// Session id: 32 lowercase hex characters (16 random bytes), new for every
    /// connection attempt. Used in the STUN USERNAME of connectivity checks.
    pub id: String,
    /// 32 lowercase hex characters (16 random bytes), new for every offer posted.
    pub nonce: String,
    /// When the offer was made: seconds since the Unix epoch, sender's clock.
    pub ts: u64,
    /// Addresses the peer can be reached at (host, server-reflexive, relayed), at most
    /// [`MAX_CANDIDATES`].
    pub candidates: Vec<SocketAddr>,
    /// How many of the first `candidates` are the peer's own interface (host) addresses;
    /// the rest are server-reflexive or relayed. Lets the other side tell a LAN path
    /// from a direct one.
    pub host_count: usize,
    /// How many of the last `candidates` are relayed (TURN) addresses.
    pub relay_count: usize,
    /// The peer can allocate a TURN relay (it has one configured and may use it).
    pub turn: bool,
    /// SHA-256 fingerprint of the peer's certificate DER: 64 lowercase hex characters.
    pub fp: String,
    /// The NAT type the peer detected, informational (e.g. `"full-cone"`, `"symmetric"`).
    pub nat: String,
    /// Port prediction, client (issue #17): the public ports the client's NAT will give
    /// its prediction socket's next mappings, most likely first (at most
    /// [`MAX_PREDICTED`]; empty: its NAT allocates no predictable port). Only in the
    /// offer a client posts when both NATs are symmetric.
    pub predict: Option<Vec<u16>>,
    /// Port prediction, server: the public ports the server's NAT gave its comb of
    /// sockets, one toward each port of the client's `predict`, in that order (empty:
    /// no comb). Only in the offer a server posts in answer to a `predict`.
    pub comb: Option<Vec<u16>>,
    /// Many clients (issue #18): the client this offer is from or for, 32 lowercase hex
    /// characters chosen by the client for its engine's life. Every offer in a
    /// client's own mailbox names it, so an offer made for one client is refused in
    /// another's; `None` only in the server's announcement in the room's mailbox.
    pub client: Option<String>,
    /// The server refuses this client, and says why (for example: it serves its
    /// maximum of clients); at most [`MAX_REFUSAL_LEN`] bytes.
    pub refused: Option<String>,
}

/// Most ports in an offer's `predict` or `comb`.
pub const MAX_PREDICTED: usize = 32;

/// Longest refusal reason in an offer.
pub const MAX_REFUSAL_LEN: usize = 200;

/// Why an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not a well-formed version-2 offer.
    #[error("malformed offer: {0}; the peer runs an incompatible stunfwd or the rendezvous server mangled the data")]
    Malformed(String),
    /// A version-1 offer: its MAC could be altered without the secret.
    #[error("the peer runs an older stunfwd (offer version 1, which is no longer accepted); upgrade it to the same version as this one")]
    OldVersion,
    /// A well-formed offer of a version this build does not speak.
    #[error("offer version {0} is not supported (this build speaks version 2); run the same stunfwd version on both peers")]
    UnsupportedVersion(u64),
    /// The MAC does not verify under our room key (and room).
    #[error("offer MAC does not verify: the peer uses a different secret or room, or the rendezvous server altered it")]
    BadMac,
    /// Authentic, but sent by a peer of the wrong role (e.g. our own offer reflected
    /// back, or a second peer of our role).
    #[error("offer from a {got} peer where a {expected} peer was expected: a reflected or misplaced offer")]
    WrongRole {
        /// The role the offer names.
        got: Role,
        /// The role we read.
        expected: Role,
    },
    /// Authentic, but made too long ago or too far in the future.
    #[error("stale offer: made {age} s from now by the sender's clock, outside the ±{window} s window (an old offer still in the mailbox, a replay, or clocks that differ by minutes)")]
    Stale {
        /// Receiver's clock minus the offer's timestamp, in seconds (negative: from
        /// the future).
        age: i64,
        /// The window, in seconds.
        window: u64,
    },
    /// Authentic and fresh, but its nonce was accepted before.
    #[error("replayed offer: its nonce was already accepted")]
    Replayed,
    /// Authentic, but made for another client of the room (or for none): a misplaced
    /// or replayed offer.
    #[error("offer for {got} where one for client {expected} was expected: a misplaced or replayed offer")]
    WrongClient {
        /// The client the offer names (`no client` when it names none).
        got: String,
        /// The client we are, or serve.
        expected: String,
    },
}

impl From<OfferError> for crate::Error {
    fn from(e: OfferError) -> crate::Error {
        match e {
            OfferError::BadMac
            | OfferError::WrongRole { .. }
            | OfferError::Stale { .. }
            | OfferError::Replayed
            | OfferError::WrongClient { .. } => crate::Error::PeerAuth(e.to_string()),
            OfferError::Malformed(_)
            | OfferError::OldVersion
            | OfferError::UnsupportedVersion(_) => crate::Error::Signal(e.to_string()),
        }
    }
}

/// The JSON shape written by [`Offer::encode`]; field order is the wire order. Every
/// field is always present.
#[derive(Serialize)]
struct WireOffer<'a> {
    v: u64,
    role: &'a str,
    id: &'a str,
    nonce: &'a str,
    ts: u64,
    candidates: &'a [String],
    host: usize,
    relay: usize,
    turn: bool,
    fp: &'a str,
    nat: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    predict: Option<&'a [u16]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comb: Option<&'a [u16]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'a str>,
    mac: String,
}

impl Offer {
    /// A fresh session id: 16 random bytes as 32 lowercase hex characters.
    pub fn new_id() -> String {
        hex::encode(rand::random::<[u8; 16]>())
    }

    /// A fresh nonce, the same shape as an id.
    pub fn new_nonce() -> String {
        Offer::new_id()
    }

    /// Encodes and authenticates the offer for `room`:
    /// `{"v":2,"role":..,"id":..,"nonce":..,"ts":..,"candidates":["ip:port",..],"host":N,
    /// "relay":N,"turn":B,"fp":..,"nat":..,"mac":..}` (`host_count` and `relay_count`
    /// are clamped to the number of candidates). The room is authenticated, not sent.
    pub fn encode(&self, key: &RoomKey, room: &str) -> String {
        let candidates: Vec<String> = self.candidates.iter().map(|c| c.to_string()).collect();
        let host = self.host_count.min(candidates.len());
        let relay = self.relay_count.min(candidates.len() - host);
        let canonical = Canonical {
            room,
            role: self.role.as_str(),
            id: &self.id,
            nonce: &self.nonce,
            ts: self.ts,
            candidates: &candidates,
            host,
            relay,
            turn: self.turn,
            fp: &self.fp,
            nat: &self.nat,
            predict: self.predict.as_deref(),
            comb: self.comb.as_deref(),
            client: self.client.as_deref(),
            refused: self.refused.as_deref(),
        };
        let wire = WireOffer {
            v: OFFER_VERSION,
            role: self.role.as_str(),
            id: &self.id,
            nonce: &self.nonce,
            ts: self.ts,
            candidates: &candidates,
            host,
            relay,
            turn: self.turn,
            fp: &self.fp,
            nat: &self.nat,
            predict: self.predict.as_deref(),
            comb: self.comb.as_deref(),
            client: self.client.as_deref(),
            refused: self.refused.as_deref(),
            mac: hex::encode(canonical.mac(key)),
        };
        serde_json::to_string(&wire).expect("a struct of strings always serializes")
    }

    /// Decodes an offer posted in `room` and verifies its MAC with `key` (in constant
    /// time). Freshness (role, timestamp, nonce) is [`OfferGuard::check`]'s job.
    ///
    /// Unknown JSON fields are ignored (forward compatibility) and are not covered by
    /// the MAC. Never panics, whatever `data` holds.
    pub fn decode(data: &str, key: &RoomKey, room: &str) -> Result<Offer, OfferError> {
        if data.len() > MAX_OFFER_LEN {
            return Err(malformed(format!(
                "{} bytes, more than the {MAX_OFFER_LEN} allowed",
                data.len()
            )));
        }
        let value: serde_json::Value =
            serde_json::from_str(data).map_err(|e| malformed(format!("not JSON ({e})")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| malformed("not a JSON object"))?;

        let v = obj
            .get("v")
            .ok_or_else(|| malformed("missing field `v`"))?
            .as_u64()
            .ok_or_else(|| malformed("field `v` is not an unsigned integer"))?;
        match v {
            1 => return Err(OfferError::OldVersion),
            OFFER_VERSION => {}
            other => return Err(OfferError::UnsupportedVersion(other)),
        }

        let role = str_field(obj, "role")?;
        let id = str_field(obj, "id")?;
        let nonce = str_field(obj, "nonce")?;
        let ts = count_field(obj, "ts", u64::MAX)?;
        let fp = str_field(obj, "fp")?;
        let nat = str_field(obj, "nat")?;
        let mac_hex = str_field(obj, "mac")?;
        let raw_candidates = obj
            .get("candidates")
            .ok_or_else(|| malformed("missing field `candidates`"))?
            .as_array()
            .ok_or_else(|| malformed("field `candidates` is not an array"))?;
        if raw_candidates.len() > MAX_CANDIDATES {
            return Err(malformed(format!(
                "{} candidates, more than the {MAX_CANDIDATES} allowed",
                raw_candidates.len()
            )));
        }
        let candidates = raw_candidates
            .iter()
            .map(|c| {
                c.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| malformed("a candidate is not a string"))
            })
            .collect::<Result<Vec<String>, OfferError>>()?;
        let n = candidates.len() as u64;
        let host = count_field(obj, "host", n)? as usize;
        let relay = count_field(obj, "relay", n - host as u64)? as usize;
        let turn = obj
            .get("turn")
            .ok_or_else(|| malformed("missing field `turn`"))?
            .as_bool()
            .ok_or_else(|| malformed("field `turn` is not a boolean"))?;
        let predict = ports_field(obj, "predict")?;
        let comb = ports_field(obj, "comb")?;
        let client = text_field(obj, "client", ID_HEX_LEN)?;
        let refused = text_field(obj, "refused", MAX_REFUSAL_LEN)?;

        if !is_lower_hex(mac_hex, 64) {
            return Err(malformed("field `mac` is not 64 lowercase hex characters"));
        }
        let mac = hex::decode(mac_hex).map_err(|_| malformed("field `mac` is not hex"))?;
        let canonical = Canonical {
            room,
            role,
            id,
            nonce,
            ts,
            candidates: &candidates,
            host,
            relay,
            turn,
            fp,
            nat,
            predict: predict.as_deref(),
            comb: comb.as_deref(),
            client: client.as_deref(),
            refused: refused.as_deref(),
        };
        let mut expected = key.mac();
        expected.update(&canonical.bytes());
        expected
            .verify_slice(&mac)
            .map_err(|_| OfferError::BadMac)?;

        // Authentic from here on: what remains can only be a broken peer.
        let role = role
            .parse::<Role>()
            .map_err(|_| malformed("field `role` is not `client` or `server`"))?;
        let client_id = client.as_deref().unwrap_or(id);
        for (name, value) in [("id", id), ("nonce", nonce), ("client", client_id)] {
            if !is_lower_hex(value, ID_HEX_LEN) {
                return Err(malformed(format!(
                    "field `{name}` is not {ID_HEX_LEN} lowercase hex characters"
                )));
            }
        }
        if !is_lower_hex(fp, FP_HEX_LEN) {
            return Err(malformed(format!(
                "field `fp` is not {FP_HEX_LEN} lowercase hex characters"
            )));
        }
        let candidates = candidates
            .iter()
            .map(|c| {
                // An IPv4-mapped IPv6 candidate is the IPv4 address it maps (how a
                // dual-stack socket may name it): compared and checked as IPv4.
                c.parse::<SocketAddr>()
                    .map(crate::socket::canonical)
                    .map_err(|_| {
                        malformed(format!(
                            "candidate `{}` is not an ip:port address",
                            truncate(c, 64).escape_debug()
                        ))
                    })
            })
            .collect::<Result<Vec<SocketAddr>, OfferError>>()?;

        Ok(Offer {
            role,
            id: id.to_owned(),
            nonce: nonce.to_owned(),
            ts,
            candidates,
            host_count: host,
            relay_count: relay,
            turn,
            fp: fp.to_owned(),
            nat: nat.to_owned(),
            predict,
            comb,
            client,
            refused,
        })
    }
}

/// Seconds since the Unix epoch by this machine's clock (0 if it is set before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The receiver's freshness checks: the sender's role, the timestamp window and the
/// nonces already accepted. One per engine.
#[derive(Debug, Default)]
pub struct OfferGuard {
    /// Accepted nonces with their offers' timestamps, oldest first.
    seen: std::collections::VecDeque<(u64, String)>,
}

impl OfferGuard {
    /// A guard that has accepted nothing yet.
    pub fn new() -> OfferGuard {
        OfferGuard::default()
    }

    /// True when `nonce` is the one accepted last: reading the same mailbox content
    /// again, which is no attack and not worth a report.
    pub fn is_latest(&self, nonce: &str) -> bool {
        self.seen.back().is_some_and(|(_, n)| n == nonce)
    }

    /// Accepts `offer` when it comes from a peer of role `expected`, was made within
    /// [`OFFER_WINDOW`] of `now` (Unix seconds) either way, and its nonce has not been
    /// accepted before; the nonce is then remembered. Nonces are kept for as long as
    /// their offers would pass the window (at most [`MAX_NONCES`]; with more, the
    /// oldest are forgotten).
    pub fn check(&mut self, offer: &Offer, expected: Role, now: u64) -> Result<(), OfferError> {
        if offer.role != expected {
            return Err(OfferError::WrongRole {
                got: offer.role,
                expected,
            });
        }
        let window = OFFER_WINDOW.as_secs();
        let age = now as i128 - offer.ts as i128;
        if age.unsigned_abs() > u128::from(window) {
            return Err(OfferError::Stale {
                age: age.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
                window,
            });
        }
        // Forget what the window refuses anyway.
        self.seen
            .retain(|(ts, _)| now.saturating_sub(*ts) <= window);
        if self.seen.iter().any(|(_, n)| *n == offer.nonce) {
            return Err(OfferError::Replayed);
        }
        if self.seen.len() >= MAX_NONCES {
            self.seen.pop_front();
        }
        self.seen.push_back((offer.ts, offer.nonce.clone()));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> RoomKey {
        RoomKey::derive("room-1", Some("hunter2"))
    }

    const ROOM: &str = "room-1";

    /// Every field of a version-2 offer on the wire.
    const WIRE_FIELDS: [&str; 11] = [
        "role",
        "id",
        "nonce",
        "ts",
        "candidates",
        "host",
        "relay",
        "turn",
        "fp",
        "nat",
        "mac",
    ];

    fn offer() -> Offer {
        Offer {
            role: Role::Server,
            id: Offer::new_id(),
            nonce: Offer::new_nonce(),
            ts: unix_now(),
            candidates: vec![
                "192.168.1.10:40000".parse().unwrap(),
                "203.0.113.7:51234".parse().unwrap(),
                "[2001:db8::1]:40000".parse().unwrap(),
            ],
            host_count: 1,
            relay_count: 0,
            turn: false,
            fp: hex::encode([0xab; 32]),
            nat: "port-restricted".into(),
            predict: None,
            comb: None,
            client: None,
            refused: None,
        }
    }

    /// Re-serializes an encoded offer after `f` changed its JSON, keeping the MAC.
    fn tamper(
        encoded: &str,
        f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    ) -> String {
        let mut v: serde_json::Value = serde_json::from_str(encoded).unwrap();
        f(v.as_object_mut().unwrap());
        v.to_string()
    }

    fn decode(data: &str) -> Result<Offer, OfferError> {
        Offer::decode(data, &key(), ROOM)
    }

    #[test]
    fn role_names_and_peer() {
        assert_eq!(Role::Client.as_str(), "client");
        assert_eq!(Role::Server.as_str(), "server");
        assert_eq!(Role::Client.peer(), Role::Server);
        assert_eq!(Role::Server.peer(), Role::Client);
        assert_eq!("client".parse::<Role>().unwrap(), Role::Client);
        assert_eq!("server".parse::<Role>().unwrap(), Role::Server);
        assert!("Server".parse::<Role>().is_err());
        assert!("".parse::<Role>().is_err());
        assert_eq!(Role::Server.to_string(), "server");
    }

    #[test]
    fn room_key_derivation() {
        let with_secret = RoomKey::derive("room-1", Some("hunter2"));
        let without = RoomKey::derive("room-1", None);
        assert_ne!(with_secret, without);
        assert_eq!(without, RoomKey::derive("room-1", Some("")));
        assert_ne!(without, RoomKey::derive("room-2", None));
        assert_eq!(with_secret, RoomKey::derive("room-1", Some("hunter2")));

        // HMAC-SHA256(key = "room-1", "stunfwd/v1/room-1"), independently computed.
        let mut mac = HmacSha256::new_from_slice(b"room-1").unwrap();
        mac.update(b"stunfwd/v1/room-1");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(without.as_bytes(), &expected);

        let pw = with_secret.stun_password();
        assert_eq!(pw.len(), 64);
        assert!(is_lower_hex(&pw, 64));
    }

    #[test]
    fn mailbox_name_hides_the_room_and_depends_on_the_secret() {
        let name = key().mailbox_name();
        assert!(is_lower_hex(&name, 64), "{name}");
        assert!(!name.contains("room"));
        assert_eq!(name, key().mailbox_name());
        assert_ne!(
            name,
            RoomKey::derive("room-1", Some("hunter3")).mailbox_name()
        );
        assert_ne!(
            name,
            RoomKey::derive("room-2", Some("hunter2")).mailbox_name()
        );
        let mut mac = HmacSha256::new_from_slice(key().as_bytes()).unwrap();
        mac.update(b"stunfwd/v2/mailbox");
        assert_eq!(name, hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn room_key_debug_hides_the_key() {
        let k = key();
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "RoomKey(..)");
        assert!(!dbg.contains(&k.stun_password()[..8]));
    }

    #[test]
    fn new_id_is_32_lowercase_hex_and_random() {
        let a = Offer::new_id();
        let b = Offer::new_id();
        assert!(is_lower_hex(&a, 32));
        assert_ne!(a, b);
        assert_ne!(Offer::new_nonce(), Offer::new_nonce());
    }

    #[test]
    fn round_trip_writes_every_field() {
        let o = offer();
        let encoded = o.encode(&key(), ROOM);
        assert!(encoded.starts_with("{\"v\":2,\"role\":\"server\",\"id\":\""));
        for field in WIRE_FIELDS {
            assert!(encoded.contains(&format!("\"{field}\":")), "{field}");
        }
        assert!(
            !encoded.contains(ROOM),
            "the room is authenticated, not sent"
        );
        assert_eq!(decode(&encoded).unwrap(), o);
        let mut relayed = offer();
        relayed.relay_count = 1;
        relayed.turn = true;
        assert_eq!(decode(&relayed.encode(&key(), ROOM)).unwrap(), relayed);
        let mut empty = offer();
        empty.candidates.clear();
        empty.host_count = 0;
        empty.nat = String::new();
        assert_eq!(decode(&empty.encode(&key(), ROOM)).unwrap(), empty);
    }

    /// IPv6 candidates travel as `[ip]:port` and come back as the same addresses; an
    /// IPv4-mapped one is read as the IPv4 address it maps, so that it compares equal
    /// to what our sockets report for that peer.
    #[test]
    fn ipv6_candidates_round_trip_and_mapped_ones_read_as_ipv4() {
        let mut o = offer();
        o.candidates = vec![
            "[2001:db8:1:2::10]:40000".parse().unwrap(),
            "10.0.0.2:40000".parse().unwrap(),
            "[::ffff:203.0.113.7]:51234".parse().unwrap(),
        ];
        o.host_count = 2;
        let encoded = o.encode(&key(), ROOM);
        assert!(
            encoded.contains("\"[2001:db8:1:2::10]:40000\""),
            "{encoded}"
        );
        assert!(
            encoded.contains("\"[::ffff:203.0.113.7]:51234\""),
            "{encoded}"
        );
        let back = decode(&encoded).unwrap();
        assert_eq!(
            back.candidates,
            [
                "[2001:db8:1:2::10]:40000".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:40000".parse().unwrap(),
                "203.0.113.7:51234".parse().unwrap(),
            ]
        );
        assert_eq!(back.host_count, 2);
    }

    /// The canonical bytes as docs/protocol.md §3 specifies them, built independently.
    fn documented_canonical(o: &Offer, room: &str) -> Vec<u8> {
        fn lp(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&u32::try_from(b.len()).unwrap().to_be_bytes());
            out.extend_from_slice(b);
        }
        let mut list = Vec::new();
        for c in &o.candidates {
            lp(&mut list, c.to_string().as_bytes());
        }
        let mut out = b"stunfwd-offer-v2\0".to_vec();
        for f in [
            room.as_bytes(),
            o.role.as_str().as_bytes(),
            o.id.as_bytes(),
            o.nonce.as_bytes(),
            o.ts.to_string().as_bytes(),
            &list,
            o.host_count.to_string().as_bytes(),
            o.relay_count.to_string().as_bytes(),
            if o.turn { b"1" } else { b"0" },
            o.fp.as_bytes(),
            o.nat.as_bytes(),
        ] {
            lp(&mut out, f);
        }
        out
    }

    #[test]
    fn mac_covers_the_documented_canonical_bytes() {
        let o = offer();
        let v: serde_json::Value = serde_json::from_str(&o.encode(&key(), ROOM)).unwrap();
        let mut mac = HmacSha256::new_from_slice(key().as_bytes()).unwrap();
        mac.update(&documented_canonical(&o, ROOM));
        assert_eq!(v["mac"], hex::encode(mac.finalize().into_bytes()));
    }

    /// The test vectors published in docs/protocol.md verify, and their MACs are the
    /// ones written there.
    #[test]
    fn published_test_vectors_verify() {
        let doc = include_str!("../../../docs/protocol.md");
        let mut vectors = 0;
        for block in doc.split("```text\ntest vector\n").skip(1) {
            let block = &block[..block.find("```").unwrap()];
            let get = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or_else(|| panic!("no `{name}:` line in a test vector"))
                    .to_owned()
            };
            let key_bytes: [u8; 32] = hex::decode(get("room key")).unwrap().try_into().unwrap();
            let key = RoomKey(key_bytes);
            assert_eq!(
                key,
                RoomKey::derive(&get("room"), Some(&get("secret"))),
                "the vector's room key is derived from its room and secret"
            );
            let offer_json = get("offer");
            let decoded = Offer::decode(&offer_json, &key, &get("room")).unwrap();
            assert_eq!(decoded.encode(&key, &get("room")), offer_json);
            let v: serde_json::Value = serde_json::from_str(&offer_json).unwrap();
            assert_eq!(v["mac"], get("mac"));
            assert_eq!(
                hex::encode(documented_canonical(&decoded, &get("room"))),
                get("canonical bytes (hex)")
            );
            assert_eq!(
                Offer::decode(&offer_json, &key, "another room"),
                Err(OfferError::BadMac)
            );
            vectors += 1;
        }
        assert!(
            vectors >= 2,
            "docs/protocol.md publishes {vectors} test vectors"
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let encoded = tamper(&offer().encode(&key(), ROOM), |m| {
            m.insert("future".into(), serde_json::json!({"x": [1, 2]}));
        });
        assert_eq!(decode(&encoded).unwrap().nat, "port-restricted");
    }

    /// The finding of issue #14: under v1, `nat = "nat\nH\nR"`, `host = T` and no relay
    /// fields produced the same MAC input as the genuine offer. Under v2 every such
    /// rewrite is caught.
    #[test]
    fn moving_bytes_between_fields_breaks_the_mac() {
        let mut o = offer();
        o.relay_count = 1;
        o.turn = true;
        o.nat = "open".into();
        let encoded = o.encode(&key(), ROOM);
        let forged = tamper(&encoded, |m| {
            m["nat"] = "open\n1\n1".into();
            m["host"] = 1.into();
            m["relay"] = 0.into();
            m["turn"] = false.into();
        });
        assert_eq!(decode(&forged), Err(OfferError::BadMac));
        let moved = tamper(&encoded, |m| {
            m["fp"] = format!("{}o", o.fp).into();
            m["nat"] = "pen".into();
        });
        assert_eq!(decode(&moved), Err(OfferError::BadMac));
    }

    #[test]
    fn tampering_with_any_field_breaks_the_mac() {
        let encoded = offer().encode(&key(), ROOM);
        let cases: Vec<(&str, String)> = vec![
            ("host count", tamper(&encoded, |m| m["host"] = 2.into())),
            ("relay count", tamper(&encoded, |m| m["relay"] = 1.into())),
            ("turn", tamper(&encoded, |m| m["turn"] = true.into())),
            ("role", tamper(&encoded, |m| m["role"] = "client".into())),
            (
                "ts",
                tamper(&encoded, |m| {
                    m["ts"] = (m["ts"].as_u64().unwrap() + 1).into();
                }),
            ),
            (
                "nonce",
                tamper(&encoded, |m| m["nonce"] = Offer::new_nonce().into()),
            ),
            (
                "candidate rewritten",
                tamper(&encoded, |m| {
                    m["candidates"][1] = "198.51.100.66:51234".into();
                }),
            ),
            (
                "candidate added",
                tamper(&encoded, |m| {
                    m["candidates"]
                        .as_array_mut()
                        .unwrap()
                        .push("198.51.100.66:1".into());
                }),
            ),
            (
                "candidate removed",
                tamper(&encoded, |m| {
                    m["candidates"].as_array_mut().unwrap().pop();
                }),
            ),
            (
                "candidate order",
                tamper(&encoded, |m| {
                    m["candidates"].as_array_mut().unwrap().swap(0, 1);
                }),
            ),
            (
                "two candidates joined",
                tamper(&encoded, |m| {
                    let c = m["candidates"].as_array_mut().unwrap();
                    let second = c.remove(1);
                    c[0] =
                        format!("{},{}", c[0].as_str().unwrap(), second.as_str().unwrap()).into();
                }),
            ),
            (
                "fp rewritten",
                tamper(&encoded, |m| m["fp"] = hex::encode([0xcd; 32]).into()),
            ),
            ("nat", tamper(&encoded, |m| m["nat"] = "full-cone".into())),
            ("id", tamper(&encoded, |m| m["id"] = Offer::new_id().into())),
            (
                "mac",
                tamper(&encoded, |m| m["mac"] = hex::encode([0u8; 32]).into()),
            ),
        ];
        for (what, data) in cases {
            assert_eq!(
                decode(&data),
                Err(OfferError::BadMac),
                "tampering ({what}) must be detected"
            );
        }
    }

    #[test]
    fn wrong_key_or_room_is_bad_mac() {
        let encoded = offer().encode(&key(), ROOM);
        for other in [
            RoomKey::derive("room-1", None),
            RoomKey::derive("room-1", Some("hunter3")),
            RoomKey::derive("room-2", Some("hunter2")),
        ] {
            assert_eq!(
                Offer::decode(&encoded, &other, ROOM),
                Err(OfferError::BadMac)
            );
        }
        // Same secret, another room: an offer moved between rooms does not verify.
        assert_eq!(
            Offer::decode(&encoded, &key(), "room-2"),
            Err(OfferError::BadMac)
        );
    }

    #[test]
    fn old_and_future_versions_are_named() {
        let v1 = r#"{"v":1,"id":"5f0c6c1e9a3b47d2a1e0f3c4b5d6e7f8","candidates":[],"host":0,"fp":"ab","nat":"x","mac":"00"}"#;
        let err = decode(v1).unwrap_err();
        assert_eq!(err, OfferError::OldVersion);
        assert!(err.to_string().contains("older stunfwd"), "{err}");
        let v3 = tamper(&offer().encode(&key(), ROOM), |m| m["v"] = 3.into());
        assert_eq!(decode(&v3), Err(OfferError::UnsupportedVersion(3)));
    }

    #[test]
    fn garbage_truncated_missing_and_huge_are_malformed() {
        let encoded = offer().encode(&key(), ROOM);
        let mut inputs: Vec<String> = vec![
            String::new(),
            "garbage".into(),
            "null".into(),
            "[]".into(),
            "{}".into(),
            "{\"v\":\"2\"}".into(),
            "{\"v\":-1}".into(),
            "{\"v\":2.5}".into(),
            "{\"v\":2}".into(),
            "\u{0}\u{1}\u{fffd}".into(),
            "[".repeat(10_000),
            "x".repeat(MAX_OFFER_LEN + 1),
            format!("{encoded}{}", " ".repeat(MAX_OFFER_LEN)),
            tamper(&encoded, |m| m["candidates"] = "1.2.3.4:5".into()),
            tamper(&encoded, |m| m["candidates"][0] = 5.into()),
            tamper(&encoded, |m| {
                m["candidates"] = serde_json::Value::Array(vec!["1.2.3.4:5".into(); 33]);
            }),
            tamper(&encoded, |m| m["mac"] = "zz".into()),
            tamper(&encoded, |m| {
                m["mac"] = hex::encode([0xabu8; 32]).to_uppercase().into();
            }),
            tamper(&encoded, |m| m["nat"] = serde_json::Value::Null),
            tamper(&encoded, |m| m["host"] = 4.into()),
            tamper(&encoded, |m| m["host"] = (-1).into()),
            tamper(&encoded, |m| m["host"] = "1".into()),
            tamper(&encoded, |m| m["relay"] = 3.into()),
            tamper(&encoded, |m| m["turn"] = 1.into()),
            tamper(&encoded, |m| m["ts"] = (-5).into()),
            tamper(&encoded, |m| m["ts"] = "now".into()),
        ];
        // Every field is required.
        for field in WIRE_FIELDS {
            inputs.push(tamper(&encoded, |m| {
                m.remove(field);
            }));
        }
        for cut in 0..encoded.len() {
            if encoded.is_char_boundary(cut) {
                inputs.push(encoded[..cut].to_owned());
            }
        }
        for input in inputs {
            match decode(&input) {
                Err(OfferError::Malformed(_)) => {}
                other => panic!(
                    "expected Malformed for {:?}, got {other:?}",
                    truncate(&input, 80)
                ),
            }
        }
    }

    #[test]
    fn authentic_but_invalid_fields_are_malformed() {
        let k = key();
        let good = offer();
        let fp = hex::encode([1u8; 32]);
        let cases: Vec<(&str, String, String, String, &str)> = vec![
            (
                "server",
                "xyz".into(),
                good.nonce.clone(),
                fp.clone(),
                "1.2.3.4:5",
            ),
            (
                "server",
                "0123456789ABCDEF0123456789ABCDEF".into(),
                good.nonce.clone(),
                fp.clone(),
                "1.2.3.4:5",
            ),
            (
                "server",
                good.id.clone(),
                "short".into(),
                fp.clone(),
                "1.2.3.4:5",
            ),
            (
                "server",
                good.id.clone(),
                good.nonce.clone(),
                "abcd".into(),
                "1.2.3.4:5",
            ),
            (
                "server",
                good.id.clone(),
                good.nonce.clone(),
                fp.clone(),
                "1.2.3.4",
            ),
            (
                "server",
                good.id.clone(),
                good.nonce.clone(),
                fp.clone(),
                "example.com:80",
            ),
            (
                "peer",
                good.id.clone(),
                good.nonce.clone(),
                fp.clone(),
                "1.2.3.4:5",
            ),
        ];
        for (role, id, nonce, fp, cand) in cases {
            let cands = vec![cand.to_owned()];
            let canonical = Canonical {
                room: ROOM,
                role,
                id: &id,
                nonce: &nonce,
                ts: 1,
                candidates: &cands,
                host: 0,
                relay: 0,
                turn: false,
                fp: &fp,
                nat: "x",
                predict: None,
                comb: None,
                client: None,
                refused: None,
            };
            let data = serde_json::json!({
                "v": 2, "role": role, "id": id, "nonce": nonce, "ts": 1, "candidates": cands,
                "host": 0, "relay": 0, "turn": false, "fp": fp, "nat": "x",
                "mac": hex::encode(canonical.mac(&k))
            })
            .to_string();
            assert!(
                matches!(
                    Offer::decode(&data, &k, ROOM),
                    Err(OfferError::Malformed(_))
                ),
                "{data}"
            );
        }
    }

    #[test]
    fn the_guard_checks_role_window_and_nonce() {
        let now = 1_800_000_000;
        let window = OFFER_WINDOW.as_secs();
        let mut g = OfferGuard::new();
        let mut o = offer();
        o.ts = now;
        assert_eq!(
            g.check(&o, Role::Client, now),
            Err(OfferError::WrongRole {
                got: Role::Server,
                expected: Role::Client
            })
        );
        assert!(!g.is_latest(&o.nonce));
        assert_eq!(g.check(&o, Role::Server, now), Ok(()));
        assert!(g.is_latest(&o.nonce));
        assert_eq!(
            g.check(&o, Role::Server, now + 1),
            Err(OfferError::Replayed)
        );
        // The window, both ways: a clock up to `window` behind or ahead is tolerated.
        for (ts, ok) in [
            (now - window, true),
            (now - window - 1, false),
            (now + window, true),
            (now + window + 1, false),
            (0, false),
            (u64::MAX, false),
        ] {
            let mut fresh = offer();
            fresh.ts = ts;
            let got = g.check(&fresh, Role::Server, now);
            if ok {
                assert_eq!(got, Ok(()), "ts {ts}");
            } else {
                assert!(
                    matches!(got, Err(OfferError::Stale { .. })),
                    "ts {ts}: {got:?}"
                );
            }
        }
        let err = OfferError::Stale { age: 301, window };
        assert!(err.to_string().contains("±300 s"), "{err}");
        // Old nonces are forgotten once their offers would be stale anyway, and the
        // memory is bounded.
        let mut g = OfferGuard::new();
        for i in 0..(MAX_NONCES as u64 + 10) {
            let mut n = offer();
            n.ts = now;
            assert_eq!(g.check(&n, Role::Server, now + i % 2), Ok(()));
        }
        assert!(g.seen.len() <= MAX_NONCES);
        let mut later = offer();
        later.ts = now + 2 * window;
        assert_eq!(g.check(&later, Role::Server, now + 2 * window), Ok(()));
        assert_eq!(g.seen.len(), 1, "expired nonces were dropped");
    }

    #[test]
    fn errors_map_to_crate_errors() {
        assert_eq!(
            crate::Error::from(OfferError::BadMac).code(),
            "ERR_PEER_AUTH"
        );
        assert_eq!(
            crate::Error::from(OfferError::Replayed).code(),
            "ERR_PEER_AUTH"
        );
        assert_eq!(
            crate::Error::from(OfferError::OldVersion).code(),
            "ERR_SIGNAL"
        );
        assert_eq!(
            crate::Error::from(OfferError::Malformed("x".into())).code(),
            "ERR_SIGNAL"
        );
        assert_eq!(
            crate::Error::from(OfferError::UnsupportedVersion(9)).code(),
            "ERR_SIGNAL"
        );
        assert!(OfferError::BadMac.to_string().contains("different secret"));
    }

    /// Port prediction's lists (issue #17) round-trip, are covered by the MAC, are left
    /// out of offers that have none (whose bytes stay as they were), and a bad list is
    /// refused naming the field.
    #[test]
    fn prediction_lists_round_trip_under_the_mac() {
        let mut o = offer();
        o.role = Role::Client;
        o.predict = Some(vec![20001, 20002, 20003]);
        let encoded = o.encode(&key(), ROOM);
        let back = decode(&encoded).unwrap();
        assert_eq!(back.predict, Some(vec![20001, 20002, 20003]));
        assert_eq!(back.comb, None);
        let mut answer = offer();
        answer.comb = Some(vec![]);
        let back = decode(&answer.encode(&key(), ROOM)).unwrap();
        assert_eq!((back.predict, back.comb), (None, Some(vec![])));
        // Without the lists the wire and the MAC are what they always were.
        let plain = offer().encode(&key(), ROOM);
        assert!(
            !plain.contains("predict") && !plain.contains("comb"),
            "{plain}"
        );

        for (what, data) in [
            (
                "a port changed",
                tamper(&encoded, |m| m["predict"][0] = 20009.into()),
            ),
            (
                "the list dropped",
                tamper(&encoded, |m| {
                    m.remove("predict");
                }),
            ),
            (
                "a comb added",
                tamper(&encoded, |m| {
                    m.insert("comb".into(), serde_json::json!([1]));
                }),
            ),
        ] {
            assert_eq!(decode(&data).unwrap_err(), OfferError::BadMac, "{what}");
        }
        for bad in [
            serde_json::json!("20001"),
            serde_json::json!([0]),
            serde_json::json!([70000]),
            serde_json::json!(vec![1; MAX_PREDICTED + 1]),
        ] {
            let data = tamper(&encoded, |m| m["predict"] = bad.clone());
            let err = decode(&data).unwrap_err().to_string();
            assert!(
                err.contains("field `predict` is not a list of at most 32 ports"),
                "{err}"
            );
        }
    }
}
