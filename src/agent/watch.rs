//! The run loop's failover half: observe peers, route tables and leases; ask
//! [`crate::decide::failover`]; execute its decisions; renew this gateway's leases.
//!
//! Observation is split so the slow parts never delay the fast ones:
//! - one ICMP task and one `/health` task per peer update a shared view and send an event the
//!   moment a peer's rise/fall state changes, which starts a cycle at once (no waiting for the
//!   next tick);
//! - one task keeps the own self-check (ICMP targets, systemd units) current with rise/fall;
//! - a cycle (every `failover.lease_renew_ms`, or on an event) renews the leases this gateway
//!   holds, reads every route table of the group and, for peers that fell silent, asks the API
//!   whether they are gone, all concurrently; then it decides and writes.
//!
//! A write re-reads its tables first and skips any route that no longer points where the
//! decision expected, then confirms by reading again. Failures are not remembered as work to
//! redo: the next cycle (soon, with backoff) decides again from fresh facts, so a partial
//! takeover is finished and a stale one is dropped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};
use tracing::{debug, error, info, warn};

use crate::agent::boot::{table_fact, unix_ms};
use crate::agent::conditional::RuleWatch;
use crate::cloud::{
    AttachmentStatus, Autoscaling, CloudError, Ec2, InstanceState, RouteState, RouteTable,
    RouteTarget,
};
use crate::config::{Config, GROUP_TAG, ZONE_TAG};
use crate::control::Command;
use crate::decide::failover::{
    self, Decision, Expect, Facts, Gateway, Kind, Me, Policy, Probe, SelfReport,
};
use crate::decide::lease::{self, LEASE_TAG, Lease};
use crate::health::{self, Report};
use crate::probe::{self, Icmp, RiseFall};
use crate::{hook, metrics};

/// How often a peer's `/health` is asked. Its answer only matters with ICMP (eligibility of a
/// successor, a dying peer's last word), so a slower pace than ICMP is enough.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
const HEALTH_TIMEOUT: Duration = Duration::from_millis(400);
/// A `/health` answer older than this no longer describes the peer.
const REPORT_FRESH: Duration = Duration::from_secs(2);
/// systemd units are asked less often than ICMP targets: each check spawns systemctl.
const UNIT_CHECK_EVERY: Duration = Duration::from_secs(2);
/// After a failed or unconfirmed write, the next cycle comes this soon (doubling per failure,
/// up to the lease period), not a whole period later.
const RETRY_SOON: Duration = Duration::from_millis(100);
/// Peers (the group's ENIs) are looked up again this often, in case one was added.
const REDISCOVER_EVERY: Duration = Duration::from_secs(300);
/// A failing API is reported once a minute, not every cycle.
const API_LOG_EVERY: Duration = Duration::from_secs(60);
/// A peer that keeps failing probes is logged once per this, beyond its transitions.
const PROBE_LOG_EVERY: Duration = Duration::from_secs(30);

/// Why the loop woke up.
#[derive(Debug, Clone)]
pub enum Event {
    Peer {
        zone: String,
        state: Probe,
    },
    Own {
        healthy: bool,
    },
    /// A conditional route's probe target changed state.
    Target {
        rule: String,
        state: Probe,
    },
}

/// One peer gateway as the probes see it.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub zone: String,
    pub eni: String,
    pub ip: Ipv4Addr,
    pub icmp: Probe,
    /// When the first probe of the current run of losses was sent.
    pub losing_since: Option<Instant>,
    pub last_rtt: Option<Duration>,
    pub report: Option<(Report, Instant)>,
}

#[derive(Debug, Clone)]
pub struct OwnHealth {
    pub healthy: bool,
    pub since: Instant,
    pub detail: String,
}

type Peers = Arc<Mutex<BTreeMap<String, PeerView>>>;

/// This gateway, as the loop needs it.
pub struct Own {
    pub instance_id: String,
    pub zone: String,
    pub eni: String,
    pub ip: Ipv4Addr,
}

pub struct Watch<'a, E, A> {
    config: Arc<Config>,
    ec2: &'a E,
    asg: &'a A,
    own: Own,
    peers: Peers,
    own_health: Arc<Mutex<OwnHealth>>,
    events_tx: mpsc::Sender<Event>,
    tasks: BTreeMap<String, Vec<JoinHandle<()>>>,
    own_task: Option<JoinHandle<()>>,
    discovered_at: Option<Instant>,
    report: watch::Sender<Report>,
    /// Zone → (lease tags of its tables, when that value was first seen).
    leases: BTreeMap<String, (String, Instant)>,
    /// Zone → (carrier: the ENI its routes point at, or "blackhole", since when).
    carriers: BTreeMap<String, (String, Instant)>,
    /// Zone → when its carrier changed, within the damping window.
    changes: BTreeMap<String, Vec<Instant>>,
    /// Zone → the epoch this gateway claimed it with.
    epochs: BTreeMap<String, u64>,
    /// Zone → the last wait reason logged, so a wait is logged when it changes, not each cycle.
    waits: BTreeMap<String, String>,
    /// Peer zone → what the API said about its gateway, and when it was asked.
    gone: BTreeMap<String, (Option<String>, Instant)>,
    /// Zones given up to a newer claim (logged once).
    let_go: BTreeMap<String, u64>,
    last_api_error: Option<Instant>,
    failures: u32,
    tables: Vec<RouteTable>,
    /// `gateway-agent failback` asked for the own zone back in the cycle under way.
    failback_requested: bool,
    rules: Vec<RuleWatch>,
    /// Zone → when the decision under way was first made (until its writes are confirmed).
    deciding: BTreeMap<String, Instant>,
    /// A planned exit is under way: hand everything over, take nothing.
    draining: bool,
    /// SetInstanceHealth Unhealthy was sent (`drain.set_unhealthy`).
    reported_unhealthy: bool,
    /// The ASG lifecycle state IMDS last gave (kept current by the planned-exit watcher).
    lifecycle: super::exit::LifecycleState,
    /// `gateway-agent pause`: decide, log, write nothing.
    paused: bool,
    /// Decisions skipped while paused, logged once each.
    paused_logged: std::collections::BTreeSet<String>,
    /// The last decisions and how they ended, newest last (for `gateway-agent status`).
    history: std::collections::VecDeque<DecisionRecord>,
}

/// One decision as `gateway-agent status` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DecisionRecord {
    pub at_unix_ms: u64,
    pub zone: String,
    pub kind: String,
    pub target: String,
    pub evidence: String,
    pub result: String,
    pub routes: usize,
}

/// How many decisions `status` keeps.
const HISTORY: usize = 20;

