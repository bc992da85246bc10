//! Alerts over HTTP: the open ones, and acknowledging one.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::auth::Caller;
use super::error::{ApiError, ErrorResponse};
use super::AppState;
use crate::automation::alerts::{self, Alert};

/// The open alerts (acknowledged ones included, until they close).
#[utoipa::path(get, path = "/api/alerts", tag = "venue",
    responses((status = 200, body = Vec<Alert>), (status = 401, body = ErrorResponse)))]
pub async fn list(State(st): State<AppState>, caller: Caller) -> Json<Vec<Alert>> {
    let mut open = alerts::open_alerts(&st.hub);
    open.retain(|a| caller.may_read(&format!("alert/{}/{}", a.rule, a.device)));
    Json(open)
}

/// Acknowledges an open alert (operator); it stays until its condition clears.
#[utoipa::path(post, path = "/api/alerts/{rule}/{device}/ack", tag = "venue",
    params(("rule" = String, Path, description = "Rule name"), ("device" = String, Path, description = "Device id")),
    responses((status = 200, body = Alert), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 404, description = "No such open alert", body = ErrorResponse)))]
pub async fn acknowledge(
    State(st): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((rule, device)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Alert>, ApiError> {
    caller.require_operator()?;
    let who = caller.who(peer, &headers);
    let valid = |s: &str| crate::tag::validate_tag(s).is_ok() && !s.contains('/');
    // An alert its token may not read does not exist for it.
    if !valid(&rule) || !valid(&device) || !caller.may_read(&format!("alert/{rule}/{device}")) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no open alert `{rule}` for `{device}`"),
        ));
    }
    alerts::acknowledge(&st.hub, &rule, &device, who)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no open alert `{rule}` for `{device}`"),
            )
        })
}
