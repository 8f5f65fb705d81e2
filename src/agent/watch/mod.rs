//! The run loop's failover half, as a small reconcile: each cycle observes (the sensors' latest
//! views, the group's route tables, the API's word on silent peers), turns that into facts,
//! asks [`crate::decide::failover`], executes its decisions through the one route executor
//! ([`crate::agent::routes`]), reports, and says when it wants to run next.
//!
//! - [`sensors`]: the own self-check, one ICMP and one `/health` task per peer, discovery;
//! - [`zone`]: what is remembered about each zone between cycles;
//! - [`execute`]: a decision carried out (lease, writes, confirmation, metrics, events);
//! - [`commands`]: what an operator asks over the control socket;
//! - [`report`]: `/health`, `status`, metrics, the role, the decision history;
//! - [`conditional`]: conditional routes, one probe per rule.
//!
//! Failures are not remembered as work to redo: the next cycle (soon, with backoff) decides
//! again from fresh facts, so a partial takeover is finished and a stale one is dropped.

pub mod commands;
pub mod conditional;
pub mod execute;
pub mod report;
pub mod sensors;
pub mod zone;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::cloud::{Autoscaling, CloudError, Ec2, Priority, RouteTable, spend_as};
use crate::config::{Config, GROUP_TAG, ZONE_TAG};
use crate::decide::failover::{self, Facts, Gateway, Me, Policy, SelfReport};
use crate::decide::lease::{self, LEASE_TAG, Lease, Renewal};
use crate::decide::route::{BLACKHOLE, Probe, TableFact, carrier};
use crate::health::Report;
use crate::{hook, metrics};

pub use report::DecisionRecord;
pub use sensors::{Event, OwnHealth, PeerView};
use sensors::{Feed, Peer, Task};
use zone::ZoneState;

/// A `/health` answer older than this no longer describes the peer.
const REPORT_FRESH: Duration = Duration::from_secs(2);
/// After a failed or unconfirmed write, the next cycle comes this soon (doubling per failure,
/// up to the lease period), not a whole period later.
const RETRY_SOON: Duration = Duration::from_millis(100);
/// Peers (the group's ENIs) are looked up at start, and again when a read shows a zone whose
/// gateway is not known, at most this often.
const REDISCOVER_AFTER: Duration = Duration::from_secs(60);
/// A witness sent but not yet seen is looked for this often (EC2's reads lag its writes).
const WITNESS_REREAD: Duration = Duration::from_millis(100);
/// A silent peer the API still calls alive is asked about again this soon.
const UNCONFIRMED_REASK: Duration = Duration::from_millis(250);
/// For this long after it fell silent (EC2's read lag, with room).
const UNCONFIRMED_WINDOW: Duration = Duration::from_secs(5);
/// A decision made on a read this recent is written without reading again first.
const FRESH_ENOUGH: Duration = Duration::from_millis(300);
/// A witness not seen this long after it was sent is taken as lost and sent again.
const WITNESS_RESEND: Duration = Duration::from_secs(10);
/// A failing API is reported once a minute, not every cycle.
const API_LOG_EVERY: Duration = Duration::from_secs(60);
/// A zone that changed hands this recently keeps its carrier renewing and every gateway reading
/// at the fast cadence: the move's followers (a hand-back, a peer's confirmation) come soon.
const CHANGE_IS_RECENT: Duration = Duration::from_secs(10);

/// This gateway, as the loop needs it.
#[derive(Debug, Clone)]
pub struct Own {
    pub instance_id: String,
    pub zone: String,
    pub eni: String,
    pub ip: Ipv4Addr,
    /// The VPC of the persistent ENI: peers are only ever looked for in it.
    pub vpc_id: String,
}

pub struct Watch<'a, E, A> {
    config: Arc<Config>,
    ec2: &'a E,
    asg: &'a A,
    own: Own,
    /// Whether discovered peers get probe tasks (unit tests play the probes themselves).
    probing: bool,
    peers: BTreeMap<String, Peer>,
    own_health: watch::Receiver<OwnHealth>,
    own_feed: Feed<OwnHealth>,
    _own_task: Option<Task>,
    events_tx: mpsc::Sender<Event>,
    discovered_at: Option<Instant>,
    report: watch::Sender<Report>,
    zones: BTreeMap<String, ZoneState>,
    /// The group's tables as last read, and when.
    tables: Vec<RouteTable>,
    read_at: Option<Instant>,
    /// When the leases were last renewed.
    renewed_at: Option<Instant>,
    /// Why the lease is being renewed and the tables read fast, as last logged.
    trouble_logged: Option<String>,
    last_api_error: Option<Instant>,
    failures: u32,
    /// `gateway-agent failback` asked for the own zone back in the cycle under way.
    failback_requested: bool,
    rules: Vec<conditional::RuleWatch>,
    /// A planned exit is under way: hand everything over, take nothing.
    draining: bool,
    /// Why an advisory notice says this instance may go (a rebalance recommendation, a
    /// `system-maintenance` event): published, and the last choice as a successor.
    at_risk: Option<String>,
    /// SetInstanceHealth Unhealthy was sent (`drain.set_unhealthy`).
    reported_unhealthy: bool,
    /// The ASG lifecycle state IMDS last gave (kept current by the planned-exit watcher).
    lifecycle: super::exit::LifecycleState,
    /// `gateway-agent pause`: decide, log, write nothing.
    paused: bool,
    /// Decisions skipped while paused (or dry-run), logged once each.
    paused_logged: std::collections::BTreeSet<String>,
    /// The last decisions and how they ended, newest last (for `gateway-agent status`).
    history: std::collections::VecDeque<DecisionRecord>,
    /// Who may ask this gateway's `/health`: the peers found, kept current here.
    health_allow: crate::http::Allow,
    /// Instances holding ENIs tagged into the group, as the API judged them (running ones).
    holders: BTreeMap<String, sensors::Holder>,
    /// Auto Scaling group name: whether it carries this group's tag.
    group_asgs: BTreeMap<String, bool>,
    /// Routes this gateway wrote lately, by (table, destination).
    written: BTreeMap<(String, String), Written>,
}

