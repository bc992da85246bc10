//! One error type for every HTTP handler; the status mapping lives here and
//! every error body is `{"error": {"code", "message", ...}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::schema::SchemaError;
use crate::server::OpError;

/// The error object inside every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `not_found`, `invalid_value`, `device_offline`.
    pub code: String,
    /// What went wrong, in words.
    pub message: String,
    /// For `invalid_value`: the setting concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
    /// For `invalid_value`: what is allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<String>,
    /// Protocol detail for the record (what was sent, what the device answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a device command: what became of each setting,
    /// `{"applied": {...}, "failed": {...}, "skipped": [...]}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub outcome: Option<serde_json::Value>,
    /// For a device command: its correlation id (to follow it up after a timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
}

/// An HTTP error: a status and the error object.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The error object (boxed: errors travel in `Result`s on every path).
    pub detail: Box<ErrorDetail>,
}

impl ErrorDetail {
    /// The wire protocol's error body with the same code, message, detail and outcome.
    pub fn to_error_body(&self) -> crate::protocol::ErrorBody {
        let mut e = crate::protocol::ErrorBody::new(self.code.clone(), self.message.clone());
        e.detail = self.detail.clone();
        e.outcome = self.outcome.clone();
        e
    }
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: Box::new(ErrorDetail {
                code: code.into(),
                message: message.into(),
                setting: None,
                allowed: None,
                detail: None,
                outcome: None,
                cid: None,
            }),
        }
    }

    /// 404 for an unknown device.
    pub fn unknown_device(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown device `{id}`"),
        )
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A responder's error: its code mapped to a status, its detail and outcome kept.
    pub fn from_error_body(e: crate::protocol::ErrorBody) -> Self {
        let mut err = Self::from_command(&e.code, e.message);
        err.detail.detail = e.detail;
        err.detail.outcome = e.outcome;
        err
    }

    /// The status a failed device command maps to, by its code.
    pub fn from_command(code: &str, message: String) -> Self {
        let status = match code {
            "invalid_value" => StatusCode::UNPROCESSABLE_ENTITY,
            "busy" => StatusCode::CONFLICT,
            "offline" | "no_responder" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "timeout" | "device_timeout" => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        Self::new(status, code, message)
    }
}

impl From<SchemaError> for ApiError {
    fn from(e: SchemaError) -> Self {
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            e.to_string(),
        );
        err.detail.setting = e.setting().map(str::to_owned);
        err.detail.allowed = e.allowed().map(str::to_owned);
        err
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        use crate::protocol::ErrorCode as C;
        let status = match e.code {
            C::BadTag | C::BadFrame | C::FrameTooLarge => StatusCode::BAD_REQUEST,
            C::Unauthorized => StatusCode::UNAUTHORIZED,
            C::Forbidden => StatusCode::FORBIDDEN,
            C::Owned => StatusCode::CONFLICT,
            // Limits: the hub is busy, not broken.
            C::MaxConnections
            | C::TooManySubscriptions
            | C::RetainedLimit
            | C::TooManyRequests
            | C::SlowConsumer
            | C::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => return ApiError::from_command(e.code.as_str(), e.message),
        };
        ApiError::new(status, e.code.as_str(), e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorResponse {
            error: *self.detail,
        })
        .unwrap_or_default();
        let mut res = (self.status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }
}

/// Gives error responses that are not JSON (from layers and the router:
/// 404, 405, 408, 413, 415...) the same `{"error": ...}` body.
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let mut out = ApiError::new(status, code, reason).into_response();
    for (k, v) in res.headers() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
