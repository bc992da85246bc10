//! The journal over HTTP: commands, device history and usage, audit.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorResponse};
use super::AppState;
use crate::journal::api::{CommandsQuery, HistoryQuery, Question, QuestionError, UsageQuery};
use crate::journal::{AuditEntry, CommandEntry, HistoryEntry, UsageReport};

/// A page of commands, newest first.
#[derive(Serialize, ToSchema)]
pub struct CommandPage {
    /// The commands.
    pub items: Vec<CommandEntry>,
    /// Pass as `before` for the next (older) page; `null` on the last.
    pub next: Option<i64>,
}

/// A page of a device's history, newest first.
#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    /// The changes.
    pub items: Vec<HistoryEntry>,
    /// Pass as `before` for the next (older) page; `null` on the last.
    pub next: Option<i64>,
}

/// A page of the audit trail, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// The rows.
    pub items: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; `null` on the last.
    pub next: Option<i64>,
}

fn no_journal() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_journal",
        "this hub keeps no journal (it runs with --memory-only or without data_dir)",
    )
}

async fn ask(st: &AppState, caller: &Caller, q: Question) -> Result<String, ApiError> {
    let journal = st.hub.journal().cloned().ok_or_else(no_journal)?;
    let forbidden = |m: String| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m);
    if let Some(a) = &caller.access {
        q.check_access(a).map_err(forbidden)?;
    }
    let check = q.answer_needs_check();
    let answer = q.answer(&journal).await.map_err(|e| match e {
        QuestionError::Invalid(m) => ApiError::bad_request(m),
        QuestionError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
        QuestionError::Journal(e) => {
            tracing::error!("journal read failed: {e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    })?;
    if let (Some(a), true) = (&caller.access, check) {
        crate::journal::api::check_command_answer(a, &answer)
            .map_err(|m| ApiError::new(StatusCode::NOT_FOUND, "not_found", m))?;
    }
    Ok(answer)
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// A device the hub has never heard of, and that has nothing in the journal.
fn unknown_device(st: &AppState, id: &str, body: &str) -> Option<ApiError> {
    let empty = body.starts_with("{\"items\":[]");
    (empty && st.hub.device(id).meta.is_none()).then(|| ApiError::unknown_device(id))
}

/// Commands sent to devices, newest first: who, what, when, and how each ended.
#[utoipa::path(get, path = "/api/commands", tag = "journal", params(CommandsQuery),
    responses((status = 200, body = CommandPage), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 503, description = "No journal", body = ErrorResponse)))]
pub async fn commands(
    State(st): State<AppState>,
    caller: Caller,
    q: Result<Query<CommandsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    Ok(json(ask(&st, &caller, Question::Commands(q)).await?))
}

/// One command by correlation id: `pending`, `confirmed`, `failed`, or
/// `unknown` (it timed out), with the late answer when one came.
#[utoipa::path(get, path = "/api/commands/{cid}", tag = "journal",
    params(("cid" = String, Path, description = "Correlation id")),
    responses((status = 200, body = CommandEntry), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 503, description = "No journal", body = ErrorResponse)))]
pub async fn command(
    State(st): State<AppState>,
    caller: Caller,
    Path(cid): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json(ask(&st, &caller, Question::Command(cid)).await?))
}

/// A device's history, newest first: state changes (the changed fields),
/// reachability with reasons, and events, with the hub's seq and time.
#[utoipa::path(get, path = "/api/devices/{id}/history", tag = "journal",
    params(("id" = String, Path, description = "Device id"), HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 503, description = "No journal", body = ErrorResponse)))]
pub async fn history(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut q = query(q)?;
    q.device = None;
    let first_page = q.before.is_none();
    let body = ask(&st, &caller, Question::History(id.clone(), q)).await?;
    match unknown_device(&st, &id, &body).filter(|_| first_page) {
        Some(e) => Err(e),
        None => Ok(json(body)),
    }
}

/// Hours on per day and lamp hours over the last `days` days: the
/// utilization report.
#[utoipa::path(get, path = "/api/devices/{id}/usage", tag = "journal",
    params(("id" = String, Path, description = "Device id"), UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 503, description = "No journal", body = ErrorResponse)))]
pub async fn usage(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    if st.hub.device(&id).meta.is_none() {
        return Err(ApiError::unknown_device(&id));
    }
    Ok(json(
        ask(&st, &caller, Question::Usage(id, q.days.unwrap_or(30))).await?,
    ))
}

/// The audit trail, newest first: failed authentication, claims and
/// releases, the hub's starts and stops.
#[utoipa::path(get, path = "/api/audit", tag = "journal", params(HistoryQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 503, description = "No journal", body = ErrorResponse)))]
pub async fn audit(
    State(st): State<AppState>,
    caller: Caller,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut q = query(q)?;
    q.device = None;
    Ok(json(ask(&st, &caller, Question::Audit(q)).await?))
}
