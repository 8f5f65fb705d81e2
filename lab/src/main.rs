//! `gwlab`: the lab's verbs from the shell (as root).
//!
//!   gwlab up [--zones a,b] [--extra-tables N] [--destinations CIDR,...]
//!                               start a lab in the background and build the standard VPC
//!   gwlab status                instances, route tables (moto and kernel), lifecycle actions
//!   gwlab terminate|stop|start|hang|unhang <zone|instance-id>
//!   gwlab cut|restore <zone|instance-id> [--links uplink,eni]
//!   gwlab imds <zone|instance-id> --set PATH=VALUE | --clear PATH | --fault MODE
//!   gwlab fault [--action A] --kind throttle|5xx|lost|latency [--count N] [--latency-ms MS] | --clear
//!   gwlab stream --zone a [--rate 100] [--seconds 10]
//!   gwlab exec <zone|instance-id> -- CMD...
//!   gwlab systemd <zone|instance-id> [--deb P] [--start]
//!                               boot the instance with systemd (a Debian 12 container) and
//!                               install the package there, as tests/systemd.rs does
//!   gwlab down [--all]          tear down the lab (--all: also any lab left by a killed labd)
//!   gwlab bench                 the lab's own figures (moto latency, route-mirror lag)
//!   gwlab bench-boot --agent P  the agent's boot time and API calls
//!   gwlab bench-failover --agent P  the outage a client sees when its gateway dies, against
//!                               the classic nat_monitor.sh
//!   gwlab bench-drain --agent P what a client loses when its gateway leaves on purpose (SIGTERM,
//!                               spot, instance refresh, rebalance, upgrade restart)
//!   gwlab bench-budget --agent P  API calls per gateway-hour by action and state
//!   gwlab bench-fleet --agent P [--groups 5] [--minutes 10]
//!                               5 groups x 3 zones in one account under the shared buckets and
//!                               other tools' load: steady-state throttling, takeovers vs budget
//!   gwlab demo                  the two-zone demo

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gateway_lab::{Fault, Info, Lab, ScenarioOptions, cleanup_lab, cleanup_stale, container};

mod bench;
mod bootbench;
mod budgetbench;
mod demo;
mod drainbench;
mod failbench;
mod fleetbench;

const CURRENT: &str = "/run/gateway-lab/current";

