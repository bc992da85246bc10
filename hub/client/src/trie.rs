//! Subscription matching: a trie of pattern segments, shared by the hub
//! (which connections want a tag) and the client (which subscriptions do).
//!
//! Matching a tag walks one path per wildcard branch, so its cost grows with
//! the tag's depth, not with the number of subscriptions. Children are kept
//! in ordered maps: a campus's `dev` level has tens of thousands of them, and
//! a hash map there would rehash (milliseconds, under the hub lock) as it grows.

use std::collections::BTreeMap;

struct Node<T> {
    children: BTreeMap<Box<str>, Node<T>>,
    plus: Option<Box<Node<T>>>,
    /// Subscribers whose pattern ends here.
    here: Vec<T>,
    /// Subscribers whose pattern ends here with `/#` (or is `#` at the root).
    rest: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: BTreeMap::new(),
            plus: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

/// Subscription patterns of many subscribers (`T` names one: a connection,
/// a subscription).
pub struct PatternTrie<T> {
    root: Node<T>,
}

impl<T> Default for PatternTrie<T> {
    fn default() -> Self {
        PatternTrie {
            root: Node::default(),
        }
    }
}

impl<T: Copy + PartialEq> PatternTrie<T> {
    /// Adds `conn`'s subscription to a valid pattern; false if it already had it.
    pub fn insert(&mut self, pattern: &str, conn: T) -> bool {
        let mut node = &mut self.root;
        let mut list = None;
        for seg in pattern.split('/') {
            match seg {
                "#" => {
                    list = Some(&mut node.rest);
                    break;
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                s => {
                    // Look up before inserting: most segments exist, and a key costs an allocation.
                    if !node.children.contains_key(s) {
                        node.children.insert(s.into(), Node::default());
                    }
                    node = node.children.get_mut(s).expect("inserted above");
                }
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
    pub fn remove(&mut self, pattern: &str, conn: T) -> bool {
        let segs: Vec<&str> = pattern.split('/').collect();
        remove_at(&mut self.root, &segs, conn)
    }

    /// Appends every subscriber with a pattern matching `tag` to `out` (possibly with repeats).
    pub fn matches(&self, tag: &str, out: &mut Vec<T>) {
        walk(&self.root, tag, out);
    }

    /// Are there no patterns at all?
    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

fn walk<T: Copy>(node: &Node<T>, rest: &str, out: &mut Vec<T>) {
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

fn remove_from<T: PartialEq>(list: &mut Vec<T>, conn: T) -> bool {
    match list.iter().position(|c| *c == conn) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

fn remove_at<T: PartialEq + Copy>(node: &mut Node<T>, segs: &[&str], conn: T) -> bool {
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

    type ConnId = u64;

    fn matched(r: &PatternTrie<ConnId>, tag: &str) -> Vec<ConnId> {
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
        let mut r = PatternTrie::default();
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
