//! Frames the hub sends, as a client reads them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The error part of an `err` frame or of a failed reply: a code for programs
/// and a message for people, and, from responders that have them, protocol
/// detail and what became of each part of the request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A snake_case code: one of [`super::ErrorCode`] from the hub, or the responder's own.
    pub code: String,
    /// What went wrong, in words.
    pub message: String,
    /// Protocol detail for the record (what was sent, what the device answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Per-part outcome: for a device command, `{"applied": {...}, "failed":
    /// {...}, "skipped": [...]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.into(),
            message: message.into(),
            detail: None,
            outcome: None,
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A frame from the hub, decoded by a client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ServerFrame {
    /// Answer to `hello`.
    Welcome {
        /// The hub's id for this connection.
        client: u64,
        /// The name the hub will show as `from`.
        name: String,
        /// The role granted.
        role: String,
        /// The hub's version.
        version: String,
    },
    /// A routed message.
    Msg {
        /// Concrete tag.
        tag: String,
        /// The published body.
        body: Value,
        /// Publisher name.
        from: String,
        /// Hub-wide sequence number.
        seq: u64,
        /// True when the tag's value is retained by the hub.
        #[serde(default)]
        retained: bool,
        /// Correlation id, when the publisher gave one.
        #[serde(default)]
        cid: Option<String>,
    },
    /// A request routed to this client; answer with `rep` and the same `rid`.
    Req {
        /// Concrete tag.
        tag: String,
        /// Request body.
        body: Value,
        /// The hub's request id.
        rid: u64,
        /// Requester name.
        from: String,
        /// Correlation id, when the requester gave one.
        #[serde(default)]
        cid: Option<String>,
    },
    /// The reply to this client's request.
    Rep {
        /// The requester's own `rid`.
        rid: Value,
        /// Reply body.
        body: Value,
    },
    /// Success for a frame that carried an `id`; `seq` ends a snapshot.
    Ok {
        /// The frame's id.
        #[serde(default)]
        id: Option<Value>,
        /// For `sub` with snapshot: the seq up to which the snapshot is complete.
        #[serde(default)]
        seq: Option<u64>,
    },
    /// Failure of a frame (with its `id`), of a request (with its `rid`), or of the connection.
    Err {
        /// The frame's id, when it had one.
        #[serde(default)]
        id: Option<Value>,
        /// The request's rid, when a request failed.
        #[serde(default)]
        rid: Option<Value>,
        /// Machine-readable reason.
        code: String,
        /// Human-readable reason.
        message: String,
    },
    /// Opens the snapshot of the `sub` with this `id`; its `ok` closes it.
    Snapshot {
        /// The `sub` frame's id.
        #[serde(default)]
        id: Option<Value>,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's id.
        #[serde(default)]
        id: Option<Value>,
    },
    /// The hub checking that an idle client is alive; answer `pong`.
    Ping,
}
