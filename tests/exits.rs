//! Planned exits in the lab (as root): ASG termination through its hook, a spot notice, a
//! plain stop (with and without the upgrade's restart marker), a sick uplink, and a drain with
//! nobody to hand over to. A client stream at 100 packets/s measures what a user would lose.

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

struct Pair {
    e: Env,
    a: (Instance, Agent),
    b: Option<(Instance, Agent)>,
}

/// Both zones' gateways with agents (or only a's when `with_b` is false); `extra` for both.
async fn pair(with_b: bool, extra: &str) -> Pair {
    let e = env(ScenarioOptions::default()).await;
    let inst_a = e.instance("a").await;
    let inst_b = e.instance("b").await;
    let agent_a = e.start_agent_sock(&inst_a, "agent-a", extra);
    let b = with_b.then(|| {
        let agent = e.start_agent_sock(&inst_b, "agent-b", extra);
        (inst_b, agent)
    });
    agent_a.wait_ready().await;
    if let Some((_, agent)) = &b {
        agent.wait_ready().await;
    }
    // Probes up and /health answered on both sides.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Pair {
        e,
        a: (inst_a, agent_a),
        b,
    }
}

impl Pair {
    fn logs(&self) -> String {
        let mut out = format!("--- agent a ---\n{}", self.a.1.log());
        if let Some((_, b)) = &self.b {
            out.push_str(&format!("\n--- agent b ---\n{}", b.log()));
        }
        out
    }

    async fn route_is(&self, zone: &str, via: &str) -> bool {
        let (eni, state) = self.e.route(zone, "0.0.0.0/0").await;
        eni == self.e.sc.zone(via).eni_id && state == "active"
    }

    async fn wait_route(&self, zone: &str, via: &str, timeout: Duration) {
        let ok = wait_for(timeout, &format!("{zone} via {via}"), || async {
            self.route_is(zone, via).await.then_some(())
        })
        .await;
        assert!(ok.is_ok(), "{zone} not via {via}\n{}", self.logs());
    }

    /// What an instance refresh does to each instance: terminate it through its group, which
    /// launches a replacement; the termination hook holds it in Terminating:Wait meanwhile.
    async fn refresh(&self, instance: &str) {
        self.e.lab.terminate_in_group(instance).await.unwrap();
    }

    /// Whether `instance`'s termination lifecycle action was completed with CONTINUE.
    async fn termination_continued(&self, instance: &str) -> bool {
        let history = self.e.lab.lifecycle().await.unwrap();
        history["history"].as_array().unwrap().iter().any(|h| {
            h["instance_id"] == instance
                && h["transition"]
                    .as_str()
                    .is_some_and(|t| t.contains("TERMINATING"))
                && h["result"] == "CONTINUE"
        })
    }

