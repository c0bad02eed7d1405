//! What the store keeps, for callers with details: uptime over a year,
//! incidents, a check's series over a time range. Queries run on the
//! blocking pool under a deadline, never on a probe's path.

use actix_web::body::BoxBody;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, TimeDelta, Utc};
use healthd_models::{IncidentList, UptimePage};
use serde::{Deserialize, Serialize};

use crate::api::docs::{CommonProblems, TokenProblems};
use crate::api::error::{ApiError, ApiErrorKind};
use crate::api::{require_details, state_of, uncached};
use crate::store::{report, Store, StoreError, QUERY_DEADLINE};

/// Items per answer unless `limit` says.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1_000;

#[derive(Deserialize)]
struct PageQuery {
    offset: Option<u64>,
    limit: Option<u32>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct RangeQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    step: Option<u32>,
}

pub(super) fn query<T: serde::de::DeserializeOwned>(request: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .map_err(|error| bad(request, format!("invalid query parameter: {error}")))
}

pub(super) fn bad(request: &HttpRequest, reason: String) -> ApiError {
    ApiError::new(ApiErrorKind::InvalidParameter(reason), request.path())
}

pub(super) fn limit(request: &HttpRequest, limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        limit @ 1..=MAX_LIMIT => Ok(limit),
        _ => Err(bad(request, format!("limit must be between 1 and {MAX_LIMIT}"))),
    }
}

/// The store, for a caller who may see details.
fn store_for(request: &HttpRequest) -> Result<Store, ApiError> {
    let state = state_of(request);
    require_details(&state.access.load(), request)?;
    state.store().cloned().ok_or_else(|| ApiError::new(ApiErrorKind::NoStore, request.path()))
}

/// A configured check's name, or 404.
fn known_check(request: &HttpRequest, name: &str) -> Result<(), ApiError> {
    match state_of(request).reader.current().check(name) {
        Some(_) => Ok(()),
        None => Err(ApiError::new(ApiErrorKind::UnknownCheck(name.to_string()), request.path())),
    }
}

/// Runs a store query on the blocking pool within `QUERY_DEADLINE`, and
/// answers its result as JSON.
async fn answer<T: Serialize + Send + 'static>(
    request: &HttpRequest,
    store: Store,
    query: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<HttpResponse, ApiError> {
    let unavailable =
        |reason: String| ApiError::new(ApiErrorKind::StoreUnavailable(reason), request.path());
    let running = web::block(move || query(&store));
    let result = match tokio::time::timeout(QUERY_DEADLINE, running).await {
        Err(_) => {
            return Err(unavailable(format!(
                "the store did not answer within {} s",
                QUERY_DEADLINE.as_secs()
            )))
        }
        Ok(Err(_)) => return Err(unavailable("the store's query was cancelled".into())),
        Ok(Ok(result)) => result,
    };
    let value = result.map_err(|error| {
        tracing::warn!(%error, "a store query failed");
        unavailable("the store failed to answer; see healthd's log".into())
    })?;
    let body = serde_json::to_vec(&value).expect("the models always serialise");
    Ok(uncached(StatusCode::OK, "application/json", BoxBody::new(body)))
}

