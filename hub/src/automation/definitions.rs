//! Definitions (groups, scenes) from the hub config or the API. Those from
//! the API are retained values at `<prefix>/<name>/spec`, published by the
//! hub alone and kept across restarts by the journal; a config definition
//! of the same name wins and is read-only through the API.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::server::Hub;

/// Where a definition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The hub config (read-only through the API).
    Config,
    /// The API.
    Api,
}

/// The retained tag of an API definition.
pub fn spec_tag(prefix: &str, name: &str) -> String {
    format!("{prefix}/{name}/spec")
}

/// A definition by name, the config's first.
pub fn find<T: DeserializeOwned + Clone>(
    hub: &Hub,
    config: &BTreeMap<String, T>,
    prefix: &str,
    name: &str,
) -> Option<(Origin, T)> {
    if let Some(d) = config.get(name) {
        return Some((Origin::Config, d.clone()));
    }
    let r = hub.retained(&spec_tag(prefix, name))?;
    serde_json::from_str(r.body())
        .ok()
        .map(|d| (Origin::Api, d))
}

/// Every definition: the config's, then the API's not shadowed by them, each in name order.
pub fn all<T: DeserializeOwned + Clone>(
    hub: &Hub,
    config: &BTreeMap<String, T>,
    prefix: &str,
) -> Vec<(String, Origin, T)> {
    let mut out: Vec<_> = config
        .iter()
        .map(|(n, d)| (n.clone(), Origin::Config, d.clone()))
        .collect();
    for (name, parts) in hub.retained_children(prefix) {
        if config.contains_key(&name) {
            continue;
        }
        let Some((_, r)) = parts.iter().find(|(p, _)| p == "spec") else {
            continue;
        };
        if let Ok(d) = serde_json::from_str(r.body()) {
            out.push((name, Origin::Api, d));
        }
    }
    out
}
