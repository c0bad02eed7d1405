//! HTTPS for the binary: the rustls server config, built once, whose
//! certificate and client verifier sit behind `ArcSwap`s, so that a
//! rotation (SIGHUP, or the files changing on disk) reaches every new
//! handshake while open connections carry on with the session they have.
//!
//! The files are polled every [`WATCH_INTERVAL`] (their modification time,
//! length and inode, through symlinks: cert-manager and Kubernetes swap a
//! symlink to new files). A new certificate or CA that does not load is
//! logged as `FILE: server.tls.KEY: REASON`, and the running one stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::base::problem::ConfigProblem;
use crate::config::server_tls::{load_client_verifier, load_identity, provider};
use crate::config::TlsSettings;

/// How often the certificate, key and client CA files are looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Sessions kept for resumption, as rustls' default.
const SESSIONS: usize = 256;

/// The swappable parts of the running server config.
pub struct ServerTls {
    identity: Arc<Identity>,
    clients: Arc<ClientVerifier>,
    sessions: Arc<Sessions>,
    /// What the files are and what they looked like when last read.
    watched: Mutex<Watched>,
    /// The config file, for the `FILE: KEY: REASON` of a refused file.
    source: Mutex<String>,
}

struct Watched {
    settings: TlsSettings,
    seen: Vec<Fingerprint>,
}

impl ServerTls {
    /// The running parts and the server config that reads them.
    pub fn new(settings: &TlsSettings) -> anyhow::Result<(Arc<ServerTls>, ServerConfig)> {
        let tls = Arc::new(ServerTls {
            identity: Arc::new(Identity(ArcSwap::new(settings.identity.clone()))),
            clients: Arc::new(ClientVerifier {
                current: ArcSwap::from_pointee(Verifying(settings.client_verifier.clone())),
                schemes: provider().signature_verification_algorithms.supported_schemes(),
            }),
            sessions: Arc::new(Sessions(ArcSwap::new(ServerSessionMemoryCache::new(SESSIONS)))),
            watched: Mutex::new(Watched {
                settings: settings.clone(),
                seen: fingerprints(settings),
            }),
            source: Mutex::new("(config)".into()),
        });
        // TLS 1.3 and 1.2, with ring; actix-web adds the ALPN protocols.
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(tls.clients.clone())
            .with_cert_resolver(tls.identity.clone());
        config.session_storage = tls.sessions.clone();
        Ok((tls, config))
    }

    /// The config file's name, for the lines that report a refused file.
    pub fn set_source(&self, source: &Path) {
        *lock(&self.source) = source.display().to_string();
    }

    /// A reload's new settings (already loaded and checked): new
    /// handshakes use them, and the watch follows the new paths.
    pub fn apply(&self, settings: &TlsSettings) {
        let mut watched = lock(&self.watched);
        self.identity.0.store(settings.identity.clone());
        if settings.client_ca != watched.settings.client_ca
            || settings.client_auth != watched.settings.client_auth
            || fingerprint_of(settings.client_ca.as_deref()) != watched.seen[2]
        {
            self.set_client_verifier(settings.client_verifier.clone());
        }
        watched.seen = fingerprints(settings);
        watched.settings = settings.clone();
    }

    fn set_client_verifier(&self, verifier: Option<Arc<dyn ClientCertVerifier>>) {
        self.clients.current.store(Arc::new(Verifying(verifier)));
        // A resumed session skips client authentication: sessions made
        // under the old CA are forgotten, so every client shows its
        // certificate to the new one.
        self.sessions.0.store(ServerSessionMemoryCache::new(SESSIONS));
    }

