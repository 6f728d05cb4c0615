//! Plain JavaScript objects the API returns: states, events, mappings and stats, each
//! converted from its core counterpart (camelCase keys, addresses as `host:port`).

use napi_derive::napi;
use stunfwd_core as core;

use crate::error::Failure;

/// Where an engine is in its life, with the details of that state.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone, PartialEq)]
pub struct EngineState {
    /// The state's name.
    #[napi(
        ts_type = "'starting' | 'discovering' | 'signaling' | 'punching' | 'connected' | 'reconnecting' | 'stopped' | 'failed'"
    )]
    pub state: String,
    /// `connected`: how the tunnel reaches the peer (`lan`: one of the peer's own
    /// interface addresses, `direct`: through the NATs, `relay`: through TURN).
    #[napi(ts_type = "'direct' | 'lan' | 'relay'")]
    pub path: Option<String>,
    /// `connected`: the peer's address on that path, `host:port`.
    pub peer: Option<String>,
    /// `connected`: how the path was found.
    #[napi(ts_type = "'checks' | 'birthday' | 'prediction' | 'relay'")]
    pub technique: Option<String>,
    /// `reconnecting`: consecutive failed attempts (0 right after a tunnel was lost).
    pub attempt: Option<u32>,
    /// `reconnecting` and `failed`: what went wrong.
    pub reason: Option<String>,
    /// A one-line description, e.g. `connected (lan to 127.0.0.1:40000, found by checks)`.
    pub text: String,
}

impl From<&core::State> for EngineState {
    fn from(s: &core::State) -> Self {
        let mut out = EngineState {
            state: s.name().to_owned(),
            path: None,
            peer: None,
            technique: None,
            attempt: None,
            reason: None,
            text: s.to_string(),
        };
        match s {
            core::State::Connected {
                path,
                peer,
                technique,
            } => {
                out.path = Some(path.as_str().to_owned());
                out.peer = Some(peer.to_string());
                out.technique = Some(technique.as_str().to_owned());
            }
            core::State::Reconnecting { attempt, reason } => {
                out.attempt = Some(*attempt);
                out.reason = Some(reason.clone());
            }
            core::State::Failed { reason } => out.reason = Some(reason.clone()),
            _ => {}
        }
        out
    }
}

/// A mapping was added (its listener is up) or removed (listener and connections
/// closed).
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone, PartialEq)]
pub struct MappingEvent {
    /// What happened.
    #[napi(ts_type = "'added' | 'removed'")]
    pub action: String,
    /// The mapping's id (as returned by `addMapping`).
    pub id: i64,
    /// `added`: the mapping in canonical form, e.g. `tcp:127.0.0.1:8080:127.0.0.1:22`.
    pub spec: Option<String>,
    /// `added`: the address it listens on, `host:port` (port 0 resolved).
    pub listen: Option<String>,
    /// `added`: the port it listens on.
    pub port: Option<u32>,
}

/// A mapping registered in an engine.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone, PartialEq)]
pub struct MappingInfo {
    /// Its id.
    pub id: i64,
    /// `tcp` or `udp`.
    #[napi(ts_type = "'tcp' | 'udp'")]
    pub proto: String,
    /// Canonical form, e.g. `tcp:127.0.0.1:8080:127.0.0.1:22`.
    pub spec: String,
    /// The address it listens on, `host:port` (port 0 resolved).
    pub listen: String,
    /// The port it listens on.
    pub port: u32,
    /// What the peer dials, `host:port`.
    pub target: String,
}

impl From<&core::MappingInfo> for MappingInfo {
    fn from(m: &core::MappingInfo) -> Self {
        MappingInfo {
            id: id(m.id),
            proto: m.mapping.proto.as_str().to_owned(),
            spec: m.mapping.to_string(),
            listen: m.listen.to_string(),
            port: u32::from(m.listen.port()),
            target: m.mapping.target(),
        }
    }
}

