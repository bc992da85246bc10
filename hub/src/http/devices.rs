//! Device discovery, status and commands. The registry is a view over the
//! hub's retained store (`dev/<id>/meta|state|online`), never a second copy.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ErrorResponse};
use super::AppState;
use crate::devices::DeviceView;
use crate::schema::{validate_settings, Setting};
use crate::server::{DeviceRecord, Hub, Origin, DEVICE_PAGE};

/// The correlation id header, accepted on requests and returned on responses.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// Shortest wait a command may ask for, in milliseconds (the CLI takes the same range).
pub const MIN_TIMEOUT_MS: u64 = 1;

/// A device in the list. Built from the retained values without copying
/// them: strings and the state are borrowed from the store's frames.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceSummary<'a> {
    /// Device id.
    pub id: &'a str,
    /// Display name.
    pub name: Cow<'a, str>,
    /// Room or location.
    pub location: Cow<'a, str>,
    /// Driver name.
    pub driver: Cow<'a, str>,
    /// Manufacturer.
    pub manufacturer: Cow<'a, str>,
    /// Model.
    pub model: Cow<'a, str>,
    /// Reachable now?
    pub online: bool,
    /// Why not, when offline.
    pub reason: Option<Cow<'a, str>>,
    /// Current state.
    #[schema(value_type = Object)]
    pub state: Option<&'a RawValue>,
    /// Last change to any of its retained values, Unix milliseconds.
    pub updated_ms: u64,
}

/// The fields of `dev/<id>/meta` the list shows.
#[derive(Default, Deserialize)]
struct MetaHead<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    location: Cow<'a, str>,
    #[serde(borrow, default)]
    driver: Cow<'a, str>,
    #[serde(borrow, default)]
    manufacturer: Cow<'a, str>,
    #[serde(borrow, default)]
    model: Cow<'a, str>,
}

/// The fields of `dev/<id>/online` the list shows.
#[derive(Default, Deserialize)]
struct OnlineHead<'a> {
    #[serde(default)]
    online: bool,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

/// One device in full.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDetail {
    /// Device id.
    pub id: String,
    /// Description and settings schema.
    #[schema(value_type = Object)]
    pub meta: Value,
    /// Current state.
    #[schema(value_type = Object)]
    pub state: Value,
    /// Reachability: `{"online", "reason", "since"}`.
    #[schema(value_type = Object)]
    pub online: Value,
    /// Last change to any of its retained values, Unix milliseconds.
    pub updated_ms: u64,
}

/// Filters for the device list.
#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only devices that are (or are not) reachable.
    pub online: Option<bool>,
    /// Only devices with this driver.
    pub driver: Option<String>,
    /// Only devices in this location (case-insensitive).
    pub location: Option<String>,
    /// Free text matched against id, name, location, manufacturer and model.
    pub q: Option<String>,
}

/// Options for a command.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PatchQuery {
    /// How long to wait for the device, in milliseconds, from 1 to the hub's
    /// `max_request_timeout_ms` (its default). A command that times out may
    /// still be carried out: the 504 answer says so and gives its correlation id.
    #[param(minimum = 1)]
    pub timeout_ms: Option<u64>,
}

/// One device parsed from its retained values, with the time of its latest
/// change; `None` unless it has a description (`meta`).
fn device_view(hub: &Hub, id: &str) -> Option<(DeviceView, u64)> {
    let rec = hub.device(id);
    rec.meta.as_ref()?;
    Some((rec.view(), updated_ms(&rec)))
}

/// The latest change to any of a device's retained values, Unix milliseconds.
fn updated_ms(rec: &DeviceRecord) -> u64 {
    [&rec.meta, &rec.state, &rec.online]
        .iter()
        .filter_map(|r| r.as_ref().map(|r| r.time_ms))
        .max()
        .unwrap_or(0)
}

/// A device's list entry, borrowed from its retained frames; `None` without a description.
fn summary(rec: &DeviceRecord) -> Option<DeviceSummary<'_>> {
    let meta: MetaHead<'_> = serde_json::from_str(rec.meta.as_ref()?.body()).unwrap_or_default();
    let online: OnlineHead<'_> = rec
        .online
        .as_ref()
        .and_then(|r| serde_json::from_str(r.body()).ok())
        .unwrap_or_default();
    Some(DeviceSummary {
        id: &rec.id,
        name: meta.name,
        location: meta.location,
        driver: meta.driver,
        manufacturer: meta.manufacturer,
        model: meta.model,
        online: online.online,
        reason: online.reason,
        state: rec
            .state
            .as_ref()
            .and_then(|r| serde_json::from_str(r.body()).ok()),
        updated_ms: updated_ms(rec),
    })
}

