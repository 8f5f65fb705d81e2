//! The fault matrix (as root): every fault a cloud throws at the gateways, one fresh lab per
//! case, each with what a user would measure:
//! - client loss: packets of the zone's 100 packets/s client stream lost, and the longest gap;
//! - blackhole: the longest time any managed route pointed at a black hole, as the VPC router's
//!   kernel has it (a detached ENI) or at the ENI of a gateway the case killed, hung or cut off;
//! - writers: the most gateways that wrote one route table (from the API's own record of who
//!   sent each ReplaceRoute), and the route writes in all.
//!
//! Each case asserts DESIGN.md's invariants: a route leaves a dead gateway within detection
//! plus the API call while a healthy one exists (the case's blackhole budget); one writer per
//! zone, never a writer coming back after another (a fight); a restart changes nothing; bad
//! input gets an error and half-done work is finished. At the end of every case the zone's
//! stream must flow again and no agent may have died unasked. The table is printed at the end;
//! a failed row fails the run.
//!
//! `cargo test --test matrix` (part of `make test`); `-- --case <text>[,<text>]` runs the cases
//! whose name contains one of them. `-- --soak <seconds>` runs the soak instead (`make soak`): random faults
//! every few seconds, with the agents' RSS and CPU sampled along the way.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use gateway_lab::StreamReport;
use support::*;

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
const API_ADDR: &str = "198.51.100.2";
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

type CaseFut<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

struct Case {
    name: &'static str,
    zones: &'static [&'static str],
    /// Appended to every agent's config.
    extra: &'static str,
    /// More route tables per zone.
    tables: u32,
    /// Zones whose agents are started and ready before the case runs.
    started: &'static [&'static str],
    /// The zone of the client stream.
    stream: &'static str,
    /// Packets the stream may lose; `None`: measured only (a death costs detection time).
    max_loss: Option<u64>,
    /// The longest a route may point at a black hole; `None` when the case leaves no healthy
    /// gateway for a while (every gateway down, or the API unreachable for all).
    black_ms: Option<f64>,
    max_writers: usize,
    max_writes: Option<usize>,
    run: for<'a> fn(&'a mut Ctx) -> CaseFut<'a>,
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
            run,
        }
    }
}

struct Running {
    zone: String,
    name: String,
    inst: Instance,
    agent: Agent,
    /// Stopped by the case on purpose (killed, drained, abandoned).
    expect_exit: bool,
}

struct Ctx {
    e: Env,
    extra: String,
    agents: Vec<Running>,
    /// ENIs whose gateway the case made dead; routes to them count as black holes.
    dead: Arc<Mutex<HashSet<String>>>,
    /// Primary address → who (for the writers column).
    writers: HashMap<String, String>,
    spawned: usize,
    note: String,
    writes0: usize,
}

impl Ctx {
    fn new(e: Env, extra: &str) -> Self {
        Self {
            e,
            extra: extra.to_owned(),
            agents: Vec::new(),
            dead: Arc::new(Mutex::new(HashSet::new())),
            writers: HashMap::new(),
            spawned: 0,
            note: String::new(),
            writes0: 0,
        }
    }

    fn eni(&self, zone: &str) -> String {
        self.e.sc.zone(zone).eni_id.clone()
    }

    fn dead(&self, zone: &str) {
        self.dead.lock().unwrap().insert(self.eni(zone));
    }

    fn alive(&self, zone: &str) {
        self.dead.lock().unwrap().remove(&self.eni(zone));
    }

    fn running(&self, zone: &str) -> &Running {
        self.agents
            .iter()
            .rev()
            .find(|r| r.zone == zone)
            .unwrap_or_else(|| panic!("no agent in zone {zone}"))
    }

    fn running_mut(&mut self, zone: &str) -> &mut Running {
        self.agents
            .iter_mut()
            .rev()
            .find(|r| r.zone == zone)
            .unwrap_or_else(|| panic!("no agent in zone {zone}"))
    }

    fn instance_id(&self, zone: &str) -> String {
        self.running(zone).inst.instance_id.clone()
    }

    fn primary(&self, zone: &str) -> String {
        self.running(zone)
            .inst
            .private_ip
            .clone()
            .expect("a running instance has a primary address")
    }

