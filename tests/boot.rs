//! The boot path in the lab (as root): the real agent binary inside an instance's namespace,
//! moto behind the VPC, the IMDS emulator, a real NOTIFY_SOCKET, packets through the kernel.

mod support;

use support::*;

/// The main story: a fresh instance whose ENI is held by a stopped old gateway and whose
/// zone's route is a blackhole becomes the zone's working gateway, then says READY.
#[tokio::test(flavor = "multi_thread")]
async fn boot_takes_the_eni_from_a_dead_holder_and_carries_the_zone() {
    let e = env(ScenarioOptions::default()).await;
    let a = e.sc.zone("a").clone();
    let inst = e.instance("a").await;
    assert_eq!(e.asg_state(&inst.instance_id).await, "Pending:Wait");

    let old = e.old_holder("a").await;
    e.lab.stop(&old).await.expect("stop the old gateway");
    wait_for(WAIT, "route a blackholed", || async {
        (e.route("a", "0.0.0.0/0").await.1 == "blackhole").then_some(())
    })
    .await
    .expect("a stopped holder blackholes the zone's route");

    let agent = e.start_agent(
        &inst,
        "boot",
        &format!("[self_check]\nicmp_targets = [\"{INTERNET_HOST}\"]\n[kernel]\nreconcile_interval_ms = 200"),
    );
    agent.wait_ready().await;

    // Everything READY promises is already true when it arrives.
    assert_eq!(
        e.eni_holder("a").await.as_deref(),
        Some(inst.instance_id.as_str())
    );
    assert_eq!(
        e.route("a", "0.0.0.0/0").await,
        (a.eni_id.clone(), "active".to_owned())
    );
    assert_eq!(e.asg_state(&inst.instance_id).await, "InService");
    assert_eq!(
        e.lifecycle_result(&inst.instance_id).await.as_deref(),
        Some("CONTINUE by CompleteLifecycleAction")
    );
    let statuses = e.lab.info.run_dir.clone();
    let order = agent.notify.statuses();
    let pos = |needle: &str| {
        order
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("no STATUS with {needle:?} in {order:?} ({statuses})"))
    };
    assert!(pos("claiming") < pos("configuring the kernel"));
    assert!(pos("configuring the kernel") < pos("self-check"));
    assert!(pos("self-check") < pos("reclaiming"));
    assert!(pos("reclaiming") < pos("completing the launch lifecycle action"));
    assert!(pos("completing the launch lifecycle action") < pos("carrying"));
    let ns = inst.ns.as_deref().unwrap();
    let rules = ip(ns, &["rule", "show"]);
    assert!(
        rules.contains(&format!("from {} lookup 7700", a.eni_ip)),
        "{rules}"
    );
    let table = ip(ns, &["route", "show", "table", "7700"]);
    assert!(table.contains("default via 10.0.0.1"), "{table}");
    let log = agent.log();
    assert!(log.contains("detach requested from a dead holder"), "{log}");

    // A client in zone A reaches the internet host through the new gateway.
    let stream = e.lab.stream_start("a", 100).await.expect("stream");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = e.lab.stream_stop(stream).await.expect("stream report");
    assert!(report.sent >= 150, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
}

/// A restart of a configured gateway (crash, upgrade) makes no API write and no kernel change;
/// a kernel rule or route removed behind the agent's back comes back within an interval.
#[tokio::test(flavor = "multi_thread")]
async fn restart_changes_nothing_and_drift_is_repaired() {
    let e = env(ScenarioOptions::default()).await;
    let inst = e.instance("a").await;
    let ns = inst.ns.clone().unwrap();
    let extra = "[kernel]\nreconcile_interval_ms = 200";
    let mut first = e.start_agent(&inst, "first", extra);
    first.wait_ready().await;
    first.child.kill().await.expect("kill -9 the first agent");
    let kernel_before = kernel_snapshot(&ns);
    let calls_before = e.api_calls().await.len();

    let second = e.start_agent(&inst, "second", extra);
    second.wait_ready().await;
    let calls = e.api_calls().await;
    let writes: Vec<&String> = calls[calls_before..]
        .iter()
        .filter(|c| WRITE_ACTIONS.contains(&c.as_str()))
        .collect();
    assert!(writes.is_empty(), "second boot wrote {writes:?}");
    assert_eq!(
        kernel_snapshot(&ns),
        kernel_before,
        "second boot changed the kernel"
    );
    assert!(second.log().contains("api_writes=0"), "{}", second.log());
    assert!(second.log().contains("changes=0"), "{}", second.log());

    // Drift: amazon-ec2-net-utils (or an operator) flushes our rule and default route.
    let eni_ip = e.sc.zone("a").eni_ip.clone();
    ip(&ns, &["rule", "del", "pref", "7700"]);
    ip(&ns, &["route", "del", "default", "table", "7700"]);
    assert!(!ip(&ns, &["rule", "show"]).contains(&eni_ip));
    wait_for(
        Duration::from_secs(3),
        "rule and route restored",
        || async {
            let rules = ip(&ns, &["rule", "show"]);
            let table = ip(&ns, &["route", "show", "table", "7700"]);
            (rules.contains(&format!("from {eni_ip} lookup 7700")) && table.contains("default via"))
                .then_some(())
        },
    )
    .await
    .expect("the run loop restores the kernel config");
    let log = second.log();
    assert!(log.contains("kernel repaired"), "{log}");
}

