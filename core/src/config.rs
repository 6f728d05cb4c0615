//! Configuration: [`Config`], port [`Mapping`]s and server [`AllowRule`]s.
//!
//! A config is JSON or YAML. Our camelCase spellings and the Go tool's spellings both
//! parse, so an existing Go `config.json` runs unchanged. The document is walked by hand
//! rather than derived so that every error names its key path (`mappings[2]`,
//! `performance.tcpBufferSize`), the value as given and what would be valid.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Which side of the tunnel this peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Opens local listeners and forwards what they accept to the server
    /// (the Go tool's `sender`).
    Client,
    /// Dials the targets the client asks for, subject to the allow rules
    /// (the Go tool's `receiver`).
    Server,
}

impl Mode {
    /// Canonical spelling: `"client"` or `"server"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Client => "client",
            Mode::Server => "server",
        }
    }

    fn parse(text: &str) -> Option<Mode> {
        match text.to_ascii_lowercase().as_str() {
            "client" | "sender" => Some(Mode::Client),
            "server" | "receiver" => Some(Mode::Server),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport protocol of a mapping or an allow rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP: each accepted connection becomes one tunnel stream.
    Tcp,
    /// UDP: each client source address becomes one flow of datagrams.
    Udp,
}

impl Proto {
    /// Canonical spelling: `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn parse(text: &str) -> Option<Proto> {
        if text.eq_ignore_ascii_case("tcp") {
            Some(Proto::Tcp)
        } else if text.eq_ignore_ascii_case("udp") {
            Some(Proto::Udp)
        } else {
            None
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------
// Mappings
// ---------------------------------------------------------------------------------------

/// The valid forms of a mapping string, shown in every mapping error.
const MAPPING_FORMS: &str =
    "tcp:LOCAL:REMOTE, tcp:LOCAL:HOST:REMOTE or tcp:BIND:LOCAL:HOST:REMOTE \
     (udp: likewise) with ports 1-65535 (LOCAL may be 0); BIND is an IP address, HOST an IP \
     address or a DNS name, IPv6 addresses in brackets, e.g. tcp:[::1]:8080:[::1]:22";

/// The valid form of a mapping object.
const MAPPING_OBJECT_FORM: &str = "an object {\"proto\": \"tcp\" or \"udp\", \"listen\": \
     \"127.0.0.1:8080\" or a port number, \"target\": \"HOST:PORT\"}";

/// One forwarded port: a local listener on the client and the target the server dials.
///
/// Parses from `tcp:LOCAL:REMOTE`, `tcp:LOCAL:HOST:REMOTE` or `tcp:BIND:LOCAL:HOST:REMOTE`
/// (and the same with `udp`); see [`Mapping::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// TCP or UDP.
    pub proto: Proto,
    /// Where the client listens. Port 0 asks for an ephemeral port (the engine reports
    /// the real one).
    pub listen: SocketAddr,
    /// The host the server connects to: an IP literal (IPv6 without brackets) or a DNS
    /// name, resolved on the server.
    pub target_host: String,
    /// The port the server connects to, 1-65535.
    pub target_port: u16,
}

impl Mapping {
    /// Parses a mapping string:
    ///
    /// * `tcp:LOCAL:REMOTE` listens on `127.0.0.1:LOCAL` and targets `127.0.0.1:REMOTE`;
    /// * `tcp:LOCAL:HOST:REMOTE` listens on `127.0.0.1:LOCAL` and targets `HOST:REMOTE`;
    /// * `tcp:BIND:LOCAL:HOST:REMOTE` gives full control, e.g. `tcp:[::1]:8080:[::1]:22`.
    ///
    /// The protocol is `tcp` or `udp` (any case). `LOCAL` may be 0, `REMOTE` is 1-65535,
    /// `BIND` is an IP literal and `HOST` an IP literal or a DNS name; IPv6 addresses
    /// go in brackets. Errors use the key `mapping` and name the part that is wrong.
    pub fn parse(spec: &str) -> Result<Mapping> {
        parse_mapping_str("mapping", spec)
    }

    /// The target as `host:port`, with IPv6 hosts in brackets (`[::1]:22`).
    pub fn target(&self) -> String {
        join_host_port(&self.target_host, self.target_port)
    }

    /// Checks a mapping built in code: the target port is not 0, the target host is an
    /// IP literal or a DNS name, and the listen address has no IPv6 scope id or flow
    /// label (they cannot be written in a mapping string). Errors use the key `mapping`.
    pub fn validate(&self) -> Result<()> {
        check_mapping("mapping", self)
    }
}

impl FromStr for Mapping {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Mapping> {
        Mapping::parse(spec)
    }
}

impl fmt::Display for Mapping {
    /// The canonical full form, e.g. `tcp:127.0.0.1:8080:127.0.0.1:22`, which parses back
    /// to an equal mapping.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.proto, self.listen, self.target())
    }
}

fn parse_mapping_str(key: &str, spec: &str) -> Result<Mapping> {
    let fail = |problem: String| Error::config(key, spec, problem, MAPPING_FORMS);
    check_spec_chars("the mapping", spec).map_err(fail)?;
    let parts = split_colons(spec).map_err(fail)?;
    let Some((proto_text, rest)) = parts.split_first() else {
        return Err(fail("the mapping is empty".into()));
    };
    let proto = Proto::parse(proto_text).ok_or_else(|| {
        fail(format!(
            "unknown protocol `{}`; it must be tcp or udp",
            shown(proto_text)
        ))
    })?;
    let (bind, local, host, remote) = match rest {
        [] => return Err(fail("the ports are missing".into())),
        [_] => {
            return Err(fail(
                "only one port is given; both a local and a remote port are needed".into(),
            ))
        }
        [local, remote] => (None, local, None, remote),
        [local, host, remote] => (None, local, Some(host), remote),
        [bind, local, host, remote] => (Some(bind), local, Some(host), remote),
        _ => {
            return Err(fail(format!(
                "has {} parts after the protocol, at most 4 are possible \
                 (IPv6 addresses must be in brackets)",
                rest.len()
            )))
        }
    };
    let bind_ip = match bind {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(bind) => parse_ip_part(bind).map_err(|p| fail(format!("bind address {p}")))?,
    };
    let local_port = parse_port(local, "local port", 0).map_err(fail)?;
    let target_host = match host {
        None => Ipv4Addr::LOCALHOST.to_string(),
        Some(host) => parse_host_part(host).map_err(|p| fail(format!("host {p}")))?,
    };
    let target_port = parse_port(remote, "remote port", 1).map_err(fail)?;
    Ok(Mapping {
        proto,
        listen: SocketAddr::new(bind_ip, local_port),
        target_host,
        target_port,
    })
}

fn parse_mapping_object(key: &str, obj: &Map<String, Value>) -> Result<Mapping> {
    let fields = Fields::new(obj, key);
    fields.check_unknown(MAPPING_OBJECT_FIELDS)?;
    let (proto_key, proto_value) = fields.require(&PROTO, "\"tcp\" or \"udp\"")?;
    let proto_text = expect_str(&proto_key, proto_value, "\"tcp\" or \"udp\"")?;
    let proto = Proto::parse(proto_text).ok_or_else(|| {
        Error::config(
            &proto_key,
            proto_text,
            "unknown protocol",
            "\"tcp\" or \"udp\"",
        )
    })?;

    const LISTEN_EXPECTED: &str = "a port number (listens on 127.0.0.1) or an address \
         \"IP:PORT\" such as \"127.0.0.1:8080\" or \"[::1]:8080\"; port 0 means any free port";
    let (listen_key, listen_value) = fields.require(&LISTEN, LISTEN_EXPECTED)?;
    let listen = match listen_value {
        Value::Number(n) => match n.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            None => {
                return Err(Error::config(
                    &listen_key,
                    n.to_string(),
                    "the port is out of range",
                    LISTEN_EXPECTED,
                ))
            }
        },
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            let port = parse_port(s, "the port", 0)
                .map_err(|p| Error::config(&listen_key, s, p, LISTEN_EXPECTED))?;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        }
        Value::String(s) => s.parse::<SocketAddr>().map_err(|_| {
            Error::config(
                &listen_key,
                s,
                "not an address IP:PORT (IPv6 addresses need brackets)",
                LISTEN_EXPECTED,
            )
        })?,
        other => {
            return Err(wrong_type(
                &listen_key,
                other,
                "a port number or a string",
                LISTEN_EXPECTED,
            ))
        }
    };

    const TARGET_EXPECTED: &str = "\"HOST:PORT\" with HOST an IP address or a DNS name \
         (IPv6 in brackets) and PORT 1-65535, e.g. \"127.0.0.1:22\" or \"[::1]:22\"";
    let (target_key, target_value) = fields.require(&TARGET, TARGET_EXPECTED)?;
    let target_text = expect_str(&target_key, target_value, TARGET_EXPECTED)?;
    let (target_host, target_port) = parse_host_port(target_text, None)
        .map_err(|p| Error::config(&target_key, target_text, p, TARGET_EXPECTED))?;

    let mapping = Mapping {
        proto,
        listen,
        target_host,
        target_port,
    };
    check_mapping(key, &mapping)?;
    Ok(mapping)
}

