//! Reloading the configuration without a restart (SIGHUP, or
//! `POST /api/admin/reload`), and restarting what depends on a section of
//! it when that section changes.
//!
//! Tokens, limits, groups and scenes from the file, alert rules, schedules,
//! the MQTT bridge and TLS files (a renewed certificate) change in place. What is only read at start (the
//! listen addresses, the journal's folder and settings, the concurrency of
//! group commands) keeps its running value and is reported as needing a
//! restart. A file that does not parse or check leaves everything as it was.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::hub::Hub;
use crate::config::HubConfig;
use crate::journal::Who;

/// Reads the configuration again (the file the hub was started with, with
/// the same command-line overrides).
pub type Source = Box<dyn Fn() -> Result<HubConfig, String> + Send + Sync>;

/// Settings read only at start: a reload reports them and keeps the running value.
const AT_START: &[&str] = &[
    "listen",
    "http_listen",
    "listen_backlog",
    "data_dir",
    "history_days",
    "journal_flush_ms",
    "journal_queue",
    "journal_max_bytes",
    "group_concurrency",
    "cluster",
];

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ReloadReport {
    /// Settings whose value changed, now in force.
    pub changed: Vec<String>,
    /// Settings that changed in the file but are read only at start; the
    /// running values stay until a restart.
    pub need_restart: Vec<String>,
    /// Connections closed because their token was removed or changed.
    pub closed: usize,
}

/// Why a reload did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// The hub has no file to read again.
    #[error("this hub was started without a configuration file; there is nothing to reload")]
    NoSource,
    /// The file does not parse or check; the running configuration stays.
    #[error("{0}; the running configuration stays in force")]
    Invalid(String),
}

/// Reads the configuration again and puts it in force, for `who`.
pub fn reload(hub: &Hub, who: Who) -> Result<ReloadReport, ReloadError> {
    let read = match hub.config_source() {
        None => Err(ReloadError::NoSource),
        Some(source) => source().map_err(ReloadError::Invalid),
    };
    let mut new = match read {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("configuration not reloaded: {e}");
            hub.audit("config_reload_failed", who, String::new(), e.to_string());
            return Err(e);
        }
    };
    let old = hub.config();
    if old.auth_required() && !new.auth_required() {
        let e = ReloadError::Invalid(
            "the new configuration lists no tokens, which would let anyone do anything; a file caught half-written reads that way too (write it elsewhere and rename it into place). To run without tokens, restart the hub".into(),
        );
        tracing::warn!("configuration not reloaded: {e}");
        hub.audit("config_reload_failed", who, String::new(), e.to_string());
        return Err(e);
    }
    // TLS goes on or off only at a restart (what the ports speak); its files
    // are read again at every reload, so a renewed certificate takes effect.
    let mut tls_toggled = false;
    if old.tls.is_some() != new.tls.is_some() {
        tls_toggled = true;
        new.tls = old.tls.clone();
    }
    let tls = match &new.tls {
        Some(t) => match crate::tls::ServerTls::load(t).and_then(|l| match l.invalid_now() {
            // The running certificate may still be good: keep it.
            Some(why) => Err(patchbay_client::tls::TlsError::Config(why.to_owned())),
            None => Ok(l),
        }) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                let e = ReloadError::Invalid(format!("tls: {e}"));
                tracing::warn!("configuration not reloaded: {e}");
                hub.audit("config_reload_failed", who, String::new(), e.to_string());
                return Err(e);
            }
        },
        None => None,
    };
    let as_json = |c: &HubConfig| serde_json::to_value(c).unwrap_or(Value::Null);
    let (o, n) = (as_json(&old), as_json(&new));
    let mut report = ReloadReport::default();
    if let (Some(o), Some(n)) = (o.as_object(), n.as_object()) {
        for (key, v) in n {
            if o.get(key) == Some(v) {
                continue;
            }
            if AT_START.contains(&key.as_str()) {
                report.need_restart.push(key.clone());
            } else {
                report.changed.push(key.clone());
            }
        }
    }
    if tls_toggled {
        report.need_restart.push("tls".into());
    }
    let renewed = match (&tls, hub.tls()) {
        (Some(n), Some(o)) => !n.same_as(&o),
        _ => false,
    };
    if renewed && !report.changed.iter().any(|c| c == "tls") {
        report.changed.push("tls".into());
    }
    new.listen = old.listen;
    new.http_listen = old.http_listen;
    new.listen_backlog = old.listen_backlog;
    new.data_dir = old.data_dir.clone();
    new.history_days = old.history_days;
    new.journal_flush_ms = old.journal_flush_ms;
    new.journal_queue = old.journal_queue;
    new.journal_max_bytes = old.journal_max_bytes;
    new.group_concurrency = old.group_concurrency;
    new.cluster = old.cluster.clone();
    report.closed = hub.apply_config(new);
    if tls.is_some() {
        hub.set_tls(tls);
    }
    let words = |v: &[String]| {
        if v.is_empty() {
            "nothing".to_owned()
        } else {
            v.join(", ")
        }
    };
    let detail = format!(
        "changed: {}; needs a restart: {}; {} connection(s) closed",
        words(&report.changed),
        words(&report.need_restart),
        report.closed
    );
    tracing::info!("configuration reloaded: {detail}");
    hub.audit("config_reloaded", who, String::new(), detail);
    Ok(report)
}

/// How long a stopping engine may take.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs `start` (an engine of the hub: alerts, schedules, the MQTT bridge)
/// and starts it again whenever a reload changes its `section` of the
/// configuration, until `stop` turns true.
pub async fn supervise<K, F, Fut>(
    hub: Arc<Hub>,
    mut stop: watch::Receiver<bool>,
    section: fn(&HubConfig) -> K,
    start: F,
) where
    K: PartialEq,
    F: Fn(Arc<Hub>, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut changes = hub.config_changes();
    loop {
        let current = section(&hub.config());
        let (tx, rx) = watch::channel(false);
        let mut task = Some(tokio::spawn(start(hub.clone(), rx)));
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = tx.send(true);
                    if let Some(t) = task {
                        let _ = tokio::time::timeout(STOP_GRACE, t).await;
                    }
                    return;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if section(&hub.config()) != current {
                        let _ = tx.send(true);
                        if let Some(t) = task.take() {
                            let _ = tokio::time::timeout(STOP_GRACE, t).await;
                        }
                        break;
                    }
                }
                // It ended by itself (nothing configured): wait for a change.
                _ = async { task.as_mut().expect("checked").await }, if task.is_some() => {
                    task = None;
                }
            }
        }
    }
}
