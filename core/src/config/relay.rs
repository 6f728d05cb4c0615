//! The TURN relay: [`RelayConfig`] (the `relay` object), its [`TurnUrl`] and the
//! [`RelayPolicy`] that says when to use it.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::diagnostics::shown;
use super::lexical::{check_spec_chars, join_host_port, parse_host_port};
use super::schema::{Field, Fields, AUTH_SECRET, CREDENTIAL, RELAY_FIELDS, URL, USERNAME};
use super::values::{expect_object, expect_str};
use crate::error::{Error, Result};

const RELAY_EXPECTED: &str = "an object {\"url\": \"turn:host:3478\", \"username\": \"u\", \
     \"credential\": \"p\"}";
const RELAY_URL_EXPECTED: &str = "\"turn:HOST[:PORT][?transport=udp]\"";
const RELAY_POLICY_EXPECTED: &str = "\"auto\", \"never\" or \"always\"";

/// A TURN relay used when no direct path can be punched (the `relay` object).
#[derive(Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// `url`: where the TURN server is, parsed once (`turn:HOST[:PORT][?transport=udp]`).
    pub url: TurnUrl,
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
    /// The relayed address is checked alongside the direct candidates from the start:
    /// the tunnel opens on the first path that works and moves to direct when a direct
    /// path validates.
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

    /// The `relayPolicy` value at `key`, in any case.
    pub(super) fn from_value(key: &str, v: &Value) -> Result<RelayPolicy> {
        let text = expect_str(key, v, RELAY_POLICY_EXPECTED)?;
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(RelayPolicy::Auto),
            "never" => Ok(RelayPolicy::Never),
            "always" => Ok(RelayPolicy::Always),
            _ => Err(Error::config(
                key,
                text,
                "is not a relay policy",
                RELAY_POLICY_EXPECTED,
            )),
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

impl RelayConfig {
    /// The `relay` object in our canonical spelling, credentials included.
    pub(super) fn to_json(&self) -> Value {
        let mut r = Map::new();
        r.insert(URL.name.into(), self.url.as_str().into());
        if let Some(u) = &self.username {
            r.insert(USERNAME.name.into(), u.clone().into());
        }
        if let Some(c) = &self.credential {
            r.insert(CREDENTIAL.name.into(), c.clone().into());
        }
        if let Some(a) = &self.auth_secret {
            r.insert(AUTH_SECRET.name.into(), a.clone().into());
        }
        Value::Object(r)
    }
}

/// A TURN server URL, `turn:HOST[:PORT][?transport=udp]`, checked and split once when
/// the config is read.
///
/// Only what the engine can use parses: the `turn:` scheme (port 3478 by default) over
/// UDP. `turns:` and `?transport=tcp` are refused with a message saying so, which is why
/// neither the scheme nor the transport is stored. The URL holds no credentials; they
/// are [`RelayConfig::username`], [`RelayConfig::credential`] and
/// [`RelayConfig::auth_secret`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TurnUrl {
    /// As written, for display and for [`Config::to_json`](super::Config::to_json).
    text: String,
    /// An IP literal (IPv6 without brackets) or a DNS name.
    host: String,
    port: u16,
}

impl TurnUrl {
    /// Parses a TURN URL. Errors use the key `relay.url`.
    pub fn parse(url: &str) -> Result<TurnUrl> {
        TurnUrl::parse_at("relay.url", url)
    }