/// One engine event, as passed to the callback of `Engine.start(config, onEvent)`;
/// `type` says which of `state`, `mapping`, `error`, `warning` or `client` is set:
/// `state` when the state changed, `mapping` when a mapping was added or removed,
/// `error` when a peer offer was rejected (`ERR_PEER_AUTH`: wrong secret or
/// tampering; the engine keeps waiting for a valid one) or the engine gave up for
/// good (state `failed`; e.g. `ERR_NO_PATH` when the two NAT types make punching
/// hopeless), `warning` for something to know that is not a failure, and `client`
/// (server side) when one client's tunnel changed state.
#[napi(
    discriminant = "type",
    discriminant_case = "lowercase",
    object_from_js = false
)]
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// The state changed: `state` is the new state.
    #[allow(missing_docs)]
    State { state: EngineState },
    /// A mapping was added or removed: `mapping` says which and how.
    #[allow(missing_docs)]
    Mapping { mapping: MappingEvent },
    /// Something went wrong: `error` is an `Error` with `code` `ERR_PEER_AUTH` (a peer
    /// offer was rejected: wrong secret or tampering; the engine keeps waiting for a
    /// valid one), or the reason the engine gave up for good (state `failed`, e.g.
    /// `ERR_NO_PATH`).
    #[allow(missing_docs)]
    Error {
        #[napi(
            ts_type = "Error & {\n/** The stable error code, e.g. `ERR_PEER_AUTH`. */\ncode: string\n}"
        )]
        error: Failure,
    },
    /// Something to know that is not a failure: `warning` says what (an engine without
    /// a `secret` says so once, at start).
    #[allow(missing_docs)]
    Warning { warning: String },
    /// Server side: one client's tunnel changed state; `client` says which and how.
    #[allow(missing_docs)]
    Client { client: ClientEvent },
}

/// A server's client whose tunnel changed state.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone, PartialEq)]
pub struct ClientEvent {
    /// The client's id: 32 hex characters it chose at start (its `stats().clientId`).
    pub id: String,
    /// Its tunnel's new state.
    pub state: EngineState,
}

impl EngineEvent {
    /// The event name listeners register for (`state`, `mapping`, `error`).
    pub fn name(&self) -> &'static str {
        match self {
            EngineEvent::State { .. } => "state",
            EngineEvent::Mapping { .. } => "mapping",
            EngineEvent::Error { .. } => "error",
            EngineEvent::Warning { .. } => "warning",
            EngineEvent::Client { .. } => "client",
        }
    }

    /// The JavaScript events for one core event. A `failed` state is also an error
    /// event, with `failure` (why the engine gave up) when it is known.
    pub fn from_core(event: &core::Event, failure: Option<core::Error>) -> Vec<EngineEvent> {
        match event {
            core::Event::State { state } => {
                let mut out = vec![EngineEvent::State {
                    state: state.into(),
                }];
                if let core::State::Failed { reason } = state {
                    let error = failure.unwrap_or_else(|| core::Error::Tunnel(reason.clone()));
                    out.push(EngineEvent::Error {
                        error: Failure::from(error),
                    });
                }
                out
            }
            core::Event::MappingAdded {
                id: mapping,
                spec,
                listen,
            } => vec![EngineEvent::Mapping {
                mapping: MappingEvent {
                    action: "added".into(),
                    id: id(*mapping),
                    spec: Some(spec.clone()),
                    listen: Some(listen.to_string()),
                    port: Some(u32::from(listen.port())),
                },
            }],
            core::Event::MappingRemoved { id: mapping } => vec![EngineEvent::Mapping {
                mapping: MappingEvent {
                    action: "removed".into(),
                    id: id(*mapping),
                    spec: None,
                    listen: None,
                    port: None,
                },
            }],
            core::Event::PeerRejected { reason } => vec![EngineEvent::Error {
                error: Failure::from(core::Error::PeerAuth(reason.clone())),
            }],
            core::Event::Warning { message } => vec![EngineEvent::Warning {
                warning: message.clone(),
            }],
            core::Event::ClientState { client, state } => vec![EngineEvent::Client {
                client: ClientEvent {
                    id: client.clone(),
                    state: state.into(),
                },
            }],
            // The core may grow events; they are not part of this API until mapped here.
            #[allow(unreachable_patterns)]
            _ => Vec::new(),
        }
    }
}

