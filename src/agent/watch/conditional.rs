//! Conditional routes in the run loop: one probe task per `[[conditional]]` rule, and the
//! writes [`crate::decide::conditional`] plans each cycle.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::sensors::Event;
use crate::agent::routes::{self, Batch};
use crate::cloud::{Ec2, Priority, RouteTable, spend_as};
use crate::config::{Conditional, Config, Events, Failover};
use crate::decide::conditional::{self, Rule};
use crate::decide::route::{Op, Probe};
use crate::probe::{Icmp, probe_loop};
use crate::{hook, metrics};

/// Starts one probe per conditional rule, from the ENI address `own_ip`.
pub fn start(
    config: &Config,
    own_ip: Ipv4Addr,
    tx: &mpsc::Sender<Event>,
) -> Result<Vec<RuleWatch>, crate::probe::Error> {
    if config.conditional.is_empty() {
        return Ok(Vec::new());
    }
    let icmp = Arc::new(Icmp::bound(own_ip)?);
    let mut rules = Vec::new();
    for rule in &config.conditional {
        let Some(target) = rule.target() else {
            continue;
        };
        info!(rule = %rule.label(), %target, destinations = ?rule.destinations, "watching a conditional route's target");
        rules.push(RuleWatch::start(
            rule.clone(),
            target,
            Arc::clone(&icmp),
            &config.failover,
            tx.clone(),
        ));
    }
    Ok(rules)
}

#[derive(Debug, Clone, Copy)]
struct TargetView {
    state: Probe,
    up_since: Option<Instant>,
}

/// One rule, its probe and its history.
pub struct RuleWatch {
    pub config: Conditional,
    view: Arc<Mutex<TargetView>>,
    /// When the rule's routes were added, within the damping window.
    activations: Vec<Instant>,
    active: bool,
    note: Option<String>,
    task: JoinHandle<()>,
}

impl Drop for RuleWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RuleWatch {
    /// Starts probing the rule's target from `icmp` (bound to the ENI address, so the probe
    /// takes the path the routed traffic would).
    pub fn start(
        config: Conditional,
        target: Ipv4Addr,
        icmp: Arc<Icmp>,
        failover: &Failover,
        tx: mpsc::Sender<Event>,
    ) -> Self {
        let view = Arc::new(Mutex::new(TargetView {
            state: Probe::Unknown,
            up_since: None,
        }));
        let shared = Arc::clone(&view);
        let rule = config.label();
        let task = tokio::spawn(probe_loop(
            icmp,
            target,
            (failover.probe_interval(), failover.probe_timeout()),
            (failover.rise, failover.fall),
            move |r| {
                let Some(state) = r.change else { return };
                {
                    let mut v = shared.lock().unwrap_or_else(|e| e.into_inner());
                    v.state = state;
                    v.up_since = (state == Probe::Up).then(Instant::now);
                }
                match state {
                    Probe::Down => {
                        warn!(rule = %rule, target = %target, "conditional route target silent: its routes go via this gateway")
                    }
                    _ => {
                        info!(rule = %rule, target = %target, state = ?state, "conditional route target")
                    }
                }
                let _ = tx.try_send(Event::Target {
                    rule: rule.clone(),
                    state,
                });
            },
        ));
        Self {
            config,
            view,
            activations: Vec::new(),
            active: false,
            note: None,
            task,
        }
    }

    /// The rule's target is silent: its routes are in play, so the tables are read at the
    /// fast cadence.
    pub fn target_down(&self) -> bool {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).state == Probe::Down
    }

    /// For `gateway-agent status`.
    pub fn status(&self) -> serde_json::Value {
        let view = *self.view.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "name": self.config.label(),
            "probe": self.config.probe,
            "destinations": self.config.destinations,
            "target": match view.state { Probe::Up => "up", Probe::Down => "down", Probe::Unknown => "unknown" },
            "active": self.active,
            "recent_activations": self.activations.len(),
        })
    }

    /// Plans and writes this rule's routes in `tables`; `false` when a write failed.
    pub async fn apply<E: Ec2 + Sync>(
        &mut self,
        ec2: &E,
        own_eni: &str,
        tables: &[&RouteTable],
        (hold_down, max): (Duration, Duration),
        events: &Events,
    ) -> bool {
        let view = *self.view.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        self.activations
            .retain(|at| now.saturating_duration_since(*at) < max);
        let rule = Rule {
            name: self.config.label(),
            destinations: self.config.destinations.clone(),
            tables: tables.iter().map(|t| t.fact()).collect(),
            target: view.state,
            up_for: view
                .up_since
                .map_or(Duration::ZERO, |at| now.saturating_duration_since(at)),
            recent_activations: u32::try_from(self.activations.len()).unwrap_or(u32::MAX),
        };
        let plan = conditional::plan(own_eni, &rule, hold_down, max);
        let note = (!plan.notes.is_empty()).then(|| plan.notes.join("; "));
        if note.is_some() && note != self.note {
            info!(rule = %rule.name, note = %note.as_deref().unwrap_or(""), "conditional route not changed");
        }
        self.note = note;
        if view.state == Probe::Down && !self.active {
            self.active = true;
            self.activations.push(now);
        } else if view.state == Probe::Up {
            self.active = false;
        }
        if plan.actions.is_empty() {
            return true;
        }
        let mut ids: Vec<&str> = plan.actions.iter().map(|w| w.table.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let batch = Batch {
            label: &rule.name,
            tables: &ids,
            lease: None,
            fresh: None,
        };
        // Routing around a failed target is as urgent as a takeover; undoing it is a hand-back.
        let priority = if self.active {
            Priority::Takeover
        } else {
            Priority::HandBack
        };
        let done = match spend_as(priority, routes::execute(ec2, &batch, &plan.actions)).await {
            Ok(done) => done,
            Err(stopped) => {
                warn!(rule = %rule.name, error = %stopped.error(), doing = stopped.doing(), "conditional route not written; the next cycle decides again");
                return false;
            }
        };
        for w in &done.written {
            metrics::inc(
                "gateway_agent_route_changes_total",
                &[("kind", "conditional")],
            );
            let added = w.op() != Op::Delete;
            hook::emit(
                events,
                &hook::Event {
                    event: if added {
                        "conditional-add"
                    } else {
                        "conditional-remove"
                    },
                    zone: &w.table,
                    from: if added { "-" } else { own_eni },
                    to: if added { own_eni } else { "-" },
                    reason: &w.reason,
                },
            );
        }
        done.complete()
    }
}
