//! `[lifecycle]` and `[boot]`: how long a boot may take, and how the Auto Scaling launch hook
//! is kept alive meanwhile.

use std::time::Duration;

use serde::Deserialize;

use super::error::Problems;

/// Well under the shortest lifecycle-hook heartbeat timeout AWS allows (30 s).
pub const DEFAULT_HEARTBEAT_INTERVAL_S: u64 = 10;
/// Under the unit's `TimeoutStartSec=300s`, so the agent ABANDONs with a reason before systemd
/// kills it without one.
pub const DEFAULT_BOOT_TIMEOUT_S: u64 = 240;
/// Detaching from a dead holder plus attaching takes 5–20 s on EC2; a minute covers a slow one.
pub const DEFAULT_ATTACH_TIMEOUT_S: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lifecycle {
    pub launch_hook: Option<String>,
    pub heartbeat_interval_s: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            launch_hook: None,
            heartbeat_interval_s: DEFAULT_HEARTBEAT_INTERVAL_S,
        }
    }
}

impl Lifecycle {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_s)
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        if let Some(hook) = &self.launch_hook {
            // AWS: 1-255 characters of [A-Za-z0-9\-_\/]
            let ok = (1..=255).contains(&hook.len())
                && hook
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c));
            if !ok {
                problems.fail(
                    "lifecycle.launch_hook",
                    format!(
                        "{hook:?} is not a lifecycle hook name (1-255 letters, digits, -, _ or /); give the hook's name, or remove the key to find the group's launch hook"
                    ),
                );
            }
        }
        // AWS's shortest heartbeat timeout is 30 s: a slower heartbeat could let a hook expire.
        if !(1..=29).contains(&self.heartbeat_interval_s) {
            problems.fail(
                "lifecycle.heartbeat_interval_s",
                format!(
                    "{} is out of range; use 1 to 29 (the shortest hook heartbeat timeout is 30 s), or remove the key for the default {DEFAULT_HEARTBEAT_INTERVAL_S}",
                    self.heartbeat_interval_s
                ),
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Boot {
    pub timeout_s: u64,
    pub attach_timeout_s: u64,
}

impl Default for Boot {
    fn default() -> Self {
        Self {
            timeout_s: DEFAULT_BOOT_TIMEOUT_S,
            attach_timeout_s: DEFAULT_ATTACH_TIMEOUT_S,
        }
    }
}

impl Boot {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    pub fn attach_timeout(&self) -> Duration {
        Duration::from_secs(self.attach_timeout_s)
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        if !(10..=7200).contains(&self.timeout_s) {
            problems.fail(
                "boot.timeout_s",
                format!(
                    "{} is out of range; use 10 to 7200 (and keep it under the unit's TimeoutStartSec), or remove the key for the default {DEFAULT_BOOT_TIMEOUT_S}",
                    self.timeout_s
                ),
            );
        }
        if self.attach_timeout_s == 0 || self.attach_timeout_s > self.timeout_s {
            problems.fail(
                "boot.attach_timeout_s",
                format!(
                    "{} is out of range; use 1 to boot.timeout_s ({}), or remove the key for the default {DEFAULT_ATTACH_TIMEOUT_S}",
                    self.attach_timeout_s, self.timeout_s
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{each_names_key_and_fix, valid};

    #[test]
    fn lifecycle_and_boot_rules_name_key_and_fix() {
        each_names_key_and_fix(&[
            (
                "[lifecycle]\nlaunch_hook = \"a hook\"",
                "lifecycle.launch_hook",
                "not a lifecycle hook name",
            ),
            (
                "[lifecycle]\nlaunch_hook = \"\"",
                "lifecycle.launch_hook",
                "1-255 letters",
            ),
            (
                "[lifecycle]\nheartbeat_interval_s = 30",
                "lifecycle.heartbeat_interval_s",
                "30 s",
            ),
            (
                "[lifecycle]\nheartbeat_interval_s = 0",
                "lifecycle.heartbeat_interval_s",
                "use 1 to 29",
            ),
            (
                "[boot]\ntimeout_s = 5\nattach_timeout_s = 5",
                "boot.timeout_s",
                "use 10 to 7200",
            ),
            (
                "[boot]\ntimeout_s = 7201",
                "boot.timeout_s",
                "use 10 to 7200",
            ),
            (
                "[boot]\nattach_timeout_s = 500",
                "boot.attach_timeout_s",
                "boot.timeout_s (240)",
            ),
            (
                "[boot]\nattach_timeout_s = 0",
                "boot.attach_timeout_s",
                "use 1 to boot.timeout_s",
            ),
        ]);
    }

    #[test]
    fn lifecycle_and_boot_accept_the_edges() {
        valid("[lifecycle]\nlaunch_hook = \"gateway/launch-hook_1\"\nheartbeat_interval_s = 1");
        valid("[lifecycle]\nheartbeat_interval_s = 29");
        valid("[boot]\ntimeout_s = 10\nattach_timeout_s = 1");
        valid("[boot]\ntimeout_s = 7200\nattach_timeout_s = 7200");
    }
}
