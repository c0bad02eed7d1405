//! The contract itself (`/openapi.yaml`, `/openapi.json`) and Swagger UI
//! showing it, served from the binary. `ApiDoc` is the document utoipa
//! derives from the handlers; a contract test compares it with openapi.yaml.
//!
//! Behind a trusted proxy that mounts healthd under a prefix, the contract's
//! server URL, Swagger UI's contract URL and the redirect to it carry that
//! prefix, so that "Try it out" calls the URLs the client can reach.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::web::{self, Data};
use actix_web::{HttpRequest, HttpResponse};

use crate::api::error::{ApiError, ApiErrorKind};
use crate::api::HealthState;

/// 400, 403 and 431: what any operation answers to a malformed query or
/// body, an address outside `allow`, or too many header bytes.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Read only by the derive, for the document.
pub enum CommonProblems {
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(healthd_models::Problem),
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(healthd_models::Problem),
    #[response(status = 431, content_type = "application/problem+json")]
    HeadersTooLarge(healthd_models::Problem),
}

/// 401: what operations that read a bearer token answer to a wrong one.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Read only by the derive, for the document.
pub enum TokenProblems {
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(healthd_models::Problem),
}

/// 404, 409 and 429: what a ping answers for a name no check has, a check
/// that is not a heartbeat, and pings beyond the check's rate.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Read only by the derive, for the document.
pub enum PingProblems {
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(healthd_models::Problem),
    #[response(status = 409, content_type = "application/problem+json")]
    NotAHeartbeat(healthd_models::Problem),
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyPings(healthd_models::Problem),
}

/// 200 for pass or warn, 503 for fail, both a health report.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Read only by the derive, for the document.
pub enum HealthAnswers {
    #[response(status = 200, content_type = "application/health+json")]
    Healthy(healthd_models::HealthReport),
    #[response(status = 503, content_type = "application/health+json")]
    Unhealthy(healthd_models::HealthReport),
}

pub fn swagger_config(prefix: &str) -> utoipa_swagger_ui::Config<'static> {
    utoipa_swagger_ui::Config::new([format!("{prefix}/openapi.yaml")])
        // The default validator is an external service: no badge, no call out.
        .validator_url("none")
        .display_operation_id(true)
}

/// Where this request's client reaches the routes: the prefix a trusted
/// proxy mounts healthd under, then the app's own mount point.
fn external_base(state: &HealthState, request: &HttpRequest) -> String {
    let peer = crate::api::peer(request);
    let prefix = state.access.load().external_prefix(peer, request.headers());
    format!("{prefix}{}", state.mount)
}

/// The `servers` entry of openapi.yaml and of its JSON form, as written
/// there; tests below keep these in step with the contract.
const YAML_SERVER: &str = "\nservers:\n  - url: /\n";
const JSON_SERVER: &str =
    "\"description\": \"The healthd that serves this document\",\n      \"url\": \"/\"";

/// The contract with its server URL at `base` ("" leaves it as written:
/// `/`, the origin the document is served from). `base` is a plain path
/// (see `normalise_prefix`), so it needs no quoting in YAML or JSON.
fn served_at(document: &'static str, base: &str) -> std::borrow::Cow<'static, str> {
    if base.is_empty() {
        return document.into();
    }
    if document.contains(YAML_SERVER) {
        document.replacen(YAML_SERVER, &format!("\nservers:\n  - url: {base}\n"), 1).into()
    } else {
        document
            .replacen(
                JSON_SERVER,
                &JSON_SERVER.replace("\"url\": \"/\"", &format!("\"url\": \"{base}\"")),
                1,
            )
            .into()
    }
}

fn document(request: &HttpRequest, content_type: &'static str, body: &'static str) -> HttpResponse {
    let state = crate::api::state_of(request);
    let body = served_at(body, &external_base(state, request));
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .body(body.into_owned())
}

#[utoipa::path(
    method(get, head), path = "/openapi.yaml", operation_id = "getOpenapiYaml",
    responses(
        (status = 200, content(
            (Object = "application/yaml"),
            (String = "text/plain"),
        )),
        CommonProblems,
    )
)]
pub async fn get_openapi_yaml(request: HttpRequest) -> HttpResponse {
    let content_type = if wants_text(&request, "application/yaml") {
        "text/plain; charset=utf-8"
    } else {
        "application/yaml"
    };
    let mut response = document(&request, content_type, healthd_models::OPENAPI_YAML);
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// Whether `Accept` lists `text/plain` and not `media` (the body's own
/// type): the same bytes as text, for viewers and client generators that
/// read no YAML or SVG. Anything else gets `media`.
pub fn wants_text(request: &HttpRequest, media: &str) -> bool {
    let mut text = false;
    for value in request.headers().get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let listed = range.split(';').next().unwrap_or("").trim();
            if listed.eq_ignore_ascii_case(media) {
                return false;
            }
            text |= listed.eq_ignore_ascii_case("text/plain");
        }
    }
    text
}

#[utoipa::path(
    method(get, head), path = "/openapi.json", operation_id = "getOpenapiJson",
    responses(
        (status = 200, body = Object, content_type = "application/json"),
        CommonProblems,
    )
)]
pub async fn get_openapi_json(request: HttpRequest) -> HttpResponse {
    document(&request, "application/json", healthd_models::OPENAPI_JSON)
}

pub async fn redirect_to_swagger_ui(request: HttpRequest) -> HttpResponse {
    let state = crate::api::state_of(&request);
    let prefix = state.access.load().external_prefix(crate::api::peer(&request), request.headers());
    let target = format!("{prefix}{}/", request.path());
    HttpResponse::MovedPermanently().insert_header((header::LOCATION, target)).finish()
}

/// Swagger UI's files; the page itself at `/swagger-ui/`.
#[utoipa::path(
    method(get, head), path = "/swagger-ui/", operation_id = "getSwaggerUi",
    responses(
        (status = 200, body = String, content_type = "text/html"),
        CommonProblems,
    )
)]
pub async fn get_swagger_ui(
    request: HttpRequest,
    file: web::Path<String>,
    state: Data<HealthState>,
) -> Result<HttpResponse, ApiError> {
    let base = external_base(&state, &request);
    // Only requests through a proxy that mounts healthd elsewhere need
    // settings of their own.
    let config =
        if base == state.mount { state.swagger.clone() } else { Arc::new(swagger_config(&base)) };
    match utoipa_swagger_ui::serve(&file, config) {
        Ok(Some(file)) => Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, file.content_type))
            .insert_header((
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ))
            .body(file.bytes.into_owned())),
        Ok(None) => Err(ApiError::new(ApiErrorKind::NotFound, request.path())),
        Err(error) => {
            tracing::error!(%error, "serving Swagger UI failed");
            Err(ApiError::new(ApiErrorKind::Internal, request.path()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_contract_points_its_server_url_at_the_prefix() {
        for document in [healthd_models::OPENAPI_YAML, healthd_models::OPENAPI_JSON] {
            assert_eq!(served_at(document, ""), document);
            let served = served_at(document, "/ops");
            // Parsed, not searched: the replacement must keep the document valid.
            let parsed: serde_json::Value = if document.starts_with('{') {
                serde_json::from_str(&served).unwrap()
            } else {
                serde_norway::from_str(&served).unwrap()
            };
            assert_eq!(parsed["servers"][0]["url"], "/ops", "{}", &served[..200]);
            assert_eq!(parsed["servers"].as_array().unwrap().len(), 1);
        }
    }
}
