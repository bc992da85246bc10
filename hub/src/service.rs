//! Running under systemd (`Type=notify`): readiness and stop notices and
//! the watchdog, sent to `$NOTIFY_SOCKET`. Without it (not started by
//! systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells the service manager the process is ready, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells it the process is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Updates the status line (`systemctl status` shows it).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

fn send(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// The watchdog's interval when one is asked for: `$WATCHDOG_USEC`, for
/// this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let ours = std::env::var("WATCHDOG_PID")
        .map(|p| p.parse::<u32>().ok() == Some(std::process::id()))
        .unwrap_or(true);
    (ours && usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval for as long as `alive` says the
/// process works; a process that hangs (or whose check hangs) stops
/// pinging and the service manager restarts it.
pub fn spawn_watchdog(alive: impl Fn() -> bool + Send + 'static) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tick.tick().await;
            if alive() {
                send(&[NotifyState::Watchdog]);
            } else {
                tracing::error!("the watchdog check failed; not pinging");
            }
        }
    });
}
