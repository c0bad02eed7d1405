//! `/metrics` against the real server: Prometheus text that parses (with a
//! small parser of the 0.0.4 text format written here), names that follow
//! Prometheus conventions, and values that move when a check fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::app::{spawn_app, TestApp};

const DEADLINE: Duration = Duration::from_secs(10);

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: families by name (HELP, TYPE) and samples in order.
#[derive(Debug, Default)]
struct Exposition {
    help: BTreeMap<String, String>,
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `{a="x",b="y\"z"}` at the start of `text`; returns the labels and the rest.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').ok_or("no {")?;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once('=').ok_or(format!("no = in {rest:?}"))?;
        let name = name.trim();
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = after.strip_prefix('"').ok_or("label value is not quoted")?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    other => return Err(format!("bad escape \\{other}")),
                },
                (index, '"') => break index,
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &after[1 + end + 1..];
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} at {rest:?}"));
        }
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

/// The family a sample belongs to: histograms own `_bucket`, `_sum`, `_count`.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|kind| kind == "histogram" || kind == "summary") {
                return base;
            }
        }
    }
    name
}

/// Parses the Prometheus text exposition format 0.0.4, strictly.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    let mut seen_families: Vec<String> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let fail = |reason: String| format!("line {}: {reason}: {line:?}", number + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), help) => {
                    if !valid_metric_name(name) {
                        return Err(fail("bad name".into()));
                    }
                    let help = help.unwrap_or_default().to_string();
                    if exposition.help.insert(name.to_string(), help).is_some() {
                        return Err(fail("a second HELP".into()));
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(fail(format!("bad type {kind}")));
                    }
                    if seen_families.iter().any(|family| family == name) {
                        return Err(fail("TYPE after the family's samples".into()));
                    }
                    if exposition.types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(fail("a second TYPE".into()));
                    }
                }
                _ => {} // Any other comment is allowed.
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| fail("no value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(fail("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(fail)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value =
            parse_value(fields.next().ok_or_else(|| fail("no value".into()))?).map_err(fail)?;
        if let Some(timestamp) = fields.next() {
            timestamp.parse::<i64>().map_err(|_| fail("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(fail("trailing text".into()));
        }
        // A family's samples are one group.
        let family = family_of(name, &exposition.types).to_string();
        if seen_families.last() != Some(&family) {
            if seen_families.contains(&family) {
                return Err(fail(format!("samples of {family} are not together")));
            }
            seen_families.push(family);
        }
        let sample = Sample { name: name.to_string(), labels, value };
        if exposition.samples.iter().any(|s| s.name == sample.name && s.labels == sample.labels) {
            return Err(fail("a duplicate series".into()));
        }
        exposition.samples.push(sample);
    }
    Ok(exposition)
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(key, value)| s.labels.get(*key).map(String::as_str) == Some(*value))
            })
            .map(|s| s.value)
    }

    fn check(&self, name: &str, check: &str) -> f64 {
        self.value(name, &[("check", check)]).unwrap_or_else(|| panic!("no {name} for {check}"))
    }
}

/// Asserts the conventions of https://prometheus.io/docs/practices/naming/
/// and of the histogram type.
fn assert_conventions(exposition: &Exposition) {
    for (family, kind) in &exposition.types {
        assert!(family.starts_with("healthd_"), "{family} has no healthd_ prefix");
        assert!(exposition.help.get(family).is_some_and(|h| !h.is_empty()), "{family} has no HELP");
        match kind.as_str() {
            "counter" => {
                assert!(family.ends_with("_total"), "counter {family} does not end in _total")
            }
            _ => assert!(!family.ends_with("_total"), "{kind} {family} ends in _total"),
        }
        // Durations are in seconds, and say so.
        if family.split('_').any(|word| matches!(word, "duration" | "latency" | "time" | "age")) {
            assert!(family.ends_with("_seconds"), "{family} is a time not in _seconds");
        }
        for unit in ["_ms", "_milliseconds", "_us", "_minutes"] {
            assert!(!family.contains(unit), "{family} uses a non-base unit");
        }
    }
    for sample in &exposition.samples {
        let family = family_of(&sample.name, &exposition.types);
        assert!(exposition.types.contains_key(family), "{} has no TYPE", sample.name);
        let kind = &exposition.types[family];
        if kind == "counter" {
            assert!(sample.value >= 0.0 && sample.value.fract() == 0.0, "{sample:?}");
        }
    }
    // Histograms: per series, increasing bounds, cumulative counts,
    // +Inf equal to _count, and a _sum.
    for (family, _) in exposition.types.iter().filter(|(_, kind)| *kind == "histogram") {
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for sample in exposition.samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let mut labels = sample.labels.clone();
            let bound = parse_value(&labels.remove("le").expect("a bucket has le")).unwrap();
            series.entry(labels).or_default().push((bound, sample.value));
        }
        assert!(!series.is_empty(), "histogram {family} has no buckets");
        for (labels, buckets) in series {
            assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "{family} bounds do not increase");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} buckets are not cumulative: {buckets:?}"
            );
            assert_eq!(buckets.last().unwrap().0, f64::INFINITY, "{family} has no +Inf bucket");
            let pairs: Vec<(&str, &str)> =
                labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let count = exposition.value(&format!("{family}_count"), &pairs).expect("a _count");
            assert_eq!(buckets.last().unwrap().1, count, "{family} +Inf bucket != _count");
            assert!(
                exposition.value(&format!("{family}_sum"), &pairs).is_some(),
                "{family} has no _sum"
            );
        }
    }
}

