//! The engine's [`Stats`] as Prometheus text (DESIGN §8), served at `/metrics` when
//! `metricsAddr` is set.
//!
//! Counters end in `_total`; state, activity, round-trip time and phase durations are
//! gauges. Durations are in seconds, sizes in bytes (Prometheus base units). Engine-wide
//! figures are unlabeled; per-mapping figures carry `mapping` (the id), `spec` and
//! `listen` labels, in families of their own (`stunfwd_mapping_*`) so that summing a
//! family never counts a byte twice.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::stats::{Stats, Traffic};
use crate::status::{PathKind, State};
use crate::stun::client::NatType;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STATES: [&str; 8] = [
    "starting",
    "discovering",
    "signaling",
    "punching",
    "connected",
    "reconnecting",
    "stopped",
    "failed",
];

const PATHS: [PathKind; 3] = [PathKind::Direct, PathKind::Lan, PathKind::Relay];

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{k="v",...}`, or nothing without labels.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A metric family's type.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// Only ever grows (the name ends in `_total`).
    Counter,
    /// A value now.
    Gauge,
}

/// Writes the Prometheus text exposition format (version 0.0.4), one metric family at
/// a time. The one writer of both `/metrics` pages: the engine's ([`render`]) and the
/// rendezvous server's (`signal::metrics`).
pub(crate) struct Writer {
    out: String,
}

impl Writer {
    /// An empty page with room for `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Writer {
            out: String::with_capacity(capacity),
        }
    }

    /// `# HELP`, `# TYPE`, then one line per sample: its labels (from [`labels`]) and
    /// value.
    pub(crate) fn family<V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: &[(String, V)],
    ) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.out, "{name}{labels} {v}");
        }
    }

    /// A family of one unlabeled sample.
    pub(crate) fn one<V: std::fmt::Display>(&mut self, name: &str, kind: Kind, help: &str, v: V) {
        self.family(name, kind, help, &[(String::new(), v)]);
    }

    /// A gauge of one unlabeled sample, left out when unknown.
    pub(crate) fn maybe<V: std::fmt::Display>(&mut self, name: &str, help: &str, v: Option<V>) {
        if let Some(v) = v {
            self.one(name, Kind::Gauge, help, v);
        }
    }

    /// The page.
    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// What a traffic figure is called, its kind and its help text.
type TrafficField = (&'static str, Kind, &'static str, fn(&Traffic) -> u64);

const TRAFFIC: [TrafficField; 10] = [
    (
        "connections_opened_total",
        Kind::Counter,
        "TCP connections or UDP flows opened.",
        |t| t.connections_opened,
    ),
    (
        "connections_active",
        Kind::Gauge,
        "TCP connections or UDP flows open now.",
        |t| t.connections_active,
    ),
    (
        "connections_failed_total",
        Kind::Counter,
        "Connections that failed (peer unreachable, target refused, connect failed).",
        |t| t.connections_failed,
    ),
    (
        "sent_bytes_total",
        Kind::Counter,
        "Payload bytes sent into the tunnel.",
        |t| t.bytes_sent,
    ),
    (
        "received_bytes_total",
        Kind::Counter,
        "Payload bytes received from the tunnel.",
        |t| t.bytes_received,
    ),
    (
        "datagrams_sent_total",
        Kind::Counter,
        "UDP datagrams sent into the tunnel.",
        |t| t.datagrams_sent,
    ),
    (
        "datagrams_received_total",
        Kind::Counter,
        "UDP datagrams received from the tunnel.",
        |t| t.datagrams_received,
    ),
    (
        "refused_by_policy_total",
        Kind::Counter,
        "Connections refused by the allow rules.",
        |t| t.refused_by_policy,
    ),
    (
        "tunnel_wait_timeouts_total",
        Kind::Counter,
        "Local connections reset (UDP flows dropped) because the tunnel was not up within tunnelWait.",
        |t| t.tunnel_wait_timeouts,
    ),
    (
        "udp_flows_refused_total",
        Kind::Counter,
        "UDP flows refused because a flow cap (maxUdpFlowsPerMapping, maxUdpFlowsPerClient) was reached.",
        |t| t.flows_refused,
    ),
];

