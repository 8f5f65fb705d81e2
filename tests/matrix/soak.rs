//! The soak (`-- --soak <seconds>`, `make soak`): random faults every few seconds for a
//! bounded time, on two gateways at default probing (200 ms ICMP, /health every 500 ms, a lease
//! renewal a second), with a client stream in each zone. Prints the loss, the route changes,
//! every invariant violation, and each agent's RSS and CPU once a minute.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use gateway_lab::fleet::unix_now;

use crate::cases::{API_ADDR, Ctx};
use crate::measure::{Monitor, writer_names};
use crate::support::*;

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
    println!("soak: {secs} s, seed {seed}, agent {}", agent_bin());
    let mut f = fleet(ScenarioOptions::default()).await;
    f.extra =
        format!("[self_check]\nicmp_targets = [\"{INTERNET_HOST}\"]\n[failover]\nhold_down_s = 5");
    let tables = f.route_tables();
    let mut c = Ctx::new(f);
    if let Err(e) = c.f.start_all(&["a", "b"]).await {
        println!("soak: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let monitor = Monitor::start(c.f.lab.info.clone(), tables.clone(), c.dead.clone());
    let streams = [
        c.f.lab.stream_start("a", 100).await.unwrap_or(0),
        c.f.lab.stream_start("b", 100).await.unwrap_or(0),
    ];
    let t0 = unix_now();
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
            println!("soak: {:6.1} s  fault {fault:?} on {zone}", unix_now() - t0);
            if let Err(e) = inject(&mut c, fault, zone).await {
                violations.push(format!(
                    "{:.0} s {fault:?} {zone}: {e}",
                    start.elapsed().as_secs_f64()
                ));
            }
            next_fault = Instant::now() + Duration::from_secs(3 + rng.below(5));
        }
        violations.extend(c.f.unasked_exits());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last hold-down pass: each zone must end with its own gateway.
    sleep_s(12.0).await;
    for z in ["a", "b"] {
        if let Err(e) = c.f.wait_kernel_route(z, z, Duration::from_secs(20)).await {
            violations.push(first_line(e));
        }
    }
    let mut lost = Vec::new();
    for (z, id) in ["a", "b"].iter().zip(streams) {
        if let Ok(r) = c.f.lab.stream_stop(id).await {
            lost.push(format!(
                "zone {z}: {}/{} lost, longest gap {:.0} ms",
                r.lost, r.sent, r.longest_gap_ms
            ));
        }
    }
    let black = monitor.finish().await;
    let changes: Vec<_> =
        c.f.lab
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
    let writers = writer_names(&c.f);
    let zone_of = |eni: &str| {
        c.f.sc
            .zones
            .iter()
            .find(|z| z.eni_id == eni)
            .map_or(eni.to_owned(), |z| z.name.clone())
    };
    for ch in &changes {
        let table = ch.table.as_deref().unwrap_or("?");
        let zone =
            c.f.sc
                .zones
                .iter()
                .find(|z| z.route_table_ids.iter().any(|t| t == table));
        let src = ch.source.clone().unwrap_or_default();
        println!(
            "soak:   {:6.1} s  zone {}'s table via {} (written by {})",
            ch.at - t0,
            zone.map_or("?", |z| z.name.as_str()),
            zone_of(ch.target.as_deref().unwrap_or("?")),
            writers.get(&src).cloned().unwrap_or(src)
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
    for g in c.f.gateways.iter().filter(|g| !g.expect_exit) {
        let pid = g.agent.pid();
        let Some((ticks, rss)) = proc_usage(pid) else {
            continue;
        };
        let now = Instant::now();
        let name = if quiet {
            format!("{} (at rest)", g.agent.name)
        } else {
            g.agent.name.clone()
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

/// A failure's first line: a violation, without the logs.
fn first_line(e: Failure) -> String {
    e.0.lines().next().unwrap_or_default().to_owned()
}

/// Applies `fault` to `zone` and undoes it after a few seconds; an error is a violation.
async fn inject(c: &mut Ctx, fault: Fault, zone: &str) -> Result<(), String> {
    let err = |e: gateway_lab::LabError| e.to_string();
    let inst = c.f.instance_id(zone);
    let primary = c.f.primary(zone);
    match fault {
        Fault::KillAgent => {
            c.f.kill_agent(zone).await;
            sleep_s(2.0).await; // systemd's RestartSec=2s
            let i = c.f.gateway(zone).inst.clone();
            c.f.spawn(zone, i, Spec::new()).map_err(first_line)?;
            c.f.ready(zone).await.map_err(first_line)?;
        }
        Fault::Hang => {
            c.dead(zone);
            c.f.lab.hang(&inst).await.map_err(err)?;
            sleep_s(6.0).await;
            c.f.lab.unhang(&inst).await.map_err(err)?;
            c.alive(zone);
        }
        Fault::LinkCut => {
            let (a, b) = (c.f.zone("a").eni_ip.clone(), c.f.zone("b").eni_ip.clone());
            c.f.lab.partition(&a, &b).await.map_err(err)?;
            sleep_s(5.0).await;
            c.f.lab.heal(&a, &b).await.map_err(err)?;
        }
        Fault::UplinkCut => {
            c.dead(zone);
            c.f.lab
                .partition(&primary, INTERNET_HOST)
                .await
                .map_err(err)?;
            sleep_s(5.0).await;
            c.f.lab.heal(&primary, INTERNET_HOST).await.map_err(err)?;
            c.alive(zone);
        }
        Fault::ApiCut => {
            c.f.lab.partition(&primary, API_ADDR).await.map_err(err)?;
            sleep_s(5.0).await;
            c.f.lab.heal(&primary, API_ADDR).await.map_err(err)?;
        }
        Fault::Throttle => {
            c.f.lab
                .inject(&gateway_lab::Fault::burst("throttle", None, Some(10)))
                .await
                .map_err(err)?
        }
        Fault::ServerErrors => {
            c.f.lab
                .inject(&gateway_lab::Fault::burst("5xx", None, Some(10)))
                .await
                .map_err(err)?
        }
        Fault::ImdsErrors => {
            c.f.lab.imds_fault(&inst, "500", 0).await.map_err(err)?;
            sleep_s(5.0).await;
            c.f.lab.imds_fault(&inst, "ok", 0).await.map_err(err)?;
        }
        Fault::ImdsTokens => c.f.lab.imds_expire_tokens(&inst).await.map_err(err)?,
        Fault::Terminate => {
            c.terminate(zone).await.map_err(first_line)?;
            c.f.start_replacement(zone, &inst, wait())
                .await
                .map_err(first_line)?;
            c.alive(zone);
        }
    }
    Ok(())
}