    fn log(&self, zone: &str) -> String {
        self.running(zone).agent.log()
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|r| format!("--- {} ---\n{}", r.name, r.agent.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts an agent on `inst` in `zone` (not waiting for READY).
    fn start_on(&mut self, zone: &str, inst: Instance, envs: &[(&str, &str)]) {
        self.spawned += 1;
        let name = format!("agent-{zone}{}", self.spawned);
        let socket = self.e.socket_path(&name);
        let extra = format!(
            "{}\n[control]\nsocket = \"{}\"\n",
            self.extra,
            socket.display()
        );
        let agent = self.e.start_agent_env(&inst, &name, &extra, &[], envs, &[]);
        // One name per instance (a restart keeps it): a, then a' for its replacement, a''...
        if let Some(ip) = &inst.private_ip
            && !self.writers.contains_key(ip)
        {
            let before = self
                .writers
                .values()
                .filter(|w| w.starts_with(zone))
                .count();
            self.writers
                .insert(ip.clone(), format!("{zone}{}", "'".repeat(before)));
        }
        self.agents.push(Running {
            zone: zone.to_owned(),
            name,
            inst,
            agent,
            expect_exit: false,
        });
    }

    /// Starts the agent of `zone`'s current instance (waiting for the ASG to launch one).
    async fn start(&mut self, zone: &str) {
        let inst = self.e.instance(zone).await;
        self.start_on(zone, inst, &[]);
    }

    async fn ready(&self, zone: &str) -> Result<(), String> {
        let agent = &self.running(zone).agent;
        wait_for(wait(), "READY=1", || async {
            agent.notify.ready().then_some(())
        })
        .await
        .map_err(|_| {
            format!(
                "{zone}'s agent not READY: {:?}\n{}",
                agent.notify.statuses(),
                self.logs()
            )
        })
    }

    /// Terminates `zone`'s gateway instance, its agent with it; returns the instance's id.
    async fn terminate(&mut self, zone: &str) -> Result<String, String> {
        self.kill_instance(zone, false).await
    }

    /// Stops `zone`'s gateway instance, its agent with it; returns the instance's id.
    async fn stop(&mut self, zone: &str) -> Result<String, String> {
        self.kill_instance(zone, true).await
    }

    async fn kill_instance(&mut self, zone: &str, stop: bool) -> Result<String, String> {
        let id = self.instance_id(zone);
        self.dead(zone);
        self.running_mut(zone).expect_exit = true;
        let done = if stop {
            self.e.lab.stop(&id).await
        } else {
            self.e.lab.terminate(&id).await
        };
        done.map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// SIGKILLs `zone`'s agent, as a crash would.
    async fn kill_agent(&mut self, zone: &str) {
        let r = self.running_mut(zone);
        r.expect_exit = true;
        let _ = r.agent.child.kill().await;
    }

    /// Where `zone`'s table `table` sends 0.0.0.0/0, as the VPC router's kernel has it:
    /// the ENI, or `None` for a black hole.
    async fn via(&self, table: &str) -> Option<String> {
        let routes = self.e.lab.kernel_routes(table).await.ok()?;
        routes
            .into_iter()
            .find(|r| r.destination == "0.0.0.0/0")
            .filter(|r| r.kind != "blackhole")
            .and_then(|r| r.eni)
    }

    /// Waits until every table of `zone` routes via `target`'s ENI.
    async fn wait_route(&self, zone: &str, target: &str, timeout: Duration) -> Result<(), String> {
        let want = self.eni(target);
        let tables = self.e.sc.zone(zone).route_table_ids.clone();
        let ok = wait_for(timeout, &format!("{zone} via {target}"), || async {
            for t in &tables {
                if self.via(t).await.as_deref() != Some(want.as_str()) {
                    return None;
                }
            }
            Some(())
        })
        .await;
        ok.map_err(|_| format!("{zone} not via {target} after {timeout:?}\n{}", self.logs()))
    }

    async fn route_writes(&self) -> usize {
        self.e.route_writes().await
    }

    /// Route writes since the case began.
    async fn moved(&self) -> usize {
        self.route_writes().await.saturating_sub(self.writes0)
    }

    /// The ASG's replacement of `old` in `zone`.
    async fn replacement(&self, zone: &str, old: &str) -> Result<Instance, String> {
        wait_for(wait(), &format!("{zone}'s replacement"), || async {
            self.e
                .lab
                .instance_in(zone)
                .await
                .ok()
                .filter(|i| i.instance_id != old)
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn spot_notice(&self, zone: &str) -> Result<(), String> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 120;
        let notice = format!(
            r#"{{"action": "terminate", "time": "{}"}}"#,
            gateway_agent::events::rfc3339_text(secs)
        );
        self.e
            .lab
            .imds_set(
                &self.instance_id(zone),
                "spot/instance-action",
                Some(&notice),
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// A drain of `zone` after a spot notice: its routes go to the peer, it exits 0.
    async fn spot_drain(&mut self, zone: &str, to: &str) -> Result<(), String> {
        self.spot_notice(zone).await?;
        self.wait_route(zone, to, Duration::from_secs(15)).await?;
        let r = self.running_mut(zone);
        r.expect_exit = true;
        let exit = tokio::time::timeout(wait(), r.agent.child.wait()).await;
        match exit {
            Ok(Ok(s)) if s.code() == Some(0) => Ok(()),
            other => Err(format!("drain exit {other:?}\n{}", self.logs())),
        }
    }

    /// Fails unless `what` holds: the case's own assertions.
    fn check(&self, ok: bool, what: &str) -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(format!("{what}\n{}", self.logs()))
        }
    }
}

/// `count` calls of `action` (every action with `None`) answered with `kind`.
fn burst(kind: &str, action: Option<&str>, count: u32) -> Fault {
    Fault {
        action: action.map(str::to_owned),
        kind: kind.to_owned(),
        count: Some(count),
        latency_ms: 0,
        status: None,
    }
}

async fn sleep_s(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

// --- the cases ------------------------------------------------------------------------------

fn peer_terminated(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let b = c.terminate("b").await?;
        c.wait_route("b", "a", Duration::from_secs(10)).await?;
        // The ASG's replacement boots, reclaims, and a lets go.
        let new_b = c.replacement("b", &b).await?;
        c.start_on("b", new_b, &[]);
        c.ready("b").await?;
        c.alive("b");
        c.wait_route("b", "b", Duration::from_secs(5)).await
    })
}

fn peer_stopped(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        c.stop("b").await?;
        c.wait_route("b", "a", Duration::from_secs(10)).await
    })
}

fn peer_hung(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let b = c.instance_id("b");
        c.dead("b");
        c.e.lab.hang(&b).await.map_err(|e| e.to_string())?;
        c.wait_route("b", "a", Duration::from_secs(10)).await?;
        c.check(
            c.log("a").contains("lease not renewed"),
            "not confirmed by the lease",
        )?;
        c.e.lab.unhang(&b).await.map_err(|e| e.to_string())?;
        c.alive("b");
        // Back after the hold-down of continuous health.
        c.wait_route("b", "b", Duration::from_secs(15)).await
    })
}

fn agent_killed(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        c.kill_agent("b").await;
        // Past ICMP fall and the lease TTL: the lease is stale, but b's kernel forwards.
        sleep_s(6.0).await;
        c.wait_route("b", "b", Duration::from_secs(1)).await
    })
}

