//! The cloud adapters (`SdkEc2`, `SdkAutoscaling`) against the lab's moto, through the real SDK
//! with the agent's own retry and timeout policy. Run as root: every test starts its own lab.

use std::time::Duration;

use gateway_agent::cloud::{
    self, AsgInstance, Autoscaling, CloudError, Ec2, EniStatus, Health, InstanceState,
    LifecycleResult, LifecycleTransition, Route, RouteState, RouteTable, RouteTarget,
    SdkAutoscaling, SdkEc2,
};
use gateway_lab::fleet::Fleet;
use gateway_lab::{Fault, Lab, REGION, Scenario, ScenarioOptions};

const WAIT: Duration = Duration::from_secs(10);
const GROUP_TAG: &str = "gateway-agent:group";
const ZONE_TAG: &str = "gateway-agent:zone";

struct Env {
    lab: Lab,
    sc: Scenario,
    ec2: SdkEc2,
    asg: SdkAutoscaling,
}

/// The lab's fleet fixture without agents, and the adapters on its endpoint.
async fn env() -> Env {
    let Fleet { lab, sc, .. } = Fleet::new(&ScenarioOptions::default()).await.unwrap();
    let conf = cloud::load_with_credentials(REGION, Some(&lab.info.endpoint), "lab", "lab").await;
    Env {
        ec2: SdkEc2::new(&conf),
        asg: SdkAutoscaling::new(&conf),
        lab,
        sc,
    }
}

fn expect_err<T: std::fmt::Debug>(r: cloud::Result<T>) -> CloudError {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}

