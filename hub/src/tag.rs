//! Tags and tag patterns.
//!
//! A tag is a `/`-separated path such as `dev/proj-1/state` (a single segment
//! like `123` is a valid tag). A pattern may use `+` for exactly one segment
//! and `#`, as its last segment only, for that level and everything below it,
//! the same syntax as MQTT topic filters so a bridge maps one to one.

use thiserror::Error;

/// Longest tag or pattern accepted, in bytes.
pub const MAX_TAG_BYTES: usize = 1024;

/// Why a tag or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagError {
    /// The tag or pattern is the empty string.
    #[error("tag is empty")]
    Empty,
    /// The tag or pattern is longer than [`MAX_TAG_BYTES`].
    #[error("tag is {0} bytes long; the limit is {MAX_TAG_BYTES}")]
    TooLong(usize),
    /// Two slashes in a row, or a leading or trailing slash.
    #[error("tag `{0}` has an empty segment")]
    EmptySegment(String),
    /// A control character (below U+0020) appears in the tag.
    #[error("tag `{0}` contains a control character")]
    ControlChar(String),
    /// A wildcard appears in a tag that is published or requested.
    #[error("tag `{0}` contains a wildcard (`+` or `#`); wildcards belong in subscription patterns only")]
    Wildcard(String),
    /// A wildcard is mixed with other characters, or `#` is not last.
    #[error("pattern `{0}` misuses a wildcard: `+` must be a whole segment and `#` the whole last segment")]
    BadWildcard(String),
}

fn check_common(s: &str) -> Result<(), TagError> {
    if s.is_empty() {
        return Err(TagError::Empty);
    }
    if s.len() > MAX_TAG_BYTES {
        return Err(TagError::TooLong(s.len()));
    }
    if s.bytes().any(|b| b < 0x20) {
        return Err(TagError::ControlChar(s.escape_debug().to_string()));
    }
    if s.split('/').any(str::is_empty) {
        return Err(TagError::EmptySegment(s.to_owned()));
    }
    Ok(())
}

/// Checks a concrete tag (one that is published, retained or requested).
pub fn validate_tag(tag: &str) -> Result<(), TagError> {
    check_common(tag)?;
    if tag.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TagError::Wildcard(tag.to_owned()));
    }
    Ok(())
}

/// Checks a subscription pattern.
pub fn validate_pattern(pattern: &str) -> Result<(), TagError> {
    check_common(pattern)?;
    let mut segments = pattern.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        let ok = match seg {
            "+" => true,
            "#" => last,
            s => !s.contains(['+', '#']),
        };
        if !ok {
            return Err(TagError::BadWildcard(pattern.to_owned()));
        }
    }
    Ok(())
}

/// Does the (valid) pattern match the (valid) tag?
pub fn matches(pattern: &str, tag: &str) -> bool {
    let mut tag_segs = tag.split('/');
    for p in pattern.split('/') {
        if p == "#" {
            return true;
        }
        match tag_segs.next() {
            Some(t) if p == "+" || p == t => {}
            _ => return false,
        }
    }
    tag_segs.next().is_none()
}

/// Is `tag` equal to `prefix` or inside the subtree below it?
pub fn is_under(tag: &str, prefix: &str) -> bool {
    tag.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tags_are_valid() {
        for t in ["123", "dev/proj-1/state", "a/b/c/d"] {
            assert_eq!(validate_tag(t), Ok(()), "{t}");
        }
    }

    #[test]
    fn bad_tags_are_refused_with_reason() {
        assert_eq!(validate_tag(""), Err(TagError::Empty));
        assert!(matches!(
            validate_tag("a//b"),
            Err(TagError::EmptySegment(_))
        ));
        assert!(matches!(validate_tag("/a"), Err(TagError::EmptySegment(_))));
        assert!(matches!(validate_tag("a/+"), Err(TagError::Wildcard(_))));
        assert!(matches!(
            validate_tag("a\nb"),
            Err(TagError::ControlChar(_))
        ));
        let long = "x".repeat(MAX_TAG_BYTES + 1);
        assert_eq!(
            validate_tag(&long),
            Err(TagError::TooLong(MAX_TAG_BYTES + 1))
        );
    }

    #[test]
    fn patterns_follow_mqtt_rules() {
        for p in ["#", "+", "dev/+/state", "dev/#", "+/+/#"] {
            assert_eq!(validate_pattern(p), Ok(()), "{p}");
        }
        for p in ["#/a", "de+v", "dev/#x", "a/#/b"] {
            assert!(
                matches!(validate_pattern(p), Err(TagError::BadWildcard(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn matching() {
        assert!(matches("123", "123"));
        assert!(!matches("123", "1234"));
        assert!(matches("dev/+/state", "dev/p1/state"));
        assert!(!matches("dev/+/state", "dev/p1/meta"));
        assert!(!matches("dev/+", "dev/p1/state"));
        assert!(matches("dev/#", "dev"));
        assert!(matches("dev/#", "dev/p1/state"));
        assert!(matches("#", "anything/at/all"));
        assert!(!matches("dev/p1", "dev"));
    }

    #[test]
    fn prefixes() {
        assert!(is_under("dev/p1", "dev/p1"));
        assert!(is_under("dev/p1/state", "dev/p1"));
        assert!(!is_under("dev/p10/state", "dev/p1"));
        assert!(!is_under("dev", "dev/p1"));
    }
}
