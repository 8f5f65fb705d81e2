//! Peer failover in the lab (as root): real agents in every zone's instance, moto behind the
//! VPC, packets through the kernel. Each test kills, hangs or cuts off gateways and asserts what
//! a user sees: where the routes point, whether the client stream flows, how many writes.

mod support;

use support::*;

/// A gateway with its agent in each of zones `names`, every agent READY with `extra` in its config.
async fn started(names: &[&str], extra: &str) -> Fleet {
    let mut f = fleet(zones(names)).await;
    f.extra = extra.to_owned();
    f.start_all(names).await.unwrap();
    f
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_peer_is_taken_over_and_handed_back_when_replaced() {
    let mut f = started(&["a", "b"], "").await;
    sleep_s(2.0).await;
    let stream = f.lab.stream_start("b", 100).await.unwrap();
    sleep_s(1.0).await;
    let b = f.terminate("b").await.unwrap();
    f.wait_route("b", "a", secs(10)).await.unwrap();
    // The client's packets flow again, through a (b's namespace is gone).
    let before = f.lab.stream_report(stream).await.unwrap();
    sleep_s(1.0).await;
    let mid = f.lab.stream_report(stream).await.unwrap();
    assert!(
        mid.delivered >= before.delivered + 50,
        "the stream did not resume: {before:?} then {mid:?}\n{}",
        f.logs()
    );
    let log_a = f.log("a");
    assert!(log_a.contains("takeover complete"), "{log_a}");

    // The ASG replaces b; its agent boots, reclaims, and a lets go.
    f.start_replacement("b", &b, WAIT).await.unwrap();
    f.wait_route("b", "b", secs(5)).await.unwrap();
    let before = f.route_writes().await.unwrap();
    sleep_s(4.0).await;
    let after = f.lab.stream_stop(stream).await.unwrap();
    // Nobody fights over it afterwards.
    assert_eq!(f.route_writes().await.unwrap(), before, "{}", f.logs());
    f.wait_route("b", "b", secs(1)).await.unwrap();
    let log_a = f.log("a");
    assert!(log_a.contains("zone handed back"), "{log_a}");
    // Packets delivered through b again at the end of the stream.
    assert!(after.delivered > mid.delivered, "{after:?}");
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn hung_peer_is_taken_only_after_its_lease_lapses_and_fails_back_after_the_hold_down() {
    let f = started(&["a", "b"], "[failover]\nhold_down_s = 4").await;
    sleep_s(2.0).await;
    let b = f.instance_id("b");
    f.lab.hang(&b).await.unwrap();
    f.wait_route("b", "a", secs(10)).await.unwrap();
    let log_a = f.log("a");
    // The API still says b runs: only the lapsed lease confirmed it.
    assert!(log_a.contains("lease not renewed"), "{log_a}");
    assert!(!log_a.contains("shutting-down"), "{log_a}");

    // b comes back without a reboot: it takes its zone back after the hold-down, once.
    let writes = f.route_writes().await.unwrap();
    f.lab.unhang(&b).await.unwrap();
    sleep_s(2.0).await;
    f.wait_route("b", "a", secs(1)).await.unwrap();
    f.wait_route("b", "b", secs(10)).await.unwrap();
    sleep_s(3.0).await;
    f.wait_route("b", "b", secs(1)).await.unwrap();
    assert_eq!(f.route_writes().await.unwrap(), writes + 1, "{}", f.logs());
    let log_b = f.log("b");
    assert!(log_b.contains("failback complete"), "{log_b}");
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_agent_on_a_forwarding_gateway_is_not_taken_over() {
    let mut f = started(&["a", "b"], "").await;
    sleep_s(2.0).await;
    let stream = f.lab.stream_start("b", 100).await.unwrap();
    let writes = f.route_writes().await.unwrap();
    f.kill_agent("b").await;
    // Well past ICMP fall and the lease ttl: b's lease is stale, but its kernel forwards.
    sleep_s(6.0).await;
    let report = f.lab.stream_stop(stream).await.unwrap();
    assert_eq!(f.route_writes().await.unwrap(), writes, "{}", f.logs());
    f.wait_route("b", "b", secs(1)).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}");
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_between_healthy_gateways_moves_nothing() {
    let f = started(&["a", "b"], "").await;
    sleep_s(2.0).await;
    let writes = f.route_writes().await.unwrap();
    let (ip_a, ip_b) = (f.zone("a").eni_ip.clone(), f.zone("b").eni_ip.clone());
    f.lab.partition(&ip_a, &ip_b).await.unwrap();
    sleep_s(8.0).await;
    let log_a = f.log("a");
    assert!(
        log_a.contains("peer down by ICMP"),
        "the partition did not bite:\n{log_a}"
    );
    assert!(log_a.contains("a partition, not a death"), "{log_a}");
    assert_eq!(f.route_writes().await.unwrap(), writes, "{}", f.logs());
    f.lab.heal(&ip_a, &ip_b).await.unwrap();
    sleep_s(2.0).await;
    assert_eq!(f.route_writes().await.unwrap(), writes, "{}", f.logs());
    f.wait_route("a", "a", secs(1)).await.unwrap();
    f.wait_route("b", "b", secs(1)).await.unwrap();
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn three_zones_exactly_the_successor_takes_over_then_the_third_takes_both() {
    let f = started(&["a", "b", "c"], "").await;
    sleep_s(2.0).await;
    let writes = f.route_writes().await.unwrap();
    let c = f.instance_id("c");
    f.lab.terminate(&c).await.unwrap();
    // Ring a → b → c → a: c's successor is a.
    f.wait_route("c", "a", secs(10)).await.unwrap();
    sleep_s(3.0).await;
    assert_eq!(
        f.route_writes().await.unwrap(),
        writes + 1,
        "one writer, one write\n{}",
        f.logs()
    );
    assert!(!f.log("b").contains("takeover complete"));

    let a = f.instance_id("a");
    f.lab.terminate(&a).await.unwrap();
    f.wait_route("a", "b", secs(10)).await.unwrap();
    f.wait_route("c", "b", secs(10)).await.unwrap();
    sleep_s(3.0).await;
    assert_eq!(f.route_writes().await.unwrap(), writes + 3, "{}", f.logs());
    f.show_logs();
}

/// Two gateways with `failback = "manual"`: b hung until a took its zone, then b back (its
/// zone stays with a until the operator hands it back).
async fn held_by_a_after_a_hang() -> Fleet {
    let f = started(
        &["a", "b"],
        "[failover]\nfailback = \"manual\"\nhold_down_s = 1\ndamping_max_s = 1",
    )
    .await;
    sleep_s(2.0).await;
    let b = f.instance_id("b");
    f.lab.hang(&b).await.unwrap();
    f.wait_route("b", "a", secs(10)).await.unwrap();
    f.lab.unhang(&b).await.unwrap();
    f
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_failback_waits_for_the_operator() {
    let f = held_by_a_after_a_hang().await;
    // Well past the hold-down: b stays with a.
    sleep_s(4.0).await;
    f.wait_route("b", "a", secs(1)).await.unwrap();
    assert!(f.log("b").contains("failback = manual"), "{}", f.logs());
    // The wrong zone is refused (exit 6: the agent refused); the right command brings it back
    // at once.
    let (code, _, err) = f
        .cli("agent-b", &["failback", "--zone", "us-east-1a"])
        .unwrap();
    assert_eq!(code, 6);
    assert!(err.contains("not this gateway's zone"));
    let (code, out, err) = f.cli("agent-b", &["failback"]).unwrap();
    let text = format!("{out}{err}");
    assert_eq!(code, 0, "{text}\n{}", f.logs());
    assert!(text.contains("carried by"), "{text}");
    f.wait_route("b", "b", secs(1)).await.unwrap();
    f.show_logs();
}

/// The route for `dest` in `zone`'s table: its ENI, or `None` when there is none.
async fn route_via(f: &Fleet, zone: &str, dest: &str) -> Option<String> {
    f.table(zone)
        .await
        .unwrap()
        .remove(dest)
        .map(|(eni, _)| eni)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conditional_route_exists_only_while_its_target_is_silent() {
    const DEST: &str = "10.200.0.0/16";
    let f = started(
        &["a", "b"],
        &format!("[[conditional]]\nname = \"dx\"\nprobe = \"{INTERNET_HOST}\"\ndestinations = [\"{DEST}\"]"),
    )
    .await;
    sleep_s(2.0).await;
    assert_eq!(route_via(&f, "a", DEST).await, None);
    // a's path to the target breaks (b's does not): a routes DEST via itself.
    let ip_a = f.zone("a").eni_ip.clone();
    f.lab.partition(&ip_a, INTERNET_HOST).await.unwrap();
    let eni_a = f.zone("a").eni_id.clone();
    let added = wait_for(secs(5), "conditional route added", || async {
        (route_via(&f, "a", DEST).await.as_deref() == Some(eni_a.as_str())).then_some(())
    })
    .await;
    assert!(added.is_ok(), "{}", f.logs());
    assert_eq!(route_via(&f, "b", DEST).await, None, "b's target answers");
    // The target answers again: the route goes.
    f.lab.heal(&ip_a, INTERNET_HOST).await.unwrap();
    let removed = wait_for(secs(5), "conditional route removed", || async {
        route_via(&f, "a", DEST).await.is_none().then_some(())
    })
    .await;
    assert!(removed.is_ok(), "{}", f.logs());
    // The zone's default route never moved.
    f.wait_route("a", "a", secs(1)).await.unwrap();
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_rides_out_throttling_and_5xx() {
    let f = started(&["a", "b"], "").await;
    sleep_s(2.0).await;
    // More failures than the SDK's own attempts: the agent's loop must come back for them.
    f.lab
        .inject(&Fault::burst("throttle", Some("ReplaceRoute"), Some(6)))
        .await
        .unwrap();
    f.lab
        .inject(&Fault::burst("5xx", Some("DescribeRouteTables"), Some(2)))
        .await
        .unwrap();
    let b = f.instance_id("b");
    f.lab.terminate(&b).await.unwrap();
    f.wait_route("b", "a", secs(20)).await.unwrap();
    // The confirming read may itself wait out the SDK's rate limiter after the throttling.
    let confirmed = wait_for(secs(10), "takeover complete", || async {
        f.log("a").contains("takeover complete").then_some(())
    })
    .await;
    let log_a = f.log("a");
    assert!(confirmed.is_ok(), "{log_a}");
    assert!(log_a.contains("RequestLimitExceeded"), "{log_a}");
    f.show_logs();
}

/// The ASG's replacement appears only after its launch delay and its agent starts by itself,
/// as systemd starts it from the AMI (labd's boot spec, not the test): it boots, claims the
/// zone's ENI, takes its routes back from the peer and tells systemd READY=1.
#[tokio::test(flavor = "multi_thread")]
async fn replacement_agent_starts_with_its_instance() {
    let mut f = fleet_with_env(
        &[
            ("GATEWAY_LAB_AWS_LAUNCH_S", "3"),
            ("GATEWAY_LAB_AWS_BOOT_S", "1"),
        ],
        ScenarioOptions::default(),
    )
    .await;
    f.extra = "[failover]\nhold_down_s = 3".into();
    f.start_all(&["a", "b"]).await.unwrap();
    let b = f.gateway("b").inst.clone();

    // What the AMI's systemd unit would run in every new instance.
    let dir = &f.lab.info.run_dir;
    let mut env: std::collections::BTreeMap<String, String> = Lab::instance_env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    env.insert("RUST_LOG".into(), "info".into());
    let config = format!(
        "version = 1\n[group]\nname = \"{}\"\n[failover]\nhold_down_s = 3\n[control]\nsocket = \"{dir}/{{instance_id}}.sock\"\n",
        f.sc.group
    );
    f.lab
        .set_boot(&gateway_lab::BootSpec {
            argv: vec![
                AGENT.into(),
                "run".into(),
                "--config".into(),
                format!("{dir}/{{instance_id}}.toml"),
            ],
            env,
            files: [(format!("{dir}/{{instance_id}}.toml"), config)].into(),
        })
        .await
        .unwrap();

    let t0 = std::time::Instant::now();
    f.lab.terminate_in_group(&b.instance_id).await.unwrap();
    let (eni_a, eni_b) = (f.eni("a"), f.eni("b"));
    let via = |want: String| {
        let f = &f;
        async move {
            let routes = f
                .lab
                .kernel_routes(&f.zone("b").route_table_id)
                .await
                .ok()?;
            routes
                .iter()
                .any(|r| r.destination == "0.0.0.0/0" && r.eni.as_deref() == Some(want.as_str()))
                .then_some(())
        }
    };
    wait_for(WAIT, "b carried by a", || via(eni_a.clone()))
        .await
        .unwrap_or_else(|_| panic!("a did not take b over:\n{}", f.log("a")));
    let new_b = f.replacement("b", &b.instance_id, wait()).await.unwrap();
    let appeared = t0.elapsed().as_secs_f64();
    let boot = wait_for(WAIT, "READY=1 from the booted agent", || async {
        f.lab
            .boot_info(&new_b.instance_id)
            .await
            .ok()
            .filter(|info| {
                info.notify
                    .iter()
                    .any(|m| m.lines().any(|l| l == "READY=1"))
            })
    })
    .await
    .unwrap_or_else(|_| panic!("no READY from the replacement's agent"));
    wait_for(WAIT, "b back on its own ENI", || via(eni_b.clone()))
        .await
        .unwrap_or_else(|_| {
            let log = std::fs::read_to_string(&boot.log).unwrap_or_default();
            panic!("b not handed back:\n{log}\n--- a ---\n{}", f.log("a"))
        });
    println!(
        "replacement appeared {appeared:.1} s after the termination (LAUNCH_S 3); its agent, \
         started by labd, READY and zone b back on its ENI {:.1} s after",
        t0.elapsed().as_secs_f64()
    );
    assert!(appeared >= 3.0, "{appeared}");
}

/// Runs `argv` in the instance's namespace.
fn in_ns(ns: &str, argv: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn lease_of(f: &Fleet, zone: &str) -> Option<String> {
    f.lease(zone).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn at_steady_state_no_lease_is_renewed_and_the_tables_are_read_per_drift_interval() {
    let f = started(&["a", "b"], "[failover]\ndrift_interval_s = 5").await;
    sleep_s(12.0).await;
    let leases = (lease_of(&f, "a").await, lease_of(&f, "b").await);
    let calls = f.lab.api_calls().await.unwrap().len();
    sleep_s(10.0).await;
    let after: Vec<String> = f.lab.api_calls().await.unwrap().split_off(calls);
    assert_eq!(
        (lease_of(&f, "a").await, lease_of(&f, "b").await),
        leases,
        "a lease moved at steady state\n{}",
        f.logs()
    );
    assert!(
        after.iter().all(|a| a == "DescribeRouteTables"),
        "{after:?}"
    );
    // Two gateways, one read each per 5-6 s (the next 1 s tick past the interval), for 10 s.
    assert!((2..=6).contains(&after.len()), "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_peer_makes_both_sides_renew_and_a_partition_still_moves_nothing() {
    let f = started(&["a", "b"], "").await;
    sleep_s(3.0).await;
    let writes = f.route_writes().await.unwrap();
    let before = lease_of(&f, "b").await;
    let (ip_a, ip_b) = (f.zone("a").eni_ip.clone(), f.zone("b").eni_ip.clone());
    f.lab.partition(&ip_a, &ip_b).await.unwrap();
    sleep_s(6.0).await;
    let during = lease_of(&f, "b").await;
    assert_ne!(
        during,
        before,
        "b did not renew while a was silent to it\n{}",
        f.logs()
    );
    assert!(
        f.log("b").contains("silent to this gateway"),
        "{}",
        f.log("b")
    );
    assert_eq!(f.route_writes().await.unwrap(), writes, "{}", f.logs());
    f.lab.heal(&ip_a, &ip_b).await.unwrap();
    // Once the peers hear each other again (and the recent-change window is long past),
    // renewals stop.
    sleep_s(5.0).await;
    let settled = lease_of(&f, "b").await;
    sleep_s(4.0).await;
    assert_eq!(lease_of(&f, "b").await, settled, "{}", f.logs());
    assert_eq!(f.route_writes().await.unwrap(), writes, "{}", f.logs());
}

/// The third reason to renew: a zone that changed hands moments ago. With every gateway
/// hearing every other, the operator hands b its zone back; b renews that zone's lease while
/// the change is recent (the move's followers come soon: the old holder letting go, a peer's
/// confirming read), then leaves it alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_zone_that_just_changed_hands_is_renewed_then_left_alone() {
    let f = held_by_a_after_a_hang().await;
    // Past the takeover's recent-change window and b's silence: no reason left to renew.
    sleep_s(13.0).await;
    let quiet = lease_of(&f, "b").await;
    sleep_s(3.0).await;
    assert_eq!(
        lease_of(&f, "b").await,
        quiet,
        "renewed without a reason\n{}",
        f.logs()
    );
    let (code, out, err) = f.cli("agent-b", &["failback"]).unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", f.logs());
    f.wait_route("b", "b", secs(2)).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        seen.insert(lease_of(&f, "b").await);
        sleep_s(0.5).await;
    }
    // The claim and at least two renewals (one a second) in those 6 s.
    assert!(seen.len() >= 3, "{seen:?}\n{}", f.logs());
    assert!(
        f.log("b").contains("changed hands just now"),
        "{}",
        f.log("b")
    );
    // The change is no longer recent: the renewals stop.
    sleep_s(8.0).await;
    let settled = lease_of(&f, "b").await;
    sleep_s(3.0).await;
    assert_eq!(lease_of(&f, "b").await, settled, "{}", f.logs());
}

/// A one-way failure: b stops answering echo requests (its kernel ignores them), so a cannot
/// hear b while b hears a (and reads a's /health). b learns from a's /health that a cannot hear
/// it, renews its lease, and keeps its zone: a never takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_cannot_hear_this_gateway_makes_it_renew_and_nothing_moves() {
    let f = started(&["a", "b"], "").await;
    sleep_s(3.0).await;
    let writes = f.route_writes().await.unwrap();
    let before = lease_of(&f, "b").await;
    let ns = f.instance("b").await.unwrap().ns.expect("b's namespace");
    in_ns(&ns, &["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"]);
    sleep_s(8.0).await;
    assert!(
        f.log("a").contains("peer down by ICMP"),
        "b still answers\n{}",
        f.logs()
    );
    assert!(
        !f.log("b").contains("peer down by ICMP"),
        "b should still hear a\n{}",
        f.logs()
    );
    assert!(
        f.log("b").contains("peer says it cannot hear this gateway"),
        "{}",
        f.logs()
    );
    assert_ne!(
        lease_of(&f, "b").await,
        before,
        "b did not renew\n{}",
        f.logs()
    );
    assert_eq!(f.route_writes().await.unwrap(), writes, "{}", f.logs());
    f.wait_route("b", "b", secs(1)).await.unwrap();
    in_ns(&ns, &["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=0"]);
}

/// A hung peer (stopped, its traffic dropped) does not renew: it is taken over about
/// `lease_ttl_ms` after the other gateway began suspecting it, although nobody renewed
/// anything at steady state before.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_peer_is_taken_over_although_nobody_renewed_at_steady_state() {
    let f = started(&["a", "b"], "").await;
    sleep_s(8.0).await;
    let b = f.instance_id("b");
    f.lab.hang(&b).await.unwrap();
    let frozen = std::time::Instant::now();
    f.wait_route("b", "a", secs(10)).await.unwrap();
    let took = frozen.elapsed();
    f.lab.unhang(&b).await.unwrap();
    println!(
        "hung peer taken over {} ms after it froze",
        took.as_millis()
    );
    assert!(f.log("a").contains("lease not renewed"), "{}", f.log("a"));
}
