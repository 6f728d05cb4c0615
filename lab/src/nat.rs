//! The NAT behaviours of the lab, and the nftables rules of those patchbay cannot
//! express.

use std::net::Ipv4Addr;

use patchbay::{NatConfig, NatFiltering, NatMapping};

/// The NAT behaviours of the lab (RFC 4787 terms in the comments).
///
/// The first four are patchbay's own NATs (an nftables "fullcone" map for
/// endpoint-independent mapping, a forward filter for the filtering). The others are
/// built with patchbay and then get their own ruleset ([`NatKind::custom_rules`]),
/// written the way a Linux router is usually configured by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Endpoint-dependent mapping with random ports (`masquerade random`).
    Symmetric,
    /// A plain Linux router: nftables `masquerade` (port-preserving, endpoint-independent
    /// mapping while the tuple is free, address-and-port-dependent filtering by
    /// conntrack) and no input filter, so a packet for a closed port of the router is
    /// delivered to the router itself and leaves an UNREPLIED conntrack entry that
    /// can take the tuple a host behind it is about to use (issue #16).
    LinuxMasquerade,
    /// Endpoint-dependent mapping that gives each new flow the next port of a counter
    /// (`snat to WAN:numgen inc`), address-and-port-dependent filtering.
    SymmetricSequential,
    /// Endpoint-dependent mapping that keeps the source port for the first
    /// destination of an internal ip:port and gives later destinations random ports,
    /// address-and-port-dependent filtering.
    SymmetricPreserving,
}

/// Port the sequential NAT's counter starts at.
pub const SEQUENTIAL_BASE_PORT: u16 = 20000;
/// How many ports the sequential NAT's counter runs through before it wraps.
pub const SEQUENTIAL_PORTS: u16 = 1024;

impl NatKind {
    /// Every kind, in table order.
    pub const ALL: [NatKind; 7] = [
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::LinuxMasquerade,
        NatKind::Symmetric,
        NatKind::SymmetricSequential,
        NatKind::SymmetricPreserving,
    ];

    /// The four kinds patchbay builds by itself.
    pub const PATCHBAY: [NatKind; 4] = [
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];

