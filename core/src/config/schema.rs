//! The key schema: every config key, the other spellings accepted for it (the Go tool's
//! `role`, `roomId`, `signalURL`, `stunServer`...), and [`Fields`], which looks keys up
//! under any of their spellings and refuses unknown ones with a "did you mean" hint.

use serde_json::{Map, Value};

use super::diagnostics::{edit_distance, shown, shown_value};
use crate::error::{Error, Result};

/// A config key and the other spellings accepted for it.
pub(super) struct Field {
    pub(super) name: &'static str,
    aliases: &'static [&'static str],
}

const fn field(name: &'static str) -> Field {
    Field { name, aliases: &[] }
}

pub(super) const MODE: Field = Field {
    name: "mode",
    aliases: &["role"],
};
pub(super) const ROOM: Field = Field {
    name: "room",
    aliases: &["roomId"],
};
pub(super) const SECRET: Field = field("secret");
pub(super) const INSECURE: Field = field("insecure");
pub(super) const SIGNAL_URL: Field = Field {
    name: "signalUrl",
    aliases: &["signalURL", "signalingUrl", "signalingURL"],
};
pub(super) const SIGNAL_CA_FILE: Field = field("signalCaFile");
pub(super) const STUN_SERVERS: Field = Field {
    name: "stunServers",
    aliases: &["stunServer"],
};
pub(super) const MAPPINGS: Field = field("mappings");
pub(super) const ALLOW: Field = field("allow");
pub(super) const BIND: Field = field("bind");
pub(super) const RELAY: Field = field("relay");
pub(super) const RELAY_POLICY: Field = field("relayPolicy");
pub(super) const PORT_MAPPING: Field = field("portMapping");
pub(super) const METRICS_ADDR: Field = field("metricsAddr");
pub(super) const PUNCH_TIMEOUT: Field = field("punchTimeout");
pub(super) const MAX_CLIENTS: Field = field("maxClients");
pub(super) const PERFORMANCE: Field = field("performance");
pub(super) const TOP_FIELDS: &[Field] = &[
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
    MAX_CLIENTS,
    PORT_MAPPING,
    METRICS_ADDR,
    PUNCH_TIMEOUT,
    PERFORMANCE,
];

pub(super) const STUN_CACHE: Field = field("stunCache");
pub(super) const SIGNAL_BACKOFF: Field = field("signalBackoff");
pub(super) const TCP_BUFFER_SIZE: Field = field("tcpBufferSize");
pub(super) const UDP_BUFFER_SIZE: Field = field("udpBufferSize");
pub(super) const MAX_RETRIES: Field = field("maxRetries");
pub(super) const UDP_FLOW_TIMEOUT: Field = field("udpFlowTimeout");
pub(super) const KEEP_ALIVE: Field = field("keepAlive");
pub(super) const IDLE_TIMEOUT: Field = field("idleTimeout");
pub(super) const WORKERS: Field = field("workers");
pub(super) const TUNNEL_WAIT: Field = field("tunnelWait");
pub(super) const PUNCH_TTL: Field = field("punchTtl");
pub(super) const BIRTHDAY_SOCKETS: Field = field("birthdaySockets");
pub(super) const BIRTHDAY_PROBES: Field = field("birthdayProbes");
pub(super) const BIRTHDAY_RATE: Field = field("birthdayRate");
pub(super) const MAX_UDP_FLOWS_PER_MAPPING: Field = field("maxUdpFlowsPerMapping");
pub(super) const MAX_UDP_FLOWS_PER_CLIENT: Field = field("maxUdpFlowsPerClient");
pub(super) const PERFORMANCE_FIELDS: &[Field] = &[
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
    PUNCH_TTL,
    BIRTHDAY_SOCKETS,
    BIRTHDAY_PROBES,
    BIRTHDAY_RATE,
    MAX_UDP_FLOWS_PER_MAPPING,
    MAX_UDP_FLOWS_PER_CLIENT,
];

pub(super) const URL: Field = field("url");
pub(super) const USERNAME: Field = field("username");
pub(super) const CREDENTIAL: Field = field("credential");
pub(super) const AUTH_SECRET: Field = field("authSecret");
pub(super) const RELAY_FIELDS: &[Field] = &[URL, USERNAME, CREDENTIAL, AUTH_SECRET];

pub(super) const PROTO: Field = field("proto");
pub(super) const LISTEN: Field = field("listen");
pub(super) const TARGET: Field = field("target");
pub(super) const MAPPING_OBJECT_FIELDS: &[Field] = &[PROTO, LISTEN, TARGET];

/// The keys of one JSON object and the path it sits at (`""`, `performance`,
/// `mappings[2]`).
pub(super) struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Fields<'a> {
    pub(super) fn new(map: &'a Map<String, Value>, path: &'a str) -> Self {
        Fields { map, path }
    }

    pub(super) fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    pub(super) fn check_unknown(&self, fields: &[Field]) -> Result<()> {
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
    pub(super) fn get(&self, field: &Field) -> Result<Option<(String, &'a Value)>> {
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

    pub(super) fn require(&self, field: &Field, expected: &str) -> Result<(String, &'a Value)> {
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use crate::config::test_support::{config_key, parse, with};
    use crate::config::{Config, Mode};
    use crate::error::Error;

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
}
