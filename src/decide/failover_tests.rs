//! Scenario tables for the failover core. Zones are `a`, `b`, `c`; zone X's ENI is `eni-X`,
//! its table `rtb-X`; the default test gateway is `a`.

use super::*;
use crate::decide::reclaim::RouteFact;

const TTL: Duration = Duration::from_millis(2500);

fn policy() -> Policy {
    Policy {
        confirm: Confirm::Api,
        failback: Failback::Auto,
        hold_down: Duration::from_secs(30),
        damping_max: Duration::from_secs(600),
        lease_ttl: TTL,
    }
}

fn eni(z: &str) -> String {
    format!("eni-{z}")
}

/// A world of `zones`; every route points at its own zone's ENI; every peer up and healthy.
struct World {
    f: Facts,
}

impl World {
    fn new(me: &str, zones: &[&str]) -> Self {
        let f = Facts {
            me: Me {
                zone: me.into(),
                eni: eni(me),
                healthy: true,
                healthy_for: Duration::from_secs(3600),
                draining: false,
                at_risk: false,
            },
            ring: Vec::new(),
            peers: zones
                .iter()
                .filter(|z| **z != me)
                .map(|z| Gateway {
                    zone: (*z).into(),
                    eni: eni(z),
                    instance: Some(format!("i-{z}")),
                    icmp: Probe::Up,
                    report: Some(SelfReport {
                        healthy: true,
                        draining: false,
                        at_risk: false,
                    }),
                    api_gone: None,
                })
                .collect(),
            zones: zones
                .iter()
                .map(|z| Zone {
                    zone: (*z).into(),
                    tables: vec![table(&format!("rtb-{z}"), Target::Eni(eni(z)), false)],
                    lease_unchanged_for: Duration::from_millis(500),
                    recent_changes: 0,
                    since_last_change: None,
                    blackhole_for: Duration::ZERO,
                })
                .collect(),
            destinations: vec!["0.0.0.0/0".into()],
            optional: Vec::new(),
            policy: policy(),
            failback_now: false,
        };
        Self { f }
    }

    fn peer(&mut self, z: &str) -> &mut Gateway {
        self.f.peers.iter_mut().find(|g| g.zone == z).unwrap()
    }

    fn zone(&mut self, z: &str) -> &mut Zone {
        self.f.zones.iter_mut().find(|x| x.zone == z).unwrap()
    }

    /// `z`'s gateway died the way a terminated instance does: silent, and the API says so.
    fn terminated(&mut self, z: &str) -> &mut Self {
        let g = self.peer(z);
        g.icmp = Probe::Down;
        g.report = None;
        g.api_gone = Some(format!("instance of {z} is shutting-down"));
        self
    }

    /// Hung: silent to ICMP and /health, the API still says running, the lease stops.
    fn hung(&mut self, z: &str) -> &mut Self {
        let g = self.peer(z);
        g.icmp = Probe::Down;
        g.report = None;
        self
    }

    fn lease_stale(&mut self, z: &str) -> &mut Self {
        self.zone(z).lease_unchanged_for = TTL + Duration::from_millis(1);
        self
    }

    /// Zone `z`'s routes point at `target`'s ENI.
    fn held_by(&mut self, z: &str, target: &str) -> &mut Self {
        self.zone(z).tables = vec![table(&format!("rtb-{z}"), Target::Eni(eni(target)), false)];
        self
    }

    fn route(&mut self, z: &str, target: Target, blackhole: bool) -> &mut Self {
        self.zone(z).tables = vec![table(&format!("rtb-{z}"), target, blackhole)];
        self
    }

    fn decide(&self) -> Outcome {
        decide(&self.f)
    }
}

fn table(id: &str, target: Target, blackhole: bool) -> TableFact {
    TableFact {
        id: id.into(),
        routes: vec![RouteFact {
            destination: "0.0.0.0/0".into(),
            target,
            blackhole,
        }],
    }
}

