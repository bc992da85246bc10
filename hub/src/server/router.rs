//! Subscription matching: a trie of pattern segments.
//!
//! Matching a tag walks one path per wildcard branch, so its cost grows with
//! the tag's depth, not with the number of subscriptions.

use std::collections::HashMap;

use super::ConnId;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Subscribers whose pattern ends here.
    here: Vec<ConnId>,
    /// Subscribers whose pattern ends here with `/#` (or is `#` at the root).
    rest: Vec<ConnId>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

/// Every connection's subscription patterns.
#[derive(Default)]
pub struct Router {
    root: Node,
}

impl Router {
    /// Adds `conn`'s subscription to a valid pattern; false if it already had it.
    pub fn insert(&mut self, pattern: &str, conn: ConnId) -> bool {
        let mut node = &mut self.root;
        let mut list = None;
        for seg in pattern.split('/') {
            match seg {
                "#" => {
                    list = Some(&mut node.rest);
                    break;
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                s => node = node.children.entry(s.into()).or_default(),
            }
        }
        let list = list.unwrap_or(&mut node.here);
        if list.contains(&conn) {
            return false;
        }
        list.push(conn);
        true
    }

    /// Removes `conn`'s subscription to `pattern`; false if it had none.
    pub fn remove(&mut self, pattern: &str, conn: ConnId) -> bool {
        let segs: Vec<&str> = pattern.split('/').collect();
        remove_at(&mut self.root, &segs, conn)
    }

    /// Appends every connection with a pattern matching `tag` to `out` (possibly with repeats).
    pub fn matches(&self, tag: &str, out: &mut Vec<ConnId>) {
        walk(&self.root, tag, out);
    }
}

fn walk(node: &Node, rest: &str, out: &mut Vec<ConnId>) {
    out.extend_from_slice(&node.rest);
    if rest.is_empty() {
        out.extend_from_slice(&node.here);
        return;
    }
    let (seg, tail) = match rest.split_once('/') {
        Some((s, t)) => (s, t),
        None => (rest, ""),
    };
    if let Some(child) = node.children.get(seg) {
        walk(child, tail, out);
    }
    if let Some(plus) = &node.plus {
        walk(plus, tail, out);
    }
}

fn remove_from(list: &mut Vec<ConnId>, conn: ConnId) -> bool {
    match list.iter().position(|c| *c == conn) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

fn remove_at(node: &mut Node, segs: &[&str], conn: ConnId) -> bool {
    let Some((seg, tail)) = segs.split_first() else {
        return remove_from(&mut node.here, conn);
    };
    match *seg {
        "#" => remove_from(&mut node.rest, conn),
        "+" => {
            let Some(plus) = node.plus.as_mut() else {
                return false;
            };
            let removed = remove_at(plus, tail, conn);
            if plus.is_empty() {
                node.plus = None;
            }
            removed
        }
        s => {
            let Some(child) = node.children.get_mut(s) else {
                return false;
            };
            let removed = remove_at(child, tail, conn);
            if child.is_empty() {
                node.children.remove(s);
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(r: &Router, tag: &str) -> Vec<ConnId> {
        let mut out = Vec::new();
        r.matches(tag, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn trie_agrees_with_pattern_matching() {
        let patterns = [
            "123",
            "dev/+/state",
            "dev/#",
            "#",
            "+",
            "dev/p1/state",
            "+/+/+",
        ];
        let tags = [
            "123",
            "dev",
            "dev/p1",
            "dev/p1/state",
            "dev/p2/meta",
            "x/y/z",
            "456",
        ];
        let mut r = Router::default();
        for (i, p) in patterns.iter().enumerate() {
            assert!(r.insert(p, i as ConnId));
            assert!(!r.insert(p, i as ConnId));
        }
        for t in tags {
            let want: Vec<ConnId> = (0..patterns.len() as ConnId)
                .filter(|&i| crate::tag::matches(patterns[i as usize], t))
                .collect();
            assert_eq!(matched(&r, t), want, "tag {t}");
        }
        for (i, p) in patterns.iter().enumerate() {
            assert!(r.remove(p, i as ConnId));
            assert!(!r.remove(p, i as ConnId));
        }
        assert!(r.root.is_empty());
    }
}
