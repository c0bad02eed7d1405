//! Shared pieces of the check fault tests: a config around some
//! `[[checks]]`, readers for one check's reading in a report, probe timing,
//! and the secret scan over every answer and log line.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::task::JoinSet;

use crate::support::app::{captured_logs, Answer, TestApp};

/// How long a test waits for a state it expects. Generous: the machine may
/// be busy building; a healthy run needs a small fraction of it.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A config whose details every local caller sees, with `checks` (TOML
/// `[[checks]]` tables) appended.
pub fn config(checks: &str) -> String {
    format!(
        r#"
[server]
service_id = "checks-test"
drain_delay = "0s"

[access]
details = "always"
details_allow = ["127.0.0.0/8"]

{checks}
"#
    )
}

/// The status of `key`'s (`name:measurement`) reading in a report; `None`
/// while the check has no reading yet.
pub fn status<'a>(answer: &'a Answer, key: &str) -> Option<&'a str> {
    if output(answer, key) == Some("no reading yet") {
        return None;
    }
    answer.check(key)?.get("status")?.as_str()
}

/// The output of `key` in a report.
pub fn output<'a>(answer: &'a Answer, key: &str) -> Option<&'a str> {
    answer.check(key)?.get("output")?.as_str()
}

/// `consecutiveFailures` of `key`; 0 when absent.
pub fn failures(answer: &Answer, key: &str) -> u64 {
    answer
        .check(key)
        .and_then(|reading| reading.get("consecutiveFailures"))
        .and_then(|value| value.as_u64())
        .unwrap_or(0)
}

/// The answer is 503: a check failed.
pub fn is_unavailable(answer: &Answer) -> bool {
    answer.status == StatusCode::SERVICE_UNAVAILABLE
}

/// Whether `/health` says `key` has `wanted` status and output.
pub fn shows(answer: &Answer, key: &str, wanted: &str, wanted_output: Option<&str>) -> bool {
    status(answer, key) == Some(wanted) && output(answer, key) == wanted_output
}

/// Waits until `/health` shows `key` with `wanted` status and output.
pub async fn wait_shows(
    app: &TestApp,
    key: &str,
    wanted: &str,
    wanted_output: Option<&str>,
) -> Answer {
    app.wait_for("/health", None, DEADLINE, |a| shows(a, key, wanted, wanted_output)).await
}

/// Sends `concurrency` GETs of `path` at once, `rounds` times, and returns
/// each one's latency (send to last body byte) and status. Timed with the
/// bare client: no schema validation inside the measurement.
pub async fn probe_latencies(
    app: &TestApp,
    path: &str,
    concurrency: usize,
    rounds: usize,
) -> Vec<(Duration, u16)> {
    let url = format!("{}{path}", app.base);
    let mut all = Vec::with_capacity(concurrency * rounds);
    for _ in 0..rounds {
        let mut probes = JoinSet::new();
        for _ in 0..concurrency {
            let client = app.client.clone();
            let url = url.clone();
            probes.spawn(async move {
                let started = Instant::now();
                let response = client.get(url).send().await.expect("healthd answers a probe");
                let status = response.status().as_u16();
                response.bytes().await.expect("a probe's body");
                (started.elapsed(), status)
            });
        }
        while let Some(result) = probes.join_next().await {
            all.push(result.expect("a probe task"));
        }
    }
    all
}

/// The `p`-th percentile (0-100) of `latencies`, nearest rank.
pub fn percentile(latencies: &[Duration], p: f64) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Every body healthd answers with details (the report, each check, the
/// probes, `/metrics`), for the secret scan.
pub async fn every_body(app: &TestApp, checks: &[&str]) -> Vec<String> {
    let mut paths: Vec<String> =
        ["/health", "/health/ready", "/health/startup", "/health/live", "/metrics"]
            .iter()
            .map(|path| path.to_string())
            .collect();
    paths.extend(checks.iter().map(|name| format!("/health/checks/{name}")));
    let mut bodies = Vec::new();
    for path in paths {
        let answer = app.get(&path).await;
        bodies.push(format!("{path} -> {} {:?}\n{}", answer.status, answer.headers, answer.text));
    }
    bodies
}

/// Fails if any body or any captured log line holds any of `secrets`.
pub fn assert_no_secret(bodies: &[String], secrets: &[&str], fault: &str) {
    let logs = captured_logs();
    for secret in secrets {
        for body in bodies {
            assert!(!body.contains(secret), "{fault}: a body holds the secret {secret:?}:\n{body}");
        }
        if let Some(line) = logs.lines().find(|line| line.contains(secret)) {
            panic!("{fault}: a log line holds the secret {secret:?}:\n{line}");
        }
    }
}

/// A value unique to this process and call, so that tests running at once
/// never see each other's secrets.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!("{prefix}{}x{nanos}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}