/// (zone, kind, expectation of the single write) of every decision.
fn summary(o: &Outcome) -> Vec<(String, &'static str, String)> {
    o.decisions
        .iter()
        .map(|d| {
            assert_eq!(d.writes.len(), 1, "{d:?}");
            (
                d.zone.clone(),
                d.kind.as_str(),
                d.writes[0].expect.to_string(),
            )
        })
        .collect()
}

fn takes(zone: &str, kind: &'static str, expect: &str) -> Vec<(String, &'static str, String)> {
    vec![(zone.into(), kind, expect.into())]
}

fn waits_for(o: &Outcome, zone: &str, needle: &str) {
    assert!(
        o.waits
            .iter()
            .any(|w| w.zone == zone && w.reason.contains(needle)),
        "no wait for {zone} containing {needle:?}: {:?}",
        o.waits
    );
}

#[test]
fn steady_state_does_nothing() {
    for me in ["a", "b", "c"] {
        let o = World::new(me, &["a", "b", "c"]).decide();
        assert_eq!(o, Outcome::default(), "{me}");
    }
}

#[test]
fn two_zones_takeover_needs_probe_and_confirmation() {
    // (what happened to b, a takes b?)
    type Setup = fn(&mut World);
    let cases: &[(&str, Setup, bool)] = &[
        (
            "terminated: silent and the API says so",
            |w| {
                w.terminated("b");
            },
            true,
        ),
        (
            "hung, lease still fresh",
            |w| {
                w.hung("b");
            },
            false,
        ),
        (
            "hung, lease unchanged past the ttl",
            |w| {
                w.hung("b").lease_stale("b");
            },
            true,
        ),
        (
            "silent, last /health said draining",
            |w| {
                w.hung("b").peer("b").report = Some(SelfReport {
                    healthy: true,
                    draining: true,
                    at_risk: false,
                });
            },
            true,
        ),
        (
            "silent, last /health said unhealthy",
            |w| {
                w.hung("b").peer("b").report = Some(SelfReport {
                    healthy: false,
                    draining: false,
                    at_risk: false,
                });
            },
            true,
        ),
        (
            "answers ICMP but the API says gone (probe not down yet)",
            |w| {
                w.peer("b").api_gone = Some("ENI detached".into());
            },
            false,
        ),
        (
            "agent dead, kernel forwards: ICMP up, no /health, lease stale",
            |w| {
                w.peer("b").report = None;
                w.lease_stale("b");
            },
            false,
        ),
        (
            "probes not settled yet (unknown), lease stale",
            |w| {
                w.peer("b").icmp = Probe::Unknown;
                w.lease_stale("b");
            },
            false,
        ),
        (
            "route already reads blackhole (ENI detached), probes unknown, reads agree",
            |w| {
                w.peer("b").icmp = Probe::Unknown;
                w.route("b", Target::Eni(eni("b")), true);
                w.zone("b").blackhole_for = BLACKHOLE_SETTLE;
            },
            true,
        ),
        (
            "a first blackhole read, probes unknown: maybe a lagging read of a fresh claim",
            |w| {
                w.peer("b").icmp = Probe::Unknown;
                w.route("b", Target::Eni(eni("b")), true);
                w.zone("b").blackhole_for = BLACKHOLE_SETTLE / 2;
            },
            false,
        ),
        (
            "blackhole read at an ENI that answers ICMP: lagging until reads agree",
            |w| {
                w.peer("b").report = None;
                w.route("b", Target::Eni(eni("b")), true);
                w.zone("b").blackhole_for = BLACKHOLE_SETTLE / 2;
            },
            false,
        ),
        (
            "a first blackhole read at an ENI silent to ICMP: at once",
            |w| {
                w.peer("b").icmp = Probe::Down;
                w.peer("b").report = None;
                w.route("b", Target::Eni(eni("b")), true);
            },
            true,
        ),
    ];
    for (name, setup, expected) in cases {
        let mut w = World::new("a", &["a", "b"]);
        setup(&mut w);
        let o = w.decide();
        let took = o
            .decisions
            .iter()
            .any(|d| d.zone == "b" && d.kind == Kind::TakeOver);
        assert_eq!(took, *expected, "{name}: {o:?}");
        if !expected {
            assert!(o.decisions.is_empty(), "{name}: {o:?}");
        }
    }
}

