//! The scenario's own options (many private route tables per zone, more managed destinations)
//! and the lab's record of route writes.

use std::time::Instant;

use aws_sdk_ec2::types::Filter;
use gateway_lab::ScenarioOptions;

use crate::{WAIT, attach, lab_with, route_table};

const EXTRA: &str = "10.200.0.0/16";

/// (destination, target ENI, state) of every non-local route of a table, sorted.
async fn routes(lab: &gateway_lab::Lab, rtb: &str) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = route_table(lab, rtb)
        .await
        .routes()
        .iter()
        .filter(|r| r.gateway_id() != Some("local"))
        .map(|r| {
            (
                r.destination_cidr_block().unwrap_or_default().to_string(),
                r.network_interface_id().unwrap_or_default().to_string(),
                r.state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn extra_tables_are_tagged_and_routed_like_the_zone_table() {
    let (lab, sc) = lab_with(ScenarioOptions {
        hooks: false,
        extra_tables: 3,
        destinations: vec![EXTRA.into()],
        ..ScenarioOptions::default()
    })
    .await;
    let ec2 = lab.ec2();
    for z in &sc.zones {
        assert_eq!(z.route_table_ids.len(), 4, "{z:?}");
        assert_eq!(z.route_table_ids[0], z.route_table_id);

        // What the agent's discovery sees: exactly the zone's tables, by the group and zone tags.
        let found = ec2
            .describe_route_tables()
            .filters(
                Filter::builder()
                    .name("tag:gateway-agent:group")
                    .values(&sc.group)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("tag:gateway-agent:zone")
                    .values(&z.az)
                    .build(),
            )
            .send()
            .await
            .expect("DescribeRouteTables by tag");
        let mut ids: Vec<String> = found
            .route_tables()
            .iter()
            .filter_map(|t| t.route_table_id().map(str::to_string))
            .collect();
        ids.sort();
        let mut want = z.route_table_ids.clone();
        want.sort();
        assert_eq!(ids, want);
        let names: Vec<Option<&str>> = found
            .route_tables()
            .iter()
            .map(|t| {
                t.tags()
                    .iter()
                    .find(|t| t.key() == Some("Name"))
                    .and_then(|t| t.value())
            })
            .collect();
        let main_name = format!("{}-private-{}", sc.group, z.name);
        assert!(
            names.iter().all(|n| *n == Some(main_name.as_str())),
            "{names:?}"
        );

        // Created while the ENI was detached: every managed route a blackhole to the ENI.
        for rtb in &z.route_table_ids {
            let want = vec![
                (
                    "0.0.0.0/0".to_string(),
                    z.eni_id.clone(),
                    "blackhole".into(),
                ),
                (EXTRA.to_string(), z.eni_id.clone(), "blackhole".into()),
            ];
            assert_eq!(routes(&lab, rtb).await, want, "{rtb}");
        }
    }

    // Attached, the extra tables follow in moto and in the VPC router's kernel like the main one.
    let a = sc.zone("a");
    let inst = lab.wait_instance(&a.az, WAIT).await.expect("instance a");
    attach(&lab, &a.eni_id, &inst.instance_id).await;
    for rtb in &a.route_table_ids {
        assert!(
            routes(&lab, rtb).await.iter().all(|r| r.2 == "active"),
            "{rtb}"
        );
        let kernel = lab.kernel_routes(rtb).await.expect("kernel routes");
        let mut dsts: Vec<(&str, Option<&str>)> = kernel
            .iter()
            .map(|k| (k.destination.as_str(), k.eni.as_deref()))
            .collect();
        dsts.sort();
        assert_eq!(
            dsts,
            vec![
                ("0.0.0.0/0", Some(a.eni_id.as_str())),
                (EXTRA, Some(a.eni_id.as_str()))
            ],
            "{rtb}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_tables_a_zone_build_in_seconds() {
    crate::require_root();
    let mut lab = gateway_lab::Lab::start().expect("lab starts");
    let started = Instant::now();
    let sc = lab
        .scenario(&ScenarioOptions {
            extra_tables: 49,
            destinations: vec![EXTRA.into()],
            ..ScenarioOptions::default()
        })
        .await
        .expect("scenario builds");
    let took = started.elapsed();
    println!("scenario with 2 zones x 50 tables x 2 destinations built in {took:?}");
    assert!(sc.zones.iter().all(|z| z.route_table_ids.len() == 50));
    // A generous bound: it takes a few seconds; minutes would make the failover bench unusable.
    assert!(took.as_secs() < 30, "built in {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_destinations_are_refused_by_name() {
    crate::require_root();
    let mut lab = gateway_lab::Lab::start().expect("lab starts");
    for (dest, why) in [
        ("10.0.7.0/24", "overlaps the VPC"),
        ("nonsense", "is not an IPv4 CIDR"),
        ("0.0.0.0/0", "listed twice"),
    ] {
        let err = lab
            .scenario(&ScenarioOptions {
                destinations: vec![dest.into()],
                ..ScenarioOptions::default()
            })
            .await
            .expect_err(dest)
            .to_string();
        assert!(
            err.contains("destinations") && err.contains(why),
            "{dest}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn route_writes_are_recorded_with_the_time_they_took_effect() {
    let (lab, sc) = lab_with(ScenarioOptions {
        hooks: false,
        ..ScenarioOptions::default()
    })
    .await;
    let (a, b) = (sc.zone("a"), sc.zone("b"));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    lab.ec2()
        .replace_route()
        .route_table_id(&b.route_table_id)
        .destination_cidr_block("0.0.0.0/0")
        .network_interface_id(&a.eni_id)
        .send()
        .await
        .expect("ReplaceRoute");
    // A refused write is no change: it must not be recorded.
    lab.ec2_with_attempts(1)
        .create_route()
        .route_table_id(&b.route_table_id)
        .destination_cidr_block("0.0.0.0/0")
        .network_interface_id(&b.eni_id)
        .send()
        .await
        .expect_err("CreateRoute onto an existing destination");
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    let changes: Vec<_> = lab
        .route_changes()
        .await
        .expect("route changes")
        .into_iter()
        .filter(|c| c.at >= before)
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let c = &changes[0];
    assert_eq!(c.action, "ReplaceRoute");
    assert_eq!(c.table.as_deref(), Some(b.route_table_id.as_str()));
    assert_eq!(c.destination.as_deref(), Some("0.0.0.0/0"));
    assert_eq!(c.target.as_deref(), Some(a.eni_id.as_str()));
    assert!(c.at <= after, "{c:?} recorded after the answer ({after})");
}
