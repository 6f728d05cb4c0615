//! Counters and the [`Stats`] snapshot (DESIGN §8).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::config::Mode;
use crate::status::{PathKind, State};
use crate::stun::client::NatType;

/// Live traffic counters of one mapping (or of the engine in total).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    connections_opened: AtomicU64,
    connections_active: AtomicU64,
    connections_failed: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    datagrams_sent: AtomicU64,
    datagrams_received: AtomicU64,
    refused: AtomicU64,
    tunnel_wait_timeouts: AtomicU64,
    flows_refused: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Traffic {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Traffic {
            connections_opened: g(&self.connections_opened),
            connections_active: g(&self.connections_active),
            connections_failed: g(&self.connections_failed),
            bytes_sent: g(&self.bytes_sent),
            bytes_received: g(&self.bytes_received),
            datagrams_sent: g(&self.datagrams_sent),
            datagrams_received: g(&self.datagrams_received),
            refused_by_policy: g(&self.refused),
            tunnel_wait_timeouts: g(&self.tunnel_wait_timeouts),
            flows_refused: g(&self.flows_refused),
        }
    }
}

/// Counts into a mapping's counters and the totals at once.
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    mapping: Option<Arc<Counters>>,
    totals: Arc<Counters>,
}

impl Meter {
    pub fn new(mapping: Option<Arc<Counters>>, totals: Arc<Counters>) -> Self {
        Meter { mapping, totals }
    }

    fn each(&self, f: impl Fn(&Counters)) {
        if let Some(m) = &self.mapping {
            f(m);
        }
        f(&self.totals);
    }

