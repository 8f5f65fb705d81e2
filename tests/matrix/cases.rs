//! The cases of the fault matrix: what each does to the gateways, and the budgets its row is
//! held to (the runner, main.rs, measures and checks them).

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use crate::measure::Dead;
use crate::support::*;

/// A takeover the API confirms: ICMP fall (3 × 200 ms) plus the confirming read and the
/// writes, with room for a loaded CI machine.
const CONFIRMED_BUDGET_MS: f64 = 3_000.0;
/// A hung peer is confirmed by its lease lapsing (2.5 s) after ICMP fall.
const LEASE_BUDGET_MS: f64 = 5_500.0;
/// 20 refused calls in a row: 5 whole calls failing after 4 attempts each, every one paced by
/// the SDK's backoff and adaptive rate limiter and then by the agent's own (~3 s per call).
const STORM_BUDGET_MS: f64 = 20_000.0;
/// Failback quickly enough for the matrix.
const BASE: &str = "[failover]\nhold_down_s = 3";
/// The EC2/Auto Scaling endpoint's address, as instances reach it.
pub const API_ADDR: &str = "198.51.100.2";
/// The agent's steady-state read period (`failover.drift_interval_s`, default).
const DRIFT_S: u64 = gateway_agent::config::DEFAULT_DRIFT_INTERVAL_S;
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub type CaseFut<'a> = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'a>>;

pub struct Case {
    pub name: &'static str,
    pub zones: &'static [&'static str],
    /// Appended to every agent's config.
    pub extra: &'static str,
    /// More route tables per zone.
    pub tables: u32,
    /// Zones whose agents are started and ready before the case runs.
    pub started: &'static [&'static str],
    /// The zone of the client stream.
    pub stream: &'static str,
    /// Packets the stream may lose; `None`: measured only (a death costs detection time).
    pub max_loss: Option<u64>,
    /// The longest a route may point at a black hole; `None` when the case leaves no healthy
    /// gateway for a while (every gateway down, or the API unreachable for all).
    pub black_ms: Option<f64>,
    pub max_writers: usize,
    pub max_writes: Option<usize>,
    /// The lab's environment for this case: profile settings (`GATEWAY_LAB_AWS_*`) it needs in
    /// either profile.
    pub env: &'static [(&'static str, &'static str)],
    /// Watches for [`long_watch`] on top of its own steps (its time limit grows by as much).
    pub long: bool,
    /// Starts only once every started zone is on its own gateway (a lab that lags can move
    /// zones while the agents boot: a read that still showed a zone's ENI detached).
    pub settle: bool,
    pub run: for<'a> fn(&'a mut Ctx) -> CaseFut<'a>,
}

