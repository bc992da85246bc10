//! The questions the journal answers, asked the same way over HTTP (query
//! strings) and over the wire (a `req` to `hub/journal/<question>` whose
//! body holds the same fields as JSON).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::query::{self, CommandFilter, HistoryFilter, MAX_LIMIT};
use super::{Journal, JournalError};

/// The tag prefix of the journal's questions on the wire.
pub const PREFIX: &str = "hub/journal/";

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

/// How long a read waits for the writer to commit what came before it.
const BARRIER: Duration = Duration::from_secs(2);

/// A time: Unix milliseconds, or a span before now such as `90s`, `15m`, `2h`, `7d`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimeArg {
    /// Unix milliseconds.
    Ms(u64),
    /// Text: digits (Unix ms) or a span before now.
    Text(String),
}

impl TimeArg {
    /// The time in Unix ms, relative to `now`.
    pub fn resolve(&self, name: &str, now: u64) -> Result<u64, String> {
        // The file keeps times as signed 64-bit numbers.
        let in_range = |ms: u64| {
            if ms > i64::MAX as u64 {
                Err(format!("`{name}` is past the largest time, {}", i64::MAX))
            } else {
                Ok(ms)
            }
        };
        let text = match self {
            TimeArg::Ms(ms) => return in_range(*ms),
            TimeArg::Text(t) => t.trim(),
        };
        if let Ok(ms) = text.parse::<u64>() {
            return in_range(ms);
        }
        let bad = || {
            format!("`{name}` must be Unix milliseconds or a span before now such as 90s, 15m, 2h or 7d; got `{text}`")
        };
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = text.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let unit_ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        Ok(now.saturating_sub(n.saturating_mul(unit_ms)))
    }
}

/// `GET /api/commands`, or `hub/journal/commands`.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommandsQuery {
    /// Only this device.
    pub device: Option<String>,
    /// Only from this token or client name.
    pub who: Option<String>,
    /// Received at or after: Unix ms, or a span before now (`2h`, `7d`).
    #[param(value_type = Option<String>)]
    pub since: Option<TimeArg>,
    /// Received before: Unix ms, or a span before now.
    #[param(value_type = Option<String>)]
    pub until: Option<TimeArg>,
    /// Only `pending`, `confirmed`, `failed` or `unknown`.
    pub outcome: Option<String>,
    /// Rows per page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub before: Option<i64>,
}

/// `GET /api/devices/{id}/history` and `GET /api/audit`, or `hub/journal/history` (with `device`) and `hub/journal/audit`.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The device (wire only; HTTP has it in the path).
    #[serde(default)]
    #[param(ignore)]
    pub device: Option<String>,
    /// At or after: Unix ms, or a span before now (`2h`, `7d`).
    #[param(value_type = Option<String>)]
    pub since: Option<TimeArg>,
    /// Before: Unix ms, or a span before now.
    #[param(value_type = Option<String>)]
    pub until: Option<TimeArg>,
    /// Only this kind: for history `state`, `online` or `event`; for audit `auth_failed`, `claim`, `claim_refused`, `release`, `hub_started`, `hub_stopped`.
    pub kind: Option<String>,
    /// Rows per page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub before: Option<i64>,
}

/// `GET /api/devices/{id}/usage`, or `hub/journal/usage` (with `device`).
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// The device (wire only; HTTP has it in the path).
    #[serde(default)]
    #[param(ignore)]
    pub device: Option<String>,
    /// Days back, today included: 1 to 366 (default 30).
    pub days: Option<u32>,
}

/// `hub/journal/command`: one command by correlation id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandQuery {
    /// The correlation id.
    pub cid: String,
}

/// A question for the journal.
#[derive(Debug, Clone)]
pub enum Question {
    /// Commands, newest first.
    Commands(CommandsQuery),
    /// One command.
    Command(String),
    /// A device's history.
    History(String, HistoryQuery),
    /// The audit trail.
    Audit(HistoryQuery),
    /// A device's usage.
    Usage(String, u32),
}

impl Question {
    /// Whether a token with read rules may ask this: only about one device
    /// it may read (the audit trail, and commands of all devices, are not).
    pub fn check_access(&self, access: &crate::access::Access) -> Result<(), String> {
        let device = match self {
            Question::Commands(q) => q.device.as_deref(),
            Question::History(d, _) | Question::Usage(d, _) => Some(d.as_str()),
            // Checked on the answer, which names the device.
            Question::Command(_) => return Ok(()),
            Question::Audit(_) => None,
        };
        match device {
            Some(d) if access.may_read(&format!("dev/{d}")) => Ok(()),
            Some(d) => Err(format!("this token may not read `{d}` (its `read`/`deny` rules)")),
            None => Err("this token's read rules allow journal questions about one device it may read: give `device`".into()),
        }
    }

    /// Whether a token with read rules may have this question's answer
    /// without seeing it first: all but a command looked up by its
    /// correlation id, whose answer names its device ([`check_command_answer`]).
    pub fn answer_needs_check(&self) -> bool {
        matches!(self, Question::Command(_))
    }
}

/// Whether a token with read rules may read a command the journal found by
/// its correlation id (the answer names the device).
pub fn check_command_answer(access: &crate::access::Access, answer: &str) -> Result<(), String> {
    let device = serde_json::from_str::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v.get("device").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_default();
    if access.may_read(&format!("dev/{device}")) {
        Ok(())
    } else {
        // As if there were none, so the answer does not name the device.
        Err("no command with this correlation id".into())
    }
}

