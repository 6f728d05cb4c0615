//! TURN framing of relayed data (RFC 8656): Send and Data indications, ChannelData,
//! and XOR-encoded addresses. Pure functions, no I/O: the socket layer frames and
//! unwraps with them, the client encodes its requests' addresses with them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use stun::attributes::ATTR_XOR_PEER_ADDRESS;

use crate::stun::message::Tid;

/// First channel number (RFC 8656 §12).
pub(crate) const FIRST_CHANNEL: u16 = 0x4000;
/// The last channel number (RFC 8656 §12).
pub(crate) const LAST_CHANNEL: u16 = 0x4FFF;
/// The STUN magic cookie (RFC 8489 §5).
const MAGIC: u32 = 0x2112_A442;
/// Message type of a Send indication (RFC 8656 §18).
const SEND_INDICATION: u16 = 0x0016;
/// Message type of a Data indication (RFC 8656 §18).
const DATA_INDICATION: u16 = 0x0017;
/// The DATA attribute (RFC 8656 §18).
const ATTR_DATA: u16 = 0x0013;

/// Encodes an address as XOR-PEER-ADDRESS / XOR-MAPPED-ADDRESS value.
pub(crate) fn xor_address(addr: SocketAddr, tid: &Tid) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC >> 16) as u16;
    let mut out = Vec::with_capacity(20);
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&port.to_be_bytes());
            let x = u32::from(ip) ^ MAGIC;
            out.extend_from_slice(&x.to_be_bytes());
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[0, 2]);
            out.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC.to_be_bytes());
            key[4..].copy_from_slice(tid);
            for (a, k) in ip.octets().iter().zip(key) {
                out.push(a ^ k);
            }
        }
    }
    out
}

/// Decodes an XOR address value.
pub(crate) fn parse_xor_address(v: &[u8], tid: &Tid) -> Option<SocketAddr> {
    if v.len() < 8 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
    match v[1] {
        1 => {
            let x = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC;
            Some(SocketAddr::from((Ipv4Addr::from(x), port)))
        }
        2 if v.len() >= 20 => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC.to_be_bytes());
            key[4..].copy_from_slice(tid);
            let mut ip = [0u8; 16];
            for i in 0..16 {
                ip[i] = v[4 + i] ^ key[i];
            }
            Some(SocketAddr::from((Ipv6Addr::from(ip), port)))
        }
        _ => None,
    }
}

/// A Send indication carrying `data` to `peer` (RFC 8656 §11.1), hand-built: it is on
/// the data path until a channel is bound.
pub(crate) fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let tid: Tid = rand::random();
    let addr = xor_address(peer, &tid);
    let pad = (4 - data.len() % 4) % 4;
    let len = 4 + addr.len() + 4 + data.len() + pad;
    let mut out = Vec::with_capacity(20 + len);
    out.extend_from_slice(&SEND_INDICATION.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&tid);
    out.extend_from_slice(&ATTR_XOR_PEER_ADDRESS.0.to_be_bytes());
    out.extend_from_slice(&(addr.len() as u16).to_be_bytes());
    out.extend_from_slice(&addr);
    out.extend_from_slice(&ATTR_DATA.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0u8, pad));
    out
}

/// True when `buf` starts like a Data indication (its message type), before any
/// parsing: how the socket tells relayed data from the TURN server's own answers.
pub(crate) fn is_data_indication(buf: &[u8]) -> bool {
    buf.get(..2) == Some(&DATA_INDICATION.to_be_bytes())
}

/// Parses a Data indication (RFC 8656 §11.4): the peer, and where its data lies in
/// `buf` (so the caller can unwrap it in place).
pub(crate) fn data_indication(buf: &[u8]) -> Option<(SocketAddr, Range<usize>)> {
    if buf.len() < 20 || !is_data_indication(buf) {
        return None;
    }
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&buf[8..20]);
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let body = buf.get(20..20 + len)?;
    let (mut peer, mut data) = (None, None);
    let mut i = 0;
    while i + 4 <= body.len() {
        let t = u16::from_be_bytes([body[i], body[i + 1]]);
        let l = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let v = body.get(i + 4..i + 4 + l)?;
        match t {
            0x0012 => peer = parse_xor_address(v, &tid),
            ATTR_DATA => data = Some(20 + i + 4..20 + i + 4 + l),
            _ => {}
        }
        i += 4 + l + (4 - l % 4) % 4;
    }
    Some((peer?, data?))
}

/// Parses a Data indication (RFC 8656 §11.4): (peer, data).
#[cfg(test)]
pub(crate) fn parse_data_indication(buf: &[u8]) -> Option<(SocketAddr, &[u8])> {
    data_indication(buf).map(|(peer, range)| (peer, &buf[range]))
}

/// ChannelData framing (RFC 8656 §12.4): `[channel u16][len u16][data][pad to 4]`.
pub(crate) fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let pad = (4 - data.len() % 4) % 4;
    let mut out = Vec::with_capacity(4 + data.len() + pad);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0u8, pad));
    out
}

