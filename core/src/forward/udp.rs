//! UDP forwarding. Each client source address is a flow: one QUIC bidirectional stream
//! (header, status, then oversized datagrams as `[len u32][payload]`) plus QUIC DATAGRAM
//! frames `[flow id varint][payload]` for everything that fits. Nothing is truncated.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use quinn::udp::RecvMeta;
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dispatch::deliver;
use super::flows::{
    insert_flow, insert_flow_capped, remove_flow, table, FlowSink, IdleClock, Refusals, Refused,
};
use super::local::{LocalUdp, RECV_BATCH};
use super::proto::{self, Header, Kind, Status, MAX_DATAGRAM};
use super::{Ctx, OpenError};
use crate::config::{Mapping, Proto};
use crate::stats::Meter;
use crate::sync::lock;

/// Sends one datagram of flow `id` to the peer: as a DATAGRAM frame when it fits, else
/// framed on the flow's stream.
async fn send_to_peer(
    conn: &quinn::Connection,
    stream: &mut SendStream,
    id: u64,
    payload: &[u8],
) -> Result<(), ()> {
    send_frame_to_peer(
        conn,
        stream,
        proto::encode_datagram(id, payload),
        payload.len(),
    )
    .await
}

/// [`send_to_peer`] for a datagram already encoded as a DATAGRAM frame whose last
/// `payload_len` bytes are the payload.
async fn send_frame_to_peer(
    conn: &quinn::Connection,
    stream: &mut SendStream,
    frame: Bytes,
    payload_len: usize,
) -> Result<(), ()> {
    // Refused (TooLarge, UnsupportedByPeer) exactly when it does not fit in a
    // DATAGRAM frame: asking `max_datagram_size` first would lock the connection twice.
    // The clone is a reference count, kept for that case.
    if conn.send_datagram(frame.clone()).is_ok() {
        return Ok(());
    }
    let payload = &frame[frame.len() - payload_len..];
    let mut framed = Vec::with_capacity(4 + payload.len());
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    stream.write_all(&framed).await.map_err(|_| ())
}

thread_local! {
    /// The receive buffer of the server's flow sockets: one per runtime thread, where a
    /// buffer per flow held 64 KiB for the flow's whole life, idle or not (#19: 2,000
    /// flows cost 250 MB).
    static FLOW_RECV: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; 65_536].into_boxed_slice());
}

/// Waits for a datagram on the connected `socket` and returns it encoded as flow `id`'s
/// DATAGRAM frame, with the payload's length. Nothing is held while it waits.
async fn recv_frame(socket: &LocalUdp, id: u64) -> std::io::Result<(Bytes, usize)> {
    let socket = socket.io();
    loop {
        socket.readable().await?;
        let got = FLOW_RECV.with(|buf| {
            let mut buf = buf.borrow_mut();
            match socket.try_recv(&mut buf) {
                Ok(n) => Ok(Some((proto::encode_datagram(id, &buf[..n]), n))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        if let Some(frame) = got {
            return Ok(frame);
        }
    }
}

/// Reads `[len u32][payload]` frames from a flow stream and delivers them.
async fn read_stream_frames(mut recv: RecvStream, sink: FlowSink) {
    loop {
        let mut len = [0u8; 4];
        if recv.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_DATAGRAM {
            let _ = recv.stop(super::RESET_CODE.into());
            return;
        }
        // Sized to the frame, allocated when one comes: only datagrams too large for
        // a DATAGRAM frame come this way, and a buffer held per flow would cost 64 KiB
        // for each idle flow.
        let mut buf = vec![0u8; len];
        if recv.read_exact(&mut buf).await.is_err() {
            return;
        }
        deliver(&sink, &buf);
    }
}

thread_local! {
    /// The receive buffers of the mappings' listeners: one set per runtime thread. A
    /// datagram may be as large as 64 KiB, and a batch is [`RECV_BATCH`] of them; pages
    /// are only touched as far as datagrams fill them.
    static LISTEN_RECV: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; RECV_BATCH * 65_536].into_boxed_slice());
}

/// Client role: receives on the mapping's socket until `token` is cancelled.
pub(crate) async fn run_listener(
    socket: Arc<LocalUdp>,
    mapping: Mapping,
    meter: Meter,
    ctx: Arc<Ctx>,
    token: CancellationToken,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<SocketAddr>();
    let mut listener = Listener {
        target: mapping.target(),
        cap: ctx.perf.max_udp_flows_per_mapping,
        refusals: Refusals::default(),
        flows: HashMap::new(),
        done_tx,
        socket,
        meter,
        ctx,
        token,
    };
    let mut meta = [RecvMeta::default(); RECV_BATCH];
    loop {
        tokio::select! {
            _ = listener.token.cancelled() => return,
            Some(src) = done_rx.recv() => {
                if listener.flows.get(&src).is_some_and(|f| f.tx.is_closed()) {
                    listener.flows.remove(&src);
                }
                continue;
            }
            r = listener.socket.io().readable() => if let Err(e) = r {
                tracing::trace!(error = %e, "udp recv");
                continue;
            },
        };
        // Everything queued, RECV_BATCH datagrams per system call, handed on without
        // waiting: nothing here awaits.
        LISTEN_RECV.with(|storage| {
            let mut storage = storage.borrow_mut();
            loop {
                let mut bufs: Vec<IoSliceMut<'_>> =
                    storage.chunks_mut(65_536).map(IoSliceMut::new).collect();
                let n = match listener.socket.try_recv_batch(&mut bufs, &mut meta) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        tracing::trace!(error = %e, "udp recv");
                        return;
                    }
                };
                for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                    // One datagram per buffer (no GRO on this socket), but a stride is
                    // honoured should the kernel run several together.
                    let stride = m.stride.clamp(1, m.len.max(1));
                    if m.len == 0 {
                        listener.on_datagram(m.addr, &[]);
                    }
                    for d in buf[..m.len].chunks(stride) {
                        listener.on_datagram(m.addr, d);
                    }
                }
                if n < RECV_BATCH {
                    return;
                }
            }
        });
        // A read of the socket's readiness costs the task nothing of tokio's budget: under
        // a steady stream this loop would never yield, and the tunnel's connection driver
        // (woken on this thread) would wait.
        tokio::task::consume_budget().await;
    }
}

