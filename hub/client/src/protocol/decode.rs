//! Parsing client frames at the hub.
//!
//! Parsing is total: every line yields a frame or a [`FrameError`] that says
//! what is wrong, and never panics. Tags, bodies and ids are borrowed from the
//! line, so a `pub` is routed without copying its body.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{ErrorBody, ErrorCode};

const NULL: &RawValue = RawValue::NULL;

/// A parsed client frame with its optional `id`.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// The client's `id`, echoed raw in the `ok` or `err` that answers it.
    pub id: Option<&'a RawValue>,
    /// The operation.
    pub frame: ClientFrame<'a>,
}

/// One operation a client asks of the hub.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// Identifies the client; carries its token when the hub requires one.
    Hello {
        /// A readable name, shown as `from` on what the client publishes.
        name: Option<String>,
        /// Bearer token from the hub's configuration.
        token: Option<String>,
    },
    /// Subscribe to patterns, optionally receiving the matching retained values first.
    Sub {
        /// Tag patterns.
        tags: Vec<String>,
        /// Send retained values first, then an `ok` carrying the snapshot seq.
        snapshot: bool,
    },
    /// Drop subscriptions.
    Unsub {
        /// Patterns exactly as subscribed.
        tags: Vec<String>,
    },
    /// Publish a message.
    Pub {
        /// Concrete tag.
        tag: Cow<'a, str>,
        /// Any JSON value; `null` with `retain` deletes the retained value.
        body: &'a RawValue,
        /// Keep as the tag's latest value for late joiners.
        retain: bool,
        /// Correlation id carried along unchanged.
        cid: Option<Cow<'a, str>>,
    },
    /// Claim exclusive ownership of a tag subtree.
    Claim {
        /// The subtree's root tag.
        prefix: String,
    },
    /// Send a request to the owner of (or a subscriber to) a tag.
    Req {
        /// Concrete tag.
        tag: Cow<'a, str>,
        /// Request body.
        body: &'a RawValue,
        /// The client's own request id, echoed on the reply.
        rid: &'a RawValue,
        /// How long to wait for a reply; the hub's default when absent.
        timeout_ms: Option<u64>,
        /// Correlation id carried along unchanged.
        cid: Option<Cow<'a, str>>,
        /// `for`: whom the request is sent on behalf of (a JSON object with
        /// `token`, `role`, `client`, `peer`, `transport`), for the journal.
        /// Only the hub's own automation connection may use it.
        on_behalf: Option<&'a RawValue>,
    },
    /// Reply to a request this client received.
    Rep {
        /// The hub's request id from the forwarded `req`.
        rid: u64,
        /// The reply body, or the error the responder reports.
        result: Result<&'a RawValue, ErrorBody>,
    },
    /// Heartbeat; the hub answers `pong`.
    Ping,
    /// Answer to the hub's `ping`.
    Pong,
}

/// A line that is not a valid frame.
#[derive(Debug, Clone)]
pub struct FrameError {
    /// The frame's `id`, when the line was JSON enough to have one.
    pub id: Option<Box<RawValue>>,
    /// The error code to report.
    pub code: ErrorCode,
    /// What is wrong, for people.
    pub message: String,
}

impl FrameError {
    fn bad(id: Option<&RawValue>, message: impl Into<String>) -> Self {
        FrameError {
            id: id.map(ToOwned::to_owned),
            code: ErrorCode::BadFrame,
            message: message.into(),
        }
    }
}

/// Deserializes a present field as `Some(raw)`, so that `null` stays distinct from absent.
fn some_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Every field any frame may have; which are required depends on `op`.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    id: Option<&'a RawValue>,
    name: Option<String>,
    token: Option<String>,
    tags: Option<Vec<String>>,
    snapshot: Option<bool>,
    #[serde(borrow)]
    tag: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    body: Option<&'a RawValue>,
    retain: Option<bool>,
    #[serde(borrow)]
    cid: Option<Cow<'a, str>>,
    prefix: Option<String>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    rid: Option<&'a RawValue>,
    timeout_ms: Option<u64>,
    error: Option<ErrorBody>,
    #[serde(rename = "for", default, borrow, deserialize_with = "some_raw")]
    on_behalf: Option<&'a RawValue>,
}

/// Only the id, to recover it from a frame whose other fields are mistyped.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(default, borrow, deserialize_with = "some_raw")]
    id: Option<&'a RawValue>,
}

fn require<T>(v: Option<T>, op: &str, field: &str, id: Option<&RawValue>) -> Result<T, FrameError> {
    v.ok_or_else(|| FrameError::bad(id, format!("`{op}` needs the field `{field}`")))
}

