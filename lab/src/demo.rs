//! `gwlab demo`: the two-zone lab with a gateway-agent in every gateway, narrated.
//!
//! It shows what the agent does today, honestly: the demo grows with the agent.

use std::time::{Duration, Instant};

use gateway_lab::{Lab, ScenarioOptions};

fn agent_path(arg: Option<String>) -> Result<String, String> {
    if let Some(a) = arg {
        return Ok(a);
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let candidate = exe.with_file_name("gateway-agent");
    if candidate.exists() {
        return Ok(candidate.display().to_string());
    }
    Err(format!(
        "no gateway-agent beside {}; build it (cargo build -p gateway-agent) or pass --agent",
        exe.display()
    ))
}

pub async fn run(agent: Option<String>) -> Result<(), String> {
    let s = |e: gateway_lab::LabError| e.to_string();
    let agent = agent_path(agent)?;
    let t0 = Instant::now();
    let at = || format!("[{:>6.2}s]", t0.elapsed().as_secs_f64());

    println!(
        "{} starting the lab (moto + IMDS emulators + network namespaces)",
        at()
    );
    let mut lab = Lab::start().map_err(s)?;
    let sc = lab.scenario(&ScenarioOptions::default()).await.map_err(s)?;
    println!(
        "{} VPC {} with zones {}: each zone's private route table sends 0.0.0.0/0 to its persistent ENI",
        at(),
        sc.vpc_id,
        sc.zones
            .iter()
            .map(|z| z.az.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let config = format!("{}/demo-config.toml", lab.info.run_dir);
    std::fs::write(
        &config,
        format!("version = 1\n\n[group]\nname = \"{}\"\n", sc.group),
    )
    .map_err(|e| format!("{config}: {e}"))?;

    let mut logs = Vec::new();
    for z in &sc.zones {
        let inst = lab
            .wait_instance(&z.az, Duration::from_secs(10))
            .await
            .map_err(s)?;
        println!(
            "{} ASG {} launched {} ({}); starting gateway-agent in it",
            at(),
            z.asg_name,
            inst.instance_id,
            inst.lifecycle_state.clone().unwrap_or_default()
        );
        let mut env = Lab::instance_env();
        env.push(("RUST_LOG", "info"));
        let (_, log) = lab
            .exec(
                &inst.instance_id,
                &[&agent, "run", "--config", &config],
                &env,
            )
            .await
            .map_err(s)?;
        logs.push((z.clone(), inst, log));
    }

    // An agent's boot ends with "boot complete" in its log (READY=1 under systemd).
    let booted = |log: &str| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("boot complete")
    };
    let waited = Instant::now();
    while !logs.iter().all(|(_, _, log)| booted(log)) && waited.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (z, inst, log) in &logs {
        println!("{} agent in {} ({}) says:", at(), z.az, inst.instance_id);
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for l in text.lines().filter(|l| {
            !l.contains("kernel changed") && !l.contains(" interface ") && !l.contains("starting")
        }) {
            // Drop the timestamp and module path: the story is in the message.
            let short = l.split_once("gateway_agent").map_or(l, |(_, rest)| rest);
            let short = short.split_once(": ").map_or(short, |(_, msg)| msg);
            println!("          | {short}");
        }
    }

    println!(
        "{} client traffic, 100 packets/s for 3 s from each private subnet:",
        at()
    );
    let mut ids = Vec::new();
    for z in &sc.zones {
        ids.push((z.clone(), lab.stream_start(&z.name, 100).await.map_err(s)?));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ec2 = lab.ec2();
    for (z, id) in ids {
        let r = lab.stream_stop(id).await.map_err(s)?;
        let rt = ec2
            .describe_route_tables()
            .route_table_ids(&z.route_table_id)
            .send()
            .await
            .map_err(|e| format!("DescribeRouteTables: {e}"))?;
        let state = rt
            .route_tables()
            .iter()
            .flat_map(|t| t.routes())
            .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
            .and_then(|r| r.state().map(|s| s.as_str().to_string()))
            .unwrap_or_default();
        println!(
            "          zone {}: route 0.0.0.0/0 -> {} is {state}; delivered {}/{} (lost {}, longest gap {:.0} ms)",
            z.az, z.eni_id, r.delivered, r.sent, r.lost, r.longest_gap_ms
        );
    }
    println!(
        "{} each gateway claimed its zone's ENI, configured its kernel, pointed its zone's routes \
         at it and completed its launch hook before reporting ready. Peer failover and planned-exit \
         hand-over are the next issues; this demo grows with them.",
        at()
    );
    println!("{} tearing the lab down", at());
    drop(lab);
    Ok(())
}
