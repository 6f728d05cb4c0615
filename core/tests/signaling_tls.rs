//! HTTPS: the rendezvous server serves TLS with a certificate from a test CA made here,
//! and the client verifies it against a configured CA file (`signalCaFile`) and refuses
//! it without one (system roots) or with another CA.

#![allow(clippy::unwrap_used)]

mod signal_support;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use signal_support::{eventually, read_to_close, TempDir};
use stunfwd_core::signal::{Role, SignalClient, SignalServer, SignalServerConfig, TlsFiles};
use stunfwd_core::Error;

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files.
struct TestPki {
    dir: TempDir,
}

impl TestPki {
    fn new(name: &str) -> TestPki {
        let dir = TempDir::new(name);
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("stunfwd test CA {name}"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), pem("CERTIFICATE", ca_cert.der())).unwrap();
        std::fs::write(dir.path().join("cert.pem"), pem("CERTIFICATE", leaf.der())).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            pem("PRIVATE KEY", &key.serialize_der()),
        )
        .unwrap();
        TestPki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("cert.pem"),
            key: self.path("key.pem"),
        }
    }
}

async fn tls_server(pki: &TestPki, tweak: impl FnOnce(&mut SignalServerConfig)) -> SignalServer {
    let mut config = SignalServerConfig {
        stun: None,
        tls: Some(pki.files()),
        ..SignalServerConfig::default()
    };
    tweak(&mut config);
    SignalServer::start(config).await.unwrap()
}

fn client(url: &str, ca: Option<&Path>) -> SignalClient {
    SignalClient::with_ca_file(
        url,
        "tls room",
        Duration::from_millis(100),
        Arc::new(AtomicU64::new(0)),
        ca,
    )
    .unwrap()
}

#[tokio::test]
async fn clients_trusting_the_test_ca_talk_https() {
    let pki = TestPki::new("tls-ok");
    let srv = tls_server(&pki, |_| {}).await;
    assert!(srv.url().starts_with("https://127.0.0.1:"), "{}", srv.url());

    let a = client(&srv.url(), Some(&pki.path("ca.pem")));
    let b = client(&srv.url(), Some(&pki.path("ca.pem")));
    let poster = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.post(Role::Server, "over TLS").await.unwrap();
    });
    let got = a
        .get(Role::Server, Some(Duration::from_secs(5)), None)
        .await
        .unwrap();
    poster.await.unwrap();
    assert_eq!(got.map(|(d, _)| d).as_deref(), Some("over TLS"));
    a.delete(Role::Server).await.unwrap();
    assert_eq!(srv.rooms(), 0);
}

#[tokio::test]
async fn servers_from_an_unknown_ca_are_refused() {
    let pki = TestPki::new("tls-server");
    let other = TestPki::new("tls-other");
    let srv = tls_server(&pki, |_| {}).await;

    // System roots do not know the test CA; nor does another CA's file.
    for (what, c) in [
        ("system roots", client(&srv.url(), None)),
        (
            "another CA",
            client(&srv.url(), Some(&other.path("ca.pem"))),
        ),
    ] {
        let err = c.post(Role::Client, "x").await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, Error::Signal(_)) && msg.contains("certificate"),
            "{what}: {msg}"
        );
    }
    // The certificate's other name verifies too.
    let by_name = format!("https://localhost:{}/", srv.http_addr().port());
    client(&by_name, Some(&pki.path("ca.pem")))
        .post(Role::Client, "localhost is in the certificate too")
        .await
        .unwrap();
    assert_eq!(srv.rooms(), 1);

    // Plain HTTP to the TLS port gets no mailbox answer.
    let plain = format!("http://{}/", srv.http_addr());
    assert!(client(&plain, None).post(Role::Client, "x").await.is_err());
}

#[tokio::test]
async fn stalled_tls_handshakes_are_cut_off() {
    let pki = TestPki::new("tls-slow");
    let srv = tls_server(&pki, |c| c.header_timeout = Duration::from_secs(1)).await;
    let addr = srv.http_addr();
    let took = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        // The start of a ClientHello record, then nothing.
        s.write_all(&[0x16, 0x03, 0x01]).unwrap();
        read_to_close(&mut s, Duration::from_secs(5));
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(eventually(Duration::from_secs(2), || srv.connections() == 0).await);
    assert!(srv
        .metrics()
        .contains("stunfwd_signal_tls_handshake_failures_total 1\n"));
}

#[tokio::test]
async fn bad_certificate_files_are_config_errors() {
    let pki = TestPki::new("tls-bad");
    let other = TestPki::new("tls-bad-other");
    let start = |tls: TlsFiles| {
        SignalServer::start(SignalServerConfig {
            stun: None,
            tls: Some(tls),
            ..SignalServerConfig::default()
        })
    };
    let missing = start(TlsFiles {
        cert: pki.path("nope.pem"),
        key: pki.path("key.pem"),
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&missing, Error::Config { key, .. } if key == "tls-cert"),
        "{missing}"
    );
    let not_a_key = start(TlsFiles {
        cert: pki.path("cert.pem"),
        key: pki.path("ca.pem"),
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&not_a_key, Error::Config { key, .. } if key == "tls-key"),
        "{not_a_key}"
    );
    let mismatched = start(TlsFiles {
        cert: pki.path("cert.pem"),
        key: other.path("key.pem"),
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&mismatched, Error::Config { key, .. } if key == "tls-key"),
        "{mismatched}"
    );
}

#[test]
fn signal_ca_file_is_a_config_key() {
    let base = serde_json::json!({
        "mode": "client",
        "room": "r",
        "signalUrl": "https://rendezvous.example.org/",
    });
    let with = |ca: serde_json::Value| {
        let mut v = base.clone();
        v["signalCaFile"] = ca;
        stunfwd_core::Config::from_value(v)
    };
    let c = with("/etc/stunfwd/ca.pem".into()).unwrap();
    assert_eq!(
        c.signal_ca_file.as_deref(),
        Some(Path::new("/etc/stunfwd/ca.pem"))
    );
    assert_eq!(c.to_json()["signalCaFile"], "/etc/stunfwd/ca.pem");
    assert_eq!(stunfwd_core::Config::from_value(c.to_json()).unwrap(), c);
    assert_eq!(
        stunfwd_core::Config::from_value(base.clone())
            .unwrap()
            .signal_ca_file,
        None
    );
    for bad in [serde_json::json!(""), serde_json::json!(5)] {
        let err = with(bad).unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "signalCaFile"),
            "{err}"
        );
    }
}
