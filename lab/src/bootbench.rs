//! `gwlab bench-boot`: how long a gateway-agent boot takes in the lab, and what it costs.
//!
//! Each run builds the standard two-zone VPC, starts the agent in zone A's fresh instance (its
//! ENI free, its route a blackhole, its launch hook waiting) with a real NOTIFY_SOCKET, and
//! measures process start → `READY=1`, the agent's own "attach returned → ready" figure, and
//! the API calls the boot made, by action. A second agent is then started on the same instance
//! (a restart) and measured the same way: it should write nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_lab::agent::Spec;
use gateway_lab::fleet::{Failure, Fleet};
use gateway_lab::{ScenarioOptions, WRITE_ACTIONS, percentile};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const INSTANCE_TIMEOUT: Duration = Duration::from_secs(10);

struct Boot {
    log: String,
    to_ready: Duration,
    after_attach_ms: Option<f64>,
    calls: BTreeMap<String, usize>,
}

/// One agent start on zone A's instance, measured until READY=1, then killed.
async fn boot(f: &mut Fleet, tag: &str) -> Result<Boot, Failure> {
    let inst = f.instance_within("a", INSTANCE_TIMEOUT).await?;
    let before = f.lab.api_calls().await?.len();
    f.spawn("a", inst, Spec::new().name(format!("bench-{tag}")))?;
    let agent = f.agent_mut("a");
    let ready = agent.wait_ready(READY_TIMEOUT).await;
    let to_ready = agent
        .notify
        .ready_at()
        .map(|at| at.duration_since(agent.started));
    agent.kill().await;
    let text = agent.log();
    if let Err(e) = ready {
        return Err(Failure(format!("{e}; agent log:\n{text}")));
    }
    let after_attach_ms = text
        .split("after_attach_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    let mut by_action = BTreeMap::new();
    for action in f.lab.api_calls().await?.into_iter().skip(before) {
        *by_action.entry(action).or_insert(0) += 1;
    }
    Ok(Boot {
        log: text,
        to_ready: to_ready.unwrap_or_default(),
        after_attach_ms,
        calls: by_action,
    })
}

pub async fn run(agent: &str, runs: usize, show_logs: bool) -> Result<(), String> {
    // GATEWAY_LAB_PROFILE reaches labd through the environment.
    println!("lab profile: {}", gateway_lab::profile());
    let opts = ScenarioOptions::default();
    let mut f = Fleet::new(&opts).await?;
    f.bin = agent.to_owned();
    f.sockets = false;
    let mut first = Vec::new();
    let mut restart = Vec::new();
    for run in 0..runs {
        if run > 0 {
            f.rebuild(&opts).await?;
        }
        first.push(boot(&mut f, &format!("{run}-boot")).await?);
        restart.push(boot(&mut f, &format!("{run}-restart")).await?);
    }
    println!(
        "gateway-agent boot in the lab ({runs} runs; ENI free, route blackholed, launch hook waiting)"
    );
    for (name, boots) in [
        ("first boot", &first),
        ("restart (configured gateway)", &restart),
    ] {
        let ready: Vec<f64> = boots
            .iter()
            .map(|b| b.to_ready.as_secs_f64() * 1e3)
            .collect();
        println!(
            "{name:<30} start -> READY=1  p50={:>7.1} ms  max={:>7.1} ms",
            percentile(&ready, 50.0),
            percentile(&ready, 100.0)
        );
        let attach: Vec<f64> = boots.iter().filter_map(|b| b.after_attach_ms).collect();
        if !attach.is_empty() {
            println!(
                "{:<30} attach returned -> READY=1  p50={:>7.1} ms  max={:>7.1} ms",
                "",
                percentile(&attach, 50.0),
                percentile(&attach, 100.0)
            );
        }
        let last = boots.last().map(|b| &b.calls);
        if let Some(calls) = last {
            let total: usize = calls.values().sum();
            let writes: usize = calls
                .iter()
                .filter(|(a, _)| WRITE_ACTIONS.contains(&a.as_str()))
                .map(|(_, n)| n)
                .sum();
            let list: Vec<String> = calls.iter().map(|(a, n)| format!("{a}×{n}")).collect();
            println!(
                "{:<30} API calls: {total} ({writes} writes): {}",
                "",
                list.join(", ")
            );
        }
    }
    if show_logs {
        for (name, b) in [("first boot", first.last()), ("restart", restart.last())] {
            if let Some(b) = b {
                println!("--- agent log, {name} (last run) ---\n{}", b.log);
            }
        }
    }
    Ok(())
}
