//! Property tests (on stable, bounded, in CI) of the parsers that read input from the
//! network or from users (issue #14, finding 9): STUN messages, the tunnel's stream
//! headers and datagram frames, and the config. Offers and mailbox requests are in
//! `signaling_props.rs`, TURN framing in `relay.rs`'s unit tests. None may panic on any
//! input, and what we encode must decode to the same thing. (The cargo-fuzz targets in
//! `fuzz/` explore the offer and request parsers without bounds, on nightly.)
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use stunfwd_core::config::{AllowRule, Config, Mapping};
use stunfwd_core::forward::proto::{
    decode_datagram, decode_header, encode_datagram, encode_header, get_varint, put_varint, Header,
    Kind, MAX_TARGET,
};
use stunfwd_core::stun::message::{self, Parsed};

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn stun_parsing_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..700), pw in ".{0,40}") {
        let _ = message::parse(&buf);
        let _ = message::verify_integrity(&buf, &pw);
        // With a valid-looking header (type, length, magic cookie).
        let mut stun = buf.clone();
        if stun.len() >= 20 {
            stun[0] &= 0x3f;
            let len = (stun.len() - 20) as u16 & !3;
            stun[2..4].copy_from_slice(&len.to_be_bytes());
            stun[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            let _ = message::parse(&stun);
            let _ = message::verify_integrity(&stun, &pw);
        }
    }

    /// A connectivity check verifies under its password, is addressed to its user, and
    /// fails verification once any byte after the header is changed.
    #[test]
    fn checks_round_trip_and_any_change_breaks_them(
        user in "[a-f0-9]{32}:[a-f0-9]{32}",
        pw in "[a-f0-9]{64}",
        flip in any::<(usize, u8)>(),
        mapped in addr(),
    ) {
        let tid = message::new_tid();
        let req = message::check_request(tid, &user, &pw);
        match message::parse(&req) {
            Some(Parsed::Request { tid: t, username, has_integrity }) => {
                prop_assert_eq!(t, tid);
                prop_assert_eq!(username.as_deref(), Some(user.as_str()));
                prop_assert!(has_integrity);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        prop_assert!(message::verify_integrity(&req, &pw));
        prop_assert!(!message::verify_integrity(&req, "another password"));
        // Everything but the trailing FINGERPRINT (8 bytes, a demultiplexing aid that
        // MESSAGE-INTEGRITY does not cover) is authenticated.
        let mut bad = req.clone();
        let at = 20 + flip.0 % (bad.len() - 28);
        bad[at] ^= flip.1 | 1;
        prop_assert!(!message::verify_integrity(&bad, &pw));
        let ok = message::binding_success(tid, mapped, Some(&pw));
        match message::parse(&ok) {
            Some(Parsed::Success { mapped: m, has_integrity, .. }) => {
                prop_assert_eq!(m, Some(mapped));
                prop_assert!(has_integrity);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn stream_headers_never_panic_and_round_trip(
        buf in proptest::collection::vec(any::<u8>(), 0..700),
        target in ".{0,600}",
        udp in any::<bool>(),
        flow in any::<u64>(),
    ) {
        let _ = decode_header(&buf);
        let h = Header {
            kind: if udp { Kind::Udp } else { Kind::Tcp },
            target: target.clone(),
            flow_id: udp.then_some(flow),
        };
        let encoded = encode_header(&h);
        // Targets come from validated mappings (a host name and a port, far below
        // MAX_TARGET); longer ones are cut by the encoder and never decode as the same.
        match decode_header(&encoded) {
            Ok((back, used)) if target.len() <= MAX_TARGET && !target.is_empty() => {
                prop_assert_eq!(used, encoded.len());
                prop_assert_eq!(&back, &h);
            }
            Ok((back, _)) => prop_assert!(back != h),
            Err(e) => prop_assert!(target.len() > MAX_TARGET || target.is_empty(), "{:?}", e),
        }
        // Any prefix is incomplete or an error, never a different header.
        for cut in 0..encoded.len() {
            if let Ok((back, _)) = decode_header(&encoded[..cut]) {
                prop_assert!(back != h, "a prefix decoded as the whole header");
            }
        }
    }

    #[test]
    fn datagram_frames_never_panic_and_round_trip(
        frame in proptest::collection::vec(any::<u8>(), 0..300),
        // Flow ids count up from 1; QUIC varints end at 2^62.
        flow in 0u64..(1 << 62),
        payload in proptest::collection::vec(any::<u8>(), 0..2000),
        v in 0u64..(1 << 62),
    ) {
        let _ = decode_datagram(&Bytes::from(frame.clone()));
        let _ = get_varint(&frame);
        let encoded = encode_datagram(flow, &payload);
        prop_assert_eq!(decode_datagram(&encoded), Some((flow, Bytes::from(payload))));
        let mut out = BytesMut::new();
        put_varint(&mut out, v);
        prop_assert_eq!(get_varint(&out), Some((v, out.len())));
    }

    #[test]
    fn config_parsing_never_panics(text in ".{0,400}", json in any::<String>()) {
        let _ = Config::from_json(&text);
        let _ = Config::from_yaml(&text);
        let _ = Config::from_json(&json);
        let _ = Mapping::parse(&text);
        let _ = AllowRule::parse(&text);
    }

    /// Config-shaped documents with arbitrary values: parsed or refused, never a panic;
    /// what parses survives its canonical form.
    #[test]
    fn config_values_parse_or_are_refused(
        mode in prop_oneof![
            Just("client".to_owned()),
            Just("server".to_owned()),
            Just("sender".to_owned()),
            ".{0,8}",
        ],
        room in ".{0,20}",
        url in prop_oneof![Just("http://127.0.0.1:1/".to_owned()), ".{0,30}"],
        mapping in prop_oneof!["(tcp|udp):[0-9]{1,5}:[0-9]{1,5}", ".{0,20}"],
        allow in prop_oneof!["(tcp|udp|\\*):[0-9.]{1,15}(/[0-9]{1,2})?:[0-9*]{1,5}", ".{0,20}"],
        wait in prop_oneof!["[0-9]{1,4}(ms|s|m)", ".{0,6}"],
    ) {
        let v = serde_json::json!({
            "mode": mode, "room": room, "secret": "k", "signalUrl": url,
            "mappings": [mapping], "allow": [allow],
            "performance": {"tunnelWait": wait},
        });
        if let Ok(c) = Config::from_value(v) {
            prop_assert_eq!(Config::from_value(c.to_json()).unwrap(), c);
        }
    }
}

#[test]
fn valid_specs_round_trip() {
    for spec in [
        "tcp:8080:22",
        "udp:127.0.0.1:5000:[::1]:53",
        "tcp:0:db.lan:5432",
    ] {
        let m = Mapping::parse(spec).unwrap();
        assert_eq!(Mapping::parse(&m.to_string()).unwrap(), m);
    }
    for rule in [
        "tcp:127.0.0.1:22",
        "*:10.0.0.0/8:*",
        "udp:[::1]:53",
        "*:*.lan:1-1024",
    ] {
        let r = AllowRule::parse(rule).unwrap();
        assert_eq!(AllowRule::parse(&r.to_string()).unwrap(), r);
    }
}
