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
//! - `refresh-launch-first` / `refresh-terminate-first`: an instance refresh of A's group under
//!   either instance maintenance policy; with launch-before-terminate the new instance's agent
//!   stands by while the old one holds the ENI, then claims it once the old one drained;
//! - `rebalance`: a rebalance recommendation in IMDS: advice, not an exit (by default nothing
//!   moves and the agent stays);
//! - `restart-marker`: a package upgrade, SIGTERM with the restart marker present and a new agent
//!   on the same instance; it should write no route at all.
//!
//! Measured: the loss in A's stream over the whole sequence, the agent's own `drain_ms`, trigger
//! → agent exit, route writes, and where A's 0.0.0.0/0 ended. Trigger → exit of an IMDS notice
//! includes the wait for the agent's next poll (up to `drain.imds_poll_ms`, 1 s), and every exit
//! but the upgrade's includes `drain.grace_s`. A lost packet is dated by sampling the running
//! stream's count, so a loss at the hand-over can be told from one at the exit.

use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gateway_lab::agent::Spec;
use gateway_lab::fleet::{Failure, Fleet, ROUTE_WRITES, rfc3339, unix_secs};
use gateway_lab::report::{Align, Table, log_figure, ms, p50_max, strip_ansi};
use gateway_lab::{Instance, Lab, Scenario, ScenarioOptions};
use nix::sys::signal::Signal;

use crate::failbench::fresh;

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
/// a stuck run is reported, not waited on. Under `aws` a replacement alone takes 30-90 s to
/// launch.
fn run_timeout() -> Duration {
    if gateway_lab::aws_profile() {
        Duration::from_secs(240)
    } else {
        Duration::from_secs(60)
    }
}
/// How often a running stream's loss is sampled, to date a lost packet: often enough to tell the
/// hand-over from the exit, seldom enough to leave labd (which also sends the stream) alone.
const LOSS_SAMPLE: Duration = Duration::from_millis(50);
/// labd keeps the last this many API calls: a window that reaches it cannot be counted.
const API_CALLS_KEPT: usize = 20_000;

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
    RefreshLaunchFirst,
    RefreshTerminateFirst,
    Rebalance,
    RestartMarker,
}

const EVENTS: [Event; 7] = [
    Event::Sigterm,
    Event::Spot,
    Event::AsgTermination,
    Event::RefreshLaunchFirst,
    Event::RefreshTerminateFirst,
    Event::Rebalance,
    Event::RestartMarker,
];

