//! The way back out of the tunnel for UDP: DATAGRAM frames read off a connection and
//! delivered to their flows' local sockets, consecutive datagrams of one flow and one
//! size together in one system call (GSO).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;

use super::flows::{table, FlowSink, FlowTable};
use super::proto;

/// Delivers one datagram of a flow to its local socket.
pub(super) fn deliver(sink: &FlowSink, payload: &[u8]) {
    arrived(sink, payload.len());
    // The kernel decides here; only a full socket buffer drops.
    if let Err(e) = sink.socket.send_one(payload, sink.dest) {
        tracing::trace!(error = %e, "udp datagram from the tunnel not delivered locally");
    }
}

/// Notes a datagram of `len` bytes from the tunnel for `sink`: the flow is not idle,
/// and the datagram is counted as received before it is handed on (see tcp.rs).
fn arrived(sink: &FlowSink, len: usize) {
    sink.idle.touch();
    sink.meter.datagram_received(len);
}

/// Datagrams the dispatcher takes off the connection at a time: what has arrived
/// while it was busy goes out together.
const DISPATCH_BATCH: usize = 32;

/// What a dispatcher keeps of its outbox's buffer under light traffic.
const LIGHT_CAPACITY: usize = 4096;

/// Reads DATAGRAM frames off `conn` and hands them to their flows, until it closes.
pub(crate) async fn dispatch_datagrams(conn: quinn::Connection, flows: FlowTable) {
    // The sinks of this connection's flows, looked up in the shared table once per
    // flow rather than once per datagram (a lock and a clone each). The cache holds
    // them weakly: a flow that leaves the table (its mapping removed, its idle timeout
    // passed) closes its socket at once, not when the next datagram comes. A sink that
    // has left is looked up again; dead entries are pruned at each look-up.
    let mut sinks: HashMap<u64, Weak<FlowSink>> = HashMap::new();
    let mut frames: Vec<Bytes> = Vec::with_capacity(DISPATCH_BATCH);
    let mut out = Outbox::default();
    while let Ok(first) = conn.read_datagram().await {
        frames.push(first);
        while frames.len() < DISPATCH_BATCH {
            match now(conn.read_datagram()) {
                Some(Ok(frame)) => frames.push(frame),
                _ => break,
            }
        }
        // Light traffic gives most of its buffer back; a backlog keeps it all.
        let backlog = frames.len() == DISPATCH_BATCH;
        for frame in frames.drain(..) {
            let Some((id, payload)) = proto::decode_datagram(&frame) else {
                continue;
            };
            let cached = sinks
                .get(&id)
                .and_then(Weak::upgrade)
                .filter(|s| s.is_current());
            let sink = match cached {
                Some(sink) => sink,
                None => {
                    sinks.retain(|_, s| s.strong_count() > 0);
                    let Some(sink) = table(&flows).get(&id).cloned() else {
                        continue;
                    };
                    sinks.insert(id, Arc::downgrade(&sink));
                    sink
                }
            };
            out.push(sink, &payload);
        }
        out.flush();
        if !backlog {
            out.buf.shrink_to(LIGHT_CAPACITY);
        }
    }
}

/// The output of `future` if it is ready at once; it is not waited for.
fn now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// Consecutive datagrams of one flow and one size, gathered to leave in one system
/// call (GSO); anything else is delivered alone.
#[derive(Default)]
struct Outbox {
    /// The flow of the datagrams gathered, and their size.
    to: Option<(Arc<FlowSink>, usize)>,
    /// The datagrams gathered, end to end.
    buf: Vec<u8>,
    count: usize,
}

impl Outbox {
    fn push(&mut self, sink: Arc<FlowSink>, payload: &[u8]) {
        let joins = self.to.as_ref().is_some_and(|(to, size)| {
            Arc::ptr_eq(to, &sink) && payload.len() == *size && self.count < to.socket.max_batch()
        });
        if !joins {
            self.flush();
            if !sink.socket.batches(payload.len()) {
                deliver(&sink, payload);
                return;
            }
            self.to = Some((sink.clone(), payload.len()));
        }
        arrived(&sink, payload.len());
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    /// Sends what is gathered.
    fn flush(&mut self) {
        let Some((sink, size)) = self.to.take() else {
            return;
        };
        let sent = if self.count == 1 {
            sink.socket.send_one(&self.buf, sink.dest)
        } else {
            sink.socket.send_batch(&self.buf, size, sink.dest)
        };
        if let Err(e) = sent {
            tracing::trace!(error = %e, n = self.count, "udp datagrams from the tunnel not delivered locally");
        }
        self.buf.clear();
        self.count = 0;
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::forward::flows::IdleClock;
    use crate::forward::local::LocalUdp;
    use crate::stats::{Counters, Meter};

    fn sink(to: SocketAddr, totals: &Arc<Counters>) -> Arc<FlowSink> {
        let socket = LocalUdp::bind("127.0.0.1:0".parse().expect("addr"), 1 << 20).expect("bind");
        let meter = Meter::new(None, totals.clone());
        Arc::new(FlowSink::new(
            Arc::new(socket),
            Some(to),
            meter,
            IdleClock::new(),
        ))
    }

    /// Runs of one flow and one size leave together; a new size, a new flow or a full
    /// batch starts another; every datagram arrives whole, in its flow's order.
    #[tokio::test]
    async fn the_outbox_batches_runs_of_one_flow_and_size_and_keeps_every_boundary() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("rx");
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let to = rx.local_addr().expect("addr");
        let totals = Arc::new(Counters::default());
        let (a, b) = (sink(to, &totals), sink(to, &totals));
        assert!(a.socket.batches(1200), "GSO on loopback");
        let mut out = Outbox::default();
        let mut sent = Vec::new();
        let mut send = |out: &mut Outbox, s: &Arc<FlowSink>, len: usize, tag: u8| {
            let d = vec![tag; len];
            out.push(s.clone(), &d);
            sent.push(d);
        };
        for i in 0..5 {
            send(&mut out, &a, 1200, i);
        }
        assert_eq!(
            out.count, 5,
            "five datagrams of one flow and size wait together"
        );
        send(&mut out, &a, 700, 5);
        assert_eq!(out.count, 1, "a new size starts a new batch");
        send(&mut out, &b, 700, 6);
        assert_eq!(out.count, 1, "so does a new flow");
        let max = a.socket.max_batch();
        for i in 0..max + 3 {
            send(&mut out, &a, 64, 7 + i as u8);
        }
        assert_eq!(out.count, 3, "a full batch leaves at once");
        send(&mut out, &a, 2000, 0xf0);
        assert_eq!(out.count, 0, "too large to batch: sent alone");
        out.flush();
        let mut buf = vec![0u8; 4096];
        for want in &sent {
            let n = rx.recv(&mut buf).expect("every datagram arrives");
            assert_eq!(&buf[..n], &want[..]);
        }
        assert_eq!(totals.snapshot().datagrams_received, sent.len() as u64);
    }
}