impl Case {
    const fn new(name: &'static str, run: for<'a> fn(&'a mut Ctx) -> CaseFut<'a>) -> Self {
        Self {
            name,
            zones: &["a", "b"],
            extra: BASE,
            tables: 0,
            started: &["a", "b"],
            stream: "b",
            max_loss: None,
            black_ms: Some(CONFIRMED_BUDGET_MS),
            max_writers: 1,
            max_writes: None,
            env: &[],
            long: false,
            settle: false,
            run,
        }
    }

    /// A case in which nothing may move: not a packet lost, not a route written.
    const fn still(name: &'static str, run: for<'a> fn(&'a mut Ctx) -> CaseFut<'a>) -> Self {
        Self {
            max_loss: Some(0),
            max_writers: 0,
            max_writes: Some(0),
            ..Case::new(name, run)
        }
    }
}

/// What a case (or the soak) works on: the fleet, and what the measurement needs to know.
pub struct Ctx {
    pub f: Fleet,
    /// ENIs whose gateway the case made dead; routes to them count as black holes.
    pub dead: Dead,
    pub note: String,
    /// Route writes before the case began.
    pub writes0: usize,
}

impl Ctx {
    pub fn new(f: Fleet) -> Self {
        Self {
            f,
            dead: Dead::default(),
            note: String::new(),
            writes0: 0,
        }
    }

    /// From now on, routes to `zone`'s ENI count as black holes.
    pub fn dead(&self, zone: &str) {
        self.dead.insert(self.f.eni(zone));
    }

    pub fn alive(&self, zone: &str) {
        self.dead.remove(&self.f.eni(zone));
    }

    /// Terminates `zone`'s gateway instance, its agent with it, and counts it dead; returns the
    /// instance's id.
    pub async fn terminate(&mut self, zone: &str) -> Result<String, Failure> {
        self.dead(zone);
        self.f.terminate(zone).await
    }

    /// Stops `zone`'s gateway instance, its agent with it, and counts it dead.
    pub async fn stop(&mut self, zone: &str) -> Result<String, Failure> {
        self.dead(zone);
        self.f.stop(zone).await
    }

    /// Route writes since the case began.
    pub async fn moved(&self) -> Result<usize, Failure> {
        Ok(self.f.route_writes().await?.saturating_sub(self.writes0))
    }

    /// A drain of `zone` after a spot notice: its routes go to the peer, it exits 0.
    async fn spot_drain(&mut self, zone: &str, to: &str) -> Result<(), Failure> {
        self.f.spot_notice(&self.f.instance_id(zone)).await?;
        self.f.wait_kernel_route(zone, to, secs(15)).await?;
        match self.f.wait_exit(zone).await? {
            Some(0) => Ok(()),
            code => Err(Failure(format!("drain exit {code:?}\n{}", self.f.logs()))),
        }
    }

    /// Fails unless `zone`'s agent said `text` in a STATUS= (`why` and what it said if not).
    fn check_status(&self, zone: &str, text: &str, why: &str) -> Result<(), Failure> {
        let statuses = self.f.agent(zone).notify.statuses().join(" | ");
        self.check(statuses.contains(text), &format!("{why}: {statuses}"))
    }

    /// Fails if `zone`'s agent is no longer running.
    fn running(&mut self, zone: &str, why: &str) -> Result<(), Failure> {
        let exited = self.f.agent_mut(zone).try_exit();
        self.check(exited.is_none(), &format!("{why}: {exited:?}"))
    }

    /// Fails unless `what` holds: the case's own assertions.
    fn check(&self, ok: bool, what: &str) -> Result<(), Failure> {
        if ok {
            Ok(())
        } else {
            Err(Failure(format!("{what}\n{}", self.f.logs())))
        }
    }
}

/// An instance refresh of zone b's group under `policy`; answers the old and the new instance.
async fn refresh_b(c: &mut Ctx, policy: &str) -> Result<(String, String), Failure> {
    let old = c.f.instance_id("b");
    let asg = c.f.zone("b").asg_name.clone();
    // The old gateway drains and leaves with its instance: not a crash.
    c.f.gateway_mut("b").expect_exit = true;
    c.f.lab.refresh(&asg, Some(policy)).await?;
    c.f.start_replacement("b", &old, wait()).await?;
    let new = c.f.instance_id("b");
    Ok((old, new))
}

/// Fails unless `instance`'s `transition` lifecycle action ended with CONTINUE.
async fn continued(c: &Ctx, instance: &str, transition: &str) -> Result<(), Failure> {
    let result = c.f.lifecycle_result(instance, transition).await?;
    c.check(
        result
            .as_deref()
            .is_some_and(|r| r.starts_with("CONTINUE ")),
        &format!("{instance}'s {transition} action ended {result:?}, not CONTINUE"),
    )
}

/// Until the refresh of `asg` reports Successful.
async fn refresh_done(c: &Ctx) -> Result<(), Failure> {
    let asg = c.f.zone("b").asg_name.clone();
    let done = wait_for(wait(), "the instance refresh completes", || async {
        let all = c.f.lab.activities().await.ok()?;
        all["refreshes"]
            .as_array()?
            .iter()
            .any(|r| r["group"] == asg.as_str() && r["status"] == "Successful")
            .then_some(())
    })
    .await;
    c.check(done.is_ok(), "the instance refresh never completed")
}

fn refresh_launch_first(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let (old, new) = refresh_b(c, "launch-before-terminate").await?;
        // It boots while the old gateway holds the ENI: a standby, READY, the launch continued.
        c.check_status("b", "standby for", "the new gateway did not stand by")?;
        continued(c, &new, "LAUNCHING").await?;
        // The old one drains to a and lets the ENI go; the standby claims it and its zone.
        c.f.wait_eni_holder("b", &new, wait()).await?;
        c.f.wait_status("b", "carrying", wait()).await?;
        c.f.wait_kernel_route("b", "b", secs(10)).await?;
        continued(c, &old, "TERMINATING").await?;
        refresh_done(c).await
    })
}

fn refresh_terminate_first(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let old = c.f.instance_id("b");
        let asg = c.f.zone("b").asg_name.clone();
        c.f.gateway_mut("b").expect_exit = true;
        c.f.lab.refresh(&asg, Some("terminate-and-launch")).await?;
        // The old gateway drains to a before its instance goes.
        c.f.wait_kernel_route("b", "a", wait()).await?;
        c.f.start_replacement("b", &old, wait()).await?;
        let new = c.f.instance_id("b");
        continued(c, &new, "LAUNCHING").await?;
        c.f.wait_kernel_route("b", "b", secs(10)).await?;
        continued(c, &old, "TERMINATING").await?;
        refresh_done(c).await
    })
}

fn peer_terminated(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let b = c.terminate("b").await?;
        c.f.wait_kernel_route("b", "a", secs(10)).await?;
        // The ASG's replacement boots, reclaims, and a lets go.
        c.f.start_replacement("b", &b, wait()).await?;
        c.alive("b");
        c.f.wait_kernel_route("b", "b", secs(5)).await
    })
}

