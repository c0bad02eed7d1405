//! TLS client settings for the kinds that speak TLS through rustls (ring):
//! which roots to trust (the system's, or a private CA's PEM file) and how
//! much of the server's certificate to verify.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::base::files::{read_capped, MAX_PEM_BYTES};

/// How much of the server's certificate is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt only: any certificate (libpq's `sslmode=require` without a CA).
    Nothing,
    /// The chain up to a trusted root, whatever name it is for (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`, and every HTTPS client).
    Full,
}

/// The roots in `ca_file` (PEM), or the system's when there is none.
pub fn roots(ca_file: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = read_pem(path)?;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate =
                    certificate.with_context(|| format!("invalid PEM in {}", path.display()))?;
                roots.add(certificate).with_context(|| {
                    format!("{} holds a certificate that cannot be a root", path.display())
                })?;
            }
            anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", path.display());
        }
        None => {
            // Unreadable entries of the system store are skipped, as curl does.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// A PEM file's bytes, read safely (a regular file of at most
/// `MAX_PEM_BYTES`): the one way kinds read a `ca_file`.
pub fn read_pem(path: &Path) -> anyhow::Result<Vec<u8>> {
    read_capped(path, MAX_PEM_BYTES).map_err(anyhow::Error::msg)
}

/// Checks that `ca_file` holds at least one usable certificate, for config
/// validation; the reason never holds the file's contents.
pub fn check_ca_file(path: &Path) -> Result<(), String> {
    roots(Some(path)).map(drop).map_err(|error| format!("{error:#}"))
}

/// A client config that verifies as `verify` says against `roots`.
pub fn client_config(verify: Verify, roots: RootCertStore) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match verify {
        Verify::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        Verify::Chain | Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier::new(verify, roots, &provider)?))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// What the verifier saw in one handshake.
#[derive(Debug, Default)]
pub struct Seen {
    /// The server's leaf certificate.
    pub leaf: Option<CertificateDer<'static>>,
    /// Why the certificate was refused; `None` when it was accepted.
    pub error: Option<rustls::Error>,
}

/// The one certificate verifier of the TLS clients built here: it checks
/// the certificate as its [`Verify`] says and, whatever that is, the
/// handshake's signatures with the provider's algorithms (as webpki's own
/// verifier does), so the session is encrypted to whoever holds the
/// certificate's key. It can also record what each handshake showed
/// ([`Verifier::recording`]), because rustls drops a refused certificate
/// without handing it over.
#[derive(Debug, Clone)]
pub struct Verifier {
    certificate: Certificate,
    algorithms: WebPkiSupportedAlgorithms,
    seen: Option<Arc<Mutex<Seen>>>,
}

/// How much of the certificate [`Verifier`] checks.
#[derive(Debug, Clone)]
enum Certificate {
    Any,
    /// The chain; and the name unless `any_name`.
    Chain {
        webpki: Arc<WebPkiServerVerifier>,
        any_name: bool,
    },
}

impl Verifier {
    /// Verifies as `verify` says, against `roots` (unused for
    /// [`Verify::Nothing`]).
    pub fn new(
        verify: Verify,
        roots: RootCertStore,
        provider: &Arc<CryptoProvider>,
    ) -> anyhow::Result<Self> {
        let certificate = match verify {
            Verify::Nothing => Certificate::Any,
            Verify::Chain | Verify::Full => Certificate::Chain {
                webpki: WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()?,
                any_name: verify == Verify::Chain,
            },
        };
        Ok(Verifier {
            certificate,
            algorithms: provider.signature_verification_algorithms,
            seen: None,
        })
    }

    /// The same verifier, writing the leaf and the verdict of each
    /// handshake into `seen`.
    pub fn recording(self, seen: Arc<Mutex<Seen>>) -> Self {
        Verifier { seen: Some(seen), ..self }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = match &self.certificate {
            Certificate::Any => Ok(ServerCertVerified::assertion()),
            Certificate::Chain { webpki, any_name } => {
                match webpki.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ) {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )) if *any_name => Ok(ServerCertVerified::assertion()),
                    other => other,
                }
            }
        };
        if let Some(seen) = &self.seen {
            let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            seen.leaf = Some(end_entity.clone().into_owned());
            seen.error = verdict.as_ref().err().cloned();
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