impl<'a, E: Ec2 + Sync, A: Autoscaling + Sync> Watch<'a, E, A> {
    pub fn new(
        config: Arc<Config>,
        ec2: &'a E,
        asg: &'a A,
        own: Own,
        claimed_epoch: Option<u64>,
    ) -> (Self, mpsc::Receiver<Event>, watch::Receiver<Report>) {
        let (events_tx, events_rx) = mpsc::channel(64);
        let (report, report_rx) = watch::channel(Report {
            instance_id: own.instance_id.clone(),
            zone: own.zone.clone(),
            eni: own.eni.clone(),
            healthy: true,
            draining: false,
            role: "active".into(),
            carries: vec![own.zone.clone()],
            version: env!("CARGO_PKG_VERSION").to_owned(),
        });
        let mut epochs = BTreeMap::new();
        if let Some(epoch) = claimed_epoch {
            epochs.insert(own.zone.clone(), epoch);
        }
        let watch = Self {
            config,
            ec2,
            asg,
            own,
            peers: Arc::default(),
            own_health: Arc::new(Mutex::new(OwnHealth {
                healthy: true,
                since: Instant::now(),
                detail: "passed at boot".into(),
            })),
            events_tx,
            tasks: BTreeMap::new(),
            own_task: None,
            discovered_at: None,
            report,
            leases: BTreeMap::new(),
            carriers: BTreeMap::new(),
            changes: BTreeMap::new(),
            epochs,
            waits: BTreeMap::new(),
            gone: BTreeMap::new(),
            let_go: BTreeMap::new(),
            last_api_error: None,
            failures: 0,
            tables: Vec::new(),
            failback_requested: false,
            rules: Vec::new(),
            deciding: BTreeMap::new(),
            draining: false,
            reported_unhealthy: false,
            lifecycle: std::sync::Arc::default(),
            paused: false,
            paused_logged: std::collections::BTreeSet::new(),
            history: std::collections::VecDeque::new(),
        };
        (watch, events_rx, report_rx)
    }

