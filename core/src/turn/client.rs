//! TURN (RFC 8656) client on the engine's shared socket: allocation with long-term or
//! REST-API credentials, permissions, channel bindings, refreshes, and the framing of
//! relayed data (Send/Data indications, ChannelData).
//!
//! The relay only ever carries QUIC packets and connectivity checks; the tunnel stays
//! end-to-end encrypted between the peers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use stun::agent::TransactionId;
use stun::attributes::{
    AttrType, ATTR_CHANNEL_NUMBER, ATTR_LIFETIME, ATTR_NONCE, ATTR_REALM, ATTR_REQUESTED_TRANSPORT,
    ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS, ATTR_XOR_RELAYED_ADDRESS,
};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, MessageType, Method, Setter, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

use crate::config::RelayConfig;
use crate::error::{Error, Result};
use crate::stun::client::StunAgent;
use crate::stun::message::{self, Tid};
use crate::sync::lock;

/// First channel number (RFC 8656 §12).
const FIRST_CHANNEL: u16 = 0x4000;
/// The last channel number (RFC 8656 §12).
const LAST_CHANNEL: u16 = 0x4FFF;
const MAGIC: u32 = 0x2112_A442;

/// Where the relay is and how to authenticate.
#[derive(Clone)]
pub(crate) struct RelayTarget {
    pub server: SocketAddr,
    pub url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RelayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTarget")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `turn:HOST[:PORT][?transport=udp]` → "HOST:PORT".
pub(crate) fn host_port(url: &str) -> String {
    let rest = url
        .split_once(':')
        .map(|(_, r)| r)
        .unwrap_or(url)
        .split('?')
        .next()
        .unwrap_or("");
    if rest.starts_with('[') {
        if rest.contains("]:") {
            rest.to_owned()
        } else {
            format!("{rest}:3478")
        }
    } else if rest.contains(':') {
        rest.to_owned()
    } else {
        format!("{rest}:3478")
    }
}

/// Credentials from the config: long-term, or derived from the REST-API secret
/// (valid for a day).
pub(crate) fn credentials(cfg: &RelayConfig) -> (String, String) {
    match &cfg.auth_secret {
        Some(secret) => {
            let expiry = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                + 86_400;
            let user = format!("{expiry}:{}", cfg.username.as_deref().unwrap_or("stunfwd"));
            let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(user.as_bytes());
            let password =
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            (user, password)
        }
        None => (
            cfg.username.clone().unwrap_or_default(),
            cfg.credential.clone().unwrap_or_default(),
        ),
    }
}

struct RawAttr(AttrType, Vec<u8>);

impl Setter for RawAttr {
    fn add_to(&self, m: &mut Message) -> std::result::Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

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
            Some(SocketAddr::from((std::net::Ipv4Addr::from(x), port)))
        }
        2 if v.len() >= 20 => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC.to_be_bytes());
            key[4..].copy_from_slice(tid);
            let mut ip = [0u8; 16];
            for i in 0..16 {
                ip[i] = v[4 + i] ^ key[i];
            }
            Some(SocketAddr::from((std::net::Ipv6Addr::from(ip), port)))
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
    out.extend_from_slice(&0x0016u16.to_be_bytes()); // Send indication
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&tid);
    out.extend_from_slice(&ATTR_XOR_PEER_ADDRESS.0.to_be_bytes());
    out.extend_from_slice(&(addr.len() as u16).to_be_bytes());
    out.extend_from_slice(&addr);
    out.extend_from_slice(&0x0013u16.to_be_bytes()); // DATA
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0u8, pad));
    out
}

/// Parses a Data indication (RFC 8656 §11.4): (peer, data).
pub(crate) fn parse_data_indication(buf: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    if buf.len() < 20 || u16::from_be_bytes([buf[0], buf[1]]) != 0x0017 {
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
            0x0013 => data = Some(v.to_vec()),
            _ => {}
        }
        i += 4 + l + (4 - l % 4) % 4;
    }
    Some((peer?, data?))
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

/// Splits ChannelData into (channel, payload).
pub(crate) fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    if buf.len() < 4 || !(0x40..=0x4f).contains(&buf[0]) {
        return None;
    }
    let channel = u16::from_be_bytes([buf[0], buf[1]]);
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    Some((channel, buf.get(4..4 + len)?))
}

/// The outcome of one TURN request.
enum Reply {
    Success(Message),
    Error(u16, String, Message),
}

/// An allocation on a TURN server.
pub(crate) struct TurnClient {
    target: RelayTarget,
    agent: Arc<StunAgent>,
    realm: Mutex<String>,
    nonce: Mutex<String>,
    /// The relayed transport address peers send to.
    pub relayed: SocketAddr,
    /// Granted allocation lifetime.
    pub lifetime: Duration,
    permissions: Mutex<Vec<IpAddr>>,
    channels: Mutex<HashMap<SocketAddr, u16>>,
}

