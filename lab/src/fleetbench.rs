//! `gwlab bench-fleet`: many gateway groups in one account, under the `aws` profile's shared
//! token buckets and other tools' load: does the fleet stay unthrottled at steady state, and
//! does every group still take over within the fault matrix's budget when they all move at once?
//!
//! `--groups` groups (5) of three zones each (15 gateways), each group in a VPC of its own with
//! its own tags, ENIs, route tables and Auto Scaling groups, all in one lab account; labd's
//! `Background` spends the same buckets at `--background` (other tools). After every agent is
//! READY and a warm-up, `--minutes` (10) of steady state are measured: the agents' calls by
//! action (per gateway-hour) and the calls the account's buckets refused them. Then zone b's
//! gateway of every group is terminated at once, and each group's takeover is timed from the
//! termination to the route write that moves b's table off the dead gateway (the lab's record
//! of route changes, so measuring it costs the account's buckets nothing).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_lab::agent::Spec;
use gateway_lab::fleet::{Failure, Fleet};
use gateway_lab::{Scenario, ScenarioOptions, WRITE_ACTIONS, wait_for};

const ZONES: [&str; 3] = ["a", "b", "c"];
/// The fault matrix's budget for a terminated peer (tests/matrix/cases.rs,
/// `CONFIRMED_BUDGET_MS`: ICMP fall plus the confirming read and the writes, with room).
const TERMINATED_BUDGET_MS: f64 = 3_000.0;
/// Other tools of the account, in tokens a second per action: an inventory tool polling
/// instances and interfaces, a Terraform plan now and then, the ASGs' own tagging.
pub const DEFAULT_BACKGROUND: &str = "DescribeInstances=5,DescribeNetworkInterfaces=3,DescribeRouteTables=3,CreateTags=2,ReplaceRoute=0.2,DescribeAutoScalingInstances=1";
/// After the last READY: probes up, first drift reads done.
const WARM_UP: Duration = Duration::from_secs(30);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The account's buckets' refusals so far: (the agents', the other tools').
async fn refused(f: &Fleet) -> Result<(u64, u64), Failure> {
    let stats = f.lab.stats().await?;
    let mut out = (0, 0);
    if let Some(m) = stats["throttling"]["refused"].as_object() {
        for (k, v) in m {
            let n = v.as_u64().unwrap_or(0);
            if k.starts_with("api:") {
                out.0 += n;
            } else {
                out.1 += n;
            }
        }
    }
    Ok(out)
}

/// The whole machine's busy and total jiffies (for the CPU share over a window).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// A process's user + system jiffies and resident kB.
fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let jiffies = f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (jiffies, rss)
}

/// CPU seconds and resident MB of the agents and of labd (moto inside).
fn usage(f: &Fleet) -> ((u64, u64), (u64, u64)) {
    let agents = f
        .gateways
        .iter()
        .map(|g| proc_usage(g.agent.pid()))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    (agents, proc_usage(f.lab.info.pid))
}

pub async fn run(
    agent: &str,
    groups: u8,
    minutes: f64,
    background: &str,
    show_logs: bool,
) -> Result<(), String> {
    Ok(bench(agent, groups, minutes, background, show_logs).await?)
}

