//! Telling systemd how the agent is doing (`Type=notify`).
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset (a shell, a test, a container), which
//! `sd_notify::notify` already guarantees. A failed notification is logged, never fatal: the
//! agent's job is routing, and systemd's own timeouts catch an agent that stays silent.

use std::time::Duration;

use sd_notify::NotifyState;

/// `READY=1`: boot is done; systemd starts units ordered after us.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=`: the one line `systemctl status` shows.
pub fn status(message: &str) {
    send(&[NotifyState::Status(message)]);
}

/// `STOPPING=1`: shutdown has begun, so systemd does not treat the exit as a crash.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// `WATCHDOG=1`: proof of life; systemd restarts the agent if these stop.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to pet the watchdog: half of `WatchdogSec=`, so one late tick is not fatal.
/// `None` when the unit has no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .map(|period| period / 2)
        .filter(|interval| !interval.is_zero())
}

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, ?states, "cannot notify systemd");
    }
}
