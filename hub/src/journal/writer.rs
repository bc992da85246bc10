//! The writer thread: takes records from the queue and commits them in
//! batched transactions; prunes old rows in the background.
//!
//! A batch is committed when it holds [`MAX_BATCH`] records, when its first
//! record has waited `flush`, or at once for a barrier or a stop. A failed
//! transaction (a full disk, an I/O error) is kept and retried every
//! [`RETRY`] while the queue's bound protects memory; the hub is told it is
//! degraded until a retry succeeds.

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use serde_json::{Map, Value};

use super::{JournalConfig, JournalStats, Outcome, Record};
use crate::server::Retained;

/// Most records in one transaction.
pub const MAX_BATCH: usize = 8192;

/// How long the writer waits before retrying a failed transaction.
const RETRY: Duration = Duration::from_secs(1);

/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Rows deleted per pruning transaction, so pruning never holds the file long.
const PRUNE_CHUNK: usize = 20_000;

/// Size of the database file plus its write-ahead log.
pub fn file_bytes(path: &Path) -> u64 {
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    len(path) + len(Path::new(&wal))
}

/// The writer's loop; returns after a [`Record::Stop`] or when every sender is gone.
pub fn run(
    mut conn: Connection,
    rx: Receiver<Record>,
    stats: Arc<JournalStats>,
    cfg: JournalConfig,
    path: std::path::PathBuf,
    instance: String,
) {
    let mut batch: Vec<Record> = Vec::with_capacity(1024);
    let mut next_prune = Instant::now();
    let mut stopping = false;
    while !stopping {
        let wait = next_prune.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(r) => batch.push(r),
            Err(RecvTimeoutError::Timeout) => {
                prune(&conn, &stats, &cfg, &path);
                next_prune = Instant::now() + PRUNE_EVERY;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let deadline = Instant::now() + cfg.flush;
        let mut urgent = matches!(batch[0], Record::Barrier(_) | Record::Stop);
        while !urgent && batch.len() < MAX_BATCH {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(r) => {
                    urgent = matches!(r, Record::Barrier(_) | Record::Stop);
                    batch.push(r);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    stopping = true;
                    break;
                }
            }
        }
        stats.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        stopping |= batch.iter().any(|r| matches!(r, Record::Stop));
        loop {
            match commit(&mut conn, &batch, &instance) {
                Ok(max_seq) => {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    stats
                        .written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    stats.committed_seq.fetch_max(max_seq, Ordering::Relaxed);
                    stats.file_bytes.store(file_bytes(&path), Ordering::Relaxed);
                    if stats.write_errors.load(Ordering::Relaxed) > 0 || stats.degraded().is_some()
                    {
                        if stats.degraded().is_some() {
                            tracing::info!("the journal is writing again");
                        }
                        stats.set_degraded(None);
                        stats.warned.store(false, Ordering::Relaxed);
                    }
                    break;
                }
                Err(e) => {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    let why = format!(
                        "cannot write the journal {}: {e}; routing goes on, and the hub retries every {} s",
                        path.display(),
                        RETRY.as_secs()
                    );
                    tracing::error!("{why}");
                    stats.set_degraded(Some(why));
                    // Waits for the retry, unless the hub is shutting down.
                    let until = Instant::now() + RETRY;
                    while !stopping && Instant::now() < until {
                        stopping = stats.stopping.load(Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if stopping {
                        tracing::error!(
                            records = batch.len(),
                            "the hub stops with journal records it could not write"
                        );
                        break;
                    }
                }
            }
        }
        for r in batch.drain(..) {
            if let Record::Barrier(tx) = r {
                let _ = tx.send(());
            }
        }
    }
}

/// The `from` and `cid` of an encoded `msg` frame.
#[derive(serde::Deserialize)]
struct FrameMeta<'a> {
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(default, borrow)]
    cid: Option<Cow<'a, str>>,
}

