//! Reading the journal: commands, device history, audit and usage, newest
//! first and paged by id (`before` is the `next` of the previous page).

use rusqlite::types::ToSql;
use rusqlite::{params, Connection, Row};
use serde::Serialize;
use serde_json::Value;

use super::usage::{self, Change};
use super::Who;

/// Most rows one page may hold.
pub const MAX_LIMIT: usize = 1000;

/// One page of results.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    /// The rows, newest first.
    pub items: Vec<T>,
    /// Pass as `before` to get the next (older) page; `null` on the last page.
    pub next: Option<i64>,
}

/// Which commands to list.
#[derive(Debug, Default, Clone)]
pub struct CommandFilter {
    /// Only this device.
    pub device: Option<String>,
    /// Only from this token or client name.
    pub who: Option<String>,
    /// Received at or after (Unix ms).
    pub since: Option<u64>,
    /// Received before (Unix ms).
    pub until: Option<u64>,
    /// Only with this status: `pending`, `confirmed`, `failed`, `unknown`.
    pub status: Option<String>,
    /// Rows per page.
    pub limit: usize,
    /// Only rows with a smaller id.
    pub before: Option<i64>,
}

/// Which history rows to list.
#[derive(Debug, Default, Clone)]
pub struct HistoryFilter {
    /// At or after (Unix ms).
    pub since: Option<u64>,
    /// Before (Unix ms).
    pub until: Option<u64>,
    /// Only this kind (`state`, `online`, `event`; for audit its own kinds).
    pub kind: Option<String>,
    /// Rows per page.
    pub limit: usize,
    /// Only rows with a smaller id.
    pub before: Option<i64>,
}

/// A command as the journal knows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CommandEntry {
    /// The journal's id.
    pub id: i64,
    /// Correlation id.
    pub cid: String,
    /// Device id.
    pub device: String,
    /// The desired settings.
    #[schema(value_type = Object)]
    pub desired: Value,
    /// Who sent it.
    pub who: Who,
    /// When the hub received it (Unix ms).
    pub received: u64,
    /// When it was forwarded to the agent (Unix ms); `null` if it never was.
    pub forwarded: Option<u64>,
    /// The agent it went to.
    pub agent: Option<String>,
    /// When the answer (or the timeout) came (Unix ms).
    pub answered: Option<u64>,
    /// `pending`, `confirmed`, `failed`, or `unknown` (timed out with no answer yet).
    pub status: String,
    /// Whether the requester's timeout passed before the answer.
    pub timed_out: bool,
    /// When an answer arrived after the timeout (Unix ms).
    pub late: Option<u64>,
    /// The confirmed state.
    #[schema(value_type = Option<Object>)]
    pub state: Option<Value>,
    /// The error: `code`, `message`, and `detail` and `outcome` (what was applied) when known.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// A remark, e.g. that the hub stopped before an answer arrived.
    pub note: Option<String>,
}

/// One change in a device's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// The journal's id.
    pub id: i64,
    /// Unix ms, the hub's clock.
    pub time: u64,
    /// The hub's seq for the message (per hub instance).
    pub seq: u64,
    /// The hub instance that routed it.
    pub instance: String,
    /// `state` (the changed fields), `online` (the new reachability) or `event`.
    pub kind: String,
    /// The changed fields, the reachability, or the event.
    #[schema(value_type = Object)]
    pub body: Value,
    /// Who published it.
    pub from: Option<String>,
    /// The correlation id of the command that caused it.
    pub cid: Option<String>,
}

/// One audit row.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// The journal's id.
    pub id: i64,
    /// Unix ms.
    pub time: u64,
    /// `auth_failed`, `claim`, `claim_refused`, `release`, `hub_started`, `hub_stopped`.
    pub kind: String,
    /// Who.
    pub who: Who,
    /// What it was about.
    pub subject: String,
    /// The details.
    pub detail: String,
}

/// One day of a device's use.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageDay {
    /// The day (UTC), `YYYY-MM-DD`.
    pub date: String,
    /// Hours the device was on (powered, warming or cooling) and reachable.
    pub hours_on: f64,
    /// The lamp hours the device reported by the end of the day.
    pub lamp_hours: Option<f64>,
}

/// A device's use over the last days.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// Device id.
    pub device: String,
    /// Days are UTC days.
    pub timezone: String,
    /// Oldest first, today last.
    pub days: Vec<UsageDay>,
    /// The sum of `hours_on`.
    pub total_hours_on: f64,
}

