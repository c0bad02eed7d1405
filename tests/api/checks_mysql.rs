//! `kind = "mysql"` against a real, throwaway MariaDB that the tests kill,
//! freeze, thaw and restart, and against a listener that never answers:
//! every state is waited for with a deadline. The figures the tests print
//! (`MEASURED ...`, shown with `--nocapture`) are the ones the issue note
//! quotes. The fault tests it shares with `postgres` are written in
//! `support::datastore`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::app::{spawn_app, spawn_app_with_env};
use crate::support::checks::{
    assert_no_secret, config, every_body, output, shows, unique, wait_shows, DEADLINE,
};
use crate::support::datastore::{self, db_check, SqlServer, DB, TIMEOUT_OUTPUT};
use crate::support::mariadb::TestMariadb;
use crate::support::upstream::{Behaviour, Upstream};

impl SqlServer for TestMariadb {
    datastore::testkit_controls!(name: "MariaDB", kind: "mysql");

    fn url_at(address: SocketAddr) -> String {
        format!("mysql://root@{address}/mysql")
    }

    /// Connections over TCP (healthd's; the test's own `sql()` uses the
    /// Unix socket).
    async fn healthd_connections(&self) -> usize {
        self.sql(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE HOST LIKE '127.0.0.1:%'",
        )
        .await
        .trim()
        .parse()
        .expect("a count")
    }
}

