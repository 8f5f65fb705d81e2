//! `gwlab bench-failover`: what a client feels when its zone's gateway dies, with gateway-agent
//! on every gateway, against the classic nat_monitor.sh.
//!
//! Each run builds the two-zone VPC with `--tables` route tables per zone (every one routing
//! `--destinations` managed CIDRs to the zone's ENI), brings both gateways up, streams 100
//! packets/s from zone B's client, terminates B's instance and polls the API until every watched
//! route of B's tables points at zone A's ENI. The client's longest gap is the outage. When each
//! route moved comes from the lab's own record of route writes: a DescribeRouteTables poll waits
//! for moto behind the movers' calls and sees a move up to a few hundred ms late.
//!
//! - agent runs: gateway-agent on both gateways (started under a NOTIFY_SOCKET, READY=1 awaited);
//!   A's log line `takeover complete` gives the agent's own detection and decision-to-switched
//!   figures (n/a while the agent does not print it);
//! - baseline runs: no agent. Each gateway is set up by hand the way a classic HA NAT pair is (its
//!   ENI attached and addressed, forwarding on, launch hook completed) and lab/scripts/nat_monitor.sh
//!   runs on A, watching B's ENI IP and B's tables. It moves 0.0.0.0/0 only, one table at a time,
//!   one AWS CLI process per table, so only 0.0.0.0/0 is watched for it.
//!
//! With `--svg PATH` it also draws the client's delivered packets per second around the death,
//! from the same runs as the table: the median-outage run of each side, the moments the client's
//! route (and all of B's routes) moved marked. Every stream then runs at least [`PLOT_AFTER`]
//! past the kill, so both lines cover the picture.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_lab::agent::Spec;
use gateway_lab::fleet::{Failure, Fleet, unix_now};
use gateway_lab::plot;
use gateway_lab::report::{field, ms, number, spread_line, strip_ansi};
use gateway_lab::{Instance, Lab, Scenario, ScenarioOptions, Zone, percentile};

/// Destinations beyond 0.0.0.0/0 are 10.200.0.0/16, 10.201.0.0/16, ... outside the lab's VPC.
const MAX_DESTINATIONS: usize = 1 + 56;
/// AWS's default quota: 200 route tables per VPC.
const MAX_TABLES: u32 = 200;
const STREAM_RATE: u32 = 100;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const INSTANCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Both agents have renewed, probed and settled before the stream starts.
const SETTLE: Duration = Duration::from_secs(3);
/// nat_monitor.sh's cycle: Num_Pings-1 seconds of answered pings, then Wait_Between_Pings. A kill
/// at a fixed delay after the monitor starts always lands at the same point of this cycle (with
/// these delays, next to the worst: ~8 s to notice): the runs spread their kills evenly across it.
const CYCLE: Duration = Duration::from_secs(4);
/// The stream runs this long before the kill, so the gap is measured from a flowing stream.
const LEAD_IN: Duration = Duration::from_secs(1);
/// The stream runs this long after the last route moved, so a late packet loss still counts.
const TAIL: Duration = Duration::from_secs(2);
/// How long the agent gets to move every route before the run is recorded as "no switch".
const AGENT_SWITCH_TIMEOUT: Duration = Duration::from_secs(15);
/// nat_monitor.sh needs up to ~8 s to notice, then runs one AWS CLI process (~0.6 s) per table.
const BASELINE_SWITCH_TIMEOUT: Duration = Duration::from_secs(15);
const BASELINE_PER_TABLE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(10);
/// With `--svg`: every stream runs at least this long after the kill, past nat_monitor.sh's
/// worst detection (~8 s) and its first table's move, so the agent's line spans the picture too.
const PLOT_AFTER: Duration = Duration::from_secs(12);
/// The picture's bins: 100 ms holds ~10 packets at 100/s, fine enough for a ~1 s outage.
const PLOT_BIN_S: f64 = 0.1;
/// The picture ends this long after the last marked move of a client's route.
const PLOT_TAIL_S: f64 = 3.0;
/// The name scenario.py gives the launch hook of every zone's Auto Scaling group.
const LAUNCH_HOOK: &str = "gateway-launch";

pub struct Options {
    pub agent: String,
    pub runs: usize,
    pub tables: u32,
    pub destinations: usize,
    pub baseline_runs: usize,
    pub logs: bool,
    /// Draw the median runs' client streams here (SVG).
    pub svg: Option<PathBuf>,
}

