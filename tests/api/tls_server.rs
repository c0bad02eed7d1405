//! HTTPS and mutual TLS (`[server.tls]`, `[[access.clients]]`): the real
//! server on port 0 with certificates minted by the test, reached by a
//! rustls client that sees which certificate the server presents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use healthd_testkit::certs::{CertFiles, LeafSpec, Signer, TestCerts};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::support::app::{
    captured_logs, read_answer, spawn_app, spawn_binary, RawAnswer, TestApp,
};

/// Long enough for the file watch (every 2 s) on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(20);

const CHECK: &str = "[[checks]]\nname = \"disk\"\nkind = \"disk\"\npath = \".\"\n";

/// A client that trusts the test CA and shows `identity`, if any.
fn client(certs: &TestCerts, identity: Option<&CertFiles>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(certs.ca_path()).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    Arc::new(match identity {
        Some(files) => {
            let chain = CertificateDer::pem_file_iter(&files.chain)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&files.key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    })
}

async fn connect(
    app: &TestApp,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    connect_to(app.address, config).await
}

async fn connect_to(
    address: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// One keep-alive GET on an open connection.
async fn get(stream: &mut TlsStream<TcpStream>, path: &str) -> std::io::Result<RawAnswer> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    read_answer(stream, false).await
}

/// A GET on a new connection; an error when the handshake or the request fails.
async fn get_once(
    app: &TestApp,
    config: Arc<ClientConfig>,
    path: &str,
) -> std::io::Result<RawAnswer> {
    get(&mut connect(app, config).await?, path).await
}

/// Waits for the check's first reading: `/health` answers 503 until then.
async fn wait_until_ready(app: &TestApp, config: Arc<ClientConfig>) {
    let started = Instant::now();
    while get_once(app, config.clone(), "/health/ready").await.unwrap().status != 200 {
        assert!(started.elapsed() < DEADLINE, "not ready within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leaf certificate the server presented on `stream`.
fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec()
}

fn leaf_of(files: &CertFiles) -> Vec<u8> {
    CertificateDer::from_pem_file(&files.cert).unwrap().to_vec()
}

fn tls_config(certificate: &Path, key: &Path, extra: &str) -> String {
    format!("[server.tls]\ncertificate = {certificate:?}\nkey = {key:?}\n{extra}\n{CHECK}")
}

async fn wait_for_log_line(wanted: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        if let Some(line) = captured_logs().lines().find(|line| wanted(line)) {
            return line.to_string();
        }
        assert!(started.elapsed() < DEADLINE, "no such log line within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The files as Kubernetes mounts a Secret (and cert-manager renews it):
/// `tls.crt` and `tls.key` are links through `..data`, a link to a
/// directory of the current files, which a renewal swaps atomically.
struct MountedSecret {
    dir: PathBuf,
    versions: u32,
}

impl MountedSecret {
    fn new(certs: &TestCerts, first: (&Path, &Path)) -> MountedSecret {
        let dir = certs.dir().join(format!("secret-{}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut secret = MountedSecret { dir, versions: 0 };
        secret.swap_to(first);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), secret.dir.join(name)).unwrap();
        }
        secret
    }

    fn certificate(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// A new version directory, then `..data` swapped to it by a rename.
    fn swap_to(&mut self, (certificate, key): (&Path, &Path)) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        std::fs::copy(certificate, self.dir.join(&version).join("tls.crt")).unwrap();
        std::fs::copy(key, self.dir.join(&version).join("tls.key")).unwrap();
        let link = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &link).unwrap();
        std::fs::rename(&link, self.dir.join("..data")).unwrap();
    }
}

#[tokio::test]
async fn https_answers_with_the_configured_certificate() {
    // Arrange
    let certs = TestCerts::new();
    let leaf = certs.valid();
    let app = spawn_app(&tls_config(&leaf.chain, &leaf.key, "")).await;

    // Act
    let mut stream = connect(&app, client(&certs, None)).await.expect("the handshake succeeds");
    let answer = get(&mut stream, "/health/live").await.unwrap();

    // Assert
    assert_eq!(presented(&stream), leaf_of(&leaf));
    assert_eq!(answer.status, 200);
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let plain = crate::support::app::raw_request(
        app.address,
        b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test]
async fn required_client_auth_refuses_a_client_without_a_certificate_and_accepts_one_from_the_client_ca(
) {
    // Arrange
    let certs = TestCerts::new();
    let leaf = certs.valid();
    let ca = format!("client_ca = {:?}\nclient_auth = \"required\"", certs.ca_path());
    let app = spawn_app(&tls_config(&leaf.chain, &leaf.key, &ca)).await;
    let signed = certs.client(&["scraper.monitoring"]);
    let foreign = certs.mint(&LeafSpec {
        signer: Signer::UnknownCa,
        client: true,
        ..LeafSpec::new(&["scraper.monitoring"])
    });

    // Act
    let without = get_once(&app, client(&certs, None), "/health/live").await;
    let unknown = get_once(&app, client(&certs, Some(&foreign)), "/health/live").await;
    let with = get_once(&app, client(&certs, Some(&signed)), "/health/live").await;

    // Assert
    assert!(without.is_err(), "no client certificate was accepted: {without:?}");
    assert!(unknown.is_err(), "a certificate of another CA was accepted: {unknown:?}");
    assert_eq!(with.expect("a certificate of the client CA is accepted").status, 200);
}

#[tokio::test]
async fn a_client_certificate_named_in_access_clients_sees_details_and_is_the_principal() {
    // Arrange
    let certs = TestCerts::new();
    let leaf = certs.valid();
    let extra = format!(
        "client_ca = {:?}\nclient_auth = \"optional\"\n\n[access]\ndetails = \"authorized\"\n\n\
         [[access.clients]]\nname = \"prometheus\"\ndns_name = \"prometheus.monitoring\"\n\n\
         [[access.clients]]\nname = \"agent\"\nuri = \"spiffe://example.org/ns/ops/sa/agent\"\n",
        certs.ca_path()
    );
    let app = spawn_app(&tls_config(&leaf.chain, &leaf.key, &extra)).await;
    let callers = [
        ("prometheus", Some(certs.client(&["prometheus.monitoring"]))),
        ("agent", Some(certs.client(&["agent", "spiffe://example.org/ns/ops/sa/agent"]))),
        // Verified by the client CA, but named by no entry: anonymous.
        ("anonymous", Some(certs.client(&["stranger.monitoring"]))),
        // No certificate at all: optional, so anonymous too.
        ("anonymous", None),
    ];

    wait_until_ready(&app, client(&certs, None)).await;

    for (index, (principal, identity)) in callers.iter().enumerate() {
        // Act
        let config = client(&certs, identity.as_ref());
        let health = get_once(&app, config.clone(), "/health").await.unwrap();
        let metrics = get_once(&app, config.clone(), "/metrics").await.unwrap();
        // A path of this caller's own, to find its access log line.
        let path = format!("/health/checks/no-such-check-{}-{index}", app.port);
        let probe = get_once(&app, config, &path).await.unwrap();

        // Assert
        let named = *principal != "anonymous";
        assert_eq!(health.status, 200);
        assert_eq!(health.json().get("checks").is_some(), named, "{principal}: {health:?}");
        assert_eq!(metrics.status, if named { 200 } else { 401 }, "{principal}");
        assert_eq!(probe.status, if named { 404 } else { 401 }, "{principal}");
        let line = wait_for_log_line(|line| {
            line.contains("healthd::access") && line.contains(&format!("path=\"{path}\""))
        })
        .await;
        assert!(line.contains(&format!("principal=\"{principal}\"")), "{line}");
    }
}

#[tokio::test]
async fn rotated_certificate_files_reach_new_connections_while_an_open_one_keeps_working() {
    // Arrange
    let certs = TestCerts::new();
    let (old, new) = (certs.valid(), certs.valid());
    let mut secret = MountedSecret::new(&certs, (&old.chain, &old.key));
    let app = spawn_app(&tls_config(&secret.certificate(), &secret.key(), "")).await;
    let mut open = connect(&app, client(&certs, None)).await.unwrap();
    assert_eq!(get(&mut open, "/health/live").await.unwrap().status, 200);
    assert_eq!(presented(&open), leaf_of(&old));

    // Act: cert-manager renews, the kubelet swaps the Secret's files.
    secret.swap_to((&new.chain, &new.key));

    // Assert: new connections get the new certificate; the open one,
    // used all along, keeps its session.
    let started = Instant::now();
    loop {
        let answer = get(&mut open, "/health/live").await.expect("the open connection works");
        assert_eq!(answer.status, 200);
        let fresh = connect(&app, client(&certs, None)).await.unwrap();
        if presented(&fresh) == leaf_of(&new) {
            break;
        }
        assert_eq!(presented(&fresh), leaf_of(&old));
        assert!(
            started.elapsed() < DEADLINE,
            "the new certificate was not served within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(presented(&open), leaf_of(&old));
    assert_eq!(get(&mut open, "/health/live").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_broken_new_certificate_keeps_the_old_one_and_the_log_says_why() {
    // Arrange
    let certs = TestCerts::new();
    let (old, new) = (certs.valid(), certs.valid());
    let mut secret = MountedSecret::new(&certs, (&old.chain, &old.key));
    let app = spawn_app(&tls_config(&secret.certificate(), &secret.key(), "")).await;

    // Act: a new certificate with the old key.
    secret.swap_to((&new.chain, &old.key));

    // Assert
    let key = secret.key().display().to_string();
    let line = wait_for_log_line(|line| {
        line.contains("server.tls.key") && line.contains(&key) && line.contains("does not match")
    })
    .await;
    assert!(line.contains("ERROR"), "{line}");
    let stream = connect(&app, client(&certs, None)).await.unwrap();
    assert_eq!(presented(&stream), leaf_of(&old), "the old certificate stays");

    // A good pair afterwards is taken: the watch goes on.
    secret.swap_to((&new.chain, &new.key));
    let started = Instant::now();
    while presented(&connect(&app, client(&certs, None)).await.unwrap()) != leaf_of(&new) {
        assert!(started.elapsed() < DEADLINE, "the repaired certificate was not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_new_client_ca_file_verifies_new_connections() {
    // Arrange: client certificates required, of the test CA for now.
    let certs = TestCerts::new();
    let leaf = certs.valid();
    let client_ca = certs.dir().join("client-ca.pem");
    std::fs::copy(certs.ca_path(), &client_ca).unwrap();
    let extra = format!("client_ca = {client_ca:?}\nclient_auth = \"required\"");
    let app = spawn_app(&tls_config(&leaf.chain, &leaf.key, &extra)).await;
    let of_test_ca = client(&certs, Some(&certs.client(&["a.example"])));
    let of_other_ca = client(
        &certs,
        Some(&certs.mint(&LeafSpec {
            signer: Signer::UnknownCa,
            client: true,
            ..LeafSpec::new(&["b.example"])
        })),
    );
    let mut open = connect(&app, of_test_ca.clone()).await.unwrap();
    assert_eq!(get(&mut open, "/health/live").await.unwrap().status, 200);
    assert!(get_once(&app, of_other_ca.clone(), "/health/live").await.is_err());

    // Act: the other CA replaces the file, atomically.
    let staged = certs.dir().join("client-ca.pem.new");
    std::fs::copy(certs.unknown_ca_path(), &staged).unwrap();
    std::fs::rename(&staged, &client_ca).unwrap();

    // Assert
    let started = Instant::now();
    while get_once(&app, of_other_ca.clone(), "/health/live").await.is_err() {
        assert!(started.elapsed() < DEADLINE, "the new client CA was not used within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        get_once(&app, of_test_ca, "/health/live").await.is_err(),
        "a certificate of the old client CA still connects"
    );
    // The connection made under the old CA goes on.
    assert_eq!(get(&mut open, "/health/live").await.unwrap().status, 200);
}

#[tokio::test]
async fn check_config_names_each_tls_problem_as_file_key_reason() {
    // Arrange
    let certs = TestCerts::new();
    let (leaf, other) = (certs.valid(), certs.valid());
    let config = certs.dir().join("mismatched.toml");
    let missing_ca = certs.dir().join("no-such-ca.pem");
    std::fs::write(
        &config,
        tls_config(&leaf.cert, &other.key, &format!("client_ca = {missing_ca:?}")),
    )
    .unwrap();

    // Act
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_healthd"))
        .args(["check-config", "--config", config.to_str().unwrap()])
        .env_remove("HEALTHD_LISTEN")
        .output()
        .unwrap();

    // Assert
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let file = config.display();
    for wanted in [
        format!(
            "{file}: server.tls.key: the key in {} does not match the certificate in {}",
            other.key.display(),
            leaf.cert.display()
        ),
        format!("{file}: server.tls.client_ca: cannot read {}: no such file", missing_ca.display()),
    ] {
        assert!(
            stderr.lines().any(|line| line.starts_with(&wanted)),
            "{wanted:?} not in:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn sighup_serves_the_certificate_the_new_config_names() {
    // Arrange
    let certs = TestCerts::new();
    let (old, new) = (certs.valid(), certs.valid());
    let config = |leaf: &CertFiles| {
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{}", tls_config(&leaf.chain, &leaf.key, ""))
    };
    let mut binary = spawn_binary(&config(&old), &[], &[]).await;
    let address = binary.address();
    let first = connect_to(address, client(&certs, None)).await.unwrap();
    assert_eq!(presented(&first), leaf_of(&old));

    // Act
    binary.write_config(&config(&new));
    binary.signal(libc::SIGHUP);
    binary.wait_for_line(DEADLINE, |line| line.contains("config reloaded")).await;

    // Assert
    let second = connect_to(address, client(&certs, None)).await.unwrap();
    assert_eq!(presented(&second), leaf_of(&new));
}
