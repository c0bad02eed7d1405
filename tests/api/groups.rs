//! Groups, `?exclude=` and `?verbose`, against the real server: a group
//! answers like `/health` over its members (by name and by tag, less its
//! exclusions) under the disclosure tiers and its own `details`; `warn`
//! answers 200 unless a group or the server maps it to 503; the probes
//! leave excluded checks out, refuse unknown names with a 400 and answer
//! kube-apiserver's text lines, withholding outputs from callers who may
//! not see details; a reload rebuilds the groups. Every JSON answer is
//! checked against the contract by the support code.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::support::app::{answer, spawn_app_with_env, spawn_binary, Answer, TestApp};
use crate::support::checks::{is_unavailable, DEADLINE};
use crate::support::upstream::{Behaviour, Upstream};

const TOKEN: &str = "groups-token-0123456789";

/// A disk check on `/` whose status never changes: free space is below
/// 100% and above 0% on any machine that runs the tests.
fn disk(name: &str, status: &str, extra: &str) -> String {
    let (warn_below, fail_below) = match status {
        "pass" => ("0%", "0%"),
        "warn" => ("100%", "0%"),
        _ => ("100%", "100%"),
    };
    format!(
        "[[checks]]\nname = \"{name}\"\nkind = \"disk\"\npath = \"/\"\nwarn_below = \"{warn_below}\"\nfail_below = \"{fail_below}\"\n{extra}\n"
    )
}

/// Details for token holders only, with `server` under `[server]` (no
/// drain delay unless it says) and the rest appended.
fn config(server: &str, rest: &str) -> String {
    let drain = if server.contains("drain_delay") { "" } else { "drain_delay = \"0s\"" };
    format!(
        r#"
[server]
service_id = "groups-test"
{drain}
{server}

[access]
details = "authorized"
details_allow = ["127.0.0.0/8"]
[[access.tokens]]
name = "ops"
env = "GROUPS_TOKEN"

[defaults]
interval = "200ms"
timeout = "100ms"
retries = 0

{rest}
"#
    )
}

async fn start(server: &str, rest: &str) -> TestApp {
    let env = BTreeMap::from([("GROUPS_TOKEN".to_string(), TOKEN.to_string())]);
    spawn_app_with_env(&config(server, rest), env).await
}

/// The `checks` keys of a report, in order.
fn keys(answer: &Answer) -> Vec<String> {
    answer
        .json
        .get("checks")
        .and_then(|checks| checks.as_object())
        .map_or_else(Vec::new, |c| c.keys().cloned().collect())
}

/// Waits until every check of `app` has a reading (`/health/startup` is 200).
async fn started(app: &TestApp) {
    app.wait_for("/health/startup", None, DEADLINE, |a| a.status == StatusCode::OK).await;
}

#[tokio::test]
async fn a_group_answers_for_its_members_by_name_and_tag_less_its_exclusions() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let checks = [
        format!(
            "[[checks]]\nname = \"payments\"\nkind = \"http\"\nurl = \"{}\"\ntags = [\"team-pay\"]\n",
            upstream.url()
        ),
        disk("ledger", "pass", "tags = [\"team-pay\"]"),
        disk("fraud", "fail", "tags = [\"team-pay\"]\ncritical = false"),
        disk("search", "fail", ""),
        disk("disk", "pass", ""),
    ]
    .concat();
    let groups = r#"
[[groups]]
name = "pay"
tags = ["team-pay"]
members = ["disk"]
exclude = ["fraud"]

