//! Offer encoding and decoding from structured input: every field is arbitrary (ids,
//! nonces and fingerprints need not be hex), so the decoder's checks *after* the MAC verified are
//! reached too. A decoded offer must equal the encoded one; one with a bad id or
//! fingerprint must be refused as malformed.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use stunfwd_core::signal::{Offer, OfferError, Role, RoomKey};

type Input = (
    (String, String, u64, bool),
    String,
    String,
    Vec<(u128, u16, bool)>,
    u8,
    u8,
    bool,
    String,
    (Option<Vec<u16>>, Option<Vec<u16>>),
);

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|input: Input| {
    let ((id, nonce, ts, server), fp, nat, raw_candidates, host, relay, turn, room, lists) = input;
    // Port prediction's lists as an encoder makes them: ports 1-65535, at most 32.
    let ports = |l: Option<Vec<u16>>| {
        l.map(|v| v.into_iter().filter(|p| *p > 0).take(32).collect::<Vec<u16>>())
    };
    let (predict, comb) = (ports(lists.0), ports(lists.1));
    let role = if server { Role::Server } else { Role::Client };
    let candidates: Vec<SocketAddr> = raw_candidates
        .into_iter()
        .take(40)
        .map(|(ip, port, v6)| {
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::from(ip))
            } else {
                IpAddr::V4(Ipv4Addr::from(ip as u32))
            };
            SocketAddr::new(ip, port)
        })
        .collect();
    let host_count = usize::from(host) % (candidates.len() + 1);
    let relay_count = usize::from(relay) % (candidates.len() - host_count + 1);
    let offer = Offer {
        role,
        id,
        nonce,
        ts,
        candidates,
        host_count,
        relay_count,
        turn,
        fp,
        nat,
        predict,
        comb,
    };
    let key = RoomKey::derive(&room, Some("fuzz-secret"));
    let encoded = offer.encode(&key, &room);
    match Offer::decode(&encoded, &key, &room) {
        Ok(decoded) => {
            assert_eq!(decoded, offer);
            assert!(
                lower_hex(&offer.id, 32) && lower_hex(&offer.nonce, 32) && lower_hex(&offer.fp, 64)
            );
        }
        Err(OfferError::Malformed(_)) => {
            let valid = lower_hex(&offer.id, 32)
                && lower_hex(&offer.nonce, 32)
                && lower_hex(&offer.fp, 64)
                && offer.candidates.len() <= 32
                && encoded.len() <= 16 * 1024;
            assert!(!valid, "a valid offer was refused: {encoded}");
        }
        Err(e) => panic!("{e}: {encoded}"),
    }
});
