//! The status page's data (`/health/page`): what `/status` shows in one
//! request per refresh, however many checks there are. Failing checks
//! come first, then warning ones, then the rest, a page at a time; each
//! with its 90-day bar and response times from the store, or its kept runs
//! from memory without one. An `ETag` worked out from the snapshot (and the
//! store's count of roll-up writes) answers 304 without a store query.

use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use actix_web::body::BoxBody;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use healthd_models::{
    AlertList, HealthPage, HealthPageCheck, HealthPageHistory, HealthReport, HealthStatus,
    RecentRuns, StatusCounts, UptimeWindow,
};
use serde::Deserialize;

use crate::api::docs::{CommonProblems, TokenProblems};
use crate::api::error::ApiError;
use crate::api::records::{bad, limit, query};
use crate::api::{authenticate, sees_details, state_of};
use crate::engine::render::Piece;
use crate::store::{report, Store, QUERY_DEADLINE};

/// Days in a check's uptime bar.
pub const PAGE_DAYS: i64 = 90;
/// The furthest `offset` the contract allows.
const MAX_OFFSET: u64 = 1_000_000;
/// The longest `name` filter the contract allows, in characters.
const MAX_FILTER: usize = 64;

/// Makes this process's tags differ from another's (a restart starts the
/// store's write count again), so a tag from before a restart never matches.
static TAG_SALT: LazyLock<u64> = LazyLock::new(|| {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |since| since.as_nanos() as u64) ^ u64::from(std::process::id())
});

#[derive(Deserialize)]
struct PageQuery {
    offset: Option<u64>,
    limit: Option<u32>,
    name: Option<String>,
}

#[utoipa::path(
    method(get, head), path = "/health/page", operation_id = "getHealthPage",
    params(
        ("offset" = Option<u64>, Query, description = "How many matching checks to skip."),
        ("limit" = Option<u32>, Query, description = "The most items answered; 100 unless given."),
        ("name" = Option<String>, Query, description = "Only the checks whose name contains this text."),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of an earlier answer; 304 when nothing has changed since."),
    ),
    responses(
        (status = 200, body = healthd_models::HealthPage, content_type = "application/json"),
        (status = 304, description = "Nothing the answer holds has changed since the `ETag` sent in `If-None-Match`"),
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_health_page(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let state = state_of(&request);
    let access = state.access.load();
    let principal = authenticate(&access, &request)?;
    let page: PageQuery = query(&request)?;
    let limit = limit(&request, page.limit)?;
    let offset = page.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(bad(&request, format!("offset must be at most {MAX_OFFSET}")));
    }
    let filter = page.name.unwrap_or_default();
    if filter.chars().count() > MAX_FILTER {
        return Err(bad(&request, format!("name must be at most {MAX_FILTER} characters")));
    }
    let snapshot = state.reader.current();
    let identity: HealthReport = serde_json::from_slice(&snapshot.health_anonymous.body)
        .expect("healthd's own report always parses");
    let mut answer = HealthPage {
        status: identity.status,
        service_id: identity.service_id,
        description: identity.description,
        checks: Vec::new(),
        counts: None,
        maintenance: Vec::new(),
        history: None,
        history_problem: None,
        last_day: None,
        offset: None,
        total: None,
    };
    if !sees_details(&access, &request, principal) {
        // The status and the identity, as `/health` answers anonymous callers.
        let tag = tag_of(&answer, &());
        return Ok(respond(&request, &tag, &answer));
    }
    drop(access);

    // Failing, then warning, then passing checks, each in the configured order.
    let mut groups: [Vec<&Piece>; 3] = Default::default();
    let mut counts = StatusCounts { pass: 0, warn: 0, fail: 0 };
    for piece in snapshot.checks() {
        let group = match piece.status {
            HealthStatus::Fail => {
                counts.fail += 1;
                0
            }
            HealthStatus::Warn => {
                counts.warn += 1;
                1
            }
            HealthStatus::Pass => {
                counts.pass += 1;
                2
            }
        };
        if piece.state.name.contains(filter.as_str()) {
            groups[group].push(piece);
        }
    }
    let total: usize = groups.iter().map(Vec::len).sum();
    let shown: Vec<&Piece> = groups
        .iter()
        .flatten()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(limit as usize)
        .copied()
        .collect();
    answer.counts = Some(counts);
    answer.total = Some(total as u64);
    answer.offset = Some(offset);
    answer.checks = shown.iter().map(|piece| row(piece)).collect();
    with_maintenance(&mut answer, &state.alerts().list());
    let query_part = (offset, limit, filter.as_str());

    let Some(store) = state.store().cloned() else {
        with_memory(&mut answer, &shown, None);
        let tag = tag_of(&answer, &query_part);
        return Ok(respond(&request, &tag, &answer));
    };
    // Read before the queries: a roll-up written meanwhile changes the
    // next tag, never hides behind this one.
    let written = store.stats().rollup_writes.load(std::sync::atomic::Ordering::Relaxed);
    let hour = store.now().timestamp().div_euclid(3_600);
    answer.history = Some(HealthPageHistory::Store);
    let tag = tag_of(&answer, &(query_part, written, hour));
    if matches(&request, &tag) {
        return Ok(not_modified(&tag));
    }
    let names: Vec<String> = shown.iter().map(|piece| piece.state.name.clone()).collect();
    match history_from(store, names).await {
        Ok((last_day, days, windows)) => {
            answer.last_day = Some(last_day);
            for ((check, days), windows) in answer.checks.iter_mut().zip(days).zip(windows) {
                check.days = days.into_iter().map(|day| day.map(|share| floor(share, 4))).collect();
                check.windows = windows.into_iter().map(rounded).collect();
            }
            Ok(respond(&request, &tag, &answer))
        }
        Err(problem) => {
            // The page still shows what memory holds, and says why.
            with_memory(&mut answer, &shown, Some(problem));
            let tag = tag_of(&answer, &query_part);
            Ok(respond(&request, &tag, &answer))
        }
    }
}

