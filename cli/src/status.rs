//! Status for humans (issue #18): the live status line a peer shows on a terminal,
//! and `stunfwd status ADDR`, which reads a running peer's stats from its metrics
//! address (`GET /stats`, served next to `/metrics` when `metricsAddr` or `--metrics`
//! is set) and prints its clients, paths and mappings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// `1.2 MB`-style sizes.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn traffic(t: &Value) -> f64 {
    t["bytes_sent"].as_f64().unwrap_or(0.0) + t["bytes_received"].as_f64().unwrap_or(0.0)
}

fn state_text(state: &Value) -> String {
    let name = state["state"].as_str().unwrap_or("?");
    match name {
        "connected" => format!(
            "connected ({} to {}, found by {})",
            state["path"].as_str().unwrap_or("?"),
            state["peer"].as_str().unwrap_or("?"),
            state["technique"].as_str().unwrap_or("?")
        ),
        "reconnecting" | "failed" => format!("{name}: {}", state["reason"].as_str().unwrap_or("")),
        other => other.to_owned(),
    }
}

fn rtt(v: &Value) -> String {
    v["rtt_ms"]
        .as_f64()
        .map(|r| format!(", rtt {r:.1} ms"))
        .unwrap_or_default()
}

/// One line: state, path, RTT, bytes/s per mapping and per client, from two stats
/// snapshots (as JSON) `secs` apart.
pub fn line(prev: &Value, now: &Value, secs: f64) -> String {
    let rate = |a: &Value, b: &Value| {
        let d = (traffic(b) - traffic(a)).max(0.0);
        format!("{}/s", bytes(d / secs.max(0.001)))
    };
    let mut parts = vec![format!("{}{}", state_text(&now["state"]), rtt(now))];
    let empty = Vec::new();
    for m in now["mappings"].as_array().unwrap_or(&empty) {
        let before = prev["mappings"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["id"] == m["id"]))
            .map_or(Value::Null, |p| p["traffic"].clone());
        parts.push(format!(
            "{} {}",
            m["listen"].as_str().unwrap_or("?"),
            rate(&before, &m["traffic"])
        ));
    }
    if now["mode"] == "server" {
        let clients = now["clients"].as_array().unwrap_or(&empty);
        parts.push(format!("{} client(s)", clients.len()));
        for c in clients {
            let id = c["id"].as_str().unwrap_or("?");
            let before = prev["clients"]
                .as_array()
                .and_then(|l| l.iter().find(|p| p["id"] == c["id"]))
                .map_or(Value::Null, |p| p["totals"].clone());
            parts.push(format!(
                "{} {} {}",
                id.get(..8).unwrap_or(id),
                c["state"]["state"].as_str().unwrap_or("?"),
                rate(&before, &c["totals"])
            ));
        }
    }
    parts.join(" | ")
}

/// The whole picture, several lines: state, mappings, clients.
pub fn report(s: &Value) -> String {
    let mut out = vec![
        format!(
            "{} in room {}: {}{}",
            s["mode"].as_str().unwrap_or("?"),
            s["room"].as_str().unwrap_or("?"),
            state_text(&s["state"]),
            rtt(s)
        ),
        format!(
            "  traffic: {} sent, {} received, {} connection(s) open",
            bytes(s["totals"]["bytes_sent"].as_f64().unwrap_or(0.0)),
            bytes(s["totals"]["bytes_received"].as_f64().unwrap_or(0.0)),
            s["totals"]["connections_active"].as_u64().unwrap_or(0)
        ),
    ];
    let empty = Vec::new();
    let mappings = s["mappings"].as_array().unwrap_or(&empty);
    if !mappings.is_empty() {
        out.push("mappings:".into());
        for m in mappings {
            out.push(format!(
                "  {} {} listening on {}: {} sent, {} received",
                m["id"],
                m["spec"].as_str().unwrap_or("?"),
                m["listen"].as_str().unwrap_or("?"),
                bytes(m["traffic"]["bytes_sent"].as_f64().unwrap_or(0.0)),
                bytes(m["traffic"]["bytes_received"].as_f64().unwrap_or(0.0)),
            ));
        }
    }
    if s["mode"] == "server" {
        let clients = s["clients"].as_array().unwrap_or(&empty);
        out.push(format!("clients: {}", clients.len()));
        for c in clients {
            out.push(format!(
                "  {}: {}{}; {} sent, {} received",
                c["id"].as_str().unwrap_or("?"),
                state_text(&c["state"]),
                rtt(c),
                bytes(c["totals"]["bytes_sent"].as_f64().unwrap_or(0.0)),
                bytes(c["totals"]["bytes_received"].as_f64().unwrap_or(0.0)),
            ));
        }
    }
    if let Some(e) = s["last_error"].as_str() {
        out.push(format!("last error: {e}"));
    }
    out.join("\n")
}

/// `stunfwd status ADDR`: `host:port`, or the `http://ADDR/metrics` URL a peer prints.
pub fn peer_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let t = text.trim();
    let t = t
        .strip_prefix("http://")
        .map_or(t, |rest| rest.split('/').next().unwrap_or(rest));
    t.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            "not a metrics address; give the HOST:PORT the peer's --metrics or metricsAddr has, e.g. 127.0.0.1:9100 (or the http://HOST:PORT/metrics URL it printed)".to_owned()
        })
}

/// Reads a running peer's stats from its metrics address.
pub fn fetch(addr: SocketAddr) -> Result<Value, String> {
    let fail = |e: std::io::Error| {
        let e = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                "no answer within 5 s".to_owned()
            }
            _ => e.to_string(),
        };
        format!("cannot read the stats at http://{addr}/stats: {e} (is a peer running with --metrics {addr} or metricsAddr?)")
    };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(fail)?;
    s.write_all(
        format!("GET /stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(fail)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(fail)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("http://{addr}/stats: not an HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "http://{addr}/stats answered {}: not a stunfwd peer's metrics address?",
            head.lines().next().unwrap_or("")
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("http://{addr}/stats: not stats JSON ({e})"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_line_shows_rates_per_mapping_and_client() {
        let at = |sent: u64| {
            json!({
                "mode": "server", "state": {"state": "connected", "path": "direct", "peer": "1.2.3.4:5", "technique": "checks"},
                "rtt_ms": 12.34,
                "mappings": [{"id": 1, "listen": "127.0.0.1:2222", "traffic": {"bytes_sent": sent, "bytes_received": 0}}],
                "clients": [{"id": "0123456789abcdef0123456789abcdef", "state": {"state": "connected"}, "totals": {"bytes_sent": sent, "bytes_received": 0}}],
            })
        };
        let l = line(&at(0), &at(2_000_000), 2.0);
        assert!(
            l.starts_with("connected (direct to 1.2.3.4:5, found by checks), rtt 12.3 ms"),
            "{l}"
        );
        assert!(l.contains("127.0.0.1:2222 1.0 MB/s"), "{l}");
        assert!(
            l.contains("1 client(s) | 01234567 connected 1.0 MB/s"),
            "{l}"
        );
        let r = report(&at(1500));
        assert!(r.contains("clients: 1") && r.contains("1.5 kB sent"), "{r}");
    }
}
