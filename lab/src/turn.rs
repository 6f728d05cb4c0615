//! A minimal blocking TURN client (RFC 8656 over UDP, long-term credentials) for
//! tests that look at what coturn relays: Allocate, CreatePermission, Send and Data
//! indications. The engine's own TURN client is private to stunfwd-core.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stun::attributes::{
    ATTR_DATA, ATTR_LIFETIME, ATTR_NONCE, ATTR_REALM, ATTR_REQUESTED_TRANSPORT,
    ATTR_XOR_PEER_ADDRESS, ATTR_XOR_RELAYED_ADDRESS,
};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, MessageType, Method, Setter, CLASS_ERROR_RESPONSE, CLASS_INDICATION,
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_CREATE_PERMISSION, METHOD_DATA,
    METHOD_SEND,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

/// A TURN error response: code and reason phrase (e.g. 403 "Forbidden IP").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnError {
    /// The error code.
    pub code: u16,
    /// The reason phrase.
    pub reason: String,
}

impl std::fmt::Display for TurnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// One allocation on a TURN server.
pub struct TurnClient {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
    /// The relayed transport address coturn allocated.
    pub relayed: SocketAddr,
    /// Where the server saw us (XOR-MAPPED-ADDRESS of the Allocate answer).
    pub mapped: Option<SocketAddr>,
}

struct Raw(stun::attributes::AttrType, Vec<u8>);

impl Setter for Raw {
    fn add_to(&self, m: &mut Message) -> std::result::Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

struct PeerAddr(SocketAddr);

impl Setter for PeerAddr {
    fn add_to(&self, m: &mut Message) -> std::result::Result<(), stun::Error> {
        XorMappedAddress {
            ip: self.0.ip(),
            port: self.0.port(),
        }
        .add_to_as(m, ATTR_XOR_PEER_ADDRESS)
    }
}

fn build(setters: Vec<Box<dyn Setter>>) -> Result<Vec<u8>> {
    let mut m = Message::new();
    m.build(&setters).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(m.raw)
}

fn decode(buf: &[u8]) -> Option<Message> {
    let mut m = Message::new();
    m.raw = buf.to_vec();
    m.decode().ok()?;
    Some(m)
}

fn error_of(m: &Message) -> TurnError {
    let mut e = ErrorCodeAttribute::default();
    match e.get_from(m) {
        Ok(()) => TurnError {
            code: e.code.0,
            reason: String::from_utf8_lossy(&e.reason).into_owned(),
        },
        Err(_) => TurnError {
            code: 0,
            reason: "error response without ERROR-CODE".into(),
        },
    }
}

impl TurnClient {
    /// Allocates a UDP relay on `server` from `socket` (a socket created in the
    /// namespace it should send from). Fails when the server refuses.
    pub fn allocate(
        socket: UdpSocket,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<TurnClient> {
        socket.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut c = TurnClient {
            socket,
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            nonce: String::new(),
            relayed: SocketAddr::from(([0, 0, 0, 0], 0)),
            mapped: None,
        };
        // The first request is unauthenticated; its 401 carries realm and nonce.
        let first = c.transact(METHOD_ALLOCATE, Vec::new, false)?;
        match first {
            Ok(_) => bail!("the TURN server allocated without authentication"),
            Err(e) if e.0.code == 401 => {}
            Err(e) => bail!("allocate: {}", e.0),
        }
        let answer = c
            .transact(
                METHOD_ALLOCATE,
                || {
                    vec![
                        Box::new(Raw(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0]))
                            as Box<dyn Setter>,
                        Box::new(Raw(ATTR_LIFETIME, 600u32.to_be_bytes().to_vec())),
                    ]
                },
                true,
            )?
            .map_err(|e| anyhow::anyhow!("allocate: {}", e.0))?;
        let mut relayed = XorMappedAddress::default();
        relayed
            .get_from_as(&answer, ATTR_XOR_RELAYED_ADDRESS)
            .map_err(|e| anyhow::anyhow!("no XOR-RELAYED-ADDRESS: {e}"))?;
        c.relayed = SocketAddr::new(relayed.ip, relayed.port);
        let mut mapped = XorMappedAddress::default();
        c.mapped = mapped
            .get_from(&answer)
            .ok()
            .map(|()| SocketAddr::new(mapped.ip, mapped.port));
        Ok(c)
    }

    /// Asks for a permission towards `peer`'s IP: `Ok(Err(..))` carries the server's
    /// refusal (e.g. 403 Forbidden IP).
    pub fn create_permission(&mut self, peer: SocketAddr) -> Result<Result<(), TurnError>> {
        self.create_permissions(&[peer])
    }

