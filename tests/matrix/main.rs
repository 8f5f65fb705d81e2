//! The fault matrix (as root): every fault a cloud throws at the gateways, one fresh lab per
//! case, each with what a user would measure:
//! - client loss: packets of the zone's 100 packets/s client stream lost, and the longest gap;
//! - blackhole: the longest time any managed route pointed at a black hole, as the VPC router's
//!   kernel has it (a detached ENI) or at the ENI of a gateway the case killed, hung or cut off;
//! - writers: the most gateways that wrote one route table (from the API's own record of who
//!   sent each ReplaceRoute), and the route writes in all.
//!
//! Each case asserts the invariants of docs/design.md: a route leaves a dead gateway within detection
//! plus the API call while a healthy one exists (the case's blackhole budget); one writer per
//! zone, never a writer coming back after another (a fight); a restart changes nothing; bad
//! input gets an error and half-done work is finished. At the end of every case the zone's
//! stream must flow again and no agent may have died unasked. The table is printed at the end;
//! a failed row fails the run.
//!
//! `cargo test --test matrix` (part of `make test`); `-- --case <text>[,<text>]` runs the cases
//! whose name contains one of them. `-- --soak <seconds>` runs the soak instead (`make soak`):
//! random faults every few seconds, with the agents' RSS and CPU sampled along the way.
//!
//! This file is the runner (arguments, selection, a case's measurement and checks, the table);
//! cases.rs holds the cases, measure.rs the black-hole monitor and the writers, soak.rs the soak.

#[path = "../support/mod.rs"]
mod support;

mod cases;
mod measure;
mod soak;

use std::collections::BTreeSet;
use std::time::Instant;

use gateway_lab::fleet::unix_now;
use gateway_lab::report::{Align, Table};

use cases::{Case, Ctx, cases};
use measure::{Monitor, router_share, stream_read, writer_names, writers};
use support::*;

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

impl Row {
    /// A row with no figures yet, failed with `error`.
    fn failed(case: &'static str, error: String) -> Row {
        Row {
            case,
            loss: "-".into(),
            black: "-".into(),
            writers: "-".into(),
            writes: 0,
            starts: 0,
            result: Err(error),
        }
    }
}

async fn run_case(case: &Case) -> Row {
    let mut row = Row::failed(case.name, String::new());
    let mut f = fleet_with_env(
        case.env,
        ScenarioOptions {
            extra_tables: case.tables,
            ..zones(case.zones)
        },
    )
    .await;
    f.extra = case.extra.to_owned();
    let tables: BTreeSet<String> = f.route_tables().into_iter().collect();
    let mut c = Ctx::new(f);
    if let Err(e) = c.f.start_all(case.started).await {
        row.result = Err(e.0);
        return row;
    }
    // Zones without an agent yet are dead until one is READY.
    for z in case.zones.iter().filter(|z| !case.started.contains(z)) {
        c.dead(z);
    }
    if case.settle {
        for z in case.started {
            if let Err(e) = c.f.wait_kernel_route(z, z, secs(60)).await {
                row.result = Err(format!(
                    "zone {z} never settled on its own gateway: {}",
                    e.0
                ));
                return row;
            }
        }
        sleep_s(3.0).await;
    }
    // Probes up and /health answered everywhere.
    sleep_s(2.0).await;
    let t0 = unix_now();
    c.writes0 = match c.f.route_writes().await {
        Ok(n) => n,
        Err(e) => {
            row.result = Err(e.0);
            return row;
        }
    };
    let monitor = Monitor::start(
        c.f.lab.info.clone(),
        tables.iter().cloned().collect(),
        c.dead.clone(),
    );
    let stream = c.f.lab.stream_start(case.stream, 100).await.unwrap_or(0);
    sleep_s(0.5).await;

    // Under `aws` a replacement alone takes 30-90 s to launch.
    let mut limit = Duration::from_secs(if gateway_lab::aws_profile() { 360 } else { 120 });
    if case.long {
        limit += cases::long_watch();
    }
    let ran = match tokio::time::timeout(limit, (case.run)(&mut c)).await {
        Ok(r) => r.map_err(|e| e.0),
        Err(_) => Err(format!("timed out after {limit:?}\n{}", c.f.logs())),
    };

    // The zone's traffic flows at the end, whoever carries it.
    let before = stream_read(&c.f.lab, stream, false).await;
    sleep_s(1.0).await;
    let report = stream_read(&c.f.lab, stream, true).await;
    let black = monitor.finish().await;
    let changes = c.f.lab.route_changes().await.unwrap_or_default();
    let changes: Vec<_> = changes.into_iter().filter(|ch| ch.at >= t0).collect();
    let (max_writers, fight) = writers(&changes, &tables, &writer_names(&c.f));
    let mut errors = Vec::new();
    match c.moved().await {
        Ok(n) => row.writes = n,
        Err(e) => errors.push(format!("route writes unknown: {e}")),
    }
    row.starts = c.f.gateways.len() - case.started.len();
    row.writers = max_writers.to_string();
    row.black = format!("{:.0} ms", black.longest_ms);
    if let Ok(r) = &report {
        row.loss = format!("{}/{} (gap {:.0} ms)", r.lost, r.sent, r.longest_gap_ms);
    }
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
        let router = router_share(&black, &changes).map_or(String::new(), |s| {
            format!(
                " (the route write landed {:.0} ms before the router applied it)",
                s * 1000.0
            )
        });
        errors.push(format!(
            "a route pointed at a black hole for {:.0} ms (budget {budget:.0}): {}{router}",
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
        let names = writer_names(&c.f);
        let list: Vec<String> = changes
            .iter()
            .map(|ch| {
                let src = ch.source.clone().unwrap_or_default();
                format!(
                    "+{:.3}s {} {} {} -> {} by {}",
                    ch.at - t0,
                    ch.action,
                    ch.table.as_deref().unwrap_or("?"),
                    ch.destination.as_deref().unwrap_or("?"),
                    ch.target.as_deref().unwrap_or("?"),
                    names.get(&src).cloned().unwrap_or(src),
                )
            })
            .collect();
        errors.push(format!(
            "{} route writes (at most {max}): {}",
            row.writes,
            list.join("; ")
        ));
    }
    errors.extend(c.f.unasked_exits());
    row.result = if errors.is_empty() {
        c.f.show_logs();
        Ok(c.note.clone())
    } else {
        if !errors.iter().any(|e| e.contains("--- agent-")) {
            errors.push(c.f.logs());
        }
        Err(errors.join("\n"))
    };
    row
}

fn print_table(rows: &[Row]) {
    let right = |head: &'static str| (head, Align::Right, 0);
    let mut table = Table::new(&[
        ("case", Align::Left, 0),
        right("profile"),
        right("client loss (pkts)"),
        right("blackhole"),
        right("writers/table"),
        right("writes"),
        right("agent starts"),
        ("result", Align::Left, 0),
    ]);
    for r in rows {
        let result = match &r.result {
            Ok(note) if note.is_empty() => "pass".to_owned(),
            Ok(note) => format!("pass ({note})"),
            Err(e) => format!("FAIL: {}", e.lines().next().unwrap_or("")),
        };
        table.row(vec![
            r.case.to_owned(),
            gateway_lab::profile(),
            r.loss.clone(),
            r.black.clone(),
            r.writers.clone(),
            r.writes.to_string(),
            r.starts.to_string(),
            result,
        ]);
    }
    println!();
    println!("{}", table.markdown());
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
                Err(e) => Row::failed(name, format!("panicked: {e}")),
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
