//! The TURN client: one allocation on a TURN server (RFC 8656) with long-term or
//! REST-API credentials, its permissions and channel bindings, and their refreshes.
//! Requests go through the engine's [`StunAgent`], so over the shared socket.
//!
//! What the server agreed to is mirrored into the socket as it changes: the permitted
//! peers (whose Data indications the socket accepts) and the bound channels (how it
//! frames and unwraps).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

use super::target::RelayTarget;
use super::wire::{xor_address, FIRST_CHANNEL, LAST_CHANNEL};
use super::AllocError;
use crate::error::{Error, Result};
use crate::stun::client::StunAgent;
use crate::stun::message;
use crate::sync::lock;

struct RawAttr(AttrType, Vec<u8>);

impl Setter for RawAttr {
    fn add_to(&self, m: &mut Message) -> std::result::Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
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
    /// Allocates a UDP relay (RFC 8656 §7): the unauthenticated request earns a 401
    /// with realm and nonce, the second one carries the long-term credential.
    pub async fn allocate(
        agent: Arc<StunAgent>,
        target: RelayTarget,
    ) -> std::result::Result<TurnClient, AllocError> {
        use AllocError::Failed;
        let transport = || RawAttr(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
        let first = transact(
            &agent,
            target.server,
            METHOD_ALLOCATE,
            vec![transport()],
            None,
        )
        .await
        .map_err(Failed)?;
        let (realm, nonce) = match first {
            Reply::Error(401, _, m) => (
                text(&m, ATTR_REALM).unwrap_or_default(),
                text(&m, ATTR_NONCE).unwrap_or_default(),
            ),
            Reply::Error(code, reason, _) => {
                return Err(Failed(turn_error(&target, "allocate", code, &reason)))
            }
            Reply::Success(_) => {
                return Err(Failed(Error::Relay(format!(
                    "the TURN server {} allocated without authentication; refusing an open relay",
                    target.server
                ))))
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
            match transact(&agent, target.server, METHOD_ALLOCATE, vec![transport()], Some(auth)).await.map_err(Failed)? {
                Reply::Success(m) => {
                    let mut relayed = XorMappedAddress::default();
                    relayed
                        .get_from_as(&m, ATTR_XOR_RELAYED_ADDRESS)
                        .map_err(|_| Failed(Error::Relay("allocation without a relayed address".into())))?;
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
                    return Err(AllocError::Rejected(Error::Relay(format!(
                        "the TURN server {} rejected the credentials (401 Unauthorized); check relay.username and relay.credential (or relay.authSecret)",
                        target.server
                    ))))
                }
                Reply::Error(code, reason, _) => return Err(Failed(turn_error(&target, "allocate", code, &reason))),
            }
        }
        Err(Failed(Error::Relay(format!(
            "the TURN server {} kept answering 438 Stale Nonce",
            target.server
        ))))
    }

    /// The TURN server's address.
    pub fn server(&self) -> SocketAddr {
        self.target.server
    }

    /// The relay URL as configured.
    pub fn url(&self) -> &str {
        self.target.url.as_str()
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

    /// Installs (or refreshes) permissions for `ips` (ports do not matter). Only the
    /// permitted peers' Data indications are accepted by the socket from then on (one
    /// naming another peer is forged: a TURN server relays only permitted peers).
    pub async fn permit(&self, ips: &[IpAddr]) -> Result<()> {
        let mut all = lock(&self.permissions).clone();
        for ip in ips {
            if !all.contains(ip) && ip.is_ipv4() == self.relayed.is_ipv4() && relayable(ip) {
                all.push(*ip);
            }
        }
        if all.is_empty() {
            return Ok(());
        }
        let all = match self.create_permission(&all).await {
            Ok(()) => all,
            Err(batch) => {
                // A server refuses the whole request for one address it will not relay
                // to (`403 Forbidden IP`, e.g. a range in coturn's `denied-peer-ip`):
                // ask for each address alone and keep those it grants.
                let mut granted = Vec::new();
                for ip in &all {
                    if self.create_permission(&[*ip]).await.is_ok() {
                        granted.push(*ip);
                    }
                }
                if granted.is_empty() {
                    return Err(batch);
                }
                tracing::debug!(error = %batch, granted = ?granted, "relay permissions granted one by one");
                granted
            }
        };
        self.agent.socket().set_permitted(&all);
        *lock(&self.permissions) = all;
        Ok(())
    }

    /// One CreatePermission request for `peers`.
    async fn create_permission(&self, peers: &[IpAddr]) -> Result<()> {
        let tid_dummy = [0u8; 12];
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
        .await
        .map(|_| ())
    }

    /// Binds (or refreshes) a channel for `peer`; returns its number. The socket frames
    /// packets for `peer` as ChannelData from then on.
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
        self.agent.socket().set_channel(peer, channel);
        Ok(channel)
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

/// Whether a TURN server can relay to `ip` at all: never to loopback, unspecified or
/// multicast addresses (coturn refuses them with `403 Forbidden IP`, and a peer's
/// loopback host candidate is meaningless to a relay).
fn relayable(ip: &IpAddr) -> bool {
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
