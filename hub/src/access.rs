//! Per-token access rules, beyond the role: which tags a token may read and
//! which it may write (publish, request, claim, command), with `deny`
//! winning over both, as NATS and mosquitto have them.
//!
//! A rule is a tag pattern (`+` one segment, `#` the rest) in which a
//! segment may also end with `*` to match every segment starting with what
//! comes before it (`dev/lt-*` matches `dev/lt-1` and `dev/lt-hall`). A rule
//! covers the subtree below what it matches: `dev/lt-*` also covers
//! `dev/lt-1/state`.

use std::sync::Arc;

use crate::config::TokenConfig;

/// One token's rules; a token without any has none (everything its role allows).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    read: Vec<String>,
    write: Vec<String>,
    deny: Vec<String>,
}

/// Whether `rule` matches `tag` or one of its ancestors.
pub fn covers(rule: &str, tag: &str) -> bool {
    let mut tag_segs = tag.split('/');
    for r in rule.split('/') {
        if r == "#" {
            return true;
        }
        let Some(t) = tag_segs.next() else {
            return false;
        };
        let ok = match r.strip_suffix('*') {
            _ if r == "+" => true,
            Some(prefix) => t.starts_with(prefix),
            None => r == t,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Refuses a rule that is not a pattern: empty segments, `#` not last,
/// `+`, `#` or `*` inside a segment.
pub fn check_rule(rule: &str) -> Result<(), String> {
    let segs: Vec<&str> = rule.split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        let bad = s.is_empty()
            || (s.contains('#') && (*s != "#" || i + 1 != segs.len()))
            || (s.contains('+') && *s != "+")
            || s.trim_end_matches('*').contains('*');
        if bad {
            return Err(format!(
                "`{rule}` is not a rule: segments are text, `+`, `#` (last), or text ending in `*`"
            ));
        }
    }
    Ok(())
}

impl Access {
    /// The rules of `token`, or `None` when it has none.
    pub fn of(token: &TokenConfig) -> Option<Arc<Access>> {
        let a = Access {
            read: token.read.clone(),
            write: token.write.clone(),
            deny: token.deny.clone(),
        };
        (a != Access::default()).then(|| Arc::new(a))
    }

    fn allowed(&self, list: &[String], tag: &str) -> bool {
        !self.deny.iter().any(|d| covers(d, tag))
            && (list.is_empty() || list.iter().any(|r| covers(r, tag)))
    }

    /// May the token receive messages on `tag`? An alert
    /// (`alert/<rule>/<device>`) also needs its device to be readable.
    pub fn may_read(&self, tag: &str) -> bool {
        let device = tag
            .strip_prefix("alert/")
            .and_then(|r| r.split('/').nth(1))
            .map(|d| format!("dev/{d}"));
        self.allowed(&self.read, tag) && device.is_none_or(|d| self.allowed(&self.read, &d))
    }

    /// May the token publish, request or command on `tag`?
    pub fn may_write(&self, tag: &str) -> bool {
        self.allowed(&self.write, tag)
    }

    /// May it claim `prefix`: write every tag below it. Only a prefix some
    /// write rule covers whole, and no deny rule reaches into, qualifies.
    pub fn may_claim(&self, prefix: &str) -> bool {
        let deny_inside = self
            .deny
            .iter()
            .any(|d| covers(d, prefix) || covers_some_below(d, prefix));
        !deny_inside && (self.write.is_empty() || self.write.iter().any(|w| covers(w, prefix)))
    }
}

/// Whether `rule` can match a tag strictly below `prefix`.
fn covers_some_below(rule: &str, prefix: &str) -> bool {
    let r: Vec<&str> = rule.split('/').collect();
    let p: Vec<&str> = prefix.split('/').collect();
    for (i, seg) in p.iter().enumerate() {
        match r.get(i) {
            None => return false,
            Some(&"#") => return true,
            Some(&"+") => {}
            Some(x) => match x.strip_suffix('*') {
                Some(pre) if seg.starts_with(pre) => {}
                None if x == seg => {}
                _ => return false,
            },
        }
    }
    r.len() > p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(read: &[&str], write: &[&str], deny: &[&str]) -> Access {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Access {
            read: v(read),
            write: v(write),
            deny: v(deny),
        }
    }

    #[test]
    fn rules_cover_subtrees_with_segment_prefixes() {
        assert!(covers("dev/lt-*", "dev/lt-1"));
        assert!(covers("dev/lt-*", "dev/lt-1/state"));
        assert!(covers("dev/lt-*", "dev/lt-"));
        assert!(!covers("dev/lt-*", "dev/hall-1/state"));
        assert!(!covers("dev/lt-*", "dev"));
        assert!(covers("dev/+/state", "dev/p1/state"));
        assert!(!covers("dev/+/state", "dev/p1/meta"));
        assert!(covers("#", "anything/at/all"));
        assert!(covers("dev/#", "dev"));
    }

    #[test]
    fn deny_wins_and_empty_lists_allow_everything() {
        let a = access(&["dev/lt-*", "hub/#"], &["dev/lt-*"], &["dev/lt-9"]);
        assert!(a.may_read("dev/lt-1/state"));
        assert!(a.may_read("hub/scenes/x/spec"));
        let alerts = access(&["dev/lt-*", "alert/#"], &[], &["dev/lt-9"]);
        assert!(alerts.may_read("alert/lamp/lt-1"));
        assert!(!alerts.may_read("alert/lamp/lt-9"), "about a denied device");
        assert!(
            !alerts.may_read("alert/lamp/hall-1"),
            "about a device it may not read"
        );
        assert!(!a.may_read("dev/hall-1/state"));
        assert!(!a.may_read("dev/lt-9/state"));
        assert!(a.may_write("dev/lt-1/set"));
        assert!(!a.may_write("dev/lt-9/set"));
        assert!(!a.may_write("hub/x"));
        let open = access(&[], &[], &["dev/secret"]);
        assert!(open.may_read("dev/other"));
        assert!(!open.may_write("dev/secret/set"));
    }

    #[test]
    fn claims_need_the_whole_subtree() {
        let a = access(&[], &["dev/lt-*"], &["dev/lt-1/service"]);
        assert!(a.may_claim("dev/lt-2"));
        assert!(!a.may_claim("dev/lt-1"), "a deny rule reaches inside");
        assert!(!a.may_claim("dev"), "broader than the write rule");
    }

    #[test]
    fn malformed_rules_are_refused() {
        for bad in ["", "dev//x", "dev/#/x", "dev/a+", "dev/*x", "dev/a*b*"] {
            assert!(check_rule(bad).is_err(), "{bad}");
        }
        for good in ["dev/lt-*", "dev/+/state", "#", "dev/*"] {
            assert!(check_rule(good).is_ok(), "{good}");
        }
    }
}