fn frame_meta(v: &Retained) -> (String, Option<String>) {
    match serde_json::from_slice::<FrameMeta>(&v.frame) {
        Ok(m) => (m.from.into_owned(), m.cid.map(Cow::into_owned)),
        Err(_) => (String::new(), None),
    }
}

fn object(body: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// The fields of `new` that differ from `old`, with removed ones as `null`.
fn changes(old: Option<&str>, new: &str) -> Option<String> {
    let Some(new_map) = object(new) else {
        return Some(new.to_owned());
    };
    let old_map = old.and_then(object).unwrap_or_default();
    let mut out = Map::new();
    for (k, v) in &new_map {
        if old_map.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    for k in old_map.keys() {
        if !new_map.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    (!out.is_empty()).then(|| Value::Object(out).to_string())
}

/// Whether reachability or its reason changed.
fn online_changed(old: Option<&str>, new: &str) -> bool {
    let pick = |b: &str| {
        let m = object(b).unwrap_or_default();
        (m.get("online").cloned(), m.get("reason").cloned())
    };
    old.map(pick) != Some(pick(new))
}

fn outcome_columns(o: &Outcome) -> (&'static str, Option<&str>, Option<String>) {
    match o {
        Outcome::Confirmed(state) => ("confirmed", Some(state.as_str()), None),
        Outcome::Failed(e) => (
            "failed",
            None,
            Some(serde_json::to_string(e).unwrap_or_default()),
        ),
        Outcome::TimedOut => ("unknown", None, None),
        Outcome::Unknown(e) => (
            "unknown",
            None,
            Some(serde_json::to_string(e).unwrap_or_default()),
        ),
    }
}

/// Writes one batch in one transaction; returns the highest seq in it.
fn commit(conn: &mut Connection, batch: &[Record], instance: &str) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut max_seq = 0;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO retained (tag, body, source, time) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tag) DO UPDATE SET body = excluded.body, source = excluded.source, time = excluded.time",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM retained WHERE tag = ?1")?;
        let mut history = tx.prepare_cached(
            "INSERT INTO history (device, time, instance, seq, kind, body, source, cid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut start = tx.prepare_cached(
            "INSERT INTO commands (id, cid, device, desired, token, role, client, peer, transport, received, forwarded, agent, answered, status, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        let mut end = tx.prepare_cached(
            "UPDATE commands SET answered = ?2, status = ?3, state = ?4, error = ?5, timed_out = ?6 WHERE id = ?1",
        )?;
        let mut late = tx.prepare_cached(
            "UPDATE commands SET late_time = ?2, status = ?3, state = ?4, error = ?5 WHERE id = ?1",
        )?;
        let mut audit = tx.prepare_cached(
            "INSERT INTO audit (time, kind, token, role, client, peer, transport, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for r in batch {
            match r {
                Record::Retained { tag, new, old, seq } => {
                    max_seq = max_seq.max(*seq);
                    let Some(new) = new else {
                        delete.execute([&**tag])?;
                        continue;
                    };
                    let (from, cid) = frame_meta(new);
                    put.execute(params![&**tag, new.body(), from, new.time_ms as i64])?;
                    let Some((device, part)) = crate::devices::split_tag(tag) else {
                        continue;
                    };
                    let old_body = old.as_ref().map(Retained::body);
                    let row = match part {
                        "state" => changes(old_body, new.body()).map(|c| ("state", c)),
                        "online" if online_changed(old_body, new.body()) => {
                            Some(("online", new.body().to_owned()))
                        }
                        _ => None,
                    };
                    if let Some((kind, body)) = row {
                        history.execute(params![
                            device,
                            new.time_ms as i64,
                            instance,
                            *seq as i64,
                            kind,
                            body,
                            from,
                            cid
                        ])?;
                    }
                }
                Record::Event(v) => {
                    max_seq = max_seq.max(v.seq);
                    if let Some((device, _)) = crate::devices::split_tag(&v.tag) {
                        let (from, cid) = frame_meta(v);
                        history.execute(params![
                            device,
                            v.time_ms as i64,
                            instance,
                            v.seq as i64,
                            "event",
                            v.body(),
                            from,
                            cid
                        ])?;
                    }
                }
                Record::CommandStart(c) => {
                    let (status, error) = match &c.refused {
                        Some(e) => ("failed", Some(serde_json::to_string(e).unwrap_or_default())),
                        None => ("pending", None),
                    };
                    start.execute(params![
                        c.id as i64,
                        c.cid,
                        c.device,
                        c.desired,
                        c.who.token,
                        c.who.role,
                        c.who.client,
                        c.who.peer,
                        c.who.transport,
                        c.received_ms as i64,
                        c.forwarded_ms.map(|t| t as i64),
                        c.agent,
                        c.refused.as_ref().map(|_| c.received_ms as i64),
                        status,
                        error
                    ])?;
                }
                Record::CommandEnd {
                    id,
                    time_ms,
                    outcome,
                } => {
                    let (status, state, error) = outcome_columns(outcome);
                    let timed_out = matches!(outcome, Outcome::TimedOut);
                    end.execute(params![
                        *id as i64,
                        *time_ms as i64,
                        status,
                        state,
                        error,
                        timed_out
                    ])?;
                }
                Record::CommandLate {
                    id,
                    time_ms,
                    outcome,
                } => {
                    let (status, state, error) = outcome_columns(outcome);
                    late.execute(params![*id as i64, *time_ms as i64, status, state, error])?;
                }
                Record::Audit(a) => {
                    audit.execute(params![
                        a.time_ms as i64,
                        a.kind,
                        a.who.token,
                        a.who.role,
                        a.who.client,
                        a.who.peer,
                        a.who.transport,
                        a.subject,
                        a.detail
                    ])?;
                }
                Record::Barrier(_) | Record::Stop => {}
            }
        }
    }
    tx.commit()?;
    Ok(max_seq)
}

