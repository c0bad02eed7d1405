//! `kind = "amqp"` against a throwaway RabbitMQ node (healthd-testkit's
//! `TestRabbitmq`, its own user and random password on a free port): a
//! connection, a queue the test declares (with a unique name, deleted at the
//! end even when the test fails, and set to expire on its own), a queue that
//! does not exist, a wrong password; and against a closed port, a listener
//! that never answers, and a proxy the test cuts to prove the kept
//! connection is made again. Every state is waited for with a deadline.
//!
//! One node serves every test of this binary (`TestRabbitmq::shared()`,
//! `every_kind` too): a node takes seconds to start (an Erlang VM and a fresh
//! database) and a hundred MB or more, on cores the suite already fills,
//! and none of these tests stops or freezes the broker (the proxy is what is
//! cut), while unique queue names keep them apart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::StatusCode;
use tokio::net::{TcpListener, TcpStream};

use crate::support::app::{spawn_app_with_env, Answer, TestApp};
use crate::support::checks::{
    assert_no_secret, config, every_body, is_unavailable, shows, unique, DEADLINE,
};
use crate::support::rabbitmq::TestRabbitmq;
use crate::support::upstream::{refused_address, Silent};

const BROKER: &str = "broker:responseTime";

/// The broker every test of this binary shares (see the module docs).
async fn rabbitmq() -> &'static TestRabbitmq {
    TestRabbitmq::shared().await
}

/// One amqp check named `broker` reading its URL from `BROKER_URL`.
fn broker_check(extra: &str) -> String {
    config(&format!(
        r#"
[[checks]]
name = "broker"
kind = "amqp"
url_env = "BROKER_URL"
interval = "1500ms"
timeout = "1s"
retries = 0
{extra}
"#
    ))
}

async fn spawn_with_url(check: &str, url: &str) -> TestApp {
    spawn_app_with_env(check, BTreeMap::from([("BROKER_URL".to_string(), url.to_string())])).await
}

async fn wait_shows(app: &TestApp, wanted: &str, wanted_output: Option<&str>) -> Answer {
    app.wait_for("/health", None, DEADLINE, |a| shows(a, BROKER, wanted, wanted_output)).await
}

/// A queue of the shared broker with a unique name, deleted on drop. It
/// also expires by itself a minute after its last use.
struct TestQueue {
    name: String,
    /// The broker's URL with its credentials, for the delete.
    url: String,
}

impl TestQueue {
    /// Declares the queue and publishes `messages` messages to it.
    async fn declare(messages: usize) -> TestQueue {
        let name = unique("healthd-test-");
        let url = rabbitmq().await.url_with_credentials();
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("the test RabbitMQ answers");
        let channel = connection.create_channel().await.expect("a channel");
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongUInt(60_000));
        channel
            .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), arguments)
            .await
            .expect("declaring the test queue");
        let queue = TestQueue { name, url };
        for _ in 0..messages {
            channel
                .basic_publish(
                    "".into(),
                    queue.name.as_str().into(),
                    BasicPublishOptions::default(),
                    b"healthd test",
                    BasicProperties::default(),
                )
                .await
                .expect("publishing")
                .await
                .expect("the broker takes the message");
        }
        let _ = connection.close(200, "OK".into()).await;
        queue
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        // Drop cannot await: delete from a runtime of its own, on a thread of
        // its own, so that this works inside the test's runtime too.
        let (name, url) = (self.name.clone(), self.url.clone());
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await?;
                connection.close(200, "OK".into()).await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!(
                "could not delete test queue {} (it expires by itself): {deleted:?}",
                self.name
            );
        }
    }
}

#[tokio::test]
async fn a_reachable_broker_passes_and_a_queue_reports_its_messages_and_consumers() {
    // Arrange
    let rabbitmq = rabbitmq().await;
    let queue = TestQueue::declare(3).await;
    let checks = format!(
        r#"
[[checks]]
name = "broker"
kind = "amqp"
url_env = "BROKER_URL"
interval = "1500ms"
timeout = "1s"
retries = 0

[[checks]]
name = "orders"
kind = "amqp"
url_env = "BROKER_URL"
queue = "{}"
interval = "1500ms"
timeout = "1s"
retries = 0
"#,
        queue.name
    );

    // Act
    let app = spawn_with_url(&config(&checks), &rabbitmq.url_with_credentials()).await;

    // Assert
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, BROKER, "pass", None) && shows(a, "orders:responseTime", "pass", None)
        })
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let reading = answer.check(BROKER).unwrap();
    assert_eq!(reading["componentType"], "component");
    assert_eq!(reading["observedUnit"], "ms");
    assert!(answer.check("broker:messages").is_none(), "no queue, no messages");
    let messages = answer.check("orders:messages").expect("a messages reading");
    assert_eq!(messages["observedValue"], 3.0);
    assert_eq!(messages["observedUnit"], "messages");
    let consumers = answer.check("orders:consumers").expect("a consumers reading");
    assert_eq!(consumers["observedValue"], 0.0);
    assert_eq!(consumers["observedUnit"], "consumers");
    assert_no_secret(
        &every_body(&app, &["broker", "orders"]).await,
        &[rabbitmq.password()],
        "pass",
    );
}