    /// Polls the files until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let tls = self.clone();
            // Files are read on a blocking thread: no file can stall the runtime.
            if tokio::task::spawn_blocking(move || tls.look()).await.is_err() {
                tracing::error!("looking at the TLS files failed");
            }
        }
    }

    /// Reads the files again when they changed since last read.
    fn look(&self) {
        let mut watched = lock(&self.watched);
        let now = fingerprints(&watched.settings);
        if now == watched.seen {
            return;
        }
        let settings = &watched.settings;
        let (identity_changed, ca_changed) =
            (now[..2] != watched.seen[..2], now[2..] != watched.seen[2..]);
        let source = lock(&self.source).clone();
        let mut refused = Vec::new();
        if identity_changed {
            match load_identity(&settings.certificate, &settings.key) {
                Ok(identity) => {
                    self.identity.0.store(identity);
                    tracing::info!(
                        certificate = %settings.certificate.display(),
                        "TLS certificate files changed: new connections get the new certificate"
                    );
                }
                Err(problems) => refused.extend(problems),
            }
        }
        if let (true, Some(client_ca)) = (ca_changed, &settings.client_ca) {
            match load_client_verifier(client_ca, settings.client_auth) {
                Ok(verifier) => {
                    self.set_client_verifier(Some(verifier));
                    tracing::info!(
                        client_ca = %client_ca.display(),
                        "TLS client CA file changed: new connections are verified against it"
                    );
                }
                Err(problem) => refused.push(problem),
            }
        }
        for ConfigProblem { key, reason } in &refused {
            tracing::error!("{source}: {key}: {reason}");
        }
        if !refused.is_empty() {
            tracing::error!(
                problems = refused.len(),
                "new TLS files refused: the running certificate and client CA stay"
            );
        }
        // Remembered even when refused: the next change is read again,
        // an unchanged broken file is not reported every tick.
        watched.seen = now;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a file looks like from outside: a change of any part is a new file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    File { modified: Option<SystemTime>, len: u64, inode: (u64, u64) },
    Unreadable(std::io::ErrorKind),
    Absent,
}

/// The certificate's, the key's and the client CA's, in that order.
fn fingerprints(settings: &TlsSettings) -> Vec<Fingerprint> {
    vec![
        fingerprint_of(Some(&settings.certificate)),
        fingerprint_of(Some(&settings.key)),
        fingerprint_of(settings.client_ca.as_deref()),
    ]
}

fn fingerprint_of(path: Option<&Path>) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = path else { return Fingerprint::Absent };
    // Through symlinks: a swapped link is a new file.
    match std::fs::metadata(PathBuf::from(path)) {
        Ok(metadata) => Fingerprint::File {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode: (metadata.dev(), metadata.ino()),
        },
        Err(error) => Fingerprint::Unreadable(error.kind()),
    }
}

/// The server's certificate: the same for every name a client asks for.
#[derive(Debug)]
struct Identity(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Identity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The client verifier of the moment, or none (no client certificate is
/// asked for).
#[derive(Debug)]
struct Verifying(Option<Arc<dyn ClientCertVerifier>>);

/// Hands each handshake to the verifier of the moment. It names no CA
/// to the client (the hints would have to outlive a swap): clients send
/// the certificate they are configured with, as curl, Go and nginx do.
#[derive(Debug)]
struct ClientVerifier {
    current: ArcSwap<Verifying>,
    schemes: Vec<SignatureScheme>,
}

fn no_client_auth() -> rustls::Error {
    rustls::Error::General("client certificates are not asked for".into())
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current.load().0.as_ref().is_some_and(|verifier| verifier.offer_client_auth())
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current.load().0.as_ref().is_some_and(|verifier| verifier.client_auth_mandatory())
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.current.load().0 {
            Some(verifier) => verifier.verify_client_cert(end_entity, intermediates, now),
            None => Err(no_client_auth()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.current.load().0 {
            Some(verifier) => verifier.verify_tls12_signature(message, cert, dss),
            None => Err(no_client_auth()),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.current.load().0 {
            Some(verifier) => verifier.verify_tls13_signature(message, cert, dss),
            None => Err(no_client_auth()),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// The session cache of the moment: a new client CA starts a new one.
#[derive(Debug)]
struct Sessions(ArcSwap<ServerSessionMemoryCache>);

impl StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}
