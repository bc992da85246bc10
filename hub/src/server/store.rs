//! The retained store: the latest value of every retained tag, in a trie of
//! tag segments.
//!
//! Each entry keeps the encoded `msg` frame itself, so a snapshot or a
//! lagging subscriber shares the store's bytes instead of copying them.
//!
//! Snapshots walk the trie against a [`Query`] (the subscription's patterns,
//! compiled into a trie of their own), so a walk visits only the branches
//! the patterns can match: its cost follows what it returns, not the size of
//! the store. Walks are resumable: [`Store::walk`] stops when its work budget
//! is spent and leaves a [`Cursor`] (the path of the last node it processed,
//! in pre-order with children in key order), so the hub can stream a snapshot
//! of any size in short lock holds while the store keeps changing.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

/// One retained value.
#[derive(Clone)]
pub struct Retained {
    /// The tag, shared by every queued copy of the value.
    pub tag: Arc<str>,
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

#[derive(Default)]
struct Node {
    value: Option<Retained>,
    children: BTreeMap<Box<str>, Box<Node>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.value.is_none() && self.children.is_empty()
    }
}

/// Latest value per retained tag.
#[derive(Default)]
pub struct Store {
    root: Node,
    count: usize,
}

impl Store {
    fn node(&self, tag: &str) -> Option<&Node> {
        let mut node = &self.root;
        for seg in tag.split('/') {
            node = node.children.get(seg)?;
        }
        Some(node)
    }

    /// The shared tag of `tag`'s current value, or a new one.
    pub fn key(&self, tag: &str) -> Arc<str> {
        match self.get(tag) {
            Some(r) => r.tag.clone(),
            None => Arc::from(tag),
        }
    }

    /// Sets the value of `value.tag`; returns the value it replaced.
    pub fn set(&mut self, value: Retained) -> Option<Retained> {
        let mut node = &mut self.root;
        for seg in value.tag.split('/') {
            if !node.children.contains_key(seg) {
                node.children.insert(seg.into(), Box::default());
            }
            node = node.children.get_mut(seg).expect("inserted above");
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.count += 1;
        }
        old
    }

    /// Deletes the value of `tag`, pruning branches left empty; returns it.
    pub fn remove(&mut self, tag: &str) -> Option<Retained> {
        let segs: Vec<&str> = tag.split('/').collect();
        let old = remove_at(&mut self.root, &segs);
        if old.is_some() {
            self.count -= 1;
        }
        old
    }

    /// The value of `tag`.
    pub fn get(&self, tag: &str) -> Option<&Retained> {
        self.node(tag)?.value.as_ref()
    }

    /// Number of retained tags.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The segments directly below `prefix` in key order, starting after
    /// `after`, each with its child segments' values; at most `limit`.
    /// This is how the device list pages through `dev/<id>` without a scan.
    pub fn children_after<'a>(
        &'a self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(&'a str, Vec<(&'a str, &'a Retained)>)> {
        let Some(node) = self.node(prefix) else {
            return Vec::new();
        };
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        node.children
            .range::<str, _>((lower, Bound::Unbounded))
            .take(limit)
            .map(|(k, child)| {
                let values = child
                    .children
                    .iter()
                    .filter_map(|(part, n)| Some((&**part, n.value.as_ref()?)))
                    .collect();
                (&**k, values)
            })
            .collect()
    }

    /// Continues the walk of `query` from `cursor`, calling `emit` for each
    /// matching value; each visited node costs its number of live pattern
    /// states and `emit` returns the cost of what it did. Returns true when
    /// the walk is complete, false when `budget` ran out first.
    pub fn walk<F: FnMut(&Retained) -> usize>(
        &self,
        query: &Query,
        cursor: &mut Cursor,
        budget: usize,
        emit: F,
    ) -> bool {
        if cursor.done {
            return true;
        }
        let mut w = Walker {
            budget: budget as isize,
            emit,
            stack: vec![&query.root],
            path: Vec::new(),
            paused: None,
        };
        let resume = cursor.path.take();
        let finished = w.visit(&self.root, 0, 1, resume.as_deref());
        if finished {
            cursor.done = true;
        } else {
            cursor.path = w.paused.take();
        }
        finished
    }
}

fn remove_at(node: &mut Node, segs: &[&str]) -> Option<Retained> {
    let Some((seg, rest)) = segs.split_first() else {
        return node.value.take();
    };
    let child = node.children.get_mut(*seg)?;
    let old = remove_at(child, rest);
    if child.is_empty() {
        node.children.remove(*seg);
    }
    old
}

/// One step of the compiled patterns: where a pattern can go from here.
#[derive(Default)]
struct PNode {
    lits: BTreeMap<Box<str>, PNode>,
    plus: Option<Box<PNode>>,
    /// A pattern ends here.
    end: bool,
    /// A pattern's `#` stands here: this level and everything below match.
    hash: bool,
}

