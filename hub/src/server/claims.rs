//! Who owns which part of the tag tree, now and while its owner is away.
//!
//! A *claim* is a live connection's exclusive ownership of a prefix: only it
//! publishes under the prefix and it receives the requests sent there. A
//! *reservation* keeps a prefix for one principal (a token, or in a hub
//! without tokens, a client name) while no connection of that principal
//! holds it: an agent token's `claims` list reserves its prefixes for good,
//! and a claim that ends leaves a reservation for `claim_grace_ms`. While a
//! prefix is reserved, nobody else may claim it, publish under it or receive
//! its requests, so a device whose agent is away cannot be impersonated.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ConnId;
use crate::config::{HubConfig, Role};
use crate::tag::is_under;

/// A prefix kept for a principal.
#[derive(Debug, Clone)]
struct Reservation {
    principal: Arc<str>,
    /// `None` for reservations from the configuration, which never expire.
    until: Option<Instant>,
}

impl Reservation {
    fn active(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

/// Who answers for a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A live connection's claim covers it.
    Conn(ConnId),
    /// Reserved for a principal with no connection holding it.
    Reserved(Arc<str>),
    /// Nobody: the tag is open.
    Nobody,
}

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Another connection's claim overlaps.
    Claimed(ConnId),
    /// Another principal's reservation overlaps.
    Reserved(Arc<str>),
}

/// Claims and reservations.
#[derive(Debug, Default)]
pub struct Claims {
    live: BTreeMap<String, ConnId>,
    reserved: BTreeMap<String, Reservation>,
}

/// The value under the longest prefix of `tag` (itself included) in `map`.
pub(crate) fn covering<'a, V>(map: &'a BTreeMap<String, V>, tag: &str) -> Option<&'a V> {
    if map.is_empty() {
        return None;
    }
    let mut end = tag.len();
    loop {
        if let Some(v) = map.get(&tag[..end]) {
            return Some(v);
        }
        end = tag[..end].rfind('/')?;
    }
}

/// Entries whose prefix is `prefix`, above it or below it.
pub(crate) fn overlapping<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    let mut above = Vec::new();
    let mut end = prefix.len();
    while let Some(i) = prefix[..end].rfind('/') {
        end = i;
        if let Some((k, v)) = map.get_key_value(&prefix[..end]) {
            above.push((k, v));
        }
    }
    let below = map
        .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
        .filter(move |(k, _)| is_under(k, prefix));
    above.into_iter().chain(below)
}

/// The principal a token stands for: its name, or its place in the list.
pub fn token_principal(cfg: &HubConfig, index: usize) -> Arc<str> {
    match &cfg.tokens[index].name {
        Some(n) => Arc::from(format!("token `{n}`")),
        None => Arc::from(format!("token tokens[{index}]")),
    }
}

impl Claims {
    /// The reservations an agent token's `claims` list makes.
    pub fn from_config(cfg: &HubConfig) -> Self {
        let mut claims = Claims::default();
        for (i, t) in cfg.tokens.iter().enumerate() {
            if t.role != Role::Agent {
                continue;
            }
            for prefix in &t.claims {
                claims.reserved.insert(
                    prefix.clone(),
                    Reservation {
                        principal: token_principal(cfg, i),
                        until: None,
                    },
                );
            }
        }
        claims
    }

    /// Replaces the reservations the configuration makes with `cfg`'s,
    /// keeping live claims and the grace periods of ended ones.
    pub fn reload_reservations(&mut self, cfg: &HubConfig) {
        self.reserved.retain(|_, r| r.until.is_some());
        let fresh = Claims::from_config(cfg);
        self.reserved.extend(fresh.reserved);
    }

