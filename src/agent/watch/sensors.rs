//! What the loop knows without asking it: the own self-check, every peer's ICMP and `/health`,
//! each kept current by its own task and published on a watch channel (one per peer), so the
//! cycle reads the latest view without waiting on a probe; and the API's word on a silent peer.
//!
//! A task sends an [`Event`] the moment a rise/fall state changes, which starts a cycle at
//! once instead of at the next tick.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};
use tracing::{debug, error, info, warn};

use crate::cloud::{AttachmentStatus, Autoscaling, CloudError, Ec2, InstanceState};
use crate::config::ZONE_TAG;
use crate::decide::route::Probe;
use crate::health::{self, Report};
use crate::metrics;
use crate::probe::{self, Icmp, RiseFall, probe_loop};

/// How often a peer's `/health` is asked. Its answer only matters with ICMP (eligibility of a
/// successor, a dying peer's last word), so a slower pace than ICMP is enough.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
const HEALTH_TIMEOUT: Duration = Duration::from_millis(400);
/// systemd units are asked less often than ICMP targets: each check spawns systemctl.
const UNIT_CHECK_EVERY: Duration = Duration::from_secs(2);
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
    /// A peer's `/health` began or stopped saying it cannot hear this gateway.
    Deaf {
        zone: String,
        deaf: bool,
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

impl PeerView {
    pub fn new(zone: &str, eni: &str, ip: Ipv4Addr) -> Self {
        Self {
            zone: zone.to_owned(),
            eni: eni.to_owned(),
            ip,
            icmp: Probe::Unknown,
            losing_since: None,
            last_rtt: None,
            report: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OwnHealth {
    pub healthy: bool,
    pub since: Instant,
    pub detail: String,
}

/// Where a sensor publishes: shared by the tasks that feed one view (ICMP and `/health` for a
/// peer), and by unit tests that play the probes.
pub type Feed<T> = Arc<watch::Sender<T>>;

/// A spawned sensor, stopped when the loop lets go of it.
pub struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One peer: its latest view, and what keeps it current (the tasks; the feed, which unit
/// tests write to).
pub struct Peer {
    pub view: watch::Receiver<PeerView>,
    pub _feed: Feed<PeerView>,
    pub _tasks: Vec<Task>,
}

/// Starts the own self-check task. The boot self-check passed, so the gateway starts healthy
/// and must fail `fall` rounds to become unhealthy.
pub fn start_own_health(
    config: &crate::config::Config,
    feed: Feed<OwnHealth>,
    tx: mpsc::Sender<Event>,
) -> Result<Option<Task>, probe::Error> {
    let sc = &config.self_check;
    let targets = sc.targets();
    let units = sc.units.clone();
    if targets.is_empty() && units.is_empty() {
        return Ok(None);
    }
    let icmp = Icmp::new()?;
    let f = &config.failover;
    let (period, timeout) = (f.probe_interval(), sc.timeout());
    let mut rf = RiseFall::new(f.rise, f.fall);
    // Seed "up": boot's self-check just passed.
    for _ in 0..f.rise {
        rf.record(true);
    }
    Ok(Some(Task(tokio::spawn(async move {
        let mut ticker = interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut units_ok = (true, String::new());
        let mut units_at: Option<Instant> = None;
        loop {
            ticker.tick().await;
            let echoes = targets.iter().map(|t| {
                let icmp = &icmp;
                async move { (*t, icmp.echo(*t, timeout).await) }
            });
            let results = futures::future::join_all(echoes).await;
            if units_at.is_none_or(|at| at.elapsed() >= UNIT_CHECK_EVERY) {
                let verdicts =
                    futures::future::join_all(units.iter().map(|u| probe::unit_active(u))).await;
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
                feed.send_replace(OwnHealth {
                    healthy,
                    since: Instant::now(),
                    detail: if healthy {
                        "self-check passing".into()
                    } else {
                        detail.clone()
                    },
                });
                if healthy {
                    info!("own self-check passing again");
                } else {
                    warn!(failed = %detail, "own self-check failing: this gateway takes no traffic it cannot carry");
                }
                let _ = tx.send(Event::Own { healthy }).await;
            }
        }
    }))))
}

/// Starts the ICMP and `/health` tasks of a peer, probing from `own_ip` (the ENI address, so
/// the probes take the path the traffic does).
pub fn start_peer(
    config: &crate::config::Config,
    (own_zone, own_ip): (&str, Ipv4Addr),
    feed: &Feed<PeerView>,
    tx: &mpsc::Sender<Event>,
) -> Vec<Task> {
    let (zone, ip) = {
        let v = feed.borrow();
        (v.zone.clone(), v.ip)
    };
    let f = &config.failover;
    let icmp = match Icmp::bound(own_ip) {
        Ok(icmp) => Arc::new(icmp),
        Err(e) => {
            error!(%zone, error = %e, "cannot probe the peer: it will never be taken over from here");
            return Vec::new();
        }
    };
    let http = match health::Client::new(own_ip, f.health_port, HEALTH_TIMEOUT) {
        Ok(http) => http,
        Err(e) => {
            error!(%zone, error = %e, "cannot ask the peer's /health: it will never be taken over from here");
            return Vec::new();
        }
    };
    vec![
        Task(tokio::spawn(icmp_task(
            icmp,
            Arc::clone(feed),
            ip,
            (f.probe_interval(), f.probe_timeout()),
            (f.rise, f.fall),
            tx.clone(),
        ))),
        Task(tokio::spawn(health_task(
            http,
            Arc::clone(feed),
            ip,
            own_zone.to_owned(),
            tx.clone(),
        ))),
    ]
}

/// An ENI tagged into the group for a peer zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub eni: String,
    pub ip: Ipv4Addr,
    /// The instance EC2 shows holding it, if any.
    pub holder: Option<String>,
}

/// The group's ENIs as discovery found them.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Per peer zone, every candidate ENI in this gateway's VPC (more than one is suspect).
    pub peers: BTreeMap<String, Vec<Candidate>>,
    /// ENIs tagged into the group in another VPC (or none known): never watched.
    pub other_vpc: Vec<(String, String)>,
    /// Other ENIs tagged for this gateway's own zone: never watched.
    pub own_zone_others: Vec<String>,
}

/// The group's peer ENIs: tagged into the group (or configured by ID), in this gateway's own
/// VPC, one list of candidates per zone other than its own.
pub async fn discover<E: Ec2>(
    ec2: &E,
    config: &crate::config::Config,
    own: &super::Own,
) -> Result<Discovered, CloudError> {
    let group = config.group.name.as_str();
    let mut enis = ec2.find_enis(&[(crate::config::GROUP_TAG, group)]).await?;
    for id in config.eni.ids.values() {
        if !enis.iter().any(|e| &e.id == id)
            && let Some(eni) = ec2.describe_eni(id).await?
        {
            enis.push(eni);
        }
    }
    let mut out = Discovered::default();
    for eni in enis {
        if eni.id == own.eni {
            continue;
        }
        if eni.vpc_id != own.vpc_id {
            out.other_vpc.push((eni.id, eni.vpc_id));
            continue;
        }
        let zone = config
            .eni
            .ids
            .iter()
            .find(|(_, id)| **id == eni.id)
            .map(|(z, _)| z.clone())
            .or_else(|| eni.tags.get(ZONE_TAG).cloned())
            .unwrap_or_else(|| eni.az.clone());
        if zone == own.zone {
            // This zone's ENI is the one this gateway holds: another one tagged for it is not
            // a peer, only a claim nobody should have made.
            out.own_zone_others.push(eni.id);
            continue;
        }
        let Some(ip) = eni.private_ips.first().copied() else {
            warn!(eni = %eni.id, %zone, "peer ENI has no private address: not probed");
            continue;
        };
        let holder = eni.attachment.and_then(|a| a.instance_id);
        out.peers.entry(zone).or_default().push(Candidate {
            eni: eni.id,
            ip,
            holder,
        });
    }
    Ok(out)
}

/// Whether an ENI's holder may be trusted as one of the group's gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A running instance of an Auto Scaling group that carries the group tag.
    Member,
    /// A running instance outside every such group: whatever its tags say, not a gateway of
    /// ours. The reason names what was found.
    Stranger(String),
    /// Not running (or gone): it answers nothing, so watching it is harmless, and its zone's
    /// routes may need taking over.
    NotRunning,
}

/// What the API says of `instance`, asking only what `asgs` (Auto Scaling group name to
/// "carries the group tag") does not already know. An ENI's tags prove nothing (anyone allowed
/// to tag one can tag it into the group); the `aws:autoscaling:groupName` membership and the
/// group's own tag are set by whoever may manage the group.
pub async fn holder<E: Ec2, A: Autoscaling>(
    ec2: &E,
    asg: &A,
    group: &str,
    instance: &str,
    asgs: &mut BTreeMap<String, bool>,
) -> Result<Holder, CloudError> {
    match ec2.describe_instance(instance).await? {
        Some(i) if i.state == InstanceState::Running => {}
        _ => return Ok(Holder::NotRunning),
    }
    let Some(a) = asg.asg_instance(instance).await? else {
        return Ok(Holder::Stranger(format!(
            "instance {instance} is in no Auto Scaling group"
        )));
    };
    let tagged = match asgs.get(&a.group) {
        Some(t) => *t,
        None => {
            let t = asg
                .group_tag(&a.group, crate::config::GROUP_TAG)
                .await?
                .is_some_and(|v| v == group);
            asgs.insert(a.group.clone(), t);
            t
        }
    };
    Ok(if tagged {
        Holder::Member
    } else {
        Holder::Stranger(format!(
            "instance {instance}'s Auto Scaling group {} is not tagged {}={group}",
            a.group,
            crate::config::GROUP_TAG
        ))
    })
}

/// Why the API says `eni`'s gateway cannot carry traffic, or `None` if it says it can.
pub async fn gone<E: Ec2, A: Autoscaling>(
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

async fn icmp_task(
    icmp: Arc<Icmp>,
    feed: Feed<PeerView>,
    ip: Ipv4Addr,
    timing: (Duration, Duration),
    thresholds: (u32, u32),
    tx: mpsc::Sender<Event>,
) {
    let zone = feed.borrow().zone.clone();
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
        let mut began_losing = false;
        feed.send_modify(|p| {
            match r.result {
                Ok(rtt) => {
                    p.last_rtt = Some(*rtt);
                    p.losing_since = None;
                }
                Err(_) => {
                    began_losing = p.losing_since.is_none();
                    p.losing_since.get_or_insert(r.sent);
                }
            }
            p.icmp = r.state;
        });
        if began_losing && r.change.is_none() {
            // The first missed answer: the cycle renews the lease and tells the peer (through
            // /health) now, so a peer that suspects this gateway in turn finds it renewing.
            let _ = tx.try_send(Event::Peer {
                zone: zone.clone(),
                state: r.state,
            });
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

async fn health_task(
    http: health::Client,
    feed: Feed<PeerView>,
    ip: Ipv4Addr,
    own_zone: String,
    tx: mpsc::Sender<Event>,
) {
    let zone = feed.borrow().zone.clone();
    let mut deaf_to_us = false;
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
                // A peer that cannot hear this gateway may judge its lease: renew at once.
                let deaf = report.cannot_hear.contains(&own_zone);
                if deaf != deaf_to_us {
                    deaf_to_us = deaf;
                    if deaf {
                        warn!(%zone, "peer says it cannot hear this gateway: renewing the lease while it lasts");
                    } else {
                        info!(%zone, "peer hears this gateway again");
                    }
                    let _ = tx.try_send(Event::Deaf {
                        zone: zone.clone(),
                        deaf,
                    });
                }
                feed.send_modify(|p| p.report = Some((report, Instant::now())));
            }
            Err(e) => debug!(%zone, error = %e, "peer /health unanswered"),
        }
        // A tick that waited on a slow peer must not make the next ask come at once.
        sleep(Duration::ZERO).await;
    }
}