/// Each failure: non-zero exit, a STATUS= saying why, ABANDON, and nothing half-done.
#[tokio::test(flavor = "multi_thread")]
async fn eni_held_by_a_live_gateway_is_never_stolen() {
    let e = env(ScenarioOptions::default()).await;
    let inst = e.instance("a").await;
    let holder = e.old_holder("a").await;
    let route_before = e.route("a", "0.0.0.0/0").await;
    let mut agent = e.start_agent(&inst, "refuse", "");
    let reason =
        format!("held by {holder} which is running: refusing to take it from a live gateway");
    agent.assert_abandoned(&e, &inst, 4, &reason).await;
    assert_eq!(e.eni_holder("a").await, Some(holder));
    assert_eq!(e.route("a", "0.0.0.0/0").await, route_before);
}

/// On a plain instance (no Auto Scaling group, so nothing to ABANDON and nothing terminates
/// it) the exit code is observable: 4, a failed boot.
#[tokio::test(flavor = "multi_thread")]
async fn eni_of_another_zone_is_refused() {
    let e = env(ScenarioOptions {
        capacity: 0,
        ..ScenarioOptions::default()
    })
    .await;
    let plain = e.plain_instance("a").await;
    let inst = wait_for(WAIT, "plain instance namespace", || async {
        e.lab
            .instances()
            .await
            .ok()?
            .into_iter()
            .find(|i| i.instance_id == plain && i.ns.is_some())
    })
    .await
    .expect("the lab runs the plain instance");
    let (az_a, eni_b) = (e.sc.zone("a").az.clone(), e.sc.zone("b").eni_id.clone());
    let mut agent = e.start_agent(
        &inst,
        "zone",
        &format!("[eni]\nids = {{ \"{az_a}\" = \"{eni_b}\" }}"),
    );
    assert_eq!(agent.wait_exit().await, Some(4), "{}", agent.log());
    let status = agent.notify.statuses().join(" | ");
    assert!(
        status.contains(&format!("but this instance is in {az_a}")),
        "{status}"
    );
    assert!(!status.contains("ABANDON"), "{status}");
    assert!(
        agent.log().contains("not in an Auto Scaling group"),
        "{}",
        agent.log()
    );
    assert_eq!(e.eni_holder("b").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_errors_past_the_deadline_abandon_with_the_call_named() {
    let e = env(ScenarioOptions::default()).await;
    let inst = e.instance("a").await;
    e.lab
        .inject(&Fault {
            action: Some("DescribeNetworkInterfaces".into()),
            kind: "5xx".into(),
            count: None,
            latency_ms: 0,
            status: None,
        })
        .await
        .expect("inject 5xx");
    let mut agent = e.start_agent(
        &inst,
        "5xx",
        "[boot]\ntimeout_s = 10\nattach_timeout_s = 10",
    );
    agent
        .assert_abandoned(&e, &inst, 4, "ec2 DescribeNetworkInterfaces")
        .await;
    e.lab.clear_faults().await.expect("clear faults");
    assert_eq!(e.eni_holder("a").await, None, "nothing attached");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_self_check_abandons_before_any_route_moves() {
    let e = env(ScenarioOptions::default()).await;
    let inst = e.instance("a").await;
    let route_before = e.route("a", "0.0.0.0/0").await;
    let mut agent = e.start_agent(
        &inst,
        "selfcheck",
        &format!("[self_check]\nicmp_targets = [\"{SILENT_HOST}\"]\ntimeout_ms = 200\nattempts = 2\n[boot]\ntimeout_s = 10\nattach_timeout_s = 10"),
    );
    let reason = format!("self-check failed: icmp {SILENT_HOST} FAILED");
    agent.assert_abandoned(&e, &inst, 4, &reason).await;
    assert_eq!(
        e.route("a", "0.0.0.0/0").await,
        route_before,
        "no route moved"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn imds_down_for_the_whole_deadline_exits_with_the_reason() {
    let e = env(ScenarioOptions::default()).await;
    let inst = e.instance("a").await;
    e.lab
        .imds_fault(&inst.instance_id, "refuse", 0)
        .await
        .expect("IMDS fault");
    let mut agent = e.start_agent(
        &inst,
        "imds",
        "[boot]\ntimeout_s = 10\nattach_timeout_s = 10",
    );
    assert_eq!(agent.wait_exit().await, Some(3), "{}", agent.log());
    let status = agent.notify.statuses();
    assert!(status.iter().any(|s| s == "waiting for IMDS"), "{status:?}");
    assert!(
        status
            .iter()
            .any(|s| s.contains("IMDS: no answer within the boot deadline")),
        "{status:?}"
    );
    // Nothing was claimed or written.
    assert_eq!(e.eni_holder("a").await, None);
    assert_eq!(e.asg_state(&inst.instance_id).await, "Pending:Wait");
}

/// A boot slower than the heartbeat period keeps the launch action alive with heartbeats.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_boot_heartbeats_the_launch_action() {
    let e = env(ScenarioOptions::default()).await;
    let inst = e.instance("a").await;
    // Every route-table read takes 2.5 s: the reclaim step outlasts two heartbeat periods.
    e.lab
        .inject(&Fault {
            action: Some("DescribeRouteTables".into()),
            kind: "latency".into(),
            count: None,
            latency_ms: 2500,
            status: None,
        })
        .await
        .expect("inject latency");
    let agent = e.start_agent(&inst, "slow", "[lifecycle]\nheartbeat_interval_s = 1");
    agent.wait_ready().await;
    e.lab.clear_faults().await.expect("clear faults");
    let all = e.lab.lifecycle().await.expect("lifecycle");
    let done = all["history"]
        .as_array()
        .and_then(|h| {
            h.iter()
                .find(|a| a["instance_id"] == inst.instance_id.as_str())
                .cloned()
        })
        .expect("the launch action was completed");
    assert_eq!(done["result"], "CONTINUE", "{all}");
    assert!(done["heartbeats"].as_u64().unwrap_or(0) >= 2, "{all}");
    assert!(
        agent.log().contains("lifecycle heartbeat recorded"),
        "{}",
        agent.log()
    );
}

/// What the packaged unit does (User=gateway-agent, AmbientCapabilities=CAP_NET_ADMIN
/// CAP_NET_RAW, NoNewPrivileges=yes), done with setpriv: an unprivileged user holding only
/// those two capabilities claims the ENI, configures the kernel (sysctls included), says READY
/// and carries its zone.
#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_user_with_two_capabilities_runs_the_whole_boot() {
    const NOBODY: u32 = 65_534;
    let e = env(ScenarioOptions::default()).await;
    let inst = e.instance("a").await;
    // Its own directory for the control socket, as RuntimeDirectory= gives the service.
    let dir = PathBuf::from(&e.lab.info.run_dir).join("unprivileged");
    std::fs::create_dir(&dir).unwrap();
    nix::unistd::chown(&dir, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let caps = "-all,+net_admin,+net_raw";
    let agent = e.start_agent_env(
        &inst,
        "unprivileged",
        &format!(
            "[control]\nsocket = \"{}/control.sock\"\n[drain]\nrestart_marker = \"{}/restart\"",
            dir.display(),
            dir.display()
        ),
        &[],
        &[],
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set={caps}"),
            "--",
        ],
    );
    // systemd's notify socket is writable by every user of the service; so is this one.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&agent.notify.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    agent.wait_ready().await;

    let pid = agent.child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    assert!(field("Uid:").starts_with("65534"), "{status}");
    // CAP_NET_ADMIN (12) and CAP_NET_RAW (13), nothing else, and none to gain.
    assert_eq!(field("CapEff:"), "0000000000003000", "{status}");
    assert_eq!(field("CapBnd:"), "0000000000003000", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");

    let a = e.sc.zone("a");
    assert_eq!(
        e.route("a", "0.0.0.0/0").await,
        (a.eni_id.clone(), "active".to_owned())
    );
    let ns = inst.ns.as_deref().unwrap();
    let rules = ip(ns, &["rule", "show"]);
    assert!(
        rules.contains(&format!("from {} lookup 7700", a.eni_ip)),
        "{rules}"
    );
    let forwarding = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "1");
    let stream = e.lab.stream_start("a", 100).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = e.lab.stream_stop(stream).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}\n{}", agent.log());
    // The operator's socket: owned by the service user, mode 0600 (root still gets in).
    let meta = std::fs::metadata(dir.join("control.sock")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600));
}