    fn show_logs(&self) {
        if std::env::var_os("GATEWAY_TEST_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
    }
}

fn sigterm(agent: &Agent) {
    let pid = agent.child.id().expect("agent running");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
}

/// The drain's duration as the agent logged it.
fn drain_ms(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("drain complete"))?;
    let at = line.find("drain_ms=")? + "drain_ms=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_the_zone_over_without_losing_a_packet() {
    let mut p = pair(true, "[drain]\ngrace_s = 1").await;
    let stream = p.e.lab.stream_start("a", 100).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigterm(&p.a.1);
    let code = p.a.1.wait_exit().await;
    assert_eq!(code, Some(0), "{}", p.logs());
    assert!(p.route_is("a", "b").await, "{}", p.logs());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = p.e.lab.stream_stop(stream).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}\n{}", p.logs());
    let statuses = p.a.1.notify.statuses().join(" | ");
    assert!(statuses.contains("drained"), "{statuses}");
    let all = p.a.1.notify.all().join("\n");
    assert!(all.contains("STOPPING=1"), "{all}");
    eprintln!(
        "figure: sigterm drain_ms={:?} lost={} sent={}",
        drain_ms(&p.a.1.log()),
        report.lost,
        report.sent
    );
    p.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_the_restart_marker_moves_nothing() {
    let marker = std::env::temp_dir().join(format!("gateway-agent-restart-{}", std::process::id()));
    let mut p = pair(
        true,
        &format!("[drain]\nrestart_marker = \"{}\"", marker.display()),
    )
    .await;
    std::fs::write(&marker, "").unwrap();
    let writes = p.e.route_writes().await;
    sigterm(&p.a.1);
    assert_eq!(p.a.1.wait_exit().await, Some(0), "{}", p.logs());
    assert!(
        p.a.1.log().contains("restart marker present"),
        "{}",
        p.logs()
    );
    // The upgraded agent starts, adopts, removes the marker: not one route write in all that.
    let again = p.e.start_agent_sock(
        &p.a.0,
        "agent-a2",
        &format!("[drain]\nrestart_marker = \"{}\"", marker.display()),
    );
    again.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        p.e.route_writes().await,
        writes,
        "{}\n{}",
        p.logs(),
        again.log()
    );
    assert!(!marker.exists(), "the new agent must remove the marker");
    assert!(p.route_is("a", "a").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spot_notice_drains_well_inside_its_two_minutes() {
    let mut p = pair(true, "[drain]\ngrace_s = 1").await;
    let stream = p.e.lab.stream_start("a", 100).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let when = std::time::SystemTime::now() + Duration::from_secs(120);
    let secs = when
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let notice = format!(
        r#"{{"action": "terminate", "time": "{}"}}"#,
        gateway_agent::events::rfc3339_text(secs)
    );
    let started = std::time::Instant::now();
    p.e.lab
        .imds_set(&p.a.0.instance_id, "spot/instance-action", Some(&notice))
        .await
        .unwrap();
    assert_eq!(p.a.1.wait_exit().await, Some(0), "{}", p.logs());
    let took = started.elapsed();
    assert!(p.route_is("a", "b").await, "{}", p.logs());
    let report = p.e.lab.stream_stop(stream).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}");
    let log = p.a.1.log();
    assert!(log.contains("spot interruption notice"), "{log}");
    eprintln!(
        "figure: spot drain_ms={:?} notice_to_exit_ms={} lost={}",
        drain_ms(&log),
        took.as_millis(),
        report.lost
    );
    p.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_refresh_loses_nothing_end_to_end() {
    let mut p = pair(true, "[drain]\ngrace_s = 1").await;
    let stream = p.e.lab.stream_start("a", 100).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = p.a.0.instance_id.clone();
    p.refresh(&old).await;
    let code = p.a.1.wait_exit().await;
    // Exit 0, or killed with its instance right after the hook completed.
    assert!(code == Some(0) || code.is_none(), "{code:?}\n{}", p.logs());
    let log_a = p.a.1.log();
    assert!(log_a.contains("drain complete"), "{}", p.logs());
    assert!(p.termination_continued(&old).await, "{}", p.logs());
    // The replacement boots and reclaims from b.
    let new = wait_for(WAIT, "the replacement", || async {
        p.e.lab
            .instance_in("a")
            .await
            .ok()
            .filter(|i| i.instance_id != old)
    })
    .await
    .unwrap();
    let agent = p.e.start_agent_sock(&new, "agent-a2", "");
    agent.wait_ready().await;
    p.wait_route("a", "a", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = p.e.lab.stream_stop(stream).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}\n{}\n{}", p.logs(), agent.log());
    eprintln!(
        "figure: instance-refresh drain_ms={:?} lost={} sent={}",
        drain_ms(&log_a),
        report.lost,
        report.sent
    );
    p.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_whose_uplink_fails_steps_aside_and_comes_back_after_the_hold_down() {
    let p = pair(
        true,
        &format!(
            "[self_check]\nicmp_targets = [\"{INTERNET_HOST}\"]\ntimeout_ms = 200\n[failover]\nhold_down_s = 3"
        ),
    )
    .await;
    let primary = p.a.0.private_ip.clone().expect("a's primary address");
    let writes = p.e.route_writes().await;
    p.e.lab.partition(&primary, INTERNET_HOST).await.unwrap();
    p.wait_route("a", "b", Duration::from_secs(10)).await;
    assert!(
        p.a.1.log().contains("own self-check failing"),
        "{}",
        p.logs()
    );
    // While it stays sick, nothing moves back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(p.route_is("a", "b").await);
    assert_eq!(p.e.route_writes().await, writes + 1, "{}", p.logs());
    p.e.lab.heal(&primary, INTERNET_HOST).await.unwrap();
    // Not before the hold-down...
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(p.route_is("a", "b").await, "back too early\n{}", p.logs());
    // ...then once.
    p.wait_route("a", "a", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(p.e.route_writes().await, writes + 2, "{}", p.logs());
    p.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_with_nobody_to_take_over_keeps_the_routes_and_lets_the_hook_go() {
    // b's instance runs no agent: nobody is eligible.
    let mut p = pair(false, "[drain]\ntimeout_s = 5\ngrace_s = 0").await;
    let old = p.a.0.instance_id.clone();
    let writes = p.e.route_writes().await;
    p.refresh(&old).await;
    let code = p.a.1.wait_exit().await;
    assert!(code == Some(0) || code.is_none(), "{code:?}\n{}", p.logs());
    let statuses = p.a.1.notify.statuses().join(" | ");
    assert!(statuses.contains("BLOCKED"), "{statuses}");
    assert!(statuses.contains("gave up at its deadline"), "{statuses}");
    assert_eq!(p.e.route_writes().await, writes, "{}", p.logs());
    assert!(p.termination_continued(&old).await, "{}", p.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demoted_gateway_can_ask_its_group_for_a_replacement() {
    let p = pair(
        true,
        &format!(
            "[self_check]\nicmp_targets = [\"{INTERNET_HOST}\"]\ntimeout_ms = 200\n[drain]\nset_unhealthy = true"
        ),
    )
    .await;
    let primary = p.a.0.private_ip.clone().expect("a's primary address");
    p.e.lab.partition(&primary, INTERNET_HOST).await.unwrap();
    p.wait_route("a", "b", Duration::from_secs(10)).await;
    let old = p.a.0.instance_id.clone();
    let replaced = wait_for(WAIT, "a's group replaces it", || async {
        let state = p.e.asg_state(&old).await;
        (state != "InService").then_some(state)
    })
    .await;
    assert!(replaced.is_ok(), "{}", p.logs());
    // The group may act before the agent has logged the answer to its call.
    let said = wait_for(Duration::from_secs(5), "the agent's log line", || async {
        p.a.1
            .log()
            .contains("SetInstanceHealth Unhealthy")
            .then_some(())
    })
    .await;
    assert!(said.is_ok(), "{}", p.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn both_gateways_replaced_at_once_each_ends_with_its_own_zone() {
    let e = env(ScenarioOptions::default()).await;
    let first = [e.instance("a").await, e.instance("b").await];
    let mut agents: Vec<Agent> = first
        .iter()
        .zip(["a", "b"])
        .map(|(i, z)| e.start_agent_sock(i, &format!("agent-{z}"), ""))
        .collect();
    for a in &agents {
        a.wait_ready().await;
    }
    // An AZ-wide event: both die together, both groups launch replacements together.
    for i in &first {
        e.lab.terminate(&i.instance_id).await.unwrap();
    }
    for a in &mut agents {
        let _ = a.wait_exit().await;
    }
    let mut second = Vec::new();
    for (z, old) in ["a", "b"].iter().zip(&first) {
        let new = wait_for(WAIT, "a replacement", || async {
            e.lab
                .instance_in(z)
                .await
                .ok()
                .filter(|i| i.instance_id != old.instance_id)
        })
        .await
        .unwrap();
        second.push(new);
    }
    let agents: Vec<Agent> = second
        .iter()
        .zip(["a", "b"])
        .map(|(i, z)| e.start_agent_sock(i, &format!("agent-{z}2"), ""))
        .collect();
    for a in &agents {
        a.wait_ready().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = e.route_writes().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = || {
        agents
            .iter()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert_eq!(e.route_writes().await, settled, "still writing\n{}", logs());
    for z in ["a", "b"] {
        let (eni, state) = e.route(z, "0.0.0.0/0").await;
        assert_eq!(
            (eni.as_str(), state.as_str()),
            (e.sc.zone(z).eni_id.as_str(), "active"),
            "{z}\n{}",
            logs()
        );
    }
}
