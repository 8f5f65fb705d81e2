//! Planned exits in the lab (as root): ASG termination through its hook, a spot notice, a
//! plain stop (with and without the upgrade's restart marker), a sick uplink, and a drain with
//! nobody to hand over to. A client stream at 100 packets/s measures what a user would lose.

mod support;

use gateway_lab::report::{log_figure, ms};
use nix::sys::signal::Signal;
use support::*;

/// Both zones' gateways with agents (or only a's when `with_b` is false), `extra` in both
/// configs; probes up and /health answered on both sides.
async fn pair(with_b: bool, extra: &str) -> Fleet {
    let mut f = fleet(ScenarioOptions::default()).await;
    let inst_a = f.instance("a").await.unwrap();
    let inst_b = f.instance("b").await.unwrap();
    f.spawn("a", inst_a, Spec::new().extra(extra)).unwrap();
    if with_b {
        f.spawn("b", inst_b, Spec::new().extra(extra)).unwrap();
    }
    f.ready("a").await.unwrap();
    if with_b {
        f.ready("b").await.unwrap();
    }
    tokio::time::sleep(secs(2)).await;
    f
}

/// What an instance refresh does to each instance: terminate it through its group, which
/// launches a replacement; the termination hook holds it in Terminating:Wait meanwhile.
async fn refresh(f: &Fleet, instance: &str) {
    f.lab.terminate_in_group(instance).await.unwrap();
}

/// Whether `instance`'s termination lifecycle action was completed with CONTINUE.
async fn termination_continued(f: &Fleet, instance: &str) -> bool {
    let result = f.lifecycle_result(instance, "TERMINATING").await.unwrap();
    result.is_some_and(|r| r.starts_with("CONTINUE "))
}

/// A self-check of the uplink that fails fast once it is cut, then `more`.
fn uplink_check(more: &str) -> String {
    format!("[self_check]\nicmp_targets = [\"{INTERNET_HOST}\"]\ntimeout_ms = 200\n{more}")
}