async fn bench(
    agent: &str,
    groups: u8,
    minutes: f64,
    background: &str,
    show_logs: bool,
) -> Result<(), Failure> {
    let profile = gateway_lab::profile();
    println!("lab profile: {profile}; background (other tools, tokens/s): {background}");
    if profile != "aws" {
        println!(
            "note: without GATEWAY_LAB_PROFILE=aws nothing is throttled and the figures mean little"
        );
    }
    let opts = |g: u8| ScenarioOptions {
        zones: ZONES.iter().map(|z| (*z).to_owned()).collect(),
        group: format!("fleet{g}"),
        ..ScenarioOptions::default()
    };
    let mut f =
        Fleet::new_with_env(&[("GATEWAY_LAB_AWS_BACKGROUND", background)], &opts(1)).await?;
    f.bin = agent.to_owned();
    let mut all: Vec<Scenario> = vec![f.sc.clone()];
    for g in 2..=groups {
        all.push(
            f.lab
                .add_group(&opts(g), g - 1)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    println!(
        "{} groups x {} zones = {} gateways; scenario built in {:.0} s",
        all.len(),
        ZONES.len(),
        all.len() * ZONES.len(),
        f.build_time.as_secs_f64()
    );
    // Every group's instances, found by their Auto Scaling group (zones share letters).
    for sc in &all {
        for z in &sc.zones {
            let inst = wait_for(
                gateway_lab::fleet::wait(),
                &format!("{}'s instance", z.asg_name),
                || async {
                    f.lab.instances().await.ok()?.into_iter().find(|i| {
                        i.state == "running"
                            && i.ns.is_some()
                            && i.asg.as_deref() == Some(z.asg_name.as_str())
                    })
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            let label = format!("{}-{}", sc.group, z.name);
            f.spawn_in(&sc.group, &label, inst, Spec::new().name(label.clone()))?;
        }
    }
    let booted = std::time::Instant::now();
    for sc in &all {
        for z in &sc.zones {
            f.ready(&format!("{}-{}", sc.group, z.name)).await?;
        }
    }
    println!(
        "every agent READY {:.0} s after the first started",
        booted.elapsed().as_secs_f64()
    );
    tokio::time::sleep(WARM_UP).await;

    // Steady state.
    let calls_before = f.lab.api_calls().await?.len();
    let refused_before = refused(&f).await?;
    let (cpu_before, usage_before) = (cpu_jiffies(), usage(&f));
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(minutes * 60.0)).await;
    let seconds = started.elapsed().as_secs_f64();
    let (cpu_after, usage_after) = (cpu_jiffies(), usage(&f));
    let refused_after = refused(&f).await?;
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    for a in f.lab.api_calls().await?.into_iter().skip(calls_before) {
        *by_action.entry(a).or_insert(0) += 1;
    }
    let gateways = f.gateways.len() as f64;
    let per_gw_h = |n: usize| n as f64 * 3600.0 / seconds / gateways;
    let total: usize = by_action.values().sum();
    let writes: usize = by_action
        .iter()
        .filter(|(a, _)| WRITE_ACTIONS.contains(&a.as_str()))
        .map(|(_, n)| n)
        .sum();
    println!(
        "\nsteady state, {:.1} min, {} gateways:",
        seconds / 60.0,
        gateways
    );
    println!(
        "  agents' calls throttled by the account's buckets: {} (other tools': {})",
        refused_after.0 - refused_before.0,
        refused_after.1 - refused_before.1
    );
    println!(
        "  calls per gateway-hour: {:.0} ({:.0} writes); by action: {}",
        per_gw_h(total),
        per_gw_h(writes),
        by_action
            .iter()
            .map(|(a, n)| format!("{a} {:.0}", per_gw_h(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hz = 100.0; // USER_HZ
    let busy = (cpu_after.0 - cpu_before.0) as f64 / (cpu_after.1 - cpu_before.1).max(1) as f64;
    println!(
        "  machine CPU busy {:.0}% (2 cores = 200%: {:.0}%); agents {:.1}% of one core in all, {} MB resident; labd+moto {:.1}% of one core, {} MB; load average {}",
        busy * 100.0,
        busy * 200.0,
        (usage_after.0.0 - usage_before.0.0) as f64 / hz / seconds * 100.0,
        usage_after.0.1 / 1024,
        (usage_after.1.0 - usage_before.1.0) as f64 / hz / seconds * 100.0,
        usage_after.1.1 / 1024,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    // One takeover in every group at once: zone b's gateway terminated.
    let changes_before = f.lab.route_changes().await?.len();
    let refused_before = refused(&f).await?;
    let mut terminated = Vec::new();
    for sc in &all {
        let label = format!("{}-b", sc.group);
        let at = unix_now();
        let id = f.terminate(&label).await?;
        let b = sc.zone("b");
        terminated.push((
            sc.group.clone(),
            id,
            at,
            b.route_table_id.clone(),
            b.eni_id.clone(),
        ));
    }
    let mut moved: BTreeMap<String, f64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while moved.len() < terminated.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let changes = f.lab.route_changes().await?;
        for (group, _, at, table, eni) in &terminated {
            if moved.contains_key(group) {
                continue;
            }
            if let Some(c) = changes.iter().skip(changes_before).find(|c| {
                c.table.as_deref() == Some(table.as_str())
                    && c.destination.as_deref() == Some("0.0.0.0/0")
                    && c.target.as_deref() != Some(eni.as_str())
                    && c.at >= *at
            }) {
                moved.insert(group.clone(), (c.at - at) * 1000.0);
            }
        }
    }
    let refused_after = refused(&f).await?;
    println!(
        "\ntakeovers (zone b's gateway of every group terminated at once; budget {TERMINATED_BUDGET_MS:.0} ms, the fault matrix's for a terminated peer):"
    );
    let mut within = 0;
    for (group, id, _, _, _) in &terminated {
        match moved.get(group) {
            Some(ms) => {
                let ok = *ms <= TERMINATED_BUDGET_MS;
                within += usize::from(ok);
                println!(
                    "  {group}: {id} terminated, b's table moved after {ms:.0} ms{}",
                    if ok { "" } else { "  OVER BUDGET" }
                );
            }
            None => println!("  {group}: {id} terminated, b's table NOT moved within 60 s"),
        }
    }
    println!(
        "  {within} of {} within budget; agents' calls throttled meanwhile: {}",
        terminated.len(),
        refused_after.0 - refused_before.0
    );
    if show_logs {
        f.show_logs();
    }
    f.kill_all().await;
    Ok(())
}
