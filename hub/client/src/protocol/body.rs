//! What a body may be: JSON that every patchbay client can read back.
//!
//! The hub checks each body it routes with [`check_body`], so nothing is
//! delivered that a client would drop: serde_json refuses to parse values
//! nested deeper than 128 levels and numbers beyond the range of `f64`.

/// How deep arrays and objects may nest: as deep as serde_json's recursion
/// limit (128) lets a client read.
pub const MAX_DEPTH: usize = 127;

/// Checks syntactically valid JSON for depth and number range; returns why
/// a client could not read it.
pub fn check_body(json: &str) -> Result<(), String> {
    let b = json.as_bytes();
    // The common case in two vectorised passes: too few brackets to nest too
    // deep, and no exponent or number long enough to leave f64's range.
    if b.len() < 300
        && memchr::memchr2(b'e', b'E', b).is_none()
        && memchr::memchr2_iter(b'[', b'{', b).count() <= MAX_DEPTH
    {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while let Some(at) = memchr::memchr2(b'"', b'\\', &b[i..]) {
                    i += at;
                    if b[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "the body nests deeper than {MAX_DEPTH} levels, more than clients can read"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut exponent = false;
                while i + 1 < b.len()
                    && matches!(b[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    exponent |= matches!(b[i + 1], b'e' | b'E');
                    i += 1;
                }
                let digits = i + 1 - start;
                // Only an exponent or a very long number can leave f64's range.
                if exponent || digits > 300 {
                    let n = &json[start..=i];
                    if !n.parse::<f64>().is_ok_and(f64::is_finite) {
                        return Err(format!(
                            "the number {n} is beyond the range clients can read (±1.8e308)"
                        ));
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_bodies_pass() {
        for ok in [
            r#"{"a":[1,2,{"b":"c\"]}"}],"n":-1.5e10}"#,
            "12345678901234567890",
            r#""[[[[[[""#,
            "1e-400",
            &format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH)),
        ] {
            assert_eq!(check_body(ok), Ok(()), "{ok}");
            // And serde_json agrees a client can read it.
            serde_json::from_str::<serde_json::Value>(ok).unwrap();
        }
    }

    #[test]
    fn unreadable_bodies_are_refused_as_serde_would() {
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        for bad in [deep.as_str(), "1e400", "[-1E999]", r#"{"x":2e308}"#] {
            assert!(check_body(bad).is_err(), "{bad}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