/// The replacement's CompleteLifecycleAction takes effect but its answer is lost: the retry
/// finds no action left, which is done, not a failure.
fn lost_completion(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let b = c.terminate("b").await?;
        c.f.wait_kernel_route("b", "a", secs(10)).await?;
        c.f.lab
            .inject(&Fault::burst(
                "lost",
                Some("CompleteLifecycleAction"),
                Some(1),
            ))
            .await?;
        c.f.start_replacement("b", &b, wait()).await?;
        c.alive("b");
        c.f.wait_kernel_route("b", "b", secs(5)).await?;
        let new_b = c.f.instance_id("b");
        let state = wait_for(secs(10), "InService", || async {
            c.f.asg_state(&new_b)
                .await
                .ok()
                .filter(|s| s == "InService")
        })
        .await;
        c.check(state.is_ok(), "the replacement never went InService")?;
        let log_b = c.f.log("b");
        c.check(
            log_b.contains("lifecycle action already completed"),
            "the lost answer was never met",
        )?;
        sleep_s(2.0).await;
        c.running("b", "the replacement's agent exited")?;
        c.note = format!(
            "launch hook: {}",
            c.f.lifecycle_result(&new_b, "LAUNCHING")
                .await?
                .unwrap_or_else(|| "none".into())
        );
        Ok(())
    })
}

/// How long the long rows watch (a rebalance recommendation that no interruption follows, a
/// network manager reloading): 10 minutes, as the issue asks; `GATEWAY_MATRIX_LONG_S` shortens
/// it for a quick look, never for a reported figure.
pub fn long_watch() -> Duration {
    let s = std::env::var("GATEWAY_MATRIX_LONG_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(s)
}

/// IMDS `events/maintenance/scheduled` with one active event of `code`, `in_s` from now.
fn scheduled_event(code: &str, in_s: i64) -> String {
    let at = chrono_like(gateway_lab::fleet::unix_secs() + in_s);
    serde_json::json!([{
        "Code": code,
        "Description": format!("The instance is scheduled for {code}"),
        "EventId": "instance-event-0d59937288b749b32",
        "NotBefore": at,
        "State": "active",
    }])
    .to_string()
}

/// `21 Jan 2026 09:00:43 GMT`, as IMDS writes NotBefore.
fn chrono_like(unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let rfc = gateway_lab::fleet::rfc3339(unix); // 2026-01-21T09:00:43Z
    let (date, time) = rfc
        .trim_end_matches('Z')
        .split_once('T')
        .unwrap_or(("", ""));
    let mut d = date.split('-');
    let (y, m, day) = (
        d.next().unwrap_or(""),
        d.next().unwrap_or("1"),
        d.next().unwrap_or(""),
    );
    let month = MONTHS[m.parse::<usize>().unwrap_or(1).clamp(1, 12) - 1];
    format!("{day} {month} {y} {time} GMT")
}

const MAINTENANCE: &str = "events/maintenance/scheduled";

/// An `instance-stop` event 5 minutes ahead on a's instance: a drains in service before it
/// and stays up; the event is then canceled, and a takes its zone back.
fn instance_stop_event(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let a = c.f.instance_id("a");
        let not_before = Instant::now() + secs(300);
        c.f.lab
            .imds_set(
                &a,
                MAINTENANCE,
                Some(&scheduled_event("instance-stop", 300)),
            )
            .await?;
        c.f.wait_kernel_route("a", "b", secs(30)).await?;
        let drained_s = (not_before - Instant::now()).as_secs();
        c.f.wait_status("a", "drained for a scheduled event", secs(5))
            .await?;
        sleep_s(3.0).await;
        c.running("a", "a's agent left instead of staying up drained")?;
        // Canceled: a takes part again and its zone comes back after the hold-down.
        c.f.lab.imds_set(&a, MAINTENANCE, Some("[]")).await?;
        c.f.wait_kernel_route("a", "a", secs(30)).await?;
        c.running("a", "a's agent exited")?;
        c.note = format!("drained {drained_s} s before NotBefore; zone back after the cancel");
        Ok(())
    })
}

/// A `system-maintenance` event on a's instance: published, nothing moves.
fn system_maintenance_event(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let a = c.f.instance_id("a");
        c.f.lab
            .imds_set(
                &a,
                MAINTENANCE,
                Some(&scheduled_event("system-maintenance", 120)),
            )
            .await?;
        let seen = wait_for(secs(30), "the advisory published", || async {
            c.f.log("a").contains("maintenance-advisory").then_some(())
        })
        .await;
        c.check(seen.is_ok(), "a never saw the system-maintenance event")?;
        sleep_s(10.0).await;
        c.f.lab.imds_set(&a, MAINTENANCE, Some("[]")).await?;
        let over = wait_for(secs(30), "the advisory's end noticed", || async {
            c.f.log("a")
                .contains("the advisory notice is gone")
                .then_some(())
        })
        .await;
        c.check(over.is_ok(), "a never noticed the event's end")?;
        c.running("a", "a's agent exited")?;
        Ok(())
    })
}

