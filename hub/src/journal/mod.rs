//! The hub's memory on disk: the command journal, device history, the audit
//! trail and the retained values, in one SQLite file (WAL mode).
//!
//! The routing path never waits on disk. Operations under the hub lock hand
//! [`Record`]s to a [`Sink`], which queues them for one writer thread and
//! returns at once; the writer commits them in batched transactions, at the
//! latest `journal_flush_ms` after they were queued. History and retained
//! records beyond `journal_queue` waiting are dropped, counted and reported
//! (`/metrics`, the log, `/healthz` degraded); command and audit records are
//! never dropped below four times that bound, and past it each one is logged
//! with its correlation id. Reads (`query.rs`) use their own connections, so
//! they never hold up the writer.

pub mod api;
pub mod query;
mod schema;
mod usage;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use query::{
    AuditEntry, CommandEntry, CommandFilter, HistoryEntry, HistoryFilter, Page, UsageDay,
    UsageReport,
};

pub use usage::date as utc_date;

use crate::protocol::ErrorBody;
use crate::server::Retained;

/// Where the journal lives and how it behaves.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The folder holding `patchbay.db` (created if missing).
    pub dir: PathBuf,
    /// Days of history, commands and audit kept; older rows are pruned in the background.
    pub history_days: u32,
    /// The longest a record waits before its transaction commits.
    pub flush: Duration,
    /// History and retained records that may wait for the writer before new ones are dropped.
    pub queue: usize,
    /// Largest the database file may grow, in bytes (0: no limit); past it writes fail as on a full disk.
    pub max_bytes: u64,
}

/// The journal file's name inside the data folder.
pub const FILE_NAME: &str = "patchbay.db";

/// Why the journal cannot be used.
#[derive(Debug, Error)]
pub enum JournalError {
    /// The data folder could not be created.
    #[error("cannot create the data folder {path}: {source}")]
    CreateDir {
        /// The folder.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file could not be opened or is not a usable database.
    #[error("cannot use the journal {path}: {message}")]
    Open {
        /// The file.
        path: String,
        /// Why, in SQLite's words.
        message: String,
    },
    /// A query failed.
    #[error("journal query failed: {0}")]
    Query(#[from] rusqlite::Error),
    /// The writer thread has stopped.
    #[error("the journal's writer has stopped")]
    Stopped,
}

/// Who sent a command, or what an audit row is about.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Who {
    /// The token's name, when the hub requires tokens.
    pub token: Option<String>,
    /// The role the caller acted in.
    pub role: Option<String>,
    /// The client's name (`hello`), or `http`/the `X-Client-Name` header for HTTP.
    pub client: String,
    /// The remote address.
    pub peer: String,
    /// `tcp`, `websocket` or `http`.
    pub transport: String,
}

/// How a command ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The device confirmed this state.
    Confirmed(String),
    /// The command failed with this error.
    Failed(ErrorBody),
    /// No answer within the requester's timeout: the outcome is unknown.
    TimedOut,
    /// No answer because the agent went away first: the outcome is unknown.
    Unknown(ErrorBody),
}

/// A command as it arrives at the hub.
#[derive(Debug, Clone)]
pub struct CommandStart {
    /// The journal's id for it.
    pub id: u64,
    /// Its correlation id.
    pub cid: String,
    /// The device it is for.
    pub device: String,
    /// The desired settings, as JSON text.
    pub desired: String,
    /// Who sent it.
    pub who: Who,
    /// When the hub received it (Unix ms).
    pub received_ms: u64,
    /// When it was forwarded to the agent, if it was.
    pub forwarded_ms: Option<u64>,
    /// The agent it was forwarded to.
    pub agent: Option<String>,
    /// The refusal, when it was never forwarded.
    pub refused: Option<ErrorBody>,
}

/// One audit row.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Unix ms.
    pub time_ms: u64,
    /// What happened: `auth_failed`, `claim`, `claim_refused`, `release`, `hub_started`, `hub_stopped`.
    pub kind: &'static str,
    /// Who did it.
    pub who: Who,
    /// What it was about (a prefix, a tag).
    pub subject: String,
    /// The details, in words.
    pub detail: String,
}

/// Something for the writer.
pub enum Record {
    /// A retained value changed (`new`) or was deleted (`None`); `old` is what it replaced.
    Retained {
        /// The tag.
        tag: Arc<str>,
        /// The new value.
        new: Option<Retained>,
        /// The value it replaced.
        old: Option<Retained>,
        /// The seq of the change.
        seq: u64,
    },
    /// A device event (`dev/<id>/event`, not retained).
    Event(Retained),
    /// A command arrived.
    CommandStart(Box<CommandStart>),
    /// A command was answered, failed or timed out.
    CommandEnd {
        /// The journal's id.
        id: u64,
        /// When (Unix ms).
        time_ms: u64,
        /// How.
        outcome: Outcome,
    },
    /// An answer that arrived after the requester's timeout.
    CommandLate {
        /// The journal's id.
        id: u64,
        /// When (Unix ms).
        time_ms: u64,
        /// The answer.
        outcome: Outcome,
    },
    /// An audit row.
    Audit(Box<AuditRecord>),
    /// Answered once everything queued before it is committed.
    Barrier(tokio::sync::oneshot::Sender<()>),
    /// Commit what is queued and stop.
    Stop,
}

impl Record {
    fn essential(&self) -> bool {
        !matches!(self, Record::Retained { .. } | Record::Event(_))
    }
}

