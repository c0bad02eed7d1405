//! What people look at: a check's history (`/health/checks/{name}/history`),
//! the status page that draws it (`/status`, one self-contained HTML file
//! in the binary: no CDN, no framework, no build step) and the status badge
//! (`/health/badge.svg`) for a README or a wiki.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use healthd_models::{CheckHistory, HealthStatus, HistoryEntry, Uptime};

use crate::api::docs::{wants_text, CommonProblems, TokenProblems};
use crate::api::error::ApiError;
use crate::api::{about_check, state_of, uncached};
use crate::engine::state::CheckState;

/// The page, its CSS and its script in one file, so that it works under
/// any prefix and from a phone with no other request than its data.
const STATUS_PAGE_HTML: &str = include_str!("status.html");

fn answer(content_type: &'static str, body: impl MessageBody + 'static) -> HttpResponse {
    uncached(StatusCode::OK, content_type, BoxBody::new(body))
}

#[utoipa::path(
    method(get, head), path = "/health/checks/{name}/history", operation_id = "getCheckHistory",
    params(("name" = String, Path, description = "The check's `name` from the configuration.")),
    responses(
        (status = 200, body = healthd_models::CheckHistory, content_type = "application/json"),
        (status = 404, body = healthd_models::Problem, content_type = "application/problem+json"),
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_check_history(
    request: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    about_check(&request, name, |piece| {
        let history = serde_json::to_vec(&history_of(&piece.state));
        answer("application/json", history.expect("a history always serialises"))
    })
}

/// The contract's view of a check's history, copied out under its lock.
fn history_of(check: &CheckState) -> CheckHistory {
    let (measurement, unit) = check.measurements.first().copied().unwrap_or(("value", ""));
    check.history.with(|history| {
        let uptime = history.uptime();
        CheckHistory {
            component_id: check.name.clone(),
            component_type: check.component_type,
            measurement: measurement.to_string(),
            observed_unit: (!unit.is_empty()).then(|| unit.to_string()),
            interval_ms: u64::try_from(check.policy.interval.as_millis()).unwrap_or(u64::MAX),
            capacity: history.capacity(),
            status_since: history.status_since(),
            uptime: Uptime {
                window: uptime.window(),
                since_start: uptime.since_start(),
                runs: uptime.runs,
                failed_runs: uptime.failed_runs,
                runs_since_start: uptime.runs_since_start,
                failed_runs_since_start: uptime.failed_runs_since_start,
            },
            entries: history
                .entries()
                .map(|entry| HistoryEntry {
                    time: entry.time,
                    status: entry.status,
                    observed_value: entry.value,
                    output: entry.output.map(str::to_string),
                    // Whole microseconds, so the milliseconds print short.
                    duration_ms: entry.duration.as_micros() as f64 / 1000.0,
                })
                .collect(),
        }
    })
}

/// A badge in the usual two-part shape: "health" on grey, the status word
/// on its colour. The three are fixed text, built at compile time.
macro_rules! badge {
    ($word:literal, $colour:literal) => {
        concat!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="86" height="20" role="img" aria-label="health: "##,
            $word,
            r##""><title>health: "##,
            $word,
            r##"</title><linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient><clipPath id="r"><rect width="86" height="20" rx="3" fill="#fff"/></clipPath><g clip-path="url(#r)"><rect width="49" height="20" fill="#555"/><rect x="49" width="37" height="20" fill=""##,
            $colour,
            r##""/><rect width="86" height="20" fill="url(#s)"/></g><g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11"><text x="24.5" y="14">health</text><text x="67.5" y="14">"##,
            $word,
            r##"</text></g></svg>"##,
            "\n"
        )
    };
}

const BADGE_PASS: &str = badge!("pass", "#2e7d32");
const BADGE_WARN: &str = badge!("warn", "#b26a00");
const BADGE_FAIL: &str = badge!("fail", "#c62828");

#[utoipa::path(
    method(get, head), path = "/health/badge.svg", operation_id = "getBadge",
    responses(
        (status = 200, content(
            (String = "image/svg+xml"),
            (String = "text/plain"),
        )),
        CommonProblems,
    )
)]
pub async fn get_badge(request: HttpRequest) -> HttpResponse {
    // The status `/health` answers everyone; the badge shows no more.
    let badge = match state_of(&request).reader.current().health_anonymous.status {
        HealthStatus::Pass => BADGE_PASS,
        HealthStatus::Warn => BADGE_WARN,
        HealthStatus::Fail => BADGE_FAIL,
    };
    let content_type = if wants_text(&request, "image/svg+xml") {
        "text/plain; charset=utf-8"
    } else {
        "image/svg+xml"
    };
    let mut response = answer(content_type, badge);
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

#[utoipa::path(
    method(get, head), path = "/status", operation_id = "getStatusPage",
    responses(
        (status = 200, body = String, content_type = "text/html"),
        CommonProblems,
    )
)]
pub async fn get_status_page() -> HttpResponse {
    answer("text/html; charset=utf-8", STATUS_PAGE_HTML)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_badge_names_its_status_and_is_svg() {
        for (badge, word, colour) in [
            (BADGE_PASS, "pass", "#2e7d32"),
            (BADGE_WARN, "warn", "#b26a00"),
            (BADGE_FAIL, "fail", "#c62828"),
        ] {
            assert!(badge.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
            assert!(badge.contains(&format!(">{word}</text>")), "{badge}");
            assert!(badge.contains(&format!("fill=\"{colour}\"")), "{badge}");
        }
    }
}
