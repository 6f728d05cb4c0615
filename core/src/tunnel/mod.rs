//! The QUIC tunnel: our identity (a fresh self-signed certificate per engine), mutual
//! certificate-fingerprint pinning, and quinn configuration.
//!
//! Neither side trusts any CA. Each side learns the peer's certificate fingerprint from
//! the peer's HMAC-authenticated offer and accepts exactly that certificate; the TLS
//! handshake signatures are still verified, so holding the certificate is not enough,
//! one must hold its key.

pub mod identity;

pub use identity::{Fingerprint, Identity, PinnedPeer};

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::config::Performance;
use crate::error::{Error, Result};
use crate::signal::proto::Role;

/// ALPN of the stunfwd tunnel protocol, version 2 (version 1 had no welcome stream: a
/// version-2 client would wait for a welcome that a version-1 server never sends, so
/// the two refuse each other in the TLS handshake instead).
pub const ALPN: &[u8] = b"stunfwd/2";
/// The server name both sides use (certificates are pinned, so it carries no meaning).
pub const SERVER_NAME: &str = "stunfwd";

/// Streams a peer may open to us at first. quinn keeps a table entry for every stream
/// it allows the peer (two hash maps sized by the limit, from the handshake on), so the
/// old fixed limit of 8,192 cost each connection about 700 KB idle: 70 MB of a server
/// with 100 clients. The server starts here and raises the limit as its client's
/// streams fill it ([`StreamBudget`]).
pub(crate) const INITIAL_STREAMS: u32 = 128;

/// Transport settings for `role` (the QUIC role: the stunfwd server accepts the
/// streams, the client opens them).
pub(crate) fn transport_config(perf: &Performance, role: Role) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(perf.keep_alive));
    // Idle timeouts beyond the VarInt range are impossible with validated configs.
    if let Ok(idle) = quinn::IdleTimeout::try_from(perf.idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    // Each TCP connection and each UDP flow is a bidirectional stream the client
    // opens; the server opens only its welcome (one unidirectional stream).
    let bidi = match role {
        Role::Server => INITIAL_STREAMS.min(stream_cap(perf)),
        Role::Client => 0,
    };
    t.max_concurrent_bidi_streams(bidi.into());
    t.max_concurrent_uni_streams(8u32.into());
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(4 << 20);
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((32u32 << 20).into());
    t.send_window(32 << 20);
    t.initial_rtt(Duration::from_millis(100));
    t
}

/// The most streams a server lets one client have open at once: room for 4,096 TCP
/// connections beside the UDP flows it lets one client have.
pub(crate) fn stream_cap(perf: &Performance) -> u32 {
    4096 + perf.max_udp_flows_per_client.min(65_536) as u32
}

/// A server's stream limit for one client, raised as the client's streams fill it:
/// doubled whenever the streams open reach a quarter of it, up to [`stream_cap`]. A
/// client that opens a stream past the limit waits a round trip for the raise (quinn's
/// `open_bi` waits for the peer's MAX_STREAMS); the limit is never lowered, since
/// quinn's tables do not shrink either.
///
/// A quarter, not a half: quinn frees a stream's credit only once its FIN is acked
/// (and hands credit back in steps of an eighth of the limit), about a round trip after
/// our task for it ended, so under a steady churn of short connections quinn counts
/// more streams open than we do.
///
/// One task calls [`StreamBudget::opened`] (the connection's accept loop): the raise is
/// a plain read-modify-write, and two callers could set quinn's limit out of order.
pub(crate) struct StreamBudget {
    conn: quinn::Connection,
    open: AtomicU32,
    limit: AtomicU32,
    cap: u32,
}

impl StreamBudget {
    /// The budget of a server's connection `conn` (configured by [`transport_config`]).
    pub(crate) fn new(conn: quinn::Connection, perf: &Performance) -> Arc<Self> {
        let cap = stream_cap(perf);
        Arc::new(Self {
            conn,
            open: AtomicU32::new(0),
            limit: AtomicU32::new(INITIAL_STREAMS.min(cap)),
            cap,
        })
    }