/// Counters and health shared by the sink, the writer and `/metrics`.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Records waiting for the writer.
    pub queued: AtomicUsize,
    /// Records committed since start.
    pub written: AtomicU64,
    /// History and retained records dropped because the writer fell behind.
    pub dropped: AtomicU64,
    /// Command and audit records dropped past four times the queue bound.
    pub dropped_essential: AtomicU64,
    /// Transactions that failed (full disk, I/O error).
    pub write_errors: AtomicU64,
    /// The highest hub seq whose records are committed.
    pub committed_seq: AtomicU64,
    /// Size of the database file and its write-ahead log, in bytes.
    pub file_bytes: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    degraded: Mutex<Option<String>>,
    warned: AtomicBool,
    stopping: AtomicBool,
}

impl JournalStats {
    /// Why the journal is degraded, if it is.
    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_degraded(&self, why: Option<String>) {
        *self.degraded.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<Record>,
    stats: Arc<JournalStats>,
    cap: usize,
    next_command: Arc<AtomicU64>,
}

impl Sink {
    /// Queues a record for the writer; returns false if it was dropped.
    pub fn record(&self, r: Record) -> bool {
        let queued = self.stats.queued.load(Ordering::Relaxed);
        let essential = r.essential();
        let bound = if essential { self.cap * 4 } else { self.cap };
        if queued >= bound {
            self.dropped(&r);
            return false;
        }
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(r).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn dropped(&self, r: &Record) {
        let why =
            "the journal's writer is behind (disk too slow or full): records are being dropped";
        if r.essential() {
            self.stats.dropped_essential.fetch_add(1, Ordering::Relaxed);
            match r {
                Record::CommandStart(c) => {
                    tracing::error!(cid = %c.cid, device = %c.device, "{why}; this command is not journaled")
                }
                Record::CommandEnd { id, .. } | Record::CommandLate { id, .. } => {
                    tracing::error!(
                        command = id,
                        "{why}; this command's outcome is not journaled"
                    )
                }
                _ => tracing::error!("{why}"),
            }
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if !self.stats.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!("{why}; see patchbay_journal_dropped_total");
            }
        }
        self.stats.set_degraded(Some(why.to_owned()));
    }

    /// A new command id.
    pub fn next_command_id(&self) -> u64 {
        self.next_command.fetch_add(1, Ordering::Relaxed)
    }

    /// The journal's counters.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }
}

/// The journal: the sink, the writer thread and connections for reading.
pub struct Journal {
    sink: Sink,
    path: PathBuf,
    instance: String,
    readers: Mutex<Vec<rusqlite::Connection>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A retained value read back from the journal at start.
#[derive(Debug, Clone)]
pub struct StoredValue {
    /// The tag.
    pub tag: String,
    /// The body, JSON text.
    pub body: String,
    /// Who published it.
    pub from: String,
    /// When it was published (Unix ms).
    pub time_ms: u64,
}

impl Journal {
    /// Opens (or creates) the journal in `cfg.dir`, marks commands left
    /// pending by a previous run as of unknown outcome, reads the retained
    /// values back, and starts the writer thread.
    pub fn open(cfg: &JournalConfig) -> Result<(Arc<Journal>, Vec<StoredValue>), JournalError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| JournalError::CreateDir {
            path: cfg.dir.display().to_string(),
            source,
        })?;
        let path = cfg.dir.join(FILE_NAME);
        let name = path.display().to_string();
        // One line, whatever SQLite says.
        let open_err = |e: rusqlite::Error| JournalError::Open {
            path: name.clone(),
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        };
        let conn = schema::open_writer(&path, cfg.max_bytes).map_err(open_err)?;
        let next = schema::next_command_id(&conn).map_err(open_err)?;
        let restored = schema::load_retained(&conn).map_err(open_err)?;
        let stats = Arc::new(JournalStats::default());
        stats
            .file_bytes
            .store(writer::file_bytes(&path), Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let instance = crate::server::new_instance_id();
        let writer = {
            let stats = stats.clone();
            let cfg = cfg.clone();
            let path = path.clone();
            let instance = instance.clone();
            std::thread::Builder::new()
                .name("patchbay-journal".into())
                .spawn(move || writer::run(conn, rx, stats, cfg, path, instance))
                .map_err(|e| JournalError::Open {
                    path: name.clone(),
                    message: format!("cannot start the writer thread: {e}"),
                })?
        };
        let journal = Journal {
            sink: Sink {
                tx,
                stats,
                cap: cfg.queue.max(1),
                next_command: Arc::new(AtomicU64::new(next)),
            },
            path,
            instance,
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(Some(writer)),
        };
        Ok((Arc::new(journal), restored))
    }

    /// The sending side.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// The id of the hub process writing it (history rows carry it with their seq).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counters.
    pub fn stats(&self) -> &JournalStats {
        &self.sink.stats
    }

    /// Waits (up to `timeout`) until everything queued so far is committed,
    /// so a read that follows sees it. Returns false if it did not happen in time.
    pub async fn barrier(&self, timeout: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.sink.record(Record::Barrier(tx)) {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    /// Runs `f` on a read connection, off the async threads.
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let journal = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match journal
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
            {
                Some(c) => c,
                None => schema::open_reader(&journal.path)?,
            };
            let out = f(&conn);
            let mut pool = journal.readers.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 4 {
                pool.push(conn);
            }
            Ok(out?)
        })
        .await
        .map_err(|_| JournalError::Stopped)?
    }

    /// Commits what is queued and stops the writer; later records are ignored.
    pub fn close(&self) {
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            self.sink.stats.stopping.store(true, Ordering::Relaxed);
            let _ = self.sink.tx.send(Record::Stop);
            let _ = handle.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}