[[groups]]
name = "pay-all"
tags = ["team-pay"]
"#;
    let app = start("", &format!("{checks}{groups}")).await;
    started(&app).await;

    // Act
    let pay = app.get_with_token("/health/groups/pay", TOKEN).await;
    let whole = app.get_with_token("/health", TOKEN).await;

    // Assert: members by tag and by name, the excluded one left out; the
    // service itself fails on `search`, which no group here holds.
    assert_eq!(pay.status, StatusCode::OK, "{pay:#?}");
    assert_eq!(pay.json["status"], "pass");
    assert_eq!(
        keys(&pay),
        ["disk:freeSpace", "ledger:freeSpace", "payments:responseTime"],
        "{pay:#?}"
    );
    assert_eq!(pay.json["serviceId"], "groups-test");
    assert!(is_unavailable(&whole));
    // A non-critical member that fails makes the group warn, and warn is 200.
    let all = app.get_with_token("/health/groups/pay-all", TOKEN).await;
    assert_eq!((all.status, all.json["status"].as_str()), (StatusCode::OK, Some("warn")));
    assert!(keys(&all).contains(&"fraud:freeSpace".to_string()));

    // A critical member that fails makes the group fail: 503, and back.
    upstream.set(Behaviour::Status(500));
    let failing = app.wait_for("/health/groups/pay", Some(TOKEN), DEADLINE, is_unavailable).await;
    assert_eq!(failing.json["status"], "fail");
    assert_eq!(failing.check("payments:responseTime").unwrap()["output"], "HTTP 500");
    upstream.set(Behaviour::Status(200));
    app.wait_for("/health/groups/pay", Some(TOKEN), DEADLINE, |a| a.status == StatusCode::OK).await;
}