    /// Are there any claims or reservations at all?
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.reserved.is_empty()
    }

    /// The live claims: prefix and the connection holding it.
    pub fn live(&self) -> impl Iterator<Item = (&str, ConnId)> + '_ {
        self.live.iter().map(|(p, c)| (p.as_str(), *c))
    }

    /// Who answers for `tag` now.
    pub fn owner(&self, tag: &str, now: Instant) -> Owner {
        if let Some(c) = covering(&self.live, tag) {
            return Owner::Conn(*c);
        }
        match covering(&self.reserved, tag) {
            Some(r) if r.active(now) => Owner::Reserved(r.principal.clone()),
            _ => Owner::Nobody,
        }
    }

    /// May a connection of `principal` (`conn`) publish under `tag`?
    pub fn may_publish(
        &self,
        tag: &str,
        conn: ConnId,
        principal: &str,
        now: Instant,
    ) -> Result<(), Owner> {
        match self.owner(tag, now) {
            Owner::Conn(c) if c != conn => Err(Owner::Conn(c)),
            Owner::Reserved(p) if *p != *principal => Err(Owner::Reserved(p)),
            _ => Ok(()),
        }
    }

    /// Claims `prefix` for `conn`; true if it is new for this connection.
    pub fn claim(
        &mut self,
        prefix: &str,
        conn: ConnId,
        principal: &str,
        now: Instant,
    ) -> Result<bool, Conflict> {
        if let Some((_, other)) = overlapping(&self.live, prefix).find(|(_, c)| **c != conn) {
            return Err(Conflict::Claimed(*other));
        }
        if let Some((_, r)) = overlapping(&self.reserved, prefix)
            .find(|(_, r)| r.active(now) && *r.principal != *principal)
        {
            return Err(Conflict::Reserved(r.principal.clone()));
        }
        if self.reserved.get(prefix).is_some_and(|r| r.until.is_some()) {
            self.reserved.remove(prefix);
        }
        Ok(self.live.insert(prefix.to_owned(), conn).is_none())
    }

    /// Ends `conn`'s claim on `prefix`, keeping it for `principal` for `grace`
    /// unless the configuration already reserves it for them.
    pub fn release(
        &mut self,
        prefix: &str,
        conn: ConnId,
        principal: &Arc<str>,
        now: Instant,
        grace: Duration,
    ) {
        if self.live.get(prefix) != Some(&conn) {
            return;
        }
        self.live.remove(prefix);
        self.reserved.retain(|_, r| r.active(now));
        let kept = covering(&self.reserved, prefix).is_some_and(|r| r.principal == *principal);
        if !kept && !grace.is_zero() {
            self.reserved.insert(
                prefix.to_owned(),
                Reservation {
                    principal: principal.clone(),
                    until: Some(now + grace),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn a_claim_leaves_a_reservation_that_expires() {
        let now = Instant::now();
        let a: Arc<str> = Arc::from("a");
        let mut c = Claims::default();
        assert_eq!(c.claim("dev/p1", 1, "a", now), Ok(true));
        assert_eq!(c.owner("dev/p1/state", now), Owner::Conn(1));
        assert_eq!(
            c.claim("dev", 2, "b", now),
            Err(Conflict::Claimed(1)),
            "an ancestor overlaps"
        );
        c.release("dev/p1", 1, &a, now, GRACE);
        assert_eq!(c.owner("dev/p1/state", now), Owner::Reserved(a.clone()));
        assert_eq!(
            c.may_publish("dev/p1/state", 2, "b", now),
            Err(Owner::Reserved(a.clone()))
        );
        assert_eq!(
            c.claim("dev/p1/x", 2, "b", now),
            Err(Conflict::Reserved(a.clone()))
        );
        // The same principal comes back on another connection.
        assert_eq!(c.claim("dev/p1", 3, "a", now), Ok(true));
        c.release("dev/p1", 3, &a, now, GRACE);
        let later = now + GRACE + Duration::from_millis(1);
        assert_eq!(c.owner("dev/p1/state", later), Owner::Nobody);
        assert_eq!(c.claim("dev/p1", 2, "b", later), Ok(true));
    }

    #[test]
    fn configured_reservations_never_expire() {
        let cfg = HubConfig::from_toml(
            "[[tokens]]\nname = \"rack-a\"\ntoken = \"agent-secret\"\nrole = \"agent\"\nclaims = [\"dev/p1\"]\n",
            "t.toml",
        )
        .unwrap();
        let mut c = Claims::from_config(&cfg);
        let far = Instant::now() + Duration::from_secs(1_000_000);
        let owner = token_principal(&cfg, 0);
        assert_eq!(&*owner, "token `rack-a`");
        assert_eq!(c.owner("dev/p1/set", far), Owner::Reserved(owner.clone()));
        assert_eq!(
            c.claim("dev", 9, "token `other`", far),
            Err(Conflict::Reserved(owner.clone()))
        );
        assert_eq!(c.claim("dev/p1", 9, &owner, far), Ok(true));
        c.release("dev/p1", 9, &owner, far, GRACE);
        assert_eq!(c.owner("dev/p1/set", far), Owner::Reserved(owner));
        assert_eq!(c.owner("dev/p2/set", far), Owner::Nobody);
    }
}