/// A rebalance recommendation for a's instance that no interruption follows: a keeps its zone
/// and its agent for the long watch.
fn rebalance_no_interruption(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let a = c.f.instance_id("a");
        c.f.lab.rebalance(&a).await?;
        let watch = long_watch();
        let started = Instant::now();
        while started.elapsed() < watch {
            sleep_s(10.0).await;
            c.running("a", "a's agent exited after the rebalance recommendation")?;
        }
        c.check(
            c.f.route_is("a", "a").await?,
            "a no longer carries its zone",
        )?;
        c.check(
            c.f.log("a").contains("rebalance-recommendation"),
            "a never saw the recommendation",
        )?;
        c.note = format!("watched {} s", watch.as_secs());
        Ok(())
    })
}

/// A rebalance recommendation with Capacity Rebalancing: the group launches a replacement for
/// b, which stands by; b's termination hook drains it; the standby takes the ENI and the zone.
fn rebalance_capacity(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let old = c.f.instance_id("b");
        c.f.gateway_mut("b").expect_exit = true;
        c.f.lab.rebalance(&old).await?;
        c.f.start_replacement("b", &old, wait()).await?;
        let new = c.f.instance_id("b");
        c.f.wait_eni_holder("b", &new, wait()).await?;
        c.f.wait_status("b", "carrying", wait()).await?;
        c.f.wait_kernel_route("b", "b", secs(10)).await?;
        continued(c, &old, "TERMINATING").await
    })
}

/// b hangs and comes back while every read lags 2 s and reads may go backwards: a takes b's
/// zone once, b takes it back once, after a hold-down that flickering reads did not double.
fn lagging_reads(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        // Only what this case does counts (boot under lag moved zones before, see `settle`).
        let (from_a, from_b) = (c.f.log("a").len(), c.f.log("b").len());
        let started = gateway_lab::fleet::unix_now();
        let b = c.f.instance_id("b");
        // A boot that moved zones after they settled would make the takeover below a no-op.
        let own = c.f.wait_kernel_route("b", "b", secs(1)).await;
        c.check(own.is_ok(), "b's zone was not on b when the case began")?;
        c.dead("b");
        c.f.lab.hang(&b).await?;
        c.f.wait_kernel_route("b", "a", secs(20)).await?;
        c.f.lab.unhang(&b).await?;
        c.alive("b");
        c.f.wait_kernel_route("b", "b", secs(30)).await?;
        let seen = wait_for(secs(40), "a sees the hand-back", || async {
            c.f.log("a").contains("zone handed back").then_some(())
        })
        .await;
        c.check(seen.is_ok(), "a never saw its hand-back")?;
        // Reads that still lag or go backwards meanwhile must not count more moves.
        sleep_s(5.0).await;
        let (log_a, log_b) = (c.f.log("a"), c.f.log("b"));
        let (log_a, log_b) = (
            &log_a[from_a.min(log_a.len())..],
            &log_b[from_b.min(log_b.len())..],
        );
        let handed = log_a.matches("zone handed back").count();
        c.check(handed == 1, &format!("a logged {handed} hand-backs, not 1"))?;
        // Every carrier change a gateway counted (they feed the damped hold-down) is a real
        // route write: flickering reads count none.
        let table_b = c.f.zone("b").route_table_id.clone();
        let real =
            c.f.lab
                .route_changes()
                .await?
                .iter()
                .filter(|ch| ch.table.as_deref() == Some(table_b.as_str()) && ch.at >= started)
                .count();
        let az_b = c.f.zone("b").az.clone();
        let pattern = format!("zone changed carrier zone={az_b}");
        for (who, log) in [("a", log_a), ("b", log_b)] {
            let seen = log.matches(&pattern).count();
            c.check(
                seen <= real,
                &format!(
                    "{who} counted {seen} carrier changes of b's zone; {real} route writes made"
                ),
            )?;
        }
        c.note = "lag 2 s, non-monotonic reads".into();
        Ok(())
    })
}

/// networkd (as amazon-ec2-net-utils configures it) reloads on both gateways every 60 s for the
/// long watch, and an ENI is hot-plugged into each: nothing moves, no peer is seen down, and
/// the agent's rule and table are never missing for more than a second.
fn networkd_reloads(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let mut gone_most = Duration::ZERO;
        let mut gone_since: [Option<Instant>; 2] = [None, None];
        let zones = ["a", "b"];
        let ns: Vec<String> = zones
            .iter()
            .map(|z| c.f.gateway(z).inst.ns.clone().unwrap_or_default())
            .collect();
        let ids: Vec<String> = zones.iter().map(|z| c.f.instance_id(z)).collect();
        let watch = long_watch();
        let started = Instant::now();
        let mut next_reload = started;
        let mut attached = false;
        while started.elapsed() < watch {
            if Instant::now() >= next_reload {
                for id in &ids {
                    c.f.lab.networkd(id, "reload").await?;
                }
                next_reload += secs(60);
            }
            if !attached && started.elapsed() >= secs(30) {
                for (z, id) in zones.iter().zip(&ids) {
                    let eni = c.f.spare_eni(z).await?;
                    c.f.lab.attach_eni_at(&eni, id, 2).await?;
                }
                attached = true;
            }
            for (i, n) in ns.iter().enumerate() {
                let ok = agent_rule_and_table(n);
                match (ok, gone_since[i]) {
                    (false, None) => gone_since[i] = Some(Instant::now()),
                    (true, Some(at)) => {
                        gone_most = gone_most.max(at.elapsed());
                        gone_since[i] = None;
                    }
                    _ => {}
                }
            }
            sleep_s(0.1).await;
        }
        for at in gone_since.iter().flatten() {
            gone_most = gone_most.max(at.elapsed());
        }
        let logs = c.f.logs();
        c.check(
            gone_most <= secs(1),
            &format!("the agent's rule or table was missing for {gone_most:?}"),
        )?;
        c.check(!logs.contains("peer down by ICMP"), "a peer was seen down")?;
        c.note = format!(
            "watched {} s; rule/table missing at most {} ms",
            watch.as_secs(),
            gone_most.as_millis()
        );
        Ok(())
    })
}

