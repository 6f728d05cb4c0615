//! HTTPS for the rendezvous server: a rustls server configuration from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

/// The certificate chain and private key a [`super::SignalServer`] serves HTTPS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the server certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn invalid(key: &str, path: &Path, problem: impl Into<String>, expected: &str) -> Error {
    Error::config(key, path.display().to_string(), problem, expected)
}

/// Reads the PEM files and builds a TLS 1.2/1.3 server configuration offering
/// HTTP/1.1 by ALPN.
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    const CERT_EXPECTED: &str = "a readable PEM file with the server certificate chain";
    const KEY_EXPECTED: &str = "a readable PEM file with the certificate's private key";
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| invalid("tls-cert", &files.cert, e.to_string(), CERT_EXPECTED))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("tls-cert", &files.cert, e.to_string(), CERT_EXPECTED))?;
    if certs.is_empty() {
        return Err(invalid(
            "tls-cert",
            &files.cert,
            "holds no CERTIFICATE block",
            CERT_EXPECTED,
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| invalid("tls-key", &files.key, e.to_string(), KEY_EXPECTED))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Signal(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(
                "tls-key",
                &files.key,
                format!("does not fit the certificate ({e})"),
                "the private key of the first certificate in the tls-cert file",
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
