//! `/metrics`: Prometheus text exposition, rendered on request from the
//! snapshot, the request counters, the reload counters and the client
//! connections.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::web::Bytes;

use healthd_models::{AlertPhase, HealthStatus};

use crate::alerts::{Alerts, DeliveryStats};
use crate::base::severity::rank;
use crate::engine::render::Snapshot;
use crate::engine::state::{Counters, LATENCY_BUCKETS};
use crate::store::StoreStats;

/// Route names: the route table names each operation by one, and requests
/// are counted under it; `OTHER` counts what matched no route.
pub mod endpoint {
    pub const HEALTH: &str = "health";
    pub const LIVENESS: &str = "liveness";
    pub const READINESS: &str = "readiness";
    pub const STARTUP: &str = "startup";
    pub const CHECK: &str = "check";
    pub const CHECK_HISTORY: &str = "check_history";
    pub const CHECK_UPTIME: &str = "check_uptime";
    pub const UPTIME: &str = "uptime";
    pub const CHECK_INCIDENTS: &str = "check_incidents";
    pub const INCIDENTS: &str = "incidents";
    pub const CHECK_SERIES: &str = "check_series";
    pub const PING: &str = "ping";
    pub const GROUP: &str = "group";
    pub const BADGE: &str = "badge";
    pub const STATUS_PAGE: &str = "status_page";
    pub const HEALTH_PAGE: &str = "health_page";
    pub const ALERTS: &str = "alerts";
    pub const METRICS: &str = "metrics";
    pub const OPENAPI_YAML: &str = "openapi_yaml";
    pub const OPENAPI_JSON: &str = "openapi_json";
    pub const SWAGGER_UI: &str = "swagger_ui";
    pub const OTHER: &str = "other";
}

const ENDPOINTS: [&str; 22] = [
    endpoint::HEALTH,
    endpoint::LIVENESS,
    endpoint::READINESS,
    endpoint::STARTUP,
    endpoint::CHECK,
    endpoint::CHECK_HISTORY,
    endpoint::CHECK_UPTIME,
    endpoint::UPTIME,
    endpoint::CHECK_INCIDENTS,
    endpoint::INCIDENTS,
    endpoint::CHECK_SERIES,
    endpoint::PING,
    endpoint::GROUP,
    endpoint::BADGE,
    endpoint::STATUS_PAGE,
    endpoint::HEALTH_PAGE,
    endpoint::ALERTS,
    endpoint::METRICS,
    endpoint::OPENAPI_YAML,
    endpoint::OPENAPI_JSON,
    endpoint::SWAGGER_UI,
    endpoint::OTHER,
];
const HTTP_STATUSES: [u16; 13] = [200, 301, 304, 400, 401, 403, 404, 405, 409, 429, 431, 500, 503];

const COLUMNS: usize = HTTP_STATUSES.len() + 1;
const CELLS: usize = ENDPOINTS.len() * COLUMNS;
/// Counter shards: each thread adds to its own, so that two workers
/// counting the same probe do not pull one cache line back and forth.
const SHARDS: usize = 8;

/// Requests by endpoint and status code. Lock-free and sharded, so that
/// counting costs a probe one uncontended atomic add.
pub struct RequestCounters {
    shards: Box<[Shard; SHARDS]>,
}

/// Aligned past a cache line (and its adjacent-line prefetch).
#[repr(align(128))]
struct Shard([AtomicU64; CELLS]);

impl Default for RequestCounters {
    fn default() -> Self {
        let shard = || Shard(std::array::from_fn(|_| AtomicU64::new(0)));
        RequestCounters { shards: Box::new(std::array::from_fn(|_| shard())) }
    }
}

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

impl RequestCounters {
    pub fn count(&self, endpoint: Option<&str>, status: u16) {
        let endpoint = endpoint.and_then(|name| ENDPOINTS.iter().position(|known| *known == name));
        let endpoint = endpoint.unwrap_or(ENDPOINTS.len() - 1);
        let status =
            HTTP_STATUSES.iter().position(|known| *known == status).unwrap_or(HTTP_STATUSES.len());
        let shard = SHARD.with(|shard| *shard);
        self.shards[shard].0[endpoint * COLUMNS + status].fetch_add(1, Ordering::Relaxed);
    }

