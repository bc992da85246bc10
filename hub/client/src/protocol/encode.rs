//! Encoding frames into line buffers.
//!
//! The hub's encoders write straight into a caller's `Vec<u8>`, borrowing
//! bodies as raw JSON, so a message fanned out to many subscribers is
//! serialized once. [`ClientOut`] is the client side's frame type.

use serde::Serialize;
use serde_json::value::RawValue;

use super::ErrorCode;

fn line<T: Serialize>(buf: &mut Vec<u8>, frame: &T) {
    // Serializing plain structs of strings, numbers and raw JSON into a Vec cannot fail.
    serde_json::to_writer(&mut *buf, frame).expect("frame serializes");
    buf.push(b'\n');
}

/// Appends `s` as a JSON string.
pub fn json_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        serde_json::to_writer(&mut *buf, s).expect("strings serialize");
    }
}

/// Appends a `msg` frame; returns where the body starts, relative to the
/// buffer's length before the call. Hand-written: this is the hot path of
/// every delivery.
pub fn encode_msg(
    buf: &mut Vec<u8>,
    tag: &str,
    body: &RawValue,
    from: &str,
    seq: u64,
    retained: bool,
    cid: Option<&str>,
) -> usize {
    let start = buf.len();
    buf.extend_from_slice(b"{\"op\":\"msg\",\"tag\":");
    json_str(buf, tag);
    buf.extend_from_slice(b",\"body\":");
    let body_at = buf.len() - start;
    buf.extend_from_slice(body.get().as_bytes());
    buf.extend_from_slice(b",\"from\":");
    json_str(buf, from);
    buf.extend_from_slice(b",\"seq\":");
    buf.extend_from_slice(itoa(seq, &mut [0u8; 20]));
    if retained {
        buf.extend_from_slice(b",\"retained\":true");
    }
    if let Some(cid) = cid {
        buf.extend_from_slice(b",\"cid\":");
        json_str(buf, cid);
    }
    buf.extend_from_slice(b"}\n");
    body_at
}

/// Formats `n` in decimal into `out`; returns the digits.
fn itoa(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// Appends a forwarded `req` frame carrying the hub's own request id.
pub fn encode_req(
    buf: &mut Vec<u8>,
    tag: &str,
    body: &RawValue,
    rid: u64,
    from: &str,
    cid: Option<&str>,
) {
    #[derive(Serialize)]
    struct ReqOut<'a> {
        op: &'static str,
        tag: &'a str,
        body: &'a RawValue,
        rid: u64,
        from: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
    }
    line(
        buf,
        &ReqOut {
            op: "req",
            tag,
            body,
            rid,
            from,
            cid,
        },
    );
}

/// Appends a `rep` frame carrying the requester's own `rid`.
pub fn encode_rep(buf: &mut Vec<u8>, rid: &RawValue, body: &RawValue) {
    #[derive(Serialize)]
    struct RepOut<'a> {
        op: &'static str,
        rid: &'a RawValue,
        body: &'a RawValue,
    }
    line(
        buf,
        &RepOut {
            op: "rep",
            rid,
            body,
        },
    );
}

/// Appends an `ok` frame; `seq` marks the end of a snapshot.
pub fn encode_ok(buf: &mut Vec<u8>, id: Option<&RawValue>, seq: Option<u64>) {
    #[derive(Serialize)]
    struct OkOut<'a> {
        op: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    }
    line(buf, &OkOut { op: "ok", id, seq });
}

/// Appends an `err` frame; `id` names the failed frame, `rid` the failed request.
pub fn encode_err(
    buf: &mut Vec<u8>,
    id: Option<&RawValue>,
    rid: Option<&RawValue>,
    code: &str,
    message: &str,
) {
    #[derive(Serialize)]
    struct ErrOut<'a> {
        op: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        code: &'a str,
        message: &'a str,
    }
    line(
        buf,
        &ErrOut {
            op: "err",
            id,
            rid,
            code,
            message,
        },
    );
}

/// Appends the `snapshot` frame that opens the snapshot of the `sub` with `id`:
/// the `msg` frames that follow, up to the `ok` with the same `id`, are it.
pub fn encode_snapshot(buf: &mut Vec<u8>, id: Option<&RawValue>) {
    #[derive(Serialize)]
    struct SnapshotOut<'a> {
        op: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    }
    line(buf, &SnapshotOut { op: "snapshot", id });
}

