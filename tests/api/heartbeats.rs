//! Heartbeat checks over real HTTP: pings from a real cron-like loop (bash
//! and curl, as the README's crontab line), late pings, starts that never
//! end, failures and exit statuses with their bodies, who may ping, and a
//! flood of pings. Periods and deadlines are short (a second or two) and
//! each test polls for the state it expects; the state machine itself is
//! unit-tested against a clock the test holds (`src/checks/heartbeat.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::support::app::{
    assert_matches_schema, captured_logs, spawn_app_with_env, Answer, TestApp,
};
use crate::support::checks::DEADLINE;

const READ_TOKEN: &str = "beat-dashboard-token-2f9a";
const PING_TOKEN: &str = "beat-cron-token-7c1d";
const BACKUP_KEY: &str = "beat-backup-own-key-91ab";

fn hex_sha256(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A heartbeat `backup` (its own ping key; `beat` = its other keys, such as
/// `period = "1s"`), a second heartbeat `other`, and a `disk` check; a
/// read token and a ping-only token; details for tokens only.
async fn start(beat: &str) -> TestApp {
    let config = format!(
        r#"
[server]
service_id = "heartbeats"
drain_delay = "0s"

[access]
details = "authorized"
details_allow = ["127.0.0.0/8"]
[[access.tokens]]
name = "dashboard"
env = "READ_TOKEN"
[[access.tokens]]
name = "cron"
env = "PING_TOKEN"
scopes = ["ping"]

[[checks]]
name = "backup"
kind = "heartbeat"
ping_key_sha256 = "{key}"
interval = "200ms"
timeout = "100ms"
retries = 0
{beat}

[[checks]]
name = "other"
kind = "heartbeat"
period = "1h"
grace = "10m"
ping_key_sha256 = "{other_key}"

[[checks]]
name = "disk"
kind = "disk"
path = "/"
warn_below = "0%"
fail_below = "0%"
"#,
        key = hex_sha256(BACKUP_KEY),
        other_key = hex_sha256("beat-other-key"),
    );
    let env = BTreeMap::from([
        ("READ_TOKEN".to_string(), READ_TOKEN.to_string()),
        ("PING_TOKEN".to_string(), PING_TOKEN.to_string()),
    ]);
    spawn_app_with_env(&config, env).await
}

/// `POST /health/checks/{name}/ping{suffix}` with a bearer token and a body.
async fn ping(app: &TestApp, name: &str, suffix: &str, token: &str, body: &str) -> Answer {
    let url = app.url(&format!("/health/checks/{name}/ping{suffix}"));
    let answer = app.send(app.client.post(url).bearer_auth(token).body(body.to_string())).await;
    if answer.status == StatusCode::OK {
        assert_matches_schema(&answer.json, "PingReceipt");
    }
    answer
}

/// The reading of `backup`'s main measurement, as a reader sees it.
fn reading(answer: &Answer) -> &Value {
    answer.check("backup:sinceLastPing").unwrap_or(&Value::Null)
}

/// Polls `backup` (with the read token) until `done` holds of its reading.
async fn wait_for_backup(app: &TestApp, done: impl Fn(&Value) -> bool) -> Answer {
    app.wait_for("/health/checks/backup", Some(READ_TOKEN), DEADLINE, |answer| {
        done(reading(answer))
    })
    .await
}

fn status_is(reading: &Value, status: &str) -> bool {
    reading["status"] == status && reading["output"] != "no reading yet"
}

fn time_of(value: &Value) -> DateTime<Utc> {
    value.as_str().and_then(|text| text.parse().ok()).unwrap_or_else(|| panic!("no time: {value}"))
}

#[tokio::test]
async fn a_heartbeat_missed_by_a_real_cron_loop_turns_fail_after_period_and_grace() {
    // Arrange: every second, a second of grace; a bash loop pinging with
    // curl as a crontab line would, four times 0.4 s apart, then stopping.
    let curl = healthd_testkit::debian::require_package("/usr/bin/curl", "curl");
    let app = start("period = \"1s\"\ngrace = \"1s\"").await;
    let script = r#"
        for run in 1 2 3 4; do
          curl -fsS -m 10 --retry 3 -X POST -H "Authorization: Bearer $PING_KEY" \
            --data-binary "run $run: 42 rows" "$URL/health/checks/backup/ping"
          echo
          sleep 0.4
        done
    "#;
    let mut cron = tokio::process::Command::new("bash");
    cron.arg("-c")
        .arg(script)
        .env("PATH", format!("{}:/usr/bin:/bin", curl.parent().unwrap().display()))
        .env("PING_KEY", BACKUP_KEY)
        .env("URL", &app.base)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());

    // Act: the loop runs, while the check is read.
    let loop_started = Instant::now();
    let cron = cron.spawn().expect("bash runs");
    let on_time = wait_for_backup(&app, |reading| {
        status_is(reading, "pass") && reading["observedValue"].is_number()
    })
    .await;
    let cron = cron.wait_with_output().await.expect("the loop ends");
    let loop_ran = loop_started.elapsed();
    let stdout = String::from_utf8_lossy(&cron.stdout);
    assert!(cron.status.success(), "the loop failed: {}", String::from_utf8_lossy(&cron.stderr));
    let receipts: Vec<Value> = stdout
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(receipts.len(), 4, "{stdout}");
    let last_ping = time_of(&receipts[3]["time"]);
    let late = wait_for_backup(&app, |reading| status_is(reading, "fail")).await;
    let seen = Utc::now();

    // Assert: pass while pinged, then fail once period + grace have gone by.
    assert_eq!(reading(&on_time)["componentType"], "component");
    let failed = reading(&late);
    let output = failed["output"].as_str().unwrap();
    let last_ping_shown = last_ping.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        output.starts_with(&format!(
            "late: the last ping came at {last_ping_shown}; the next was due at "
        )),
        "{output}"
    );
    assert!(output.ends_with("(grace 1s)"), "{output}");
    let deadline = last_ping + Duration::from_secs(2);
    let fail_time = time_of(&failed["time"]);
    assert!(fail_time > deadline, "failed at {fail_time}, before the deadline {deadline}");
    let since_last_ping = failed["observedValue"].as_f64().unwrap();
    assert!(since_last_ping >= 2.0, "{failed}");
    // Anonymous callers see the status only.
    let anonymous = app.get("/health").await;
    assert_eq!(anonymous.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(anonymous.json.get("checks").is_none() && !anonymous.text.contains("42 rows"));
    println!(
        "MEASURED heartbeat missed by a real cron loop: bash+curl pinged 4 times 0.4 s apart ({:.1} s), \
         last ping {last_ping}; period 1s + grace 1s -> late after {deadline}; the fail reading is timed \
         {fail_time} ({} ms past the deadline, check interval 200 ms), sinceLastPing {since_last_ping} s, \
         output {output:?}; the test's poll saw it at {seen}",
        loop_ran.as_secs_f64(),
        (fail_time - deadline).num_milliseconds(),
    );
}

#[tokio::test]
async fn a_heartbeat_never_pinged_is_ready_at_first_and_fails_when_its_first_ping_is_late() {
    // Arrange
    let app = start("period = \"4s\"\ngrace = \"2s\"").await;

    // Act + Assert: ready (a fresh heartbeat holds nothing back)...
    let ready = app
        .wait_for("/health/ready", None, DEADLINE, |answer| answer.status == StatusCode::OK)
        .await;
    assert_eq!(ready.json["status"], "pass");
    // ...until the first ping is late.
    let late = wait_for_backup(&app, |reading| status_is(reading, "fail")).await;
    let output = reading(&late)["output"].as_str().unwrap();
    assert!(output.starts_with("late: no ping since healthd started at "), "{output}");
    assert!(reading(&late).get("observedValue").is_none(), "no ping, no age: {late:?}");
    let not_ready = app.get("/health/ready").await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    // A ping puts it right.
    assert_eq!(ping(&app, "backup", "", BACKUP_KEY, "").await.status, StatusCode::OK);
    wait_for_backup(&app, |reading| status_is(reading, "pass")).await;
}

#[tokio::test]
async fn a_start_that_never_ends_fails_and_the_run_it_ends_has_a_duration() {
    // Arrange: a job may run 1 s, and the period is long.
    let app = start("period = \"1h\"\ngrace = \"10m\"\nmax_runtime = \"1s\"").await;

    // Act: it starts, and never ends.
    let started = ping(&app, "backup", "/start", PING_TOKEN, "this body is not kept").await;
    assert_eq!(started.status, StatusCode::OK, "{started:?}");
    assert_eq!(started.json["signal"], "start");
    assert_eq!(started.json["bodyBytes"], 0);
    let stuck = wait_for_backup(&app, |reading| status_is(reading, "fail")).await;

    // Assert
    let output = reading(&stuck)["output"].as_str().unwrap();
    assert!(
        output.starts_with("started at ") && output.ends_with("and not finished within 1s"),
        "{output}"
    );
    // Started again and ended: pass, with the run's duration.
    ping(&app, "backup", "/start", PING_TOKEN, "").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ended = ping(&app, "backup", "", PING_TOKEN, "done").await;
    assert_eq!(ended.json["signal"], "success");
    let done = app
        .wait_for("/health/checks/backup", Some(READ_TOKEN), DEADLINE, |answer| {
            status_is(reading(answer), "pass") && answer.check("backup:duration").is_some()
        })
        .await;
    let duration = done.check("backup:duration").unwrap();
    assert_eq!(duration["observedUnit"], "s");
    let seconds = duration["observedValue"].as_f64().unwrap();
    assert!((0.25..5.0).contains(&seconds), "{duration}");
}

#[tokio::test]
async fn fail_and_exit_status_3_fail_with_the_body_shown_to_detail_callers_only() {
    // Arrange
    let app = start("period = \"1h\"\ngrace = \"10m\"").await;
    wait_for_backup(&app, |reading| status_is(reading, "pass")).await;

    // Act: the job exits 3 and says why.
    let three = ping(&app, "backup", "/3", BACKUP_KEY, "pg_dump: disk full").await;
    assert_eq!(three.status, StatusCode::OK);
    assert_eq!((&three.json["signal"], &three.json["exitStatus"]), (&"fail".into(), &3.into()));
    assert_eq!(three.json["bodyBytes"], 18);
    let failed = wait_for_backup(&app, |reading| status_is(reading, "fail")).await;

    // Assert: the reader sees the status and the body; anonymous callers neither.
    assert_eq!(reading(&failed)["output"], "exit status 3\npg_dump: disk full");
    let anonymous = app.get("/health").await;
    assert_eq!(anonymous.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!anonymous.text.contains("disk full"));
    assert_eq!(app.get("/health/checks/backup").await.status, StatusCode::UNAUTHORIZED);
    // The ping-only token pings, and reads no details.
    let scoped = app.get_with_token("/health/checks/backup", PING_TOKEN).await;
    assert_eq!(scoped.status, StatusCode::FORBIDDEN);
    // Exit 0 is a success; `fail` fails without a body.
    assert_eq!(ping(&app, "backup", "/0", BACKUP_KEY, "").await.json["signal"], "success");
    wait_for_backup(&app, |reading| status_is(reading, "pass")).await;
    assert_eq!(ping(&app, "backup", "/fail", BACKUP_KEY, "").await.status, StatusCode::OK);
    let failed = wait_for_backup(&app, |reading| status_is(reading, "fail")).await;
    assert_eq!(reading(&failed)["output"], "the job reported failure");
    // The history keeps a success's body.
    ping(&app, "backup", "", BACKUP_KEY, "copied 42 files").await;
    let history = app
        .wait_for("/health/checks/backup/history", Some(READ_TOKEN), DEADLINE, |answer| {
            answer.text.contains("copied 42 files")
        })
        .await;
    assert_eq!(history.json["entries"].as_array().unwrap().last().unwrap()["status"], "pass");
}

#[tokio::test]
async fn only_a_ping_token_or_the_checks_own_key_may_ping() {
    // Arrange
    let app = start("period = \"1h\"\ngrace = \"10m\"").await;
    let post = |path: &str, token: Option<&str>| {
        let request = app.client.post(app.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };

    // Act + Assert: strangers get 401, whatever the check.
    for (path, token) in [
        ("/health/checks/backup/ping", None),
        ("/health/checks/backup/ping", Some("wrong")),
        ("/health/checks/backup/ping", Some("beat-other-key")),
        ("/health/checks/missing/ping", Some(BACKUP_KEY)),
        ("/health/checks/disk/ping", Some(BACKUP_KEY)),
    ] {
        let answer = app.send(post(path, token)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path} {token:?}");
        assert!(answer.headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    }
    let basic = app
        .send(app.client.post(app.url("/health/checks/backup/ping")).basic_auth("u", Some("p")))
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    // A read token may not ping: 403, and RFC 6750 says which scope it lacks.
    let read = app.send(post("/health/checks/backup/ping", Some(READ_TOKEN))).await;
    assert_eq!(read.status, StatusCode::FORBIDDEN);
    assert_eq!(
        read.headers["www-authenticate"],
        "Bearer realm=\"healthd\", error=\"insufficient_scope\", scope=\"ping\""
    );
    assert_eq!(read.json["detail"], "this token lacks the \"ping\" scope");
    // The ping token reaches every check: 404 and 409 where there is no heartbeat.
    let missing = app.send(post("/health/checks/missing/ping", Some(PING_TOKEN))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let disk = app.send(post("/health/checks/disk/ping", Some(PING_TOKEN))).await;
    assert_eq!(disk.status, StatusCode::CONFLICT);
    assert_eq!(
        disk.json["detail"],
        "check \"disk\" is a disk check, not a heartbeat: only heartbeats take pings"
    );
    assert_eq!(
        app.send(post("/health/checks/other/ping", Some(PING_TOKEN))).await.status,
        StatusCode::OK
    );
    // GET and HEAD ping too, for the simplest cron lines.
    let get = app.request(Method::GET, "/health/checks/backup/ping/start", Some(BACKUP_KEY)).await;
    assert_eq!((get.status, &get.json["signal"]), (StatusCode::OK, &"start".into()));
    let head = app.request(Method::HEAD, "/health/checks/backup/ping", Some(BACKUP_KEY)).await;
    assert_eq!(head.status, StatusCode::OK);
    // Exit statuses are 0 to 255, digits only.
    for bad in ["256", "-1", "abc", "+3", "03x"] {
        let answer =
            app.send(post(&format!("/health/checks/backup/ping/{bad}"), Some(BACKUP_KEY))).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let put = app
        .send(app.client.put(app.url("/health/checks/backup/ping")).bearer_auth(BACKUP_KEY))
        .await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.headers["allow"], "GET, HEAD, POST");
    // A body past 10 KiB is cut there.
    let long = "x".repeat(50_000);
    let cut = ping(&app, "backup", "", BACKUP_KEY, &long).await;
    assert_eq!((cut.status, &cut.json["bodyBytes"]), (StatusCode::OK, &10_240.into()));
    // No key or token reaches the log.
    let logs = captured_logs();
    assert!(!logs.contains(BACKUP_KEY) && !logs.contains(PING_TOKEN) && !logs.contains(READ_TOKEN));
}

#[tokio::test]
async fn a_flood_of_pings_is_held_to_the_checks_rate_and_every_ping_is_logged() {
    // Arrange
    let app = start("period = \"1h\"\ngrace = \"10m\"").await;
    let path = "/health/checks/other/ping/start";

    // Act: 40 pings at once.
    let flooding = Instant::now();
    let mut flood = JoinSet::new();
    for _ in 0..40 {
        let request = app.client.post(app.url(path)).bearer_auth("beat-other-key");
        flood.spawn(crate::support::app::send(request));
    }
    let mut answers = Vec::new();
    while let Some(answer) = flood.join_next().await {
        answers.push(answer.unwrap());
    }
    let flooded = flooding.elapsed();

    // Assert: the burst of 10 (and what the rate of 1 a second refilled
    // meanwhile) taken, the rest 429 with Retry-After.
    let taken = answers.iter().filter(|answer| answer.status == StatusCode::OK).count();
    let refused: Vec<&Answer> =
        answers.iter().filter(|answer| answer.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert_eq!(taken + refused.len(), 40, "{answers:?}");
    let refilled = flooded.as_secs() as usize + 1;
    assert!((10..=10 + refilled).contains(&taken), "{taken} taken in {flooded:?}");
    for answer in &refused {
        let retry_after: u64 = answer.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert_eq!(retry_after, 1, "{answer:?}");
        assert_eq!(answer.content_type(), "application/problem+json");
    }
    // Per check: another heartbeat still takes its pings at once.
    assert_eq!(ping(&app, "backup", "", BACKUP_KEY, "").await.status, StatusCode::OK);
    // And this one takes pings again a second later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ping(&app, "other", "/start", "beat-other-key", "").await.status, StatusCode::OK);
    // Every ping has its access line, with who sent it.
    let lines = |status: u16| {
        captured_logs()
            .lines()
            .filter(|line| {
                line.contains("healthd::access")
                    && line.contains(&format!("path=\"{path}\""))
                    && line.contains(&format!("status={status}"))
                    && line.contains("principal=\"ping key of other\"")
            })
            .count()
    };
    let started = Instant::now();
    while lines(200) < taken + 1 || lines(429) < refused.len() {
        assert!(started.elapsed() < DEADLINE, "{} and {} access lines", lines(200), lines(429));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((lines(200), lines(429)), (taken + 1, refused.len()));
}

/// The README's crontab lines and systemd units, run as written: only the
/// host, the header file, the job and its log are put where the test has them.
#[tokio::test]
async fn the_readme_cron_lines_and_systemd_hooks_ping_as_written() {
    // Arrange
    healthd_testkit::debian::require_package("/usr/bin/curl", "curl");
    let app = start("period = \"1h\"\ngrace = \"10m\"").await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme
        [readme.find("### `kind = \"heartbeat\"`").expect("the README's heartbeat section")..];
    let block = |fence: &str| {
        section.split(fence).nth(1).and_then(|rest| rest.split("```").next()).unwrap()
    };
    let crontab: Vec<&str> =
        block("```crontab\n").lines().filter(|line| !line.starts_with('#')).collect();
    assert_eq!(crontab.len(), 2, "{crontab:?}");
    let unit = block("```ini\n");
    let hook = |key: &str| {
        let line = unit.lines().find_map(|line| line.strip_prefix(key)).unwrap();
        // systemd reads `$$` as `$`; `-` only lets a failure pass.
        line.trim_start_matches('-').replace("$$", "$")
    };
    let dir = std::env::temp_dir().join(crate::support::checks::unique("healthd-readme-cron-"));
    std::fs::create_dir_all(&dir).unwrap();
    let header = dir.join("backup.header");
    std::fs::write(&header, format!("Authorization: Bearer {BACKUP_KEY}\n")).unwrap();
    let job = dir.join("backup.sh");
    std::fs::write(&job, "#!/bin/sh\necho \"$JOB_SAYS\"\nexit \"$JOB_EXIT\"\n").unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&job, executable).unwrap();
    let here = |text: &str| {
        text.replace("http://healthd.internal:8080", &app.base)
            .replace("/etc/healthd/backup.header", &header.display().to_string())
            .replace("/usr/local/bin/backup.sh", &job.display().to_string())
            .replace("/var/tmp/backup.log", &dir.join("backup.log").display().to_string())
    };
    // On the test's runtime, which also serves healthd: never block it.
    let run = |command: String, env: &'static [(&'static str, &'static str)]| {
        let mut shell = tokio::process::Command::new("/bin/sh");
        shell.arg("-c").arg(here(&command)).envs(env.iter().copied());
        async move {
            let output = shell.output().await.unwrap();
            assert!(
                output.status.success(),
                "{command}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };
    let cron = |line: &str| {
        // The five time fields go; the rest is what cron hands to /bin/sh.
        let mut rest = line;
        for _ in 0..5 {
            rest = rest.trim_start();
            rest = &rest[rest.find(' ').unwrap()..];
        }
        rest.trim().to_string()
    };
    // Act + Assert: the first line pings success after a good run.
    run(cron(crontab[0]), &[("JOB_SAYS", "copied"), ("JOB_EXIT", "0")]).await;
    wait_for_backup(&app, |reading| {
        status_is(reading, "pass") && reading["observedValue"].is_number()
    })
    .await;
    // The second sends the exit status and the job's output.
    run(cron(crontab[1]), &[("JOB_SAYS", "disk full"), ("JOB_EXIT", "3")]).await;
    wait_shows(&app, "exit status 3\ndisk full\n").await;
    // The unit's start, then its end as systemd reports it.
    run(hook("ExecStartPre="), &[]).await;
    let stop = hook("ExecStopPost=");
    run(
        stop.clone(),
        &[("SERVICE_RESULT", "success"), ("EXIT_CODE", "exited"), ("EXIT_STATUS", "0")],
    )
    .await;
    let done = wait_shows(&app, "").await;
    assert!(done.check("backup:duration").is_some(), "{done:?}");
    run(
        stop.clone(),
        &[("SERVICE_RESULT", "exit-code"), ("EXIT_CODE", "exited"), ("EXIT_STATUS", "2")],
    )
    .await;
    wait_shows(&app, "exit status 2").await;
    run(stop, &[("SERVICE_RESULT", "signal"), ("EXIT_CODE", "killed"), ("EXIT_STATUS", "TERM")])
        .await;
    wait_shows(&app, "the job reported failure").await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until `backup` passes (`wanted` empty) or fails with `wanted` as its output.
async fn wait_shows(app: &TestApp, wanted: &str) -> Answer {
    wait_for_backup(app, |reading| {
        if wanted.is_empty() {
            status_is(reading, "pass")
        } else {
            status_is(reading, "fail") && reading["output"] == wanted
        }
    })
    .await
}
