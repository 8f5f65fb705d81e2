//! Conditional routes in the run loop: one probe task per `[[conditional]]` rule, and the
//! writes [`crate::decide::conditional`] plans each cycle.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::boot::table_fact;
use super::watch::{Event, probe_loop};
use crate::cloud::{Ec2, RouteTable};
use crate::config::{Conditional, Events, Failover};
use crate::decide::conditional::{self, Action, Rule};
use crate::decide::failover::Probe;
use crate::probe::Icmp;
use crate::{hook, metrics};

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
            tables: tables.iter().map(|t| table_fact(t)).collect(),
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
        let writes = plan.actions.iter().map(|a| async move {
            let result = match a {
                Action::Add {
                    table,
                    destination,
                    create: true,
                } => ec2.create_route(table, destination, own_eni).await,
                Action::Add {
                    table, destination, ..
                } => ec2.replace_route(table, destination, own_eni).await,
                Action::Remove { table, destination } => ec2.delete_route(table, destination).await,
            };
            (a, result)
        });
        let mut ok = true;
        let probe = self.config.probe.as_str();
        for (a, result) in futures::future::join_all(writes).await {
            let (table, destination, added) = match a {
                Action::Add {
                    table, destination, ..
                } => (table, destination, true),
                Action::Remove { table, destination } => (table, destination, false),
            };
            if let Err(e) = result {
                warn!(rule = %rule.name, error = %e, "conditional route write failed; the next cycle decides again");
                ok = false;
                continue;
            }
            metrics::inc(
                "gateway_agent_route_changes_total",
                &[("kind", "conditional")],
            );
            let reason = if added {
                format!(
                    "{}: {destination} in {table} via this gateway while {probe} is silent",
                    rule.name
                )
            } else {
                format!(
                    "{}: {destination} removed from {table}: {probe} answers again",
                    rule.name
                )
            };
            info!(rule = %rule.name, %table, %destination, target = %own_eni, %reason, "{}", if added { "route switched" } else { "route removed" });
            hook::emit(
                events,
                &hook::Event {
                    event: if added {
                        "conditional-add"
                    } else {
                        "conditional-remove"
                    },
                    zone: table,
                    from: if added { "-" } else { own_eni },
                    to: if added { own_eni } else { "-" },
                    reason: &reason,
                },
            );
        }
        ok
    }
}
