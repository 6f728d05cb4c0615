//! Configuration: [`Config`], port [`Mapping`]s and server [`AllowRule`]s.
//!
//! A config is JSON or YAML. Our camelCase spellings and the Go tool's spellings both
//! parse, so an existing Go `config.json` runs unchanged. The document is walked by hand
//! rather than derived so that every error names its key path (`mappings[2]`,
//! `performance.tcpBufferSize`), the value as given and what would be valid.
//!
//! This file holds [`Config`] itself and reads whole documents; each part of a config
//! has a file of its own: `mapping` (mappings and their spec strings), `allow` (allow
//! rules), `performance` (tuning knobs), `relay` (the TURN relay and its URL),
//! `endpoints` (rendezvous URL, STUN servers, socket addresses), `schema` (every key
//! and its aliases), `values` (typed reads of JSON values), `lexical` (hosts, ports and
//! the other pieces of spec strings) and `diagnostics` (how errors show values). The
//! room name is [`RoomName`], from [`crate::room`].

mod allow;
mod diagnostics;
mod endpoints;
mod lexical;
mod mapping;
mod performance;
mod portmap;
mod relay;
mod schema;
mod values;

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

pub use self::allow::AllowRule;
pub use self::mapping::{Mapping, Proto};
pub use self::performance::{default_workers, Performance};
pub use self::portmap::PortMapping;
pub use self::relay::{RelayConfig, RelayPolicy, TurnUrl};
pub use crate::room::{RoomName, MAX_ROOM_LEN};

use self::allow::parse_allow_rules;
use self::diagnostics::{document_line, preview, type_name};
use self::endpoints::{
    check_signal_url, parse_signal_ca_file, parse_socket_addr, parse_stun_server,
    parse_stun_servers, SIGNAL_URL_EXPECTED,
};
use self::mapping::{check_duplicate_listeners, check_mapping, parse_mappings};
use self::performance::parse_performance;
use self::relay::{check_relay, parse_relay};
use self::schema::{
    Fields, ALLOW, BIND, INSECURE, MAPPINGS, MAX_CLIENTS, METRICS_ADDR, MODE, PERFORMANCE,
    PORT_MAPPING, PUNCH_TIMEOUT, RELAY, RELAY_POLICY, ROOM, SECRET, SIGNAL_CA_FILE, SIGNAL_URL,
    STUN_SERVERS, TOP_FIELDS,
};
use self::values::{check_duration, expect_str, fmt_duration, parse_duration, parse_usize};
use crate::error::{Error, Result};

/// Which side of the tunnel this peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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

