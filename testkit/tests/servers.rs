//! Each throwaway server of the testkit against its real binary: it starts,
//! answers a real protocol round trip, is refused once killed, answers again
//! after a restart, accepts connections but answers nothing while frozen,
//! and answers once thawed. Certificates are checked by real TLS handshakes.
//! Start times are printed (`--nocapture` shows them).

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use healthd_testkit::certs::{CertFiles, TestCerts, TlsListener};
use healthd_testkit::mariadb::TestMariadb;
use healthd_testkit::nats::{NatsAuth, TestNats};
use healthd_testkit::postgres::{PostgresTls, TestPostgres};
use healthd_testkit::rabbitmq::TestRabbitmq;
use healthd_testkit::redis::{Reply, TestRedis};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// How long a frozen server is watched for an answer that must not come.
const SILENCE: Duration = Duration::from_millis(500);
/// Generous: the suite loads both cores.
const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `probe` until it returns true, or panics after `DEADLINE`.
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !probe().await {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn is_refused(port: u16) -> bool {
    matches!(
        TcpStream::connect(("127.0.0.1", port)).await,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

/// Connects (which must work), sends `request`, and asserts that not one
/// byte comes back within `SILENCE`.
async fn assert_silent(port: u16, request: &[u8]) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the kernel accepts connections to a frozen server");
    stream.write_all(request).await.expect("sending to a frozen server");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(SILENCE, stream.read(&mut buf)).await;
    assert!(read.is_err(), "a frozen server answered: {read:?}");
}

// ---------------------------------------------------------------------------
// Redis

/// PING with no AUTH: the raw reply line.
async fn unauthenticated_ping(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connecting");
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.expect("sending PING");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .expect("a reply")
        .expect("reading");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn pongs(redis: &TestRedis) -> bool {
    matches!(redis.command(&["PING"]).await, Ok(Reply::Status(s)) if s == "PONG")
}

#[tokio::test]
async fn redis_starts_answers_dies_comes_back_freezes_and_thaws() {
    let began = Instant::now();
    let redis = TestRedis::start().await;
    eprintln!("redis: start took {:?}", began.elapsed());
    assert_ne!(redis.port(), 6379);
    assert!(!redis.url().contains(redis.password()));
    assert!(redis.url_with_password().contains(redis.password()));

    assert_eq!(redis.command(&["PING"]).await.unwrap(), Reply::Status("PONG".into()));
    assert!(unauthenticated_ping(redis.port()).await.starts_with("-NOAUTH"));
    assert_eq!(
        redis.command(&["SET", "k", "v"]).await.unwrap(),
        Reply::Status("OK".into()),
        "a master takes writes"
    );

    redis.kill();
    assert!(redis.pid().is_none());
    assert!(is_refused(redis.port()).await, "a killed server refuses connections");

    let began = Instant::now();
    redis.restart().await;
    eprintln!("redis: restart took {:?}", began.elapsed());
    assert!(pongs(&redis).await);

    redis.freeze();
    assert!(redis.is_frozen());
    assert_silent(redis.port(), b"*1\r\n$4\r\nPING\r\n").await;
    redis.thaw();
    eventually("redis answers PING after thaw", || pongs(&redis)).await;
}

#[tokio::test]
async fn a_redis_replica_reports_its_role_and_refuses_writes() {
    let master = TestRedis::start().await;
    let began = Instant::now();
    let replica = master.start_replica().await;
    eprintln!("redis: replica start and sync took {:?}", began.elapsed());
    assert_eq!(replica.password(), master.password());
    let role = |reply: Reply| match reply {
        Reply::Array(Some(items)) => items.first().cloned(),
        other => panic!("ROLE: {other:?}"),
    };
    assert_eq!(
        role(master.command(&["ROLE"]).await.unwrap()),
        Some(Reply::Bulk(Some("master".into())))
    );
    assert_eq!(
        role(replica.command(&["ROLE"]).await.unwrap()),
        Some(Reply::Bulk(Some("slave".into())))
    );
    match replica.command(&["SET", "k", "v"]).await.unwrap() {
        Reply::Error(e) => assert!(e.starts_with("READONLY"), "{e}"),
        other => panic!("a write to a replica: {other:?}"),
    }
}

#[tokio::test]
async fn redis_restarted_loading_answers_loading_until_its_data_set_is_in() {
    let redis = TestRedis::start().await;
    let began = Instant::now();
    redis.restart_loading(Duration::from_secs(3)).await;
    eprintln!("redis: restart into loading took {:?}", began.elapsed());
    match redis.command(&["PING"]).await.unwrap() {
        Reply::Error(e) => assert!(e.starts_with("LOADING"), "{e}"),
        other => panic!("PING while loading: {other:?}"),
    }
    eventually("redis finishes loading", || pongs(&redis)).await;
    eprintln!("redis: loading ended {:?} after the restart began", began.elapsed());
    assert!(began.elapsed() >= Duration::from_secs(2), "the load took its time");
    assert_eq!(
        redis.command(&["EXISTS", "testkit:loading:0"]).await.unwrap(),
        Reply::Integer(1),
        "the data set is loaded"
    );
}

// ---------------------------------------------------------------------------
// MariaDB

async fn greets(db: &TestMariadb) -> bool {
    db.greeting().await.is_ok_and(|version| version.contains("MariaDB"))
}

/// Runs `SELECT 1` as `user` over TCP with the `mariadb` client.
fn select_one_as(db: &TestMariadb, user: &str, password: &str) -> Result<String, String> {
    let output = std::process::Command::new("mariadb")
        .args([
            "--no-defaults",
            "--protocol=TCP",
            "--host=127.0.0.1",
            "--batch",
            "--skip-column-names",
        ])
        .arg(format!("--port={}", db.port()))
        .arg(format!("--user={user}"))
        .arg(format!("--password={password}"))
        .args(["--execute", "SELECT 1"])
        .output()
        .expect("running the mariadb client (apt-get install mariadb-client)");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

#[tokio::test]
async fn mariadb_starts_greets_dies_comes_back_freezes_and_thaws() {
    let began = Instant::now();
    let db = TestMariadb::start().await;
    eprintln!("mariadb: first start (install + start) took {:?}", began.elapsed());
    let began = Instant::now();
    let second = TestMariadb::start().await;
    eprintln!("mariadb: second start (copy + start) took {:?}", began.elapsed());
    assert_ne!(db.port(), 3306);
    assert_ne!(db.port(), second.port());
    drop(second);

    assert!(db.greeting().await.unwrap().contains("MariaDB"));
    db.create_user("checker", "s3cr'et\\pw").await;
    db.create_database("app").await;

    // Killed right after the setup, which must survive it.
    db.kill();
    assert!(db.pid().is_none());
    assert!(is_refused(db.port()).await, "a killed server refuses connections");

    let began = Instant::now();
    db.restart().await;
    eprintln!("mariadb: restart after a kill took {:?}", began.elapsed());
    assert!(greets(&db).await);
    assert_eq!(db.sql("SHOW DATABASES LIKE 'app'").await.trim(), "app");
    assert_eq!(select_one_as(&db, "checker", "s3cr'et\\pw"), Ok("1".into()));
    let wrong = select_one_as(&db, "checker", "wrong").unwrap_err();
    assert!(wrong.contains("Access denied"), "{wrong}");

    db.freeze();
    assert!(db.is_frozen());
    assert_silent(db.port(), b"").await;
    db.thaw();
    eventually("mariadb greets after thaw", || greets(&db)).await;
}

// ---------------------------------------------------------------------------
// NATS

async fn round_trips(nats: &TestNats) -> bool {
    nats.round_trip().await.is_ok()
}

#[tokio::test]
async fn nats_starts_answers_dies_comes_back_freezes_and_thaws() {
    let began = Instant::now();
    let nats = TestNats::start().await;
    eprintln!("nats: start took {:?}", began.elapsed());
    assert_ne!(nats.port(), 4222);
    let info = nats.info().await.unwrap();
    assert!(info.contains("\"server_id\"") && info.contains("\"jetstream\":true"), "{info}");
    nats.round_trip().await.unwrap();

    nats.kill();
    assert!(nats.pid().is_none());
    assert!(is_refused(nats.port()).await, "a killed server refuses connections");

    let began = Instant::now();
    nats.restart().await;
    eprintln!("nats: restart took {:?}", began.elapsed());
    assert!(round_trips(&nats).await);
    assert!(nats.store_dir().join("jetstream").exists(), "the store dir is in use");

    nats.freeze();
    assert!(nats.is_frozen());
    assert_silent(nats.port(), b"").await;
    nats.thaw();
    eventually("nats answers after thaw", || round_trips(&nats)).await;
}

#[tokio::test]
async fn nats_with_a_token_or_a_password_refuses_clients_without_them() {
    let with_token = TestNats::start_with_token().await;
    let token = with_token.token().expect("a token").to_string();
    assert!(with_token.url_with_credentials().contains(&token));
    assert!(!with_token.url().contains(&token));
    with_token.round_trip().await.unwrap();
    let anonymous = TestNats::start_with(NatsAuth::None).await;
    anonymous.round_trip().await.unwrap();

    let with_user = TestNats::start_with_user().await;
    with_user.round_trip().await.unwrap();
    // A raw CONNECT without credentials is refused.
    let mut stream = TcpStream::connect(("127.0.0.1", with_user.port())).await.unwrap();
    stream.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n").await.unwrap();
    let mut text = String::new();
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 1024];
    while !text.contains("-ERR") {
        assert!(Instant::now() < deadline, "no -ERR: {text}");
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed without -ERR: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains("Authorization Violation"), "{text}");
}

// ---------------------------------------------------------------------------
// RabbitMQ

async fn shakes_hands(rabbit: &TestRabbitmq) -> bool {
    rabbit.handshake().await.is_ok()
}

/// The live processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        let mut fields = stat[stat.rfind(')').unwrap() + 1..].split_whitespace();
        let state = fields.next().unwrap();
        if state != "Z" && fields.next().unwrap().parse::<u32>().unwrap() == pid {
            children.push(child);
        }
    }
    children
}

fn is_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat[stat.rfind(')').unwrap() + 1..].trim_start().starts_with('Z'))
}

