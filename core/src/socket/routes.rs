//! Where the shared socket sends each packet and whom it presents relayed packets as
//! from: the relay routes, channels, permissions and aliases. Plain data and decisions
//! on it, no I/O; [`DemuxSocket`](super::DemuxSocket) holds it under a lock.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::turn::wire;

/// Most peers routed through the relay at once (a stunfwd peer has one; the bound
/// keeps forged Data indications from growing the table).
pub(crate) const MAX_RELAYED_PEERS: usize = 64;

/// How to reach peers through a TURN relay.
#[derive(Debug, Default)]
pub(super) struct Routes {
    /// The TURN server, when we hold an allocation.
    pub server: Option<SocketAddr>,
    /// Peers with a permission on our allocation: a TURN server relays only their
    /// packets, so a Data indication naming any other peer is forged and dropped.
    pub permitted: HashSet<IpAddr>,
    /// Peers whose packets go through the relay.
    pub via: HashSet<SocketAddr>,
    channels: HashMap<SocketAddr, u16>,
    pub by_channel: HashMap<u16, SocketAddr>,
    /// Peers that Data indications started routing through the relay, waiting for a
    /// channel bind.
    pub new_relayed: Vec<SocketAddr>,
    /// A connection's peer address → where its packets really go now (after an
    /// upgrade from relay to direct), and back.
    alias: HashMap<SocketAddr, SocketAddr>,
    pub unalias: HashMap<SocketAddr, SocketAddr>,
    /// Relayed peers that proved, with an authentic connectivity check that arrived
    /// directly, that they reach us directly: only their direct QUIC packets move
    /// them off the relay (a forged packet "from" the peer's address does not).
    pub direct_ok: HashSet<SocketAddr>,
    /// The peer whose live tunnel runs on a direct pair we nominated (the relay was
    /// checked in parallel): its relayed checks still arrive, but never route it
    /// through the relay. At most one; cleared when a new attempt starts.
    pub pinned_direct: HashSet<SocketAddr>,
}

/// Where one packet goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hop {
    /// Straight to this address.
    Direct(SocketAddr),
    /// Wrapped for `peer` and sent to our TURN server `server`: as ChannelData on
    /// `channel` once bound, in a Send indication before.
    Relay {
        server: SocketAddr,
        peer: SocketAddr,
        channel: Option<u16>,
    },
    /// Nowhere: the peer is marked relayed but there is no relay any more.
    Drop,
}

impl Routes {
    /// Nothing here changes where a packet goes: no relay, no alias. Every packet then
    /// goes straight to (comes straight from) the address quinn names.
    pub fn is_plain(&self) -> bool {
        self.server.is_none() && self.alias.is_empty()
    }

    /// Uses `server` as our TURN relay; `None` forgets every route.
    pub fn set_relay_server(&mut self, server: Option<SocketAddr>) {
        if server.is_none() {
            *self = Routes::default();
        } else {
            self.server = server;
        }
    }

    /// Sends to `peer` through the relay from now on. False when it already was, there
    /// is no relay, or [`MAX_RELAYED_PEERS`] are relayed already.
    pub fn route_via_relay(&mut self, peer: SocketAddr) -> bool {
        if self.server.is_none()
            || (self.via.len() >= MAX_RELAYED_PEERS && !self.via.contains(&peer))
        {
            return false;
        }
        self.direct_ok.remove(&peer);
        self.pinned_direct.remove(&peer);
        self.via.insert(peer)
    }

    /// Sends to `peer` straight from now on, whatever relayed packets of it arrive:
    /// the tunnel was nominated on a direct pair while the relay was checked too.
    /// Only the live tunnel's pair is pinned: a new pin replaces the old one.
    pub fn route_direct(&mut self, peer: SocketAddr) {
        self.via.remove(&peer);
        self.direct_ok.remove(&peer);
        self.pinned_direct.clear();
        self.pinned_direct.insert(peer);
    }

