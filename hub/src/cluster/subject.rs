//! Tags on NATS: subjects and key-value keys.
//!
//! A tag `a/b/c` is the subject `<prefix>.a.b.c`: `/` becomes `.`, and in
//! each segment every byte NATS subjects cannot hold, or that would read
//! as something else (`.`, `*`, `>`, spaces, `=` itself, anything outside
//! ASCII letters, digits, `-` and `_`), is written `=XX` (its hex), so the
//! mapping is reversible. Patterns map the same way with `+` as `*` and a
//! final `#` as `>`; `dev/#` matches `dev` itself too, so it becomes two
//! subjects. Key-value keys keep `/` and escape the rest alike.

/// Escapes one tag segment for a subject token.
fn escape_into(out: &mut String, segment: &str, keep: impl Fn(u8) -> bool) {
    for &b in segment.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push('=');
            out.push_str(&format!("{b:02X}"));
        }
    }
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Undoes [`escape_into`]; `None` for a malformed escape or bytes that are not UTF-8.
fn unescape(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The subject for `tag` under `prefix` (`pb`): `pb.dev.p1.state`.
pub fn subject(prefix: &str, tag: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + tag.len() + 8);
    out.push_str(prefix);
    for segment in tag.split('/') {
        out.push('.');
        escape_into(&mut out, segment, plain);
    }
    out
}

/// The tag of a subject made by [`subject`] with the same prefix.
pub fn tag(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let segments: Option<Vec<String>> = rest.split('.').map(unescape).collect();
    let segments = segments?;
    (!segments.iter().any(String::is_empty)).then(|| segments.join("/"))
}

/// The subjects that cover a tag pattern (`+` one segment, a final `#` that
/// level and everything below it).
pub fn pattern_subjects(prefix: &str, pattern: &str) -> Vec<String> {
    let segments: Vec<&str> = pattern.split('/').collect();
    let mut base = String::from(prefix);
    for (i, s) in segments.iter().enumerate() {
        match *s {
            "#" if i == segments.len() - 1 => {
                let mut all = base.clone();
                all.push_str(".>");
                // `a/#` matches `a` itself; a bare `#` matches everything.
                return if i == 0 { vec![all] } else { vec![base, all] };
            }
            "+" => base.push_str(".*"),
            s => {
                base.push('.');
                escape_into(&mut base, s, plain);
            }
        }
    }
    vec![base]
}

/// The key-value key for `tag` (`/` kept, the rest escaped as in subjects).
pub fn key(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len() + 8);
    escape_into(&mut out, tag, |b| plain(b) || b == b'/');
    out
}

/// The tag of a key made by [`key`].
pub fn tag_of_key(key: &str) -> Option<String> {
    unescape(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_subjects() {
        assert_eq!(subject("pb", "dev/p1/state"), "pb.dev.p1.state");
        assert_eq!(
            subject("pb", "dev/room.2 a/state"),
            "pb.dev.room=2E2=20a.state"
        );
        assert_eq!(subject("pb", "dev/x*>=/y"), "pb.dev.x=2A=3E=3D.y");
        for t in ["dev/p1/state", "dev/room.2 a/state", "a/é/=", "x"] {
            assert_eq!(tag("pb", &subject("pb", t)).as_deref(), Some(t), "{t}");
        }
        assert_eq!(tag("pb", "other.dev"), None);
        assert_eq!(tag("pb", "pb.dev.=ZZ"), None);
    }

    #[test]
    fn patterns() {
        assert_eq!(pattern_subjects("pb", "dev/+/state"), ["pb.dev.*.state"]);
        assert_eq!(pattern_subjects("pb", "dev/#"), ["pb.dev", "pb.dev.>"]);
        assert_eq!(pattern_subjects("pb", "#"), ["pb.>"]);
        assert_eq!(pattern_subjects("pb", "a.b/+"), ["pb.a=2Eb.*"]);
    }

    #[test]
    fn keys() {
        assert_eq!(key("dev/p1/state"), "dev/p1/state");
        assert_eq!(key("dev/a.b/state"), "dev/a=2Eb/state");
        for t in ["dev/p1/state", "dev/a.b c/ü"] {
            assert_eq!(tag_of_key(&key(t)).as_deref(), Some(t));
        }
    }
}
