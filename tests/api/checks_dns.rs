//! `kind = "dns"`: a throwaway dnsmasq (testkit) on a free port answers for
//! the `test` zone; the tests change its records, kill it, freeze it and
//! restart it while healthd watches.

use reqwest::StatusCode;

use crate::support::app::spawn_app;
use crate::support::checks::{config, output, shows, status, wait_shows, DEADLINE};
use healthd_testkit::dnsmasq::TestDnsmasq;

const RT: &str = "orders:responseTime";
const ANSWERS: &str = "orders:answers";

/// One dns check named `name` asking `server`, every 300 ms with a 200 ms
/// deadline and no retries; `extra` adds keys.
fn dns_check(name: &str, server: &str, extra: &str) -> String {
    format!(
        r#"
[[checks]]
name = "{name}"
kind = "dns"
servers = ["{server}"]
interval = "300ms"
timeout = "200ms"
retries = 0
{extra}
"#
    )
}

/// A config with one dns check named `orders`.
fn orders_check(server: &str, extra: &str) -> String {
    config(&dns_check("orders", server, extra))
}

const HOSTS: &str = "10.0.0.1 orders.test\n10.0.0.2 orders.test\n";

#[tokio::test]
async fn a_name_that_resolves_to_the_expected_answers_passes_with_its_time_and_count() {
    // Arrange
    let dns = TestDnsmasq::start(HOSTS, "").await;
    let app = spawn_app(&orders_check(
        &dns.address(),
        "domain = \"orders.test\"\nexpect_exact = [\"10.0.0.2\", \"10.0.0.1\"]",
    ))
    .await;

    // Act
    let answer = wait_shows(&app, RT, "pass", None).await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK, "{:#}\n{}", answer.json, dns.log_tail());
    let reading = answer.check(RT).unwrap();
    assert_eq!(reading["status"], "pass");
    assert_eq!(reading["componentType"], "component");
    assert_eq!(reading["observedUnit"], "ms");
    assert!(reading["observedValue"].as_f64().is_some_and(|ms| ms >= 0.0), "{reading}");
    let count = answer.check(ANSWERS).unwrap();
    assert_eq!(count["observedValue"].as_f64(), Some(2.0));
    assert_eq!(count["observedUnit"], "records");
}

#[tokio::test]
async fn answers_that_change_fail_the_expectation_and_pass_again_once_restored() {
    // Arrange
    let dns = TestDnsmasq::start(HOSTS, "").await;
    let app = spawn_app(&orders_check(
        &dns.address(),
        "domain = \"orders.test\"\nexpect_contains = [\"10.0.0.2\"]",
    ))
    .await;
    wait_shows(&app, RT, "pass", None).await;

    // Act: 10.0.0.2 leaves the record set.
    dns.set_hosts("10.0.0.1 orders.test\n10.0.0.3 orders.test\n");
    let changed = wait_shows(&app, RT, "fail", Some("10.0.0.2 is not among the answers")).await;

    // Assert
    assert_eq!(changed.status, StatusCode::SERVICE_UNAVAILABLE);

    // Act
    dns.set_hosts(HOSTS);
    wait_shows(&app, RT, "pass", None).await;
}

#[tokio::test]
async fn a_txt_record_is_held_to_a_regex_and_a_wrong_answer_says_so() {
    // Arrange
    let dns = TestDnsmasq::start("", "txt-record=orders.test,\"v=spf1 -all\"\n").await;
    let txt = "domain = \"orders.test\"\nrecord_type = \"TXT\"\nexpect_regex =";
    let checks = dns_check("orders", &dns.address(), &format!("{txt} \"^v=spf1 \""))
        + &dns_check("wrong", &dns.address(), &format!("{txt} \"^v=DKIM1\""));
    let app = spawn_app(&config(&checks)).await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, RT, "pass", None) && status(a, "wrong:responseTime") == Some("fail")
        })
        .await;

    // Assert
    assert!(shows(&answer, RT, "pass", None), "{:#}\n{}", answer.json, dns.log_tail());
    assert_eq!(output(&answer, "wrong:responseTime"), Some("no answer matches expect_regex"));
}

#[tokio::test]
async fn nxdomain_fails_unless_it_is_the_expected_rcode() {
    // Arrange
    let dns = TestDnsmasq::start(HOSTS, "").await;
    let checks = dns_check("orders", &dns.address(), "domain = \"gone.test\"")
        + &dns_check(
            "retired",
            &dns.address(),
            "domain = \"gone.test\"\nexpect_rcode = \"NXDOMAIN\"",
        );
    let app = spawn_app(&config(&checks)).await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, RT, "fail", Some("NXDOMAIN")) && shows(a, "retired:responseTime", "pass", None)
        })
        .await;

    // Assert
    assert!(shows(&answer, RT, "fail", Some("NXDOMAIN")), "{:#}", answer.json);
    assert!(shows(&answer, "retired:responseTime", "pass", None), "{:#}", answer.json);
    assert_eq!(answer.check("retired:answers").unwrap()["observedValue"].as_f64(), Some(0.0));
}

#[tokio::test]
async fn a_name_outside_the_servers_zone_is_refused() {
    // Arrange: no upstream, so dnsmasq refuses what it is not local for.
    let dns = TestDnsmasq::start(HOSTS, "").await;
    let app = spawn_app(&orders_check(&dns.address(), "domain = \"example.com\"")).await;

    // Act
    let answer = wait_shows(&app, RT, "fail", Some("REFUSED")).await;

    // Assert
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_killed_server_fails_and_a_restarted_one_passes_again() {
    // Arrange: over TCP, where a dead server is a connection refused (hickory says only that none could be made).
    let dns = TestDnsmasq::start(HOSTS, "").await;
    let app =
        spawn_app(&orders_check(&dns.address(), "domain = \"orders.test\"\nprotocol = \"tcp\""))
            .await;
    wait_shows(&app, RT, "pass", None).await;

    // Act
    dns.kill();
    let down = wait_shows(&app, RT, "fail", Some("connection failed")).await;

    // Assert
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);

    // Act
    dns.restart().await;
    wait_shows(&app, RT, "pass", None).await;
}

#[tokio::test]
async fn a_frozen_server_times_out_at_the_deadline_and_recovers_when_thawed() {
    // Arrange: over UDP, where a silent server is only a missing answer.
    let dns = TestDnsmasq::start(HOSTS, "").await;
    let app = spawn_app(&orders_check(&dns.address(), "domain = \"orders.test\"")).await;
    wait_shows(&app, RT, "pass", None).await;

    // Act
    dns.freeze();
    let frozen = wait_shows(&app, RT, "fail", Some("timed out after 200 ms")).await;

    // Assert
    assert_eq!(frozen.status, StatusCode::SERVICE_UNAVAILABLE);

    // Act
    dns.thaw();
    wait_shows(&app, RT, "pass", None).await;
}