/// Subscription patterns compiled for walking the store.
pub struct Query {
    root: PNode,
}

impl Query {
    /// Compiles valid patterns.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        let mut root = PNode::default();
        for p in patterns {
            let mut node = &mut root;
            let mut hashed = false;
            for seg in p.as_ref().split('/') {
                match seg {
                    "#" => {
                        node.hash = true;
                        hashed = true;
                        break;
                    }
                    "+" => node = node.plus.get_or_insert_with(Default::default),
                    s => node = node.lits.entry(s.into()).or_default(),
                }
            }
            if !hashed {
                node.end = true;
            }
        }
        Query { root }
    }
}

/// Where a walk stopped: nothing yet, a path, or the end.
#[derive(Debug, Default, Clone)]
pub struct Cursor {
    path: Option<Vec<Box<str>>>,
    done: bool,
}

impl Cursor {
    /// Has the walk finished?
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// Matches everything: the state after a `#`.
static ALL: PNode = PNode {
    lits: BTreeMap::new(),
    plus: None,
    end: true,
    hash: true,
};

struct Walker<'s, 'q, F> {
    budget: isize,
    emit: F,
    /// Live pattern states; each level's states are a range of it.
    stack: Vec<&'q PNode>,
    path: Vec<&'s str>,
    paused: Option<Vec<Box<str>>>,
}

impl<'s, 'q, F: FnMut(&Retained) -> usize> Walker<'s, 'q, F> {
    /// Visits `node`, whose live pattern states are `stack[from..to]`.
    /// `resume` is `None` for a node not processed yet, or the rest of the
    /// cursor's path below a node that was. False means paused.
    fn visit(
        &mut self,
        node: &'s Node,
        from: usize,
        to: usize,
        resume: Option<&[Box<str>]>,
    ) -> bool {
        let states = to - from;
        let all = self.stack[from..to].iter().any(|p| p.hash);
        if resume.is_none() {
            let here = self.stack[from..to].iter().any(|p| p.end || p.hash);
            if here {
                if let Some(v) = &node.value {
                    self.budget -= (self.emit)(v) as isize;
                }
            }
            self.budget -= states as isize;
            if self.budget <= 0 {
                self.paused = Some(self.path.iter().map(|s| Box::from(*s)).collect());
                return false;
            }
        }
        let (lower, next) = match resume {
            Some([first, rest @ ..]) => (Bound::Included(&**first), Some((&**first, rest))),
            _ => (Bound::Unbounded, None),
        };
        let child_resume = |key: &str| match next {
            Some((first, rest)) if first == key => Some(rest),
            _ => None,
        };
        if all {
            self.stack.push(&ALL);
            for (key, child) in node.children.range::<str, _>((lower, Bound::Unbounded)) {
                if !self.descend(key, child, to, to + 1, child_resume(key)) {
                    return false;
                }
            }
            self.stack.truncate(to);
            return true;
        }
        let plus = self.stack[from..to].iter().any(|p| p.plus.is_some());
        if plus {
            for (key, child) in node.children.range::<str, _>((lower, Bound::Unbounded)) {
                for i in from..to {
                    let p = self.stack[i];
                    if let Some(l) = p.lits.get(&**key) {
                        self.stack.push(l);
                    }
                    if let Some(q) = p.plus.as_deref() {
                        self.stack.push(q);
                    }
                }
                let end = self.stack.len();
                if end > to && !self.descend(key, child, to, end, child_resume(key)) {
                    return false;
                }
                self.stack.truncate(to);
            }
            return true;
        }
        // Only literal segments follow: look them up instead of scanning.
        let mut keys: Vec<&'q str> = Vec::new();
        for i in from..to {
            let p = self.stack[i];
            keys.extend(
                p.lits
                    .range::<str, _>((lower, Bound::Unbounded))
                    .map(|(k, _)| &**k),
            );
        }
        if states > 1 {
            keys.sort_unstable();
            keys.dedup();
        }
        for key in keys {
            let Some((key, child)) = node.children.get_key_value(key) else {
                continue;
            };
            let key: &'s str = key;
            for i in from..to {
                if let Some(l) = self.stack[i].lits.get(key) {
                    self.stack.push(l);
                }
            }
            let end = self.stack.len();
            if !self.descend(key, child, to, end, child_resume(key)) {
                return false;
            }
            self.stack.truncate(to);
        }
        true
    }

