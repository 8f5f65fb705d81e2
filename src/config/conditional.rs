//! `[[conditional]]`: routes this gateway carries only while a probed address stays silent
//! (e.g. a backup path to on-premises while Direct Connect is down).

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use super::error::Problems;
use super::group::Routes;
use super::value::{is_aws_id, parse_cidr};

/// "While `probe` does not answer, route `destinations` in `tables` via this gateway's ENI."
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditional {
    #[serde(default)]
    pub name: Option<String>,
    pub probe: String,
    pub destinations: Vec<String>,
    #[serde(default)]
    pub tables: Vec<String>,
}

impl Conditional {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.probe.clone())
    }

    /// The probe address (validation refused anything else).
    pub fn target(&self) -> Option<Ipv4Addr> {
        self.probe.trim().parse().ok()
    }

    /// The destinations as (network, prefix length), in file order. Validation refused any
    /// destination that is not a CIDR, so on a validated config there is one per destination.
    pub fn cidrs(&self) -> Vec<(IpAddr, u8)> {
        self.destinations
            .iter()
            .filter_map(|d| parse_cidr(d).ok())
            .collect()
    }

    /// Rule `index` of the file; `earlier` are the rules before it and `routes` the
    /// always-routed destinations, since a destination may belong to one of them only.
    pub(super) fn validate(
        &self,
        index: usize,
        earlier: &[Conditional],
        routes: &Routes,
        problems: &mut Problems,
    ) {
        let key = |k: &str| format!("conditional[{index}].{k}");
        if self.target().is_none() {
            problems.fail(
                &key("probe"),
                format!(
                    "{:?} is not an IPv4 address; give the address whose silence activates the rule, e.g. an on-premises host reached over Direct Connect",
                    self.probe
                ),
            );
        }
        if self.destinations.is_empty() {
            problems.fail(
                &key("destinations"),
                "is empty; list the CIDRs to route via this gateway while the probe fails",
            );
        }
        for dest in &self.destinations {
            if let Err(why) = parse_cidr(dest) {
                problems.fail(&key("destinations"), format!("{dest:?} {why}"));
            } else if routes.destinations.contains(dest) {
                problems.fail(
                    &key("destinations"),
                    format!(
                        "{dest:?} is also in routes.destinations, which are always routed here; remove it from one of them"
                    ),
                );
            } else if earlier.iter().any(|r| r.destinations.contains(dest)) {
                problems.fail(
                    &key("destinations"),
                    format!(
                        "{dest:?} is in an earlier conditional rule too; one rule per destination"
                    ),
                );
            }
        }
        for id in &self.tables {
            if !is_aws_id(id, "rtb") {
                problems.fail(
                    &key("tables"),
                    format!(
                        "{id:?} is not a route table ID; use rtb-... IDs, or leave the list empty for this zone's tables"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::testing::{each_names_key_and_fix, valid};

    #[test]
    fn conditional_rules_name_key_and_fix() {
        each_names_key_and_fix(&[
            (
                "[[conditional]]\nprobe = \"on-prem\"\ndestinations = [\"10.1.0.0/16\"]",
                "conditional[0].probe",
                "not an IPv4 address",
            ),
            (
                "[[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = []",
                "conditional[0].destinations",
                "is empty",
            ),
            (
                "[[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\"10.1.0.1/16\"]",
                "conditional[0].destinations",
                "\"10.1.0.0/16\"",
            ),
            (
                "[[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\" 10.1.0.0/16\"]",
                "conditional[0].destinations",
                "not an IP address",
            ),
            (
                "[[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\"0.0.0.0/0\"]",
                "conditional[0].destinations",
                "also in routes.destinations",
            ),
            (
                "[[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\"10.1.0.0/16\"]\n\
                 [[conditional]]\nprobe = \"192.0.2.2\"\ndestinations = [\"10.1.0.0/16\"]",
                "conditional[1].destinations",
                "earlier conditional rule",
            ),
            (
                "[[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\"10.1.0.0/16\"]\ntables = [\"10\"]",
                "conditional[0].tables",
                "not a route table ID",
            ),
        ]);
    }

    #[test]
    fn conditional_typed_accessors_cover_every_value() {
        let config = valid(
            "[[conditional]]\nname = \"dx\"\nprobe = \" 192.0.2.1 \"\n\
             destinations = [\"10.1.0.0/16\", \"10.2.0.0/16\"]\ntables = [\"rtb-0123abcd\"]\n\
             [[conditional]]\nprobe = \"192.0.2.2\"\ndestinations = [\"10.3.0.0/16\"]",
        );
        let rule = &config.conditional[0];
        assert_eq!(rule.label(), "dx");
        assert_eq!(rule.target(), Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            rule.cidrs(),
            [
                (Ipv4Addr::new(10, 1, 0, 0).into(), 16),
                (Ipv4Addr::new(10, 2, 0, 0).into(), 16)
            ]
        );
        assert_eq!(config.conditional[1].label(), "192.0.2.2");
    }
}
