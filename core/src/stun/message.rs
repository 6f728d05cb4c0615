//! STUN message encoding and decoding (pure functions over the `stun` crate).
//!
//! Three kinds of message travel on the engine's socket: Binding requests to STUN
//! servers (no credentials), ICE-style connectivity checks between peers (USERNAME
//! `<their id>:<our id>` and MESSAGE-INTEGRITY keyed by the room key), and the
//! Binding success responses to both.

use std::net::SocketAddr;

use stun::addr::MappedAddress;
use stun::agent::TransactionId;
use stun::attributes::{
    ATTR_CHANGE_REQUEST, ATTR_MESSAGE_INTEGRITY, ATTR_OTHER_ADDRESS, ATTR_USERNAME,
};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, Setter, BINDING_REQUEST, BINDING_SUCCESS, CLASS_ERROR_RESPONSE, CLASS_REQUEST,
    CLASS_SUCCESS_RESPONSE, METHOD_BINDING,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

/// A 96-bit STUN transaction id.
pub type Tid = [u8; 12];

/// True when `first_byte` can start a STUN message (RFC 7983 demultiplexing: 0–3).
pub fn is_stun_first_byte(first_byte: u8) -> bool {
    first_byte < 4
}

/// A new random transaction id.
pub fn new_tid() -> Tid {
    rand::random()
}

/// What a received STUN datagram is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A Binding request.
    Request {
        /// Transaction id.
        tid: Tid,
        /// USERNAME, if present.
        username: Option<String>,
        /// Whether it carries MESSAGE-INTEGRITY.
        has_integrity: bool,
    },
    /// A Binding success response.
    Success {
        /// Transaction id.
        tid: Tid,
        /// XOR-MAPPED-ADDRESS: where the responder saw us.
        mapped: Option<SocketAddr>,
        /// OTHER-ADDRESS (RFC 5780): the server's alternate address, if it has one.
        other: Option<SocketAddr>,
        /// Whether it carries MESSAGE-INTEGRITY.
        has_integrity: bool,
    },
    /// A Binding error response.
    ErrorResponse {
        /// Transaction id.
        tid: Tid,
    },
    /// A success or error response of another method (TURN), matched by transaction.
    OtherResponse {
        /// Transaction id.
        tid: Tid,
        /// Success (true) or error response.
        success: bool,
    },
    /// Any other STUN method or class (ignored by the engine).
    Other,
}

fn build(setters: &[Box<dyn Setter>]) -> Vec<u8> {
    let mut msg = Message::new();
    // Building only fails on oversized attributes, which our fixed inputs never are;
    // an empty vector is then dropped by the sender rather than sent malformed.
    match msg.build(setters) {
        Ok(()) => msg.raw,
        Err(_) => Vec::new(),
    }
}

/// A plain Binding request (to a STUN server).
pub fn binding_request(tid: Tid) -> Vec<u8> {
    build(&[
        Box::new(TransactionId(tid)),
        Box::new(BINDING_REQUEST),
        Box::new(FINGERPRINT),
    ])
}

/// A Binding request with CHANGE-REQUEST (RFC 5780 §7.2): ask the server to answer
/// from its alternate IP and/or port. Used for NAT filtering discovery.
pub fn change_request(tid: Tid, change_ip: bool, change_port: bool) -> Vec<u8> {
    struct Change(u32);
    impl Setter for Change {
        fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
            m.add(ATTR_CHANGE_REQUEST, &self.0.to_be_bytes());
            Ok(())
        }
    }
    let flags = (u32::from(change_ip) << 2) | (u32::from(change_port) << 1);
    build(&[
        Box::new(TransactionId(tid)),
        Box::new(BINDING_REQUEST),
        Box::new(Change(flags)),
        Box::new(FINGERPRINT),
    ])
}

/// An authenticated connectivity check: USERNAME + MESSAGE-INTEGRITY(`password`) + FINGERPRINT.
pub fn check_request(tid: Tid, username: &str, password: &str) -> Vec<u8> {
    build(&[
        Box::new(TransactionId(tid)),
        Box::new(BINDING_REQUEST),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        Box::new(MessageIntegrity::new_short_term_integrity(
            password.to_owned(),
        )),
        Box::new(FINGERPRINT),
    ])
}

/// A Binding success telling the requester where it came from; signed when `password` is given.
pub fn binding_success(tid: Tid, mapped: SocketAddr, password: Option<&str>) -> Vec<u8> {
    let xor = XorMappedAddress {
        ip: mapped.ip(),
        port: mapped.port(),
    };
    match password {
        Some(p) => build(&[
            Box::new(TransactionId(tid)),
            Box::new(BINDING_SUCCESS),
            Box::new(xor),
            Box::new(MessageIntegrity::new_short_term_integrity(p.to_owned())),
            Box::new(FINGERPRINT),
        ]),
        // Unsigned answers (the public STUN responder) stay minimal so they never
        // amplify: header + XOR-MAPPED-ADDRESS only.
        None => build(&[
            Box::new(TransactionId(tid)),
            Box::new(BINDING_SUCCESS),
            Box::new(xor),
        ]),
    }
}

fn decode(buf: &[u8]) -> Option<Message> {
    if buf.len() < 20 || !is_stun_first_byte(buf[0]) {
        return None;
    }
    let mut msg = Message::new();
    msg.raw = buf.to_vec();
    msg.decode().ok()?;
    Some(msg)
}