/// A UDP mapping's listener: its flows by source address.
struct Listener {
    target: String,
    cap: usize,
    refusals: Refusals,
    flows: HashMap<SocketAddr, FlowEntry>,
    done_tx: mpsc::UnboundedSender<SocketAddr>,
    socket: Arc<LocalUdp>,
    meter: Meter,
    ctx: Arc<Ctx>,
    token: CancellationToken,
}

impl Listener {
    /// One datagram from the local source `src`: into its flow, opened if new.
    fn on_datagram(&mut self, src: SocketAddr, data: &[u8]) {
        let n = data.len();
        if self.flows.len() >= self.cap && !self.flows.contains_key(&src) {
            // Counted once per source per refusal period, not per datagram.
            if !self.refusals.is_new(src) {
                return;
            }
            self.meter.flow_refused();
            if let Some(refused) = self.refusals.note() {
                let (cap, target) = (self.cap, &self.target);
                tracing::warn!(
                    %src, %target, refused,
                    "udp flow refused: this mapping already carries {cap} flows \
                     (performance.maxUdpFlowsPerMapping); its datagrams are dropped until one \
                     goes idle for udpFlowTimeout"
                );
            }
            return;
        }
        let entry = self.flows.entry(src).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(1024);
            let open = Arc::new(OnceLock::new());
            let flow = ClientFlow {
                src,
                socket: self.socket.clone(),
                target: self.target.clone(),
                meter: self.meter.clone(),
                ctx: self.ctx.clone(),
                token: self.token.clone(),
                open: open.clone(),
            };
            let done = self.done_tx.clone();
            // `peer` is filled in once the flow has a tunnel to go through.
            let span = tracing::debug_span!("flow", %src, peer = tracing::field::Empty);
            crate::spawn(
                async move {
                    // Sent however the task ends (a panic too), so the entry and its
                    // place under the cap are freed.
                    let _done = DoneGuard(done, src);
                    flow.run(rx).await;
                }
                .instrument(span),
            );
            FlowEntry { tx, open }
        });
        // Fast path: once the flow is open, a datagram that fits goes into the tunnel
        // from here, without a hop through the flow's task.
        // Only with nothing queued for the task, so that datagrams queued while the flow
        // opened are not overtaken.
        let queued = entry.tx.capacity() < entry.tx.max_capacity();
        if let Some(open) = entry.open.get().filter(|_| !queued) {
            if open.send(data) {
                self.meter.datagram_sent(n);
                return;
            }
        }
        if entry.tx.try_send(Bytes::copy_from_slice(data)).is_err() {
            tracing::trace!(%src, "udp flow queue full or closed; datagram dropped");
        }
    }
}

/// How long a client flow the peer refused for its flow cap keeps its source's
/// datagrams from opening another.
const REFUSED_HOLD: Duration = Duration::from_secs(1);

