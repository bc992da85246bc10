//! One client's protocol session, independent of its transport.
//!
//! A transport (TCP here, WebSocket on the HTTP side) feeds complete lines to
//! [`Session::handle_line`] and runs the outbox's writer; the session checks
//! each frame, enforces auth, roles and limits, and calls into the [`Hub`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::hub::{Hub, Identity, OpError, Origin, Transport};
use super::metrics::Metrics;
use super::outbox::{Outbox, Push};
use super::ConnId;
use crate::config::Role;
use crate::journal::Who;
use crate::protocol::{
    encode_err, encode_ok, encode_ping, encode_pong, encode_welcome, parse_client_frame,
    ClientFrame, ErrorBody, ErrorCode,
};
use crate::tag::{validate_pattern, validate_tag, TagError};

/// Whether the transport should keep the connection open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading; the outbox holds the final frame to flush.
    Close,
}

/// The state of one connected client.
pub struct Session {
    hub: Arc<Hub>,
    conn: ConnId,
    outbox: Arc<Outbox>,
    role: Option<Role>,
    peer: SocketAddr,
    transport: Transport,
    greeted: bool,
    bad_in_row: u32,
    opened: Instant,
    last_heard: Instant,
    /// A complete frame arrived since the transport last called [`Session::heard`].
    fresh: bool,
    pinged: bool,
    /// The hub requires a client certificate on this port and none was presented:
    /// only the hub's own automation may go on (on its token).
    cert_missing: bool,
    /// The hub requires client certificates of wire clients, and this
    /// connection came another way (WebSocket): it may not act as an agent.
    agent_needs_cert: bool,
}

/// Why a connection without the client certificate the hub requires is refused.
const CERT_REQUIRED: &str = "this hub requires a client certificate signed by its client CA on the wire port; connect with one (`--tls-cert`/`--tls-key`, an agent's `tls_cert`/`tls_key`)";

/// Longest line accepted before a client has authenticated: enough for any
/// `hello`, too little to make idle sockets expensive.
pub const PREAUTH_MAX_LINE: usize = 4096;

/// Names the hub uses for itself, which no client may take.
const RESERVED_NAMES: &[&str] = &["hub", "http", crate::automation::bus::NAME];

fn tag_error(e: TagError) -> OpError {
    OpError::new(ErrorCode::BadTag, e.to_string())
}

impl Session {
    /// Registers a new connection with the hub.
    pub fn open(
        hub: Arc<Hub>,
        peer: SocketAddr,
        outbox: Arc<Outbox>,
        transport: Transport,
    ) -> Result<Self, OpError> {
        let conn = hub.connect(peer, outbox.clone(), transport)?;
        // Device ownership needs a certificate where the hub asks for one:
        // over WebSocket (no client certificates) nobody becomes an agent.
        let agent_needs_cert =
            transport != Transport::Tcp && hub.tls().is_some_and(|t| t.requires_client_certs());
        let role = (!hub.config().auth_required()).then_some(if agent_needs_cert {
            Role::Operator
        } else {
            Role::Agent
        });
        let now = Instant::now();
        Ok(Session {
            hub,
            conn,
            peer,
            transport,
            outbox,
            role,
            greeted: false,
            bad_in_row: 0,
            opened: now,
            last_heard: now,
            fresh: false,
            pinged: false,
            cert_missing: false,
            agent_needs_cert,
        })
    }

    /// Marks a connection that did not present the client certificate the
    /// hub requires: nothing but the hub's own automation gets past `hello`.
    pub fn requiring_certificate(mut self, missing: bool) -> Self {
        if missing {
            self.cert_missing = true;
            self.role = None;
        }
        self
    }

    /// The hub this session belongs to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The hub's id for this connection.
    pub fn id(&self) -> ConnId {
        self.conn
    }

    /// Longest line the transport should accept now.
    pub fn max_line(&self) -> usize {
        let max = self.hub.config().max_frame_bytes;
        if self.role.is_none() {
            max.min(PREAUTH_MAX_LINE)
        } else {
            max
        }
    }

