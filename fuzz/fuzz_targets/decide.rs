//! Random worlds through the failover core: whatever the facts, no decision may break an
//! invariant of docs/design.md (no third party overwritten, no traffic taken while sick or
//! leaving, only the successor takes a peer's zone, a hand-over never goes to nobody or to
//! itself, no route written twice in one round).
#![no_main]

use std::collections::BTreeSet;
use std::time::Duration;

use gateway_agent::config::{Confirm, Failback};
use gateway_agent::decide::failover::{
    Expect, Facts, Gateway, Kind, Me, Policy, Probe, SelfReport, Zone, decide, successor,
};
use gateway_agent::decide::reclaim::{RouteFact, TableFact, Target};
use libfuzzer_sys::fuzz_target;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[usize::from(self.next()) % from.len()].clone()
    }
}

const ZONES: [&str; 4] = ["a", "b", "c", "d"];
const DESTS: [&str; 2] = ["0.0.0.0/0", "10.1.0.0/16"];

fn eni(z: &str) -> String {
    format!("eni-{z}")
}

fn world(b: &mut Bytes<'_>) -> Facts {
    let n = 2 + usize::from(b.next()) % 3;
    let zones: Vec<&str> = ZONES[..n].to_vec();
    let me = b.pick(&zones);
    let mut targets: Vec<Target> = zones.iter().map(|z| Target::Eni(eni(z))).collect();
    targets.push(Target::Eni("eni-operator".into()));
    targets.push(Target::Other("igw-1".into()));
    let zone_facts = zones
        .iter()
        .map(|z| Zone {
            zone: (*z).into(),
            tables: (0..1 + b.next() % 2)
                .map(|t| TableFact {
                    id: format!("rtb-{z}{t}"),
                    routes: DESTS
                        .iter()
                        .filter_map(|d| {
                            (b.next() % 5 != 0).then(|| RouteFact {
                                destination: (*d).into(),
                                target: b.pick(&targets),
                                blackhole: b.next() % 4 == 0,
                            })
                        })
                        .collect(),
                })
                .collect(),
            lease_unchanged_for: Duration::from_millis(u64::from(b.next()) * 20),
            recent_changes: u32::from(b.next() % 4),
            since_last_change: b.bool().then(|| Duration::from_secs(u64::from(b.next()))),
            blackhole_for: Duration::from_millis(u64::from(b.next()) * 20),
        })
        .collect();
    let peers = zones
        .iter()
        .filter(|z| **z != me)
        .map(|z| Gateway {
            zone: (*z).into(),
            eni: eni(z),
            instance: b.bool().then(|| format!("i-{z}")),
            icmp: b.pick(&[Probe::Unknown, Probe::Up, Probe::Down]),
            report: b.bool().then(|| SelfReport {
                healthy: b.bool(),
                draining: b.bool(),
                at_risk: b.bool(),
            }),
            api_gone: b.bool().then(|| "instance terminated".to_owned()),
        })
        .collect();
    let mut ring: Vec<String> = Vec::new();
    if b.bool() {
        let shift = usize::from(b.next()) % n;
        ring = (0..n).map(|i| zones[(i + shift) % n].to_owned()).collect();
    }
    Facts {
        me: Me {
            zone: me.into(),
            eni: eni(me),
            healthy: b.next() % 4 != 0,
            healthy_for: Duration::from_secs(u64::from(b.next())),
            draining: b.next() % 5 == 0,
            at_risk: b.next() % 7 == 0,
        },
        ring,
        peers,
        zones: zone_facts,
        destinations: vec![DESTS[0].into()],
        optional: vec![DESTS[1].into()],
        policy: Policy {
            confirm: if b.bool() {
                Confirm::Api
            } else {
                Confirm::Icmp
            },
            failback: if b.bool() {
                Failback::Auto
            } else {
                Failback::Manual
            },
            hold_down: Duration::from_secs(30),
            damping_max: Duration::from_secs(600),
            lease_ttl: Duration::from_millis(2500),
        },
        failback_now: b.next() % 8 == 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let f = world(&mut Bytes(data));
    let out = decide(&f);
    let group_enis: BTreeSet<String> = f
        .peers
        .iter()
        .map(|g| g.eni.clone())
        .chain([f.me.eni.clone()])
        .collect();
    let mut written = BTreeSet::new();
    for d in &out.decisions {
        let zone = f
            .zones
            .iter()
            .find(|z| z.zone == d.zone)
            .expect("a known zone");
        assert!(!d.writes.is_empty(), "{d:?}");
        if d.kind == Kind::Handover {
            assert!(
                f.me.draining || !f.me.healthy,
                "hand-over while well: {d:?}"
            );
            assert_ne!(d.target, f.me.eni, "hand-over to itself: {d:?}");
            let to = f
                .peers
                .iter()
                .find(|g| g.eni == d.target)
                .expect("to a peer");
            assert!(
                to.icmp == Probe::Up && to.report.is_some_and(|r| r.healthy && !r.draining),
                "hand-over to an ineligible peer: {d:?}"
            );
        } else {
            assert!(
                f.me.healthy && !f.me.draining,
                "takes traffic while sick or leaving: {d:?}"
            );
            assert_eq!(d.target, f.me.eni, "{d:?}");
        }
        if d.kind == Kind::TakeOver {
            assert_ne!(d.zone, f.me.zone);
            assert_eq!(
                successor(&f, &d.zone),
                Some(f.me.zone.as_str()),
                "not the successor: {d:?}"
            );
        }
        if d.kind == Kind::Failback {
            assert!(
                f.policy.failback == Failback::Auto || f.failback_now,
                "{d:?}"
            );
            assert_eq!(d.zone, f.me.zone);
        }
        for w in &d.writes {
            assert!(
                written.insert((w.table.clone(), w.destination.clone())),
                "written twice: {w:?}"
            );
            let table = zone
                .tables
                .iter()
                .find(|t| t.id == w.table)
                .expect("a table of the zone");
            let route = table.routes.iter().find(|r| r.destination == w.destination);
            match (&w.expect, route) {
                (Expect::Missing, None) => {
                    assert_eq!(d.zone, f.me.zone, "creates in a peer's zone: {d:?}");
                    assert!(
                        f.destinations.contains(&w.destination),
                        "creates an optional route"
                    );
                }
                (Expect::Blackhole, Some(r)) => assert!(r.blackhole),
                (Expect::Eni(x), Some(r)) => {
                    assert_eq!(r.target, Target::Eni(x.clone()));
                    assert!(group_enis.contains(x), "overwrites a third party: {w:?}");
                    if d.kind == Kind::Handover {
                        assert_eq!(*x, f.me.eni);
                    } else {
                        assert_ne!(*x, f.me.eni, "rewrites its own route: {w:?}");
                    }
                }
                other => panic!("write does not match the table: {other:?} {w:?}"),
            }
        }
    }
});
