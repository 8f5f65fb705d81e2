//! `gwlab demo`: the whole story in the two-zone lab, narrated with timestamps.
//!
//! 1. Both gateways boot: each agent claims its zone's ENI, configures its kernel, points its
//!    zone's routes at itself and completes its launch hook.
//! 2. A client in each zone streams 100 packets/s to the lab's internet through its gateway.
//! 3. Zone B's gateway is terminated without warning: zone A's agent detects it, takes zone B
//!    over; the client's outage is measured.
//! 4. The Auto Scaling group's replacement boots in zone B and takes its zone back.
//! 5. An instance refresh replaces zone A's gateway: the old one hands zone A to B before it
//!    goes, the new one takes it back: zero packets lost.
//!
//! `gateway-agent status` is shown at the key moments, and a table sums the story up. It runs
//! under the lab profile of `GATEWAY_LAB_PROFILE` (under `aws` the ASG's launches and every API
//! call take what they take on AWS, so the story is longer).

use std::time::{Duration, Instant};

use gateway_lab::agent::Spec;
use gateway_lab::fleet::{Failure, Fleet, wait};
use gateway_lab::report::{Align, Table, log_figure, ms};
use gateway_lab::{ScenarioOptions, StreamReport};

const RATE: u32 = 100;
/// Both agents probe each other and settle before anything is done to them.
const SETTLE: Duration = Duration::from_secs(2);
/// The streams run this long past each step's end, so a late loss still counts.
const TAIL: Duration = Duration::from_secs(1);
/// How long the takeover may take before the demo says it failed (detection is ~1 s).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// The agents' config besides their group: a short drain grace (the default keeps forwarding
/// in-flight traffic for longer than a demo wants to wait) and a short hold-down.
const EXTRA: &str = "[drain]\ngrace_s = 1\n";

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

/// The narrator: every line stamped with the time since the demo began.
struct Story {
    t0: Instant,
}

