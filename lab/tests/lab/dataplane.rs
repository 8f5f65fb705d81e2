//! Packets follow the moto route tables through real kernels.

use std::process::Command;
use std::time::Duration;

use gateway_lab::wait_for;

use crate::{
    WAIT, api_reachable, attach, default_route, kernel_default, lab_with, no_hooks, point_default,
};

/// Packets received on an interface inside a namespace.
fn rx_packets(ns: &str, dev: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", "dev", dev])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counters for {dev} in {ns}: {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn client_packets_follow_the_route_table_and_stop_at_a_blackhole() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let (a, b) = (sc.zone("a"), sc.zone("b"));
    let ia = lab.wait_instance(&a.az, WAIT).await.unwrap();
    let ib = lab.wait_instance(&b.az, WAIT).await.unwrap();
    attach(&lab, &a.eni_id, &ia.instance_id).await;
    attach(&lab, &b.eni_id, &ib.instance_id).await;
    lab.forwarding(&ia.instance_id, true).await.unwrap();
    lab.forwarding(&ib.instance_id, true).await.unwrap();
    let (nsa, nsb) = (ia.ns.clone().unwrap(), ib.ns.clone().unwrap());

    let stream = lab.stream_start("a", 200).await.unwrap();
    wait_for(WAIT, "packets through gateway a", || async {
        lab.stream_report(stream)
            .await
            .ok()
            .filter(|r| r.delivered >= 50)
    })
    .await
    .unwrap();

    // Move zone a's route to zone b's ENI: the packets move with it.
    let (a0, b0) = (rx_packets(&nsa, "ens6"), rx_packets(&nsb, "ens6"));
    point_default(&lab, &a.route_table_id, &b.eni_id).await;
    assert_eq!(
        kernel_default(&lab, &a.route_table_id).await,
        b.eni_id,
        "mirrored when the call returns"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (a1, b1) = (rx_packets(&nsa, "ens6"), rx_packets(&nsb, "ens6"));
    assert!(
        b1 - b0 >= 100,
        "gateway b carries zone a now: {} packets in 1 s at 200/s",
        b1 - b0
    );
    assert!(
        a1 - a0 <= 5,
        "gateway a no longer does: {} packets",
        a1 - a0
    );
    let before = lab.stream_report(stream).await.unwrap();
    assert!(before.delivered >= 150, "{before:?}");

    // Detach the ENI the route points at: the route is a blackhole and the packets stop.
    let att = lab
        .ec2()
        .describe_network_interfaces()
        .network_interface_ids(&b.eni_id)
        .send()
        .await
        .unwrap();
    let attachment = att.network_interfaces()[0]
        .attachment()
        .unwrap()
        .attachment_id()
        .unwrap()
        .to_string();
    lab.ec2()
        .detach_network_interface()
        .attachment_id(attachment)
        .send()
        .await
        .unwrap();
    assert_eq!(
        default_route(&lab, &a.route_table_id).await,
        (Some(b.eni_id.clone()), "blackhole".into())
    );
    assert_eq!(kernel_default(&lab, &a.route_table_id).await, "blackhole");
    let d0 = lab.stream_report(stream).await.unwrap().delivered;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = lab.stream_stop(stream).await.unwrap();
    assert!(
        r.delivered - d0 <= 2,
        "at most the packets in flight land: {r:?} (was {d0})"
    );
    assert!(r.lost >= 150, "a second of a 200/s stream is lost: {r:?}");
    assert!(r.longest_gap_ms >= 900.0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_is_reached_over_the_vpc_and_lost_with_the_uplink() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let ia = lab.wait_instance(&sc.zone("a").az, WAIT).await.unwrap();
    let ib = lab.wait_instance(&sc.zone("b").az, WAIT).await.unwrap();
    let (nsa, nsb) = (ia.ns.clone().unwrap(), ib.ns.clone().unwrap());
    assert!(api_reachable(&nsa));

    lab.cut(&ia.instance_id, &["uplink"]).await.unwrap();
    assert!(!api_reachable(&nsa), "no uplink, no API");
    assert!(api_reachable(&nsb), "the other gateway is unaffected");
    lab.restore(&ia.instance_id, &["uplink"]).await.unwrap();
    assert!(api_reachable(&nsa));

    // A partition between one gateway and the API endpoint only.
    let ip_a = ia.private_ip.clone().unwrap();
    lab.partition(&ip_a, "198.51.100.2").await.unwrap();
    assert!(!api_reachable(&nsa));
    assert!(api_reachable(&nsb));
    lab.heal(&ip_a, "198.51.100.2").await.unwrap();
    assert!(api_reachable(&nsa));
}

#[tokio::test(flavor = "multi_thread")]
async fn hang_stops_the_processes_and_the_traffic() {
    let (lab, sc) = lab_with(no_hooks()).await;
    let ia = lab.wait_instance(&sc.zone("a").az, WAIT).await.unwrap();
    let ns = ia.ns.clone().unwrap();
    let (pid, _) = lab
        .exec(&ia.instance_id, &["sleep", "300"], &[])
        .await
        .unwrap();
    let state = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?")
            .to_string()
    };
    wait_for(WAIT, "sleep running", || async {
        (state(pid) == "S").then_some(())
    })
    .await
    .unwrap();

    lab.hang(&ia.instance_id).await.unwrap();
    wait_for(WAIT, "sleep stopped", || async {
        (state(pid) == "T").then_some(())
    })
    .await
    .unwrap();
    assert!(!api_reachable(&ns));

    lab.unhang(&ia.instance_id).await.unwrap();
    wait_for(WAIT, "sleep running again", || async {
        (state(pid) == "S").then_some(())
    })
    .await
    .unwrap();
    assert!(api_reachable(&ns));

    // Terminating the instance kills what runs in it.
    lab.terminate(&ia.instance_id).await.unwrap();
    wait_for(WAIT, "sleep killed", || async {
        (!gateway_lab::process_alive(pid)).then_some(())
    })
    .await
    .unwrap();
}
