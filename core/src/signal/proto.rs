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

type HmacSha256 = Hmac<Sha256>;

/// The only offer version this build reads and writes.
pub const OFFER_VERSION: u64 = 1;

/// Largest encoded offer [`Offer::decode`] accepts, in bytes (the rendezvous server's
/// body limit, so an offer that fits the server also fits here).
pub const MAX_OFFER_LEN: usize = 16 * 1024;

/// Most candidates an offer may carry.
pub const MAX_CANDIDATES: usize = 32;

/// Length in hex characters of an offer id (16 random bytes).
const ID_HEX_LEN: usize = 32;

/// Length in hex characters of a certificate fingerprint (SHA-256).
const FP_HEX_LEN: usize = 64;

/// Domain-separation prefix of the offer MAC's canonical bytes.
const OFFER_MAC_DOMAIN: &str = "stunfwd-offer";

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
/// which certificate it will present. Authenticated with the room key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Session id: 32 lowercase hex characters (16 random bytes), new for every
    /// connection attempt. Used in the STUN USERNAME of connectivity checks.
    pub id: String,
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
}

/// Why an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not a well-formed version-1 offer.
    #[error("malformed offer: {0}; the peer runs an incompatible stunfwd or the rendezvous server mangled the data")]
    Malformed(String),
    /// A well-formed offer of a version this build does not speak.
    #[error("offer version {0} is not supported (this build speaks version 1); run the same stunfwd version on both peers")]
    UnsupportedVersion(u64),
    /// The MAC does not verify under our room key.
    #[error("offer MAC does not verify: the peer uses a different secret, or the rendezvous server altered it")]
    BadMac,
}

impl From<OfferError> for crate::Error {
    fn from(e: OfferError) -> crate::Error {
        match e {
            OfferError::BadMac => crate::Error::PeerAuth(e.to_string()),
            OfferError::Malformed(_) | OfferError::UnsupportedVersion(_) => {
                crate::Error::Signal(e.to_string())
            }
        }
    }
}

/// The JSON shape written by [`Offer::encode`]; field order is the wire order.
#[derive(Serialize)]
struct WireOffer<'a> {
    v: u64,
    id: &'a str,
    candidates: &'a [String],
    host: usize,
    #[serde(skip_serializing_if = "is_zero")]
    relay: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    turn: bool,
    fp: &'a str,
    nat: &'a str,
    mac: String,
}

impl Offer {
    /// A fresh session id: 16 random bytes as 32 lowercase hex characters.
    pub fn new_id() -> String {
        hex::encode(rand::random::<[u8; 16]>())
    }

    /// Encodes and authenticates the offer:
    /// `{"v":1,"id":..,"candidates":["ip:port",..],"host":N,"fp":..,"nat":..,"mac":..}`
    /// (`host_count` is clamped to the number of candidates).
    pub fn encode(&self, key: &RoomKey) -> String {
        let candidates: Vec<String> = self.candidates.iter().map(|c| c.to_string()).collect();
        let host = self.host_count.min(candidates.len());
        let relay = self.relay_count.min(candidates.len() - host);
        let kinds = Kinds {
            host,
            relay,
            turn: self.turn,
        };
        let mac = offer_mac(
            key,
            OFFER_VERSION,
            &self.id,
            &candidates,
            kinds,
            &self.fp,
            &self.nat,
        );
        let wire = WireOffer {
            v: OFFER_VERSION,
            id: &self.id,
            candidates: &candidates,
            host,
            relay,
            turn: self.turn,
            fp: &self.fp,
            nat: &self.nat,
            mac: hex::encode(mac),
        };
        serde_json::to_string(&wire).expect("a struct of strings always serializes")
    }