/// The windows in force, and each shown check's window.
fn with_maintenance(answer: &mut HealthPage, alerts: &AlertList) {
    answer.maintenance = alerts.maintenance.clone();
    for check in &mut answer.checks {
        check.maintenance = alerts
            .maintenance
            .iter()
            .find(|window| window.component_ids.contains(&check.component_id))
            .map(|window| window.name.clone());
    }
}

/// A check's row as the snapshot has it; its history comes after.
fn row(piece: &Piece) -> HealthPageCheck {
    let state = &piece.state;
    HealthPageCheck {
        component_id: state.name.clone(),
        status: piece.status,
        critical: state.critical,
        output: piece.output(),
        maintenance: None,
        status_since: state.history.with(|history| history.status_since()),
        days: Vec::new(),
        windows: Vec::new(),
        recent: None,
    }
}

/// Fills each row's history from the kept runs in memory.
fn with_memory(answer: &mut HealthPage, shown: &[&Piece], problem: Option<String>) {
    answer.history = Some(HealthPageHistory::Memory);
    answer.history_problem = problem;
    answer.last_day = None;
    for (check, piece) in answer.checks.iter_mut().zip(shown) {
        check.days.clear();
        check.windows.clear();
        check.recent = Some(recent_runs(piece));
    }
}

fn recent_runs(piece: &Piece) -> RecentRuns {
    let interval_ms = u64::try_from(piece.state.policy.interval.as_millis()).unwrap_or(u64::MAX);
    piece.state.history.with(|history| {
        let uptime = history.uptime();
        let mut runs = String::with_capacity(history.entries().len());
        let mut durations: Vec<u32> = Vec::with_capacity(history.entries().len());
        for entry in history.entries() {
            runs.push(match entry.status {
                HealthStatus::Pass => 'p',
                HealthStatus::Warn => 'w',
                HealthStatus::Fail => 'f',
            });
            durations.push(u32::try_from(entry.duration.as_micros()).unwrap_or(u32::MAX));
        }
        durations.sort_unstable();
        let percentile = |q: f64| nearest_rank(&durations, q).map(|micros| round(micros / 1e3, 2));
        RecentRuns {
            runs,
            capacity: history.capacity(),
            interval_ms,
            uptime: uptime.window().map(|share| floor(share, 4)),
            since_start: uptime.since_start().map(|share| floor(share, 4)),
            p50_ms: percentile(0.5),
            p95_ms: percentile(0.95),
            p99_ms: percentile(0.99),
        }
    })
}

/// The `q` quantile of sorted values by the nearest-rank method.
fn nearest_rank(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // At most MAX_HISTORY values: the casts are exact.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]))
}

type Days = Vec<report::DailyUptime>;
type Windows = Vec<Vec<UptimeWindow>>;

