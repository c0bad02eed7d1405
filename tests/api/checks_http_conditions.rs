//! Conditions on what an http dependency answers, against a local server
//! that answers the bodies and headers under test: every rule passing and
//! failing, the response-time limits, hostile bodies (50 MB, endless, not
//! UTF-8, JSON nested 100,000 deep) against the real binary with its RSS
//! read from /proc, a secret body that never shows, and the config
//! problems of bad rules.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::app::{send, spawn_app, spawn_binary, Answer};
use crate::support::checks::{
    assert_no_secret, config, every_body, output, status, unique, DEADLINE,
};
use crate::support::upstream::{Behaviour, Body, Reply, Upstream};
use healthd_testkit::readme::readme_block;

/// What a healthy dependency answers: every rule below holds.
const GOOD: &str = r#"{"status":"UP","load":0.42,"threads":4,"mode":"primary","ready":true,
"workers":[{"id":1}],"components":{"db":{"status":"UP"},"disk":{"status":"UP"}}}"#;

/// What a troubled one answers: every rule below breaks.
const BAD: &str = r#"{"status":"DOWN","load":0.93,"threads":2,"mode":"maintenance",
"error":"disk full","workers":[],"components":{"db":{"status":"UP"},"disk":{"status":"DOWN"}}}"#;

fn good_reply() -> Reply {
    Reply::json(GOOD)
        .header("x-mode", b"primary")
        .header("x-version", b"1.4.2")
        .header("x-degraded", b"false")
}

fn bad_reply() -> Reply {
    Reply::json(BAD)
        .status(203)
        .header("x-mode", b"maintenance")
        .header("x-degraded", b"true")
        .header("retry-after", b"120")
}

/// (check name, its one rule, the status and output it shows on `BAD`).
const RULES: &[(&str, &str, &str, &str)] = &[
    (
        "status-one-of",
        "subject = \"status\"\nop = \"one-of\"\nvalue = [200, 204]",
        "fail",
        "status one-of [200, 204]: got HTTP 203",
    ),
    (
        "body-matches",
        "subject = \"body\"\nop = \"matches\"\nvalue = '\"ready\":\\s*true'",
        "fail",
        r#"body matches "\"ready\":\\s*true": the body does not match"#,
    ),
    (
        "body-not-matches",
        "subject = \"body\"\nop = \"not-matches\"\nvalue = \"(?i)maintenance\"\nseverity = \"warn\"",
        "warn",
        r#"body not-matches "(?i)maintenance": the body matches"#,
    ),
    (
        "json-equals",
        "subject = \"$.status\"\nop = \"==\"\nvalue = \"UP\"",
        "fail",
        r#"$.status == "UP": got a string of 4 characters"#,
    ),
    (
        "json-not-equals",
        "subject = \"$.status\"\nop = \"!=\"\nvalue = \"DOWN\"",
        "fail",
        r#"$.status != "DOWN": got a string of 4 characters"#,
    ),
    (
        "json-below",
        "subject = \"$.load\"\nop = \"<\"\nvalue = 0.8\nseverity = \"warn\"",
        "warn",
        "$.load < 0.8: got a number",
    ),
    ("json-at-most", "subject = \"$.load\"\nop = \"<=\"\nvalue = 0.8", "fail", "$.load <= 0.8: got a number"),
    ("json-above", "subject = \"$.threads\"\nop = \">\"\nvalue = 2", "fail", "$.threads > 2: got a number"),
    (
        "json-at-least",
        "subject = \"$.threads\"\nop = \">=\"\nvalue = 3",
        "fail",
        "$.threads >= 3: got a number",
    ),
    (
        "json-one-of",
        "subject = \"$.mode\"\nop = \"one-of\"\nvalue = [\"primary\", \"replica\"]",
        "fail",
        r#"$.mode one-of ["primary", "replica"]: got a string of 11 characters"#,
    ),
    ("json-exists", "subject = \"$.ready\"\nop = \"exists\"", "fail", "$.ready exists: nothing at the path"),
    (
        "json-absent",
        "subject = \"$.error\"\nop = \"absent\"\nseverity = \"warn\"",
        "warn",
        "$.error absent: got a string of 9 characters",
    ),
    (
        "json-length",
        "subject = \"length($.workers)\"\nop = \">=\"\nvalue = 1",
        "fail",
        "length($.workers) >= 1: got an array of 0 items",
    ),
    (
        "json-every-node",
        "subject = \"$.components.*.status\"\nop = \"==\"\nvalue = \"UP\"\nname = \"every component up\"",
        "fail",
        "every component up: value 2 of 2: got a string of 4 characters",
    ),
    (
        "header-matches",
        "subject = \"header X-Mode\"\nop = \"matches\"\nvalue = \"^(primary|replica)$\"",
        "fail",
        r#"header X-Mode matches "^(primary|replica)$": got a value of 11 bytes, none matching"#,
    ),
    (
        "header-not-matches",
        "subject = \"header X-Degraded\"\nop = \"not-matches\"\nvalue = \"true\"",
        "fail",
        r#"header X-Degraded not-matches "true": got a value of 4 bytes, one matching"#,
    ),
    (
        "header-exists",
        "subject = \"header X-Version\"\nop = \"exists\"",
        "fail",
        "header X-Version exists: the header is absent",
    ),
    (
        "header-absent",
        "subject = \"header Retry-After\"\nop = \"absent\"\nseverity = \"warn\"",
        "warn",
        "header Retry-After absent: got a value of 3 bytes",
    ),
];