/// A channel with publisher confirms on a new connection with the node's
/// credentials.
async fn amqp_channel(rabbit: &TestRabbitmq) -> (Connection, lapin::Channel) {
    let connection =
        Connection::connect(&rabbit.url_with_credentials(), ConnectionProperties::default())
            .await
            .expect("lapin connects with the node's credentials");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    (connection, channel)
}

/// Publishes a persistent message and waits for the broker's ack.
async fn publish(channel: &lapin::Channel, queue: &str, body: &[u8]) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");
}

/// Declares `queue`, publishes a message to it and gets it back.
async fn amqp_round_trip(rabbit: &TestRabbitmq, queue: &str) {
    let (connection, channel) = amqp_channel(rabbit).await;
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    publish(&channel, queue, b"round trip").await;
    let options = BasicGetOptions { no_ack: true };
    let message = channel.basic_get(queue.into(), options).await.unwrap().expect("a message");
    assert_eq!(message.delivery.data, b"round trip");
    let _ = connection.close(200, "OK".into()).await;
}

#[tokio::test]
async fn rabbitmq_starts_answers_dies_comes_back_freezes_and_thaws() {
    let began = Instant::now();
    let rabbit = TestRabbitmq::start().await;
    eprintln!("rabbitmq: start took {:?}", began.elapsed());
    assert!(rabbit.started_in() <= began.elapsed());
    assert_ne!(rabbit.port(), 5672);
    assert!(rabbit.node_name().starts_with("healthd-test-"), "{}", rabbit.node_name());
    assert!(!rabbit.url().contains(rabbit.password()));
    assert!(rabbit.url_with_credentials().contains(rabbit.password()));

    // Only its own user gets in: a wrong password is refused, and so is the
    // machine's default guest user (this is not the machine's node).
    rabbit.handshake().await.unwrap();
    assert!(rabbit.handshake_as(rabbit.user(), "wrong").await.is_err());
    assert!(rabbit.handshake_as("guest", "guest").await.is_err());

    // A round trip with a real client.
    amqp_round_trip(&rabbit, "testkit-before").await;

    rabbit.kill();
    assert!(rabbit.pid().is_none());
    assert!(is_refused(rabbit.port()).await, "a killed node refuses connections");

    let began = Instant::now();
    rabbit.restart().await;
    eprintln!("rabbitmq: restart after a kill took {:?}", began.elapsed());
    assert!(shakes_hands(&rabbit).await);
    // The user and its password are still there; what the node had not yet
    // written out when killed (a queue declared a moment before) may not be,
    // as after any crash, so nothing here counts on it.
    amqp_round_trip(&rabbit, "testkit-after").await;

    rabbit.freeze();
    assert!(rabbit.is_frozen());
    assert_silent(rabbit.port(), b"AMQP\x00\x00\x09\x01").await;
    rabbit.thaw();
    eventually("rabbitmq shakes hands after thaw", || shakes_hands(&rabbit)).await;

    // Dropped, the VM and every process under it (erl_child_setup and its
    // port programs) are gone.
    let vm = rabbit.pid().unwrap();
    let mut tree = vec![vm];
    let mut next = 0;
    while next < tree.len() {
        tree.extend(children_of(tree[next]));
        next += 1;
    }
    assert!(tree.len() > 1, "the VM has helper processes");
    drop(rabbit);
    for pid in tree {
        assert!(is_gone(pid), "PID {pid} of the dropped node's tree is alive");
    }
}

