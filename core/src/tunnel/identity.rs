//! Engine identity and certificate pinning.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::sync::{read, write};

/// SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of `der`.
    pub fn of(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Lowercase hex, as carried in offers.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Fingerprint(out))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..16])
    }
}

/// A self-signed certificate and its key, generated fresh for every engine (a server
/// engine's sessions, one per client, share it).
#[derive(Clone)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Generates an ECDSA P-256 key and a self-signed certificate for it.
    pub fn generate() -> Result<Self> {
        let ck = rcgen::generate_simple_self_signed(vec![super::SERVER_NAME.to_owned()])
            .map_err(|e| Error::Tunnel(format!("cannot generate certificate: {e}")))?;
        let cert = ck.cert.der().clone();
        let fingerprint = Fingerprint::of(&cert);
        Ok(Identity {
            cert,
            key: ck.signing_key.serialize_der(),
            fingerprint,
        })
    }

    /// Our certificate fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub(crate) fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// The peer certificate we accept: the fingerprint from the peer's authenticated offer.
/// Used as both the client's server-certificate verifier and the server's client-certificate
/// verifier. Until a fingerprint is set, every certificate is refused.
#[derive(Debug)]
pub struct PinnedPeer {
    expected: RwLock<Option<Fingerprint>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    pinned: tokio::sync::Notify,
}

impl PinnedPeer {
    /// A verifier that accepts nothing until [`PinnedPeer::set`] is called.
    pub fn new() -> Arc<Self> {
        Arc::new(PinnedPeer {
            expected: RwLock::new(None),
            provider: super::provider(),
            pinned: tokio::sync::Notify::new(),
        })
    }

    /// Pins `fp` (from a verified offer).
    pub fn set(&self, fp: Option<Fingerprint>) {
        *write(&self.expected) = fp;
        if fp.is_some() {
            self.pinned.notify_waiters();
        }
    }

    /// Waits up to `limit` until a fingerprint is pinned; true when one is.
    pub async fn wait_pinned(&self, limit: std::time::Duration) -> bool {
        let wait = async {
            loop {
                // Registered before the check, so a `set` in between is not missed.
                let notified = self.pinned.notified();
                if self.get().is_some() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// The pinned fingerprint.
    pub fn get(&self) -> Option<Fingerprint> {
        *read(&self.expected)
    }

    fn check(&self, cert: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        let got = Fingerprint::of(cert);
        match self.get() {
            Some(want) if want == got => Ok(()),
            Some(_) => Err(rustls::Error::General(
                "peer certificate does not match the fingerprint in its offer".into(),
            )),
            None => Err(rustls::Error::General("no peer offer yet".into())),
        }
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PinnedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "TLS 1.2 is not used by stunfwd".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for PinnedPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "TLS 1.2 is not used by stunfwd".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
