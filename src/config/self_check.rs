//! `[self_check]`: what this gateway must reach before it carries traffic, at boot and while
//! it runs.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;

use super::error::Problems;

/// One echo round trip on the uplink takes milliseconds; a second means the path is broken.
pub const DEFAULT_SELF_CHECK_TIMEOUT_MS: u64 = 1000;
/// One lost packet must not fail a boot: a target passes if any of three echoes answers.
pub const DEFAULT_SELF_CHECK_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfCheck {
    pub icmp_targets: Vec<String>,
    pub units: Vec<String>,
    pub timeout_ms: u64,
    pub attempts: u32,
}

impl Default for SelfCheck {
    fn default() -> Self {
        Self {
            icmp_targets: Vec::new(),
            units: Vec::new(),
            timeout_ms: DEFAULT_SELF_CHECK_TIMEOUT_MS,
            attempts: DEFAULT_SELF_CHECK_ATTEMPTS,
        }
    }
}

impl SelfCheck {
    /// The targets, parsed (validation already refused anything else).
    pub fn targets(&self) -> Vec<Ipv4Addr> {
        self.icmp_targets
            .iter()
            .filter_map(|t| t.trim().parse().ok())
            .collect()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        for target in &self.icmp_targets {
            if target.trim().parse::<Ipv4Addr>().is_err() {
                problems.fail(
                    "self_check.icmp_targets",
                    format!(
                        "{target:?} is not an IPv4 address; give addresses beyond the uplink that must answer ping, e.g. \"1.1.1.1\""
                    ),
                );
            }
        }
        for unit in &self.units {
            if !is_unit_name(unit) {
                problems.fail(
                    "self_check.units",
                    format!(
                        "{unit:?} is not a systemd unit name; give the full name, e.g. \"strongswan.service\""
                    ),
                );
            }
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            problems.fail(
                "self_check.timeout_ms",
                format!(
                    "{} is out of range; use 10 to 60000, or remove the key for the default {DEFAULT_SELF_CHECK_TIMEOUT_MS}",
                    self.timeout_ms
                ),
            );
        }
        if !(1..=20).contains(&self.attempts) {
            problems.fail(
                "self_check.attempts",
                format!(
                    "{} is out of range; use 1 to 20, or remove the key for the default {DEFAULT_SELF_CHECK_ATTEMPTS}",
                    self.attempts
                ),
            );
        }
    }
}

/// A full unit name with a kind a gateway's services can be: a bare `strongswan` would be
/// looked up by systemd as nothing and fail every check.
fn is_unit_name(unit: &str) -> bool {
    !unit.is_empty()
        && !unit.contains(char::is_whitespace)
        && !unit.contains('/')
        && unit.rsplit_once('.').is_some_and(|(name, kind)| {
            !name.is_empty()
                && [
                    "service", "socket", "target", "mount", "timer", "path", "scope",
                ]
                .contains(&kind)
        })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::testing::{each_names_key_and_fix, valid};

    #[test]
    fn self_check_rules_name_key_and_fix() {
        each_names_key_and_fix(&[
            (
                "[self_check]\nicmp_targets = [\"example.com\"]",
                "self_check.icmp_targets",
                "not an IPv4 address",
            ),
            (
                "[self_check]\nicmp_targets = [\"::1\"]",
                "self_check.icmp_targets",
                "not an IPv4 address",
            ),
            (
                "[self_check]\nunits = [\"strongswan\"]",
                "self_check.units",
                "\"strongswan.service\"",
            ),
            (
                "[self_check]\nunits = [\".service\"]",
                "self_check.units",
                "not a systemd unit name",
            ),
            (
                "[self_check]\nunits = [\"a b.service\"]",
                "self_check.units",
                "not a systemd unit name",
            ),
            (
                "[self_check]\nunits = [\"a/b.service\"]",
                "self_check.units",
                "not a systemd unit name",
            ),
            (
                "[self_check]\nunits = [\"sda.device\"]",
                "self_check.units",
                "not a systemd unit name",
            ),
            (
                "[self_check]\ntimeout_ms = 0",
                "self_check.timeout_ms",
                "use 10 to",
            ),
            (
                "[self_check]\ntimeout_ms = 60001",
                "self_check.timeout_ms",
                "use 10 to 60000",
            ),
            (
                "[self_check]\nattempts = 0",
                "self_check.attempts",
                "use 1 to 20",
            ),
            (
                "[self_check]\nattempts = 21",
                "self_check.attempts",
                "use 1 to 20",
            ),
        ]);
    }

    #[test]
    fn self_check_accepts_the_edges() {
        let config = valid(
            "[self_check]\nicmp_targets = [\" 1.1.1.1 \"]\ntimeout_ms = 10\nattempts = 1\n\
             units = [\"strongswan.service\", \"x.y.timer\", \"a.socket\", \"a.target\", \
             \"a.mount\", \"a.path\", \"a.scope\"]",
        );
        assert_eq!(config.self_check.targets(), [Ipv4Addr::new(1, 1, 1, 1)]);
        valid("[self_check]\ntimeout_ms = 60000\nattempts = 20");
    }
}
