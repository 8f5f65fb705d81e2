//! The boot path in the lab (as root): the real agent binary inside an instance's namespace,
//! moto behind the VPC, the IMDS emulator, a real NOTIFY_SOCKET, packets through the kernel.

mod support;

use support::*;

/// The lab for a boot: agents with the default control socket, as the packaged config has it.
async fn boot_fleet(opts: ScenarioOptions) -> Fleet {
    let mut f = fleet(opts).await;
    f.sockets = false;
    f
}

/// A failed boot in zone a's ASG: the STATUS= names `reason`, the launch action was ABANDONed,
/// and the process exited with `code`, or was SIGKILLed with its instance, which the lab
/// terminates the moment ABANDON lands (as EC2 does, a little later).
async fn assert_abandoned(f: &mut Fleet, inst: &Instance, code: i32, reason: &str) {
    let exit = f.wait_exit("a").await.unwrap();
    let log = f.log("a");
    assert!(
        exit == Some(code) || exit.is_none(),
        "exit {exit:?}; log:\n{log}"
    );
    assert!(log.contains("boot failed"), "{log}");
    let status = f.agent("a").notify.statuses().join(" | ");
    assert!(status.contains(reason), "{reason:?} not in {status}");
    assert!(
        status.contains("ABANDONing the launch lifecycle action"),
        "{status}"
    );
    assert_eq!(
        f.lifecycle_result(&inst.instance_id, "LAUNCHING")
            .await
            .unwrap()
            .as_deref(),
        Some("ABANDON by CompleteLifecycleAction"),
        "{log}"
    );
}