    /// Forgets the pin of a tunnel that ended: a later attempt may find the relay the
    /// only path to the same address, and the peer's relayed checks must then route it
    /// through the relay again.
    pub fn unpin(&mut self) {
        self.pinned_direct.clear();
    }

    /// `peer` proved it reaches us directly (see `direct_ok`); remembered only for
    /// relayed peers.
    pub fn direct_path_proven(&mut self, peer: SocketAddr) {
        // Remembered also before the peer is relayed: with the relay checked in
        // parallel, its direct checks may arrive before its relayed ones (which route
        // it through the relay), and then the direct QUIC that follows must still move
        // it back. Only authentic checks prove anything, so this stays small; bounded
        // all the same.
        if self.via.contains(&peer) || self.direct_ok.len() < MAX_RELAYED_PEERS {
            self.direct_ok.insert(peer);
        }
    }

    /// Packets for `conn_addr` go to `real` directly, and packets from `real` are
    /// presented as from `conn_addr`.
    pub fn alias(&mut self, conn_addr: SocketAddr, real: SocketAddr) {
        self.via.remove(&real);
        if conn_addr == real {
            self.via.remove(&conn_addr);
            return;
        }
        self.alias.insert(conn_addr, real);
        self.unalias.insert(real, conn_addr);
    }

    /// Records a bound channel.
    pub fn set_channel(&mut self, peer: SocketAddr, channel: u16) {
        self.channels.insert(peer, channel);
        self.by_channel.insert(channel, peer);
    }

    /// A Data indication relays a packet of `peer`: `None` (drop it) unless `peer`
    /// has a permission. An accepted peer is routed through the relay; a new one
    /// (`Some(true)`) is queued for a channel bind.
    pub fn accept_data_indication(&mut self, peer: SocketAddr) -> Option<bool> {
        if !self.permitted.contains(&peer.ip()) {
            return None;
        }
        if self.pinned_direct.contains(&peer) || self.server.is_none() {
            return Some(false);
        }
        if self.via.len() >= MAX_RELAYED_PEERS && !self.via.contains(&peer) {
            return Some(false);
        }
        // Not `route_via_relay`: a relayed packet does not undo the proof of a direct
        // path (`direct_ok`) that an earlier direct check gave.
        let added = self.via.insert(peer);
        if added && self.new_relayed.len() < MAX_RELAYED_PEERS {
            self.new_relayed.push(peer);
        }
        Some(added)
    }

    /// Where QUIC packets for `to` go (quinn's view of the peer's address).
    pub fn quic_hop(&self, to: SocketAddr) -> Hop {
        let real = self.alias.get(&to).copied().unwrap_or(to);
        if real != to && !self.via.contains(&real) {
            return Hop::Direct(real);
        }
        if !self.via.contains(&to) {
            return Hop::Direct(to);
        }
        match self.server {
            Some(server) => Hop::Relay {
                server,
                peer: to,
                channel: self.channels.get(&to).copied(),
            },
            None => Hop::Drop,
        }
    }

    /// Where STUN for `to` goes: like QUIC, but an aliased peer is relayed when its
    /// real address is.
    pub fn stun_hop(&self, to: SocketAddr) -> Hop {
        let to = self.alias.get(&to).copied().unwrap_or(to);
        match self.server.filter(|_| self.via.contains(&to)) {
            Some(server) => Hop::Relay {
                server,
                peer: to,
                channel: self.channels.get(&to).copied(),
            },
            None => Hop::Direct(to),
        }
    }
}

