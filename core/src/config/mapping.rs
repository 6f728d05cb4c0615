//! Port mappings: [`Proto`], [`Mapping`] and the spec strings (`tcp:8080:22`) and
//! objects (`{"proto": "tcp", "listen": 8080, "target": "[::1]:22"}`) they parse from.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use serde_json::{Map, Value};

use super::diagnostics::{shown, wrong_type};
use super::lexical::{
    check_host, check_spec_chars, join_host_port, parse_host_part, parse_host_port, parse_ip_part,
    parse_port, split_colons,
};
use super::schema::{Fields, LISTEN, MAPPING_OBJECT_FIELDS, PROTO, TARGET};
use super::values::{expect_array, expect_str};
use crate::error::{Error, Result};

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

    pub(super) fn parse(text: &str) -> Option<Proto> {
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
    ///
    /// ```
    /// use stunfwd_core::{Mapping, Proto};
    ///
    /// let m = Mapping::parse("udp:5353:10.0.0.2:53")?;
    /// assert_eq!(m.proto, Proto::Udp);
    /// assert_eq!(m.listen.to_string(), "127.0.0.1:5353");
    /// assert_eq!(m.target(), "10.0.0.2:53");
    /// assert_eq!(m.to_string(), "udp:127.0.0.1:5353:10.0.0.2:53");
    /// assert!(Mapping::parse("tcp:8080").is_err());
    /// # Ok::<(), stunfwd_core::Error>(())
    /// ```
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

/// The `mappings` array: each item a spec string or a mapping object, with keys
/// `KEY[i]`.
pub(super) fn parse_mappings(key: &str, v: &Value) -> Result<Vec<Mapping>> {
    expect_array(key, v, MAPPING_FORMS)?
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
        .collect()
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

pub(super) fn check_mapping(key: &str, m: &Mapping) -> Result<()> {
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

pub(super) fn check_duplicate_listeners(mappings: &[Mapping]) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