/// The main story: a fresh instance whose ENI is held by a stopped old gateway and whose
/// zone's route is a blackhole becomes the zone's working gateway, then says READY.
#[tokio::test(flavor = "multi_thread")]
async fn boot_takes_the_eni_from_a_dead_holder_and_carries_the_zone() {
    let mut f = boot_fleet(ScenarioOptions::default()).await;
    let a = f.zone("a").clone();
    let inst = f.instance("a").await.unwrap();
    assert_eq!(
        f.asg_state(&inst.instance_id).await.unwrap(),
        "Pending:Wait"
    );

    let old = f.old_holder("a").await.unwrap();
    f.lab.stop(&old).await.expect("stop the old gateway");
    wait_for(WAIT, "route a blackholed", || async {
        (f.route("a", "0.0.0.0/0").await.unwrap().1 == "blackhole").then_some(())
    })
    .await
    .expect("a stopped holder blackholes the zone's route");

    let extra = format!(
        "[self_check]\nicmp_targets = [\"{INTERNET_HOST}\"]\n[kernel]\nreconcile_interval_ms = 200"
    );
    f.spawn("a", inst.clone(), Spec::new().extra(extra))
        .unwrap();
    f.ready("a").await.unwrap();

    // Everything READY promises is already true when it arrives.
    assert_eq!(
        f.eni_holder("a").await.unwrap().as_deref(),
        Some(inst.instance_id.as_str())
    );
    assert_eq!(
        f.route("a", "0.0.0.0/0").await.unwrap(),
        (a.eni_id.clone(), "active".to_owned())
    );
    assert_eq!(f.asg_state(&inst.instance_id).await.unwrap(), "InService");
    assert_eq!(
        f.lifecycle_result(&inst.instance_id, "LAUNCHING")
            .await
            .unwrap()
            .as_deref(),
        Some("CONTINUE by CompleteLifecycleAction")
    );
    let statuses = f.lab.info.run_dir.clone();
    let order = f.agent("a").notify.statuses();
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
    let log = f.log("a");
    assert!(log.contains("detach requested from a dead holder"), "{log}");

    // A client in zone A reaches the internet host through the new gateway.
    let stream = f.lab.stream_start("a", 100).await.expect("stream");
    tokio::time::sleep(secs(2)).await;
    let report = f.lab.stream_stop(stream).await.expect("stream report");
    assert!(report.sent >= 150, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
}

/// A restart of a configured gateway (crash, upgrade) makes no API write and no kernel change;
/// a kernel rule or route removed behind the agent's back comes back within an interval.
#[tokio::test(flavor = "multi_thread")]
async fn restart_changes_nothing_and_drift_is_repaired() {
    let mut f = boot_fleet(ScenarioOptions::default()).await;
    let inst = f.instance("a").await.unwrap();
    let ns = inst.ns.clone().unwrap();
    let extra = "[kernel]\nreconcile_interval_ms = 200";
    f.spawn("a", inst.clone(), Spec::new().extra(extra))
        .unwrap();
    f.ready("a").await.unwrap();
    f.kill_agent("a").await;
    let kernel_before = kernel_snapshot(&ns);
    let calls_before = f.lab.api_calls().await.unwrap().len();

    f.spawn("a", inst, Spec::new().extra(extra)).unwrap();
    f.ready("a").await.unwrap();
    let calls = f.lab.api_calls().await.unwrap();
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
    assert!(f.log("a").contains("api_writes=0"), "{}", f.log("a"));
    assert!(f.log("a").contains("changes=0"), "{}", f.log("a"));

    // Drift: amazon-ec2-net-utils (or an operator) flushes our rule and default route.
    let eni_ip = f.zone("a").eni_ip.clone();
    ip(&ns, &["rule", "del", "pref", "7700"]);
    ip(&ns, &["route", "del", "default", "table", "7700"]);
    assert!(!ip(&ns, &["rule", "show"]).contains(&eni_ip));
    wait_for(secs(3), "rule and route restored", || async {
        let rules = ip(&ns, &["rule", "show"]);
        let table = ip(&ns, &["route", "show", "table", "7700"]);
        (rules.contains(&format!("from {eni_ip} lookup 7700")) && table.contains("default via"))
            .then_some(())
    })
    .await
    .expect("the run loop restores the kernel config");
    let log = f.log("a");
    assert!(log.contains("kernel repaired"), "{log}");
}

/// The network manager (or anyone) removing the agent's rule or route is repaired on the kernel's
/// own notification, not at the next reconcile interval (set to a minute here, so the interval
/// cannot be what repairs it).
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_change_to_the_agents_rule_or_table_is_repaired_on_notification() {
    let mut f = boot_fleet(ScenarioOptions::default()).await;
    let inst = f.instance("a").await.unwrap();
    let ns = inst.ns.clone().unwrap();
    let extra = "[kernel]\nreconcile_interval_ms = 60000";
    f.spawn("a", inst, Spec::new().extra(extra)).unwrap();
    f.ready("a").await.unwrap();
    let eni_ip = f.zone("a").eni_ip.clone();
    let restored = || async {
        let rules = ip(&ns, &["rule", "show"]);
        let table = ip(&ns, &["route", "show", "table", "7700"]);
        (rules.contains(&format!("from {eni_ip} lookup 7700")) && table.contains("default via"))
            .then_some(())
    };
    ip(&ns, &["rule", "del", "pref", "7700"]);
    if let Err(e) = wait_for(secs(10), "rule restored", restored).await {
        panic!("the notification brings no repair: {e}\n{}", f.log("a"));
    }
    ip(&ns, &["route", "del", "default", "table", "7700"]);
    if let Err(e) = wait_for(secs(10), "route restored", restored).await {
        panic!("the notification brings no repair: {e}\n{}", f.log("a"));
    }
    let log = f.log("a");
    assert_eq!(log.matches("kernel repaired").count(), 2, "{log}");
}

/// A live holder (the gateway being replaced) keeps the ENI: the new gateway stands by (its
/// launch continued, READY with a standby STATUS), and claims the ENI once the holder is gone.
#[tokio::test(flavor = "multi_thread")]
async fn eni_held_by_a_live_gateway_is_never_stolen_but_waited_for() {
    let mut f = boot_fleet(ScenarioOptions::default()).await;
    let inst = f.instance("a").await.unwrap();
    let holder = f.old_holder("a").await.unwrap();
    let route_before = f.route("a", "0.0.0.0/0").await.unwrap();
    f.spawn("a", inst.clone(), Spec::new()).unwrap();
    f.ready("a").await.unwrap();
    let status = f.agent("a").notify.statuses().join(" | ");
    assert!(
        status.contains(&format!("standby for {}", f.zone("a").az)) && status.contains(&holder),
        "{status}"
    );
    let launched = f
        .lifecycle_result(&inst.instance_id, "LAUNCHING")
        .await
        .unwrap();
    assert!(
        launched
            .as_deref()
            .is_some_and(|r| r.starts_with("CONTINUE ")),
        "{launched:?}"
    );
    // Standing by takes nothing.
    tokio::time::sleep(secs(6)).await;
    assert_eq!(f.eni_holder("a").await.unwrap(), Some(holder.clone()));
    assert_eq!(f.route("a", "0.0.0.0/0").await.unwrap(), route_before);
    // The holder dies: the standby claims the ENI and carries its zone.
    f.lab.terminate(&holder).await.unwrap();
    f.wait_eni_holder("a", &inst.instance_id, secs(30))
        .await
        .unwrap();
    f.wait_status("a", "carrying", secs(20)).await.unwrap();
}

/// On a plain instance (no Auto Scaling group, so nothing to ABANDON and nothing terminates
/// it) the exit code is observable: 4, a failed boot.
#[tokio::test(flavor = "multi_thread")]
async fn eni_of_another_zone_is_refused() {
    let mut f = boot_fleet(ScenarioOptions {
        capacity: 0,
        ..ScenarioOptions::default()
    })
    .await;
    let plain = f.plain_instance("a").await.unwrap();
    let inst = wait_for(WAIT, "plain instance namespace", || async {
        f.lab
            .instances()
            .await
            .ok()?
            .into_iter()
            .find(|i| i.instance_id == plain && i.ns.is_some())
    })
    .await
    .expect("the lab runs the plain instance");
    let (az_a, eni_b) = (f.zone("a").az.clone(), f.zone("b").eni_id.clone());
    let extra = format!("[eni]\nids = {{ \"{az_a}\" = \"{eni_b}\" }}");
    f.spawn("a", inst, Spec::new().extra(extra)).unwrap();
    assert_eq!(f.wait_exit("a").await.unwrap(), Some(4), "{}", f.log("a"));
    let status = f.agent("a").notify.statuses().join(" | ");
    assert!(
        status.contains(&format!("but this instance is in {az_a}")),
        "{status}"
    );
    assert!(!status.contains("ABANDON"), "{status}");
    assert!(
        f.log("a").contains("not in an Auto Scaling group"),
        "{}",
        f.log("a")
    );
    assert_eq!(f.eni_holder("b").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_errors_past_the_deadline_abandon_with_the_call_named() {
    let mut f = boot_fleet(ScenarioOptions::default()).await;
    let inst = f.instance("a").await.unwrap();
    f.lab
        .inject(&Fault::burst(
            "5xx",
            Some("DescribeNetworkInterfaces"),
            None,
        ))
        .await
        .expect("inject 5xx");
    let extra = "[boot]\ntimeout_s = 10\nattach_timeout_s = 10";
    f.spawn("a", inst.clone(), Spec::new().extra(extra))
        .unwrap();
    assert_abandoned(&mut f, &inst, 4, "ec2 DescribeNetworkInterfaces").await;
    f.lab.clear_faults().await.expect("clear faults");
    assert_eq!(f.eni_holder("a").await.unwrap(), None, "nothing attached");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_self_check_abandons_before_any_route_moves() {
    let mut f = boot_fleet(ScenarioOptions::default()).await;
    let inst = f.instance("a").await.unwrap();
    let route_before = f.route("a", "0.0.0.0/0").await.unwrap();
    let extra = format!(
        "[self_check]\nicmp_targets = [\"{SILENT_HOST}\"]\ntimeout_ms = 200\nattempts = 2\n[boot]\ntimeout_s = 10\nattach_timeout_s = 10"
    );
    f.spawn("a", inst.clone(), Spec::new().extra(extra))
        .unwrap();
    let reason = format!("self-check failed: icmp {SILENT_HOST} FAILED");
    assert_abandoned(&mut f, &inst, 4, &reason).await;
    assert_eq!(
        f.route("a", "0.0.0.0/0").await.unwrap(),
        route_before,
        "no route moved"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn imds_down_for_the_whole_deadline_exits_with_the_reason() {
    let mut f = boot_fleet(ScenarioOptions::default()).await;
    let inst = f.instance("a").await.unwrap();
    f.lab
        .imds_fault(&inst.instance_id, "refuse", 0)
        .await
        .expect("IMDS fault");
    let extra = "[boot]\ntimeout_s = 10\nattach_timeout_s = 10";
    f.spawn("a", inst.clone(), Spec::new().extra(extra))
        .unwrap();
    assert_eq!(f.wait_exit("a").await.unwrap(), Some(3), "{}", f.log("a"));
    let status = f.agent("a").notify.statuses();
    assert!(status.iter().any(|s| s == "waiting for IMDS"), "{status:?}");
    assert!(
        status
            .iter()
            .any(|s| s.contains("IMDS: no answer within the boot deadline")),
        "{status:?}"
    );
    // Nothing was claimed or written.
    assert_eq!(f.eni_holder("a").await.unwrap(), None);
    assert_eq!(
        f.asg_state(&inst.instance_id).await.unwrap(),
        "Pending:Wait"
    );
}

/// A boot slower than the heartbeat period keeps the launch action alive with heartbeats.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_boot_heartbeats_the_launch_action() {
    let mut f = boot_fleet(ScenarioOptions::default()).await;
    let inst = f.instance("a").await.unwrap();
    // Every route-table read takes 2.5 s: the reclaim step outlasts two heartbeat periods.
    f.lab
        .inject(&Fault::latency("DescribeRouteTables", 2500, None))
        .await
        .expect("inject latency");
    let extra = "[lifecycle]\nheartbeat_interval_s = 1";
    f.spawn("a", inst.clone(), Spec::new().extra(extra))
        .unwrap();
    f.ready("a").await.unwrap();
    f.lab.clear_faults().await.expect("clear faults");
    let all = f.lab.lifecycle().await.expect("lifecycle");
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
        f.log("a").contains("lifecycle heartbeat recorded"),
        "{}",
        f.log("a")
    );
}

/// What the packaged unit does (User=gateway-agent, AmbientCapabilities=CAP_NET_ADMIN
/// CAP_NET_RAW, NoNewPrivileges=yes), done with setpriv: an unprivileged user holding only
/// those two capabilities claims the ENI, configures the kernel (sysctls included), says READY
/// and carries its zone.
#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_user_with_two_capabilities_runs_the_whole_boot() {
    const NOBODY: u32 = 65_534;
    let mut f = boot_fleet(ScenarioOptions::default()).await;
    let inst = f.instance("a").await.unwrap();
    // Its own directory for the control socket, as RuntimeDirectory= gives the service.
    let dir = PathBuf::from(&f.lab.info.run_dir).join("unprivileged");
    std::fs::create_dir(&dir).unwrap();
    nix::unistd::chown(&dir, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let caps = "-all,+net_admin,+net_raw";
    let extra = format!(
        "[control]\nsocket = \"{}/control.sock\"\n[drain]\nrestart_marker = \"{}\"",
        dir.display(),
        f.restart_marker("unprivileged").display()
    );
    let spec = Spec::new().extra(extra).wrap(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--no-new-privs",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
        &format!("--bounding-set={caps}"),
        "--",
    ]);
    f.spawn("a", inst.clone(), spec).unwrap();
    // systemd's notify socket is writable by every user of the service; so is this one.
    use std::os::unix::fs::PermissionsExt;
    let notify = &f.agent("a").notify.path;
    std::fs::set_permissions(notify, std::fs::Permissions::from_mode(0o777)).unwrap();
    f.ready("a").await.unwrap();

    let pid = f.agent("a").pid();
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

    let a = f.zone("a");
    assert_eq!(
        f.route("a", "0.0.0.0/0").await.unwrap(),
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
    let stream = f.lab.stream_start("a", 100).await.unwrap();
    tokio::time::sleep(secs(2)).await;
    let report = f.lab.stream_stop(stream).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}\n{}", f.log("a"));
    // The operator's socket: owned by the service user, mode 0600 (root still gets in).
    let meta = std::fs::metadata(dir.join("control.sock")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600));
}
