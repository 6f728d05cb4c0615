//! TCP forwarding: one QUIC bidirectional stream per TCP connection, half-close and
//! reset propagated both ways.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::proto::{self, Header, Kind, Status};
use super::{Ctx, OpenError, RESET_CODE};
use crate::config::{Mapping, Proto};
use crate::stats::Meter;

/// Client role: accepts on `listener` until `token` is cancelled.
pub(crate) async fn run_listener(
    listener: TcpListener,
    mapping: Mapping,
    meter: Meter,
    ctx: Arc<Ctx>,
    token: CancellationToken,
) {
    let target = mapping.target();
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, from)) => {
                tracing::debug!(%from, %target, "tcp connection accepted");
                let (target, meter, ctx, token) =
                    (target.clone(), meter.clone(), ctx.clone(), token.clone());
                // `peer` is filled in once the connection has a tunnel to go through.
                let span = tracing::debug_span!("conn", %from, peer = tracing::field::Empty);
                crate::spawn(client_connection(tcp, target, meter, ctx, token).instrument(span));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn client_connection(
    tcp: TcpStream,
    target: String,
    meter: Meter,
    ctx: Arc<Ctx>,
    token: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + ctx.perf.tunnel_wait;
    let header = || {
        proto::encode_header(&Header {
            kind: Kind::Tcp,
            target: target.clone(),
            flow_id: None,
        })
    };
    // Give up at once (with a reset) when the mapping is removed or the engine stops
    // while this connection waits.
    let opened = tokio::select! {
        o = super::open_stream(&ctx, header, deadline) => o,
        _ = token.cancelled() => {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            meter.failed();
            return;
        }
    };
    let (send, recv) = match opened {
        Ok((conn, send, recv, Status::Ok)) => {
            tracing::Span::current().record("peer", tracing::field::display(conn.remote_address()));
            (send, recv)
        }
        Ok((_, _, _, status)) => {
            tracing::info!(%target, "peer refused connection: {}", status.describe());
            if status == Status::NotAllowed {
                meter.refused();
            }
            meter.failed();
            return;
        }
        Err(OpenError::NoTunnel) => {
            tracing::info!(%target, wait = ?ctx.perf.tunnel_wait, "no tunnel within tunnelWait; resetting the local connection");
            meter.tunnel_wait_timeout();
            meter.failed();
            // Linger 0: the close sends RST, so the local program sees a reset, not
            // an orderly end of data.
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            return;
        }
        Err(OpenError::Failed(e)) => {
            tracing::debug!(%target, error = %e, "tunnel stream failed");
            meter.failed();
            return;
        }
    };
    meter.opened();
    tracing::debug!(%target, "tcp connection forwarded");
    pipe(tcp, send, recv, ctx.perf.tcp_buffer_size, &meter, &token).await;
    meter.closed();
}

/// Server role: a TCP stream whose header has been read.
pub(crate) async fn serve(
    mut send: SendStream,
    recv: RecvStream,
    header: Header,
    meter: Meter,
    ctx: Arc<Ctx>,
    token: CancellationToken,
) {
    let addr = match super::resolve_allowed(&ctx.allow, Proto::Tcp, &header.target).await {
        Ok(a) => a,
        Err(status) => {
            tracing::info!(target = %header.target, "refused: {}", status.describe());
            if status == Status::NotAllowed {
                meter.refused();
            }
            meter.failed();
            let _ = send.write_all(&[status as u8]).await;
            let _ = send.finish();
            return;
        }
    };
    let tcp = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        other => {
            let reason = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            tracing::info!(%addr, %reason, "connect to target failed");
            meter.failed();
            let _ = send.write_all(&[Status::ConnectFailed as u8]).await;
            let _ = send.finish();
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    if send.write_all(&[Status::Ok as u8]).await.is_err() {
        meter.failed();
        return;
    }
    meter.opened();
    tracing::debug!(%addr, "connected to the target");
    pipe(tcp, send, recv, ctx.perf.tcp_buffer_size, &meter, &token).await;
    meter.closed();
}

/// Copies both ways until both directions are finished. A FIN becomes a stream finish
/// and back; a reset on either side becomes a reset on the other.
async fn pipe(
    tcp: TcpStream,
    mut send: SendStream,
    mut recv: RecvStream,
    buf_size: usize,
    meter: &Meter,
    token: &CancellationToken,
) {
    let (r, w) = tcp.into_split();
    let both = async {
        tokio::try_join!(
            tcp_to_quic(&r, &mut send, buf_size, meter),
            quic_to_tcp(&mut recv, &w, buf_size, meter)
        )
    };
    let outcome = tokio::select! {
        _ = token.cancelled() => Err(io::Error::other("mapping removed or engine stopped")),
        r = both => r.map(|_| ()),
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "forwarded connection reset");
        let _ = send.reset(RESET_CODE.into());
        let _ = recv.stop(RESET_CODE.into());
        // Reunite first: dropping a write half alone would send FIN before the RST.
        // Linger 0 then makes the close send RST.
        if let Ok(tcp) = r.reunite(w) {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
        }
    }
}

/// The first read of a connection asks for this much; each read that fills its buffer
/// doubles the next, up to `tcpBufferSize`.
const FIRST_READ: usize = 16 * 1024;

/// Reads up to this size are copied into a buffer of their own size.
const COPY_BELOW: usize = 4 * 1024;

async fn tcp_to_quic(
    r: &OwnedReadHalf,
    send: &mut SendStream,
    buf_size: usize,
    meter: &Meter,
) -> io::Result<()> {
    // Bulk reads land in a buffer of their own that is handed to quinn as it is
    // (`write_chunk`): no copy between the socket and the QUIC stream. Small reads
    // (interactive traffic) are copied out at their size, and their buffer is let go:
    // quinn would otherwise hold a mostly empty buffer of `want` bytes for each of
    // them until the peer acks it. The buffer is only allocated once the socket is
    // readable, so an idle connection holds none (#19: a buffer per connection was
    // most of a peer's memory after bursts of connections).
    let mut buf = BytesMut::new();
    let mut want = FIRST_READ.min(buf_size);
    loop {
        r.readable().await?;
        buf.reserve(want);
        let n = match r.try_read_buf(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            let _ = send.finish();
            return Ok(());
        }
        let chunk = if n < COPY_BELOW {
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            buf = BytesMut::new();
            chunk
        } else {
            // The whole buffer goes: a remainder kept here would keep its allocation
            // alive while the connection idles.
            std::mem::take(&mut buf).freeze()
        };
        if n >= want {
            want = (want * 2).min(buf_size);
        }
        send.write_chunk(chunk)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e))?;
        meter.sent(n);
    }
}