#[test]
fn icmp_only_confirmation_is_an_opt_in() {
    let mut w = World::new("a", &["a", "b"]);
    w.hung("b");
    waits_for(&w.decide(), "b", "partition");
    w.f.policy.confirm = Confirm::Icmp;
    let o = w.decide();
    assert_eq!(summary(&o), takes("b", "takeover", "via eni-b"));
    assert!(o.decisions[0].evidence.contains("ICMP-only"), "{o:?}");
}

#[test]
fn the_write_expects_the_dead_target_and_names_the_evidence() {
    let mut w = World::new("a", &["a", "b"]);
    w.terminated("b");
    let o = w.decide();
    let d = &o.decisions[0];
    assert_eq!(d.writes[0].table, "rtb-b");
    assert_eq!(d.writes[0].expect, Expect::Eni("eni-b".into()));
    assert_eq!(d.from.as_deref(), Some("eni-b"));
    assert!(d.evidence.contains("shutting-down"), "{}", d.evidence);
}

#[test]
fn an_unhealthy_gateway_takes_nothing() {
    let mut w = World::new("a", &["a", "b"]);
    w.terminated("b");
    w.f.me.healthy = false;
    let o = w.decide();
    assert!(o.decisions.is_empty());
    waits_for(&o, "b", "own self-check failing");
    // Nor its own zone's blackholes.
    let mut w = World::new("a", &["a", "b"]);
    w.route("a", Target::Eni(eni("a")), true);
    w.f.me.healthy = false;
    let o = w.decide();
    assert!(o.decisions.is_empty());
    waits_for(&o, "a", "own self-check failing");
}

#[test]
fn three_zones_only_the_designated_successor_acts() {
    // Ring a → b → c → a. c dies: its successor is a.
    for (me, acts) in [("a", true), ("b", false)] {
        let mut w = World::new(me, &["a", "b", "c"]);
        w.terminated("c");
        let o = w.decide();
        if acts {
            assert_eq!(summary(&o), takes("c", "takeover", "via eni-c"), "{me}");
        } else {
            assert!(o.decisions.is_empty(), "{me}: {o:?}");
            waits_for(&o, "c", "successor is a");
        }
    }
}

#[test]
fn three_zones_the_third_steps_in_when_the_successor_is_down_too() {
    // a took c, then a died as well: b takes a's zone and c's.
    let mut w = World::new("b", &["a", "b", "c"]);
    w.terminated("c").terminated("a").held_by("c", "a");
    let o = w.decide();
    let mut s = summary(&o);
    s.sort();
    assert_eq!(
        s,
        vec![
            ("a".into(), "takeover", "via eni-a".into()),
            ("c".into(), "takeover", "via eni-a".into()),
        ]
    );
    // The successor is merely ineligible (draining), not dead: b still steps in for c.
    let mut w = World::new("b", &["a", "b", "c"]);
    w.terminated("c");
    w.peer("a").report = Some(SelfReport {
        healthy: true,
        draining: true,
        at_risk: false,
    });
    assert_eq!(summary(&w.decide()), takes("c", "takeover", "via eni-c"));
    // Or its agent is dead (no /health): it would never act, so b does.
    let mut w = World::new("b", &["a", "b", "c"]);
    w.terminated("c");
    w.peer("a").report = None;
    assert_eq!(summary(&w.decide()), takes("c", "takeover", "via eni-c"));
}

#[test]
fn the_configured_ring_order_wins_over_names() {
    let mut w = World::new("b", &["a", "b", "c"]);
    w.f.ring = vec!["c".into(), "b".into(), "a".into()];
    w.terminated("c");
    assert_eq!(summary(&w.decide()), takes("c", "takeover", "via eni-c"));
    let mut w = World::new("a", &["a", "b", "c"]);
    w.f.ring = vec!["c".into(), "b".into(), "a".into()];
    w.terminated("c");
    waits_for(&w.decide(), "c", "successor is b");
}