fn json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn who(r: &Row, from: usize) -> rusqlite::Result<Who> {
    Ok(Who {
        token: r.get(from)?,
        role: r.get(from + 1)?,
        client: r.get(from + 2)?,
        peer: r.get(from + 3)?,
        transport: r.get(from + 4)?,
    })
}

const COMMAND_COLUMNS: &str = "id, cid, device, desired, token, role, client, peer, transport, received, forwarded, agent, answered, status, timed_out, late_time, state, error, note";

fn command_row(r: &Row) -> rusqlite::Result<CommandEntry> {
    Ok(CommandEntry {
        id: r.get(0)?,
        cid: r.get(1)?,
        device: r.get(2)?,
        desired: json(r.get(3)?).unwrap_or(Value::Null),
        who: who(r, 4)?,
        received: r.get::<_, i64>(9)? as u64,
        forwarded: r.get::<_, Option<i64>>(10)?.map(|t| t as u64),
        agent: r.get(11)?,
        answered: r.get::<_, Option<i64>>(12)?.map(|t| t as u64),
        status: r.get(13)?,
        timed_out: r.get(14)?,
        late: r.get::<_, Option<i64>>(15)?.map(|t| t as u64),
        state: json(r.get(16)?),
        error: json(r.get(17)?),
        note: r.get(18)?,
    })
}

/// A WHERE clause built from the filters that are set.
#[derive(Default)]
struct Clauses {
    sql: Vec<String>,
    args: Vec<Box<dyn ToSql>>,
}

impl Clauses {
    fn add(&mut self, clause: &str, arg: impl ToSql + 'static) {
        self.args.push(Box::new(arg));
        self.sql
            .push(clause.replace('?', &format!("?{}", self.args.len())));
    }

    fn page<T>(
        mut self,
        conn: &Connection,
        select: &str,
        limit: usize,
        before: Option<i64>,
        map: impl Fn(&Row) -> rusqlite::Result<T>,
        id: impl Fn(&T) -> i64,
    ) -> rusqlite::Result<Page<T>> {
        if let Some(b) = before {
            self.add("id < ?", b);
        }
        let limit = limit.clamp(1, MAX_LIMIT);
        let filter = if self.sql.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.sql.join(" AND "))
        };
        let sql = format!("{select}{filter} ORDER BY id DESC LIMIT {}", limit + 1);
        let mut stmt = conn.prepare_cached(&sql)?;
        let args: Vec<&dyn ToSql> = self.args.iter().map(|a| a.as_ref()).collect();
        let mut items = stmt
            .query_map(args.as_slice(), map)?
            .collect::<rusqlite::Result<Vec<T>>>()?;
        let next = (items.len() > limit).then(|| {
            items.truncate(limit);
            items.last().map(&id)
        });
        Ok(Page {
            items,
            next: next.flatten(),
        })
    }
}

/// Commands, newest first.
pub fn commands(conn: &Connection, f: &CommandFilter) -> rusqlite::Result<Page<CommandEntry>> {
    let mut c = Clauses::default();
    if let Some(d) = &f.device {
        c.add("device = ?", d.clone());
    }
    if let Some(w) = &f.who {
        c.add("(token = ? OR client = ?)", w.clone());
    }
    if let Some(s) = f.since {
        c.add("received >= ?", s as i64);
    }
    if let Some(u) = f.until {
        c.add("received < ?", u as i64);
    }
    if let Some(s) = &f.status {
        c.add("status = ?", s.clone());
    }
    c.page(
        conn,
        &format!("SELECT {COMMAND_COLUMNS} FROM commands"),
        f.limit,
        f.before,
        command_row,
        |e| e.id,
    )
}

/// The newest command with this correlation id.
pub fn command(conn: &Connection, cid: &str) -> rusqlite::Result<Option<CommandEntry>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COMMAND_COLUMNS} FROM commands WHERE cid = ?1 ORDER BY id DESC LIMIT 1"
    ))?;
    let mut rows = stmt.query_map([cid], command_row)?;
    rows.next().transpose()
}