/// The lab's pending API faults, by action (a counted fault disappears when used up).
async fn faults(lab: &Lab) -> serde_json::Value {
    reqwest::get(format!("{}/lab/faults", lab.info.endpoint))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn table(ec2: &SdkEc2, rtb: &str) -> RouteTable {
    let mut tables = ec2.describe_route_tables(&[rtb]).await.unwrap();
    assert_eq!(tables.len(), 1, "{tables:?}");
    tables.remove(0)
}

/// `rtb`'s 0.0.0.0/0, read back through the adapter.
async fn default_route(ec2: &SdkEc2, rtb: &str) -> Route {
    table(ec2, rtb)
        .await
        .route("0.0.0.0/0")
        .cloned()
        .expect("a default route")
}

#[tokio::test(flavor = "multi_thread")]
async fn finds_the_zone_eni_by_tags_and_describes_instances() {
    let Env { lab, sc, ec2, .. } = env().await;
    let a = sc.zone("a");
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();

    let enis = ec2
        .find_enis(&[(GROUP_TAG, "lab"), (ZONE_TAG, &a.az)])
        .await
        .unwrap();
    assert_eq!(enis.len(), 1, "{enis:?}");
    let eni = &enis[0];
    assert_eq!(eni.id, a.eni_id);
    assert_eq!(eni.az, a.az);
    assert_eq!(eni.subnet_id, a.public_subnet_id);
    assert_eq!(eni.mac, a.eni_mac.to_ascii_lowercase());
    assert_eq!(
        eni.private_ips,
        vec![a.eni_ip.parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(eni.status, EniStatus::Available);
    assert_eq!(eni.attachment, None);
    assert!(eni.source_dest_check);
    assert_eq!(eni.tags.get(ZONE_TAG), Some(&a.az));
    assert_eq!(eni.tags.get(GROUP_TAG).map(String::as_str), Some("lab"));

    assert_eq!(
        ec2.describe_eni(&a.eni_id).await.unwrap().as_ref(),
        Some(eni)
    );
    assert_eq!(
        ec2.describe_eni("eni-0123456789abcdef0").await.unwrap(),
        None
    );
    let none = ec2
        .find_enis(&[(GROUP_TAG, "lab"), (ZONE_TAG, "us-east-1z")])
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");

    let info = ec2
        .describe_instance(&inst.instance_id)
        .await
        .unwrap()
        .expect("the instance exists");
    assert_eq!(info.id, inst.instance_id);
    assert_eq!(info.state, InstanceState::Running);
    assert_eq!(info.az, a.az);
    assert_eq!(
        ec2.describe_instance("i-0123456789abcdef0").await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_refuse_detach_and_source_dest_check() {
    let Env { lab, sc, ec2, .. } = env().await;
    let (a, b) = (sc.zone("a"), sc.zone("b"));
    let inst_a = lab.wait_instance(&a.az, WAIT).await.unwrap();
    let inst_b = lab.wait_instance(&b.az, WAIT).await.unwrap();

    let attachment_id = ec2
        .attach_eni(&a.eni_id, &inst_a.instance_id, 1)
        .await
        .unwrap();
    let eni = ec2.describe_eni(&a.eni_id).await.unwrap().unwrap();
    assert_eq!(eni.status, EniStatus::InUse);
    let att = eni.attachment.expect("attached");
    assert_eq!(att.id, attachment_id);
    assert_eq!(
        att.instance_id.as_deref(),
        Some(inst_a.instance_id.as_str())
    );
    assert_eq!(att.device_index, 1);

    let err = expect_err(ec2.attach_eni(&a.eni_id, &inst_b.instance_id, 1).await);
    assert_eq!(err.code(), Some("InvalidNetworkInterface.InUse"), "{err}");
    assert!(!err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("ec2 AttachNetworkInterface {}", a.eni_id)),
        "{text}"
    );
    assert!(text.contains(&inst_b.instance_id), "{text}");

    ec2.detach_eni(&attachment_id, false).await.unwrap();
    let eni = ec2.describe_eni(&a.eni_id).await.unwrap().unwrap();
    assert_eq!(eni.status, EniStatus::Available);
    assert_eq!(eni.attachment, None);

    ec2.set_source_dest_check(&a.eni_id, false).await.unwrap();
    let eni = ec2.describe_eni(&a.eni_id).await.unwrap().unwrap();
    assert!(!eni.source_dest_check);
    ec2.set_source_dest_check(&a.eni_id, true).await.unwrap();
    assert!(
        ec2.describe_eni(&a.eni_id)
            .await
            .unwrap()
            .unwrap()
            .source_dest_check
    );

    let err = expect_err(ec2.detach_eni("eni-attach-0123456789abcdef0", true).await);
    assert!(
        err.to_string()
            .starts_with("ec2 DetachNetworkInterface eni-attach-0123456789abcdef0 (force): "),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn route_tables_by_tags_routes_move_and_tags_read_back() {
    let Env { lab, sc, ec2, .. } = env().await;
    let (a, b) = (sc.zone("a"), sc.zone("b"));
    let inst_a = lab.wait_instance(&a.az, WAIT).await.unwrap();

    let tables = ec2
        .find_route_tables(&[(GROUP_TAG, "lab"), (ZONE_TAG, &a.az)])
        .await
        .unwrap();
    assert_eq!(tables.len(), 1, "{tables:?}");
    let t = &tables[0];
    assert_eq!(t.id, a.route_table_id);
    assert_eq!(t.vpc_id, sc.vpc_id);
    assert_eq!(t.tags.get(ZONE_TAG), Some(&a.az));
    let default = t.route("0.0.0.0/0").expect("a default route");
    assert_eq!(default.target, RouteTarget::Eni(a.eni_id.clone()));
    assert_eq!(default.state, RouteState::Blackhole, "the ENI is detached");
    let local = t.route("10.0.0.0/16").expect("the local route");
    assert_eq!(local.target, RouteTarget::Gateway("local".into()));

    ec2.attach_eni(&a.eni_id, &inst_a.instance_id, 1)
        .await
        .unwrap();
    let default = default_route(&ec2, &a.route_table_id).await;
    assert_eq!(
        (default.target, default.state),
        (RouteTarget::Eni(a.eni_id.clone()), RouteState::Active)
    );

    // Take zone a's route over to zone b's (detached) ENI, then back.
    ec2.replace_route(&a.route_table_id, "0.0.0.0/0", &b.eni_id)
        .await
        .unwrap();
    let default = default_route(&ec2, &a.route_table_id).await;
    assert_eq!(
        (default.target, default.state),
        (RouteTarget::Eni(b.eni_id.clone()), RouteState::Blackhole)
    );
    ec2.replace_route(&a.route_table_id, "0.0.0.0/0", &a.eni_id)
        .await
        .unwrap();
    assert_eq!(
        default_route(&ec2, &a.route_table_id).await.state,
        RouteState::Active
    );

    let err = expect_err(
        ec2.create_route(&a.route_table_id, "0.0.0.0/0", &a.eni_id)
            .await,
    );
    assert_eq!(err.code(), Some("RouteAlreadyExists"), "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().starts_with(&format!(
            "ec2 CreateRoute {} 0.0.0.0/0 -> {}: RouteAlreadyExists",
            a.route_table_id, a.eni_id
        )),
        "{err}"
    );

    // A new IPv4 destination, then an IPv6 one (DestinationIpv6CidrBlock).
    ec2.create_route(&a.route_table_id, "192.168.0.0/16", &a.eni_id)
        .await
        .unwrap();
    ec2.create_route(&a.route_table_id, "::/0", &a.eni_id)
        .await
        .unwrap();
    ec2.replace_route(&a.route_table_id, "::/0", &b.eni_id)
        .await
        .unwrap();
    let t = table(&ec2, &a.route_table_id).await;
    assert_eq!(
        t.route("192.168.0.0/16").unwrap().target,
        RouteTarget::Eni(a.eni_id.clone())
    );
    assert_eq!(
        t.route("::/0").unwrap().target,
        RouteTarget::Eni(b.eni_id.clone())
    );

    // A lease tag, read back through the tag search the agent uses.
    let lease = format!("{}/7/1700000000000", inst_a.instance_id);
    ec2.create_tags(&[&a.route_table_id], &[("gateway-agent:lease", &lease)])
        .await
        .unwrap();
    let tables = ec2
        .find_route_tables(&[(GROUP_TAG, "lab"), ("gateway-agent:lease", &lease)])
        .await
        .unwrap();
    assert_eq!(tables.len(), 1, "{tables:?}");
    assert_eq!(tables[0].id, a.route_table_id);
    assert_eq!(
        tables[0].tags.get("gateway-agent:lease"),
        Some(&lease),
        "{tables:?}"
    );

    // Several IDs: the missing one is left out, the others are kept.
    let both = ec2
        .describe_route_tables(&[
            &a.route_table_id,
            "rtb-0123456789abcdef0",
            &b.route_table_id,
        ])
        .await
        .unwrap();
    let mut ids: Vec<&str> = both.iter().map(|t| t.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![a.route_table_id.as_str(), b.route_table_id.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(
        ec2.describe_route_tables(&["rtb-0123456789abcdef0"])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(ec2.describe_route_tables(&[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_hook_launch_wait_then_in_service() {
    let Env { lab, sc, asg, .. } = env().await;
    let a = sc.zone("a");
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();
    let id = inst.instance_id.as_str();

    assert_eq!(
        asg.asg_instance(id).await.unwrap(),
        Some(AsgInstance {
            group: a.asg_name.clone(),
            lifecycle_state: "Pending:Wait".into(),
            health: Health::Healthy,
        })
    );
    assert_eq!(asg.asg_instance("i-0123456789abcdef0").await.unwrap(), None);

    let mut hooks = asg.lifecycle_hooks(&a.asg_name).await.unwrap();
    hooks.sort_by(|x, y| x.name.cmp(&y.name));
    let hooks: Vec<(&str, &LifecycleTransition)> = hooks
        .iter()
        .map(|h| (h.name.as_str(), &h.transition))
        .collect();
    assert_eq!(
        hooks,
        vec![
            ("gateway-launch", &LifecycleTransition::Launching),
            ("gateway-terminate", &LifecycleTransition::Terminating),
        ]
    );

    asg.record_heartbeat(&a.asg_name, "gateway-launch", id)
        .await
        .unwrap();
    asg.complete_lifecycle_action(&a.asg_name, "gateway-launch", id, LifecycleResult::Continue)
        .await
        .unwrap();
    assert_eq!(
        asg.asg_instance(id).await.unwrap().unwrap().lifecycle_state,
        "InService"
    );

    // Nothing left to complete: AWS's ValidationError, naming the call.
    let err = expect_err(
        asg.complete_lifecycle_action(&a.asg_name, "gateway-launch", id, LifecycleResult::Continue)
            .await,
    );
    assert_eq!(err.code(), Some("ValidationError"), "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().starts_with(&format!(
            "autoscaling CompleteLifecycleAction {} gateway-launch {id} CONTINUE: ",
            a.asg_name
        )),
        "{err}"
    );

    // Unhealthy: the group starts replacing it, held by the termination hook.
    asg.set_instance_health(id, false).await.unwrap();
    let now = asg.asg_instance(id).await.unwrap().unwrap();
    assert!(now.lifecycle_state.starts_with("Terminating"), "{now:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_is_absorbed_and_5xx_surfaces_as_retryable() {
    let Env { lab, sc, ec2, asg } = env().await;
    let (a, b) = (sc.zone("a"), sc.zone("b"));
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();

    // An attempt that hangs is cut at ATTEMPT_TIMEOUT and tried again.
    lab.inject(&Fault::latency("DescribeRouteTables", 5_000, Some(1)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let t = table(&ec2, &a.route_table_id).await;
    let took = started.elapsed();
    assert_eq!(t.id, a.route_table_id);
    assert!(
        took >= cloud::ATTEMPT_TIMEOUT && took < Duration::from_secs(5),
        "{took:?}"
    );

    lab.inject(&Fault::burst("throttle", Some("ReplaceRoute"), Some(2)))
        .await
        .unwrap();
    ec2.replace_route(&a.route_table_id, "0.0.0.0/0", &b.eni_id)
        .await
        .expect("two throttled attempts are retried by the SDK");
    assert!(
        faults(&lab).await.get("ReplaceRoute").is_none(),
        "both throttles were used"
    );
    assert_eq!(
        default_route(&ec2, &a.route_table_id).await.target,
        RouteTarget::Eni(b.eni_id.clone())
    );

    // Auto Scaling throttles with a 400 `Throttling`: absorbed the same way.
    lab.inject(&Fault::burst(
        "throttle",
        Some("DescribeAutoScalingInstances"),
        Some(2),
    ))
    .await
    .unwrap();
    assert!(asg.asg_instance(&inst.instance_id).await.unwrap().is_some());
    assert!(
        faults(&lab)
            .await
            .get("DescribeAutoScalingInstances")
            .is_none()
    );

    lab.inject(&Fault::burst("5xx", Some("ReplaceRoute"), Some(10)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = expect_err(
        ec2.replace_route(&a.route_table_id, "0.0.0.0/0", &a.eni_id)
            .await,
    );
    let took = started.elapsed();
    // The SDK made exactly MAX_ATTEMPTS attempts, within the operation timeout.
    let left = 10 - u64::from(cloud::MAX_ATTEMPTS);
    assert_eq!(faults(&lab).await["ReplaceRoute"]["count"], left);
    assert!(took < cloud::OPERATION_TIMEOUT, "{took:?}");
    lab.clear_faults().await.unwrap();
    assert!(err.is_retryable(), "{err}");
    assert!(!err.is_throttling(), "{err}");
    assert_eq!(err.code(), Some("Unavailable"), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "ec2 ReplaceRoute {} 0.0.0.0/0 -> {}: Unavailable: ",
            a.route_table_id, a.eni_id
        )),
        "{err}"
    );
    // Nothing changed.
    assert_eq!(
        default_route(&ec2, &a.route_table_id).await.target,
        RouteTarget::Eni(b.eni_id.clone())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_api_is_a_retryable_error_naming_the_call() {
    // A port nothing listens on: connection refused on every attempt.
    let conf = cloud::load_with_credentials(REGION, Some("http://127.0.0.1:9"), "lab", "lab").await;
    let ec2 = SdkEc2::new(&conf);
    let err = expect_err(ec2.describe_eni("eni-0123456789abcdef0").await);
    assert!(matches!(err, CloudError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.code(), None);
    assert!(
        err.to_string()
            .starts_with("ec2 DescribeNetworkInterfaces eni-0123456789abcdef0: "),
        "{err}"
    );
}
