//! Auto Scaling lifecycle actions. The launch action: found at boot, heartbeated while boot
//! runs, completed with CONTINUE when the gateway carries its zone, ABANDON when it cannot. The
//! termination action: found when a drain starts, heartbeated while it runs, completed with
//! CONTINUE once the routes are handed over (or at the drain's deadline).

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tracing::{info, warn};

use crate::cloud::{self, Autoscaling, LifecycleResult, LifecycleTransition};
use crate::config::Config;
use crate::imds::Identity;

/// The ASG state of an instance whose launch hook waits for us.
const PENDING_WAIT: &str = "Pending:Wait";
/// ... and whose termination hook does.
const TERMINATING_WAIT: &str = "Terminating:Wait";

/// An open lifecycle action of this instance (launch or termination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
}

/// The launch action waiting for this instance, if any. `Ok(None)` outside an Auto Scaling
/// group, when the instance is past `Pending:Wait` (an agent restart), or when the group has no
/// launch hook.
pub async fn pending_launch<A: Autoscaling>(
    config: &Config,
    identity: &Identity,
    asg: &A,
    deadline: Instant,
) -> cloud::Result<Option<Action>> {
    if identity.target_lifecycle_state.is_none() {
        info!(
            "not in an Auto Scaling group (no autoscaling/target-lifecycle-state in IMDS): no lifecycle action to complete"
        );
        return Ok(None);
    }
    let me = &identity.instance_id;
    let Some(instance) = crate::cloud::retry::retry(deadline, || asg.asg_instance(me)).await?
    else {
        info!("the Auto Scaling API does not know this instance: no lifecycle action to complete");
        return Ok(None);
    };
    if instance.lifecycle_state != PENDING_WAIT {
        info!(group = %instance.group, state = %instance.lifecycle_state, "no launch action waits for this instance");
        return Ok(None);
    }
    let hook = match &config.lifecycle.launch_hook {
        Some(hook) => hook.clone(),
        None => {
            let hooks =
                crate::cloud::retry::retry(deadline, || asg.lifecycle_hooks(&instance.group))
                    .await?;
            let Some(hook) = hooks
                .into_iter()
                .find(|h| h.transition == LifecycleTransition::Launching)
            else {
                warn!(group = %instance.group, "Pending:Wait but the group has no launch hook; nothing to complete");
                return Ok(None);
            };
            hook.name
        }
    };
    info!(group = %instance.group, %hook, "launch lifecycle action waits for this boot");
    Ok(Some(Action {
        group: instance.group,
        hook,
        instance_id: me.clone(),
    }))
}

/// The termination action waiting for this instance, if any (`Terminating:Wait` and a
/// termination hook in the group).
pub async fn pending_termination<A: Autoscaling>(
    identity: &Identity,
    asg: &A,
    deadline: Instant,
) -> cloud::Result<Option<Action>> {
    if identity.target_lifecycle_state.is_none() {
        return Ok(None);
    }
    let me = &identity.instance_id;
    let Some(instance) = crate::cloud::retry::retry(deadline, || asg.asg_instance(me)).await?
    else {
        return Ok(None);
    };
    if instance.lifecycle_state != TERMINATING_WAIT {
        info!(group = %instance.group, state = %instance.lifecycle_state, "no termination action waits for this instance");
        return Ok(None);
    }
    let hooks =
        crate::cloud::retry::retry(deadline, || asg.lifecycle_hooks(&instance.group)).await?;
    let Some(hook) = hooks
        .into_iter()
        .find(|h| h.transition == LifecycleTransition::Terminating)
    else {
        return Ok(None);
    };
    info!(group = %instance.group, hook = %hook.name, "termination lifecycle action waits for the drain");
    Ok(Some(Action {
        group: instance.group,
        hook: hook.name,
        instance_id: me.clone(),
    }))
}

/// Runs `work` while recording a heartbeat every `period`, so a slow boot (a long detach, a
/// VPN tunnel taking its time) does not run into the hook's heartbeat timeout.
pub async fn with_heartbeats<A: Autoscaling, F: Future>(
    action: Option<&Action>,
    asg: &A,
    period: Duration,
    work: F,
) -> F::Output {
    let Some(action) = action else {
        return work.await;
    };
    let mut ticker = interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => {
                match asg.record_heartbeat(&action.group, &action.hook, &action.instance_id).await {
                    Ok(()) => info!(hook = %action.hook, "lifecycle heartbeat recorded"),
                    // Not fatal: the boot may still finish inside the current timeout.
                    Err(error) => warn!(%error, "lifecycle heartbeat failed"),
                }
            }
        }
    }
}

/// CompleteLifecycleAction, retried while `deadline` allows.
pub async fn complete<A: Autoscaling>(
    asg: &A,
    action: &Action,
    result: LifecycleResult,
    deadline: Instant,
) -> cloud::Result<()> {
    let done = crate::cloud::retry::retry(deadline, || {
        asg.complete_lifecycle_action(&action.group, &action.hook, &action.instance_id, result)
    })
    .await;
    match done {
        Ok(()) => {}
        // A retry whose first attempt took effect but lost its answer finds no action left:
        // done, if the instance has moved on from the wait.
        Err(e) if no_active_action(&e) => match asg.asg_instance(&action.instance_id).await {
            Ok(Some(i)) if !i.lifecycle_state.ends_with(":Wait") => {
                info!(group = %action.group, hook = %action.hook, result = result.as_str(), lifecycle_state = %i.lifecycle_state, "lifecycle action already completed (an earlier attempt's answer was lost)");
                return Ok(());
            }
            _ => return Err(e),
        },
        Err(e) => return Err(e),
    }
    info!(group = %action.group, hook = %action.hook, result = result.as_str(), "lifecycle action completed");
    Ok(())
}

fn no_active_action(e: &cloud::CloudError) -> bool {
    e.code() == Some("ValidationError")
        && e.to_string()
            .to_ascii_lowercase()
            .contains("no active lifecycle action")
}

#[cfg(test)]
mod complete_tests {
    use super::*;
    use crate::cloud::fake::{FakeCloud, Fault, LAUNCH_HOOK};

    #[tokio::test(start_paused = true)]
    async fn a_completion_whose_answer_was_lost_counts_as_done_once_the_instance_moved_on() {
        let cloud = FakeCloud::two_zones();
        let new = cloud.launch("a");
        let action = Action {
            group: cloud.asg_of("a"),
            hook: LAUNCH_HOOK.into(),
            instance_id: new.clone(),
        };
        cloud.fail_next("CompleteLifecycleAction", 1, Fault::LostAnswer);
        let deadline = Instant::now() + Duration::from_secs(30);
        complete(&cloud, &action, LifecycleResult::Continue, deadline)
            .await
            .expect("done");
        assert_eq!(cloud.completions().len(), 1);
        assert_eq!(cloud.lifecycle_state(&new).as_deref(), Some("InService"));
    }
}