/// The drain's duration as the agent logged it.
fn drain_ms(log: &str) -> String {
    ms(log_figure(log, "drain complete", "drain_ms"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_the_zone_over_without_losing_a_packet() {
    let mut f = pair(true, "[drain]\ngrace_s = 1").await;
    let stream = f.lab.stream_start("a", 100).await.unwrap();
    tokio::time::sleep(secs(1)).await;
    f.agent("a").signal(Signal::SIGTERM).unwrap();
    let code = f.wait_exit("a").await.unwrap();
    assert_eq!(code, Some(0), "{}", f.logs());
    assert!(f.route_is("a", "b").await.unwrap(), "{}", f.logs());
    tokio::time::sleep(secs(1)).await;
    let report = f.lab.stream_stop(stream).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}\n{}", f.logs());
    let statuses = f.agent("a").notify.statuses().join(" | ");
    assert!(statuses.contains("drained"), "{statuses}");
    let all = f.agent("a").notify.all().join("\n");
    assert!(all.contains("STOPPING=1"), "{all}");
    eprintln!(
        "figure: sigterm drain={} lost={} sent={}",
        drain_ms(&f.log("a")),
        report.lost,
        report.sent
    );
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_the_restart_marker_moves_nothing() {
    // Named before the fleet exists: the same directory and name pattern as Fleet::restart_marker.
    std::fs::create_dir_all("/run/gateway-agent").unwrap();
    let marker = PathBuf::from(format!(
        "/run/gateway-agent/test-exits-{}.restart",
        std::process::id()
    ));
    let mut f = pair(
        true,
        &format!("[drain]\nrestart_marker = \"{}\"", marker.display()),
    )
    .await;
    std::fs::write(&marker, "").unwrap();
    let writes = f.route_writes().await.unwrap();
    f.agent("a").signal(Signal::SIGTERM).unwrap();
    assert_eq!(f.wait_exit("a").await.unwrap(), Some(0), "{}", f.logs());
    assert!(
        f.log("a").contains("restart marker present"),
        "{}",
        f.logs()
    );
    // The upgraded agent starts, adopts, removes the marker: not one route write in all that.
    let inst = f.gateway("a").inst.clone();
    let extra = format!("[drain]\nrestart_marker = \"{}\"", marker.display());
    f.spawn("a", inst, Spec::new().extra(extra)).unwrap();
    f.ready("a").await.unwrap();
    tokio::time::sleep(secs(2)).await;
    assert_eq!(f.route_writes().await.unwrap(), writes, "{}", f.logs());
    assert!(!marker.exists(), "the new agent must remove the marker");
    assert!(f.route_is("a", "a").await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spot_notice_drains_well_inside_its_two_minutes() {
    let mut f = pair(true, "[drain]\ngrace_s = 1").await;
    let stream = f.lab.stream_start("a", 100).await.unwrap();
    tokio::time::sleep(secs(1)).await;
    let started = std::time::Instant::now();
    f.spot_notice(&f.instance_id("a")).await.unwrap();
    assert_eq!(f.wait_exit("a").await.unwrap(), Some(0), "{}", f.logs());
    let took = started.elapsed();
    assert!(f.route_is("a", "b").await.unwrap(), "{}", f.logs());
    let report = f.lab.stream_stop(stream).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}");
    let log = f.log("a");
    assert!(log.contains("spot interruption notice"), "{log}");
    eprintln!(
        "figure: spot drain={} notice_to_exit_ms={} lost={}",
        drain_ms(&log),
        took.as_millis(),
        report.lost
    );
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_refresh_loses_nothing_end_to_end() {
    let mut f = pair(true, "[drain]\ngrace_s = 1").await;
    let stream = f.lab.stream_start("a", 100).await.unwrap();
    tokio::time::sleep(secs(1)).await;
    let old = f.instance_id("a");
    refresh(&f, &old).await;
    let code = f.wait_exit("a").await.unwrap();
    // Exit 0, or killed with its instance right after the hook completed.
    assert!(code == Some(0) || code.is_none(), "{code:?}\n{}", f.logs());
    let log_a = f.log("a");
    assert!(log_a.contains("drain complete"), "{}", f.logs());
    assert!(termination_continued(&f, &old).await, "{}", f.logs());
    // The replacement boots and reclaims from b.
    f.start_replacement("a", &old, WAIT).await.unwrap();
    f.wait_route("a", "a", secs(5)).await.unwrap();
    tokio::time::sleep(secs(1)).await;
    let report = f.lab.stream_stop(stream).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}\n{}", f.logs());
    eprintln!(
        "figure: instance-refresh drain={} lost={} sent={}",
        drain_ms(&log_a),
        report.lost,
        report.sent
    );
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_that_launches_first_gets_a_standby_that_takes_over_when_the_old_one_lets_go() {
    let mut f = pair(true, "[drain]\ngrace_s = 1").await;
    let stream = f.lab.stream_start("a", 100).await.unwrap();
    tokio::time::sleep(secs(1)).await;
    let old = f.instance_id("a");
    let asg = f.zone("a").asg_name.clone();
    f.lab
        .refresh(&asg, Some("launch-before-terminate"))
        .await
        .unwrap();
    // The new instance boots while the old one still carries the zone and holds its ENI: it
    // must neither take the ENI nor ABANDON, but stand by (READY, so the refresh goes on).
    f.start_replacement("a", &old, WAIT).await.unwrap();
    let new = f.instance_id("a");
    let statuses = f.agent("a").notify.statuses().join(" | ");
    assert!(statuses.contains("standby for"), "{statuses}\n{}", f.logs());
    let launched = f.lifecycle_result(&new, "LAUNCHING").await.unwrap();
    assert!(
        launched
            .as_deref()
            .is_some_and(|r| r.starts_with("CONTINUE ")),
        "{launched:?}\n{}",
        f.logs()
    );
    // The refresh then terminates the old one: it drains, lets the ENI go, and the standby
    // claims it and takes its zone back from b.
    f.wait_eni_holder("a", &new, secs(60)).await.unwrap();
    f.wait_route("a", "a", secs(20)).await.unwrap();
    assert!(termination_continued(&f, &old).await, "{}", f.logs());
    assert!(f.log("a").contains("standby over"), "{}", f.logs());
    let refreshed = wait_for(secs(30), "the refresh completes", || async {
        let all = f.lab.activities().await.ok()?;
        let done = all["refreshes"]
            .as_array()?
            .iter()
            .any(|r| r["group"] == asg.as_str() && r["status"] == "Successful");
        done.then_some(())
    })
    .await;
    assert!(refreshed.is_ok(), "{}", f.logs());
    tokio::time::sleep(secs(1)).await;
    let report = f.lab.stream_stop(stream).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}\n{}", f.logs());
    eprintln!(
        "figure: launch-before-terminate refresh lost={} sent={}",
        report.lost, report.sent
    );
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_whose_uplink_fails_steps_aside_and_comes_back_after_the_hold_down() {
    let f = pair(true, &uplink_check("[failover]\nhold_down_s = 3")).await;
    let primary = f.primary("a");
    let writes = f.route_writes().await.unwrap();
    f.lab.partition(&primary, INTERNET_HOST).await.unwrap();
    f.wait_route("a", "b", secs(10)).await.unwrap();
    assert!(
        f.log("a").contains("own self-check failing"),
        "{}",
        f.logs()
    );
    // While it stays sick, nothing moves back.
    tokio::time::sleep(secs(4)).await;
    assert!(f.route_is("a", "b").await.unwrap());
    assert_eq!(f.route_writes().await.unwrap(), writes + 1, "{}", f.logs());
    f.lab.heal(&primary, INTERNET_HOST).await.unwrap();
    // Not before the hold-down...
    tokio::time::sleep(secs(1)).await;
    assert!(
        f.route_is("a", "b").await.unwrap(),
        "back too early\n{}",
        f.logs()
    );
    // ...then once.
    f.wait_route("a", "a", secs(10)).await.unwrap();
    tokio::time::sleep(secs(2)).await;
    assert_eq!(f.route_writes().await.unwrap(), writes + 2, "{}", f.logs());
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_with_nobody_to_take_over_keeps_the_routes_and_lets_the_hook_go() {
    // b's instance runs no agent: nobody is eligible.
    let mut f = pair(false, "[drain]\ntimeout_s = 5\ngrace_s = 0").await;
    let old = f.instance_id("a");
    let writes = f.route_writes().await.unwrap();
    refresh(&f, &old).await;
    let code = f.wait_exit("a").await.unwrap();
    assert!(code == Some(0) || code.is_none(), "{code:?}\n{}", f.logs());
    let statuses = f.agent("a").notify.statuses().join(" | ");
    assert!(statuses.contains("BLOCKED"), "{statuses}");
    assert!(statuses.contains("gave up at its deadline"), "{statuses}");
    assert_eq!(f.route_writes().await.unwrap(), writes, "{}", f.logs());
    assert!(termination_continued(&f, &old).await, "{}", f.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demoted_gateway_can_ask_its_group_for_a_replacement() {
    let f = pair(true, &uplink_check("[drain]\nset_unhealthy = true")).await;
    let primary = f.primary("a");
    f.lab.partition(&primary, INTERNET_HOST).await.unwrap();
    f.wait_route("a", "b", secs(10)).await.unwrap();
    let old = f.instance_id("a");
    let replaced = wait_for(WAIT, "a's group replaces it", || async {
        let state = f.asg_state(&old).await.unwrap();
        (state != "InService").then_some(state)
    })
    .await;
    assert!(replaced.is_ok(), "{}", f.logs());
    // The group may act before the agent has logged the answer to its call.
    let said = wait_for(secs(5), "the agent's log line", || async {
        f.log("a")
            .contains("SetInstanceHealth Unhealthy")
            .then_some(())
    })
    .await;
    assert!(said.is_ok(), "{}", f.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn both_gateways_replaced_at_once_each_ends_with_its_own_zone() {
    let mut f = fleet(ScenarioOptions::default()).await;
    f.start_all(&["a", "b"]).await.unwrap();
    let first = [f.instance_id("a"), f.instance_id("b")];
    // An AZ-wide event: both die together, both groups launch replacements together.
    for z in ["a", "b"] {
        f.terminate(z).await.unwrap();
    }
    for z in ["a", "b"] {
        f.wait_exit(z).await.unwrap();
    }
    let mut second = Vec::new();
    for (z, old) in ["a", "b"].iter().zip(&first) {
        second.push(f.replacement(z, old, WAIT).await.unwrap());
    }
    for (z, new) in ["a", "b"].into_iter().zip(second) {
        f.spawn(z, new, Spec::new()).unwrap();
    }
    for z in ["a", "b"] {
        f.ready(z).await.unwrap();
    }
    tokio::time::sleep(secs(3)).await;
    let settled = f.route_writes().await.unwrap();
    tokio::time::sleep(secs(3)).await;
    assert_eq!(
        f.route_writes().await.unwrap(),
        settled,
        "still writing\n{}",
        f.logs()
    );
    for z in ["a", "b"] {
        let (eni, state) = f.route(z, "0.0.0.0/0").await.unwrap();
        assert_eq!(
            (eni.as_str(), state.as_str()),
            (f.zone(z).eni_id.as_str(), "active"),
            "{z}\n{}",
            f.logs()
        );
    }
}
