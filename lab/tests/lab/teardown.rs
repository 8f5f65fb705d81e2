//! Lab teardown leaves the machine as it was: no namespace, veth or process.

use std::path::Path;
use std::time::Duration;

use gateway_lab::{Lab, cleanup_stale, netns_list, wait_for};

use crate::{WAIT, lab_with, no_hooks, require_root};

fn leftovers(lab_id: &str) -> Vec<String> {
    let prefix = format!("gl-{lab_id}-");
    netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn alive(pid: u32) -> bool {
    gateway_lab::process_alive(pid)
}

/// Interfaces in the host's own namespace: the lab must never add any.
fn host_links() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_lab_removes_everything_it_made() {
    let host_before = host_links();
    let (lab, sc) = lab_with(no_hooks()).await;
    let inst = lab.wait_instance(&sc.zone("a").az, WAIT).await.unwrap();
    let (pid, _) = lab
        .exec(&inst.instance_id, &["sleep", "300"], &[])
        .await
        .unwrap();
    let id = lab.lab_id().to_string();
    let labd = lab.info.pid;
    let run_dir = lab.info.run_dir.clone();
    assert!(
        leftovers(&id).len() >= 7,
        "router, internet, park, 2 clients, 2 instances: {:?}",
        leftovers(&id)
    );
    assert!(alive(pid) && alive(labd));

    drop(lab);
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
    assert!(!alive(labd), "labd exited");
    assert!(!alive(pid), "processes in instances are killed");
    assert!(!Path::new(&run_dir).exists(), "{run_dir} removed");
    assert_eq!(
        host_links(),
        host_before,
        "no interface left in the host namespace"
    );
}

#[test]
fn a_failing_test_still_tears_its_lab_down() {
    require_root();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (lab, _sc) = lab_with(no_hooks()).await;
            tx.send((lab.lab_id().to_string(), lab.info.pid)).unwrap();
            panic!("a test fails with the lab up");
        })
    })
    .join();
    assert!(result.is_err(), "the thread panicked");
    let (id, labd) = rx.recv().unwrap();
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
    assert!(!alive(labd));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_labd_is_cleaned_up_by_down_all() {
    require_root();
    // Started detached, as `gwlab up` does, then killed so it cannot clean up after itself.
    let lab = Lab::spawn(&format!("k{:04x}", std::process::id() & 0xffff), false).unwrap();
    let id = lab.lab_id().to_string();
    assert!(!leftovers(&id).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(lab.info.pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(WAIT, "labd dead", || async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        (!alive(lab.info.pid)).then_some(())
    })
    .await
    .unwrap();
    assert!(
        !leftovers(&id).is_empty(),
        "a SIGKILLed labd leaves its namespaces"
    );
    assert!(cleanup_stale() >= 3);
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_returns_to_an_empty_lab_that_can_be_built_again() {
    let (mut lab, sc) = lab_with(no_hooks()).await;
    let first = lab.wait_instance(&sc.zone("a").az, WAIT).await.unwrap();
    let id = lab.lab_id().to_string();
    lab.reset().await.unwrap();
    assert!(lab.instances().await.unwrap().is_empty(), "moto is empty");
    let mut left = leftovers(&id);
    left.sort();
    let mut base = vec![
        format!("gl-{id}-inet"),
        format!("gl-{id}-park"),
        format!("gl-{id}-rtr"),
    ];
    base.sort();
    assert_eq!(left, base, "only the lab's own namespaces remain");

    let sc = lab
        .scenario(&no_hooks())
        .await
        .expect("a new scenario after reset");
    let again = lab.wait_instance(&sc.zone("a").az, WAIT).await.unwrap();
    assert_ne!(again.instance_id, first.instance_id);
    assert_eq!(
        crate::kernel_default(&lab, &sc.zone("a").route_table_id).await,
        "blackhole"
    );
}