    pub fn opened(&self) {
        self.each(|c| {
            c.connections_opened.fetch_add(1, Ordering::Relaxed);
            c.connections_active.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub fn closed(&self) {
        self.each(|c| {
            // Never underflows: closed() is only called after opened().
            let _ = c
                .connections_active
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        });
    }

    pub fn failed(&self) {
        self.each(|c| {
            c.connections_failed.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub fn refused(&self) {
        self.each(|c| {
            c.refused.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// A local connection or flow gave up waiting for the tunnel (`tunnelWait`).
    pub fn tunnel_wait_timeout(&self) {
        self.each(|c| {
            c.tunnel_wait_timeouts.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// A UDP flow refused by a flow cap (ours or the peer's).
    pub fn flow_refused(&self) {
        self.each(|c| {
            c.flows_refused.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub fn sent(&self, bytes: usize) {
        self.each(|c| {
            c.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        });
    }

    pub fn received(&self, bytes: usize) {
        self.each(|c| {
            c.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
        });
    }

    pub fn datagram_sent(&self, bytes: usize) {
        self.each(|c| {
            c.datagrams_sent.fetch_add(1, Ordering::Relaxed);
            c.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        });
    }

    pub fn datagram_received(&self, bytes: usize) {
        self.each(|c| {
            c.datagrams_received.fetch_add(1, Ordering::Relaxed);
            c.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
        });
    }
}

/// Traffic figures. "sent" is toward the peer (into the tunnel), "received" from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Connections (TCP) or flows (UDP) opened.
    pub connections_opened: u64,
    /// Connections or flows open now.
    pub connections_active: u64,
    /// Connections that failed (peer unreachable, target refused, connect failed).
    pub connections_failed: u64,
    /// Payload bytes sent into the tunnel.
    pub bytes_sent: u64,
    /// Payload bytes received from the tunnel.
    pub bytes_received: u64,
    /// UDP datagrams sent into the tunnel.
    pub datagrams_sent: u64,
    /// UDP datagrams received from the tunnel.
    pub datagrams_received: u64,
    /// Connections refused by the allow rules (counted where the refusal happened).
    pub refused_by_policy: u64,
    /// Local TCP connections reset, and UDP flows dropped, because the tunnel was not
    /// up within `performance.tunnelWait` of their arrival (client side; also counted
    /// in `connections_failed`).
    pub tunnel_wait_timeouts: u64,
    /// UDP flows refused because a flow cap was reached: this side's
    /// `performance.maxUdpFlowsPerMapping` (client) or `maxUdpFlowsPerClient`
    /// (server), or the peer's, as the peer reported it. Their datagrams are dropped.
    /// A client counts a refused source once per 10 s, however many datagrams it sends.
    pub flows_refused: u64,
}

impl Traffic {
    /// Adds `other`'s figures to these (a server's totals over its clients).
    pub fn add(&mut self, other: &Traffic) {
        self.connections_opened += other.connections_opened;
        self.connections_active += other.connections_active;
        self.connections_failed += other.connections_failed;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.datagrams_sent += other.datagrams_sent;
        self.datagrams_received += other.datagrams_received;
        self.refused_by_policy += other.refused_by_policy;
        self.tunnel_wait_timeouts += other.tunnel_wait_timeouts;
        self.flows_refused += other.flows_refused;
    }
}

/// One mapping's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MappingStats {
    /// Mapping id.
    pub id: u64,
    /// The mapping, canonical spec form.
    pub spec: String,
    /// The address actually listened on.
    pub listen: SocketAddr,
    /// Its traffic.
    pub traffic: Traffic,
}

/// Durations of the connect phases (milliseconds) of the latest successful connect.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// STUN discovery.
    pub stun_discovery_ms: Option<f64>,
    /// Waiting for the peer's offer.
    pub signaling_wait_ms: Option<f64>,
    /// Connectivity checks until a pair was chosen (or the QUIC connection arrived).
    pub punching_ms: Option<f64>,
    /// From the start of the attempt to the tunnel being up.
    pub time_to_connected_ms: Option<f64>,
}

/// A snapshot of the engine (DESIGN §8). Serializes to the `stats_json` format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// `client` or `server`.
    pub mode: Mode,
    /// The room.
    pub room: String,
    /// No `secret` is set: anyone who knows the room name can join it.
    pub insecure: bool,
    /// Current state.
    pub state: State,
    /// Path of the tunnel, when connected.
    pub path: Option<PathKind>,
    /// The peer's address, when connected.
    pub peer_addr: Option<SocketAddr>,
    /// How the tunnel's path was found (`checks`, `birthday`, `relay`), when connected.
    pub technique: Option<crate::status::Technique>,
    /// The TURN relay carrying the tunnel (`url (address)`), when the path is `relay`.
    pub relay_server: Option<String>,
    /// Our socket's local address.
    pub local_addr: SocketAddr,
    /// Our public address per STUN.
    pub public_addr: Option<SocketAddr>,
    /// Our NAT type per STUN.
    pub nat_type: NatType,
    /// The peer's NAT type from its offer.
    pub peer_nat_type: Option<NatType>,
    /// Smoothed round-trip time of the tunnel.
    pub rtt_ms: Option<f64>,
    /// All mappings together (server side: everything served for the peer).
    pub totals: Traffic,
    /// Per mapping (client side).
    pub mappings: Vec<MappingStats>,
    /// Phase durations.
    pub timings: Timings,
    /// Tunnels re-established after loss.
    pub reconnects: u64,
    /// Times the live tunnel moved to a new peer address (QUIC migration after the
    /// peer's NAT mapping changed), without reconnecting.
    pub path_changes: u64,
    /// Sockets birthday punching has opened (on the symmetric side), all attempts.
    pub birthday_sockets: u64,
    /// Packets birthday punching has sent (openers, probes, checks back), all attempts.
    pub birthday_packets: u64,
    /// STUN discoveries performed (not served from cache).
    pub stun_discoveries: u64,
    /// HTTP requests sent to the rendezvous server.
    pub signaling_requests: u64,
    /// Peer offers rejected (MAC did not verify, stale, replayed, wrong role,
    /// malformed).
    pub offers_rejected: u64,
    /// Connectivity checks dropped because they were not authentic.
    pub checks_unauthenticated: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Our router port mapping (`portMapping`): its protocol and public address, or
    /// why there is none.
    pub port_mapping: crate::portmap::PortMapStatus,
    /// Client side: this client's id in the room (what the server's stats and events
    /// name it by). `None` on the server side.
    pub client_id: Option<String>,
    /// Server side: every client served now, each with its own tunnel (empty on the
    /// client side). The fields above describe the client connected last (or, with
    /// none connected, the one that knocked last); `totals` sums them all.
    pub clients: Vec<ClientStats>,
}

/// One client of a server-mode engine (issue #18).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientStats {
    /// The client's id: 32 hex characters it chose at start.
    pub id: String,
    /// Its tunnel's state.
    pub state: State,
    /// Path of its tunnel, when connected.
    pub path: Option<PathKind>,
    /// Its address, when connected.
    pub peer_addr: Option<SocketAddr>,
    /// How its tunnel's path was found, when connected.
    pub technique: Option<crate::status::Technique>,
    /// Its NAT type from its offer.
    pub peer_nat_type: Option<NatType>,
    /// Smoothed round-trip time of its tunnel.
    pub rtt_ms: Option<f64>,
    /// Our socket for this client (each client's tunnel has its own).
    pub local_addr: SocketAddr,
    /// What was served for it.
    pub totals: Traffic,
    /// Its tunnel re-established after loss.
    pub reconnects: u64,
    /// Its last failure, if any.
    pub last_error: Option<String>,
}