fn crash_mid_takeover(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        // a's first write (b's subnet-associated table) hangs in the API for 3 s.
        c.e.lab
            .inject(&Fault {
                action: Some("ReplaceRoute".into()),
                kind: "latency".into(),
                count: Some(1),
                latency_ms: 3_000,
                status: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        c.terminate("b").await?;
        let decided = wait_for(Duration::from_secs(10), "a's takeover decision", || async {
            c.log("a")
                .contains("decision: pointing routes at")
                .then_some(())
        })
        .await;
        c.check(decided.is_ok(), "a never decided")?;
        sleep_s(0.8).await;
        c.kill_agent("a").await;
        // The write in flight lands; the rest were never sent.
        let tables = c.e.sc.zone("b").route_table_ids.clone();
        let eni_a = c.eni("a");
        let switched = || async {
            let mut n = 0;
            for t in &tables {
                n += usize::from(c.via(t).await.as_deref() == Some(eni_a.as_str()));
            }
            n
        };
        let some = wait_for(Duration::from_secs(6), "the first write", || async {
            let n = switched().await;
            (n > 0).then_some(n)
        })
        .await
        .map_err(|e| e.to_string())?;
        c.check(
            some < tables.len(),
            &format!("all {some} tables switched before the crash: not mid-takeover"),
        )?;
        c.note = format!("{some}/{} switched at the crash", tables.len());
        // systemd restarts it; the new process finishes the job.
        let inst = c.running("a").inst.clone();
        c.start_on("a", inst, &[]);
        c.ready("a").await?;
        c.wait_route("b", "a", Duration::from_secs(10)).await
    })
}

fn restart_loop(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let writes = c.route_writes().await;
        for _ in 0..5 {
            c.kill_agent("b").await;
            let inst = c.running("b").inst.clone();
            c.start_on("b", inst, &[]);
            sleep_s(1.2).await;
        }
        c.ready("b").await?;
        sleep_s(3.0).await;
        c.note = "5 SIGKILL + restart, 1.2 s apart".into();
        c.check(
            c.route_writes().await == writes,
            "a restart moved a route that was right",
        )
    })
}

fn link_cut(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let (a, b) = (
            c.e.sc.zone("a").eni_ip.clone(),
            c.e.sc.zone("b").eni_ip.clone(),
        );
        c.e.lab.partition(&a, &b).await.map_err(|e| e.to_string())?;
        sleep_s(8.0).await;
        c.check(
            c.log("a").contains("peer down by ICMP"),
            "the partition did not bite",
        )?;
        c.e.lab.heal(&a, &b).await.map_err(|e| e.to_string())?;
        sleep_s(2.0).await;
        c.wait_route("a", "a", Duration::from_secs(1)).await?;
        c.wait_route("b", "b", Duration::from_secs(1)).await
    })
}

fn uplink_cut(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let primary = c.primary("a");
        c.dead("a");
        c.e.lab
            .partition(&primary, INTERNET_HOST)
            .await
            .map_err(|e| e.to_string())?;
        c.wait_route("a", "b", Duration::from_secs(10)).await?;
        sleep_s(3.0).await;
        c.wait_route("a", "b", Duration::from_secs(1)).await?;
        c.e.lab
            .heal(&primary, INTERNET_HOST)
            .await
            .map_err(|e| e.to_string())?;
        c.alive("a");
        c.wait_route("a", "a", Duration::from_secs(15)).await
    })
}

fn api_cut_one(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let primary = c.primary("a");
        c.e.lab
            .partition(&primary, API_ADDR)
            .await
            .map_err(|e| e.to_string())?;
        sleep_s(8.0).await;
        let statuses = c.running("a").agent.notify.statuses().join(" | ");
        c.check(
            statuses.contains("EC2 API failing"),
            &format!("a does not say the API fails: {statuses}"),
        )?;
        c.check(c.moved().await == 0, "a route moved")?;
        c.e.lab
            .heal(&primary, API_ADDR)
            .await
            .map_err(|e| e.to_string())?;
        sleep_s(2.0).await;
        // Back to normal: a death is handled as ever.
        c.terminate("b").await?;
        c.wait_route("b", "a", Duration::from_secs(10)).await
    })
}

fn api_cut_all(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let (pa, pb) = (c.primary("a"), c.primary("b"));
        for p in [&pa, &pb] {
            c.e.lab
                .partition(p, API_ADDR)
                .await
                .map_err(|e| e.to_string())?;
        }
        // b dies while nobody can reach the API: nothing can move; everyone keeps probing.
        c.terminate("b").await?;
        sleep_s(6.0).await;
        let statuses = c.running("a").agent.notify.statuses().join(" | ");
        c.check(
            statuses.contains("EC2 API failing"),
            &format!("a does not say the API fails: {statuses}"),
        )?;
        c.check(c.moved().await == 0, "a write got through")?;
        c.e.lab
            .heal(&pa, API_ADDR)
            .await
            .map_err(|e| e.to_string())?;
        let healed = Instant::now();
        c.wait_route("b", "a", Duration::from_secs(10)).await?;
        c.note = format!("API back → b via a in {} ms", healed.elapsed().as_millis());
        Ok(())
    })
}

/// Every API call from anyone fails with `kind` for the next 20 calls while b dies.
fn api_storm<'a>(c: &'a mut Ctx, kind: &'static str) -> CaseFut<'a> {
    Box::pin(async move {
        c.e.lab
            .inject(&burst(kind, None, 20))
            .await
            .map_err(|e| e.to_string())?;
        c.terminate("b").await?;
        c.wait_route("b", "a", Duration::from_secs(30)).await?;
        let done = wait_for(Duration::from_secs(15), "takeover complete", || async {
            c.log("a").contains("takeover complete").then_some(())
        })
        .await;
        c.check(done.is_ok(), "the takeover was never confirmed")
    })
}

fn imds_down_at_boot(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let inst = c.e.instance("b").await;
        c.e.lab
            .imds_fault(&inst.instance_id, "refuse", 0)
            .await
            .map_err(|e| e.to_string())?;
        c.start_on("b", inst.clone(), &[]);
        sleep_s(4.0).await;
        c.check(!c.running("b").agent.notify.ready(), "READY without IMDS")?;
        c.e.lab
            .imds_fault(&inst.instance_id, "ok", 0)
            .await
            .map_err(|e| e.to_string())?;
        c.ready("b").await?;
        c.alive("b");
        c.wait_route("b", "b", Duration::from_secs(5)).await
    })
}

