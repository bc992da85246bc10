//! The retained store: the latest value of every retained tag.
//!
//! Each entry keeps the encoded `msg` frame itself, so a snapshot or a
//! lagging subscriber shares the store's bytes instead of copying them.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

/// One retained value.
#[derive(Clone)]
pub struct Retained {
    /// The seq it was routed with.
    pub seq: u64,
    /// The encoded `msg` frame, newline included.
    pub frame: Bytes,
    /// When it was published, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Where the body sits in `frame`.
    pub body: std::ops::Range<usize>,
}

impl Retained {
    /// The body as raw JSON text.
    pub fn body(&self) -> &str {
        // The range was taken from the frame's own encoding, which is UTF-8.
        std::str::from_utf8(&self.frame[self.body.clone()]).unwrap_or("null")
    }
}

/// Latest value per retained tag.
#[derive(Default)]
pub struct Store {
    map: HashMap<Arc<str>, Retained>,
}

impl Store {
    /// The shared key for `tag`, reusing the stored one when present.
    pub fn key(&self, tag: &str) -> Arc<str> {
        match self.map.get_key_value(tag) {
            Some((k, _)) => k.clone(),
            None => Arc::from(tag),
        }
    }

    /// Sets the value of `tag`.
    pub fn set(&mut self, tag: Arc<str>, value: Retained) {
        self.map.insert(tag, value);
    }

    /// Deletes the value of `tag`.
    pub fn remove(&mut self, tag: &str) {
        self.map.remove(tag);
    }

    /// The value of `tag`.
    pub fn get(&self, tag: &str) -> Option<&Retained> {
        self.map.get(tag)
    }

    /// Number of retained tags.
    pub fn count(&self) -> usize {
        self.map.len()
    }

    /// Every entry whose tag matches one of `patterns`, in no particular order.
    pub fn matching_unordered<'a>(
        &'a self,
        patterns: &[String],
    ) -> Vec<(&'a Arc<str>, &'a Retained)> {
        self.map
            .iter()
            .filter(|(tag, _)| patterns.iter().any(|p| crate::tag::matches(p, tag)))
            .collect()
    }

    /// Every entry whose tag matches one of `patterns`, in seq order.
    pub fn matching<'a>(&'a self, patterns: &[String]) -> Vec<(&'a Arc<str>, &'a Retained)> {
        let mut out = self.matching_unordered(patterns);
        out.sort_unstable_by_key(|(_, r)| r.seq);
        out
    }
}
