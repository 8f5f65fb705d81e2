//! What an operator asks over the control socket, run between cycles; the answer goes back
//! over the socket.

use tokio::time::Instant;
use tracing::{info, warn};

use super::Watch;
use crate::cloud::{Autoscaling, Ec2};
use crate::control::Command;
use crate::decide::failover;

impl<E: Ec2 + Sync, A: Autoscaling + Sync> Watch<'_, E, A> {
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
            Command::Failback { zone } => self.failback(zone).await,
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
                crate::metrics::set("gateway_agent_paused", &[], 1.0);
                warn!("automation paused by an operator: deciding and logging, writing no route");
                Ok(
                    "paused: decisions are logged, no route is written; leases are still renewed"
                        .into(),
                )
            }
            Command::Resume => {
                self.paused = false;
                crate::metrics::set("gateway_agent_paused", &[], 0.0);
                info!("automation resumed by an operator");
                Ok("resumed".into())
            }
            Command::Status => Ok(self.status().to_string()),
        }
    }

    /// `gateway-agent failback`: the own zone back now, hold-down and `failback = manual`
    /// waived (the own health check is not).
    async fn failback(&mut self, zone: Option<String>) -> Result<String, String> {
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
        if self.carried().contains(&own) {
            Ok(format!(
                "{own} is carried by {} (this gateway)",
                self.own.eni
            ))
        } else {
            Err(self
                .zones
                .get(&own)
                .and_then(|z| z.wait.as_ref())
                .map(|(_, reason)| reason.clone())
                .unwrap_or_else(|| format!("{own} is not carried here yet; see the agent's log")))
        }
    }

    /// `gateway-agent failover ZONE`: decided by [`failover::manual`] on a fresh read.
    async fn manual_failover(&mut self, zone: &str, force: bool) -> Result<String, String> {
        self.tables = self
            .read_tables()
            .await
            .map_err(|e| format!("cannot read the route tables: {e}"))?;
        let d = failover::manual(&self.facts(Instant::now(), true), zone, force)?;
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
}