async fn quic_to_tcp(
    recv: &mut RecvStream,
    w: &OwnedWriteHalf,
    buf_size: usize,
    meter: &Meter,
) -> io::Result<()> {
    // quinn's own buffers (about one packet each), written to the socket with one
    // writev per batch instead of being copied into a buffer of ours first.
    let mut chunks: Vec<Bytes> = vec![Bytes::new(); (buf_size / 1024).clamp(1, MAX_CHUNKS)];
    loop {
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(k)) => {
                // Counted as received from the tunnel before it is handed on, so a
                // reader that saw the bytes also sees them counted.
                meter.received(chunks[..k].iter().map(Bytes::len).sum());
                write_chunks(w, &mut chunks[..k]).await?;
            }
            Ok(None) => {
                // Half-close: FIN toward the local side, keep reading it.
                let _ = socket2::SockRef::from(w.as_ref()).shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::ConnectionReset, e)),
        }
    }
}

/// Most chunks taken from quinn per batch (and so per `writev`).
const MAX_CHUNKS: usize = 64;

/// Writes every chunk, in order, with vectored writes.
async fn write_chunks(w: &OwnedWriteHalf, mut chunks: &mut [Bytes]) -> io::Result<()> {
    while !chunks.is_empty() {
        w.writable().await?;
        // On the stack: this runs once per batch of packets.
        let mut slices = [io::IoSlice::new(&[]); MAX_CHUNKS];
        let k = chunks.len().min(MAX_CHUNKS);
        for (slice, chunk) in slices.iter_mut().zip(&chunks[..k]) {
            *slice = io::IoSlice::new(chunk);
        }
        match w.try_write_vectored(&slices[..k]) {
            Ok(mut n) => {
                while n > 0 {
                    let first = &mut chunks[0];
                    if n >= first.len() {
                        n -= first.len();
                        chunks = &mut chunks[1..];
                    } else {
                        first.advance(n);
                        n = 0;
                    }
                }
                // Chunks written whole are done; an empty one can be skipped too.
                while chunks.first().is_some_and(Bytes::is_empty) {
                    chunks = &mut chunks[1..];
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads a stream header (bounded by size and time).
pub(crate) async fn read_header(recv: &mut RecvStream) -> Result<Header, Status> {
    let read = async {
        let mut buf = vec![0u8; 4];
        recv.read_exact(&mut buf)
            .await
            .map_err(|_| Status::BadHeader)?;
        loop {
            match proto::decode_header(&buf) {
                Ok((h, _)) => return Ok(h),
                Err(proto::HeaderError::Need(n)) => {
                    let have = buf.len();
                    buf.resize(n, 0);
                    recv.read_exact(&mut buf[have..])
                        .await
                        .map_err(|_| Status::BadHeader)?;
                }
                Err(proto::HeaderError::Bad(why)) => {
                    tracing::debug!(why, "bad stream header");
                    return Err(Status::BadHeader);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or(Err(Status::BadHeader))
}

/// Server role: handles one incoming stream of either kind.
pub(crate) async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    conn: quinn::Connection,
    ctx: Arc<Ctx>,
    token: CancellationToken,
) {
    let meter = Meter::new(None, ctx.totals.clone());
    let header = read_header(&mut recv).await;
    // The server's side of a mapping: what the client asked to reach.
    let span = match &header {
        Ok(h) => {
            tracing::info_span!("stream", mapping = %format_args!("{}:{}", h.kind.as_str(), h.target))
        }
        Err(_) => tracing::Span::none(),
    };
    match header {
        Ok(h) if h.kind == Kind::Tcp => {
            serve(send, recv, h, meter, ctx, token)
                .instrument(span)
                .await
        }
        Ok(h) => {
            super::udp::serve_flow(send, recv, h, conn, meter, ctx, token)
                .instrument(span)
                .await
        }
        Err(status) => {
            let _ = send.write_all(&[status as u8]).await;
            let _ = send.finish();
        }
    }
}
