//! `stunfwd expose` and `stunfwd connect` (issue #18): a server and a client without a
//! config file. `expose` makes a fresh room and secret, prints a share token
//! ([`crate::token`]) and serves the services named on its command line; `connect`
//! takes the token and the ports to open.

use serde_json::json;
use stunfwd_core::config::{AllowRule, Mapping};
use stunfwd_core::Config;

use crate::token::Token;

/// Where the rendezvous URL comes from when `--signal` is not given.
pub const SIGNAL_ENV: &str = "STUNFWD_SIGNAL";
/// The STUN port of a rendezvous that has no STUN server named (`stunfwd signal`'s).
const DEFAULT_STUN_PORT: u16 = 3478;

/// The rendezvous URL: `--signal`, else `$STUNFWD_SIGNAL`.
pub fn signal_url(flag: Option<String>) -> Result<String, String> {
    flag.or_else(|| std::env::var(SIGNAL_ENV).ok().filter(|s| !s.is_empty()))
        .ok_or_else(|| {
            format!(
                "no rendezvous server: give --signal URL or set {SIGNAL_ENV} (run one with `stunfwd signal`)"
            )
        })
}

/// The STUN servers: those given, else the rendezvous host's own STUN responder on
/// port 3478 (what `stunfwd signal` runs).
pub fn stun_servers(given: Vec<String>, signal_url: &str) -> Result<Vec<String>, String> {
    if !given.is_empty() {
        return Ok(given);
    }
    let url = url_host(signal_url).ok_or_else(|| {
        format!("cannot tell the host of the rendezvous URL `{signal_url}`; give --stun HOST:PORT")
    })?;
    Ok(vec![format!("{url}:{DEFAULT_STUN_PORT}")])
}

/// The host part of an `http(s)://host[:port]/...` URL (IPv6 in brackets kept).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        format!("[{}]", v6.split(']').next()?)
    } else {
        authority.split(':').next()?.to_owned()
    };
    (!host.is_empty() && host != "[]").then_some(host)
}

/// A service to expose, `tcp:PORT`, `udp:PORT` or `PROTO:HOST:PORT`, as the allow
/// rule that lets clients reach it (`tcp:22` is `tcp:127.0.0.1:22`).
pub fn allow_rule(service: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "service `{service}`: {why}; valid: tcp:PORT, udp:PORT or PROTO:HOST:PORT (e.g. tcp:22, udp:5353, tcp:10.0.0.5:80)"
        )
    };
    let (proto, target) = service.split_once(':').ok_or_else(|| bad("no protocol"))?;
    if proto != "tcp" && proto != "udp" {
        return Err(bad("the protocol is not tcp or udp"));
    }
    let rule = if target.contains(':') {
        format!("{proto}:{target}")
    } else {
        format!("{proto}:127.0.0.1:{target}")
    };
    AllowRule::parse(&rule).map_err(|e| bad(&e.to_string()))?;
    Ok(rule)
}

/// A port to open on the client: `LOCAL:REMOTE` or `LOCAL:HOST:REMOTE`, with `/udp`
/// (or `/tcp`, the default) at the end, as the engine's mapping spec.
pub fn mapping_spec(port: &str) -> Result<String, String> {
    // The engine's own spelling (`tcp:2222:22`, what `list` shows and what the
    // `mapping>` prompt and config files take) is accepted as it is.
    if port.starts_with("tcp:") || port.starts_with("udp:") {
        Mapping::parse(port).map_err(|e| format!("mapping `{port}`: {e}"))?;
        return Ok(port.to_owned());
    }
    let (body, proto) = match port.rsplit_once('/') {
        Some((b, p @ ("tcp" | "udp"))) => (b, p),
        Some((_, other)) => {
            return Err(format!(
                "mapping `{port}`: `/{other}` is not /tcp or /udp; valid: LOCAL:REMOTE, LOCAL:HOST:REMOTE, each with /udp for UDP (e.g. 2222:22, 5353:5353/udp)"
            ))
        }
        None => (port, "tcp"),
    };
    let spec = format!("{proto}:{body}");
    Mapping::parse(&spec).map_err(|e| {
        format!(
            "mapping `{port}`: {e}; valid: LOCAL:REMOTE, LOCAL:HOST:REMOTE, each with /udp for UDP (e.g. 2222:22, 5353:5353/udp)"
        )
    })?;
    Ok(spec)
}