#[derive(Parser)]
#[command(name = "gwlab", about = "The gateway-agent offline AWS lab", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a lab in the background and build the standard VPC.
    Up {
        #[arg(long, value_delimiter = ',', default_value = "a,b")]
        zones: Vec<String>,
        /// Gateways per zone at start (0: launch later with `gwlab launch`).
        #[arg(long, default_value_t = 1)]
        capacity: u32,
        /// No lifecycle hooks on the ASGs.
        #[arg(long)]
        no_hooks: bool,
        /// More private route tables per zone, tagged and routed like the zone's own.
        #[arg(long, default_value_t = 0)]
        extra_tables: u32,
        /// Managed CIDRs besides 0.0.0.0/0 routed to each zone's ENI, e.g. 10.200.0.0/16.
        #[arg(long, value_delimiter = ',')]
        destinations: Vec<String>,
    },
    /// Tear the lab down.
    Down {
        /// Also remove namespaces left by any lab whose labd is gone.
        #[arg(long)]
        all: bool,
    },
    /// Instances, route tables (moto and kernel) and lifecycle actions.
    Status,
    /// Set a zone's ASG to one gateway (launches one if it has none).
    Launch {
        zone: String,
    },
    Terminate {
        target: String,
    },
    Stop {
        target: String,
    },
    Start {
        target: String,
    },
    /// SIGSTOP every process of the instance and drop its traffic.
    Hang {
        target: String,
    },
    Unhang {
        target: String,
    },
    /// Drop the instance's traffic at the VPC router.
    Cut {
        target: String,
        #[arg(long, value_delimiter = ',', default_value = "uplink,eni")]
        links: Vec<String>,
    },
    Restore {
        target: String,
        #[arg(long, value_delimiter = ',', default_value = "uplink,eni")]
        links: Vec<String>,
    },
    /// Change what an instance's IMDS answers.
    Imds {
        target: String,
        /// PATH=VALUE under latest/meta-data/, e.g. spot/instance-action='{"action":"terminate",...}'
        #[arg(long)]
        set: Vec<String>,
        #[arg(long)]
        clear: Vec<String>,
        /// ok | refuse | 500 | garbage
        #[arg(long)]
        fault: Option<String>,
    },
    /// Inject an API fault.
    Fault {
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value = "throttle")]
        kind: String,
        #[arg(long)]
        count: Option<u32>,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        #[arg(long)]
        clear: bool,
    },
    /// Send a fixed-rate stream from a zone's client to the internet host and report loss.
    Stream {
        #[arg(long)]
        zone: String,
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Run a command inside an instance.
    Exec {
        target: String,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Boot an instance with systemd (Debian 12 in a container, joined to its namespace) and
    /// install the package there, configured for the lab; then drive it with
    /// `nsenter -t <pid> -a systemctl ...` (the pid is printed).
    Systemd {
        target: String,
        /// The .deb to install (default: the one `make package` left under
        /// $CARGO_TARGET_DIR/packages, built when there is none).
        #[arg(long)]
        deb: Option<String>,
        /// `systemctl start gateway-agent` once it is configured.
        #[arg(long)]
        start: bool,
    },
    /// The lab's own figures.
    Bench {
        #[arg(long, default_value_t = 300)]
        calls: usize,
    },
    /// How long a gateway-agent boot takes in the lab (start -> READY=1), and its API calls.
    BenchBoot {
        /// The gateway-agent binary to run in the instances.
        #[arg(long)]
        agent: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Print the agent's log of the last run.
        #[arg(long)]
        logs: bool,
    },
    /// Several gateway groups in one account (5 x 3 zones = 15 gateways by default) under the
    /// shared token buckets plus other tools' load: steady-state calls and throttling, then one
    /// takeover in every group at once, timed against the fault matrix's budget. Run it with
    /// GATEWAY_LAB_PROFILE=aws.
    BenchFleet {
        /// The gateway-agent binary to run in the instances.
        #[arg(long)]
        agent: String,
        /// Gateway groups (three zones each), 1 to 20.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=20))]
        groups: u8,
        /// How long the steady state is measured.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Other tools' load on the account's buckets, `Action=tokens/s,...`.
        #[arg(long, default_value = fleetbench::DEFAULT_BACKGROUND)]
        background: String,
        /// Print the agents' logs at the end.
        #[arg(long)]
        logs: bool,
    },
    /// What the agents cost the account's API: calls per gateway-hour by action, at steady
    /// state, through a partition, with a hung peer, and per takeover and hand-back.
    BenchBudget {
        /// The gateway-agent binary to run in the instances.
        #[arg(long)]
        agent: String,
        /// How long each state is measured.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Print the agents' logs at the end.
        #[arg(long)]
        logs: bool,
    },
    /// The outage a client sees when its zone's gateway is terminated: gateway-agent on both
    /// gateways, then the classic nat_monitor.sh (lab/scripts/) as the baseline.
    BenchFailover {
        /// The gateway-agent binary to run in the instances.
        #[arg(long)]
        agent: String,
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Route tables per zone (the zone's own plus tables-1 more).
        #[arg(long, default_value_t = 50)]
        tables: u32,
        /// Managed destinations: 0.0.0.0/0, then 10.200.0.0/16, 10.201.0.0/16...
        #[arg(long, default_value_t = 2)]
        destinations: usize,
        /// Runs of the nat_monitor.sh baseline (0: none).
        #[arg(long, default_value_t = 3)]
        baseline_runs: usize,
        /// Print the agents' (or the script's) logs of runs that went wrong.
        #[arg(long)]
        logs: bool,
        /// Also draw the client's packets around the death (median run of each side) as an SVG.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
    /// What a client loses when its zone's gateway leaves on purpose (SIGTERM, spot notice,
    /// instance refresh, rebalance recommendation, upgrade restart), gateway-agent on both.
    BenchDrain {
        /// The gateway-agent binary to run in the instances.
        #[arg(long)]
        agent: String,
        /// Runs per event type.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only these events: sigterm, spot, asg-termination, rebalance, restart-marker.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Print the agents' logs of runs that went wrong.
        #[arg(long)]
        logs: bool,
    },
    /// The two-zone demo: lab up, agents started, a gateway killed, what the client saw.
    Demo {
        /// The gateway-agent binary to run in the instances.
        #[arg(long)]
        agent: Option<String>,
    },
}

fn current() -> Result<Lab, String> {
    let id = std::fs::read_to_string(CURRENT)
        .map_err(|_| "no lab is up (gwlab up starts one)".to_string())?;
    let id = id.trim();
    let text = std::fs::read_to_string(format!("/run/gateway-lab/{id}/lab.json"))
        .map_err(|e| format!("lab {id}: {e}"))?;
    let info: Info = serde_json::from_str(&text).map_err(|e| format!("lab {id}: {e}"))?;
    Ok(Lab::connect(info))
}

async fn resolve(lab: &Lab, target: &str) -> Result<String, String> {
    if target.starts_with("i-") {
        return Ok(target.to_string());
    }
    lab.instance_in(target)
        .await
        .map(|i| i.instance_id)
        .map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<(), String> {
    let s = |e: gateway_lab::LabError| e.to_string();
    match cli.cmd {
        Cmd::Up {
            zones,
            capacity,
            no_hooks,
            extra_tables,
            destinations,
        } => {
            if let Ok(lab) = current()
                && gateway_lab::process_alive(lab.info.pid)
            {
                return Err(format!(
                    "lab {} is already up (gwlab down first)",
                    lab.lab_id()
                ));
            }
            let id = format!("{:04x}", std::process::id() & 0xffff);
            let mut lab = Lab::spawn(&id, false).map_err(s)?;
            std::fs::write(CURRENT, &id).map_err(|e| format!("{CURRENT}: {e}"))?;
            let opts = ScenarioOptions {
                zones,
                capacity,
                hooks: !no_hooks,
                extra_tables,
                destinations,
                ..ScenarioOptions::default()
            };
            let sc = lab.scenario(&opts).await.map_err(s)?;
            println!(
                "lab {id} up: API {} (instances: {})",
                lab.info.endpoint, lab.info.vpc_endpoint
            );
            println!("{}", serde_json::to_string_pretty(&sc).unwrap_or_default());
        }
        Cmd::Down { all } => {
            if let Ok(lab) = current() {
                // Containers (gwlab systemd) keep their overlays in the lab's run directory.
                container::unmount_under(std::path::Path::new(&lab.info.run_dir));
                let _ = lab.shutdown().await;
                for _ in 0..100 {
                    if !gateway_lab::process_alive(lab.info.pid) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                cleanup_lab(lab.lab_id());
                let _ = std::fs::remove_file(CURRENT);
                println!("lab {} down", lab.lab_id());
            }
            if all {
                println!("removed {} stale namespaces", cleanup_stale());
            }
        }
        Cmd::Status => {
            let mut lab = current()?;
            let sc = lab.fetch_scenario().await.map_err(s)?;
            println!("lab {}  API {}", lab.lab_id(), lab.info.endpoint);
            for i in lab.instances().await.map_err(s)? {
                println!(
                    "  {} {:<10} {} {:<16} {}{}",
                    i.instance_id,
                    i.state,
                    i.az,
                    i.lifecycle_state.unwrap_or_default(),
                    if i.hung { "HUNG " } else { "" },
                    i.cuts.join(",")
                );
            }
            if let Some(sc) = sc {
                let ec2 = lab.ec2();
                for z in &sc.zones {
                    let rt = ec2
                        .describe_route_tables()
                        .route_table_ids(&z.route_table_id)
                        .send()
                        .await
                        .map_err(|e| format!("DescribeRouteTables: {e}"))?;
                    for r in rt.route_tables().iter().flat_map(|t| t.routes()) {
                        if r.gateway_id() == Some("local") {
                            continue;
                        }
                        println!(
                            "  {} {} -> {} ({})",
                            z.route_table_id,
                            r.destination_cidr_block().unwrap_or("?"),
                            r.network_interface_id().or(r.gateway_id()).unwrap_or("?"),
                            r.state().map(|s| s.as_str()).unwrap_or("?")
                        );
                    }
                    for k in lab.kernel_routes(&z.route_table_id).await.map_err(s)? {
                        println!(
                            "    kernel: {} {} {}",
                            k.destination,
                            k.kind,
                            k.eni.unwrap_or_default()
                        );
                    }
                }
            }
            println!("{}", lab.lifecycle().await.map_err(s)?);
        }
        Cmd::Launch { zone } => {
            let mut lab = current()?;
            let sc = lab
                .fetch_scenario()
                .await
                .map_err(s)?
                .ok_or("no scenario")?;
            let z = sc.zone(&zone);
            lab.autoscaling()
                .update_auto_scaling_group()
                .auto_scaling_group_name(&z.asg_name)
                .min_size(1)
                .desired_capacity(1)
                .send()
                .await
                .map_err(|e| format!("UpdateAutoScalingGroup: {e}"))?;
            let i = lab
                .wait_instance(&z.az, Duration::from_secs(10))
                .await
                .map_err(s)?;
            println!(
                "{} {} {}",
                i.instance_id,
                i.az,
                i.lifecycle_state.unwrap_or_default()
            );
        }
        Cmd::Terminate { target } => {
            let lab = current()?;
            lab.terminate(&resolve(&lab, &target).await?)
                .await
                .map_err(s)?;
        }
        Cmd::Stop { target } => {
            let lab = current()?;
            lab.stop(&resolve(&lab, &target).await?).await.map_err(s)?;
        }
        Cmd::Start { target } => {
            let lab = current()?;
            lab.start_instance(&target).await.map_err(s)?;
        }
        Cmd::Hang { target } => {
            let lab = current()?;
            lab.hang(&resolve(&lab, &target).await?).await.map_err(s)?;
        }
        Cmd::Unhang { target } => {
            let lab = current()?;
            lab.unhang(&resolve(&lab, &target).await?)
                .await
                .map_err(s)?;
        }
        Cmd::Cut { target, links } => {
            let lab = current()?;
            let links: Vec<&str> = links.iter().map(String::as_str).collect();
            lab.cut(&resolve(&lab, &target).await?, &links)
                .await
                .map_err(s)?;
        }
        Cmd::Restore { target, links } => {
            let lab = current()?;
            let links: Vec<&str> = links.iter().map(String::as_str).collect();
            lab.restore(&resolve(&lab, &target).await?, &links)
                .await
                .map_err(s)?;
        }
        Cmd::Imds {
            target,
            set,
            clear,
            fault,
        } => {
            let lab = current()?;
            let id = resolve(&lab, &target).await?;
            for kv in &set {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or(format!("--set {kv}: expected PATH=VALUE"))?;
                lab.imds_set(&id, k, Some(v)).await.map_err(s)?;
            }
            for k in &clear {
                lab.imds_set(&id, k, None).await.map_err(s)?;
            }
            if let Some(mode) = fault {
                lab.imds_fault(&id, &mode, 0).await.map_err(s)?;
            }
        }
        Cmd::Fault {
            action,
            kind,
            count,
            latency_ms,
            clear,
        } => {
            let lab = current()?;
            if clear {
                lab.clear_faults().await.map_err(s)?;
            } else {
                lab.inject(&Fault {
                    action,
                    kind,
                    count,
                    latency_ms,
                    status: None,
                })
                .await
                .map_err(s)?;
            }
        }
        Cmd::Stream {
            zone,
            rate,
            seconds,
        } => {
            let lab = current()?;
            let id = lab.stream_start(&zone, rate).await.map_err(s)?;
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let r = lab.stream_stop(id).await.map_err(s)?;
            println!(
                "zone {zone}: sent {} delivered {} lost {} longest gap {:.0} ms",
                r.sent, r.delivered, r.lost, r.longest_gap_ms
            );
        }
        Cmd::Exec { target, argv } => {
            let lab = current()?;
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let env = Lab::instance_env();
            let (pid, log) = lab
                .exec(&resolve(&lab, &target).await?, &argv, &env)
                .await
                .map_err(s)?;
            println!("pid {pid}, output in {log}");
        }
        Cmd::Systemd { target, deb, start } => {
            let mut lab = current()?;
            let group = lab
                .fetch_scenario()
                .await
                .map_err(s)?
                .map(|sc| sc.group)
                .ok_or("the lab has no scenario")?;
            let id = resolve(&lab, &target).await?;
            let inst = lab
                .instances()
                .await
                .map_err(s)?
                .into_iter()
                .find(|i| i.instance_id == id)
                .ok_or(format!("no instance {id}"))?;
            let ns = inst.ns.ok_or(format!("{id} is not running"))?;
            let deb = match deb {
                Some(deb) => std::path::PathBuf::from(deb),
                None => {
                    let target_dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| {
                        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
                        format!("{home}/.cache/gateway-agent/target")
                    });
                    container::Packages::find_or_build(std::path::Path::new(&target_dir))?.deb
                }
            };
            let image = container::image(&deb, &[])?;
            let dir = std::path::PathBuf::from(&lab.info.run_dir);
            let ct = container::Container::boot(&image, &ns, &dir, &format!("gw-{id}")).await?;
            let inside = ct.copy_in(&deb)?;
            ct.must(&["dpkg", "-i", &inside])?;
            ct.write(container::CONFIG, &container::config(&group, ""))?;
            ct.write(container::DROP_IN, container::DROP_IN_TEXT)?;
            ct.must(&["systemctl", "daemon-reload"])?;
            if start {
                ct.must(&["systemctl", "start", "gateway-agent"])?;
            }
            let pid = ct.detach();
            println!("{id} runs systemd (container PID 1 is host pid {pid}); for example:");
            println!("  nsenter -t {pid} -a systemctl status gateway-agent");
            println!("  nsenter -t {pid} -a journalctl -u gateway-agent");
            println!("  nsenter -t {pid} -a gateway-agent status");
        }
        Cmd::Bench { calls } => bench::run(calls).await?,
        Cmd::BenchBoot { agent, runs, logs } => bootbench::run(&agent, runs, logs).await?,
        Cmd::BenchBudget {
            agent,
            minutes,
            logs,
        } => budgetbench::run(&agent, minutes, logs).await?,
        Cmd::BenchFleet {
            agent,
            groups,
            minutes,
            background,
            logs,
        } => fleetbench::run(&agent, groups, minutes, &background, logs).await?,
        Cmd::BenchFailover {
            agent,
            runs,
            tables,
            destinations,
            baseline_runs,
            logs,
            svg,
        } => {
            failbench::run(failbench::Options {
                agent,
                runs,
                tables,
                destinations,
                baseline_runs,
                logs,
                svg,
            })
            .await?;
        }
        Cmd::BenchDrain {
            agent,
            runs,
            events,
            logs,
        } => {
            drainbench::run(drainbench::Options {
                agent,
                runs,
                events,
                logs,
            })
            .await?;
        }
        Cmd::Demo { agent } => demo::run(agent).await?,
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gwlab: {e}");
            ExitCode::FAILURE
        }
    }
}
