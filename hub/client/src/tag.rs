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
    /// A control character (C0, DEL or C1) appears in the tag.
    #[error("tag `{0}` contains a control character")]
    ControlChar(String),
    /// An invisible or direction-changing character appears in the tag, which
    /// would let two different tags look the same.
    #[error("tag `{0}` contains an invisible or bidirectional-control character (U+{1:04X}); tags must look like what they are")]
    Invisible(String, u32),
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
    if s.chars().any(char::is_control) {
        return Err(TagError::ControlChar(s.escape_debug().to_string()));
    }
    if let Some(c) = s.chars().find(|&c| invisible(c)) {
        return Err(TagError::Invisible(
            s.escape_unicode().to_string(),
            c as u32,
        ));
    }
    if s.split('/').any(str::is_empty) {
        return Err(TagError::EmptySegment(s.to_owned()));
    }
    Ok(())
}

/// Format characters that render as nothing or reorder what follows:
/// zero-width spaces and joiners, the byte-order mark, soft hyphen, invisible
/// operators, and the bidirectional marks, embeddings, overrides and isolates.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
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
        for bad in ["a\u{7f}b", "a\u{85}b", "a\u{9f}"] {
            assert!(
                matches!(validate_tag(bad), Err(TagError::ControlChar(_))),
                "{bad:?}"
            );
        }
        for bad in [
            "p\u{202e}1",
            "p\u{200b}1",
            "\u{feff}p1",
            "p\u{2066}1",
            "p\u{ad}1",
        ] {
            assert!(
                matches!(validate_tag(bad), Err(TagError::Invisible(..))),
                "{bad:?}"
            );
        }
        // Letters of any script are fine.
        assert_eq!(validate_tag("dev/projektor-süd/state"), Ok(()));
        assert_eq!(validate_tag("dev/会議室/state"), Ok(()));
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