/// IMDS answers `mode` for 6 s: nothing moves, nobody drains; afterwards a spot notice is
/// still seen and drained (the watch survived).
fn imds_bad_while_running<'a>(c: &'a mut Ctx, mode: &'static str) -> CaseFut<'a> {
    Box::pin(async move {
        let b = c.instance_id("b");
        c.e.lab
            .imds_fault(&b, mode, 0)
            .await
            .map_err(|e| e.to_string())?;
        sleep_s(6.0).await;
        c.check(c.moved().await == 0, "a route moved on bad IMDS answers")?;
        c.e.lab
            .imds_fault(&b, "ok", 0)
            .await
            .map_err(|e| e.to_string())?;
        c.spot_drain("b", "a").await
    })
}

fn imds_token_expiry(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let b = c.instance_id("b");
        for _ in 0..5 {
            c.e.lab
                .imds_expire_tokens(&b)
                .await
                .map_err(|e| e.to_string())?;
            sleep_s(1.0).await;
        }
        c.check(c.moved().await == 0, "a route moved")?;
        c.e.lab
            .imds_expire_tokens(&b)
            .await
            .map_err(|e| e.to_string())?;
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
            let old = c.e.old_holder("b").await;
            c.e.lab.stop(&old).await.map_err(|e| e.to_string())?;
        }
        c.wait_route("b", "a", Duration::from_secs(10)).await?;
        c.e.lab
            .inject(&Fault {
                action: Some("DescribeNetworkInterfaces".into()),
                kind: kind.into(),
                count: None,
                latency_ms: 0,
                status: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        let inst = c.e.instance("b").await;
        // Only the gateway under test gives up after 4 s: under the aws profile a healthy
        // attachment alone takes 2-5 s, and the case is about b's boot, not a's.
        let base = std::mem::replace(
            &mut c.extra,
            format!("{BASE}\n[boot]\nattach_timeout_s = 4"),
        );
        c.start_on("b", inst, &[]);
        c.extra = base;
        let r = c.running_mut("b");
        r.expect_exit = true;
        let exit = tokio::time::timeout(wait(), r.agent.child.wait()).await;
        let statuses = r.agent.notify.statuses().join(" | ");
        c.check(
            matches!(exit, Ok(Ok(s)) if s.code() != Some(0)),
            &format!("the boot did not give up: {exit:?}"),
        )?;
        c.check(
            statuses.contains("claim") && statuses.contains("ABANDONing"),
            &format!("STATUS does not name the step: {statuses}"),
        )?;
        c.e.lab.clear_faults().await.map_err(|e| e.to_string())?;
        c.note = "boot gave up at attach_timeout_s, ABANDON".into();
        Ok(())
    })
}

fn eni_on_terminated(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        c.dead("b");
        let old = c.e.old_holder("b").await;
        c.e.lab.terminate(&old).await.map_err(|e| e.to_string())?;
        c.wait_route("b", "a", Duration::from_secs(10)).await?;
        c.start("b").await;
        c.ready("b").await?;
        c.alive("b");
        c.wait_route("b", "b", Duration::from_secs(5)).await
    })
}

fn both_rebooted(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        let ids = [c.instance_id("a"), c.instance_id("b")];
        for z in ["a", "b"] {
            c.kill_agent(z).await;
            c.dead(z);
        }
        for id in &ids {
            c.e.lab.stop(id).await.map_err(|e| e.to_string())?;
        }
        sleep_s(1.0).await;
        for id in &ids {
            c.e.lab
                .start_instance(id)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut back = Vec::new();
        for id in &ids {
            let inst = wait_for(wait(), "the instance back", || async {
                c.e.lab
                    .instances()
                    .await
                    .ok()?
                    .into_iter()
                    .find(|i| &i.instance_id == id && i.state == "running" && i.ns.is_some())
            })
            .await
            .map_err(|e| e.to_string())?;
            back.push(inst);
        }
        for (z, inst) in ["a", "b"].into_iter().zip(back) {
            c.start_on(z, inst, &[]);
        }
        for z in ["a", "b"] {
            c.ready(z).await?;
            c.alive(z);
        }
        sleep_s(3.0).await;
        c.wait_route("a", "a", Duration::from_secs(1)).await?;
        c.wait_route("b", "b", Duration::from_secs(1)).await
    })
}

fn three_zones_two_fail(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        c.terminate("c").await?;
        // Ring a → b → c → a: c's successor is a.
        c.wait_route("c", "a", Duration::from_secs(10)).await?;
        sleep_s(2.0).await;
        c.check(
            !c.log("b").contains("takeover complete"),
            "b took c although a, its successor, is alive",
        )?;
        c.terminate("a").await?;
        c.wait_route("a", "b", Duration::from_secs(10)).await?;
        c.wait_route("c", "b", Duration::from_secs(10)).await
    })
}

/// The newest lease renewal time (unix ms) on `zone`'s main table.
async fn lease_ms(c: &Ctx, zone: &str) -> Option<i64> {
    let out =
        c.e.lab
            .ec2()
            .describe_route_tables()
            .route_table_ids(&c.e.sc.zone(zone).route_table_id)
            .send()
            .await
            .ok()?;
    let tag = out
        .route_tables()
        .first()?
        .tags()
        .iter()
        .find(|t| t.key() == Some(gateway_agent::decide::lease::LEASE_TAG))?;
    tag.value()?.rsplit('/').next()?.parse().ok()
}