/// Traffic figures. "Sent" is toward the peer (into the tunnel), "received" from it.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficStats {
    /// TCP connections or UDP flows opened.
    pub connections_opened: i64,
    /// Connections or flows open now.
    pub connections_active: i64,
    /// Connections that failed (no tunnel, target refused, unreachable).
    pub connections_failed: i64,
    /// Payload bytes sent into the tunnel.
    pub bytes_sent: i64,
    /// Payload bytes received from the tunnel.
    pub bytes_received: i64,
    /// UDP datagrams sent into the tunnel.
    pub datagrams_sent: i64,
    /// UDP datagrams received from the tunnel.
    pub datagrams_received: i64,
    /// Connections refused by the server's allow rules.
    pub refused_by_policy: i64,
    /// Local connections reset (UDP flows dropped) because the tunnel was not up
    /// within `performance.tunnelWait`.
    pub tunnel_wait_timeouts: i64,
    /// UDP flows refused because a flow cap was reached (`maxUdpFlowsPerMapping` on a
    /// client, `maxUdpFlowsPerClient` on a server, or the peer's).
    pub flows_refused: i64,
}

impl From<&core::Traffic> for TrafficStats {
    fn from(t: &core::Traffic) -> Self {
        TrafficStats {
            connections_opened: count(t.connections_opened),
            connections_active: count(t.connections_active),
            connections_failed: count(t.connections_failed),
            bytes_sent: count(t.bytes_sent),
            bytes_received: count(t.bytes_received),
            datagrams_sent: count(t.datagrams_sent),
            datagrams_received: count(t.datagrams_received),
            refused_by_policy: count(t.refused_by_policy),
            tunnel_wait_timeouts: count(t.tunnel_wait_timeouts),
            flows_refused: count(t.flows_refused),
        }
    }
}

/// One mapping's figures.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone, PartialEq)]
pub struct MappingStats {
    /// Mapping id.
    pub id: i64,
    /// Canonical spec.
    pub spec: String,
    /// The address it listens on.
    pub listen: String,
    /// Its traffic.
    pub traffic: TrafficStats,
}

/// Durations of the connect phases of the latest successful connect, in
/// milliseconds (`null` before the first).
#[napi(object, object_from_js = false, use_nullable = true)]
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectTimings {
    /// STUN discovery.
    pub stun_discovery_ms: Option<f64>,
    /// Waiting for the peer's offer.
    pub signaling_wait_ms: Option<f64>,
    /// Connectivity checks until a path was chosen.
    pub punching_ms: Option<f64>,
    /// From the start of the attempt to the tunnel being up.
    pub time_to_connected_ms: Option<f64>,
}

/// A snapshot of an engine's figures. Values not known yet are `null`.
#[napi(object, object_from_js = false, use_nullable = true)]
#[derive(Debug, Clone, PartialEq)]
pub struct EngineStats {
    /// `client` or `server`.
    #[napi(ts_type = "'client' | 'server'")]
    pub mode: String,
    /// The room.
    pub room: String,
    /// No `secret` is set: anyone who knows the room name can join it.
    pub insecure: bool,
    /// Current state.
    pub state: EngineState,
    /// Path of the tunnel, when connected.
    #[napi(ts_type = "'direct' | 'lan' | 'relay'")]
    pub path: Option<String>,
    /// The peer's address, when connected.
    pub peer_addr: Option<String>,
    /// How the tunnel's path was found, when connected.
    #[napi(ts_type = "'checks' | 'birthday' | 'prediction' | 'relay'")]
    pub technique: Option<String>,
    /// The tunnel socket's local address.
    pub local_addr: String,
    /// Our public address according to STUN.
    pub public_addr: Option<String>,
    /// Our NAT type according to STUN (`unknown` before discovery).
    pub nat_type: String,
    /// The peer's NAT type, from its offer.
    pub peer_nat_type: Option<String>,
    /// Smoothed round-trip time of the tunnel, when connected.
    pub rtt_ms: Option<f64>,
    /// All mappings together (server side: everything served for the peer).
    pub totals: TrafficStats,
    /// Per mapping (client side).
    pub mappings: Vec<MappingStats>,
    /// Connect phase durations.
    pub timings: ConnectTimings,
    /// Tunnels re-established after loss.
    pub reconnects: i64,
    /// Sockets birthday punching opened (behind a symmetric NAT), all attempts.
    pub birthday_sockets: i64,
    /// Packets birthday punching sent, all attempts.
    pub birthday_packets: i64,
    /// STUN discoveries performed (not served from cache).
    pub stun_discoveries: i64,
    /// HTTP requests sent to the rendezvous server.
    pub signaling_requests: i64,
    /// Peer offers rejected (wrong secret, tampering, malformed).
    pub offers_rejected: i64,
    /// Connectivity checks dropped because they were not authentic.
    pub checks_unauthenticated: i64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Client side: this client's id in the room (what the server names it by).
    pub client_id: Option<String>,
    /// Server side: every client served now, each with its own tunnel (empty on the
    /// client side). The fields above describe the client connected last; `totals`
    /// sums them all.
    pub clients: Vec<ClientStats>,
}

