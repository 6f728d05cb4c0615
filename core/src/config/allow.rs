//! Server-side allow rules ([`AllowRule`], `PROTO:HOST:PORT`): which targets a client
//! may ask the server to dial.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde_json::Value;

use super::diagnostics::shown;
use super::lexical::{check_dns_name, check_spec_chars, parse_port, split_colons, unbracket};
use super::mapping::Proto;
use super::values::{expect_array, expect_str};
use crate::error::{Error, Result};

/// The valid forms of an allow rule, shown in every allow-rule error.
const ALLOW_FORMS: &str = "PROTO:HOST:PORT with PROTO tcp, udp or *; HOST *, an IP address, a \
     CIDR (10.0.0.0/8, [fd00::]/8), a DNS name or *.domain; PORT *, a number or a range \
     1000-2000; IPv6 addresses in brackets, e.g. tcp:[::1]:22";

/// How the `allow` array is described in its errors.
const ALLOW_EXPECTED: &str = "an array of rules such as [\"tcp:127.0.0.1:22\", \"*:10.0.0.0/8:*\"]";

/// The host part of an allow rule.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host.
    Any,
    /// An IP address or CIDR network (host bits cleared), matched on the resolved address.
    Net(IpAddr, u8),
    /// A DNS name (lowercase), matched on the requested host name.
    Name(String),
    /// `*.suffix` (suffix lowercase): any name ending in `.suffix`.
    Suffix(String),
}

/// A server-side rule saying which targets a client may ask for:
/// `PROTO:HOST:PORT`, e.g. `tcp:127.0.0.1:22`, `*:10.0.0.0/8:*`, `udp:[::1]:5000-5100`,
/// `tcp:*.example.org:443`.
///
/// A rule whose host is an IP address or a CIDR matches the address the target resolved
/// to; a rule whose host is a DNS name matches the host name as the peer asked for it
/// (case-insensitive; `*.example.org` matches any name below `example.org`, not
/// `example.org` itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    proto: Option<Proto>,
    host: HostPattern,
    first_port: u16,
    last_port: u16,
}

impl AllowRule {
    /// Parses `PROTO:HOST:PORT`: `PROTO` is `tcp`, `udp` or `*`; `HOST` is `*`, an IP
    /// address, a CIDR (`10.0.0.0/8`, `[fd00::]/8` or `fd00::/8`), a DNS name or
    /// `*.domain`; `PORT` is `*`, a number or a range `1000-2000`. IPv6 addresses followed
    /// by a port need brackets: `tcp:[::1]:22`. Errors use the key `allow`.
    pub fn parse(spec: &str) -> Result<AllowRule> {
        parse_allow_rule("allow", spec)
    }

