//! `[drain]`: how a planned exit (stop, scale-in, spot notice, maintenance) hands this
//! gateway's routes over before the instance goes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::Problems;

/// Where the packages' upgrade scripts put the restart marker (systemd's RuntimeDirectory).
pub const DEFAULT_RESTART_MARKER: &str = "/run/gateway-agent/restart";
/// The only directory a restart marker may live in: the service's RuntimeDirectory, which
/// only root and the agent's user can write, and which goes away when the service stops.
pub const RESTART_MARKER_DIR: &str = "/run/gateway-agent";
/// A spot notice gives 120 s; a poll a second costs nothing (IMDS is local).
pub const DEFAULT_IMDS_POLL_MS: u64 = 1000;
/// Packets already on their way to this gateway (route caches, in-flight segments) arrive
/// within a few seconds of the route change.
pub const DEFAULT_GRACE_S: u64 = 5;
/// Under the unit's `TimeoutStopSec=150s`, and under a spot notice's two minutes.
pub const DEFAULT_DRAIN_TIMEOUT_S: u64 = 90;
/// Ten minutes ahead of a scheduled reboot or retirement.
pub const DEFAULT_MAINTENANCE_LEAD_S: u64 = 600;

/// What a rebalance recommendation (advice: often no interruption follows) makes the agent do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnRebalance {
    /// Publish it (log, event, metric, `/health` at risk) and become the last choice as a
    /// successor; no route moves. With Capacity Rebalancing the group's replacement and
    /// termination hook then drive the hand-over.
    #[default]
    Publish,
    /// Drain and leave at once (the instance keeps running without its agent until it goes).
    Drain,
    /// Publish, and ask the group to replace this instance (SetInstanceHealth Unhealthy): the
    /// termination hook then drains it.
    Replace,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Drain {
    pub handover_on_stop: bool,
    pub restart_marker: PathBuf,
    pub imds_poll_ms: u64,
    pub grace_s: u64,
    pub timeout_s: u64,
    pub maintenance_lead_s: u64,
    pub set_unhealthy: bool,
    pub on_rebalance: OnRebalance,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            handover_on_stop: true,
            restart_marker: PathBuf::from(DEFAULT_RESTART_MARKER),
            imds_poll_ms: DEFAULT_IMDS_POLL_MS,
            grace_s: DEFAULT_GRACE_S,
            timeout_s: DEFAULT_DRAIN_TIMEOUT_S,
            maintenance_lead_s: DEFAULT_MAINTENANCE_LEAD_S,
            set_unhealthy: false,
            on_rebalance: OnRebalance::Publish,
        }
    }
}