#[utoipa::path(
    method(get, head), path = "/health/checks/{name}/uptime", operation_id = "getCheckUptime",
    params(("name" = String, Path, description = "The check's `name` from the configuration.")),
    responses(
        (status = 200, body = healthd_models::CheckUptime, content_type = "application/json"),
        (status = 404, body = healthd_models::Problem, content_type = "application/problem+json"),
        (status = 503, body = healthd_models::Problem, content_type = "application/problem+json"),
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_check_uptime(
    request: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let store = store_for(&request)?;
    known_check(&request, &name)?;
    let name = name.into_inner();
    answer(&request, store, move |store| {
        let mut found = report::uptime(store, &[name.as_str()])?;
        Ok(found.remove(0))
    })
    .await
}

#[utoipa::path(
    method(get, head), path = "/health/uptime", operation_id = "getUptime",
    params(
        ("offset" = Option<u64>, Query, description = "How many matching checks to skip."),
        ("limit" = Option<u32>, Query, description = "The most items answered; 100 unless given."),
        ("name" = Option<String>, Query, description = "Only the checks whose name contains this text."),
    ),
    responses(
        (status = 200, body = healthd_models::UptimePage, content_type = "application/json"),
        (status = 404, body = healthd_models::Problem, content_type = "application/problem+json"),
        (status = 503, body = healthd_models::Problem, content_type = "application/problem+json"),
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_uptime(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let store = store_for(&request)?;
    let page: PageQuery = query(&request)?;
    let limit = limit(&request, page.limit)?;
    let offset = page.offset.unwrap_or(0);
    let snapshot = state_of(&request).reader.current();
    let filter = page.name.unwrap_or_default();
    let matching: Vec<String> = snapshot
        .checks()
        .map(|piece| piece.state.name.as_str())
        .filter(|name| name.contains(filter.as_str()))
        .map(str::to_string)
        .collect();
    let total = matching.len() as u64;
    let names: Vec<String> = matching
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(limit as usize)
        .collect();
    answer(&request, store, move |store| {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Ok(UptimePage { total, offset, checks: report::uptime(store, &names)? })
    })
    .await
}

#[utoipa::path(
    method(get, head), path = "/health/checks/{name}/incidents", operation_id = "getCheckIncidents",
    params(
        ("name" = String, Path, description = "The check's `name` from the configuration."),
        ("limit" = Option<u32>, Query, description = "The most items answered; 100 unless given."),
    ),
    responses(
        (status = 200, body = healthd_models::IncidentList, content_type = "application/json"),
        (status = 404, body = healthd_models::Problem, content_type = "application/problem+json"),
        (status = 503, body = healthd_models::Problem, content_type = "application/problem+json"),
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_check_incidents(
    request: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let store = store_for(&request)?;
    known_check(&request, &name)?;
    let limit = limit(&request, query::<LimitQuery>(&request)?.limit)?;
    let name = name.into_inner();
    answer(&request, store, move |store| {
        Ok(IncidentList { incidents: report::incidents(store, &[name.as_str()], limit)? })
    })
    .await
}

#[utoipa::path(
    method(get, head), path = "/health/incidents", operation_id = "getIncidents",
    params(("limit" = Option<u32>, Query, description = "The most items answered; 100 unless given.")),
    responses(
        (status = 200, body = healthd_models::IncidentList, content_type = "application/json"),
        (status = 404, body = healthd_models::Problem, content_type = "application/problem+json"),
        (status = 503, body = healthd_models::Problem, content_type = "application/problem+json"),
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_incidents(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let store = store_for(&request)?;
    let limit = limit(&request, query::<LimitQuery>(&request)?.limit)?;
    answer(&request, store, move |store| {
        Ok(IncidentList { incidents: report::incidents(store, &[], limit)? })
    })
    .await
}

#[utoipa::path(
    method(get, head), path = "/health/checks/{name}/series", operation_id = "getCheckSeries",
    params(
        ("name" = String, Path, description = "The check's `name` from the configuration."),
        ("from" = Option<String>, Query, description = "Where the range starts (RFC 3339)."),
        ("to" = Option<String>, Query, description = "Where the range ends (RFC 3339)."),
        ("step" = Option<u32>, Query, description = "Seconds per point."),
    ),
    responses(
        (status = 200, body = healthd_models::Series, content_type = "application/json"),
        (status = 404, body = healthd_models::Problem, content_type = "application/problem+json"),
        (status = 503, body = healthd_models::Problem, content_type = "application/problem+json"),
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_check_series(
    request: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let store = store_for(&request)?;
    known_check(&request, &name)?;
    let range: RangeQuery = query(&request)?;
    let to = range.to.unwrap_or_else(|| store.now());
    let from = range.from.unwrap_or(to - TimeDelta::hours(24));
    if from >= to {
        return Err(bad(&request, "from must be before to".into()));
    }
    if range.step == Some(0) || range.step.is_some_and(|step| step > 31_536_000) {
        return Err(bad(&request, "step must be between 1 and 31536000 seconds".into()));
    }
    let name = name.into_inner();
    answer(&request, store, move |store| report::series(store, &name, from, to, range.step)).await
}