/// How long a rebalance run watches that nothing moves and the agent stays.
const ADVICE_WATCH: Duration = Duration::from_secs(10);

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Sigterm => "sigterm",
            Event::Spot => "spot",
            Event::AsgTermination => "asg-termination",
            Event::RefreshLaunchFirst => "refresh-launch-first",
            Event::RefreshTerminateFirst => "refresh-terminate-first",
            Event::Rebalance => "rebalance",
            Event::RestartMarker => "restart-marker",
        }
    }

    /// Whether zone A's route should end on A's own ENI (a new agent in A) rather than B's.
    fn ends_on_a(self) -> bool {
        matches!(
            self,
            Event::AsgTermination
                | Event::RefreshLaunchFirst
                | Event::RefreshTerminateFirst
                | Event::RestartMarker
                | Event::Rebalance
        )
    }

    fn drains(self) -> bool {
        !matches!(self, Event::RestartMarker | Event::Rebalance)
    }

    /// The ASG launches A's replacement (after A leaves, or before for launch-first).
    fn replaced(self) -> bool {
        matches!(
            self,
            Event::AsgTermination | Event::RefreshLaunchFirst | Event::RefreshTerminateFirst
        )
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

fn eni_name(sc: &Scenario, eni: &str) -> String {
    ["a", "b"]
        .into_iter()
        .find(|z| sc.zone(z).eni_id == eni)
        .map_or_else(
            || format!("{eni:?}"),
            |z| format!("{}'s ENI", z.to_uppercase()),
        )
}

/// `drain_ms` of the agent's `drain complete` line.
fn drain_ms(log: &str) -> Option<f64> {
    log_figure(log, "drain complete", "drain_ms")
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

/// The time left until `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Announces `event` to the agent of gateway `a` (its instance `instance`).
async fn trigger(f: &Fleet, event: Event, a: usize, instance: &str) -> Result<(), Failure> {
    match event {
        Event::Sigterm | Event::RestartMarker => f.gateways[a].agent.signal(Signal::SIGTERM),
        Event::Spot => f.spot_notice(instance).await,
        Event::Rebalance => {
            let notice = format!(r#"{{"noticeTime": "{}"}}"#, rfc3339(unix_secs()));
            f.lab
                .imds_set(instance, "events/recommendations/rebalance", Some(&notice))
                .await?;
            Ok(())
        }
        Event::AsgTermination => Ok(f.lab.terminate_in_group(instance).await?),
        Event::RefreshLaunchFirst | Event::RefreshTerminateFirst => {
            let policy = if event == Event::RefreshLaunchFirst {
                "launch-before-terminate"
            } else {
                "terminate-and-launch"
            };
            f.lab.refresh(&f.zone("a").asg_name, Some(policy)).await?;
            Ok(())
        }
    }
}

/// What the steps of one run share.
struct Ctx {
    event: Event,
    /// `drain-<event>-<run>`: the prefix of the run's agents' files.
    tag: String,
    /// The upgrade's restart marker; only A's agents (old and new) of a restart-marker run use it.
    marker: String,
    phase: Duration,
}

impl Ctx {
    /// Start agent `who` (a, b, a2) on `inst` in `zone`; answers its gateway's index. Every agent
    /// gets a marker path of its own: the default /run/gateway-agent/restart is shared by every
    /// agent on this host, and one left there by anything else would turn a SIGTERM drain into a
    /// plain exit.
    fn start(
        &self,
        f: &mut Fleet,
        zone: &str,
        inst: Instance,
        who: &str,
    ) -> Result<usize, Failure> {
        let name = format!("{}-{who}", self.tag);
        let marker = if self.event == Event::RestartMarker && who.starts_with('a') {
            self.marker.clone()
        } else {
            f.restart_marker(&format!("{name}.no"))
                .display()
                .to_string()
        };
        let extra = format!("[drain]\ngrace_s = 1\nrestart_marker = \"{marker}\"");
        f.spawn(zone, inst, Spec::new().name(name).extra(extra))
    }
}

/// One run: a fresh VPC, agents in both zones, the stream, the event, the sequence after it.
async fn one_run(f: &mut Fleet, opts: &Options, event: Event, n: usize, first: bool) -> Run {
    let mut run = Run {
        phase: phase(n, opts.runs),
        ..Run::default()
    };
    if let Err(e) = measure(f, event, n, first, &mut run).await {
        run.failed = Some(e.0);
    }
    run
}

/// An Err is a run that could not be set up or measured (or the lab failing), not a finding.
async fn measure(
    f: &mut Fleet,
    event: Event,
    n: usize,
    first: bool,
    run: &mut Run,
) -> Result<(), Failure> {
    let [ia, ib] = fresh(f, first, &ScenarioOptions::default()).await?;
    let tag = format!("drain-{}-{n}", event.name());
    let cx = Ctx {
        event,
        marker: f.restart_marker(&tag).display().to_string(),
        tag,
        phase: run.phase,
    };
    let _ = std::fs::remove_file(&cx.marker);
    let a = cx.start(f, "a", ia, "a")?;
    let b = cx.start(f, "b", ib, "b")?;
    let result = sequence(f, &cx, [a, b], run).await;
    for g in &f.gateways {
        let name = format!("{} ({})", g.agent.name, g.agent.log_path.display());
        run.logs.push((name, g.agent.log()));
    }
    let _ = std::fs::remove_file(&cx.marker);
    // SIGKILL, not SIGTERM: a stopping agent hands its routes over, which is no part of the
    // cleanup.
    f.kill_all().await;
    result
}

/// The sequence of a run, gateways `a` and `b` started.
async fn sequence(
    f: &mut Fleet,
    cx: &Ctx,
    [a, b]: [usize; 2],
    run: &mut Run,
) -> Result<(), Failure> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for g in [a, b] {
        f.gateways[g].agent.wait_ready(left(deadline)).await?;
    }
    tokio::time::sleep(SETTLE).await;
    let (eni, state) = f.route("a", "0.0.0.0/0").await?;
    if eni != f.eni("a") || state != "active" {
        return Err(Failure(format!(
            "before the trigger zone A's route is on {} ({state})",
            eni_name(&f.sc, &eni)
        )));
    }
    let instance = f.gateways[a].inst.instance_id.clone();
    if cx.event == Event::RestartMarker {
        std::fs::write(&cx.marker, "").map_err(|e| format!("{}: {e}", cx.marker))?;
    }
    let stream = f.lab.stream_start("a", STREAM_RATE).await?;
    let watch = LossWatch::start(&f.lab.info, stream);
    let measured = during_stream(f, cx, a, &instance, run).await;
    let samples = watch.finish().await;
    let report = f.lab.stream_stop(stream).await?;
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
    let log_a = f.gateways[a].agent.log();
    if cx.event.drains() {
        run.drain_ms = drain_ms(&log_a);
        if run.drain_ms.is_none() {
            run.trouble
                .push("agent A logged no `drain complete` with drain_ms".into());
        }
    } else if cx.event == Event::RestartMarker {
        if !log_a.contains("restart marker present") {
            run.trouble
                .push("agent A did not log `restart marker present`".into());
        }
        if std::path::Path::new(&cx.marker).exists() {
            run.trouble
                .push("the new agent left the restart marker in place".into());
        }
    }
    if f.gateways[b].agent.try_exit().is_some() {
        run.trouble.push("agent B exited".into());
    }
    Ok(())
}

/// From the lead-in to the tail of the stream; the caller stops the stream whatever happens.
async fn during_stream(
    f: &mut Fleet,
    cx: &Ctx,
    a: usize,
    instance: &str,
    run: &mut Run,
) -> Result<(), Failure> {
    let event = cx.event;
    tokio::time::sleep(LEAD_IN + cx.phase).await;
    let before = f.lab.api_calls().await?.len();
    let t0 = Instant::now();
    run.trigger = Some(t0);
    let deadline = t0 + run_timeout();
    trigger(f, event, a, instance).await?;
    if event == Event::Rebalance {
        // Advice: nothing may move, and the agent stays.
        tokio::time::sleep(ADVICE_WATCH).await;
        if f.gateways[a].agent.try_exit().is_some() {
            run.trouble
                .push("agent A left on a rebalance recommendation".into());
        }
        tokio::time::sleep(TAIL).await;
        return finish(f, cx, before, run).await;
    }
    // Launch-before-terminate: the new instance comes first and its agent stands by.
    let mut early = None;
    if event == Event::RefreshLaunchFirst {
        match f.replacement("a", instance, left(deadline)).await {
            Ok(inst) => early = Some(cx.start(f, "a", inst, "a2")?),
            Err(e) => run.trouble.push(e.0),
        }
    }
    run.exit = f.gateways[a].agent.wait_exit(left(deadline)).await.ok();
    match run.exit {
        Some(status) => {
            run.exit_ms = Some(ms_since(t0));
            // The refresh's instance is terminated the moment its hook completes: the agent may
            // be killed with it during its last steps.
            let fine = status.code() == Some(0) || (event.replaced() && status.code().is_none());
            if !fine {
                run.trouble.push(format!("agent A exited with {status}"));
            }
        }
        None => run.trouble.push(format!(
            "agent A still running {:?} after the trigger",
            run_timeout()
        )),
    }
    let comeback = match event {
        Event::RefreshLaunchFirst => None,
        Event::AsgTermination | Event::RefreshTerminateFirst if run.exit.is_some() => {
            Some(f.replacement("a", instance, left(deadline)).await)
        }
        Event::RestartMarker if run.exit.is_some() => Some(
            f.lab
                .instance_in(&f.zone("a").az)
                .await
                .map_err(Failure::from),
        ),
        _ => None,
    };
    if let Some(a2) = early {
        match f.gateways[a2].agent.wait_ready(left(deadline)).await {
            Err(e) => run.trouble.push(e.0),
            Ok(()) => match f.wait_route("a", "a", left(deadline)).await {
                Ok(()) => run.back_ms = Some(ms_since(t0)),
                Err(_) => run
                    .trouble
                    .push("zone A's route never came back to A".into()),
            },
        }
    }
    match comeback {
        None => {}
        Some(Err(e)) => run.trouble.push(e.0),
        Some(Ok(inst)) => {
            let a2 = cx.start(f, "a", inst, "a2")?;
            match f.gateways[a2].agent.wait_ready(left(deadline)).await {
                Err(e) => run.trouble.push(e.0),
                Ok(()) if event == Event::RestartMarker => run.back_ms = Some(ms_since(t0)),
                Ok(()) => match f.wait_route("a", "a", left(deadline)).await {
                    Ok(()) => run.back_ms = Some(ms_since(t0)),
                    Err(_) => {
                        let (at, state) = f.route("a", "0.0.0.0/0").await?;
                        run.trouble.push(format!(
                            "zone A's route still on {} ({state})",
                            eni_name(&f.sc, &at)
                        ));
                    }
                },
            }
        }
    }
    tokio::time::sleep(TAIL).await;
    finish(f, cx, before, run).await
}

/// Where A's route ended, and the route writes since just before the trigger.
async fn finish(f: &Fleet, cx: &Ctx, before: usize, run: &mut Run) -> Result<(), Failure> {
    let after = f.lab.api_calls().await?;
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
    let (eni, state) = f.route("a", "0.0.0.0/0").await?;
    let want = f.zone(if cx.event.ends_on_a() { "a" } else { "b" });
    run.route_ok = eni == want.eni_id && state == "active";
    run.route_end = format!("{} ({state})", eni_name(&f.sc, &eni));
    if !run.route_ok {
        run.trouble.push(format!(
            "zone A's route ended on {}, not {}'s ENI",
            run.route_end,
            want.name.to_uppercase()
        ));
    }
    Ok(())
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

fn table(results: &[(Event, Vec<Run>)]) {
    let right = |head: &'static str, least: usize| (head, Align::Right, least);
    let mut table = Table::new(&[
        ("event", Align::Left, 16),
        right("runs", 4),
        right("lost sum", 8),
        right("lost max", 8),
        right("gap p50/max", 12),
        right("drain p50/max", 14),
        right("->exit p50/max", 15),
        right("routes ok", 10),
        right("writes p50/max", 15),
        right("->back p50/max", 15),
    ]);
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
        table.row(vec![
            event.name().into(),
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
        ]);
    }
    println!("{}", table.plain());
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
    let mut f = Fleet::new(&ScenarioOptions::default()).await?;
    f.bin = opts.agent.clone();
    let mut results = Vec::new();
    let mut first = true;
    for event in events {
        let mut runs = Vec::new();
        for i in 0..opts.runs {
            let r = one_run(&mut f, &opts, event, i, first).await;
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
    drop(f);
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
