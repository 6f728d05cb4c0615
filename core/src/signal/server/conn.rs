//! The connection layer: our own accept loop over hyper's HTTP/1 connection, so that
//! every connection is counted and capped per client, TLS handshakes and request heads
//! have deadlines, and shutdown can drain (stop accepting, close idle keep-alive
//! connections, abort what is left when told to).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{routes, stopped, Shared};

/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts connections until shutdown, each on its own tracked task.
pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    kill: CancellationToken,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut shutdown) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "rendezvous: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // An IPv4 client of a dual-stack listener, named as itself (limits, logs).
        let peer = crate::socket::canonical(peer);
        // Connection caps count the TCP peer: X-Forwarded-For is per request.
        let slot = match shared.connections.take(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                shared
                    .counters
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, ?why, "rendezvous: connection refused");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let kill = kill.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(tcp, peer, shared, kill).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(shared.config.header_timeout, acceptor.accept(tcp));
                    // A connection still shaking hands has no request to finish: on
                    // shutdown it is dropped instead of holding up the drain.
                    let mut shutdown = shared.shutdown.clone();
                    let stream = tokio::select! {
                        r = handshake => r,
                        _ = stopped(&mut shutdown) => return,
                        _ = kill.cancelled() => return,
                    };
                    match stream {
                        Ok(Ok(stream)) => serve_connection(stream, peer, shared, kill).await,
                        Ok(Err(e)) => {
                            shared.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "rendezvous: TLS handshake failed");
                        }
                        Err(_) => {
                            shared.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "rendezvous: TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection until the client leaves, an error or timeout
/// closes it, shutdown drains it, or `kill` aborts it.
async fn serve_connection<I>(io: I, peer: SocketAddr, shared: Arc<Shared>, kill: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown.clone();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_timeout)
        .max_buf_size(shared.config.max_header_bytes.max(8192))
        .keep_alive(true);
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(routes::dispatch(&shared, peer, req).await) }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "rendezvous: connection closed");
                }
                return;
            }
            _ = stopped(&mut shutdown), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = kill.cancelled() => return,
        }
    }
}
