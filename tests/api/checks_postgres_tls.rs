//! `kind = "postgres"` over TLS, against a throwaway cluster with `ssl = on`
//! whose certificate the test minted, and that refuses plain connections
//! for the role the checks use: `sslmode=require`, `verify-ca` and
//! `verify-full`, a private CA in `ca_file`, and the categories of a
//! certificate the check cannot trust.

use std::collections::BTreeMap;

use crate::support::app::spawn_app_with_env;
use crate::support::checks::{config, shows, unique, DEADLINE};
use crate::support::postgres::{PostgresTls, TestPostgres};

/// A TLS-only cluster (for every role but the superuser) whose certificate
/// holds `names`, and a role `app` with a password: its URL with `?query`.
async fn tls_cluster(names: &[&str]) -> (TestPostgres, String) {
    let pg = TestPostgres::start_tls_with(PostgresTls {
        names: names.iter().map(|name| name.to_string()).collect(),
        tls_only: true,
    })
    .await;
    let password = unique("tlspw");
    pg.create_role("app", &password).await;
    let url = pg.url_with_password("app", &password);
    (pg, url)
}

/// Checks named after their sslmode, each reading `NAME_URL`, one table each.
fn tls_checks(checks: &[(&str, &str, Option<&std::path::Path>)]) -> String {
    let mut text =
        String::from("[defaults]\ninterval = \"2s\"\ntimeout = \"1500ms\"\nretries = 0\n");
    for (name, _, ca_file) in checks {
        text.push_str(&format!(
            "\n[[checks]]\nname = \"{name}\"\nkind = \"postgres\"\nurl_env = \"{}_URL\"\ncritical = false\n",
            name.to_uppercase()
        ));
        if let Some(path) = ca_file {
            text.push_str(&format!("ca_file = \"{}\"\n", path.display()));
        }
    }
    config(&text)
}

fn env_for(checks: &[(&str, &str, Option<&std::path::Path>)]) -> BTreeMap<String, String> {
    checks
        .iter()
        .map(|(name, url, _)| (format!("{}_URL", name.to_uppercase()), url.to_string()))
        .collect()
}

#[tokio::test]
async fn require_verify_ca_and_verify_full_pass_against_a_server_the_ca_file_trusts() {
    // Arrange
    let (pg, url) = tls_cluster(&["127.0.0.1", "localhost"]).await;
    let ca = pg.ca_path().expect("a TLS cluster has a CA");
    let require = format!("{url}?sslmode=require");
    let verify_ca = format!("{url}?sslmode=verify-ca");
    let verify_full = format!("{url}?sslmode=verify-full");
    let plain = format!("{url}?sslmode=disable");
    let checks = [
        ("require", require.as_str(), None),
        ("verifyca", verify_ca.as_str(), Some(ca)),
        ("verifyfull", verify_full.as_str(), Some(ca)),
        ("plain", plain.as_str(), None),
    ];

    // Act
    let app = spawn_app_with_env(&tls_checks(&checks), env_for(&checks)).await;

    // Assert: TLS gets in; without it the server's pg_hba turns the role away.
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, "require:responseTime", "pass", None)
                && shows(a, "verifyca:responseTime", "pass", None)
                && shows(a, "verifyfull:responseTime", "pass", None)
                && shows(a, "plain:responseTime", "fail", Some("authentication failed"))
        })
        .await;
    assert_eq!(answer.json["status"], "warn");
}

#[tokio::test]
async fn a_certificate_the_check_cannot_trust_or_that_names_another_host_is_a_category() {
    // Arrange: the certificate is for another host, signed by the test CA.
    let (pg, url) = tls_cluster(&["db.example"]).await;
    let ca = pg.ca_path().expect("a TLS cluster has a CA");
    let untrusted = format!("{url}?sslmode=verify-full");
    let mismatch = format!("{url}?sslmode=verify-full");
    let chain_only = format!("{url}?sslmode=verify-ca");
    let checks = [
        ("untrusted", untrusted.as_str(), None),
        ("mismatch", mismatch.as_str(), Some(ca)),
        ("chainonly", chain_only.as_str(), Some(ca)),
    ];

    // Act
    let app = spawn_app_with_env(&tls_checks(&checks), env_for(&checks)).await;

    // Assert
    app.wait_for("/health", None, DEADLINE, |a| {
        shows(a, "untrusted:responseTime", "fail", Some("TLS: certificate not trusted"))
            && shows(a, "mismatch:responseTime", "fail", Some("TLS: hostname mismatch"))
            && shows(a, "chainonly:responseTime", "pass", None)
    })
    .await;
}

#[tokio::test]
async fn require_against_a_server_without_tls_says_so() {
    // Arrange
    let pg = TestPostgres::start().await;
    let url = format!("{}?sslmode=require", pg.url());
    let checks = [("require", url.as_str(), None)];

    // Act
    let app = spawn_app_with_env(&tls_checks(&checks), env_for(&checks)).await;

    // Assert
    app.wait_for("/health", None, DEADLINE, |a| {
        shows(a, "require:responseTime", "fail", Some("TLS: the server does not accept TLS"))
    })
    .await;
}

#[test]
fn a_ca_file_that_cannot_be_read_is_a_config_problem() {
    let text = "[[checks]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"postgres://h/db?sslmode=verify-full\"\nca_file = \"/no/such/ca.pem\"\n";
    let problems = healthd::Settings::parse(text, "t.toml", &BTreeMap::new())
        .expect_err("an unreadable ca_file is refused")
        .to_string();
    assert!(
        problems.starts_with("t.toml: checks[0].ca_file: cannot read /no/such/ca.pem"),
        "{problems}"
    );
}