fn check_mapping(key: &str, m: &Mapping) -> Result<()> {
    let fail = |problem: String| Error::config(key, m.to_string(), problem, MAPPING_FORMS);
    if m.target_port == 0 {
        return Err(fail("remote port 0 is out of range".into()));
    }
    check_host(&m.target_host).map_err(|p| fail(format!("target host {p}")))?;
    if let SocketAddr::V6(v6) = m.listen {
        if v6.scope_id() != 0 || v6.flowinfo() != 0 {
            return Err(fail(
                "the listen address has an IPv6 scope id or flow label, which is not supported"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn check_duplicate_listeners(mappings: &[Mapping]) -> Result<()> {
    for (i, m) in mappings.iter().enumerate() {
        if m.listen.port() == 0 {
            continue;
        }
        if let Some(j) = mappings[..i]
            .iter()
            .position(|o| o.proto == m.proto && o.listen == m.listen)
        {
            return Err(Error::config(
                format!("mappings[{i}]"),
                m.to_string(),
                format!(
                    "{} {} is already the listen address of mappings[{j}]",
                    m.proto, m.listen
                ),
                "a different local port for each mapping of the same protocol \
                 (or port 0 for any free port)",
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Allow rules
// ---------------------------------------------------------------------------------------

/// The valid forms of an allow rule, shown in every allow-rule error.
const ALLOW_FORMS: &str = "PROTO:HOST:PORT with PROTO tcp, udp or *; HOST *, an IP address, a \
     CIDR (10.0.0.0/8, [fd00::]/8), a DNS name or *.domain; PORT *, a number or a range \
     1000-2000; IPv6 addresses in brackets, e.g. tcp:[::1]:22";

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

// ---------------------------------------------------------------------------------------
// Performance, relay, config
// ---------------------------------------------------------------------------------------

/// Tuning knobs (the `performance` object). Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Performance {
    /// `stunCache`: how long a STUN result is reused. Default 5 min, 1 s-24 h.
    pub stun_cache: Duration,
    /// `signalBackoff`: first delay of the signaling poll's exponential backoff.
    /// Default 500 ms, 10 ms-60 s.
    pub signal_backoff: Duration,
    /// `tcpBufferSize`: copy buffer per TCP direction, bytes. Default 65536, 1 KiB-16 MiB.
    pub tcp_buffer_size: usize,
    /// `udpBufferSize`: kernel `SO_RCVBUF`/`SO_SNDBUF` of UDP sockets, bytes.
    /// Default 1 MiB, 8 KiB-64 MiB. Datagram read buffers are always 64 KiB, so nothing
    /// is truncated whatever this is.
    pub udp_buffer_size: usize,
    /// `maxRetries`: fast reconnect attempts before falling back to one every 30 s.
    /// Default 3, 0-1000.
    pub max_retries: u32,
    /// `udpFlowTimeout`: a UDP flow idle this long is closed on both sides.
    /// Default 60 s, 1 s-24 h.
    pub udp_flow_timeout: Duration,
    /// `keepAlive`: QUIC keep-alive interval. Default 5 s (below common NAT UDP timeouts), 10 ms-1 h, and shorter than
    /// `idle_timeout`.
    pub keep_alive: Duration,
    /// `idleTimeout`: QUIC idle timeout: a tunnel silent this long is declared lost and
    /// reconnected. Default 15 s (three keep-alives), 100 ms-1 h.
    pub idle_timeout: Duration,
    /// `workers`: tokio worker threads of the engine's runtime, 1-64. Default: one per
    /// two CPUs, at most 2 (see [`default_workers`]).
    pub workers: usize,
    /// `tunnelWait`: how long a local TCP connection or UDP flow accepted while the
    /// tunnel is not up (starting, or reconnecting) waits for it. Its data is carried
    /// once the tunnel is up; when the time runs out the TCP connection is reset and
    /// counted in `tunnel_wait_timeouts`. Default 10 s, 100 ms-10 min.
    pub tunnel_wait: Duration,
}

/// The default `workers`: one runtime thread per two CPUs, between 1 and 2. One QUIC
/// connection is driven by one task, so more threads add little; and on a small
/// machine, where the engine shares the CPUs with the service it forwards, a second
/// worker costs more in cross-thread wake-ups than it gains. Measured on 2 cores with
/// iperf3 through a loopback tunnel: 4.6-5.6 Gbit/s with 1 worker, 3.4-4.1 with 2
/// (docs/benchmarks.md).
pub fn default_workers() -> usize {
    // Asked once: on Linux the answer reads the cgroup files, and every parsed config
    // starts from `Performance::default()`.
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cpus / 2).clamp(1, 2)
    })
}

impl Default for Performance {
    fn default() -> Self {
        Performance {
            stun_cache: Duration::from_secs(5 * 60),
            signal_backoff: Duration::from_millis(500),
            tcp_buffer_size: 64 * 1024,
            udp_buffer_size: 1024 * 1024,
            max_retries: 3,
            udp_flow_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            workers: default_workers(),
            tunnel_wait: Duration::from_secs(10),
        }
    }
}

const MIB: u64 = 1024 * 1024;

impl Performance {
    fn check(&self, prefix: &str) -> Result<()> {
        let key = |name: &str| format!("{prefix}.{name}");
        check_duration(
            &key("stunCache"),
            self.stun_cache,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )?;
        check_duration(
            &key("signalBackoff"),
            self.signal_backoff,
            Duration::from_millis(10),
            Duration::from_secs(60),
        )?;
        check_int(
            &key("tcpBufferSize"),
            self.tcp_buffer_size as u64,
            1024,
            16 * MIB,
            "bytes",
        )?;
        check_int(
            &key("udpBufferSize"),
            self.udp_buffer_size as u64,
            8192,
            64 * MIB,
            "bytes",
        )?;
        check_int(
            &key("maxRetries"),
            u64::from(self.max_retries),
            0,
            1000,
            "attempts",
        )?;
        check_duration(
            &key("udpFlowTimeout"),
            self.udp_flow_timeout,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )?;
        check_duration(
            &key("keepAlive"),
            self.keep_alive,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        check_duration(
            &key("idleTimeout"),
            self.idle_timeout,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        if self.keep_alive >= self.idle_timeout {
            return Err(Error::config(
                key("keepAlive"),
                fmt_duration(self.keep_alive),
                format!(
                    "the keep-alive must be shorter than idleTimeout ({}), or the connection \
                     times out between keep-alives",
                    fmt_duration(self.idle_timeout)
                ),
                "a keepAlive shorter than idleTimeout, typically half of it",
            ));
        }
        check_int(&key("workers"), self.workers as u64, 1, 64, "threads")?;
        check_duration(
            &key("tunnelWait"),
            self.tunnel_wait,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        Ok(())
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("stunCache".into(), fmt_duration(self.stun_cache).into());
        m.insert(
            "signalBackoff".into(),
            fmt_duration(self.signal_backoff).into(),
        );
        m.insert("tcpBufferSize".into(), self.tcp_buffer_size.into());
        m.insert("udpBufferSize".into(), self.udp_buffer_size.into());
        m.insert("maxRetries".into(), self.max_retries.into());
        m.insert(
            "udpFlowTimeout".into(),
            fmt_duration(self.udp_flow_timeout).into(),
        );
        m.insert("keepAlive".into(), fmt_duration(self.keep_alive).into());
        m.insert("idleTimeout".into(), fmt_duration(self.idle_timeout).into());
        m.insert("workers".into(), self.workers.into());
        m.insert("tunnelWait".into(), fmt_duration(self.tunnel_wait).into());
        Value::Object(m)
    }
}

/// A TURN relay used when no direct path can be punched (the `relay` object).
#[derive(Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// `turn:host[:port][?transport=udp|tcp]` or `turns:...`.
    pub url: String,
    /// TURN username; given together with `credential`.
    pub username: Option<String>,
    /// TURN password; given together with `username`. Redacted from `Debug` output.
    pub credential: Option<String>,
    /// `authSecret`: the TURN REST API shared secret (coturn `use-auth-secret`); when
    /// set, time-limited credentials are derived from it (username
    /// `<expiry>:<username>`, password base64(HMAC-SHA1(secret, username))) instead of
    /// `credential`. Redacted from `Debug` output.
    pub auth_secret: Option<String>,
}

/// When to use the relay (`relayPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RelayPolicy {
    /// Direct when possible; the relay when punching fails or cannot work.
    #[default]
    Auto,
    /// Direct only: fail with `NoPath` rather than relay.
    Never,
    /// Always through the relay (networks that block UDP between peers).
    Always,
}

impl RelayPolicy {
    /// `auto`, `never` or `always`.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayPolicy::Auto => "auto",
            RelayPolicy::Never => "never",
            RelayPolicy::Always => "always",
        }
    }
}

impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "auth_secret",
                &self.auth_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A complete, validated engine configuration.
///
/// Build it with [`Config::from_json`], [`Config::from_yaml`], [`Config::from_value`] or
/// [`Config::from_path`]; a `Config` changed in code can be re-checked with
/// [`Config::validate`].
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// `mode` (alias `role`): `client`/`sender` or `server`/`receiver`. Required.
    pub mode: Mode,
    /// `room` (alias `roomId`): rendezvous name, 1-128 bytes, no whitespace or control
    /// characters. Required.
    pub room: String,
    /// `secret`: pre-shared key that authenticates the peers' offers. Redacted from
    /// `Debug` output. A server without one refuses to start unless `insecure` is set.
    pub secret: Option<String>,
    /// `insecure`: `true` lets a server run without a `secret`, so that anyone who
    /// knows (or guesses) the room name can reach what its `allow` rules permit.
    /// Default `false`. A running engine without a secret says so (a warning at start,
    /// a `Warning` event, `insecure` in its stats), whatever this is.
    pub insecure: bool,
    /// `signalUrl` (aliases `signalURL`, `signalingUrl`, `signalingURL`): http or https
    /// URL of the rendezvous server. Required.
    pub signal_url: String,
    /// `signalCaFile`: a PEM file of CA certificates; an `https://` rendezvous server is
    /// verified against these only, instead of the system's root certificates.
    pub signal_ca_file: Option<PathBuf>,
    /// `stunServers` (or the Go tool's single `stunServer`): `host:port` strings, port
    /// 3478 when it was omitted, IPv6 in brackets. Resolved by the engine.
    pub stun_servers: Vec<String>,
    /// `mappings`: forwarded ports.
    pub mappings: Vec<Mapping>,
    /// `allow`: which targets a client may reach on this server; loopback only
    /// ([`AllowRule::default_rules`]) when the key is absent, nothing when it is `[]`.
    pub allow: Vec<AllowRule>,
    /// `bind`: local address of the engine's one UDP socket. Default `0.0.0.0:0`.
    pub bind: SocketAddr,
    /// `relay`: optional TURN fallback.
    pub relay: Option<RelayConfig>,
    /// `relayPolicy`: `auto` (default), `never` or `always` (needs `relay`).
    pub relay_policy: RelayPolicy,
    /// `metricsAddr`: where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// `punchTimeout`: how long hole punching may take. Default 10 s, 1 s-300 s.
    pub punch_timeout: Duration,
    /// `performance`: tuning knobs.
    pub performance: Performance,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("mode", &self.mode)
            .field("room", &self.room)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .field("signal_url", &crate::redact::url(&self.signal_url))
            .field("signal_ca_file", &self.signal_ca_file)
            .field("stun_servers", &self.stun_servers)
            .field("mappings", &self.mappings)
            .field("allow", &self.allow)
            .field("bind", &self.bind)
            .field("relay", &self.relay)
            .field("relay_policy", &self.relay_policy)
            .field("metrics_addr", &self.metrics_addr)
            .field("punch_timeout", &self.punch_timeout)
            .field("performance", &self.performance)
            .finish()
    }
}

/// A config key and the other spellings accepted for it.
struct Field {
    name: &'static str,
    aliases: &'static [&'static str],
}

const fn field(name: &'static str) -> Field {
    Field { name, aliases: &[] }
}

const MODE: Field = Field {
    name: "mode",
    aliases: &["role"],
};
const ROOM: Field = Field {
    name: "room",
    aliases: &["roomId"],
};
const SECRET: Field = field("secret");
const INSECURE: Field = field("insecure");
const SIGNAL_URL: Field = Field {
    name: "signalUrl",
    aliases: &["signalURL", "signalingUrl", "signalingURL"],
};
const SIGNAL_CA_FILE: Field = field("signalCaFile");
const STUN_SERVERS: Field = Field {
    name: "stunServers",
    aliases: &["stunServer"],
};
const MAPPINGS: Field = field("mappings");
const ALLOW: Field = field("allow");
const BIND: Field = field("bind");
const RELAY: Field = field("relay");
const RELAY_POLICY: Field = field("relayPolicy");
const METRICS_ADDR: Field = field("metricsAddr");
const PUNCH_TIMEOUT: Field = field("punchTimeout");
const PERFORMANCE: Field = field("performance");
const TOP_FIELDS: &[Field] = &[
    MODE,
    ROOM,
    SECRET,
    INSECURE,
    SIGNAL_URL,
    SIGNAL_CA_FILE,
    STUN_SERVERS,
    MAPPINGS,
    ALLOW,
    BIND,
    RELAY,
    RELAY_POLICY,
    METRICS_ADDR,
    PUNCH_TIMEOUT,
    PERFORMANCE,
];

const STUN_CACHE: Field = field("stunCache");
const SIGNAL_BACKOFF: Field = field("signalBackoff");
const TCP_BUFFER_SIZE: Field = field("tcpBufferSize");
const UDP_BUFFER_SIZE: Field = field("udpBufferSize");
const MAX_RETRIES: Field = field("maxRetries");
const UDP_FLOW_TIMEOUT: Field = field("udpFlowTimeout");
const KEEP_ALIVE: Field = field("keepAlive");
const IDLE_TIMEOUT: Field = field("idleTimeout");
const WORKERS: Field = field("workers");
const TUNNEL_WAIT: Field = field("tunnelWait");
const PERFORMANCE_FIELDS: &[Field] = &[
    STUN_CACHE,
    SIGNAL_BACKOFF,
    TCP_BUFFER_SIZE,
    UDP_BUFFER_SIZE,
    MAX_RETRIES,
    UDP_FLOW_TIMEOUT,
    KEEP_ALIVE,
    IDLE_TIMEOUT,
    WORKERS,
    TUNNEL_WAIT,
];

const URL: Field = field("url");
const USERNAME: Field = field("username");
const CREDENTIAL: Field = field("credential");
const AUTH_SECRET: Field = field("authSecret");
const RELAY_FIELDS: &[Field] = &[URL, USERNAME, CREDENTIAL, AUTH_SECRET];

const PROTO: Field = field("proto");
const LISTEN: Field = field("listen");
const TARGET: Field = field("target");
const MAPPING_OBJECT_FIELDS: &[Field] = &[PROTO, LISTEN, TARGET];

const MODE_EXPECTED: &str = "\"client\" or \"server\" (the Go tool's \"sender\" and \"receiver\" \
     also work)";
const ROOM_EXPECTED: &str = "a room name of 1-128 bytes without whitespace or control characters";
const SECRET_EXPECTED: &str = "a non-empty string shared by both peers";
const SIGNAL_CA_FILE_EXPECTED: &str =
    "the path of a PEM file with the CA certificates of the rendezvous server, e.g. \"/etc/stunfwd/ca.pem\"";
const SIGNAL_URL_EXPECTED: &str =
    "an http:// or https:// URL of the rendezvous server, e.g. \"https://example.org/signal\"";
const STUN_EXPECTED: &str = "\"host:port\" strings such as \"stun.example.org:3478\" \
     (a leading \"stun:\" is accepted, the port defaults to 3478, IPv6 in brackets)";
const ALLOW_EXPECTED: &str = "an array of rules such as [\"tcp:127.0.0.1:22\", \"*:10.0.0.0/8:*\"]";
const ADDR_EXPECTED: &str = "an address \"IP:PORT\" such as \"0.0.0.0:0\" or \"[::]:4000\"";
const RELAY_EXPECTED: &str = "an object {\"url\": \"turn:host:3478\", \"username\": \"u\", \
     \"credential\": \"p\"}";
const RELAY_URL_EXPECTED: &str = "\"turn:HOST[:PORT][?transport=udp]\"";
const RELAY_POLICY_EXPECTED: &str = "\"auto\", \"never\" or \"always\"";
const PERFORMANCE_EXPECTED: &str = "an object with keys stunCache, signalBackoff, tcpBufferSize, \
     udpBufferSize, maxRetries, udpFlowTimeout, keepAlive, idleTimeout, workers, tunnelWait";

impl Config {
    /// Parses and validates a JSON document.
    ///
    /// Invalid JSON is an [`Error::Config`] with key `(document)` whose problem gives the
    /// line and column.
    pub fn from_json(text: &str) -> Result<Config> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Error::config(
                "(document)",
                document_line(text, e.line()),
                format!("not valid JSON: {e}"),
                "a JSON object of config keys, e.g. {\"mode\": \"client\", \"room\": \"r\", \
                 \"signalUrl\": \"https://example.org/signal\"}",
            )
        })?;
        Config::from_value(value)
    }

    /// Parses and validates a YAML document (same keys as JSON).
    pub fn from_yaml(text: &str) -> Result<Config> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let value: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, problem) = match e.location() {
                Some(loc) if !e.to_string().contains("line") => (
                    loc.line(),
                    format!(
                        "not valid YAML at line {} column {}: {e}",
                        loc.line(),
                        loc.column()
                    ),
                ),
                Some(loc) => (loc.line(), format!("not valid YAML: {e}")),
                None => (0, format!("not valid YAML: {e}")),
            };
            Error::config(
                "(document)",
                document_line(text, line),
                problem,
                "a YAML mapping of config keys, e.g. \"mode: client\", \"room: r\", \
                 \"signalUrl: https://example.org/signal\" on separate lines",
            )
        })?;
        Config::from_value(value)
    }

    /// Reads a config file: `.yaml`/`.yml` files as YAML, anything else as JSON.
    ///
    /// A file that cannot be read is an [`Error::Io`] naming the path.
    pub fn from_path(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read config file {}", path.display()), &e))?;
        let yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if yaml {
            Config::from_yaml(&text)
        } else {
            Config::from_json(&text)
        }
    }

    /// Builds and validates a config from an already parsed JSON value.
    ///
    /// Accepts our camelCase keys and the Go tool's spellings; unknown keys, wrong types
    /// and out-of-range values are errors that name the key. A key whose value is `null`
    /// counts as absent.
    pub fn from_value(value: Value) -> Result<Config> {
        let Value::Object(map) = &value else {
            return Err(Error::config(
                "(document)",
                preview(&value),
                format!("the document is {}, not an object", type_name(&value)),
                "an object (map) of config keys, e.g. {\"mode\": \"client\", \"room\": \"r\", \
                 \"signalUrl\": \"https://example.org/signal\"}",
            ));
        };
        let top = Fields::new(map, "");
        top.check_unknown(TOP_FIELDS)?;

        let (key, v) = top.require(&MODE, MODE_EXPECTED)?;
        let text = expect_str(&key, v, MODE_EXPECTED)?;
        let mode = Mode::parse(text)
            .ok_or_else(|| Error::config(&key, text, "unknown mode", MODE_EXPECTED))?;

        let (key, v) = top.require(&ROOM, ROOM_EXPECTED)?;
        let room = expect_str(&key, v, ROOM_EXPECTED)?.to_owned();
        check_room(&key, &room)?;

        let secret = match top.get(&SECRET)? {
            None => None,
            Some((key, v)) => {
                let secret = expect_str(&key, v, SECRET_EXPECTED)?.to_owned();
                check_secret(&key, &secret)?;
                Some(secret)
            }
        };
        let insecure = match top.get(&INSECURE)? {
            None => false,
            Some((key, v)) => v.as_bool().ok_or_else(|| {
                Error::config(
                    key,
                    v.to_string(),
                    "is not a boolean",
                    "true (run a server without a secret, on purpose) or false",
                )
            })?,
        };

        let (key, v) = top.require(&SIGNAL_URL, SIGNAL_URL_EXPECTED)?;
        let signal_url = expect_str(&key, v, SIGNAL_URL_EXPECTED)?.to_owned();
        check_signal_url(&key, &signal_url)?;

        let signal_ca_file = match top.get(&SIGNAL_CA_FILE)? {
            None => None,
            Some((key, v)) => match expect_str(&key, v, SIGNAL_CA_FILE_EXPECTED)? {
                "" => {
                    return Err(Error::config(
                        key,
                        "\"\"",
                        "is empty",
                        SIGNAL_CA_FILE_EXPECTED,
                    ))
                }
                path => Some(PathBuf::from(path)),
            },
        };

        let stun_servers = match top.get(&STUN_SERVERS)? {
            None => Vec::new(),
            Some((key, Value::String(s))) => vec![parse_stun_server(&key, s)?],
            Some((key, Value::Array(items))) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let key = format!("{key}[{i}]");
                    parse_stun_server(&key, expect_str(&key, item, STUN_EXPECTED)?)
                })
                .collect::<Result<_>>()?,
            Some((key, v)) => {
                return Err(wrong_type(
                    &key,
                    v,
                    "an array of strings or one string",
                    STUN_EXPECTED,
                ))
            }
        };

        let mappings = match top.get(&MAPPINGS)? {
            None => Vec::new(),
            Some((key, v)) => {
                let items = expect_array(&key, v, MAPPING_FORMS)?;
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let key = format!("{key}[{i}]");
                        match item {
                            Value::String(s) => parse_mapping_str(&key, s),
                            Value::Object(obj) => parse_mapping_object(&key, obj),
                            other => Err(wrong_type(
                                &key,
                                other,
                                "a string or an object",
                                &format!("{MAPPING_FORMS}; or {MAPPING_OBJECT_FORM}"),
                            )),
                        }
                    })
                    .collect::<Result<_>>()?
            }
        };

        let allow = match top.get(&ALLOW)? {
            None => AllowRule::default_rules(),
            Some((key, v)) => expect_array(&key, v, ALLOW_EXPECTED)?
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let key = format!("{key}[{i}]");
                    parse_allow_rule(&key, expect_str(&key, item, ALLOW_FORMS)?)
                })
                .collect::<Result<_>>()?,
        };

        let bind = match top.get(&BIND)? {
            None => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            Some((key, v)) => parse_socket_addr(&key, v)?,
        };

        let relay = match top.get(&RELAY)? {
            None => None,
            Some((key, v)) => Some(parse_relay(&key, v)?),
        };

        let relay_policy = match top.get(&RELAY_POLICY)? {
            None => RelayPolicy::Auto,
            Some((key, v)) => {
                let text = expect_str(&key, v, RELAY_POLICY_EXPECTED)?;
                match text.to_ascii_lowercase().as_str() {
                    "auto" => RelayPolicy::Auto,
                    "never" => RelayPolicy::Never,
                    "always" => RelayPolicy::Always,
                    _ => {
                        return Err(Error::config(
                            key,
                            text,
                            "is not a relay policy",
                            RELAY_POLICY_EXPECTED,
                        ))
                    }
                }
            }
        };

        let metrics_addr = match top.get(&METRICS_ADDR)? {
            None => None,
            Some((key, v)) => Some(parse_socket_addr(&key, v)?),
        };

        let punch_timeout = match top.get(&PUNCH_TIMEOUT)? {
            None => Duration::from_secs(10),
            Some((key, v)) => parse_duration(&key, v)?,
        };

        let performance = match top.get(&PERFORMANCE)? {
            None => Performance::default(),
            Some((key, v)) => parse_performance(&key, v)?,
        };

        let config = Config {
            insecure,
            mode,
            room,
            secret,
            signal_url,
            signal_ca_file,
            stun_servers,
            mappings,
            allow,
            bind,
            relay,
            relay_policy,
            metrics_addr,
            punch_timeout,
            performance,
        };
        config.validate()?;
        Ok(config)
    }

    /// Re-checks every invariant that parsing enforces, for a config built or changed in
    /// code. Errors use the canonical key names.
    pub fn validate(&self) -> Result<()> {
        check_room("room", &self.room)?;
        if let Some(secret) = &self.secret {
            check_secret("secret", secret)?;
        }
        if self.mode == Mode::Server && self.secret.is_none() && !self.insecure {
            return Err(Error::config(
                "secret",
                "(not set)",
                "a server without a secret lets anyone who knows or guesses the room name \
                 reach every service its allow rules permit (by default every loopback port)",
                "\"secret\": a long random string that both peers share; or \"insecure\": \
                 true to run an open server on purpose",
            ));
        }
        check_signal_url("signalUrl", &self.signal_url)?;
        for (i, server) in self.stun_servers.iter().enumerate() {
            parse_stun_server(&format!("stunServers[{i}]"), server)?;
        }
        for (i, mapping) in self.mappings.iter().enumerate() {
            check_mapping(&format!("mappings[{i}]"), mapping)?;
        }
        check_duplicate_listeners(&self.mappings)?;
        if self.relay_policy == RelayPolicy::Always && self.relay.is_none() {
            return Err(Error::config(
                "relayPolicy",
                "always",
                "needs a relay, but `relay` is not set",
                "`relay` with a TURN URL and credentials, or relayPolicy \"auto\"/\"never\"",
            ));
        }
        if let Some(relay) = &self.relay {
            check_relay("relay", relay)?;
        }
        check_duration(
            "punchTimeout",
            self.punch_timeout,
            Duration::from_secs(1),
            Duration::from_secs(300),
        )?;
        self.performance.check("performance")
    }

    /// The config in our canonical spelling (camelCase keys, mappings and allow rules as
    /// canonical strings, durations as strings like `"500ms"`); absent optional keys are
    /// left out. [`Config::from_value`] turns it back into an equal config.
    ///
    /// The result contains the secret and the relay credential.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("mode".into(), self.mode.as_str().into());
        m.insert("room".into(), self.room.clone().into());
        if let Some(secret) = &self.secret {
            m.insert("secret".into(), secret.clone().into());
        }
        if self.insecure {
            m.insert("insecure".into(), true.into());
        }
        m.insert("signalUrl".into(), self.signal_url.clone().into());
        if let Some(ca) = &self.signal_ca_file {
            m.insert("signalCaFile".into(), ca.display().to_string().into());
        }
        m.insert("stunServers".into(), self.stun_servers.clone().into());
        m.insert(
            "mappings".into(),
            self.mappings
                .iter()
                .map(|x| Value::String(x.to_string()))
                .collect(),
        );
        m.insert(
            "allow".into(),
            self.allow
                .iter()
                .map(|x| Value::String(x.to_string()))
                .collect(),
        );
        m.insert("bind".into(), self.bind.to_string().into());
        if let Some(relay) = &self.relay {
            let mut r = Map::new();
            r.insert("url".into(), relay.url.clone().into());
            if let Some(u) = &relay.username {
                r.insert("username".into(), u.clone().into());
            }
            if let Some(c) = &relay.credential {
                r.insert("credential".into(), c.clone().into());
            }
            if let Some(a) = &relay.auth_secret {
                r.insert("authSecret".into(), a.clone().into());
            }
            m.insert("relay".into(), Value::Object(r));
        }
        m.insert("relayPolicy".into(), self.relay_policy.as_str().into());
        if let Some(addr) = self.metrics_addr {
            m.insert("metricsAddr".into(), addr.to_string().into());
        }
        m.insert(
            "punchTimeout".into(),
            fmt_duration(self.punch_timeout).into(),
        );
        m.insert("performance".into(), self.performance.to_json());
        Value::Object(m)
    }
}

