//! `gwlab bench-budget`: what the agents cost the account's EC2 and Auto Scaling API, by action
//! and by state, in calls per gateway-hour: at steady state, through a partition between the
//! gateways, with a hung peer, and for one takeover and its hand-back.
//!
//! Two gateways run in the standard two-zone lab; each state lasts `--minutes` (the hung peer
//! and the takeover are episodes of their own length). Only the agents call the API while a
//! window is measured, so the lab's own count of calls, by action, is theirs. Calls the
//! `aws` profile's token buckets refused are counted apart (a refused call did nothing). Under
//! each row: the fleet size at which the gateways alone would spend each documented bucket as
//! fast as it refills, and the CloudTrail management events per gateway-month.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_lab::agent::Spec;
use gateway_lab::fleet::{Failure, Fleet};
use gateway_lab::{ScenarioOptions, WRITE_ACTIONS};

const ZONES: [&str; 2] = ["a", "b"];

/// Calls by action in a window, and how many the buckets refused.
struct Window {
    name: &'static str,
    seconds: f64,
    calls: BTreeMap<String, usize>,
    refused: u64,
}

impl Window {
    fn per_gateway_hour(&self, n: usize) -> f64 {
        n as f64 * 3600.0 / self.seconds / ZONES.len() as f64
    }

    fn total(&self) -> usize {
        self.calls.values().sum()
    }

    fn writes(&self) -> usize {
        self.calls
            .iter()
            .filter(|(a, _)| WRITE_ACTIONS.contains(&a.as_str()))
            .map(|(_, n)| n)
            .sum()
    }
}

async fn refused(f: &Fleet) -> Result<u64, Failure> {
    // Refusals by `who:bucket`; the agents' calls are `api:...` (background load is apart).
    let stats = f.lab.stats().await?;
    Ok(stats["throttling"]["refused"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("api:"))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0))
}

/// Runs `during` and counts the API calls made meanwhile.
async fn measure<F: std::future::Future<Output = Result<(), Failure>>>(
    f: &Fleet,
    name: &'static str,
    during: F,
) -> Result<Window, Failure> {
    let before = f.lab.api_calls().await?.len();
    let refused_before = refused(f).await?;
    let started = tokio::time::Instant::now();
    during.await?;
    let seconds = started.elapsed().as_secs_f64();
    let mut calls = BTreeMap::new();
    for action in f.lab.api_calls().await?.into_iter().skip(before) {
        *calls.entry(action).or_insert(0) += 1;
    }
    Ok(Window {
        name,
        seconds,
        calls,
        refused: refused(f).await?.saturating_sub(refused_before),
    })
}

pub async fn run(agent: &str, minutes: f64, show_logs: bool) -> Result<(), String> {
    println!("lab profile: {}", gateway_lab::profile());
    let window = Duration::from_secs_f64(minutes * 60.0);
    let opts = ScenarioOptions::default();
    let mut f = Fleet::new(&opts).await?;
    f.bin = agent.to_owned();
    for z in ZONES {
        let inst = f.instance(z).await?;
        f.spawn(z, inst, Spec::new().name(format!("budget-{z}")))?;
    }
    for z in ZONES {
        f.ready(z).await?;
    }
    // Probes up, first reads done: what follows is the running cost, not the boot's.
    tokio::time::sleep(Duration::from_secs(15)).await;
    println!(
        "API calls per gateway-hour ({} gateways; {minutes} min per state)",
        ZONES.len()
    );
    println!(
        "{:<44} {:>8} {:>8} {:>9}  by action",
        "state", "calls", "writes", "refused"
    );
    let idle = || async {
        tokio::time::sleep(window).await;
        Ok(())
    };
    show(&measure(&f, "steady state", idle()).await?);

    let (a, b) = (f.zone("a").eni_ip.clone(), f.zone("b").eni_ip.clone());
    f.lab.partition(&a, &b).await.map_err(|e| e.to_string())?;
    show(&measure(&f, "partition between the gateways", idle()).await?);
    f.lab.heal(&a, &b).await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(15)).await;

    // A hung peer (b stopped, its traffic dropped): a takes b's zone over, then carries both.
    let b_id = f.instance_id("b");
    let hung = measure(&f, "hung peer (b frozen, a carrying both)", async {
        f.lab.hang(&b_id).await?;
        f.wait_route("b", "a", Duration::from_secs(30)).await?;
        tokio::time::sleep(window).await;
        Ok(())
    })
    .await;
    f.lab.unhang(&b_id).await.map_err(|e| e.to_string())?;
    show(&hung?);
    // b comes back to life and takes its zone back after its hold-down: the settling is part of
    // the episode below, so wait it out first.
    f.wait_route("b", "b", Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(15)).await;

    // One takeover and its hand-back: b drained by hand, then undrained and failed back.
    let episode = measure(&f, "one takeover and its hand-back (per episode)", async {
        let (code, out, err) = f.cli("budget-b", &["drain"])?;
        if code != 0 {
            return Err(Failure(format!("drain: {code} {out}{err}")));
        }
        f.wait_route("b", "a", Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        f.cli("budget-b", &["undrain"])?;
        f.cli("budget-b", &["failback"])?;
        f.wait_route("b", "b", Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs(15)).await;
        Ok(())
    })
    .await?;
    let by_action: Vec<String> = episode
        .calls
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    println!(
        "{:<44} {:>8} {:>8} {:>9}  {} ({:.0} s, both gateways, calls not per hour)",
        episode.name,
        episode.total(),
        episode.writes(),
        episode.refused,
        by_action.join(", "),
        episode.seconds
    );
    if show_logs {
        f.show_logs();
    }
    Ok(())
}

