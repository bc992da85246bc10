//! Health, Prometheus metrics, and the OpenAPI document.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::AppState;
use crate::server::Metrics;

/// The journal's health.
#[derive(Debug, Serialize, ToSchema)]
pub struct JournalHealth {
    /// The database file.
    pub file: String,
    /// Why the journal is degraded (the writer is behind or cannot write), if it is.
    pub degraded: Option<String>,
    /// Records waiting for the writer.
    pub queued: usize,
    /// Records dropped since start because the writer was behind.
    pub dropped: u64,
    /// Size of the file and its write-ahead log, in bytes.
    pub file_bytes: u64,
}

/// Health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when the journal cannot keep up or cannot write, or the MQTT bridge has lost its broker (routing goes on).
    pub status: String,
    /// The journal, when the hub keeps one.
    pub journal: Option<JournalHealth>,
    /// Open connections.
    pub connections: usize,
    /// Retained tags.
    pub retained: usize,
    /// This hub process's id, new at every start.
    pub instance: String,
    /// The MQTT bridge's link to its broker, when the bridge runs; `degraded` while it is not connected.
    pub mqtt: Option<crate::mqtt::MqttStatus>,
    /// The hub's link to its cluster, in cluster mode; `degraded` while it is cut off
    /// (local clients are still served).
    pub cluster: Option<crate::cluster::ClusterStatus>,
}

/// Is the hub up?
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz(State(st): State<AppState>) -> Json<Health> {
    use std::sync::atomic::Ordering::Relaxed;
    let journal = st.hub.journal().map(|j| {
        let s = j.stats();
        JournalHealth {
            file: j.path().display().to_string(),
            degraded: s.degraded(),
            queued: s.queued.load(Relaxed),
            dropped: s.dropped.load(Relaxed) + s.dropped_essential.load(Relaxed),
            file_bytes: s.file_bytes.load(Relaxed),
        }
    });
    let mqtt = st.hub.mqtt_status();
    let cluster = st.hub.cluster().map(|c| c.status());
    let degraded = journal.as_ref().is_some_and(|j| j.degraded.is_some())
        || mqtt.as_ref().is_some_and(|m| !m.connected)
        || cluster.as_ref().is_some_and(|c| !c.connected);
    Json(Health {
        status: if degraded { "degraded" } else { "ok" }.into(),
        journal,
        connections: st.hub.connection_count(),
        retained: st.hub.retained_count(),
        instance: st.hub.instance().to_owned(),
        mqtt,
        cluster,
    })
}