fn parse_performance(key: &str, v: &Value) -> Result<Performance> {
    let obj = expect_object(key, v, PERFORMANCE_EXPECTED)?;
    let fields = Fields::new(obj, key);
    fields.check_unknown(PERFORMANCE_FIELDS)?;
    let mut p = Performance::default();
    if let Some((k, v)) = fields.get(&STUN_CACHE)? {
        p.stun_cache = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&SIGNAL_BACKOFF)? {
        p.signal_backoff = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&TCP_BUFFER_SIZE)? {
        p.tcp_buffer_size = parse_usize(&k, v, "a size in bytes, 1024-16777216")?;
    }
    if let Some((k, v)) = fields.get(&UDP_BUFFER_SIZE)? {
        p.udp_buffer_size = parse_usize(&k, v, "a size in bytes, 8192-67108864")?;
    }
    if let Some((k, v)) = fields.get(&MAX_RETRIES)? {
        let n = parse_uint(&k, v, "a number of attempts, 0-1000")?;
        p.max_retries = u32::try_from(n).unwrap_or(u32::MAX);
        check_int(&k, n, 0, 1000, "attempts")?;
    }
    if let Some((k, v)) = fields.get(&UDP_FLOW_TIMEOUT)? {
        p.udp_flow_timeout = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&KEEP_ALIVE)? {
        p.keep_alive = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&IDLE_TIMEOUT)? {
        p.idle_timeout = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&WORKERS)? {
        p.workers = parse_usize(&k, v, "a number of threads, 1-64")?;
    }
    if let Some((k, v)) = fields.get(&TUNNEL_WAIT)? {
        p.tunnel_wait = parse_duration(&k, v)?;
    }
    p.check(key)?;
    Ok(p)
}