/// True when `first_byte` can start ChannelData (channel numbers 0x4000–0x4FFF).
pub(crate) fn is_channel_data_first_byte(first_byte: u8) -> bool {
    (0x40..=0x4f).contains(&first_byte)
}

/// Splits ChannelData into (channel, payload); the payload starts at byte 4.
pub(crate) fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    if buf.len() < 4 || !is_channel_data_first_byte(buf[0]) {
        return None;
    }
    let channel = u16::from_be_bytes([buf[0], buf[1]]);
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    Some((channel, buf.get(4..4 + len)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::message::Message;

    #[test]
    fn xor_addresses_round_trip() {
        let tid: Tid = [7; 12];
        for a in ["198.51.100.7:3478", "[2001:db8::5]:40000"] {
            let a: SocketAddr = a.parse().expect("literal");
            assert_eq!(parse_xor_address(&xor_address(a, &tid), &tid), Some(a));
        }
    }

    #[test]
    fn send_indication_is_a_valid_stun_message() {
        let peer: SocketAddr = "203.0.113.9:5000".parse().expect("literal");
        let raw = send_indication(peer, b"hello quic");
        let mut m = Message::new();
        m.raw = raw.clone();
        m.decode().expect("decodes");
        assert_eq!(m.typ.method, stun::message::METHOD_SEND);
        assert_eq!(
            m.get(stun::attributes::ATTR_DATA).expect("data"),
            b"hello quic"
        );
        // The same layout with the Data type parses as a Data indication.
        let mut data = raw;
        assert!(!is_data_indication(&data));
        data[1] = 0x17;
        assert!(is_data_indication(&data));
        assert_eq!(
            parse_data_indication(&data),
            Some((peer, &b"hello quic"[..]))
        );
    }

    #[test]
    fn channel_data_round_trip_and_padding() {
        let framed = channel_data(0x4001, b"abcde");
        assert_eq!(framed.len(), 12);
        assert_eq!(parse_channel_data(&framed), Some((0x4001, &b"abcde"[..])));
        assert_eq!(parse_channel_data(&[0x00, 1, 0, 0]), None);
        assert_eq!(parse_channel_data(&[0x40, 0, 0, 9, 1]), None);
    }

    mod props {
        //! TURN framing from the network never panics, and what we frame reads back.
        use super::*;
        use proptest::prelude::*;

        fn addr() -> impl Strategy<Value = SocketAddr> {
            prop_oneof![
                (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
                (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            ]
        }

        /// A Data indication as a TURN server sends it.
        fn data_indication(tid: &Tid, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
            let mut attrs = Vec::new();
            for (t, v) in [(0x0012u16, xor_address(peer, tid)), (0x0013, data.to_vec())] {
                attrs.extend_from_slice(&t.to_be_bytes());
                attrs.extend_from_slice(&(v.len() as u16).to_be_bytes());
                attrs.extend_from_slice(&v);
                attrs.extend(std::iter::repeat_n(0u8, (4 - v.len() % 4) % 4));
            }
            let mut out = vec![0x00, 0x17];
            out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
            out.extend_from_slice(&MAGIC.to_be_bytes());
            out.extend_from_slice(tid);
            out.extend_from_slice(&attrs);
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn parsers_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600), tid in any::<[u8; 12]>()) {
                let _ = parse_data_indication(&buf);
                let _ = parse_channel_data(&buf);
                let _ = parse_xor_address(&buf, &tid);
                // The same with the first bytes of the formats they expect.
                let mut di = buf.clone();
                if di.len() >= 2 { di[0] = 0x00; di[1] = 0x17; }
                let _ = parse_data_indication(&di);
                let mut cd = buf;
                if !cd.is_empty() { cd[0] = 0x40 | (cd[0] & 0x0f); }
                let _ = parse_channel_data(&cd);
            }

            #[test]
            fn framing_round_trips(
                peer in addr(),
                tid in any::<[u8; 12]>(),
                data in proptest::collection::vec(any::<u8>(), 0..2000),
                channel in 0x4000u16..=0x4fff,
            ) {
                prop_assert_eq!(parse_xor_address(&xor_address(peer, &tid), &tid), Some(peer));
                let framed = channel_data(channel, &data);
                prop_assert_eq!(framed.len() % 4, 0);
                prop_assert_eq!(parse_channel_data(&framed), Some((channel, &data[..])));
                let ind = data_indication(&tid, peer, &data);
                prop_assert_eq!(parse_data_indication(&ind), Some((peer, &data[..])));
                // Truncated anywhere: refused.
                for cut in [0, 1, 19, 20, ind.len() / 2, ind.len() - 1] {
                    prop_assert_eq!(parse_data_indication(&ind[..cut]), None);
                }
            }
        }
    }
}