fn key(name: &str) -> String {
    format!("{name}:responseTime")
}

#[tokio::test]
async fn every_condition_passes_on_a_good_answer_and_names_its_rule_when_it_breaks() {
    // Arrange: one check per rule, all against the same dependency.
    let upstream = Upstream::start(Behaviour::Reply(good_reply())).await;
    let mut checks =
        String::from("[defaults]\ninterval = \"400ms\"\ntimeout = \"300ms\"\nretries = 0\n");
    for (name, rule, _, _) in RULES {
        checks.push_str(&format!(
            "\n[[checks]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{}\"\n\n[[checks.conditions]]\n{rule}\n",
            upstream.url()
        ));
    }
    let app = spawn_app(&config(&checks)).await;

    // Act + Assert: a good answer passes every rule.
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            RULES.iter().all(|(name, ..)| status(a, &key(name)) == Some("pass"))
        })
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["status"], "pass");

    // A bad one breaks each, with its severity and an output naming it.
    upstream.set(Behaviour::Reply(bad_reply()));
    let shows_bad = |a: &Answer| {
        RULES.iter().all(|(name, _, wanted, wanted_output)| {
            status(a, &key(name)) == Some(wanted) && output(a, &key(name)) == Some(wanted_output)
        })
    };
    let answer = app.wait_for("/health", None, DEADLINE, shows_bad).await;
    for (name, _, wanted, wanted_output) in RULES {
        let reading = answer.check(&key(name)).unwrap();
        assert_eq!(reading["status"], *wanted, "{name}: {reading}");
        assert_eq!(reading["output"], *wanted_output, "{name}");
        // The dependency answered: its time is still shown.
        assert!(reading["observedValue"].is_number(), "{name}: {reading}");
    }
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);

    // And back.
    upstream.set(Behaviour::Reply(good_reply()));
    app.wait_for("/health", None, DEADLINE, |a| {
        a.status == StatusCode::OK && a.json["status"] == "pass"
    })
    .await;
}