    fn each(&self) -> impl Iterator<Item = (&'static str, String, u64)> + '_ {
        (0..CELLS).filter_map(|cell| {
            let count: u64 =
                self.shards.iter().map(|shard| shard.0[cell].load(Ordering::Relaxed)).sum();
            let (endpoint, status) = (cell / COLUMNS, cell % COLUMNS);
            let status = HTTP_STATUSES.get(status).map_or("other".to_string(), u16::to_string);
            (count > 0).then(|| (ENDPOINTS[endpoint], status, count))
        })
    }
}

/// Config reloads by result, and when the running config was loaded.
pub struct ReloadCounters {
    ok: AtomicU64,
    invalid: AtomicU64,
    /// Milliseconds since the Unix epoch: at start, then at each good reload.
    last_ok_ms: AtomicU64,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

impl Default for ReloadCounters {
    /// The config loaded at start is the first good one.
    fn default() -> Self {
        ReloadCounters {
            ok: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            last_ok_ms: AtomicU64::new(unix_ms()),
        }
    }
}

impl ReloadCounters {
    /// A reload was applied.
    pub fn count_ok(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.last_ok_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// A reload was refused: nothing changed.
    pub fn count_invalid(&self) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
    }
}

/// The client connections open now, and the cap on them. The service
/// counts each connection it accepts (`opened`) and sets the cap; an app
/// that mounts healthd in its own server counts none, and `/metrics` then
/// leaves both out.
#[derive(Default)]
pub struct ClientConnections {
    open: Arc<AtomicUsize>,
    max: OnceLock<usize>,
}

/// Held for as long as one client connection is open.
pub struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClientConnections {
    /// A connection was accepted; it counts until the guard drops.
    pub fn opened(&self) -> OpenConnection {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.open.clone())
    }

