//! Who should carry each zone, from what this gateway knows: the failover decision core.
//!
//! Facts in (route tables, peer probes, API evidence, lease ages, flap history, own health),
//! intended route writes out, each with the evidence that justified it, plus the reasons for
//! not acting where acting was conceivable (logged, so "why did nothing happen" has an answer).
//! No I/O and no clock: durations arrive as facts measured on the agent's monotonic clock.
//!
//! The rules, in the order they are checked:
//! - a route is *dead* when it reads `blackhole` (the API says its ENI is detached or its
//!   instance is not running), or when it points at a gateway that is down by probe (ICMP fell)
//!   **and** confirmed: the API says the instance or ENI is gone, or the gateway's own last
//!   `/health` said draining/unhealthy, or the zone's lease has not changed for `lease_ttl`, or
//!   the operator opted into ICMP-only confirmation;
//! - nothing is taken while this gateway's own self-check fails;
//! - this gateway's own zone: dead routes are reclaimed at once; routes held by a live peer
//!   come back only with `failback = auto`, after `hold_down` of continuous own health (doubled
//!   for every recent change of the zone, up to `damping_max`);
//! - another zone: dead routes are left to the zone's own gateway while it is eligible, and
//!   otherwise taken only by the designated successor: the first eligible zone after it in the
//!   ring. A takeover confirmed only by lease or self-report (not by the API) of a zone that
//!   changed hands recently also waits out the damped hold-down, so a flapping peer settles;
//! - every write names the target it expects to replace; the executor re-reads and skips any
//!   route that no longer matches (never overwrite a third party or a fresh reclaim).

use std::time::Duration;

use super::route::{Confirm, Failback};
pub use super::route::{Expect, Probe, RouteWrite};
use super::route::{TableFact, Target};

/// What a peer agent said about itself on `/health`, if it answered recently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfReport {
    pub healthy: bool,
    pub draining: bool,
    /// An advisory notice says its instance may go: the last choice as a successor.
    pub at_risk: bool,
}

/// One zone's gateway (whoever holds the zone's persistent ENI), as seen from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub zone: String,
    pub eni: String,
    /// Its instance, as its `/health` last said (the lease holder after a hand-over to it).
    pub instance: Option<String>,
    pub icmp: Probe,
    pub report: Option<SelfReport>,
    /// Why the API says it cannot carry traffic (instance not running, ENI detached, lifecycle
    /// Terminating); `None` when the API said nothing of the sort or was not asked.
    pub api_gone: Option<String>,
}

impl Gateway {
    /// Could take a zone: reachable, its agent answering, healthy and not leaving.
    fn eligible(&self) -> bool {
        self.icmp == Probe::Up && self.report.is_some_and(|r| r.healthy && !r.draining)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub zone: String,
    pub tables: Vec<TableFact>,
    /// Since the lease tag on the zone's tables last changed, as observed here.
    pub lease_unchanged_for: Duration,
    /// How often the zone changed carrier within the damping window.
    pub recent_changes: u32,
    /// Since the last change of carrier; `None` if none was seen.
    pub since_last_change: Option<Duration>,
    /// How long reads have shown the zone's routes as blackhole (zero if the last did not).
    pub blackhole_for: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub zone: String,
    pub eni: String,
    /// The own self-check passes (rise/fall applied).
    pub healthy: bool,
    /// How long it has passed without interruption.
    pub healthy_for: Duration,
    /// Leaving (planned exit): hands everything it carries to others and takes nothing.
    pub draining: bool,
    /// An advisory notice says this instance may go: the last choice as a successor.
    pub at_risk: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub confirm: Confirm,
    pub failback: Failback,
    pub hold_down: Duration,
    pub damping_max: Duration,
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub me: Me,
    /// Zones in successor order (the zone after Z is Z's first choice).
    pub ring: Vec<String>,
    /// Every other zone's gateway.
    pub peers: Vec<Gateway>,
    /// Every zone, this one included.
    pub zones: Vec<Zone>,
    pub destinations: Vec<String>,
    /// Destinations managed only where a route exists (conditional routes): a dead gateway's
    /// route for one is taken over like any other, a missing one is never created here.
    pub optional: Vec<String>,
    pub policy: Policy,
    /// An operator asked for this gateway's zone back now (`gateway-agent failback`): the
    /// hold-down and `failback = manual` are waived, the own health check is not.
    pub failback_now: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// This gateway's own zone, dead routes: at once.
    Reclaim,
    /// This gateway's own zone, back from a live peer after the hold-down.
    Failback,
    /// A dead peer's zone.
    TakeOver,
    /// Routes this gateway carries, to another gateway: it is draining or failing its
    /// self-check (make-before-break: the target already forwards).
    Handover,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reclaim => "reclaim",
            Self::Failback => "failback",
            Self::TakeOver => "takeover",
            Self::Handover => "handover",
        }
    }
}