impl std::fmt::Debug for TurnClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnClient")
            .field("server", &self.target.server)
            .field("relayed", &self.relayed)
            .finish_non_exhaustive()
    }
}

async fn transact(
    agent: &StunAgent,
    server: SocketAddr,
    method: Method,
    attrs: Vec<RawAttr>,
    auth: Option<(&str, &str, &str, &str)>,
) -> Result<Reply> {
    let tid = message::new_tid();
    let raw = {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId(tid)),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        for a in attrs {
            setters.push(Box::new(a));
        }
        if let Some((user, realm, nonce, password)) = auth {
            setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, user.to_owned())));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, realm.to_owned())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.to_owned())));
            setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
                user.to_owned(),
                realm.to_owned(),
                password.to_owned(),
            )));
        }
        setters.push(Box::new(FINGERPRINT));
        let mut msg = Message::new();
        msg.build(&setters)
            .map_err(|e| Error::Relay(format!("cannot encode a TURN request: {e}")))?;
        msg.raw
    };
    let r = agent
        .transact(server, &raw, tid, Duration::from_millis(250), 5)
        .await
        .map_err(|_| {
            Error::Relay(format!(
                "the TURN server {server} did not answer (is it running, and is UDP to it allowed?)"
            ))
        })?;
    let mut m = Message::new();
    m.raw = r.raw;
    m.decode()
        .map_err(|e| Error::Relay(format!("malformed TURN answer: {e}")))?;
    if m.typ.class == CLASS_SUCCESS_RESPONSE {
        return Ok(Reply::Success(m));
    }
    let mut code = ErrorCodeAttribute::default();
    let (num, reason) = match code.get_from(&m) {
        Ok(()) => (
            code.code.0,
            String::from_utf8_lossy(&code.reason).into_owned(),
        ),
        Err(_) => (0, String::new()),
    };
    Ok(Reply::Error(num, reason, m))
}

fn text(m: &Message, attr: AttrType) -> Option<String> {
    TextAttribute::get_from_as(m, attr).ok().map(|t| t.text)
}

impl TurnClient {
    /// An allocation that was never made, with permissions for `permitted`, for tests
    /// of what the engine accepts from the relay.
    #[cfg(test)]
    pub(crate) fn for_test(
        agent: Arc<StunAgent>,
        server: SocketAddr,
        permitted: Vec<IpAddr>,
    ) -> TurnClient {
        TurnClient {
            target: RelayTarget {
                server,
                url: format!("turn:{server}"),
                username: "u".into(),
                password: "p".into(),
            },
            agent,
            realm: Mutex::default(),
            nonce: Mutex::default(),
            relayed: SocketAddr::from(([127, 0, 0, 1], 1)),
            lifetime: Duration::from_secs(600),
            permissions: Mutex::new(permitted),
            channels: Mutex::default(),
        }
    }

