//! Property tests of the rendezvous wire formats: every offer survives encode/decode,
//! nothing decodes under another key, any change to an authenticated field is caught,
//! and neither the offer decoder nor the request parsers panic on any input. (The
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
        id in hex_string(16),
        candidates in proptest::collection::vec(socket_addr(), 0..=32),
        fp in hex_string(32),
        nat in any::<String>(),
        turn in any::<bool>(),
        host_pick in any::<usize>(),
        relay_pick in any::<usize>(),
    ) -> Offer {
        let host_count = host_pick % (candidates.len() + 1);
        let relay_count = relay_pick % (candidates.len() - host_count + 1);
        Offer { id, candidates, host_count, relay_count, turn, fp, nat }
    }
}

fn key() -> impl Strategy<Value = RoomKey> {
    (any::<String>(), proptest::option::of(any::<String>()))
        .prop_map(|(room, secret)| RoomKey::derive(&room, secret.as_deref()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_offer_round_trips(o in offer(), k in key()) {
        let encoded = o.encode(&k);
        prop_assert!(encoded.len() <= stunfwd_core::signal::proto::MAX_OFFER_LEN);
        prop_assert_eq!(Offer::decode(&encoded, &k), Ok(o));
    }

    #[test]
    fn no_offer_decodes_under_another_key(o in offer(), k in key(), other in key()) {
        prop_assume!(k != other);
        prop_assert_eq!(Offer::decode(&o.encode(&k), &other), Err(OfferError::BadMac));
    }

    #[test]
    fn changed_authenticated_fields_are_caught(
        o in offer(),
        k in key(),
        field in 0usize..5,
        replacement in any::<String>(),
    ) {
        let encoded = o.encode(&k);
        let mut v: serde_json::Value = serde_json::from_str(&encoded).unwrap();
        let name = ["id", "fp", "nat", "candidates", "host"][field];
        let new = match name {
            "candidates" => serde_json::json!([replacement]),
            "host" => serde_json::json!(o.host_count + 1),
            _ => serde_json::json!(replacement),
        };
        prop_assume!(v[name] != new);
        v[name] = new;
        prop_assert!(Offer::decode(&v.to_string(), &k).is_err());
    }

    #[test]
    fn decode_never_panics_on_any_text(data in any::<String>(), k in key()) {
        let _ = Offer::decode(&data, &k);
    }

    #[test]
    fn decode_never_panics_on_damaged_offers(
        o in offer(),
        k in key(),
        cut in any::<usize>(),
        flip in any::<(usize, u8)>(),
    ) {
        let encoded = o.encode(&k);
        let mut bytes = encoded.clone().into_bytes();
        let at = flip.0 % bytes.len();
        bytes[at] ^= flip.1 | 1;
        if let Ok(text) = String::from_utf8(bytes) {
            prop_assert!(Offer::decode(&text, &k).is_err());
        }
        let cut = cut % encoded.len();
        if encoded.is_char_boundary(cut) {
            prop_assert!(Offer::decode(&encoded[..cut], &k).is_err());
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

/// The fuzzers' seed offers were signed by a script written from `docs/protocol.md`
/// alone; that they verify here checks the documented canonical bytes.
#[test]
fn the_fuzz_seed_offers_verify() {
    let key = RoomKey::derive("fuzz-room", Some("fuzz-secret"));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/offer_decode");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let offer = Offer::decode(&text, &key).unwrap();
        assert_eq!(offer.fp, "ab".repeat(32));
        seen += 1;
    }
    assert_eq!(seen, 2);
}