/// Point `writes` of `zone` at `target`, because of `evidence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub zone: String,
    pub kind: Kind,
    pub writes: Vec<RouteWrite>,
    pub evidence: String,
    /// The carrier whose routes are taken, if one (a peer's ENI).
    pub from: Option<String>,
    /// The ENI the routes will point at: this gateway's, except for a hand-over.
    pub target: String,
    /// The instance that will carry the zone, when known (the lease holder of a hand-over).
    pub target_instance: Option<String>,
}

/// Why a rule said no, as a kind the agent can act on (`status`, a blocked drain); the text
/// beside it is what the log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitKind {
    /// Leaving or sick, and no healthy gateway to hand the zone to: its routes stay here.
    NoHandoverTarget,
    /// This gateway's self-check fails: it takes nothing.
    OwnSick,
    /// The zone changed hands recently; a move the API does not vouch for waits.
    Damping,
    /// Own zone held by a live peer, `failback = manual`.
    ManualFailback,
    /// Own zone held by a live peer, inside the (damped) hold-down.
    HoldDown,
    /// A peer is silent to ICMP but nothing confirms it dead.
    Unconfirmed,
    /// A peer's zone reads blackhole at the ENI of a gateway not silent to ICMP, not for long.
    Settling,
    /// Dead routes in a peer zone whose own gateway is healthy (its reclaim).
    OwnerHealthy,
    /// Dead routes in a peer zone that another zone is the successor for.
    NotSuccessor,
    /// Dead routes and no eligible successor at all.
    NoSuccessor,
}

/// A zone where acting was conceivable but a rule said no (logged when it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub zone: String,
    pub kind: WaitKind,
    pub reason: String,
}

