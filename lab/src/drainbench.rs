//! `gwlab bench-drain`: what a client feels when its zone's gateway leaves on purpose, with
//! gateway-agent on both gateways.
//!
//! Each run builds the two-zone VPC, starts an agent in both zones (`drain.grace_s = 1`), streams
//! 100 packets/s from zone A's client and then announces one planned exit to A's gateway:
//!
//! - `sigterm`: SIGTERM to the agent (`systemctl stop` with `handover_on_stop = true`);
//! - `spot`: a spot interruption notice in IMDS, two minutes out;
//! - `asg-termination`: an instance refresh (TerminateInstanceInAutoScalingGroup without a
//!   decrement); the replacement then gets an agent and must take the zone back;
//! - `rebalance`: a rebalance recommendation in IMDS;
//! - `restart-marker`: a package upgrade, SIGTERM with the restart marker present and a new agent
//!   on the same instance; it should write no route at all.
//!
//! Measured: the loss in A's stream over the whole sequence, the agent's own `drain_ms`, trigger
//! → agent exit, route writes, and where A's 0.0.0.0/0 ended. Trigger → exit of an IMDS notice
//! includes the wait for the agent's next poll (up to `drain.imds_poll_ms`, 1 s), and every exit
//! but the upgrade's includes `drain.grace_s`. A lost packet is dated by sampling the running
//! stream's count, so a loss at the hand-over can be told from one at the exit.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway_lab::{Lab, Scenario, ScenarioOptions, percentile};

use crate::failbench::{field, fresh, lab_err, ns_of, number, strip_ansi};

const STREAM_RATE: u32 = 100;
/// Both agents have probed each other and answered /health before the stream starts.
const SETTLE: Duration = Duration::from_secs(2);
/// The stream runs this long before the trigger, so a gap is measured from a flowing stream.
const LEAD_IN: Duration = Duration::from_secs(1);
/// The agent's `drain.imds_poll_ms` (1 s). Its poll ticker starts at boot and every wait before
/// the trigger is whole seconds, so an IMDS notice would land at the same point of the poll cycle
/// in every run (just after a poll: the worst case): the runs spread their triggers evenly across
/// it instead.
const IMDS_POLL: Duration = Duration::from_secs(1);
/// The stream runs this long after the last step, so a late loss still counts.
const TAIL: Duration = Duration::from_secs(2);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Trigger → the end of the sequence (exit, and for a refresh or an upgrade the new agent up):
/// a stuck run is reported, not waited on.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);
/// How often a running stream's loss is sampled, to date a lost packet: often enough to tell the
/// hand-over from the exit, seldom enough to leave labd (which also sends the stream) alone.
const LOSS_SAMPLE: Duration = Duration::from_millis(50);
/// labd keeps the last this many API calls: a window that reaches it cannot be counted.
const API_CALLS_KEPT: usize = 20_000;
const ROUTE_WRITES: &[&str] = &["ReplaceRoute", "CreateRoute", "DeleteRoute"];

pub struct Options {
    pub agent: String,
    pub runs: usize,
    /// Event names to run (empty: all, in the order of EVENTS).
    pub events: Vec<String>,
    pub logs: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Event {
    Sigterm,
    Spot,
    AsgTermination,
    Rebalance,
    RestartMarker,
}

const EVENTS: [Event; 5] = [
    Event::Sigterm,
    Event::Spot,
    Event::AsgTermination,
    Event::Rebalance,
    Event::RestartMarker,
];

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Sigterm => "sigterm",
            Event::Spot => "spot",
            Event::AsgTermination => "asg-termination",
            Event::Rebalance => "rebalance",
            Event::RestartMarker => "restart-marker",
        }
    }

    /// Whether zone A's route should end on A's own ENI (a new agent in A) rather than B's.
    fn ends_on_a(self) -> bool {
        matches!(self, Event::AsgTermination | Event::RestartMarker)
    }

    fn drains(self) -> bool {
        self != Event::RestartMarker
    }
}