    fn descend(
        &mut self,
        key: &'s str,
        child: &'s Node,
        from: usize,
        to: usize,
        resume: Option<&[Box<str>]>,
    ) -> bool {
        self.path.push(key);
        let ok = self.visit(child, from, to, resume);
        self.path.pop();
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(tag: &str, seq: u64) -> Retained {
        Retained {
            tag: Arc::from(tag),
            seq,
            frame: Bytes::from(format!("{tag}\n")),
            time_ms: 0,
            body: 0..0,
        }
    }

    fn store(tags: &[&str]) -> Store {
        let mut s = Store::default();
        for (i, t) in tags.iter().enumerate() {
            s.set(value(t, i as u64 + 1));
        }
        s
    }

    /// Every tag a full walk emits, with the given budget per step.
    fn walk_all(s: &Store, patterns: &[&str], budget: usize) -> (Vec<String>, usize) {
        let q = Query::new(patterns);
        let mut cursor = Cursor::default();
        let mut out = Vec::new();
        let mut steps = 0;
        loop {
            steps += 1;
            let done = s.walk(&q, &mut cursor, budget, |r| {
                out.push(r.tag.to_string());
                1
            });
            if done {
                return (out, steps);
            }
        }
    }

    const TAGS: &[&str] = &[
        "123",
        "dev",
        "dev/p1",
        "dev/p1/state",
        "dev/p1/meta",
        "dev/p2/state",
        "dev/p2/online",
        "dev/p10/state",
        "x/y/z",
        "456",
        "a/b/c/d",
    ];

    #[test]
    fn walks_agree_with_pattern_matching_at_every_budget() {
        let s = store(TAGS);
        let pattern_sets: &[&[&str]] = &[
            &["#"],
            &["dev/#"],
            &["dev/+/state"],
            &["dev/+/state", "dev/p1/#", "123"],
            &["+"],
            &["+/+/+"],
            &["dev/p1/state", "dev/p2/online", "dev/p9/state"],
            &["dev/+", "+/p1/meta", "x/#", "a/+/c/+"],
            &["nothing/here"],
        ];
        for patterns in pattern_sets {
            let mut want: Vec<String> = TAGS
                .iter()
                .filter(|t| patterns.iter().any(|p| crate::tag::matches(p, t)))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            for budget in [1, 2, 3, 5, 1000] {
                let (mut got, _) = walk_all(&s, patterns, budget);
                let n = got.len();
                got.sort();
                got.dedup();
                assert_eq!(got.len(), n, "duplicates for {patterns:?} at {budget}");
                assert_eq!(got, want, "{patterns:?} at budget {budget}");
            }
        }
    }

    #[test]
    fn small_budgets_take_many_steps() {
        let tags: Vec<String> = (0..100).map(|i| format!("dev/d{i:03}/state")).collect();
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        let s = store(&refs);
        let (got, steps) = walk_all(&s, &["dev/+/state"], 10);
        assert_eq!(got.len(), 100);
        assert!(steps > 20, "{steps}");
        let (_, steps) = walk_all(&s, &["dev/+/state"], 100_000);
        assert_eq!(steps, 1);
    }

    #[test]
    fn a_walk_survives_changes_between_steps() {
        let mut s = store(&["dev/a/state", "dev/b/state", "dev/c/state", "dev/d/state"]);
        let q = Query::new(&["dev/+/state"]);
        let mut cursor = Cursor::default();
        let mut seen = Vec::new();
        // Budget for the root, `dev`, and one device.
        assert!(!s.walk(&q, &mut cursor, 4, |r| {
            seen.push(r.tag.to_string());
            1
        }));
        assert_eq!(seen, ["dev/a/state"]);
        // The node the cursor points into disappears; a new one appears behind and ahead.
        s.remove("dev/a/state");
        s.set(value("dev/0/state", 9));
        s.set(value("dev/e/state", 10));
        while !s.walk(&q, &mut cursor, 4, |r| {
            seen.push(r.tag.to_string());
            1
        }) {}
        assert_eq!(
            seen,
            [
                "dev/a/state",
                "dev/b/state",
                "dev/c/state",
                "dev/d/state",
                "dev/e/state"
            ]
        );
    }

    #[test]
    fn remove_prunes_and_counts() {
        let mut s = store(&["a/b/c", "a/b", "a/x"]);
        assert_eq!(s.count(), 3);
        assert!(s.remove("a/b/c").is_some());
        assert!(s.remove("a/b/c").is_none());
        assert!(s.get("a/b").is_some());
        s.remove("a/b");
        s.remove("a/x");
        assert_eq!(s.count(), 0);
        assert!(s.root.is_empty());
    }

    #[test]
    fn children_pages_in_order() {
        let s = store(&["dev/b/meta", "dev/a/meta", "dev/a/state", "dev/c/online"]);
        let page = s.children_after("dev", None, 2);
        let ids: Vec<&str> = page.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(page[0].1.len(), 2);
        let page = s.children_after("dev", Some("b"), 2);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].0, "c");
    }
}