impl Drain {
    pub fn imds_poll(&self) -> Duration {
        Duration::from_millis(self.imds_poll_ms)
    }
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_s)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }
    pub fn maintenance_lead(&self) -> Duration {
        Duration::from_secs(self.maintenance_lead_s)
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        if !self.restart_marker.is_absolute() {
            problems.fail(
                "drain.restart_marker",
                format!(
                    "{:?} is not an absolute path; remove the key for the default {DEFAULT_RESTART_MARKER} (the packages use it)",
                    self.restart_marker
                ),
            );
        } else if self.restart_marker.parent() != Some(std::path::Path::new(RESTART_MARKER_DIR))
            || self.restart_marker.components().any(|c| {
                !matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            })
        {
            // Anyone who can create the marker can make the next stop skip its hand-over; and
            // the packages create it as root, which must happen in a directory no one else
            // controls.
            problems.fail(
                "drain.restart_marker",
                format!(
                    "{:?} is not a file directly in {RESTART_MARKER_DIR} (the service's RuntimeDirectory); remove the key for the default {DEFAULT_RESTART_MARKER}, or name another file there",
                    self.restart_marker
                ),
            );
        }
        if !(100..=60_000).contains(&self.imds_poll_ms) {
            problems.fail(
                "drain.imds_poll_ms",
                format!(
                    "{} is out of range; use 100 to 60000 (a spot notice gives 120 s), or remove the key for the default {DEFAULT_IMDS_POLL_MS}",
                    self.imds_poll_ms
                ),
            );
        }
        if self.grace_s > 60 {
            problems.fail(
                "drain.grace_s",
                format!(
                    "{} is out of range; use 0 to 60, or remove the key for the default {DEFAULT_GRACE_S}",
                    self.grace_s
                ),
            );
        }
        // The unit gives a stop 150 s; the drain (plus its grace) must end before systemd kills.
        // An out-of-range grace is reported on its own key, so it does not count against this.
        let grace = if self.grace_s > 60 { 0 } else { self.grace_s };
        if !(5..=140).contains(&(self.timeout_s + grace)) {
            problems.fail(
                "drain.timeout_s",
                format!(
                    "{} is out of range; keep drain.timeout_s + drain.grace_s between 5 and 140 (the unit's TimeoutStopSec is 150 s), or remove the key for the default {DEFAULT_DRAIN_TIMEOUT_S}",
                    self.timeout_s
                ),
            );
        }
        if self.maintenance_lead_s > 7 * 86_400 {
            problems.fail(
                "drain.maintenance_lead_s",
                format!(
                    "{} is out of range; use 0 to 604800 (a week), or remove the key for the default {DEFAULT_MAINTENANCE_LEAD_S}",
                    self.maintenance_lead_s
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{each_names_key_and_fix, valid};

    #[test]
    fn drain_rules_name_key_and_fix() {
        each_names_key_and_fix(&[
            (
                "[drain]\nimds_poll_ms = 10",
                "drain.imds_poll_ms",
                "use 100 to 60000",
            ),
            (
                "[drain]\nimds_poll_ms = 60001",
                "drain.imds_poll_ms",
                "use 100 to 60000",
            ),
            ("[drain]\ngrace_s = 61", "drain.grace_s", "use 0 to 60"),
            (
                "[drain]\ntimeout_s = 200",
                "drain.timeout_s",
                "TimeoutStopSec is 150 s",
            ),
            (
                "[drain]\ntimeout_s = 100\ngrace_s = 41",
                "drain.timeout_s",
                "drain.timeout_s + drain.grace_s between 5 and 140",
            ),
            (
                "[drain]\ntimeout_s = 0\ngrace_s = 4",
                "drain.timeout_s",
                "between 5 and 140",
            ),
            (
                "[drain]\nrestart_marker = \"restart\"",
                "drain.restart_marker",
                "not an absolute path",
            ),
            (
                "[drain]\nrestart_marker = \"/tmp/restart\"",
                "drain.restart_marker",
                "not a file directly in /run/gateway-agent",
            ),
            (
                "[drain]\nrestart_marker = \"/run/gateway-agent/../restart\"",
                "drain.restart_marker",
                "not a file directly in /run/gateway-agent",
            ),
            (
                "[drain]\nrestart_marker = \"/run/gateway-agent/sub/restart\"",
                "drain.restart_marker",
                "not a file directly in /run/gateway-agent",
            ),
            (
                "[drain]\nrestart_marker = \"/run/gateway-agent\"",
                "drain.restart_marker",
                "remove the key for the default",
            ),
            (
                "[drain]\nmaintenance_lead_s = 604801",
                "drain.maintenance_lead_s",
                "use 0 to 604800",
            ),
        ]);
    }

    #[test]
    fn drain_accepts_the_edges() {
        let config = valid(
            "[drain]\nimds_poll_ms = 100\ngrace_s = 0\ntimeout_s = 5\nmaintenance_lead_s = 0",
        );
        assert_eq!(config.drain.maintenance_lead(), Duration::ZERO);
        let config = valid(
            "[drain]\nimds_poll_ms = 60000\ngrace_s = 60\ntimeout_s = 80\n\
             maintenance_lead_s = 604800\nrestart_marker = \"/run/gateway-agent/lab-a.restart\"",
        );
        assert_eq!(
            config.drain.maintenance_lead(),
            Duration::from_secs(604_800)
        );
        assert_eq!(config.drain.grace(), Duration::from_secs(60));
    }

    /// A grace past its own range is reported there alone: the timeout is then checked as if
    /// the grace were 0, so an operator fixing one key is not sent to fix another.
    #[test]
    fn an_out_of_range_grace_is_reported_once() {
        each_names_key_and_fix(&[(
            "[drain]\ngrace_s = 100\ntimeout_s = 100",
            "drain.grace_s",
            "use 0 to 60",
        )]);
    }
}