#[test]
fn a_healthy_owner_reclaims_its_zone_itself() {
    // b's zone is held by c, c died; b is up: b's job, not a's.
    let mut w = World::new("a", &["a", "b", "c"]);
    w.terminated("c").held_by("b", "c");
    let o = w.decide();
    assert!(
        !o.decisions.iter().any(|d| d.zone == "b"),
        "{:?}",
        o.decisions
    );
    waits_for(&o, "b", "its reclaim");
    // ...and b does it at once, dead holder, no hold-down.
    let mut w = World::new("b", &["a", "b", "c"]);
    w.terminated("c").held_by("b", "c");
    w.f.me.healthy_for = Duration::ZERO;
    let o = w.decide();
    assert!(
        summary(&o).contains(&("b".into(), "reclaim", "via eni-c".into())),
        "{o:?}"
    );
}

#[test]
fn own_zone_dead_routes_come_back_at_once() {
    let cases: &[(&str, Target, bool, &str)] = &[
        ("blackhole", Target::Eni(eni("a")), true, "blackhole"),
        (
            "blackhole via a dead peer",
            Target::Eni(eni("b")),
            true,
            "blackhole",
        ),
        (
            "a non-ENI blackhole",
            Target::Other("i-0dead".into()),
            true,
            "blackhole",
        ),
    ];
    for (name, target, blackhole, expect) in cases {
        let mut w = World::new("a", &["a", "b"]);
        w.route("a", target.clone(), *blackhole);
        w.f.me.healthy_for = Duration::ZERO;
        assert_eq!(
            summary(&w.decide()),
            takes("a", "reclaim", expect),
            "{name}"
        );
    }
    let mut w = World::new("a", &["a", "b"]);
    w.zone("a").tables[0].routes.clear();
    assert_eq!(summary(&w.decide()), takes("a", "reclaim", "missing"));
}

#[test]
fn own_zone_failback_waits_for_the_hold_down_and_respects_manual() {
    let mut w = World::new("a", &["a", "b"]);
    w.held_by("a", "b");
    w.f.me.healthy_for = Duration::from_secs(29);
    let o = w.decide();
    assert!(o.decisions.is_empty());
    waits_for(&o, "a", "failback after 30 s");
    w.f.me.healthy_for = Duration::from_secs(30);
    let o = w.decide();
    assert_eq!(summary(&o), takes("a", "failback", "via eni-b"));
    assert_eq!(o.decisions[0].from.as_deref(), Some("eni-b"));
    // Flapping doubles the hold-down per recent change.
    w.zone("a").recent_changes = 3;
    let o = w.decide();
    assert!(o.decisions.is_empty());
    waits_for(&o, "a", "failback after 120 s");
    // A gateway that was frozen counts from when it saw its zone go, not from its own start.
    w.zone("a").recent_changes = 1;
    w.zone("a").since_last_change = Some(Duration::from_secs(2));
    let o = w.decide();
    assert!(o.decisions.is_empty());
    waits_for(&o, "a", "(2 s so far");
    w.zone("a").since_last_change = Some(Duration::from_secs(31));
    assert_eq!(summary(&w.decide()), takes("a", "failback", "via eni-b"));
    w.zone("a").recent_changes = 0;
    w.zone("a").since_last_change = None;
    w.f.policy.failback = Failback::Manual;
    let o = w.decide();
    assert!(o.decisions.is_empty());
    waits_for(&o, "a", "failback = manual");
    // The operator's command waives manual and the hold-down, not the own health check.
    w.f.failback_now = true;
    w.f.me.healthy_for = Duration::ZERO;
    assert_eq!(summary(&w.decide()), takes("a", "failback", "via eni-b"));
    w.f.me.healthy = false;
    assert!(w.decide().decisions.is_empty());
    w.f.me.healthy = true;
    w.f.failback_now = false;
    // Manual failback still takes back a blackhole: nobody carries it.
    w.route("a", Target::Eni(eni("b")), true);
    assert_eq!(summary(&w.decide()), takes("a", "reclaim", "blackhole"));
}