/// One client of a server-mode engine.
#[napi(object, object_from_js = false, use_nullable = true)]
#[derive(Debug, Clone, PartialEq)]
pub struct ClientStats {
    /// The client's id (32 hex characters).
    pub id: String,
    /// Its tunnel's state.
    pub state: EngineState,
    /// Path of its tunnel, when connected.
    #[napi(ts_type = "'direct' | 'lan' | 'relay'")]
    pub path: Option<String>,
    /// Its address, when connected.
    pub peer_addr: Option<String>,
    /// How its tunnel's path was found, when connected.
    #[napi(ts_type = "'checks' | 'birthday' | 'prediction' | 'relay'")]
    pub technique: Option<String>,
    /// Its NAT type, from its offer.
    pub peer_nat_type: Option<String>,
    /// Smoothed round-trip time of its tunnel, when connected.
    pub rtt_ms: Option<f64>,
    /// Our socket for this client.
    pub local_addr: String,
    /// What was served for it.
    pub totals: TrafficStats,
    /// Its tunnel re-established after loss.
    pub reconnects: i64,
    /// Its last failure, if any.
    pub last_error: Option<String>,
}

impl From<&core::Stats> for EngineStats {
    fn from(s: &core::Stats) -> Self {
        EngineStats {
            mode: s.mode.as_str().to_owned(),
            room: s.room.clone(),
            insecure: s.insecure,
            state: (&s.state).into(),
            path: s.path.map(|p| p.as_str().to_owned()),
            peer_addr: s.peer_addr.map(|a| a.to_string()),
            technique: s.technique.map(|t| t.as_str().to_owned()),
            local_addr: s.local_addr.to_string(),
            public_addr: s.public_addr.map(|a| a.to_string()),
            nat_type: s.nat_type.as_str().to_owned(),
            peer_nat_type: s.peer_nat_type.map(|t| t.as_str().to_owned()),
            rtt_ms: s.rtt_ms,
            totals: (&s.totals).into(),
            mappings: s
                .mappings
                .iter()
                .map(|m| MappingStats {
                    id: id(m.id),
                    spec: m.spec.clone(),
                    listen: m.listen.to_string(),
                    traffic: (&m.traffic).into(),
                })
                .collect(),
            timings: ConnectTimings {
                stun_discovery_ms: s.timings.stun_discovery_ms,
                signaling_wait_ms: s.timings.signaling_wait_ms,
                punching_ms: s.timings.punching_ms,
                time_to_connected_ms: s.timings.time_to_connected_ms,
            },
            reconnects: count(s.reconnects),
            birthday_sockets: count(s.birthday_sockets),
            birthday_packets: count(s.birthday_packets),
            stun_discoveries: count(s.stun_discoveries),
            signaling_requests: count(s.signaling_requests),
            offers_rejected: count(s.offers_rejected),
            checks_unauthenticated: count(s.checks_unauthenticated),
            last_error: s.last_error.clone(),
            client_id: s.client_id.clone(),
            clients: s
                .clients
                .iter()
                .map(|c| ClientStats {
                    id: c.id.clone(),
                    state: (&c.state).into(),
                    path: c.path.map(|p| p.as_str().to_owned()),
                    peer_addr: c.peer_addr.map(|a| a.to_string()),
                    technique: c.technique.map(|t| t.as_str().to_owned()),
                    peer_nat_type: c.peer_nat_type.map(|t| t.as_str().to_owned()),
                    rtt_ms: c.rtt_ms,
                    local_addr: c.local_addr.to_string(),
                    totals: (&c.totals).into(),
                    reconnects: count(c.reconnects),
                    last_error: c.last_error.clone(),
                })
                .collect(),
        }
    }
}

/// A mapping id as a JavaScript number (ids count up from 1).
pub fn id(id: core::MappingId) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// A counter as a JavaScript number (exact below 2^53).
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
