//! Peer failover in the lab (as root): real agents in every zone's instance, moto behind the
//! VPC, packets through the kernel. Each test kills, hangs or cuts off gateways and asserts what
//! a user sees: where the routes point, whether the client stream flows, how many writes.

mod support;

use support::*;

/// Every gateway's agent, ready.
struct Fleet {
    e: Env,
    agents: Vec<(String, Instance, Agent)>,
}

impl Fleet {
    async fn start(zones: &[&str], extra: &str) -> Self {
        let e = env(ScenarioOptions {
            zones: zones.iter().map(|z| (*z).to_owned()).collect(),
            ..ScenarioOptions::default()
        })
        .await;
        let mut agents = Vec::new();
        for z in zones {
            let inst = e.instance(z).await;
            let agent = e.start_agent_sock(&inst, &format!("agent-{z}"), extra);
            agents.push(((*z).to_owned(), inst, agent));
        }
        for (_, _, agent) in &agents {
            agent.wait_ready().await;
        }
        Self { e, agents }
    }

    fn agent(&self, zone: &str) -> &Agent {
        &self.agents.iter().find(|(z, ..)| z == zone).unwrap().2
    }

    fn instance(&self, zone: &str) -> &Instance {
        &self.agents.iter().find(|(z, ..)| z == zone).unwrap().1
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|(z, _, a)| format!("--- agent {z} ---\n{}", a.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// With `GATEWAY_TEST_LOGS=1`, prints every agent's log (to read timings after a pass).
    fn show_logs(&self) {
        if std::env::var_os("GATEWAY_TEST_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
    }

    /// Waits until `zone`'s default route points at `target_zone`'s ENI and is active.
    async fn wait_route(&self, zone: &str, target_zone: &str, timeout: Duration) {
        let want = self.e.sc.zone(target_zone).eni_id.clone();
        let got = wait_for(timeout, &format!("{zone} routed via {target_zone}"), || {
            let want = want.clone();
            async move {
                let (eni, state) = self.e.route(zone, "0.0.0.0/0").await;
                (eni == want && state == "active").then_some(())
            }
        })
        .await;
        if got.is_err() {
            panic!(
                "{zone}'s route is {:?}, not via {target_zone} ({want})\n{}",
                self.e.route(zone, "0.0.0.0/0").await,
                self.logs()
            );
        }
    }
}

/// `gateway-agent failback` as an operator runs it: (exit code, stdout + stderr).
fn failback_cli(e: &Env, name: &str) -> (i32, String) {
    let out = std::process::Command::new(AGENT)
        .args(["failback", "--socket"])
        .arg(e.socket_path(name))
        .output()
        .expect("run gateway-agent failback");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn steady(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_peer_is_taken_over_and_handed_back_when_replaced() {
    let mut f = Fleet::start(&["a", "b"], "").await;
    steady(2).await;
    let stream = f.e.lab.stream_start("b", 100).await.unwrap();
    steady(1).await;
    let b = f.instance("b").instance_id.clone();
    f.e.lab.terminate(&b).await.unwrap();
    f.wait_route("b", "a", Duration::from_secs(10)).await;
    // The client's packets flow again, through a (b's namespace is gone).
    let before = f.e.lab.stream_report(stream).await.unwrap();
    steady(1).await;
    let mid = f.e.lab.stream_report(stream).await.unwrap();
    assert!(
        mid.delivered >= before.delivered + 50,
        "the stream did not resume: {before:?} then {mid:?}\n{}",
        f.logs()
    );
    let log_a = f.agent("a").log();
    assert!(log_a.contains("takeover complete"), "{log_a}");

    // The ASG replaces b; its agent boots, reclaims, and a lets go.
    let new_b = wait_for(WAIT, "b's replacement", || async {
        f.e.lab
            .instance_in("b")
            .await
            .ok()
            .filter(|i| i.instance_id != b)
    })
    .await
    .unwrap();
    let agent = f.e.start_agent_sock(&new_b, "agent-b2", "");
    agent.wait_ready().await;
    f.wait_route("b", "b", Duration::from_secs(5)).await;
    f.agents.push(("b2".into(), new_b, agent));
    let before = f.e.route_writes().await;
    steady(4).await;
    let after = f.e.lab.stream_stop(stream).await.unwrap();
    // Nobody fights over it afterwards.
    assert_eq!(f.e.route_writes().await, before, "{}", f.logs());
    f.wait_route("b", "b", Duration::from_secs(1)).await;
    let log_a = f.agent("a").log();
    assert!(log_a.contains("zone handed back"), "{log_a}");
    // Packets delivered through b again at the end of the stream.
    assert!(after.delivered > mid.delivered, "{after:?}");
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn hung_peer_is_taken_only_after_its_lease_lapses_and_fails_back_after_the_hold_down() {
    let f = Fleet::start(&["a", "b"], "[failover]\nhold_down_s = 4").await;
    steady(2).await;
    let b = f.instance("b").instance_id.clone();
    f.e.lab.hang(&b).await.unwrap();
    f.wait_route("b", "a", Duration::from_secs(10)).await;
    let log_a = f.agent("a").log();
    // The API still says b runs: only the lapsed lease confirmed it.
    assert!(log_a.contains("lease not renewed"), "{log_a}");
    assert!(!log_a.contains("shutting-down"), "{log_a}");

    // b comes back without a reboot: it takes its zone back after the hold-down, once.
    let writes = f.e.route_writes().await;
    f.e.lab.unhang(&b).await.unwrap();
    steady(2).await;
    f.wait_route("b", "a", Duration::from_secs(1)).await;
    f.wait_route("b", "b", Duration::from_secs(10)).await;
    steady(3).await;
    f.wait_route("b", "b", Duration::from_secs(1)).await;
    assert_eq!(f.e.route_writes().await, writes + 1, "{}", f.logs());
    let log_b = f.agent("b").log();
    assert!(log_b.contains("failback complete"), "{log_b}");
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_agent_on_a_forwarding_gateway_is_not_taken_over() {
    let mut f = Fleet::start(&["a", "b"], "").await;
    steady(2).await;
    let stream = f.e.lab.stream_start("b", 100).await.unwrap();
    let writes = f.e.route_writes().await;
    let agent_b = &mut f.agents.iter_mut().find(|(z, ..)| z == "b").unwrap().2;
    agent_b.child.kill().await.unwrap();
    // Well past ICMP fall and the lease ttl: b's lease is stale, but its kernel forwards.
    steady(6).await;
    let report = f.e.lab.stream_stop(stream).await.unwrap();
    assert_eq!(f.e.route_writes().await, writes, "{}", f.logs());
    f.wait_route("b", "b", Duration::from_secs(1)).await;
    assert_eq!(report.lost, 0, "{report:?}");
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_between_healthy_gateways_moves_nothing() {
    let f = Fleet::start(&["a", "b"], "").await;
    steady(2).await;
    let writes = f.e.route_writes().await;
    let (ip_a, ip_b) = (
        f.e.sc.zone("a").eni_ip.clone(),
        f.e.sc.zone("b").eni_ip.clone(),
    );
    f.e.lab.partition(&ip_a, &ip_b).await.unwrap();
    steady(8).await;
    let log_a = f.agent("a").log();
    assert!(
        log_a.contains("peer down by ICMP"),
        "the partition did not bite:\n{log_a}"
    );
    assert!(log_a.contains("a partition, not a death"), "{log_a}");
    assert_eq!(f.e.route_writes().await, writes, "{}", f.logs());
    f.e.lab.heal(&ip_a, &ip_b).await.unwrap();
    steady(2).await;
    assert_eq!(f.e.route_writes().await, writes, "{}", f.logs());
    f.wait_route("a", "a", Duration::from_secs(1)).await;
    f.wait_route("b", "b", Duration::from_secs(1)).await;
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn three_zones_exactly_the_successor_takes_over_then_the_third_takes_both() {
    let f = Fleet::start(&["a", "b", "c"], "").await;
    steady(2).await;
    let writes = f.e.route_writes().await;
    let c = f.instance("c").instance_id.clone();
    f.e.lab.terminate(&c).await.unwrap();
    // Ring a → b → c → a: c's successor is a.
    f.wait_route("c", "a", Duration::from_secs(10)).await;
    steady(3).await;
    assert_eq!(
        f.e.route_writes().await,
        writes + 1,
        "one writer, one write\n{}",
        f.logs()
    );
    assert!(!f.agent("b").log().contains("takeover complete"));

    let a = f.instance("a").instance_id.clone();
    f.e.lab.terminate(&a).await.unwrap();
    f.wait_route("a", "b", Duration::from_secs(10)).await;
    f.wait_route("c", "b", Duration::from_secs(10)).await;
    steady(3).await;
    assert_eq!(f.e.route_writes().await, writes + 3, "{}", f.logs());
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_failback_waits_for_the_operator() {
    let f = Fleet::start(
        &["a", "b"],
        "[failover]\nfailback = \"manual\"\nhold_down_s = 1\ndamping_max_s = 1",
    )
    .await;
    steady(2).await;
    let b = f.instance("b").instance_id.clone();
    f.e.lab.hang(&b).await.unwrap();
    f.wait_route("b", "a", Duration::from_secs(10)).await;
    f.e.lab.unhang(&b).await.unwrap();
    // Well past the hold-down: b stays with a.
    steady(4).await;
    f.wait_route("b", "a", Duration::from_secs(1)).await;
    assert!(
        f.agent("b").log().contains("failback = manual"),
        "{}",
        f.logs()
    );
    // The wrong zone is refused (exit 6: the agent refused); the right command brings it back
    // at once.
    let out = std::process::Command::new(AGENT)
        .args(["failback", "--zone", "us-east-1a", "--socket"])
        .arg(f.e.socket_path("agent-b"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not this gateway's zone"));
    let (code, text) = failback_cli(&f.e, "agent-b");
    assert_eq!(code, 0, "{text}\n{}", f.logs());
    assert!(text.contains("carried by"), "{text}");
    f.wait_route("b", "b", Duration::from_secs(1)).await;
    f.show_logs();
}

/// The route for `dest` in `zone`'s table: its ENI, or `None` when there is none.
async fn route_via(e: &Env, zone: &str, dest: &str) -> Option<String> {
    let out = e
        .lab
        .ec2()
        .describe_route_tables()
        .route_table_ids(&e.sc.zone(zone).route_table_id)
        .send()
        .await
        .expect("DescribeRouteTables");
    out.route_tables()
        .iter()
        .flat_map(|t| t.routes())
        .find(|r| r.destination_cidr_block() == Some(dest))
        .map(|r| r.network_interface_id().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conditional_route_exists_only_while_its_target_is_silent() {
    const DEST: &str = "10.200.0.0/16";
    let f = Fleet::start(
        &["a", "b"],
        &format!("[[conditional]]\nname = \"dx\"\nprobe = \"{INTERNET_HOST}\"\ndestinations = [\"{DEST}\"]"),
    )
    .await;
    steady(2).await;
    assert_eq!(route_via(&f.e, "a", DEST).await, None);
    // a's path to the target breaks (b's does not): a routes DEST via itself.
    let ip_a = f.e.sc.zone("a").eni_ip.clone();
    f.e.lab.partition(&ip_a, INTERNET_HOST).await.unwrap();
    let eni_a = f.e.sc.zone("a").eni_id.clone();
    let added = wait_for(
        Duration::from_secs(5),
        "conditional route added",
        || async {
            (route_via(&f.e, "a", DEST).await.as_deref() == Some(eni_a.as_str())).then_some(())
        },
    )
    .await;
    assert!(added.is_ok(), "{}", f.logs());
    assert_eq!(route_via(&f.e, "b", DEST).await, None, "b's target answers");
    // The target answers again: the route goes.
    f.e.lab.heal(&ip_a, INTERNET_HOST).await.unwrap();
    let removed = wait_for(
        Duration::from_secs(5),
        "conditional route removed",
        || async { route_via(&f.e, "a", DEST).await.is_none().then_some(()) },
    )
    .await;
    assert!(removed.is_ok(), "{}", f.logs());
    // The zone's default route never moved.
    f.wait_route("a", "a", Duration::from_secs(1)).await;
    f.show_logs();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_rides_out_throttling_and_5xx() {
    let f = Fleet::start(&["a", "b"], "").await;
    steady(2).await;
    // More failures than the SDK's own attempts: the agent's loop must come back for them.
    f.e.lab
        .inject(&Fault {
            action: Some("ReplaceRoute".into()),
            kind: "throttle".into(),
            count: Some(6),
            latency_ms: 0,
            status: None,
        })
        .await
        .unwrap();
    f.e.lab
        .inject(&Fault {
            action: Some("DescribeRouteTables".into()),
            kind: "5xx".into(),
            count: Some(2),
            latency_ms: 0,
            status: None,
        })
        .await
        .unwrap();
    let b = f.instance("b").instance_id.clone();
    f.e.lab.terminate(&b).await.unwrap();
    f.wait_route("b", "a", Duration::from_secs(20)).await;
    // The confirming read may itself wait out the SDK's rate limiter after the throttling.
    let confirmed = wait_for(Duration::from_secs(10), "takeover complete", || async {
        f.agent("a")
            .log()
            .contains("takeover complete")
            .then_some(())
    })
    .await;
    let log_a = f.agent("a").log();
    assert!(confirmed.is_ok(), "{log_a}");
    assert!(log_a.contains("RequestLimitExceeded"), "{log_a}");
    f.show_logs();
}

/// The ASG's replacement appears only after its launch delay and its agent starts by itself,
/// as systemd starts it from the AMI (labd's boot spec, not the test): it boots, claims the
/// zone's ENI, takes its routes back from the peer and tells systemd READY=1.
#[tokio::test(flavor = "multi_thread")]
async fn replacement_agent_starts_with_its_instance() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the lab tests need root"
    );
    let mut lab = Lab::start_with_env(&[
        ("GATEWAY_LAB_AWS_LAUNCH_S", "3"),
        ("GATEWAY_LAB_AWS_BOOT_S", "1"),
    ])
    .expect("lab starts");
    let sc = lab
        .scenario(&ScenarioOptions::default())
        .await
        .expect("scenario builds");
    let e = Env { lab, sc };
    let a = e.instance("a").await;
    let b = e.instance("b").await;
    let agent_a = e.start_agent_sock(&a, "agent-a", "[failover]\nhold_down_s = 3");
    let agent_b = e.start_agent_sock(&b, "agent-b", "[failover]\nhold_down_s = 3");
    agent_a.wait_ready().await;
    agent_b.wait_ready().await;

    // What the AMI's systemd unit would run in every new instance.
    let dir = &e.lab.info.run_dir;
    let mut env: std::collections::BTreeMap<String, String> = Lab::instance_env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    env.insert("RUST_LOG".into(), "info".into());
    let config = format!(
        "version = 1\n[group]\nname = \"{}\"\n[failover]\nhold_down_s = 3\n[control]\nsocket = \"{dir}/{{instance_id}}.sock\"\n",
        e.sc.group
    );
    e.lab
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
    e.lab.terminate_in_group(&b.instance_id).await.unwrap();
    let eni_a = e.sc.zone("a").eni_id.clone();
    let eni_b = e.sc.zone("b").eni_id.clone();
    let via = |want: String| {
        let e = &e;
        async move {
            let routes = e
                .lab
                .kernel_routes(&e.sc.zone("b").route_table_id)
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
        .unwrap_or_else(|_| panic!("a did not take b over:\n{}", agent_a.log()));
    let new_b = wait_for(wait(), "b's replacement", || async {
        e.lab
            .instance_in(&e.sc.zone("b").az)
            .await
            .ok()
            .filter(|i| i.instance_id != b.instance_id)
    })
    .await
    .unwrap();
    let appeared = t0.elapsed().as_secs_f64();
    let boot = wait_for(WAIT, "READY=1 from the booted agent", || async {
        e.lab
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
            panic!("b not handed back:\n{log}\n--- a ---\n{}", agent_a.log())
        });
    println!(
        "replacement appeared {appeared:.1} s after the termination (LAUNCH_S 3); its agent, \
         started by labd, READY and zone b back on its ENI {:.1} s after",
        t0.elapsed().as_secs_f64()
    );
    assert!(appeared >= 3.0, "{appeared}");
}
