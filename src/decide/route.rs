//! The vocabulary every decision shares: what a probe says, what a route table holds, and the
//! one kind of route write that boot reclaim, failover, hand-over, conditional routes and a
//! manual failover all produce and the agent's single route executor carries out.

use std::fmt;

/// What [`RouteFact::reads`] (and so a zone's carrier) says of a route that reads blackhole.
pub const BLACKHOLE: &str = "blackhole";

/// A rise/fall-filtered reachability verdict (a peer, a conditional route's target, the own
/// self-check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Not enough probes yet to say either way.
    Unknown,
    Up,
    Down,
}

impl Probe {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirm {
    /// A peer that stops answering is dead only when the API, its lease or its own last word
    /// says so too.
    Api,
    /// ICMP silence alone is enough (appliances without an agent); a partition then moves routes.
    Icmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    Auto,
    Manual,
}

/// What a route currently points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Eni(String),
    /// An internet/NAT/transit gateway, peering, instance...: a third party's route.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFact {
    pub destination: String,
    pub target: Target,
    pub blackhole: bool,
}

impl RouteFact {
    /// What the route reads as, in a word: `blackhole`, or the ENI or gateway it points at.
    pub fn reads(&self) -> &str {
        match &self.target {
            _ if self.blackhole => BLACKHOLE,
            Target::Eni(id) | Target::Other(id) => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFact {
    pub id: String,
    pub routes: Vec<RouteFact>,
}

impl TableFact {
    pub fn route(&self, destination: &str) -> Option<&RouteFact> {
        self.routes.iter().find(|r| r.destination == destination)
    }
}

/// What a write expects to find, re-checked right before it is made: a route that changed
/// since the decision belongs to whoever changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The route points at this ENI (active or not).
    Eni(String),
    /// The route reads blackhole, whatever it points at.
    Blackhole,
    /// There is no route for the destination (a create).
    Missing,
}

impl Expect {
    /// Whether `route` (the destination's route as just read, if any) is still what the
    /// decision saw.
    pub fn holds(&self, route: Option<&RouteFact>) -> bool {
        match (self, route) {
            (Self::Missing, None) => true,
            (Self::Blackhole, Some(r)) => r.blackhole,
            (Self::Eni(id), Some(r)) => r.target == Target::Eni(id.clone()),
            _ => false,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eni(id) => write!(f, "via {id}"),
            Self::Blackhole => f.write_str("blackhole"),
            Self::Missing => f.write_str("missing"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Replace,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Replace => "replace",
            Self::Delete => "delete",
        }
    }
}

/// One route write: the route of `destination` in `table`, found as `expect`, made to point
/// at `to` (or deleted when `to` is `None`), for `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteWrite {
    pub table: String,
    pub destination: String,
    pub expect: Expect,
    /// The ENI the route will point at; `None` deletes it.
    pub to: Option<String>,
    pub reason: String,
}

impl RouteWrite {
    /// Point `destination` of `table` at `to`: a create when the route is missing.
    pub fn point(table: &str, destination: &str, expect: Expect, to: &str, reason: &str) -> Self {
        Self {
            table: table.to_owned(),
            destination: destination.to_owned(),
            expect,
            to: Some(to.to_owned()),
            reason: reason.to_owned(),
        }
    }

    /// Remove the route of `destination` from `table`, which points at `eni`.
    pub fn delete(table: &str, destination: &str, eni: &str, reason: &str) -> Self {
        Self {
            table: table.to_owned(),
            destination: destination.to_owned(),
            expect: Expect::Eni(eni.to_owned()),
            to: None,
            reason: reason.to_owned(),
        }
    }

    pub fn op(&self) -> Op {
        match (&self.to, &self.expect) {
            (None, _) => Op::Delete,
            (Some(_), Expect::Missing) => Op::Create,
            (Some(_), _) => Op::Replace,
        }
    }

    /// Whether `route` (as read after the write) shows the write took effect.
    pub fn done(&self, route: Option<&RouteFact>) -> bool {
        match (&self.to, route) {
            (None, r) => r.is_none(),
            (Some(to), Some(r)) => r.target == Target::Eni(to.clone()),
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for RouteWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} route {} in {}",
            self.op().as_str(),
            self.destination,
            self.table
        )?;
        if let Some(to) = &self.to {
            write!(f, " via {to}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Who carries a zone: the ENI most of its managed routes point at, or `blackhole`.
pub fn carrier<'t>(
    tables: impl IntoIterator<Item = &'t TableFact>,
    destinations: &[String],
) -> Option<String> {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for t in tables {
        for dest in destinations {
            if let Some(r) = t.route(dest) {
                *counts.entry(r.reads().to_owned()).or_default() += 1;
            }
        }
    }
    // Ties go to the first in order, as the counts were always read.
    let max = counts.values().copied().max()?;
    counts
        .into_iter()
        .rev()
        .find(|(_, n)| *n == max)
        .map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(id: &str, routes: &[(&str, &str, bool)]) -> TableFact {
        TableFact {
            id: id.into(),
            routes: routes
                .iter()
                .map(|(d, t, b)| RouteFact {
                    destination: (*d).into(),
                    target: if t.starts_with("eni-") {
                        Target::Eni((*t).into())
                    } else {
                        Target::Other((*t).into())
                    },
                    blackhole: *b,
                })
                .collect(),
        }
    }

    #[test]
    fn carrier_is_the_majority_and_blackhole_counts_as_one() {
        let dests = vec!["0.0.0.0/0".to_string(), "10.0.0.0/8".to_string()];
        let cases: Vec<(&str, Vec<TableFact>, Option<&str>)> = vec![
            ("no tables", vec![], None),
            (
                "one table, one ENI",
                vec![table("r1", &[("0.0.0.0/0", "eni-a", false)])],
                Some("eni-a"),
            ),
            (
                "a blackhole is named blackhole, whatever it points at",
                vec![table("r1", &[("0.0.0.0/0", "eni-a", true)])],
                Some("blackhole"),
            ),
            (
                "two of three routes decide",
                vec![
                    table(
                        "r1",
                        &[
                            ("0.0.0.0/0", "eni-b", false),
                            ("10.0.0.0/8", "eni-b", false),
                        ],
                    ),
                    table("r2", &[("0.0.0.0/0", "eni-a", false)]),
                ],
                Some("eni-b"),
            ),
            (
                "unmanaged destinations do not count",
                vec![table(
                    "r1",
                    &[
                        ("0.0.0.0/0", "eni-a", false),
                        ("192.168.0.0/16", "eni-b", false),
                    ],
                )],
                Some("eni-a"),
            ),
        ];
        for (name, tables, want) in cases {
            assert_eq!(carrier(&tables, &dests).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn a_write_knows_its_op_its_expectation_and_its_effect() {
        let r = |t: &str, b| RouteFact {
            destination: "0.0.0.0/0".into(),
            target: Target::Eni(t.into()),
            blackhole: b,
        };
        let w = RouteWrite::point(
            "rtb-1",
            "0.0.0.0/0",
            Expect::Eni("eni-a".into()),
            "eni-b",
            "x",
        );
        assert_eq!(w.op(), Op::Replace);
        assert!(w.expect.holds(Some(&r("eni-a", false))));
        assert!(!w.expect.holds(Some(&r("eni-c", false))));
        assert!(!w.expect.holds(None));
        assert!(w.done(Some(&r("eni-b", false))));
        assert!(!w.done(Some(&r("eni-a", false))));
        let c = RouteWrite::point("rtb-1", "0.0.0.0/0", Expect::Missing, "eni-b", "x");
        assert_eq!(c.op(), Op::Create);
        assert!(c.expect.holds(None));
        let d = RouteWrite::delete("rtb-1", "0.0.0.0/0", "eni-b", "x");
        assert_eq!(d.op(), Op::Delete);
        assert!(d.done(None));
        assert!(!d.done(Some(&r("eni-b", false))));
        assert!(Expect::Blackhole.holds(Some(&r("eni-a", true))));
        assert_eq!(
            w.to_string(),
            "replace route 0.0.0.0/0 in rtb-1 via eni-b: x"
        );
    }
}
