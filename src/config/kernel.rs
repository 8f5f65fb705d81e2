//! `[kernel]`: the policy routing and forwarding this gateway keeps configured.

use std::time::Duration;

use serde::Deserialize;

use super::error::Problems;
use crate::netconf;

/// amazon-ec2-net-utils refreshes interfaces every few minutes; repairing within 5 s keeps a
/// lost rule from stranding reply traffic for long, for one netlink dump per interval.
pub const DEFAULT_RECONCILE_INTERVAL_MS: u64 = 5000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kernel {
    pub table: u32,
    pub rule_priority: u32,
    pub ipv4_forwarding: bool,
    pub ipv6_forwarding: bool,
    pub reconcile_interval_ms: u64,
}

impl Default for Kernel {
    fn default() -> Self {
        Self {
            table: netconf::DEFAULT_TABLE,
            rule_priority: netconf::DEFAULT_RULE_PRIORITY,
            ipv4_forwarding: true,
            ipv6_forwarding: false,
            reconcile_interval_ms: DEFAULT_RECONCILE_INTERVAL_MS,
        }
    }
}

impl Kernel {
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_millis(self.reconcile_interval_ms)
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        // 0 is unspec and 253-255 are the kernel's default/main/local tables: sharing them would
        // make our read-diff-apply fight the system's own routes.
        if matches!(self.table, 0 | 253..=255) {
            problems.fail(
                "kernel.table",
                format!(
                    "{} is reserved by the kernel (0, 253 default, 254 main, 255 local); pick another number, or remove the key for the default {}",
                    self.table,
                    netconf::DEFAULT_TABLE
                ),
            );
        }
        // 0 is the local rule, 32766/32767 main/default: a rule there would shadow or be shadowed.
        if !(1..=32765).contains(&self.rule_priority) {
            problems.fail(
                "kernel.rule_priority",
                format!(
                    "{} is out of range; use 1 to 32765 (0 and 32766-32767 are the kernel's), or remove the key for the default {}",
                    self.rule_priority,
                    netconf::DEFAULT_RULE_PRIORITY
                ),
            );
        }
        if !(100..=3_600_000).contains(&self.reconcile_interval_ms) {
            problems.fail(
                "kernel.reconcile_interval_ms",
                format!(
                    "{} is out of range; use 100 to 3600000, or remove the key for the default {DEFAULT_RECONCILE_INTERVAL_MS}",
                    self.reconcile_interval_ms
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{each_names_key_and_fix, valid};

    #[test]
    fn kernel_rules_name_key_and_fix() {
        each_names_key_and_fix(&[
            ("[kernel]\ntable = 254", "kernel.table", "254 main"),
            ("[kernel]\ntable = 0", "kernel.table", "0, 253 default"),
            (
                "[kernel]\ntable = 253",
                "kernel.table",
                "reserved by the kernel",
            ),
            ("[kernel]\ntable = 255", "kernel.table", "255 local"),
            (
                "[kernel]\nrule_priority = 32766",
                "kernel.rule_priority",
                "use 1 to 32765",
            ),
            (
                "[kernel]\nrule_priority = 0",
                "kernel.rule_priority",
                "use 1 to 32765",
            ),
            (
                "[kernel]\nreconcile_interval_ms = 5",
                "kernel.reconcile_interval_ms",
                "use 100 to",
            ),
            (
                "[kernel]\nreconcile_interval_ms = 3600001",
                "kernel.reconcile_interval_ms",
                "use 100 to 3600000",
            ),
        ]);
    }

    #[test]
    fn kernel_accepts_the_edges() {
        valid("[kernel]\ntable = 1\nrule_priority = 1\nreconcile_interval_ms = 100");
        valid("[kernel]\ntable = 252\nrule_priority = 32765\nreconcile_interval_ms = 3600000");
        valid("[kernel]\ntable = 256\nipv4_forwarding = false\nipv6_forwarding = true");
    }
}
