//! Each moto mend, proven against the running server through the AWS SDK.

use std::time::Duration;

use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_autoscaling::types::LifecycleState;
use gateway_lab::{Fault, ScenarioOptions, wait_for};

use crate::{WAIT, attach, code, default_route, kernel_default, lab_with, no_hooks};

#[tokio::test(flavor = "multi_thread")]
async fn route_turns_blackhole_when_eni_detached_or_instance_stopped() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let a = sc.zone("a");
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();

    // Created while the ENI was detached: AWS reports blackhole, and so must the lab.
    assert_eq!(
        default_route(&lab, &a.route_table_id).await,
        (Some(a.eni_id.clone()), "blackhole".into())
    );
    assert_eq!(kernel_default(&lab, &a.route_table_id).await, "blackhole");

    attach(&lab, &a.eni_id, &inst.instance_id).await;
    assert_eq!(default_route(&lab, &a.route_table_id).await.1, "active");
    assert_eq!(kernel_default(&lab, &a.route_table_id).await, a.eni_id);

    lab.ec2()
        .stop_instances()
        .instance_ids(&inst.instance_id)
        .send()
        .await
        .unwrap();
    assert_eq!(default_route(&lab, &a.route_table_id).await.1, "blackhole");
    assert_eq!(kernel_default(&lab, &a.route_table_id).await, "blackhole");

    lab.ec2()
        .start_instances()
        .instance_ids(&inst.instance_id)
        .send()
        .await
        .unwrap();
    assert_eq!(default_route(&lab, &a.route_table_id).await.1, "active");

    let att = lab
        .ec2()
        .describe_network_interfaces()
        .network_interface_ids(&a.eni_id)
        .send()
        .await
        .unwrap();
    let attachment_id = att.network_interfaces()[0]
        .attachment()
        .unwrap()
        .attachment_id()
        .unwrap()
        .to_string();
    lab.ec2()
        .detach_network_interface()
        .attachment_id(attachment_id)
        .force(true)
        .send()
        .await
        .unwrap();
    assert_eq!(default_route(&lab, &a.route_table_id).await.1, "blackhole");
    assert_eq!(kernel_default(&lab, &a.route_table_id).await, "blackhole");
}

#[tokio::test(flavor = "multi_thread")]
async fn terminating_an_instance_releases_its_persistent_eni() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let a = sc.zone("a");
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();
    attach(&lab, &a.eni_id, &inst.instance_id).await;

    lab.ec2()
        .terminate_instances()
        .instance_ids(&inst.instance_id)
        .send()
        .await
        .unwrap();

    let out = lab
        .ec2()
        .describe_network_interfaces()
        .network_interface_ids(&a.eni_id)
        .send()
        .await
        .unwrap();
    let eni = &out.network_interfaces()[0];
    assert_eq!(eni.status().map(|s| s.as_str()), Some("available"));
    assert!(
        eni.attachment().is_none(),
        "terminated holder must leave no attachment: {eni:?}"
    );
    assert_eq!(default_route(&lab, &a.route_table_id).await.1, "blackhole");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_instance_can_be_neither_stopped_nor_started() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let inst = lab.wait_instance(&sc.zone("a").az, WAIT).await.unwrap();
    let ec2 = lab.ec2_with_attempts(1);
    ec2.terminate_instances()
        .instance_ids(&inst.instance_id)
        .send()
        .await
        .unwrap();

    let stop = ec2
        .stop_instances()
        .instance_ids(&inst.instance_id)
        .send()
        .await
        .expect_err("StopInstances of a terminated instance");
    assert_eq!(code(&stop), "IncorrectInstanceState");
    let start = ec2
        .start_instances()
        .instance_ids(&inst.instance_id)
        .send()
        .await
        .expect_err("StartInstances of a terminated instance");
    assert_eq!(code(&start), "IncorrectInstanceState");

    let out = ec2
        .describe_instances()
        .instance_ids(&inst.instance_id)
        .send()
        .await
        .unwrap();
    let state = out.reservations()[0].instances()[0]
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string());
    assert_eq!(state.as_deref(), Some("terminated"));
}