/// The agent's policy rule (pref 7700) and its table's default route, in namespace `ns`.
fn agent_rule_and_table(ns: &str) -> bool {
    let run = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(["-n", ns])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    run(&["rule", "show", "pref", "7700"]).contains("lookup 7700")
        && run(&["route", "show", "table", "7700"]).contains("default")
}

fn peer_stopped(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        c.stop("b").await?;
        c.f.wait_kernel_route("b", "a", secs(10)).await
    })
}

fn peer_hung(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let b = c.f.instance_id("b");
        c.dead("b");
        c.f.lab.hang(&b).await?;
        c.f.wait_kernel_route("b", "a", secs(10)).await?;
        c.check(
            c.f.log("a").contains("lease not renewed"),
            "not confirmed by the lease",
        )?;
        c.f.lab.unhang(&b).await?;
        c.alive("b");
        // Back after the hold-down of continuous health.
        c.f.wait_kernel_route("b", "b", secs(15)).await
    })
}

fn agent_killed(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        c.f.kill_agent("b").await;
        // Past ICMP fall and the lease TTL: the lease is stale, but b's kernel forwards.
        sleep_s(6.0).await;
        c.f.wait_kernel_route("b", "b", secs(1)).await
    })
}

fn crash_mid_takeover(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        // a's first write (b's subnet-associated table) hangs in the API for 3 s.
        c.f.lab
            .inject(&Fault::latency("ReplaceRoute", 3_000, Some(1)))
            .await?;
        c.terminate("b").await?;
        let decided = wait_for(secs(10), "a's takeover decision", || async {
            c.f.log("a")
                .contains("decision: pointing routes at")
                .then_some(())
        })
        .await;
        c.check(decided.is_ok(), "a never decided")?;
        sleep_s(0.8).await;
        c.f.kill_agent("a").await;
        // The write in flight lands; the rest were never sent.
        let tables = c.f.zone("b").route_table_ids.clone();
        let eni_a = c.f.eni("a");
        let switched = || async {
            let mut n = 0;
            for t in &tables {
                n += usize::from(c.f.kernel_via(t).await.as_deref() == Some(eni_a.as_str()));
            }
            n
        };
        let some = wait_for(secs(6), "the first write", || async {
            let n = switched().await;
            (n > 0).then_some(n)
        })
        .await?;
        c.check(
            some < tables.len(),
            &format!("all {some} tables switched before the crash: not mid-takeover"),
        )?;
        c.note = format!("{some}/{} switched at the crash", tables.len());
        // systemd restarts it; the new process finishes the job.
        let inst = c.f.gateway("a").inst.clone();
        c.f.spawn("a", inst, Spec::new())?;
        c.f.ready("a").await?;
        c.f.wait_kernel_route("b", "a", secs(10)).await
    })
}

fn restart_loop(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let writes = c.f.route_writes().await?;
        for _ in 0..5 {
            c.f.kill_agent("b").await;
            let inst = c.f.gateway("b").inst.clone();
            c.f.spawn("b", inst, Spec::new())?;
            sleep_s(1.2).await;
        }
        c.f.ready("b").await?;
        sleep_s(3.0).await;
        c.note = "5 SIGKILL + restart, 1.2 s apart".into();
        c.check(
            c.f.route_writes().await? == writes,
            "a restart moved a route that was right",
        )
    })
}

fn link_cut(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let (a, b) = (c.f.zone("a").eni_ip.clone(), c.f.zone("b").eni_ip.clone());
        c.f.lab.partition(&a, &b).await?;
        sleep_s(8.0).await;
        c.check(
            c.f.log("a").contains("peer down by ICMP"),
            "the partition did not bite",
        )?;
        c.f.lab.heal(&a, &b).await?;
        sleep_s(2.0).await;
        c.f.wait_kernel_route("a", "a", secs(1)).await?;
        c.f.wait_kernel_route("b", "b", secs(1)).await
    })
}

fn uplink_cut(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let primary = c.f.primary("a");
        c.dead("a");
        c.f.lab.partition(&primary, INTERNET_HOST).await?;
        c.f.wait_kernel_route("a", "b", secs(10)).await?;
        sleep_s(3.0).await;
        c.f.wait_kernel_route("a", "b", secs(1)).await?;
        c.f.lab.heal(&primary, INTERNET_HOST).await?;
        c.alive("a");
        c.f.wait_kernel_route("a", "a", secs(15)).await
    })
}

