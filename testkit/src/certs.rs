//! Certificates minted by the test, and a TLS listener that serves them.
//!
//! [`TestCerts::new()`] makes a test CA (the one a test trusts through
//! `ca_file`) and an "unknown" CA nobody is told about, in a temp dir removed
//! on drop. Its methods mint leaf certificates as PEM files (cert, key, the
//! chain leaf + CA, and the issuing CA): valid for 30 days, expiring in N
//! days, expired N days ago (its `not_before` earlier still), signed by the
//! unknown CA, self-signed, for other names, or client certificates for
//! mutual TLS (with URI SANs for SPIFFE ids). Leaves are for `127.0.0.1`
//! and `localhost` (IP and DNS SANs) unless told otherwise. Keys are ECDSA
//! P-256, minted with rcgen on the ring backend (the one rustls already uses
//! here); the files belong to the test process's user, so a server that runs
//! as another user gets copies (see `TestPostgres::start_tls`).
//!
//! [`TlsListener`] serves a chain and key on a free loopback port with
//! rustls: it completes every handshake, counts them, and answers any HTTP/1.1
//! request with `200 ok`, so it stands in for a `tls` check's endpoint and an
//! `https://` dependency alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::process::TempDir;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const HOUR: Duration = Duration::from_secs(60 * 60);
/// Bound on one handshake and request at the listener.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// A test CA, an unknown CA, and the leaves minted from them; see the module
/// docs. Files live until the value is dropped.
pub struct TestCerts {
    ca: Ca,
    unknown_ca: Ca,
    counter: AtomicU32,
    dir: TempDir,
}

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    path: PathBuf,
}

/// Who signs a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signer {
    /// The test CA (`TestCerts::ca_path`): trusted by a test that passes it.
    TestCa,
    /// Another CA that no test trusts: "certificate not trusted".
    UnknownCa,
    /// The leaf's own key, with no CA at all.
    SelfSigned,
}

/// What to mint. Times are truncated to whole seconds (X.509 has no finer).
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// SANs: each is an IP SAN if it parses as an IP address, a URI SAN if
    /// it has a scheme (`spiffe://...`), else a DNS SAN. The first is also
    /// the subject's common name.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub signer: Signer,
    /// A client certificate too (extended key usage clientAuth besides
    /// serverAuth), for mutual TLS.
    pub client: bool,
}

impl LeafSpec {
    /// For `names`, by the test CA, valid from an hour ago for 30 days.
    pub fn new(names: &[&str]) -> LeafSpec {
        let now = SystemTime::now();
        LeafSpec {
            names: names.iter().map(|n| n.to_string()).collect(),
            not_before: now - HOUR,
            not_after: now + 30 * DAY,
            signer: Signer::TestCa,
            client: false,
        }
    }

    /// `new(&["127.0.0.1", "localhost"])`.
    pub fn local() -> LeafSpec {
        LeafSpec::new(&["127.0.0.1", "localhost"])
    }
}

