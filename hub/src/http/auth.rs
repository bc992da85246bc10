//! Bearer-token auth for HTTP, with the same tokens and roles as the wire
//! protocol. EventSource cannot set headers, so `?token=` works too.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::error::ApiError;
use super::AppState;
use crate::config::Role;

/// The caller, established from its token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The role its token grants (operator when the hub requires no tokens).
    pub role: Role,
    /// The token's name, when the hub requires tokens.
    pub token: Option<String>,
    /// The token presented, so an event stream can be closed when a reload removes it.
    pub secret: Option<std::sync::Arc<str>>,
    /// The token's read and write rules, if it has any.
    pub access: Option<std::sync::Arc<crate::access::Access>>,
}

impl Caller {
    /// May its token read `tag` (its read and deny rules)?
    pub fn may_read(&self, tag: &str) -> bool {
        self.access.as_ref().is_none_or(|a| a.may_read(tag))
    }

    /// May its token see device `id` at all?
    pub fn sees_device(&self, id: &str) -> bool {
        self.may_read(&format!("dev/{id}"))
    }

    /// May its token write to `tag` (its write and deny rules)?
    pub fn may_write(&self, tag: &str) -> bool {
        self.access.as_ref().is_none_or(|a| a.may_write(tag))
    }

    /// Refuses roles that may not change devices.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Viewer => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the `viewer` role may not change devices",
            )),
            Role::Operator | Role::Agent | Role::Admin => Ok(()),
        }
    }

    /// Who this caller is, as the journal and audit trail record it.
    pub fn who(
        &self,
        peer: std::net::SocketAddr,
        headers: &axum::http::HeaderMap,
    ) -> crate::journal::Who {
        crate::journal::Who {
            token: self.token.clone(),
            role: Some(self.role.as_str().to_owned()),
            client: client_name(headers),
            peer: peer.to_string(),
            transport: "http".into(),
        }
    }

    /// Refuses roles that may not change definitions (groups).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            other => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the `admin` role; this token is `{}`",
                    other.as_str()
                ),
            )),
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
            .map(percent_decode)
    })
}

/// Decodes `%XX` escapes and `+` (a space in a query string), as browsers
/// encode a token that contains `+`, `/` or `=`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URI with the value of a `token` query parameter replaced, for logs.
pub fn redact_token(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.to_string();
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("token", _)) => "token=REDACTED".to_owned(),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{}?{}", uri.path(), redacted.join("&"))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let cfg = state.hub.config();
        if !cfg.auth_required() {
            // No tokens: anyone may do anything.
            return Ok(Caller {
                role: Role::Admin,
                token: None,
                secret: None,
                access: None,
            });
        }
        let token = token_from(parts);
        let found = token.as_deref().and_then(|t| cfg.find_token(t));
        match found {
            Some((i, t)) => Ok(Caller {
                role: t.role,
                token: Some(t.name.clone().unwrap_or_else(|| format!("tokens[{i}]"))),
                secret: Some(std::sync::Arc::from(t.token.as_str())),
                access: crate::access::Access::of(t),
            }),
            None => {
                let why = match token {
                    Some(_) => "unknown token",
                    None => "this hub requires a token: send `Authorization: Bearer <token>`",
                };
                let peer = parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.to_string())
                    .unwrap_or_default();
                state.hub.audit_auth_failure(
                    crate::journal::Who {
                        client: client_name(&parts.headers),
                        peer,
                        transport: "http".into(),
                        ..Default::default()
                    },
                    &format!("{why} ({} {})", parts.method, parts.uri.path()),
                );
                Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why))
            }
        }
    }
}

/// The name an HTTP client gives itself in `X-Client-Name` (the console
/// sends `console`), else `http`.
pub fn client_name(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("x-client-name")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "http".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Bb%2Fc%3D"), "a+b/c=");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
        assert_eq!(percent_decode("a+b"), "a b");
    }

    #[test]
    fn tokens_are_redacted_from_logged_uris() {
        let uri: axum::http::Uri = "/api/events?tags=dev/%23&token=s3cret%2B1".parse().unwrap();
        let shown = redact_token(&uri);
        assert_eq!(shown, "/api/events?tags=dev/%23&token=REDACTED");
        assert!(!shown.contains("s3cret"));
    }
}