/// What one planned exit of zone A's gateway cost.
#[derive(Default)]
struct Run {
    /// The extra wait before the trigger, so IMDS notices meet the agent's poll at every phase.
    phase: Duration,
    sent: u64,
    lost: u64,
    gap_ms: f64,
    /// When each lost packet went missing, in ms after the trigger (within a LOSS_SAMPLE).
    lost_at_ms: Vec<f64>,
    trigger: Option<Instant>,
    drain_ms: Option<f64>,
    /// Trigger → agent A's process gone.
    exit_ms: Option<f64>,
    exit: Option<ExitStatus>,
    /// Trigger → the new agent's READY=1 (upgrade) or A's route back on A's ENI (refresh).
    back_ms: Option<f64>,
    /// ReplaceRoute/CreateRoute/DeleteRoute calls from just before the trigger to the end.
    writes: Option<usize>,
    route_ok: bool,
    route_end: String,
    /// Why the run could not be set up or measured at all (then it has no figures).
    failed: Option<String>,
    trouble: Vec<String>,
    logs: Vec<(String, String)>,
}

/// An agent process, its log, and everything it sent to its notify socket.
struct Agent {
    name: String,
    child: Child,
    log: String,
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Agent {
    /// Start the agent in `ns` with its own config, log and notify socket under the lab's run
    /// directory. The socket is read for the agent's whole life, as systemd does: an unread one
    /// fills after net.unix.max_dgram_qlen datagrams and then blocks the agent's sd_notify.
    fn start(lab: &Lab, agent: &str, ns: &str, name: &str, config: &str) -> Result<Agent, String> {
        let dir = &lab.info.run_dir;
        let path = format!("{dir}/{name}.toml");
        std::fs::write(&path, config).map_err(|e| format!("{path}: {e}"))?;
        let notify = format!("{dir}/{name}.notify");
        let log = format!("{dir}/{name}.log");
        let _ = std::fs::remove_file(&notify);
        let socket = UnixDatagram::bind(&notify).map_err(|e| format!("bind {notify}: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| format!("{notify}: {e}"))?;
        let child = crate::bootbench::spawn(agent, ns, &path, &notify, &log)?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (Arc::clone(&messages), Arc::clone(&stop));
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(text);
                }
            }
        });
        Ok(Agent {
            name: name.to_string(),
            child,
            log,
            messages,
            stop,
            reader: Some(reader),
            exited: None,
        })
    }

    fn ready(&self) -> bool {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|m| m.lines().any(|l| l == "READY=1"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    fn sigterm(&self) -> Result<(), String> {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        kill(pid, Signal::SIGTERM).map_err(|e| format!("SIGTERM {}: {e}", self.name))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGKILL, not SIGTERM: a stopping agent hands its routes over, which is no part of the
        // cleanup.
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Samples of a running stream's `lost` (sent less delivered so far): a packet in flight counts
/// for a moment, a lost one for good.
struct LossWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, u64)>>,
}

impl LossWatch {
    fn start(info: &gateway_lab::Info, stream: u64) -> LossWatch {
        // A second handle on the same labd (it does not own labd: dropping it stops nothing).
        let lab = Lab::connect(info.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(r) = lab.stream_report(stream).await {
                    samples.push((Instant::now(), r.lost));
                }
                tokio::time::sleep(LOSS_SAMPLE).await;
            }
            samples
        });
        LossWatch { stop, task }
    }

    async fn finish(self) -> Vec<(Instant, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// When each of `lost` packets went missing: for the k-th, the first sample from which the count
/// never fell below k again. None for a loss the last sample did not see yet.
fn loss_times(samples: &[(Instant, u64)], lost: u64) -> Vec<Instant> {
    (1..=lost)
        .filter_map(|k| {
            samples
                .iter()
                .rev()
                .take_while(|(_, l)| *l >= k)
                .last()
                .map(|(t, _)| *t)
        })
        .collect()
}

fn signed_ms(t: Instant, t0: Instant) -> f64 {
    if t >= t0 {
        (t - t0).as_secs_f64() * 1e3
    } else {
        -((t0 - t).as_secs_f64() * 1e3)
    }
}

/// Wait for READY=1 from every agent; an agent that exits first, or the deadline, is an error.
async fn wait_ready(agents: &mut [&mut Agent], deadline: Instant) -> Result<(), String> {
    loop {
        let mut all = true;
        for a in agents.iter_mut() {
            if a.ready() {
                continue;
            }
            all = false;
            if let Some(status) = a.poll_exit() {
                return Err(format!("{} exited ({status}) before READY=1", a.name));
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let late: Vec<&str> = agents
                .iter()
                .filter(|a| !a.ready())
                .map(|a| a.name.as_str())
                .collect();
            return Err(format!("no READY=1 from {} in time", late.join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_exit(agent: &mut Agent, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = agent.poll_exit() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Zone A's 0.0.0.0/0: the ENI it points at and its state.
async fn route_a(lab: &Lab, sc: &Scenario) -> Result<(String, String), String> {
    let table = &sc.zone("a").route_table_id;
    let out = lab
        .ec2()
        .describe_route_tables()
        .route_table_ids(table)
        .send()
        .await
        .map_err(|e| format!("DescribeRouteTables {table}: {e:?}"))?;
    let route = out
        .route_tables()
        .iter()
        .flat_map(|t| t.routes())
        .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
        .ok_or_else(|| format!("no 0.0.0.0/0 in {table}"))?;
    Ok((
        route.network_interface_id().unwrap_or("").to_string(),
        route
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
    ))
}

fn eni_name(sc: &Scenario, eni: &str) -> String {
    ["a", "b"]
        .into_iter()
        .find(|z| sc.zone(z).eni_id == eni)
        .map_or_else(
            || format!("{eni:?}"),
            |z| format!("{}'s ENI", z.to_uppercase()),
        )
}

/// `YYYY-MM-DDTHH:MM:SSZ` for unix seconds (the civil calendar of tests/exits.rs).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `drain_ms` of the agent's `drain complete` line.
fn drain_ms(log: &str) -> Option<f64> {
    log.lines()
        .map(strip_ansi)
        .find(|l| l.contains("drain complete"))
        .and_then(|l| field(&l, "drain_ms").and_then(number))
}

/// The lines of a log from a little before the exit was noticed to a little after the drain: what
/// to read next to a lost packet.
fn around_drain(log: &str) -> String {
    let lines: Vec<String> = log.lines().map(strip_ansi).collect();
    let start = lines
        .iter()
        .position(|l| {
            l.contains("planned exit announced")
                || l.contains("draining")
                || l.contains("restart marker present")
        })
        .unwrap_or(lines.len().saturating_sub(20));
    let end = lines
        .iter()
        .rposition(|l| l.contains("drain complete"))
        .map_or(lines.len(), |i| (i + 6).min(lines.len()));
    lines[start.saturating_sub(5)..end.max(start)].join("\n")
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

async fn trigger(lab: &Lab, event: Event, agent: &Agent, instance: &str) -> Result<(), String> {
    match event {
        Event::Sigterm | Event::RestartMarker => agent.sigterm(),
        Event::Spot => {
            let notice = format!(
                r#"{{"action": "terminate", "time": "{}"}}"#,
                rfc3339(unix_secs() + 120)
            );
            lab.imds_set(instance, "spot/instance-action", Some(&notice))
                .await
                .map_err(lab_err)
        }
        Event::Rebalance => {
            let notice = format!(r#"{{"noticeTime": "{}"}}"#, rfc3339(unix_secs()));
            lab.imds_set(instance, "events/recommendations/rebalance", Some(&notice))
                .await
                .map_err(lab_err)
        }
        Event::AsgTermination => lab.terminate_in_group(instance).await,
    }
}

/// The running instance of zone A that is not `old`: the group's replacement.
async fn replacement(
    lab: &Lab,
    sc: &Scenario,
    old: &str,
    deadline: Instant,
) -> Result<gateway_lab::Instance, String> {
    let az = &sc.zone("a").az;
    loop {
        let found = lab
            .instances()
            .await
            .map_err(lab_err)?
            .into_iter()
            .find(|i| {
                i.state == "running" && i.az == *az && i.ns.is_some() && i.instance_id != old
            });
        if let Some(i) = found {
            return Ok(i);
        }
        if Instant::now() >= deadline {
            return Err("no replacement instance in zone A".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_route_back(lab: &Lab, sc: &Scenario, deadline: Instant) -> Result<(), String> {
    let eni = &sc.zone("a").eni_id;
    loop {
        let (at, state) = route_a(lab, sc).await?;
        if at == *eni && state == "active" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "zone A's route still on {} ({state})",
                eni_name(sc, &at)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the steps of one run share.
struct Ctx<'a> {
    lab: &'a Lab,
    agent: &'a str,
    event: Event,
    sc: &'a Scenario,
    /// `drain-<event>-<run>`: the prefix of the run's agents' files.
    tag: String,
    /// The upgrade's restart marker; only A's agents (old and new) of a restart-marker run use it.
    marker: String,
    phase: Duration,
}

impl Ctx<'_> {
    /// Start agent `who` (a, b, a2) in `ns`. Every agent gets a marker path of its own: the
    /// default /run/gateway-agent/restart is shared by every agent on this host, and one left there
    /// by anything else would turn a SIGTERM drain into a plain exit.
    fn start(&self, ns: &str, who: &str) -> Result<Agent, String> {
        let dir = &self.lab.info.run_dir;
        let name = format!("{}-{who}", self.tag);
        let marker = if self.event == Event::RestartMarker && who.starts_with('a') {
            self.marker.clone()
        } else {
            format!("{dir}/{name}.no-restart")
        };
        let config = format!(
            "version = 1\n[group]\nname = \"{}\"\n[drain]\ngrace_s = 1\nrestart_marker = \"{marker}\"\n\
             [control]\nsocket = \"{dir}/{name}.sock\"\n",
            self.sc.group
        );
        Agent::start(self.lab, self.agent, ns, &name, &config)
    }
}

/// One run: a fresh VPC, agents in both zones, the stream, the event, the sequence after it.
async fn one_run(lab: &mut Lab, opts: &Options, event: Event, n: usize, first: bool) -> Run {
    let mut run = Run {
        phase: phase(n, opts.runs),
        ..Run::default()
    };
    if let Err(e) = measure(lab, opts, event, n, first, &mut run).await {
        run.failed = Some(e);
    }
    run
}

/// An Err is a run that could not be set up or measured (or the lab failing), not a finding.
async fn measure(
    lab: &mut Lab,
    opts: &Options,
    event: Event,
    n: usize,
    first: bool,
    run: &mut Run,
) -> Result<(), String> {
    let (sc, [ia, ib], _) = fresh(lab, first, &ScenarioOptions::default()).await?;
    let tag = format!("drain-{}-{n}", event.name());
    let cx = Ctx {
        lab,
        agent: &opts.agent,
        event,
        marker: format!("{}/{tag}.restart", lab.info.run_dir),
        sc: &sc,
        tag,
        phase: run.phase,
    };
    let _ = std::fs::remove_file(&cx.marker);
    let mut a = cx.start(&ns_of(&ia)?, "a")?;
    let mut b = cx.start(&ns_of(&ib)?, "b")?;
    let mut a2: Option<Agent> = None;
    let result = sequence(&cx, &mut a, &mut b, &mut a2, run).await;
    for agent in [Some(&a), Some(&b), a2.as_ref()].into_iter().flatten() {
        run.logs
            .push((format!("{} ({})", agent.name, agent.log), agent.log()));
    }
    let _ = std::fs::remove_file(&cx.marker);
    result
}

async fn sequence(
    cx: &Ctx<'_>,
    a: &mut Agent,
    b: &mut Agent,
    a2: &mut Option<Agent>,
    run: &mut Run,
) -> Result<(), String> {
    let (lab, sc) = (cx.lab, cx.sc);
    wait_ready(&mut [&mut *a, &mut *b], Instant::now() + READY_TIMEOUT).await?;
    tokio::time::sleep(SETTLE).await;
    let (eni, state) = route_a(lab, sc).await?;
    if eni != sc.zone("a").eni_id || state != "active" {
        return Err(format!(
            "before the trigger zone A's route is on {} ({state})",
            eni_name(sc, &eni)
        ));
    }
    let instance = lab
        .instance_in(&sc.zone("a").az)
        .await
        .map_err(lab_err)?
        .instance_id;
    if cx.event == Event::RestartMarker {
        std::fs::write(&cx.marker, "").map_err(|e| format!("{}: {e}", cx.marker))?;
    }
    let stream = lab.stream_start("a", STREAM_RATE).await.map_err(lab_err)?;
    let watch = LossWatch::start(&lab.info, stream);
    let measured = during_stream(cx, a, a2, &instance, run).await;
    let samples = watch.finish().await;
    let report = lab.stream_stop(stream).await.map_err(lab_err)?;
    (run.sent, run.lost, run.gap_ms) = (report.sent, report.lost, report.longest_gap_ms);
    measured?;
    if run.lost > 0 {
        if let Some(t0) = run.trigger {
            run.lost_at_ms = loss_times(&samples, run.lost)
                .into_iter()
                .map(|t| signed_ms(t, t0))
                .collect();
        }
        let when: Vec<String> = run
            .lost_at_ms
            .iter()
            .map(|t| format!("{t:+.0} ms"))
            .collect();
        run.trouble.push(format!(
            "lost {} of {} packets; seen missing from {} after the trigger (sampled every {LOSS_SAMPLE:?})",
            run.lost,
            run.sent,
            if when.is_empty() { "the stream's stop".to_string() } else { when.join(", ") }
        ));
    }
    if cx.event.drains() {
        run.drain_ms = drain_ms(&a.log());
        if run.drain_ms.is_none() {
            run.trouble
                .push("agent A logged no `drain complete` with drain_ms".into());
        }
    } else {
        if !a.log().contains("restart marker present") {
            run.trouble
                .push("agent A did not log `restart marker present`".into());
        }
        if std::path::Path::new(&cx.marker).exists() {
            run.trouble
                .push("the new agent left the restart marker in place".into());
        }
    }
    if b.poll_exit().is_some() {
        run.trouble.push("agent B exited".into());
    }
    Ok(())
}

/// From the lead-in to the tail of the stream; the caller stops the stream whatever happens.
async fn during_stream(
    cx: &Ctx<'_>,
    a: &mut Agent,
    a2: &mut Option<Agent>,
    instance: &str,
    run: &mut Run,
) -> Result<(), String> {
    let (lab, sc, event) = (cx.lab, cx.sc, cx.event);
    tokio::time::sleep(LEAD_IN + cx.phase).await;
    let before = lab.api_calls().await.map_err(lab_err)?.len();
    let t0 = Instant::now();
    run.trigger = Some(t0);
    let deadline = t0 + RUN_TIMEOUT;
    trigger(lab, event, a, instance).await?;
    run.exit = wait_exit(a, deadline).await;
    match run.exit {
        Some(status) => {
            run.exit_ms = Some(ms_since(t0));
            // The refresh's instance is terminated the moment its hook completes: the agent may
            // be killed with it during its last steps.
            let fine = status.code() == Some(0)
                || (event == Event::AsgTermination && status.code().is_none());
            if !fine {
                run.trouble.push(format!("agent A exited with {status}"));
            }
        }
        None => run.trouble.push(format!(
            "agent A still running {RUN_TIMEOUT:?} after the trigger"
        )),
    }
    let comeback = match event {
        Event::AsgTermination if run.exit.is_some() => Some(
            replacement(lab, sc, instance, deadline)
                .await
                .and_then(|i| ns_of(&i)),
        ),
        Event::RestartMarker if run.exit.is_some() => Some(
            lab.instance_in(&sc.zone("a").az)
                .await
                .map_err(lab_err)
                .and_then(|i| ns_of(&i)),
        ),
        _ => None,
    };
    match comeback {
        None => {}
        Some(Err(e)) => run.trouble.push(e),
        Some(Ok(ns)) => {
            let agent = a2.insert(cx.start(&ns, "a2")?);
            match wait_ready(&mut [agent], deadline).await {
                Err(e) => run.trouble.push(e),
                Ok(()) if event == Event::RestartMarker => run.back_ms = Some(ms_since(t0)),
                Ok(()) => match wait_route_back(lab, sc, deadline).await {
                    Ok(()) => run.back_ms = Some(ms_since(t0)),
                    Err(e) => run.trouble.push(e),
                },
            }
        }
    }
    tokio::time::sleep(TAIL).await;
    finish(cx, before, run).await
}

/// Where A's route ended, and the route writes since just before the trigger.
async fn finish(cx: &Ctx<'_>, before: usize, run: &mut Run) -> Result<(), String> {
    let (lab, sc) = (cx.lab, cx.sc);
    let after = lab.api_calls().await.map_err(lab_err)?;
    // labd keeps a bounded list: once it is full, an index no longer marks a moment.
    if after.len() < API_CALLS_KEPT && after.len() >= before {
        let writes = after[before..]
            .iter()
            .filter(|c| ROUTE_WRITES.contains(&c.as_str()))
            .count();
        run.writes = Some(writes);
        if cx.event == Event::RestartMarker && writes > 0 {
            run.trouble
                .push(format!("{writes} route writes across the restart"));
        }
    }
    let (eni, state) = route_a(lab, sc).await?;
    let want = sc.zone(if cx.event.ends_on_a() { "a" } else { "b" });
    run.route_ok = eni == want.eni_id && state == "active";
    run.route_end = format!("{} ({state})", eni_name(sc, &eni));
    if !run.route_ok {
        run.trouble.push(format!(
            "zone A's route ended on {}, not {}'s ENI",
            run.route_end,
            want.name.to_uppercase()
        ));
    }
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.0} ms"))
}

fn print_run(event: Event, i: usize, r: &Run) {
    let head = format!(
        "{:>15} run {:>2} (phase {:.1} s):",
        event.name(),
        i + 1,
        r.phase.as_secs_f64()
    );
    if let Some(e) = &r.failed {
        println!("{head} FAILED: {e}");
        return;
    }
    let exit = match r.exit {
        Some(s) => match s.code() {
            Some(c) => format!("exit {c}"),
            None => "killed".into(),
        },
        None => "no exit".into(),
    };
    let back = match (event, r.back_ms) {
        (Event::AsgTermination, v) => format!("; trigger -> route back on A {}", ms(v)),
        (Event::RestartMarker, v) => format!("; trigger -> new agent READY {}", ms(v)),
        _ => String::new(),
    };
    println!(
        "{head} lost {}/{} (longest gap {:.0} ms); drain {}; trigger -> {exit} {}; route writes {}; \
         A's route on {}{back}",
        r.lost,
        r.sent,
        r.gap_ms,
        ms(r.drain_ms),
        ms(r.exit_ms),
        r.writes.map_or_else(|| "n/a".into(), |w| w.to_string()),
        r.route_end,
    );
    for t in &r.trouble {
        println!("{:>37} {t}", "");
    }
}

/// The extra wait before run `i` of `n`: the middle of its own slice of the IMDS poll cycle.
fn phase(i: usize, n: usize) -> Duration {
    let slices = u32::try_from(2 * n.max(1)).unwrap_or(u32::MAX);
    let at = u32::try_from(2 * i + 1).unwrap_or(u32::MAX);
    IMDS_POLL * at / slices
}

/// `p50/max` of a sample, or n/a.
fn p50_max(samples: &[f64]) -> String {
    if samples.is_empty() {
        return "n/a".into();
    }
    format!(
        "{:.0}/{:.0}",
        percentile(samples, 50.0),
        percentile(samples, 100.0)
    )
}

fn table(results: &[(Event, Vec<Run>)]) {
    println!(
        "{:<16} {:>4} {:>8} {:>8} {:>12} {:>14} {:>15} {:>10} {:>15} {:>15}",
        "event",
        "runs",
        "lost sum",
        "lost max",
        "gap p50/max",
        "drain p50/max",
        "->exit p50/max",
        "routes ok",
        "writes p50/max",
        "->back p50/max"
    );
    for (event, runs) in results {
        let ok: Vec<&Run> = runs.iter().filter(|r| r.failed.is_none()).collect();
        let pick =
            |f: fn(&Run) -> Option<f64>| -> Vec<f64> { ok.iter().filter_map(|r| f(r)).collect() };
        let lost_sum: u64 = ok.iter().map(|r| r.lost).sum();
        let lost_max = ok.iter().map(|r| r.lost).max();
        let routes = runs.iter().filter(|r| r.route_ok).count();
        let back = if event.ends_on_a() {
            p50_max(&pick(|r| r.back_ms))
        } else {
            "-".into()
        };
        let runs_col = if ok.len() == runs.len() {
            runs.len().to_string()
        } else {
            format!("{}/{}", ok.len(), runs.len())
        };
        println!(
            "{:<16} {:>4} {:>8} {:>8} {:>12} {:>14} {:>15} {:>10} {:>15} {:>15}",
            event.name(),
            runs_col,
            if ok.is_empty() {
                "n/a".into()
            } else {
                lost_sum.to_string()
            },
            lost_max.map_or_else(|| "n/a".into(), |m| m.to_string()),
            p50_max(&pick(|r| Some(r.gap_ms))),
            p50_max(&pick(|r| r.drain_ms)),
            p50_max(&pick(|r| r.exit_ms)),
            format!("{routes}/{}", runs.len()),
            p50_max(&pick(|r| r.writes.map(|w| w as f64))),
            back,
        );
    }
    println!(
        "(ms; gap: the client's longest gap between two delivered packets, 10 ms at {STREAM_RATE}/s \
         without loss; drain: the agent's drain_ms; ->exit: trigger -> agent A's process gone; \
         routes ok: A's 0.0.0.0/0 ended on B's ENI, or on A's for asg-termination (the replacement's \
         agent) and restart-marker; writes: ReplaceRoute/CreateRoute/DeleteRoute calls from the \
         trigger to the end; ->back: trigger -> A's route back on A (asg-termination) or the new \
         agent's READY=1 (restart-marker))"
    );
}

/// The events `--events` names, in the order of EVENTS; all of them when it names none.
fn selected(names: &[String]) -> Result<Vec<Event>, String> {
    if let Some(bad) = names
        .iter()
        .find(|n| !EVENTS.iter().any(|e| e.name() == n.as_str()))
    {
        let all: Vec<&str> = EVENTS.iter().map(|e| e.name()).collect();
        return Err(format!("--events {bad}: one of {}", all.join(", ")));
    }
    Ok(EVENTS
        .into_iter()
        .filter(|e| names.is_empty() || names.iter().any(|n| n == e.name()))
        .collect())
}

fn preflight(opts: &Options) -> Result<(), String> {
    if !std::path::Path::new(&opts.agent).is_file() {
        return Err(format!("--agent {}: no such file", opts.agent));
    }
    if opts.runs == 0 {
        return Err("--runs 0: nothing to measure".into());
    }
    Ok(())
}

pub async fn run(opts: Options) -> Result<(), String> {
    preflight(&opts)?;
    let events = selected(&opts.events)?;
    println!(
        "drain bench: 2 zones, agents in both (drain.grace_s = 1); zone A's gateway leaves on \
         purpose while its client sends {STREAM_RATE} packets/s; {} runs per event",
        opts.runs
    );
    // GATEWAY_LAB_PROFILE reaches labd through the environment.
    println!("lab profile: {}", gateway_lab::profile());
    let mut lab = Lab::start().map_err(lab_err)?;
    let mut results = Vec::new();
    let mut first = true;
    for event in events {
        let mut runs = Vec::new();
        for i in 0..opts.runs {
            let r = one_run(&mut lab, &opts, event, i, first).await;
            first = false;
            print_run(event, i, &r);
            if r.lost > 0
                && let Some((name, log)) = r.logs.first()
            {
                println!(
                    "--- {} run {}: {name}, around the drain ---",
                    event.name(),
                    i + 1
                );
                println!("{}", around_drain(log));
            }
            if opts.logs && (!r.trouble.is_empty() || r.failed.is_some()) {
                for (name, text) in &r.logs {
                    println!("--- {} run {}: {name} ---\n{text}", event.name(), i + 1);
                }
            }
            runs.push(r);
        }
        results.push((event, runs));
    }
    drop(lab);
    println!();
    table(&results);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_spread_evenly_across_the_poll() {
        let ms = |i, n| phase(i, n).as_millis();
        assert_eq!(ms(0, 1), 500);
        assert_eq!([ms(0, 2), ms(1, 2)], [250, 750]);
        assert_eq!(ms(4, 5), 900);
    }

    #[test]
    fn a_loss_is_dated_by_the_sample_it_stays_from() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // In flight at 100 ms (counted, then delivered), lost at 200 ms, another at 400 ms.
        let samples = [
            (at(50), 0),
            (at(100), 1),
            (at(150), 0),
            (at(200), 1),
            (at(250), 2),
            (at(300), 1),
            (at(350), 1),
            (at(400), 2),
            (at(450), 2),
        ];
        assert_eq!(loss_times(&samples, 2), [at(200), at(400)]);
        assert_eq!(loss_times(&samples, 3), [at(200), at(400)]);
        assert!(loss_times(&[], 1).is_empty());
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn drain_ms_plain_and_coloured() {
        let plain = "2026-11-25T00:00:00Z  INFO gateway_agent::agent::drain: drain complete: every \
                     route handed over kind=\"lifecycle\" drain_ms=412 grace_s=1";
        assert_eq!(drain_ms(plain), Some(412.0));
        let coloured = "\u{1b}[32m INFO\u{1b}[0m drain complete: every route handed over \
                        \u{1b}[3mdrain_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m87 \
                        \u{1b}[3mgrace_s\u{1b}[0m\u{1b}[2m=\u{1b}[0m1";
        assert_eq!(drain_ms(coloured), Some(87.0));
        assert_eq!(drain_ms("draining: handing every route"), None);
    }

    #[test]
    fn around_drain_keeps_the_lines_from_the_notice_to_after_the_drain() {
        let log: Vec<String> = (0..30)
            .map(|i| match i {
                10 => "planned exit announced kind=spot".to_string(),
                12 => "drain complete drain_ms=5".to_string(),
                _ => format!("line {i}"),
            })
            .collect();
        let got = around_drain(&log.join("\n"));
        assert!(got.starts_with("line 5\n"), "{got}");
        assert!(got.ends_with("line 17"), "{got}");
    }
}