/// What one kill of zone B's gateway cost.
#[derive(Default)]
struct Run {
    build_ms: f64,
    /// The client's longest gap between two delivered packets (ms).
    outage_ms: f64,
    sent: u64,
    lost: u64,
    /// Terminate → the first, and the last, watched route of B rewritten to A's ENI, from the
    /// lab's record of route writes: exact, where a poll waits behind the movers' own calls.
    first_ms: Option<f64>,
    all_ms: Option<f64>,
    /// Terminate → 0.0.0.0/0 of the client's own table (B's subnet table) rewritten: where the
    /// outage ends, whatever the order the mover takes the tables in.
    client_ms: Option<f64>,
    /// Terminate → a DescribeRouteTables poll saw every watched route of B on A's ENI (None: not
    /// within the timeout, "no switch").
    seen_ms: Option<f64>,
    routes: usize,
    /// From agent A's `takeover complete` line.
    detection_ms: Option<f64>,
    decision_ms: Option<f64>,
    agent_routes: Option<u64>,
    /// DescribeRouteTables polls after the kill, and their mean round trip (ms): the bench's own
    /// load on the API the movers use.
    polls: usize,
    poll_ms: f64,
    /// How far into nat_monitor.sh's cycle (or the same offset for the agent) the kill came.
    phase: Duration,
    /// Each packet's arrival at the internet host, in seconds since the kill, and when the
    /// stream stopped: the picture's line.
    arrivals: Vec<f64>,
    stream_end_s: f64,
    /// Why the run needs its logs shown, if it does.
    trouble: Option<String>,
    logs: Vec<(String, String)>,
}

fn managed_destinations(n: usize) -> Vec<String> {
    std::iter::once("0.0.0.0/0".to_string())
        .chain((0..n.saturating_sub(1)).map(|i| format!("10.{}.0.0/16", 200 + i)))
        .collect()
}

fn scenario_options(opts: &Options, dests: &[String]) -> ScenarioOptions {
    ScenarioOptions {
        extra_tables: opts.tables - 1,
        destinations: dests[1..].to_vec(),
        ..ScenarioOptions::default()
    }
}

fn nat_monitor_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nat_monitor.sh")
}

/// The AWS CLI of the lab's venv (lab/requirements.txt installs it beside moto).
/// needs-command: aws
fn aws_cli() -> PathBuf {
    Path::new(&gateway_lab::python()).with_file_name("aws")
}

/// A fresh VPC (the lab's first, or the lab reset) and both zones' running instances.
pub(crate) async fn fresh(
    f: &mut Fleet,
    first: bool,
    opts: &ScenarioOptions,
) -> Result<[Instance; 2], Failure> {
    if !first {
        f.rebuild(opts).await?;
    }
    Ok([
        f.instance_within("a", INSTANCE_TIMEOUT).await?,
        f.instance_within("b", INSTANCE_TIMEOUT).await?,
    ])
}

fn ns_of(inst: &Instance) -> Result<String, String> {
    inst.ns
        .clone()
        .ok_or_else(|| format!("instance {} has no namespace", inst.instance_id))
}

