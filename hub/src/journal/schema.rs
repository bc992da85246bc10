//! The journal's tables, and opening the file for writing or reading.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoredValue;

/// The schema version this build writes (`PRAGMA user_version`).
const VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS retained (
    tag TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    source TEXT NOT NULL,
    time INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    time INTEGER NOT NULL,
    instance TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    source TEXT,
    cid TEXT
);
CREATE INDEX IF NOT EXISTS history_device ON history (device, id);
CREATE INDEX IF NOT EXISTS history_time ON history (time);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    cid TEXT NOT NULL,
    device TEXT NOT NULL,
    desired TEXT NOT NULL,
    token TEXT,
    role TEXT,
    client TEXT NOT NULL,
    peer TEXT NOT NULL,
    transport TEXT NOT NULL,
    received INTEGER NOT NULL,
    forwarded INTEGER,
    agent TEXT,
    answered INTEGER,
    status TEXT NOT NULL,
    timed_out INTEGER NOT NULL DEFAULT 0,
    state TEXT,
    error TEXT,
    late_time INTEGER,
    note TEXT
);
CREATE INDEX IF NOT EXISTS commands_cid ON commands (cid);
CREATE INDEX IF NOT EXISTS commands_device ON commands (device, id);
CREATE INDEX IF NOT EXISTS commands_received ON commands (received);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    token TEXT,
    role TEXT,
    client TEXT NOT NULL,
    peer TEXT NOT NULL,
    transport TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
";

/// Opens the file for the writer: WAL, the schema, and a size cap.
pub fn open_writer(path: &Path, max_bytes: u64) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Fails on a file that is not a database ("file is not a database").
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the file was written by a newer patchbay (schema {version}; this one knows {VERSION})"
        )));
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the file cannot use write-ahead logging (journal mode {mode})"
        )));
    }
    // A process crash loses nothing committed; power loss may lose the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", VERSION)?;
    if max_bytes > 0 {
        let page: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        conn.pragma_update(None, "max_page_count", (max_bytes / page).max(1))?;
    }
    // Commands the previous run never saw answered.
    conn.execute(
        "UPDATE commands SET status = 'unknown', note = 'the hub stopped before an answer arrived' WHERE status = 'pending'",
        [],
    )?;
    Ok(conn)
}

/// Opens the file for reading.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// The id the next command gets.
pub fn next_command_id(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM commands", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
}

/// Every retained value, in tag order.
pub fn load_retained(conn: &Connection) -> rusqlite::Result<Vec<StoredValue>> {
    let mut stmt = conn.prepare("SELECT tag, body, source, time FROM retained ORDER BY tag")?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredValue {
            tag: r.get(0)?,
            body: r.get(1)?,
            from: r.get(2)?,
            time_ms: r.get::<_, i64>(3)? as u64,
        })
    })?;
    rows.collect()
}