#[tokio::test(flavor = "multi_thread")]
async fn create_route_never_overwrites_an_existing_destination() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let (a, b) = (sc.zone("a"), sc.zone("b"));
    let ec2 = lab.ec2_with_attempts(1);

    let err = ec2
        .create_route()
        .route_table_id(&a.route_table_id)
        .destination_cidr_block("0.0.0.0/0")
        .network_interface_id(&b.eni_id)
        .send()
        .await
        .expect_err("the default route exists");
    assert_eq!(code(&err), "RouteAlreadyExists");
    assert_eq!(
        default_route(&lab, &a.route_table_id).await.0,
        Some(a.eni_id.clone()),
        "left unchanged"
    );

    ec2.create_route()
        .route_table_id(&a.route_table_id)
        .destination_cidr_block("192.168.0.0/16")
        .network_interface_id(&b.eni_id)
        .send()
        .await
        .expect("a new destination is created");
    let err = ec2
        .create_route()
        .route_table_id(&a.route_table_id)
        .destination_cidr_block("192.168.0.0/16")
        .network_interface_id(&a.eni_id)
        .send()
        .await
        .expect_err("second create of the same destination");
    assert_eq!(code(&err), "RouteAlreadyExists");
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_network_interface_refuses_like_aws() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let (a, b) = (sc.zone("a"), sc.zone("b"));
    let ia = lab.wait_instance(&a.az, WAIT).await.unwrap();
    let ib = lab.wait_instance(&b.az, WAIT).await.unwrap();
    let ec2 = lab.ec2_with_attempts(1);
    attach(&lab, &a.eni_id, &ia.instance_id).await;

    let try_attach = |eni: String, inst: String, index: i32| {
        let ec2 = ec2.clone();
        async move {
            ec2.attach_network_interface()
                .network_interface_id(eni)
                .instance_id(inst)
                .device_index(index)
                .send()
                .await
        }
    };
    let err = try_attach(a.eni_id.clone(), ib.instance_id.clone(), 1)
        .await
        .expect_err("in use");
    assert_eq!(code(&err), "InvalidNetworkInterface.InUse");

    let err = try_attach(b.eni_id.clone(), ia.instance_id.clone(), 2)
        .await
        .expect_err("other zone");
    assert_eq!(code(&err), "InvalidParameterCombination");

    let spare = ec2
        .create_network_interface()
        .subnet_id(&a.public_subnet_id)
        .send()
        .await
        .unwrap()
        .network_interface()
        .unwrap()
        .network_interface_id()
        .unwrap()
        .to_string();
    let err = try_attach(spare.clone(), ia.instance_id.clone(), 1)
        .await
        .expect_err("index taken");
    assert_eq!(code(&err), "InvalidParameterValue");

    ec2.terminate_instances()
        .instance_ids(&ib.instance_id)
        .send()
        .await
        .unwrap();
    let err = try_attach(b.eni_id.clone(), ib.instance_id.clone(), 1)
        .await
        .expect_err("terminated");
    assert_eq!(code(&err), "IncorrectInstanceState");
}

