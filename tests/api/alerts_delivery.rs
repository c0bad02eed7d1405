//! Notifications end to end, with the real binary and a real HTTP server
//! as the webhook receiver: a storm of 200 checks failing at once is one
//! notification per receiver; a receiver that is down and comes back gets
//! every notification once; a healthd killed with notifications pending
//! sends them after its restart, re-sends nothing delivered, and keeps its
//! firing alert firing; a receiver that never answers does not slow a
//! probe; a maintenance window holds a check's notifications back and
//! shows on `/health` and the status page's data.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use healthd_testkit::recorder::{Recorded, Recorder, Reply};
use serde_json::Value;

use crate::support::app::{metric, spawn_binary, RunningBinary};
use crate::support::checks::percentile;
use crate::support::upstream::{Behaviour, Upstream};
use healthd_testkit::readme::readme_block;

const DEADLINE: Duration = Duration::from_secs(60);
/// How long a notification may take to arrive: after a receiver was down a
/// minute, the next retry may be 64 s (+20 %) after the last.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(150);

/// `checks` http checks against `upstream`, every `interval`, all routed
/// to one webhook receiver per entry of `hooks` (`HOOK_0_URL`, ...).
fn config(upstream: &Upstream, checks: usize, hooks: usize, extra: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[access]\ndetails = \"always\"\n\
         [defaults]\ninterval = \"300ms\"\ntimeout = \"200ms\"\nretries = 0\n{extra}\n"
    );
    for index in 0..checks {
        text.push_str(&format!(
            "[[checks]]\nname = \"app-{index}\"\nkind = \"http\"\nurl = \"{}\"\n",
            upstream.url()
        ));
    }
    for hook in 0..hooks {
        text.push_str(&format!(
            "[[receivers]]\nname = \"hook-{hook}\"\nkind = \"webhook\"\nurl_env = \"HOOK_{hook}_URL\"\n\
             secret_env = \"HOOK_SECRET\"\ntimeout = \"1s\"\n\
             [[alerts]]\nname = \"to-{hook}\"\nreceiver = \"hook-{hook}\"\ncritical = true\n\
             group_wait = \"1s\"\ngroup_interval = \"1s\"\nrepeat_interval = \"1h\"\n"
        ));
    }
    text
}