    /// Allocates a UDP relay (RFC 8656 §7): the unauthenticated request earns a 401
    /// with realm and nonce, the second one carries the long-term credential.
    pub async fn allocate(agent: Arc<StunAgent>, target: RelayTarget) -> Result<TurnClient> {
        let transport = || RawAttr(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
        let first = transact(
            &agent,
            target.server,
            METHOD_ALLOCATE,
            vec![transport()],
            None,
        )
        .await?;
        let (realm, nonce) = match first {
            Reply::Error(401, _, m) => (
                text(&m, ATTR_REALM).unwrap_or_default(),
                text(&m, ATTR_NONCE).unwrap_or_default(),
            ),
            Reply::Error(code, reason, _) => {
                return Err(turn_error(&target, "allocate", code, &reason))
            }
            Reply::Success(_) => {
                return Err(Error::Relay(format!(
                    "the TURN server {} allocated without authentication; refusing an open relay",
                    target.server
                )))
            }
        };
        let mut nonce = nonce;
        for _ in 0..2 {
            let auth = (
                target.username.as_str(),
                realm.as_str(),
                nonce.as_str(),
                target.password.as_str(),
            );
            match transact(&agent, target.server, METHOD_ALLOCATE, vec![transport()], Some(auth)).await? {
                Reply::Success(m) => {
                    let mut relayed = XorMappedAddress::default();
                    relayed
                        .get_from_as(&m, ATTR_XOR_RELAYED_ADDRESS)
                        .map_err(|_| Error::Relay("allocation without a relayed address".into()))?;
                    let lifetime = m
                        .get(ATTR_LIFETIME)
                        .ok()
                        .filter(|v| v.len() == 4)
                        .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
                        .unwrap_or(600);
                    let client = TurnClient {
                        relayed: SocketAddr::new(relayed.ip, relayed.port),
                        lifetime: Duration::from_secs(u64::from(lifetime.max(2))),
                        target,
                        agent,
                        realm: Mutex::new(realm),
                        nonce: Mutex::new(nonce),
                        permissions: Mutex::new(Vec::new()),
                        channels: Mutex::new(HashMap::new()),
                    };
                    tracing::info!(server = %client.target.server, relayed = %client.relayed, lifetime = ?client.lifetime, "relay allocated");
                    return Ok(client);
                }
                Reply::Error(438, _, m) => {
                    nonce = text(&m, ATTR_NONCE).unwrap_or_default();
                }
                Reply::Error(401, _, _) => {
                    return Err(Error::Relay(format!(
                        "the TURN server {} rejected the credentials (401 Unauthorized); check relay.username and relay.credential (or relay.authSecret)",
                        target.server
                    )))
                }
                Reply::Error(code, reason, _) => return Err(turn_error(&target, "allocate", code, &reason)),
            }
        }
        Err(Error::Relay(format!(
            "the TURN server {} kept answering 438 Stale Nonce",
            target.server
        )))
    }

    /// The TURN server's address.
    pub fn server(&self) -> SocketAddr {
        self.target.server
    }

    /// The relay URL as configured.
    pub fn url(&self) -> &str {
        &self.target.url
    }

    /// An authenticated request; retries once on 438 Stale Nonce.
    async fn request(&self, method: Method, attrs: impl Fn() -> Vec<RawAttr>) -> Result<Message> {
        for _ in 0..2 {
            let (realm, nonce) = (lock(&self.realm).clone(), lock(&self.nonce).clone());
            let auth = (
                self.target.username.as_str(),
                realm.as_str(),
                nonce.as_str(),
                self.target.password.as_str(),
            );
            match transact(&self.agent, self.target.server, method, attrs(), Some(auth)).await? {
                Reply::Success(m) => return Ok(m),
                Reply::Error(438, _, m) => {
                    *lock(&self.nonce) = text(&m, ATTR_NONCE).unwrap_or_default();
                }
                Reply::Error(code, reason, _) => {
                    return Err(turn_error(&self.target, "request", code, &reason))
                }
            }
        }
        Err(Error::Relay("stale nonce twice".into()))
    }

    /// Refreshes the allocation (`lifetime` 0 releases it).
    pub async fn refresh(&self, lifetime: Duration) -> Result<()> {
        let secs = lifetime.as_secs() as u32;
        self.request(METHOD_REFRESH, || {
            vec![RawAttr(ATTR_LIFETIME, secs.to_be_bytes().to_vec())]
        })
        .await
        .map(|_| ())
    }

    /// Installs (or refreshes) permissions for `ips` (ports do not matter).
    pub async fn permit(&self, ips: &[IpAddr]) -> Result<()> {
        let mut all = lock(&self.permissions).clone();
        for ip in ips {
            if !all.contains(ip) && ip.is_ipv4() == self.relayed.is_ipv4() {
                all.push(*ip);
            }
        }
        if all.is_empty() {
            return Ok(());
        }
        let tid_dummy = [0u8; 12];
        let peers = all.clone();
        self.request(METHOD_CREATE_PERMISSION, || {
            peers
                .iter()
                .map(|ip| {
                    RawAttr(
                        ATTR_XOR_PEER_ADDRESS,
                        xor_address(SocketAddr::new(*ip, 0), &tid_dummy),
                    )
                })
                .collect()
        })
        .await?;
        *lock(&self.permissions) = all;
        Ok(())
    }

    /// Binds (or refreshes) a channel for `peer`; returns its number.
    pub async fn bind_channel(&self, peer: SocketAddr) -> Result<u16> {
        let (channel, new) = reserve_channel(&self.channels, peer)?;
        let tid_dummy = [0u8; 12];
        let bound = self
            .request(METHOD_CHANNEL_BIND, || {
                vec![
                    RawAttr(
                        ATTR_CHANNEL_NUMBER,
                        [channel.to_be_bytes(), [0, 0]].concat(),
                    ),
                    RawAttr(ATTR_XOR_PEER_ADDRESS, xor_address(peer, &tid_dummy)),
                ]
            })
            .await;
        if let Err(e) = bound {
            if new {
                lock(&self.channels).remove(&peer);
            }
            return Err(e);
        }
        Ok(channel)
    }

    /// Whether `ip` has a permission on our allocation: only such peers' data is
    /// accepted from the relay (a Data indication naming another peer is forged).
    pub fn is_permitted(&self, ip: IpAddr) -> bool {
        lock(&self.permissions).contains(&ip)
    }

    /// Refreshes everything that expires: the allocation, permissions, channels.
    pub async fn refresh_all(&self) -> Result<()> {
        self.refresh(self.lifetime).await?;
        self.permit(&[]).await?;
        let peers: Vec<SocketAddr> = lock(&self.channels).keys().copied().collect();
        for p in peers {
            self.bind_channel(p).await?;
        }
        Ok(())
    }
}

/// The channel number of `peer` in `channels`: its own if it has one, else the lowest
/// free one, reserved at once under the lock (so binds running at the same time never
/// pick the same number). True when it is new.
fn reserve_channel(
    channels: &Mutex<HashMap<SocketAddr, u16>>,
    peer: SocketAddr,
) -> Result<(u16, bool)> {
    let mut channels = lock(channels);
    if let Some(ch) = channels.get(&peer) {
        return Ok((*ch, false));
    }
    let taken: std::collections::HashSet<u16> = channels.values().copied().collect();
    let Some(channel) = (FIRST_CHANNEL..=LAST_CHANNEL).find(|c| !taken.contains(c)) else {
        return Err(Error::Relay(format!(
            "all {} TURN channel numbers are in use",
            LAST_CHANNEL - FIRST_CHANNEL + 1
        )));
    };
    channels.insert(peer, channel);
    Ok((channel, true))
}

fn turn_error(target: &RelayTarget, what: &str, code: u16, reason: &str) -> Error {
    let hint = match code {
        486 => "allocation quota reached: too many allocations for this user on the TURN server",
        403 => "forbidden by the TURN server's policy",
        437 => "allocation mismatch (an old allocation from this address still exists)",
        441 => "wrong credentials",
        442 => "the TURN server does not support UDP relaying",
        508 => "the TURN server is out of relay ports",
        _ => "",
    };
    Error::Relay(format!(
        "TURN {what} on {} failed: {code} {reason}{}{hint}",
        target.server,
        if hint.is_empty() { "" } else { ": " }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        data[1] = 0x17;
        assert_eq!(
            parse_data_indication(&data),
            Some((peer, b"hello quic".to_vec()))
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

    #[test]
    fn rest_api_credentials() {
        let cfg = RelayConfig {
            url: "turn:h".into(),
            username: Some("alice".into()),
            credential: None,
            auth_secret: Some("s3cret".into()),
        };
        let (user, pass) = credentials(&cfg);
        assert!(user.ends_with(":alice"), "{user}");
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(b"s3cret").expect("key");
        mac.update(user.as_bytes());
        assert_eq!(
            pass,
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            host_port("turn:relay.example?transport=udp"),
            "relay.example:3478"
        );
        assert_eq!(host_port("turn:10.0.0.1:3479"), "10.0.0.1:3479");
    }

    /// Issue #14, finding 6: channel numbers are reserved under the lock, so binds
    /// running at the same time never share one, a peer keeps its own, and a failed
    /// bind's number can be reused.
    #[test]
    fn concurrent_binds_get_distinct_channels() {
        let channels = Arc::new(Mutex::new(HashMap::new()));
        let threads: Vec<_> = (0..8u16)
            .map(|t| {
                let channels = channels.clone();
                std::thread::spawn(move || {
                    (0..64u16)
                        .map(|i| {
                            let peer = SocketAddr::from(([10, 0, t as u8, 1], 1000 + i));
                            reserve_channel(&channels, peer).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            for (ch, new) in t.join().unwrap() {
                assert!(new);
                assert!((FIRST_CHANNEL..=LAST_CHANNEL).contains(&ch));
                assert!(all.insert(ch), "channel {ch:#x} given twice");
            }
        }
        assert_eq!(all.len(), 512);
        let peer = SocketAddr::from(([10, 0, 0, 1], 1000));
        let mine = lock(&channels)[&peer];
        assert_eq!(reserve_channel(&channels, peer).unwrap(), (mine, false));
        lock(&channels).remove(&peer);
        let other = SocketAddr::from(([192, 0, 2, 1], 1));
        assert_eq!(reserve_channel(&channels, other).unwrap(), (mine, true));
        // All 4096 taken: a clear error, not a wrapped or reused number.
        let full = Mutex::new(
            (FIRST_CHANNEL..=LAST_CHANNEL)
                .map(|c| (SocketAddr::from(([10, 1, 0, 0], c)), c))
                .collect::<HashMap<_, _>>(),
        );
        let err = reserve_channel(&full, other).unwrap_err();
        assert!(err.to_string().contains("4096"), "{err}");
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
                prop_assert_eq!(parse_data_indication(&ind), Some((peer, data.clone())));
                // Truncated anywhere: refused.
                for cut in [0, 1, 19, 20, ind.len() / 2, ind.len() - 1] {
                    prop_assert_eq!(parse_data_indication(&ind[..cut]), None);
                }
            }
        }
    }
}