    /// Decodes an offer and verifies its MAC with `key` (in constant time).
    ///
    /// Unknown JSON fields are ignored (forward compatibility) and are not covered by
    /// the MAC. Never panics, whatever `data` holds.
    pub fn decode(data: &str, key: &RoomKey) -> Result<Offer, OfferError> {
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
        if v != OFFER_VERSION {
            return Err(OfferError::UnsupportedVersion(v));
        }

        let id = str_field(obj, "id")?;
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

        if !is_lower_hex(mac_hex, 64) {
            return Err(malformed("field `mac` is not 64 lowercase hex characters"));
        }
        let mac = hex::decode(mac_hex).map_err(|_| malformed("field `mac` is not hex"))?;
        // `host` (interface candidates first) is optional on the wire and then 0.
        let host = match obj.get("host") {
            None => 0,
            Some(h) => h
                .as_u64()
                .and_then(|h| usize::try_from(h).ok())
                .filter(|h| *h <= candidates.len())
                .ok_or_else(|| malformed("field `host` is not a count of candidates"))?,
        };
        // `relay` (relayed candidates last) and `turn` are optional too.
        let relay = match obj.get("relay") {
            None => 0,
            Some(r) => r
                .as_u64()
                .and_then(|r| usize::try_from(r).ok())
                .filter(|r| host + *r <= candidates.len())
                .ok_or_else(|| malformed("field `relay` is not a count of candidates"))?,
        };
        let turn = match obj.get("turn") {
            None => false,
            Some(t) => t
                .as_bool()
                .ok_or_else(|| malformed("field `turn` is not a boolean"))?,
        };
        let mut expected = key.mac();
        feed_canonical(
            &mut expected,
            v,
            id,
            &candidates,
            Kinds { host, relay, turn },
            fp,
            nat,
        );
        expected
            .verify_slice(&mac)
            .map_err(|_| OfferError::BadMac)?;

        // Authentic from here on: what remains can only be a broken peer.
        if !is_lower_hex(id, ID_HEX_LEN) {
            return Err(malformed(format!(
                "field `id` is not {ID_HEX_LEN} lowercase hex characters"
            )));
        }
        if !is_lower_hex(fp, FP_HEX_LEN) {
            return Err(malformed(format!(
                "field `fp` is not {FP_HEX_LEN} lowercase hex characters"
            )));
        }
        let candidates = candidates
            .iter()
            .map(|c| {
                c.parse::<SocketAddr>().map_err(|_| {
                    malformed(format!(
                        "candidate `{}` is not an ip:port address",
                        truncate(c, 64).escape_debug()
                    ))
                })
            })
            .collect::<Result<Vec<SocketAddr>, OfferError>>()?;

        Ok(Offer {
            id: id.to_owned(),
            candidates,
            host_count: host,
            relay_count: relay,
            turn,
            fp: fp.to_owned(),
            nat: nat.to_owned(),
        })
    }
}

/// Candidate kinds: how many are host (first) and relayed (last), and whether the
/// peer can allocate a relay.
#[derive(Debug, Clone, Copy, Default)]
struct Kinds {
    host: usize,
    relay: usize,
    turn: bool,
}

