//! The `aws` profile's mechanisms are real: each test starts its own labd with only the
//! parameters it shows (so the figures it measures are the mechanism's, not noise), through
//! the SDK and the kernel as an agent would see them.

use std::time::{Duration, Instant};

use gateway_lab::{Lab, Scenario, ScenarioOptions, wait_for};

use crate::{
    WAIT, attach, code, default_route, kernel_default, no_hooks, point_default, require_root,
    route_table,
};

async fn lab_env(env: &[(&str, &str)], opts: ScenarioOptions) -> (Lab, Scenario) {
    require_root();
    let mut lab = Lab::start_with_env(env).expect("lab starts");
    let sc = lab.scenario(&opts).await.expect("scenario builds");
    (lab, sc)
}

async fn tag(client: &aws_sdk_ec2::Client, resource: &str, value: &str) -> Result<(), String> {
    client
        .create_tags()
        .resources(resource)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("lab:probe")
                .value(value)
                .build(),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(|e| code(&e))
}

async fn read_tag(lab: &Lab, rtb: &str) -> Option<String> {
    route_table(lab, rtb)
        .await
        .tags()
        .iter()
        .find(|t| t.key() == Some("lab:probe"))
        .and_then(|t| t.value().map(str::to_owned))
}

/// The instance's state name as DescribeInstances reads it (lagging like any read).
async fn instance_state(lab: &Lab, id: &str) -> String {
    let out = lab
        .ec2()
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    out.reservations()[0].instances()[0]
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default()
}

/// Waits until the VPC router's default route of `rtb` reads `want` (an ENI or "blackhole");
/// returns how long that took.
async fn kernel_reads(lab: &Lab, rtb: &str, want: &str) -> Duration {
    let t0 = Instant::now();
    wait_for(WAIT, &format!("{rtb} via {want}"), || async {
        (kernel_default(lab, rtb).await == want).then_some(())
    })
    .await
    .unwrap();
    t0.elapsed()
}