/// The environment naming each receiver's URL.
fn env(recorders: &[&Recorder]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = recorders
        .iter()
        .enumerate()
        .map(|(index, recorder)| (format!("HOOK_{index}_URL"), format!("{}/hook", recorder.url())))
        .collect();
    env.push(("HOOK_SECRET".into(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()));
    env
}

async fn start(text: &str, env: &[(String, String)]) -> RunningBinary {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_binary(text, &[], &env).await
}

fn body(request: &Recorded) -> Value {
    serde_json::from_slice(&request.body).expect("a notification is JSON")
}

/// Whether the receiver answered this request with a 2xx.
fn accepted_it(request: &Recorded) -> bool {
    request.answered.is_some_and(|status| status < 300)
}

/// The requests the receiver answered with a 2xx, as notifications.
fn accepted(recorder: &Recorder) -> Vec<Value> {
    recorder.requests().iter().filter(|request| accepted_it(request)).map(body).collect()
}

/// Waits until the receiver has accepted `count` notifications.
async fn wait_accepted(recorder: &Recorder, count: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let accepted = accepted(recorder);
        if accepted.len() >= count {
            return accepted;
        }
        assert!(
            started.elapsed() < DELIVERY_DEADLINE,
            "{} of {count} notifications accepted: {:?}",
            accepted.len(),
            recorder.requests().iter().map(|r| r.answered).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/metrics` until `series` satisfies `wanted`.
async fn wait_for_metric(binary: &RunningBinary, series: &str, wanted: impl Fn(f64) -> bool) {
    let started = Instant::now();
    loop {
        if metric(&binary.metrics().await, series).is_some_and(&wanted) {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{series} never as wanted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the status page's counts until `pass` checks pass and `fail` fail.
async fn wait_for_counts(binary: &RunningBinary, pass: u64, fail: u64) {
    let started = Instant::now();
    loop {
        let page = binary.get_json("/health/page?limit=1").await;
        if page["counts"]["pass"] == pass && page["counts"]["fail"] == fail {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "counts never {pass} pass, {fail} fail: {}",
            page["counts"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/health/alerts` until `wanted` holds of it.
async fn wait_for_alerts(binary: &RunningBinary, wanted: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let alerts = binary.get_json("/health/alerts").await;
        if wanted(&alerts) {
            return alerts;
        }
        assert!(started.elapsed() < DEADLINE, "/health/alerts never as wanted: {alerts}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(notification: &Value) -> BTreeSet<String> {
    notification["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| alert["componentId"].as_str().unwrap().to_string())
        .collect()
}

fn id(request: &Recorded) -> String {
    request.header("webhook-id").expect("every delivery has a webhook-id").to_string()
}

#[tokio::test]
async fn a_storm_of_200_checks_failing_at_once_is_one_notification_per_receiver() {
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let (first, second) = (Recorder::start().await, Recorder::start().await);
    let binary = start(&config(&upstream, 200, 2, ""), &env(&[&first, &second])).await;
    let everyone: BTreeSet<String> = (0..200).map(|index| format!("app-{index}")).collect();
    // Every check has passed once: the storm is a change for all of them.
    wait_for_counts(&binary, 200, 0).await;

    upstream.set(Behaviour::Status(503));
    for recorder in [&first, &second] {
        let firing = wait_accepted(recorder, 1).await;
        assert_eq!(firing[0]["state"], "firing");
        assert_eq!(names(&firing[0]), everyone, "one notification names all 200");
    }
    wait_for_alerts(&binary, |alerts| {
        alerts["alerts"].as_array().unwrap().iter().filter(|a| a["phase"] == "firing").count()
            == 400
    })
    .await;

    upstream.set(Behaviour::Status(200));
    for recorder in [&first, &second] {
        let sent = wait_accepted(recorder, 2).await;
        assert_eq!(sent[1]["state"], "resolved");
        assert_eq!(names(&sent[1]), everyone, "one resolution names all 200");
        // Between the storm and its end, nothing else went out.
        assert_eq!(recorder.requests().len(), 2, "{sent:?}");
    }
    println!(
        "MEASURED storm: 200 checks failing at once gave {} notification(s) per receiver, {} bytes",
        1,
        first.requests()[0].body.len()
    );
}

#[tokio::test]
async fn a_receiver_down_then_back_gets_every_notification_once_with_one_id_per_notification() {
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let hook = Recorder::start().await;
    hook.reply(Reply::Status(503));
    let binary = start(&config(&upstream, 1, 1, ""), &env(&[&hook])).await;
    wait_for_counts(&binary, 1, 0).await;

    // Three notifications while the receiver answers 503: fired, resolved,
    // fired. Each change waits for the one before to be in the outbox: a
    // check failing again before its resolution went out resumes the alert
    // the receiver knows, and is no new notification.
    let down_since = Instant::now();
    for (behaviour, pending) in [(503, 1.0), (200, 2.0), (503, 3.0)] {
        upstream.set(Behaviour::Status(behaviour));
        wait_for_metric(&binary, "healthd_notifications_pending{receiver=\"hook-0\"}", |n| {
            n >= pending
        })
        .await;
    }
    // Down for a minute: attempts back off (1 s, 2 s, 4 s ... ±20 %).
    let down = Duration::from_secs(60).saturating_sub(down_since.elapsed());
    tokio::time::sleep(down).await;
    let refused = hook.requests().len();
    assert!(refused >= 3, "{refused} attempts while down");

    let down_for = down_since.elapsed();
    hook.reply(Reply::Status(200));
    let back = Instant::now();
    let delivered = wait_accepted(&hook, 3).await;
    let caught_up = back.elapsed();
    wait_for_metric(&binary, "healthd_notifications_pending{receiver=\"hook-0\"}", |n| n == 0.0)
        .await;
    // In the order they were made: a firing one being retried never lands after its resolution.
    let states: Vec<&str> = delivered.iter().map(|n| n["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["firing", "resolved", "firing"], "{delivered:?}");

    // Each notification was accepted once; every attempt of one carried its id and its bytes.
    let mut attempts: BTreeMap<String, Vec<&Recorded>> = BTreeMap::new();
    let requests = hook.requests();
    for request in &requests {
        attempts.entry(id(request)).or_default().push(request);
    }
    assert_eq!(attempts.len(), 3, "three notifications, three ids");
    for (id, tries) in &attempts {
        assert_eq!(tries.iter().filter(|t| accepted_it(t)).count(), 1, "{id} accepted once");
        assert!(tries.iter().all(|t| t.body == tries[0].body), "{id}: the same body every try");
    }
    let text = binary.metrics().await;
    assert_eq!(metric(&text, "healthd_notifications_sent_total{receiver=\"hook-0\"}"), Some(3.0));
    let retries =
        metric(&text, "healthd_notification_retries_total{receiver=\"hook-0\"}").unwrap_or(0.0);
    assert!(retries >= 1.0, "{text}");
    println!(
        "MEASURED receiver down {:.1} s: {} attempts for 3 notifications, each accepted once, all in {:.1} s after it came back",
        down_for.as_secs_f64(),
        requests.len(),
        caught_up.as_secs_f64()
    );
}

#[tokio::test]
async fn a_healthd_killed_with_notifications_pending_sends_them_after_its_restart() {
    let store = std::env::temp_dir().join(format!("healthd-alerts-{}.db", std::process::id()));
    let remove = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", store.display()));
        }
    };
    remove();
    let failing = Upstream::start(Behaviour::Status(503)).await;
    let later = Upstream::start(Behaviour::Status(200)).await;
    let hook = Recorder::start().await;
    let storage = format!("[storage]\npath = \"{}\"\n", store.display());
    // `first` fails from the start; `second` fails later.
    let text = config(&failing, 1, 1, &storage).replace("app-0", "first")
        + &format!("[[checks]]\nname = \"second\"\nkind = \"http\"\nurl = \"{}\"\n", later.url());
    let mut binary = start(&text, &env(&[&hook])).await;
    let delivered = wait_accepted(&hook, 1).await;
    assert_eq!(names(&delivered[0]), BTreeSet::from(["first".to_string()]));
    let first_id = id(&hook.requests()[0]);

    // The receiver goes down; `second` fails; its notification waits.
    hook.reply(Reply::Status(503));
    later.set(Behaviour::Status(503));
    wait_for_metric(&binary, "healthd_notifications_pending{receiver=\"hook-0\"}", |n| n >= 1.0)
        .await;
    let started = Instant::now();
    while !hook.requests().iter().any(|request| request.answered == Some(503)) {
        assert!(started.elapsed() < DEADLINE, "no attempt of the pending notification");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending_id =
        id(hook.requests().iter().find(|request| request.answered == Some(503)).unwrap());
    let notified_before = binary.get_json("/health/alerts").await;
    binary.signal(libc::SIGKILL);
    binary.wait_for_exit(DEADLINE).await;

    hook.reply(Reply::Status(200));
    let binary = start(&text, &env(&[&hook])).await;
    let delivered = wait_accepted(&hook, 2).await;
    // A route's notification lists every alert of it that fires, as Alertmanager's groups do.
    assert_eq!(names(&delivered[1]), BTreeSet::from(["first".to_string(), "second".to_string()]));
    assert_eq!(delivered[1]["state"], "firing");
    let last = hook.requests().last().unwrap().clone();
    assert_eq!(id(&last), pending_id, "the same notification, by its id");
    // Both alerts stay firing with the times they had; no resolution, no second firing.
    let alerts = wait_for_alerts(&binary, |alerts| {
        alerts["alerts"].as_array().unwrap().iter().all(|a| a["phase"] == "firing")
            && alerts["alerts"].as_array().unwrap().len() == 2
    })
    .await;
    for alert in notified_before["alerts"].as_array().unwrap() {
        let after = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["componentId"] == alert["componentId"])
            .unwrap();
        assert_eq!(after["startedAt"], alert["startedAt"], "{alert} then {after}");
    }
    // A fresh run of each check after the restart changes nothing.
    wait_for_counts(&binary, 0, 2).await;
    let runs_after = Instant::now();
    while runs_after.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> =
        hook.requests().iter().filter(|r| accepted_it(r)).map(id).collect::<Vec<_>>();
    assert_eq!(ids, [first_id, pending_id], "nothing delivered twice, nothing new");
    drop(binary);
    remove();
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_slow_a_probe() {
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let hook = Recorder::start().await;
    hook.reply(Reply::Hang);
    let binary = start(&config(&upstream, 50, 1, ""), &env(&[&hook])).await;
    wait_for_counts(&binary, 50, 0).await;
    // Fifty alerts, one notification every second (group_interval), each hanging its 1 s timeout.
    let started = Instant::now();
    let mut flip = false;
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        if latencies.len() % 100 == 0 {
            flip = !flip;
            upstream.set(Behaviour::Status(if flip { 503 } else { 200 }));
        }
        let probe = Instant::now();
        let response = client.get(format!("{}/health/ready", binary.base())).send().await.unwrap();
        response.bytes().await.unwrap();
        latencies.push(probe.elapsed());
    }
    assert!(hook.requests().len() >= 2, "the receiver was tried while the probes ran");
    let p99 = percentile(&latencies, 99.0);
    println!(
        "MEASURED hanging receiver: {} probes of /health/ready, p50 {:?}, p99 {:?}, max {:?}, {} hung deliveries",
        latencies.len(),
        percentile(&latencies, 50.0),
        p99,
        latencies.iter().max().unwrap(),
        hook.requests().len()
    );
    // Generous: probes waiting on deliveries (each hangs 1 s, one a second)
    // would mostly wait; a busy CI machine's stalls touch a few.
    let p95 = percentile(&latencies, 95.0);
    assert!(p95 < Duration::from_millis(500), "p95 {p95:?}, p99 {p99:?}");
}

#[tokio::test]
async fn a_maintenance_window_holds_its_checks_back_and_shows_on_health_and_the_page() {
    let failing = Upstream::start(Behaviour::Status(503)).await;
    let hook = Recorder::start().await;
    let window = "[[maintenance]]\nname = \"upgrade\"\nchecks = [\"held\"]\n\
                  start = \"2020-01-01T00:00:00Z\"\nend = \"2099-01-01T00:00:00Z\"\n";
    let text = config(&failing, 1, 1, window).replace("app-0", "told")
        + &format!("[[checks]]\nname = \"held\"\nkind = \"http\"\nurl = \"{}\"\n", failing.url());
    let binary = start(&text, &env(&[&hook])).await;
    let sent = wait_accepted(&hook, 1).await;
    assert_eq!(names(&sent[0]), BTreeSet::from(["told".to_string()]));
    let alerts = wait_for_alerts(&binary, |alerts| {
        alerts["alerts"].as_array().unwrap().iter().any(|a| a["componentId"] == "held")
    })
    .await;
    let held = alerts["alerts"].as_array().unwrap().iter().find(|a| a["componentId"] == "held");
    assert_eq!(held.unwrap()["phase"], "suppressed", "{alerts}");
    assert_eq!(alerts["maintenance"][0]["name"], "upgrade");

    // Both checks fail: `/health` answers 503, with the note.
    let health: Value = serde_json::from_str(
        &reqwest::get(format!("{}/health", binary.base())).await.unwrap().text().await.unwrap(),
    )
    .unwrap();
    let notes = health["notes"].as_array().expect("a note of the window");
    assert!(
        notes[0].as_str().unwrap().contains("maintenance upgrade until 2099-01-01"),
        "{notes:?}"
    );
    let page = binary.get_json("/health/page").await;
    assert_eq!(page["maintenance"][0]["componentIds"], serde_json::json!(["held"]));
    let row = page["checks"].as_array().unwrap().iter().find(|c| c["componentId"] == "held");
    assert_eq!(row.unwrap()["maintenance"], "upgrade");
    let told = page["checks"].as_array().unwrap().iter().find(|c| c["componentId"] == "told");
    assert!(told.unwrap().get("maintenance").is_none());
}

/// The README's notifications example passes `check-config` as written,
/// given the one variable it names.
#[test]
fn the_readme_notifications_example_is_a_valid_config() {
    let block = readme_block("notifications-example");
    let path =
        std::env::temp_dir().join(format!("healthd-readme-alerts-{}.toml", std::process::id()));
    std::fs::write(&path, &block).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_healthd"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("TEAM_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/secret")
        .env_remove("HEALTHD_CONFIG")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
