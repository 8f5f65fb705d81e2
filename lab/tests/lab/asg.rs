//! The group's own timing and policies (profile mechanism 5): the launch delay, the agent
//! started by the boot spec as systemd would, instance refreshes under both maintenance
//! policies, and Capacity Rebalancing. Activities and lifecycle actions prove the order.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::RefreshPreferences;
use gateway_lab::{BootSpec, Instance, Lab, Scenario, ScenarioOptions, wait_for};
use serde_json::Value;

use crate::imds::{request, token};
use crate::{WAIT, require_root};

const LAUNCH_S: (&str, &str) = ("GATEWAY_LAB_AWS_LAUNCH_S", "2..3");

async fn lab_env(env: &[(&str, &str)], hooks: bool) -> (Lab, Scenario) {
    require_root();
    let mut lab = Lab::start_with_env(env).expect("lab starts");
    let sc = lab
        .scenario(&ScenarioOptions {
            zones: vec!["a".into()],
            hooks,
            ..ScenarioOptions::default()
        })
        .await
        .expect("scenario builds");
    (lab, sc)
}

/// Every instance of the group that is not terminated.
async fn members(lab: &Lab, asg: &str) -> Vec<Instance> {
    lab.instances()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.asg.as_deref() == Some(asg))
        .collect()
}

/// Complete every open lifecycle action with CONTINUE, as the agent does when it is ready (a
/// launch) or done (a termination). Answers (instance, transition) of each one completed.
async fn continue_open(lab: &Lab, asg: &str) -> Vec<(String, String)> {
    let open = lab.lifecycle().await.unwrap()["open"].clone();
    let mut done = Vec::new();
    for a in open.as_array().into_iter().flatten() {
        if a["group"] != asg {
            continue;
        }
        let instance = a["instance_id"].as_str().unwrap().to_string();
        lab.autoscaling()
            .complete_lifecycle_action()
            .auto_scaling_group_name(asg)
            .lifecycle_hook_name(a["hook"].as_str().unwrap())
            .instance_id(&instance)
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .expect("CompleteLifecycleAction");
        done.push((instance, a["transition"].as_str().unwrap().to_string()));
    }
    done
}

/// The first InService instance of the group (completing its launch action if held).
async fn in_service(lab: &Lab, asg: &str) -> Instance {
    wait_for(WAIT, "an InService instance", || async {
        continue_open(lab, asg).await;
        members(lab, asg)
            .await
            .into_iter()
            .find(|i| i.lifecycle_state.as_deref() == Some("InService") && i.ns.is_some())
    })
    .await
    .unwrap()
}

/// The activity of `kind` (launch/terminate) about `instance`.
fn activity<'a>(acts: &'a Value, kind: &str, instance: &str) -> &'a Value {
    acts["activities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == kind && a["instance_id"] == instance)
        .unwrap_or_else(|| panic!("no {kind} activity for {instance}: {acts:#}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a time: {v}"))
}