fn matches(s: &DeviceSummary<'_>, q: &ListQuery) -> bool {
    let ci = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    q.online.is_none_or(|o| s.online == o)
        && q.driver.as_deref().is_none_or(|d| ci(&s.driver, d))
        && q.location.as_deref().is_none_or(|l| ci(&s.location, l))
        && q.q.as_deref().is_none_or(|text| {
            let text = text.to_lowercase();
            [s.id, &s.name, &s.location, &s.manufacturer, &s.model]
                .iter()
                .any(|f| f.to_lowercase().contains(&text))
        })
}

/// Is `id` usable as the middle segment of a device tag?
fn valid_id(id: &str) -> bool {
    !id.contains('/') && crate::tag::validate_tag(&format!("dev/{id}/state")).is_ok()
}

/// Lists devices in id order, optionally filtered. The list is streamed a
/// page at a time from the store's `dev/<id>` branch (one short lock hold
/// per page), so neither its size nor its filters hold up the hub.
#[utoipa::path(get, path = "/api/devices", tag = "devices", params(ListQuery),
    responses((status = 200, body = [DeviceSummary]), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    struct Page {
        after: Option<String>,
        started: bool,
        listed: usize,
        done: bool,
    }
    let start = Page {
        after: None,
        started: false,
        listed: 0,
        done: false,
    };
    let hub = st.hub.clone();
    let access = caller.access.clone();
    let body = futures_util::stream::unfold(start, move |mut p| {
        let hub = hub.clone();
        let q = q.clone();
        let access = access.clone();
        async move {
            if p.done {
                return None;
            }
            let page = hub.devices_page(p.after.as_deref());
            let mut buf = Vec::with_capacity(page.len() * 256 + 2);
            if !p.started {
                buf.push(b'[');
                p.started = true;
            }
            for rec in &page {
                // A token's read rules hide the devices it may not see.
                if access
                    .as_ref()
                    .is_some_and(|a| !a.may_read(&format!("dev/{}", rec.id)))
                {
                    continue;
                }
                let Some(s) = summary(rec).filter(|s| matches(s, &q)) else {
                    continue;
                };
                if p.listed > 0 {
                    buf.push(b',');
                }
                p.listed += 1;
                // A summary of borrowed strings and raw JSON always serializes.
                let _ = serde_json::to_writer(&mut buf, &s);
            }
            if page.len() < DEVICE_PAGE {
                buf.push(b']');
                p.done = true;
            }
            p.after = page.last().map(|r| r.id.clone());
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(buf)), p))
        }
    });
    let mut res = axum::body::Body::from_stream(body).into_response();
    res.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// One device: description, state, reachability and last change.
#[utoipa::path(get, path = "/api/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id", example = "proj-1")),
    responses((status = 200, body = DeviceDetail), (status = 404, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn show(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    if !valid_id(&id) || !caller.may_read(&format!("dev/{id}")) {
        return Err(ApiError::unknown_device(&id));
    }
    let (v, t) = device_view(&st.hub, &id).ok_or_else(|| ApiError::unknown_device(&id))?;
    Ok(Json(DeviceDetail {
        id: v.id,
        meta: v.meta.unwrap_or(Value::Null),
        state: v.state.unwrap_or(Value::Null),
        online: v.online.unwrap_or(Value::Null),
        updated_ms: t,
    }))
}

/// The request's correlation id if it is usable, else a new one.
pub(super) fn correlation_id(headers: &HeaderMap) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    headers
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "http-{:x}-{}",
                crate::server::now_ms(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        })
}

/// Changes settings: validated against the device's schema, then sent to
/// the agent that owns the device; answers with the state the device confirms.
#[utoipa::path(patch, path = "/api/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "proj-1"), PatchQuery,
        ("x-correlation-id" = Option<String>, Header, description = "Correlation id; generated when absent, returned either way")),
    request_body(content = Object, description = "Desired settings, e.g. {\"power\":\"on\"}"),
    responses(
        (status = 200, description = "The confirmed state", body = Object),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, description = "Device busy", body = ErrorResponse),
        (status = 422, description = "Invalid setting or value", body = ErrorResponse),
        (status = 502, body = ErrorResponse), (status = 503, description = "Device or agent offline", body = ErrorResponse),
        (status = 504, description = "Device did not answer in time", body = ErrorResponse)))]
