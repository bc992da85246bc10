//! Connected agents and the devices they own.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ErrorResponse;
use super::AppState;

/// A connected agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentInfo {
    /// Name the agent gave in `hello`.
    pub name: String,
    /// Remote address.
    pub address: String,
    /// Connected since, Unix milliseconds.
    pub connected_since_ms: u64,
    /// Ids of the devices it owns (its `dev/<id>` claims).
    pub devices: Vec<String>,
    /// Every prefix it claims.
    pub claims: Vec<String>,
}

/// Lists connections that own devices (claim tag prefixes).
#[utoipa::path(get, path = "/api/agents", tag = "devices",
    responses((status = 200, body = [AgentInfo]), (status = 401, body = ErrorResponse)))]
pub async fn list(State(st): State<AppState>, caller: Caller) -> Json<Vec<AgentInfo>> {
    let mut agents: Vec<AgentInfo> = st
        .hub
        .connections()
        .into_iter()
        .map(|mut c| {
            // Only the claims its token may see.
            c.claims.retain(|p| caller.may_read(p));
            c
        })
        .filter(|c| !c.claims.is_empty())
        .map(|c| AgentInfo {
            devices: c
                .claims
                .iter()
                .filter_map(|p| p.strip_prefix("dev/"))
                .filter(|id| !id.contains('/'))
                .map(str::to_owned)
                .collect(),
            name: c.name,
            address: c.peer.to_string(),
            connected_since_ms: c.since_ms,
            claims: c.claims,
        })
        .collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    Json(agents)
}
