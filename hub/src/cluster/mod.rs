//! Several hubs as one, over a NATS cluster (`[cluster]` in the config).
//!
//! Each hub keeps serving its own clients exactly as a single hub does; a
//! bridge (a client of the local hub, like automation) mirrors messages to
//! and from NATS: retained values through a JetStream key-value bucket,
//! other messages through plain subjects, requests for devices whose agent
//! is on another hub through NATS request/reply. Claims become leases in a
//! second bucket, so a device is owned by one agent cluster-wide; a lease
//! its hub stops refreshing expires and the device's last will is
//! published. See docs/cluster.md.

mod bridge;
pub mod leases;
pub mod subject;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use bridge::run;

/// The `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers, e.g. `["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]`.
    pub nats: Vec<String>,
    /// Replicas of the key-value buckets (3 on a 3-node cluster; at most the cluster's size).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long a claim's lease lives without being refreshed (its hub is
    /// taken for dead after that), in milliseconds.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Prefix of subjects and bucket names (`pb`: subjects `pb.dev.p1.state`,
    /// buckets `pb_retained` and `pb_leases`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// NATS user and password.
    pub user: Option<String>,
    /// NATS password (with `user`).
    pub password: Option<String>,
    /// NATS token.
    pub token: Option<String>,
    /// CA certificate (PEM) for `tls://` servers.
    pub ca: Option<PathBuf>,
}

fn default_replicas() -> usize {
    3
}
fn default_lease_ms() -> u64 {
    6000
}
fn default_prefix() -> String {
    "pb".into()
}

impl ClusterConfig {
    /// Refuses values that cannot work.
    pub fn check(&self) -> Result<(), String> {
        if self.nats.is_empty() {
            return Err("`nats` lists no server".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(format!(
                "`replicas` is 1 to 5 (JetStream's limit), not {}",
                self.replicas
            ));
        }
        if self.lease_ms < 1000 {
            return Err(format!(
                "`lease_ms` must be at least 1000, not {}",
                self.lease_ms
            ));
        }
        if self.prefix.is_empty()
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "`prefix` is letters, digits, `-` and `_`, not {:?}",
                self.prefix
            ));
        }
        if self.password.is_some() != self.user.is_some() {
            return Err("`user` and `password` go together".into());
        }
        Ok(())
    }

    /// The lease lifetime.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

/// The cluster link as `/healthz` shows it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// Connected to NATS, with its key-value buckets ready and taking writes.
    pub connected: bool,
    /// What is wrong while it is not.
    pub error: Option<String>,
    /// Local changes not yet written to the cluster (they are written when it returns).
    pub unsynced: usize,
    /// Plain messages for the cluster dropped: NATS' queue stayed full (while it was away, or slower than this hub).
    pub dropped: u64,
    /// Messages of this hub dropped before the bridge took them: a burst beyond its queue (262,144 messages).
    pub dropped_queue: u64,
    /// Leases known cluster-wide.
    pub leases: usize,
}

/// What the hub core and the bridge share.
pub struct Shared {
    /// This hub's id in leases (its instance id).
    pub me: String,
    /// Leases as the cluster has them.
    pub leases: leases::Mirror,
    /// Counts changes of the hub's claims (each task follows it with its own receiver).
    pub claims_changed: tokio::sync::watch::Sender<u64>,
    /// Counts changes of the leases this hub holds, as the bucket reports them.
    leases_changed: tokio::sync::watch::Sender<u64>,
    /// The link's state.
    pub status: Mutex<ClusterStatus>,
    /// Connected to a NATS server.
    nats: AtomicBool,
    /// The buckets exist and are readable.
    ready: AtomicBool,
    /// The last write to the retained bucket went through (false without quorum).
    writes_ok: AtomicBool,
    /// Bumped at every (re)connection to NATS: watches are made again then.
    epoch: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    /// Shared state for hub `me`, with leases living `lease`.
    pub fn new(me: String, lease: Duration) -> Self {
        Shared {
            leases: leases::Mirror::new(me.clone(), lease),
            me,
            claims_changed: tokio::sync::watch::channel(0).0,
            leases_changed: tokio::sync::watch::channel(0).0,
            status: Mutex::new(ClusterStatus::default()),
            nats: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            writes_ok: AtomicBool::new(true),
            epoch: tokio::sync::watch::channel(0).0,
        }
    }

    /// The status now.
    pub fn status(&self) -> ClusterStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.leases = self.leases.len();
        s.connected =
            self.nats.load(Relaxed) && self.ready.load(Relaxed) && self.writes_ok.load(Relaxed);
        if s.connected {
            s.error = None;
        } else if s.error.is_none() {
            s.error = Some(if !self.nats.load(Relaxed) {
                "not connected to NATS".into()
            } else if !self.ready.load(Relaxed) {
                "the cluster's key-value buckets are not ready".into()
            } else {
                "the cluster does not accept writes (no JetStream quorum?); local changes wait"
                    .into()
            });
        }
        s
    }

    /// Tells the bridge that the hub's claims changed.
    pub fn claims_changed(&self) {
        self.claims_changed.send_modify(|n| *n += 1);
    }

    fn set_status(&self, f: impl FnOnce(&mut ClusterStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The name the bridge's connection to its hub goes by.
pub const BRIDGE_NAME: &str = "cluster";