#[tokio::test]
async fn response_time_above_the_warn_limit_warns_and_above_the_fail_limit_fails() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Reply(Reply::json(GOOD))).await;
    let app = spawn_app(&config(&format!(
        r#"
[[checks]]
name = "slowish"
kind = "http"
url = "{}"
interval = "3s"
timeout = "2500ms"
retries = 0

[[checks.conditions]]
subject = "response_time"
op = "<"
value = "400ms"
severity = "warn"

[[checks.conditions]]
subject = "response_time"
op = "<"
value = "1200ms"
"#,
        upstream.url()
    )))
    .await;
    let name = key("slowish");

    // Act + Assert
    app.wait_for("/health", None, DEADLINE, |a| status(a, &name) == Some("pass")).await;

    upstream.set(Behaviour::Reply(Reply::json(GOOD).delay(Duration::from_millis(700))));
    let answer =
        app.wait_for("/health", None, DEADLINE, |a| status(a, &name) == Some("warn")).await;
    assert_eq!(output(&answer, &name), Some(r#"response_time < "400ms": too slow"#));
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.check(&name).unwrap()["observedValue"].as_f64().unwrap() >= 700.0);

    upstream.set(Behaviour::Reply(Reply::json(GOOD).delay(Duration::from_millis(1800))));
    let answer =
        app.wait_for("/health", None, DEADLINE, |a| status(a, &name) == Some("fail")).await;
    assert_eq!(output(&answer, &name), Some(r#"response_time < "1200ms": too slow (and 1 more)"#));
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn status_conditions_replace_the_default_range_and_expect_status_still_answers_http_n() {
    // Arrange: 503 is what this dependency answers when it is merely
    // degraded; 500 is down.
    let upstream = Upstream::start(Behaviour::Status(503)).await;
    let app = spawn_app(&config(&format!(
        r#"
[defaults]
interval = "300ms"
timeout = "200ms"
retries = 0

[[checks]]
name = "degradable"
kind = "http"
url = "{url}"

[[checks.conditions]]
subject = "status"
op = "<"
value = 500
severity = "warn"

[[checks.conditions]]
subject = "status"
op = "one-of"
value = [200, 503]

[[checks]]
name = "strict"
kind = "http"
url = "{url}"
expect_status = [200]
"#,
        url = upstream.url()
    )))
    .await;

    // Act + Assert
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            status(a, &key("degradable")) == Some("warn")
                && status(a, &key("strict")) == Some("fail")
        })
        .await;
    assert_eq!(output(&answer, &key("degradable")), Some("status < 500: got HTTP 503"));
    assert_eq!(output(&answer, &key("strict")), Some("HTTP 503"));

    upstream.set(Behaviour::Status(500));
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| status(a, &key("degradable")) == Some("fail"))
        .await;
    assert_eq!(
        output(&answer, &key("degradable")),
        Some("status one-of [200, 503]: got HTTP 500 (and 1 more)")
    );
}

