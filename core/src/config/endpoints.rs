//! Where a peer reaches the world: the rendezvous server (`signalUrl`, `signalCaFile`),
//! the STUN servers (`stunServers`) and local socket addresses (`bind`, `metricsAddr`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;

use super::diagnostics::{shown, wrong_type};
use super::lexical::{check_spec_chars, join_host_port, parse_host_port};
use super::values::expect_str;
use crate::error::{Error, Result};

pub(super) const SIGNAL_URL_EXPECTED: &str =
    "an http:// or https:// URL of the rendezvous server, e.g. \"https://example.org/signal\"";
const SIGNAL_CA_FILE_EXPECTED: &str =
    "the path of a PEM file with the CA certificates of the rendezvous server, e.g. \"/etc/stunfwd/ca.pem\"";
const STUN_EXPECTED: &str = "\"host:port\" strings such as \"stun.example.org:3478\" \
     (a leading \"stun:\" is accepted, the port defaults to 3478, IPv6 in brackets)";
const ADDR_EXPECTED: &str = "an address \"IP:PORT\" such as \"0.0.0.0:0\" or \"[::]:4000\"";

/// The `signalCaFile` path at `key`; an empty one is an error.
pub(super) fn parse_signal_ca_file(key: &str, v: &Value) -> Result<PathBuf> {
    match expect_str(key, v, SIGNAL_CA_FILE_EXPECTED)? {
        "" => Err(Error::config(
            key,
            "\"\"",
            "is empty",
            SIGNAL_CA_FILE_EXPECTED,
        )),
        path => Ok(PathBuf::from(path)),
    }
}

/// `stunServers`: an array of `host[:port]` strings, or the Go tool's one string.
pub(super) fn parse_stun_servers(key: &str, v: &Value) -> Result<Vec<String>> {
    match v {
        Value::String(s) => Ok(vec![parse_stun_server(key, s)?]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let key = format!("{key}[{i}]");
                parse_stun_server(&key, expect_str(&key, item, STUN_EXPECTED)?)
            })
            .collect(),
        v => Err(wrong_type(
            key,
            v,
            "an array of strings or one string",
            STUN_EXPECTED,
        )),
    }
}

pub(super) fn check_signal_url(key: &str, text: &str) -> Result<()> {
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

pub(super) fn parse_stun_server(key: &str, text: &str) -> Result<String> {
    let fail = |problem: String| Error::config(key, text, problem, STUN_EXPECTED);
    let rest = match text.get(..5) {
        Some(scheme) if scheme.eq_ignore_ascii_case("stun:") => text.get(5..).unwrap_or(""),
        _ => text,
    };
    check_spec_chars("the STUN server", rest).map_err(fail)?;
    let (host, port) = parse_host_port(rest, Some(3478)).map_err(fail)?;
    Ok(join_host_port(&host, port))
}

pub(super) fn parse_socket_addr(key: &str, v: &Value) -> Result<SocketAddr> {
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