#[tokio::test]
async fn more_messages_than_warn_above_messages_warn() {
    // Arrange
    let queue = TestQueue::declare(3).await;
    let check = broker_check(&format!("queue = \"{}\"\nwarn_above_messages = 2", queue.name));
    let url = rabbitmq().await.url_with_credentials();

    // Act
    let app = spawn_with_url(&check, &url).await;

    // Assert: warn is still 200.
    let answer = wait_shows(&app, "warn", Some("messages above 2")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["status"], "warn");
    assert_eq!(answer.check("broker:messages").unwrap()["observedValue"], 3.0);
}

#[tokio::test]
async fn a_missing_queue_fails_with_queue_not_found_and_the_connection_survives_it() {
    // Arrange: one check for a queue nobody declared, one without a queue on
    // the same broker.
    let missing = unique("healthd-missing-");
    let check = broker_check(&format!("queue = \"{missing}\""));
    let url = rabbitmq().await.url_with_credentials();

    // Act
    let app = spawn_with_url(&check, &url).await;

    // Assert: several runs in a row say so (the channel the broker closed is
    // not the connection).
    let answer = wait_shows(&app, "fail", Some("queue not found")).await;
    assert!(is_unavailable(&answer));
    app.wait_for("/health", None, DEADLINE, |a| {
        shows(a, BROKER, "fail", Some("queue not found"))
            && crate::support::checks::failures(a, BROKER) >= 3
    })
    .await;
    // A passive declare never creates the queue.
    let connection = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    assert!(channel
        .queue_declare(missing.as_str().into(), passive, FieldTable::default())
        .await
        .is_err());
    let _ = connection.close(200, "OK".into()).await;
}

#[tokio::test]
async fn a_wrong_password_fails_with_a_category_and_never_shows_the_password() {
    // Arrange
    let rabbitmq = rabbitmq().await;
    let password = unique("wrong-password-");
    let url = format!("amqp://{}:{password}@127.0.0.1:{}/%2f", rabbitmq.user(), rabbitmq.port());

    // Act
    let app = spawn_with_url(&broker_check(""), &url).await;

    // Assert
    let answer = wait_shows(&app, "fail", Some("authentication failed")).await;
    assert!(is_unavailable(&answer));
    assert_no_secret(&every_body(&app, &["broker"]).await, &[&password], "wrong password");
}

#[tokio::test]
async fn a_closed_port_is_connection_refused_and_a_silent_listener_times_out() {
    // Arrange
    let closed = refused_address().await;
    let silent = Silent::start().await;
    let checks = format!(
        r#"
[[checks]]
name = "broker"
kind = "amqp"
url = "amqp://{closed}/%2f"
interval = "1500ms"
timeout = "1s"
retries = 0

[[checks]]
name = "silent"
kind = "amqp"
url = "amqp://{}/%2f"
interval = "700ms"
timeout = "500ms"
retries = 0
"#,
        silent.address()
    );

    // Act
    let app = crate::support::app::spawn_app(&config(&checks)).await;

    // Assert
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, BROKER, "fail", Some("connection refused"))
                && shows(a, "silent:responseTime", "fail", Some("timed out after 500 ms"))
        })
        .await;
    assert!(is_unavailable(&answer));
    // One connect waits on the silent listener, carried from run to run.
    app.wait_for("/health", None, DEADLINE, |a| {
        crate::support::checks::failures(a, "silent:responseTime") >= 3
    })
    .await;
    assert_eq!(silent.accepted(), 1, "each run started a connection of its own");
}

/// A TCP proxy to the broker that the test can cut: while cut, it closes the
/// connections it carries and closes new ones at once.
struct CutProxy {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                let flag = flag.clone();
                tokio::spawn(async move {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let watch = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = watch => {}
                    }
                });
            }
        });
        CutProxy { address, cut, task }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_lost_connection_fails_the_check_and_is_made_again_when_the_broker_is_back() {
    // Arrange
    let rabbitmq = rabbitmq().await;
    let proxy = CutProxy::start(SocketAddr::from(([127, 0, 0, 1], rabbitmq.port()))).await;
    let url = rabbitmq.url_with_credentials_at(proxy.address);
    let app = spawn_with_url(&broker_check(""), &url).await;
    wait_shows(&app, "pass", None).await;

    // Act
    proxy.set_cut(true);

    // Assert: the kept connection broke; the check says so.
    let answer = app.wait_for("/health", None, DEADLINE, is_unavailable).await;
    assert_eq!(answer.json["status"], "fail");

    // Act: the broker is reachable again.
    proxy.set_cut(false);

    // Assert: a new connection, without restarting healthd.
    let answer = wait_shows(&app, "pass", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_no_secret(&every_body(&app, &["broker"]).await, &[rabbitmq.password()], "reconnect");
}
