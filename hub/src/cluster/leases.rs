//! Claims as leases: who owns which prefix cluster-wide, as the leases
//! bucket says, mirrored in memory so a claim is checked at once.
//!
//! A lease is a key (the claimed prefix) whose value names the hub, the
//! agent's principal and its name. Its hub refreshes it (compare-and-set)
//! every third of the lease time. NATS 2.9 has no per-key expiry, so a
//! lease is taken for dead when its revision has not changed for a whole
//! lease time on this hub's clock (clocks of different machines are never
//! compared).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::server::claims::{covering, overlapping};

/// A lease's value in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The hub that holds it (its instance id).
    pub hub: String,
    /// The principal of the agent that claimed (its token's name, or its client name).
    pub principal: String,
    /// The agent's client name.
    pub agent: String,
}

/// A lease as this hub knows it.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Its value.
    pub value: LeaseValue,
    /// Its revision in the bucket (for compare-and-set).
    pub revision: u64,
    /// When this hub last saw it change.
    pub seen: Instant,
}

/// The leases of the cluster, as last seen.
pub struct Mirror {
    me: String,
    lifetime: Duration,
    map: Mutex<BTreeMap<String, Lease>>,
}

impl Mirror {
    /// An empty mirror for hub `me`.
    pub fn new(me: String, lifetime: Duration) -> Self {
        Mirror {
            me,
            lifetime,
            map: Mutex::new(BTreeMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Lease>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many leases there are.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Takes a change from the bucket (`None`: deleted).
    pub fn update(&self, prefix: &str, value: Option<LeaseValue>, revision: u64) {
        let mut map = self.map();
        match value {
            Some(value) => {
                // The same revision again (a watch made anew) is no sign of life.
                let seen = match map.get(prefix) {
                    Some(l) if l.revision == revision => l.seen,
                    _ => Instant::now(),
                };
                map.insert(
                    prefix.to_owned(),
                    Lease {
                        value,
                        revision,
                        seen,
                    },
                );
            }
            None => {
                map.remove(prefix);
            }
        }
    }

    /// Gives every lease a whole lifetime from now: called when this hub
    /// gets the cluster back, since it could not see refreshes meanwhile.
    pub fn touch_all(&self) {
        let now = Instant::now();
        for l in self.map().values_mut() {
            l.seen = now;
        }
    }

    /// The lease on exactly `prefix`.
    pub fn get(&self, prefix: &str) -> Option<Lease> {
        self.map().get(prefix).cloned()
    }

    /// Every lease.
    pub fn all(&self) -> Vec<(String, Lease)> {
        self.map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether a lease is alive at `now` (its hub refreshed it lately).
    pub fn alive(&self, lease: &Lease, now: Instant) -> bool {
        lease.value.hub == self.me || now.duration_since(lease.seen) < self.lifetime
    }

    /// Why `prefix` may not be claimed here: a live lease on another hub
    /// overlaps it (whoever holds it: an agent that moved here from a hub
    /// that died claims again once that hub's lease has expired).
    pub fn conflict(&self, prefix: &str, now: Instant) -> Option<String> {
        overlapping(&self.map(), prefix)
            .find(|(_, l)| l.value.hub != self.me && self.alive(l, now))
            .map(|(p, l)| {
                format!(
                    "`{prefix}` overlaps `{p}`, claimed by `{}` on another hub of the cluster",
                    l.value.agent
                )
            })
    }

    /// Whether a live lease on another hub covers `tag` (its requests go to that hub).
    pub fn remote_owner(&self, tag: &str, now: Instant) -> bool {
        // The longest claimed prefix decides, as for claims on one hub.
        covering(&self.map(), tag).is_some_and(|l| l.value.hub != self.me && self.alive(l, now))
    }

    /// Whether this hub holds the lease on exactly `prefix`.
    pub fn held_here(&self, prefix: &str) -> bool {
        self.map()
            .get(prefix)
            .is_some_and(|l| l.value.hub == self.me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(hub: &str, principal: &str) -> Option<LeaseValue> {
        Some(LeaseValue {
            hub: hub.into(),
            principal: principal.into(),
            agent: format!("{principal}-agent"),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn leases_conflict_until_they_expire() {
        let m = Mirror::new("me".into(), Duration::from_secs(6));
        m.update("dev/p1", value("other", "rack-a"), 1);
        let now = Instant::now();
        let e = m.conflict("dev/p1", now).unwrap();
        assert!(
            e.contains("claimed by `rack-a-agent` on another hub"),
            "{e}"
        );
        assert!(m.conflict("dev", now).is_some(), "above it");
        assert!(m.conflict("dev/p1/x", now).is_some(), "below it");
        assert!(m.conflict("dev/p2", now).is_none());
        assert!(m.remote_owner("dev/p1/set", now));
        assert!(!m.remote_owner("dev/p2/set", now));
        tokio::time::advance(Duration::from_secs(4)).await;
        m.update("dev/p1", value("other", "rack-a"), 1);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            m.conflict("dev/p1", Instant::now()).is_none(),
            "the same revision seen again is not a refresh: expired"
        );
        m.touch_all();
        assert!(
            m.conflict("dev/p1", Instant::now()).is_some(),
            "back in the cluster: a whole lifetime again"
        );
        tokio::time::advance(Duration::from_secs(7)).await;
        m.update("dev/p1", value("other", "rack-a"), 2);
        assert!(m.conflict("dev/p1", Instant::now()).is_some(), "refreshed");
        m.update("dev/p1", value("me", "rack-a"), 3);
        assert!(m.conflict("dev/p1", Instant::now()).is_none(), "ours");
        assert!(m.held_here("dev/p1"));
        m.update("dev/p1", None, 4);
        assert!(m.is_empty());
    }
}
