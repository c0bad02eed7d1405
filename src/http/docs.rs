//! The contract itself (`/openapi.yaml`, `/openapi.json`) and Swagger UI
//! showing it, served from the binary. `ApiDoc` is the document utoipa
//! derives from the handlers; a contract test compares it with openapi.yaml.

use actix_web::http::header::{self, HeaderValue};
use actix_web::web::{self, Data};
use actix_web::{HttpRequest, HttpResponse};
use utoipa::OpenApi;

use crate::http::error::{ApiError, ApiErrorKind};
use crate::http::HealthState;

/// The OpenAPI document derived from the handlers and generated models.
#[derive(OpenApi)]
#[openapi(
    paths(
        crate::http::get_health,
        crate::http::get_liveness,
        crate::http::get_readiness,
        crate::http::get_startup,
        crate::http::get_check,
        crate::http::status::get_check_history,
        crate::http::status::get_badge,
        crate::http::status::get_status_page,
        crate::http::get_metrics,
        get_openapi_yaml,
        get_openapi_json,
        get_swagger_ui,
    ),
    components(schemas(
        healthd_models::HealthReport,
        healthd_models::CheckResult,
        healthd_models::CheckHistory,
        healthd_models::Uptime,
        healthd_models::HistoryEntry,
        healthd_models::HealthStatus,
        healthd_models::ComponentType,
        healthd_models::Problem,
    ))
)]
pub struct ApiDoc;

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

fn document(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .body(body)
}

#[utoipa::path(
    method(get, head), path = "/openapi.yaml", operation_id = "getOpenapiYaml",
    responses(
        (status = 200, body = String, content_type = "application/yaml"),
        CommonProblems,
    )
)]
pub async fn get_openapi_yaml() -> HttpResponse {
    document("application/yaml", healthd_models::OPENAPI_YAML)
}

#[utoipa::path(
    method(get, head), path = "/openapi.json", operation_id = "getOpenapiJson",
    responses(
        (status = 200, body = Object, content_type = "application/json"),
        CommonProblems,
    )
)]
pub async fn get_openapi_json() -> HttpResponse {
    document("application/json", healthd_models::OPENAPI_JSON)
}

pub async fn redirect_to_swagger_ui(request: HttpRequest) -> HttpResponse {
    let target = format!("{}/", request.path());
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
    match utoipa_swagger_ui::serve(&file, state.swagger.clone()) {
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