fn parse_relay(key: &str, v: &Value) -> Result<RelayConfig> {
    let obj = expect_object(key, v, RELAY_EXPECTED)?;
    let fields = Fields::new(obj, key);
    fields.check_unknown(RELAY_FIELDS)?;
    let (url_key, url_value) = fields.require(&URL, RELAY_URL_EXPECTED)?;
    let url = expect_str(&url_key, url_value, RELAY_URL_EXPECTED)?.to_owned();
    check_relay_url(&url_key, &url)?;
    let optional = |f: &Field| -> Result<Option<String>> {
        match fields.get(f)? {
            None => Ok(None),
            Some((k, v)) => {
                let s = expect_str(&k, v, "a non-empty string")?;
                if s.is_empty() {
                    return Err(Error::config(k, s, "is empty", "a non-empty string"));
                }
                Ok(Some(s.to_owned()))
            }
        }
    };
    let relay = RelayConfig {
        url,
        username: optional(&USERNAME)?,
        credential: optional(&CREDENTIAL)?,
        auth_secret: optional(&AUTH_SECRET)?,
    };
    check_relay(key, &relay)?;
    Ok(relay)
}

fn check_relay(key: &str, relay: &RelayConfig) -> Result<()> {
    check_relay_url(&format!("{key}.url"), &relay.url)?;
    for (name, value) in [
        ("username", &relay.username),
        ("credential", &relay.credential),
    ] {
        if value.as_deref() == Some("") {
            return Err(Error::config(
                format!("{key}.{name}"),
                "",
                "is empty",
                "a non-empty string",
            ));
        }
    }
    if relay.auth_secret.is_some() {
        if relay.credential.is_some() {
            return Err(Error::config(
                format!("{key}.credential"),
                "(given)",
                "credential and authSecret are both given",
                "either username + credential (long-term credentials) or authSecret (TURN REST API)",
            ));
        }
        return Ok(());
    }
    if relay.username.is_none() {
        return Err(Error::config(
            format!("{key}.username"),
            "(missing)",
            "a TURN relay needs credentials",
            "username + credential (long-term credentials) or authSecret (TURN REST API)",
        ));
    }
    if relay.username.is_some() != relay.credential.is_some() {
        let (given, missing) = if relay.username.is_some() {
            ("username", "credential")
        } else {
            ("credential", "username")
        };
        return Err(Error::config(
            format!("{key}.{missing}"),
            "(missing)",
            format!("{given} is given without {missing}"),
            "both username and credential, or neither",
        ));
    }
    Ok(())
}