    /// Asks for permissions towards all `peers` in one CreatePermission request (as
    /// RFC 8656 allows); the server grants all of them or none.
    pub fn create_permissions(&mut self, peers: &[SocketAddr]) -> Result<Result<(), TurnError>> {
        let peers = peers.to_vec();
        Ok(self
            .transact(
                METHOD_CREATE_PERMISSION,
                move || {
                    peers
                        .iter()
                        .map(|p| Box::new(PeerAddr(*p)) as Box<dyn Setter>)
                        .collect()
                },
                true,
            )?
            .map(|_| ())
            .map_err(|e| e.0))
    }

    /// Sends `data` to `peer` through the relay (a Send indication).
    pub fn send(&self, peer: SocketAddr, data: &[u8]) -> Result<()> {
        let msg = build(vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            Box::new(PeerAddr(peer)),
            Box::new(Raw(ATTR_DATA, data.to_vec())),
            Box::new(FINGERPRINT),
        ])?;
        self.socket.send_to(&msg, self.server)?;
        Ok(())
    }

    /// The next Data indication within `timeout`: (peer, data).
    pub fn recv_data(&self, timeout: Duration) -> Result<Option<(SocketAddr, Vec<u8>)>> {
        let until = Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        while Instant::now() < until {
            let n = match self.socket.recv_from(&mut buf) {
                Ok((n, from)) if from == self.server => n,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            let Some(m) = decode(&buf[..n]) else { continue };
            if m.typ != MessageType::new(METHOD_DATA, CLASS_INDICATION) {
                continue;
            }
            let mut peer = XorMappedAddress::default();
            if peer.get_from_as(&m, ATTR_XOR_PEER_ADDRESS).is_err() {
                continue;
            }
            let data = m.get(ATTR_DATA).unwrap_or_default();
            return Ok(Some((SocketAddr::new(peer.ip, peer.port), data)));
        }
        Ok(None)
    }

    /// One request/response exchange (retransmitted), re-signed after a 438 Stale
    /// Nonce. The outer error is a transport failure, the inner one the server's
    /// error response.
    #[allow(clippy::type_complexity)]
    fn transact(
        &mut self,
        method: Method,
        attrs: impl Fn() -> Vec<Box<dyn Setter>>,
        auth: bool,
    ) -> Result<std::result::Result<Message, (TurnError, Message)>> {
        for _stale in 0..2 {
            let tid = stun::agent::TransactionId::new();
            let mut setters: Vec<Box<dyn Setter>> = vec![
                Box::new(tid),
                Box::new(MessageType::new(method, CLASS_REQUEST)),
            ];
            setters.extend(attrs());
            if auth {
                setters.push(Box::new(TextAttribute::new(
                    stun::attributes::ATTR_USERNAME,
                    self.username.clone(),
                )));
                setters.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
                setters.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
                setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
                    self.username.clone(),
                    self.realm.clone(),
                    self.password.clone(),
                )));
            }
            setters.push(Box::new(FINGERPRINT));
            let req = build(setters)?;
            let answer = self.exchange(&req, tid)?;
            if answer.typ.class == CLASS_SUCCESS_RESPONSE {
                return Ok(Ok(answer));
            }
            let err = error_of(&answer);
            if let Ok(r) = TextAttribute::get_from_as(&answer, ATTR_REALM) {
                self.realm = r.text;
            }
            if let Ok(n) = TextAttribute::get_from_as(&answer, ATTR_NONCE) {
                self.nonce = n.text;
            }
            if err.code == 438 {
                continue;
            }
            return Ok(Err((err, answer)));
        }
        bail!("the TURN server kept answering 438 Stale Nonce")
    }

    fn exchange(&self, req: &[u8], tid: stun::agent::TransactionId) -> Result<Message> {
        let mut buf = vec![0u8; 2048];
        for _ in 0..7 {
            self.socket
                .send_to(req, self.server)
                .context("send to TURN server")?;
            let until = Instant::now() + Duration::from_millis(400);
            while Instant::now() < until {
                let n = match self.socket.recv_from(&mut buf) {
                    Ok((n, from)) if from == self.server => n,
                    Ok(_) => continue,
                    Err(_) => break,
                };
                if let Some(m) = decode(&buf[..n]) {
                    if m.transaction_id == tid
                        && matches!(m.typ.class, c if c == CLASS_SUCCESS_RESPONSE || c == CLASS_ERROR_RESPONSE)
                    {
                        return Ok(m);
                    }
                }
            }
        }
        bail!("no answer from the TURN server {}", self.server)
    }
}