#[tokio::test]
async fn stopping_mariadb_fails_the_check_and_a_restart_brings_it_back_without_restarting_healthd()
{
    let db = TestMariadb::start().await;
    datastore::a_kill_fails_the_check_and_a_restart_brings_it_back(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_mariadb_times_out_within_deadline_plus_interval_while_probes_stay_fast() {
    let db = TestMariadb::start().await;
    datastore::a_freeze_times_out_within_deadline_plus_interval_while_probes_stay_fast(&db).await;
}

#[tokio::test]
async fn a_listener_that_never_answers_in_place_of_mariadb_is_bounded_by_the_deadline() {
    let first_reading =
        datastore::a_silent_listener_is_bounded_by_the_deadline::<TestMariadb>().await;
    assert!(first_reading < Duration::from_millis(750 + 5_000), "{first_reading:?}");
}

#[tokio::test]
async fn wrong_or_missing_passwords_and_unknown_databases_are_reported_as_categories() {
    // Arrange
    let db = TestMariadb::start().await;
    db.create_user("checker", "right-password").await;
    let env = BTreeMap::from([
        (
            "GOOD_URL".to_string(),
            format!("{}/mysql", db.url_with_password("checker", "right-password")),
        ),
        ("BAD_URL".to_string(), db.url_with_password("checker", "wrong-password")),
        (
            "NODB_URL".to_string(),
            format!("{}/no_such_database", db.url_with_password("checker", "right-password")),
        ),
    ]);
    let no_password = format!("mysql://checker@127.0.0.1:{}", db.port());
    let app = spawn_app_with_env(
        &config(&format!(
            r#"
[defaults]
# A deadline a loaded machine meets on the first connect.
interval = "3s"
timeout = "2s"
retries = 0

[[checks]]
name = "good"
kind = "mysql"
url_env = "GOOD_URL"

[[checks]]
name = "bad"
kind = "mysql"
url_env = "BAD_URL"
critical = false

[[checks]]
name = "none"
kind = "mysql"
url = "{no_password}"
critical = false

[[checks]]
name = "nodb"
kind = "mysql"
url_env = "NODB_URL"
critical = false
"#
        )),
        env,
    )
    .await;

    // Act: each check's first run can still be cut by a loaded machine,
    // so wait for the state rather than take the first reading.
    let answer = app
        .wait_for("/health", None, DEADLINE, |answer| {
            shows(answer, "good:responseTime", "pass", None)
                && shows(answer, "bad:responseTime", "fail", Some("authentication failed"))
                && shows(answer, "none:responseTime", "fail", Some("authentication failed"))
                && shows(answer, "nodb:responseTime", "fail", Some("unknown database"))
        })
        .await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["status"], "warn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dsn_password_never_shows_in_answers_or_logs_in_any_fault() {
    // Arrange
    let password = unique("dsnsecret");
    let wrong = unique("wrongsecret");
    let db = TestMariadb::start().await;
    db.create_user("secretive", &password).await;
    let silent = Upstream::start(Behaviour::Never).await;
    let good_url = db.url_with_password("secretive", &password);
    let bad_url = db.url_with_password("secretive", &wrong);
    let nodb_url = format!("{good_url}/no_such_database");
    let silent_url = format!("mysql://secretive:{password}@{}/mysql", silent.address());
    let secrets = [
        password.as_str(),
        wrong.as_str(),
        good_url.as_str(),
        bad_url.as_str(),
        nodb_url.as_str(),
        silent_url.as_str(),
    ];
    let env = BTreeMap::from([
        ("DATABASE_URL".to_string(), good_url.clone()),
        ("WRONG_URL".to_string(), bad_url.clone()),
        ("NODB_URL".to_string(), nodb_url.clone()),
        ("SILENT_URL".to_string(), silent_url.clone()),
    ]);
    let others = ["wrong", "nodb", "silent"]
        .iter()
        .map(|name| {
            format!(
                r#"
[[checks]]
name = "{name}"
kind = "mysql"
url_env = "{}_URL"
interval = "1s"
timeout = "750ms"
retries = 0
critical = false
"#,
                name.to_uppercase()
            )
        })
        .collect::<String>();
    let app =
        spawn_app_with_env(&db_check("mysql", "url_env = \"DATABASE_URL\"", &others), env).await;
    let names = ["db", "wrong", "nodb", "silent"];

    // Act + Assert, fault after fault.
    wait_shows(&app, DB, "pass", None).await;
    app.wait_for("/health", None, DEADLINE, |a| {
        shows(a, "wrong:responseTime", "fail", Some("authentication failed"))
            && shows(a, "nodb:responseTime", "fail", Some("unknown database"))
            && shows(a, "silent:responseTime", "fail", Some(TIMEOUT_OUTPUT))
    })
    .await;
    let fault = "authentication failed, unknown database, never answering";
    assert_no_secret(&every_body(&app, &names).await, &secrets, fault);
    datastore::no_secret_shows_through_the_faults(&app, &db, &names, &secrets).await;
}

#[tokio::test]
async fn a_connection_whose_query_was_cut_mid_result_is_closed_and_never_reused() {
    // Arrange: a query whose first row (larger than the server's 16 KiB net
    // buffer, so it is flushed at once) arrives at once and whose second
    // comes 2 s later: every run is cut at its 1 s deadline while it reads
    // rows, the case where mysql_async's own pool would drain the rest and
    // put the connection back.
    let db = TestMariadb::start().await;
    let query =
        "SELECT REPEAT('x', 100000) AS filler, IF(seq = 1, 0, SLEEP(2)) AS pause FROM seq_1_to_2";
    let app = spawn_app(&config(&format!(
        r#"
[[checks]]
name = "slow"
kind = "mysql"
url = "{}/mysql"
query = "{query}"
interval = "1500ms"
timeout = "1s"
retries = 0
"#,
        db.url()
    )))
    .await;

    // Act: watch which server connection runs each of the check's queries
    // (QUERY_ID is new for every statement the server runs).
    let mut runs: BTreeMap<u64, u64> = BTreeMap::new();
    let started = Instant::now();
    while runs.len() < 4 {
        assert!(started.elapsed() < DEADLINE * 2, "saw only {runs:?}");
        let rows = db
            .sql(
                "SELECT QUERY_ID, ID FROM information_schema.PROCESSLIST \
                 WHERE INFO LIKE 'SELECT REPEAT%' AND ID <> CONNECTION_ID()",
            )
            .await;
        for row in rows.lines() {
            let mut columns = row.split('\t').map(|column| column.parse::<u64>().expect("an id"));
            let (query_id, connection_id) = (columns.next().unwrap(), columns.next().unwrap());
            runs.insert(query_id, connection_id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Assert: each run had a connection of its own.
    let answer = app.get("/health").await;
    assert_eq!(output(&answer, "slow:responseTime"), Some("timed out after 1000 ms"));
    let connections: BTreeSet<u64> = runs.values().copied().collect();
    assert_eq!(connections.len(), runs.len(), "a connection ran two queries: {runs:?}");
}

#[tokio::test]
async fn require_ssl_verifies_the_certificate_against_ca_file_or_the_system_roots() {
    // Arrange: a certificate for 127.0.0.1 only, signed by the test's CA.
    // Every check connects as a user the server lets in over TLS only.
    let db = TestMariadb::start_tls(&["127.0.0.1"]).await;
    db.sql("CREATE USER tls_only@'%' REQUIRE SSL; GRANT USAGE ON *.* TO tls_only@'%'").await;
    let plain = TestMariadb::start().await;
    let ca = db.ca_path().expect("a TLS server's CA").display().to_string();
    let tls_check = |name: &str, host: &str, parameters: &str, ca_file: bool| {
        let ca_file = if ca_file { format!("ca_file = {ca:?}") } else { String::new() };
        format!(
            r#"
[[checks]]
name = "{name}"
kind = "mysql"
url = "mysql://tls_only@{host}:{}/?require_ssl=true{parameters}"
{ca_file}
critical = false
"#,
            db.port()
        )
    };
    let checks = [
        tls_check("trusted", "127.0.0.1", "", true),
        tls_check("untrusted", "127.0.0.1", "", false),
        tls_check("wrong_name", "localhost", "", true),
        tls_check("any_certificate", "localhost", "&verify_ca=false", false),
        format!(
            r#"
[[checks]]
name = "plain"
kind = "mysql"
url = "{}/mysql?require_ssl=true"
critical = false
"#,
            plain.url()
        ),
    ];
    let app = spawn_app(&config(&format!(
        r#"
[defaults]
# A TLS handshake on a loaded machine: a deadline it meets.
interval = "3s"
timeout = "2s"
retries = 0
{}
"#,
        checks.concat()
    )))
    .await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |answer| {
            shows(answer, "trusted:responseTime", "pass", None)
                && shows(answer, "any_certificate:responseTime", "pass", None)
                && shows(
                    answer,
                    "untrusted:responseTime",
                    "fail",
                    Some("TLS: certificate not trusted"),
                )
                && shows(answer, "wrong_name:responseTime", "fail", Some("TLS: hostname mismatch"))
                && shows(
                    answer,
                    "plain:responseTime",
                    "fail",
                    Some("TLS: the server does not accept TLS"),
                )
        })
        .await;

    // Assert
    assert_eq!(answer.json["status"], "warn");
}
