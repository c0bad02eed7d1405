//! `/health/alerts`: the alerts pending, firing or suppressed now, and the
//! maintenance windows in force, from the list the alerts' thread keeps.

use actix_web::body::BoxBody;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use crate::api::docs::{CommonProblems, TokenProblems};
use crate::api::error::ApiError;
use crate::api::{require_details, state_of, uncached};

#[utoipa::path(
    method(get, head), path = "/health/alerts", operation_id = "getAlerts",
    responses(
        (status = 200, body = healthd_models::AlertList, content_type = "application/json"),
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_alerts(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let state = state_of(&request);
    require_details(&state.access.load(), &request)?;
    let list = state.alerts().list();
    let body = serde_json::to_vec(list.as_ref()).expect("the models always serialise");
    Ok(uncached(StatusCode::OK, "application/json", BoxBody::new(body)))
}