#[tokio::test]
async fn a_group_shows_its_members_only_to_the_tiers_it_and_the_access_rules_allow() {
    // Arrange
    let checks = [disk("db", "fail", ""), disk("disk", "pass", "")].concat();
    let groups = r#"
[[groups]]
name = "open"
members = ["db", "disk"]

[[groups]]
name = "closed"
members = ["db", "disk"]
details = "never"

[[groups]]
name = "wide"
members = ["db"]
details = "always"
"#;
    let app = start("", &format!("{checks}{groups}")).await;
    started(&app).await;

    // Act and assert: anonymous callers see the status and nothing else.
    let anonymous = app.get("/health/groups/open").await;
    assert_eq!(anonymous.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(anonymous.json["status"], "fail");
    assert!(anonymous.json.get("checks").is_none(), "{anonymous:#?}");
    assert!(!anonymous.text.contains("free space"), "{}", anonymous.text);
    // A token holder sees the members.
    let with_token = app.get_with_token("/health/groups/open", TOKEN).await;
    assert_eq!(keys(&with_token), ["db:freeSpace", "disk:freeSpace"]);
    assert_eq!(with_token.check("db:freeSpace").unwrap()["output"], "free space below 100%");
    // A group's own details may show less than [access]...
    let closed = app.get_with_token("/health/groups/closed", TOKEN).await;
    assert_eq!(closed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(closed.json.get("checks").is_none(), "{closed:#?}");
    // ...never more: `always` on a group does not open it to anonymous callers.
    let wide = app.get("/health/groups/wide").await;
    assert!(wide.json.get("checks").is_none(), "{wide:#?}");
    // A wrong token is 401, an unknown group 404, both problem+json; HEAD
    // answers the same status without a body.
    let wrong = app.get_with_token("/health/groups/open", "wrong-token").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.contains_key("www-authenticate"));
    let unknown = app.get("/health/groups/nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json["detail"], "no group is named \"nope\"");
    let head = app.request(Method::HEAD, "/health/groups/open", None).await;
    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
    // Group names and check names are apart: no check is named "open".
    let no_check = app.get_with_token("/health/checks/open", TOKEN).await;
    assert_eq!(no_check.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn warn_answers_200_unless_a_group_or_the_server_maps_it_to_503() {
    // Arrange: the server maps warn to 503; one group maps it back.
    let checks = [disk("disk", "warn", ""), disk("db", "pass", "")].concat();
    let groups = r#"
[[groups]]
name = "strict"
members = ["disk"]

[[groups]]
name = "lenient"
members = ["disk", "db"]
warn_status = 200
"#;
    let app = start("warn_status = 503", &format!("{checks}{groups}")).await;
    started(&app).await;

    // Act
    let health = app.get("/health").await;
    let strict = app.get("/health/groups/strict").await;
    let lenient = app.get("/health/groups/lenient").await;
    let ready = app.get("/health/ready").await;

    // Assert: the body still says warn; only the status code changes.
    assert_eq!(
        (health.status, health.json["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("warn"))
    );
    assert_eq!(
        (strict.status, strict.json["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("warn"))
    );
    assert_eq!((lenient.status, lenient.json["status"].as_str()), (StatusCode::OK, Some("warn")));
    // Readiness keeps its own rule: critical checks that warn are ready.
    assert_eq!(ready.status, StatusCode::OK);

    // And by default warn is 200 everywhere.
    let default = start("", &format!("{checks}{groups}")).await;
    started(&default).await;
    assert_eq!(default.get("/health").await.status, StatusCode::OK);
    assert_eq!(default.get("/health/groups/strict").await.status, StatusCode::OK);
}

#[tokio::test]
async fn exclude_leaves_checks_out_of_the_probes_and_refuses_unknown_names() {
    // Arrange: `cache` is critical and fails; `search` is not and fails.
    let checks = [
        disk("db", "pass", ""),
        disk("cache", "fail", ""),
        disk("search", "fail", "critical = false"),
    ]
    .concat();
    let app = start("", &checks).await;
    started(&app).await;

    // Act and assert: readiness without the failing critical check is 200.
    assert_eq!(app.get("/health/ready").await.status, StatusCode::SERVICE_UNAVAILABLE);
    let ready = app.get("/health/ready?exclude=cache").await;
    assert_eq!((ready.status, ready.json["status"].as_str()), (StatusCode::OK, Some("pass")));
    // /health: without cache the service warns (search is non-critical);
    // without both it passes, and their entries are gone for detail callers.
    assert_eq!(app.get("/health?exclude=cache").await.status, StatusCode::OK);
    let both = app.get_with_token("/health?exclude=cache&exclude=search", TOKEN).await;
    assert_eq!((both.status, both.json["status"].as_str()), (StatusCode::OK, Some("pass")));
    assert_eq!(keys(&both), ["db:freeSpace"]);
    assert_eq!(both.json["version"], env!("CARGO_PKG_VERSION"));
    let anonymous = app.get("/health?exclude=cache&exclude=search").await;
    assert_eq!(anonymous.json["status"], "pass");
    assert!(anonymous.json.get("checks").is_none());
    // Liveness depends on no check, but the names are checked all the same.
    assert_eq!(app.get("/health/live?exclude=cache").await.status, StatusCode::OK);
    // Unknown names are a 400 in problem+json on every probe, HEAD included.
    for path in ["/health", "/health/ready", "/health/live"] {
        let unknown = app.get(&format!("{path}?exclude=cache&exclude=cahce")).await;
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{path}: {unknown:#?}");
        assert!(unknown.content_type().starts_with("application/problem+json"));
        assert_eq!(unknown.json["detail"], "exclude=\"cahce\": no check is named so");
        let head = app.request(Method::HEAD, &format!("{path}?exclude=x"), None).await;
        assert_eq!(head.status, StatusCode::BAD_REQUEST, "HEAD {path}");
    }
    // Percent-encoding and `+` decode as in any form.
    let encoded = app.get("/health/ready?exclude=%63ache").await;
    assert_eq!(encoded.status, StatusCode::OK);
}

#[tokio::test]
async fn verbose_answers_kube_apiserver_lines_and_withholds_outputs_from_anonymous_callers() {
    // Arrange
    let checks = [
        disk("db", "pass", ""),
        disk("cache", "fail", "critical = false"),
        disk("disk", "warn", ""),
        disk("broken", "fail", ""),
    ]
    .concat();
    let app = start("", &checks).await;
    started(&app).await;

    // Act
    let anonymous = app.get("/health?verbose").await;
    let with_token = app.get_with_token("/health?verbose=true", TOKEN).await;

    // Assert
    assert_eq!(anonymous.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(anonymous.content_type().starts_with("text/plain"), "{anonymous:#?}");
    assert_eq!(
        anonymous.text,
        "[+]db ok\n[-]cache failed: reason withheld\n[+]disk warn: reason withheld\n\
         [-]broken failed: reason withheld\nhealth check failed\n"
    );
    assert_eq!(
        with_token.text,
        "[+]db ok\n[-]cache failed: free space below 100%\n[+]disk warn: free space below 100%\n\
         [-]broken failed: free space below 100%\nhealth check failed\n"
    );
    // Readiness lists its critical checks; excluded ones say so.
    let ready = app.get("/health/ready?verbose&exclude=broken").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(
        ready.text,
        "[+]db ok\n[+]disk warn: reason withheld\n[+]broken excluded: ok\nready check passed\n"
    );
    let ready = app.get_with_token("/health/ready?verbose", TOKEN).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready.text,
        "[+]db ok\n[+]disk warn: free space below 100%\n[-]broken failed: free space below 100%\n\
         ready check failed: a critical check fails\n"
    );
    // On the probes everyone may call, a wrong token reads as anonymous, not 401.
    let wrong = app.get_with_token("/health/ready?verbose", "wrong-token").await;
    assert_eq!(wrong.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(wrong.text.contains("[-]broken failed: reason withheld"), "{}", wrong.text);
    // On /health it is 401, as without verbose.
    let wrong = app.get_with_token("/health?verbose", "wrong-token").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let live = app.get("/health/live?verbose").await;
    assert_eq!((live.status, live.text.as_str()), (StatusCode::OK, "live check passed\n"));
    // verbose=false is the JSON answer; any other value is a 400.
    let quiet = app.get("/health/ready?verbose=false").await;
    assert!(quiet.content_type().starts_with("application/health+json"));
    let bad = app.get("/health/live?verbose=yes").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["detail"], "verbose takes no value, or true or false");
}

#[tokio::test]
async fn a_draining_service_says_so_in_verbose_readiness() {
    let app = start("drain_delay = \"30s\"", &disk("db", "pass", "")).await;
    started(&app).await;
    let _drain = app.drain();
    let ready = app.wait_for("/health/ready?verbose", None, DEADLINE, is_unavailable).await;
    assert_eq!(ready.text, "[+]db ok\nready check failed: draining\n");
    assert_eq!(app.get("/health/live?verbose").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_reload_rebuilds_the_groups() {
    // Arrange
    let before = config(
        "",
        &[
            disk("db", "pass", "tags = [\"core\"]"),
            disk("cache", "fail", ""),
            "[[groups]]\nname = \"core\"\ntags = [\"core\"]\n".into(),
        ]
        .concat(),
    );
    let env = [("GROUPS_TOKEN", TOKEN), ("HEALTHD_LISTEN", "127.0.0.1:0")];
    let mut binary = spawn_binary(&before, &[], &env).await;
    let (client, base) = (reqwest::Client::new(), binary.base());
    let get = |path: &'static str| {
        let request = client.get(format!("{base}{path}")).bearer_auth(TOKEN);
        async move { answer(request.send().await.expect("healthd answers"), false).await }
    };
    let waited = std::time::Instant::now();
    while get("/health/groups/core").await.status != StatusCode::OK {
        assert!(waited.elapsed() < DEADLINE, "the group never passed\n{}", binary.stdout());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Act: `cache` joins the group by its tag, and a new group appears.
    let after = config(
        "",
        &[
            disk("db", "pass", "tags = [\"core\"]"),
            disk("cache", "fail", "tags = [\"core\"]"),
            "[[groups]]\nname = \"core\"\ntags = [\"core\"]\n[[groups]]\nname = \"db-only\"\nmembers = [\"db\"]\n".into(),
        ]
        .concat(),
    );
    binary.write_config(&after);
    binary.signal(libc::SIGHUP);

    // Assert
    let started = std::time::Instant::now();
    loop {
        let core = get("/health/groups/core").await;
        if core.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(keys(&core), ["cache:freeSpace", "db:freeSpace"]);
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the group did not change: {core:#?}\n{}",
            binary.stdout()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get("/health/groups/db-only").await.status, StatusCode::OK);

    // A group naming a check that does not exist refuses the reload: the running groups stay.
    binary.write_config(&config(
        "",
        &[disk("db", "pass", ""), "[[groups]]\nname = \"x\"\nmembers = [\"nope\"]\n".into()]
            .concat(),
    ));
    binary.signal(libc::SIGHUP);
    binary
        .wait_for_line(DEADLINE, |line| {
            line.contains("groups[0].members[0]") && line.contains("no check is named \"nope\"")
        })
        .await;
    assert_eq!(get("/health/groups/db-only").await.status, StatusCode::OK);
    assert_eq!(get("/health/groups/x").await.status, StatusCode::NOT_FOUND);
}