fn clock_jumps(c: &mut Ctx) -> CaseFut<'_> {
    Box::pin(async move {
        // a runs with libfaketime: its wall clock jumps, its monotonic clock does not.
        let file = format!("{}/faketime-a", c.e.lab.info.run_dir);
        std::fs::write(&file, "+0\n").map_err(|e| e.to_string())?;
        let inst = c.e.instance("a").await;
        c.start_on(
            "a",
            inst,
            &[
                ("LD_PRELOAD", FAKETIME_LIB),
                ("FAKETIME_TIMESTAMP_FILE", &file),
                ("FAKETIME_NO_CACHE", "1"),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        );
        c.ready("a").await?;
        c.alive("a");
        sleep_s(2.0).await;
        // a's boot reclaimed its zone from b; only what follows counts.
        c.writes0 = c.route_writes().await;
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        };
        for (offset, sign) in [("+3600", 1i64), ("-7200", -1)] {
            std::fs::write(&file, format!("{offset}\n")).map_err(|e| e.to_string())?;
            sleep_s(4.0).await;
            let skew = lease_ms(c, "a").await.map(|ms| ms - now_ms());
            c.check(
                skew.is_some_and(|s| s * sign > 3_000_000),
                &format!("a's clock did not jump {offset} s (lease skew {skew:?} ms)"),
            )?;
        }
        c.check(c.moved().await == 0, "a clock jump moved a route")?;
        // A death is still handled while a's wall clock is two hours behind.
        c.terminate("b").await?;
        c.note = "wall clock +1 h, then -2 h".into();
        c.wait_route("b", "a", Duration::from_secs(10)).await
    })
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            max_writers: 2,
            ..Case::new("peer instance terminated, replaced", peer_terminated)
        },
        Case::new("peer instance stopped", peer_stopped),
        Case {
            black_ms: Some(LEASE_BUDGET_MS),
            max_writers: 2,
            ..Case::new("peer hung (SIGSTOP + drop), then back", peer_hung)
        },
        Case {
            max_loss: Some(0),
            max_writers: 0,
            max_writes: Some(0),
            ..Case::new("peer agent killed -9", agent_killed)
        },
        Case {
            tables: 7,
            black_ms: Some(9_000.0),
            ..Case::new("agent crash mid-takeover, restarted", crash_mid_takeover)
        },
        Case {
            max_loss: Some(0),
            max_writers: 0,
            max_writes: Some(0),
            ..Case::new("agent restart loop", restart_loop)
        },
        Case {
            max_loss: Some(0),
            max_writers: 0,
            max_writes: Some(0),
            ..Case::new("link cut between gateways", link_cut)
        },
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
    ]
}

// --- measuring ------------------------------------------------------------------------------

/// A stream's report, asked up to three times: one failed control call must not fail a row
/// whose traffic flowed (the error is kept for the row when all three fail).
async fn stream_read(lab: &Lab, stream: u64, stop: bool) -> Result<StreamReport, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let r = if stop {
            lab.stream_stop(stream).await
        } else {
            lab.stream_report(stream).await
        };
        match r {
            Ok(r) => return Ok(r),
            Err(e) => last = e.to_string(),
        }
        sleep_s(0.2).await;
    }
    Err(last)
}

/// Samples every managed route's data-plane state every 100 ms.
struct Monitor {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Black>,
}

#[derive(Default, Debug)]
struct Black {
    longest_ms: f64,
    worst: String,
    open: BTreeMap<String, Instant>,
}

impl Black {
    fn close(&mut self, key: &str, now: Instant) {
        if let Some(since) = self.open.remove(key) {
            let ms = now.duration_since(since).as_secs_f64() * 1000.0;
            if ms > self.longest_ms {
                self.longest_ms = ms;
                self.worst = key.to_owned();
            }
        }
    }
}

