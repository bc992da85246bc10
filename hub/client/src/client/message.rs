//! What the hub delivers, kept as the bytes it arrived in.
//!
//! A received line becomes a [`Message`] without copying: tag, sender and
//! body are slices of the read buffer, and the body stays raw JSON until the
//! caller asks for it ([`Message::json`]). The hub's own `msg` encoding is
//! read by hand, from both ends (the body in the middle is never scanned);
//! anything else takes serde.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Body;

/// Bytes known to be UTF-8.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Text(Bytes);

impl Text {
    /// Checks `b` once; afterwards it is read as text for free.
    pub(crate) fn new(b: Bytes) -> Option<Self> {
        std::str::from_utf8(&b).ok()?;
        Some(Text(b))
    }

    pub(crate) fn owned(s: String) -> Self {
        Text(Bytes::from(s))
    }

    pub(crate) fn as_str(&self) -> &str {
        // SAFETY: every constructor checks or is given UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// A message routed to one of this client's subscriptions.
#[derive(Clone, PartialEq)]
pub struct Message {
    pub(crate) tag: Text,
    pub(crate) body: Bytes,
    pub(crate) from: Text,
    pub(crate) cid: Option<Text>,
    pub(crate) seq: u64,
    pub(crate) retained: bool,
    pub(crate) snapshot: bool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("tag", &self.tag)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("from", &self.from)
            .field("seq", &self.seq)
            .field("retained", &self.retained)
            .field("snapshot", &self.snapshot)
            .field("cid", &self.cid)
            .finish()
    }
}

impl Message {
    /// The concrete tag it was published on.
    pub fn tag(&self) -> &str {
        self.tag.as_str()
    }

    /// The body as raw JSON bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as raw JSON text (the hub only routes valid JSON).
    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("null")
    }

    /// The body, deserialized.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Who published it (`hub` for the hub's own messages, such as last wills).
    pub fn from(&self) -> &str {
        self.from.as_str()
    }

    /// The hub-wide sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Is the tag's value retained by the hub?
    pub fn is_retained(&self) -> bool {
        self.retained
    }

    /// Did it arrive as part of a snapshot (a value from before the
    /// subscription), rather than live?
    pub fn is_snapshot(&self) -> bool {
        self.snapshot
    }

    /// The correlation id the publisher gave.
    pub fn cid(&self) -> Option<&str> {
        self.cid.as_ref().map(Text::as_str)
    }

    /// A retained `null` deletes the tag's value.
    pub fn is_delete(&self) -> bool {
        self.retained && &self.body[..] == b"null"
    }
}

/// The answer to [`Client::request`](super::Client::request).
#[derive(Clone, PartialEq)]
pub struct Reply {
    pub(crate) body: Bytes,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reply({})", String::from_utf8_lossy(&self.body))
    }
}

impl Reply {
    /// The body as raw JSON bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as raw JSON text.
    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("null")
    }

    /// The body, deserialized.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// The byte range of `inner` within `outer`, which contains it.
fn range_in(outer: &[u8], inner: &[u8]) -> std::ops::Range<usize> {
    let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
    start..start + inner.len()
}