fn api_cut_one(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let primary = c.f.primary("a");
        c.f.lab.partition(&primary, API_ADDR).await?;
        // At steady state a calls the API once per drift interval: it says so at its next read.
        let said = wait_for(secs(DRIFT_S + 8), "a to say the API fails", || async {
            c.f.agent("a")
                .notify
                .statuses()
                .iter()
                .any(|s| s.contains("EC2 API failing"))
                .then_some(())
        })
        .await;
        c.check(said.is_ok(), "a does not say the API fails")?;
        c.check(c.moved().await? == 0, "a route moved")?;
        c.f.lab.heal(&primary, API_ADDR).await?;
        sleep_s(2.0).await;
        // Back to normal: a death is handled as ever.
        c.terminate("b").await?;
        c.f.wait_kernel_route("b", "a", secs(10)).await
    })
}

fn api_cut_all(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let (pa, pb) = (c.f.primary("a"), c.f.primary("b"));
        for p in [&pa, &pb] {
            c.f.lab.partition(p, API_ADDR).await?;
        }
        // b dies while nobody can reach the API: nothing can move; everyone keeps probing.
        c.terminate("b").await?;
        sleep_s(6.0).await;
        c.check_status("a", "EC2 API failing", "a does not say the API fails")?;
        c.check(c.moved().await? == 0, "a write got through")?;
        c.f.lab.heal(&pa, API_ADDR).await?;
        let healed = Instant::now();
        c.f.wait_kernel_route("b", "a", secs(10)).await?;
        c.note = format!("API back → b via a in {} ms", healed.elapsed().as_millis());
        Ok(())
    })
}

/// Every API call from anyone fails with `kind` for the next 20 calls while b dies.
fn api_storm<'a>(c: &'a mut Ctx, kind: &'static str) -> CaseFut<'a> {
    Box::pin(async move {
        c.f.lab.inject(&Fault::burst(kind, None, Some(20))).await?;
        c.terminate("b").await?;
        c.f.wait_kernel_route("b", "a", secs(30)).await?;
        let done = wait_for(secs(15), "takeover complete", || async {
            c.f.log("a").contains("takeover complete").then_some(())
        })
        .await;
        c.check(done.is_ok(), "the takeover was never confirmed")
    })
}

fn imds_down_at_boot(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let inst = c.f.instance("b").await?;
        c.f.lab.imds_fault(&inst.instance_id, "refuse", 0).await?;
        c.f.spawn("b", inst.clone(), Spec::new())?;
        sleep_s(4.0).await;
        c.check(!c.f.agent("b").notify.ready(), "READY without IMDS")?;
        c.f.lab.imds_fault(&inst.instance_id, "ok", 0).await?;
        c.f.ready("b").await?;
        c.alive("b");
        c.f.wait_kernel_route("b", "b", secs(5)).await
    })
}

/// IMDS answers `mode` for 6 s: nothing moves, nobody drains; afterwards a spot notice is
/// still seen and drained (the watch survived).
fn imds_bad_while_running<'a>(c: &'a mut Ctx, mode: &'static str) -> CaseFut<'a> {
    Box::pin(async move {
        let b = c.f.instance_id("b");
        c.f.lab.imds_fault(&b, mode, 0).await?;
        sleep_s(6.0).await;
        c.check(c.moved().await? == 0, "a route moved on bad IMDS answers")?;
        c.f.lab.imds_fault(&b, "ok", 0).await?;
        c.spot_drain("b", "a").await
    })
}

fn imds_token_expiry(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let b = c.f.instance_id("b");
        for _ in 0..5 {
            c.f.lab.imds_expire_tokens(&b).await?;
            sleep_s(1.0).await;
        }
        c.check(c.moved().await? == 0, "a route moved")?;
        c.f.lab.imds_expire_tokens(&b).await?;
        c.spot_drain("b", "a").await
    })
}

/// b boots while EC2 never finishes its ENI's attachment (or, with `dead_holder`, the
/// detachment from a stopped old gateway): the boot gives up at its timeout, names the step,
/// ABANDONs the launch; a carries b's zone meanwhile.
fn boot_with_stuck_eni<'a>(c: &'a mut Ctx, kind: &'static str, dead_holder: bool) -> CaseFut<'a> {
    Box::pin(async move {
        c.dead("b");
        if dead_holder {
            let old = c.f.old_holder("b").await?;
            c.f.lab.stop(&old).await?;
        }
        c.f.wait_kernel_route("b", "a", secs(10)).await?;
        c.f.lab
            .inject(&Fault::burst(kind, Some("DescribeNetworkInterfaces"), None))
            .await?;
        let inst = c.f.instance("b").await?;
        // Only the gateway under test gives up after 4 s: under the aws profile a healthy
        // attachment alone takes 2-5 s, and the case is about b's boot, not a's.
        let spec = Spec::new().extra("[boot]\nattach_timeout_s = 4");
        c.f.spawn("b", inst, spec)?;
        let exit = c.f.wait_exit("b").await.map_err(|_| "still running");
        let statuses = c.f.agent("b").notify.statuses().join(" | ");
        c.check(
            matches!(exit, Ok(code) if code != Some(0)),
            &format!("the boot did not give up: {exit:?}"),
        )?;
        c.check(
            statuses.contains("claim") && statuses.contains("ABANDONing"),
            &format!("STATUS does not name the step: {statuses}"),
        )?;
        c.f.lab.clear_faults().await?;
        c.note = "boot gave up at attach_timeout_s, ABANDON".into();
        Ok(())
    })
}