/// `data` framed for `peer` on our TURN server: ChannelData on `channel` once bound,
/// else a Send indication.
pub(super) fn frame(peer: SocketAddr, channel: Option<u16>, data: &[u8]) -> Vec<u8> {
    match channel {
        Some(ch) => wire::channel_data(ch, data),
        None => wire::send_indication(peer, data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("literal")
    }

    #[test]
    fn hops_follow_relay_routes_channels_and_aliases() {
        let (server, peer, real) = (
            addr("192.0.2.1:3478"),
            addr("198.51.100.7:4000"),
            addr("203.0.113.5:5000"),
        );
        let mut r = Routes::default();
        assert!(r.is_plain());
        assert!(!r.route_via_relay(peer), "no relay, no route");
        r.set_relay_server(Some(server));
        assert!(!r.is_plain());
        assert!(r.route_via_relay(peer));
        let relayed = |channel| Hop::Relay {
            server,
            peer,
            channel,
        };
        assert_eq!(r.quic_hop(peer), relayed(None));
        assert_eq!(r.stun_hop(peer), relayed(None));
        r.set_channel(peer, 0x4001);
        assert_eq!(r.quic_hop(peer), relayed(Some(0x4001)));
        // Upgraded to a direct path: the connection's address goes to the real one.
        r.alias(peer, real);
        assert_eq!(r.quic_hop(peer), Hop::Direct(real));
        assert_eq!(r.stun_hop(peer), Hop::Direct(real));
        assert_eq!(r.unalias.get(&real), Some(&peer));
        // No relay any more: everything is forgotten.
        r.set_relay_server(None);
        assert!(r.is_plain());
        assert_eq!(r.quic_hop(peer), Hop::Direct(peer));
    }

    #[test]
    fn data_indications_are_accepted_only_from_permitted_peers() {
        let mut r = Routes::default();
        r.set_relay_server(Some(addr("192.0.2.1:3478")));
        let (peer, stranger) = (addr("198.51.100.7:4000"), addr("198.51.100.8:4000"));
        r.permitted.insert(peer.ip());
        assert_eq!(r.accept_data_indication(stranger), None);
        assert!(!r.via.contains(&stranger));
        assert_eq!(r.accept_data_indication(peer), Some(true));
        assert_eq!(r.accept_data_indication(peer), Some(false));
        // Another port of a permitted address: permissions are per IP.
        let other_port = addr("198.51.100.7:4001");
        assert_eq!(r.accept_data_indication(other_port), Some(true));
        assert_eq!(r.new_relayed, vec![peer, other_port]);
        // The relayed set stays bounded whatever the indications say.
        for port in 0..(MAX_RELAYED_PEERS as u16 * 2) {
            let _ = r.accept_data_indication(SocketAddr::new(peer.ip(), 10_000 + port));
        }
        assert_eq!(r.via.len(), MAX_RELAYED_PEERS);
        assert!(r.new_relayed.len() <= MAX_RELAYED_PEERS);
    }

    /// Review finding (#16): a pin from an earlier direct tunnel must not keep a later
    /// relayed pair to the same address from working, and only the live tunnel's pair
    /// is pinned (a cap on a growing set once let pins silently stop working).
    #[test]
    fn a_pin_holds_for_the_live_tunnel_only() {
        let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let peer: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let mut r = Routes::default();
        r.set_relay_server(Some(server));
        r.permitted.insert(peer.ip());
        r.route_direct(peer);
        assert_eq!(
            r.accept_data_indication(peer),
            Some(false),
            "pinned: not relayed"
        );
        assert_eq!(r.quic_hop(peer), Hop::Direct(peer));
        // The tunnel ended; a new attempt starts and the peer checks our relay.
        r.unpin();
        assert_eq!(r.accept_data_indication(peer), Some(true), "relayed again");
        assert!(matches!(r.quic_hop(peer), Hop::Relay { .. }));
        // Many tunnels over an engine's life: the newest pin always holds.
        for port in 0..200u16 {
            r.route_direct(SocketAddr::new(peer.ip(), 10_000 + port));
        }
        let now = SocketAddr::new(peer.ip(), 20_000);
        r.route_direct(now);
        assert_eq!(r.pinned_direct.len(), 1);
        assert_eq!(r.accept_data_indication(now), Some(false));
        assert_eq!(r.quic_hop(now), Hop::Direct(now));
    }
}
