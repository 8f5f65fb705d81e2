//! Reclaiming this zone's route tables: every managed destination must point at our ENI.

pub use super::route::{Expect, Op, RouteFact, RouteWrite, TableFact, Target};

/// A route we leave alone, and why (logged; an operator may have a reason for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub table: String,
    pub destination: String,
    pub reason: String,
}

/// The writes that make every managed destination of `tables` point at `own_eni`.
///
/// A route held by another of the group's ENIs (`group_enis`: a peer that took over while we
/// were gone, or a dead gateway's ENI) is ours to take back, unless `manual_failback` and the
/// route is active (its holder carries it); a blackhole is always replaced; a route to anything
/// else (another ENI, a firewall appliance's, a NAT gateway) belongs to someone else and is
/// skipped, never overwritten: a table's tags say it is ours to manage, not what it may carry.
pub fn reclaim(
    own_eni: &str,
    group_enis: &[String],
    destinations: &[String],
    tables: &[TableFact],
    manual_failback: bool,
) -> (Vec<RouteWrite>, Vec<Skipped>) {
    let mut intents = Vec::new();
    let mut skipped = Vec::new();
    for table in tables {
        for dest in destinations {
            let Some(route) = table.routes.iter().find(|r| &r.destination == dest) else {
                intents.push(RouteWrite::point(
                    &table.id,
                    dest,
                    Expect::Missing,
                    own_eni,
                    "missing",
                ));
                continue;
            };
            let (expect, reason) = match &route.target {
                Target::Eni(id) if id == own_eni && !route.blackhole => continue,
                Target::Eni(id) if id == own_eni => (
                    Expect::Blackhole,
                    "points at our ENI but reads blackhole".to_string(),
                ),
                Target::Eni(id) if route.blackhole => {
                    (Expect::Blackhole, format!("blackhole via {id}"))
                }
                Target::Eni(id) if !group_enis.contains(id) => {
                    skipped.push(Skipped {
                        table: table.id.clone(),
                        destination: dest.clone(),
                        reason: format!(
                            "points at {id}, which is not one of the group's gateway ENIs: left alone"
                        ),
                    });
                    continue;
                }
                Target::Eni(id) if manual_failback => {
                    skipped.push(Skipped {
                        table: table.id.clone(),
                        destination: dest.clone(),
                        reason: format!(
                            "held by {id}, which carries it (route active); failback = manual: \
                             run `gateway-agent failback` to take it back"
                        ),
                    });
                    continue;
                }
                Target::Eni(id) => (Expect::Eni(id.clone()), format!("held by {id}")),
                Target::Other(_) if route.blackhole => (Expect::Blackhole, "blackhole".to_string()),
                Target::Other(other) => {
                    skipped.push(Skipped {
                        table: table.id.clone(),
                        destination: dest.clone(),
                        reason: format!("points at {other}, not a gateway ENI: left alone"),
                    });
                    continue;
                }
            };
            intents.push(RouteWrite::point(&table.id, dest, expect, own_eni, &reason));
        }
    }
    (intents, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dest: &str, target: Target, blackhole: bool) -> RouteFact {
        RouteFact {
            destination: dest.into(),
            target,
            blackhole,
        }
    }

    fn eni(id: &str) -> Target {
        Target::Eni(id.into())
    }

    /// The group's ENIs: this gateway's, a peer's, an old gateway's of this zone.
    fn group() -> Vec<String> {
        ["eni-me", "eni-peer", "eni-old"].map(String::from).to_vec()
    }

    #[test]
    fn table() {
        let dests = vec!["0.0.0.0/0".to_string(), "10.50.0.0/16".to_string()];
        // (name, manual failback, routes, expected writes, expected skipped count)
        type Case<'a> = (&'a str, bool, Vec<RouteFact>, Vec<(&'a str, Op)>, usize);
        let cases: Vec<Case> = vec![
            (
                "already ours: nothing to do",
                false,
                vec![
                    route("0.0.0.0/0", eni("eni-me"), false),
                    route("10.50.0.0/16", eni("eni-me"), false),
                ],
                vec![],
                0,
            ),
            (
                "held by the peer that covered for us",
                false,
                vec![
                    route("0.0.0.0/0", eni("eni-peer"), false),
                    route("10.50.0.0/16", eni("eni-me"), false),
                ],
                vec![("0.0.0.0/0", Op::Replace)],
                0,
            ),
            (
                "blackhole via our own detached ENI, and a missing route",
                false,
                vec![route("0.0.0.0/0", eni("eni-me"), true)],
                vec![("0.0.0.0/0", Op::Replace), ("10.50.0.0/16", Op::Create)],
                0,
            ),
            (
                "a NAT gateway route is someone else's",
                false,
                vec![
                    route("0.0.0.0/0", Target::Other("nat-1".into()), false),
                    route("10.50.0.0/16", eni("eni-old"), true),
                ],
                vec![("10.50.0.0/16", Op::Replace)],
                1,
            ),
            (
                "a blackholed foreign route is dead anyway",
                false,
                vec![
                    route("0.0.0.0/0", Target::Other("nat-1".into()), true),
                    route("10.50.0.0/16", eni("eni-me"), false),
                ],
                vec![("0.0.0.0/0", Op::Replace)],
                0,
            ),
            (
                "an ENI outside the group (an appliance's) is left alone; a blackhole is replaced whoever it was",
                false,
                vec![
                    route("0.0.0.0/0", eni("eni-firewall"), false),
                    route("10.50.0.0/16", eni("eni-gone"), true),
                ],
                vec![("10.50.0.0/16", Op::Replace)],
                1,
            ),
            (
                "manual failback: an active holder keeps it, a blackhole does not",
                true,
                vec![
                    route("0.0.0.0/0", eni("eni-peer"), false),
                    route("10.50.0.0/16", eni("eni-peer"), true),
                ],
                vec![("10.50.0.0/16", Op::Replace)],
                1,
            ),
        ];
        for (name, manual, routes, want, want_skipped) in cases {
            let tables = vec![TableFact {
                id: "rtb-1".into(),
                routes,
            }];
            let (intents, skipped) = reclaim("eni-me", &group(), &dests, &tables, manual);
            let got: Vec<(&str, Op)> = intents
                .iter()
                .map(|i| (i.destination.as_str(), i.op()))
                .collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(skipped.len(), want_skipped, "{name}");
        }
    }

    #[test]
    fn every_table_of_the_zone_is_covered() {
        let dests = vec!["0.0.0.0/0".to_string()];
        let tables: Vec<TableFact> = (0..3)
            .map(|i| TableFact {
                id: format!("rtb-{i}"),
                routes: vec![route("0.0.0.0/0", eni("eni-peer"), false)],
            })
            .collect();
        let (intents, _) = reclaim("eni-me", &group(), &dests, &tables, false);
        assert_eq!(intents.len(), 3);
        assert_eq!(
            intents[2].to_string(),
            "replace route 0.0.0.0/0 in rtb-2 via eni-me: held by eni-peer"
        );
    }
}