/// The shown checks' days and windows, from the store on the blocking
/// pool within `QUERY_DEADLINE`; or why not.
async fn history_from(
    store: Store,
    names: Vec<String>,
) -> Result<(chrono::NaiveDate, Days, Windows), String> {
    let running = web::block(move || {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (last_day, days) = report::daily_uptime(&store, &names, PAGE_DAYS)?;
        let uptime = report::recent_uptime(&store, &names)?;
        Ok::<_, crate::store::StoreError>((
            last_day,
            days,
            uptime.into_iter().map(|check| check.windows).collect(),
        ))
    });
    match tokio::time::timeout(QUERY_DEADLINE, running).await {
        Err(_) => Err(format!("the store did not answer within {} s", QUERY_DEADLINE.as_secs())),
        Ok(Err(_)) => Err("the store's query was cancelled".into()),
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "a store query for the status page failed");
            Err("the store failed to answer; see healthd's log".into())
        }
        Ok(Ok(Ok(found))) => Ok(found),
    }
}

/// Shorter numbers for a smaller page: the shares rounded down (so that
/// a failure never reads as 100%), the times to 0.01 ms.
fn rounded(window: UptimeWindow) -> UptimeWindow {
    UptimeWindow {
        uptime: window.uptime.map(|share| floor(share, 6)),
        p50_ms: window.p50_ms.map(|ms| round(ms, 2)),
        p95_ms: window.p95_ms.map(|ms| round(ms, 2)),
        p99_ms: window.p99_ms.map(|ms| round(ms, 2)),
        ..window
    }
}

fn floor(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).floor() / scale
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// A weak tag of what the answer holds so far (before the store's part,
/// which `extra` stands for), and of what was asked.
fn tag_of(answer: &HealthPage, extra: &impl Hash) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    TAG_SALT.hash(&mut hasher);
    extra.hash(&mut hasher);
    serde_json::to_vec(answer).expect("the models always serialise").hash(&mut hasher);
    format!("W/\"{:016x}\"", hasher.finish())
}

/// Whether `If-None-Match` names `tag` (weak comparison: `W/` aside, the
/// same opaque tag), or is `*`.
fn matches(request: &HttpRequest, tag: &str) -> bool {
    let opaque = tag.trim_start_matches("W/");
    request.headers().get_all(header::IF_NONE_MATCH).filter_map(|value| value.to_str().ok()).any(
        |value| {
            value.split(',').map(str::trim).any(|listed| {
                listed == "*" || listed.strip_prefix("W/").unwrap_or(listed) == opaque
            })
        },
    )
}

fn respond(request: &HttpRequest, tag: &str, answer: &HealthPage) -> HttpResponse {
    if matches(request, tag) {
        return not_modified(tag);
    }
    let body = serde_json::to_vec(answer).expect("the models always serialise");
    let mut response = HttpResponse::with_body(StatusCode::OK, BoxBody::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    with_tag(headers, tag);
    response
}

fn not_modified(tag: &str) -> HttpResponse {
    let mut response = HttpResponse::with_body(StatusCode::NOT_MODIFIED, BoxBody::new(()));
    with_tag(response.headers_mut(), tag);
    response
}

fn with_tag(headers: &mut actix_web::http::header::HeaderMap, tag: &str) {
    if let Ok(value) = HeaderValue::from_str(tag) {
        headers.insert(header::ETAG, value);
    }
    // Kept by no shared cache; a browser asks again every time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    headers.insert(header::VARY, HeaderValue::from_static("authorization"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_takes_the_value_at_the_rank() {
        let values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(nearest_rank(&values, 0.5), Some(5.0));
        assert_eq!(nearest_rank(&values, 0.95), Some(10.0));
        assert_eq!(nearest_rank(&values, 0.0), Some(1.0));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }

    #[test]
    fn a_share_below_one_never_rounds_up_to_one() {
        assert_eq!(floor(0.999_99, 4), 0.9999);
        assert_eq!(floor(1.0, 4), 1.0);
        assert_eq!(round(4.126, 2), 4.13);
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let tag = "W/\"00ab\"";
        for (sent, expected) in [
            ("W/\"00ab\"", true),
            ("\"00ab\"", true),
            ("\"x\", W/\"00ab\"", true),
            ("*", true),
            ("W/\"00ac\"", false),
            ("", false),
        ] {
            let request = actix_web::test::TestRequest::default()
                .insert_header((header::IF_NONE_MATCH, sent))
                .to_http_request();
            assert_eq!(matches(&request, tag), expected, "{sent}");
        }
    }
}