/// When the lifecycle action of `transition` for `instance` opened and closed.
fn action_times(lifecycle: &Value, instance: &str, transition: &str) -> (f64, f64) {
    let a = lifecycle["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["instance_id"] == instance && a["transition"] == transition)
        .unwrap_or_else(|| panic!("no {transition} action of {instance}: {lifecycle:#}"));
    (f(&a["opened_at"]), f(&a["closed_at"]))
}

const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

#[tokio::test(flavor = "multi_thread")]
async fn replacement_appears_only_after_the_launch_delay() {
    let (lab, sc) = lab_env(&[LAUNCH_S], true).await;
    let asg = &sc.zone("a").asg_name;
    let old = in_service(&lab, asg).await;

    let t0 = Instant::now();
    lab.terminate_in_group(&old.instance_id).await.unwrap();
    // Decided at once, visible only later: one launch pending, nothing new in EC2 yet.
    let acts = lab.activities().await.unwrap();
    assert_eq!(acts["pending"].as_array().unwrap().len(), 1, "{acts:#}");
    let new = wait_for(Duration::from_secs(10), "the replacement", || async {
        members(&lab, asg)
            .await
            .into_iter()
            .find(|i| i.instance_id != old.instance_id)
    })
    .await
    .unwrap();
    let waited = t0.elapsed().as_secs_f64();
    println!(
        "replacement {} appeared {waited:.2} s after the termination",
        new.instance_id
    );
    assert!(
        (2.0..4.0).contains(&waited),
        "LAUNCH_S 2..3: appeared after {waited:.2} s"
    );
    assert_eq!(new.lifecycle_state.as_deref(), Some("Pending:Wait"));

    // The pending launch counted toward capacity: exactly one replacement, and no more later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let group = members(&lab, asg).await;
    assert_eq!(
        group.len(),
        2,
        "old (Terminating:Wait) and one new: {group:?}"
    );
    let acts = lab.activities().await.unwrap();
    let launch = activity(&acts, "launch", &new.instance_id);
    assert_eq!(launch["status"], "MidLifecycleAction");
    let delay = f(&launch["launch_delay_s"]);
    assert!((2.0..=3.0).contains(&delay), "drawn delay {delay}");
}

#[tokio::test(flavor = "multi_thread")]
async fn boot_spec_starts_the_agent_in_a_replacement() {
    let (lab, sc) = lab_env(&[], false).await;
    let asg = &sc.zone("a").asg_name;
    let old = in_service(&lab, asg).await;

    // What the "agent" does at boot: read its instance id from IMDS (only reachable inside the
    // instance's namespace), write it to a file, and tell systemd it is ready.
    let script = r#"
import json, os, socket, sys, urllib.request
req = urllib.request.Request("http://169.254.169.254/latest/api/token", method="PUT",
                             headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
tok = urllib.request.urlopen(req, timeout=5).read().decode()
req = urllib.request.Request("http://169.254.169.254/latest/meta-data/instance-id",
                             headers={"X-aws-ec2-metadata-token": tok})
iid = urllib.request.urlopen(req, timeout=5).read().decode()
open(sys.argv[1], "w").write(iid + " " + open(sys.argv[2]).read())
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"STATUS=starting", os.environ["NOTIFY_SOCKET"])
s.sendto(b"READY=1\nSTATUS=gateway up in " + os.environ["ZONE"].encode(), os.environ["NOTIFY_SOCKET"])
print("booted", iid)
"#;
    let spec = BootSpec {
        argv: vec![
            gateway_lab::python(),
            "-c".into(),
            script.into(),
            "{run_dir}/{instance_id}/touched".into(),
            "{run_dir}/{instance_id}/agent.toml".into(),
        ],
        env: [("ZONE".to_string(), "{zone}".to_string())].into(),
        files: [(
            "{run_dir}/{instance_id}/agent.toml".to_string(),
            "zone = \"{zone}\"\nip = \"{primary_ip}\"\n".to_string(),
        )]
        .into(),
    };
    lab.set_boot(&spec).await.unwrap();
    assert!(
        lab.boot_info(&old.instance_id).await.is_err(),
        "an instance up before the spec is left alone"
    );

    lab.terminate_in_group(&old.instance_id).await.unwrap();
    let new =
        wait_for(WAIT, "the replacement", || async {
            lab.instances().await.unwrap().into_iter().find(|i| {
                i.instance_id != old.instance_id && i.state == "running" && i.ns.is_some()
            })
        })
        .await
        .unwrap();
    let boot = wait_for(WAIT, "READY=1 and the boot's exit", || async {
        lab.boot_info(&new.instance_id)
            .await
            .ok()
            .filter(|b| b.ready && b.exit_code.is_some())
    })
    .await
    .unwrap();
    println!("boot of {}: {boot:?}", new.instance_id);
    assert_eq!(boot.exit_code, Some(0), "log: {}", boot.log);
    assert!(!boot.running);
    assert_eq!(boot.notify.len(), 2);
    assert_eq!(boot.status.as_deref(), Some("gateway up in us-east-1a"));
    let up_to_ready = boot.ready_at.unwrap() - boot.up_at.unwrap();
    println!("from the namespace up to READY=1: {up_to_ready:.3} s");

    let dir = format!("{}/{}", lab.info.run_dir, new.instance_id);
    let ip = new.private_ip.clone().unwrap();
    let conf = std::fs::read_to_string(format!("{dir}/agent.toml")).unwrap();
    assert_eq!(conf, format!("zone = \"us-east-1a\"\nip = \"{ip}\"\n"));
    let touched = std::fs::read_to_string(format!("{dir}/touched")).unwrap();
    assert_eq!(touched, format!("{} {conf}", new.instance_id));
    let log = std::fs::read_to_string(&boot.log).unwrap();
    assert!(
        log.contains(&format!("booted {}", new.instance_id)),
        "{log}"
    );
    // The same record in the instance list.
    let listed = lab
        .instances()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.instance_id == new.instance_id)
        .unwrap();
    assert_eq!(listed.boot.unwrap().pid, boot.pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_launch_before_terminate_keeps_capacity() {
    let (lab, sc) = lab_env(&[LAUNCH_S], true).await;
    let asg = &sc.zone("a").asg_name;
    let old = in_service(&lab, asg).await;

    // Through the API, as an operator's tooling would: MaxHealthyPercentage above 100.
    let t0 = Instant::now();
    let id = lab
        .autoscaling()
        .start_instance_refresh()
        .auto_scaling_group_name(asg)
        .preferences(
            RefreshPreferences::builder()
                .min_healthy_percentage(100)
                .max_healthy_percentage(110)
                .build(),
        )
        .send()
        .await
        .expect("StartInstanceRefresh")
        .instance_refresh_id()
        .unwrap()
        .to_string();
    let completed = RefCell::new(Vec::new());
    let status = wait_for(Duration::from_secs(20), "the refresh to end", || async {
        let done = continue_open(&lab, asg).await;
        completed.borrow_mut().extend(done);
        let r = lab
            .autoscaling()
            .describe_instance_refreshes()
            .auto_scaling_group_name(asg)
            .send()
            .await
            .unwrap();
        let r = r.instance_refreshes().first().cloned().unwrap();
        assert_eq!(r.instance_refresh_id(), Some(id.as_str()));
        let s = r.status().unwrap().as_str().to_string();
        (s == "Successful" || s == "Failed").then_some(s)
    })
    .await
    .unwrap();
    println!(
        "refresh {status} after {:.2} s; completed {:?}",
        t0.elapsed().as_secs_f64(),
        completed.borrow()
    );
    assert_eq!(status, "Successful");

    let acts = lab.activities().await.unwrap();
    let task = &acts["tasks"].as_array().unwrap()[0];
    assert_eq!(task["policy"], "launch-before-terminate");
    let new = task["new"].as_str().unwrap().to_string();
    let launch = activity(&acts, "launch", &new);
    let term = activity(&acts, "terminate", &old.instance_id);
    assert!(
        launch["cause"]
            .as_str()
            .unwrap()
            .contains("instance refresh")
    );
    assert!(term["cause"].as_str().unwrap().contains("instance refresh"));
    assert_eq!(launch["status"], "Successful");
    assert_eq!(term["status"], "Successful");
    // The new one launched (after the delay) and went InService before the old one left service.
    let appeared = f(&launch["appeared_at"]) - f(&launch["start_time"]);
    assert!(appeared >= 2.0, "launch delay {appeared:.2} s");
    let in_service_at = f(&launch["end_time"]);
    let lc = lab.lifecycle().await.unwrap();
    let (_, new_continue) = action_times(&lc, &new, LAUNCHING);
    let (old_wait, old_done) = action_times(&lc, &old.instance_id, TERMINATING);
    println!(
        "new appeared {appeared:.2} s after the decision; InService {:.3} s before the old one's Terminating:Wait",
        old_wait - in_service_at
    );
    assert!(new_continue <= old_wait && in_service_at <= f(&term["start_time"]));
    assert!(old_done <= f(&term["end_time"]));
    assert_eq!(
        completed
            .borrow()
            .iter()
            .map(|(i, t)| (i == &new, t.as_str()))
            .collect::<Vec<_>>(),
        vec![(true, LAUNCHING), (false, TERMINATING)]
    );
    // The same activities through the API, newest first.
    let api = lab
        .autoscaling()
        .describe_scaling_activities()
        .auto_scaling_group_name(asg)
        .send()
        .await
        .unwrap();
    let descriptions: Vec<&str> = api
        .activities()
        .iter()
        .filter_map(|a| a.description())
        .collect();
    assert_eq!(
        descriptions[..2],
        [
            format!("Terminating EC2 instance: {}", old.instance_id).as_str(),
            format!("Launching a new EC2 instance: {new}").as_str()
        ],
        "{descriptions:?}"
    );
    let group = members(&lab, asg).await;
    assert_eq!(group.len(), 1, "{group:?}");
    assert_eq!(group[0].instance_id, new);
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_terminate_and_launch_terminates_first() {
    let (lab, sc) = lab_env(&[LAUNCH_S], true).await;
    let asg = &sc.zone("a").asg_name;
    let old = in_service(&lab, asg).await;

    let refresh = lab
        .refresh(asg, Some("terminate-and-launch"))
        .await
        .unwrap();
    let completed = RefCell::new(Vec::new());
    wait_for(Duration::from_secs(20), "the refresh to end", || async {
        let done = continue_open(&lab, asg).await;
        completed.borrow_mut().extend(done);
        let acts = lab.activities().await.unwrap();
        let r = acts["refreshes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == refresh["id"])
            .cloned()
            .unwrap();
        (r["status"] == "Successful" || r["status"] == "Failed").then_some(())
    })
    .await
    .unwrap();
    let acts = lab.activities().await.unwrap();
    let task = &acts["tasks"].as_array().unwrap()[0];
    assert_eq!(task["status"], "Successful", "{task:#}");
    let new = task["new"].as_str().unwrap().to_string();
    let term = activity(&acts, "terminate", &old.instance_id);
    let launch = activity(&acts, "launch", &new);
    // Old: Terminating:Wait, terminated; only then the launch decided, and it appears later.
    let gap = f(&launch["start_time"]) - f(&term["end_time"]);
    let appeared = f(&launch["appeared_at"]) - f(&term["end_time"]);
    println!(
        "completed {:?}; launch decided {gap:.3} s and the new instance appeared {appeared:.2} s after the old one terminated",
        completed.borrow()
    );
    assert!(gap >= 0.0);
    assert!(appeared >= 2.0);
    assert_eq!(
        completed
            .borrow()
            .iter()
            .map(|(i, t)| (i == &old.instance_id, t.as_str()))
            .collect::<Vec<_>>(),
        vec![(true, TERMINATING), (false, LAUNCHING)]
    );
    let group = members(&lab, asg).await;
    assert_eq!(group.len(), 1, "{group:?}");
    assert_eq!(group[0].lifecycle_state.as_deref(), Some("InService"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rebalance_recommendation_replaces_the_instance() {
    let (lab, sc) = lab_env(
        &[LAUNCH_S, ("GATEWAY_LAB_AWS_CAPACITY_REBALANCE", "1")],
        true,
    )
    .await;
    let asg = &sc.zone("a").asg_name;
    let old = in_service(&lab, asg).await;
    let ns = old.ns.clone().unwrap();

    let t0 = Instant::now();
    let answer = lab.rebalance(&old.instance_id).await.unwrap();
    assert_eq!(answer["capacity_rebalance"], true);
    // The agent's view: the recommendation in IMDS.
    let tok = token(&ns, "60");
    let notice = request(
        &ns,
        "GET",
        "/latest/meta-data/events/recommendations/rebalance",
        &[("X-aws-ec2-metadata-token", &tok)],
    );
    assert_eq!(notice.code, 200);
    let notice: Value = serde_json::from_str(&notice.body).unwrap();
    assert_eq!(notice["noticeTime"], answer["notice_time"]);

    let completed = RefCell::new(Vec::new());
    wait_for(
        Duration::from_secs(20),
        "the replacement to finish",
        || async {
            let done = continue_open(&lab, asg).await;
            completed.borrow_mut().extend(done);
            let acts = lab.activities().await.unwrap();
            let task = acts["tasks"].as_array().unwrap()[0].clone();
            (task["status"] != "InProgress").then_some(())
        },
    )
    .await
    .unwrap();
    let acts = lab.activities().await.unwrap();
    let task = &acts["tasks"].as_array().unwrap()[0];
    assert_eq!(task["kind"], "rebalance");
    assert_eq!(task["status"], "Successful", "{task:#}");
    let new = task["new"].as_str().unwrap().to_string();
    let launch = activity(&acts, "launch", &new);
    let term = activity(&acts, "terminate", &old.instance_id);
    assert!(launch["cause"].as_str().unwrap().contains("rebalance"));
    assert!(term["cause"].as_str().unwrap().contains("rebalance"));
    assert!(f(&launch["end_time"]) <= f(&term["start_time"]));
    println!(
        "rebalance done in {:.2} s: replacement appeared {:.2} s after the notice; completed {:?}",
        t0.elapsed().as_secs_f64(),
        f(&launch["appeared_at"]) - f(&launch["start_time"]),
        completed.borrow()
    );
    assert_eq!(
        completed
            .borrow()
            .iter()
            .map(|(i, t)| (i == &new, t.as_str()))
            .collect::<Vec<_>>(),
        vec![(true, LAUNCHING), (false, TERMINATING)]
    );
    let group = members(&lab, asg).await;
    assert_eq!(group.len(), 1, "{group:?}");
    assert_eq!(group[0].instance_id, new);
}