    /// Starts the own self-check task. The boot self-check passed, so the gateway starts
    /// healthy and must fail `fall` rounds to become unhealthy.
    pub fn start_own_health(&mut self) -> Result<(), probe::Error> {
        let sc = &self.config.self_check;
        let targets = sc.targets();
        let units = sc.units.clone();
        if targets.is_empty() && units.is_empty() {
            return Ok(());
        }
        let icmp = Icmp::new()?;
        let f = &self.config.failover;
        let (period, timeout) = (f.probe_interval(), sc.timeout());
        let mut rf = RiseFall::new(f.rise, f.fall);
        // Seed "up": boot's self-check just passed.
        for _ in 0..f.rise {
            rf.record(true);
        }
        let state = Arc::clone(&self.own_health);
        let tx = self.events_tx.clone();
        self.own_task = Some(tokio::spawn(async move {
            let mut ticker = interval(period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut units_ok = (true, String::new());
            let mut units_at: Option<Instant> = None;
            let mut seq: u16 = 0;
            loop {
                ticker.tick().await;
                seq = seq.wrapping_add(1);
                let echoes = targets.iter().map(|t| {
                    let icmp = &icmp;
                    async move { (*t, icmp.echo(*t, probe::rand_ident(*t), seq, timeout).await) }
                });
                let results = futures::future::join_all(echoes).await;
                if units_at.is_none_or(|at| at.elapsed() >= UNIT_CHECK_EVERY) {
                    let verdicts =
                        futures::future::join_all(units.iter().map(|u| probe::unit_active(u)))
                            .await;
                    let failed: Vec<String> = verdicts
                        .iter()
                        .filter(|v| !v.ok)
                        .map(ToString::to_string)
                        .collect();
                    units_ok = (failed.is_empty(), failed.join("; "));
                    units_at = Some(Instant::now());
                }
                let failed: Vec<String> = results
                    .iter()
                    .filter_map(|(t, r)| r.as_ref().err().map(|e| format!("icmp {t}: {e}")))
                    .collect();
                let ok = failed.is_empty() && units_ok.0;
                let changed = rf.record(ok);
                let mut detail = failed.join("; ");
                if !units_ok.0 {
                    if !detail.is_empty() {
                        detail.push_str("; ");
                    }
                    detail.push_str(&units_ok.1);
                }
                if let Some(now_state) = changed {
                    let healthy = now_state == Probe::Up;
                    metrics::set(
                        "gateway_agent_self_check_healthy",
                        &[],
                        if healthy { 1.0 } else { 0.0 },
                    );
                    {
                        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                        s.healthy = healthy;
                        s.since = Instant::now();
                        s.detail = if healthy {
                            "self-check passing".into()
                        } else {
                            detail.clone()
                        };
                    }
                    if healthy {
                        info!("own self-check passing again");
                    } else {
                        warn!(failed = %detail, "own self-check failing: this gateway takes no traffic it cannot carry");
                    }
                    let _ = tx.send(Event::Own { healthy }).await;
                }
            }
        }));
        Ok(())
    }

    /// Starts probing every conditional route's target, from the ENI address.
    pub fn start_conditional(&mut self) -> Result<(), probe::Error> {
        if self.config.conditional.is_empty() {
            return Ok(());
        }
        let icmp = Arc::new(Icmp::bound(self.own.ip)?);
        for rule in &self.config.conditional {
            let Some(target) = rule.target() else {
                continue;
            };
            info!(rule = %rule.label(), %target, destinations = ?rule.destinations, "watching a conditional route's target");
            self.rules.push(RuleWatch::start(
                rule.clone(),
                target,
                Arc::clone(&icmp),
                &self.config.failover,
                self.events_tx.clone(),
            ));
        }
        Ok(())
    }

    /// Finds the group's other gateways (their ENIs) and starts probing new ones.
    async fn discover(&mut self) -> Result<(), CloudError> {
        let group = self.config.group.name.as_str();
        let mut enis = self.ec2.find_enis(&[(GROUP_TAG, group)]).await?;
        for (zone, id) in &self.config.eni.ids {
            if !enis.iter().any(|e| &e.id == id)
                && let Some(eni) = self.ec2.describe_eni(id).await?
            {
                let _ = zone;
                enis.push(eni);
            }
        }
        let f = &self.config.failover;
        for eni in enis {
            let zone = self
                .config
                .eni
                .ids
                .iter()
                .find(|(_, id)| **id == eni.id)
                .map(|(z, _)| z.clone())
                .or_else(|| eni.tags.get(ZONE_TAG).cloned())
                .unwrap_or_else(|| eni.az.clone());
            if zone == self.own.zone || self.tasks.contains_key(&zone) {
                continue;
            }
            let Some(ip) = eni.private_ips.first().copied() else {
                warn!(eni = %eni.id, %zone, "peer ENI has no private address: not probed");
                continue;
            };
            info!(%zone, eni = %eni.id, %ip, "watching peer gateway");
            self.peers.lock().unwrap_or_else(|e| e.into_inner()).insert(
                zone.clone(),
                PeerView {
                    zone: zone.clone(),
                    eni: eni.id.clone(),
                    ip,
                    icmp: Probe::Unknown,
                    losing_since: None,
                    last_rtt: None,
                    report: None,
                },
            );
            let icmp = match Icmp::bound(self.own.ip) {
                Ok(icmp) => Arc::new(icmp),
                Err(e) => {
                    error!(%zone, error = %e, "cannot probe the peer: it will never be taken over from here");
                    continue;
                }
            };
            let http = match health::Client::new(self.own.ip, f.health_port, HEALTH_TIMEOUT) {
                Ok(http) => http,
                Err(e) => {
                    error!(%zone, error = %e, "cannot ask the peer's /health: it will never be taken over from here");
                    continue;
                }
            };
            let tasks = vec![
                tokio::spawn(icmp_task(
                    icmp,
                    Arc::clone(&self.peers),
                    zone.clone(),
                    ip,
                    (f.probe_interval(), f.probe_timeout()),
                    (f.rise, f.fall),
                    self.events_tx.clone(),
                )),
                tokio::spawn(health_task(http, Arc::clone(&self.peers), zone.clone(), ip)),
            ];
            self.tasks.insert(zone, tasks);
        }
        self.discovered_at = Some(Instant::now());
        Ok(())
    }

    /// One observe → decide → act round. Returns how soon the next one should come, if sooner
    /// than the regular tick.
    pub async fn cycle(&mut self) -> Option<Duration> {
        if self.config.failover.enabled
            && self
                .discovered_at
                .is_none_or(|at| at.elapsed() >= REDISCOVER_EVERY)
            && let Err(e) = self.discover().await
        {
            self.api_trouble(&e, "looking up the group's gateways");
            return Some(self.backoff());
        }
        let renewals = if self.config.dry_run {
            Vec::new()
        } else {
            self.renewals()
        };
        let down: Vec<(String, String)> = self
            .peer_views()
            .into_iter()
            .filter(|p| p.icmp == Probe::Down)
            .map(|p| (p.zone, p.eni))
            .collect();
        let (ec2, asg) = (self.ec2, self.asg);
        let renew = futures::future::join_all(renewals.iter().map(|(zone, ids, value)| {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            async move {
                let tags = [(LEASE_TAG, value.as_str())];
                (zone, value, ec2.create_tags(&ids, &tags).await)
            }
        }));
        let evidence = futures::future::join_all(
            down.iter()
                .map(|(zone, eni)| async move { (zone.clone(), gone(ec2, asg, eni).await) }),
        );
        let (renewed, read, evidence) = tokio::join!(renew, self.read_tables(), evidence);
        for (zone, value, result) in renewed {
            match result {
                Ok(()) => debug!(%zone, lease = %value, "lease renewed"),
                Err(e) => self.api_trouble(&e, "renewing a lease"),
            }
        }
        let now = Instant::now();
        for (zone, result) in evidence {
            match result {
                Ok(why) => {
                    self.gone.insert(zone, (why, now));
                }
                Err(e) => self.api_trouble(&e, "asking the API about a silent peer"),
            }
        }
        let tables = match read {
            Ok(tables) => tables,
            Err(e) => {
                // Without the arbiter, doing nothing is the safe choice.
                self.api_trouble(
                    &e,
                    "reading the route tables (changing nothing until it answers)",
                );
                return Some(self.backoff());
            }
        };
        if self.last_api_error.take().is_some() {
            info!("EC2 API answering again");
        }
        self.observe(&tables, now);
        self.tables = tables;
        let facts = self.facts(now);
        let outcome = failover::decide(&facts);
        self.log_waits(&outcome.waits);
        self.deciding
            .retain(|zone, _| outcome.decisions.iter().any(|d| &d.zone == zone));
        let mut again = false;
        for d in &outcome.decisions {
            if self.config.dry_run {
                if self
                    .paused_logged
                    .insert(format!("dry:{}:{}", d.zone, d.kind.as_str()))
                {
                    for w in &d.writes {
                        warn!(zone = %d.zone, kind = d.kind.as_str(), table = %w.table, destination = %w.destination, was = %w.expect, target = %d.target, evidence = %d.evidence, "dry-run: would {} route", d.kind.as_str());
                    }
                    self.record(d, "dry-run: not executed", 0);
                }
                continue;
            }
            if self.paused {
                if self
                    .paused_logged
                    .insert(format!("{}:{}", d.zone, d.kind.as_str()))
                {
                    warn!(zone = %d.zone, kind = d.kind.as_str(), evidence = %d.evidence, target = %d.target, "automation paused: would point routes at {}", d.target);
                    self.record(d, "paused: not executed", 0);
                }
                continue;
            }
            if !self.execute(d).await {
                again = true;
            }
        }
        if !self.paused && !self.config.dry_run && !self.apply_conditional().await {
            again = true;
        }
        self.publish();
        if again {
            Some(self.backoff())
        } else {
            self.failures = 0;
            None
        }
    }

    async fn apply_conditional(&mut self) -> bool {
        let mut ok = true;
        let mut rules = std::mem::take(&mut self.rules);
        let f = &self.config.failover;
        for rule in &mut rules {
            let tables: Vec<&RouteTable> = if rule.config.tables.is_empty() {
                self.tables
                    .iter()
                    .filter(|t| self.zone_of(t).as_deref() == Some(self.own.zone.as_str()))
                    .collect()
            } else {
                self.tables
                    .iter()
                    .filter(|t| rule.config.tables.contains(&t.id))
                    .collect()
            };
            ok &= rule
                .apply(
                    self.ec2,
                    &self.own.eni,
                    &tables,
                    (f.hold_down(), f.damping_max()),
                    &self.config.events,
                )
                .await;
        }
        self.rules = rules;
        ok
    }

    fn backoff(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        RETRY_SOON
            .saturating_mul(1 << self.failures.min(6))
            .min(self.config.failover.lease_renew())
    }

    fn api_trouble(&mut self, e: &CloudError, doing: &str) {
        if self
            .last_api_error
            .is_none_or(|at| at.elapsed() >= API_LOG_EVERY)
        {
            warn!(error = %e, doing, "EC2 API call failed; retrying, routes stay as they are");
            crate::systemd::status(&format!("EC2 API failing ({doing}): {e}"));
            self.last_api_error = Some(Instant::now());
        }
    }

    fn peer_views(&self) -> Vec<PeerView> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    async fn read_tables(&self) -> Result<Vec<RouteTable>, CloudError> {
        let configured = &self.config.routes.tables;
        if configured.is_empty() {
            let group = self.config.group.name.as_str();
            let mut tables = self.ec2.find_route_tables(&[(GROUP_TAG, group)]).await?;
            self.add_rule_tables(&mut tables).await?;
            return Ok(tables);
        }
        let ids: Vec<&str> = configured.values().flatten().map(String::as_str).collect();
        let mut tables = self.ec2.describe_route_tables(&ids).await?;
        self.add_rule_tables(&mut tables).await?;
        Ok(tables)
    }

    /// Tables conditional rules name that the group read did not return.
    async fn add_rule_tables(&self, tables: &mut Vec<RouteTable>) -> Result<(), CloudError> {
        let missing: Vec<&str> = self
            .config
            .conditional
            .iter()
            .flat_map(|r| r.tables.iter())
            .filter(|id| !tables.iter().any(|t| &t.id == *id))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            tables.extend(self.ec2.describe_route_tables(&missing).await?);
        }
        Ok(())
    }

