//! Counters of the rendezvous server and their Prometheus text rendering (`/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{labels, Kind, Writer};

/// Request counters by HTTP status, plus connection-level events.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Index `status - 100` for statuses 100..=599.
    by_status: Box<[AtomicU64]>,
    /// Requests answered, all statuses.
    pub(crate) requests: AtomicU64,
    /// Connections closed at once because a connection cap was reached.
    pub(crate) connections_refused: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub(crate) tls_failures: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            by_status: (100..600).map(|_| AtomicU64::new(0)).collect(),
            requests: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Counts one answered request.
    pub(crate) fn count(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = status
            .checked_sub(100)
            .and_then(|i| self.by_status.get(usize::from(i)))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests answered with `status` so far.
    pub(crate) fn with_status(&self, status: u16) -> u64 {
        status
            .checked_sub(100)
            .and_then(|i| self.by_status.get(usize::from(i)))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Point-in-time values rendered next to the counters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauges {
    pub(crate) rooms: usize,
    pub(crate) waiting_polls: usize,
    pub(crate) connections: usize,
    pub(crate) stun_answered: Option<u64>,
}

/// The Prometheus text exposition format (version 0.0.4), written with the engine's
/// writer ([`crate::metrics::Writer`]).
pub(crate) fn render(c: &Counters, g: Gauges) -> String {
    let mut w = Writer::with_capacity(1024);
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    w.one(
        "stunfwd_signal_rooms",
        Kind::Gauge,
        "Rooms held by the store.",
        n(g.rooms),
    );
    w.one(
        "stunfwd_signal_waiting_polls",
        Kind::Gauge,
        "Long-polls waiting on this instance.",
        n(g.waiting_polls),
    );
    w.one(
        "stunfwd_signal_connections",
        Kind::Gauge,
        "Open client connections on this instance.",
        n(g.connections),
    );
    let by_status: Vec<(String, u64)> = (100u16..600)
        .filter_map(|s| {
            let v = c.with_status(s);
            (v > 0).then(|| (labels(&[("status", &s.to_string())]), v))
        })
        .collect();
    w.family(
        "stunfwd_signal_requests_total",
        Kind::Counter,
        "HTTP requests answered, by status.",
        &by_status,
    );
    w.one(
        "stunfwd_signal_connections_refused_total",
        Kind::Counter,
        "Connections closed at once because a connection cap was reached.",
        c.connections_refused.load(Ordering::Relaxed),
    );
    w.one(
        "stunfwd_signal_tls_handshake_failures_total",
        Kind::Counter,
        "TLS handshakes that failed or timed out.",
        c.tls_failures.load(Ordering::Relaxed),
    );
    if let Some(answered) = g.stun_answered {
        w.one(
            "stunfwd_stun_binding_answered_total",
            Kind::Counter,
            "STUN Binding requests answered.",
            answered,
        );
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let c = Counters::default();
        c.count(200);
        c.count(200);
        c.count(429);
        c.count(42);
        let text = render(
            &c,
            Gauges {
                rooms: 3,
                waiting_polls: 1,
                connections: 2,
                stun_answered: None,
            },
        );
        assert!(text.contains("stunfwd_signal_rooms 3\n"), "{text}");
        assert!(text.contains("stunfwd_signal_waiting_polls 1\n"));
        assert!(text.contains("stunfwd_signal_requests_total{status=\"200\"} 2\n"));
        assert!(text.contains("stunfwd_signal_requests_total{status=\"429\"} 1\n"));
        assert!(text.contains("# TYPE stunfwd_signal_requests_total counter\n"));
        assert!(text.contains("# TYPE stunfwd_signal_rooms gauge\n"));
        assert!(!text.contains("stun_binding"));
        assert_eq!(c.requests.load(Ordering::Relaxed), 4);
    }
}