fn eni_on_terminated(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        c.dead("b");
        let old = c.f.old_holder("b").await?;
        c.f.lab.terminate(&old).await?;
        c.f.wait_kernel_route("b", "a", secs(10)).await?;
        c.f.start("b").await?;
        c.f.ready("b").await?;
        c.alive("b");
        c.f.wait_kernel_route("b", "b", secs(5)).await
    })
}

fn both_rebooted(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let ids = [c.f.instance_id("a"), c.f.instance_id("b")];
        for z in ["a", "b"] {
            c.f.kill_agent(z).await;
            c.dead(z);
        }
        for id in &ids {
            c.f.lab.stop(id).await?;
        }
        sleep_s(1.0).await;
        for id in &ids {
            c.f.lab.start_instance(id).await?;
        }
        let mut back = Vec::new();
        for id in &ids {
            let inst = wait_for(wait(), "the instance back", || async {
                c.f.lab
                    .instances()
                    .await
                    .ok()?
                    .into_iter()
                    .find(|i| &i.instance_id == id && i.state == "running" && i.ns.is_some())
            })
            .await?;
            back.push(inst);
        }
        for (z, inst) in ["a", "b"].into_iter().zip(back) {
            c.f.spawn(z, inst, Spec::new())?;
        }
        for z in ["a", "b"] {
            c.f.ready(z).await?;
            c.alive(z);
        }
        sleep_s(3.0).await;
        c.f.wait_kernel_route("a", "a", secs(1)).await?;
        c.f.wait_kernel_route("b", "b", secs(1)).await
    })
}

fn three_zones_two_fail(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        c.terminate("c").await?;
        // Ring a → b → c → a: c's successor is a.
        c.f.wait_kernel_route("c", "a", secs(10)).await?;
        sleep_s(2.0).await;
        c.check(
            !c.f.log("b").contains("takeover complete"),
            "b took c although a, its successor, is alive",
        )?;
        c.terminate("a").await?;
        c.f.wait_kernel_route("a", "b", secs(10)).await?;
        c.f.wait_kernel_route("c", "b", secs(10)).await
    })
}

/// The newest lease renewal time (unix ms) on `zone`'s main table.
/// The agent's wall clock as its `status` reports it.
fn status_ms(c: &Ctx, zone: &str) -> Option<i64> {
    let name = c.f.gateway(zone).agent.name.clone();
    let (_, out, _) = c.f.cli(&name, &["status", "--json"]).ok()?;
    serde_json::from_str::<serde_json::Value>(&out).ok()?["unix_ms"].as_i64()
}