fn check_relay_url(key: &str, url: &str) -> Result<()> {
    let fail =
        |problem: String| Error::config(key, crate::redact::url(url), problem, RELAY_URL_EXPECTED);
    let lower = url.to_ascii_lowercase();
    let (rest, default_port, tls) = if lower.starts_with("turns:") {
        (url.get(6..).unwrap_or(""), 5349, true)
    } else if lower.starts_with("turn:") {
        (url.get(5..).unwrap_or(""), 3478, false)
    } else {
        return Err(fail("the URL must start with turn: or turns:".into()));
    };
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    check_spec_chars("the relay host", authority).map_err(fail)?;
    parse_host_port(authority, Some(default_port)).map_err(fail)?;
    if let Some(query) = query {
        let transport = query
            .strip_prefix("transport=")
            .map(str::to_ascii_lowercase);
        match transport.as_deref() {
            Some("udp") if !tls => {}
            Some("tcp") => {
                return Err(fail(
                    "TURN over TCP is not supported yet; QUIC needs the UDP transport".into(),
                ))
            }
            _ => return Err(fail(format!("unsupported query `?{}`", shown(query)))),
        }
    }
    if tls {
        return Err(fail(
            "TURN over TLS (turns:) is not supported yet; use turn:HOST:PORT (the tunnel is end-to-end encrypted anyway)".into(),
        ));
    }
    Ok(())
}

fn check_room(key: &str, room: &str) -> Result<()> {
    let problem = if room.is_empty() {
        "the room name is empty".to_owned()
    } else if room.len() > 128 {
        format!("the room name is {} bytes long, at most 128", room.len())
    } else if let Some(c) = room.chars().find(|c| c.is_whitespace() || c.is_control()) {
        format!(
            "the room name contains whitespace or a control character (`{}`)",
            c.escape_debug()
        )
    } else {
        return Ok(());
    };
    Err(Error::config(key, room, problem, ROOM_EXPECTED))
}

fn check_secret(key: &str, secret: &str) -> Result<()> {
    if secret.is_empty() {
        return Err(Error::config(
            key,
            "",
            "the secret is empty",
            SECRET_EXPECTED,
        ));
    }
    Ok(())
}

fn check_signal_url(key: &str, text: &str) -> Result<()> {
    // Errors quote the URL without its credentials or token.
    let fail = |problem: String| {
        Error::config(key, crate::redact::url(text), problem, SIGNAL_URL_EXPECTED)
    };
    let url = reqwest::Url::parse(text).map_err(|e| fail(format!("not a URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(fail(format!(
            "the scheme `{}` is not supported",
            shown(url.scheme())
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(fail("the URL has no host".into()));
    }
    Ok(())
}

fn parse_stun_server(key: &str, text: &str) -> Result<String> {
    let fail = |problem: String| Error::config(key, text, problem, STUN_EXPECTED);
    let rest = match text.get(..5) {
        Some(scheme) if scheme.eq_ignore_ascii_case("stun:") => text.get(5..).unwrap_or(""),
        _ => text,
    };
    check_spec_chars("the STUN server", rest).map_err(fail)?;
    let (host, port) = parse_host_port(rest, Some(3478)).map_err(fail)?;
    Ok(join_host_port(&host, port))
}

fn parse_socket_addr(key: &str, v: &Value) -> Result<SocketAddr> {
    let text = expect_str(key, v, ADDR_EXPECTED)?;
    text.parse().map_err(|_| {
        Error::config(
            key,
            text,
            "not an address IP:PORT (IPv6 addresses need brackets)",
            ADDR_EXPECTED,
        )
    })
}

// ---------------------------------------------------------------------------------------
// Value walking
// ---------------------------------------------------------------------------------------

/// The keys of one JSON object and the path it sits at (`""`, `performance`,
/// `mappings[2]`).
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>, path: &'a str) -> Self {
        Fields { map, path }
    }

    fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn check_unknown(&self, fields: &[Field]) -> Result<()> {
        let names = || {
            fields
                .iter()
                .flat_map(|f| std::iter::once(f.name).chain(f.aliases.iter().copied()))
        };
        for (name, value) in self.map {
            if names().any(|n| n == name) {
                continue;
            }
            let hint = names()
                .map(|n| (edit_distance(name, n), n))
                .min()
                .filter(|(d, n)| *d <= 2 || n.eq_ignore_ascii_case(name))
                .map(|(_, n)| format!("; did you mean `{n}`?"))
                .unwrap_or_default();
            let valid = fields
                .iter()
                .map(|f| match f.aliases {
                    [] => f.name.to_owned(),
                    aliases => format!("{} (or {})", f.name, aliases.join(", ")),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::config(
                self.key(name),
                shown_value(&self.key(name), value),
                format!("unknown key `{}`{hint}", shown(name)),
                format!("one of these keys: {valid}"),
            ));
        }
        Ok(())
    }

    /// The value of `field` under whichever of its spellings is present, with its full
    /// key path; `null` counts as absent. Two spellings at once are an error.
    fn get(&self, field: &Field) -> Result<Option<(String, &'a Value)>> {
        let mut found: Option<(&str, &'a Value)> = None;
        for name in std::iter::once(field.name).chain(field.aliases.iter().copied()) {
            let Some(value) = self.map.get(name).filter(|v| !v.is_null()) else {
                continue;
            };
            if let Some((first, _)) = found {
                return Err(Error::config(
                    self.key(name),
                    shown_value(&self.key(name), value),
                    format!("`{name}` and `{first}` are the same setting, given twice"),
                    format!("only one of `{first}` and `{name}`"),
                ));
            }
            found = Some((name, value));
        }
        Ok(found.map(|(name, value)| (self.key(name), value)))
    }

    fn require(&self, field: &Field, expected: &str) -> Result<(String, &'a Value)> {
        self.get(field)?.ok_or_else(|| {
            let spelled = match field.aliases {
                [] => String::new(),
                aliases => format!(" (or {})", aliases.join(", ")),
            };
            Error::config(
                self.key(field.name),
                "(missing)",
                format!("the required key `{}`{spelled} is missing", field.name),
                expected,
            )
        })
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(key: &str, v: &Value, want: &str, expected: &str) -> Error {
    Error::config(
        key,
        shown_value(key, v),
        format!("expected {want}, got {}", type_name(v)),
        expected,
    )
}

fn expect_str<'v>(key: &str, v: &'v Value, expected: &str) -> Result<&'v str> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(wrong_type(key, other, "a string", expected)),
    }
}

fn expect_array<'v>(key: &str, v: &'v Value, expected: &str) -> Result<&'v [Value]> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(wrong_type(key, other, "an array", expected)),
    }
}

