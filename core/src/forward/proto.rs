//! Tunnel stream and datagram framing (pure functions).
//!
//! Every forwarded TCP connection and every UDP flow is one QUIC bidirectional stream
//! opened by the client role. It starts with a header
//! `[version u8 = 1][kind u8][len u16 BE][target "host:port", len bytes]`, followed for
//! UDP flows by `[flow id u64 BE]`. The server answers one [`Status`] byte. Afterwards a
//! TCP stream carries raw bytes; a UDP flow stream carries datagrams too large for a
//! QUIC DATAGRAM frame as `[len u32 BE][payload]`. Small UDP datagrams travel as QUIC
//! DATAGRAM frames `[flow id varint][payload]`.

use bytes::{BufMut, Bytes, BytesMut};

/// Current header version.
pub const VERSION: u8 = 1;
/// Longest target string accepted.
pub const MAX_TARGET: usize = 512;
/// Largest UDP payload: 65,527 bytes, the IPv6 maximum without jumbograms (IPv4's is
/// 65,507). Anything a local socket can receive is carried; a datagram too large for
/// the target's address family is dropped by the target side's kernel, alone.
pub const MAX_DATAGRAM: usize = 65_527;

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP connection.
    Tcp = 1,
    /// A UDP flow.
    Udp = 2,
}

impl Kind {
    /// `tcp` or `udp`, as in mapping specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
        }
    }
}

/// The server's one-byte answer to a stream header. Values are part of the wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Connected; data follows.
    Ok = 0,
    /// The server's allow rules forbid the target.
    NotAllowed = 1,
    /// The server could not reach the target.
    ConnectFailed = 2,
    /// The header was malformed or of an unknown version.
    BadHeader = 3,
    /// A UDP flow beyond the server's `maxUdpFlowsPerClient` (a peer before this
    /// status existed reads it as `BadHeader`).
    TooManyFlows = 4,
}

impl Status {
    /// Decodes a status byte (unknown values read as `BadHeader`).
    pub fn from_byte(b: u8) -> Status {
        match b {
            0 => Status::Ok,
            1 => Status::NotAllowed,
            2 => Status::ConnectFailed,
            4 => Status::TooManyFlows,
            _ => Status::BadHeader,
        }
    }

    /// A short description for logs and errors.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotAllowed => "refused by the peer's allow rules",
            Status::ConnectFailed => "the peer could not connect to the target",
            Status::BadHeader => "the peer rejected the stream header",
            Status::TooManyFlows => {
                "the peer already carries as many UDP flows for this client as it allows \
                 (its performance.maxUdpFlowsPerClient)"
            }
        }
    }
}

/// A decoded stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// TCP or UDP.
    pub kind: Kind,
    /// "host:port" on the server side.
    pub target: String,
    /// The flow id for UDP.
    pub flow_id: Option<u64>,
}

/// Encodes a header.
pub fn encode_header(h: &Header) -> Vec<u8> {
    let target = h.target.as_bytes();
    let len = target.len().min(MAX_TARGET);
    let mut out = Vec::with_capacity(4 + len + 8);
    out.push(VERSION);
    out.push(h.kind as u8);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&target[..len]);
    if let Some(id) = h.flow_id {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out
}

/// Why a header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// More bytes are needed: read this many in total (fixed part first, then the rest).
    Need(usize),
    /// The header is invalid.
    Bad(&'static str),
}

/// Decodes a header from `buf`, which must hold at least the fixed 4 bytes; returns
/// `Need(n)` until `buf` holds the whole header.
pub fn decode_header(buf: &[u8]) -> Result<(Header, usize), HeaderError> {
    if buf.len() < 4 {
        return Err(HeaderError::Need(4));
    }
    if buf[0] != VERSION {
        return Err(HeaderError::Bad("unsupported header version"));
    }
    let kind = match buf[1] {
        1 => Kind::Tcp,
        2 => Kind::Udp,
        _ => return Err(HeaderError::Bad("unknown stream kind")),
    };
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_TARGET {
        return Err(HeaderError::Bad("target length out of range"));
    }
    let total = 4 + len + if kind == Kind::Udp { 8 } else { 0 };
    if buf.len() < total {
        return Err(HeaderError::Need(total));
    }
    let target = std::str::from_utf8(&buf[4..4 + len])
        .map_err(|_| HeaderError::Bad("target is not UTF-8"))?
        .to_owned();
    let flow_id = if kind == Kind::Udp {
        let mut id = [0u8; 8];
        id.copy_from_slice(&buf[4 + len..total]);
        Some(u64::from_be_bytes(id))
    } else {
        None
    };
    Ok((
        Header {
            kind,
            target,
            flow_id,
        },
        total,
    ))
}

