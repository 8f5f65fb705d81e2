//! A failover decision carried out: the claim (a lease with a larger epoch), the writes
//! through the route executor, and what follows a confirmed move (metrics, the event hook,
//! STATUS, the history, asking for a replacement after a demotion).

use tokio::time::Instant;
use tracing::{info, warn};

use super::Watch;
use crate::agent::routes::{self, Batch, LeaseAt, Stopped, unix_ms};
use crate::cloud::{Autoscaling, Ec2, Priority, RouteTable, spend_as};
use crate::decide::failover::{Decision, Kind};
use crate::decide::lease::{self, LEASE_TAG, Lease};
use crate::{hook, metrics};

/// A decision ready to write: what [`Watch::finish`] needs once its writes are done.
struct Prepared {
    decided: Instant,
    epoch: u64,
    value: String,
    detection: Option<std::time::Duration>,
    /// What each route read before this write, to know a read that lags behind it.
    was: Vec<Option<String>>,
    /// Every table of the zone.
    ids: Vec<String>,
    fresh: Option<Vec<RouteTable>>,
    priority: Priority,
}

impl<E: Ec2 + Sync, A: Autoscaling + Sync> Watch<'_, E, A> {
    /// Claims the zone, re-reads, writes what still matches, confirms. `false` when
    /// something is left for the next cycle.
    /// The holder a hand-over to `eni` names in the lease: the instance its `/health` reported,
    /// only when EC2 says that instance is the one attached to `eni` (a peer's word about
    /// itself is no proof: any host that answers on its address could claim any instance);
    /// else the ENI, which the receiver also adopts. One DescribeNetworkInterfaces per
    /// hand-over, which are rare.
    async fn receiver(&self, eni: &str, reported: Option<&str>) -> String {
        let Some(reported) = reported.filter(|r| lease::valid_holder(r)) else {
            return eni.to_owned();
        };
        match self.ec2.describe_eni(eni).await {
            Ok(Some(e))
                if e.attachment.as_ref().and_then(|a| a.instance_id.as_deref())
                    == Some(reported) =>
            {
                reported.to_owned()
            }
            Ok(found) => {
                let attached = found
                    .and_then(|e| e.attachment)
                    .and_then(|a| a.instance_id)
                    .unwrap_or_else(|| "nothing".into());
                warn!(%eni, reported, %attached, "the peer's /health names an instance EC2 does not show on its ENI: the lease names the ENI");
                eni.to_owned()
            }
            Err(e) => {
                warn!(%eni, error = %e, "DescribeNetworkInterfaces failed: the hand-over's lease names the ENI, not the instance /health reported");
                eni.to_owned()
            }
        }
    }

    pub(super) async fn execute(&mut self, d: &Decision) -> bool {
        self.execute_all(&[d]).await[0]
    }

    /// Carries out the decisions of one cycle: each is prepared (its claim and log line) in
    /// turn, then all are written and confirmed at once, so the second zone a gateway takes
    /// does not wait out the first one's confirming reads (EC2's read lag); then each is
    /// finished in turn. One `bool` per decision, as [`Self::execute`] answers.
    pub(super) async fn execute_all(&mut self, ds: &[&Decision]) -> Vec<bool> {
        let mut prepared = Vec::with_capacity(ds.len());
        for d in ds {
            prepared.push(self.prepare(d).await);
        }
        let ec2 = self.ec2;
        let results =
            futures::future::join_all(ds.iter().zip(&prepared).map(|(d, p)| async move {
                let table_ids: Vec<&str> = p.ids.iter().map(String::as_str).collect();
                let batch = Batch {
                    label: &d.zone,
                    tables: &table_ids,
                    lease: Some((&p.value, LeaseAt::Alongside)),
                    fresh: p.fresh.as_deref(),
                };
                spend_as(p.priority, routes::execute(ec2, &batch, &d.writes)).await
            }))
            .await;
        let mut out = Vec::with_capacity(ds.len());
        for ((d, p), result) in ds.iter().zip(prepared).zip(results) {
            out.push(self.finish(d, p, result).await);
        }
        out
    }

    /// Everything before the writes: the epoch, the lease value, the decision's log line.
    async fn prepare(&mut self, d: &Decision) -> Prepared {
        // A decision retried after a failed write is timed from its first attempt.
        let decided = *self
            .zones
            .entry(d.zone.clone())
            .or_default()
            .deciding
            .get_or_insert_with(Instant::now);
        let zone_tables: Vec<&RouteTable> = self
            .tables
            .iter()
            .filter(|t| super::zone_of(&self.config, t).as_deref() == Some(d.zone.as_str()))
            .collect();
        let ids: Vec<String> = zone_tables.iter().map(|t| t.id.clone()).collect();
        // Never below an epoch seen or written before: a lagging read may show an older lease.
        let epoch = lease::claim_epoch(
            lease::newest(
                zone_tables
                    .iter()
                    .filter_map(|t| t.tags.get(LEASE_TAG))
                    .map(String::as_str),
            )
            .as_ref(),
        )
        .max(lease::next(
            self.zones.get(&d.zone).map_or(0, |z| z.epoch_high),
        ));
        // This gateway's claims carry its instance; a hand-over names the receiver (the
        // instance EC2 says holds its ENI, else its ENI) so the receiver adopts the epoch.
        let holder = if d.target == self.own.eni {
            self.own.instance_id.clone()
        } else {
            self.receiver(&d.target, d.target_instance.as_deref()).await
        };
        let value = Lease {
            holder,
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
        // What each route read before this write, to know a read that lags behind it.
        let was: Vec<Option<String>> = d
            .writes
            .iter()
            .map(|w| {
                zone_tables
                    .iter()
                    .find(|t| t.id == w.table)
                    .and_then(|t| t.route(&w.destination))
                    .map(|r| r.fact().reads().to_owned())
            })
            .collect();
        // A decision made on a read of a moment ago is written at once: another read first
        // would only add its round trip to the takeover (and, lagging, show nothing newer).
        let fresh: Option<Vec<RouteTable>> = self
            .read_at
            .is_some_and(|at| at.elapsed() <= super::FRESH_ENOUGH)
            .then(|| zone_tables.iter().map(|t| (*t).clone()).collect());
        // A dead peer's zone, or the own zone's dead routes, carry no traffic until written:
        // they spend first; a failback or a hand-over moves routes that still work.
        let priority = match d.kind {
            Kind::TakeOver | Kind::Reclaim => Priority::Takeover,
            Kind::Failback | Kind::Handover => Priority::HandBack,
        };
        Prepared {
            decided,
            epoch,
            value,
            detection,
            was,
            ids,
            fresh,
            priority,
        }
    }

    /// Everything after the writes: the claim remembered, the view updated, the move's
    /// metrics, event and STATUS. `false` when something is left for the next cycle.
    async fn finish(
        &mut self,
        d: &Decision,
        p: Prepared,
        result: Result<routes::Executed<'_>, Stopped>,
    ) -> bool {
        let Prepared {
            decided,
            epoch,
            detection,
            was,
            ..
        } = p;
        let done = match result {
            Ok(done) => done,
            Err(stopped) => {
                if matches!(stopped, Stopped::Confirm(_)) {
                    self.claimed(d, epoch);
                }
                self.trouble(stopped.error(), stopped.doing());
                return false;
            }
        };
        if done.attempted() == 0 {
            // Every route changed since the decision: nothing was claimed or written; the
            // next cycle decides from what is there now.
            self.record(d, "skipped: every route changed since the decision", 0);
            return true;
        }
        self.claimed(d, epoch);
        let confirmed = done.confirmed;
        let wanted = done.attempted();
        let complete = done.complete();
        for t in done.after {
            if let Some(old) = self.tables.iter_mut().find(|x| x.id == t.id) {
                *old = t;
            }
        }
        let switched = decided.elapsed();
        metrics::add(
            "gateway_agent_route_changes_total",
            &[("kind", d.kind.as_str())],
            confirmed as f64,
        );
        if !complete {
            warn!(zone = %d.zone, confirmed, wanted, "not every route confirmed; trying again");
            self.record(d, "partial: trying again", confirmed);
            return false;
        }
        let now = Instant::now();
        for (w, was) in d.writes.iter().zip(was) {
            if let (Some(to), Some(was)) = (&w.to, was) {
                self.written.insert(
                    (w.table.clone(), w.destination.clone()),
                    super::Written {
                        to: to.clone(),
                        was,
                        at: now,
                    },
                );
            }
        }
        if let Some(st) = self.zones.get_mut(&d.zone) {
            st.deciding = None;
            // This gateway's own confirmed write is a move, whatever lagging reads show next.
            st.moved_by_own_write(d.target.clone(), now, self.config.failover.damping_max());
        }
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
    }

    /// The claim went out: a hand-over forgets the zone's epoch (the receiver renews), any
    /// other claim remembers it.
    fn claimed(&mut self, d: &Decision, epoch: u64) {
        let st = self.zones.entry(d.zone.clone()).or_default();
        st.epoch_high = st.epoch_high.max(epoch);
        if d.kind == Kind::Handover {
            st.epoch = None;
        } else {
            st.epoch = Some(epoch);
            st.let_go = None;
        }
    }

    /// After a demotion, with `drain.set_unhealthy`: tell the ASG this instance is unhealthy,
    /// so it is replaced rather than left sick (once; the ASG takes it from there).
    async fn ask_for_replacement(&mut self) {
        if !self.config.drain.set_unhealthy {
            return;
        }
        self.ask_for_replacement_now().await;
    }

    pub(super) async fn ask_for_replacement_now(&mut self) {
        if self.reported_unhealthy || self.config.dry_run {
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
}
