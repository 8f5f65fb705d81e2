//! The cycle end to end on the in-memory cloud, under tokio's paused clock: the probes are
//! played through the sensors' feeds, the cloud answers at once, and every assertion is on
//! what the cloud ends up holding and the calls it received.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, advance};

use super::{Own, PeerView, Watch};
use crate::cloud::RouteTarget;
use crate::cloud::fake::{DEFAULT_ROUTE, FakeCloud, Fault};
use crate::config::Config;
use crate::control::Command;
use crate::decide::failover::WaitKind;
use crate::decide::lease::{self, LEASE_TAG, Lease};
use crate::decide::route::Probe;
use crate::health::Report;

struct Rig {
    cloud: &'static FakeCloud,
    watch: Watch<'static, FakeCloud, FakeCloud>,
}

const HOLD_DOWN_S: u64 = 30;

fn config(extra: &str) -> Arc<Config> {
    let text = format!(
        "version = 1\n[group]\nname = \"lab\"\n[failover]\nhold_down_s = {HOLD_DOWN_S}\nlease_renew_ms = 1000\nlease_ttl_ms = 2500\n{extra}"
    );
    Arc::new(Config::parse(&text, Path::new("test.toml")).expect("test config"))
}

impl Rig {
    /// Zone a's gateway, the one under test, in a two-zone group whose peer (b) is up.
    async fn new(extra: &str) -> Self {
        Self::with(extra, |_| ()).await
    }

    /// As [`Rig::new`], with `before` done to the cloud before the first cycle.
    async fn with(extra: &str, before: impl FnOnce(&FakeCloud)) -> Self {
        let cloud: &'static FakeCloud = Box::leak(Box::new(FakeCloud::two_zones()));
        before(cloud);
        let own = Own {
            instance_id: cloud.instance_of("a"),
            zone: cloud.az_of("a"),
            eni: cloud.eni_of("a"),
            ip: Ipv4Addr::new(10, 0, 0, 50),
            vpc_id: cloud.vpc_id(),
        };
        let (watch, _events, _report) = Watch::new(config(extra), cloud, cloud, own, Some(1));
        let mut rig = Self {
            cloud,
            watch: watch.without_probes(),
        };
        // The first cycle discovers the peer and sees the zones as they are.
        rig.watch.cycle().await;
        if rig.watch.peer_feed(&cloud.az_of("b")).is_some() {
            rig.peer(Probe::Up, true);
        }
        rig.cloud.clear_calls();
        rig
    }

    fn table(&self, zone: &str) -> String {
        self.cloud.table_of(zone)
    }

    fn target(&self, zone: &str) -> Option<RouteTarget> {
        self.cloud.route_target(&self.table(zone), DEFAULT_ROUTE)
    }

    fn eni(&self, zone: &str) -> RouteTarget {
        RouteTarget::Eni(self.cloud.eni_of(zone))
    }

    /// Plays b's probes: ICMP state, and whether its `/health` answers healthy.
    fn peer(&self, icmp: Probe, healthy: bool) {
        let feed = self
            .watch
            .peer_feed(&self.cloud.az_of("b"))
            .expect("b discovered");
        let (instance, zone, eni) = (
            self.cloud.instance_of("b"),
            self.cloud.az_of("b"),
            self.cloud.eni_of("b"),
        );
        // What b's /health says it carries: the zones whose routes point at it.
        let carries: Vec<String> = ["a", "b"]
            .iter()
            .filter(|z| self.target(z) == Some(RouteTarget::Eni(eni.clone())))
            .map(|z| self.cloud.az_of(z))
            .collect();
        feed.send_modify(|p: &mut PeerView| {
            p.icmp = icmp;
            p.losing_since = (icmp == Probe::Down).then(Instant::now);
            p.report = (icmp == Probe::Up).then(|| {
                (
                    Report {
                        instance_id: instance,
                        zone,
                        eni,
                        healthy,
                        draining: false,
                        role: "active".into(),
                        carries,
                        version: "test".into(),
                        cannot_hear: Vec::new(),
                        at_risk: false,
                    },
                    Instant::now(),
                )
            });
        });
    }

    /// Runs cycles `every` apart for `total`, as the loop's ticker would.
    async fn run(&mut self, total: Duration, every: Duration) {
        let end = Instant::now() + total;
        while Instant::now() < end {
            let next = self.watch.cycle().await.unwrap_or(every).min(every);
            advance(next).await;
        }
    }

