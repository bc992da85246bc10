//! The hub's HTTP side (axum): device discovery, status and commands, live
//! events over SSE, the wire protocol over WebSocket, OpenAPI, health and
//! metrics, and the operator console.

mod agents;
mod alerts;
mod auth;
mod definitions;
mod device_metrics;
mod devices;
mod error;
mod events;
mod groups;
mod journal;
mod ops;
mod scenes;
mod serve;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use devices::CORRELATION_HEADER;
pub use error::{ApiError, ErrorResponse};
pub use ops::ApiDoc;

use crate::server::Hub;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Turns true when the hub shuts down; long-lived streams end then.
    pub shutdown: watch::Receiver<bool>,
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            HeaderName::from_static(CORRELATION_HEADER),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([HeaderName::from_static(CORRELATION_HEADER)])
}

/// The whole HTTP application.
pub fn router(hub: Arc<Hub>, shutdown: watch::Receiver<bool>) -> Router {
    let cfg = hub.config().clone();
    // Ordinary requests get a deadline: the longest command wait plus a margin.
    let deadline = Duration::from_millis(cfg.max_request_timeout_ms) + Duration::from_secs(10);
    let api = Router::new()
        .route("/api/devices", get(devices::list))
        .route(
            "/api/devices/{id}",
            get(devices::show).patch(devices::patch),
        )
        .route("/api/devices/{id}/history", get(journal::history))
        .route("/api/devices/{id}/usage", get(journal::usage))
        .route("/api/commands", get(journal::commands))
        .route("/api/commands/{cid}", get(journal::command))
        .route("/api/audit", get(journal::audit))
        .route("/api/rooms", get(groups::rooms))
        .route(
            "/api/rooms/{name}",
            axum::routing::patch(groups::patch_room),
        )
        .route("/api/groups", get(groups::list))
        .route(
            "/api/groups/{name}",
            get(groups::show)
                .put(groups::put)
                .delete(groups::delete)
                .patch(groups::patch),
        )
        .route("/api/scenes", get(scenes::list))
        .route(
            "/api/scenes/{name}",
            axum::routing::put(scenes::put).delete(scenes::delete),
        )
        .route("/api/scenes/{name}/run", axum::routing::post(scenes::run))
        .route("/api/scene-runs/{id}", get(scenes::show))
        .route(
            "/api/scene-runs/{id}/cancel",
            axum::routing::post(scenes::cancel),
        )
        .route("/api/schedules", get(scenes::schedules))
        .route(
            "/api/schedules/{name}",
            axum::routing::put(scenes::put_schedule).delete(scenes::delete_schedule),
        )
        .route("/api/alerts", get(alerts::list))
        .route(
            "/api/alerts/{rule}/{device}/ack",
            axum::routing::post(alerts::acknowledge),
        )
        .route("/api/agents", get(agents::list))
        .route("/api/openapi.json", get(ops::openapi))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/api/admin/reload", axum::routing::post(ops::reload))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            deadline,
        ));
    // Streams live as long as the client wants: no deadline.
    let streams = Router::new()
        .route("/api/events", get(events::stream))
        .route("/ws", get(ws::upgrade));
    let mut app = api
        .merge(streams)
        .merge(patchbay_console())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(RequestBodyLimitLayer::new(cfg.http_body_limit))
        .layer(TraceLayer::new_for_http().make_span_with(request_span));
    if !cfg.cors_origins.is_empty() {
        app = app.layer(cors(&cfg.cors_origins));
    }
    // Outermost, so errors from every layer get the JSON body too.
    app.layer(axum::middleware::map_response(error::json_errors))
        .with_state(AppState { hub, shutdown })
}

/// The operator console: `/` is the page, `/console/<file>` its assets.
fn patchbay_console() -> Router<AppState> {
    async fn file(path: &str) -> axum::response::Response {
        use axum::response::IntoResponse;
        match patchbay_web::asset(path) {
            Some(a) => (
                [
                    (axum::http::header::CONTENT_TYPE, a.mime),
                    (axum::http::header::CACHE_CONTROL, "no-cache"),
                ],
                a.body,
            )
                .into_response(),
            None => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no console file `{path}`"),
            )
            .into_response(),
        }
    }
    Router::new()
        .route("/", get(|| file("index.html")))
        .route(
            "/console/{file}",
            get(|axum::extract::Path(name): axum::extract::Path<String>| async move { file(&name).await }),
        )
}

/// The span each request is traced in; a `token` in the query is redacted.
fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %req.method(),
        uri = %auth::redact_token(req.uri()),
        version = ?req.version(),
    )
}

/// Serves HTTP on `listener` until `shutdown` turns true, within the
/// connection, header-read and write limits of the configuration.
pub async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let app = router(hub.clone(), shutdown.clone());
    serve::serve(hub, listener, app, shutdown).await;
}