    /// Counts a stream the client opened, until the guard is dropped. Called by the
    /// connection's accept loop only (see the type's docs).
    pub(crate) fn opened(self: &Arc<Self>) -> StreamGuard {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let limit = self.limit.load(Ordering::Acquire);
        if open.saturating_mul(4) >= limit && limit < self.cap {
            let raised = limit.saturating_mul(2).min(self.cap);
            self.limit.store(raised, Ordering::Release);
            self.conn.set_max_concurrent_bi_streams(raised.into());
        }
        StreamGuard(self.clone())
    }
}

/// One open stream of a [`StreamBudget`].
pub(crate) struct StreamGuard(Arc<StreamBudget>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Endpoint settings. QUIC-bit greasing (RFC 9287) is off: with it, peers may clear the
/// fixed bit, and a short-header packet can then start with a byte below 4 — which the
/// shared socket classifies as STUN (RFC 7983) and takes away from QUIC. That silently
/// lost about one packet in 32.
pub(crate) fn endpoint_config() -> quinn::EndpointConfig {
    let mut cfg = quinn::EndpointConfig::default();
    cfg.grease_quic_bit(false);
    cfg
}

/// rustls' ring provider, the one crypto backend we build with.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client-role QUIC config that accepts only `peer`'s certificate.
pub(crate) fn client_config(
    identity: &Identity,
    peer: Arc<PinnedPeer>,
    perf: &Performance,
) -> Result<quinn::ClientConfig> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tunnel(format!("tls setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(peer)
        .with_client_auth_cert(vec![identity.cert_der()], identity.key_der())
        .map_err(|e| Error::Tunnel(format!("tls client identity: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Tunnel(format!("quic client config: {e}")))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config(perf, Role::Client)));
    Ok(cfg)
}

/// Server-role QUIC config that demands a client certificate pinned by `peer`.
pub(crate) fn server_config(
    identity: &Identity,
    peer: Arc<PinnedPeer>,
    perf: &Performance,
) -> Result<quinn::ServerConfig> {
    let provider = provider();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tunnel(format!("tls setup: {e}")))?
        .with_client_cert_verifier(peer)
        .with_single_cert(vec![identity.cert_der()], identity.key_der())
        .map_err(|e| Error::Tunnel(format!("tls server identity: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Tunnel(format!("quic server config: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config(perf, Role::Server)));
    // Follow a client whose NAT re-mapped it, or that moved from the relay to a direct
    // path: peers are authenticated by certificate, not by address.
    cfg.migration(true);
    // Packets of a handshake held while we read the peer's offer (`accept_loop`) are
    // buffered; a client's Initials are a few KiB, so bound what a flood can pin.
    cfg.incoming_buffer_size(64 * 1024);
    cfg.incoming_buffer_size_total(1024 * 1024);
    Ok(cfg)
}

/// Version byte of the server's welcome.
const WELCOME_VERSION: u8 = 1;
/// Status byte of a welcome that accepts the client.
const WELCOME_ACCEPTED: u8 = 0;
/// Largest welcome read (version, status and a UTF-8 reason).
const WELCOME_MAX: usize = 256;

/// Server role: tells the client it is accepted, on the connection's first
/// unidirectional stream: `[version = 1][status = 0]`, then FIN (`docs/protocol.md`).
pub(crate) async fn send_welcome(conn: &quinn::Connection) -> std::result::Result<(), String> {
    let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
    s.write_all(&[WELCOME_VERSION, WELCOME_ACCEPTED])
        .await
        .map_err(|e| e.to_string())?;
    s.finish().map_err(|e| e.to_string())
}

/// Client role: waits for the server's welcome. In TLS 1.3 the client's handshake
/// completes one flight before the server has verified the client's certificate, so
/// only the welcome shows that both sides have authenticated each other. A server that
/// refused us closes the connection instead, and its reason is returned.
pub(crate) async fn await_welcome(
    conn: &quinn::Connection,
) -> std::result::Result<(), WelcomeError> {
    let mut s = conn.accept_uni().await.map_err(WelcomeError::Lost)?;
    let data = s
        .read_to_end(WELCOME_MAX)
        .await
        .map_err(|e| WelcomeError::Other(format!("reading the welcome: {e}")))?;
    parse_welcome(&data).map_err(WelcomeError::Other)
}

/// Why no welcome came.
#[derive(Debug)]
pub(crate) enum WelcomeError {
    /// The connection ended (a server that refused our certificate closes it).
    Lost(quinn::ConnectionError),
    /// A bad or refusing welcome.
    Other(String),
}

impl std::fmt::Display for WelcomeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WelcomeError::Lost(e) => e.fmt(f),
            WelcomeError::Other(s) => f.write_str(s),
        }
    }
}

impl WelcomeError {
    /// True when the peer refused our certificate (see [`is_auth_failure`]).
    pub(crate) fn is_auth_failure(&self) -> bool {
        matches!(self, WelcomeError::Lost(e) if is_auth_failure(e))
    }
}

/// True when a handshake failed because one side did not accept the other's
/// certificate: the TLS alerts a certificate check ends in (ours, or the peer's
/// closing the connection with one).
pub(crate) fn is_auth_failure(e: &quinn::ConnectionError) -> bool {
    use rustls::AlertDescription as A;
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    [
        A::BadCertificate,
        A::CertificateUnknown,
        A::HandshakeFailure,
        A::AccessDenied,
        A::DecryptError,
    ]
    .into_iter()
    .any(|alert| code == quinn::TransportErrorCode::crypto(u8::from(alert)))
}

/// Checks a welcome's bytes.
fn parse_welcome(data: &[u8]) -> std::result::Result<(), String> {
    match data {
        [WELCOME_VERSION, WELCOME_ACCEPTED, ..] => Ok(()),
        [WELCOME_VERSION, status, reason @ ..] => Err(format!(
            "refused (status {status}): {}",
            String::from_utf8_lossy(reason)
        )),
        [WELCOME_VERSION] => Err("truncated welcome".into()),
        [v, ..] => Err(format!(
            "welcome version {v}, expected {WELCOME_VERSION} (peer runs another stunfwd version)"
        )),
        [] => Err("empty welcome".into()),
    }
}

/// The fingerprint of the certificate the peer of `conn` presented.
pub(crate) fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.first().map(|c| Fingerprint::of(c))
}

/// For tests: a server and a client config that trust each other (each pins the
/// other's fingerprint), with default performance settings.
#[cfg(test)]
pub(crate) fn pinned_configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let (ids, idc) = (
        Identity::generate().expect("id"),
        Identity::generate().expect("id"),
    );
    let (ps, pc) = (PinnedPeer::new(), PinnedPeer::new());
    ps.set(Some(idc.fingerprint()));
    pc.set(Some(ids.fingerprint()));
    let perf = Performance::default();
    (
        server_config(&ids, ps, &perf).expect("server config"),
        client_config(&idc, pc, &perf).expect("client config"),
    )
}

#[cfg(test)]
mod tests {
    use super::parse_welcome;

    #[test]
    fn welcome_bytes() {
        assert_eq!(parse_welcome(&[1, 0]), Ok(()));
        assert_eq!(parse_welcome(&[1, 0, b'x']), Ok(()));
        let refused = parse_welcome(b"\x01\x07room full").unwrap_err();
        assert!(
            refused.contains("status 7") && refused.contains("room full"),
            "{refused}"
        );
        assert!(parse_welcome(&[2, 0]).unwrap_err().contains("version 2"));
        assert!(parse_welcome(&[]).is_err());
        assert!(parse_welcome(&[1]).unwrap_err().contains("truncated"));
    }
}