fn ms_to_s(ms: Option<f64>) -> Option<f64> {
    ms.map(|ms| ms / 1000.0)
}

/// Renders `stats` in the Prometheus text exposition format (version 0.0.4).
pub fn render(stats: &Stats) -> String {
    let mut w = Writer::with_capacity(4096);
    let flag = |b: bool| if b { 1.0 } else { 0.0 };

    w.family(
        "stunfwd_engine_info",
        Kind::Gauge,
        "Always 1; the labels describe the engine.",
        &[(
            labels(&[
                ("mode", stats.mode.as_str()),
                ("room", &stats.room),
                ("local_addr", &stats.local_addr.to_string()),
                ("nat_type", stats.nat_type.as_str()),
                (
                    "peer_nat_type",
                    stats.peer_nat_type.map_or("unknown", NatType::as_str),
                ),
            ]),
            1.0,
        )],
    );
    let state = stats.state.name();
    let states: Vec<(String, f64)> = STATES
        .iter()
        .map(|s| (labels(&[("state", s)]), flag(*s == state)))
        .collect();
    w.family(
        "stunfwd_state",
        Kind::Gauge,
        "1 for the engine's current state, 0 for the others.",
        &states,
    );
    w.one(
        "stunfwd_connected",
        Kind::Gauge,
        "1 while the tunnel is up.",
        flag(matches!(stats.state, State::Connected { .. })),
    );
    w.one(
        "stunfwd_insecure",
        Kind::Gauge,
        "1 when the engine runs without a secret (anyone who knows the room name can join).",
        flag(stats.insecure),
    );
    let paths: Vec<(String, f64)> = PATHS
        .iter()
        .map(|p| {
            (
                labels(&[("path", p.as_str())]),
                flag(stats.path == Some(*p)),
            )
        })
        .collect();
    w.family(
        "stunfwd_path",
        Kind::Gauge,
        "1 for the path carrying the tunnel (direct, lan, relay), 0 for the others.",
        &paths,
    );
    w.maybe(
        "stunfwd_rtt_seconds",
        "Smoothed round-trip time of the tunnel.",
        ms_to_s(stats.rtt_ms),
    );

    for (name, kind, help, get) in TRAFFIC {
        w.one(
            &format!("stunfwd_{name}"),
            kind,
            &format!("{help} All mappings."),
            get(&stats.totals) as f64,
        );
    }
    w.one(
        "stunfwd_mappings",
        Kind::Gauge,
        "Mappings configured now.",
        stats.mappings.len() as f64,
    );
    for (name, kind, help, get) in TRAFFIC {
        let samples: Vec<(String, f64)> = stats
            .mappings
            .iter()
            .map(|m| {
                (
                    labels(&[
                        ("mapping", &m.id.to_string()),
                        ("spec", &m.spec),
                        ("listen", &m.listen.to_string()),
                    ]),
                    get(&m.traffic) as f64,
                )
            })
            .collect();
        if samples.is_empty() {
            continue;
        }
        w.family(
            &format!("stunfwd_mapping_{name}"),
            kind,
            &format!("{help} Per mapping."),
            &samples,
        );
    }

    // A server's clients (issue #18): each its own series, labelled with its id.
    if stats.mode == crate::config::Mode::Server {
        w.one(
            "stunfwd_clients",
            Kind::Gauge,
            "Clients served now (each with its own tunnel).",
            stats.clients.len() as f64,
        );
    }
    if !stats.clients.is_empty() {
        let per = |get: &dyn Fn(&crate::stats::ClientStats) -> f64| -> Vec<(String, f64)> {
            stats
                .clients
                .iter()
                .map(|c| (labels(&[("client", &c.id)]), get(c)))
                .collect()
        };
        w.family(
            "stunfwd_client_connected",
            Kind::Gauge,
            "1 while the client's tunnel is up. Per client.",
            &per(&|c| flag(c.state.is_connected())),
        );
        let rtts: Vec<(String, f64)> = stats
            .clients
            .iter()
            .filter_map(|c| Some((labels(&[("client", &c.id)]), c.rtt_ms? / 1000.0)))
            .collect();
        if !rtts.is_empty() {
            w.family(
                "stunfwd_client_rtt_seconds",
                Kind::Gauge,
                "Smoothed round-trip time of the client's tunnel. Per client.",
                &rtts,
            );
        }
        w.family(
            "stunfwd_client_reconnects_total",
            Kind::Counter,
            "The client's tunnel re-established after loss. Per client.",
            &per(&|c| c.reconnects as f64),
        );
        for (name, kind, help, get) in TRAFFIC {
            w.family(
                &format!("stunfwd_client_{name}"),
                kind,
                &format!("{help} Per client."),
                &per(&|c| get(&c.totals) as f64),
            );
        }
    }

    let counters: [(&str, &str, u64); 8] = [
        (
            "stunfwd_reconnects_total",
            "Tunnels re-established after loss.",
            stats.reconnects,
        ),
        (
            "stunfwd_path_changes_total",
            "Times the live tunnel moved to a new peer address without reconnecting.",
            stats.path_changes,
        ),
        (
            "stunfwd_birthday_sockets_total",
            "Sockets birthday punching opened (symmetric side).",
            stats.birthday_sockets,
        ),
        (
            "stunfwd_birthday_packets_total",
            "Packets birthday punching sent (openers, probes, checks back).",
            stats.birthday_packets,
        ),
        (
            "stunfwd_stun_discoveries_total",
            "STUN discoveries performed (not served from cache).",
            stats.stun_discoveries,
        ),
        (
            "stunfwd_signaling_requests_total",
            "HTTP requests sent to the rendezvous server.",
            stats.signaling_requests,
        ),
        (
            "stunfwd_offers_rejected_total",
            "Peer offers rejected (MAC did not verify, stale, replayed, wrong role, malformed).",
            stats.offers_rejected,
        ),
        (
            "stunfwd_checks_unauthenticated_total",
            "Connectivity checks dropped because they were not authentic.",
            stats.checks_unauthenticated,
        ),
    ];
    for (name, help, v) in counters {
        w.one(name, Kind::Counter, help, v as f64);
    }

    let t = &stats.timings;
    w.maybe(
        "stunfwd_stun_discovery_seconds",
        "STUN discovery time of the latest successful connect.",
        ms_to_s(t.stun_discovery_ms),
    );
    w.maybe(
        "stunfwd_signaling_wait_seconds",
        "Time spent waiting for the peer's offer in the latest successful connect.",
        ms_to_s(t.signaling_wait_ms),
    );
    w.maybe(
        "stunfwd_punching_seconds",
        "Connectivity-check time of the latest successful connect.",
        ms_to_s(t.punching_ms),
    );
    w.maybe(
        "stunfwd_time_to_connected_seconds",
        "From the start of the latest successful attempt to the tunnel being up.",
        ms_to_s(t.time_to_connected_ms),
    );
    w.finish()
}