    fn zone_of(&self, table: &RouteTable) -> Option<String> {
        self.config
            .routes
            .tables
            .iter()
            .find(|(_, ids)| ids.contains(&table.id))
            .map(|(z, _)| z.clone())
            .or_else(|| table.tags.get(ZONE_TAG).cloned())
    }

    fn by_zone<'t>(&self, tables: &'t [RouteTable]) -> BTreeMap<String, Vec<&'t RouteTable>> {
        let mut zones: BTreeMap<String, Vec<&RouteTable>> = BTreeMap::new();
        for t in tables {
            if let Some(zone) = self.zone_of(t) {
                zones.entry(zone).or_default().push(t);
            }
        }
        zones
    }

    /// The ENI most managed routes of `tables` point at, or `blackhole`.
    fn carrier(&self, tables: &[&RouteTable]) -> Option<String> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in tables {
            for dest in &self.config.routes.destinations {
                if let Some(r) = t.route(dest) {
                    let key = match (&r.target, r.state) {
                        (_, RouteState::Blackhole) => "blackhole".to_owned(),
                        (RouteTarget::Eni(id), _) => id.clone(),
                        (other, _) => other.to_string(),
                    };
                    *counts.entry(key).or_default() += 1;
                }
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k)
    }

    /// Updates lease ages and carrier history from a fresh read; logs every change of carrier.
    fn observe(&mut self, tables: &[RouteTable], now: Instant) {
        let window = self.config.failover.damping_max();
        for (zone, ts) in self.by_zone(tables) {
            let value: Vec<&str> = ts
                .iter()
                .map(|t| t.tags.get(LEASE_TAG).map_or("-", String::as_str))
                .collect();
            let value = value.join(",");
            match self.leases.get(&zone) {
                Some((old, _)) if *old == value => {}
                _ => {
                    self.leases.insert(zone.clone(), (value, now));
                }
            }
            let Some(carrier) = self.carrier(&ts) else {
                continue;
            };
            match self.carriers.get(&zone) {
                Some((old, _)) if *old == carrier => {}
                Some((old, since)) => {
                    let held = since.elapsed();
                    info!(
                        %zone,
                        from = %old,
                        to = %carrier,
                        held_for_ms = held.as_millis() as u64,
                        "zone changed carrier"
                    );
                    metrics::inc("gateway_agent_flaps_total", &[("zone", zone.as_str())]);
                    if *old == self.own.eni && zone != self.own.zone {
                        info!(%zone, to = %carrier, "zone handed back: this gateway no longer carries it");
                        metrics::inc("gateway_agent_handbacks_total", &[("zone", zone.as_str())]);
                        hook::emit(
                            &self.config.events,
                            &hook::Event {
                                event: "handback",
                                zone: &zone,
                                from: old,
                                to: &carrier,
                                reason: "the zone's routes left this gateway (its owner reclaimed it, or another gateway took it)",
                            },
                        );
                    }
                    let list = self.changes.entry(zone.clone()).or_default();
                    list.push(now);
                    list.retain(|at| now.duration_since(*at) < window);
                    self.carriers.insert(zone.clone(), (carrier, now));
                }
                None => {
                    self.carriers.insert(zone.clone(), (carrier, now));
                }
            }
        }
    }

    /// Leases to renew: every zone whose routes point here, unless someone claimed it since
    /// with a newer epoch (then this gateway lets go and stops renewing).
    fn renewals(&mut self) -> Vec<(String, Vec<String>, String)> {
        let mut out = Vec::new();
        let tables = std::mem::take(&mut self.tables);
        for (zone, ts) in self.by_zone(&tables) {
            if self.carrier(&ts).as_deref() != Some(self.own.eni.as_str()) {
                continue;
            }
            let newest = lease::newest(
                ts.iter()
                    .filter_map(|t| t.tags.get(LEASE_TAG))
                    .map(String::as_str),
            );
            let mine = self.epochs.get(&zone).copied();
            let epoch = match (&newest, mine) {
                (Some(l), Some(e)) if l.holder != self.own.instance_id && l.epoch > e => {
                    if self.let_go.insert(zone.clone(), l.epoch) != Some(l.epoch) {
                        info!(%zone, claimed_by = %l.holder, epoch = l.epoch, "zone claimed with a newer epoch: letting go, no longer renewing");
                    }
                    continue;
                }
                (_, Some(e)) => e,
                (Some(l), None) if l.holder == self.own.instance_id => l.epoch,
                (Some(l), None) => l.epoch + 1,
                (None, None) => 1,
            };
            self.epochs.insert(zone.clone(), epoch);
            let value = Lease {
                holder: self.own.instance_id.clone(),
                epoch,
                unix_ms: unix_ms(),
            }
            .to_string();
            out.push((zone, ts.iter().map(|t| t.id.clone()).collect(), value));
        }
        self.tables = tables;
        out
    }

    fn facts(&self, now: Instant) -> Facts {
        let f = &self.config.failover;
        let own = self
            .own_health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let peers = self
            .peer_views()
            .into_iter()
            .map(|p| Gateway {
                instance: p
                    .report
                    .as_ref()
                    .map(|(r, _)| r.instance_id.clone())
                    .filter(|id| !id.is_empty()),
                report: p.report.as_ref().and_then(|(r, at)| {
                    (now.saturating_duration_since(*at) <= REPORT_FRESH).then_some(SelfReport {
                        healthy: r.healthy,
                        draining: r.draining,
                    })
                }),
                api_gone: if p.icmp == Probe::Down {
                    self.gone.get(&p.zone).and_then(|(why, _)| why.clone())
                } else {
                    None
                },
                zone: p.zone,
                eni: p.eni,
                icmp: p.icmp,
            })
            .collect();
        // With failover off, only the own zone is decided on: no peer is watched, so every
        // peer zone would look orphaned.
        let zones = self
            .by_zone(&self.tables)
            .into_iter()
            .filter(|(zone, _)| f.enabled || *zone == self.own.zone)
            .map(|(zone, ts)| {
                let changes = self.changes.get(&zone);
                failover::Zone {
                    lease_unchanged_for: self
                        .leases
                        .get(&zone)
                        .map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at)),
                    recent_changes: changes.map_or(0, |c| {
                        u32::try_from(
                            c.iter()
                                .filter(|at| now.duration_since(**at) < f.damping_max())
                                .count(),
                        )
                        .unwrap_or(u32::MAX)
                    }),
                    since_last_change: changes
                        .and_then(|c| c.last())
                        .map(|at| now.saturating_duration_since(*at)),
                    tables: ts.into_iter().map(table_fact).collect(),
                    zone,
                }
            })
            .collect();
        Facts {
            me: Me {
                zone: self.own.zone.clone(),
                eni: self.own.eni.clone(),
                healthy: own.healthy,
                healthy_for: if own.healthy {
                    now.saturating_duration_since(own.since)
                } else {
                    Duration::ZERO
                },
                draining: self.draining,
            },
            ring: f.ring.clone(),
            peers,
            zones,
            destinations: self.config.routes.destinations.clone(),
            optional: self
                .config
                .conditional
                .iter()
                .flat_map(|r| r.destinations.iter().cloned())
                .collect(),
            policy: Policy {
                confirm: f.confirm,
                failback: f.failback,
                hold_down: f.hold_down(),
                damping_max: f.damping_max(),
                lease_ttl: f.lease_ttl(),
            },
            failback_now: self.failback_requested,
        }
    }

    fn log_waits(&mut self, waits: &[failover::Wait]) {
        let mut seen = BTreeMap::new();
        for w in waits {
            if self.waits.get(&w.zone) != Some(&w.reason) {
                info!(zone = %w.zone, reason = %w.reason, "not acting");
            }
            seen.insert(w.zone.clone(), w.reason.clone());
        }
        self.waits = seen;
    }

    /// Claims the zone (lease with a larger epoch), re-reads, writes what still matches,
    /// confirms. `false` when something is left for the next cycle.
    async fn execute(&mut self, d: &Decision) -> bool {
        // A decision retried after a failed write is timed from its first attempt.
        let decided = *self
            .deciding
            .entry(d.zone.clone())
            .or_insert_with(Instant::now);
        let zone_tables: Vec<RouteTable> = self
            .tables
            .iter()
            .filter(|t| self.zone_of(t).as_deref() == Some(d.zone.as_str()))
            .cloned()
            .collect();
        let ids: Vec<&str> = zone_tables.iter().map(|t| t.id.as_str()).collect();
        let newest = lease::newest(
            zone_tables
                .iter()
                .filter_map(|t| t.tags.get(LEASE_TAG))
                .map(String::as_str),
        );
        let epoch = newest.as_ref().map_or(1, |l| l.epoch + 1);
        let value = Lease {
            // This gateway's claims carry its instance; a hand-over names the receiver (its
            // instance from /health, else its ENI) so the receiver adopts the epoch.
            holder: if d.target == self.own.eni {
                self.own.instance_id.clone()
            } else {
                d.target_instance
                    .clone()
                    .unwrap_or_else(|| d.target.clone())
            },
            epoch,
            unix_ms: unix_ms(),
        }
        .to_string();
        let detection = d.from.as_ref().and_then(|eni| {
            self.peer_views()
                .into_iter()
                .find(|p| &p.eni == eni)
                .and_then(|p| p.losing_since)
                .map(|at| decided.saturating_duration_since(at))
        });
        info!(
            zone = %d.zone,
            kind = d.kind.as_str(),
            routes = d.writes.len(),
            from = %d.from.as_deref().unwrap_or("-"),
            evidence = %d.evidence,
            lease = %value,
            "decision: pointing routes at {}", d.target
        );
        let lease_tag = [(LEASE_TAG, value.as_str())];
        let fresh = match self.ec2.describe_route_tables(&ids).await {
            Ok(f) => f,
            Err(e) => {
                self.api_trouble(&e, "re-reading before a route write");
                return false;
            }
        };
        let mut writes = Vec::new();
        for w in &d.writes {
            let table = fresh.iter().find(|t| t.id == w.table);
            let current = table.and_then(|t| t.route(&w.destination));
            let still = match (&w.expect, current) {
                (Expect::Missing, None) => true,
                (Expect::Blackhole, Some(r)) => r.state == RouteState::Blackhole,
                (Expect::Eni(id), Some(r)) => r.target == RouteTarget::Eni(id.clone()),
                _ => false,
            };
            if still && table.is_some() {
                writes.push(w);
            } else {
                info!(zone = %d.zone, table = %w.table, destination = %w.destination, expected = %w.expect, now = %current.map_or("missing".to_owned(), |r| r.target.to_string()), "route changed since the decision: left alone");
            }
        }
        let eni = d.target.as_str();
        let ec2 = self.ec2;
        // Tables that carry traffic now (associated with a subnet) go first, the rest right
        // after: the API may serve a burst of writes one by one, and the client's table
        // should not wait behind fifty spare ones.
        let carrying = |w: &&failover::Write| {
            fresh
                .iter()
                .find(|t| t.id == w.table)
                .is_some_and(|t| t.associated)
        };
        let (first, rest): (Vec<&failover::Write>, Vec<&failover::Write>) =
            writes.iter().copied().partition(carrying);
        let mut results =
            futures::future::join_all(first.into_iter().map(|w| write_route(ec2, w, eni))).await;
        // The lease tag goes out with the second wave: it informs operators and peers, while
        // the carrying tables' traffic should not wait for it.
        let (tagged, rest) = tokio::join!(
            ec2.create_tags(&ids, &lease_tag),
            futures::future::join_all(rest.into_iter().map(|w| write_route(ec2, w, eni)))
        );
        if let Err(e) = tagged {
            warn!(zone = %d.zone, error = %e, "lease tag not written; the routes are written anyway (the lease only informs)");
        }
        results.extend(rest);
        let mut ok = true;
        for (w, r) in results {
            match r {
                Ok(()) => info!(
                    zone = %d.zone,
                    table = %w.table,
                    destination = %w.destination,
                    target = %eni,
                    was = %w.expect,
                    reason = d.kind.as_str(),
                    "route switched"
                ),
                Err(e) => {
                    warn!(zone = %d.zone, error = %e, "route write failed; the next cycle decides again");
                    ok = false;
                }
            }
        }
        if d.kind == Kind::Handover {
            self.epochs.remove(&d.zone);
        } else {
            self.epochs.insert(d.zone.clone(), epoch);
            self.let_go.remove(&d.zone);
        }
        // Confirm from the API, not from our own success codes.
        let confirmed = match self.ec2.describe_route_tables(&ids).await {
            Ok(after) => {
                let n = writes
                    .iter()
                    .filter(|w| {
                        after
                            .iter()
                            .find(|t| t.id == w.table)
                            .and_then(|t| t.route(&w.destination))
                            .is_some_and(|r| r.target == RouteTarget::Eni(eni.to_owned()))
                    })
                    .count();
                for t in after {
                    if let Some(old) = self.tables.iter_mut().find(|x| x.id == t.id) {
                        *old = t;
                    }
                }
                n
            }
            Err(e) => {
                self.api_trouble(&e, "confirming route writes");
                return false;
            }
        };
        let switched = decided.elapsed();
        metrics::add(
            "gateway_agent_route_changes_total",
            &[("kind", d.kind.as_str())],
            confirmed as f64,
        );
        if ok && confirmed == writes.len() {
            self.deciding.remove(&d.zone);
            self.record(d, "complete", confirmed);
            let event = if d.kind == Kind::Handover && !self.draining {
                "demotion"
            } else {
                d.kind.as_str()
            };
            hook::emit(
                &self.config.events,
                &hook::Event {
                    event,
                    zone: &d.zone,
                    from: d.from.as_deref().unwrap_or("-"),
                    to: &d.target,
                    reason: &d.evidence,
                },
            );
            metrics::inc(
                "gateway_agent_decisions_total",
                &[("kind", d.kind.as_str()), ("zone", d.zone.as_str())],
            );
            metrics::observe(
                "gateway_agent_decision_to_switched_seconds",
                &[],
                switched.as_secs_f64(),
            );
            if let Some(t) = detection {
                metrics::observe("gateway_agent_detection_seconds", &[], t.as_secs_f64());
            }
            info!(
                zone = %d.zone,
                kind = d.kind.as_str(),
                detection_ms = detection.map_or(-1.0, |t| t.as_secs_f64() * 1e3),
                decision_to_switched_ms = switched.as_secs_f64() * 1e3,
                routes = confirmed,
                epoch,
                "{} complete", d.kind.as_str()
            );
            if d.kind == Kind::TakeOver {
                crate::systemd::status(&format!(
                    "carrying {} and {} (took over: {})",
                    self.own.zone, d.zone, d.evidence
                ));
            }
            if d.kind == Kind::Handover && !self.draining {
                crate::systemd::status(&format!(
                    "demoted: {} handed to {} ({})",
                    d.zone, d.target, d.evidence
                ));
                self.ask_for_replacement().await;
            }
            true
        } else {
            warn!(zone = %d.zone, confirmed, wanted = writes.len(), "not every route confirmed; trying again");
            self.record(d, "partial: trying again", confirmed);
            false
        }
    }

    fn publish(&self) {
        let own = self
            .own_health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let carries = self.carried();
        let draining = self.draining;
        let role = self.role(&carries);
        metrics::set("gateway_agent_zones_carried", &[], carries.len() as f64);
        metrics::set(
            "gateway_agent_draining",
            &[],
            if draining { 1.0 } else { 0.0 },
        );
        let held = self
            .tables
            .iter()
            .flat_map(|t| t.routes.iter())
            .filter(|r| r.target == RouteTarget::Eni(self.own.eni.clone()))
            .count();
        metrics::set("gateway_agent_routes_held", &[], held as f64);
        self.report.send_if_modified(|r| {
            let changed = r.healthy != own.healthy
                || r.carries != carries
                || r.draining != draining
                || r.role != role;
            r.role = role.to_owned();
            r.healthy = own.healthy;
            r.draining = draining;
            r.carries.clone_from(&carries);
            changed
        });
    }

    /// An operator's command, run between cycles; the answer goes back over the socket.
    pub async fn command(&mut self, command: Command) -> Result<String, String> {
        if self.config.dry_run
            && matches!(
                command,
                Command::Failover { .. } | Command::Failback { .. } | Command::Drain
            )
        {
            return Err(format!(
                "dry-run: this agent changes nothing; `{}` refused",
                command.line()
            ));
        }
        match command {
            Command::Failback { zone } => {
                if let Some(z) = zone
                    && z != self.own.zone
                {
                    return Err(format!(
                        "{z} is not this gateway's zone ({}); run failback on {z}'s gateway",
                        self.own.zone
                    ));
                }
                self.failback_requested = true;
                self.cycle().await;
                self.failback_requested = false;
                let own = self.own.zone.clone();
                let carried = self.carried().contains(&own);
                if carried {
                    Ok(format!(
                        "{own} is carried by {} (this gateway)",
                        self.own.eni
                    ))
                } else {
                    Err(self.waits.get(&own).cloned().unwrap_or_else(|| {
                        format!("{own} is not carried here yet; see the agent's log")
                    }))
                }
            }
            Command::Failover { zone, force } => self.manual_failover(&zone, force).await,
            Command::Drain => {
                self.set_draining(true);
                warn!(
                    "drained by an operator: handing everything over and staying out until `gateway-agent undrain`"
                );
                self.cycle().await;
                let left = self.carried();
                if left.is_empty() {
                    Ok("drained: this gateway carries no zone; `gateway-agent undrain` to take part again".into())
                } else {
                    Ok(format!(
                        "draining; still carrying {} ({})",
                        left.join(", "),
                        self.stuck().join("; ")
                    ))
                }
            }
            Command::Undrain => {
                self.set_draining(false);
                info!(
                    "undrained by an operator: taking part again (own zone back after the hold-down, or `gateway-agent failback`)"
                );
                Ok("undrained".into())
            }
            Command::Pause => {
                self.paused = true;
                self.paused_logged.clear();
                metrics::set("gateway_agent_paused", &[], 1.0);
                warn!("automation paused by an operator: deciding and logging, writing no route");
                Ok(
                    "paused: decisions are logged, no route is written; leases are still renewed"
                        .into(),
                )
            }
            Command::Resume => {
                self.paused = false;
                metrics::set("gateway_agent_paused", &[], 0.0);
                info!("automation resumed by an operator");
                Ok("resumed".into())
            }
            Command::Status => Ok(self.status().to_string()),
        }
    }

    fn record(&mut self, d: &Decision, result: &str, routes: usize) {
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(DecisionRecord {
            at_unix_ms: unix_ms(),
            zone: d.zone.clone(),
            kind: d.kind.as_str().to_owned(),
            target: d.target.clone(),
            evidence: d.evidence.clone(),
            result: result.to_owned(),
            routes,
        });
    }

    /// `gateway-agent failover ZONE`: the zone's routes that point at another gateway (or read
    /// blackhole) come here now; a third party's route is never taken.
    async fn manual_failover(&mut self, zone: &str, force: bool) -> Result<String, String> {
        if zone == self.own.zone {
            return Err(format!(
                "{zone} is this gateway's own zone: use `gateway-agent failback`"
            ));
        }
        if self.draining {
            return Err("this gateway is draining: undrain it first".into());
        }
        let healthy = self
            .own_health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .healthy;
        if !healthy && !force {
            return Err("the own self-check fails: this gateway may not carry the traffic; add --force to take it anyway".into());
        }
        let tables: Vec<RouteTable> = match self.read_tables().await {
            Ok(t) => t,
            Err(e) => return Err(format!("cannot read the route tables: {e}")),
        };
        self.tables = tables;
        let mut writes = Vec::new();
        let mut from = None;
        for t in self
            .tables
            .iter()
            .filter(|t| self.zone_of(t).as_deref() == Some(zone))
        {
            for dest in &self.config.routes.destinations {
                let Some(r) = t.route(dest) else { continue };
                let expect = match (&r.target, r.state) {
                    (_, RouteState::Blackhole) => Expect::Blackhole,
                    (RouteTarget::Eni(id), _) if *id == self.own.eni => continue,
                    (RouteTarget::Eni(id), _) => {
                        from.get_or_insert(id.clone());
                        Expect::Eni(id.clone())
                    }
                    _ => continue,
                };
                writes.push(failover::Write {
                    table: t.id.clone(),
                    destination: dest.clone(),
                    expect,
                });
            }
        }
        if writes.is_empty() {
            return Err(format!(
                "nothing to take in {zone}: no managed route there points at another gateway (unknown zone, or already here)"
            ));
        }
        let d = Decision {
            zone: zone.to_owned(),
            kind: Kind::TakeOver,
            writes,
            evidence: format!(
                "manual failover requested by an operator{}",
                if force { " (--force)" } else { "" }
            ),
            from,
            target: self.own.eni.clone(),
            target_instance: None,
        };
        if self.execute(&d).await {
            Ok(format!(
                "{zone} now carried by {} (its owner takes it back after its hold-down unless drained or failback = manual)",
                self.own.eni
            ))
        } else {
            Err(format!(
                "{zone}: not every route switched; see the agent's log"
            ))
        }
    }

    /// Everything `gateway-agent status` shows, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let own = self
            .own_health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let zones: Vec<serde_json::Value> = self
            .by_zone(&self.tables)
            .into_iter()
            .map(|(zone, ts)| {
                let carrier = self.carrier(&ts).unwrap_or_default();
                let carrier_zone = if carrier == self.own.eni {
                    Some(self.own.zone.clone())
                } else {
                    self.peer_views()
                        .into_iter()
                        .find(|p| p.eni == carrier)
                        .map(|p| p.zone)
                };
                let lease = lease::newest(
                    ts.iter()
                        .filter_map(|t| t.tags.get(LEASE_TAG))
                        .map(String::as_str),
                );
                serde_json::json!({
                    "zone": zone,
                    "carrier": carrier,
                    "carrier_zone": carrier_zone,
                    "carrier_since_s": self.carriers.get(&zone).map(|(_, at)| now.saturating_duration_since(*at).as_secs()),
                    "lease": lease.map(|l| l.to_string()),
                    "recent_changes": self.changes.get(&zone).map_or(0, Vec::len),
                    "waiting": self.waits.get(&zone),
                    "tables": ts.iter().map(|t| serde_json::json!({
                        "id": t.id,
                        "routes": self.config.routes.destinations.iter().filter_map(|d| t.route(d)).map(|r| serde_json::json!({
                            "destination": r.destination,
                            "target": r.target.to_string(),
                            "state": if r.state == RouteState::Blackhole { "blackhole" } else { "active" },
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let peers: Vec<serde_json::Value> = self
            .peer_views()
            .into_iter()
            .map(|p| {
                serde_json::json!({
                    "zone": p.zone,
                    "eni": p.eni,
                    "ip": p.ip.to_string(),
                    "icmp": match p.icmp { Probe::Up => "up", Probe::Down => "down", Probe::Unknown => "unknown" },
                    "last_rtt_ms": p.last_rtt.map(|d| d.as_secs_f64() * 1e3),
                    "health": p.report.as_ref().map(|(r, at)| serde_json::json!({
                        "healthy": r.healthy,
                        "draining": r.draining,
                        "carries": r.carries,
                        "age_ms": now.saturating_duration_since(*at).as_millis() as u64,
                    })),
                    "api_says": self.gone.get(&p.zone).and_then(|(why, _)| why.clone()),
                })
            })
            .collect();
        serde_json::json!({
            "instance_id": self.own.instance_id,
            "zone": self.own.zone,
            "eni": self.own.eni,
            "self_check": { "healthy": own.healthy, "detail": own.detail, "for_s": now.saturating_duration_since(own.since).as_secs() },
            "draining": self.draining,
            "paused": self.paused,
            "dry_run": self.config.dry_run,
            "lifecycle_state": self.lifecycle.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            "role": self.role(&self.carried()),
            "carries": self.carried(),
            "zones": zones,
            "peers": peers,
            "decisions": self.history,
            "conditional": self.rules.iter().map(|r| r.status()).collect::<Vec<_>>(),
        })
    }

    /// After a demotion, with `drain.set_unhealthy`: tell the ASG this instance is unhealthy,
    /// so it is replaced rather than left sick (once; the ASG takes it from there).
    async fn ask_for_replacement(&mut self) {
        if !self.config.drain.set_unhealthy || self.reported_unhealthy || self.config.dry_run {
            return;
        }
        match self
            .asg
            .set_instance_health(&self.own.instance_id, false)
            .await
        {
            Ok(()) => {
                warn!(instance = %self.own.instance_id, "SetInstanceHealth Unhealthy: the Auto Scaling group will replace this gateway");
                self.reported_unhealthy = true;
            }
            Err(e) => {
                warn!(error = %e, "cannot report this instance unhealthy; retrying after the next hand-over")
            }
        }
    }

    /// Where the planned-exit watcher keeps the ASG lifecycle state for `status`.
    pub fn lifecycle_state(&self) -> super::exit::LifecycleState {
        std::sync::Arc::clone(&self.lifecycle)
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
        self.publish();
    }

    /// What this gateway is doing for its group, in a word (on /health and in `status`).
    fn role(&self, carried: &[String]) -> &'static str {
        let own = carried.contains(&self.own.zone);
        let others = carried.iter().any(|z| *z != self.own.zone);
        match (self.draining, own, others) {
            (true, ..) => "draining",
            (false, true, false) => "active",
            (false, true, true) => "active+holding",
            (false, false, true) => "holding",
            (false, false, false) => "standby",
        }
    }

    /// Zones with any managed route pointing at this gateway, as last read: what /health,
    /// status, metrics and a drain (done only when this is empty) all count.
    pub fn carried(&self) -> Vec<String> {
        self.by_zone(&self.tables)
            .into_iter()
            .filter(|(_, ts)| {
                ts.iter().any(|t| {
                    self.config.routes.destinations.iter().any(|d| {
                        t.route(d)
                            .is_some_and(|r| r.target == RouteTarget::Eni(self.own.eni.clone()))
                    })
                })
            })
            .map(|(z, _)| z)
            .collect()
    }

    /// Why routes this gateway wants to hand over cannot go (no healthy peer).
    pub fn stuck(&self) -> Vec<String> {
        self.waits
            .values()
            .filter(|w| w.contains("no healthy gateway to hand"))
            .cloned()
            .collect()
    }

    /// A reloaded config (SIGHUP): decision policy, drain and event settings apply from the
    /// next cycle; probes, sockets and the kernel keep what they started with.
    pub fn reconfigure(&mut self, config: Arc<Config>) {
        self.config = config;
    }

    /// For tests and status: what the probes see.
    pub fn peers(&self) -> Vec<PeerView> {
        self.peer_views()
    }
}

impl<E, A> Drop for Watch<'_, E, A> {
    fn drop(&mut self) {
        for t in self.tasks.values().flatten() {
            t.abort();
        }
        if let Some(t) = &self.own_task {
            t.abort();
        }
    }
}

/// One route write: a create for a missing route, a replace otherwise.
async fn write_route<'w, E: Ec2>(
    ec2: &E,
    w: &'w failover::Write,
    eni: &str,
) -> (&'w failover::Write, Result<(), CloudError>) {
    let r = match w.expect {
        Expect::Missing => ec2.create_route(&w.table, &w.destination, eni).await,
        _ => ec2.replace_route(&w.table, &w.destination, eni).await,
    };
    (w, r)
}

/// Why the API says `eni`'s gateway cannot carry traffic, or `None` if it says it can.
async fn gone<E: Ec2, A: Autoscaling>(
    ec2: &E,
    asg: &A,
    eni: &str,
) -> Result<Option<String>, CloudError> {
    let Some(e) = ec2.describe_eni(eni).await? else {
        return Ok(Some(format!("ENI {eni} no longer exists")));
    };
    let Some(att) = e.attachment else {
        return Ok(Some(format!("ENI {eni} is detached")));
    };
    if matches!(
        att.status,
        AttachmentStatus::Detaching | AttachmentStatus::Detached
    ) {
        return Ok(Some(format!("ENI {eni} is detaching")));
    }
    let Some(instance) = att.instance_id else {
        return Ok(None);
    };
    match ec2.describe_instance(&instance).await? {
        None => return Ok(Some(format!("instance {instance} no longer exists"))),
        Some(i) if i.state != InstanceState::Running => {
            return Ok(Some(format!("instance {instance} is {}", i.state.as_str())));
        }
        Some(_) => {}
    }
    if let Some(a) = asg.asg_instance(&instance).await?
        && a.lifecycle_state.starts_with("Terminating")
    {
        return Ok(Some(format!(
            "instance {instance} is {} in {}",
            a.lifecycle_state, a.group
        )));
    }
    Ok(None)
}

/// One probe round, as [`probe_loop`] hands it to its owner.
pub struct Round<'a> {
    pub result: &'a Result<Duration, String>,
    /// When the echo was sent.
    pub sent: Instant,
    pub state: Probe,
    /// The new state, when this round changed it.
    pub change: Option<Probe>,
    pub bad_streak: u32,
}

/// Probes `ip` every `period` forever (the caller aborts the task) with rise/fall counting,
/// and hands each round to `round`.
pub async fn probe_loop(
    icmp: Arc<Icmp>,
    ip: Ipv4Addr,
    (period, timeout): (Duration, Duration),
    (rise, fall): (u32, u32),
    mut round: impl FnMut(Round<'_>) + Send,
) {
    let mut rf = RiseFall::new(rise, fall);
    let ident = probe::rand_ident(ip);
    let mut ticker = interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq: u16 = 0;
    loop {
        ticker.tick().await;
        seq = seq.wrapping_add(1);
        let sent = Instant::now();
        let result = icmp.echo(ip, ident, seq, timeout).await;
        let change = rf.record(result.is_ok());
        round(Round {
            result: &result,
            sent,
            state: rf.state(),
            change,
            bad_streak: rf.bad_streak(),
        });
    }
}

async fn icmp_task(
    icmp: Arc<Icmp>,
    peers: Peers,
    zone: String,
    ip: Ipv4Addr,
    timing: (Duration, Duration),
    thresholds: (u32, u32),
    tx: mpsc::Sender<Event>,
) {
    let mut last_log: Option<Instant> = None;
    probe_loop(icmp, ip, timing, thresholds, |r| {
        match r.result {
            Ok(rtt) => metrics::observe(
                "gateway_agent_probe_rtt_seconds",
                &[("zone", zone.as_str())],
                rtt.as_secs_f64(),
            ),
            Err(_) => metrics::inc(
                "gateway_agent_probe_failures_total",
                &[("zone", zone.as_str())],
            ),
        }
        if let Some(state) = r.change {
            metrics::set(
                "gateway_agent_peer_up",
                &[("zone", zone.as_str())],
                if state == Probe::Up { 1.0 } else { 0.0 },
            );
        }
        {
            let mut map = peers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = map.get_mut(&zone) {
                match r.result {
                    Ok(rtt) => {
                        p.last_rtt = Some(*rtt);
                        p.losing_since = None;
                    }
                    Err(_) => {
                        p.losing_since.get_or_insert(r.sent);
                    }
                }
                p.icmp = r.state;
            }
        }
        match (r.result, r.change) {
            (_, Some(state)) => {
                match state {
                    Probe::Down => {
                        warn!(%zone, peer = %ip, lost_in_a_row = r.bad_streak, "peer down by ICMP")
                    }
                    _ => info!(%zone, peer = %ip, state = ?state, "peer ICMP state"),
                }
                // A full queue means a cycle is pending anyway.
                let _ = tx.try_send(Event::Peer {
                    zone: zone.clone(),
                    state,
                });
            }
            (Err(e), None)
                if r.state == Probe::Down
                    && last_log.is_none_or(|at| at.elapsed() >= PROBE_LOG_EVERY) =>
            {
                warn!(%zone, peer = %ip, error = %e, "peer still silent");
                last_log = Some(Instant::now());
            }
            (Err(e), None) => debug!(%zone, peer = %ip, error = %e, "probe lost"),
            _ => {}
        }
    })
    .await;
}

async fn health_task(http: health::Client, peers: Peers, zone: String, ip: Ipv4Addr) {
    let mut ticker = interval(HEALTH_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last: Option<(bool, bool)> = None;
    loop {
        ticker.tick().await;
        match http.fetch(ip).await {
            Ok(report) => {
                let now = (report.healthy, report.draining);
                metrics::set(
                    "gateway_agent_peer_healthy",
                    &[("zone", zone.as_str())],
                    if report.healthy && !report.draining {
                        1.0
                    } else {
                        0.0
                    },
                );
                if last != Some(now) {
                    info!(%zone, healthy = report.healthy, draining = report.draining, carries = ?report.carries, "peer /health");
                    last = Some(now);
                }
                if let Some(p) = peers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&zone)
                {
                    p.report = Some((report, Instant::now()));
                }
            }
            Err(e) => debug!(%zone, error = %e, "peer /health unanswered"),
        }
        // A tick that waited on a slow peer must not make the next ask come at once.
        sleep(Duration::ZERO).await;
    }
}
