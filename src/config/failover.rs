//! `[failover]`: how peers are watched, when a death counts as confirmed, and when a recovered
//! owner takes its zone back.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::error::Problems;

/// Five probes a second: with `fall` 3 a dead peer is noticed in 0.6–0.8 s, for a few hundred
/// bytes a second of ICMP per peer.
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 200;
/// One lost packet never triggers anything: three in a row do.
pub const DEFAULT_FALL: u32 = 3;
/// A peer must answer three times in a row to count as up again.
pub const DEFAULT_RISE: u32 = 3;
/// While something is wrong (a peer silent, a peer that cannot hear this gateway, a zone that
/// just changed hands, a decision under way) the lease is renewed and the tables read this
/// often; at steady state neither happens at this pace.
pub const DEFAULT_LEASE_RENEW_MS: u64 = 1000;
/// At steady state the route tables are read this often, to repair a blackhole or a foreign
/// change: 120 reads per gateway-hour, and no writes.
pub const DEFAULT_DRIFT_INTERVAL_S: u64 = 30;
/// Two renewals and some: one slow renewal never confirms a death.
pub const DEFAULT_LEASE_TTL_MS: u64 = 2500;
/// A recovered owner waits this long before it takes its zone back, so a peer that flaps does
/// not drag its zone's traffic along.
pub const DEFAULT_HOLD_DOWN_S: u64 = 30;
/// The hold-down doubles for every recent change of the same zone, up to this.
pub const DEFAULT_DAMPING_MAX_S: u64 = 600;
/// Next to the kernel table number; any free port works.
pub const DEFAULT_HEALTH_PORT: u16 = 7701;

/// The policy vocabulary belongs to the decision core; the file names it.
pub use crate::decide::route::{Confirm, Failback};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Failover {
    pub enabled: bool,
    pub probe_interval_ms: u64,
    /// `None`: the probe interval.
    pub probe_timeout_ms: Option<u64>,
    pub fall: u32,
    pub rise: u32,
    pub confirm: Confirm,
    pub lease_renew_ms: u64,
    pub lease_ttl_ms: u64,
    pub drift_interval_s: u64,
    pub failback: Failback,
    pub hold_down_s: u64,
    pub damping_max_s: u64,
    pub health_port: u16,
    /// Networks allowed to ask `/health` besides the group's peers and loopback (a monitoring
    /// host, say); `[]`: nobody else.
    pub health_allow: Vec<String>,
    pub ring: Vec<String>,
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            enabled: true,
            probe_interval_ms: DEFAULT_PROBE_INTERVAL_MS,
            probe_timeout_ms: None,
            fall: DEFAULT_FALL,
            rise: DEFAULT_RISE,
            confirm: Confirm::Api,
            lease_renew_ms: DEFAULT_LEASE_RENEW_MS,
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
            drift_interval_s: DEFAULT_DRIFT_INTERVAL_S,
            failback: Failback::Auto,
            hold_down_s: DEFAULT_HOLD_DOWN_S,
            damping_max_s: DEFAULT_DAMPING_MAX_S,
            health_port: DEFAULT_HEALTH_PORT,
            health_allow: Vec::new(),
            ring: Vec::new(),
        }
    }
}

