//! Property tests of the rendezvous wire formats: every offer survives encode/decode,
//! nothing decodes under another key or room, any change to an authenticated field
//! (bytes changed, inserted, deleted, or moved between adjacent fields) is caught, and
//! neither the offer decoder nor the request parsers panic on any input. (The
//! cargo-fuzz targets in `fuzz/` explore the same functions without bounds.)

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use stunfwd_core::signal::request::{parse_post, parse_query, MAX_ROOM_LEN};
use stunfwd_core::signal::{Offer, OfferError, Role, RoomKey};

fn hex_string(bytes: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u8>(), bytes).prop_map(hex::encode)
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

prop_compose! {
    fn offer()(
        server in any::<bool>(),
        id in hex_string(16),
        nonce in hex_string(16),
        ts in any::<u64>(),
        candidates in proptest::collection::vec(socket_addr(), 0..=32),
        fp in hex_string(32),
        nat in any::<String>(),
        turn in any::<bool>(),
        host_pick in any::<usize>(),
        relay_pick in any::<usize>(),
        client in proptest::option::of(hex_string(16)),
        refused in proptest::option::of("[ -~]{0,200}"),
    ) -> Offer {
        let host_count = host_pick % (candidates.len() + 1);
        let relay_count = relay_pick % (candidates.len() - host_count + 1);
        let role = if server { Role::Server } else { Role::Client };
        Offer { role, id, nonce, ts, candidates, host_count, relay_count, turn, fp, nat, predict: None, comb: None, client, refused }
    }
}

fn key() -> impl Strategy<Value = (String, RoomKey)> {
    (any::<String>(), proptest::option::of(any::<String>())).prop_map(|(room, secret)| {
        let key = RoomKey::derive(&room, secret.as_deref());
        (room, key)
    })
}

/// The string fields of an offer in their canonical (MAC) order: the room (a decode
/// argument, not on the wire), then the JSON fields. Candidates are fields of their
/// own, in order.
fn string_fields(room: &str, v: &serde_json::Value) -> Vec<String> {
    let mut out = vec![room.to_owned()];
    for name in ["role", "id", "nonce"] {
        out.push(v[name].as_str().unwrap().to_owned());
    }
    for c in v["candidates"].as_array().unwrap() {
        out.push(c.as_str().unwrap().to_owned());
    }
    for name in ["fp", "nat"] {
        out.push(v[name].as_str().unwrap().to_owned());
    }
    out
}

/// Puts `fields` (as from [`string_fields`]) back into the JSON; returns the room.
fn put_string_fields(v: &mut serde_json::Value, fields: &[String]) -> String {
    let n = fields.len();
    v["role"] = fields[1].clone().into();
    v["id"] = fields[2].clone().into();
    v["nonce"] = fields[3].clone().into();
    v["candidates"] = fields[4..n - 2].to_vec().into();
    v["fp"] = fields[n - 2].clone().into();
    v["nat"] = fields[n - 1].clone().into();
    fields[0].clone()
}