/// Tells the listener, when dropped, that the flow of this source has ended.
struct DoneGuard(mpsc::UnboundedSender<SocketAddr>, SocketAddr);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// A client flow as its mapping's listener sees it.
struct FlowEntry {
    /// To the flow's task: datagrams before it is open, and those too big for a DATAGRAM
    /// frame (they go on the flow's stream).
    tx: mpsc::Sender<Bytes>,
    /// Set by the flow's task once the peer accepted it.
    open: Arc<OnceLock<OpenFlow>>,
}

/// What the listener needs to send a flow's datagrams itself.
struct OpenFlow {
    conn: quinn::Connection,
    id: u64,
    idle: Arc<IdleClock>,
    /// Cleared when the flow's task ends: from then on datagrams wait for a new flow.
    live: AtomicBool,
}

impl OpenFlow {
    /// Sends `payload` as a DATAGRAM frame; false when it does not fit or the
    /// connection is gone (the flow's task then decides).
    fn send(&self, payload: &[u8]) -> bool {
        if !self.live.load(Ordering::Relaxed) {
            return false;
        }
        // Refused exactly when it does not fit (see `send_to_peer`).
        if self
            .conn
            .send_datagram(proto::encode_datagram(self.id, payload))
            .is_ok()
        {
            self.idle.touch();
            return true;
        }
        false
    }
}

struct ClientFlow {
    src: SocketAddr,
    socket: Arc<LocalUdp>,
    target: String,
    meter: Meter,
    ctx: Arc<Ctx>,
    token: CancellationToken,
    open: Arc<OnceLock<OpenFlow>>,
}

impl ClientFlow {
    async fn run(self, mut rx: mpsc::Receiver<Bytes>) {
        let deadline = Instant::now() + self.ctx.perf.tunnel_wait;
        // A new flow id per attempt: the peer may still hold the id of an attempt
        // whose tunnel was lost.
        let mut id = 0;
        let header = || {
            id = self.ctx.next_flow.fetch_add(1, Ordering::Relaxed);
            proto::encode_header(&Header {
                kind: Kind::Udp,
                target: self.target.clone(),
                flow_id: Some(id),
            })
        };
        let opened = tokio::select! {
            o = super::open_stream(&self.ctx, header, deadline) => o,
            _ = self.token.cancelled() => {
                self.meter.failed();
                return;
            }
        };
        let (conn, mut send, recv) = match opened {
            Ok((conn, s, r, Status::Ok)) => (conn, s, r),
            Ok((_, _, _, status)) => {
                tracing::info!(target = %self.target, "udp flow refused: {}", status.describe());
                if status == Status::NotAllowed {
                    self.meter.refused();
                }
                if status == Status::TooManyFlows {
                    self.meter.flow_refused();
                    // The flow's entry stays a while, so that this source's next
                    // datagrams are dropped here instead of each opening a stream the
                    // peer refuses again.
                    tokio::select! {
                        _ = tokio::time::sleep(REFUSED_HOLD) => {}
                        _ = self.token.cancelled() => {}
                    }
                }
                self.meter.failed();
                return;
            }
            Err(OpenError::NoTunnel) => {
                tracing::info!(target = %self.target, wait = ?self.ctx.perf.tunnel_wait, "no tunnel within tunnelWait; dropping the flow's datagrams");
                self.meter.tunnel_wait_timeout();
                self.meter.failed();
                return;
            }
            Err(OpenError::Failed(e)) => {
                tracing::debug!(target = %self.target, error = %e, "udp flow stream failed");
                self.meter.failed();
                return;
            }
        };
        tracing::Span::current().record("peer", tracing::field::display(conn.remote_address()));
        let idle = IdleClock::new();
        let sink = FlowSink::new(
            self.socket.clone(),
            Some(self.src),
            self.meter.clone(),
            idle.clone(),
        );
        let own = insert_flow(&self.ctx.flows, id, sink.clone());
        let _ = self.open.set(OpenFlow {
            conn: conn.clone(),
            id,
            idle: idle.clone(),
            live: true.into(),
        });
        self.meter.opened();
        tracing::debug!(target = %self.target, id, "udp flow opened");
        let mut reader = crate::spawn(read_stream_frames(recv, sink));
        let timeout = self.ctx.perf.udp_flow_timeout;
        loop {
            let wait = timeout.saturating_sub(idle.idle_for());
            tokio::select! {
                _ = self.token.cancelled() => break,
                _ = &mut reader => break,
                _ = tokio::time::sleep(wait) => {
                    if idle.idle_for() >= timeout {
                        tracing::debug!(src = %self.src, "udp flow idle; closing");
                        break;
                    }
                }
                d = rx.recv() => {
                    let Some(d) = d else { break };
                    idle.touch();
                    if send_to_peer(&conn, &mut send, id, &d).await.is_err() {
                        break;
                    }
                    self.meter.datagram_sent(d.len());
                }
            }
        }
        if let Some(open) = self.open.get() {
            open.live.store(false, Ordering::Relaxed);
        }
        reader.abort();
        remove_flow(&self.ctx.flows, id, &own);
        let _ = send.finish();
        self.meter.closed();
    }
}