#[test]
fn third_party_and_missing_peer_routes_are_left_alone() {
    let mut w = World::new("a", &["a", "b"]);
    w.route("a", Target::Other("igw-1".into()), false);
    w.route("b", Target::Eni("eni-operator".into()), false);
    w.terminated("b");
    assert_eq!(w.decide().decisions, vec![]);
    let mut w = World::new("a", &["a", "b"]);
    w.terminated("b");
    w.zone("b").tables[0].routes.clear();
    assert_eq!(w.decide().decisions, vec![]);
}

#[test]
fn a_zone_already_held_here_needs_nothing() {
    let mut w = World::new("a", &["a", "b"]);
    w.terminated("b").held_by("b", "a");
    assert_eq!(w.decide(), Outcome::default());
}

#[test]
fn flap_damping_delays_takeovers_without_api_evidence() {
    let mut w = World::new("a", &["a", "b"]);
    w.hung("b").lease_stale("b");
    w.zone("b").recent_changes = 2;
    w.zone("b").since_last_change = Some(Duration::from_secs(10));
    let o = w.decide();
    assert!(o.decisions.is_empty());
    waits_for(&o, "b", "flap damping");
    // Long enough ago: go.
    w.zone("b").since_last_change = Some(Duration::from_secs(61));
    assert_eq!(summary(&w.decide()), takes("b", "takeover", "via eni-b"));
    // The API says it is gone: a black hole is never damped.
    w.zone("b").since_last_change = Some(Duration::from_secs(1));
    w.peer("b").api_gone = Some("instance terminated".into());
    assert_eq!(summary(&w.decide()), takes("b", "takeover", "via eni-b"));
}

#[test]
fn damped_hold_down_doubles_and_caps() {
    let p = policy();
    let secs = |n| damped_hold_down(&p, n).as_secs();
    assert_eq!(
        [secs(0), secs(1), secs(2), secs(3), secs(5), secs(50)],
        [30, 30, 60, 120, 480, 600]
    );
}

#[test]
fn every_destination_of_every_table_is_written() {
    let mut w = World::new("a", &["a", "b"]);
    w.f.destinations = vec!["0.0.0.0/0".into(), "10.200.0.0/16".into()];
    let routes = |target: &str| {
        vec![
            RouteFact {
                destination: "0.0.0.0/0".into(),
                target: Target::Eni(eni(target)),
                blackhole: false,
            },
            RouteFact {
                destination: "10.200.0.0/16".into(),
                target: Target::Eni(eni(target)),
                blackhole: false,
            },
        ]
    };
    w.zone("b").tables = (0..50)
        .map(|i| TableFact {
            id: format!("rtb-b{i}"),
            routes: routes("b"),
        })
        .collect();
    // One table was already switched by an earlier, partial attempt.
    w.zone("b").tables[7].routes = routes("a");
    w.zone("a").tables[0].routes = routes("a");
    w.terminated("b");
    let o = w.decide();
    assert_eq!(o.decisions.len(), 1, "{o:?}");
    assert_eq!(o.decisions[0].writes.len(), 98);
}

#[test]
fn icmp_only_partition_moves_each_zone_once_per_hold_down() {
    // a and b cannot see each other; ICMP-only confirmation. First round: each takes the other.
    let mut a = World::new("a", &["a", "b"]);
    a.f.policy.confirm = Confirm::Icmp;
    a.hung("b");
    assert_eq!(summary(&a.decide()), takes("b", "takeover", "via eni-b"));
    // Meanwhile b took a's zone: a now sees its own zone held by "dead" b, changed just now.
    a.held_by("a", "b").held_by("b", "a");
    a.zone("a").recent_changes = 1;
    a.zone("a").since_last_change = Some(Duration::from_secs(1));
    let o = a.decide();
    assert!(o.decisions.is_empty(), "{o:?}");
    waits_for(&o, "a", "flap damping");
    // After the hold-down it may move once more; the next wait doubles.
    a.zone("a").since_last_change = Some(Duration::from_secs(31));
    assert_eq!(summary(&a.decide()), takes("a", "reclaim", "via eni-b"));
    a.zone("a").recent_changes = 2;
    waits_for(&a.decide(), "a", "after 60 s");
}