    /// Whether this rule lets a peer reach `host` (exactly as the peer asked for it),
    /// resolved to `ip`, on `port` over `proto`.
    pub fn permits(&self, proto: Proto, host: &str, ip: IpAddr, port: u16) -> bool {
        if self.proto.is_some_and(|p| p != proto) {
            return false;
        }
        if port < self.first_port || port > self.last_port {
            return false;
        }
        let name = host.strip_suffix('.').unwrap_or(host).as_bytes();
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Net(net, prefix) => net_contains(*net, *prefix, ip),
            HostPattern::Name(rule) => name.eq_ignore_ascii_case(rule.as_bytes()),
            HostPattern::Suffix(suffix) => {
                let suffix = suffix.as_bytes();
                name.len() > suffix.len() + 1
                    && name.get(name.len() - suffix.len() - 1) == Some(&b'.')
                    && name
                        .get(name.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }

    /// The rules used when a config has no `allow` key: loopback only (`127.0.0.0/8`
    /// and `::1`), any port, TCP and UDP.
    pub fn default_rules() -> Vec<AllowRule> {
        vec![
            AllowRule {
                proto: None,
                host: HostPattern::Net(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
                first_port: 1,
                last_port: u16::MAX,
            },
            AllowRule {
                proto: None,
                host: HostPattern::Net(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
                first_port: 1,
                last_port: u16::MAX,
            },
        ]
    }
}

impl FromStr for AllowRule {
    type Err = Error;

    fn from_str(spec: &str) -> Result<AllowRule> {
        AllowRule::parse(spec)
    }
}

impl fmt::Display for AllowRule {
    /// The canonical form, e.g. `*:127.0.0.0/8:*` or `tcp:[::1]:22`, which parses back to
    /// an equal rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Some(p) => write!(f, "{p}:")?,
            None => f.write_str("*:")?,
        }
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Net(IpAddr::V4(a), 32) => write!(f, "{a}")?,
            HostPattern::Net(IpAddr::V4(a), n) => write!(f, "{a}/{n}")?,
            HostPattern::Net(IpAddr::V6(a), 128) => write!(f, "[{a}]")?,
            HostPattern::Net(IpAddr::V6(a), n) => write!(f, "[{a}]/{n}")?,
            HostPattern::Name(name) => f.write_str(name)?,
            HostPattern::Suffix(suffix) => write!(f, "*.{suffix}")?,
        }
        match (self.first_port, self.last_port) {
            (1, u16::MAX) => f.write_str(":*"),
            (a, b) if a == b => write!(f, ":{a}"),
            (a, b) => write!(f, ":{a}-{b}"),
        }
    }
}

/// The `allow` array, with keys `KEY[i]`.
pub(super) fn parse_allow_rules(key: &str, v: &Value) -> Result<Vec<AllowRule>> {
    expect_array(key, v, ALLOW_EXPECTED)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let key = format!("{key}[{i}]");
            parse_allow_rule(&key, expect_str(&key, item, ALLOW_FORMS)?)
        })
        .collect()
}

fn parse_allow_rule(key: &str, spec: &str) -> Result<AllowRule> {
    let fail = |problem: String| Error::config(key, spec, problem, ALLOW_FORMS);
    check_spec_chars("the rule", spec).map_err(fail)?;
    let parts = split_colons(spec).map_err(fail)?;
    let (proto_text, port_text, host_text) = match parts.as_slice() {
        [proto, host, port] => (*proto, *port, host.to_string()),
        [proto, middle @ .., port] if middle.len() > 1 => {
            let host = middle.join(":");
            if host.contains('/') && !host.contains('[') {
                (*proto, *port, host)
            } else {
                return Err(fail(format!(
                    "has {} parts; it needs three, PROTO:HOST:PORT (an IPv6 address followed \
                     by a port must be in brackets, e.g. tcp:[::1]:22)",
                    parts.len()
                )));
            }
        }
        _ => {
            return Err(fail(format!(
                "has {} part{}; it needs three, PROTO:HOST:PORT",
                parts.len(),
                if parts.len() == 1 { "" } else { "s" }
            )))
        }
    };
    let proto = if proto_text == "*" {
        None
    } else {
        Some(Proto::parse(proto_text).ok_or_else(|| {
            fail(format!(
                "unknown protocol `{}`; it must be tcp, udp or *",
                shown(proto_text)
            ))
        })?)
    };
    let host = parse_host_pattern(&host_text).map_err(|p| fail(format!("host {p}")))?;
    let (first_port, last_port) = if port_text == "*" {
        (1, u16::MAX)
    } else if let Some((a, b)) = port_text.split_once('-') {
        let a = parse_port(a, "first port of the range", 1).map_err(fail)?;
        let b = parse_port(b, "last port of the range", 1).map_err(fail)?;
        if a > b {
            return Err(fail(format!("port range {a}-{b} is empty (first > last)")));
        }
        (a, b)
    } else {
        let p = parse_port(port_text, "port", 1).map_err(fail)?;
        (p, p)
    };
    Ok(AllowRule {
        proto,
        host,
        first_port,
        last_port,
    })
}

