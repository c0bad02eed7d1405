//! `ApiError`: every error answer, as problem+json from the contract's
//! `Problem` model.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use healthd_models::Problem;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiErrorKind {
    #[error("the query string is malformed")]
    BadQuery,
    #[error("requests to healthd carry no body")]
    BodyNotAllowed,
    #[error(
        "the request's header fields are too large: at most {} fields of {} bytes in all",
        crate::api::MAX_HEADER_FIELDS,
        crate::api::MAX_HEADER_BYTES
    )]
    HeadersTooLarge,
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("this address may not connect")]
    AddressNotAllowed,
    #[error("this address may not see details")]
    DetailsNotAllowed,
    #[error("details are disabled on this service")]
    DetailsDisabled,
    #[error("no check is named {0:?}")]
    UnknownCheck(String),
    #[error("no group is named {0:?}")]
    UnknownGroup(String),
    #[error("exclude={0:?}: no check is named so")]
    UnknownExclude(String),
    #[error("verbose takes no value, or true or false")]
    BadVerbose,
    #[error("no such path; see /openapi.yaml for the paths healthd serves")]
    NotFound,
    #[error("only GET and HEAD are allowed")]
    MethodNotAllowed,
    #[error("only POST, GET and HEAD are allowed")]
    PingMethodNotAllowed,
    #[error("this token lacks the {0:?} scope")]
    MissingScope(&'static str),
    #[error("check {name:?} is a {kind} check, not a heartbeat: only heartbeats take pings")]
    NotAHeartbeat { name: String, kind: &'static str },
    #[error(
        "too many pings for this check: {} at once, then {} a second; retry after {retry_after} s",
        crate::checks::PING_BURST,
        crate::checks::PINGS_PER_SECOND
    )]
    TooManyPings { retry_after: u64 },
    #[error("an exit status is a whole number from 0 to 255")]
    BadExitStatus,
    #[error("Swagger UI could not be served")]
    Internal,
    #[error("{0}")]
    InvalidParameter(String),
    #[error("healthd keeps no store; configure [storage]")]
    NoStore,
    #[error("{0}")]
    StoreUnavailable(String),
}

/// An error answer for the request at `instance`.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub instance: String,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind, instance: &str) -> Self {
        ApiError { kind, instance: instance.to_string() }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self.kind {
            ApiErrorKind::BadQuery
            | ApiErrorKind::BodyNotAllowed
            | ApiErrorKind::BadExitStatus
            | ApiErrorKind::UnknownExclude(_)
            | ApiErrorKind::BadVerbose
            | ApiErrorKind::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            ApiErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiErrorKind::AddressNotAllowed
            | ApiErrorKind::DetailsNotAllowed
            | ApiErrorKind::DetailsDisabled
            | ApiErrorKind::MissingScope(_) => StatusCode::FORBIDDEN,
            ApiErrorKind::UnknownCheck(_)
            | ApiErrorKind::UnknownGroup(_)
            | ApiErrorKind::NotFound
            | ApiErrorKind::NoStore => StatusCode::NOT_FOUND,
            ApiErrorKind::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiErrorKind::MethodNotAllowed | ApiErrorKind::PingMethodNotAllowed => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            ApiErrorKind::NotAHeartbeat { .. } => StatusCode::CONFLICT,
            ApiErrorKind::TooManyPings { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let problem = Problem {
            type_: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: Some(self.kind.to_string()),
            instance: Some(self.instance.clone()),
        };
        let mut response = HttpResponse::build(status);
        response
            .content_type("application/problem+json")
            .insert_header((header::CACHE_CONTROL, "no-store"));
        match self.kind {
            ApiErrorKind::Unauthorized => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"healthd\""),
                ));
            }
            ApiErrorKind::MethodNotAllowed => {
                response.insert_header((header::ALLOW, HeaderValue::from_static("GET, HEAD")));
            }
            ApiErrorKind::PingMethodNotAllowed => {
                response
                    .insert_header((header::ALLOW, HeaderValue::from_static("GET, HEAD, POST")));
            }
            ApiErrorKind::MissingScope(scope) => {
                // RFC 6750, section 3: the scope the token would need.
                let challenge = format!(
                    "Bearer realm=\"healthd\", error=\"insufficient_scope\", scope=\"{scope}\""
                );
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    response.insert_header((header::WWW_AUTHENTICATE, value));
                }
            }
            ApiErrorKind::TooManyPings { retry_after } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            _ => {}
        }
        response.json(problem)
    }
}