/// Why a question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QuestionError {
    /// The question is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Nothing matches.
    #[error("{0}")]
    NotFound(String),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

fn limit(l: Option<usize>) -> Result<usize, QuestionError> {
    match l {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(QuestionError::Invalid(format!(
            "`limit` must be from 1 to {MAX_LIMIT}; got {n}"
        ))),
    }
}

fn times(
    since: &Option<TimeArg>,
    until: &Option<TimeArg>,
    now: u64,
) -> Result<(Option<u64>, Option<u64>), QuestionError> {
    let since = since
        .as_ref()
        .map(|t| t.resolve("since", now))
        .transpose()
        .map_err(QuestionError::Invalid)?;
    let until = until
        .as_ref()
        .map(|t| t.resolve("until", now))
        .transpose()
        .map_err(QuestionError::Invalid)?;
    Ok((since, until))
}

fn one_of(name: &str, value: &Option<String>, allowed: &[&str]) -> Result<(), QuestionError> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => Err(QuestionError::Invalid(format!(
            "`{name}` must be one of {}; got `{v}`",
            allowed.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// The kinds of history rows.
pub const HISTORY_KINDS: &[&str] = &["state", "online", "event"];

/// The kinds of audit rows.
pub const AUDIT_KINDS: &[&str] = &[
    "auth_failed",
    "claim",
    "claim_refused",
    "release",
    "hub_started",
    "hub_stopped",
    "group_defined",
    "group_deleted",
    "group_run",
    "scene_defined",
    "scene_deleted",
    "scene_run",
    "alert_opened",
    "alert_acknowledged",
    "alert_closed",
    "schedule_run",
    "schedule_missed",
    "config_reloaded",
    "config_reload_failed",
];

impl Question {
    /// Reads a wire question: `what` is the tag after [`PREFIX`], `body` its JSON.
    pub fn from_wire(what: &str, body: &str) -> Result<Question, QuestionError> {
        let body = if body.trim() == "null" { "{}" } else { body };
        let bad = |e: serde_json::Error| QuestionError::Invalid(format!("`{PREFIX}{what}`: {e}"));
        let device = |d: Option<String>| {
            d.ok_or_else(|| QuestionError::Invalid(format!("`{PREFIX}{what}` needs `device`")))
        };
        Ok(match what {
            "commands" => Question::Commands(serde_json::from_str(body).map_err(bad)?),
            "command" => {
                Question::Command(serde_json::from_str::<CommandQuery>(body).map_err(bad)?.cid)
            }
            "history" => {
                let q: HistoryQuery = serde_json::from_str(body).map_err(bad)?;
                Question::History(device(q.device.clone())?, q)
            }
            "audit" => Question::Audit(serde_json::from_str(body).map_err(bad)?),
            "usage" => {
                let q: UsageQuery = serde_json::from_str(body).map_err(bad)?;
                Question::Usage(device(q.device)?, q.days.unwrap_or(30))
            }
            other => {
                return Err(QuestionError::NotFound(format!(
                    "the journal answers `{PREFIX}commands`, `command`, `history`, `audit` and `usage`, not `{other}`"
                )))
            }
        })
    }

    /// Answers with JSON text, after what was queued before is committed.
    pub async fn answer(self, journal: &Arc<Journal>) -> Result<String, QuestionError> {
        let now = crate::server::now_ms();
        match self {
            Question::Commands(q) => {
                one_of(
                    "outcome",
                    &q.outcome,
                    &["pending", "confirmed", "failed", "unknown"],
                )?;
                let (since, until) = times(&q.since, &q.until, now)?;
                let f = CommandFilter {
                    device: q.device,
                    who: q.who,
                    since,
                    until,
                    status: q.outcome,
                    limit: limit(q.limit)?,
                    before: q.before,
                };
                journal.barrier(BARRIER).await;
                let page = journal.read(move |c| query::commands(c, &f)).await?;
                Ok(json(&page))
            }
            Question::Command(cid) => {
                journal.barrier(BARRIER).await;
                let key = cid.clone();
                match journal.read(move |c| query::command(c, &key)).await? {
                    Some(e) => Ok(json(&e)),
                    None => Err(QuestionError::NotFound(format!(
                        "no command with correlation id `{cid}` in the journal"
                    ))),
                }
            }
            Question::History(device, q) => {
                one_of("kind", &q.kind, HISTORY_KINDS)?;
                let (since, until) = times(&q.since, &q.until, now)?;
                let f = HistoryFilter {
                    since,
                    until,
                    kind: q.kind,
                    limit: limit(q.limit)?,
                    before: q.before,
                };
                journal.barrier(BARRIER).await;
                let page = journal
                    .read(move |c| query::history(c, &device, &f))
                    .await?;
                Ok(json(&page))
            }
            Question::Audit(q) => {
                one_of("kind", &q.kind, AUDIT_KINDS)?;
                let (since, until) = times(&q.since, &q.until, now)?;
                let f = HistoryFilter {
                    since,
                    until,
                    kind: q.kind,
                    limit: limit(q.limit)?,
                    before: q.before,
                };
                journal.barrier(BARRIER).await;
                let page = journal.read(move |c| query::audit(c, &f)).await?;
                Ok(json(&page))
            }
            Question::Usage(device, days) => {
                if !(1..=366).contains(&days) {
                    return Err(QuestionError::Invalid(format!(
                        "`days` must be from 1 to 366; got {days}"
                    )));
                }
                journal.barrier(BARRIER).await;
                let report = journal
                    .read(move |c| query::usage(c, &device, days, now))
                    .await?;
                Ok(json(&report))
            }
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}