/// A complete, validated engine configuration.
///
/// Build it with [`Config::from_json`], [`Config::from_yaml`], [`Config::from_value`] or
/// [`Config::from_path`]; a `Config` changed in code can be re-checked with
/// [`Config::validate`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use stunfwd_core::{Config, Mode};
///
/// # fn main() -> stunfwd_core::Result<()> {
/// let config = Config::from_json(
///     r#"{
///         "mode": "client",
///         "room": "my-home-box",
///         "secret": "a long random string both sides share",
///         "signalUrl": "http://rendezvous.example.org:8080/",
///         "stunServers": ["rendezvous.example.org:3478"],
///         "mappings": ["tcp:2222:22"]
///     }"#,
/// )?;
/// assert_eq!(config.mode, Mode::Client);
/// assert_eq!(config.mappings[0].to_string(), "tcp:127.0.0.1:2222:127.0.0.1:22");
/// // What the document leaves out has its default.
/// assert_eq!(config.punch_timeout, Duration::from_secs(10));
///
/// // The same keys in YAML; an error names the key and what would be valid.
/// let err = Config::from_yaml("mode: client\nroom: r\nsignalUrl: ftp://x\n").unwrap_err();
/// assert!(err.to_string().starts_with("invalid config `signalUrl`"), "{err}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// `mode` (alias `role`): `client`/`sender` or `server`/`receiver`. Required.
    pub mode: Mode,
    /// `room` (alias `roomId`): rendezvous name, 1 to [`MAX_ROOM_LEN`] bytes, no
    /// whitespace or control characters. Required.
    pub room: RoomName,
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
    /// `bind`: local address of the engine's one UDP socket. Default `[::]:0`: one
    /// dual-stack socket for IPv4 and IPv6 peers (`0.0.0.0:0` where the host has no
    /// IPv6); `0.0.0.0:PORT` keeps the engine on IPv4 only.
    pub bind: SocketAddr,
    /// `relay`: optional TURN fallback.
    pub relay: Option<RelayConfig>,
    /// `relayPolicy`: `auto` (default), `never` or `always` (needs `relay`).
    pub relay_policy: RelayPolicy,
    /// `portMapping`: `auto` (default) asks the default gateway to forward a port to
    /// the tunnel socket (PCP, NAT-PMP or UPnP-IGD); `off` sends it nothing.
    pub port_mapping: PortMapping,
    /// `metricsAddr`: where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// `punchTimeout`: how long hole punching may take. Default 10 s, 1 s-300 s.
    pub punch_timeout: Duration,
    /// `maxClients` (server mode): how many clients the engine serves at once, each
    /// with its own tunnel and UDP socket. Default [`DEFAULT_MAX_CLIENTS`], 1-1000.
    pub max_clients: usize,
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
            .field("port_mapping", &self.port_mapping)
            .field("metrics_addr", &self.metrics_addr)
            .field("punch_timeout", &self.punch_timeout)
            .field("max_clients", &self.max_clients)
            .field("performance", &self.performance)
            .finish()
    }
}

/// Default `maxClients`: a home server or a small game host serves a handful of
/// devices; 32 covers that with room to spare, while a leaked secret cannot make the
/// server open thousands of sockets and tunnels (each client costs one UDP socket, one
/// QUIC endpoint and about 150 KB: docs/benchmarks.md, 100 clients).
pub const DEFAULT_MAX_CLIENTS: usize = 32;
/// Largest `maxClients` accepted.
pub const MAX_MAX_CLIENTS: usize = 1000;
const MAX_CLIENTS_EXPECTED: &str = "a whole number of clients from 1 to 1000 (default 32)";

const MODE_EXPECTED: &str = "\"client\" or \"server\" (the Go tool's \"sender\" and \"receiver\" \
     also work)";
