//! A tiny in-process STUN Binding responder (RFC 8489 §3: Binding request → success with
//! XOR-MAPPED-ADDRESS). The rendezvous server runs one so that a deployment needs only
//! one small server; tests and the demo run one on loopback. It answers only plain
//! Binding requests, and never with more bytes than the request plus the
//! XOR-MAPPED-ADDRESS, so it cannot be used to amplify a spoofed-source flood.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::message::{self, Parsed};
use crate::error::{Error, Result};

/// A running STUN responder. Stops when dropped.
#[derive(Debug)]
pub struct StunResponder {
    local_addr: SocketAddr,
    answered: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl StunResponder {
    /// Binds `addr` (UDP) and answers Binding requests on the current tokio runtime.
    /// `[::]:PORT` answers IPv4 and IPv6 clients alike (dual-stack).
    pub async fn bind(addr: SocketAddr) -> Result<StunResponder> {
        let socket = crate::socket::bind_udp(addr, None)
            .and_then(UdpSocket::from_std)
            .map_err(|e| Error::bind("stun responder", addr, &e))?;
        let local_addr = socket
            .local_addr()
            .map_err(|e| Error::io("stun responder: local address", &e))?;
        let answered = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(socket, answered.clone()));
        Ok(StunResponder {
            local_addr,
            answered,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many Binding requests have been answered.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for StunResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Size of an XOR-MAPPED-ADDRESS attribute (header and value) for `addr`: the most an
/// answer may exceed its request by.
fn xor_mapped_len(addr: SocketAddr) -> usize {
    4 + if addr.is_ipv4() { 8 } else { 20 }
}

async fn serve(socket: UdpSocket, answered: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors from earlier sends surface here on some platforms; keep serving.
            Err(e) => {
                tracing::trace!(error = %e, "stun responder recv");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        // Only plain Binding requests: signed checks are meant for peers, not for us.
        if let Some(Parsed::Request {
            tid,
            has_integrity: false,
            ..
        }) = message::parse(&buf[..n])
        {
            // A dual-stack socket names an IPv4 client by its IPv4-mapped address;
            // the client wants to hear its IPv4 address.
            let mapped = crate::socket::canonical(from);
            let reply = message::binding_success(tid, mapped, None);
            // Never amplify: the answer is the request's header plus where it came from.
            if !reply.is_empty()
                && reply.len() <= n + xor_mapped_len(mapped)
                && socket.send_to(&reply, from).await.is_ok()
            {
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