    fn send(&self, frame: Vec<u8>) {
        if self.outbox.push_control(Bytes::from(frame)) == Push::Overflow {
            Metrics::inc(&self.hub.metrics().slow_consumer_drops);
            self.outbox
                .kill(Bytes::from(ErrorCode::SlowConsumer.frame(
                    "outbound queue full: the client is not reading its replies",
                )));
        }
    }

    fn send_err(&self, id: Option<&RawValue>, e: &OpError) {
        let mut buf = Vec::with_capacity(64 + e.message.len());
        encode_err(&mut buf, id, None, e.code.as_str(), &e.message);
        self.send(buf);
    }

    fn close_with(&self, code: ErrorCode, message: &str) -> Flow {
        self.outbox.end_with(Bytes::from(code.frame(message)));
        Flow::Close
    }

    /// Called by the transport after a read: if a complete frame arrived,
    /// the client is alive as of `now`. Only frames count as a sign of life,
    /// so a trickle of bytes cannot keep a socket open.
    pub fn heard(&mut self, now: Instant) {
        if std::mem::take(&mut self.fresh) {
            self.last_heard = now;
            self.pinged = false;
        }
    }

    /// Notes a sign of life below the protocol (a WebSocket ping or pong).
    pub fn alive(&mut self, now: Instant) {
        self.fresh = true;
        self.heard(now);
    }

    /// When [`Session::tick`] must next run.
    pub fn next_check(&self) -> Instant {
        let cfg = self.hub.config();
        let mut at = if self.pinged {
            self.last_heard + cfg.idle_timeout()
        } else {
            self.last_heard + cfg.ping_interval()
        };
        if self.role.is_none() {
            at = at.min(self.opened + cfg.hello_timeout());
        }
        at
    }

    /// Heartbeat and deadline check: closes a client that has not
    /// authenticated in time, pings a quiet client, closes a silent one.
    pub fn tick(&mut self, now: Instant) -> Flow {
        let cfg = self.hub.config();
        if self.role.is_none() && now >= self.opened + cfg.hello_timeout() {
            Metrics::inc(&self.hub.metrics().unauthenticated_dropped);
            return self.close_with(
                ErrorCode::Unauthorized,
                &format!(
                    "no `hello` with a valid token within {} ms",
                    cfg.hello_timeout_ms
                ),
            );
        }
        let quiet = now.saturating_duration_since(self.last_heard);
        if quiet >= cfg.idle_timeout() {
            return self.close_with(
                ErrorCode::IdleTimeout,
                &format!("nothing received for {} ms", cfg.idle_timeout_ms),
            );
        }
        if quiet >= cfg.ping_interval() && !self.pinged {
            self.pinged = true;
            let mut buf = Vec::with_capacity(16);
            encode_ping(&mut buf);
            self.send(buf);
        }
        Flow::Continue
    }

    /// Reports a line longer than the frame limit (its bytes are being discarded).
    pub fn frame_too_large(&mut self) -> Flow {
        if self.role.is_none() {
            return self.close_with(
                ErrorCode::FrameTooLarge,
                &format!("before `hello`, a frame may be at most {PREAUTH_MAX_LINE} bytes"),
            );
        }
        let e = OpError::new(
            ErrorCode::FrameTooLarge,
            format!(
                "frame exceeds the limit of {} bytes and was discarded",
                self.hub.config().max_frame_bytes
            ),
        );
        self.bad_frame(None, &e)
    }

    fn bad_frame(&mut self, id: Option<&RawValue>, e: &OpError) -> Flow {
        Metrics::inc(&self.hub.metrics().bad_frames);
        self.bad_in_row += 1;
        let limit = self.hub.config().max_bad_frames;
        if self.bad_in_row >= limit {
            self.send_err(id, e);
            return self.close_with(
                ErrorCode::TooManyErrors,
                &format!("{limit} bad frames in a row; closing the connection"),
            );
        }
        self.send_err(id, e);
        Flow::Continue
    }