/// A TCP listener the test can close: accepts until aborted.
async fn closable_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    (address, task)
}

/// A listener that accepts and never answers: an HTTP check against it times out.
async fn silent_listener() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    address
}

fn config(dependency: SocketAddr, silent: SocketAddr) -> String {
    format!(
        r#"
[server]
workers = 1
[access]
details = "always"

[[checks]]
name = "dependency"
kind = "tcp"
address = "{dependency}"
interval = "300ms"
timeout = "100ms"
retries = 1
backoff = "50ms"

[[checks]]
name = "silent"
kind = "http"
url = "http://{silent}/"
critical = false
interval = "400ms"
timeout = "150ms"
retries = 0

[[checks]]
name = "disk"
kind = "disk"
path = "/"
"#
    )
}

async fn scrape(app: &TestApp) -> Exposition {
    let answer = app.get("/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "text/plain; version=0.0.4; charset=utf-8");
    parse(&answer.text).unwrap_or_else(|error| panic!("{error}\n{}", answer.text))
}

/// Scrapes until `done` holds.
async fn scrape_until(app: &TestApp, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let started = Instant::now();
    loop {
        let exposition = scrape(app).await;
        if done(&exposition) {
            return exposition;
        }
        assert!(started.elapsed() < DEADLINE, "never {what}: {exposition:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    for bad in [
        "healthd_x 1 2 3",
        "healthd_x{a=\"1\" 1",
        "healthd_x{a=1} 1",
        "healthd_x{1a=\"1\"} 1",
        "healthd_x{a=\"1\",a=\"2\"} 1",
        "healthd-x 1",
        "healthd_x one",
        "healthd_x 1\nhealthd_y 1\nhealthd_x{a=\"b\"} 1",
        "healthd_x 1\n# TYPE healthd_x gauge",
        "# TYPE healthd_x gauge\n# TYPE healthd_x counter",
        "healthd_x 1\nhealthd_x 2",
        "healthd_x{a=\"\\q\"} 1",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
    let good = parse("# HELP h_x A thing.\n# TYPE h_x gauge\nh_x{a=\"q\\\"\\\\\\n\",b=\"\"} +Inf 1700000000\nh_y NaN\n").unwrap();
    assert_eq!(good.samples[0].labels["a"], "q\"\\\n");
    assert_eq!(good.samples[0].value, f64::INFINITY);
}

#[tokio::test]
async fn metrics_parse_and_follow_prometheus_conventions() {
    // Arrange
    let (dependency, _open) = closable_listener().await;
    let app = spawn_app(&config(dependency, silent_listener().await)).await;
    app.wait_for("/health/startup", None, DEADLINE, |a| a.status == StatusCode::OK).await;

    // Act
    let exposition = scrape(&app).await;

    // Assert
    assert_conventions(&exposition);
    let families: BTreeSet<&str> = exposition.types.keys().map(String::as_str).collect();
    for family in [
        "healthd_build_info",
        "healthd_status",
        "healthd_ready",
        "healthd_draining",
        "healthd_check_status",
        "healthd_check_up",
        "healthd_check_critical",
        "healthd_check_last_duration_seconds",
        "healthd_check_duration_seconds",
        "healthd_check_runs_total",
        "healthd_check_failures_total",
        "healthd_check_timeouts_total",
        "healthd_http_requests_total",
        "healthd_client_connections",
        "healthd_client_connections_max",
    ] {
        assert!(families.contains(family), "{family} is missing: {families:?}");
    }
    let build = exposition.samples.iter().find(|s| s.name == "healthd_build_info").unwrap();
    assert_eq!(build.value, 1.0);
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    // Every check has its series, labelled with its name and kind.
    for (check, kind) in [("dependency", "tcp"), ("silent", "http"), ("disk", "disk")] {
        for family in ["healthd_check_status", "healthd_check_up", "healthd_check_runs_total"] {
            let value = exposition.value(family, &[("check", check), ("kind", kind)]);
            assert!(value.is_some(), "no {family} for {check}");
        }
    }
}

#[tokio::test]
async fn check_metrics_move_when_a_dependency_goes_away() {
    // Arrange: a dependency that answers.
    let (dependency, open) = closable_listener().await;
    let app = spawn_app(&config(dependency, silent_listener().await)).await;
    let up = scrape_until(&app, "up", |e| {
        e.value("healthd_check_up", &[("check", "dependency")]) == Some(1.0)
            && e.check("healthd_check_runs_total", "dependency") >= 2.0
    })
    .await;
    assert_eq!(up.check("healthd_check_status", "dependency"), 0.0);
    assert_eq!(up.check("healthd_check_failures_total", "dependency"), 0.0);
    assert_eq!(
        up.value("healthd_status", &[]),
        Some(1.0),
        "silent fails, but it is not critical: warn"
    );
    assert_eq!(up.value("healthd_ready", &[]), Some(1.0), "a failing non-critical check");
    assert_eq!(up.check("healthd_check_critical", "dependency"), 1.0);
    assert_eq!(up.check("healthd_check_critical", "silent"), 0.0);

    // Act: the dependency goes away.
    open.abort();
    let _ = open.await;

    // Assert: status and up flip, the counters count.
    let down = scrape_until(&app, "down", |e| {
        e.value("healthd_check_up", &[("check", "dependency")]) == Some(0.0)
    })
    .await;
    assert_eq!(down.check("healthd_check_status", "dependency"), 2.0);
    assert_eq!(down.value("healthd_status", &[]), Some(2.0));
    assert_eq!(down.value("healthd_ready", &[]), Some(0.0), "a critical check fails");
    let runs = |e: &Exposition| e.check("healthd_check_runs_total", "dependency");
    let failures = |e: &Exposition| e.check("healthd_check_failures_total", "dependency");
    let attempts = |e: &Exposition| e.check("healthd_check_attempts_total", "dependency");
    assert!(runs(&down) > runs(&up));
    assert!(failures(&down) >= 1.0);
    // Each failed run made two attempts (retries = 1).
    assert!(attempts(&down) - attempts(&up) >= 2.0 * failures(&down), "{down:#?}");
    let later = scrape_until(&app, "counting", |e| failures(e) > failures(&down)).await;
    assert!(runs(&later) > runs(&down));
    assert_eq!(
        later.check("healthd_check_duration_seconds_count", "dependency"),
        runs(&later),
        "every run is in the histogram"
    );
    assert!(later.check("healthd_check_last_duration_seconds", "dependency") >= 0.0);
    // The silent HTTP dependency: every run a timeout, and a failure.
    assert!(later.check("healthd_check_timeouts_total", "silent") >= 1.0);
    assert_eq!(
        later.check("healthd_check_failures_total", "silent"),
        later.check("healthd_check_runs_total", "silent")
    );
    assert_eq!(later.check("healthd_check_timeouts_total", "disk"), 0.0);
    assert_conventions(&later);
}

#[tokio::test]
async fn request_counters_count_each_answer_by_endpoint_and_status() {
    let (dependency, _open) = closable_listener().await;
    let app = spawn_app(&config(dependency, silent_listener().await)).await;
    let count = |e: &Exposition, endpoint: &str, status: &str| {
        e.value("healthd_http_requests_total", &[("endpoint", endpoint), ("status", status)])
            .unwrap_or(0.0)
    };
    let before = scrape(&app).await;

    for _ in 0..3 {
        assert_eq!(app.get("/health/live").await.status, StatusCode::OK);
    }
    assert_eq!(app.get("/health/checks/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/no-such-path").await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/health?bad=%zz").await.status, StatusCode::BAD_REQUEST);
    let after = scrape(&app).await;

    assert_eq!(count(&after, "liveness", "200") - count(&before, "liveness", "200"), 3.0);
    assert_eq!(count(&after, "check", "404") - count(&before, "check", "404"), 1.0);
    assert_eq!(count(&after, "other", "404") - count(&before, "other", "404"), 1.0);
    assert_eq!(count(&after, "health", "400") - count(&before, "health", "400"), 1.0);
    // The first scrape itself was counted by the time of the second.
    assert!(count(&after, "metrics", "200") >= 1.0);
}
