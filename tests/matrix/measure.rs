//! What the matrix (and the soak) measure beside the cases: the longest black hole any managed
//! route fell into, who wrote each route table, a stream's report.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gateway_lab::{RouteChange, StreamReport};

use crate::support::*;

/// ENIs whose gateway a case made dead (killed, hung, cut off): a route to one is a black hole.
#[derive(Clone, Default)]
pub struct Dead(Arc<Mutex<HashSet<String>>>);

impl Dead {
    pub fn insert(&self, eni: String) {
        self.0.lock().unwrap().insert(eni);
    }

    pub fn remove(&self, eni: &str) {
        self.0.lock().unwrap().remove(eni);
    }

    fn contains(&self, eni: &str) -> bool {
        self.0.lock().unwrap().contains(eni)
    }
}

/// A stream's report, asked up to three times: one failed control call must not fail a row
/// whose traffic flowed (the error is kept for the row when all three fail).
pub async fn stream_read(lab: &Lab, stream: u64, stop: bool) -> Result<StreamReport, String> {
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
pub struct Monitor {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Black>,
}

/// The longest black hole: how long, and which route (`<table> <destination>`).
#[derive(Default, Debug)]
pub struct Black {
    pub longest_ms: f64,
    pub worst: String,
    /// When the worst one ended, wall-clock seconds (to set beside the route write that ended
    /// it: the rest is the VPC router's delay in applying it).
    pub worst_ended: f64,
    open: BTreeMap<String, Instant>,
}

impl Black {
    fn close(&mut self, key: &str, now: Instant) {
        if let Some(since) = self.open.remove(key) {
            let ms = now.duration_since(since).as_secs_f64() * 1000.0;
            if ms > self.longest_ms {
                self.longest_ms = ms;
                self.worst = key.to_owned();
                self.worst_ended = gateway_lab::fleet::unix_now();
            }
        }
    }
}

impl Monitor {
    pub fn start(info: gateway_lab::Info, tables: Vec<String>, dead: Dead) -> Self {
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
                            || r.eni.as_ref().is_some_and(|e| dead.contains(e));
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

    pub async fn finish(self) -> Black {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// Every gateway's name as a writer, by its primary address: one name per instance (a restart
/// keeps it), the zone's, then a' for its replacement, a''...
pub fn writer_names(f: &Fleet) -> HashMap<String, String> {
    let mut names: HashMap<String, String> = HashMap::new();
    for g in &f.gateways {
        if let Some(ip) = &g.inst.private_ip
            && !names.contains_key(ip)
        {
            let before = names.values().filter(|w| w.starts_with(&g.zone)).count();
            names.insert(ip.clone(), format!("{}{}", g.zone, "'".repeat(before)));
        }
    }
    names
}

/// How long before `black` ended the route write that ended it landed at the API: the VPC
/// router's share of the black hole (the `aws` profile's data-plane lag), if a write did.
pub fn router_share(black: &Black, changes: &[RouteChange]) -> Option<f64> {
    let (table, dest) = black.worst.split_once(' ')?;
    let dest = dest.split(' ').next()?;
    changes
        .iter()
        .filter(|c| c.table.as_deref() == Some(table) && c.destination.as_deref() == Some(dest))
        .filter(|c| c.at <= black.worst_ended)
        .map(|c| black.worst_ended - c.at)
        .reduce(f64::min)
}

/// Writers per table and whether any writer came back after another wrote (a fight).
pub fn writers(
    changes: &[RouteChange],
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