/// Deletes rows older than `history_days`, a chunk per transaction.
fn prune(conn: &Connection, stats: &JournalStats, cfg: &JournalConfig, path: &Path) {
    let cutoff = crate::server::now_ms() as i64 - i64::from(cfg.history_days) * 86_400_000;
    let mut deleted = 0;
    for (table, column) in [
        ("history", "time"),
        ("commands", "received"),
        ("audit", "time"),
    ] {
        let sql = format!(
            "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {column} < ?1 LIMIT {PRUNE_CHUNK})"
        );
        loop {
            match conn.execute(&sql, [cutoff]) {
                Ok(0) => break,
                Ok(n) => deleted += n,
                Err(e) => {
                    tracing::warn!("pruning the journal failed: {e}");
                    break;
                }
            }
        }
    }
    if deleted > 0 {
        tracing::info!(
            rows = deleted,
            days = cfg.history_days,
            "pruned old journal rows"
        );
        stats.file_bytes.store(file_bytes(path), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_the_fields_that_differ() {
        assert_eq!(
            changes(
                Some(r#"{"power":"off","input":"hdmi1"}"#),
                r#"{"power":"on","input":"hdmi1"}"#
            ),
            Some(r#"{"power":"on"}"#.to_owned())
        );
        assert_eq!(changes(Some(r#"{"a":1}"#), r#"{"a":1}"#), None);
        assert_eq!(
            changes(Some(r#"{"a":1,"b":2}"#), r#"{"a":1}"#),
            Some(r#"{"b":null}"#.to_owned())
        );
        assert_eq!(changes(None, r#"{"a":1}"#), Some(r#"{"a":1}"#.to_owned()));
    }

    #[test]
    fn online_changes_on_reachability_or_reason() {
        assert!(online_changed(None, r#"{"online":true}"#));
        assert!(!online_changed(
            Some(r#"{"online":true,"since":1}"#),
            r#"{"online":true,"since":2}"#
        ));
        assert!(online_changed(
            Some(r#"{"online":false,"reason":"a"}"#),
            r#"{"online":false,"reason":"b"}"#
        ));
    }
}