impl Failover {
    /// `health_allow` as networks (validation refused anything unparsable).
    pub fn health_allow_nets(&self) -> Vec<(std::net::IpAddr, u8)> {
        self.health_allow
            .iter()
            .filter_map(|c| super::parse_cidr(c.trim()).ok())
            .collect()
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms.unwrap_or(self.probe_interval_ms))
    }
    pub fn lease_renew(&self) -> Duration {
        Duration::from_millis(self.lease_renew_ms)
    }
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
    /// Never shorter than the fast cadence: a drift read is a read the cycle would make anyway.
    pub fn drift_interval(&self) -> Duration {
        Duration::from_secs(self.drift_interval_s).max(self.lease_renew())
    }
    pub fn hold_down(&self) -> Duration {
        Duration::from_secs(self.hold_down_s)
    }
    pub fn damping_max(&self) -> Duration {
        Duration::from_secs(self.damping_max_s)
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        if !(20..=10_000).contains(&self.probe_interval_ms) {
            problems.fail(
                "failover.probe_interval_ms",
                format!(
                    "{} is out of range; use 20 to 10000, or remove the key for the default {DEFAULT_PROBE_INTERVAL_MS}",
                    self.probe_interval_ms
                ),
            );
        }
        if let Some(t) = self.probe_timeout_ms
            && !(10..=self.probe_interval_ms.max(10) * 5).contains(&t)
        {
            problems.fail(
                "failover.probe_timeout_ms",
                format!(
                    "{t} is out of range; use 10 to 5 × failover.probe_interval_ms ({}), or remove the key to use the probe interval",
                    self.probe_interval_ms * 5
                ),
            );
        }
        for (key, value, default) in [
            ("failover.fall", self.fall, DEFAULT_FALL),
            ("failover.rise", self.rise, DEFAULT_RISE),
        ] {
            // One lost packet must never move a route.
            if !(2..=100).contains(&value) {
                problems.fail(
                    key,
                    format!(
                        "{value} is out of range; use 2 to 100 (one lost probe must never decide anything), or remove the key for the default {default}"
                    ),
                );
            }
        }
        if !(1..=3600).contains(&self.drift_interval_s) {
            problems.fail(
                "failover.drift_interval_s",
                format!(
                    "{} is out of range; use 1 to 3600, or remove the key for the default {DEFAULT_DRIFT_INTERVAL_S}",
                    self.drift_interval_s
                ),
            );
        }
        if !(100..=60_000).contains(&self.lease_renew_ms) {
            problems.fail(
                "failover.lease_renew_ms",
                format!(
                    "{} is out of range; use 100 to 60000, or remove the key for the default {DEFAULT_LEASE_RENEW_MS}",
                    self.lease_renew_ms
                ),
            );
        }
        // A TTL under two renewals would confirm the death of a gateway whose one renewal was slow.
        if self.lease_ttl_ms < self.lease_renew_ms.saturating_mul(2) || self.lease_ttl_ms > 600_000
        {
            problems.fail(
                "failover.lease_ttl_ms",
                format!(
                    "{} is out of range; use 2 × failover.lease_renew_ms ({}) to 600000, or remove the key for the default {DEFAULT_LEASE_TTL_MS}",
                    self.lease_ttl_ms,
                    self.lease_renew_ms.saturating_mul(2)
                ),
            );
        }
        if self.hold_down_s > 86_400 {
            problems.fail(
                "failover.hold_down_s",
                format!(
                    "{} is out of range; use 0 to 86400, or remove the key for the default {DEFAULT_HOLD_DOWN_S}",
                    self.hold_down_s
                ),
            );
        }
        // An out-of-range hold-down is reported once, on its own key, not again here.
        if (self.hold_down_s <= 86_400 && self.damping_max_s < self.hold_down_s)
            || self.damping_max_s > 86_400
        {
            problems.fail(
                "failover.damping_max_s",
                format!(
                    "{} is out of range; use failover.hold_down_s ({}) to 86400, or remove the key for the default {DEFAULT_DAMPING_MAX_S}",
                    self.damping_max_s, self.hold_down_s
                ),
            );
        }
        if self.health_port == 0 {
            problems.fail(
                "failover.health_port",
                format!(
                    "0 is not a port; use 1 to 65535, or remove the key for the default {DEFAULT_HEALTH_PORT}"
                ),
            );
        }
        for cidr in &self.health_allow {
            if let Err(e) = super::parse_cidr(cidr.trim()) {
                problems.fail(
                    "failover.health_allow",
                    format!(
                        "{cidr:?} {e}; list networks that may ask /health besides the group's peers, e.g. [\"10.0.5.0/24\"], or remove the key (peers and loopback only)"
                    ),
                );
            }
        }
        let mut ring_seen = BTreeSet::new();
        for zone in &self.ring {
            if zone.trim().is_empty() || zone.trim() != zone {
                problems.fail(
                    "failover.ring",
                    format!(
                        "{zone:?} is not a zone name; list availability zones, e.g. [\"us-east-1a\", \"us-east-1b\"]"
                    ),
                );
            } else if !ring_seen.insert(zone.as_str()) {
                problems.fail(
                    "failover.ring",
                    format!("{zone:?} is listed twice; every zone once, in successor order"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{MIN, each_names_key_and_fix, parse, valid};
    use super::*;

    #[test]
    fn failover_rules_name_key_and_fix() {
        each_names_key_and_fix(&[
            (
                "[failover]\nprobe_interval_ms = 5",
                "failover.probe_interval_ms",
                "use 20 to 10000",
            ),
            (
                "[failover]\nprobe_interval_ms = 10001\nprobe_timeout_ms = 100",
                "failover.probe_interval_ms",
                "use 20 to 10000",
            ),
            (
                "[failover]\nprobe_timeout_ms = 5000",
                "failover.probe_timeout_ms",
                "5 × failover.probe_interval_ms (1000)",
            ),
            (
                "[failover]\nprobe_timeout_ms = 9",
                "failover.probe_timeout_ms",
                "use 10 to",
            ),
            (
                "[failover]\nfall = 1",
                "failover.fall",
                "one lost probe must never decide",
            ),
            ("[failover]\nrise = 0", "failover.rise", "use 2 to 100"),
            ("[failover]\nrise = 101", "failover.rise", "use 2 to 100"),
            (
                "[failover]\ndrift_interval_s = 0",
                "failover.drift_interval_s",
                "use 1 to 3600",
            ),
            (
                "[failover]\ndrift_interval_s = 3601",
                "failover.drift_interval_s",
                "use 1 to 3600",
            ),
            (
                "[failover]\nlease_renew_ms = 50",
                "failover.lease_renew_ms",
                "use 100 to 60000",
            ),
            (
                "[failover]\nlease_renew_ms = 60001\nlease_ttl_ms = 200000",
                "failover.lease_renew_ms",
                "use 100 to 60000",
            ),
            (
                "[failover]\nlease_ttl_ms = 1500",
                "failover.lease_ttl_ms",
                "2 × failover.lease_renew_ms (2000)",
            ),
            (
                "[failover]\nlease_ttl_ms = 600001",
                "failover.lease_ttl_ms",
                "to 600000",
            ),
            (
                "[failover]\nhold_down_s = 100000",
                "failover.hold_down_s",
                "use 0 to 86400",
            ),
            (
                "[failover]\nhold_down_s = 60\ndamping_max_s = 30",
                "failover.damping_max_s",
                "failover.hold_down_s (60)",
            ),
            (
                "[failover]\ndamping_max_s = 86401",
                "failover.damping_max_s",
                "to 86400",
            ),
            (
                "[failover]\nhealth_port = 0",
                "failover.health_port",
                "0 is not a port",
            ),
            (
                "[failover]\nhealth_allow = [\"10.0.5.1/24\"]",
                "failover.health_allow",
                "host bits set",
            ),
            (
                "[failover]\nhealth_allow = [\"monitoring\"]",
                "failover.health_allow",
                "list networks that may ask /health",
            ),
            (
                "[failover]\nring = [\"us-east-1a\", \"us-east-1a\"]",
                "failover.ring",
                "listed twice",
            ),
            (
                "[failover]\nring = [\"us-east-1a \"]",
                "failover.ring",
                "not a zone name",
            ),
            (
                "[failover]\nring = [\"\"]",
                "failover.ring",
                "not a zone name",
            ),
        ]);
    }

    #[test]
    fn failover_accepts_the_edges() {
        valid("[failover]\nprobe_interval_ms = 20\nprobe_timeout_ms = 10\nfall = 2\nrise = 100");
        valid("[failover]\nprobe_interval_ms = 10000\nprobe_timeout_ms = 50000");
        valid("[failover]\nlease_renew_ms = 100\nlease_ttl_ms = 200");
        valid("[failover]\nlease_renew_ms = 60000\nlease_ttl_ms = 600000");
        valid("[failover]\nhold_down_s = 0\ndamping_max_s = 0\nhealth_port = 65535");
        valid("[failover]\nhold_down_s = 86400\ndamping_max_s = 86400\nenabled = false");
        valid("[failover]\nring = [\"us-east-1b\", \"us-east-1a\"]");
        let c = valid("[failover]\nhealth_allow = [\"10.0.5.0/24\", \"fd00::/8\"]");
        assert_eq!(c.failover.health_allow_nets().len(), 2);
    }

    /// A hold-down past its own range is reported there alone, not again as a damping cap
    /// under it.
    #[test]
    fn an_out_of_range_hold_down_is_reported_once() {
        each_names_key_and_fix(&[(
            "[failover]\nhold_down_s = 100000\ndamping_max_s = 600",
            "failover.hold_down_s",
            "use 0 to 86400",
        )]);
    }

    #[test]
    fn failover_enums_name_their_values() {
        let err = parse(&format!("{MIN}[failover]\nconfirm = \"ping\"\n")).expect_err("bad enum");
        let text = err.to_string();
        assert!(text.contains("failover.confirm"), "{text}");
        assert!(text.contains("api") && text.contains("icmp"), "{text}");
        let c = parse(&format!(
            "{MIN}[failover]\nconfirm = \"icmp\"\nfailback = \"manual\"\n\
             [[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\"10.1.0.0/16\"]\n"
        ))
        .expect("valid");
        assert_eq!(c.failover.confirm, Confirm::Icmp);
        assert_eq!(c.failover.failback, Failback::Manual);
        assert_eq!(c.conditional[0].label(), "192.0.2.1");
    }
}
