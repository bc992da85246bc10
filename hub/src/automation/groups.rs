//! Rooms and groups: which devices a command for many goes to.
//!
//! A room is every device whose description names that `location`. A group
//! is a named selector over device descriptions: explicit ids, a location, a
//! driver, a model, or a tag pattern over `dev/<id>`; a device belongs when
//! it matches every criterion the group gives. Groups come from the hub
//! config (`[groups.<name>]`, read-only) or the API (kept as retained values
//! under `hub/groups/<name>/spec`, so they survive a restart with the journal).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::devices::DeviceView;
use crate::server::Hub;

/// Where groups defined through the API are kept.
pub const GROUPS_PREFIX: &str = "hub/groups";

/// A group's selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Exactly these devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Devices in this room (their `location`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Devices driven by this driver (`pjlink`, `escvp21`, `line`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Devices of this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Devices whose `dev/<id>` matches this tag pattern (`+` one segment, `#` the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// A name from a request as an error message may show it: at most 64
/// characters, with control and invisible characters written out.
pub fn shown(name: &str) -> String {
    let cut: String = name.chars().take(64).collect();
    let mut out: String = cut
        .chars()
        .flat_map(|c| {
            let invisible = c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
            let v: Vec<char> = if invisible { c.escape_unicode().collect() } else { vec![c] };
            v
        })
        .collect();
    if name.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Is `name` usable for a group (and in a tag)?
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl GroupSpec {
    /// Refuses a selector that selects nothing in particular or cannot be read.
    pub fn check(&self) -> Result<(), String> {
        if self.ids.is_empty()
            && self.location.is_none()
            && self.driver.is_none()
            && self.model.is_none()
            && self.pattern.is_none()
        {
            return Err(
                "a group needs at least one of `ids`, `location`, `driver`, `model` or `pattern`"
                    .into(),
            );
        }
        for id in &self.ids {
            crate::tag::validate_tag(&format!("dev/{id}"))
                .map_err(|e| format!("`ids`: `{id}` is not a device id: {e}"))?;
        }
        if let Some(p) = &self.pattern {
            crate::tag::validate_pattern(p).map_err(|e| format!("`pattern`: {e}"))?;
        }
        Ok(())
    }

    /// Does the device belong?
    pub fn matches(&self, d: &DeviceView) -> bool {
        (self.ids.is_empty() || self.ids.contains(&d.id))
            && self
                .location
                .as_deref()
                .is_none_or(|l| d.meta_str("location") == l)
            && self
                .driver
                .as_deref()
                .is_none_or(|v| d.meta_str("driver") == v)
            && self
                .model
                .as_deref()
                .is_none_or(|v| d.meta_str("model") == v)
            && self
                .pattern
                .as_deref()
                .is_none_or(|p| crate::tag::matches(p, &format!("dev/{}", d.id)))
    }
}

pub use super::definitions::Origin;

/// A group as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// Where it was defined.
    pub origin: Origin,
    /// Its selector.
    pub spec: GroupSpec,
    /// The devices it selects now.
    pub members: Vec<String>,
}

/// Every device the hub has a description of, as views.
pub fn all_devices(hub: &Hub) -> Vec<DeviceView> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = hub.devices_page(after.as_deref());
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        let full = page.len() == crate::server::DEVICE_PAGE;
        out.extend(page.iter().filter(|r| r.meta.is_some()).map(|r| r.view()));
        if !full {
            break;
        }
    }
    out
}

/// A group by name, config first.
pub fn find(hub: &Hub, name: &str) -> Option<(Origin, GroupSpec)> {
    super::definitions::find(hub, &hub.config().groups, GROUPS_PREFIX, name)
}

/// Every group with its members.
pub fn list(hub: &Hub) -> Vec<GroupInfo> {
    list_seen(hub, |_| true)
}

/// The groups with only the members someone who `sees` some devices knows.
pub fn list_seen(hub: &Hub, sees: impl Fn(&str) -> bool) -> Vec<GroupInfo> {
    let mut devices = all_devices(hub);
    devices.retain(|d| sees(&d.id));
    let mut all = super::definitions::all(hub, &hub.config().groups, GROUPS_PREFIX);
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.into_iter()
        .map(|(name, origin, spec)| {
            let members = devices
                .iter()
                .filter(|d| spec.matches(d))
                .map(|d| d.id.clone())
                .collect();
            GroupInfo {
                name,
                origin,
                spec,
                members,
            }
        })
        .collect()
}

/// A room: its name and its devices.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoomInfo {
    /// The `location` its devices share.
    pub name: String,
    /// Its devices.
    pub devices: Vec<String>,
    /// How many of them are online.
    pub online: usize,
}

/// Every room, by name.
pub fn rooms(hub: &Hub) -> Vec<RoomInfo> {
    rooms_seen(hub, |_| true)
}

/// The rooms as someone who `sees` only some devices (by id) knows them.
pub fn rooms_seen(hub: &Hub, sees: impl Fn(&str) -> bool) -> Vec<RoomInfo> {
    let mut rooms: BTreeMap<String, RoomInfo> = BTreeMap::new();
    for d in all_devices(hub).into_iter().filter(|d| sees(&d.id)) {
        let name = d.meta_str("location");
        if name.is_empty() {
            continue;
        }
        let r = rooms.entry(name.to_owned()).or_insert_with(|| RoomInfo {
            name: name.to_owned(),
            devices: Vec::new(),
            online: 0,
        });
        r.devices.push(d.id.clone());
        r.online += usize::from(d.is_online());
    }
    rooms.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(id: &str, location: &str, driver: &str) -> DeviceView {
        DeviceView {
            id: id.into(),
            meta: Some(json!({"location": location, "driver": driver, "model": "X1"})),
            state: None,
            online: None,
        }
    }

    #[test]
    fn a_member_matches_every_criterion() {
        let spec = GroupSpec {
            location: Some("Hall 2".into()),
            driver: Some("pjlink".into()),
            ..GroupSpec::default()
        };
        assert!(spec.matches(&view("p1", "Hall 2", "pjlink")));
        assert!(!spec.matches(&view("p2", "Hall 2", "escvp21")));
        assert!(!spec.matches(&view("p3", "Hall 1", "pjlink")));
        let ids = GroupSpec {
            ids: vec!["p1".into()],
            ..GroupSpec::default()
        };
        assert!(ids.matches(&view("p1", "", "")) && !ids.matches(&view("p2", "", "")));
        let pattern = GroupSpec {
            pattern: Some("dev/+".into()),
            ..GroupSpec::default()
        };
        assert!(pattern.matches(&view("p9", "", "")));
    }

    #[test]
    fn empty_or_unreadable_selectors_are_refused() {
        assert!(GroupSpec::default()
            .check()
            .unwrap_err()
            .contains("at least one"));
        let bad = GroupSpec {
            pattern: Some("dev/#/x".into()),
            ..GroupSpec::default()
        };
        assert!(bad.check().unwrap_err().contains("pattern"));
        let bad = GroupSpec {
            ids: vec!["a/b+".into()],
            ..GroupSpec::default()
        };
        assert!(bad.check().unwrap_err().contains("a/b+"));
        assert!(valid_name("all-projectors") && !valid_name("a/b") && !valid_name(""));
        assert_eq!(shown("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(shown(&"x".repeat(100)).chars().count(), 65);
    }
}