impl From<usize> for Kinds {
    fn from(host: usize) -> Self {
        Kinds {
            host,
            ..Kinds::default()
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// HMAC-SHA256 under the room key of the canonical bytes:
/// `"stunfwd-offer\n" + v + "\n" + id + "\n" + candidates joined with "," + "\n" + fp + "\n" + nat + "\n" + host`,
/// followed by `"\n" + relay + "\n" + turn (0 or 1)` when the offer has relayed
/// candidates or can relay.
fn offer_mac(
    key: &RoomKey,
    v: u64,
    id: &str,
    candidates: &[String],
    kinds: impl Into<Kinds>,
    fp: &str,
    nat: &str,
) -> [u8; 32] {
    let mut mac = key.mac();
    feed_canonical(&mut mac, v, id, candidates, kinds.into(), fp, nat);
    mac.finalize().into_bytes().into()
}

fn feed_canonical(
    mac: &mut HmacSha256,
    v: u64,
    id: &str,
    candidates: &[String],
    kinds: Kinds,
    fp: &str,
    nat: &str,
) {
    mac.update(OFFER_MAC_DOMAIN.as_bytes());
    mac.update(b"\n");
    mac.update(v.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(id.as_bytes());
    mac.update(b"\n");
    for (i, c) in candidates.iter().enumerate() {
        if i > 0 {
            mac.update(b",");
        }
        mac.update(c.as_bytes());
    }
    mac.update(b"\n");
    mac.update(fp.as_bytes());
    mac.update(b"\n");
    mac.update(nat.as_bytes());
    mac.update(b"\n");
    mac.update(kinds.host.to_string().as_bytes());
    if kinds.relay > 0 || kinds.turn {
        mac.update(b"\n");
        mac.update(kinds.relay.to_string().as_bytes());
        mac.update(if kinds.turn { b"\n1" } else { b"\n0" });
    }
}

fn malformed(what: impl Into<String>) -> OfferError {
    OfferError::Malformed(what.into())
}

fn str_field<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<&'a str, OfferError> {
    obj.get(name)
        .ok_or_else(|| malformed(format!("missing field `{name}`")))?
        .as_str()
        .ok_or_else(|| malformed(format!("field `{name}` is not a string")))
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> RoomKey {
        RoomKey::derive("room-1", Some("hunter2"))
    }

    fn offer() -> Offer {
        Offer {
            id: Offer::new_id(),
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
    }

    #[test]
    fn round_trip() {
        let o = offer();
        let encoded = o.encode(&key());
        assert!(encoded.starts_with("{\"v\":1,\"id\":\""));
        assert_eq!(Offer::decode(&encoded, &key()).unwrap(), o);
    }

    #[test]
    fn relay_kinds_round_trip_and_are_authenticated() {
        let mut o = offer();
        o.relay_count = 1;
        o.turn = true;
        let encoded = o.encode(&key());
        assert_eq!(Offer::decode(&encoded, &key()).unwrap(), o);
        for (field, value) in [
            ("relay", serde_json::json!(0)),
            ("turn", serde_json::json!(false)),
        ] {
            let mut m: serde_json::Value = serde_json::from_str(&encoded).unwrap();
            m[field] = value;
            assert_eq!(
                Offer::decode(&m.to_string(), &key()),
                Err(OfferError::BadMac),
                "{field} is covered by the MAC"
            );
        }
    }

    #[test]
    fn round_trip_without_candidates() {
        let mut o = offer();
        o.candidates.clear();
        o.host_count = 0;
        o.nat = String::new();
        assert_eq!(Offer::decode(&o.encode(&key()), &key()).unwrap(), o);
    }

    #[test]
    fn mac_covers_the_documented_canonical_bytes() {
        let o = offer();
        let encoded = o.encode(&key());
        let v: serde_json::Value = serde_json::from_str(&encoded).unwrap();
        let cands: Vec<String> = o.candidates.iter().map(|c| c.to_string()).collect();
        let canonical = format!(
            "stunfwd-offer\n1\n{}\n{}\n{}\n{}\n{}",
            o.id,
            cands.join(","),
            o.fp,
            o.nat,
            o.host_count
        );
        let mut mac = HmacSha256::new_from_slice(key().as_bytes()).unwrap();
        mac.update(canonical.as_bytes());
        assert_eq!(v["mac"], hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let encoded = tamper(&offer().encode(&key()), |m| {
            m.insert("future".into(), serde_json::json!({"x": [1, 2]}));
        });
        assert_eq!(
            Offer::decode(&encoded, &key()).unwrap().nat,
            "port-restricted"
        );
    }

    #[test]
    fn tampering_with_any_field_breaks_the_mac() {
        let encoded = offer().encode(&key());
        let cases: Vec<(&str, String)> = vec![
            (
                "host count",
                tamper(&encoded, |m| {
                    m["host"] = 2.into();
                }),
            ),
            (
                "host count removed",
                tamper(&encoded, |m| {
                    m.remove("host");
                }),
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
                "fp rewritten",
                tamper(&encoded, |m| {
                    m["fp"] = hex::encode([0xcd; 32]).into();
                }),
            ),
            (
                "nat",
                tamper(&encoded, |m| {
                    m["nat"] = "full-cone".into();
                }),
            ),
            (
                "id",
                tamper(&encoded, |m| {
                    m["id"] = Offer::new_id().into();
                }),
            ),
            (
                "mac",
                tamper(&encoded, |m| {
                    m["mac"] = hex::encode([0u8; 32]).into();
                }),
            ),
        ];
        for (what, data) in cases {
            assert_eq!(
                Offer::decode(&data, &key()),
                Err(OfferError::BadMac),
                "tampering ({what}) must be detected"
            );
        }
    }

    #[test]
    fn wrong_key_is_bad_mac() {
        let encoded = offer().encode(&key());
        for other in [
            RoomKey::derive("room-1", None),
            RoomKey::derive("room-1", Some("hunter3")),
            RoomKey::derive("room-2", Some("hunter2")),
        ] {
            assert_eq!(Offer::decode(&encoded, &other), Err(OfferError::BadMac));
        }
    }

    #[test]
    fn unsupported_version() {
        let encoded = tamper(&offer().encode(&key()), |m| {
            m["v"] = 2.into();
        });
        assert_eq!(
            Offer::decode(&encoded, &key()),
            Err(OfferError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn garbage_truncated_and_huge_are_malformed() {
        let encoded = offer().encode(&key());
        let mut inputs: Vec<String> = vec![
            String::new(),
            "garbage".into(),
            "null".into(),
            "[]".into(),
            "{}".into(),
            "{\"v\":\"1\"}".into(),
            "{\"v\":-1}".into(),
            "{\"v\":1.5}".into(),
            "{\"v\":1}".into(),
            "\u{0}\u{1}\u{fffd}".into(),
            "[".repeat(10_000),
            "x".repeat(MAX_OFFER_LEN + 1),
            format!("{encoded}{}", " ".repeat(MAX_OFFER_LEN)),
            tamper(&encoded, |m| {
                m["candidates"] = "1.2.3.4:5".into();
            }),
            tamper(&encoded, |m| {
                m["candidates"][0] = 5.into();
            }),
            tamper(&encoded, |m| {
                m["candidates"] = serde_json::Value::Array(vec!["1.2.3.4:5".into(); 33]);
            }),
            tamper(&encoded, |m| {
                m["mac"] = "zz".into();
            }),
            tamper(&encoded, |m| {
                m["mac"] = hex::encode([0xabu8; 32]).to_uppercase().into();
            }),
            tamper(&encoded, |m| {
                m.remove("fp");
            }),
            tamper(&encoded, |m| {
                m["nat"] = serde_json::Value::Null;
            }),
            tamper(&encoded, |m| {
                m["host"] = 4.into();
            }),
            tamper(&encoded, |m| {
                m["host"] = (-1).into();
            }),
            tamper(&encoded, |m| {
                m["host"] = "1".into();
            }),
        ];
        for cut in 0..encoded.len() {
            if encoded.is_char_boundary(cut) {
                inputs.push(encoded[..cut].to_owned());
            }
        }
        for input in inputs {
            match Offer::decode(&input, &key()) {
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
        for (id, fp, cand) in [
            ("xyz", hex::encode([1u8; 32]), "1.2.3.4:5"),
            (
                "0123456789ABCDEF0123456789ABCDEF",
                hex::encode([1u8; 32]),
                "1.2.3.4:5",
            ),
            (&*Offer::new_id(), "abcd".to_owned(), "1.2.3.4:5"),
            (&*Offer::new_id(), hex::encode([1u8; 32]), "1.2.3.4"),
            (&*Offer::new_id(), hex::encode([1u8; 32]), "example.com:80"),
        ] {
            let cands = vec![cand.to_owned()];
            let mac = offer_mac(&k, 1, id, &cands, 0, &fp, "x");
            let data = serde_json::json!({
                "v": 1, "id": id, "candidates": cands, "fp": fp, "nat": "x", "mac": hex::encode(mac)
            })
            .to_string();
            assert!(
                matches!(Offer::decode(&data, &k), Err(OfferError::Malformed(_))),
                "{data}"
            );
        }
    }

    #[test]
    fn errors_map_to_crate_errors() {
        assert_eq!(
            crate::Error::from(OfferError::BadMac).code(),
            "ERR_PEER_AUTH"
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
}
