//! The pings of heartbeat checks: how a job that cannot be polled reports
//! in. `POST` (with the job's text as an optional body), `GET` or `HEAD` on
//! `/health/checks/{name}/ping[/start|/fail|/{exitStatus}]`.
//!
//! Who may ping: a bearer token with the `ping` scope (any heartbeat), or
//! the check's own ping key sent as the bearer token (that check only).
//! Only in the `Authorization` header, never in the URL: a URL lands in
//! access logs, proxy logs and shell histories. Anything else is 401, and
//! a key is tried only against the check it names, so a caller without a
//! token learns nothing of which checks exist. Each check takes pings at
//! its own rate (`Heartbeat::admit`), counted only once a caller is let
//! in, so that strangers cannot use a job's share up. The access log
//! records every ping with its principal (the token's name, or
//! `ping key of NAME`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::BoxBody;
use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use chrono::Utc;
use futures_util::StreamExt;
use healthd_models::{PingReceipt, PingSignal};

use crate::api::access::{bearer_digest, Access};
use crate::api::docs::{CommonProblems, PingProblems, TokenProblems};
use crate::api::error::{ApiError, ApiErrorKind};
use crate::api::{state_of, uncached, Caller, HealthState};
use crate::checks::{heartbeat_of, kept_body, Check, Signal, MAX_PING_BODY};

/// How long a ping's body may take to arrive; what came by then is kept.
const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// The most bytes of a body read at all (the first `MAX_PING_BODY` kept).
const MAX_DRAINED: usize = 1024 * 1024;

#[utoipa::path(
    method(post, get, head), path = "/health/checks/{name}/ping", operation_id = "postPing",
    params(("name" = String, Path, description = "The heartbeat check's `name` from the configuration.")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, body = healthd_models::PingReceipt, content_type = "application/json"),
        PingProblems,
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn post_ping(
    request: HttpRequest,
    name: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    take_ping(&request, &name, Signal::Success, body).await
}

#[utoipa::path(
    method(post, get, head), path = "/health/checks/{name}/ping/start", operation_id = "postPingStart",
    params(("name" = String, Path, description = "The heartbeat check's `name` from the configuration.")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, body = healthd_models::PingReceipt, content_type = "application/json"),
        PingProblems,
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn post_ping_start(
    request: HttpRequest,
    name: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    take_ping(&request, &name, Signal::Start, body).await
}

#[utoipa::path(
    method(post, get, head), path = "/health/checks/{name}/ping/fail", operation_id = "postPingFail",
    params(("name" = String, Path, description = "The heartbeat check's `name` from the configuration.")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, body = healthd_models::PingReceipt, content_type = "application/json"),
        PingProblems,
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn post_ping_fail(
    request: HttpRequest,
    name: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    take_ping(&request, &name, Signal::Fail, body).await
}

#[utoipa::path(
    method(post, get, head), path = "/health/checks/{name}/ping/{exitStatus}",
    operation_id = "postPingExitStatus",
    params(
        ("name" = String, Path, description = "The heartbeat check's `name` from the configuration."),
        ("exitStatus" = u8, Path, description = "The job's exit status, 0 to 255; 0 is success."),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, body = healthd_models::PingReceipt, content_type = "application/json"),
        PingProblems,
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn post_ping_exit_status(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (name, status) = path.into_inner();
    // Digits only: `+3` and ` 3` are not what a shell's `$?` gives.
    let status = Some(&status)
        .filter(|status| !status.is_empty() && status.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|status| status.parse::<u8>().ok())
        .ok_or_else(|| ApiError::new(ApiErrorKind::BadExitStatus, request.path()))?;
    take_ping(&request, &name, Signal::Exit(status), body).await
}

/// Lets the caller in, takes the ping's share of the check's rate, reads
/// the body and hands the ping to the check.
async fn take_ping(
    request: &HttpRequest,
    name: &str,
    signal: Signal,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let state = state_of(request);
    let check = authorize(&state.access.load(), state, request, name)?;
    let heartbeat =
        heartbeat_of(check.as_ref()).ok_or_else(|| not_a_heartbeat(state, request, name))?;
    heartbeat.admit(Instant::now()).map_err(|wait| {
        let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
        ApiError::new(ApiErrorKind::TooManyPings { retry_after }, request.path())
    })?;
    let body = if request.method() == Method::POST { read_body(payload).await } else { Vec::new() };
    let kept = if signal.keeps_body() { kept_body(&body) } else { None };
    let body_bytes = kept.as_ref().map_or(0, String::len);
    let time = Utc::now();
    heartbeat.record(signal, kept, time);
    let (signal, exit_status) = match signal {
        Signal::Success => (PingSignal::Success, None),
        Signal::Start => (PingSignal::Start, None),
        Signal::Fail => (PingSignal::Fail, None),
        Signal::Exit(0) => (PingSignal::Success, Some(0)),
        Signal::Exit(status) => (PingSignal::Fail, Some(status)),
    };
    let receipt = PingReceipt {
        component_id: name.to_string(),
        signal,
        exit_status,
        time,
        body_bytes: u32::try_from(body_bytes).unwrap_or(u32::MAX),
    };
    let json = serde_json::to_vec(&receipt).unwrap_or_default();
    Ok(uncached(StatusCode::OK, "application/json", BoxBody::new(Bytes::from(json))))
}

/// The running check the caller may ping: any check for a token with the
/// `ping` scope (404 when there is none of that name), or the heartbeat
/// whose ping key the bearer token is. The caller is recorded for the
/// access log.
fn authorize(
    access: &Access,
    state: &HealthState,
    request: &HttpRequest,
    name: &str,
) -> Result<Arc<dyn Check>, ApiError> {
    let unauthorized = || ApiError::new(ApiErrorKind::Unauthorized, request.path());
    let Some(Ok(digest)) = bearer_digest(request.headers()) else { return Err(unauthorized()) };
    let running = state.reader.running_check(name);
    if let Some(principal) = access.token(&digest) {
        request.extensions_mut().insert(Caller(access.principal_name(principal).to_string()));
        if !access.may_ping(principal) {
            return Err(ApiError::new(ApiErrorKind::MissingScope("ping"), request.path()));
        }
        return running.ok_or_else(|| {
            ApiError::new(ApiErrorKind::UnknownCheck(name.to_string()), request.path())
        });
    }
    // Not a token: this check's own key, or 401 whatever the reason (no
    // such check, not a heartbeat, another key).
    let keyed = running.filter(|check| {
        heartbeat_of(check.as_ref()).is_some_and(|heartbeat| heartbeat.accepts_key(&digest))
    });
    let check = keyed.ok_or_else(unauthorized)?;
    request.extensions_mut().insert(Caller(format!("ping key of {name}")));
    Ok(check)
}

fn not_a_heartbeat(state: &HealthState, request: &HttpRequest, name: &str) -> ApiError {
    let kind = state.reader.current().check(name).map_or("another", |piece| piece.state.kind);
    ApiError::new(ApiErrorKind::NotAHeartbeat { name: name.to_string(), kind }, request.path())
}

/// The body's first `MAX_PING_BODY` bytes, as many as came within
/// `BODY_DEADLINE`. The rest is read and dropped, up to `MAX_DRAINED`
/// bytes, so that a job posting its whole log still reads its answer;
/// past that, actix-web closes the connection rather than read on.
async fn read_body(mut payload: web::Payload) -> Vec<u8> {
    let mut kept = Vec::new();
    let read = async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = payload.next().await {
            let room = MAX_PING_BODY - kept.len();
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            seen += chunk.len();
            if seen > MAX_DRAINED {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(BODY_DEADLINE, read).await;
    kept
}