#[tokio::test]
async fn a_health_report_is_still_carried_and_conditions_judge_the_same_body() {
    // Arrange: a dependency reporting `pass` as application/health+json,
    // with a rule on one of its fields.
    let report = |status: &str, version: &str| {
        let body = format!(r#"{{"status":"{status}","version":"{version}"}}"#);
        Behaviour::Reply(Reply::typed("application/health+json", &body))
    };
    let upstream = Upstream::start(report("pass", "2")).await;
    let app = spawn_app(&config(&format!(
        r#"
[[checks]]
name = "api"
kind = "http"
url = "{}"
interval = "300ms"
timeout = "200ms"
retries = 0

[[checks.conditions]]
subject = "$.version"
op = "=="
value = "2"
severity = "warn"
"#,
        upstream.url()
    )))
    .await;
    let api = key("api");

    // Act + Assert
    app.wait_for("/health", None, DEADLINE, |a| status(a, &api) == Some("pass")).await;
    upstream.set(report("pass", "1"));
    let answer = app.wait_for("/health", None, DEADLINE, |a| status(a, &api) == Some("warn")).await;
    assert_eq!(output(&answer, &api), Some(r#"$.version == "2": got a string of 1 character"#));
    // The dependency's own fail outranks a rule's warn.
    upstream.set(report("fail", "1"));
    let answer = app.wait_for("/health", None, DEADLINE, |a| status(a, &api) == Some("fail")).await;
    assert_eq!(output(&answer, &api), Some("dependency reports fail"));
}

#[tokio::test]
async fn a_body_full_of_secrets_never_shows_in_an_answer_or_a_log_line() {
    // Arrange: every part of the answer the rules read holds a secret.
    let secret = unique("bodysecret");
    let header_secret = unique("headersecret");
    let body = format!(r#"{{"status":"{secret}","token":"{secret}","items":["{secret}"]}}"#);
    let leaky = Reply::json(&body).header("x-session", header_secret.as_bytes());
    let upstream = Upstream::start(Behaviour::Reply(leaky)).await;
    let app = spawn_app(&config(&format!(
        r#"
[defaults]
interval = "300ms"
timeout = "200ms"
retries = 0

[[checks]]
name = "json"
kind = "http"
url = "{url}"
[[checks.conditions]]
subject = "$.status"
op = "one-of"
value = ["UP", "OK"]
[[checks.conditions]]
subject = "$.items[*]"
op = "matches"
value = "^ok$"
severity = "warn"

[[checks]]
name = "body"
kind = "http"
url = "{url}"
[[checks.conditions]]
subject = "body"
op = "not-matches"
value = "bodysecret"

[[checks]]
name = "header"
kind = "http"
url = "{url}"
[[checks.conditions]]
subject = "header X-Session"
op = "matches"
value = "^[0-9]+$"
"#,
        url = upstream.url()
    )))
    .await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            ["json", "body", "header"].iter().all(|name| status(a, &key(name)) == Some("fail"))
        })
        .await;

    // Assert: types and lengths only.
    let length = secret.chars().count();
    assert_eq!(
        output(&answer, &key("json")),
        Some(
            format!(
                r#"$.status one-of ["UP", "OK"]: got a string of {length} characters (and 1 more)"#
            )
            .as_str()
        )
    );
    assert_eq!(
        output(&answer, &key("body")),
        Some(r#"body not-matches "bodysecret": the body matches"#)
    );
    assert_eq!(
        output(&answer, &key("header")),
        Some(
            format!(
                r#"header X-Session matches "^[0-9]+$": got a value of {} bytes, none matching"#,
                header_secret.len()
            )
            .as_str()
        )
    );
    let bodies = every_body(&app, &["json", "body", "header"]).await;
    let history = app.get("/health/checks/json/history").await;
    let mut all = bodies;
    all.push(history.text);
    all.push(app.get("/status").await.text);
    assert_no_secret(&all, &[&secret, &header_secret], "a body full of secrets");
}

/// The hostile bodies, each against a check with a JSON rule, and the
/// output each must show. The first three pass the cap (1 MiB); the next
/// two are small but cannot be read as JSON; the last is under the cap
/// but would take 16 MiB as parsed values (1 MiB of `0,0,0,...`).
fn hostile() -> Vec<(&'static str, Reply, &'static str)> {
    let too_large = "body over max_body (1048576 bytes)";
    let not_json = "$.status exists: the body is not JSON";
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let wide = format!("[{}0]", "0,".repeat(524_000));
    let mut invalid_utf8 = br#"{"status":"UP","note":""#.to_vec();
    invalid_utf8.extend_from_slice(b"\xff\xfe\xc0\xaf");
    invalid_utf8.extend_from_slice(br#""}"#);
    let reply = |body: Body| Reply { status: 200, body, ..Reply::default() };
    vec![
        ("fifty-mb", reply(Body::Sized(50 << 20)), too_large),
        ("fifty-mb-chunked", reply(Body::Chunked(Some(50 << 20))), too_large),
        ("endless", reply(Body::Chunked(None)), too_large),
        ("invalid-utf8", Reply::bytes(&invalid_utf8), not_json),
        ("deep-json", Reply::bytes(deep.as_bytes()), not_json),
        (
            "wide-json",
            Reply::bytes(wide.as_bytes()),
            "$.status exists: the body has more than 65536 JSON values",
        ),
    ]
}

#[tokio::test]
async fn hostile_bodies_fail_within_the_deadline_and_healthd_rss_stays_within_10_mib() {
    // Arrange: the real binary, each check against its own dependency,
    // first answering a small good body.
    let hostile = hostile();
    let mut upstreams = Vec::new();
    let mut checks = String::new();
    for (name, _, _) in &hostile {
        let upstream = Upstream::start(Behaviour::Reply(Reply::json(GOOD))).await;
        checks.push_str(&format!(
            r#"
[[checks]]
name = "{name}"
kind = "http"
url = "{}"
interval = "1200ms"
timeout = "1s"
retries = 0
[[checks.conditions]]
subject = "$.status"
op = "exists"
"#,
            upstream.url()
        ));
        upstreams.push(upstream);
    }
    // A body rule that reads bytes, not text: an answer that is not UTF-8
    // is matched as it is.
    let invalid_utf8 = upstreams[3].url();
    checks.push_str(&format!(
        "\n[[checks]]\nname = \"bytes-regex\"\nkind = \"http\"\nurl = \"{invalid_utf8}\"\ninterval = \"1200ms\"\ntimeout = \"1s\"\nretries = 0\n[[checks.conditions]]\nsubject = \"body\"\nop = \"matches\"\nvalue = '\"status\":\"UP\"'\n"
    ));
    let binary = spawn_binary(&config(&checks), &[], &[("HEALTHD_LISTEN", "127.0.0.1:0")]).await;
    let client = reqwest::Client::new();
    let health = || send(client.get(format!("{}/health", binary.base())));
    let names: Vec<&str> = hostile.iter().map(|(name, ..)| *name).collect();
    let runs = |answer: &Answer, name: &str| -> u64 {
        answer
            .check(&key(name))
            .and_then(|reading| reading.get("consecutiveFailures"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    };
    let started = Instant::now();
    loop {
        let answer = health().await;
        if answer.status == StatusCode::OK
            && names.iter().all(|name| status(&answer, &key(name)) == Some("pass"))
        {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "not all pass: {:#}", answer.json);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The baseline: the largest RSS over two more runs of reading good bodies.
    let mut baseline = 0;
    let sampled = Instant::now();
    while sampled.elapsed() < Duration::from_millis(2_500) {
        baseline = baseline.max(binary.rss_bytes());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Act: every dependency turns hostile; sample RSS while healthd reads
    // (and refuses) ten rounds of each.
    for ((_, reply, _), upstream) in hostile.iter().zip(&upstreams) {
        upstream.set(Behaviour::Reply(reply.clone()));
    }
    let mut peak = 0;
    let hostile_since = Instant::now();
    let answer = loop {
        peak = peak.max(binary.rss_bytes());
        let answer = health().await;
        let settled = hostile.iter().all(|(name, _, wanted)| {
            output(&answer, &key(name)) == Some(wanted) && runs(&answer, name) >= 10
        });
        if settled {
            break answer;
        }
        assert!(
            hostile_since.elapsed() < DEADLINE * 3,
            "the hostile bodies did not each fail ten times: {:#}",
            answer.json
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    peak = peak.max(binary.rss_bytes());

    // Assert: each failed on what it is, not by running into its deadline.
    for (name, _, wanted) in &hostile {
        let reading = answer.check(&key(name)).unwrap();
        assert_eq!(reading["status"], "fail", "{name}: {reading}");
        assert_eq!(reading["output"], *wanted, "{name}");
        let took = reading["observedValue"].as_f64().unwrap_or(f64::NAN);
        assert!(took < 1_000.0, "{name} took {took} ms, its deadline is 1000 ms");
        eprintln!("MEASURED {name}: {wanted:?} after {took:.1} ms");
    }
    assert_eq!(status(&answer, &key("bytes-regex")), Some("pass"), "{:#}", answer.json);
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "MEASURED healthd RSS: baseline {:.1} MiB, peak under hostile bodies {:.1} MiB (+{:.1} MiB) over {:?}",
        mib(baseline),
        mib(peak),
        mib(peak.saturating_sub(baseline)),
        hostile_since.elapsed()
    );
    assert!(
        peak <= baseline + (10 << 20),
        "RSS grew from {:.1} MiB to {:.1} MiB",
        mib(baseline),
        mib(peak)
    );
}

#[tokio::test]
async fn bad_rules_are_config_problems_naming_the_file_the_key_and_the_reason() {
    // Arrange
    let rules = [
        "subject = \"body\"\nop = \"matches\"\nvalue = \"(unclosed\"",
        "subject = \"$.a[?\"\nop = \"exists\"",
        "subject = \"$.a\"\nop = \"=~\"\nvalue = \"x\"",
        "subject = \"$.a\"\nop = \"==\"\nvalue = \"x\"\nseverity = \"critical\"",
        "subject = \"headers\"\nop = \"exists\"",
    ];
    let mut checks = String::new();
    for (index, rule) in rules.iter().enumerate() {
        checks.push_str(&format!(
            "[[checks]]\nname = \"api{index}\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/health\"\n[[checks.conditions]]\n{rule}\n\n"
        ));
    }
    let text = config(&format!(
        r#"{checks}
[[checks]]
name = "head"
kind = "http"
url = "http://127.0.0.1:9/health"
method = "HEAD"
[[checks.conditions]]
subject = "body"
op = "matches"
value = "ok"

[[checks]]
name = "capped"
kind = "http"
url = "http://127.0.0.1:9/health"
max_body = "1 parsec"

[[checks]]
name = "banner"
kind = "tcp"
address = "127.0.0.1:9"
expect = "^SSH-2.0-("
"#
    ));

    // Act
    let Err(error) = healthd::Settings::parse(&text, "conditions.toml", &BTreeMap::new()) else {
        panic!("the config is accepted");
    };
    let lines = error.to_string();

    // Assert
    for wanted in [
        "conditions.toml: checks[0].conditions[0].value: invalid regular expression: unclosed group",
        "conditions.toml: checks[1].conditions[0].subject: invalid JSONPath (RFC 9535): at position",
        "conditions.toml: checks[2].conditions[0].op: unknown operator \"=~\": expected ==, !=",
        "conditions.toml: checks[3].conditions[0].severity: unknown variant `critical`, expected `warn` or `fail`",
        "conditions.toml: checks[4].conditions[0].subject: unknown subject \"headers\": expected status",
        "conditions.toml: checks[5].conditions[0].subject: method HEAD has no body to judge: use GET",
        "conditions.toml: checks[6].max_body: invalid size \"1 parsec\"",
        "conditions.toml: checks[7].expect: invalid regular expression: unclosed group",
    ] {
        assert!(lines.lines().any(|line| line.starts_with(wanted)), "no {wanted:?} in:\n{lines}");
    }
}

/// What Spring Boot Actuator answers with details shown.
fn actuator(status: &str, db: &str, free: u64) -> Behaviour {
    let body = format!(
        r#"{{"status":"{status}","components":{{"db":{{"status":"{db}","details":{{"database":"PostgreSQL","validationQuery":"isValid()"}}}},"diskSpace":{{"status":"UP","details":{{"total":499963174912,"free":{free},"threshold":10485760,"path":"/app/.","exists":true}}}},"ping":{{"status":"UP"}}}}}}"#
    );
    let code = if status == "DOWN" { 503 } else { 200 };
    Behaviour::Reply(
        Reply::typed("application/vnd.spring-boot.actuator.v3+json", &body).status(code),
    )
}

#[tokio::test]
async fn the_readme_spring_boot_rules_pass_up_warn_on_a_hidden_component_and_low_disk_and_fail_down(
) {
    // Arrange: the README's block as written, pointed at a local Actuator.
    let upstream = Upstream::start(actuator("UP", "UP", 200 << 30)).await;
    let block = readme_block("conditions: spring-boot")
        .replace("http://orders.internal:8080/actuator/health", &upstream.url());
    assert!(block.contains(&upstream.url()), "the README's URL changed:\n{block}");
    let app = spawn_app(&config(&format!(
        "[defaults]\ninterval = \"300ms\"\ntimeout = \"200ms\"\nretries = 0\n{block}"
    )))
    .await;
    let orders = key("orders");

    // Act + Assert
    app.wait_for("/health", None, DEADLINE, |a| status(a, &orders) == Some("pass")).await;

    upstream.set(actuator("UP", "OUT_OF_SERVICE", 200 << 30));
    let answer =
        app.wait_for("/health", None, DEADLINE, |a| status(a, &orders) == Some("warn")).await;
    assert_eq!(
        output(&answer, &orders),
        Some("every component UP: value 1 of 3: got a string of 14 characters")
    );
    assert_eq!(answer.status, StatusCode::OK);

    upstream.set(actuator("UP", "UP", 512 << 20));
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            output(a, &orders) == Some("disk space: got a number")
        })
        .await;
    assert_eq!(status(&answer, &orders), Some("warn"));

    upstream.set(actuator("OUT_OF_SERVICE", "UP", 200 << 30));
    let answer =
        app.wait_for("/health", None, DEADLINE, |a| status(a, &orders) == Some("fail")).await;
    assert_eq!(
        output(&answer, &orders),
        Some(r#"$.status == "UP": got a string of 14 characters"#)
    );

    upstream.set(actuator("DOWN", "DOWN", 200 << 30));
    let answer =
        app.wait_for("/health", None, DEADLINE, |a| output(a, &orders) == Some("HTTP 503")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_readme_gatus_like_rules_pass_a_good_answer_and_grade_each_break() {
    // Arrange
    let good = || {
        Reply::json(r#"{"status":"UP","data":[{"sku":"A-1"}]}"#)
            .header("x-served-by", b"catalog-blue-7f9c")
    };
    let upstream = Upstream::start(Behaviour::Reply(good())).await;
    let block = readme_block("conditions: gatus")
        .replace("http://catalog.internal/api/health", &upstream.url());
    assert!(block.contains(&upstream.url()), "the README's URL changed:\n{block}");
    let app =
        spawn_app(&config(&format!("[defaults]\ninterval = \"2500ms\"\nretries = 0\n{block}")))
            .await;
    let catalog = key("catalog");

    // Act + Assert
    app.wait_for("/health", None, DEADLINE, |a| status(a, &catalog) == Some("pass")).await;
    let cases = [
        (good().status(503), "fail", "status == 200: got HTTP 503"),
        (
            Reply::json(r#"{"status":"UP","data":[]}"#).header("x-served-by", b"catalog-green-1"),
            "fail",
            "length($.data) > 0: got an array of 0 items",
        ),
        (
            Reply::json(r#"{"status":"UP","data":[1],"note":"Maintenance at 2am"}"#)
                .header("x-served-by", b"catalog-green-1"),
            "warn",
            r#"body not-matches "(?i)maintenance": the body matches"#,
        ),
        (
            Reply::json(r#"{"status":"UP","data":[1]}"#).header("x-served-by", b"legacy-3"),
            "warn",
            r#"header X-Served-By matches "^catalog-(blue|green)-": got a value of 8 bytes, none matching"#,
        ),
        (good().delay(Duration::from_millis(500)), "warn", r#"response_time < "300ms": too slow"#),
    ];
    // Each answer breaks one rule (its output tells them apart).
    for (reply, wanted, wanted_output) in cases {
        upstream.set(Behaviour::Reply(reply));
        app.wait_for("/health", None, DEADLINE, |a| {
            status(a, &catalog) == Some(wanted) && output(a, &catalog) == Some(wanted_output)
        })
        .await;
    }
    upstream.set(Behaviour::Reply(good()));
    app.wait_for("/health", None, DEADLINE, |a| status(a, &catalog) == Some("pass")).await;
}

#[tokio::test]
async fn the_readme_tcp_examples_load() {
    let block = readme_block("tcp: banners");
    let settings = healthd::Settings::parse(&config(&block), "README.md", &BTreeMap::new());
    assert!(settings.is_ok(), "{}", settings.err().unwrap());
}