fn parse_host_pattern(text: &str) -> std::result::Result<HostPattern, String> {
    if text == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some((addr_text, prefix_text)) = text.split_once('/') {
        let addr = match unbracket(addr_text)? {
            Some(inner) => IpAddr::V6(
                inner
                    .parse::<Ipv6Addr>()
                    .map_err(|_| format!("`{}` is not an IPv6 address", shown(addr_text)))?,
            ),
            None => addr_text
                .parse::<IpAddr>()
                .map_err(|_| format!("`{}` is not an IP address", shown(addr_text)))?,
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix_text
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max && prefix_text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                format!(
                    "`{}` has prefix length `{}`; it must be 0-{max}",
                    shown(text),
                    shown(prefix_text)
                )
            })?;
        return Ok(HostPattern::Net(mask(addr, prefix), prefix));
    }
    if let Some(inner) = unbracket(text)? {
        let addr = inner
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("`{}` is not an IPv6 address", shown(text)))?;
        return Ok(HostPattern::Net(IpAddr::V6(addr), 128));
    }
    if let Ok(addr) = text.parse::<Ipv4Addr>() {
        return Ok(HostPattern::Net(IpAddr::V4(addr), 32));
    }
    if let Some(suffix) = text.strip_prefix("*.") {
        check_dns_name(suffix).map_err(|p| format!("`{}` {p}", shown(text)))?;
        return Ok(HostPattern::Suffix(suffix.to_ascii_lowercase()));
    }
    if text.contains('*') {
        return Err(format!(
            "`{}`: `*` is only allowed alone or as a leading `*.`",
            shown(text)
        ));
    }
    check_dns_name(text).map_err(|p| format!("`{}` {p}", shown(text)))?;
    Ok(HostPattern::Name(text.to_ascii_lowercase()))
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// Whether `ip` is in `net/prefix`. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), of the
/// destination and of the rule alike, are treated as the IPv4 addresses they are: an
/// IPv6 rule such as `[::]/0` admits IPv6 destinations only, never all of IPv4 through
/// `::ffff:0:0/96`.
fn net_contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (net, prefix) = match net {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
            _ => (net, prefix),
        },
        v4 => (v4, prefix),
    };
    match (net, ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(ip, prefix) == net,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::rule;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    #[test]
    fn default_rules_allow_loopback_only() {
        let rules = AllowRule::default_rules();
        let allowed = |proto, host: &str, addr: &str, port| {
            rules.iter().any(|r| r.permits(proto, host, ip(addr), port))
        };
        assert!(allowed(Proto::Tcp, "127.0.0.1", "127.0.0.1", 22));
        assert!(allowed(Proto::Udp, "localhost", "127.0.0.53", 53));
        assert!(allowed(Proto::Tcp, "::1", "::1", 22));
        assert!(allowed(Proto::Tcp, "x", "::ffff:127.0.0.1", 22));
        assert!(!allowed(Proto::Tcp, "10.0.0.1", "10.0.0.1", 22));
        assert!(!allowed(Proto::Tcp, "::2", "::2", 22));
        let shown: Vec<String> = rules.iter().map(ToString::to_string).collect();
        assert_eq!(shown, vec!["*:127.0.0.0/8:*", "*:[::1]:*"]);
    }

    /// Issue #14, finding 8: an IPv6 rule that covers `::ffff:0:0/96` does not admit
    /// IPv4; mapped addresses are IPv4 for matching, on both sides.
    #[test]
    fn v4_mapped_addresses_match_as_ipv4() {
        let all_v6 = rule("*:[::]/0:*");
        for v4 in [
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "127.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!all_v6.permits(Proto::Tcp, "h", ip(v4), 22), "{v4}");
        }
        assert!(all_v6.permits(Proto::Tcp, "h", ip("2001:db8::1"), 22));
        let mapped_range = rule("*:[::ffff:0:0]/96:*");
        assert!(!mapped_range.permits(Proto::Tcp, "h", ip("2001:db8::1"), 22));
        // A rule written as a mapped IPv4 network is that IPv4 network.
        assert!(mapped_range.permits(Proto::Tcp, "h", ip("10.0.0.1"), 22));
        let ten = rule("*:[::ffff:10.0.0.0]/104:*");
        assert!(ten.permits(Proto::Tcp, "h", ip("10.9.8.7"), 22));
        assert!(ten.permits(Proto::Tcp, "h", ip("::ffff:10.9.8.7"), 22));
        assert!(!ten.permits(Proto::Tcp, "h", ip("11.0.0.1"), 22));
        let v4 = rule("*:10.0.0.0/8:*");
        assert!(v4.permits(Proto::Tcp, "h", ip("::ffff:10.1.2.3"), 22));
        assert!(!v4.permits(Proto::Tcp, "h", ip("::a00:1"), 22));
    }

    #[test]
    fn allow_rules_match() {
        let any = ip("192.0.2.1");
        let r = rule("tcp:10.0.0.0/8:1000-2000");
        assert!(r.permits(Proto::Tcp, "h", ip("10.200.0.1"), 1000));
        assert!(r.permits(Proto::Tcp, "h", ip("10.200.0.1"), 2000));
        assert!(!r.permits(Proto::Tcp, "h", ip("10.200.0.1"), 2001));
        assert!(!r.permits(Proto::Tcp, "h", ip("10.200.0.1"), 999));
        assert!(!r.permits(Proto::Udp, "h", ip("10.200.0.1"), 1500));
        assert!(!r.permits(Proto::Tcp, "h", ip("11.0.0.1"), 1500));

        let r = rule("udp:[fd00::]/8:53");
        assert!(r.permits(Proto::Udp, "h", ip("fd12::1"), 53));
        assert!(!r.permits(Proto::Udp, "h", ip("fe80::1"), 53));
        assert_eq!(rule("udp:fd00::/8:53"), r);
        assert_eq!(rule("udp:[fd00::1]/8:53"), r, "host bits are cleared");

        let r = rule("*:[::1]:22");
        assert!(r.permits(Proto::Udp, "::1", ip("::1"), 22));
        assert!(!r.permits(Proto::Udp, "::1", ip("::1"), 23));

        let r = rule("tcp:Db.Example.org:5432");
        assert!(r.permits(Proto::Tcp, "db.example.ORG", any, 5432));
        assert!(r.permits(Proto::Tcp, "db.example.org.", any, 5432));
        assert!(!r.permits(Proto::Tcp, "xdb.example.org", any, 5432));
        assert!(!r.permits(Proto::Tcp, "192.0.2.1", any, 5432));

        let r = rule("*:*.example.org:*");
        assert!(r.permits(Proto::Tcp, "a.example.org", any, 1));
        assert!(r.permits(Proto::Udp, "a.B.Example.Org", any, 65535));
        assert!(!r.permits(Proto::Tcp, "example.org", any, 80));
        assert!(!r.permits(Proto::Tcp, "aexample.org", any, 80));
        assert!(!r.permits(Proto::Tcp, "ä.example.org€", any, 80));

        let r = rule("*:*:*");
        assert!(r.permits(Proto::Tcp, "anything", any, 1));

        let r = rule("tcp:0.0.0.0/0:443");
        assert!(r.permits(Proto::Tcp, "h", any, 443));
        assert!(!r.permits(Proto::Tcp, "h", ip("::2"), 443));
    }

    #[test]
    fn allow_rules_round_trip() {
        for spec in [
            "tcp:127.0.0.1:22",
            "*:10.0.0.0/8:*",
            "udp:[fd00::]/8:1000-2000",
            "tcp:[::1]:22",
            "*:db.example.org:5432",
            "tcp:*.example.org:443",
            "*:*:*",
        ] {
            let r = rule(spec);
            assert_eq!(r.to_string(), spec);
            assert_eq!(rule(&r.to_string()), r);
        }
    }

    #[test]
    fn allow_rule_errors() {
        for spec in [
            "",
            "tcp:22",
            "tcp:::1:22",
            "sctp:*:22",
            "tcp:*:0",
            "tcp:*:2000-1000",
            "tcp:10.0.0.0/33:*",
            "tcp:a*b.example:*",
            "tcp:bad_host:*",
            "tcp:1.2.3:*",
            "tcp:[10.0.0.1]:22",
            "tcp:*:x",
        ] {
            match AllowRule::parse(spec) {
                Err(Error::Config { key, value, .. }) => {
                    assert_eq!(key, "allow");
                    assert_eq!(value, spec);
                }
                other => panic!("{spec:?}: {other:?}"),
            }
        }
    }
}