impl Monitor {
    fn start(
        info: gateway_lab::Info,
        tables: Vec<String>,
        dead: Arc<Mutex<HashSet<String>>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let lab = Lab::connect(info);
            let mut black = Black::default();
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                for t in &tables {
                    let Ok(routes) = lab.kernel_routes(t).await else {
                        continue;
                    };
                    for r in routes
                        .iter()
                        .filter(|r| r.eni.is_some() || r.kind == "blackhole")
                    {
                        let key = format!("{t} {}", r.destination);
                        let is_black = r.kind == "blackhole"
                            || r.eni
                                .as_ref()
                                .is_some_and(|e| dead.lock().unwrap().contains(e));
                        if is_black {
                            black.open.entry(key).or_insert(now);
                        } else {
                            black.close(&key, now);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let now = Instant::now();
            for key in black.open.keys().cloned().collect::<Vec<_>>() {
                black.close(&key, now);
                black.worst.push_str(" (still at the end)");
            }
            black
        });
        Self { stop, task }
    }

    async fn finish(self) -> Black {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

struct Row {
    case: &'static str,
    loss: String,
    black: String,
    writers: String,
    writes: usize,
    /// Agent processes started during the case: restarts, replacements' agents, late boots.
    starts: usize,
    result: Result<String, String>,
}

/// Writers per table and whether any writer came back after another wrote (a fight).
fn writers(
    changes: &[gateway_lab::RouteChange],
    tables: &BTreeSet<String>,
    names: &HashMap<String, String>,
) -> (usize, Option<String>) {
    let mut per: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ch in changes {
        let Some(t) = ch.table.as_deref().filter(|t| tables.contains(*t)) else {
            continue;
        };
        let src = ch.source.clone().unwrap_or_default();
        let who = names.get(&src).cloned().unwrap_or(src);
        let seq = per.entry(t).or_default();
        if seq.last() != Some(&who) {
            seq.push(who);
        }
    }
    let max = per
        .values()
        .map(|s| s.iter().collect::<BTreeSet<_>>().len())
        .max()
        .unwrap_or(0);
    let fight = per
        .iter()
        .find(|(_, s)| s.iter().collect::<BTreeSet<_>>().len() < s.len())
        .map(|(t, s)| format!("{t}: {}", s.join(" → ")));
    (max, fight)
}

async fn run_case(case: &Case) -> Row {
    let mut row = Row {
        case: case.name,
        loss: "-".into(),
        black: "-".into(),
        writers: "-".into(),
        writes: 0,
        starts: 0,
        result: Err(String::new()),
    };
    let e = env(ScenarioOptions {
        zones: case.zones.iter().map(|z| (*z).to_owned()).collect(),
        extra_tables: case.tables,
        ..ScenarioOptions::default()
    })
    .await;
    let tables: BTreeSet<String> =
        e.sc.zones
            .iter()
            .flat_map(|z| z.route_table_ids.iter().cloned())
            .collect();
    let mut c = Ctx::new(e, case.extra);
    for z in case.started {
        c.start(z).await;
    }
    for z in case.started {
        if let Err(e) = c.ready(z).await {
            row.result = Err(e);
            return row;
        }
    }
    // Zones without an agent yet are dead until one is READY.
    for z in case.zones.iter().filter(|z| !case.started.contains(z)) {
        c.dead(z);
    }
    // Probes up and /health answered everywhere.
    sleep_s(2.0).await;
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    c.writes0 = c.route_writes().await;
    let monitor = Monitor::start(
        c.e.lab.info.clone(),
        tables.iter().cloned().collect(),
        Arc::clone(&c.dead),
    );
    let stream = c.e.lab.stream_start(case.stream, 100).await.unwrap_or(0);
    sleep_s(0.5).await;

    // Under `aws` a replacement alone takes 30-90 s to launch.
    let limit = if gateway_lab::aws_profile() { 360 } else { 120 };
    let ran = match tokio::time::timeout(Duration::from_secs(limit), (case.run)(&mut c)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {limit} s\n{}", c.logs())),
    };

    // The zone's traffic flows at the end, whoever carries it.
    let before = stream_read(&c.e.lab, stream, false).await;
    sleep_s(1.0).await;
    let report = stream_read(&c.e.lab, stream, true).await;
    let black = monitor.finish().await;
    let changes = c.e.lab.route_changes().await.unwrap_or_default();
    let changes: Vec<_> = changes.into_iter().filter(|ch| ch.at >= t0).collect();
    let (max_writers, fight) = writers(&changes, &tables, &c.writers);
    row.writes = c.moved().await;
    row.starts = c.spawned - case.started.len();
    row.writers = max_writers.to_string();
    row.black = format!("{:.0} ms", black.longest_ms);
    if let Ok(r) = &report {
        row.loss = format!("{}/{} (gap {:.0} ms)", r.lost, r.sent, r.longest_gap_ms);
    }
    let mut errors = Vec::new();
    if let Err(e) = ran {
        errors.push(e);
    }
    match (&before, &report) {
        (Ok(b), Ok(r)) if r.delivered >= b.delivered + 50 => {}
        (b, r) => errors.push(format!(
            "zone {}'s stream does not flow at the end: {b:?} → {r:?}",
            case.stream
        )),
    }
    let report = report.ok();
    if let (Some(max), Some(r)) = (case.max_loss, report)
        && r.lost > max
    {
        errors.push(format!("lost {} packets (at most {max})", r.lost));
    }
    if let Some(budget) = case.black_ms
        && black.longest_ms > budget
    {
        errors.push(format!(
            "a route pointed at a black hole for {:.0} ms (budget {budget:.0}): {}",
            black.longest_ms, black.worst
        ));
    }
    if max_writers > case.max_writers {
        errors.push(format!(
            "{max_writers} writers on one table (at most {})",
            case.max_writers
        ));
    }
    if let Some(f) = fight {
        errors.push(format!("two writers took turns: {f}"));
    }
    if let Some(max) = case.max_writes
        && row.writes > max
    {
        errors.push(format!("{} route writes (at most {max})", row.writes));
    }
    for r in &mut c.agents {
        if !r.expect_exit
            && let Ok(Some(status)) = r.agent.child.try_wait()
        {
            errors.push(format!("{} exited unasked: {status}", r.name));
        }
    }
    row.result = if errors.is_empty() {
        Ok(c.note.clone())
    } else {
        if !errors.iter().any(|e| e.contains("--- agent-")) {
            errors.push(c.logs());
        }
        Err(errors.join("\n"))
    };
    row
}

fn print_table(rows: &[Row]) {
    let w = rows.iter().map(|r| r.case.len()).max().unwrap_or(4).max(4);
    let head = [
        "profile",
        "client loss (pkts)",
        "blackhole",
        "writers/table",
        "writes",
        "agent starts",
    ];
    println!();
    println!("| {:w$} | {} | result |", "case", head.join(" | "));
    let rule: Vec<String> = head
        .iter()
        .map(|h| format!("{}:", "-".repeat(h.len() + 1)))
        .collect();
    println!("|{}|{}|---|", "-".repeat(w + 2), rule.join("|"));
    for r in rows {
        let result = match &r.result {
            Ok(note) if note.is_empty() => "pass".to_owned(),
            Ok(note) => format!("pass ({note})"),
            Err(e) => format!("FAIL: {}", e.lines().next().unwrap_or("")),
        };
        println!(
            "| {:w$} | {:>7} | {:>18} | {:>9} | {:>13} | {:>6} | {:>12} | {result} |",
            r.case,
            gateway_lab::profile(),
            r.loss,
            r.black,
            r.writers,
            r.writes,
            r.starts
        );
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // `cargo test` lists tests with --list; this binary has one, the matrix.
    if args.iter().any(|a| a == "--list") {
        println!("fault_matrix: test");
        return std::process::ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(secs) = arg("--soak") {
        let secs: u64 = secs.parse().expect("--soak <seconds>");
        return rt.block_on(soak::run(secs));
    }
    let only = arg("--case");
    // The lab profile (GATEWAY_LAB_PROFILE) reaches every labd through the environment.
    eprintln!("matrix: lab profile {}", gateway_lab::profile());
    let mut rows = Vec::new();
    for case in cases() {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|o| case.name.contains(o)))
        {
            continue;
        }
        let started = Instant::now();
        let row = rt.block_on(async {
            let name = case.name;
            match tokio::spawn(async move { run_case(&case).await }).await {
                Ok(row) => row,
                Err(e) => Row {
                    case: name,
                    loss: "-".into(),
                    black: "-".into(),
                    writers: "-".into(),
                    writes: 0,
                    starts: 0,
                    result: Err(format!("panicked: {e}")),
                },
            }
        });
        eprintln!(
            "matrix: {} ({:.0} s): {}",
            row.case,
            started.elapsed().as_secs_f64(),
            if row.result.is_ok() { "pass" } else { "FAIL" }
        );
        if let Err(e) = &row.result {
            eprintln!("{e}");
        }
        rows.push(row);
    }
    print_table(&rows);
    let failed = rows.iter().filter(|r| r.result.is_err()).count();
    println!("\n{} cases, {failed} failed", rows.len());
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

mod soak {
    //! Random faults every few seconds for a bounded time, on two gateways at default probing
    //! (200 ms ICMP, /health every 500 ms, a lease renewal a second), with a client stream in
    //! each zone. Prints the loss, the route changes, every invariant violation, and each
    //! agent's RSS and CPU once a minute.

    use super::*;

    /// A fault the soak injects, then undoes `hold` later.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        KillAgent,
        Hang,
        LinkCut,
        UplinkCut,
        ApiCut,
        Throttle,
        ServerErrors,
        ImdsErrors,
        ImdsTokens,
        Terminate,
    }

    const FAULTS: [Fault; 10] = [
        Fault::KillAgent,
        Fault::Hang,
        Fault::LinkCut,
        Fault::UplinkCut,
        Fault::ApiCut,
        Fault::Throttle,
        Fault::ServerErrors,
        Fault::ImdsErrors,
        Fault::ImdsTokens,
        Fault::Terminate,
    ];

    /// How long a route may point at a black hole before it counts as a violation: the
    /// slowest confirmation (a hung peer's lease) with room for a loaded machine.
    const BLACK_LIMIT_MS: f64 = 8_000.0;
    /// More writes than this to one table within 10 s is two writers fighting.
    const FIGHT_WRITES: usize = 4;

    /// A tiny xorshift: the soak prints its seed so a run can be repeated.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// CPU ticks (user + system) and RSS (kB) of a process.
    fn proc_usage(pid: u32) -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some((ticks, rss))
    }

    #[derive(Default)]
    struct Usage {
        rss_max_kb: u64,
        cpu: Vec<f64>,
    }

    pub async fn run(secs: u64) -> std::process::ExitCode {
        let seed = std::env::var("SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        let mut rng = Rng(seed);
        println!(
            "soak: {secs} s, seed {seed}, agent {}",
            std::env::var("GATEWAY_AGENT_BIN").unwrap_or_else(|_| AGENT.to_owned())
        );
        let e = env(ScenarioOptions::default()).await;
        let tables: Vec<String> =
            e.sc.zones
                .iter()
                .flat_map(|z| z.route_table_ids.iter().cloned())
                .collect();
        let mut c = Ctx::new(
            e,
            &format!(
                "[self_check]\nicmp_targets = [\"{INTERNET_HOST}\"]\n[failover]\nhold_down_s = 5"
            ),
        );
        for z in ["a", "b"] {
            c.start(z).await;
        }
        for z in ["a", "b"] {
            if let Err(e) = c.ready(z).await {
                println!("soak: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        let monitor = Monitor::start(c.e.lab.info.clone(), tables.clone(), Arc::clone(&c.dead));
        let streams = [
            c.e.lab.stream_start("a", 100).await.unwrap_or(0),
            c.e.lab.stream_start("b", 100).await.unwrap_or(0),
        ];
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = Instant::now();
        let end = start + Duration::from_secs(secs);
        // The first minute without faults: the agents' cost at rest.
        let quiet_until = start + Duration::from_secs(60.min(secs / 4));
        let mut violations: Vec<String> = Vec::new();
        let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
        let mut last: HashMap<u32, (u64, Instant)> = HashMap::new();
        let mut next_sample = start;
        let mut next_fault = quiet_until;
        let mut injected: BTreeMap<String, usize> = BTreeMap::new();
        println!("soak:   t(s)  agent        RSS(MB)  CPU(% of a core)");
        while Instant::now() < end {
            if Instant::now() >= next_sample {
                sample(
                    &c,
                    &mut usage,
                    &mut last,
                    start,
                    Instant::now() < quiet_until,
                );
                next_sample += Duration::from_secs(10);
            }
            if Instant::now() >= next_fault && Instant::now() + Duration::from_secs(20) < end {
                let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
                let zone = if rng.below(2) == 0 { "a" } else { "b" };
                *injected.entry(format!("{fault:?}")).or_default() += 1;
                println!(
                    "soak: {:6.1} s  fault {fault:?} on {zone}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs_f64()
                        - t0
                );
                if let Err(e) = inject(&mut c, fault, zone).await {
                    violations.push(format!(
                        "{:.0} s {fault:?} {zone}: {e}",
                        start.elapsed().as_secs_f64()
                    ));
                }
                next_fault = Instant::now() + Duration::from_secs(3 + rng.below(5));
            }
            for r in &mut c.agents {
                if !r.expect_exit
                    && let Ok(Some(status)) = r.agent.child.try_wait()
                {
                    r.expect_exit = true;
                    violations.push(format!("{} exited unasked: {status}", r.name));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Let the last hold-down pass: each zone must end with its own gateway.
        sleep_s(12.0).await;
        for z in ["a", "b"] {
            if let Err(e) = c.wait_route(z, z, Duration::from_secs(20)).await {
                violations.push(e.lines().next().unwrap_or_default().to_owned());
            }
        }
        let mut lost = Vec::new();
        for (z, id) in ["a", "b"].iter().zip(streams) {
            if let Ok(r) = c.e.lab.stream_stop(id).await {
                lost.push(format!(
                    "zone {z}: {}/{} lost, longest gap {:.0} ms",
                    r.lost, r.sent, r.longest_gap_ms
                ));
            }
        }
        let black = monitor.finish().await;
        let changes: Vec<_> =
            c.e.lab
                .route_changes()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|ch| ch.at >= t0)
                .collect();
        if black.longest_ms > BLACK_LIMIT_MS {
            violations.push(format!(
                "a route pointed at a black hole for {:.0} ms: {}",
                black.longest_ms, black.worst
            ));
        }
        for t in &tables {
            let at: Vec<f64> = changes
                .iter()
                .filter(|ch| ch.table.as_deref() == Some(t.as_str()))
                .map(|ch| ch.at)
                .collect();
            for (i, first) in at.iter().enumerate() {
                let n = at[i..].iter().take_while(|t| **t - first < 10.0).count();
                if n > FIGHT_WRITES {
                    violations.push(format!("{n} writes to {t} within 10 s"));
                    break;
                }
            }
        }
        println!(
            "\nsoak: {:.0} s, faults injected: {injected:?}",
            start.elapsed().as_secs_f64()
        );
        for l in &lost {
            println!("soak: client loss {l}");
        }
        println!("soak: route changes {}", changes.len());
        let zone_of = |eni: &str| {
            c.e.sc
                .zones
                .iter()
                .find(|z| z.eni_id == eni)
                .map_or(eni.to_owned(), |z| z.name.clone())
        };
        for ch in &changes {
            let table = ch.table.as_deref().unwrap_or("?");
            let zone =
                c.e.sc
                    .zones
                    .iter()
                    .find(|z| z.route_table_ids.iter().any(|t| t == table));
            let src = ch.source.clone().unwrap_or_default();
            println!(
                "soak:   {:6.1} s  zone {}'s table via {} (written by {})",
                ch.at - t0,
                zone.map_or("?", |z| z.name.as_str()),
                zone_of(ch.target.as_deref().unwrap_or("?")),
                c.writers.get(&src).cloned().unwrap_or(src)
            );
        }
        println!(
            "soak: longest blackhole {:.0} ms ({})",
            black.longest_ms, black.worst
        );
        for (name, u) in &usage {
            let mean = u.cpu.iter().sum::<f64>() / u.cpu.len().max(1) as f64;
            let max = u.cpu.iter().copied().fold(0.0, f64::max);
            println!(
                "soak: {name}: RSS max {:.1} MB, CPU mean {mean:.2} % max {max:.2} % of a core",
                u.rss_max_kb as f64 / 1024.0
            );
        }
        println!("soak: invariant violations {}", violations.len());
        for v in &violations {
            println!("soak:   {v}");
        }
        if violations.is_empty() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    }

    fn sample(
        c: &Ctx,
        usage: &mut BTreeMap<String, Usage>,
        last: &mut HashMap<u32, (u64, Instant)>,
        start: Instant,
        quiet: bool,
    ) {
        for r in c.agents.iter().filter(|r| !r.expect_exit) {
            let Some(pid) = r.agent.child.id() else {
                continue;
            };
            let Some((ticks, rss)) = proc_usage(pid) else {
                continue;
            };
            let now = Instant::now();
            let name = if quiet {
                format!("{} (at rest)", r.name)
            } else {
                r.name.clone()
            };
            let u = usage.entry(name.clone()).or_default();
            u.rss_max_kb = u.rss_max_kb.max(rss);
            if let Some((t0, at)) = last.insert(pid, (ticks, now)) {
                let secs = now.duration_since(at).as_secs_f64();
                let cpu = (ticks - t0) as f64 / 100.0 / secs * 100.0;
                u.cpu.push(cpu);
                println!(
                    "soak: {:6.0}  {name:12} {:7.1}  {cpu:6.2}",
                    now.duration_since(start).as_secs_f64(),
                    rss as f64 / 1024.0
                );
            }
        }
    }

    /// Applies `fault` to `zone` and undoes it after a few seconds; an error is a violation.
    async fn inject(c: &mut Ctx, fault: Fault, zone: &str) -> Result<(), String> {
        let err = |e: gateway_lab::LabError| e.to_string();
        let inst = c.instance_id(zone);
        let primary = c.primary(zone);
        match fault {
            Fault::KillAgent => {
                c.kill_agent(zone).await;
                sleep_s(2.0).await; // systemd's RestartSec=2s
                let i = c.running(zone).inst.clone();
                c.start_on(zone, i, &[]);
                c.ready(zone)
                    .await
                    .map_err(|e| e.lines().next().unwrap_or_default().to_owned())?;
            }
            Fault::Hang => {
                c.dead(zone);
                c.e.lab.hang(&inst).await.map_err(err)?;
                sleep_s(6.0).await;
                c.e.lab.unhang(&inst).await.map_err(err)?;
                c.alive(zone);
            }
            Fault::LinkCut => {
                let (a, b) = (
                    c.e.sc.zone("a").eni_ip.clone(),
                    c.e.sc.zone("b").eni_ip.clone(),
                );
                c.e.lab.partition(&a, &b).await.map_err(err)?;
                sleep_s(5.0).await;
                c.e.lab.heal(&a, &b).await.map_err(err)?;
            }
            Fault::UplinkCut => {
                c.dead(zone);
                c.e.lab
                    .partition(&primary, INTERNET_HOST)
                    .await
                    .map_err(err)?;
                sleep_s(5.0).await;
                c.e.lab.heal(&primary, INTERNET_HOST).await.map_err(err)?;
                c.alive(zone);
            }
            Fault::ApiCut => {
                c.e.lab.partition(&primary, API_ADDR).await.map_err(err)?;
                sleep_s(5.0).await;
                c.e.lab.heal(&primary, API_ADDR).await.map_err(err)?;
            }
            Fault::Throttle => {
                c.e.lab
                    .inject(&burst("throttle", None, 10))
                    .await
                    .map_err(err)?
            }
            Fault::ServerErrors => c.e.lab.inject(&burst("5xx", None, 10)).await.map_err(err)?,
            Fault::ImdsErrors => {
                c.e.lab.imds_fault(&inst, "500", 0).await.map_err(err)?;
                sleep_s(5.0).await;
                c.e.lab.imds_fault(&inst, "ok", 0).await.map_err(err)?;
            }
            Fault::ImdsTokens => c.e.lab.imds_expire_tokens(&inst).await.map_err(err)?,
            Fault::Terminate => {
                c.dead(zone);
                c.running_mut(zone).expect_exit = true;
                c.e.lab.terminate(&inst).await.map_err(err)?;
                let new = c.replacement(zone, &inst).await?;
                c.start_on(zone, new, &[]);
                c.ready(zone)
                    .await
                    .map_err(|e| e.lines().next().unwrap_or_default().to_owned())?;
                c.alive(zone);
            }
        }
        Ok(())
    }
}