/// Byte-level edits of a string at a char boundary: (position, edit kind, char).
fn edit(s: &str, pos: usize, kind: u8, c: char) -> String {
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
    let at = bounds[pos % bounds.len()];
    let mut out = s.to_owned();
    match kind % 3 {
        0 => out.insert(at, c),
        1 if at < s.len() => {
            out.remove(at);
        }
        _ if at < s.len() => {
            let old = out.remove(at);
            let new = if old == c {
                char::from_u32(c as u32 ^ 1).unwrap_or('x')
            } else {
                c
            };
            out.insert(at, new);
        }
        _ => out.insert(at, c),
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_offer_round_trips(o in offer(), (room, k) in key()) {
        let encoded = o.encode(&k, &room);
        prop_assert!(encoded.len() <= stunfwd_core::signal::proto::MAX_OFFER_LEN);
        prop_assert_eq!(Offer::decode(&encoded, &k, &room), Ok(o));
    }

    #[test]
    fn no_offer_decodes_under_another_key_or_room(
        o in offer(),
        (room, k) in key(),
        (other_room, other) in key(),
    ) {
        let encoded = o.encode(&k, &room);
        if k != other {
            prop_assert_eq!(Offer::decode(&encoded, &other, &room), Err(OfferError::BadMac));
        }
        if other_room != room {
            prop_assert_eq!(Offer::decode(&encoded, &k, &other_room), Err(OfferError::BadMac));
        }
    }

    /// Issue #14: moving any number of bytes from one field into the next (or back),
    /// across every pair of adjacent fields of the canonical order, never verifies.
    #[test]
    fn bytes_moved_between_adjacent_fields_never_verify(
        o in offer(),
        (room, k) in key(),
        pair in any::<usize>(),
        count in 1usize..8,
        forward in any::<bool>(),
    ) {
        let mut v: serde_json::Value = serde_json::from_str(&o.encode(&k, &room)).unwrap();
        let mut fields = string_fields(&room, &v);
        let i = pair % (fields.len() - 1);
        let (from, to) = if forward { (i, i + 1) } else { (i + 1, i) };
        let chars: Vec<char> = fields[from].chars().collect();
        prop_assume!(!chars.is_empty());
        let k_chars = count.min(chars.len());
        let moved: String = if forward {
            chars[chars.len() - k_chars..].iter().collect()
        } else {
            chars[..k_chars].iter().collect()
        };
        let kept: String = if forward {
            chars[..chars.len() - k_chars].iter().collect()
        } else {
            chars[k_chars..].iter().collect()
        };
        fields[from] = kept;
        fields[to] = if forward { moved + &fields[to] } else { fields[to].clone() + &moved };
        let room2 = put_string_fields(&mut v, &fields);
        prop_assert!(Offer::decode(&v.to_string(), &k, &room2).is_err(), "{}", v);
    }

    /// Changing, inserting or deleting one character anywhere in any field (the room
    /// included) never verifies; nor does changing a number or the flag.
    #[test]
    fn any_edited_field_never_verifies(
        o in offer(),
        (room, k) in key(),
        field in any::<usize>(),
        pos in any::<usize>(),
        kind in any::<u8>(),
        c in any::<char>(),
        number in 0usize..4,
    ) {
        let encoded = o.encode(&k, &room);
        let mut v: serde_json::Value = serde_json::from_str(&encoded).unwrap();
        let mut fields = string_fields(&room, &v);
        let f = field % fields.len();
        fields[f] = edit(&fields[f], pos, kind, c);
        let room2 = put_string_fields(&mut v, &fields);
        prop_assert!(Offer::decode(&v.to_string(), &k, &room2).is_err(), "{}", v);

        let mut v: serde_json::Value = serde_json::from_str(&encoded).unwrap();
        match number {
            0 => v["ts"] = (o.ts ^ 1).into(),
            1 => v["host"] = (o.host_count ^ 1).into(),
            2 => v["relay"] = (o.relay_count ^ 1).into(),
            _ => v["turn"] = (!o.turn).into(),
        }
        prop_assert!(Offer::decode(&v.to_string(), &k, &room).is_err(), "{}", v);
    }

    #[test]
    fn decode_never_panics_on_any_text(data in any::<String>(), (room, k) in key()) {
        let _ = Offer::decode(&data, &k, &room);
    }

    #[test]
    fn decode_never_panics_on_damaged_offers(
        o in offer(),
        (room, k) in key(),
        cut in any::<usize>(),
        flip in any::<(usize, u8)>(),
    ) {
        let encoded = o.encode(&k, &room);
        let mut bytes = encoded.clone().into_bytes();
        let at = flip.0 % bytes.len();
        bytes[at] ^= flip.1 | 1;
        if let Ok(text) = String::from_utf8(bytes) {
            prop_assert!(Offer::decode(&text, &k, &room).is_err());
        }
        let cut = cut % encoded.len();
        if encoded.is_char_boundary(cut) {
            prop_assert!(Offer::decode(&encoded[..cut], &k, &room).is_err());
        }
    }

    #[test]
    fn request_parsers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), query in any::<String>()) {
        let _ = parse_post(&body, MAX_ROOM_LEN);
        let _ = parse_query(&query, MAX_ROOM_LEN);
    }

    #[test]
    fn posts_keep_room_and_data_exactly(
        room in "\\PC{1,32}",
        data in any::<String>(),
        server in any::<bool>(),
    ) {
        prop_assume!(room.len() <= MAX_ROOM_LEN);
        let role = if server { Role::Server } else { Role::Client };
        let body = serde_json::json!({"room": room, "role": role.as_str(), "data": data});
        let p = parse_post(body.to_string().as_bytes(), MAX_ROOM_LEN).unwrap();
        prop_assert_eq!((p.room, p.role, p.data), (room.clone(), role, data));
        let query: String = form_urlencoded_pair("room", &room) + "&role=" + role.as_str();
        let q = parse_query(&query, MAX_ROOM_LEN).unwrap();
        prop_assert_eq!(q.room, room);
        prop_assert_eq!(q.role, role);
    }
}

/// `name=value` with the value percent-encoded byte by byte.
fn form_urlencoded_pair(name: &str, value: &str) -> String {
    let mut out = format!("{name}=");
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The fuzzers' seed offers were signed by `scripts/offer-vectors seeds`, written from
/// `docs/protocol.md` alone; that they verify here checks the documented canonical
/// bytes.
#[test]
fn the_fuzz_seed_offers_verify() {
    let key = RoomKey::derive("fuzz-room", Some("fuzz-secret"));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/offer_decode");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let offer = Offer::decode(&text, &key, "fuzz-room").unwrap();
        assert_eq!(offer.encode(&key, "fuzz-room"), text);
        seen += 1;
    }
    assert_eq!(seen, 2);
}