fn clock_jumps(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        // a runs with libfaketime: its wall clock jumps, its monotonic clock does not.
        let file = format!("{}/faketime-a", c.f.lab.info.run_dir);
        std::fs::write(&file, "+0\n")?;
        let inst = c.f.instance("a").await?;
        let spec = Spec::new()
            .env("LD_PRELOAD", FAKETIME_LIB)
            .env("FAKETIME_TIMESTAMP_FILE", &file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        c.f.spawn("a", inst, spec)?;
        c.f.ready("a").await?;
        c.alive("a");
        sleep_s(2.0).await;
        // a's boot reclaimed its zone from b; only what follows counts.
        c.writes0 = c.f.route_writes().await?;
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        };
        for (offset, sign) in [("+3600", 1i64), ("-7200", -1)] {
            std::fs::write(&file, format!("{offset}\n"))?;
            sleep_s(4.0).await;
            let skew = status_ms(c, "a").map(|ms| ms - now_ms());
            c.check(
                skew.is_some_and(|s| s * sign > 3_000_000),
                &format!("a's clock did not jump {offset} s (status skew {skew:?} ms)"),
            )?;
        }
        c.check(c.moved().await? == 0, "a clock jump moved a route")?;
        // A death is still handled while a's wall clock is two hours behind.
        c.terminate("b").await?;
        c.note = "wall clock +1 h, then -2 h".into();
        c.f.wait_kernel_route("b", "a", secs(10)).await
    })
}

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            max_writers: 2,
            ..Case::new("peer instance terminated, replaced", peer_terminated)
        },
        Case::new("peer instance stopped", peer_stopped),
        Case {
            max_writers: 2,
            ..Case::new("lost CompleteLifecycleAction answer", lost_completion)
        },
        Case {
            max_loss: Some(0),
            max_writers: 2,
            max_writes: Some(2),
            ..Case::new(
                "instance refresh, launch-before-terminate",
                refresh_launch_first,
            )
        },
        Case {
            max_writers: 2,
            max_writes: Some(2),
            ..Case::new(
                "instance refresh, terminate-and-launch",
                refresh_terminate_first,
            )
        },
        Case {
            black_ms: Some(LEASE_BUDGET_MS),
            max_writers: 2,
            ..Case::new("peer hung (SIGSTOP + drop), then back", peer_hung)
        },
        Case::still("peer agent killed -9", agent_killed),
        Case {
            tables: 7,
            black_ms: Some(9_000.0),
            ..Case::new("agent crash mid-takeover, restarted", crash_mid_takeover)
        },
        Case::still("agent restart loop", restart_loop),
        Case::still("link cut between gateways", link_cut),
        Case {
            extra: "[self_check]\nicmp_targets = [\"198.51.100.1\"]\ntimeout_ms = 200\n[failover]\nhold_down_s = 3",
            stream: "a",
            black_ms: Some(4_000.0),
            max_writes: Some(2),
            ..Case::new("uplink cut on one gateway, then back", uplink_cut)
        },
        Case::new("API unreachable from one gateway", api_cut_one),
        Case {
            black_ms: None,
            ..Case::new("API unreachable from all gateways", api_cut_all)
        },
        Case {
            black_ms: Some(STORM_BUDGET_MS),
            ..Case::new("EC2 throttling storm during a takeover", |c| {
                api_storm(c, "throttle")
            })
        },
        Case {
            black_ms: Some(STORM_BUDGET_MS),
            ..Case::new("EC2 5xx burst during a takeover", |c| api_storm(c, "5xx"))
        },
        Case {
            started: &["a"],
            max_writers: 2,
            ..Case::new("IMDS down at boot", imds_down_at_boot)
        },
        Case {
            max_loss: Some(0),
            ..Case::new("IMDS answering garbage while running", |c| {
                imds_bad_while_running(c, "garbage")
            })
        },
        Case {
            max_loss: Some(0),
            ..Case::new("IMDS answering 500 while running", |c| {
                imds_bad_while_running(c, "500")
            })
        },
        Case {
            max_loss: Some(0),
            ..Case::new("IMDS token expiring", imds_token_expiry)
        },
        Case {
            started: &["a"],
            ..Case::new("ENI stuck attaching", |c| {
                boot_with_stuck_eni(c, "stuck-attaching", false)
            })
        },
        Case {
            started: &["a"],
            ..Case::new("ENI stuck detaching from a dead holder", |c| {
                boot_with_stuck_eni(c, "stuck-detaching", true)
            })
        },
        Case {
            started: &["a"],
            max_writers: 2,
            ..Case::new("ENI attached to a terminated instance", eni_on_terminated)
        },
        Case {
            black_ms: None,
            ..Case::new("both gateways rebooted at once", both_rebooted)
        },
        Case {
            zones: &["a", "b", "c"],
            started: &["a", "b", "c"],
            stream: "c",
            max_writers: 2,
            ..Case::new("three zones, two failing in sequence", three_zones_two_fail)
        },
        Case {
            started: &["b"],
            ..Case::new("wall clock jumps (+1 h, -2 h)", clock_jumps)
        },
        Case {
            stream: "a",
            max_loss: Some(0),
            max_writes: Some(2),
            ..Case::new(
                "scheduled instance-stop event, drained, then canceled",
                instance_stop_event,
            )
        },
        Case {
            stream: "a",
            ..Case::still(
                "scheduled system-maintenance event",
                system_maintenance_event,
            )
        },
        Case {
            stream: "a",
            env: &[("GATEWAY_LAB_AWS_CAPACITY_REBALANCE", "0")],
            long: true,
            ..Case::still(
                "rebalance recommendation, no interruption (10 min)",
                rebalance_no_interruption,
            )
        },
        Case {
            max_loss: Some(0),
            max_writers: 2,
            max_writes: Some(2),
            env: &[("GATEWAY_LAB_AWS_CAPACITY_REBALANCE", "1")],
            ..Case::new(
                "rebalance recommendation with Capacity Rebalancing",
                rebalance_capacity,
            )
        },
        Case {
            black_ms: Some(LEASE_BUDGET_MS),
            max_writers: 2,
            max_writes: Some(2),
            env: &[
                ("GATEWAY_LAB_AWS_LAG_S", "0.2..2"),
                ("GATEWAY_LAB_AWS_NONMONOTONIC", "1"),
            ],
            settle: true,
            ..Case::new(
                "peer hung and back under 2 s read lag, non-monotonic reads",
                lagging_reads,
            )
        },
        Case {
            env: &[
                ("GATEWAY_LAB_AWS_NETWORKD", "1"),
                ("GATEWAY_LAB_AWS_NETUTILS_REFRESH_S", "60"),
            ],
            long: true,
            ..Case::still(
                "networkd reloads every 60 s and an ENI attach (10 min)",
                networkd_reloads,
            )
        },
    ]
}