pub async fn patch(
    State(st): State<AppState>,
    caller: Result<Caller, ApiError>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    query: Result<Query<PatchQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let cid = correlation_id(&headers);
    let span = tracing::info_span!("command", device = %id, cid = %cid);
    let origin = caller.as_ref().ok().map(|c| Origin {
        who: c.who(peer, &headers),
        received_ms: crate::server::now_ms(),
        access: c.access.clone(),
    });
    let result = {
        let _enter = span.enter();
        command(&st, caller, &id, query, &body, &cid, origin.clone())
    };
    if let (Err(e), Some(origin)) = (&result, origin) {
        // Refused before it was sent: still an attempt the journal keeps.
        if e.status != StatusCode::UNAUTHORIZED && valid_id(&id) {
            let desired = String::from_utf8_lossy(&body);
            st.hub
                .journal_refused_command(&id, &desired, &cid, origin, e.detail.to_error_body());
        }
    }
    let result = match result {
        Ok(answer) => wait(answer, &id).await,
        Err(e) => Err(e),
    };
    let mut res = match result {
        Ok(state) => {
            tracing::info!(device = %id, cid = %cid, "command confirmed");
            let mut r = (StatusCode::OK, state.get().to_owned()).into_response();
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(mut e) => {
            tracing::info!(device = %id, cid = %cid, code = %e.detail.code, "command failed: {}", e.detail.message);
            e.detail.cid = Some(cid.clone());
            e.into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&cid) {
        res.headers_mut()
            .insert(HeaderName::from_static(CORRELATION_HEADER), v);
    }
    res
}

/// Checks the command and sends it; returns where the answer will arrive.
fn command(
    st: &AppState,
    caller: Result<Caller, ApiError>,
    id: &str,
    query: Result<Query<PatchQuery>, QueryRejection>,
    body: &[u8],
    cid: &str,
    origin: Option<Origin>,
) -> Result<(crate::server::Answer, Duration), ApiError> {
    let caller = caller?;
    caller.require_operator()?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !valid_id(id) || !caller.may_read(&format!("dev/{id}")) {
        return Err(ApiError::unknown_device(id));
    }
    if !caller.may_write(&format!("dev/{id}/set")) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token may not command `{id}` (its `write`/`deny` rules)"),
        ));
    }
    let desired: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let (view, _) = device_view(&st.hub, id).ok_or_else(|| ApiError::unknown_device(id))?;
    // An offline device is reported as such first: it may never have been
    // described well enough to judge the settings against.
    if !view.is_online() {
        let reason = view.reason().unwrap_or("no reason given");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "offline",
            format!("device `{id}` is offline: {reason}"),
        ));
    }
    let settings: Vec<Setting> = view
        .meta
        .as_ref()
        .and_then(|m| m.get("settings"))
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    validate_settings(&settings, &desired)?;
    let max = st.hub.config().max_request_timeout_ms;
    if q.timeout_ms
        .is_some_and(|t| !(MIN_TIMEOUT_MS..=max).contains(&t))
    {
        return Err(ApiError::bad_request(format!(
            "`timeout_ms` must be from {MIN_TIMEOUT_MS} to {max}"
        )));
    }
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(max));
    let raw = RawValue::from_string(desired.to_string())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let answer = st
        .hub
        .request_internal(
            &format!("dev/{id}/set"),
            &raw,
            Some(timeout),
            Some(cid),
            origin,
        )
        .map_err(|e| match e.code {
            crate::protocol::ErrorCode::NoResponder => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "offline",
                format!("no agent serves device `{id}`"),
            ),
            _ => ApiError::from(e),
        })?;
    Ok((answer, timeout))
}

async fn wait(
    (answer, timeout): (crate::server::Answer, Duration),
    id: &str,
) -> Result<Box<RawValue>, ApiError> {
    // The hub fails the request itself at its deadline; the grace covers a hub that cannot.
    let grace = timeout + Duration::from_secs(5);
    match tokio::time::timeout(grace, answer).await {
        Ok(Ok(Ok(state))) => Ok(state),
        Ok(Ok(Err(e))) => Err(ApiError::from_error_body(e)),
        Ok(Err(_)) | Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no answer from device `{id}`; the outcome is unknown: the command may still be carried out"),
        )),
    }
}