/// Counters and gauges in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(st): State<AppState>, caller: super::auth::Caller) -> impl IntoResponse {
    let m = st.hub.metrics();
    let devices = st.hub.device_counts();
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let get = Metrics::get;
    metric(
        "patchbay_connections",
        "gauge",
        "Open connections.",
        &[("", st.hub.connection_count() as u64)],
    );
    metric(
        "patchbay_unauthenticated_connections",
        "gauge",
        "Connections waiting to authenticate.",
        &[("", st.hub.unauthenticated_count() as u64)],
    );
    metric(
        "patchbay_unauthenticated_dropped_total",
        "counter",
        "Connections closed for not authenticating in time, or to make room for newer ones.",
        &[("", get(&m.unauthenticated_dropped))],
    );
    metric(
        "patchbay_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed, timed out, met plain text, or were cancelled to make room for newer ones (wire and HTTP).",
        &[("", get(&m.tls_handshake_failures))],
    );
    if let Some(after) = st.hub.tls().and_then(|t| t.not_after()) {
        metric(
            "patchbay_tls_certificate_not_after_seconds",
            "gauge",
            "When the hub's TLS certificate expires, in Unix seconds (alert on it minus time()).",
            &[("", after.max(0) as u64)],
        );
    }
    metric(
        "patchbay_http_refused_total",
        "counter",
        "HTTP connections refused at max_http_connections.",
        &[("", get(&m.http_refused))],
    );
    metric(
        "patchbay_connections_total",
        "counter",
        "Connections accepted.",
        &[("", get(&m.connections_total))],
    );
    metric(
        "patchbay_connections_refused_total",
        "counter",
        "Connections refused at the connection limit.",
        &[("", get(&m.connections_refused))],
    );
    metric(
        "patchbay_messages_routed_total",
        "counter",
        "Messages routed.",
        &[("", get(&m.messages_routed))],
    );
    metric(
        "patchbay_deliveries_total",
        "counter",
        "Message copies written to subscribers' sockets (snapshots included).",
        &[("", get(&m.deliveries))],
    );
    metric(
        "patchbay_conflated_total",
        "counter",
        "Retained messages that replaced a queued one for a lagging client.",
        &[("", get(&m.conflated))],
    );
    metric(
        "patchbay_slow_consumer_drops_total",
        "counter",
        "Clients dropped as slow consumers.",
        &[("", get(&m.slow_consumer_drops))],
    );
    metric(
        "patchbay_bad_frames_total",
        "counter",
        "Frames refused as malformed.",
        &[("", get(&m.bad_frames))],
    );
    metric(
        "patchbay_requests_total",
        "counter",
        "Requests by outcome.",
        &[
            ("{outcome=\"ok\"}", get(&m.requests_ok)),
            ("{outcome=\"error\"}", get(&m.requests_error)),
            ("{outcome=\"no_responder\"}", get(&m.requests_no_responder)),
            ("{outcome=\"timeout\"}", get(&m.requests_timeout)),
            ("{outcome=\"unavailable\"}", get(&m.requests_unavailable)),
        ],
    );
    metric(
        "patchbay_retained",
        "gauge",
        "Retained tags.",
        &[("", st.hub.retained_count() as u64)],
    );
    metric(
        "patchbay_retained_refused_total",
        "counter",
        "Retained publishes refused at max_retained.",
        &[("", get(&m.retained_refused))],
    );
    metric(
        "patchbay_snapshot_steps_total",
        "counter",
        "Snapshot steps taken, each one short hold of the hub lock.",
        &[("", get(&m.snapshot_steps))],
    );
    metric(
        "patchbay_devices",
        "gauge",
        "Devices with a description.",
        &[("", devices.described as u64)],
    );
    metric(
        "patchbay_devices_online",
        "gauge",
        "Devices reported online.",
        &[("", devices.online as u64)],
    );
    let hold = &m.lock_hold;
    histogram(
        &mut out,
        "patchbay_lock_hold_seconds",
        "How long the hub lock was held (one in 64 publishes timed, everything else always).",
        hold,
    );
    histogram(
        &mut out,
        "patchbay_request_duration_seconds",
        "How long requests took from the hub routing them to their responder's answer (device commands among them).",
        &m.request_duration,
    );
    super::device_metrics::write(&mut out, &st.hub, |id| caller.sees_device(id));
    let _ = writeln!(
        out,
        "# HELP patchbay_lock_hold_max_seconds The longest hold of the hub lock since start.\n# TYPE patchbay_lock_hold_max_seconds gauge\npatchbay_lock_hold_max_seconds {}",
        hold.max().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "# HELP patchbay_lock_hold_running_max_seconds The most CPU time spent holding the hub lock at once (preemption excluded; publishes not measured).\n# TYPE patchbay_lock_hold_running_max_seconds gauge\npatchbay_lock_hold_running_max_seconds {}",
        Metrics::get(&m.lock_running_max_ns) as f64 / 1e9
    );
    if let Some(j) = st.hub.journal() {
        use std::sync::atomic::Ordering::Relaxed;
        let s = j.stats();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric(
            "patchbay_journal_queued",
            "gauge",
            "Journal records waiting for the writer.",
            &[("", s.queued.load(Relaxed) as u64)],
        );
        metric(
            "patchbay_journal_written_total",
            "counter",
            "Journal records committed.",
            &[("", s.written.load(Relaxed))],
        );
        metric(
            "patchbay_journal_commits_total",
            "counter",
            "Journal transactions committed.",
            &[("", s.commits.load(Relaxed))],
        );
        metric(
            "patchbay_journal_dropped_total",
            "counter",
            "Journal records dropped because the writer was behind.",
            &[
                ("{kind=\"history\"}", s.dropped.load(Relaxed)),
                ("{kind=\"command\"}", s.dropped_essential.load(Relaxed)),
            ],
        );
        metric(
            "patchbay_journal_write_errors_total",
            "counter",
            "Journal transactions that failed (full disk, I/O errors).",
            &[("", s.write_errors.load(Relaxed))],
        );
        metric(
            "patchbay_journal_committed_seq",
            "gauge",
            "The highest hub seq whose history is committed.",
            &[("", s.committed_seq.load(Relaxed))],
        );
        metric(
            "patchbay_journal_file_bytes",
            "gauge",
            "Size of the journal file and its write-ahead log.",
            &[("", s.file_bytes.load(Relaxed))],
        );
        metric(
            "patchbay_journal_degraded",
            "gauge",
            "1 while the journal cannot keep up or cannot write.",
            &[("", u64::from(s.degraded().is_some()))],
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Reads the hub's configuration file again and puts it in force (admin):
/// tokens, limits, definitions, alert rules, schedules and the MQTT bridge
/// change in place, connections whose token was removed or changed are
/// closed. A file that does not parse or check leaves the running one.
#[utoipa::path(post, path = "/api/admin/reload", tag = "operations",
    responses((status = 200, body = crate::server::reload::ReloadReport), (status = 401, body = super::error::ErrorResponse),
        (status = 403, body = super::error::ErrorResponse),
        (status = 409, description = "Started without a configuration file", body = super::error::ErrorResponse),
        (status = 422, description = "The file does not parse or check; nothing changed", body = super::error::ErrorResponse)))]
