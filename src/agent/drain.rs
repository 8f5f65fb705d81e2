//! A drain: hand every route this gateway carries to a healthy peer (it writes them itself,
//! pointing at the peer's ENI, which already forwards: make-before-break), keep forwarding for
//! the grace time, complete the termination lifecycle action, and leave.

use std::time::Duration;

use tokio::time::{Instant, sleep};
use tracing::{error, info, warn};

use super::watch::Watch;
use super::{Supervisor, lifecycle};
use crate::cloud::{Autoscaling, Ec2, LifecycleResult};
use crate::config::Config;
use crate::events::Exit;
use crate::imds::Identity;
use crate::{hook, metrics, systemd};

/// Between drain cycles: a hand-over is a read and a few writes, so a quick pace costs little
/// and shortens the time routes and lease disagree.
const PACE: Duration = Duration::from_millis(200);
/// CompleteLifecycleAction after the drain: the instance is going; a few retries, no more.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(20);

pub(super) async fn run<E: Ec2 + Sync, A: Autoscaling + Sync>(
    supervisor: &mut Supervisor,
    config: &Config,
    identity: &Identity,
    asg: &A,
    watch: &mut Watch<'_, E, A>,
    exit: &Exit,
    deadline: Instant,
) {
    let started = Instant::now();
    let kind = exit.kind.as_str();
    watch.set_draining(true);
    warn!(
        kind,
        reason = %exit.reason,
        deadline_s = deadline.saturating_duration_since(started).as_secs(),
        "draining: handing every route to a healthy peer before leaving"
    );
    systemd::status(&format!("draining ({kind}): handing routes to peers"));
    let event = |name: &str, reason: &str| {
        hook::emit(
            &config.events,
            &hook::Event {
                event: name,
                zone: &identity.availability_zone,
                from: "-",
                to: "-",
                reason,
            },
        );
    };
    event("drain-start", &exit.reason);
    let action = match supervisor
        .finish(lifecycle::pending_termination(identity, asg, deadline))
        .await
    {
        Ok(action) => action,
        Err(e) => {
            warn!(error = %e, "cannot look up the termination lifecycle action; draining anyway");
            None
        }
    };
    let work = async {
        let mut stuck_said = None;
        loop {
            watch.cycle().await;
            let carried = watch.carried();
            if carried.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let stuck = watch.stuck();
            if !stuck.is_empty() && stuck_said.as_ref() != Some(&stuck) {
                error!(zones = %carried.join(","), why = %stuck.join("; "), "drain blocked: no healthy peer to take the routes; they stay here until one appears or the deadline passes");
                metrics::set("gateway_agent_drain_blocked", &[], 1.0);
                event("drain-blocked", &stuck.join("; "));
                systemd::status(&format!(
                    "draining ({kind}) BLOCKED: {}; routes stay here until the deadline",
                    stuck.join("; ")
                ));
                stuck_said = Some(stuck);
            }
            sleep(PACE).await;
        }
    };
    let heartbeat = config.lifecycle.heartbeat_interval();
    let moved = supervisor
        .finish(lifecycle::with_heartbeats(
            action.as_ref(),
            asg,
            heartbeat,
            work,
        ))
        .await;
    let drained = started.elapsed();
    metrics::set("gateway_agent_drain_blocked", &[], 0.0);
    event(
        "drain-complete",
        &if moved {
            format!("every route handed over in {} ms", drained.as_millis())
        } else {
            "deadline reached with routes still here".to_owned()
        },
    );
    if moved {
        info!(
            kind,
            drain_ms = drained.as_millis() as u64,
            grace_s = config.drain.grace().as_secs(),
            "drain complete: every route handed over; forwarding in-flight traffic for the grace time"
        );
        systemd::status(&format!(
            "drained ({kind}) in {:.1} s; grace {} s before leaving",
            drained.as_secs_f64(),
            config.drain.grace().as_secs()
        ));
        supervisor.finish(sleep(config.drain.grace())).await;
    } else {
        error!(
            kind,
            zones = %watch.carried().join(","),
            "drain deadline reached with routes still here (no healthy peer took them): leaving them in place"
        );
        systemd::status(&format!(
            "drain ({kind}) gave up at its deadline: no healthy peer; routes left in place"
        ));
    }
    if action.is_some() && moved {
        // The instance is being terminated: its replacement may be standing by for the ENI.
        match supervisor.finish(watch.release_eni()).await {
            Ok(()) => info!("persistent ENI detached from this instance for its replacement"),
            Err(e) => {
                warn!(error = %e, "cannot detach the persistent ENI; the replacement takes it once this instance has shut down")
            }
        }
    }
    if let Some(action) = &action {
        let done = lifecycle::complete(
            asg,
            action,
            LifecycleResult::Continue,
            Instant::now() + COMPLETE_TIMEOUT,
        );
        if let Err(e) = supervisor.finish(done).await {
            error!(error = %e, "cannot complete the termination lifecycle action; the hook's timeout will");
        }
    }
}