/// Reads the hub's `msg` encoding:
/// `{"op":"msg","tag":T,"body":B,"from":F,"seq":N[,"retained":true][,"cid":C]}`.
/// Tag, sender and cid must need no unescaping; `None` sends the line to serde.
pub(crate) fn parse_msg_fast(line: &Bytes) -> Option<Message> {
    const HEAD: &[u8] = br#"{"op":"msg","tag":""#;
    let s = &line[..];
    let rest = s.strip_prefix(HEAD)?;
    let tag_len = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[tag_len] != b'"' {
        return None;
    }
    let tag = HEAD.len()..HEAD.len() + tag_len;
    let body_start = tag.end + br#"","body":"#.len();
    if !s.get(tag.end..body_start)?.eq(br#"","body":"#) {
        return None;
    }
    // From the end: every field after the body has a fixed shape.
    let mut end = s.len().checked_sub(1)?;
    if s[end] != b'}' {
        return None;
    }
    let string_before = |end: usize, key: &[u8]| -> Option<(std::ops::Range<usize>, usize)> {
        if end == 0 || s[end - 1] != b'"' {
            return None;
        }
        let open = memchr::memrchr(b'"', &s[..end - 1])?;
        if s[open + 1..end - 1].contains(&b'\\') {
            return None;
        }
        let key_start = open.checked_sub(key.len())?;
        (&s[key_start..open] == key).then_some((open + 1..end - 1, key_start))
    };
    let mut cid = None;
    if let Some((r, k)) = string_before(end, br#","cid":"#) {
        cid = Some(r);
        end = k;
    }
    let mut retained = false;
    if s[..end].ends_with(br#","retained":true"#) {
        retained = true;
        end -= br#","retained":true"#.len();
    }
    let digits = s[..end]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let seq: u64 = std::str::from_utf8(&s[end - digits..end])
        .ok()?
        .parse()
        .ok()?;
    end -= digits;
    if !s[..end].ends_with(br#","seq":"#) {
        return None;
    }
    end -= br#","seq":"#.len();
    let (from, key_start) = string_before(end, br#","from":"#)?;
    end = key_start;
    if end <= body_start {
        return None;
    }
    Some(Message {
        tag: Text::new(line.slice(tag))?,
        body: line.slice(body_start..end),
        from: Text::new(line.slice(from))?,
        cid: match cid {
            Some(r) => Some(Text::new(line.slice(r))?),
            None => None,
        },
        seq,
        retained,
        snapshot: false,
    })
}

/// Reads any `msg` line through serde (escaped strings, other field orders).
pub(crate) fn parse_msg_general(line: &Bytes) -> Result<Message, serde_json::Error> {
    #[derive(Deserialize)]
    struct Msg<'a> {
        tag: String,
        #[serde(borrow)]
        body: &'a RawValue,
        from: String,
        seq: u64,
        #[serde(default)]
        retained: bool,
        #[serde(default)]
        cid: Option<String>,
    }
    let m: Msg<'_> = serde_json::from_slice(line)?;
    let body = line.slice(range_in(line, m.body.get().as_bytes()));
    Ok(Message {
        tag: Text::owned(m.tag),
        body,
        from: Text::owned(m.from),
        cid: m.cid.map(Text::owned),
        seq: m.seq,
        retained: m.retained,
        snapshot: false,
    })
}

/// A raw JSON value inside `line`, as a shared slice of it.
pub(crate) fn raw_slice(line: &Bytes, raw: &RawValue) -> Bytes {
    line.slice(range_in(line, raw.get().as_bytes()))
}