/// A device's history, newest first.
pub fn history(
    conn: &Connection,
    device: &str,
    f: &HistoryFilter,
) -> rusqlite::Result<Page<HistoryEntry>> {
    let mut c = Clauses::default();
    c.add("device = ?", device.to_owned());
    if let Some(s) = f.since {
        c.add("time >= ?", s as i64);
    }
    if let Some(u) = f.until {
        c.add("time < ?", u as i64);
    }
    if let Some(k) = &f.kind {
        c.add("kind = ?", k.clone());
    }
    c.page(
        conn,
        "SELECT id, time, seq, instance, kind, body, source, cid FROM history",
        f.limit,
        f.before,
        |r| {
            Ok(HistoryEntry {
                id: r.get(0)?,
                time: r.get::<_, i64>(1)? as u64,
                seq: r.get::<_, i64>(2)? as u64,
                instance: r.get(3)?,
                kind: r.get(4)?,
                body: json(r.get(5)?).unwrap_or(Value::Null),
                from: r.get(6)?,
                cid: r.get(7)?,
            })
        },
        |e| e.id,
    )
}

/// The audit trail, newest first.
pub fn audit(conn: &Connection, f: &HistoryFilter) -> rusqlite::Result<Page<AuditEntry>> {
    let mut c = Clauses::default();
    if let Some(s) = f.since {
        c.add("time >= ?", s as i64);
    }
    if let Some(u) = f.until {
        c.add("time < ?", u as i64);
    }
    if let Some(k) = &f.kind {
        c.add("kind = ?", k.clone());
    }
    c.page(
        conn,
        "SELECT id, time, kind, token, role, client, peer, transport, subject, detail FROM audit",
        f.limit,
        f.before,
        |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                time: r.get::<_, i64>(1)? as u64,
                kind: r.get(2)?,
                who: who(r, 3)?,
                subject: r.get(8)?,
                detail: r.get(9)?,
            })
        },
        |e| e.id,
    )
}

/// Hours on per day and lamp hours over the last `days` UTC days, today included.
pub fn usage(
    conn: &Connection,
    device: &str,
    days: u32,
    now_ms: u64,
) -> rusqlite::Result<UsageReport> {
    let start = usage::day_start(now_ms) - u64::from(days.saturating_sub(1)) * usage::DAY_MS;
    let last = |kind: &str, path: &str| -> rusqlite::Result<Option<Value>> {
        let sql = format!(
            "SELECT json_extract(body, '{path}') FROM history WHERE device = ?1 AND kind = '{kind}' AND time < ?2 AND json_extract(body, '{path}') IS NOT NULL ORDER BY id DESC LIMIT 1"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query_map(params![device, start as i64], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })?;
        Ok(rows.next().transpose()?.map(sql_json))
    };
    let mut changes = Vec::new();
    if let Some(p) = last("state", "$.power")? {
        changes.push((start, Change::Power(p)));
    }
    if let Some(o) = last("online", "$.online")? {
        changes.push((start, Change::Online(o)));
    }
    if let Some(l) = last("state", "$.lamp_hours")? {
        changes.push((start, Change::Lamp(l)));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT time, kind, json_extract(body, '$.power'), json_extract(body, '$.online'), json_extract(body, '$.lamp_hours'),
                json_type(body, '$.power'), json_type(body, '$.online'), json_type(body, '$.lamp_hours')
         FROM history
         WHERE device = ?1 AND kind IN ('state', 'online')
           AND id >= COALESCE((SELECT MIN(id) FROM history WHERE time >= ?2), 9223372036854775807)
         ORDER BY id",
    )?;
    let rows = stmt.query_map(params![device, start as i64], |r| {
        let time = r.get::<_, i64>(0)? as u64;
        let kind: String = r.get(1)?;
        let present =
            |i: usize| -> rusqlite::Result<bool> { Ok(r.get::<_, Option<String>>(i)?.is_some()) };
        let mut out = Vec::new();
        if kind == "state" {
            if present(5)? {
                out.push((time, Change::Power(sql_json(r.get(2)?))));
            }
            if present(7)? {
                out.push((time, Change::Lamp(sql_json(r.get(4)?))));
            }
        } else if present(6)? {
            out.push((time, Change::Online(sql_json(r.get(3)?))));
        }
        Ok(out)
    })?;
    for row in rows {
        changes.extend(row?);
    }
    let days = usage::report(&changes, start, days, now_ms);
    let total = (days.iter().map(|d| d.hours_on).sum::<f64>() * 100.0).round() / 100.0;
    Ok(UsageReport {
        device: device.to_owned(),
        timezone: "UTC".into(),
        days,
        total_hours_on: total,
    })
}

fn sql_json(v: rusqlite::types::Value) -> Value {
    use rusqlite::types::Value as V;
    match v {
        V::Null => Value::Null,
        V::Integer(i) => Value::from(i),
        V::Real(f) => Value::from(f),
        V::Text(t) => Value::String(t),
        V::Blob(_) => Value::Null,
    }
}