impl Story {
    fn at(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn say(&self, text: impl AsRef<str>) {
        println!("[{:>6.1}s] {}", self.at(), text.as_ref());
    }

    fn chapter(&self, text: &str) {
        println!();
        println!("[{:>6.1}s] === {text}", self.at());
    }

    /// Indented lines under the last one said.
    fn quote(&self, text: &str) {
        for l in text.lines() {
            println!("           | {l}");
        }
    }
}

/// What a stream cost a client, in a table cell.
fn loss(r: &StreamReport) -> String {
    if r.lost == 0 {
        format!("0 of {} lost", r.sent)
    } else {
        format!(
            "{} of {} lost, outage {:.0} ms",
            r.lost, r.sent, r.longest_gap_ms
        )
    }
}

/// `gateway-agent status` of the agent named `name`, up to its ROUTES section.
fn status(f: &Fleet, story: &Story, name: &str, why: &str) {
    story.say(format!("$ gateway-agent status   # {why}"));
    match f.cli(name, &["status"]) {
        Ok((0, out, _)) => {
            let head = out.split("\nROUTES").next().unwrap_or(&out);
            story.quote(head.trim_end());
        }
        Ok((code, out, err)) => story.quote(&format!("(exit {code}) {out}{err}")),
        Err(e) => story.quote(&format!("({e})")),
    }
}

/// A stream in each zone, (a, b).
async fn streams(f: &Fleet) -> Result<(u64, u64), Failure> {
    Ok((
        f.lab.stream_start("a", RATE).await?,
        f.lab.stream_start("b", RATE).await?,
    ))
}

async fn stop(f: &Fleet, (a, b): (u64, u64)) -> Result<(StreamReport, StreamReport), Failure> {
    tokio::time::sleep(TAIL).await;
    Ok((f.lab.stream_stop(a).await?, f.lab.stream_stop(b).await?))
}

/// The first line of `log` containing `what`, without its timestamp and module path.
fn log_line(log: &str, what: &str) -> Option<String> {
    log.lines()
        .map(gateway_lab::report::strip_ansi)
        .find(|l| l.contains(what))
        .map(|l| {
            let msg = l.split_once("gateway_agent").map_or(l.as_str(), |(_, r)| r);
            msg.split_once(": ").map_or(msg, |(_, m)| m).to_owned()
        })
}

/// One row of the summary: step, when it began, what the agents did, what each client lost.
struct Row {
    step: &'static str,
    at: f64,
    did: String,
    a: String,
    b: String,
}

pub async fn run(agent: Option<String>) -> Result<(), String> {
    let agent = agent_path(agent)?;
    let story = Story { t0: Instant::now() };
    let mut rows = Vec::new();
    let result = tell(&agent, &story, &mut rows).await;
    if !rows.is_empty() {
        println!();
        let mut t = Table::new(&[
            ("step", Align::Left, 0),
            ("at", Align::Right, 0),
            ("what the agents did", Align::Left, 0),
            ("zone A's client", Align::Left, 0),
            ("zone B's client", Align::Left, 0),
        ]);
        for r in &rows {
            t.row(vec![
                r.step.to_owned(),
                format!("{:.1} s", r.at),
                r.did.clone(),
                r.a.clone(),
                r.b.clone(),
            ]);
        }
        println!("{}", t.markdown());
    }
    match result {
        Ok(()) => {
            story.say("done; tearing the lab down");
            Ok(())
        }
        Err(e) => Err(format!("the demo stopped: {e}")),
    }
}

async fn tell(agent: &str, story: &Story, rows: &mut Vec<Row>) -> Result<(), Failure> {
    story.say(format!(
        "starting the lab (profile {}): moto for EC2 and Auto Scaling, an IMDS per instance, \
         network namespaces for the VPC",
        gateway_lab::profile()
    ));
    let mut f = Fleet::new(&ScenarioOptions::default()).await?;
    f.bin = agent.to_owned();
    f.extra = EXTRA.to_owned();
    let (az_a, az_b) = (f.zone("a").az.clone(), f.zone("b").az.clone());
    story.say(format!(
        "VPC {}: zones {az_a} (A) and {az_b} (B), one Auto Scaling group of one gateway each; \
         each zone's private route table sends 0.0.0.0/0 to its zone's persistent ENI ({}, {})",
        f.sc.vpc_id,
        f.eni("a"),
        f.eni("b")
    ));

    // 1. Both gateways boot.
    story.chapter("1. Both gateways boot");
    let began = story.at();
    for z in ["a", "b"] {
        let inst = f.instance(z).await?;
        story.say(format!(
            "ASG {} launched {} in {} ({}): starting gateway-agent in it",
            f.zone(z).asg_name,
            inst.instance_id,
            inst.az,
            inst.lifecycle_state.clone().unwrap_or_default()
        ));
        f.spawn(z, inst, Spec::new())?;
    }
    let mut boots = Vec::new();
    for z in ["a", "b"] {
        f.ready(z).await?;
        let log = f.log(z);
        let boot = log_figure(&log, "boot complete", "boot_ms");
        story.say(format!(
            "zone {}'s agent READY in {}: claimed {}, configured its kernel, pointed its zone's \
             routes at it, completed its launch hook ({})",
            z.to_uppercase(),
            ms(boot),
            f.eni(z),
            f.lifecycle_result(&f.instance_id(z), "LAUNCHING")
                .await?
                .unwrap_or_else(|| "hook still open".into())
        ));
        boots.push(format!("{} {}", z.to_uppercase(), ms(boot)));
    }
    rows.push(Row {
        step: "1. both gateways boot",
        at: began,
        did: format!("READY in {}", boots.join(", ")),
        a: "-".into(),
        b: "-".into(),
    });
    tokio::time::sleep(SETTLE).await;

    // 2. Clients stream in both zones.
    story.chapter("2. A client in each zone streams 100 packets/s to the internet");
    let began = story.at();
    let writes = f.route_writes().await?;
    let ids = streams(&f).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = f.route_writes().await? - writes;
    let (ra, rb) = (
        f.lab.stream_report(ids.0).await?,
        f.lab.stream_report(ids.1).await?,
    );
    story.say(format!(
        "zone A: {} of {} delivered; zone B: {} of {} delivered, each through its own gateway",
        ra.delivered, ra.sent, rb.delivered, rb.sent
    ));
    status(&f, story, "agent-a", "zone A's gateway, steady state");
    rows.push(Row {
        step: "2. clients stream",
        at: began,
        did: if writes == 0 {
            "nothing: no route write at steady state".into()
        } else {
            format!("{writes} route writes at steady state")
        },
        a: format!("{} of {} delivered", ra.delivered, ra.sent),
        b: format!("{} of {} delivered", rb.delivered, rb.sent),
    });

    // 3. Zone B's gateway is terminated.
    story.chapter("3. Zone B's gateway is terminated, without warning");
    let began = story.at();
    let killed_at = Instant::now();
    let old_b = f.terminate("b").await?;
    story.say(format!(
        "terminated {old_b}: its agent dies with it, no drain, zone B's route points at a detached ENI"
    ));
    f.wait_route("b", "a", TAKEOVER_TIMEOUT).await?;
    let took = killed_at.elapsed();
    // The agent logs the takeover once the API has confirmed every route: a moment after a
    // read of the table shows it.
    let log_a = gateway_lab::wait_for(Duration::from_secs(5), "A's takeover line", || async {
        let log = f.log("a");
        log.contains("takeover complete").then_some(log)
    })
    .await
    .unwrap_or_else(|_| f.log("a"));
    let detection = log_figure(&log_a, "takeover complete", "detection_ms");
    let switched = log_figure(&log_a, "takeover complete", "decision_to_switched_ms");
    story.say(format!(
        "zone A's agent took zone B over {:.1} s after the termination: detection {} (first \
         lost probe to decision), decision to every route switched {}",
        took.as_secs_f64(),
        ms(detection),
        ms(switched)
    ));
    if let Some(l) = log_line(&log_a, "takeover complete") {
        story.quote(&l);
    }
    let (ra, rb) = stop(&f, ids).await?;
    story.say(format!(
        "zone B's client: outage {:.0} ms ({} of {} packets lost); zone A's client: {} lost",
        rb.longest_gap_ms, rb.lost, rb.sent, ra.lost
    ));
    status(
        &f,
        story,
        "agent-a",
        "zone A's gateway now carries both zones",
    );
    rows.push(Row {
        step: "3. zone B's gateway terminated",
        at: began,
        did: format!(
            "A took B over in {:.1} s (detection {}, switch {})",
            took.as_secs_f64(),
            ms(detection),
            ms(switched)
        ),
        a: loss(&ra),
        b: loss(&rb),
    });

    // 4. The ASG's replacement boots and takes its zone back.
    story.chapter("4. The Auto Scaling group replaces zone B's gateway");
    let began = story.at();
    let ids = streams(&f).await?;
    let new_b = f.replacement("b", &old_b, wait()).await?;
    story.say(format!(
        "ASG {} launched {} ({:.1} s after the termination): starting gateway-agent in it",
        f.zone("b").asg_name,
        new_b.instance_id,
        killed_at.elapsed().as_secs_f64()
    ));
    f.spawn("b", new_b, Spec::new())?;
    f.ready("b").await?;
    f.wait_route("b", "b", wait()).await?;
    let boot = log_figure(&f.log("b"), "boot complete", "boot_ms");
    story.say(format!(
        "the replacement's agent READY in {}: it claimed the ENI and took zone B's routes back \
         before completing its launch hook",
        ms(boot)
    ));
    let handed = gateway_lab::wait_for(Duration::from_secs(10), "A lets go", || async {
        log_line(&f.log("a"), "zone handed back")
    })
    .await
    .unwrap_or_else(|_| "(no hand-back line in A's log yet)".into());
    story.say("zone A's agent sees it and stops holding zone B:");
    story.quote(&handed);
    let (ra, rb) = stop(&f, ids).await?;
    story.say(format!(
        "the hand-back: zone B's client {}; zone A's client {}",
        loss(&rb),
        loss(&ra)
    ));
    status(&f, story, &f.agent("b").name, "zone B's new gateway");
    rows.push(Row {
        step: "4. replacement takes B back",
        at: began,
        did: format!(
            "READY in {}, B back on its ENI {:.1} s after the termination",
            ms(boot),
            killed_at.elapsed().as_secs_f64()
        ),
        a: loss(&ra),
        b: loss(&rb),
    });

    // 5. An instance refresh of zone A's gateway.
    story.chapter("5. An instance refresh replaces zone A's gateway");
    let began = story.at();
    let ids = streams(&f).await?;
    tokio::time::sleep(TAIL).await;
    let old_a = f.instance_id("a");
    let old_index = f
        .gateways
        .iter()
        .rposition(|g| g.zone == "a")
        .ok_or("no agent in zone a")?;
    let asg_a = f.zone("a").asg_name.clone();
    let refresh = f.lab.refresh(&asg_a, None).await?;
    let policy = refresh["policy"].as_str().unwrap_or("the profile's policy");
    story.say(format!(
        "StartInstanceRefresh on {asg_a} ({policy}): {}; the termination hook holds {old_a} in \
         Terminating:Wait while its agent drains",
        if policy == "launch-before-terminate" {
            "the group launches the new gateway first, then terminates the old one"
        } else {
            "the group terminates the old gateway first, then launches the new one"
        }
    ));
    let refresh_at = Instant::now();
    f.gateways[old_index].expect_exit = true;
    let new_a = f.replacement("a", &old_a, wait()).await?;
    story.say(format!(
        "ASG {asg_a} launched {} ({:.1} s into the refresh): starting gateway-agent in it",
        new_a.instance_id,
        refresh_at.elapsed().as_secs_f64()
    ));
    f.spawn("a", new_a, Spec::new())?;
    f.ready("a").await?;
    let standby = f.agent("a").notify.statuses().join(" | ");
    if standby.contains("standby for") {
        story.say("the new gateway is READY as zone A's standby: the old one still holds the ENI");
    }
    // The old gateway drains: zone A handed to B, the ENI let go, the hook completed.
    let old = &mut f.gateways[old_index].agent;
    let exit = old.wait_exit(wait()).await;
    let old_log = old.log();
    exit.map_err(|e| Failure(format!("{e}\n{}", f.logs())))?;
    let drain = log_figure(&old_log, "drain complete", "drain_ms");
    story.say(format!(
        "{old_a}'s agent drained: every route of zone A handed to zone B in {}, then it let the \
         ENI and the termination hook go ({})",
        ms(drain),
        f.lifecycle_result(&old_a, "TERMINATING")
            .await?
            .unwrap_or_else(|| "hook still open".into())
    ));
    f.wait_route("a", "a", wait()).await?;
    story.say(format!(
        "zone A is back on its own ENI, carried by {} ({:.1} s into the refresh)",
        f.instance_id("a"),
        refresh_at.elapsed().as_secs_f64()
    ));
    let (ra, rb) = stop(&f, ids).await?;
    story.say(format!(
        "the refresh: zone A's client {}; zone B's client {}",
        loss(&ra),
        loss(&rb)
    ));
    status(&f, story, &f.agent("a").name, "zone A's new gateway");
    rows.push(Row {
        step: "5. instance refresh of A",
        at: began,
        did: format!(
            "old A drained to B in {}; new A took A back {:.1} s into the refresh",
            ms(drain),
            refresh_at.elapsed().as_secs_f64()
        ),
        a: loss(&ra),
        b: loss(&rb),
    });
    let unasked = f.unasked_exits();
    if !unasked.is_empty() {
        return Err(Failure(format!("{}\n{}", unasked.join("\n"), f.logs())));
    }
    Ok(())
}