pub async fn reload(
    State(st): State<AppState>,
    caller: super::auth::Caller,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Result<Json<crate::server::reload::ReloadReport>, super::error::ApiError> {
    use crate::server::reload::ReloadError;
    use axum::http::StatusCode;
    caller.require_admin()?;
    let who = caller.who(peer, &headers);
    match crate::server::reload::reload(&st.hub, who) {
        Ok(report) => Ok(Json(report)),
        Err(e @ ReloadError::NoSource) => Err(super::error::ApiError::new(
            StatusCode::CONFLICT,
            "not_reloadable",
            e.to_string(),
        )),
        Err(e @ ReloadError::Invalid(_)) => Err(super::error::ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            e.to_string(),
        )),
    }
}

/// Writes one histogram in the Prometheus text format.
fn histogram<B: crate::server::metrics::Bounds>(
    out: &mut String,
    name: &str,
    help: &str,
    h: &crate::server::metrics::Histogram<B>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut count = 0;
    for (le, n) in h.cumulative() {
        let le = match le {
            Some(us) => format!("{}", us as f64 / 1e6),
            None => "+Inf".into(),
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
        count = n;
    }
    let _ = writeln!(
        out,
        "{name}_sum {}\n{name}_count {count}",
        h.sum().as_secs_f64()
    );
}

/// The API description, generated from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(title = "patchbay hub API", description = "Discover, watch and control devices through a patchbay hub."),
    paths(
        super::devices::list,
        super::devices::show,
        super::devices::patch,
        super::agents::list,
        super::events::stream,
        super::ws::upgrade,
        super::journal::commands,
        super::journal::command,
        super::journal::history,
        super::journal::usage,
        super::journal::audit,
        super::groups::rooms,
        super::groups::patch_room,
        super::groups::list,
        super::groups::show,
        super::groups::put,
        super::groups::delete,
        super::groups::patch,
        super::scenes::list,
        super::scenes::put,
        super::scenes::delete,
        super::scenes::run,
        super::scenes::show,
        super::scenes::cancel,
        super::scenes::schedules,
        super::scenes::put_schedule,
        super::scenes::delete_schedule,
        super::alerts::list,
        super::alerts::acknowledge,
        healthz,
        metrics,
        reload,
        openapi,
    ),
    components(schemas(
        crate::server::reload::ReloadReport,
        super::devices::DeviceSummary,
        super::devices::DeviceDetail,
        super::agents::AgentInfo,
        super::error::ErrorResponse,
        super::error::ErrorDetail,
        super::journal::CommandPage,
        super::journal::HistoryPage,
        super::journal::AuditPage,
        crate::journal::CommandEntry,
        crate::journal::HistoryEntry,
        crate::journal::AuditEntry,
        crate::journal::UsageReport,
        crate::journal::UsageDay,
        crate::journal::Who,
        crate::automation::groups::GroupSpec,
        crate::automation::groups::GroupInfo,
        crate::automation::groups::RoomInfo,
        crate::automation::groups::Origin,
        crate::automation::fanout::GroupOutcome,
        crate::automation::fanout::MemberOutcome,
        crate::automation::scenes::Scene,
        crate::automation::scenes::Step,
        crate::automation::scenes::OnError,
        crate::automation::scenes::Run,
        crate::automation::scenes::StepProgress,
        super::scenes::SceneInfo,
        super::scenes::ScheduleInfo,
        crate::automation::schedules::Schedule,
        crate::automation::schedules::ScheduleState,
        crate::automation::alerts::Alert,
        crate::automation::alerts::Rule,
        super::scenes::RunStarted,
        Health,
        JournalHealth
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
