//! The lexical pieces of spec strings shared by mappings, allow rules, STUN servers and
//! TURN URLs: colon splitting outside brackets, ports, IP literals, DNS names and
//! `host:port`. Problems are plain strings; callers add the key, value and valid forms.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::diagnostics::shown;

type Problem<T> = std::result::Result<T, String>;

/// Rejects empty text, whitespace, control and non-ASCII characters.
pub(super) fn check_spec_chars(what: &str, text: &str) -> Problem<()> {
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
pub(super) fn split_colons(text: &str) -> Problem<Vec<&str>> {
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
pub(super) fn unbracket(text: &str) -> Problem<Option<&str>> {
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

pub(super) fn parse_port(text: &str, what: &str, min: u16) -> Problem<u16> {
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
pub(super) fn parse_ip_part(text: &str) -> Problem<IpAddr> {
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
pub(super) fn parse_host_part(text: &str) -> Problem<String> {
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
pub(super) fn check_host(host: &str) -> Problem<()> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    check_dns_name(host).map_err(|p| format!("`{}` {p}", shown(host)))
}

/// `host[:port]` with IPv6 in brackets; a missing port takes `default_port` if given.
pub(super) fn parse_host_port(text: &str, default_port: Option<u16>) -> Problem<(String, u16)> {
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

pub(super) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Letters, digits and `-` in dot-separated labels of 1-63 characters that do not start
/// or end with `-`; at most 253 characters; the last label not all digits.
pub(super) fn check_dns_name(name: &str) -> Problem<()> {
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