/// Waits until the zone's ENI reads `want` (its attachment status) through the API.
async fn eni_reads<F, Fut>(status: F, want: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (String, Option<String>, Option<String>)>,
{
    wait_for(WAIT, want, || async {
        let (eni, att, _) = status().await;
        (att.as_deref() == Some(want) || eni == want).then_some(())
    })
    .await
    .unwrap();
}

/// One CreateTags bucket (100 burst, 10/s: EC2's documented figures) shared by two callers;
/// DescribeRouteTables, its own bucket, is never refused meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn throttling_is_one_bucket_per_action_shared_by_callers() {
    let env = [
        ("GATEWAY_LAB_AWS_THROTTLE", "1"),
        ("GATEWAY_LAB_AWS_READ_MS", "0"),
        ("GATEWAY_LAB_AWS_WRITE_MS", "0"),
    ];
    let (lab, sc) = lab_env(&env, no_hooks()).await;
    let rtb = sc.zone("a").route_table_id.clone();
    let secs = 4.0;
    let started = Instant::now();
    let caller = |client: aws_sdk_ec2::Client, rtb: String| async move {
        let (mut ok, mut refused, mut other) = (0u32, 0u32, Vec::new());
        while started.elapsed().as_secs_f64() < secs {
            match tag(&client, &rtb, "x").await {
                Ok(()) => ok += 1,
                Err(c) if c == "RequestLimitExceeded" => refused += 1,
                Err(c) => other.push(c),
            }
        }
        (ok, refused, other)
    };
    let one = tokio::spawn(caller(lab.ec2_with_attempts(1), rtb.clone()));
    let two = tokio::spawn(caller(lab.ec2_with_attempts(1), rtb.clone()));
    let reader = lab.ec2_with_attempts(1);
    let mut reads = (0u32, 0u32);
    while started.elapsed().as_secs_f64() < secs {
        match reader
            .describe_route_tables()
            .route_table_ids(&rtb)
            .send()
            .await
        {
            Ok(_) => reads.0 += 1,
            Err(_) => reads.1 += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (a, b) = (one.await.unwrap(), two.await.unwrap());
    let elapsed = started.elapsed().as_secs_f64();
    let ok = a.0 + b.0;
    let expect = 100.0 + 10.0 * elapsed;
    println!(
        "CreateTags over {elapsed:.1} s by two callers: {ok} admitted (bucket 100 + 10/s = {expect:.0}), \
         {} refused; DescribeRouteTables {} admitted, {} refused",
        a.1 + b.1,
        reads.0,
        reads.1
    );
    assert!(a.2.is_empty() && b.2.is_empty(), "{:?} {:?}", a.2, b.2);
    assert!(
        (f64::from(ok) - expect).abs() <= 12.0,
        "{ok} admitted, want about {expect:.0}"
    );
    assert!(a.0 > 0 && b.0 > 0 && a.1 > 0 && b.1 > 0, "{a:?} {b:?}");
    assert_eq!(reads.1, 0, "DescribeRouteTables refused");
    let stats = lab.stats().await.unwrap();
    let refused = &stats["throttling"]["refused"];
    assert!(
        refused["api:ec2:CreateTags"].as_u64().unwrap_or(0) > 0,
        "{refused}"
    );
    assert!(
        refused.get("api:ec2:DescribeRouteTables").is_none(),
        "{refused}"
    );
}

/// Other tools of the account spending a bucket faster than it refills leave a caller throttled.
#[tokio::test(flavor = "multi_thread")]
async fn background_load_spends_the_shared_bucket() {
    let env = [
        ("GATEWAY_LAB_AWS_THROTTLE", "1"),
        ("GATEWAY_LAB_AWS_BACKGROUND", "CreateTags=60"),
    ];
    let (lab, sc) = lab_env(&env, no_hooks()).await;
    let rtb = sc.zone("a").route_table_id.clone();
    // 60/s against a 10/s refill empties the 100 tokens in about 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let client = lab.ec2_with_attempts(1);
    let mut refused = 0;
    for _ in 0..10 {
        if tag(&client, &rtb, "y").await.is_err() {
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The background spends what it owes before each call is admitted: the caller rarely wins.
    println!("with 60 CreateTags/s of background load: {refused}/10 calls refused");
    assert!(refused >= 5, "{refused}/10 refused");
    let stats = lab.stats().await.unwrap();
    assert!(
        stats["throttling"]["taken"]["background:ec2:CreateTags"]
            .as_u64()
            .unwrap_or(0)
            >= 100,
        "{}",
        stats["throttling"]
    );
}

/// Describe* answers lag the writes: a tag and a route written now read old inside the window
/// and new after it.
#[tokio::test(flavor = "multi_thread")]
async fn reads_lag_writes() {
    let env = [("GATEWAY_LAB_AWS_LAG_S", "1.5")];
    let (lab, sc) = lab_env(&env, no_hooks()).await;
    let (a, b) = (sc.zone("a"), sc.zone("b"));
    // A first write, then wait it out: the views start from it.
    tag(&lab.ec2(), &a.route_table_id, "old").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        read_tag(&lab, &a.route_table_id).await.as_deref(),
        Some("old")
    );

    let t0 = Instant::now();
    tag(&lab.ec2(), &a.route_table_id, "new").await.unwrap();
    point_default(&lab, &a.route_table_id, &b.eni_id).await;
    assert_eq!(
        read_tag(&lab, &a.route_table_id).await.as_deref(),
        Some("old")
    );
    assert_eq!(
        default_route(&lab, &a.route_table_id).await.0,
        Some(a.eni_id.clone())
    );
    let seen = wait_for(WAIT, "the new tag", || async {
        (read_tag(&lab, &a.route_table_id).await.as_deref() == Some("new")).then(|| t0.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(
        default_route(&lab, &a.route_table_id).await.0,
        Some(b.eni_id.clone())
    );
    println!(
        "a write became visible to reads after {:.2} s (lag 1.5 s)",
        seen.as_secs_f64()
    );
    assert!(seen >= Duration::from_millis(1400), "{seen:?}");
    assert!(seen < Duration::from_millis(2600), "{seen:?}");
}

/// The lab's terminate stands for TerminateInstances (with SkipOsShutdown): a write, visible
/// to reads LAG_S after it like any other. (Left to labd's ticker, reads showed it at once,
/// then went back to `running` once the ticker recorded a view, up to a second later.)
#[tokio::test(flavor = "multi_thread")]
async fn a_terminate_lags_like_any_write() {
    let env = [
        ("GATEWAY_LAB_AWS_LAG_S", "0.3"),
        ("GATEWAY_LAB_AWS_SHUTDOWN_S", "20"),
    ];
    let (lab, sc) = lab_env(&env, no_hooks()).await;
    let inst = lab.wait_instance(&sc.zone("a").az, WAIT).await.unwrap();
    let state = || instance_state(&lab, &inst.instance_id);
    // Past every earlier write's lag and a tick of labd's: the views are settled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state().await, "running");
    let t0 = Instant::now();
    lab.terminate(&inst.instance_id).await.unwrap();
    assert_eq!(
        state().await,
        "running",
        "a read right after the write lags it"
    );
    let seen = wait_for(WAIT, "shutting-down", || async {
        (state().await == "shutting-down").then(|| t0.elapsed())
    })
    .await
    .unwrap();
    println!(
        "a terminate became visible to reads after {:.2} s (lag 0.3 s)",
        seen.as_secs_f64()
    );
    assert!(seen >= Duration::from_millis(250), "{seen:?}");
    // Not 0.3 s after the ticker's next view (up to 1.4 s after the write).
    assert!(seen < Duration::from_millis(700), "{seen:?}");
}

/// With NONMONOTONIC=1 a later read may show an older view than an earlier one.
#[tokio::test(flavor = "multi_thread")]
async fn nonmonotonic_reads_go_back() {
    let env = [
        ("GATEWAY_LAB_AWS_LAG_S", "0..2"),
        ("GATEWAY_LAB_AWS_NONMONOTONIC", "1"),
    ];
    let (lab, sc) = lab_env(&env, no_hooks()).await;
    let rtb = sc.zone("a").route_table_id.clone();
    for i in 0..20 {
        tag(&lab.ec2(), &rtb, &i.to_string()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = Vec::new();
    for _ in 0..40 {
        let v: i64 = read_tag(&lab, &rtb)
            .await
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        seen.push(v);
    }
    let backwards = seen.windows(2).filter(|w| w[1] < w[0]).count();
    println!("40 reads of a tag written 0..19: {seen:?}; {backwards} went backwards");
    assert!(backwards > 0, "{seen:?}");
}

/// An attachment reads `attaching`, then `attached`; a detach reads `detaching` (still attached,
/// the route still active) then `available`; a forced detach ends at once; a terminated instance
/// stays `shutting-down` with its ENI attached and the route active, then `terminated`.
#[tokio::test(flavor = "multi_thread")]
async fn slow_attach_detach_and_shutting_down() {
    let env = [
        ("GATEWAY_LAB_AWS_ATTACH_S", "2"),
        ("GATEWAY_LAB_AWS_DETACH_S", "3"),
        ("GATEWAY_LAB_AWS_SHUTDOWN_S", "6"),
    ];
    let (lab, sc) = lab_env(&env, no_hooks()).await;
    let a = sc.zone("a");
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();
    let status = |lab: &Lab| {
        let lab_client = lab.ec2();
        let eni = a.eni_id.clone();
        async move {
            let out = lab_client
                .describe_network_interfaces()
                .network_interface_ids(&eni)
                .send()
                .await
                .unwrap();
            let ni = &out.network_interfaces()[0];
            (
                ni.status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                ni.attachment()
                    .and_then(|x| x.status())
                    .map(|s| s.as_str().to_owned()),
                ni.attachment()
                    .and_then(|x| x.attachment_id())
                    .map(str::to_owned),
            )
        }
    };

    let t0 = Instant::now();
    attach(&lab, &a.eni_id, &inst.instance_id).await;
    let (eni_status, att, _) = status(&lab).await;
    assert_eq!(
        (eni_status.as_str(), att.as_deref()),
        ("attaching", Some("attaching"))
    );
    assert_eq!(kernel_default(&lab, &a.route_table_id).await, "blackhole");
    eni_reads(|| status(&lab), "attached").await;
    let attach_s = t0.elapsed().as_secs_f64();
    kernel_reads(&lab, &a.route_table_id, &a.eni_id).await;

    let attachment = status(&lab).await.2.unwrap();
    let t1 = Instant::now();
    lab.ec2()
        .detach_network_interface()
        .attachment_id(&attachment)
        .send()
        .await
        .unwrap();
    let (eni_status, att, _) = status(&lab).await;
    assert_eq!(
        (eni_status.as_str(), att.as_deref()),
        ("detaching", Some("detaching"))
    );
    assert_eq!(kernel_default(&lab, &a.route_table_id).await, a.eni_id);
    // A second detach while the first is in flight is a state error, as on EC2.
    let again = lab
        .ec2_with_attempts(1)
        .detach_network_interface()
        .attachment_id(&attachment)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&again), "IncorrectState");
    eni_reads(|| status(&lab), "available").await;
    let detach_s = t1.elapsed().as_secs_f64();

    // Force: no `detaching` phase.
    attach(&lab, &a.eni_id, &inst.instance_id).await;
    eni_reads(|| status(&lab), "attached").await;
    let attachment = status(&lab).await.2.unwrap();
    lab.ec2()
        .detach_network_interface()
        .attachment_id(&attachment)
        .force(true)
        .send()
        .await
        .unwrap();
    assert_eq!(status(&lab).await.0, "available");

    attach(&lab, &a.eni_id, &inst.instance_id).await;
    kernel_reads(&lab, &a.route_table_id, &a.eni_id).await;
    let t2 = Instant::now();
    lab.ec2()
        .terminate_instances()
        .instance_ids(&inst.instance_id)
        .send()
        .await
        .unwrap();
    let state = || instance_state(&lab, &inst.instance_id);
    assert_eq!(state().await, "shutting-down");
    assert_eq!(status(&lab).await.1.as_deref(), Some("attached"));
    assert_eq!(default_route(&lab, &a.route_table_id).await.1, "active");
    assert_eq!(kernel_default(&lab, &a.route_table_id).await, a.eni_id);
    wait_for(WAIT, "terminated", || async {
        (state().await == "terminated").then_some(())
    })
    .await
    .unwrap();
    let shutdown_s = t2.elapsed().as_secs_f64();
    assert_eq!(status(&lab).await.0, "available");
    assert_eq!(default_route(&lab, &a.route_table_id).await.1, "blackhole");
    println!(
        "attaching {attach_s:.1} s (set 2), detaching {detach_s:.1} s (set 3), \
         shutting-down {shutdown_s:.1} s (set 6)"
    );
    assert!((1.9..3.0).contains(&attach_s), "{attach_s}");
    assert!((2.9..4.0).contains(&detach_s), "{detach_s}");
    assert!((5.9..7.5).contains(&shutdown_s), "{shutdown_s}");
}

/// IMDS shows a hot-plugged ENI IMDS_LAG_S after the attachment; the VPC router applies a route
/// change DATAPLANE_LAG_S after ReplaceRoute answered.
#[tokio::test(flavor = "multi_thread")]
async fn imds_and_data_plane_lag() {
    let env = [
        ("GATEWAY_LAB_AWS_IMDS_LAG_S", "2"),
        ("GATEWAY_LAB_AWS_DATAPLANE_LAG_S", "1.5"),
    ];
    let (lab, sc) = lab_env(&env, no_hooks()).await;
    let (a, b) = (sc.zone("a"), sc.zone("b"));
    let inst = lab.wait_instance(&a.az, WAIT).await.unwrap();
    let ns = inst.ns.clone().unwrap();
    let macs = |ns: String| async move {
        tokio::task::spawn_blocking(move || {
            crate::imds::get(&ns, "/latest/meta-data/network/interfaces/macs/").1
        })
        .await
        .unwrap()
    };
    let mac = a.eni_mac.to_lowercase();
    let t0 = Instant::now();
    attach(&lab, &a.eni_id, &inst.instance_id).await;
    assert!(!macs(ns.clone()).await.to_lowercase().contains(&mac));
    wait_for(WAIT, "the ENI in IMDS", || async {
        macs(ns.clone())
            .await
            .to_lowercase()
            .contains(&mac)
            .then_some(())
    })
    .await
    .unwrap();
    let imds_s = t0.elapsed().as_secs_f64();

    kernel_reads(&lab, &a.route_table_id, &a.eni_id).await;
    let t1 = Instant::now();
    point_default(&lab, &a.route_table_id, &b.eni_id).await;
    // b's ENI is detached: the route goes blackhole, 1.5 s later.
    assert_eq!(kernel_default(&lab, &a.route_table_id).await, a.eni_id);
    kernel_reads(&lab, &a.route_table_id, "blackhole").await;
    let dp_s = t1.elapsed().as_secs_f64();
    println!(
        "IMDS showed the new ENI after {imds_s:.2} s (set 2); the router followed ReplaceRoute after {dp_s:.2} s (set 1.5)"
    );
    assert!((1.9..3.0).contains(&imds_s), "{imds_s}");
    assert!((1.4..2.2).contains(&dp_s), "{dp_s}");
}
