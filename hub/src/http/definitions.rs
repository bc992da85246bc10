//! Defining and deleting named definitions (groups, scenes, schedules)
//! through the API: the admin role, the name rules, config definitions
//! being read-only, the retained spec and the audit, in one place.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::automation::definitions::{spec_tag, Origin};
use crate::automation::groups::{shown, valid_name};

/// What is defined: its noun in messages and audit kinds, and where its specs are retained.
pub struct Kind {
    /// `group`, `scene`, `schedule`.
    pub noun: &'static str,
    /// The retained prefix of its specs.
    pub prefix: &'static str,
    /// The audit kind of a definition.
    pub defined: &'static str,
    /// The audit kind of a deletion.
    pub deleted: &'static str,
}

/// Who asks, from where.
pub struct Asker<'a> {
    /// The authenticated caller.
    pub caller: &'a Caller,
    /// Its address.
    pub peer: SocketAddr,
    /// Its request headers (for the correlation id).
    pub headers: &'a HeaderMap,
}

/// `name` not found.
pub fn unknown(kind: &Kind, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no {} `{}`", kind.noun, shown(name)),
    )
}

fn in_config(kind: &Kind, name: &str, verb: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!(
            "{} `{name}` is defined in the hub's config file; {verb} it there",
            kind.noun
        ),
    )
}

/// Defines (or redefines) `name` from a JSON body: admin only, a valid name
/// not taken by the config, a body that parses and passes `check`; then it
/// is retained and audited. Answers the definition.
pub fn define<T: Serialize + DeserializeOwned>(
    st: &AppState,
    asker: Asker<'_>,
    kind: &Kind,
    name: &str,
    config_has: bool,
    body: &[u8],
    check: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, ApiError> {
    asker.caller.require_admin()?;
    if !valid_name(name) {
        return Err(ApiError::bad_request(format!(
            "`{}` is not a {} name: 1 to 64 letters, digits, `-`, `_` or `.`",
            shown(name),
            kind.noun
        )));
    }
    if config_has {
        return Err(in_config(kind, name, "change"));
    }
    let spec: T = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a {}: {e}", kind.noun)))?;
    check(&spec).map_err(ApiError::bad_request)?;
    let text = serde_json::to_string(&spec).expect("a definition serializes");
    let raw = serde_json::value::RawValue::from_string(text.clone()).expect("valid JSON");
    st.hub
        .publish_as_hub(&spec_tag(kind.prefix, name), &raw, true);
    st.hub.audit(
        kind.defined,
        asker.caller.who(asker.peer, asker.headers),
        name.to_owned(),
        text,
    );
    Ok(spec)
}

/// Deletes `name`, found as `found`: admin only; one from the config is
/// refused. Also removes the retained tags in `also` (such as its state).
pub fn undefine(
    st: &AppState,
    asker: Asker<'_>,
    kind: &Kind,
    name: &str,
    found: Option<Origin>,
    also: &[String],
) -> Result<StatusCode, ApiError> {
    asker.caller.require_admin()?;
    match found {
        None => Err(unknown(kind, name)),
        Some(Origin::Config) => Err(in_config(kind, name, "remove")),
        Some(Origin::Api) => {
            let null = serde_json::value::RawValue::NULL;
            st.hub
                .publish_as_hub(&spec_tag(kind.prefix, name), null, true);
            for tag in also {
                st.hub.publish_as_hub(tag, null, true);
            }
            st.hub.audit(
                kind.deleted,
                asker.caller.who(asker.peer, asker.headers),
                name.to_owned(),
                String::new(),
            );
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