/// Encodes a `pub` frame the way the hub's fast path reads it.
pub(crate) fn encode_pub(
    buf: &mut Vec<u8>,
    id: Option<u64>,
    tag: &str,
    body: &Body,
    retain: bool,
    cid: Option<&str>,
) {
    buf.extend_from_slice(br#"{"op":"pub","tag":"#);
    crate::protocol::json_str(buf, tag);
    buf.extend_from_slice(br#","body":"#);
    buf.extend_from_slice(body.as_bytes());
    if let Some(cid) = cid {
        buf.extend_from_slice(br#","cid":"#);
        crate::protocol::json_str(buf, cid);
    }
    if let Some(id) = id {
        buf.extend_from_slice(br#","id":"#);
        push_u64(buf, id);
    }
    if retain {
        buf.extend_from_slice(br#","retain":true"#);
    }
    buf.extend_from_slice(b"}\n");
}

/// Appends `n` in decimal.
fn push_u64(buf: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Encodes a `req` frame.
pub(crate) fn encode_req(
    buf: &mut Vec<u8>,
    rid: u64,
    tag: &str,
    body: &Body,
    timeout: std::time::Duration,
    cid: Option<&str>,
    on_behalf: Option<&RawValue>,
) {
    buf.extend_from_slice(br#"{"op":"req","rid":"#);
    push_u64(buf, rid);
    buf.extend_from_slice(br#","tag":"#);
    crate::protocol::json_str(buf, tag);
    buf.extend_from_slice(br#","body":"#);
    buf.extend_from_slice(body.as_bytes());
    buf.extend_from_slice(br#","timeout_ms":"#);
    push_u64(buf, timeout.as_millis() as u64);
    if let Some(cid) = cid {
        buf.extend_from_slice(br#","cid":"#);
        crate::protocol::json_str(buf, cid);
    }
    if let Some(who) = on_behalf {
        buf.extend_from_slice(br#","for":"#);
        buf.extend_from_slice(who.get().as_bytes());
    }
    buf.extend_from_slice(b"}\n");
}

/// Encodes a `rep` frame answering the hub's request `rid`.
pub(crate) fn encode_rep(
    buf: &mut Vec<u8>,
    rid: u64,
    result: Result<&Body, &crate::protocol::ErrorBody>,
) {
    buf.extend_from_slice(br#"{"op":"rep","rid":"#);
    push_u64(buf, rid);
    match result {
        Ok(body) => {
            buf.extend_from_slice(br#","body":"#);
            buf.extend_from_slice(body.as_bytes());
        }
        Err(e) => {
            buf.extend_from_slice(br#","error":"#);
            // Detail and outcome included: the requester needs to know what happened.
            serde_json::to_writer(&mut *buf, e).expect("an error body always serializes");
        }
    }
    buf.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode_msg;

    fn encoded(tag: &str, body: &str, from: &str, retained: bool, cid: Option<&str>) -> Bytes {
        let body = RawValue::from_string(body.to_owned()).unwrap();
        let mut buf = Vec::new();
        encode_msg(&mut buf, tag, &body, from, 42, retained, cid);
        buf.pop();
        Bytes::from(buf)
    }

    #[test]
    fn fast_and_general_paths_agree_with_the_hub_encoder() {
        let cases = [
            (
                "dev/p1/state",
                r#"{"power":"on","note":"a \"quoted\" ,\"seq\":1}"}"#,
                "agent",
                true,
                Some("op-7"),
            ),
            ("123", "17", "x", false, None),
            ("a/b", r#""\",\"from\":\"x\"""#, "sender", false, Some("c")),
            ("we\"ird", "null", "a\\b", true, None),
        ];
        for (tag, body, from, retained, cid) in cases {
            let line = encoded(tag, body, from, retained, cid);
            let general = parse_msg_general(&line).unwrap();
            assert_eq!(general.tag(), tag);
            assert_eq!(general.body_str(), body);
            assert_eq!(general.from(), from);
            assert_eq!(general.seq(), 42);
            assert_eq!(general.is_retained(), retained);
            assert_eq!(general.cid(), cid);
            if let Some(fast) = parse_msg_fast(&line) {
                assert_eq!(fast, general, "{}", String::from_utf8_lossy(&line));
            } else {
                assert!(
                    tag.contains('"') || from.contains('\\'),
                    "fast path refused {tag}"
                );
            }
        }
    }

    #[test]
    fn a_pub_frame_reads_back_through_the_hub_parser() {
        let body = Body::json(&serde_json::json!({"power":"on"})).unwrap();
        let mut buf = Vec::new();
        encode_pub(
            &mut buf,
            Some(5),
            "dev/p\"1/state",
            &body,
            true,
            Some("c-1"),
        );
        let line = &buf[..buf.len() - 1];
        let parsed = crate::protocol::parse_client_frame(line).unwrap();
        match parsed.frame {
            crate::protocol::ClientFrame::Pub {
                tag,
                body,
                retain,
                cid,
            } => {
                assert_eq!(tag, "dev/p\"1/state");
                assert_eq!(body.get(), r#"{"power":"on"}"#);
                assert!(retain);
                assert_eq!(cid.as_deref(), Some("c-1"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parsed.id.unwrap().get(), "5");
    }
}