    /// Points `table`'s default route at `target` behind the agent's back, and has the next
    /// cycle read (a change at steady state is otherwise seen within a drift interval, which
    /// its own test covers).
    fn change(&mut self, table: &str, target: RouteTarget) {
        self.cloud.set_route_target(table, DEFAULT_ROUTE, target);
        self.watch.read_at = None;
    }

    fn writes(&self, zone: &str) -> usize {
        let t = self.table(zone);
        self.cloud.count("ReplaceRoute", &t) + self.cloud.count("CreateRoute", &t)
    }

    fn wait_kind(&self, zone: &str) -> Option<WaitKind> {
        self.watch
            .zones
            .get(&self.cloud.az_of(zone))
            .and_then(|z| z.wait.as_ref())
            .map(|(k, _)| *k)
    }

    fn lease(&self, zone: &str) -> Option<Lease> {
        self.cloud
            .tags_of(&self.table(zone))
            .get(LEASE_TAG)
            .and_then(|v| Lease::parse(v))
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_peer_is_taken_over_once_with_a_newer_epoch() {
    let mut r = Rig::new("").await;
    r.cloud.kill(&r.cloud.instance_of("b"));
    r.peer(Probe::Down, false);
    r.watch.cycle().await;
    assert_eq!(r.target("b"), Some(r.eni("a")));
    assert_eq!(r.writes("b"), 1, "{:?}", r.cloud.calls());
    let lease = r.lease("b").expect("lease written with the takeover");
    assert_eq!(lease.holder, r.cloud.instance_of("a"));
    // Later cycles keep it without writing again.
    r.run(Duration::from_secs(5), Duration::from_secs(1)).await;
    assert_eq!(r.writes("b"), 1);
    assert_eq!(r.watch.carried().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_whose_lease_moves_is_a_partition_not_a_death() {
    let mut r = Rig::new("").await;
    r.peer(Probe::Down, false);
    let table_b = r.table("b");
    let holder = r.cloud.instance_of("b");
    for i in 0..20u64 {
        // b keeps renewing its lease: it is alive behind the partition.
        r.cloud
            .set_tag(&table_b, LEASE_TAG, &format!("{holder}/1/{i}"));
        r.watch.cycle().await;
        advance(Duration::from_millis(500)).await;
    }
    assert_eq!(r.writes("b"), 0);
    assert_eq!(r.target("b"), Some(r.eni("b")));
    assert_eq!(r.wait_kind("b"), Some(WaitKind::Unconfirmed));
}

#[tokio::test(start_paused = true)]
async fn a_hung_peer_is_taken_over_after_its_lease_ttl() {
    let mut r = Rig::new("").await;
    // The instance runs (the API vouches for it), but its agent no longer renews.
    r.peer(Probe::Down, false);
    r.watch.cycle().await;
    assert_eq!(r.writes("b"), 0, "not before the lease's ttl");
    r.run(Duration::from_millis(2000), Duration::from_millis(500))
        .await;
    assert_eq!(r.writes("b"), 0);
    r.run(Duration::from_millis(1000), Duration::from_millis(500))
        .await;
    assert_eq!(r.target("b"), Some(r.eni("a")));
    assert_eq!(r.writes("b"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_own_zone_comes_back_after_the_hold_down_and_not_before() {
    let mut r = Rig::new("").await;
    // b covered for a while a was away.
    let eni_b = r.cloud.eni_of("b");
    let table_a = r.table("a");
    r.change(&table_a, RouteTarget::Eni(eni_b));
    r.run(Duration::from_secs(HOLD_DOWN_S - 2), Duration::from_secs(1))
        .await;
    assert_eq!(r.writes("a"), 0);
    assert_eq!(r.wait_kind("a"), Some(WaitKind::HoldDown));
    r.run(Duration::from_secs(4), Duration::from_secs(1)).await;
    assert_eq!(r.target("a"), Some(r.eni("a")));
    assert_eq!(r.writes("a"), 1);
}

#[tokio::test(start_paused = true)]
async fn manual_failback_waits_for_the_operator() {
    let mut r = Rig::new("failback = \"manual\"\n").await;
    let eni_b = r.cloud.eni_of("b");
    let table_a = r.table("a");
    r.change(&table_a, RouteTarget::Eni(eni_b));
    r.run(Duration::from_secs(120), Duration::from_secs(1))
        .await;
    assert_eq!(r.writes("a"), 0);
    assert_eq!(r.wait_kind("a"), Some(WaitKind::ManualFailback));
    let answer = r.watch.command(Command::Failback { zone: None }).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(r.target("a"), Some(r.eni("a")));
    assert_eq!(r.writes("a"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_zone_that_keeps_changing_hands_waits_out_the_damped_hold_down() {
    let mut r = Rig::new("").await;
    let (eni_a, eni_b) = (r.cloud.eni_of("a"), r.cloud.eni_of("b"));
    let table_b = r.table("b");
    // b's zone moved twice just now (seen by this gateway, in reads that agree).
    for to in [&eni_a, &eni_b] {
        r.change(&table_b, RouteTarget::Eni(to.clone()));
        for _ in 0..3 {
            r.watch.cycle().await;
            advance(Duration::from_secs(1)).await;
        }
    }
    r.cloud.clear_calls();
    // Now b falls silent with only its lease to confirm it: a move the API does not vouch for.
    r.peer(Probe::Down, false);
    r.run(Duration::from_secs(10), Duration::from_secs(1)).await;
    assert_eq!(r.writes("b"), 0);
    assert_eq!(r.wait_kind("b"), Some(WaitKind::Damping));
    // Two recent changes double the hold-down: 60 s from the last one.
    r.run(Duration::from_secs(2 * HOLD_DOWN_S), Duration::from_secs(1))
        .await;
    assert_eq!(r.target("b"), Some(RouteTarget::Eni(eni_a)));
    assert_eq!(r.writes("b"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_takeover_write_is_retried_soon_and_lands_once() {
    let mut r = Rig::new("").await;
    r.cloud.kill(&r.cloud.instance_of("b"));
    r.peer(Probe::Down, false);
    r.cloud.fail_next("ReplaceRoute", 1, Fault::Throttle);
    let soon = r.watch.cycle().await;
    assert_eq!(
        r.target("b"),
        Some(r.eni("b")),
        "the throttled write changed nothing"
    );
    let soon = soon.expect("a failed write asks for the next cycle soon");
    assert!(soon < Duration::from_secs(1), "{soon:?}");
    advance(soon).await;
    assert_eq!(r.watch.cycle().await, None);
    assert_eq!(r.target("b"), Some(r.eni("a")));
    assert_eq!(r.cloud.count("ReplaceRoute", &r.table("b")), 2);
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_api_changes_nothing_and_backs_off() {
    let mut r = Rig::new("").await;
    r.cloud.kill(&r.cloud.instance_of("b"));
    r.peer(Probe::Down, false);
    r.cloud.partition("DescribeRouteTables");
    let mut pauses = Vec::new();
    for _ in 0..5 {
        let next = r.watch.cycle().await.expect("backoff");
        pauses.push(next);
        advance(next).await;
    }
    assert_eq!(r.writes("b"), 0);
    assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
    r.cloud.heal("DescribeRouteTables");
    r.watch.cycle().await;
    assert_eq!(r.target("b"), Some(r.eni("a")));
}

#[tokio::test(start_paused = true)]
async fn a_draining_gateway_hands_its_zone_to_a_healthy_peer() {
    let mut r = Rig::new("").await;
    r.watch.set_draining(true);
    r.watch.cycle().await;
    assert_eq!(r.target("a"), Some(r.eni("b")));
    assert!(r.watch.carried().is_empty());
    assert_eq!(
        r.lease("a").map(|l| l.holder),
        Some(r.cloud.instance_of("b"))
    );
}

/// Issue 17: a peer's /health names the instance it likes; the hand-over's lease names the
/// instance EC2 shows on the peer's ENI, or the ENI, never the claim.
#[tokio::test(start_paused = true)]
async fn a_hand_over_names_the_instance_ec2_shows_not_the_one_health_claims() {
    for (claimed, want_instance) in [("i-0someoneelse", false), ("", false), ("own", true)] {
        let mut r = Rig::new("").await;
        let b = r.cloud.instance_of("b");
        let feed = r
            .watch
            .peer_feed(&r.cloud.az_of("b"))
            .expect("b discovered");
        let claimed = if claimed == "own" {
            b.clone()
        } else {
            claimed.to_owned()
        };
        feed.send_modify(|p: &mut PeerView| {
            if let Some((report, _)) = &mut p.report {
                report.instance_id = claimed.clone();
            }
        });
        r.watch.set_draining(true);
        r.watch.cycle().await;
        assert_eq!(r.target("a"), Some(r.eni("b")), "{claimed:?}");
        let want = if want_instance {
            b
        } else {
            r.cloud.eni_of("b")
        };
        assert_eq!(r.lease("a").map(|l| l.holder), Some(want), "{claimed:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_draining_gateway_with_no_healthy_peer_keeps_its_routes_and_says_why() {
    let mut r = Rig::new("").await;
    r.peer(Probe::Up, false);
    r.watch.set_draining(true);
    r.watch.cycle().await;
    assert_eq!(r.target("a"), Some(r.eni("a")));
    assert_eq!(r.watch.stuck().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_manual_failover_takes_a_live_peers_zone_and_refuses_its_own() {
    let mut r = Rig::new("").await;
    let own = r.cloud.az_of("a");
    let refused = r
        .watch
        .command(Command::Failover {
            zone: own,
            force: false,
        })
        .await;
    assert!(refused.is_err());
    let taken = r
        .watch
        .command(Command::Failover {
            zone: r.cloud.az_of("b"),
            force: false,
        })
        .await;
    assert!(taken.is_ok(), "{taken:?}");
    assert_eq!(r.target("b"), Some(r.eni("a")));
}

#[tokio::test(start_paused = true)]
async fn steady_state_writes_nothing_and_reads_once_per_drift_interval() {
    let mut r = Rig::new("").await;
    r.run(Duration::from_secs(600), Duration::from_secs(1))
        .await;
    assert_eq!(r.writes("a") + r.writes("b"), 0);
    assert_eq!(r.target("a"), Some(r.eni("a")));
    assert_eq!(r.target("b"), Some(r.eni("b")));
    assert_eq!(
        r.cloud.count("CreateTags", ""),
        0,
        "no lease renewal without a reason"
    );
    // Ten minutes at one read per 30 s, and nothing else.
    let reads = r.cloud.count("DescribeRouteTables", "");
    assert!((19..=21).contains(&reads), "{reads} reads");
    assert_eq!(r.cloud.calls().len(), reads, "{:?}", r.cloud.calls());
}

#[tokio::test(start_paused = true)]
async fn a_foreign_change_at_steady_state_is_repaired_within_one_drift_interval() {
    let mut r = Rig::new("").await;
    r.run(Duration::from_secs(5), Duration::from_secs(1)).await;
    let table_a = r.table("a");
    r.cloud.remove_route(&table_a, DEFAULT_ROUTE);
    r.run(Duration::from_secs(20), Duration::from_secs(1)).await;
    assert_eq!(r.target("a"), None, "not read yet");
    r.run(Duration::from_secs(11), Duration::from_secs(1)).await;
    assert_eq!(r.target("a"), Some(r.eni("a")));
}

/// Renewals of a's own lease while cycles run for `run`.
async fn renewals_while(r: &mut Rig, run: Duration) -> usize {
    r.cloud.clear_calls();
    r.run(run, Duration::from_secs(1)).await;
    r.cloud.count("CreateTags", &r.table("a"))
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_only_for_a_reason() {
    let mut r = Rig::new("").await;
    assert_eq!(renewals_while(&mut r, Duration::from_secs(5)).await, 0);
    // A peer silent to this gateway.
    r.peer(Probe::Down, false);
    let table_b = r.table("b");
    let holder = r.cloud.instance_of("b");
    r.cloud
        .set_tag(&table_b, LEASE_TAG, &format!("{holder}/1/0"));
    assert!(renewals_while(&mut r, Duration::from_secs(2)).await >= 2);
    r.peer(Probe::Up, true);
    r.run(Duration::from_secs(1), Duration::from_secs(1)).await;
    assert_eq!(renewals_while(&mut r, Duration::from_secs(5)).await, 0);
    // A peer that says it cannot hear this gateway.
    let own = r.cloud.az_of("a");
    r.watch
        .peer_feed(&r.cloud.az_of("b"))
        .unwrap()
        .send_modify(|p| {
            if let Some((report, at)) = &mut p.report {
                report.cannot_hear = vec![own.clone()];
                *at = Instant::now();
            }
        });
    assert!(renewals_while(&mut r, Duration::from_secs(1)).await >= 1);
    r.peer(Probe::Up, true);
    assert_eq!(renewals_while(&mut r, Duration::from_secs(3)).await, 0);
    // A zone that changed hands just now: a took b's zone.
    r.cloud.kill(&r.cloud.instance_of("b"));
    r.peer(Probe::Down, false);
    r.watch.cycle().await;
    assert_eq!(r.target("b"), Some(r.eni("a")));
    r.peer(Probe::Up, false);
    let during = renewals_while(&mut r, Duration::from_secs(12)).await;
    assert!((8..=11).contains(&during), "{during} renewals");
    assert_eq!(
        renewals_while(&mut r, Duration::from_secs(20)).await,
        0,
        "quiet once the change is no longer recent"
    );
}

#[tokio::test(start_paused = true)]
async fn a_suspected_peers_lease_is_judged_from_the_suspicion_not_from_the_quiet_before() {
    let mut r = Rig::new("").await;
    // Nobody renewed for ten minutes: steady state.
    r.run(Duration::from_secs(600), Duration::from_secs(1))
        .await;
    // b falls silent; its agent still runs and renews now that it has a reason.
    r.peer(Probe::Down, false);
    let table_b = r.table("b");
    let holder = r.cloud.instance_of("b");
    for i in 0..10u64 {
        r.cloud
            .set_tag(&table_b, LEASE_TAG, &format!("{holder}/1/{i}"));
        r.watch.cycle().await;
        advance(Duration::from_secs(1)).await;
    }
    assert_eq!(r.writes("b"), 0, "a renewing peer is not taken over");
}

#[tokio::test(start_paused = true)]
async fn a_renewal_hidden_by_read_lag_past_the_ttl_is_not_a_lapse() {
    let mut r = Rig::new("").await;
    r.peer(Probe::Down, false);
    r.watch.cycle().await;
    // EC2's reads lag: from here on they show the tables as they are now.
    r.cloud.freeze_reads(true);
    advance(Duration::from_millis(800)).await;
    // b, alive behind a partition, renews as soon as it suspects a in turn.
    let table_b = r.table("b");
    let holder = r.cloud.instance_of("b");
    r.cloud
        .set_tag(&table_b, LEASE_TAG, &format!("{holder}/1/1"));
    // Well past the ttl the reads still show the old lease: no takeover on that view.
    r.run(Duration::from_secs(4), Duration::from_millis(500))
        .await;
    assert_eq!(r.writes("b"), 0, "{:?}", r.cloud.calls());
    let witness = lease::witness_tag(&r.cloud.az_of("a"));
    assert!(
        r.cloud.tags_of(&table_b).contains_key(&witness),
        "a witness is written at the lease's end"
    );
    // The reads catch up: the witness and the renewal before it show together.
    r.cloud.freeze_reads(false);
    r.run(Duration::from_secs(1), Duration::from_millis(500))
        .await;
    assert_eq!(r.writes("b"), 0, "the renewal was there before the witness");
    assert_eq!(r.target("b"), Some(r.eni("b")));
}

#[tokio::test(start_paused = true)]
async fn a_hung_peer_behind_lagging_reads_is_taken_over_once_the_witness_shows() {
    let mut r = Rig::new("").await;
    r.peer(Probe::Down, false);
    r.watch.cycle().await;
    r.cloud.freeze_reads(true);
    r.run(Duration::from_secs(4), Duration::from_millis(500))
        .await;
    assert_eq!(r.writes("b"), 0, "not before a read shows the witness");
    r.cloud.freeze_reads(false);
    r.run(Duration::from_millis(300), Duration::from_millis(500))
        .await;
    assert_eq!(r.target("b"), Some(r.eni("a")));
    assert_eq!(r.writes("b"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_peer_report_that_disagrees_with_the_last_read_brings_a_read_at_once() {
    let mut r = Rig::new("").await;
    r.run(Duration::from_secs(5), Duration::from_secs(1)).await;
    // b took a's zone (a was frozen, say): the change itself is not read until the next drift
    // read, but b's /health now says it carries a's zone.
    let eni_b = r.cloud.eni_of("b");
    let table_a = r.table("a");
    r.cloud
        .set_route_target(&table_a, DEFAULT_ROUTE, RouteTarget::Eni(eni_b));
    r.peer(Probe::Up, true);
    r.cloud.clear_calls();
    r.watch.cycle().await;
    assert_eq!(r.cloud.count("DescribeRouteTables", ""), 1);
    assert_eq!(r.wait_kind("a"), Some(WaitKind::HoldDown));
}

#[tokio::test(start_paused = true)]
async fn enis_tagged_into_the_group_from_another_vpc_or_for_a_fake_zone_are_never_watched() {
    let mut other_vpc = String::new();
    let r = Rig::with("", |cloud| {
        other_vpc = cloud.add_tagged_eni("b", Some("vpc-elsewhere"));
        cloud.add_tagged_eni("us-east-1z", Some("vpc-elsewhere"));
    })
    .await;
    let watched: Vec<String> = r.watch.peer_views().into_iter().map(|p| p.eni).collect();
    assert_eq!(watched, [r.cloud.eni_of("b")], "only b's own ENI");
    assert!(!watched.contains(&other_vpc));
}

#[tokio::test(start_paused = true)]
async fn an_eni_held_by_an_instance_outside_the_groups_auto_scaling_groups_is_never_watched() {
    let mut rogues = Vec::new();
    let mut r = Rig::with("", |cloud| {
        // One beside b's real ENI, one alone for a zone nobody else claims.
        rogues.push(cloud.add_rogue_gateway("b", None));
        rogues.push(cloud.add_rogue_gateway("us-east-1c", None));
    })
    .await;
    // b's is trusted at once (its holder is in b's group), whatever the routes say yet.
    let watched: Vec<String> = r.watch.peer_views().into_iter().map(|p| p.eni).collect();
    assert_eq!(watched, [r.cloud.eni_of("b")]);
    r.run(Duration::from_secs(65), Duration::from_secs(1)).await;
    let watched: Vec<String> = r.watch.peer_views().into_iter().map(|p| p.eni).collect();
    assert_eq!(watched, [r.cloud.eni_of("b")]);
    for rogue in &rogues {
        assert!(!watched.contains(rogue), "{rogue} is watched");
    }
    // Judged once: no membership calls after the first discovery.
    assert_eq!(r.cloud.count("DescribeAutoScalingGroups", ""), 0);
    assert_eq!(r.writes("a") + r.writes("b"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_second_eni_for_a_zone_is_trusted_only_if_the_routes_point_at_it() {
    let mut rogue = String::new();
    let mut r = Rig::with("", |cloud| rogue = cloud.add_tagged_eni("b", None)).await;
    // Before any read nothing says which is b's: neither is watched, nothing is handed to it.
    assert!(
        r.watch.peer_views().is_empty(),
        "{:?}",
        r.watch.peer_views().len()
    );
    // After a read, the one b's routes point at is; the rogue never is.
    r.run(Duration::from_secs(65), Duration::from_secs(1)).await;
    let watched: Vec<String> = r.watch.peer_views().into_iter().map(|p| p.eni).collect();
    assert_eq!(watched, [r.cloud.eni_of("b")]);
    assert!(!watched.contains(&rogue));
    assert_eq!(r.writes("a") + r.writes("b"), 0);
}

#[tokio::test(start_paused = true)]
async fn reads_behind_a_confirmed_takeover_write_bring_no_second_write() {
    let mut r = Rig::new("").await;
    let before = r.cloud.tables_now();
    r.cloud.kill(&r.cloud.instance_of("b"));
    r.peer(Probe::Down, false);
    r.watch.cycle().await;
    assert_eq!(r.target("b"), Some(r.eni("a")));
    assert_eq!(r.writes("b"), 1);
    // The next reads answer from before the takeover's write, as EC2's may for a while: b's
    // zone on b's dead ENI again.
    r.cloud.replay_reads(before, 8);
    r.run(Duration::from_secs(2), Duration::from_millis(250))
        .await;
    assert_eq!(
        r.writes("b"),
        1,
        "a read behind the write is not a reason to write again"
    );
    assert_eq!(r.target("b"), Some(r.eni("a")));
}

#[tokio::test(start_paused = true)]
async fn a_draining_report_of_the_previous_holder_is_no_evidence_against_its_replacement() {
    let mut r = Rig::new("").await;
    // b's old instance said it was draining; then it went silent (terminated).
    r.peer(Probe::Up, true);
    let feed = r.watch.peer_feed(&r.cloud.az_of("b")).unwrap();
    feed.send_modify(|p| {
        if let Some((report, at)) = &mut p.report {
            report.draining = true;
            *at = Instant::now();
        }
        p.icmp = Probe::Down;
        p.losing_since = Some(Instant::now());
    });
    // Meanwhile its replacement claimed the ENI and took b's routes back: the lease names it.
    let table_b = r.table("b");
    r.cloud
        .set_tag(&table_b, LEASE_TAG, &format!("i-0replacement0000/9/{}", 1));
    r.run(Duration::from_secs(2), Duration::from_millis(500))
        .await;
    assert_eq!(
        r.writes("b"),
        0,
        "the old holder's draining report moved the zone"
    );
    assert_eq!(r.target("b"), Some(r.eni("b")));
}

/// The agent's own budget in the loop: a drift read the budget defers is no failure (no
/// backoff, no fast cadence), and once a peer falls silent the reads go as confirmations,
/// from the part of the bucket the drift reads had to leave.
#[tokio::test(start_paused = true)]
async fn a_drift_read_the_budget_defers_is_no_failure_and_trouble_reads_still_go() {
    use crate::cloud::{Budget, Budgeted, Ec2, Priority, spend_as};
    let cloud: &'static FakeCloud = Box::leak(Box::new(FakeCloud::two_zones()));
    let ec2: &'static Budgeted<FakeCloud> =
        Box::leak(Box::new(Budgeted::new(cloud.clone(), Budget::new(0.25))));
    let own = Own {
        instance_id: cloud.instance_of("a"),
        zone: cloud.az_of("a"),
        eni: cloud.eni_of("a"),
        ip: Ipv4Addr::new(10, 0, 0, 50),
        vpc_id: cloud.vpc_id(),
    };
    let (watch, _events, _report) = Watch::new(config(""), ec2, cloud, own, Some(1));
    let mut watch = watch.without_probes();
    watch.cycle().await;
    let feed = watch.peer_feed(&cloud.az_of("b")).expect("b discovered");
    feed.send_modify(|p: &mut PeerView| p.icmp = Probe::Up);
    watch.cycle().await;
    // A drift read is due; other drift reads have spent the bucket down to their reserve.
    advance(Duration::from_secs(31)).await;
    let a = cloud.table_of("a");
    while spend_as(Priority::Drift, ec2.describe_route_tables(&[a.as_str()]))
        .await
        .is_ok()
    {}
    cloud.clear_calls();
    let reads = || {
        cloud
            .calls()
            .iter()
            .filter(|c| c.operation == "DescribeRouteTables")
            .count()
    };
    let next = watch.cycle().await;
    assert_eq!(reads(), 0, "the drift read was skipped");
    assert_eq!(watch.failures, 0, "a skipped drift read is no failure");
    assert!(next.is_none(), "no retry sooner than the tick: {next:?}");
    // b falls silent: the tables are read now, as a confirmation.
    feed.send_modify(|p: &mut PeerView| {
        p.icmp = Probe::Down;
        p.losing_since = Some(Instant::now());
    });
    watch.cycle().await;
    assert!(reads() >= 1, "the read while in trouble went");
}

#[tokio::test(start_paused = true)]
async fn two_zones_taken_in_one_cycle_are_written_before_either_waits_for_its_confirmation() {
    let mut r = Rig::new("").await;
    // a's own route is gone and b died: a reclaim and a takeover in the same cycle...
    let table_a = r.table("a");
    r.cloud.remove_route(&table_a, DEFAULT_ROUTE);
    r.cloud.kill(&r.cloud.instance_of("b"));
    r.peer(Probe::Down, false);
    // ...under reads that lag, so neither write is confirmed at once.
    r.cloud.freeze_reads(true);
    r.watch.cycle().await;
    let calls = r.cloud.calls();
    let writes: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.operation, "ReplaceRoute" | "CreateRoute"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(writes.len(), 2, "{calls:?}");
    // The second zone's write does not wait out the first one's confirming reads (it goes
    // while the first waits for its first re-read, at most one read in between).
    let reads_between = calls[writes[0]..writes[1]]
        .iter()
        .filter(|c| c.operation == "DescribeRouteTables")
        .count();
    assert!(reads_between <= 1, "{calls:?}");
    r.cloud.freeze_reads(false);
    r.run(Duration::from_secs(2), Duration::from_millis(500))
        .await;
    assert_eq!(r.target("a"), Some(r.eni("a")));
    assert_eq!(r.target("b"), Some(r.eni("a")));
}
