//! Bearer-token auth for HTTP, with the same tokens and roles as the wire
//! protocol. EventSource cannot set headers, so `?token=` works too.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::error::ApiError;
use super::AppState;
use crate::config::Role;

/// The caller's role, established from its token.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Role);

impl Caller {
    /// Refuses roles that may not change devices.
    pub fn require_operator(self) -> Result<(), ApiError> {
        match self.0 {
            Role::Viewer => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the `viewer` role may not change devices",
            )),
            Role::Operator | Role::Agent => Ok(()),
        }
    }
}

fn token_from(parts: &Parts) -> Option<String> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    bearer.or_else(|| {
        parts
            .uri
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_owned)
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let cfg = state.hub.config();
        if !cfg.auth_required() {
            return Ok(Caller(Role::Operator));
        }
        let token = token_from(parts).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this hub requires a token: send `Authorization: Bearer <token>`",
            )
        })?;
        cfg.tokens
            .iter()
            .find(|t| t.token == token)
            .map(|t| Caller(t.role))
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"))
    }
}