/// Start gateway-agent in both zones' instances and wait until each has sent READY=1.
async fn start_agents(f: &mut Fleet, run: usize, instances: [Instance; 2]) -> Result<(), Failure> {
    for (zone, inst) in ["a", "b"].into_iter().zip(instances) {
        f.spawn(
            zone,
            inst,
            Spec::new().name(format!("failover-{run}-{zone}")),
        )?;
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    for zone in ["a", "b"] {
        f.ready_within(zone, deadline.saturating_duration_since(Instant::now()))
            .await?;
    }
    Ok(())
}

/// What a classic HA NAT pair's boot scripts do, without an agent: the zone's ENI attached at
/// device index 1 and addressed, forwarding on, and the launch hook completed.
async fn hand_configure(f: &Fleet, zone: &str, inst: &Instance) -> Result<(), Failure> {
    let (lab, zone) = (&f.lab, f.zone(zone));
    f.attach_eni(&zone.name, &inst.instance_id).await?;
    let subnets = lab
        .ec2()
        .describe_subnets()
        .subnet_ids(&zone.public_subnet_id)
        .send()
        .await
        .map_err(|e| format!("DescribeSubnets {}: {e:?}", zone.public_subnet_id))?;
    let cidr = subnets
        .subnets()
        .first()
        .and_then(|s| s.cidr_block())
        .ok_or_else(|| format!("subnet {} has no CIDR", zone.public_subnet_id))?;
    let prefix = cidr
        .split_once('/')
        .map(|(_, p)| p)
        .ok_or_else(|| format!("subnet CIDR {cidr} has no prefix length"))?;
    let ns = ns_of(inst)?;
    // The lab names an interface ens<5 + device index> when it moves it into the instance;
    // under the aws profile that is only once the attachment is done (2-5 s), as the hot-plug.
    gateway_lab::wait_for(Duration::from_secs(30), "ens6 hot-plugged", || async {
        Command::new("ip")
            .args(["-n", &ns, "link", "show", "ens6"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(drop)
    })
    .await?;
    lab.forwarding(&inst.instance_id, true).await?;
    let addr = format!("{}/{prefix}", zone.eni_ip);
    let out = Command::new("ip")
        // `replace`: under the aws profile the instance's network manager may have addressed
        // the hot-plugged interface already, as amazon-ec2-net-utils does.
        .args(["-n", &ns, "addr", "replace", &addr, "dev", "ens6"])
        .output()
        .map_err(|e| format!("ip -n {ns} addr replace {addr} dev ens6: {e}"))?;
    if !out.status.success() {
        return Err(Failure(format!(
            "ip -n {ns} addr replace {addr} dev ens6: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    lab.autoscaling()
        .complete_lifecycle_action()
        .auto_scaling_group_name(&zone.asg_name)
        .lifecycle_hook_name(LAUNCH_HOOK)
        .instance_id(&inst.instance_id)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .map_err(|e| {
            format!(
                "CompleteLifecycleAction {LAUNCH_HOOK} for {}: {e:?}",
                inst.instance_id
            )
        })?;
    Ok(())
}

/// Start nat_monitor.sh in A's namespace, in its own process group so it dies whole.
fn start_monitor(
    lab: &Lab,
    run: usize,
    ns: &str,
    a: &Zone,
    b: &Zone,
    b_instance: &str,
) -> Result<(Child, String), String> {
    let log = format!("{}/nat-monitor-{run}.log", lab.info.run_dir);
    let out = std::fs::File::create(&log).map_err(|e| format!("{log}: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("{log}: {e}"))?;
    let script = nat_monitor_script();
    let aws = aws_cli();
    let mut cmd = Command::new("ip");
    // Through bash: a checkout (or a copy) that lost the script's exec bit still runs it.
    cmd.args(["netns", "exec", ns, "bash"])
        .arg(&script)
        .arg(&b.eni_ip)
        .arg(&a.eni_id)
        .args(&b.route_table_ids)
        .envs(Lab::instance_env())
        .env("AWS", &aws)
        .env("NAT_ID", b_instance)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| format!("start {}: {e}", script.display()))?;
    Ok((child, log))
}

/// Stop the monitor's whole process group: its ping, sleep and aws children with it.
fn stop_group(child: &mut Child) {
    use nix::sys::signal::{Signal, killpg};
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let _ = killpg(pgid, Signal::SIGTERM);
    for _ in 0..20 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Whatever outlived SIGTERM (an AWS CLI call between its handlers) must not keep writing.
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
}

/// Per table of `tables`: how many of its watched routes point at `eni`, of how many watched.
async fn switched(
    ec2: &aws_sdk_ec2::Client,
    tables: &[String],
    watch: &[String],
    eni: &str,
) -> Result<Vec<(String, usize, usize)>, String> {
    let out = ec2
        .describe_route_tables()
        .set_route_table_ids(Some(tables.to_vec()))
        .send()
        .await
        .map_err(|e| format!("DescribeRouteTables of zone B: {e:?}"))?;
    let mut per_table = Vec::new();
    for t in out.route_tables() {
        let (mut moved, mut total) = (0, 0);
        for r in t.routes() {
            if let Some(dst) = r.destination_cidr_block()
                && watch.iter().any(|w| w == dst)
            {
                total += 1;
                if r.network_interface_id() == Some(eni) {
                    moved += 1;
                }
            }
        }
        let id = t.route_table_id().unwrap_or_default().to_string();
        per_table.push((id, moved, total));
    }
    Ok(per_table)
}

/// Stream from B's client, kill B's gateway and time the move of B's watched routes to A's ENI.
async fn kill_and_measure(
    lab: &Lab,
    sc: &Scenario,
    b_instance: &str,
    watch: &[String],
    timeout: Duration,
    min_stream: Duration,
    run: &mut Run,
) -> Result<(), Failure> {
    let (a, b) = (sc.zone("a"), sc.zone("b"));
    let ec2 = lab.ec2();
    let want = b.route_table_ids.len() * watch.len();
    let tables = switched(&ec2, &b.route_table_ids, watch, &a.eni_id).await?;
    let total: usize = tables.iter().map(|t| t.2).sum();
    let moved: usize = tables.iter().map(|t| t.1).sum();
    if total != want || moved != 0 {
        return Err(Failure(format!(
            "before the kill zone B has {total} watched routes ({want} expected), {moved} on A's ENI"
        )));
    }
    run.routes = want;
    let stream = lab.stream_start("b", STREAM_RATE).await?;
    tokio::time::sleep(LEAD_IN).await;
    let before = lab.stream_report(stream).await?;
    if before.delivered == 0 {
        let _ = lab.stream_stop(stream).await;
        run.trouble = Some(format!(
            "zone B's client delivered nothing of {} packets before the kill",
            before.sent
        ));
        return Ok(());
    }
    let kill_at = unix_now();
    let t0 = Instant::now();
    lab.terminate(b_instance).await?;
    let mut polling = Duration::ZERO;
    // Each poll asks only for the tables not fully moved yet: describing 50 tables holds moto
    // (and so the movers' calls) for ~25 ms, a load that shrinks as the tables move.
    let mut pending = b.route_table_ids.clone();
    let mut done = 0;
    loop {
        let poll = Instant::now();
        let tables = switched(&ec2, &pending, watch, &a.eni_id).await?;
        polling += poll.elapsed();
        run.polls += 1;
        let mut moved = done;
        for (id, m, total) in tables {
            moved += m;
            if m == total {
                done += m;
                pending.retain(|p| *p != id);
            }
        }
        if moved == want {
            run.seen_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
            break;
        }
        if t0.elapsed() > timeout {
            run.trouble = Some(format!(
                "no switch: {moved} of {want} routes on A's ENI after {timeout:?}"
            ));
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    run.poll_ms = polling.as_secs_f64() * 1e3 / run.polls as f64;
    tokio::time::sleep(TAIL.max(min_stream.saturating_sub(t0.elapsed()))).await;
    run.stream_end_s = unix_now() - kill_at;
    let r = lab.stream_stop(stream).await?;
    let timeline = lab.stream_timeline(stream).await?;
    run.arrivals = timeline.arrivals.iter().map(|t| t - kill_at).collect();
    run.outage_ms = r.longest_gap_ms;
    run.sent = r.sent;
    run.lost = r.lost;

    // The first write after the kill of each (table, destination) to A's ENI.
    let mut moved: HashMap<(String, String), f64> = HashMap::new();
    for c in lab.route_changes().await? {
        let (Some(table), Some(dst)) = (c.table, c.destination) else {
            continue;
        };
        if c.at < kill_at
            || c.target.as_deref() != Some(a.eni_id.as_str())
            || !b.route_table_ids.contains(&table)
            || !watch.contains(&dst)
        {
            continue;
        }
        let at = (c.at - kill_at) * 1e3;
        moved
            .entry((table, dst))
            .and_modify(|t| *t = t.min(at))
            .or_insert(at);
    }
    run.first_ms = moved.values().copied().reduce(f64::min);
    run.client_ms = moved
        .get(&(b.route_table_id.clone(), "0.0.0.0/0".to_string()))
        .copied();
    if moved.len() == want {
        run.all_ms = moved.values().copied().reduce(f64::max);
    }
    Ok(())
}

/// What every agent of the bench runs with besides its group: the managed destinations.
fn agent_config(dests: &[String]) -> String {
    let list: Vec<String> = dests.iter().map(|d| format!("\"{d}\"")).collect();
    format!("[routes]\ndestinations = [{}]", list.join(", "))
}

/// The extra wait before run `i` of `n`: the middle of its own slice of the cycle.
fn phase(i: usize, n: usize) -> Duration {
    let slices = u32::try_from(2 * n.max(1)).unwrap_or(u32::MAX);
    let at = u32::try_from(2 * i + 1).unwrap_or(u32::MAX);
    CYCLE * at / slices
}

async fn agent_run(
    f: &mut Fleet,
    n: usize,
    opts: &Options,
    dests: &[String],
) -> Result<Run, Failure> {
    let mut run = Run {
        phase: phase(n, opts.runs),
        ..Run::default()
    };
    let [ia, ib] = fresh(f, n == 0, &scenario_options(opts, dests)).await?;
    run.build_ms = f.build_time.as_secs_f64() * 1e3;
    let b_instance = ib.instance_id.clone();
    start_agents(f, n, [ia, ib]).await?;
    tokio::time::sleep(SETTLE + run.phase).await;
    let measured = kill_and_measure(
        &f.lab,
        &f.sc,
        &b_instance,
        dests,
        AGENT_SWITCH_TIMEOUT,
        plot_after(opts),
        &mut run,
    )
    .await;
    // SIGKILL, not SIGTERM: a stopping agent hands its routes over, which is not this run.
    f.kill_all().await;
    if let Some(t) = takeover_line(&f.log("a"), &f.zone("b").az) {
        run.detection_ms = t.detection_ms;
        run.decision_ms = t.decision_ms;
        run.agent_routes = t.routes;
    } else if run.trouble.is_none() && run.seen_ms.is_some() {
        run.trouble = Some("routes moved but agent A logged no `takeover complete`".into());
    }
    for zone in ["a", "b"] {
        let agent = f.agent(zone);
        run.logs.push((
            format!("agent {zone} ({})", agent.log_path.display()),
            agent.log(),
        ));
    }
    measured?;
    Ok(run)
}

async fn baseline_run(
    f: &mut Fleet,
    n: usize,
    opts: &Options,
    dests: &[String],
    first: bool,
) -> Result<Run, Failure> {
    let mut run = Run {
        phase: phase(n, opts.baseline_runs),
        ..Run::default()
    };
    let [ia, ib] = fresh(f, first, &scenario_options(opts, dests)).await?;
    run.build_ms = f.build_time.as_secs_f64() * 1e3;
    hand_configure(f, "a", &ia).await?;
    hand_configure(f, "b", &ib).await?;
    let (lab, sc) = (&f.lab, &f.sc);
    let (mut monitor, log) = start_monitor(
        lab,
        n,
        &ns_of(&ia)?,
        sc.zone("a"),
        sc.zone("b"),
        &ib.instance_id,
    )?;
    tokio::time::sleep(SETTLE + run.phase).await;
    let tables = u32::try_from(sc.zone("b").route_table_ids.len()).unwrap_or(u32::MAX);
    let timeout = BASELINE_SWITCH_TIMEOUT + BASELINE_PER_TABLE * tables;
    let measured = kill_and_measure(
        lab,
        sc,
        &ib.instance_id,
        &dests[..1],
        timeout,
        plot_after(opts),
        &mut run,
    )
    .await;
    stop_group(&mut monitor);
    run.logs.push((
        format!("nat_monitor.sh ({log})"),
        std::fs::read_to_string(&log).unwrap_or_default(),
    ));
    measured?;
    Ok(run)
}

/// How long every stream runs after the kill at least: [`PLOT_AFTER`] when drawing.
fn plot_after(opts: &Options) -> Duration {
    if opts.svg.is_some() {
        PLOT_AFTER
    } else {
        Duration::ZERO
    }
}

/// The switched run with the median outage (the upper one of an even count).
fn median_run(runs: &[Run]) -> Option<&Run> {
    let mut switched: Vec<&Run> = runs.iter().filter(|r| r.seen_ms.is_some()).collect();
    switched.sort_by(|a, b| a.outage_ms.total_cmp(&b.outage_ms));
    switched.get(switched.len() / 2).copied()
}

/// The picture of the median run of each side, as a [`plot::Trace`] each.
fn figure(
    opts: &Options,
    dests: &[String],
    sides: &[(&str, &[Run])],
) -> Option<plot::OutageFigure> {
    let mut traces = Vec::new();
    let mut last_client_move: f64 = 0.0;
    for (name, runs) in sides {
        let Some(r) = median_run(runs) else {
            continue;
        };
        let mut moves = Vec::new();
        if let Some(c) = r.client_ms {
            last_client_move = last_client_move.max(c / 1e3);
            moves.push((c / 1e3, "client's route".to_string()));
        }
        if r.routes > 1
            && let Some(all) = r.all_ms
            && Some(all) != r.client_ms
        {
            moves.push((all / 1e3, format!("all {} routes", r.routes)));
        }
        traces.push(plot::Trace {
            label: format!(
                "{name}: outage {:.0} ms (median of {} runs)",
                r.outage_ms,
                runs.len()
            ),
            arrivals: r.arrivals.clone(),
            end: r.stream_end_s,
            moves,
        });
    }
    if traces.is_empty() {
        return None;
    }
    let to = last_client_move + PLOT_TAIL_S;
    for t in &mut traces {
        t.end = t.end.min(to);
        let (shown, off): (Vec<_>, Vec<_>) = t.moves.drain(..).partition(|(at, _)| *at <= to);
        t.moves = shown;
        for (at, what) in off {
            t.label.push_str(&format!("; {what} moved at +{at:.1} s"));
        }
    }
    Some(plot::OutageFigure {
        title: format!(
            "Zone B's client while its gateway dies: {} route table{} x {} destination{} per zone",
            opts.tables,
            if opts.tables == 1 { "" } else { "s" },
            dests.len(),
            if dests.len() == 1 { "" } else { "s" },
        ),
        note: format!(
            "lab profile {}, {STREAM_RATE} packets/s",
            gateway_lab::profile()
        ),
        from: -LEAD_IN.as_secs_f64(),
        bin: PLOT_BIN_S,
        rate: f64::from(STREAM_RATE),
        traces,
    })
}

/// The figures of agent A's `takeover complete` line.
#[derive(Debug, Default, PartialEq)]
struct Takeover {
    detection_ms: Option<f64>,
    decision_ms: Option<f64>,
    routes: Option<u64>,
}

/// The last `takeover complete` line of a log, for `zone` when the line names a zone.
fn takeover_line(log: &str, zone: &str) -> Option<Takeover> {
    log.lines()
        .map(strip_ansi)
        .rfind(|l| l.contains("takeover complete") && field(l, "zone").is_none_or(|z| z == zone))
        .map(|l| Takeover {
            detection_ms: field(&l, "detection_ms").and_then(number),
            decision_ms: field(&l, "decision_to_switched_ms").and_then(number),
            routes: field(&l, "routes").and_then(|v| v.parse().ok()),
        })
}

fn print_run(kind: &str, i: usize, r: &Run) {
    let switch = match r.seen_ms {
        Some(_) => format!(
            "first route {}, client's {}, all {} routes {} (a poll saw them at {})",
            ms(r.first_ms),
            ms(r.client_ms),
            r.routes,
            ms(r.all_ms),
            ms(r.seen_ms)
        ),
        None => format!("NO SWITCH (first route {})", ms(r.first_ms)),
    };
    let agent = if kind == "agent" {
        format!(
            "; agent: detection {}, decision->switched {}, routes {}",
            ms(r.detection_ms),
            r.decision_ms
                .map_or_else(|| "n/a".into(), |v| format!("{v:.1} ms")),
            r.agent_routes
                .map_or_else(|| "n/a".into(), |v| v.to_string())
        )
    } else {
        String::new()
    };
    println!(
        "{kind:>8} run {:>2} (phase {:.1} s): outage {:>6.0} ms (lost {}/{}); {switch}{agent}; \
         build {:.1} s; {} polls of {:.0} ms",
        i + 1,
        r.phase.as_secs_f64(),
        r.outage_ms,
        r.lost,
        r.sent,
        r.build_ms / 1e3,
        r.polls,
        r.poll_ms
    );
    if let Some(t) = &r.trouble {
        println!("{:>17} {t}", "");
    }
}

fn stats_line(name: &str, samples: &[f64], of: usize) {
    println!("{}", spread_line(name, samples, of));
}

/// When the routes moved, seen from the API and from a poll, for either side.
fn switch_lines(runs: &[Run]) {
    let n = runs.len();
    let pick = |f: fn(&Run) -> Option<f64>| -> Vec<f64> { runs.iter().filter_map(f).collect() };
    stats_line("terminate -> first route moved", &pick(|r| r.first_ms), n);
    stats_line(
        "terminate -> client's route moved",
        &pick(|r| r.client_ms),
        n,
    );
    stats_line("terminate -> all routes moved", &pick(|r| r.all_ms), n);
    stats_line("terminate -> a poll saw all moved", &pick(|r| r.seen_ms), n);
}

fn switched_outages(runs: &[Run]) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.seen_ms.is_some())
        .map(|r| r.outage_ms)
        .collect()
}

fn show_logs(runs: &[Run], kind: &str) {
    for (i, r) in runs.iter().enumerate() {
        if r.trouble.is_none() {
            continue;
        }
        for (name, text) in &r.logs {
            println!("--- {kind} run {}: {name} ---\n{text}", i + 1);
        }
    }
}

fn preflight(opts: &Options) -> Result<(), String> {
    if !(1..=MAX_TABLES).contains(&opts.tables) {
        return Err(format!(
            "--tables {}: 1 to {MAX_TABLES} route tables per zone",
            opts.tables
        ));
    }
    if !(1..=MAX_DESTINATIONS).contains(&opts.destinations) {
        return Err(format!(
            "--destinations {}: 1 to {MAX_DESTINATIONS} (0.0.0.0/0, then 10.200.0.0/16, 10.201.0.0/16...)",
            opts.destinations
        ));
    }
    if opts.runs > 0 && !Path::new(&opts.agent).is_file() {
        return Err(format!("--agent {}: no such file", opts.agent));
    }
    if opts.baseline_runs > 0 {
        let aws = aws_cli();
        if !aws.is_file() {
            return Err(format!(
                "no AWS CLI at {} for the nat_monitor.sh baseline: pip install -r lab/requirements.txt into the lab venv, or pass --baseline-runs 0",
                aws.display()
            ));
        }
        let ping = Command::new("ping").arg("-V").output();
        if !ping.is_ok_and(|o| o.status.success()) {
            return Err(
                "no `ping` for the nat_monitor.sh baseline: apt-get install iputils-ping, or pass --baseline-runs 0"
                    .into(),
            );
        }
    }
    Ok(())
}

pub async fn run(opts: Options) -> Result<(), String> {
    preflight(&opts)?;
    let dests = managed_destinations(opts.destinations);
    println!(
        "failover bench: 2 zones, {} route tables per zone, destinations {}; zone B's gateway is \
         terminated while its client sends {STREAM_RATE} packets/s",
        opts.tables,
        dests.join(", ")
    );
    // GATEWAY_LAB_PROFILE reaches labd through the environment.
    println!("lab profile: {}", gateway_lab::profile());
    let mut f = Fleet::new(&scenario_options(&opts, &dests)).await?;
    f.bin = opts.agent.clone();
    f.extra = agent_config(&dests);
    // The agents keep the default control socket, as the bench has always run them.
    f.sockets = false;
    let mut agent_runs = Vec::new();
    for i in 0..opts.runs {
        let r = agent_run(&mut f, i, &opts, &dests).await?;
        print_run("agent", i, &r);
        agent_runs.push(r);
    }
    let mut baseline_runs = Vec::new();
    for i in 0..opts.baseline_runs {
        let first = opts.runs == 0 && i == 0;
        let r = baseline_run(&mut f, i, &opts, &dests, first).await?;
        print_run("baseline", i, &r);
        baseline_runs.push(r);
    }
    drop(f);

    let builds: Vec<f64> = agent_runs
        .iter()
        .chain(&baseline_runs)
        .map(|r| r.build_ms)
        .collect();
    println!();
    println!(
        "scenario build ({} tables, {} routes per zone): p50 {:.2} s, max {:.2} s",
        opts.tables,
        opts.tables as usize * dests.len(),
        percentile(&builds, 50.0) / 1e3,
        percentile(&builds, 100.0) / 1e3
    );
    let agent_outage = switched_outages(&agent_runs);
    if opts.runs > 0 {
        let n = agent_runs.len();
        let routes = agent_runs.first().map_or(0, |r| r.routes);
        println!("gateway-agent: {n} runs, {routes} routes of zone B to move");
        stats_line("outage (client's longest gap)", &agent_outage, n);
        let pick =
            |f: fn(&Run) -> Option<f64>| -> Vec<f64> { agent_runs.iter().filter_map(f).collect() };
        stats_line("detection (agent log)", &pick(|r| r.detection_ms), n);
        stats_line(
            "decision -> switched (agent log)",
            &pick(|r| r.decision_ms),
            n,
        );
        switch_lines(&agent_runs);
        let none = agent_runs.iter().filter(|r| r.seen_ms.is_none()).count();
        if none > 0 {
            println!(
                "  no switch within {AGENT_SWITCH_TIMEOUT:?} in {none} of {n} runs (left out of the outage figures)"
            );
        }
    }
    let base_outage = switched_outages(&baseline_runs);
    if opts.baseline_runs > 0 {
        let n = baseline_runs.len();
        let routes = baseline_runs.first().map_or(0, |r| r.routes);
        println!(
            "nat_monitor.sh baseline: {n} runs, {routes} routes of zone B to move (0.0.0.0/0 only: \
             the script leaves every other destination on the dead ENI)"
        );
        stats_line("outage (client's longest gap)", &base_outage, n);
        switch_lines(&baseline_runs);
        let none = baseline_runs.iter().filter(|r| r.seen_ms.is_none()).count();
        if none > 0 {
            println!("  no switch in {none} of {n} runs (left out of the outage figures)");
        }
    }
    if opts.runs > 0 && opts.baseline_runs > 0 {
        if agent_outage.is_empty() || base_outage.is_empty() {
            println!("outage ratio baseline/agent: n/a (a side never switched)");
        } else {
            let ratio = |p| percentile(&base_outage, p) / percentile(&agent_outage, p);
            println!(
                "outage ratio baseline/agent: p50 {:.1}x, p99 {:.1}x",
                ratio(50.0),
                ratio(99.0)
            );
        }
    }
    if let Some(path) = &opts.svg {
        let sides: [(&str, &[Run]); 2] = [
            ("gateway-agent", &agent_runs),
            ("nat_monitor.sh", &baseline_runs),
        ];
        match figure(&opts, &dests, &sides) {
            Some(fig) => {
                plot::write_svg(&fig, path)?;
                println!(
                    "picture of the median runs' client streams: {}",
                    path.display()
                );
            }
            None => println!("no picture: no run of either side switched"),
        }
    }
    if opts.logs {
        show_logs(&agent_runs, "agent");
        show_logs(&baseline_runs, "baseline");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_spread_evenly_across_the_cycle() {
        let ms = |i, n| phase(i, n).as_millis();
        assert_eq!(ms(0, 1), 2000);
        assert_eq!(
            [ms(0, 4), ms(1, 4), ms(2, 4), ms(3, 4)],
            [500, 1500, 2500, 3500]
        );
    }

    #[test]
    fn destinations_start_with_the_default_route() {
        assert_eq!(managed_destinations(1), ["0.0.0.0/0"]);
        assert_eq!(
            managed_destinations(3),
            ["0.0.0.0/0", "10.200.0.0/16", "10.201.0.0/16"]
        );
        assert_eq!(
            managed_destinations(MAX_DESTINATIONS).last().unwrap(),
            "10.255.0.0/16"
        );
    }

    #[test]
    fn takeover_line_plain_quoted_and_coloured() {
        let plain = "2026-11-24T23:00:00.000Z  INFO gateway_agent::agent: takeover complete \
                     zone=us-east-1b detection_ms=612 decision_to_switched_ms=25.4 routes=100";
        let want = Takeover {
            detection_ms: Some(612.0),
            decision_ms: Some(25.4),
            routes: Some(100),
        };
        assert_eq!(takeover_line(plain, "us-east-1b"), Some(want));

        let quoted = "INFO takeover complete zone=\"us-east-1b\" detection_ms=\"612ms\" \
                      decision_to_switched_ms=25.4 routes=100";
        assert_eq!(
            takeover_line(quoted, "us-east-1b").unwrap().detection_ms,
            Some(612.0)
        );

        let coloured = "\u{1b}[32m INFO\u{1b}[0m \u{1b}[2mgateway_agent\u{1b}[0m: takeover complete \
                        \u{1b}[3mzone\u{1b}[0m\u{1b}[2m=\u{1b}[0mus-east-1b \
                        \u{1b}[3mdetection_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m612 \
                        \u{1b}[3mdecision_to_switched_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m25.4 \
                        \u{1b}[3mroutes\u{1b}[0m\u{1b}[2m=\u{1b}[0m100";
        assert_eq!(
            takeover_line(coloured, "us-east-1b"),
            Some(Takeover {
                detection_ms: Some(612.0),
                decision_ms: Some(25.4),
                routes: Some(100),
            })
        );
    }

    #[test]
    fn takeover_line_of_another_zone_or_missing_is_none() {
        let other = "takeover complete zone=us-east-1c detection_ms=1 routes=2";
        assert_eq!(takeover_line(other, "us-east-1b"), None);
        let unknown = "takeover complete zone=us-east-1b detection_ms=-1.0 routes=2";
        assert_eq!(
            takeover_line(unknown, "us-east-1b").unwrap().detection_ms,
            None
        );
        assert_eq!(takeover_line("boot complete", "us-east-1b"), None);
        // A field only when it starts a word: `xroutes=` is not `routes=`.
        assert_eq!(field("a xroutes=5 routes=7", "routes"), Some("7"));
        assert_eq!(field("span.routes=5", "routes"), None);
    }
}
