//! `[server.tls]`: the server's certificate and key, and the CA its
//! clients' certificates are verified against. The files are read (through
//! `read_capped`, like every file healthd reads) and checked at load, so
//! that `check-config` and a reload report a missing file, a file that is
//! not PEM or a key that does not match the certificate as
//! `FILE: server.tls.KEY: REASON`; the service reads them again the same
//! way when they change on disk.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use crate::base::files::{read_capped, MAX_PEM_BYTES};
use crate::base::problem::ConfigProblem;
use crate::checks::util::trust;

/// Whether a client must show a certificate signed by `client_ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Asked for; a client without one connects anonymously, one with a
    /// certificate that does not verify is refused at the handshake.
    Optional,
    /// No certificate, no connection: refused at the handshake.
    Required,
}

/// `[server.tls]`, validated: the paths as written, and what they held
/// when the config was loaded.
#[derive(Clone)]
pub struct TlsSettings {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// The certificate chain and its key.
    pub identity: Arc<CertifiedKey>,
    /// Verifies client certificates against `client_ca`; `None` without one.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl fmt::Debug for TlsSettings {
    // The paths only: the key stays out of every debug print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("certificate", &self.certificate)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// The one crypto provider of the server side, as of the clients (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain at `certificate` (PEM, leaf first) and the
/// private key at `key` (PEM: PKCS#8, PKCS#1 or SEC1), checked to belong
/// together. Problems are keyed `server.tls.certificate` or
/// `server.tls.key`; their reasons never hold the files' contents.
pub fn load_identity(
    certificate: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let chain = read_chain(certificate)
        .map_err(|reason| problems.push(ConfigProblem::new("server.tls.certificate", reason)))
        .ok();
    let private_key = read_key(key)
        .map_err(|reason| problems.push(ConfigProblem::new("server.tls.key", reason)))
        .ok();
    let (Some(chain), Some(private_key)) = (chain, private_key) else {
        return Err(problems);
    };
    let identity = CertifiedKey::new(chain, private_key);
    match identity.keys_match() {
        Ok(()) => Ok(Arc::new(identity)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(vec![ConfigProblem::new(
                "server.tls.key",
                format!(
                    "the key in {} does not match the certificate in {}",
                    key.display(),
                    certificate.display()
                ),
            )])
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            // A key whose public half the provider cannot tell: rustls
            // accepts it, and so does healthd.
            Ok(Arc::new(identity))
        }
        Err(error) => Err(vec![ConfigProblem::new(
            "server.tls.certificate",
            format!("{} holds a certificate rustls cannot read: {error}", certificate.display()),
        )]),
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_capped(path, MAX_PEM_BYTES)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{} is not PEM: expected CERTIFICATE blocks", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no certificate: expected PEM CERTIFICATE blocks, the server's first",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<Arc<dyn rustls::sign::SigningKey>, String> {
    let pem = read_capped(path, MAX_PEM_BYTES)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        format!(
            "{} holds no private key: expected PEM (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            path.display()
        )
    })?;
    provider()
        .key_provider
        .load_private_key(key)
        .map_err(|error| format!("{} holds a key rustls cannot use: {error}", path.display()))
}

/// A verifier of client certificates against the CA certificates in
/// `client_ca` (PEM). Problems are keyed `server.tls.client_ca`.
pub fn load_client_verifier(
    client_ca: &Path,
    client_auth: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, ConfigProblem> {
    let problem = |reason: String| ConfigProblem::new("server.tls.client_ca", reason);
    let roots = trust::roots(Some(client_ca)).map_err(|error| problem(format!("{error:#}")))?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = match client_auth {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        ClientAuth::Required => builder,
    };
    builder.build().map_err(|error| problem(format!("{}: {error}", client_ca.display())))
}

/// `[server.tls]` as the file writes it, into `TlsSettings`, reporting
/// each problem.
pub fn settings(
    raw: crate::config::raw::RawTls,
    problems: &mut Vec<ConfigProblem>,
) -> Option<TlsSettings> {
    let certificate = PathBuf::from(raw.certificate);
    let key = PathBuf::from(raw.key);
    let client_ca = raw.client_ca.map(PathBuf::from);
    let identity = load_identity(&certificate, &key).map_err(|found| problems.extend(found)).ok();
    let client_auth = match (&client_ca, raw.client_auth) {
        (Some(_), wanted) => wanted.unwrap_or(ClientAuth::Required),
        (None, Some(_)) => {
            problems.push(ConfigProblem::new(
                "server.tls.client_auth",
                "needs server.tls.client_ca, the CA that signs the clients' certificates",
            ));
            ClientAuth::Optional
        }
        (None, None) => ClientAuth::Optional,
    };
    let client_verifier = match &client_ca {
        Some(path) => Some(
            load_client_verifier(path, client_auth)
                .map_err(|problem| problems.push(problem))
                .ok()?,
        ),
        None => None,
    };
    Some(TlsSettings {
        certificate,
        key,
        client_ca,
        client_auth,
        identity: identity?,
        client_verifier,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use healthd_testkit::certs::TestCerts;

    use crate::config::Settings;

    fn problems(tls: &str) -> Vec<String> {
        let text = format!("[server.tls]\n{tls}");
        match Settings::parse(&text, "t.toml", &BTreeMap::new()) {
            Ok(_) => Vec::new(),
            Err(error) => {
                error.problems.iter().map(|p| format!("{}: {}", p.key, p.reason)).collect()
            }
        }
    }

    #[test]
    fn a_matching_certificate_and_key_load() {
        let certs = TestCerts::new();
        let leaf = certs.valid();
        let tls = format!(
            "certificate = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            leaf.chain,
            leaf.key,
            certs.ca_path()
        );
        assert_eq!(problems(&tls), Vec::<String>::new());
    }

    #[test]
    fn missing_files_non_pem_and_a_foreign_key_are_named() {
        let certs = TestCerts::new();
        let (leaf, other) = (certs.valid(), certs.valid());
        let missing = certs.dir().join("missing.pem");
        let found = problems(&format!("certificate = {missing:?}\nkey = {:?}\n", leaf.key));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("server.tls.certificate: "), "{found:?}");
        assert!(found[0].contains("no such file"), "{found:?}");

        // A certificate where the key should be, a key where the certificate should be.
        let found = problems(&format!("certificate = {:?}\nkey = {:?}\n", leaf.key, leaf.cert));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("server.tls.certificate: ")
                && found[0].contains("holds no certificate"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("server.tls.key: ") && found[1].contains("holds no private key"),
            "{found:?}"
        );

        let found = problems(&format!("certificate = {:?}\nkey = {:?}\n", leaf.cert, other.key));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("does not match the certificate"), "{found:?}");

        let found = problems(&format!(
            "certificate = {:?}\nkey = {:?}\nclient_auth = \"required\"\n",
            leaf.cert, leaf.key
        ));
        assert_eq!(found, ["server.tls.client_auth: needs server.tls.client_ca, the CA that signs the clients' certificates"]);

        let found = problems(&format!(
            "certificate = {:?}\nkey = {:?}\nclient_ca = \"/dev/zero\"\n",
            leaf.cert, leaf.key
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("server.tls.client_ca: /dev/zero is a device"), "{found:?}");
    }

    #[test]
    fn each_client_entry_needs_one_match_a_unique_name_and_a_client_ca() {
        let client =
            |name: &str, matches: &str| format!("[[access.clients]]\nname = {name:?}\n{matches}\n");
        let text = [
            client("a", "dns_name = \"a.example\""),
            client("a", "uri = \"spiffe://example.org/a\""),
            client("b", ""),
            client("c", "common_name = \"c\"\ndns_name = \"c.example\""),
        ]
        .concat();
        let error = Settings::parse(&text, "t.toml", &BTreeMap::new()).unwrap_err();
        let found: Vec<String> =
            error.problems.iter().map(|p| format!("{}: {}", p.key, p.reason)).collect();
        let one_of = "set exactly one of common_name (the subject's CN), dns_name or uri (a subject alternative name, such as a SPIFFE id)";
        assert_eq!(
            found,
            [
                "access.clients[1].name: duplicate client name \"a\"".to_string(),
                format!("access.clients[2]: {one_of}"),
                format!("access.clients[3]: {one_of}"),
                "access.clients: needs server.tls.client_ca: client certificates are asked for only with it".to_string(),
            ]
        );
    }
}