impl Wait {
    fn new(zone: &Zone, kind: WaitKind, reason: String) -> Self {
        Self {
            zone: zone.zone.clone(),
            kind,
            reason,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub decisions: Vec<Decision>,
    pub waits: Vec<Wait>,
}

/// How one managed route stands.
enum Standing<'a> {
    Mine,
    Missing,
    /// Reads blackhole; the ENI it points at, if it points at one.
    Blackhole(Option<&'a str>),
    /// Points at a gateway that is down and confirmed dead, with the evidence.
    Dead(&'a str, String),
    /// Points at a gateway that is down by probe, but nothing confirms it.
    Unconfirmed(&'a str),
    /// Points at a live (or not yet probed) gateway's ENI.
    Live(&'a str),
    /// Not a gateway of this group: a third party's route.
    Foreign,
}

/// How long reads must show a peer's zone blackhole, at the ENI of a gateway whose probe is not
/// down, before the routes are taken: EC2's reads lag, so a gateway that has just claimed its
/// ENI is read blackhole for a while after its routes are live (a boot under lag took zones
/// that were never dead). A probe that finds the ENI silent confirms a blackhole at once.
pub const BLACKHOLE_SETTLE: Duration = Duration::from_secs(2);

pub fn decide(f: &Facts) -> Outcome {
    let mut out = Outcome::default();
    for zone in &f.zones {
        if f.me.draining || !f.me.healthy {
            hand_over(f, zone, &mut out);
        }
        if f.me.draining {
            continue;
        }
        if zone.zone == f.me.zone {
            own_zone(f, zone, &mut out);
        } else {
            peer_zone(f, zone, &mut out);
        }
    }
    out
}

/// A leaving or sick gateway gives what it carries to the zone's owner if that one is
/// eligible, else to the zone's successor; never to nobody (a gateway with no healthier peer
/// keeps its routes: a failing gateway still beats a black hole).
fn hand_over(f: &Facts, zone: &Zone, out: &mut Outcome) {
    let mut mine = Vec::new();
    for table in &zone.tables {
        for (dest, _) in managed(f) {
            if let Standing::Mine = standing(f, zone, table, dest) {
                mine.push((&table.id, dest));
            }
        }
    }
    if mine.is_empty() {
        return;
    }
    let why = if f.me.draining {
        "draining (planned exit)"
    } else {
        "own self-check failing"
    };
    let owner = f.peers.iter().find(|g| g.zone == zone.zone && g.eligible());
    let to = owner.or_else(|| {
        successor_among(f, &zone.zone, false).and_then(|z| f.peers.iter().find(|g| g.zone == z))
    });
    let Some(to) = to else {
        out.waits.push(Wait::new(
            zone,
            WaitKind::NoHandoverTarget,
            format!(
                "{why}, but no healthy gateway to hand {} to: keeping its routes",
                zone.zone
            ),
        ));
        return;
    };
    let writes = mine
        .into_iter()
        .map(|(table, dest)| {
            RouteWrite::point(
                table,
                dest,
                Expect::Eni(f.me.eni.clone()),
                &to.eni,
                Kind::Handover.as_str(),
            )
        })
        .collect();
    out.decisions.push(Decision {
        zone: zone.zone.clone(),
        kind: Kind::Handover,
        writes,
        evidence: format!("{why}; handing to {} ({})", to.zone, to.eni),
        from: Some(f.me.eni.clone()),
        target: to.eni.clone(),
        target_instance: to.instance.clone(),
    });
}

/// Doubles per recent change: 1 change → hold_down, 2 → 2×, ... capped at `damping_max`.
pub fn damped_hold_down(policy: &Policy, recent_changes: u32) -> Duration {
    let doublings = recent_changes.saturating_sub(1).min(20);
    policy
        .hold_down
        .saturating_mul(1u32 << doublings)
        .min(policy.damping_max.max(policy.hold_down))
}

fn standing<'a>(f: &'a Facts, zone: &Zone, table: &'a TableFact, dest: &str) -> Standing<'a> {
    let Some(route) = table.routes.iter().find(|r| r.destination == dest) else {
        return Standing::Missing;
    };
    if route.blackhole {
        return Standing::Blackhole(match &route.target {
            Target::Eni(eni) => Some(eni),
            Target::Other(_) => None,
        });
    }
    let Target::Eni(eni) = &route.target else {
        return Standing::Foreign;
    };
    if *eni == f.me.eni {
        return Standing::Mine;
    }
    let Some(gw) = f.peers.iter().find(|g| g.eni == *eni) else {
        return Standing::Foreign;
    };
    if gw.icmp != Probe::Down {
        return Standing::Live(eni);
    }
    let mut evidence = Vec::new();
    if let Some(why) = &gw.api_gone {
        evidence.push(why.clone());
    }
    if let Some(r) = gw.report
        && (r.draining || !r.healthy)
    {
        evidence.push(format!(
            "its last /health said {}",
            if r.draining { "draining" } else { "unhealthy" }
        ));
    }
    if zone.lease_unchanged_for >= f.policy.lease_ttl {
        evidence.push(format!(
            "lease not renewed for {} ms (ttl {} ms)",
            zone.lease_unchanged_for.as_millis(),
            f.policy.lease_ttl.as_millis()
        ));
    }
    if evidence.is_empty() && f.policy.confirm == Confirm::Icmp {
        evidence.push("ICMP-only confirmation (failover.confirm = \"icmp\")".into());
    }
    if evidence.is_empty() {
        Standing::Unconfirmed(eni)
    } else {
        Standing::Dead(
            eni,
            format!(
                "{eni} ({}) fell silent to ICMP; {}",
                gw.zone,
                evidence.join("; ")
            ),
        )
    }
}

fn own_zone(f: &Facts, zone: &Zone, out: &mut Outcome) {
    let mut dead = Vec::new();
    let mut held = Vec::new();
    let mut evidence = Vec::new();
    let mut holder = None;
    let mut api_confirmed = true;
    for table in &zone.tables {
        for (dest, optional) in managed(f) {
            let write = |expect, kind: Kind| {
                RouteWrite::point(&table.id, dest, expect, &f.me.eni, kind.as_str())
            };
            match standing(f, zone, table, dest) {
                Standing::Mine | Standing::Foreign => {}
                Standing::Missing if optional => {}
                Standing::Missing => {
                    dead.push(write(Expect::Missing, Kind::Reclaim));
                    push_unique(&mut evidence, "route missing".into());
                }
                Standing::Blackhole(_) => {
                    dead.push(write(Expect::Blackhole, Kind::Reclaim));
                    push_unique(&mut evidence, "route reads blackhole".into());
                }
                Standing::Dead(eni, why) => {
                    api_confirmed &= f.peers.iter().any(|g| g.eni == eni && g.api_gone.is_some());
                    dead.push(write(Expect::Eni(eni.to_owned()), Kind::Reclaim));
                    push_unique(&mut evidence, format!("held by a dead gateway: {why}"));
                }
                Standing::Unconfirmed(eni) | Standing::Live(eni) => {
                    held.push(write(Expect::Eni(eni.to_owned()), Kind::Failback));
                    holder.get_or_insert(eni);
                }
            }
        }
    }
    if dead.is_empty() && held.is_empty() {
        return;
    }
    if !f.me.healthy {
        out.waits.push(Wait::new(
            zone,
            WaitKind::OwnSick,
            "own self-check failing: not taking traffic back".into(),
        ));
        return;
    }
    if !dead.is_empty()
        && !api_confirmed
        && let Some(reason) = damped(&f.policy, zone)
    {
        out.waits.push(Wait::new(zone, WaitKind::Damping, reason));
    } else if !dead.is_empty() {
        out.decisions.push(Decision {
            zone: zone.zone.clone(),
            kind: Kind::Reclaim,
            writes: dead,
            evidence: evidence.join("; "),
            from: None,
            target: f.me.eni.clone(),
            target_instance: None,
        });
    }
    let Some(holder) = holder else { return };
    if f.policy.failback == Failback::Manual && !f.failback_now {
        out.waits.push(Wait::new(
            zone,
            WaitKind::ManualFailback,
            format!(
                "held by {holder}; failback = manual: run `gateway-agent failback` to take it back"
            ),
        ));
        return;
    }
    let hold = damped_hold_down(&f.policy, zone.recent_changes);
    // Health counts from when this gateway saw its zone go, too: one that was frozen (SIGSTOP,
    // a stalled hypervisor) has been "healthy" all along by its own clock.
    let healthy_for =
        f.me.healthy_for
            .min(zone.since_last_change.unwrap_or(Duration::MAX));
    if healthy_for < hold && !f.failback_now {
        out.waits.push(Wait::new(
            zone,
            WaitKind::HoldDown,
            format!(
                "held by {holder}; failback after {} s of continuous health ({} s so far, {} recent change(s))",
                hold.as_secs(),
                healthy_for.as_secs(),
                zone.recent_changes
            ),
        ));
        return;
    }
    out.decisions.push(Decision {
        zone: zone.zone.clone(),
        kind: Kind::Failback,
        writes: held,
        evidence: if f.failback_now {
            format!("own zone held by {holder}; an operator asked for it back")
        } else {
            format!(
                "own zone held by {holder}; healthy for {} s (hold-down {} s)",
                healthy_for.as_secs(),
                hold.as_secs()
            )
        },
        from: Some(holder.to_owned()),
        target: f.me.eni.clone(),
        target_instance: None,
    });
}

fn peer_zone(f: &Facts, zone: &Zone, out: &mut Outcome) {
    let mut dead = Vec::new();
    let mut evidence = Vec::new();
    let mut from = None;
    let mut api_confirmed = true;
    let mut unconfirmed = None;
    let mut settling = None;
    for table in &zone.tables {
        for (dest, _) in managed(f) {
            let write = |expect| RouteWrite::point(&table.id, dest, expect, &f.me.eni, "takeover");
            match standing(f, zone, table, dest) {
                Standing::Blackhole(eni) => {
                    let answering = eni.and_then(|e| f.peers.iter().find(|g| g.eni == e));
                    if let Some(g) = answering
                        && g.icmp != Probe::Down
                        && zone.blackhole_for < BLACKHOLE_SETTLE
                    {
                        settling.get_or_insert(g.eni.as_str());
                        continue;
                    }
                    dead.push(write(Expect::Blackhole));
                    if let Some(eni) = eni {
                        from.get_or_insert(eni.to_owned());
                    }
                    push_unique(&mut evidence, "route reads blackhole".into());
                }
                Standing::Dead(eni, why) => {
                    let by_api = f.peers.iter().any(|g| g.eni == eni && g.api_gone.is_some());
                    api_confirmed &= by_api;
                    dead.push(write(Expect::Eni(eni.to_owned())));
                    from.get_or_insert(eni.to_owned());
                    push_unique(&mut evidence, why);
                }
                Standing::Unconfirmed(eni) => {
                    unconfirmed.get_or_insert(eni);
                }
                // A missing route in a peer's zone is its owner's to create.
                Standing::Mine | Standing::Missing | Standing::Live(_) | Standing::Foreign => {}
            }
        }
    }
    if dead.is_empty() {
        if let Some(eni) = settling {
            out.waits.push(Wait::new(
                zone,
                WaitKind::Settling,
                format!(
                    "routes read blackhole at {eni}, whose gateway is not silent to ICMP: a \
                     lagging read until reads agree for {} s or the probe finds it silent",
                    BLACKHOLE_SETTLE.as_secs()
                ),
            ));
        } else if let Some(eni) = unconfirmed {
            out.waits.push(Wait::new(
                zone,
                WaitKind::Unconfirmed,
                format!(
                    "{eni} does not answer ICMP, but nothing confirms it is dead (the API says \
                     it runs; its lease has not yet gone lease_ttl_ms unchanged since this \
                     gateway began suspecting it): a partition, not a death, until something \
                     does; not acting"
                ),
            ));
        }
        return;
    }
    let wait = |kind, reason: String| Wait::new(zone, kind, reason);
    if !f.me.healthy {
        out.waits.push(wait(
            WaitKind::OwnSick,
            "dead routes, but own self-check failing: not taking traffic it cannot carry".into(),
        ));
        return;
    }
    if let Some(owner) = f.peers.iter().find(|g| g.zone == zone.zone)
        && owner.eligible()
    {
        out.waits.push(wait(
            WaitKind::OwnerHealthy,
            format!(
                "dead routes, but the zone's own gateway ({}) is healthy: its reclaim",
                owner.eni
            ),
        ));
        return;
    }
    match successor(f, &zone.zone) {
        Some(s) if s == f.me.zone => {}
        Some(s) => {
            out.waits.push(wait(
                WaitKind::NotSuccessor,
                format!("dead routes; the designated successor is {s}, not this gateway"),
            ));
            return;
        }
        None => {
            out.waits.push(wait(
                WaitKind::NoSuccessor,
                "dead routes; no eligible successor (this gateway is not in the ring?)".into(),
            ));
            return;
        }
    }
    if !api_confirmed && let Some(reason) = damped(&f.policy, zone) {
        out.waits.push(wait(WaitKind::Damping, reason));
        return;
    }
    out.decisions.push(Decision {
        zone: zone.zone.clone(),
        kind: Kind::TakeOver,
        writes: dead,
        evidence: evidence.join("; "),
        from,
        target: f.me.eni.clone(),
        target_instance: None,
    });
}

/// `gateway-agent failover ZONE`: the zone's routes that point at another gateway (or read
/// blackhole) come here now; a third party's route is never taken, and a draining or (without
/// `force`) sick gateway refuses.
pub fn manual(f: &Facts, zone: &str, force: bool) -> Result<Decision, String> {
    if zone == f.me.zone {
        return Err(format!(
            "{zone} is this gateway's own zone: use `gateway-agent failback`"
        ));
    }
    if f.me.draining {
        return Err("this gateway is draining: undrain it first".into());
    }
    if !f.me.healthy && !force {
        return Err("the own self-check fails: this gateway may not carry the traffic; add --force to take it anyway".into());
    }
    let mut writes = Vec::new();
    let mut from = None;
    for table in f
        .zones
        .iter()
        .filter(|z| z.zone == zone)
        .flat_map(|z| &z.tables)
    {
        for dest in &f.destinations {
            let Some(r) = table.route(dest) else { continue };
            let expect = match &r.target {
                _ if r.blackhole => Expect::Blackhole,
                Target::Eni(id) if *id == f.me.eni => continue,
                Target::Eni(id) => {
                    from.get_or_insert(id.clone());
                    Expect::Eni(id.clone())
                }
                Target::Other(_) => continue,
            };
            writes.push(RouteWrite::point(
                &table.id, dest, expect, &f.me.eni, "takeover",
            ));
        }
    }
    if writes.is_empty() {
        return Err(format!(
            "nothing to take in {zone}: no managed route there points at another gateway (unknown zone, or already here)"
        ));
    }
    Ok(Decision {
        zone: zone.to_owned(),
        kind: Kind::TakeOver,
        writes,
        evidence: format!(
            "manual failover requested by an operator{}",
            if force { " (--force)" } else { "" }
        ),
        from,
        target: f.me.eni.clone(),
        target_instance: None,
    })
}

/// Why a move the API does not vouch for (lease, self-report or ICMP-only evidence) must wait:
/// the zone changed hands recently. Two gateways that each believe the other dead (a partition
/// with ICMP-only confirmation) then move each zone at most once per damped hold-down.
fn damped(policy: &Policy, zone: &Zone) -> Option<String> {
    if zone.recent_changes == 0 {
        return None;
    }
    let hold = damped_hold_down(policy, zone.recent_changes);
    let since = zone.since_last_change.unwrap_or(Duration::MAX);
    (since < hold).then(|| {
        format!(
            "flap damping: {} change(s) recently, the last {} s ago; the next move without API \
             evidence after {} s",
            zone.recent_changes,
            since.as_secs(),
            hold.as_secs()
        )
    })
}

/// The first zone after `zone` in the ring whose gateway could carry it: this one if healthy,
/// a peer if eligible. Zones missing from the ring come after it, sorted.
pub fn successor<'a>(f: &'a Facts, zone: &str) -> Option<&'a str> {
    successor_among(f, zone, true)
}

/// Like [`successor`], with this gateway left out unless `include_me`.
fn successor_among<'a>(f: &'a Facts, zone: &str, include_me: bool) -> Option<&'a str> {
    let mut ring: Vec<&str> = f.ring.iter().map(String::as_str).collect();
    let mut rest: Vec<&str> = f
        .zones
        .iter()
        .map(|z| z.zone.as_str())
        .chain(std::iter::once(f.me.zone.as_str()))
        .filter(|z| !ring.contains(z))
        .collect();
    rest.sort_unstable();
    rest.dedup();
    ring.extend(rest);
    let start = ring.iter().position(|z| *z == zone)?;
    let eligible = |z: &&str| {
        if *z == f.me.zone {
            include_me && f.me.healthy && !f.me.draining
        } else {
            f.peers.iter().any(|g| g.zone == *z && g.eligible())
        }
    };
    let at_risk = |z: &&str| {
        if *z == f.me.zone {
            f.me.at_risk
        } else {
            f.peers
                .iter()
                .any(|g| g.zone == *z && g.report.is_some_and(|r| r.at_risk))
        }
    };
    let mut order = (1..ring.len()).map(|i| ring[(start + i) % ring.len()]);
    // A gateway an advisory notice puts at risk carries others' zones only if nobody else can.
    order
        .clone()
        .filter(eligible)
        .find(|z| !at_risk(z))
        .or_else(|| order.find(eligible))
}

fn managed(f: &Facts) -> impl Iterator<Item = (&String, bool)> {
    f.destinations
        .iter()
        .map(|d| (d, false))
        .chain(f.optional.iter().map(|d| (d, true)))
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
