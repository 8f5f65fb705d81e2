//! `gwlab bench-boot`: how long a gateway-agent boot takes in the lab, and what it costs.
//!
//! Each run builds the standard two-zone VPC, starts the agent in zone A's fresh instance (its
//! ENI free, its route a blackhole, its launch hook waiting) with a real NOTIFY_SOCKET, and
//! measures process start → `READY=1`, the agent's own "attach returned → ready" figure, and
//! the API calls the boot made, by action. A second agent is then started on the same instance
//! (a restart) and measured the same way: it should write nothing.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_lab::{Lab, ScenarioOptions, WRITE_ACTIONS, percentile};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Boot {
    log: String,
    to_ready: Duration,
    after_attach_ms: Option<f64>,
    calls: BTreeMap<String, usize>,
}

/// Start the agent inside `ns` with its output in `log` and READY=1 sent to the socket `notify`.
pub(crate) fn spawn(
    agent: &str,
    ns: &str,
    config: &str,
    notify: &str,
    log: &str,
) -> Result<Child, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{log}: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("{log}: {e}"))?;
    Command::new("ip")
        .args(["netns", "exec", ns, agent, "run", "--config", config])
        .envs(Lab::instance_env())
        .env("NOTIFY_SOCKET", notify)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("start {agent}: {e}"))
}

/// One agent start, measured until READY=1; the agent keeps running (returned).
async fn boot(
    lab: &Lab,
    agent: &str,
    ns: &str,
    config: &str,
    tag: &str,
) -> Result<(Boot, Child), String> {
    let dir = &lab.info.run_dir;
    let notify = format!("{dir}/bench-{tag}.notify");
    let log = format!("{dir}/bench-{tag}.log");
    let _ = std::fs::remove_file(&notify);
    let socket = UnixDatagram::bind(&notify).map_err(|e| format!("bind {notify}: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let before = lab.api_calls().await.map_err(|e| e.to_string())?.len();
    let started = Instant::now();
    let mut child = spawn(agent, ns, config, &notify, &log)?;
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = socket.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
        {
            break;
        }
        if started.elapsed() > READY_TIMEOUT
            || child.try_wait().map_err(|e| e.to_string())?.is_some()
        {
            let _ = child.kill();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "no READY=1 within {READY_TIMEOUT:?}; agent log:\n{text}"
            ));
        }
    }
    let to_ready = started.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let after_attach_ms = text
        .split("after_attach_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    let mut by_action = BTreeMap::new();
    for action in lab
        .api_calls()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .skip(before)
    {
        *by_action.entry(action).or_insert(0) += 1;
    }
    Ok((
        Boot {
            log: text.clone(),
            to_ready,
            after_attach_ms,
            calls: by_action,
        },
        child,
    ))
}

pub async fn run(agent: &str, runs: usize, show_logs: bool) -> Result<(), String> {
    let s = |e: gateway_lab::LabError| e.to_string();
    // GATEWAY_LAB_PROFILE reaches labd through the environment.
    println!("lab profile: {}", gateway_lab::profile());
    let mut lab = Lab::start().map_err(s)?;
    let mut first = Vec::new();
    let mut restart = Vec::new();
    for run in 0..runs {
        if run > 0 {
            lab.reset().await.map_err(s)?;
        }
        let sc = lab.scenario(&ScenarioOptions::default()).await.map_err(s)?;
        let zone = sc.zone("a").clone();
        let inst = lab
            .wait_instance(&zone.az, Duration::from_secs(10))
            .await
            .map_err(s)?;
        let ns = inst.ns.clone().ok_or("instance without a namespace")?;
        let config = format!("{}/bench.toml", lab.info.run_dir);
        std::fs::write(
            &config,
            format!("version = 1\n[group]\nname = \"{}\"\n", sc.group),
        )
        .map_err(|e| format!("{config}: {e}"))?;
        let (b, mut child) = boot(&lab, agent, &ns, &config, &format!("{run}-boot")).await?;
        let _ = child.kill();
        let _ = child.wait();
        first.push(b);
        let (b, mut child) = boot(&lab, agent, &ns, &config, &format!("{run}-restart")).await?;
        let _ = child.kill();
        let _ = child.wait();
        restart.push(b);
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