/// A fresh room (16 random bytes, hex) and secret (32, base64url).
pub fn fresh_room_and_secret() -> (String, String) {
    use base64::Engine as _;
    let room = hex::encode(rand::random::<[u8; 16]>());
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    (room, secret)
}

/// A config for `mode` from the token, with `extra` keys on top.
fn config(token: &Token, mode: &str, extra: serde_json::Value) -> Result<Config, String> {
    let mut v = json!({
        "mode": mode,
        "room": token.room,
        "secret": token.secret,
        "signalUrl": token.signal_url,
        "stunServers": token.stun,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(
            e.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    Config::from_value(v).map_err(|e| e.to_string())
}

/// The server's config for `expose`.
pub fn server_config(
    token: &Token,
    allow: &[String],
    max_clients: Option<usize>,
) -> Result<Config, String> {
    config(
        token,
        "server",
        json!({ "allow": allow, "maxClients": max_clients }),
    )
}

/// The client's config for `connect`.
pub fn client_config(
    token: &Token,
    mappings: &[String],
    bind: Option<&str>,
) -> Result<Config, String> {
    config(
        token,
        "client",
        json!({ "mappings": mappings, "bind": bind }),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn services_become_allow_rules_and_ports_become_mappings() {
        assert_eq!(allow_rule("tcp:22").unwrap(), "tcp:127.0.0.1:22");
        assert_eq!(allow_rule("udp:5353").unwrap(), "udp:127.0.0.1:5353");
        assert_eq!(allow_rule("tcp:10.0.0.5:80").unwrap(), "tcp:10.0.0.5:80");
        for bad in ["22", "sctp:22", "tcp:", "tcp:notaport"] {
            let e = allow_rule(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("valid: tcp:PORT"), "{e}");
        }
        assert_eq!(mapping_spec("2222:22").unwrap(), "tcp:2222:22");
        assert_eq!(mapping_spec("tcp:2222:22").unwrap(), "tcp:2222:22");
        assert_eq!(mapping_spec("udp:0:db.lan:53").unwrap(), "udp:0:db.lan:53");
        assert_eq!(mapping_spec("5353:5353/udp").unwrap(), "udp:5353:5353");
        assert_eq!(
            mapping_spec("0:db.lan:5432/tcp").unwrap(),
            "tcp:0:db.lan:5432"
        );
        for bad in ["22", "2222:22/sctp", "x:22", "2222:70000"] {
            let e = mapping_spec(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("valid: LOCAL:REMOTE"), "{e}");
        }
    }

    #[test]
    fn stun_defaults_to_the_rendezvous_host() {
        let s = |u: &str| stun_servers(Vec::new(), u);
        assert_eq!(
            s("https://rv.example.org/").unwrap(),
            ["rv.example.org:3478"]
        );
        assert_eq!(
            s("http://user:pw@10.1.2.3:8080/signal.php").unwrap(),
            ["10.1.2.3:3478"]
        );
        assert_eq!(
            s("http://[2001:db8::1]:8080/").unwrap(),
            ["[2001:db8::1]:3478"]
        );
        assert!(s("nonsense").is_err());
        assert_eq!(
            stun_servers(vec!["a:1".into()], "http://x/").unwrap(),
            ["a:1"]
        );
    }

    #[test]
    fn fresh_rooms_and_secrets_differ() {
        let (a, b) = (fresh_room_and_secret(), fresh_room_and_secret());
        assert_ne!(a, b);
        assert_eq!(a.0.len(), 32);
        assert_eq!(a.1.len(), 43);
    }
}