#[test]
fn optional_destinations_are_taken_over_but_never_created() {
    let conditional = |target: &str| RouteFact {
        destination: "10.1.0.0/16".into(),
        target: Target::Eni(eni(target)),
        blackhole: false,
    };
    let mut w = World::new("a", &["a", "b"]);
    w.f.optional = vec!["10.1.0.0/16".into()];
    // Nobody has the conditional route: nothing to do, in either zone.
    assert_eq!(w.decide(), Outcome::default());
    // b dies while its conditional route is active: a takes both routes.
    w.zone("b").tables[0].routes.push(conditional("b"));
    w.terminated("b");
    let o = w.decide();
    assert_eq!(o.decisions.len(), 1);
    let dests: Vec<&str> = o.decisions[0]
        .writes
        .iter()
        .map(|w| w.destination.as_str())
        .collect();
    assert_eq!(dests, ["0.0.0.0/0", "10.1.0.0/16"]);
}

#[test]
fn a_draining_gateway_hands_everything_over_and_takes_nothing() {
    // a drains: its own zone goes to its successor b, the zone it holds (c) back to c's owner.
    let mut w = World::new("a", &["a", "b", "c"]);
    w.held_by("c", "a");
    w.f.me.draining = true;
    // A dead peer's zone is not taken while leaving.
    w.route("b", Target::Eni(eni("b")), true);
    let o = w.decide();
    let mut got: Vec<(String, &str, String, Option<String>)> = o
        .decisions
        .iter()
        .map(|d| {
            (
                d.zone.clone(),
                d.kind.as_str(),
                d.target.clone(),
                d.target_instance.clone(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a".into(), "handover", "eni-b".into(), Some("i-b".into())),
            ("c".into(), "handover", "eni-c".into(), Some("i-c".into())),
        ]
    );
    assert!(
        o.decisions
            .iter()
            .all(|d| d.writes[0].expect == Expect::Eni("eni-a".into()))
    );
}

#[test]
fn a_leaving_gateway_with_no_healthy_peer_keeps_its_routes() {
    for draining in [true, false] {
        let mut w = World::new("a", &["a", "b"]);
        w.f.me.draining = draining;
        w.f.me.healthy = draining; // draining, or sick
        w.peer("b").report = Some(SelfReport {
            healthy: false,
            draining: false,
            at_risk: false,
        });
        let o = w.decide();
        assert!(o.decisions.is_empty(), "{o:?}");
        waits_for(&o, "a", "no healthy gateway to hand a");
    }
}

#[test]
fn a_sick_gateway_demotes_itself_to_its_successor() {
    let mut w = World::new("b", &["a", "b", "c"]);
    w.f.me.healthy = false;
    let o = w.decide();
    assert_eq!(o.decisions.len(), 1, "{o:?}");
    assert_eq!(o.decisions[0].kind, Kind::Handover);
    assert_eq!(o.decisions[0].target, "eni-c");
    assert!(o.decisions[0].evidence.contains("self-check failing"));
    // The successor skips a draining peer.
    w.peer("c").report = Some(SelfReport {
        healthy: true,
        draining: true,
        at_risk: false,
    });
    assert_eq!(w.decide().decisions[0].target, "eni-a");
}

#[test]
fn a_gateway_at_risk_is_the_last_choice_as_a_successor() {
    let mut w = World::new("b", &["a", "b", "c"]);
    w.f.me.healthy = false;
    w.peer("c").report = Some(SelfReport {
        healthy: true,
        draining: false,
        at_risk: true,
    });
    // c comes first in the ring, but a rebalance recommendation says it may go.
    assert_eq!(w.decide().decisions[0].target, "eni-a");
    // With nobody else eligible it still beats keeping routes on a sick gateway.
    w.peer("a").report = Some(SelfReport {
        healthy: false,
        draining: false,
        at_risk: false,
    });
    assert_eq!(w.decide().decisions[0].target, "eni-c");
}

#[test]
fn a_manual_failover_takes_what_another_gateway_holds_or_says_why_not() {
    // (case, world, zone, force, Ok(expectations of the writes) or Err(needle))
    type Case = (
        &'static str,
        World,
        &'static str,
        bool,
        Result<Vec<&'static str>, &'static str>,
    );
    let mut sick = World::new("a", &["a", "b"]);
    sick.f.me.healthy = false;
    let mut draining = World::new("a", &["a", "b"]);
    draining.f.me.draining = true;
    let mut dead = World::new("a", &["a", "b"]);
    dead.route("b", Target::Eni(eni("b")), true);
    let mut third = World::new("a", &["a", "b"]);
    third.route("b", Target::Other("nat-1".into()), false);
    let mut here = World::new("a", &["a", "b"]);
    here.held_by("b", "a");
    let cases: Vec<Case> = vec![
        (
            "a live peer's zone",
            World::new("a", &["a", "b"]),
            "b",
            false,
            Ok(vec!["via eni-b"]),
        ),
        ("a blackhole", dead, "b", false, Ok(vec!["blackhole"])),
        (
            "the own zone",
            World::new("a", &["a", "b"]),
            "a",
            false,
            Err("own zone"),
        ),
        ("while draining", draining, "b", false, Err("draining")),
        (
            "while sick",
            World { f: sick.f.clone() },
            "b",
            false,
            Err("--force"),
        ),
        ("while sick, forced", sick, "b", true, Ok(vec!["via eni-b"])),
        (
            "a third party's route",
            third,
            "b",
            false,
            Err("nothing to take"),
        ),
        ("already here", here, "b", false, Err("nothing to take")),
        (
            "an unknown zone",
            World::new("a", &["a", "b"]),
            "x",
            false,
            Err("nothing to take"),
        ),
    ];
    for (name, w, zone, force, want) in cases {
        match (manual(&w.f, zone, force), want) {
            (Ok(d), Ok(expects)) => {
                let got: Vec<String> = d.writes.iter().map(|w| w.expect.to_string()).collect();
                assert_eq!(got, expects, "{name}");
                assert_eq!(d.kind, Kind::TakeOver, "{name}");
                assert!(
                    d.writes.iter().all(|w| w.to.as_deref() == Some("eni-a")),
                    "{name}"
                );
            }
            (Err(e), Err(needle)) => assert!(e.contains(needle), "{name}: {e}"),
            (got, want) => panic!("{name}: got {got:?}, wanted {want:?}"),
        }
    }
}

#[test]
fn every_wait_has_a_kind_the_agent_can_match() {
    let mut w = World::new("a", &["a", "b"]);
    w.f.me.draining = true;
    w.peer("b").report = Some(SelfReport {
        healthy: false,
        draining: false,
        at_risk: false,
    });
    let o = w.decide();
    assert_eq!(o.waits.len(), 1, "{o:?}");
    assert_eq!(o.waits[0].kind, WaitKind::NoHandoverTarget);
    let mut w = World::new("a", &["a", "b"]);
    w.hung("b");
    assert_eq!(w.decide().waits[0].kind, WaitKind::Unconfirmed);
    w.lease_stale("b");
    assert!(w.decide().waits.is_empty());
    let mut w = World::new("a", &["a", "b"]);
    w.held_by("a", "b");
    w.f.me.healthy_for = Duration::from_secs(1);
    assert_eq!(w.decide().waits[0].kind, WaitKind::HoldDown);
}