#[tokio::test]
async fn the_shared_rabbitmq_is_started_once_per_test_process() {
    let began = Instant::now();
    let (first, second) = tokio::join!(TestRabbitmq::shared(), TestRabbitmq::shared());
    eprintln!("rabbitmq: shared start took {:?}", began.elapsed());
    assert!(std::ptr::eq(first, second));
    assert!(std::ptr::eq(first, TestRabbitmq::shared().await));
    first.handshake().await.unwrap();
}

// ---------------------------------------------------------------------------
// Certificates, the TLS listener, PostgreSQL over TLS

fn connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A verified handshake over `stream` for `name` trusting `ca`; the rustls
/// error's debug text if it fails.
async fn handshake(
    stream: TcpStream,
    ca: &Path,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    connector(ca).connect(name, stream).await.map_err(|e| format!("{e:?}"))
}

async fn handshake_with(port: u16, ca: &Path, name: &str) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    handshake(stream, ca, name).await.map(drop)
}

fn days_from_now(time: SystemTime) -> f64 {
    match time.duration_since(SystemTime::now()) {
        Ok(ahead) => ahead.as_secs_f64() / 86_400.0,
        Err(behind) => -behind.duration().as_secs_f64() / 86_400.0,
    }
}

#[tokio::test]
async fn minted_certificates_pass_and_fail_verification_as_named() {
    let certs = TestCerts::new();
    let ca = certs.ca_path().to_path_buf();

    let valid = certs.valid();
    let listener = TlsListener::start(&valid).await;
    for name in ["127.0.0.1", "localhost"] {
        handshake_with(listener.port(), &ca, name).await.unwrap();
    }
    // The server completes its side after the client's last flight.
    eventually("the listener counts both handshakes", || async { listener.handshakes() == 2 })
        .await;
    let days = days_from_now(valid.not_after);
    assert!((29.9..30.0).contains(&days), "{days}");
    assert_eq!(valid.ca, ca);

    // An HTTP request over it is answered.
    let stream = TcpStream::connect(("127.0.0.1", listener.port())).await.unwrap();
    let mut tls = handshake(stream, &ca, "localhost").await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK") && response.ends_with("ok"), "{response}");

    let expiring = certs.expiring_in_days(5);
    let days = days_from_now(expiring.not_after);
    assert!(days > 5.0 && days < 5.05, "{days}");
    let listener_5 = TlsListener::start(&expiring).await;
    handshake_with(listener_5.port(), &ca, "localhost").await.unwrap();

    let cases: [(&str, CertFiles, &str); 4] = [
        ("expired", certs.expired_days_ago(2), "Expired"),
        ("unknown CA", certs.by_unknown_ca(), "UnknownIssuer"),
        ("self-signed", certs.self_signed(), "UnknownIssuer"),
        ("another name", certs.for_names(&["other.example"]), "NotValidForName"),
    ];
    for (what, files, expected) in cases {
        let listener = TlsListener::start(&files).await;
        let error = handshake_with(listener.port(), &ca, "localhost").await.unwrap_err();
        assert!(error.contains(expected), "{what}: {error}");
    }
    let expired = certs.expired_days_ago(2);
    let days = days_from_now(expired.not_after);
    assert!(days < -2.0 && days > -2.05, "{days}");
    assert!(expired.not_before < expired.not_after);

    // The unknown CA's leaf verifies against the unknown CA: only trust differs.
    let by_unknown = certs.by_unknown_ca();
    let listener = TlsListener::start(&by_unknown).await;
    handshake_with(listener.port(), &by_unknown.ca, "localhost").await.unwrap();

    let port = listener.port();
    drop(listener);
    eventually("a dropped listener refuses", || is_refused(port)).await;

    let dir = certs.dir().to_path_buf();
    assert!(dir.join("test-ca.crt").exists());
    drop(certs);
    assert!(!dir.exists(), "the temp dir is removed");
}