/// Classifies a datagram. `None` when it is not a well-formed STUN message.
pub fn parse(buf: &[u8]) -> Option<Parsed> {
    let msg = decode(buf)?;
    let tid = msg.transaction_id.0;
    let has_integrity = msg.contains(ATTR_MESSAGE_INTEGRITY);
    if msg.typ.method != METHOD_BINDING {
        return Some(match msg.typ.class {
            CLASS_SUCCESS_RESPONSE => Parsed::OtherResponse { tid, success: true },
            CLASS_ERROR_RESPONSE => Parsed::OtherResponse {
                tid,
                success: false,
            },
            _ => Parsed::Other,
        });
    }
    Some(match msg.typ.class {
        CLASS_REQUEST => Parsed::Request {
            tid,
            username: TextAttribute::get_from_as(&msg, ATTR_USERNAME)
                .ok()
                .map(|t| t.text),
            has_integrity,
        },
        CLASS_SUCCESS_RESPONSE => {
            let mut xor = XorMappedAddress::default();
            let mapped = xor
                .get_from(&msg)
                .ok()
                .map(|()| SocketAddr::new(xor.ip, xor.port));
            let mut alt = MappedAddress::default();
            let other = alt
                .get_from_as(&msg, ATTR_OTHER_ADDRESS)
                .ok()
                .map(|()| SocketAddr::new(alt.ip, alt.port));
            Parsed::Success {
                tid,
                mapped,
                other,
                has_integrity,
            }
        }
        CLASS_ERROR_RESPONSE => Parsed::ErrorResponse { tid },
        _ => Parsed::Other,
    })
}

/// The transaction id of `buf` when it is a connectivity check addressed to `our_id`
/// (USERNAME `our_id:...`) whose MESSAGE-INTEGRITY verifies under `password`.
pub fn check_to(buf: &[u8], our_id: &str, password: &str) -> Option<Tid> {
    let Some(Parsed::Request {
        tid,
        username: Some(username),
        has_integrity: true,
    }) = parse(buf)
    else {
        return None;
    };
    let to_us = username.split_once(':').map(|(to, _)| to) == Some(our_id);
    (to_us && verify_integrity(buf, password)).then_some(tid)
}

/// Verifies MESSAGE-INTEGRITY with the short-term `password`. False when absent or wrong.
pub fn verify_integrity(buf: &[u8], password: &str) -> bool {
    let Some(mut msg) = decode(buf) else {
        return false;
    };
    if !msg.contains(ATTR_MESSAGE_INTEGRITY) {
        return false;
    }
    MessageIntegrity::new_short_term_integrity(password.to_owned())
        .check(&mut msg)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_request_round_trip() {
        let tid = new_tid();
        let raw = binding_request(tid);
        assert!(is_stun_first_byte(raw[0]));
        assert_eq!(
            parse(&raw),
            Some(Parsed::Request {
                tid,
                username: None,
                has_integrity: false
            })
        );
    }

    #[test]
    fn check_is_signed_and_verifiable() {
        let tid = new_tid();
        let raw = check_request(tid, "peer:me", "k1");
        assert!(verify_integrity(&raw, "k1"));
        assert!(!verify_integrity(&raw, "k2"));
        assert!(!verify_integrity(&binding_request(tid), "k1"));
        match parse(&raw) {
            Some(Parsed::Request {
                username,
                has_integrity,
                ..
            }) => {
                assert_eq!(username.as_deref(), Some("peer:me"));
                assert!(has_integrity);
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut tampered = raw.clone();
        let n = tampered.len();
        tampered[n - 30] ^= 1;
        assert!(!verify_integrity(&tampered, "k1"));
    }

    #[test]
    fn success_carries_mapped_address() {
        let tid = new_tid();
        for addr in ["192.0.2.7:4242", "[2001:db8::1]:9"] {
            let addr: SocketAddr = addr.parse().expect("literal");
            let raw = binding_success(tid, addr, Some("pw"));
            assert!(verify_integrity(&raw, "pw"));
            assert_eq!(
                parse(&raw),
                Some(Parsed::Success {
                    tid,
                    mapped: Some(addr),
                    other: None,
                    has_integrity: true
                })
            );
            let plain = binding_success(tid, addr, None);
            assert!(matches!(
                parse(&plain),
                Some(Parsed::Success {
                    has_integrity: false,
                    ..
                })
            ));
        }
    }

    #[test]
    fn change_request_carries_the_flags() {
        let tid = new_tid();
        let raw = change_request(tid, true, true);
        let mut msg = Message::new();
        msg.raw = raw.clone();
        msg.decode().expect("valid");
        assert_eq!(
            msg.get(ATTR_CHANGE_REQUEST).expect("attr"),
            vec![0, 0, 0, 6]
        );
        assert!(matches!(
            parse(&raw),
            Some(Parsed::Request {
                has_integrity: false,
                ..
            })
        ));
        let port_only = change_request(tid, false, true);
        let mut msg = Message::new();
        msg.raw = port_only;
        msg.decode().expect("valid");
        assert_eq!(
            msg.get(ATTR_CHANGE_REQUEST).expect("attr"),
            vec![0, 0, 0, 2]
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u32;
        for len in 0..200 {
            let mut buf = vec![0u8; len];
            for b in &mut buf {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (seed >> 16) as u8;
            }
            if !buf.is_empty() {
                buf[0] &= 0x01;
            }
            if buf.len() >= 8 {
                buf[4..8].copy_from_slice(&0x2112_A442_u32.to_be_bytes());
            }
            let _ = parse(&buf);
            let _ = verify_integrity(&buf, "x");
        }
        // A valid header that claims more attributes than it carries.
        let mut raw = binding_request(new_tid());
        raw[3] = 200;
        assert_eq!(parse(&raw), None);
    }
}