    /// Handles one line (without its newline).
    pub fn handle_line(&mut self, line: &[u8]) -> Flow {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Flow::Continue;
        }
        if line.len() > self.max_line() {
            return self.frame_too_large();
        }
        self.fresh = true;
        let incoming = match parse_client_frame(line) {
            Ok(i) => i,
            Err(fe) => {
                let e = OpError::new(fe.code, fe.message);
                return self.bad_frame(fe.id.as_deref(), &e);
            }
        };
        self.bad_in_row = 0;
        let id = incoming.id;
        let frame = incoming.frame;
        if let ClientFrame::Hello { name, token } = frame {
            return self.hello(id, name, token);
        }
        let Some(role) = self.role else {
            if self.cert_missing {
                return self.refuse_certless();
            }
            return self.close_with(
                ErrorCode::Unauthorized,
                "this hub requires a token: send {\"op\":\"hello\",\"token\":\"...\"} first",
            );
        };
        match self.dispatch(role, id, frame) {
            Ok(()) => {}
            Err(e) => self.send_err(id, &e),
        }
        Flow::Continue
    }

    fn ok(&self, id: Option<&RawValue>, seq: Option<u64>) {
        if id.is_some() {
            let mut buf = Vec::with_capacity(48);
            encode_ok(&mut buf, id, seq);
            self.send(buf);
        }
    }

    fn require(&self, role: Role, allowed: &[Role], what: &str) -> Result<(), OpError> {
        if allowed.contains(&role) {
            Ok(())
        } else {
            Err(OpError::new(
                ErrorCode::Forbidden,
                format!("the `{}` role may not {what}", role.as_str()),
            ))
        }
    }

    fn dispatch(
        &mut self,
        role: Role,
        id: Option<&RawValue>,
        frame: ClientFrame<'_>,
    ) -> Result<(), OpError> {
        const WRITERS: &[Role] = &[Role::Agent, Role::Operator, Role::Admin];
        match frame {
            ClientFrame::Hello { .. } => unreachable!("handled before dispatch"),
            ClientFrame::Sub { tags, snapshot } => {
                for t in &tags {
                    validate_pattern(t).map_err(tag_error)?;
                }
                self.hub
                    .subscribe(self.conn, &tags, snapshot.then_some(0), id)?;
            }
            ClientFrame::Unsub { tags } => {
                self.hub.unsubscribe(self.conn, &tags);
                self.ok(id, None);
            }
            ClientFrame::Pub {
                tag,
                body,
                retain,
                cid,
            } => {
                self.require(role, WRITERS, "publish")?;
                validate_tag(&tag).map_err(tag_error)?;
                let seq = self
                    .hub
                    .publish(self.conn, &tag, body, retain, cid.as_deref())?;
                self.ok(id, Some(seq));
            }
            ClientFrame::Claim { prefix } => {
                if let Err(e) = self.require(role, &[Role::Agent], "claim tags") {
                    if let Some(who) = self.hub.who(self.conn) {
                        self.hub
                            .audit("claim_refused", who, prefix.clone(), e.message.clone());
                    }
                    return Err(e);
                }
                validate_tag(&prefix).map_err(tag_error)?;
                self.hub.claim(self.conn, &prefix)?;
                self.ok(id, None);
            }
            ClientFrame::Req {
                tag,
                body,
                rid,
                timeout_ms,
                cid,
                on_behalf,
            } => {
                let timeout = timeout_ms.map(Duration::from_millis);

                let sent = self
                    .require(role, WRITERS, "send requests")
                    .and_then(|()| validate_tag(&tag).map_err(tag_error))
                    .and_then(|()| on_behalf.map(|w| self.on_behalf(w)).transpose())
                    .and_then(
                        |origin| match tag.strip_prefix(crate::journal::api::PREFIX) {
                            Some(what) => self.ask_journal(what, body, rid),
                            None if tag == crate::automation::VENUE_SET => {
                                self.venue_command(body, rid)
                            }
                            None if tag == crate::automation::SCENE_RUN => {
                                self.run_scene(body, rid)
                            }
                            None if tag == crate::automation::SCENE_CANCEL => {
                                self.cancel_scene(body, rid)
                            }
                            None => self.hub.request(
                                self.conn,
                                &tag,
                                body,
                                rid,
                                timeout,
                                cid.as_deref(),
                                origin,
                            ),
                        },
                    );
                match sent {
                    Ok(()) => self.ok(id, None),
                    // A failed request carries its rid, so the requester can match it.
                    Err(e) => {
                        let mut buf = Vec::with_capacity(64 + e.message.len());
                        encode_err(&mut buf, id, Some(rid), e.code.as_str(), &e.message);
                        self.send(buf);
                    }
                }
            }
            ClientFrame::Rep { rid, result } => {
                self.hub.reply(self.conn, rid, result)?;
                self.ok(id, None);
            }
            ClientFrame::Ping => {
                let mut buf = Vec::with_capacity(32);
                encode_pong(&mut buf, id);
                self.send(buf);
            }
            ClientFrame::Pong => {}
        }
        Ok(())
    }

    /// Starts a scene (`hub/scenes/run`); answers with the run's id at once,
    /// or `not_found` / `busy` (already running).
    fn run_scene(&self, body: &RawValue, rid: &RawValue) -> Result<(), OpError> {
        use crate::automation::scenes::{RunError, RUNS_PREFIX};
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RunScene {
            scene: String,
        }
        let q: RunScene = serde_json::from_str(body.get())
            .map_err(|e| OpError::new(ErrorCode::BadFrame, format!("`hub/scenes/run`: {e}")))?;
        self.hub.begin_own_answer(self.conn)?;
        let who = self.hub.who(self.conn).unwrap_or_default();
        let (hub, conn, rid) = (self.hub.clone(), self.conn, rid.to_owned());
        tokio::spawn(async move {
            let result = match hub.scenes().start(&hub, &q.scene, who).await {
                Ok(run) => {
                    let answer =
                        serde_json::json!({"run": run, "tag": format!("{RUNS_PREFIX}/{run}")});
                    RawValue::from_string(answer.to_string())
                        .map_err(|e| ErrorBody::new("internal", e.to_string()))
                }
                Err(e @ RunError::Unknown(_)) => Err(ErrorBody::new("not_found", e.to_string())),
                Err(e @ (RunError::Running(..) | RunError::TooMany(_))) => {
                    Err(ErrorBody::new("busy", e.to_string()))
                }
                Err(e @ RunError::Unavailable(_)) => {
                    Err(ErrorBody::new("unavailable", e.to_string()))
                }
            };
            hub.own_answer(conn, rid, result);
        });
        Ok(())
    }

    /// Cancels a scene run (`hub/scenes/cancel`, `{"run": ID}`).
    fn cancel_scene(&self, body: &RawValue, rid: &RawValue) -> Result<(), OpError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct CancelRun {
            run: u64,
        }
        let q: CancelRun = serde_json::from_str(body.get())
            .map_err(|e| OpError::new(ErrorCode::BadFrame, format!("`hub/scenes/cancel`: {e}")))?;
        self.hub.begin_own_answer(self.conn)?;
        let who = self.hub.who(self.conn).unwrap_or_default();
        let result = if self.hub.scenes().cancel(&self.hub, q.run, who) {
            Ok(RawValue::from_string(format!("{{\"cancelled\":{}}}", q.run)).expect("valid JSON"))
        } else {
            Err(ErrorBody::new(
                "not_found",
                format!("no scene run {} under way", q.run),
            ))
        };
        self.hub.own_answer(self.conn, rid.to_owned(), result);
        Ok(())
    }

    /// Runs a group or room command (`hub/venue/set`) on a task of its own.
    fn venue_command(&self, body: &RawValue, rid: &RawValue) -> Result<(), OpError> {
        use crate::automation::{check_command, run_command, VenueCommand};
        let c: VenueCommand = serde_json::from_str(body.get())
            .map_err(|e| OpError::new(ErrorCode::BadFrame, format!("`hub/venue/set`: {e}")))?;
        let (spec, subject) = check_command(&self.hub, &c)?;
        self.hub.begin_own_answer(self.conn)?;
        let hub = self.hub.clone();
        let conn = self.conn;
        let rid = rid.to_owned();
        tokio::spawn(async move {
            let outcome = run_command(hub.clone(), conn, c, spec, subject).await;
            let json = serde_json::to_string(&outcome).unwrap_or_else(|_| "null".into());
            let result =
                RawValue::from_string(json).map_err(|e| ErrorBody::new("internal", e.to_string()));
            hub.own_answer(conn, rid, result);
        });
        Ok(())
    }

    /// Answers a question for the journal (`hub/journal/...`) on a task of its own.
    fn ask_journal(&self, what: &str, body: &RawValue, rid: &RawValue) -> Result<(), OpError> {
        use crate::journal::api::{Question, QuestionError};
        let question = Question::from_wire(what, body.get()).map_err(|e| match e {
            QuestionError::NotFound(m) => OpError::new(ErrorCode::NoResponder, m),
            other => OpError::new(ErrorCode::BadFrame, other.to_string()),
        })?;
        let access = self.hub.identity(self.conn).and_then(|i| i.access);
        let check = question.answer_needs_check();
        if let Some(a) = &access {
            question
                .check_access(a)
                .map_err(|m| OpError::new(ErrorCode::Forbidden, m))?;
        }
        let Some(journal) = self.hub.journal().cloned() else {
            return Err(OpError::new(
                ErrorCode::NoResponder,
                "this hub keeps no journal (it runs with --memory-only or without data_dir)",
            ));
        };
        self.hub.begin_own_answer(self.conn)?;
        let hub = self.hub.clone();
        let conn = self.conn;
        let rid = rid.to_owned();
        // A device the hub has never heard of and with nothing in the journal
        // is unknown, as over HTTP.
        let device = match &question {
            Question::History(d, _) | Question::Usage(d, _) => Some(d.clone()),
            _ => None,
        };
        let unknown = move |hub: &Hub, json: &str| {
            let d = device.as_deref()?;
            let nothing = json.starts_with("{\"items\":[]") || json.starts_with("{\"device\"");
            (nothing && hub.device(d).meta.is_none())
                .then(|| ErrorBody::new("not_found", format!("unknown device `{d}`")))
        };
        tokio::spawn(async move {
            let result = match question.answer(&journal).await {
                Ok(json) => match unknown(&hub, &json) {
                    Some(e) => Err(e),
                    None => match access
                        .as_ref()
                        .filter(|_| check)
                        .map(|a| crate::journal::api::check_command_answer(a, &json))
                    {
                        Some(Err(m)) => Err(ErrorBody::new("not_found", m)),
                        _ => RawValue::from_string(json)
                            .map_err(|e| ErrorBody::new("internal", e.to_string())),
                    },
                },
                Err(QuestionError::NotFound(m)) => Err(ErrorBody::new("not_found", m)),
                Err(QuestionError::Invalid(m)) => Err(ErrorBody::new("invalid_value", m)),
                Err(QuestionError::Journal(e)) => Err(ErrorBody::new("internal", e.to_string())),
            };
            hub.own_answer(conn, rid, result);
        });
        Ok(())
    }

    /// The origin a `req` names in `for`: only the hub's own automation may
    /// send requests on someone else's behalf.
    fn on_behalf(&self, who: &RawValue) -> Result<Origin, OpError> {
        let system = self.hub.identity(self.conn).is_some_and(|i| i.system);
        if !system {
            return Err(OpError::new(
                ErrorCode::Forbidden,
                "`for` (a request on someone else's behalf) is reserved for the hub's own automation",
            ));
        }
        let who: Who = serde_json::from_str(who.get()).map_err(|e| {
            OpError::new(
                ErrorCode::BadFrame,
                format!("`for` must be an object of `token`, `role`, `client`, `peer`, `transport`: {e}"),
            )
        })?;
        Ok(Origin {
            who,
            received_ms: crate::server::now_ms(),
            access: None,
        })
    }

    /// Refuses a client without the certificate the hub requires, audited like a bad token.
    fn refuse_certless(&mut self) -> Flow {
        tracing::warn!(conn = self.conn, peer = %self.peer, "authentication failed: no client certificate");
        self.hub.audit_auth_failure(
            Who {
                client: self
                    .hub
                    .identity(self.conn)
                    .map(|i| i.name.to_string())
                    .unwrap_or_default(),
                peer: self.peer.to_string(),
                transport: self.transport.as_str().to_owned(),
                ..Who::default()
            },
            "no client certificate",
        );
        self.close_with(ErrorCode::Unauthorized, CERT_REQUIRED)
    }

    fn hello(
        &mut self,
        id: Option<&RawValue>,
        name: Option<String>,
        token: Option<String>,
    ) -> Flow {
        if self.greeted {
            self.send_err(
                id,
                &OpError::new(
                    ErrorCode::BadFrame,
                    "`hello` was already sent on this connection",
                ),
            );
            return Flow::Continue;
        }
        let hub = self.hub.clone();
        let cfg = hub.config();
        let name = name
            .map(|n| {
                n.chars()
                    .filter(|c| !c.is_control())
                    .take(128)
                    .collect::<String>()
            })
            .filter(|n| !n.trim().is_empty());
        let system = token
            .as_deref()
            .is_some_and(|t| hub.automation_link().is_own_token(t));
        let current = hub.identity(self.conn);
        let name: Arc<str> = match name {
            Some(n) => Arc::from(n),
            None => current
                .as_ref()
                .map(|i| i.name.clone())
                .unwrap_or_else(|| Arc::from("anonymous")),
        };
        if self.cert_missing && !system {
            return self.refuse_certless();
        }
        let mut access = None;
        let (role, may_claim, principal) = if system {
            (Role::Admin, None, Arc::from(crate::automation::bus::NAME))
        } else if cfg.auth_required() {
            match token.as_deref().and_then(|t| cfg.find_token(t)) {
                Some((i, t)) => {
                    access = crate::access::Access::of(t);
                    (
                        t.role,
                        (t.role == Role::Agent).then(|| t.claims.clone()),
                        hub.token_principal(i),
                    )
                }
                None => {
                    let why = if token.is_some() {
                        "unknown token"
                    } else {
                        "this hub requires a token in `hello`"
                    };
                    tracing::warn!(conn = self.conn, peer = %self.peer, "authentication failed: {why}");
                    hub.audit_auth_failure(
                        Who {
                            client: name.to_string(),
                            peer: self.peer.to_string(),
                            transport: self.transport.as_str().to_owned(),
                            ..Who::default()
                        },
                        why,
                    );
                    return self.close_with(ErrorCode::Unauthorized, why);
                }
            }
        } else {
            let role = if self.agent_needs_cert {
                Role::Operator
            } else {
                Role::Agent
            };
            (role, None, Arc::from(format!("client `{name}`")))
        };
        if role == Role::Agent && self.agent_needs_cert && !system {
            return self.close_with(
                ErrorCode::Unauthorized,
                "this hub requires agents to present a client certificate: connect agents to the wire port over TLS with one, not over WebSocket",
            );
        }
        // Checked after the token, so a wrong token is an authentication
        // failure (audited, closed) whatever name comes with it.
        if !system
            && RESERVED_NAMES
                .iter()
                .any(|r| name.trim().eq_ignore_ascii_case(r))
        {
            self.send_err(
                id,
                &OpError::new(
                    ErrorCode::Forbidden,
                    format!("the name `{name}` is reserved for the hub itself; choose another"),
                ),
            );
            return Flow::Continue;
        }
        let ident = Identity {
            name: name.clone(),
            role: Some(role),
            may_claim,
            principal,
            system,
            token: token
                .filter(|_| cfg.auth_required() && !system)
                .map(Arc::from),
            access,
        };
        if let Err(e) = hub.identify(self.conn, ident) {
            return self.close_with(e.code, &e.message);
        }
        self.role = Some(role);
        self.greeted = true;
        let mut buf = Vec::with_capacity(128);
        encode_welcome(
            &mut buf,
            id,
            self.conn,
            &name,
            role.as_str(),
            hub.instance(),
        );
        self.send(buf);
        Flow::Continue
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub.disconnect(self.conn);
    }
}
