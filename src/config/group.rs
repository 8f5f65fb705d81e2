//! `[group]`, `[eni]` and `[routes]`: which gateways back each other up, and what they carry
//! for a zone (its persistent ENI and the routes pointed at it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Deserialize;

use super::error::Problems;
use super::kernel::Kernel;
use super::value::{is_aws_id, parse_cidr};

/// The tag key naming a resource's gateway group.
pub const GROUP_TAG: &str = "gateway-agent:group";
/// The tag key naming a resource's availability zone.
pub const ZONE_TAG: &str = "gateway-agent:zone";
/// Device index 0 is the primary interface; the persistent ENI is the first secondary one.
pub const DEFAULT_DEVICE_INDEX: u32 = 1;
/// Small instance types take 2 to 4 interfaces; 15 is the largest count any type allows.
pub const MAX_DEVICE_INDEX: u32 = 15;
/// A NAT gateway carries the default route; VPN users add their on-premises prefixes.
pub const DEFAULT_DESTINATIONS: &[&str] = &["0.0.0.0/0"];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The gateway group tag value: gateways with the same name back each other up.
    pub name: String,
}

impl Group {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if self.name.trim().is_empty() {
            problems.fail(
                "group.name",
                "must not be empty; set it to the gateway group tag value, e.g. name = \"egress\"",
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Eni {
    /// Zone → ENI ID; a zone not listed finds its ENI by tags.
    pub ids: BTreeMap<String, String>,
    pub device_index: u32,
}

impl Default for Eni {
    fn default() -> Self {
        Self {
            ids: BTreeMap::new(),
            device_index: DEFAULT_DEVICE_INDEX,
        }
    }
}

impl Eni {
    pub(super) fn validate(&self, problems: &mut Problems) {
        for (zone, id) in &self.ids {
            if zone.trim().is_empty() {
                problems.fail("eni.ids", "has an empty zone name; key each ENI by its availability zone, e.g. { \"us-east-1a\" = \"eni-0123456789abcdef0\" }");
            }
            if !is_aws_id(id, "eni") {
                problems.fail(
                    "eni.ids",
                    format!(
                        "{zone} = {id:?} is not an ENI ID; use the eni-... ID of that zone's persistent ENI, or remove the entry to find it by tags"
                    ),
                );
            }
        }
        if !(1..=MAX_DEVICE_INDEX).contains(&self.device_index) {
            problems.fail(
                "eni.device_index",
                format!(
                    "{} is out of range; use 1 to {MAX_DEVICE_INDEX} (0 is the primary interface), or remove the key for the default {DEFAULT_DEVICE_INDEX}",
                    self.device_index
                ),
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Routes {
    pub destinations: Vec<String>,
    /// Zone → route table IDs; a zone not listed finds its tables by tags.
    pub tables: BTreeMap<String, Vec<String>>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            destinations: DEFAULT_DESTINATIONS.iter().map(|d| d.to_string()).collect(),
            tables: BTreeMap::new(),
        }
    }
}

impl Routes {
    /// The destinations as (network, prefix length), in file order. Validation refused any
    /// destination that is not a CIDR, so on a validated config there is one per destination.
    pub fn cidrs(&self) -> Vec<(IpAddr, u8)> {
        self.destinations
            .iter()
            .filter_map(|d| parse_cidr(d.trim()).ok())
            .collect()
    }

    /// `kernel` decides whether an IPv6 destination can be carried at all.
    pub(super) fn validate(&self, kernel: &Kernel, problems: &mut Problems) {
        if self.destinations.is_empty() {
            problems.fail(
                "routes.destinations",
                "is empty, so the agent would manage no route; list at least one CIDR, e.g. [\"0.0.0.0/0\"], or remove the key for the default",
            );
        }
        let mut seen = BTreeSet::new();
        for dest in &self.destinations {
            match parse_cidr(dest.trim()) {
                Err(why) => problems.fail("routes.destinations", format!("{dest:?} {why}")),
                Ok(_) if !seen.insert(dest.trim()) => problems.fail(
                    "routes.destinations",
                    format!("{dest:?} is listed twice; remove one"),
                ),
                Ok(_) if dest.trim() != dest => problems.fail(
                    "routes.destinations",
                    format!("{dest:?} has spaces around it; remove them"),
                ),
                Ok((IpAddr::V6(_), _)) if !kernel.ipv6_forwarding => problems.fail(
                    "routes.destinations",
                    format!(
                        "{dest:?} is IPv6 but kernel.ipv6_forwarding is false, so this gateway could not carry it; set kernel.ipv6_forwarding = true"
                    ),
                ),
                Ok(_) => {}
            }
        }
        for (zone, tables) in &self.tables {
            if zone.trim().is_empty() {
                problems.fail("routes.tables", "has an empty zone name; key each list by its availability zone, e.g. { \"us-east-1a\" = [\"rtb-0123456789abcdef0\"] }");
            }
            if tables.is_empty() {
                problems.fail(
                    "routes.tables",
                    format!(
                        "{zone} = [] lists no route table; list its rtb-... IDs, or remove the entry to find them by tags"
                    ),
                );
            }
            for id in tables {
                if !is_aws_id(id, "rtb") {
                    problems.fail(
                        "routes.tables",
                        format!("{zone}: {id:?} is not a route table ID; use rtb-... IDs"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::testing::{each_names_key_and_fix, parse, valid};

    #[test]
    fn empty_group_name_is_invalid() {
        let err = parse("version = 1\n[group]\nname = \" \"\n").expect_err("empty name");
        assert_eq!(
            err.to_string(),
            "test.toml: group.name: must not be empty; set it to the gateway group tag value, \
             e.g. name = \"egress\""
        );
    }

    #[test]
    fn eni_and_routes_rules_name_key_and_fix() {
        each_names_key_and_fix(&[
            (
                "[eni]\nids = { \"us-east-1a\" = \"vol-123\" }",
                "eni.ids",
                "not an ENI ID",
            ),
            (
                "[eni]\nids = { \"\" = \"eni-0123abcd\" }",
                "eni.ids",
                "empty zone name",
            ),
            (
                "[eni]\ndevice_index = 0",
                "eni.device_index",
                "0 is the primary",
            ),
            (
                "[eni]\ndevice_index = 16",
                "eni.device_index",
                "use 1 to 15",
            ),
            (
                "[routes]\ndestinations = []",
                "routes.destinations",
                "at least one CIDR",
            ),
            (
                "[routes]\ndestinations = [\"10.0.0.0\"]",
                "routes.destinations",
                "is not a CIDR",
            ),
            (
                "[routes]\ndestinations = [\"10.0.0.1/16\"]",
                "routes.destinations",
                "\"10.0.0.0/16\"",
            ),
            (
                "[routes]\ndestinations = [\"10.0.0.0/33\"]",
                "routes.destinations",
                "0 to 32",
            ),
            (
                "[routes]\ndestinations = [\"10.0.0.300/8\"]",
                "routes.destinations",
                "not an IP address",
            ),
            (
                "[routes]\ndestinations = [\"0.0.0.0/0\", \"0.0.0.0/0\"]",
                "routes.destinations",
                "listed twice",
            ),
            (
                "[routes]\ndestinations = [\"0.0.0.0/0\", \" 0.0.0.0/0\"]",
                "routes.destinations",
                "listed twice",
            ),
            (
                "[routes]\ndestinations = [\"10.0.0.0/8 \"]",
                "routes.destinations",
                "has spaces around it",
            ),
            (
                "[routes]\ndestinations = [\"::/0\"]",
                "routes.destinations",
                "kernel.ipv6_forwarding = true",
            ),
            (
                "[routes]\ntables = { \"us-east-1a\" = [] }",
                "routes.tables",
                "lists no route table",
            ),
            (
                "[routes]\ntables = { \" \" = [\"rtb-0123abcd\"] }",
                "routes.tables",
                "empty zone name",
            ),
            (
                "[routes]\ntables = { \"us-east-1a\" = [\"eni-0123abcd\"] }",
                "routes.tables",
                "not a route table ID",
            ),
        ]);
    }

    #[test]
    fn eni_and_routes_accept_the_edges() {
        valid("[eni]\ndevice_index = 1");
        valid("[eni]\ndevice_index = 15\nids = { \"us-east-1a\" = \"eni-0123456789abcdef0\" }");
        valid(
            "[routes]\ntables = { \"us-east-1a\" = [\"rtb-0123abcd\", \"rtb-0123456789abcdef0\"] }",
        );
        valid(
            "[routes]\ndestinations = [\"::/0\", \"10.0.0.1/32\"]\n[kernel]\nipv6_forwarding = true",
        );
    }

    #[test]
    fn cidrs_are_the_destinations_typed() {
        let config = valid(
            "[routes]\ndestinations = [\"0.0.0.0/0\", \"10.50.0.0/16\", \"::/0\"]\n\
             [kernel]\nipv6_forwarding = true",
        );
        assert_eq!(
            config.routes.cidrs(),
            [
                (Ipv4Addr::UNSPECIFIED.into(), 0),
                (Ipv4Addr::new(10, 50, 0, 0).into(), 16),
                (std::net::Ipv6Addr::UNSPECIFIED.into(), 0),
            ]
        );
    }
}