/// Binds the metrics listener now (so a port in use is reported at once) and returns
/// it ready for [`serve`].
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| Error::bind("metrics", addr, &e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("metrics listener", &e))?;
    Ok(listener)
}

/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `GET /metrics` on `listener` with a fresh `stats()` per scrape, until
/// `shutdown` is cancelled. Anything else is 404 (405 for another method on
/// `/metrics`). Must run inside a tokio runtime.
pub async fn serve(
    listener: std::net::TcpListener,
    stats: impl Fn() -> Stats + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| Error::io("metrics", &e))?;
    let stats: Arc<dyn Fn() -> Stats + Send + Sync> = Arc::new(stats);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return Ok(()),
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            // The client gave up before we took its connection: nothing to wait for.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::ConnectionReset
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let stats = stats.clone();
        let service = hyper::service::service_fn(move |req: Request<_>| {
            let stats = stats.clone();
            async move { Ok::<_, Infallible>(answer(&req, &*stats)) }
        });
        crate::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics: connection closed");
            }
        });
    }
}

/// Binds `addr` and serves `GET /metrics` there until `shutdown` is cancelled.
pub async fn serve_addr(
    addr: SocketAddr,
    stats: impl Fn() -> Stats + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> Result<()> {
    serve(bind(addr)?, stats, shutdown).await
}

/// The answer to one request: the scrape for `GET`/`HEAD /metrics` (hyper leaves out
/// the body of a `HEAD`), the stats JSON for `GET`/`HEAD /stats` (what `stunfwd
/// status` reads), 405 with `Allow` for another method there, 404 elsewhere.
fn answer<B>(req: &Request<B>, stats: &dyn Fn() -> Stats) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::default());
    let path = req.uri().path();
    if path != "/metrics" && path != "/stats" {
        *resp.status_mut() = StatusCode::NOT_FOUND;
    } else if req.method() == Method::GET || req.method() == Method::HEAD {
        let (body, kind) = if path == "/stats" {
            let json = serde_json::to_string(&stats())
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            (json, "application/json")
        } else {
            (render(&stats()), CONTENT_TYPE)
        };
        *resp.body_mut() = Full::new(body.into());
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    } else {
        *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{MappingStats, Timings};

    fn stats() -> Stats {
        Stats {
            mode: crate::config::Mode::Client,
            room: "r\"oom".into(),
            insecure: false,
            state: State::Connected {
                path: PathKind::Lan,
                peer: "127.0.0.1:2".parse().expect("addr"),
                technique: crate::status::Technique::Checks,
            },
            path: Some(PathKind::Lan),
            peer_addr: None,
            technique: Some(crate::status::Technique::Checks),
            relay_server: None,
            local_addr: "127.0.0.1:1".parse().expect("addr"),
            public_addr: None,
            nat_type: NatType::Unknown,
            peer_nat_type: None,
            rtt_ms: Some(1.5),
            totals: Traffic {
                bytes_sent: 42,
                connections_active: 1,
                ..Traffic::default()
            },
            mappings: vec![MappingStats {
                id: 7,
                spec: "tcp:127.0.0.1:0:127.0.0.1:22".into(),
                listen: "127.0.0.1:3".parse().expect("addr"),
                traffic: Traffic {
                    bytes_sent: 42,
                    ..Traffic::default()
                },
            }],
            timings: Timings {
                time_to_connected_ms: Some(250.0),
                ..Timings::default()
            },
            reconnects: 0,
            path_changes: 0,
            birthday_sockets: 0,
            birthday_packets: 0,
            stun_discoveries: 1,
            signaling_requests: 3,
            offers_rejected: 0,
            checks_unauthenticated: 0,
            last_error: None,
            port_mapping: Default::default(),
            client_id: None,
            clients: Vec::new(),
        }
    }

    #[test]
    fn renders_typed_families() {
        let text = render(&stats());
        assert!(
            text.contains("# TYPE stunfwd_sent_bytes_total counter\nstunfwd_sent_bytes_total 42\n")
        );
        assert!(text.contains("# TYPE stunfwd_connections_active gauge\n"));
        assert!(text.contains("stunfwd_state{state=\"connected\"} 1\n"));
        assert!(text.contains("stunfwd_state{state=\"failed\"} 0\n"));
        assert!(text.contains("stunfwd_path{path=\"lan\"} 1\n"));
        assert!(text.contains("stunfwd_rtt_seconds 0.0015\n"));
        assert!(text.contains("stunfwd_time_to_connected_seconds 0.25\n"));
        assert!(text.contains(
            "stunfwd_mapping_sent_bytes_total{mapping=\"7\",spec=\"tcp:127.0.0.1:0:127.0.0.1:22\",listen=\"127.0.0.1:3\"} 42\n"
        ));
        assert!(text.contains("room=\"r\\\"oom\""), "label escaped: {text}");
        assert!(
            !text.contains("stunfwd_punching_seconds"),
            "unknown timings are left out"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().expect("name"), parts.next().expect("kind"));
            assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
        }
    }
}