/// The common `pub` frame, `{"op":"pub","tag":"T","body":B}` with an optional
/// `"retain"` last, read without serde's field-by-field visitor. Anything
/// else (other ops, escapes in the tag, other fields or order) returns `None`
/// and takes the general path; the body is still fully validated.
fn parse_pub_fast(line: &str) -> Option<Incoming<'_>> {
    let rest = line.strip_prefix(r#"{"op":"pub","tag":""#)?;
    let end = rest.find('"')?;
    let tag = &rest[..end];
    if tag.bytes().any(|b| b == b'\\' || b < 0x20) {
        return None;
    }
    let rest = rest[end + 1..].strip_prefix(r#","body":"#)?;
    let mut de = serde_json::Deserializer::from_str(rest);
    let body = <&RawValue>::deserialize(&mut de).ok()?;
    // A body clients could not read takes the general path, which says why.
    super::check_body(body.get()).ok()?;
    let after = body.get().as_ptr() as usize - rest.as_ptr() as usize + body.get().len();
    let retain = match &rest[after..] {
        "}" => false,
        r#","retain":true}"# => true,
        r#","retain":false}"# => false,
        _ => return None,
    };
    Some(Incoming {
        id: None,
        frame: ClientFrame::Pub {
            tag: Cow::Borrowed(tag),
            body,
            retain,
            cid: None,
        },
    })
}

/// Parses one line (without its newline) into a frame.
pub fn parse_client_frame(line: &[u8]) -> Result<Incoming<'_>, FrameError> {
    // One UTF-8 check for the whole line; the parser then reads a `str` without re-checking each string.
    let line = std::str::from_utf8(line).map_err(|e| {
        FrameError::bad(None, format!("not valid JSON: the line is not UTF-8 ({e})"))
    })?;
    if let Some(fast) = parse_pub_fast(line) {
        return Ok(fast);
    }
    let f: Fields<'_> = serde_json::from_str(line).map_err(|e| {
        let id = serde_json::from_str::<IdOnly<'_>>(line)
            .ok()
            .and_then(|i| i.id);
        let what = if e.is_syntax() || e.is_eof() {
            "not valid JSON"
        } else {
            "not a valid frame"
        };
        FrameError::bad(id, format!("{what}: {e}"))
    })?;
    let id = f.id;
    let op = f.op.as_ref();
    for raw in [f.body, f.error.as_ref().map(|_| NULL)]
        .into_iter()
        .flatten()
    {
        super::check_body(raw.get()).map_err(|why| FrameError::bad(id, why))?;
    }
    let frame = match op {
        "hello" => ClientFrame::Hello {
            name: f.name,
            token: f.token,
        },
        "sub" => ClientFrame::Sub {
            tags: require(f.tags, op, "tags", id)?,
            snapshot: f.snapshot.unwrap_or(false),
        },
        "unsub" => ClientFrame::Unsub {
            tags: require(f.tags, op, "tags", id)?,
        },
        "pub" => ClientFrame::Pub {
            tag: require(f.tag, op, "tag", id)?,
            body: require(f.body, op, "body", id)?,
            retain: f.retain.unwrap_or(false),
            cid: f.cid,
        },
        "claim" => ClientFrame::Claim {
            prefix: require(f.prefix, op, "prefix", id)?,
        },
        "req" => {
            let rid = require(f.rid, op, "rid", id)?;
            if !(rid.get().starts_with('"') || rid.get().starts_with(|c: char| c == '-' || c.is_ascii_digit())) {
                return Err(FrameError::bad(id, "`req` field `rid` must be a string or a number"));
            }
            ClientFrame::Req {
                tag: require(f.tag, op, "tag", id)?,
                body: f.body.unwrap_or(NULL),
                rid,
                timeout_ms: f.timeout_ms,
                cid: f.cid,
                on_behalf: f.on_behalf,
            }
        }
        "rep" => {
            let rid = require(f.rid, op, "rid", id)?;
            let rid: u64 = serde_json::from_str(rid.get()).map_err(|_| {
                FrameError::bad(id, "`rep` field `rid` must be the number the hub sent in `req`")
            })?;
            let result = match (f.body, f.error) {
                (_, Some(e)) => Err(e),
                (Some(b), None) => Ok(b),
                (None, None) => Ok(NULL),
            };
            ClientFrame::Rep { rid, result }
        }
        "ping" => ClientFrame::Ping,
        "pong" => ClientFrame::Pong,
        other => {
            return Err(FrameError::bad(
                id,
                format!(
                    "unknown op `{}`; expected one of hello, sub, unsub, pub, claim, req, rep, ping, pong",
                    other.escape_debug()
                ),
            ))
        }
    };
    Ok(Incoming { id, frame })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_borrows_body_and_keeps_null_distinct() {
        let line = br#"{"op":"pub","tag":"123","body":null,"retain":true,"id":7}"#;
        let inc = parse_client_frame(line).unwrap();
        assert_eq!(inc.id.unwrap().get(), "7");
        match inc.frame {
            ClientFrame::Pub {
                tag,
                body,
                retain,
                cid,
            } => {
                assert_eq!(tag, "123");
                assert_eq!(body.get(), "null");
                assert!(retain);
                assert!(cid.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_field_names_op_field_and_keeps_id() {
        let err = parse_client_frame(br#"{"op":"pub","tag":"a","id":"x1"}"#).unwrap_err();
        assert_eq!(err.message, "`pub` needs the field `body`");
        assert_eq!(err.id.unwrap().get(), "\"x1\"");
    }

    #[test]
    fn garbage_and_unknown_op() {
        let err = parse_client_frame(b"hello there").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadFrame);
        assert!(err.message.starts_with("not valid JSON"), "{}", err.message);
        let err = parse_client_frame(br#"{"op":"dance","id":3}"#).unwrap_err();
        assert!(
            err.message.starts_with("unknown op `dance`"),
            "{}",
            err.message
        );
        assert_eq!(err.id.unwrap().get(), "3");
        let err = parse_client_frame(br#"{"op":"sub","tags":"x","id":4}"#).unwrap_err();
        assert!(
            err.message.starts_with("not a valid frame"),
            "{}",
            err.message
        );
        assert_eq!(err.id.unwrap().get(), "4");
    }

    /// The fast path, where it applies, agrees with the general parser.
    #[test]
    fn fast_pub_path_agrees_with_serde() {
        let frames = [
            r#"{"op":"pub","tag":"bench","body":"xxxx"}"#,
            r#"{"op":"pub","tag":"dev/p1/state","body":{"power":"on","n":[1,2,{"a":null}]},"retain":true}"#,
            r#"{"op":"pub","tag":"a","body":null,"retain":false}"#,
            r#"{"op":"pub","tag":"a","body": 12.5e3}"#,
            r#"{"op":"pub","tag":"a","body":"q\"uote}"}"#,
        ];
        for f in frames {
            let fast = parse_pub_fast(f).unwrap_or_else(|| panic!("fast path should take {f}"));
            let v: serde_json::Value = serde_json::from_str(f).unwrap();
            match fast.frame {
                ClientFrame::Pub {
                    tag,
                    body,
                    retain,
                    cid,
                } => {
                    assert_eq!(tag, v["tag"].as_str().unwrap());
                    assert_eq!(
                        serde_json::from_str::<serde_json::Value>(body.get()).unwrap(),
                        v["body"]
                    );
                    assert_eq!(retain, v["retain"].as_bool().unwrap_or(false));
                    assert!(cid.is_none());
                }
                other => panic!("{other:?}"),
            }
        }
        for f in [
            r#"{"op":"pub","tag":"a\"b","body":1}"#,
            r#"{"op":"pub","tag":"a","body":1,"cid":"x"}"#,
            r#"{"op":"pub","tag":"a","body":1,"id":3}"#,
            r#"{"op":"pub","tag":"a","body":{"x":}"#,
            r#"{"op":"pub","tag":"a","body":1} trailing"#,
            r#"{"op":"pub","tag":"a","body":1,"retain":true,"retain":false}"#,
            r#"{"op":"pub","tag":"a","body": 12.5e3 }"#,
        ] {
            assert!(
                parse_pub_fast(f).is_none(),
                "fast path must leave {f} to serde"
            );
        }
        // And the general parser still judges what the fast path leaves.
        assert!(parse_client_frame(br#"{"op":"pub","tag":"a","body":{"x":}"#).is_err());
        assert!(parse_client_frame(br#"{"op":"pub","tag":"a","body":1,"id":3}"#).is_ok());
        assert!(parse_client_frame(br#"{"op":"pub","tag":"a","body": 12.5e3 }"#).is_ok());
    }

    #[test]
    fn rep_with_error() {
        let inc = parse_client_frame(
            br#"{"op":"rep","rid":5,"error":{"code":"busy","message":"warming up"}}"#,
        )
        .unwrap();
        match inc.frame {
            ClientFrame::Rep { rid, result } => {
                assert_eq!(rid, 5);
                assert_eq!(result.unwrap_err().code, "busy");
            }
            other => panic!("{other:?}"),
        }
    }
}