    /// Parses `url` found at config key `key`. Errors show the URL without user
    /// information or query (it holds no secret when valid, but a mistyped one might).
    pub(super) fn parse_at(key: &str, url: &str) -> Result<TurnUrl> {
        let fail = |problem: String| {
            Error::config(key, crate::redact::url(url), problem, RELAY_URL_EXPECTED)
        };
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
        if authority.contains('@') {
            // Said without quoting any of it: what precedes the `@` is a password.
            return Err(fail(
                "the URL has user information (`…@`); give it as relay.username and \
                 relay.credential instead"
                    .into(),
            ));
        }
        check_spec_chars("the relay host", authority).map_err(fail)?;
        let (host, port) = parse_host_port(authority, Some(default_port)).map_err(fail)?;
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
                _ => {
                    return Err(fail(format!(
                        "unsupported query `?{}`",
                        shown(&masked_query(query))
                    )))
                }
            }
        }
        if tls {
            return Err(fail(
                "TURN over TLS (turns:) is not supported yet; use turn:HOST:PORT (the tunnel is end-to-end encrypted anyway)".into(),
            ));
        }
        Ok(TurnUrl {
            text: url.to_owned(),
            host,
            port,
        })
    }

    /// The host: an IP literal (IPv6 without brackets) or a DNS name to resolve.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, 3478 when the URL gives none.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `HOST:PORT`, IPv6 in brackets, e.g. to resolve: `[2001:db8::1]:3478`.
    pub fn host_port(&self) -> String {
        join_host_port(&self.host, self.port)
    }

    /// The URL as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// `query` for an error message: parameter names as given, values other than the
/// transport's masked, since a token may hide in one.
fn masked_query(query: &str) -> String {
    query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, value)) if name.eq_ignore_ascii_case("transport") => {
                format!("{name}={value}")
            }
            Some((name, _)) => format!("{name}=***"),
            None => "***".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl FromStr for TurnUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<TurnUrl> {
        TurnUrl::parse(url)
    }
}

impl fmt::Display for TurnUrl {
    /// The URL as written in the config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for TurnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

pub(super) fn parse_relay(key: &str, v: &Value) -> Result<RelayConfig> {
    let obj = expect_object(key, v, RELAY_EXPECTED)?;
    let fields = Fields::new(obj, key);
    fields.check_unknown(RELAY_FIELDS)?;
    let (url_key, url_value) = fields.require(&URL, RELAY_URL_EXPECTED)?;
    let url = TurnUrl::parse_at(
        &url_key,
        expect_str(&url_key, url_value, RELAY_URL_EXPECTED)?,
    )?;
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

pub(super) fn check_relay(key: &str, relay: &RelayConfig) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_urls_are_split_once() {
        for (url, host, port, host_port) in [
            (
                "turn:relay.example?transport=udp",
                "relay.example",
                3478,
                "relay.example:3478",
            ),
            ("turn:10.0.0.1:3479", "10.0.0.1", 3479, "10.0.0.1:3479"),
            (
                "TURN:[2001:db8::1]",
                "2001:db8::1",
                3478,
                "[2001:db8::1]:3478",
            ),
        ] {
            let parsed: TurnUrl = url.parse().expect(url);
            assert_eq!(
                (parsed.host(), parsed.port(), parsed.host_port()),
                (host, port, host_port.to_owned())
            );
            assert_eq!(parsed.to_string(), url, "shown as written");
        }
    }

    #[test]
    fn turn_url_errors_say_what_is_supported_and_show_no_secret() {
        for (url, needle) in [
            ("http://relay.example", "must start with turn: or turns:"),
            ("turn:relay.example?transport=tcp", "TURN over TCP"),
            ("turns:relay.example", "TURN over TLS"),
            ("turn:relay.example?x=1", "unsupported query"),
            ("turn:relay.example:0", "port 0 is out of range"),
        ] {
            match TurnUrl::parse(url) {
                Err(Error::Config { key, problem, .. }) => {
                    assert_eq!(key, "relay.url");
                    assert!(problem.contains(needle), "{url}: {problem}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        for url in [
            "turn:user:pw-xyz@relay.example",
            "turn:pw-xyz@relay.example:3478",
            "turn:relay.example?token=pw-xyz",
            "turn:relay.example?transport=udp&pw-xyz",
        ] {
            let err = TurnUrl::parse(url).expect_err(url).to_string();
            assert!(!err.contains("pw-xyz"), "{err}");
        }
        let err = TurnUrl::parse("turn:h?transport=quic&token=x").expect_err("query");
        assert!(
            err.to_string()
                .contains("unsupported query `?transport=quic&token=***`"),
            "{err}"
        );
    }
}