const SECRET_EXPECTED: &str = "a non-empty string shared by both peers";

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
            // The position comes from the error's location, never from its text.
            let (line, problem) = match e.location() {
                Some(loc) => (
                    loc.line(),
                    format!(
                        "not valid YAML at line {} column {}: {e}",
                        loc.line(),
                        loc.column()
                    ),
                ),
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

        let (key, v) = top.require(&ROOM, &RoomName::expected())?;
        let room = RoomName::parse_at(&key, expect_str(&key, v, &RoomName::expected())?.into())?;

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
            Some((key, v)) => Some(parse_signal_ca_file(&key, v)?),
        };

        let stun_servers = match top.get(&STUN_SERVERS)? {
            None => Vec::new(),
            Some((key, v)) => parse_stun_servers(&key, v)?,
        };

        let mappings = match top.get(&MAPPINGS)? {
            None => Vec::new(),
            Some((key, v)) => parse_mappings(&key, v)?,
        };

        let allow = match top.get(&ALLOW)? {
            None => AllowRule::default_rules(),
            Some((key, v)) => parse_allow_rules(&key, v)?,
        };

        let bind = match top.get(&BIND)? {
            None => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            Some((key, v)) => parse_socket_addr(&key, v)?,
        };

        let relay = match top.get(&RELAY)? {
            None => None,
            Some((key, v)) => Some(parse_relay(&key, v)?),
        };

        let relay_policy = match top.get(&RELAY_POLICY)? {
            None => RelayPolicy::Auto,
            Some((key, v)) => RelayPolicy::from_value(&key, v)?,
        };

        let port_mapping = match top.get(&PORT_MAPPING)? {
            None => PortMapping::Auto,
            Some((key, v)) => PortMapping::from_value(&key, v)?,
        };

        let metrics_addr = match top.get(&METRICS_ADDR)? {
            None => None,
            Some((key, v)) => Some(parse_socket_addr(&key, v)?),
        };

        let punch_timeout = match top.get(&PUNCH_TIMEOUT)? {
            None => Duration::from_secs(10),
            Some((key, v)) => parse_duration(&key, v)?,
        };

        let max_clients = match top.get(&MAX_CLIENTS)? {
            None => DEFAULT_MAX_CLIENTS,
            Some((key, v)) => parse_usize(&key, v, MAX_CLIENTS_EXPECTED)?,
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
            port_mapping,
            metrics_addr,
            punch_timeout,
            max_clients,
            performance,
        };
        config.validate()?;
        Ok(config)
    }

    /// Re-checks every invariant that parsing enforces, for a config built or changed in
    /// code. Errors use the canonical key names. (A [`RoomName`] and a [`TurnUrl`] are
    /// checked when they are made.)
    pub fn validate(&self) -> Result<()> {
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
        if !(1..=MAX_MAX_CLIENTS).contains(&self.max_clients) {
            return Err(Error::config(
                "maxClients",
                self.max_clients.to_string(),
                "out of range",
                MAX_CLIENTS_EXPECTED,
            ));
        }
        self.performance.check("performance")
    }

    /// The config in our canonical spelling (camelCase keys, mappings and allow rules as
    /// canonical strings, durations as strings like `"500ms"`); absent optional keys are
    /// left out. [`Config::from_value`] turns it back into an equal config.
    ///
    /// The result contains the secret and the relay credential.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(MODE.name.into(), self.mode.as_str().into());
        m.insert(ROOM.name.into(), self.room.as_str().into());
        if let Some(secret) = &self.secret {
            m.insert(SECRET.name.into(), secret.clone().into());
        }
        if self.insecure {
            m.insert(INSECURE.name.into(), true.into());
        }
        m.insert(SIGNAL_URL.name.into(), self.signal_url.clone().into());
        if let Some(ca) = &self.signal_ca_file {
            m.insert(SIGNAL_CA_FILE.name.into(), ca.display().to_string().into());
        }
        m.insert(STUN_SERVERS.name.into(), self.stun_servers.clone().into());
        m.insert(
            MAPPINGS.name.into(),
            self.mappings
                .iter()
                .map(|x| Value::String(x.to_string()))
                .collect(),
        );
        m.insert(
            ALLOW.name.into(),
            self.allow
                .iter()
                .map(|x| Value::String(x.to_string()))
                .collect(),
        );
        m.insert(BIND.name.into(), self.bind.to_string().into());
        if let Some(relay) = &self.relay {
            m.insert(RELAY.name.into(), relay.to_json());
        }
        m.insert(RELAY_POLICY.name.into(), self.relay_policy.as_str().into());
        if let Some(addr) = self.metrics_addr {
            m.insert(METRICS_ADDR.name.into(), addr.to_string().into());
        }
        m.insert(
            PUNCH_TIMEOUT.name.into(),
            fmt_duration(self.punch_timeout).into(),
        );
        m.insert(MAX_CLIENTS.name.into(), self.max_clients.into());
        m.insert(PERFORMANCE.name.into(), self.performance.to_json());
        Value::Object(m)
    }
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

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::{config_key, minimal, parse, rule, with};
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults() {
        let c = parse(minimal());
        assert_eq!(c.mode, Mode::Client);
        assert_eq!(c.room, "r");
        assert_eq!(c.secret, None);
        assert!(c.stun_servers.is_empty());
        assert!(c.mappings.is_empty());
        assert_eq!(c.allow, AllowRule::default_rules());
        assert_eq!(c.bind, "[::]:0".parse::<SocketAddr>().expect("addr"));
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
        // A room name is checked when it is made, so no config holds a bad one.
        let c = parse(minimal());
        assert_eq!(
            config_key(RoomName::new("").map(|room| Config { room, ..c })),
            "room"
        );
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
}