    /// The cap the service set (once).
    pub fn set_max(&self, max: usize) {
        let _ = self.max.set(max);
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Writes a metric's HELP and TYPE lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole text: what the service says now (`head`), each check's series
/// (`checks`, the same for every caller of one snapshot: see
/// `ChecksCache`) and the request counters (`tail`).
pub struct Rendered {
    pub head: Bytes,
    pub checks: Bytes,
    pub tail: Bytes,
}

/// The checks' part of the last snapshot rendered. 10,000 checks make 16 MB
/// of text: rendered once per snapshot for all who scrape it meanwhile
/// (64 callers each rendering their own held over 1 GB), and cheaper per
/// scrape too. It holds both weakly: the text lives while a response
/// sends it (a new caller then shares it), the snapshot's pieces are not
/// kept for the cache's sake, and an idle healthd holds neither.
#[derive(Default)]
pub struct ChecksCache(tokio::sync::Mutex<Option<(Weak<Snapshot>, Weak<String>)>>);

/// The checks' text as a response's body holds it.
struct SharedText(Arc<String>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl ChecksCache {
    /// The checks' series of `snapshot`: the text a response is sending
    /// already, or rendered now. Callers that come meanwhile wait for the
    /// one rendering.
    pub async fn checks(&self, snapshot: &Arc<Snapshot>) -> Bytes {
        let mut cached = self.0.lock().await;
        if let Some((rendered_for, text)) = cached.as_ref() {
            // A weak reference keeps its snapshot's allocation (not what the
            // snapshot holds), so no newer one can take its address.
            if std::ptr::eq(rendered_for.as_ptr(), Arc::as_ptr(snapshot)) {
                if let Some(text) = text.upgrade() {
                    return Bytes::from_owner(SharedText(text));
                }
            }
        }
        let mut text = render_checks(snapshot);
        // Rendered into room for about 2 KB a check: what was not used
        // goes back.
        text.shrink_to_fit();
        let text = Arc::new(text);
        *cached = Some((Arc::downgrade(snapshot), Arc::downgrade(&text)));
        Bytes::from_owner(SharedText(text))
    }
}

/// What `/metrics` reports besides the checks.
pub struct Sources<'a> {
    pub requests: &'a RequestCounters,
    pub reloads: &'a ReloadCounters,
    pub connections: &'a ClientConnections,
    pub store: Option<&'a StoreStats>,
    pub alerts: &'a Alerts,
    pub draining: bool,
}

pub async fn render(snapshot: &Arc<Snapshot>, cache: &ChecksCache, from: Sources<'_>) -> Rendered {
    let mut head = render_head(snapshot, from.reloads, from.connections, from.draining);
    if let Some(store) = from.store {
        render_store(&mut head, store);
    }
    render_alerts(&mut head, from.alerts);
    let head = Bytes::from(head);
    let checks = cache.checks(snapshot).await;
    let tail = Bytes::from(render_requests(from.requests));
    Rendered { head, checks, tail }
}

fn render_head(
    snapshot: &Snapshot,
    reloads: &ReloadCounters,
    connections: &ClientConnections,
    draining: bool,
) -> String {
    let mut out = String::with_capacity(2048);
    header(&mut out, "healthd_build_info", "gauge", "healthd's version, always 1.");
    let _ = writeln!(out, "healthd_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    header(&mut out, "healthd_draining", "gauge", "1 while the service drains before stopping.");
    let _ = writeln!(out, "healthd_draining {}", u8::from(draining));
    header(
        &mut out,
        "healthd_config_reloads_total",
        "counter",
        "Config reloads (SIGHUP): ok was applied, invalid was refused and changed nothing.",
    );
    for (result, count) in [("ok", &reloads.ok), ("invalid", &reloads.invalid)] {
        let count = count.load(Ordering::Relaxed);
        let _ = writeln!(out, "healthd_config_reloads_total{{result=\"{result}\"}} {count}");
    }
    header(
        &mut out,
        "healthd_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When the running config was loaded (at start or by the last good reload), in Unix time.",
    );
    let last_ok_ms = reloads.last_ok_ms.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "healthd_config_last_reload_success_timestamp_seconds {}.{:03}",
        last_ok_ms / 1000,
        last_ok_ms % 1000
    );

    if let Some(max) = connections.max.get() {
        header(
            &mut out,
            "healthd_client_connections",
            "gauge",
            "Client connections open now (idle keep-alive ones included).",
        );
        let _ = writeln!(out, "healthd_client_connections {}", connections.open());
        header(
            &mut out,
            "healthd_client_connections_max",
            "gauge",
            "Client connections at most: past it, new clients wait in the listen backlog.",
        );
        let _ = writeln!(out, "healthd_client_connections_max {max}");
    }

    header(&mut out, "healthd_status", "gauge", "The service's status: 0 pass, 1 warn, 2 fail.");
    let _ = writeln!(out, "healthd_status {}", rank(snapshot.health.status));
    // What /health/ready answers, for alerts and dashboards that cannot probe.
    header(&mut out, "healthd_ready", "gauge", "1 while /health/ready answers 200.");
    let ready = snapshot.is_ready(draining);
    let _ = writeln!(out, "healthd_ready {}", u8::from(ready));
    out
}

/// The alerts by phase, and each receiver's deliveries.
fn render_alerts(out: &mut String, alerts: &Alerts) {
    let list = alerts.list();
    header(out, "healthd_alerts", "gauge", "Alerts by phase: pending (waiting out `for`), firing, suppressed (a failing dependency or a maintenance window).");
    for phase in [AlertPhase::Pending, AlertPhase::Firing, AlertPhase::Suppressed] {
        let count = list.alerts.iter().filter(|alert| alert.phase == phase).count();
        let _ = writeln!(out, "healthd_alerts{{phase=\"{phase}\"}} {count}");
    }
    header(
        out,
        "healthd_alerts_dropped_total",
        "counter",
        "Changes of status the alerts never saw because their queue was full.",
    );
    let _ = writeln!(out, "healthd_alerts_dropped_total {}", alerts.dropped());
    let stats = alerts.stats();
    type Series = (&'static str, &'static str, &'static str, fn(&DeliveryStats) -> &AtomicU64);
    let series: [Series; 4] = [
        ("healthd_notifications_sent_total", "counter", "Notifications delivered.", |s| &s.sent),
        (
            "healthd_notifications_failed_total",
            "counter",
            "Notifications given up: refused by the receiver, or failing past give_up_after.",
            |s| &s.failed,
        ),
        (
            "healthd_notification_retries_total",
            "counter",
            "Delivery attempts that failed and are tried again.",
            |s| &s.retried,
        ),
        (
            "healthd_notifications_pending",
            "gauge",
            "Notifications in the outbox, not yet delivered nor given up.",
            |s| &s.pending,
        ),
    ];
    for (name, kind, help, value) in series {
        header(out, name, kind, help);
        for (receiver, counters) in &stats {
            let _ = writeln!(
                out,
                "{name}{{receiver=\"{receiver}\"}} {}",
                value(counters).load(Ordering::Relaxed)
            );
        }
    }
}

/// The store's queue and writes.
fn render_store(out: &mut String, store: &StoreStats) {
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    header(
        out,
        "healthd_store_backlog",
        "gauge",
        "Finished runs queued for the store, not yet written.",
    );
    let _ = writeln!(out, "healthd_store_backlog {}", load(&store.backlog));
    header(out, "healthd_store_written_total", "counter", "Runs written to the store.");
    let _ = writeln!(out, "healthd_store_written_total {}", load(&store.written));
    header(
        out,
        "healthd_store_dropped_total",
        "counter",
        "Runs dropped because the store's queue was full (the store was slow, full or down).",
    );
    let _ = writeln!(out, "healthd_store_dropped_total {}", load(&store.dropped));
    header(
        out,
        "healthd_store_write_failures_total",
        "counter",
        "Store writes that failed and are retried.",
    );
    let _ = writeln!(out, "healthd_store_write_failures_total {}", load(&store.failed_writes));
    header(
        out,
        "healthd_store_last_write_seconds",
        "gauge",
        "How long the latest batch took to write.",
    );
    let _ = writeln!(
        out,
        "healthd_store_last_write_seconds {:.6}",
        load(&store.last_write_micros) as f64 / 1e6
    );
    header(
        out,
        "healthd_store_write_seconds",
        "summary",
        "Batch writes to the store: their time and count.",
    );
    let _ = writeln!(
        out,
        "healthd_store_write_seconds_sum {:.6}",
        load(&store.write_micros_sum) as f64 / 1e6
    );
    let _ = writeln!(out, "healthd_store_write_seconds_count {}", load(&store.writes));
}

/// Each check's series: they depend on the snapshot alone.
fn render_checks(snapshot: &Snapshot) -> String {
    // About what a check takes, so that 10,000 checks' text is not copied
    // over and over as it grows.
    let mut out = String::with_capacity(2048 * snapshot.checks().len());

    let labels = |name: &str, kind: &str| format!("check=\"{name}\",kind=\"{kind}\"");
    header(
        &mut out,
        "healthd_check_status",
        "gauge",
        "Each check's reported status: 0 pass, 1 warn, 2 fail.",
    );
    for check in snapshot.checks() {
        let _ = writeln!(
            out,
            "healthd_check_status{{{}}} {}",
            labels(&check.state.name, check.state.kind),
            rank(check.status)
        );
    }
    // A series of its own rather than a label on every check metric: alert
    // rules join on it (`and on (instance, check)`) to page for critical
    // checks only.
    header(
        &mut out,
        "healthd_check_critical",
        "gauge",
        "Whether the check is critical (1): its failure fails the service and readiness.",
    );
    for state in snapshot.checks().map(|check| &check.state) {
        let _ = writeln!(
            out,
            "healthd_check_critical{{{}}} {}",
            labels(&state.name, state.kind),
            u8::from(state.critical)
        );
    }
    header(
        &mut out,
        "healthd_check_flapping",
        "gauge",
        "Whether the check is flapping (1): 4 or more status changes in its last 20 runs, until at most 1.",
    );
    for state in snapshot.checks().map(|check| &check.state) {
        let _ = writeln!(
            out,
            "healthd_check_flapping{{{}}} {}",
            labels(&state.name, state.kind),
            u8::from(state.log.flapping)
        );
    }
    header(
        &mut out,
        "healthd_check_up",
        "gauge",
        "Whether the check's status is pass or warn (1) or fail (0).",
    );
    for check in snapshot.checks() {
        let _ = writeln!(
            out,
            "healthd_check_up{{{}}} {}",
            labels(&check.state.name, check.state.kind),
            u8::from(check.status != HealthStatus::Fail)
        );
    }
    header(
        &mut out,
        "healthd_check_last_duration_seconds",
        "gauge",
        "How long the latest run took, retries included.",
    );
    for state in snapshot.checks().map(|check| &check.state) {
        if let Some(reading) = &state.reading {
            let _ = writeln!(
                out,
                "healthd_check_last_duration_seconds{{{}}} {}",
                labels(&state.name, state.kind),
                reading.duration.as_secs_f64()
            );
        }
    }
    header(
        &mut out,
        "healthd_check_duration_seconds",
        "histogram",
        "Run durations, retries included.",
    );
    for state in snapshot.checks().map(|check| &check.state) {
        let labels = labels(&state.name, state.kind);
        for (bound, count) in LATENCY_BUCKETS.iter().zip(state.counters.duration_buckets) {
            let _ = writeln!(
                out,
                "healthd_check_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
            );
        }
        let runs = state.counters.runs;
        let _ =
            writeln!(out, "healthd_check_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {runs}");
        let _ = writeln!(
            out,
            "healthd_check_duration_seconds_sum{{{labels}}} {}",
            state.counters.duration_sum
        );
        let _ = writeln!(out, "healthd_check_duration_seconds_count{{{labels}}} {runs}");
    }
    type Counter = (&'static str, &'static str, fn(&Counters) -> u64);
    let counters: [Counter; 4] = [
        ("healthd_check_runs_total", "Runs of the check.", |c| c.runs),
        ("healthd_check_failures_total", "Runs that ended in fail (before thresholds).", |c| {
            c.failed_runs
        }),
        ("healthd_check_attempts_total", "Attempts, retries included.", |c| c.attempts),
        ("healthd_check_timeouts_total", "Attempts abandoned at their deadline.", |c| c.timeouts),
    ];
    for (name, help, value) in counters {
        header(&mut out, name, "counter", help);
        for state in snapshot.checks().map(|check| &check.state) {
            let _ = writeln!(
                out,
                "{name}{{{}}} {}",
                labels(&state.name, state.kind),
                value(&state.counters)
            );
        }
    }
    out
}

fn render_requests(requests: &RequestCounters) -> String {
    let mut out = String::with_capacity(4096);
    header(
        &mut out,
        "healthd_http_requests_total",
        "counter",
        "HTTP requests answered, by endpoint and status.",
    );
    for (endpoint, status, count) in requests.each() {
        let _ = writeln!(
            out,
            "healthd_http_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::engine::render::{Layout, Renderer, ServiceInfo};

    fn snapshot(renderer: &Renderer) -> Arc<Snapshot> {
        let layout = Arc::new(Layout::new(std::iter::empty()));
        Arc::new(renderer.assemble(layout, Vec::new(), Instant::now(), true))
    }

    #[tokio::test]
    async fn callers_share_the_text_while_it_is_sent_and_an_idle_cache_holds_none() {
        let renderer = Renderer::new(ServiceInfo::new("svc".into(), None), 0);
        let cache = ChecksCache::default();
        let first = snapshot(&renderer);
        let sending = cache.checks(&first).await;
        let again = cache.checks(&first).await;
        assert_eq!(sending.as_ptr(), again.as_ptr(), "rendered twice for one snapshot");
        assert_eq!(Arc::strong_count(&first), 1, "the cache keeps the snapshot");
        let newer = snapshot(&renderer);
        let other = cache.checks(&newer).await;
        assert_ne!(other.as_ptr(), sending.as_ptr());
        assert!(std::str::from_utf8(&other).unwrap().contains("# TYPE healthd_check_status gauge"));
        drop((sending, again, other));
        let kept = cache.0.lock().await.as_ref().map(|(_, text)| text.clone()).unwrap();
        assert!(kept.upgrade().is_none(), "no response sends the text, yet it is kept");
    }
}