fn expect_object<'v>(key: &str, v: &'v Value, expected: &str) -> Result<&'v Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(wrong_type(key, other, "an object", expected)),
    }
}

fn parse_uint(key: &str, v: &Value, expected: &str) -> Result<u64> {
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| {
            Error::config(
                key,
                n.to_string(),
                "not a non-negative whole number",
                expected,
            )
        }),
        other => Err(wrong_type(key, other, "a number", expected)),
    }
}

fn parse_usize(key: &str, v: &Value, expected: &str) -> Result<usize> {
    let n = parse_uint(key, v, expected)?;
    usize::try_from(n)
        .map_err(|_| Error::config(key, n.to_string(), "the number is too large", expected))
}

const DURATION_FORMS: &str =
    "a duration such as \"500ms\", \"10s\", \"5m\" or \"1h 30m\", or a number of seconds";

fn parse_duration(key: &str, v: &Value) -> Result<Duration> {
    let seconds = |text: String, secs: f64| {
        Duration::try_from_secs_f64(secs).map_err(|_| {
            Error::config(
                key,
                text,
                "not a valid duration: seconds must be a non-negative finite number",
                DURATION_FORMS,
            )
        })
    };
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(secs) => Ok(Duration::from_secs(secs)),
            None => seconds(n.to_string(), n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => {
            if let Ok(secs) = s.trim().parse::<f64>() {
                return seconds(s.clone(), secs);
            }
            humantime::parse_duration(s.trim()).map_err(|e| {
                Error::config(
                    key,
                    s,
                    format!("`{}` is not a duration: {e}", shown(s)),
                    DURATION_FORMS,
                )
            })
        }
        other => Err(wrong_type(
            key,
            other,
            "a string or a number",
            DURATION_FORMS,
        )),
    }
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn check_duration(key: &str, d: Duration, min: Duration, max: Duration) -> Result<()> {
    if d < min || d > max {
        return Err(Error::config(
            key,
            fmt_duration(d),
            "the duration is out of range",
            format!(
                "a duration from {} to {} (e.g. \"500ms\", \"10s\", \"5m\")",
                fmt_duration(min),
                fmt_duration(max)
            ),
        ));
    }
    Ok(())
}

fn check_int(key: &str, n: u64, min: u64, max: u64, unit: &str) -> Result<()> {
    if n < min || n > max {
        return Err(Error::config(
            key,
            n.to_string(),
            format!("{n} is out of range"),
            format!("a whole number of {unit} from {min} to {max}"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Lexical helpers (problems are plain strings; callers add key, value and valid forms)
// ---------------------------------------------------------------------------------------

type Problem<T> = std::result::Result<T, String>;

/// Rejects empty text, whitespace, control and non-ASCII characters.
fn check_spec_chars(what: &str, text: &str) -> Problem<()> {
    if text.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if let Some((i, c)) = text
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{what} contains whitespace or a control character (`{}`) at byte {}",
            c.escape_debug(),
            i + 1
        ));
    }
    if let Some(c) = text.chars().find(|c| !c.is_ascii()) {
        return Err(format!(
            "{what} contains the non-ASCII character `{c}` (write internationalised host \
             names in their xn-- form)"
        ));
    }
    Ok(())
}

/// Splits at `:` outside `[...]`; brackets stay in the parts.
fn split_colons(text: &str) -> Problem<Vec<&str>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut open = false;
    for (i, c) in text.char_indices() {
        match c {
            '[' if open => return Err("has a `[` inside brackets".into()),
            '[' => open = true,
            ']' if !open => return Err("has a `]` without a matching `[`".into()),
            ']' => open = false,
            ':' if !open => {
                parts.push(text.get(start..i).unwrap_or(""));
                start = i + 1;
            }
            _ => {}
        }
    }
    if open {
        return Err("has a `[` that is never closed with `]`".into());
    }
    parts.push(text.get(start..).unwrap_or(""));
    Ok(parts)
}

/// `Some(inner)` for `[inner]`, `None` for text without brackets; brackets anywhere else
/// are an error.
fn unbracket(text: &str) -> Problem<Option<&str>> {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        if inner.contains(['[', ']']) {
            return Err(format!("`{}` has misplaced brackets", shown(text)));
        }
        return Ok(Some(inner));
    }
    if text.contains(['[', ']']) {
        return Err(format!(
            "`{}` has misplaced brackets; an IPv6 address is written [addr]",
            shown(text)
        ));
    }
    Ok(None)
}

fn parse_port(text: &str, what: &str, min: u16) -> Problem<u16> {
    if text.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} `{}` is not a number", shown(text)));
    }
    match text.parse::<u16>() {
        Ok(port) if port >= min => Ok(port),
        _ => Err(format!("{what} {} is out of range", shown(text))),
    }
}

/// An IP literal: IPv4 plain, IPv6 in brackets.
fn parse_ip_part(text: &str) -> Problem<IpAddr> {
    match unbracket(text)? {
        Some(inner) => match inner.parse::<Ipv6Addr>() {
            Ok(a) => Ok(IpAddr::V6(a)),
            Err(_) if inner.parse::<Ipv4Addr>().is_ok() => Err(format!(
                "`{}`: brackets are only for IPv6 addresses",
                shown(text)
            )),
            Err(_) => Err(format!("`{}` is not an IPv6 address", shown(text))),
        },
        None if text.is_empty() => Err("is empty".into()),
        None => text
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| format!("`{}` is not an IP address", shown(text))),
    }
}

/// A target host: IP literal (IPv6 in brackets) or DNS name; returns the canonical
/// spelling (IP literals normalised, IPv6 without brackets, names as given).
fn parse_host_part(text: &str) -> Problem<String> {
    if text.starts_with('[') || text.contains(']') {
        return parse_ip_part(text).map(|ip| ip.to_string());
    }
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    check_dns_name(text).map_err(|p| format!("`{}` {p}", shown(text)))?;
    Ok(text.to_owned())
}

/// Checks a `target_host` as stored: IP literal without brackets or a DNS name.
fn check_host(host: &str) -> Problem<()> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    check_dns_name(host).map_err(|p| format!("`{}` {p}", shown(host)))
}

/// `host[:port]` with IPv6 in brackets; a missing port takes `default_port` if given.
fn parse_host_port(text: &str, default_port: Option<u16>) -> Problem<(String, u16)> {
    let parts = split_colons(text)?;
    let (host, port) = match parts.as_slice() {
        [host] => match default_port {
            Some(port) => (
                parse_host_part(host).map_err(|p| format!("host {p}"))?,
                port,
            ),
            None => return Err("the port is missing (HOST:PORT)".into()),
        },
        [host, port] => (
            parse_host_part(host).map_err(|p| format!("host {p}"))?,
            parse_port(port, "port", 1)?,
        ),
        _ => {
            return Err(
                "has too many `:`; IPv6 addresses must be in brackets, e.g. \
                        [2001:db8::1]:3478"
                    .into(),
            )
        }
    };
    Ok((host, port))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Letters, digits and `-` in dot-separated labels of 1-63 characters that do not start
/// or end with `-`; at most 253 characters; the last label not all digits.
fn check_dns_name(name: &str) -> Problem<()> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "is {} characters long; a DNS name has at most 253",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "contains `{}`; a host is an IP address or a DNS name of letters, digits, '-' \
             and '.'",
            c.escape_debug()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label (a dot at the start or end, or two in a row)".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "has a label of {} characters; labels have at most 63",
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "has a label `{label}` that starts or ends with '-'"
            ));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("is not a valid IPv4 address (nor a DNS name)".into());
    }
    Ok(())
}