/// Server role: refuses a flow beyond `maxUdpFlowsPerClient`: counts it, logs it (at
/// most once per [`Refusals::EVERY`]) and tells the client why.
async fn refuse_flow(mut send: SendStream, header: &Header, meter: &Meter, ctx: &Ctx) {
    meter.flow_refused();
    meter.failed();
    let note = lock(&ctx.flow_refusals).note();
    if let Some(n) = note {
        tracing::warn!(
            target = %header.target, refused = n,
            "udp flow refused: this client already has {} flows open \
             (performance.maxUdpFlowsPerClient)",
            ctx.perf.max_udp_flows_per_client
        );
    }
    let _ = send.write_all(&[Status::TooManyFlows as u8]).await;
    let _ = send.finish();
}

/// Server role: a UDP flow stream whose header has been read.
pub(crate) async fn serve_flow(
    mut send: SendStream,
    recv: RecvStream,
    header: Header,
    conn: quinn::Connection,
    meter: Meter,
    ctx: Arc<Ctx>,
    token: CancellationToken,
) {
    let Some(id) = header.flow_id else {
        let _ = send.write_all(&[Status::BadHeader as u8]).await;
        return;
    };
    // Checked before any lookup or socket, and again when the flow is registered.
    let cap = ctx.perf.max_udp_flows_per_client;
    if table(&ctx.flows).len() >= cap {
        refuse_flow(send, &header, &meter, &ctx).await;
        return;
    }
    let addr = match super::resolve_allowed(&ctx.allow, Proto::Udp, &header.target).await {
        Ok(a) => a,
        Err(status) => {
            tracing::info!(target = %header.target, "udp flow refused: {}", status.describe());
            if status == Status::NotAllowed {
                meter.refused();
            }
            meter.failed();
            let _ = send.write_all(&[status as u8]).await;
            let _ = send.finish();
            return;
        }
    };
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match LocalUdp::bind(bind, ctx.perf.udp_buffer_size) {
        Ok(s) if s.connect(addr).await.is_ok() => Arc::new(s),
        _ => {
            meter.failed();
            let _ = send.write_all(&[Status::ConnectFailed as u8]).await;
            let _ = send.finish();
            return;
        }
    };
    let idle = IdleClock::new();
    let sink = FlowSink::new(socket.clone(), None, meter.clone(), idle.clone());
    // Registered before the client hears Ok: its first datagram may follow at once.
    let own = match insert_flow_capped(&ctx.flows, id, sink.clone(), cap) {
        Ok(own) => own,
        Err(Refused::Full) => {
            refuse_flow(send, &header, &meter, &ctx).await;
            return;
        }
        Err(Refused::Duplicate) => {
            tracing::debug!(id, "udp flow id already in use; refused");
            meter.failed();
            let _ = send.write_all(&[Status::BadHeader as u8]).await;
            let _ = send.finish();
            return;
        }
    };
    if send.write_all(&[Status::Ok as u8]).await.is_err() {
        remove_flow(&ctx.flows, id, &own);
        meter.failed();
        return;
    }
    meter.opened();
    let mut reader = crate::spawn(read_stream_frames(recv, sink));
    let timeout = ctx.perf.udp_flow_timeout;
    loop {
        let wait = timeout.saturating_sub(idle.idle_for());
        tokio::select! {
            _ = token.cancelled() => break,
            _ = &mut reader => break,
            _ = tokio::time::sleep(wait) => {
                if idle.idle_for() >= timeout {
                    break;
                }
            }
            r = recv_frame(&socket, id) => {
                // An error is the target's ICMP (port unreachable): keep the flow.
                let Ok((frame, n)) = r else { continue };
                idle.touch();
                if send_frame_to_peer(&conn, &mut send, frame, n).await.is_err() {
                    break;
                }
                meter.datagram_sent(n);
            }
        }
    }
    reader.abort();
    remove_flow(&ctx.flows, id, &own);
    let _ = send.finish();
    meter.closed();
}