/// Splits "host:port" (IPv6 hosts in brackets) into host and port.
pub fn split_target(target: &str) -> Option<(&str, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if port == 0 {
        return None;
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

/// Appends a QUIC variable-length integer (RFC 9000 §16); values ≥ 2^62 are clamped.
pub fn put_varint(out: &mut BytesMut, v: u64) {
    if v < 1 << 6 {
        out.put_u8(v as u8);
    } else if v < 1 << 14 {
        out.put_u16(0x4000 | v as u16);
    } else if v < 1 << 30 {
        out.put_u32(0x8000_0000 | v as u32);
    } else {
        out.put_u64(0xC000_0000_0000_0000 | v.min((1 << 62) - 1));
    }
}

/// Reads a QUIC varint from the front of `buf`: (value, bytes used).
pub fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for b in &buf[1..len] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

/// A DATAGRAM frame payload: `[flow id varint][payload]`.
pub fn encode_datagram(flow_id: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + payload.len());
    put_varint(&mut out, flow_id);
    out.extend_from_slice(payload);
    out.freeze()
}

/// Splits a DATAGRAM frame into flow id and payload.
pub fn decode_datagram(frame: &Bytes) -> Option<(u64, Bytes)> {
    let (id, used) = get_varint(frame)?;
    Some((id, frame.slice(used..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for h in [
            Header {
                kind: Kind::Tcp,
                target: "127.0.0.1:22".into(),
                flow_id: None,
            },
            Header {
                kind: Kind::Udp,
                target: "[::1]:53".into(),
                flow_id: Some(u64::MAX - 3),
            },
        ] {
            let raw = encode_header(&h);
            assert_eq!(decode_header(&raw), Ok((h.clone(), raw.len())));
            for cut in 0..raw.len() {
                assert!(matches!(decode_header(&raw[..cut]), Err(HeaderError::Need(n)) if n > cut));
            }
        }
    }

    #[test]
    fn bad_headers() {
        assert_eq!(
            decode_header(&[2, 1, 0, 1, b'x']),
            Err(HeaderError::Bad("unsupported header version"))
        );
        assert_eq!(
            decode_header(&[1, 9, 0, 1, b'x']),
            Err(HeaderError::Bad("unknown stream kind"))
        );
        assert_eq!(
            decode_header(&[1, 1, 0, 0]),
            Err(HeaderError::Bad("target length out of range"))
        );
        assert_eq!(
            decode_header(&[1, 1, 0xff, 0xff]),
            Err(HeaderError::Bad("target length out of range"))
        );
        assert_eq!(
            decode_header(&[1, 1, 0, 2, 0xff, 0xfe]),
            Err(HeaderError::Bad("target is not UTF-8"))
        );
    }

    #[test]
    fn varints() {
        for v in [
            0u64,
            1,
            63,
            64,
            16_383,
            16_384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(get_varint(&b), Some((v, b.len())));
            assert_eq!(get_varint(&b[..b.len() - 1]), None);
        }
        let frame = encode_datagram(300, b"hello");
        assert_eq!(
            decode_datagram(&frame),
            Some((300, Bytes::from_static(b"hello")))
        );
    }

    #[test]
    fn targets() {
        assert_eq!(split_target("127.0.0.1:22"), Some(("127.0.0.1", 22)));
        assert_eq!(split_target("[::1]:53"), Some(("::1", 53)));
        assert_eq!(split_target("example.org:443"), Some(("example.org", 443)));
        assert_eq!(split_target("host:0"), None);
        assert_eq!(split_target(":22"), None);
        assert_eq!(split_target("host"), None);
    }
}