/// Text for a problem message, cut to a readable length.
fn shown(text: &str) -> String {
    truncate(text, 64)
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", text.get(..i).unwrap_or("")),
        None => text.to_owned(),
    }
}

/// The offending value of `key` for an error, never a secret: `<redacted>` under a
/// key that names one (also misspelled), else [`preview`].
fn shown_value(key: &str, v: &Value) -> String {
    if crate::redact::is_secret_key(key) {
        "<redacted>".to_owned()
    } else {
        preview(v)
    }
}

/// The offending value for an error: strings as they are (URLs without credentials or
/// query), anything else as short compact JSON in which the values of secret keys are
/// `<redacted>`.
fn preview(v: &Value) -> String {
    match v {
        Value::String(s) => crate::redact::value("", &truncate(s, 1024)),
        other => {
            let mut out = String::new();
            write_compact(other, 0, &mut out);
            truncate(&out, 200)
        }
    }
}

fn write_compact(v: &Value, depth: usize, out: &mut String) {
    if out.len() > 200 {
        return;
    }
    match v {
        Value::Array(items) if depth >= 3 => {
            out.push_str(if items.is_empty() { "[]" } else { "[…]" })
        }
        Value::Object(map) if depth >= 3 => {
            out.push_str(if map.is_empty() { "{}" } else { "{…}" })
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if out.len() > 200 {
                    break;
                }
                if i > 0 {
                    out.push(',');
                }
                write_compact(item, depth + 1, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if out.len() > 200 {
                    break;
                }
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(truncate(k, 64)).to_string());
                out.push(':');
                if crate::redact::is_secret_key(k) {
                    out.push_str("\"<redacted>\"");
                } else {
                    write_compact(item, depth + 1, out);
                }
            }
            out.push('}');
        }
        Value::String(s) => {
            out.push_str(&Value::String(crate::redact::value("", &truncate(s, 200))).to_string())
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Line `line` (1-based) of a document, for a parse error.
fn document_line(text: &str, line: usize) -> String {
    line.checked_sub(1)
        .and_then(|i| text.lines().nth(i))
        .map(|l| truncate(l.trim(), 80))
        .unwrap_or_default()
}

/// Levenshtein distance, for "did you mean" hints on unknown keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({"mode": "client", "room": "r", "signalUrl": "https://h.example/signal"})
    }

    fn with(extra: Value) -> Value {
        let mut v = minimal();
        if let (Value::Object(base), Value::Object(extra)) = (&mut v, extra) {
            base.extend(extra);
        }
        v
    }

    fn parse(v: Value) -> Config {
        Config::from_value(v).expect("config parses")
    }

    fn config_key(r: Result<Config>) -> String {
        match r {
            Err(Error::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    fn rule(s: &str) -> AllowRule {
        AllowRule::parse(s).expect("rule parses")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    #[test]
    fn defaults() {
        let c = parse(minimal());
        assert_eq!(c.mode, Mode::Client);
        assert_eq!(c.room, "r");
        assert_eq!(c.secret, None);
        assert!(c.stun_servers.is_empty());
        assert!(c.mappings.is_empty());
        assert_eq!(c.allow, AllowRule::default_rules());
        assert_eq!(c.bind, "0.0.0.0:0".parse::<SocketAddr>().expect("addr"));
        assert_eq!(c.relay, None);
        assert_eq!(c.metrics_addr, None);
        assert_eq!(c.punch_timeout, Duration::from_secs(10));
        let p = &c.performance;
        assert_eq!(*p, Performance::default());
        assert_eq!(p.stun_cache, Duration::from_secs(300));
        assert_eq!(p.signal_backoff, Duration::from_millis(500));
        assert_eq!(p.tcp_buffer_size, 65536);
        assert_eq!(p.udp_buffer_size, 1 << 20);
        assert_eq!(p.max_retries, 3);
        assert_eq!(p.udp_flow_timeout, Duration::from_secs(60));
        assert_eq!(p.keep_alive, Duration::from_secs(5));
        assert_eq!(p.idle_timeout, Duration::from_secs(15));
        assert_eq!(p.workers, default_workers());
        assert!((1..=2).contains(&p.workers));
        assert_eq!(p.tunnel_wait, Duration::from_secs(10));
        c.validate().expect("defaults are valid");
    }

    /// Issue #14, finding 2: no open door by default.
    #[test]
    fn a_server_without_a_secret_needs_insecure() {
        let err = Config::from_value(with(json!({"mode": "server"}))).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "secret"),
            "{err:?}"
        );
        assert!(
            text.contains("\"secret\"") && text.contains("\"insecure\": true"),
            "{text}"
        );
        // The Go tool's spellings: the same clear error instead of an open server.
        let go = r#"{"mode":"receiver","roomId":"r","signalURL":"http://h/index.php","stunServer":"s:3478"}"#;
        let err = Config::from_json(go).unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "secret"),
            "{err:?}"
        );
        // Opting out on purpose, or a client without a secret: allowed, and said.
        let open = parse(with(json!({"mode": "server", "insecure": true})));
        assert!(open.insecure && open.secret.is_none());
        assert_eq!(Config::from_value(open.to_json()).unwrap(), open);
        let client = parse(minimal());
        assert!(!client.insecure && client.secret.is_none());
        parse(with(
            json!({"mode": "server", "secret": "s", "insecure": false}),
        ));
        let err =
            Config::from_value(with(json!({"mode": "server", "insecure": "yes"}))).unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "insecure"),
            "{err:?}"
        );
        // A config changed in code is checked the same way.
        let mut c = parse(with(json!({"mode": "server", "secret": "s"})));
        c.secret = None;
        assert!(c.validate().is_err());
    }

    #[test]
    fn go_tool_config_parses_unchanged() {
        let c = Config::from_json(
            r#"{"mode":"sender","room":"r","signalURL":"http://h/index.php","stunServer":"stun.example.org:19302","mappings":["tcp:5001:5000"]}"#,
        )
        .expect("Go config parses");
        assert_eq!(c.mode, Mode::Client);
        assert_eq!(c.signal_url, "http://h/index.php");
        assert_eq!(c.stun_servers, vec!["stun.example.org:19302".to_owned()]);
        assert_eq!(c.mappings.len(), 1);
        let m = &c.mappings[0];
        assert_eq!(m.proto, Proto::Tcp);
        assert_eq!(
            m.listen,
            "127.0.0.1:5001".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(m.target(), "127.0.0.1:5000");
    }

    #[test]
    fn go_tool_receiver_with_room_id_and_signaling_url() {
        let c = Config::from_json(
            r#"{"mode":"receiver","roomId":"room-1","signalingUrl":"https://h/s","secret":"k"}"#,
        )
        .expect("parses");
        assert_eq!(c.mode, Mode::Server);
        assert_eq!(c.room, "room-1");
        assert_eq!(c.signal_url, "https://h/s");
    }

    #[test]
    fn every_alias() {
        for (mode, want) in [
            ("client", Mode::Client),
            ("sender", Mode::Client),
            ("SENDER", Mode::Client),
            ("Server", Mode::Server),
            ("receiver", Mode::Server),
        ] {
            for mode_key in ["mode", "role"] {
                for room_key in ["room", "roomId"] {
                    for url_key in ["signalUrl", "signalURL", "signalingUrl", "signalingURL"] {
                        let mut m = Map::new();
                        m.insert(mode_key.into(), mode.into());
                        m.insert(room_key.into(), "x".into());
                        m.insert(url_key.into(), "http://h".into());
                        m.insert("secret".into(), "k".into());
                        let c = parse(Value::Object(m));
                        assert_eq!(c.mode, want);
                        assert_eq!(c.room, "x");
                        assert_eq!(c.signal_url, "http://h");
                    }
                }
            }
        }
        let c = parse(with(
            json!({"stunServers": ["a.example:1", "stun:b.example", "[::1]"]}),
        ));
        assert_eq!(
            c.stun_servers,
            vec!["a.example:1", "b.example:3478", "[::1]:3478"]
        );
        let c = parse(with(json!({"stunServer": "stun:[2001:db8::1]:19302"})));
        assert_eq!(c.stun_servers, vec!["[2001:db8::1]:19302"]);
    }

    #[test]
    fn two_spellings_of_one_key_are_an_error() {
        let key = config_key(Config::from_value(with(json!({"roomId": "y"}))));
        assert_eq!(key, "roomId");
        let key = config_key(Config::from_value(with(
            json!({"stunServer": "a.example", "stunServers": []}),
        )));
        assert_eq!(key, "stunServer");
    }

    #[test]
    fn null_counts_as_absent() {
        let c = parse(with(json!({"secret": null, "relay": null})));
        assert_eq!(c.secret, None);
        assert_eq!(
            config_key(Config::from_value(with(json!({"room": null})))),
            "room"
        );
    }

    #[test]
    fn go_review_performance_block() {
        let c = parse(with(json!({"performance": {
            "stunCache": "5m", "signalBackoff": "500ms", "tcpBufferSize": 65536,
            "udpBufferSize": 8192, "maxRetries": 3
        }})));
        let p = &c.performance;
        assert_eq!(p.stun_cache, Duration::from_secs(300));
        assert_eq!(p.signal_backoff, Duration::from_millis(500));
        assert_eq!(p.tcp_buffer_size, 65536);
        assert_eq!(p.udp_buffer_size, 8192);
        assert_eq!(p.max_retries, 3);
        assert_eq!(p.idle_timeout, Duration::from_secs(15));
    }

    #[test]
    fn durations_accept_strings_and_seconds() {
        for (v, want) in [
            (json!("10s"), Duration::from_secs(10)),
            (json!("1m 30s"), Duration::from_secs(90)),
            (json!(7), Duration::from_secs(7)),
            (json!(2.5), Duration::from_millis(2500)),
            (json!("3"), Duration::from_secs(3)),
        ] {
            let c = parse(with(json!({"punchTimeout": v})));
            assert_eq!(c.punch_timeout, want);
        }
        for bad in [
            json!(-1),
            json!("-1"),
            json!("soon"),
            json!(true),
            json!("0s"),
        ] {
            let r = Config::from_value(with(json!({"punchTimeout": bad})));
            assert_eq!(config_key(r), "punchTimeout");
        }
    }

    #[test]
    fn full_config_round_trips_through_to_json() {
        let c = parse(with(json!({
            "secret": "s3cret",
            "stunServers": ["stun.example.org"],
            "mappings": [
                "udp:5000:53",
                "tcp:[::1]:0:db.example:5432",
                {"proto": "TCP", "listen": 8080, "target": "[::1]:22"},
                {"proto": "udp", "listen": "9000", "target": "10.0.0.1:9"},
                {"proto": "tcp", "listen": "[::]:7000", "target": "h.example:7"}
            ],
            "allow": ["tcp:127.0.0.1:22", "*:10.0.0.0/8:1000-2000", "udp:*.example.org:*",
                      "tcp:fd00::/8:443", "*:*:*"],
            "bind": "[::]:4000",
            "relay": {"url": "turn:relay.example:3478?transport=udp", "username": "u",
                      "credential": "p"},
            "metricsAddr": "127.0.0.1:9100",
            "punchTimeout": 1.5,
            "performance": {"udpFlowTimeout": "2m", "keepAlive": "5s", "idleTimeout": "20s",
                            "workers": 4, "tunnelWait": "2s 500ms"}
        })));
        assert_eq!(c.mappings[2].listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.mappings[2].target(), "[::1]:22");
        assert_eq!(c.mappings[3].listen.to_string(), "127.0.0.1:9000");
        let json = c.to_json();
        let back = Config::from_value(json.clone()).expect("to_json output parses");
        assert_eq!(back, c);
        assert_eq!(back.to_json(), json);
        assert_eq!(json["mappings"][0], "udp:127.0.0.1:5000:127.0.0.1:53");
        assert_eq!(json["punchTimeout"], "1s 500ms");
        assert_eq!(c.performance.tunnel_wait, Duration::from_millis(2500));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = parse(with(json!({"secret": "hunter2",
            "relay": {"url": "turn:r.example", "username": "u", "credential": "pw-xyz"}})));
        let text = format!("{c:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("pw-xyz"),
            "{text}"
        );
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn validate_catches_code_built_mistakes() {
        let mut c = parse(minimal());
        c.performance.keep_alive = Duration::from_secs(30);
        assert_eq!(
            config_key(c.validate().map(|()| c.clone())),
            "performance.keepAlive"
        );
        let mut c = parse(minimal());
        c.mappings
            .push(Mapping::parse("tcp:8080:22").expect("mapping"));
        c.mappings
            .push(Mapping::parse("tcp:8080:23").expect("mapping"));
        assert_eq!(config_key(c.validate().map(|()| c.clone())), "mappings[1]");
        c.mappings[1].listen.set_port(8081);
        c.validate().expect("distinct listeners");
        c.mappings[1].target_host = "bad host".into();
        assert_eq!(config_key(c.validate().map(|()| c.clone())), "mappings[1]");
        let mut c = parse(minimal());
        c.room = String::new();
        assert_eq!(config_key(c.validate().map(|()| c.clone())), "room");
    }

    #[test]
    fn mapping_forms() {
        let cases = [
            ("tcp:8080:22", "tcp:127.0.0.1:8080:127.0.0.1:22"),
            ("UDP:5000:53", "udp:127.0.0.1:5000:127.0.0.1:53"),
            ("tcp:0:host.example:22", "tcp:127.0.0.1:0:host.example:22"),
            ("tcp:8080:10.1.2.3:80", "tcp:127.0.0.1:8080:10.1.2.3:80"),
            ("tcp:0.0.0.0:8080:h:22", "tcp:0.0.0.0:8080:h:22"),
            ("tcp:[::1]:8080:[::1]:22", "tcp:[::1]:8080:[::1]:22"),
            ("tcp:8080:[0:0::1]:22", "tcp:127.0.0.1:8080:[::1]:22"),
        ];
        for (spec, canonical) in cases {
            let m = Mapping::parse(spec).expect(spec);
            assert_eq!(m.to_string(), canonical);
            let back: Mapping = canonical.parse().expect(canonical);
            assert_eq!(back, m);
            assert_eq!(back.to_string(), canonical);
            m.validate().expect("parsed mappings are valid");
        }
        let m = Mapping::parse("tcp:[::1]:8080:[2001:db8::1]:22").expect("v6");
        assert_eq!(m.target_host, "2001:db8::1");
        assert_eq!(m.target(), "[2001:db8::1]:22");
    }

    #[test]
    fn mapping_errors_name_the_part() {
        for (spec, needle) in [
            ("tcp:70000:22", "local port 70000 is out of range"),
            ("tcp:8080:70000", "remote port 70000 is out of range"),
            ("tcp:8080:0", "remote port 0 is out of range"),
            ("tcp:1.2.3:8080:h:22", "bind address"),
            ("tcp:8080:bad_host!:22", "host `bad_host!`"),
            ("sctp:1:2", "unknown protocol `sctp`"),
        ] {
            match Mapping::parse(spec) {
                Err(Error::Config {
                    key,
                    value,
                    problem,
                    expected,
                }) => {
                    assert_eq!(key, "mapping");
                    assert_eq!(value, spec);
                    assert!(problem.contains(needle), "{spec}: {problem}");
                    assert!(expected.contains("tcp:LOCAL:REMOTE"));
                }
                other => panic!("{spec}: {other:?}"),
            }
        }
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

    #[test]
    fn unknown_keys_are_named_with_a_hint() {
        match Config::from_value(with(json!({"mapings": ["tcp:1:2"]}))) {
            Err(Error::Config {
                key,
                value,
                problem,
                expected,
            }) => {
                assert_eq!(key, "mapings");
                assert_eq!(value, r#"["tcp:1:2"]"#);
                assert!(problem.contains("did you mean `mappings`"), "{problem}");
                assert!(expected.contains("signalUrl (or signalURL"), "{expected}");
            }
            other => panic!("{other:?}"),
        }
        let key = config_key(Config::from_value(with(
            json!({"performance": {"tcpBuffer": 1}}),
        )));
        assert_eq!(key, "performance.tcpBuffer");
        let key = config_key(Config::from_value(with(
            json!({"relay": {"url": "turn:h", "pass": 1}}),
        )));
        assert_eq!(key, "relay.pass");
        let key = config_key(Config::from_value(with(
            json!({"mappings": [{"proto": "tcp", "listen": 1, "target": "h:1", "x": 0}]}),
        )));
        assert_eq!(key, "mappings[0].x");
    }

    #[test]
    fn yaml_and_files() {
        let c = Config::from_yaml(
            "mode: server\nroom: r\nsecret: k\nsignalUrl: https://h/s\nallow:\n  - \"tcp:*:22\"\n\
             performance:\n  tcpBufferSize: 131072\n",
        )
        .expect("yaml parses");
        assert_eq!(c.mode, Mode::Server);
        assert_eq!(c.performance.tcp_buffer_size, 131072);
        assert_eq!(c.allow, vec![rule("tcp:*:22")]);

        match Config::from_yaml("mode: [\n") {
            Err(Error::Config { key, problem, .. }) => {
                assert_eq!(key, "(document)");
                assert!(problem.contains("line"), "{problem}");
            }
            other => panic!("{other:?}"),
        }

        let dir = std::env::temp_dir().join(format!("stunfwd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let yaml = dir.join("c.YML");
        std::fs::write(&yaml, "mode: client\nroom: r\nsignalUrl: http://h\n").expect("write");
        assert_eq!(Config::from_path(&yaml).expect("yaml file").room, "r");
        let json = dir.join("c.json");
        std::fs::write(
            &json,
            "\u{feff}{\"mode\":\"client\",\"room\":\"j\",\"signalUrl\":\"http://h\"}",
        )
        .expect("write");
        assert_eq!(Config::from_path(&json).expect("json file").room, "j");
        let missing = dir.join("missing.json");
        match Config::from_path(&missing) {
            Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("missing.json"), "{e}"),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("mapings", "mappings"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