/// A route this gateway wrote and saw confirmed: a read that still shows what it pointed at
/// before is behind the write (EC2's reads lag and need not move forward), not a change to
/// undo; a third target is a change.
#[derive(Debug, Clone)]
pub(super) struct Written {
    pub to: String,
    pub was: String,
    pub at: Instant,
}

/// How long a read showing a route's old target is taken for one behind this gateway's write.
const WRITE_SHADOW: Duration = Duration::from_secs(5);

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
            cannot_hear: Vec::new(),
            at_risk: false,
        });
        let mut zones: BTreeMap<String, ZoneState> = BTreeMap::new();
        zones.entry(own.zone.clone()).or_default().epoch = claimed_epoch;
        let (own_feed, own_health) = watch::channel(OwnHealth {
            healthy: true,
            since: Instant::now(),
            detail: "passed at boot".into(),
        });
        let watch = Self {
            config,
            ec2,
            asg,
            own,
            probing: true,
            peers: BTreeMap::new(),
            own_health,
            own_feed: Arc::new(own_feed),
            _own_task: None,
            events_tx,
            discovered_at: None,
            report,
            zones,
            tables: Vec::new(),
            read_at: None,
            renewed_at: None,
            trouble_logged: None,
            last_api_error: None,
            failures: 0,
            failback_requested: false,
            rules: Vec::new(),
            draining: false,
            at_risk: None,
            reported_unhealthy: false,
            lifecycle: Arc::default(),
            paused: false,
            paused_logged: std::collections::BTreeSet::new(),
            history: std::collections::VecDeque::new(),
            health_allow: crate::http::Allow::default(),
            holders: BTreeMap::new(),
            group_asgs: BTreeMap::new(),
            written: BTreeMap::new(),
        };
        (watch, events_rx, report_rx)
    }

    /// Starts the own self-check task.
    pub fn start_own_health(&mut self) -> Result<(), crate::probe::Error> {
        self._own_task = sensors::start_own_health(
            &self.config,
            Arc::clone(&self.own_feed),
            self.events_tx.clone(),
        )?;
        Ok(())
    }

    /// Starts probing every conditional route's target, from the ENI address.
    pub fn start_conditional(&mut self) -> Result<(), crate::probe::Error> {
        self.rules = conditional::start(&self.config, self.own.ip, &self.events_tx)?;
        Ok(())
    }

    /// Finds the group's other gateways and starts watching new ones.
    async fn discover(&mut self) -> Result<(), CloudError> {
        let found = sensors::discover(self.ec2, &self.config, &self.own).await?;
        let carriers: BTreeMap<String, String> = by_zone(&self.config, &self.tables)
            .into_iter()
            .filter_map(|(zone, ts)| {
                let facts: Vec<TableFact> = ts.iter().map(|t| t.fact()).collect();
                carrier(&facts, &self.config.routes.destinations).map(|c| (zone, c))
            })
            .collect();
        let mut refused = 0usize;
        for (zone, candidates) in found.peers {
            if self.peers.contains_key(&zone) {
                continue;
            }
            // An instance outside the group's Auto Scaling groups is never watched, nor handed
            // anything, whatever its ENI's tags say.
            let mut trusted = Vec::with_capacity(candidates.len());
            for c in candidates {
                let verdict = match &c.holder {
                    None => sensors::Holder::NotRunning,
                    Some(i) => match self.holders.get(i) {
                        Some(v) => v.clone(),
                        None => {
                            let v = sensors::holder(
                                self.ec2,
                                self.asg,
                                &self.config.group.name,
                                i,
                                &mut self.group_asgs,
                            )
                            .await?;
                            if v != sensors::Holder::NotRunning {
                                self.holders.insert(i.clone(), v.clone());
                            }
                            v
                        }
                    },
                };
                match verdict {
                    sensors::Holder::Stranger(why) => {
                        refused += 1;
                        error!(
                            %zone,
                            eni = %c.eni,
                            ip = %c.ip,
                            reason = %why,
                            "an ENI tagged into the group is held by an instance that is not one of the group's gateways: never watched or handed to; untag it"
                        );
                        self.rogue_eni(
                            &zone,
                            &c.eni,
                            &format!("ENI {} tagged into the group: {why}", c.eni),
                        );
                    }
                    _ => trusted.push(c),
                }
            }
            let chosen = match trusted.as_slice() {
                [] => None,
                [one] => Some(one.clone()),
                many => {
                    // Tags are the only proof of membership, and anyone allowed to tag an ENI can
                    // tag one into the group: with two for one zone, only the one the zone's
                    // routes already point at is trusted; with none of them carrying it, none.
                    let chosen = many
                        .iter()
                        .find(|c| Some(&c.eni) == carriers.get(&zone))
                        .cloned();
                    let ids: Vec<&str> = many.iter().map(|c| c.eni.as_str()).collect();
                    refused += many.len() - usize::from(chosen.is_some());
                    error!(
                        %zone,
                        enis = %ids.join(","),
                        trusted = %chosen.as_ref().map_or("none", |c| c.eni.as_str()),
                        "more than one ENI is tagged into the group for this zone: only the one its routes point at is watched or handed to; untag the others"
                    );
                    self.rogue_eni(
                        &zone,
                        "-",
                        &format!(
                            "{} ENIs tagged into the group for one zone: {}",
                            ids.len(),
                            ids.join(",")
                        ),
                    );
                    chosen
                }
            };
            if let Some(c) = chosen {
                info!(%zone, eni = %c.eni, ip = %c.ip, "watching peer gateway");
                self.add_peer(&zone, &c.eni, c.ip);
            }
        }
        for (eni, vpc) in &found.other_vpc {
            warn!(%eni, vpc = %vpc, own_vpc = %self.own.vpc_id, "an ENI tagged into the group lives in another VPC: ignored");
        }
        refused += found.other_vpc.len();
        if !found.own_zone_others.is_empty() {
            error!(zone = %self.own.zone, own_eni = %self.own.eni, others = %found.own_zone_others.join(","), "other ENIs are tagged into the group for this gateway's own zone: ignored; untag them");
            refused += found.own_zone_others.len();
        }
        metrics::set("gateway_agent_untrusted_enis", &[], refused as f64);
        self.discovered_at = Some(Instant::now());
        Ok(())
    }

    /// The `rogue-eni` event: an ENI tagged into the group that is never watched or handed to.
    fn rogue_eni(&self, zone: &str, eni: &str, reason: &str) {
        hook::emit(
            &self.config.events,
            &hook::Event {
                event: "rogue-eni",
                zone,
                from: eni,
                to: "-",
                reason,
            },
        );
    }

    /// Makes `allow` (the `/health` server's allow-list) admit every peer this loop watches.
    pub fn allow_peers(&mut self, allow: crate::http::Allow) {
        self.health_allow = allow;
        self.publish_peers();
    }

    fn publish_peers(&self) {
        let ips = self.peers.values().map(|p| p.view.borrow().ip);
        self.health_allow
            .set_hosts(ips.chain([self.own.ip]).map(std::net::IpAddr::V4));
    }

    /// Watches a peer: its view's feed, and (unless a test plays them) its probe tasks.
    pub fn add_peer(&mut self, zone: &str, eni: &str, ip: Ipv4Addr) -> Feed<PeerView> {
        let (feed, view) = watch::channel(PeerView::new(zone, eni, ip));
        let feed = Arc::new(feed);
        let tasks = if self.probing {
            sensors::start_peer(
                &self.config,
                (&self.own.zone, self.own.ip),
                &feed,
                &self.events_tx,
            )
        } else {
            Vec::new()
        };
        self.peers.insert(
            zone.to_owned(),
            Peer {
                view,
                _feed: Arc::clone(&feed),
                _tasks: tasks,
            },
        );
        self.publish_peers();
        feed
    }

    /// One observe → decide → act round. Returns how soon the next one should come, if sooner
    /// than the regular tick.
    pub async fn cycle(&mut self) -> Option<Duration> {
        if self.config.failover.enabled
            && self.discovered_at.is_none_or(|at| {
                at.elapsed() >= REDISCOVER_AFTER
                    && by_zone(&self.config, &self.tables)
                        .keys()
                        .any(|z| *z != self.own.zone && !self.peers.contains_key(z))
            })
            && let Err(e) = self.discover().await
        {
            return Some(self.trouble(&e, "looking up the group's gateways"));
        }
        let now = Instant::now();
        let fast = self.fast_reason(now);
        self.log_trouble(fast.as_deref());
        let drift_due = self.read_at.is_none_or(|at| {
            now.saturating_duration_since(at) >= self.config.failover.drift_interval()
        });
        // At steady state the tables are read only every drift interval: nothing moves, and
        // what could (a foreign change, a blackhole) is repaired within that interval.
        if fast.is_some() || drift_due {
            match self.observe(now, fast.is_some()).await {
                Ok(tables) => {
                    if self.last_api_error.take().is_some() {
                        info!("EC2 API answering again");
                    }
                    let now = Instant::now();
                    let mut tables = tables;
                    self.catch_up(&mut tables, now);
                    self.remember(&tables, now);
                    self.tables = tables;
                    self.read_at = Some(now);
                }
                // The agent's own budget kept a drift read back (the bucket is low): the last
                // read stands, and the read is tried again next cycle. Not a failure.
                Err(e) if e.is_deferred() => {}
                // Without the arbiter, doing nothing is the safe choice.
                Err(e) => {
                    return Some(self.trouble(
                        &e,
                        "reading the route tables (changing nothing until it answers)",
                    ));
                }
            }
        }
        let now = Instant::now();
        let outcome = failover::decide(&self.facts(now, false));
        self.log_waits(&outcome.waits);
        // A silent peer the API does not yet call dead is asked again soon: EC2's reads lag,
        // and a terminated instance reads `running` for a while after it died.
        // Only just after the peer fell silent: a partition stays unconfirmed for good, and is
        // not worth more than the regular cadence.
        let unconfirmed = outcome
            .waits
            .iter()
            .any(|w| w.kind == failover::WaitKind::Unconfirmed)
            && self.peer_views().iter().any(|p| {
                p.icmp == Probe::Down
                    && p.losing_since
                        .is_some_and(|at| now.saturating_duration_since(at) < UNCONFIRMED_WINDOW)
            });
        for (zone, st) in &mut self.zones {
            if !outcome.decisions.iter().any(|d| &d.zone == zone) {
                st.deciding = None;
            }
        }
        let go: Vec<_> = outcome
            .decisions
            .iter()
            .filter(|d| !self.held_back(d))
            .collect();
        let mut again = self.execute_all(&go).await.contains(&false);
        if !self.paused && !self.config.dry_run && !self.apply_conditional().await {
            again = true;
        }
        self.publish();
        if again {
            Some(self.backoff())
        } else {
            self.failures = 0;
            let lapse = self.lease_lapses(Instant::now());
            if unconfirmed {
                Some(lapse.map_or(UNCONFIRMED_REASK, |d| d.min(UNCONFIRMED_REASK)))
            } else {
                lapse
            }
        }
    }

    /// When this gateway began suspecting the peer a zone's routes point at, if it does.
    fn suspected_since(&self, facts: &[TableFact]) -> Option<Instant> {
        let eni = carrier(facts, &self.config.routes.destinations)?;
        self.peers
            .values()
            .map(|p| p.view.borrow())
            .find(|p| p.eni == eni)
            .and_then(|p| p.losing_since)
    }

    /// Witnesses to write this cycle: on each zone whose carrier this gateway suspects and
    /// whose lease has now gone `lease_ttl` without a visible renewal, unless a witness sent
    /// since is already on its way (or was lost: resent after `WITNESS_RESEND`). Each is
    /// recorded as sent before the call, so its time is a lower bound on when it lands.
    fn witnesses_due(&mut self, now: Instant) -> Vec<(String, String, String)> {
        let ttl = self.config.failover.lease_ttl();
        let mut out = Vec::new();
        for (zone, ts) in by_zone(&self.config, &self.tables) {
            let facts: Vec<TableFact> = ts.iter().map(|t| t.fact()).collect();
            let Some(suspected) = self.suspected_since(&facts) else {
                continue;
            };
            let Some(table) = ts.iter().map(|t| t.id.as_str()).min() else {
                continue;
            };
            let st = self.zones.entry(zone.clone()).or_default();
            let due = st.lease_due(suspected, ttl);
            let covered = st.witnessed.is_some_and(|w| w >= due)
                || st.witness_sent.as_ref().is_some_and(|(_, sent)| {
                    *sent >= due && now.saturating_duration_since(*sent) < WITNESS_RESEND
                });
            if now < due || covered {
                continue;
            }
            let value = format!(
                "{}/{}",
                self.own.instance_id,
                crate::agent::routes::unix_ms()
            );
            st.witness_sent = Some((value.clone(), now));
            out.push((zone, table.to_owned(), value));
        }
        out
    }

    /// When the lease of a suspected peer's zone lapses (its value unchanged, and the peer
    /// suspected, for `lease_ttl_ms`), if that comes before the next tick: the cycle is run
    /// then, so a hung peer's witness is written at its lease's end, not up to a tick later;
    /// and while a witness is sent but not yet read back, the tables are read again soon.
    fn lease_lapses(&self, now: Instant) -> Option<Duration> {
        let ttl = self.config.failover.lease_ttl();
        let mut next: Option<Duration> = None;
        let mut sooner = |at: Duration| next = Some(next.map_or(at, |n: Duration| n.min(at)));
        for (zone, ts) in by_zone(&self.config, &self.tables) {
            let facts: Vec<TableFact> = ts.iter().map(|t| t.fact()).collect();
            let Some(suspected) = self.suspected_since(&facts) else {
                continue;
            };
            let Some(st) = self.zones.get(&zone) else {
                continue;
            };
            if st.witness_sent.is_some() {
                sooner(WITNESS_REREAD);
                continue;
            }
            let at = st.lease_due(suspected, ttl).saturating_duration_since(now);
            if !at.is_zero() && at < self.config.failover.lease_renew() {
                sooner(at);
            }
        }
        next
    }

    /// Renews the leases this gateway holds, reads every route table of the group and asks
    /// the API about silent peers, all at once.
    /// The tables are read as confirmations while something is moving (`fast`), as drift
    /// reads otherwise; renewals spend as renewals, the questions about silent peers and the
    /// witnesses as confirmations ([`crate::cloud::budget`]).
    async fn observe(&mut self, now: Instant, fast: bool) -> Result<Vec<RouteTable>, CloudError> {
        // Cycles may come quicker than the renewal period (a lapse, a re-ask); renewals do not.
        let renew_due = self.renewed_at.is_none_or(|at| {
            now.saturating_duration_since(at) >= self.config.failover.lease_renew() / 2
        });
        let renewals = if self.config.dry_run || !renew_due || self.renew_reason(now).is_none() {
            Vec::new()
        } else {
            self.renewed_at = Some(now);
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
                let renewed = spend_as(Priority::Renew, ec2.create_tags(&ids, &tags)).await;
                (zone, value, renewed)
            }
        }));
        let evidence = futures::future::join_all(down.iter().map(|(zone, eni)| async move {
            let gone = spend_as(Priority::Confirm, sensors::gone(ec2, asg, eni)).await;
            (zone.clone(), gone)
        }));
        let witnesses = if self.config.dry_run {
            Vec::new()
        } else {
            self.witnesses_due(now)
        };
        let key = lease::witness_tag(&self.own.zone);
        let key = key.as_str();
        // The witnesses go first: the read that follows may already show them (and so cover
        // every renewal made before them).
        let witness_then_read = async {
            let written = futures::future::join_all(witnesses.iter().map(
                |(zone, table, value)| async move {
                    let tags = [(key, value.as_str())];
                    let sent =
                        spend_as(Priority::Confirm, ec2.create_tags(&[table.as_str()], &tags))
                            .await;
                    (zone, sent)
                },
            ))
            .await;
            let priority = if fast {
                Priority::Confirm
            } else {
                Priority::Drift
            };
            (written, spend_as(priority, self.read_tables()).await)
        };
        let (renewed, (witnessed, read), evidence) =
            tokio::join!(renew, witness_then_read, evidence);
        for (zone, result) in witnessed {
            match result {
                Ok(()) => debug!(%zone, "lease witness written"),
                Err(e) => {
                    if let Some(st) = self.zones.get_mut(zone) {
                        st.witness_sent = None;
                    }
                    self.trouble(&e, "writing a lease witness");
                }
            }
        }
        for (zone, value, result) in renewed {
            match result {
                Ok(()) => debug!(%zone, lease = %value, "lease renewed"),
                // Skipped by the agent's own budget (logged there): renewed next cycle.
                Err(e) if e.is_deferred() => self.renewed_at = None,
                Err(e) => {
                    self.trouble(&e, "renewing a lease");
                }
            }
        }
        let now = Instant::now();
        for (zone, result) in evidence {
            match result {
                Ok(why) => self.zones.entry(zone).or_default().api_says = Some((why, now)),
                Err(e) => {
                    self.trouble(&e, "asking the API about a silent peer");
                }
            }
        }
        read
    }

    /// Why this gateway renews the leases of the zones it carries now, if it has a reason: a
    /// peer is silent to it (that peer's own gateway may suspect it too), a peer says it cannot
    /// hear it, or a zone changed hands just now. At steady state it has none and writes nothing.
    fn renew_reason(&self, now: Instant) -> Option<String> {
        for p in self.peers.values() {
            let p = p.view.borrow();
            if p.icmp == Probe::Down || p.losing_since.is_some() {
                return Some(format!("{} is silent to this gateway", p.zone));
            }
            if let Some((r, at)) = &p.report
                && now.saturating_duration_since(*at) <= REPORT_FRESH
                && r.cannot_hear.contains(&self.own.zone)
            {
                return Some(format!("{} cannot hear this gateway", p.zone));
            }
        }
        self.zones.iter().find_map(|(zone, st)| {
            if st.pending.is_some() {
                // Reads disagree on its carrier: read on until they settle.
                return Some(format!("{zone} may be changing hands"));
            }
            st.since_last_change(now)
                .is_some_and(|d| d < CHANGE_IS_RECENT)
                .then(|| format!("{zone} changed hands just now"))
        })
    }

    /// Why the tables are read at the fast cadence now (every cycle), if anything is wrong or
    /// moving; `None` at steady state.
    fn fast_reason(&self, now: Instant) -> Option<String> {
        if let Some(why) = self.renew_reason(now) {
            return Some(why);
        }
        if self.draining {
            return Some("draining".into());
        }
        if self.failback_requested {
            return Some("an operator asked for the zone back".into());
        }
        if self.failures > 0 {
            return Some("the last cycle left work undone".into());
        }
        if let Some(zone) = self
            .zones
            .iter()
            .find_map(|(zone, st)| st.deciding.is_some().then_some(zone))
        {
            return Some(format!("a decision on {zone} is under way"));
        }
        if let Some(p) = self
            .peers
            .values()
            .map(|p| p.view.borrow())
            .find(|p| p.icmp != Probe::Up)
        {
            return Some(format!("{} is not known to be up yet", p.zone));
        }
        if let Some(why) = self.reports_disagree(now) {
            return Some(why);
        }
        // Until reads agree on a new blackhole long enough to act on (or to wait on for
        // another reason), it is read again each cycle.
        if let Some(zone) = self.zones.iter().find_map(|(zone, st)| {
            (st.blackhole_since.is_some()
                && st.blackhole_for(now) <= failover::BLACKHOLE_SETTLE * 2)
                .then_some(zone)
        }) {
            return Some(format!("{zone} reads blackhole"));
        }
        if let Some(r) = self.rules.iter().find(|r| r.target_down()) {
            return Some(format!(
                "conditional rule {} has its target down",
                r.config.label()
            ));
        }
        None
    }

    /// A peer's `/health` says it carries a zone the last read gave to another gateway, or no
    /// longer carries one it had: someone moved a route since, so the tables are read now
    /// rather than at the next drift read (a recovered owner sees at once that its zone is
    /// held elsewhere).
    fn reports_disagree(&self, now: Instant) -> Option<String> {
        let zones = by_zone(&self.config, &self.tables);
        let read_carrier = |zone: &str| {
            zones.get(zone).and_then(|ts| {
                let facts: Vec<TableFact> = ts.iter().map(|t| t.fact()).collect();
                carrier(&facts, &self.config.routes.destinations)
            })
        };
        for p in self.peers.values() {
            let p = p.view.borrow();
            let Some((r, at)) = &p.report else { continue };
            if now.saturating_duration_since(*at) > REPORT_FRESH {
                continue;
            }
            for zone in zones.keys() {
                let says = r.carries.contains(zone);
                let read = read_carrier(zone).as_deref() == Some(p.eni.as_str());
                if says != read {
                    return Some(format!(
                        "{} says it {} {zone}; the last read says otherwise",
                        p.zone,
                        if says { "carries" } else { "no longer carries" }
                    ));
                }
            }
        }
        None
    }

    /// Logs when the agent enters or leaves the fast cadence (not every cycle).
    fn log_trouble(&mut self, why: Option<&str>) {
        if self.trouble_logged.as_deref() == why {
            return;
        }
        match why {
            Some(why) => {
                info!(%why, "reading the route tables every cycle and renewing the lease where there is a reason")
            }
            None => info!(
                drift_interval_s = self.config.failover.drift_interval().as_secs(),
                "steady state: reading the route tables once per drift interval, writing nothing"
            ),
        }
        self.trouble_logged = why.map(str::to_owned);
    }

    /// A decision this agent does not carry out: dry-run or paused (logged once each).
    fn held_back(&mut self, d: &failover::Decision) -> bool {
        let (key, dry) = if self.config.dry_run {
            (format!("dry:{}:{}", d.zone, d.kind.as_str()), true)
        } else if self.paused {
            (format!("{}:{}", d.zone, d.kind.as_str()), false)
        } else {
            return false;
        };
        if self.paused_logged.insert(key) {
            if dry {
                for w in &d.writes {
                    warn!(zone = %d.zone, kind = d.kind.as_str(), table = %w.table, destination = %w.destination, was = %w.expect, target = %d.target, evidence = %d.evidence, "dry-run: would {} route", d.kind.as_str());
                }
                self.record(d, "dry-run: not executed", 0);
            } else {
                warn!(zone = %d.zone, kind = d.kind.as_str(), evidence = %d.evidence, target = %d.target, "automation paused: would point routes at {}", d.target);
                self.record(d, "paused: not executed", 0);
            }
        }
        true
    }

    async fn apply_conditional(&mut self) -> bool {
        let mut ok = true;
        let mut rules = std::mem::take(&mut self.rules);
        let f = &self.config.failover;
        for rule in &mut rules {
            let tables: Vec<&RouteTable> = if rule.config.tables.is_empty() {
                self.tables
                    .iter()
                    .filter(|t| zone_of(&self.config, t).as_deref() == Some(self.own.zone.as_str()))
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

    /// The one error policy: an API failure is logged (once a minute while it lasts) and on
    /// STATUS, routes stay as they are, and the next cycle comes after a backoff.
    fn trouble(&mut self, e: &CloudError, doing: &str) -> Duration {
        if self
            .last_api_error
            .is_none_or(|at| at.elapsed() >= API_LOG_EVERY)
        {
            warn!(error = %e, doing, "EC2 API call failed; retrying, routes stay as they are");
            crate::systemd::status(&format!("EC2 API failing ({doing}): {e}"));
            self.last_api_error = Some(Instant::now());
        }
        self.backoff()
    }

    fn backoff(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        RETRY_SOON
            .saturating_mul(1 << self.failures.min(6))
            .min(self.config.failover.lease_renew())
    }

    fn peer_views(&self) -> Vec<PeerView> {
        self.peers
            .values()
            .map(|p| p.view.borrow().clone())
            .collect()
    }

    async fn read_tables(&self) -> Result<Vec<RouteTable>, CloudError> {
        let configured = &self.config.routes.tables;
        let mut tables = if configured.is_empty() {
            let group = self.config.group.name.as_str();
            self.ec2.find_route_tables(&[(GROUP_TAG, group)]).await?
        } else {
            let ids: Vec<&str> = configured.values().flatten().map(String::as_str).collect();
            self.ec2.describe_route_tables(&ids).await?
        };
        // Tables conditional rules name that the group read did not return.
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
        Ok(tables)
    }

    /// Shows this gateway's own recent writes in a read that is behind them.
    fn catch_up(&mut self, tables: &mut [RouteTable], now: Instant) {
        self.written
            .retain(|_, w| now.saturating_duration_since(w.at) < WRITE_SHADOW);
        for t in tables.iter_mut() {
            for r in &mut t.routes {
                let key = (t.id.clone(), r.destination.clone());
                let Some(w) = self.written.get(&key) else {
                    continue;
                };
                let reads = r.fact().reads().to_owned();
                // One read showing the write proves nothing of the next: reads need not move
                // forward. Only a third target (someone else's change) ends the shadow early.
                if reads == w.to {
                    continue;
                } else if reads == w.was {
                    debug!(table = %t.id, destination = %r.destination, reads = %reads, written = %w.to, "a read behind this gateway's own write: taken as written");
                    r.target = crate::cloud::RouteTarget::Eni(w.to.clone());
                    r.state = crate::cloud::RouteState::Active;
                } else {
                    self.written.remove(&key);
                }
            }
        }
    }

    /// Updates lease ages and carrier history from a fresh read; logs every change of carrier.
    fn remember(&mut self, tables: &[RouteTable], now: Instant) {
        let window = self.config.failover.damping_max();
        let witness_key = lease::witness_tag(&self.own.zone);
        for (zone, ts) in by_zone(&self.config, tables) {
            let value: Vec<&str> = ts
                .iter()
                .map(|t| t.tags.get(LEASE_TAG).map_or("-", String::as_str))
                .collect();
            let st = self.zones.entry(zone.clone()).or_default();
            st.see_lease(value.join(","), now);
            if let Some(l) = lease::newest(
                ts.iter()
                    .filter_map(|t| t.tags.get(LEASE_TAG))
                    .map(String::as_str),
            ) {
                st.epoch_high = st.epoch_high.max(l.epoch);
            }
            if let Some((sent_value, sent)) = &st.witness_sent
                && ts
                    .iter()
                    .min_by_key(|t| t.id.as_str())
                    .and_then(|t| t.tags.get(&witness_key))
                    == Some(sent_value)
            {
                st.witnessed = Some(*sent);
                st.witness_sent = None;
            }
            let facts: Vec<TableFact> = ts.iter().map(|t| t.fact()).collect();
            let to = carrier(&facts, &self.config.routes.destinations);
            st.see_blackhole(to.as_deref() == Some(BLACKHOLE), now);
            let Some(to) = to else {
                continue;
            };
            let Some(moved) = st.see_carrier(to.clone(), now, window) else {
                continue;
            };
            info!(
                %zone,
                from = %moved.from,
                to = %to,
                held_for_ms = moved.held_for.as_millis() as u64,
                "zone changed carrier"
            );
            metrics::inc("gateway_agent_flaps_total", &[("zone", zone.as_str())]);
            if moved.from == self.own.eni && zone != self.own.zone {
                info!(%zone, to = %to, "zone handed back: this gateway no longer carries it");
                metrics::inc("gateway_agent_handbacks_total", &[("zone", zone.as_str())]);
                hook::emit(
                    &self.config.events,
                    &hook::Event {
                        event: "handback",
                        zone: &zone,
                        from: &moved.from,
                        to: &to,
                        reason: "the zone's routes left this gateway (its owner reclaimed it, or another gateway took it)",
                    },
                );
            }
        }
    }

    /// Leases to renew: every zone whose routes point here, unless someone claimed it since
    /// with a newer epoch (then this gateway lets go and stops renewing).
    fn renewals(&mut self) -> Vec<(String, Vec<String>, String)> {
        let mut out = Vec::new();
        for (zone, ts) in by_zone(&self.config, &self.tables) {
            let facts: Vec<TableFact> = ts.iter().map(|t| t.fact()).collect();
            if carrier(&facts, &self.config.routes.destinations).as_deref()
                != Some(self.own.eni.as_str())
            {
                continue;
            }
            let newest = lease::newest(
                ts.iter()
                    .filter_map(|t| t.tags.get(LEASE_TAG))
                    .map(String::as_str),
            );
            let st = self.zones.entry(zone.clone()).or_default();
            match lease::renewal(&self.own.instance_id, newest.as_ref(), st.epoch) {
                Renewal::LetGo { holder, epoch } => {
                    if st.let_go.replace(epoch) != Some(epoch) {
                        info!(%zone, claimed_by = %holder, epoch, "zone claimed with a newer epoch: letting go, no longer renewing");
                    }
                }
                Renewal::Renew(epoch) => {
                    st.epoch = Some(epoch);
                    let value = Lease {
                        holder: self.own.instance_id.clone(),
                        epoch,
                        unix_ms: crate::agent::routes::unix_ms(),
                    }
                    .to_string();
                    out.push((zone, ts.iter().map(|t| t.id.clone()).collect(), value));
                }
            }
        }
        out
    }

    /// The facts of this cycle. With failover off only the own zone is decided on (no peer is
    /// watched, so every peer zone would look orphaned), unless `all_zones` (a manual failover).
    fn facts(&self, now: Instant, all_zones: bool) -> Facts {
        let f = &self.config.failover;
        let own = self.own_health.borrow().clone();
        // Each zone's lease holder as last read, when it names an instance.
        let holders: BTreeMap<String, String> = by_zone(&self.config, &self.tables)
            .into_iter()
            .filter_map(|(zone, ts)| {
                let l = lease::newest(
                    ts.iter()
                        .filter_map(|t| t.tags.get(LEASE_TAG))
                        .map(String::as_str),
                )?;
                l.holder.starts_with("i-").then_some((zone, l.holder))
            })
            .collect();
        let peers = self
            .peer_views()
            .into_iter()
            .map(|p| {
                let st = self.zones.get(&p.zone);
                // What the API or a /health said counts only if it came after the zone came
                // (back) to this ENI: a replacement that just claimed it and took its routes
                // back is not the dead or draining holder spoken of a moment before.
                let on_since = st.and_then(|z| z.on_since(&p.eni));
                let current = |at: &Instant| on_since.is_none_or(|since| *at >= since);
                // A report that speaks against the peer (draining, unhealthy) from another
                // instance than the one the zone's lease now names is about a previous holder
                // of the ENI (a replacement claimed it since). A healthy report is what the
                // ENI's address answers now, whoever the lease names (a peer may carry the
                // zone).
                let same_holder = |r: &crate::health::Report| {
                    (r.healthy && !r.draining)
                        || holders
                            .get(&p.zone)
                            .is_none_or(|h| r.instance_id.is_empty() || *h == r.instance_id)
                };
                Gateway {
                    instance: p
                        .report
                        .as_ref()
                        .map(|(r, _)| r.instance_id.clone())
                        .filter(|id| !id.is_empty()),
                    report: p.report.as_ref().and_then(|(r, at)| {
                        (now.saturating_duration_since(*at) <= REPORT_FRESH
                            && current(at)
                            && same_holder(r))
                        .then_some(SelfReport {
                            healthy: r.healthy,
                            draining: r.draining,
                            at_risk: r.at_risk,
                        })
                    }),
                    api_gone: if p.icmp == Probe::Down {
                        st.and_then(|z| z.api_says.as_ref())
                            .filter(|(_, asked)| current(asked))
                            .and_then(|(why, _)| why.clone())
                    } else {
                        None
                    },
                    zone: p.zone,
                    eni: p.eni,
                    icmp: p.icmp,
                }
            })
            .collect();
        let empty = ZoneState::default();
        let zones = by_zone(&self.config, &self.tables)
            .into_iter()
            .filter(|(zone, _)| all_zones || f.enabled || *zone == self.own.zone)
            .map(|(zone, ts)| {
                let st = self.zones.get(&zone).unwrap_or(&empty);
                let facts: Vec<TableFact> = ts.iter().map(|t| t.fact()).collect();
                // A carrier renews only while it has a reason, so its lease is judged from
                // the moment this gateway began suspecting it, never from an older quiet time,
                // and only as far as a read that shows this gateway's witness reaches.
                let unrenewed = self
                    .suspected_since(&facts)
                    .map_or(Duration::ZERO, |at| st.lease_unrenewed_for(at));
                failover::Zone {
                    lease_unchanged_for: unrenewed,
                    recent_changes: st.recent_changes(now, f.damping_max()),
                    since_last_change: st.since_last_change(now),
                    blackhole_for: st.blackhole_for(now),
                    tables: facts,
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
                at_risk: self.at_risk.is_some(),
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
        for (zone, st) in &mut self.zones {
            if !waits.iter().any(|w| &w.zone == zone) {
                st.set_wait(None);
            }
        }
        for w in waits {
            let st = self.zones.entry(w.zone.clone()).or_default();
            if st.set_wait(Some((w.kind, w.reason.clone()))) {
                info!(zone = %w.zone, reason = %w.reason, "not acting");
            }
        }
    }

    /// Where the planned-exit watcher keeps the ASG lifecycle state for `status`.
    pub fn lifecycle_state(&self) -> super::exit::LifecycleState {
        Arc::clone(&self.lifecycle)
    }

    /// Detaches the zone's persistent ENI from this instance (gracefully), so the gateway that
    /// replaces it (a standby, during an instance refresh) can claim it at once instead of
    /// waiting for this instance to finish shutting down. Only after a drain that handed every
    /// route over, on the way out of a termination.
    pub async fn release_eni(&self) -> Result<(), CloudError> {
        let Some(eni) = self.ec2.describe_eni(&self.own.eni).await? else {
            return Ok(());
        };
        match eni.attachment {
            Some(a) if a.instance_id.as_deref() == Some(self.own.instance_id.as_str()) => {
                self.ec2.detach_eni(&a.id, false).await
            }
            _ => Ok(()),
        }
    }

    /// An advisory notice: nothing moves; `/health` says at risk, so peers choose this gateway
    /// last as a successor. `None` when the notice is gone.
    pub fn set_at_risk(&mut self, why: Option<String>) {
        match &why {
            Some(why) => {
                warn!(%why, "advisory notice: this instance may go; no route moves, this gateway becomes the last choice as a successor");
            }
            None if self.at_risk.is_some() => info!("advisory notice gone: no longer at risk"),
            None => {}
        }
        metrics::set(
            "gateway_agent_at_risk",
            &[],
            if why.is_some() { 1.0 } else { 0.0 },
        );
        self.at_risk = why;
        self.publish();
    }

    /// Asks the group to replace this instance (SetInstanceHealth Unhealthy), once.
    pub async fn request_replacement(&mut self) {
        self.ask_for_replacement_now().await;
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
        self.publish();
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

    /// Unit tests play the probes: no tasks are started for discovered peers.
    #[cfg(test)]
    pub fn without_probes(mut self) -> Self {
        self.probing = false;
        self
    }

    /// Unit tests set the own self-check's verdict.
    #[cfg(test)]
    pub fn own_feed(&self) -> Feed<OwnHealth> {
        Arc::clone(&self.own_feed)
    }

    /// Unit tests: a discovered peer's feed.
    #[cfg(test)]
    pub fn peer_feed(&self, zone: &str) -> Option<Feed<PeerView>> {
        self.peers.get(zone).map(|p| Arc::clone(&p._feed))
    }
}

fn zone_of(config: &Config, table: &RouteTable) -> Option<String> {
    config
        .routes
        .tables
        .iter()
        .find(|(_, ids)| ids.contains(&table.id))
        .map(|(z, _)| z.clone())
        .or_else(|| table.tags.get(ZONE_TAG).cloned())
}

fn by_zone<'t>(config: &Config, tables: &'t [RouteTable]) -> BTreeMap<String, Vec<&'t RouteTable>> {
    let mut zones: BTreeMap<String, Vec<&RouteTable>> = BTreeMap::new();
    for t in tables {
        if let Some(zone) = zone_of(config, t) {
            zones.entry(zone).or_default().push(t);
        }
    }
    zones
}

#[cfg(test)]
mod tests;
