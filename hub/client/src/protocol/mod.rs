//! The wire protocol: one JSON object per line (NDJSON), over TCP or as
//! WebSocket text messages.
//!
//! Pure data and functions, so the hub, the client library, agents and the
//! CLI all share it. `docs/protocol.md` describes the frames.

mod body;
mod code;
mod decode;
mod encode;
mod server_frame;

pub use body::{check_body, MAX_DEPTH};
pub use code::ErrorCode;
pub use decode::{parse_client_frame, ClientFrame, FrameError, Incoming};
pub use encode::{
    encode_err, encode_msg, encode_ok, encode_ping, encode_pong, encode_rep, encode_req,
    encode_request_err, encode_snapshot, encode_welcome, json_str, ClientOut,
};
pub use server_frame::{ErrorBody, ServerFrame};

/// Default TCP port of the hub's wire protocol.
pub const DEFAULT_PORT: u16 = 7400;
