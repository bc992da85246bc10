//! Error codes carried by `err` frames and by failed replies.

use serde::{Deserialize, Serialize};

/// A machine-readable reason in an `err` frame. Each has a stable snake_case
/// spelling on the wire; the `message` beside it is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not valid JSON, not an object, has an unknown `op` or a missing or mistyped field.
    BadFrame,
    /// The line is longer than the hub's `max_frame_bytes`.
    FrameTooLarge,
    /// Too many bad frames in a row; the hub closes the connection.
    TooManyErrors,
    /// A tag or pattern is malformed.
    BadTag,
    /// A token is required and missing, or the token is unknown.
    Unauthorized,
    /// The client's role or claims do not allow the operation.
    Forbidden,
    /// Another live connection already claims an overlapping prefix.
    Owned,
    /// A request found neither an owner nor a subscriber for its tag.
    NoResponder,
    /// A request got no reply within its timeout.
    Timeout,
    /// The responder disconnected before replying.
    Unavailable,
    /// The client fell too far behind; the hub closes the connection.
    SlowConsumer,
    /// The hub is at its connection limit.
    MaxConnections,
    /// The connection is at its subscription limit.
    TooManySubscriptions,
    /// The client was silent past the idle timeout.
    IdleTimeout,
    /// A `rep` names a request id that is not pending for this client.
    UnknownRequest,
    /// The hub is shutting down.
    ShuttingDown,
    /// A new retained tag would pass the hub's `max_retained`.
    RetainedLimit,
    /// The connection already waits for `max_pending_requests` answers.
    TooManyRequests,
    /// The port speaks TLS and the client spoke plain text; the hub closes the connection.
    TlsRequired,
}

impl ErrorCode {
    /// The snake_case wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::TooManyErrors => "too_many_errors",
            ErrorCode::BadTag => "bad_tag",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Owned => "owned",
            ErrorCode::NoResponder => "no_responder",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::MaxConnections => "max_connections",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::UnknownRequest => "unknown_request",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::RetainedLimit => "retained_limit",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::TlsRequired => "tls_required",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