/// Appends the `err` frame that answers a failed request: the requester's
/// `rid` and the whole error, protocol detail and outcome included.
pub fn encode_request_err(buf: &mut Vec<u8>, rid: &RawValue, error: &super::ErrorBody) {
    #[derive(Serialize)]
    struct ErrOut<'a> {
        op: &'static str,
        rid: &'a RawValue,
        #[serde(flatten)]
        error: &'a super::ErrorBody,
    }
    line(
        buf,
        &ErrOut {
            op: "err",
            rid,
            error,
        },
    );
}

/// Appends a `pong` frame.
pub fn encode_pong(buf: &mut Vec<u8>, id: Option<&RawValue>) {
    #[derive(Serialize)]
    struct PongOut<'a> {
        op: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    }
    line(buf, &PongOut { op: "pong", id });
}

/// Appends the hub's `ping` frame.
pub fn encode_ping(buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"{\"op\":\"ping\"}\n");
}

/// Appends a `welcome` frame.
pub fn encode_welcome(
    buf: &mut Vec<u8>,
    id: Option<&RawValue>,
    client: u64,
    name: &str,
    role: &str,
    instance: &str,
) {
    #[derive(Serialize)]
    struct WelcomeOut<'a> {
        op: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        client: u64,
        name: &'a str,
        role: &'a str,
        version: &'static str,
        instance: &'a str,
    }
    line(
        buf,
        &WelcomeOut {
            op: "welcome",
            id,
            client,
            name,
            role,
            version: env!("CARGO_PKG_VERSION"),
            instance,
        },
    );
}

impl ErrorCode {
    /// Encodes this code as a connection-level `err` frame.
    pub fn frame(self, message: &str) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64 + message.len());
        encode_err(&mut buf, None, None, self.as_str(), message);
        buf
    }
}

/// A frame a client sends, for the client library and tools.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ClientOut<'a> {
    /// `hello`.
    Hello {
        /// Frame id.
        id: u64,
        /// Client name.
        name: &'a str,
        /// Token.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
    },
    /// `sub`.
    Sub {
        /// Frame id.
        id: u64,
        /// Patterns.
        tags: &'a [Box<str>],
        /// Snapshot first.
        snapshot: bool,
    },
    /// `unsub`.
    Unsub {
        /// Frame id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Patterns.
        tags: &'a [Box<str>],
    },
    /// `pub`.
    Pub {
        /// Frame id; none for fire-and-forget.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Tag.
        tag: &'a str,
        /// Body.
        body: &'a RawValue,
        /// Retain.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        retain: bool,
        /// Correlation id.
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
    },
    /// `claim`.
    Claim {
        /// Frame id.
        id: u64,
        /// Prefix.
        prefix: &'a str,
    },
    /// `req`.
    Req {
        /// Request id.
        rid: u64,
        /// Tag.
        tag: &'a str,
        /// Body.
        body: &'a RawValue,
        /// Timeout.
        timeout_ms: u64,
        /// Correlation id.
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
    },
    /// `rep` with a body.
    Rep {
        /// The hub's rid.
        rid: u64,
        /// Body.
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<&'a RawValue>,
        /// Error.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a super::ErrorBody>,
    },
    /// `ping`.
    Ping {
        /// Frame id.
        id: u64,
    },
    /// `pong`.
    Pong,
}

impl ClientOut<'_> {
    /// Appends this frame as one line.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        line(buf, self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_encoding_is_valid_json_with_the_body_where_it_says() {
        let body = RawValue::from_string(r#"{"power":"on"}"#.into()).unwrap();
        for (tag, from, cid) in [
            ("dev/p1/state", "agent", Some("c-1")),
            ("we\"ird\n", "a\\b", None),
        ] {
            let mut buf = b"xx".to_vec();
            let at = encode_msg(&mut buf, tag, &body, from, 1234567, true, cid);
            let frame = &buf[2..];
            assert_eq!(&frame[at..at + body.get().len()], body.get().as_bytes());
            let v: serde_json::Value = serde_json::from_slice(frame).unwrap();
            assert_eq!(v["op"], "msg");
            assert_eq!(v["tag"], tag);
            assert_eq!(v["from"], from);
            assert_eq!(v["seq"], 1234567);
            assert_eq!(v["retained"], true);
            assert_eq!(v["cid"].as_str(), cid);
            assert_eq!(v["body"]["power"], "on");
            assert!(frame.ends_with(b"}\n"));
        }
    }
}
