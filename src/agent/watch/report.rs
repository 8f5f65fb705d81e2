//! What the loop tells the world: `/health` (through the report channel), metrics, the role,
//! `gateway-agent status`, and the history of its last decisions.

use tokio::time::Instant;

use super::{Watch, by_zone};
use crate::cloud::{Autoscaling, Ec2, RouteState, RouteTarget};
use crate::decide::failover::{Decision, WaitKind};
use crate::decide::lease::{self, LEASE_TAG};
use crate::decide::route::carrier;
use crate::metrics;

/// How many decisions `status` keeps.
const HISTORY: usize = 20;

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

impl<E: Ec2 + Sync, A: Autoscaling + Sync> Watch<'_, E, A> {
    pub(super) fn publish(&self) {
        let own = self.own_health.borrow().clone();
        let carries = self.carried();
        let draining = self.draining;
        let at_risk = self.at_risk.is_some();
        let role = self.role(&carries);
        let cannot_hear: Vec<String> = self
            .peer_views()
            .into_iter()
            // From the first missed probe, not only once it counts as down: the peer learns
            // it must renew while this gateway is still deciding whether it is silent.
            .filter(|p| p.icmp == crate::decide::route::Probe::Down || p.losing_since.is_some())
            .map(|p| p.zone)
            .collect();
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
                || r.role != role
                || r.cannot_hear != cannot_hear
                || r.at_risk != at_risk;
            r.role = role.to_owned();
            r.healthy = own.healthy;
            r.draining = draining;
            r.carries.clone_from(&carries);
            r.cannot_hear = cannot_hear;
            r.at_risk = at_risk;
            changed
        });
    }

    pub(super) fn record(&mut self, d: &Decision, result: &str, routes: usize) {
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(DecisionRecord {
            at_unix_ms: crate::agent::routes::unix_ms(),
            zone: d.zone.clone(),
            kind: d.kind.as_str().to_owned(),
            target: d.target.clone(),
            evidence: d.evidence.clone(),
            result: result.to_owned(),
            routes,
        });
    }

    /// Everything `gateway-agent status` shows, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let own = self.own_health.borrow().clone();
        let dests = &self.config.routes.destinations;
        let zones: Vec<serde_json::Value> = by_zone(&self.config, &self.tables)
            .into_iter()
            .map(|(zone, ts)| {
                let facts: Vec<_> = ts.iter().map(|t| t.fact()).collect();
                let carrier = carrier(&facts, dests).unwrap_or_default();
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
                let st = self.zones.get(&zone);
                serde_json::json!({
                    "zone": zone,
                    "carrier": carrier,
                    "carrier_zone": carrier_zone,
                    "carrier_since_s": st.and_then(|s| s.carrier.as_ref()).map(|(_, at)| now.saturating_duration_since(*at).as_secs()),
                    "lease": lease.map(|l| l.to_string()),
                    "recent_changes": st.map_or(0, |s| s.changes.len()),
                    "waiting": st.and_then(|s| s.wait.as_ref()).map(|(_, reason)| reason),
                    "tables": ts.iter().map(|t| serde_json::json!({
                        "id": t.id,
                        "routes": dests.iter().filter_map(|d| t.route(d)).map(|r| serde_json::json!({
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
                    "icmp": p.icmp.as_str(),
                    "last_rtt_ms": p.last_rtt.map(|d| d.as_secs_f64() * 1e3),
                    "health": p.report.as_ref().map(|(r, at)| serde_json::json!({
                        "healthy": r.healthy,
                        "draining": r.draining,
                        "carries": r.carries,
                        "age_ms": now.saturating_duration_since(*at).as_millis() as u64,
                    })),
                    "api_says": self.zones.get(&p.zone).and_then(|z| z.api_says.as_ref()).and_then(|(why, _)| why.clone()),
                })
            })
            .collect();
        serde_json::json!({
            "instance_id": self.own.instance_id,
            // This gateway's wall clock, for comparing with others' (leases and logs carry it).
            "unix_ms": crate::agent::routes::unix_ms(),
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
        by_zone(&self.config, &self.tables)
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
        self.zones
            .values()
            .filter_map(|z| z.wait.as_ref())
            .filter(|(kind, _)| *kind == WaitKind::NoHandoverTarget)
            .map(|(_, reason)| reason.clone())
            .collect()
    }
}