/// A minted leaf's PEM files (all inside the `TestCerts` temp dir).
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The leaf certificate alone.
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
    /// The leaf and then its issuing CA (the leaf alone when self-signed):
    /// what a server sends.
    pub chain: PathBuf,
    /// The CA that signed it (the leaf itself when self-signed).
    pub ca: PathBuf,
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl TestCerts {
    /// Mints the two CAs (valid from 400 days ago to 400 days ahead, so that
    /// every leaf below lies inside them). Panics if minting fails.
    pub fn new() -> TestCerts {
        let dir = TempDir::new("certs", None);
        let ca = Ca::mint("healthd test CA", &dir.path().join("test-ca.crt"));
        let unknown_ca = Ca::mint("healthd unknown CA", &dir.path().join("unknown-ca.crt"));
        TestCerts { ca, unknown_ca, counter: AtomicU32::new(0), dir }
    }

    /// The test CA's certificate (PEM): the `ca_file` a test trusts.
    pub fn ca_path(&self) -> &Path {
        &self.ca.path
    }

    /// The unknown CA's certificate (PEM), for a test that wants to trust it
    /// on purpose.
    pub fn unknown_ca_path(&self) -> &Path {
        &self.unknown_ca.path
    }

    /// The temp dir holding every file (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// 127.0.0.1 and localhost, by the test CA, valid for 30 days.
    pub fn valid(&self) -> CertFiles {
        self.mint(&LeafSpec::local())
    }

    /// 127.0.0.1 and localhost, by the test CA, expiring `days` days and one
    /// hour from now: whole days remaining, rounded down, read `days` for the
    /// next hour.
    pub fn expiring_in_days(&self, days: u32) -> CertFiles {
        let mut spec = LeafSpec::local();
        spec.not_before = SystemTime::now() - 30 * DAY;
        spec.not_after = SystemTime::now() + days * DAY + HOUR;
        self.mint(&spec)
    }

    /// 127.0.0.1 and localhost, by the test CA, expired `days` days and one
    /// hour ago (valid for 30 days before that): whole days since expiry,
    /// rounded down, read `days` for the next hour.
    pub fn expired_days_ago(&self, days: u32) -> CertFiles {
        let mut spec = LeafSpec::local();
        spec.not_after = SystemTime::now() - days * DAY - HOUR;
        spec.not_before = spec.not_after - 30 * DAY;
        self.mint(&spec)
    }

    /// 127.0.0.1 and localhost, valid for 30 days, signed by the unknown CA.
    pub fn by_unknown_ca(&self) -> CertFiles {
        self.mint(&LeafSpec { signer: Signer::UnknownCa, ..LeafSpec::local() })
    }

    /// 127.0.0.1 and localhost, valid for 30 days, self-signed.
    pub fn self_signed(&self) -> CertFiles {
        self.mint(&LeafSpec { signer: Signer::SelfSigned, ..LeafSpec::local() })
    }

    /// `names` only (e.g. `["other.example"]`), by the test CA, valid for 30
    /// days: connecting to 127.0.0.1 or localhost is a hostname mismatch.
    pub fn for_names(&self, names: &[&str]) -> CertFiles {
        self.mint(&LeafSpec::new(names))
    }

    /// A client certificate for `names` (see [`LeafSpec::names`]), by the
    /// test CA, valid for 30 days: a `ca_path()` that a server trusts for
    /// client certificates accepts it.
    pub fn client(&self, names: &[&str]) -> CertFiles {
        self.mint(&LeafSpec { client: true, ..LeafSpec::new(names) })
    }

    /// Mints a leaf as `spec` says. Panics if rcgen refuses (a bad name).
    pub fn mint(&self, spec: &LeafSpec) -> CertFiles {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let base = self.dir.path().join(format!("leaf-{n}"));
        let not_before = whole_seconds(spec.not_before);
        let not_after = whole_seconds(spec.not_after);

        let (uris, names): (Vec<String>, Vec<String>) =
            spec.names.iter().cloned().partition(|name| name.contains("://"));
        let mut params = CertificateParams::new(names)
            .unwrap_or_else(|e| panic!("certificate names {:?}: {e}", spec.names));
        for uri in uris {
            let uri = uri.as_str().try_into().unwrap_or_else(|e| panic!("URI {uri}: {e}"));
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = spec.names.first() {
            params.distinguished_name.push(DnType::CommonName, first.as_str());
        }
        params.not_before = not_before;
        params.not_after = not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if spec.client {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = spec.signer != Signer::SelfSigned;
        let key = KeyPair::generate().expect("generating a key pair");
        let (cert, ca) = match spec.signer {
            Signer::TestCa => (params.signed_by(&key, &self.ca.issuer), Some(&self.ca)),
            Signer::UnknownCa => {
                (params.signed_by(&key, &self.unknown_ca.issuer), Some(&self.unknown_ca))
            }
            Signer::SelfSigned => (params.self_signed(&key), None),
        };
        let cert = cert.unwrap_or_else(|e| panic!("minting a certificate: {e}")).pem();

        let files = CertFiles {
            cert: base.with_extension("crt"),
            key: base.with_extension("key"),
            chain: self.dir.path().join(format!("leaf-{n}-chain.crt")),
            ca: ca.map_or_else(|| base.with_extension("crt"), |ca| ca.path.clone()),
            names: spec.names.clone(),
            not_before: not_before.into(),
            not_after: not_after.into(),
        };
        write(&files.cert, &cert);
        write(&files.key, &key.serialize_pem());
        let chain = match ca {
            Some(ca) => format!("{cert}{}", ca.issuer.pem()),
            None => cert,
        };
        write(&files.chain, &chain);
        files
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        TestCerts::new()
    }
}

impl Ca {
    fn mint(name: &str, path: &Path) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = whole_seconds(now - 400 * DAY);
        params.not_after = whole_seconds(now + 400 * DAY);
        let key = KeyPair::generate().expect("generating a key pair");
        let issuer = CertifiedIssuer::self_signed(params, key)
            .unwrap_or_else(|e| panic!("minting the {name}: {e}"));
        write(path, &issuer.pem());
        Ca { issuer, path: path.to_owned() }
    }
}

fn whole_seconds(time: SystemTime) -> OffsetDateTime {
    let time = OffsetDateTime::from(time);
    time.replace_nanosecond(0).unwrap_or(time)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// The listener

/// A TLS server on 127.0.0.1 that serves one chain and key; see the module
/// docs. Stops (and drops its connections) when dropped.
pub struct TlsListener {
    addr: SocketAddr,
    handshakes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves `files.chain` and `files.key` on a free port. Must be called
    /// inside a tokio runtime, which runs the listener. Panics if the files
    /// do not make a server config.
    pub async fn start(files: &CertFiles) -> TlsListener {
        TlsListener::serve(&files.chain, &files.key).await
    }

    /// Serves the PEM chain at `chain` and the key at `key` on a free port.
    pub async fn serve(chain: &Path, key: &Path) -> TlsListener {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
            .and_then(|certs| certs.collect())
            .unwrap_or_else(|e| panic!("reading certificates from {}: {e}", chain.display()));
        let key = PrivateKeyDer::from_pem_file(key)
            .unwrap_or_else(|e| panic!("reading a key from {}: {e}", key.display()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap_or_else(|e| panic!("a TLS server config from {}: {e}", chain.display()));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let handshakes = Arc::new(AtomicU64::new(0));
        let counter = handshakes.clone();
        let task = tokio::spawn(async move {
            // Owned here, so aborting the accept loop ends every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (acceptor, counter) = (acceptor.clone(), counter.clone());
                        connections.spawn(async move {
                            let _ = tokio::time::timeout(
                                CONNECTION_DEADLINE,
                                serve_connection(acceptor, stream, &counter),
                            )
                            .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        TlsListener { addr, handshakes, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Completes the handshake, then answers an HTTP request if one comes.
async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    handshakes: &AtomicU64,
) {
    let Ok(mut tls) = acceptor.accept(stream).await else { return };
    handshakes.fetch_add(1, Ordering::SeqCst);
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        if request.len() > 64 * 1024 {
            return;
        }
    }
    let _ = tls
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        )
        .await;
    let _ = tls.shutdown().await;
}