    /// The lab's name of this kind (table rows, site names). For the four patchbay
    /// kinds it is also the NAT type stunfwd reports; see [`NatKind::expected_type`].
    pub fn name(self) -> &'static str {
        match self {
            NatKind::FullCone => "full-cone",
            NatKind::AddressRestricted => "address-restricted",
            NatKind::PortRestricted => "port-restricted",
            NatKind::Symmetric => "symmetric",
            NatKind::LinuxMasquerade => "linux-masquerade",
            NatKind::SymmetricSequential => "symmetric-sequential",
            NatKind::SymmetricPreserving => "symmetric-preserving",
        }
    }

    /// The NAT type (stunfwd's `NatType` name) an RFC 5780 test must detect here.
    pub fn expected_type(self) -> &'static str {
        match self {
            NatKind::FullCone => "full-cone",
            NatKind::AddressRestricted => "address-restricted",
            NatKind::PortRestricted | NatKind::LinuxMasquerade => "port-restricted",
            NatKind::Symmetric | NatKind::SymmetricSequential | NatKind::SymmetricPreserving => {
                "symmetric"
            }
        }
    }

    /// The port allocation `stunfwd nat` must report here (its display form), for the
    /// kinds whose rules fix it; `None` for patchbay's own cone NATs.
    pub fn expected_allocation(self) -> Option<&'static str> {
        match self {
            NatKind::Symmetric => Some("random"),
            NatKind::SymmetricSequential => Some("sequential (+1)"),
            NatKind::SymmetricPreserving | NatKind::LinuxMasquerade => Some("port-preserving"),
            _ => None,
        }
    }

    /// The mapping behaviour (stunfwd's kebab-case name) an RFC 5780 test must find.
    pub fn expected_mapping(self) -> &'static str {
        if self.is_symmetric() {
            "address-and-port-dependent"
        } else {
            "endpoint-independent"
        }
    }

    /// The filtering behaviour (stunfwd's kebab-case name) an RFC 5780 test must find.
    pub fn expected_filtering(self) -> &'static str {
        match self {
            NatKind::FullCone => "endpoint-independent",
            NatKind::AddressRestricted => "address-dependent",
            _ => "address-and-port-dependent",
        }
    }

    /// True for the endpoint-dependent mappings.
    pub fn is_symmetric(self) -> bool {
        matches!(
            self,
            NatKind::Symmetric | NatKind::SymmetricSequential | NatKind::SymmetricPreserving
        )
    }

    /// True when inbound packets must come from the IP and port we sent to.
    pub fn is_port_restricted(self) -> bool {
        matches!(
            self.expected_filtering(),
            "address-and-port-dependent" if !self.is_symmetric()
        )
    }

    /// True for the kinds patchbay's own rules implement.
    pub fn is_patchbay(self) -> bool {
        Self::PATCHBAY.contains(&self)
    }

    /// True when patchbay can hairpin this kind (endpoint-independent mapping only).
    pub fn can_hairpin(self) -> bool {
        matches!(
            self,
            NatKind::FullCone | NatKind::AddressRestricted | NatKind::PortRestricted
        )
    }

    /// The patchbay NAT configuration the router is built with; `udp_timeout` lowers
    /// the conntrack UDP timeouts. For the kinds that are not patchbay's, this is a
    /// placeholder (symmetric, no hairpin) whose tables [`NatKind::custom_rules`]
    /// replaces; its timeouts stay in force.
    pub fn config(self, udp_timeout: Option<u32>) -> NatConfig {
        self.config_with(udp_timeout, false)
    }

    /// [`NatKind::config`] with hairpinning on or off (patchbay hairpins only
    /// endpoint-independent mappings; callers check [`NatKind::can_hairpin`]).
    pub fn config_with(self, udp_timeout: Option<u32>, hairpin: bool) -> NatConfig {
        let (mapping, filtering) = match self {
            NatKind::FullCone => (
                NatMapping::EndpointIndependent,
                NatFiltering::EndpointIndependent,
            ),
            NatKind::AddressRestricted => (
                NatMapping::EndpointIndependent,
                NatFiltering::AddressDependent,
            ),
            NatKind::PortRestricted => (
                NatMapping::EndpointIndependent,
                NatFiltering::AddressAndPortDependent,
            ),
            NatKind::Symmetric
            | NatKind::LinuxMasquerade
            | NatKind::SymmetricSequential
            | NatKind::SymmetricPreserving => (
                NatMapping::EndpointDependent,
                NatFiltering::AddressAndPortDependent,
            ),
        };
        let mut b = NatConfig::builder()
            .mapping(mapping)
            .filtering(filtering)
            .hairpin(hairpin && self.can_hairpin());
        if let Some(t) = udp_timeout {
            b = b.udp_timeout(t).udp_stream_timeout(t);
        }
        b.build().expect("valid NAT config")
    }

    /// The nftables script that turns a patchbay router into this kind, or `None` for
    /// patchbay's own kinds. It deletes patchbay's `ip nat` and `ip filter` tables and
    /// adds ours. `wan` is the router's uplink interface, `wan_ip` its address there,
    /// `timeout` the UDP stream timeout (seconds) for the preserving NAT's memory of
    /// the ports it has handed out.
    pub fn custom_rules(self, wan: &str, wan_ip: Ipv4Addr, timeout: u32) -> Option<String> {
        let (sets, postrouting) = match self {
            NatKind::FullCone
            | NatKind::AddressRestricted
            | NatKind::PortRestricted
            | NatKind::Symmetric => return None,
            NatKind::LinuxMasquerade => (String::new(), format!("oif \"{wan}\" masquerade")),
            NatKind::SymmetricSequential => {
                // `numgen inc mod N offset BASE` straight into the port would step by
                // 256 (nft 1.0.6 puts the counter's host byte order into a
                // network-order port); a map from counter to port steps by one.
                let ports: Vec<String> = (0..SEQUENTIAL_PORTS)
                    .map(|i| format!("{i} : {}", SEQUENTIAL_BASE_PORT + i))
                    .collect();
                (
                    String::new(),
                    format!(
                        "oif \"{wan}\" meta l4proto udp snat to {wan_ip} : numgen inc mod {SEQUENTIAL_PORTS} map {{ {} }}\n\
                         \x20   oif \"{wan}\" masquerade",
                        ports.join(", ")
                    ),
                )
            }
            NatKind::SymmetricPreserving => (
                format!(
                    "set seen {{\n    type ipv4_addr . inet_service\n    flags dynamic,timeout\n    timeout {timeout}s\n  }}\n"
                ),
                format!(
                    "oif \"{wan}\" meta l4proto udp ip saddr . udp sport @seen masquerade random\n\
                     \x20   oif \"{wan}\" meta l4proto udp add @seen {{ ip saddr . udp sport }} masquerade\n\
                     \x20   oif \"{wan}\" masquerade"
                ),
            ),
        };
        // No input chain at all: like most hand-made Linux routers, packets for the
        // router's own closed ports are delivered to it (an ICMP error answers them)
        // and conntrack keeps an UNREPLIED entry for each.
        Some(format!(
            "delete table ip nat\n\
             delete table ip filter\n\
             table ip nat {{\n  {sets}\
             chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n  }}\n  \
             chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    {postrouting}\n  }}\n}}\n\
             table ip filter {{\n  \
             chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
             iif \"{wan}\" ct state established,related accept\n    iif \"{wan}\" drop\n  }}\n}}\n"
        ))
    }
}

impl std::fmt::Display for NatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchbay_kinds_have_no_custom_rules_and_the_others_do() {
        let ip = Ipv4Addr::new(198, 18, 0, 2);
        for kind in NatKind::ALL {
            assert_eq!(
                kind.custom_rules("wan", ip, 300).is_none(),
                kind.is_patchbay(),
                "{kind}"
            );
        }
        let seq = NatKind::SymmetricSequential
            .custom_rules("wan", ip, 300)
            .unwrap();
        assert!(
            seq.contains("snat to 198.18.0.2 : numgen inc mod 1024 map { 0 : 20000, 1 : 20001,")
        );
        assert!(!seq.contains("chain input"));
    }

    #[test]
    fn expected_types_follow_mapping_and_filtering() {
        assert_eq!(NatKind::LinuxMasquerade.expected_type(), "port-restricted");
        assert!(NatKind::LinuxMasquerade.is_port_restricted());
        assert!(!NatKind::SymmetricPreserving.is_port_restricted());
        assert_eq!(NatKind::SymmetricPreserving.expected_type(), "symmetric");
        assert_eq!(
            NatKind::SymmetricSequential.expected_mapping(),
            "address-and-port-dependent"
        );
    }
}