async fn lifecycle_state(lab: &gateway_lab::Lab, instance: &str) -> Option<String> {
    let out = lab
        .autoscaling()
        .describe_auto_scaling_instances()
        .instance_ids(instance)
        .send()
        .await
        .expect("DescribeAutoScalingInstances");
    out.auto_scaling_instances()
        .first()
        .and_then(|i| i.lifecycle_state().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn launch_waits_in_pending_wait_until_completed() {
    let (lab, sc) = lab_with(ScenarioOptions::default()).await;
    let a = sc.zone("a");
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();
    assert_eq!(
        lifecycle_state(&lab, &inst.instance_id).await.as_deref(),
        Some("Pending:Wait")
    );
    let asg = lab.autoscaling();

    let err = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name(&a.asg_name)
        .lifecycle_hook_name("gateway-launch")
        .lifecycle_action_result("CONTINUE")
        .lifecycle_action_token("00000000-0000-0000-0000-000000000000")
        .send()
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), Some("ValidationError"));
    let err = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name(&a.asg_name)
        .lifecycle_hook_name("gateway-launch")
        .lifecycle_action_result("CONTINUE")
        .instance_id("i-00000000000000000")
        .send()
        .await
        .expect_err("wrong instance");
    assert_eq!(err.code(), Some("ValidationError"));
    assert!(
        err.message()
            .unwrap_or("")
            .contains("No active Lifecycle Action"),
        "{err:?}"
    );
    assert_eq!(
        lifecycle_state(&lab, &inst.instance_id).await.as_deref(),
        Some("Pending:Wait")
    );

    asg.complete_lifecycle_action()
        .auto_scaling_group_name(&a.asg_name)
        .lifecycle_hook_name("gateway-launch")
        .lifecycle_action_result("CONTINUE")
        .instance_id(&inst.instance_id)
        .send()
        .await
        .expect("CompleteLifecycleAction CONTINUE");
    assert_eq!(
        lifecycle_state(&lab, &inst.instance_id).await.as_deref(),
        Some("InService")
    );
    let history = lab.lifecycle().await.unwrap();
    let done = history["history"].as_array().unwrap();
    assert!(
        done.iter()
            .any(|a| a["instance_id"] == inst.instance_id.as_str()
                && a["result"] == "CONTINUE"
                && a["how"] == "CompleteLifecycleAction"),
        "{history}"
    );
    // Completing twice is an error, as in AWS.
    let err = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name(&a.asg_name)
        .lifecycle_hook_name("gateway-launch")
        .lifecycle_action_result("CONTINUE")
        .instance_id(&inst.instance_id)
        .send()
        .await
        .expect_err("no open action any more");
    assert_eq!(err.code(), Some("ValidationError"));
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_timeout_applies_the_default_result_and_heartbeats_extend_it() {
    let (lab, sc) = lab_with(ScenarioOptions {
        zones: vec!["a".into()],
        heartbeat_timeout: 2,
        default_result: "ABANDON".into(),
        ..ScenarioOptions::default()
    })
    .await;
    let a = sc.zone("a");
    let first = lab.wait_instance(&a.az, WAIT).await.unwrap();
    let asg = lab.autoscaling();

    // Heartbeats every 0.5 s keep it waiting past its 2 s timeout.
    for _ in 0..7 {
        asg.record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&a.asg_name)
            .lifecycle_hook_name("gateway-launch")
            .instance_id(&first.instance_id)
            .send()
            .await
            .expect("RecordLifecycleActionHeartbeat");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        lifecycle_state(&lab, &first.instance_id).await.as_deref(),
        Some("Pending:Wait")
    );

    // Then silence: ABANDON terminates it and the group launches a replacement.
    let replacement = wait_for(WAIT, "a replacement instance", || async {
        lab.instance_in(&a.az)
            .await
            .ok()
            .filter(|i| i.instance_id != first.instance_id)
    })
    .await
    .unwrap();
    let out = lab
        .ec2()
        .describe_instances()
        .instance_ids(&first.instance_id)
        .send()
        .await
        .unwrap();
    let state = out.reservations()[0].instances()[0]
        .state()
        .unwrap()
        .name()
        .unwrap()
        .as_str()
        .to_string();
    assert_eq!(state, "terminated");
    assert_eq!(
        lifecycle_state(&lab, &replacement.instance_id)
            .await
            .as_deref(),
        Some("Pending:Wait")
    );
    let history = lab.lifecycle().await.unwrap();
    assert!(
        history["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["instance_id"] == first.instance_id.as_str()
                && h["result"] == "ABANDON"
                && h["how"] == "HeartbeatTimeout"
                && h["heartbeats"].as_u64() == Some(7)),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn termination_waits_in_terminating_wait_and_imds_says_terminated() {
    let (lab, sc) = lab_with(ScenarioOptions {
        zones: vec!["a".into()],
        ..ScenarioOptions::default()
    })
    .await;
    let a = sc.zone("a");
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();
    let asg = lab.autoscaling();
    asg.complete_lifecycle_action()
        .auto_scaling_group_name(&a.asg_name)
        .lifecycle_hook_name("gateway-launch")
        .lifecycle_action_result("CONTINUE")
        .instance_id(&inst.instance_id)
        .send()
        .await
        .unwrap();

    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&inst.instance_id)
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .expect("TerminateInstanceInAutoScalingGroup");
    assert_eq!(
        lifecycle_state(&lab, &inst.instance_id).await.as_deref(),
        Some("Terminating:Wait")
    );
    let still = lab.instances().await.unwrap();
    assert!(
        still
            .iter()
            .any(|i| i.instance_id == inst.instance_id && i.state == "running")
    );
    let target = crate::imds::get(
        inst.ns.as_deref().unwrap(),
        "/latest/meta-data/autoscaling/target-lifecycle-state",
    );
    assert_eq!(target, (200, "Terminated".to_string()));

    asg.complete_lifecycle_action()
        .auto_scaling_group_name(&a.asg_name)
        .lifecycle_hook_name("gateway-terminate")
        .lifecycle_action_result("CONTINUE")
        .instance_id(&inst.instance_id)
        .send()
        .await
        .expect("CompleteLifecycleAction on termination");
    let gone = wait_for(WAIT, "the instance terminated and replaced", || async {
        let all = lab.instances().await.ok()?;
        let old = all.iter().find(|i| i.instance_id == inst.instance_id)?;
        let new = all
            .iter()
            .find(|i| i.instance_id != inst.instance_id && i.state == "running")?;
        (old.state == "terminated").then(|| new.clone())
    })
    .await
    .unwrap();
    assert_eq!(gone.lifecycle_state.as_deref(), Some("Pending:Wait"));
    assert_eq!(
        lifecycle_state(&lab, &inst.instance_id).await,
        None,
        "left the group"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_instance_is_replaced_through_the_termination_hook() {
    let (lab, sc) = lab_with(ScenarioOptions {
        zones: vec!["a".into()],
        ..ScenarioOptions::default()
    })
    .await;
    let a = sc.zone("a");
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();
    lab.autoscaling()
        .set_instance_health()
        .instance_id(&inst.instance_id)
        .health_status("Unhealthy")
        .send()
        .await
        .unwrap();
    assert_eq!(
        lifecycle_state(&lab, &inst.instance_id).await.as_deref(),
        Some("Terminating:Wait")
    );
    let out = lab
        .autoscaling()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&a.asg_name)
        .send()
        .await
        .unwrap();
    let states: Vec<LifecycleState> = out.auto_scaling_groups()[0]
        .instances()
        .iter()
        .filter_map(|i| i.lifecycle_state().cloned())
        .collect();
    assert!(
        states.contains(&LifecycleState::PendingWait),
        "a replacement is launching: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_filter_is_an_aws_error_not_a_500() {
    let (lab, _sc) = lab_with(no_hooks()).await;
    let err = lab
        .ec2_with_attempts(1)
        .describe_route_tables()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("no-such-filter")
                .values("x")
                .build(),
        )
        .send()
        .await
        .expect_err("an unknown filter");
    assert_eq!(code(&err), "InvalidParameterValue");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_injection_throttles_fails_and_delays_on_demand() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let a = sc.zone("a");
    let once = lab.ec2_with_attempts(1);
    lab.inject(&Fault {
        action: Some("ReplaceRoute".into()),
        kind: "throttle".into(),
        count: Some(2),
        latency_ms: 0,
        status: None,
    })
    .await
    .unwrap();
    let replace = || {
        once.replace_route()
            .route_table_id(&a.route_table_id)
            .destination_cidr_block("0.0.0.0/0")
            .network_interface_id(&a.eni_id)
            .send()
    };
    for _ in 0..2 {
        let err = replace().await.expect_err("throttled");
        assert_eq!(code(&err), "RequestLimitExceeded");
    }
    replace().await.expect("the third call passes");

    // A burst of two 503s is absorbed by the SDK's standard retry (3 attempts).
    lab.inject(&Fault {
        action: Some("DescribeRouteTables".into()),
        kind: "5xx".into(),
        count: Some(2),
        latency_ms: 0,
        status: None,
    })
    .await
    .unwrap();
    lab.ec2()
        .describe_route_tables()
        .send()
        .await
        .expect("retried through the 5xx burst");

    lab.inject(&Fault {
        action: Some("DescribeAutoScalingGroups".into()),
        kind: "throttle".into(),
        count: Some(1),
        latency_ms: 0,
        status: None,
    })
    .await
    .unwrap();
    let asg = lab
        .autoscaling()
        .config()
        .to_builder()
        .retry_config(
            aws_sdk_autoscaling::config::retry::RetryConfig::standard().with_max_attempts(1),
        )
        .build();
    let err = aws_sdk_autoscaling::Client::from_conf(asg)
        .describe_auto_scaling_groups()
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), Some("Throttling"));

    lab.inject(&Fault {
        action: Some("DescribeVpcs".into()),
        kind: "latency".into(),
        count: Some(1),
        latency_ms: 300,
        status: None,
    })
    .await
    .unwrap();
    let t = std::time::Instant::now();
    once.describe_vpcs().send().await.expect("slow but fine");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "the injected latency was applied"
    );
}
