//! Scenes over HTTP: list them, run one, read a run's progress.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::auth::{client_name, Caller};
use super::error::{ApiError, ErrorResponse};
use super::AppState;
use crate::automation::scenes::{RunError, Scene, RUNS_PREFIX};
use crate::journal::Who;

/// A scene as listed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SceneInfo {
    /// Its name.
    pub name: String,
    /// Its definition.
    pub scene: Scene,
}

/// A run that started.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunStarted {
    /// The run's id: read it at `GET /api/scene-runs/{id}`.
    pub run: u64,
    /// The retained tag its progress is published on.
    pub tag: String,
}

/// Every scene from the config.
#[utoipa::path(get, path = "/api/scenes", tag = "venue",
    responses((status = 200, body = Vec<SceneInfo>), (status = 401, body = ErrorResponse)))]
pub async fn list(State(st): State<AppState>, _caller: Caller) -> Json<Vec<SceneInfo>> {
    Json(
        st.hub
            .config()
            .scenes
            .iter()
            .map(|(name, scene)| SceneInfo {
                name: name.clone(),
                scene: scene.clone(),
            })
            .collect(),
    )
}

/// Starts a scene; answers at once with the run's id. Progress is at
/// `GET /api/scene-runs/{id}` and on the retained tag `hub/scene-runs/<id>`.
#[utoipa::path(post, path = "/api/scenes/{name}/run", tag = "venue",
    params(("name" = String, Path, description = "Scene name")),
    responses((status = 202, body = RunStarted), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, description = "Already running", body = ErrorResponse)))]
pub async fn run(
    State(st): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require_operator()?;
    let who = Who {
        token: caller.token.clone(),
        role: Some(caller.role.as_str().to_owned()),
        client: client_name(&headers),
        peer: peer.to_string(),
        transport: "http".into(),
    };
    match st.hub.scenes().start(&st.hub, &name, who) {
        Ok(run) => Ok((
            StatusCode::ACCEPTED,
            Json(RunStarted {
                run,
                tag: format!("{RUNS_PREFIX}/{run}"),
            }),
        )
            .into_response()),
        Err(e @ RunError::Unknown(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            e.to_string(),
        )),
        Err(e @ RunError::Running(..)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            e.to_string(),
        )),
    }
}

/// A run's progress: each step's status, with why a step failed.
#[utoipa::path(get, path = "/api/scene-runs/{id}", tag = "venue",
    params(("id" = u64, Path, description = "Run id")),
    responses((status = 200, body = crate::automation::scenes::Run), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn show(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a run id")))?;
    let r = st
        .hub
        .retained(&format!("{RUNS_PREFIX}/{id}"))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no scene run {id}"),
            )
        })?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        r.body().to_owned(),
    )
        .into_response())
}
