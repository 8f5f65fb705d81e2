//! Conditional routes: "while probe target T is unreachable, route C in tables R via this ENI".
//!
//! The Direct Connect → VPN pattern: on-premises prefixes normally arrive by propagation from
//! the virtual private gateway (Direct Connect). When T (an on-premises address reached over
//! Direct Connect) stops answering, a static route for C via this VPN gateway's ENI overrides
//! the propagated one; when T answers again, the static route is removed and propagation
//! takes over. Activation is immediate (traffic is being lost); removal waits for `rise`
//! answers and, for a rule that keeps flipping, a hold-down that doubles per recent activation.

use std::time::Duration;

use super::route::{Expect, Probe, RouteWrite, TableFact, Target};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub destinations: Vec<String>,
    pub tables: Vec<TableFact>,
    /// The probe target's rise/fall state.
    pub target: Probe,
    /// How long the target has been up without interruption.
    pub up_for: Duration,
    /// Activations within the damping window (this one included, if active).
    pub recent_activations: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<RouteWrite>,
    /// Why nothing (or not everything) is done, for the log.
    pub notes: Vec<String>,
}

/// How long the target must stay up before the routes go: nothing extra the first time (its
/// `rise` answers are enough), then `hold_down`, doubling per further recent activation.
pub fn removal_hold(hold_down: Duration, max: Duration, recent_activations: u32) -> Duration {
    match recent_activations {
        0 | 1 => Duration::ZERO,
        n => hold_down
            .saturating_mul(1 << (n - 2).min(20))
            .min(max.max(hold_down)),
    }
}

pub fn plan(own_eni: &str, rule: &Rule, hold_down: Duration, max: Duration) -> Plan {
    let mut out = Plan::default();
    match rule.target {
        Probe::Unknown => {}
        Probe::Down => {
            for t in &rule.tables {
                for dest in &rule.destinations {
                    let route = t.routes.iter().find(|r| &r.destination == dest);
                    let why = format!(
                        "{}: {dest} via this gateway while the target is silent",
                        rule.name
                    );
                    let add = |expect| RouteWrite::point(&t.id, dest, expect, own_eni, &why);
                    match route {
                        None => out.actions.push(add(Expect::Missing)),
                        Some(r) if r.blackhole => out.actions.push(add(Expect::Blackhole)),
                        Some(r) if r.target == Target::Eni(own_eni.to_owned()) => {}
                        Some(r) => out.notes.push(format!(
                            "{}: {dest} in {} points at {}, a static route this rule did not \
                             make: left alone",
                            rule.name,
                            t.id,
                            match &r.target {
                                Target::Eni(id) | Target::Other(id) => id,
                            }
                        )),
                    }
                }
            }
        }
        Probe::Up => {
            let hold = removal_hold(hold_down, max, rule.recent_activations);
            let ours: Vec<RouteWrite> = rule
                .tables
                .iter()
                .flat_map(|t| {
                    rule.destinations.iter().filter_map(|dest| {
                        t.routes
                            .iter()
                            .find(|r| &r.destination == dest)
                            .filter(|r| r.target == Target::Eni(own_eni.to_owned()))
                            .map(|_| {
                                RouteWrite::delete(
                                    &t.id,
                                    dest,
                                    own_eni,
                                    &format!(
                                        "{}: {dest} removed: the target answers again",
                                        rule.name
                                    ),
                                )
                            })
                    })
                })
                .collect();
            if ours.is_empty() {
                return out;
            }
            if rule.up_for < hold {
                out.notes.push(format!(
                    "{}: target answers again; routes removed after {} s up ({} s so far, {} \
                     recent activation(s))",
                    rule.name,
                    hold.as_secs(),
                    rule.up_for.as_secs(),
                    rule.recent_activations
                ));
            } else {
                out.actions = ours;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::route::{Op, RouteFact};

    const DEST: &str = "10.1.0.0/16";
    const HOLD: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(600);

    fn rule(target: Probe, route: Option<(Target, bool)>) -> Rule {
        Rule {
            name: "dx".into(),
            destinations: vec![DEST.into()],
            tables: vec![TableFact {
                id: "rtb-1".into(),
                routes: route
                    .into_iter()
                    .map(|(target, blackhole)| RouteFact {
                        destination: DEST.into(),
                        target,
                        blackhole,
                    })
                    .collect(),
            }],
            target,
            up_for: Duration::from_secs(3600),
            recent_activations: 1,
        }
    }

    fn mine() -> Target {
        Target::Eni("eni-me".into())
    }

    #[test]
    fn table() {
        let add = |create| vec![if create { Op::Create } else { Op::Replace }];
        let remove = vec![Op::Delete];
        let cases: Vec<(&str, Rule, Vec<Op>)> = vec![
            ("down, no route: create", rule(Probe::Down, None), add(true)),
            (
                "down, already ours",
                rule(Probe::Down, Some((mine(), false))),
                vec![],
            ),
            (
                "down, a blackhole (ours or a dead peer's): replace",
                rule(Probe::Down, Some((Target::Eni("eni-dead".into()), true))),
                add(false),
            ),
            (
                "down, someone else's static route: left alone",
                rule(Probe::Down, Some((Target::Other("vgw-1".into()), false))),
                vec![],
            ),
            (
                "up, ours: remove",
                rule(Probe::Up, Some((mine(), false))),
                remove.clone(),
            ),
            (
                "up, someone else's: never removed",
                rule(Probe::Up, Some((Target::Eni("eni-peer".into()), false))),
                vec![],
            ),
            ("up, none: nothing", rule(Probe::Up, None), vec![]),
            (
                "unknown: nothing either way",
                rule(Probe::Unknown, None),
                vec![],
            ),
        ];
        for (name, r, want) in cases {
            let got: Vec<Op> = plan("eni-me", &r, HOLD, MAX)
                .actions
                .iter()
                .map(RouteWrite::op)
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_flapping_target_holds_its_routes_longer() {
        let mut r = rule(Probe::Up, Some((mine(), false)));
        r.up_for = Duration::from_secs(1);
        // First activation: the rise count alone decides.
        assert_eq!(plan("eni-me", &r, HOLD, MAX).actions.len(), 1);
        r.recent_activations = 3;
        let p = plan("eni-me", &r, HOLD, MAX);
        assert!(p.actions.is_empty());
        assert!(p.notes[0].contains("after 60 s"), "{:?}", p.notes);
        r.up_for = Duration::from_secs(60);
        assert_eq!(plan("eni-me", &r, HOLD, MAX).actions.len(), 1);
        assert_eq!(removal_hold(HOLD, MAX, 30), MAX);
    }
}