/// The refill rate (tokens a second, per account and region) of the documented bucket
/// `action` spends: EC2's "Request throttling" page as lab/py/profile.py reads it (the agent's
/// calls by ID get the smaller unfiltered bucket, as in src/cloud/budget.rs); Auto Scaling's
/// shared bucket is the lab's assumption (no size is published).
fn documented_refill(action: &str) -> f64 {
    match action {
        "CreateTags" => 10.0,
        "ModifyNetworkInterfaceAttribute" => 5.0,
        "DescribeInstances" | "DescribeNetworkInterfaces" => 10.0,
        a if AUTOSCALING_ACTIONS.contains(&a) => 10.0,
        a if a.starts_with("Describe") => 20.0,
        _ => 5.0,
    }
}

const AUTOSCALING_ACTIONS: &[&str] = &[
    "DescribeAutoScalingInstances",
    "DescribeLifecycleHooks",
    "CompleteLifecycleAction",
    "RecordLifecycleActionHeartbeat",
    "SetInstanceHealth",
];

/// Hours in an average month (365.25 * 24 / 12).
const HOURS_PER_MONTH: f64 = 730.5;

/// What a state costs a fleet: the number of gateways at which each documented bucket would be
/// spent as fast as it refills (by the gateways alone), and the CloudTrail management events
/// per gateway-month (every EC2 and Auto Scaling call is one, reads and writes alike).
fn show_fleet(w: &Window) {
    let mut saturation: Vec<(f64, String)> = w
        .calls
        .iter()
        .filter(|(_, c)| **c > 0)
        .map(|(a, c)| {
            let refill_per_hour = documented_refill(a) * 3600.0;
            // Auto Scaling's bucket is shared by every action: sum them.
            let per_gw_h = if AUTOSCALING_ACTIONS.contains(&a.as_str()) {
                w.calls
                    .iter()
                    .filter(|(b, _)| AUTOSCALING_ACTIONS.contains(&b.as_str()))
                    .map(|(_, c)| w.per_gateway_hour(*c))
                    .sum()
            } else {
                w.per_gateway_hour(*c)
            };
            (refill_per_hour / per_gw_h, a.clone())
        })
        .collect();
    saturation.sort_by(|x, y| x.0.total_cmp(&y.0));
    let events = w.per_gateway_hour(w.total()) * HOURS_PER_MONTH;
    let writes = w.per_gateway_hour(w.writes()) * HOURS_PER_MONTH;
    println!(
        "{:<44} saturates each documented bucket at: {}; CloudTrail: {events:.0} management events per gateway-month ({writes:.0} writes)",
        "",
        saturation
            .iter()
            .map(|(g, a)| format!("{a} {g:.0} gateways"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// One state's row: calls, writes and refusals per gateway-hour, and by action.
fn show(w: &Window) {
    let by_action: Vec<String> = w
        .calls
        .iter()
        .map(|(a, n)| format!("{a} {:.0}", w.per_gateway_hour(*n)))
        .collect();
    println!(
        "{:<44} {:>8.0} {:>8.0} {:>9.0}  {}",
        w.name,
        w.per_gateway_hour(w.total()),
        w.per_gateway_hour(w.writes()),
        w.per_gateway_hour(w.refused as usize),
        by_action.join(", ")
    );
    show_fleet(w);
}