/// PostgreSQL's SSLRequest, then a TLS handshake on the same stream.
async fn postgres_handshake(pg: &TestPostgres, ca: &Path, name: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", pg.port())).await.unwrap();
    stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.unwrap();
    if answer[0] != b'S' {
        return Err(format!("SSLRequest answered {:?}", answer[0] as char));
    }
    handshake(stream, ca, name).await.map(drop)
}

#[tokio::test]
async fn postgres_over_tls_presents_a_certificate_from_the_test_ca() {
    let began = Instant::now();
    let pg = TestPostgres::start_tls().await;
    eprintln!(
        "postgres (TLS): start (initdb into the template + start) took {:?}",
        began.elapsed()
    );
    let ca = pg.ca_path().expect("a TLS cluster has a CA").to_path_buf();
    postgres_handshake(&pg, &ca, "127.0.0.1").await.unwrap();
    postgres_handshake(&pg, &ca, "localhost").await.unwrap();
    let mismatch = postgres_handshake(&pg, &ca, "db.example").await.unwrap_err();
    assert!(mismatch.contains("NotValidForName"), "{mismatch}");
    let unknown = pg.certs().unwrap().unknown_ca_path().to_path_buf();
    let untrusted = postgres_handshake(&pg, &unknown, "localhost").await.unwrap_err();
    assert!(untrusted.contains("UnknownIssuer"), "{untrusted}");
    // Plain connections still work (the superuser's, and the test's client).
    pg.client().await.simple_query("SELECT 1").await.unwrap();

    pg.kill();
    pg.restart().await;
    postgres_handshake(&pg, &ca, "localhost").await.unwrap();
    let began = Instant::now();
    let plain = TestPostgres::start().await;
    eprintln!("postgres: start (template made) took {:?}", began.elapsed());
    assert!(plain.ca_path().is_none());
}

#[tokio::test]
async fn postgres_tls_only_for_another_name_refuses_plain_roles_and_mismatches() {
    let pg = TestPostgres::start_tls_with(PostgresTls {
        names: vec!["db.example".into()],
        tls_only: true,
    })
    .await;
    let ca = pg.ca_path().unwrap().to_path_buf();
    postgres_handshake(&pg, &ca, "db.example").await.unwrap();
    let mismatch = postgres_handshake(&pg, &ca, "127.0.0.1").await.unwrap_err();
    assert!(mismatch.contains("NotValidForName"), "{mismatch}");

    pg.create_role("checker", "pw").await;
    let plain =
        tokio_postgres::connect(&pg.url_with_password("checker", "pw"), tokio_postgres::NoTls)
            .await
            .err()
            .expect("a plain connection of another role is refused");
    let message = healthd_testkit::postgres::describe_error(&plain);
    assert!(message.contains("no encryption"), "{message}");
}
