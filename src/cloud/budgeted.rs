//! The budget's shell: [`Budgeted`] wraps an [`Ec2`] or [`Autoscaling`] adapter and takes a
//! token from the agent's own [`Buckets`] before every call, at the priority the caller set
//! with [`spend_as`] (a task-local, so the executor's parallel writes and the watch loop's
//! joined reads all carry it without every trait method taking one more argument).
//!
//! A call without a priority (boot, lifecycle actions, discovery) spends at
//! [`DEFAULT_PRIORITY`]: it waits for a token within the share and is never skipped.
//! A skipped call (a renewal or a drift read with the bucket below its reserve) answers
//! [`CloudError::Deferred`] at once, without reaching AWS; it is counted in
//! `gateway_agent_api_deferred_total` and logged once a minute per action and priority.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, sleep};
use tracing::info;

use super::budget::{Buckets, Priority, Verdict};
use super::{
    AsgInstance, Autoscaling, Call, CloudError, Ec2, Eni, InstanceInfo, LifecycleHook,
    LifecycleResult, Result, RouteTable,
};

/// The priority of a call made outside any [`spend_as`]: boot's claim and reclaim, lifecycle
/// actions, discovery. They wait their turn, within the share.
pub const DEFAULT_PRIORITY: Priority = Priority::HandBack;
/// A skipped call is logged at most this often per action and priority (counted always).
const LOG_EVERY: Duration = Duration::from_secs(60);

tokio::task_local! {
    static PRIORITY: Priority;
}

/// Runs `fut` with every API call it makes (through a [`Budgeted`] adapter) spent at `p`.
pub async fn spend_as<F: Future>(p: Priority, fut: F) -> F::Output {
    PRIORITY.scope(p, fut).await
}

/// The priority the running call is made at.
pub fn current() -> Priority {
    PRIORITY.try_with(|p| *p).unwrap_or(DEFAULT_PRIORITY)
}

/// The agent's buckets, shared by its EC2 and Auto Scaling adapters.
#[derive(Debug)]
pub struct Budget {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    buckets: Buckets,
    /// Skips since the last log line, and when that was, per (action, priority).
    skipped: HashMap<(&'static str, Priority), (u64, Option<Instant>)>,
}

impl Budget {
    /// `share` of every documented bucket (`aws.api_share`).
    pub fn new(share: f64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                buckets: Buckets::new(share),
                skipped: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves the buckets as they were: still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a token for `service`'s `action` at the current priority: at once, after a wait
    /// (takeovers, hand-backs, confirmations), or not at all ([`CloudError::Deferred`]).
    pub async fn spend(
        &self,
        service: &'static str,
        action: &'static str,
        resource: impl FnOnce() -> String,
    ) -> Result<()> {
        let p = current();
        let mut waited = false;
        loop {
            let verdict = self.lock().buckets.ask(service, action, p, Instant::now());
            match verdict {
                Verdict::Go => return Ok(()),
                Verdict::Wait(d) => {
                    if !waited {
                        waited = true;
                        crate::metrics::inc(
                            "gateway_agent_api_deferred_total",
                            &[
                                ("action", action),
                                ("priority", p.as_str()),
                                ("how", "waited"),
                            ],
                        );
                    }
                    sleep(d).await;
                }
                Verdict::Skip => {
                    self.skipped(action, p);
                    return Err(CloudError::Deferred {
                        call: Call::new(service, action, resource()),
                        priority: p,
                    });
                }
            }
        }
    }

    fn skipped(&self, action: &'static str, p: Priority) {
        crate::metrics::inc(
            "gateway_agent_api_deferred_total",
            &[
                ("action", action),
                ("priority", p.as_str()),
                ("how", "skipped"),
            ],
        );
        let now = Instant::now();
        let mut state = self.lock();
        let share = state.buckets.share();
        let (count, logged) = state.skipped.entry((action, p)).or_insert((0, None));
        *count += 1;
        if logged.is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY) {
            info!(
                action,
                priority = p.as_str(),
                skipped = *count,
                share,
                "API call skipped by the agent's own budget (its bucket is below the reserve kept for more urgent calls); tried again next cycle"
            );
            *count = 0;
            *logged = Some(now);
        }
    }
}

/// An adapter whose every call first spends a token of the agent's [`Budget`].
#[derive(Debug, Clone)]
pub struct Budgeted<C> {
    inner: C,
    /// Where renewals and drift reads go, if set ([`crate::cloud::SdkEc2::quiet`]: no retries,
    /// a retry partition of their own), so that EC2 throttling one of them never slows the
    /// takeovers down through the SDK's shared adaptive rate limiter.
    quiet: Option<C>,
    budget: Arc<Budget>,
}

impl<C> Budgeted<C> {
    pub fn new(inner: C, budget: Arc<Budget>) -> Self {
        Self {
            inner,
            quiet: None,
            budget,
        }
    }

    /// Sends renewals and drift reads through `quiet` instead.
    pub fn with_quiet(mut self, quiet: C) -> Self {
        self.quiet = Some(quiet);
        self
    }

    /// The adapter for a call at the current priority.
    fn client(&self) -> &C {
        match &self.quiet {
            Some(quiet) if !current().waits() => quiet,
            _ => &self.inner,
        }
    }
}

impl<C: Ec2 + Sync> Ec2 for Budgeted<C> {
    async fn describe_eni(&self, id: &str) -> Result<Option<Eni>> {
        let b = &self.budget;
        b.spend("ec2", "DescribeNetworkInterfaces", || id.to_owned())
            .await?;
        self.client().describe_eni(id).await
    }

    async fn find_enis(&self, tags: &[(&str, &str)]) -> Result<Vec<Eni>> {
        let b = &self.budget;
        b.spend("ec2", "DescribeNetworkInterfaces", || {
            super::describe_tags(tags)
        })
        .await?;
        self.client().find_enis(tags).await
    }

    async fn describe_instance(&self, id: &str) -> Result<Option<InstanceInfo>> {
        let b = &self.budget;
        b.spend("ec2", "DescribeInstances", || id.to_owned())
            .await?;
        self.client().describe_instance(id).await
    }

    async fn attach_eni(&self, eni: &str, instance: &str, device_index: u32) -> Result<String> {
        let b = &self.budget;
        b.spend("ec2", "AttachNetworkInterface", || {
            format!("{eni} -> {instance}")
        })
        .await?;
        self.client().attach_eni(eni, instance, device_index).await
    }

    async fn detach_eni(&self, attachment_id: &str, force: bool) -> Result<()> {
        let b = &self.budget;
        b.spend("ec2", "DetachNetworkInterface", || attachment_id.to_owned())
            .await?;
        self.client().detach_eni(attachment_id, force).await
    }

    async fn set_source_dest_check(&self, eni: &str, enabled: bool) -> Result<()> {
        let b = &self.budget;
        b.spend("ec2", "ModifyNetworkInterfaceAttribute", || eni.to_owned())
            .await?;
        self.client().set_source_dest_check(eni, enabled).await
    }

    async fn find_route_tables(&self, tags: &[(&str, &str)]) -> Result<Vec<RouteTable>> {
        let b = &self.budget;
        b.spend("ec2", "DescribeRouteTables", || super::describe_tags(tags))
            .await?;
        self.client().find_route_tables(tags).await
    }

    async fn describe_route_tables(&self, ids: &[&str]) -> Result<Vec<RouteTable>> {
        if ids.is_empty() {
            return self.client().describe_route_tables(ids).await;
        }
        let b = &self.budget;
        b.spend("ec2", "DescribeRouteTables", || ids.join(","))
            .await?;
        self.client().describe_route_tables(ids).await
    }

    async fn replace_route(&self, route_table: &str, destination: &str, eni: &str) -> Result<()> {
        let b = &self.budget;
        b.spend("ec2", "ReplaceRoute", || {
            format!("{route_table} {destination} -> {eni}")
        })
        .await?;
        self.inner
            .replace_route(route_table, destination, eni)
            .await
    }

    async fn create_route(&self, route_table: &str, destination: &str, eni: &str) -> Result<()> {
        let b = &self.budget;
        b.spend("ec2", "CreateRoute", || {
            format!("{route_table} {destination} -> {eni}")
        })
        .await?;
        self.client()
            .create_route(route_table, destination, eni)
            .await
    }

    async fn delete_route(&self, route_table: &str, destination: &str) -> Result<()> {
        let b = &self.budget;
        b.spend("ec2", "DeleteRoute", || {
            format!("{route_table} {destination}")
        })
        .await?;
        self.client().delete_route(route_table, destination).await
    }

    async fn create_tags(&self, resources: &[&str], tags: &[(&str, &str)]) -> Result<()> {
        let b = &self.budget;
        b.spend("ec2", "CreateTags", || resources.join(",")).await?;
        self.client().create_tags(resources, tags).await
    }
}

impl<C: Autoscaling + Sync> Autoscaling for Budgeted<C> {
    async fn asg_instance(&self, instance_id: &str) -> Result<Option<AsgInstance>> {
        let b = &self.budget;
        b.spend("autoscaling", "DescribeAutoScalingInstances", || {
            instance_id.to_owned()
        })
        .await?;
        self.inner.asg_instance(instance_id).await
    }

    async fn group_tag(&self, group: &str, key: &str) -> Result<Option<String>> {
        let b = &self.budget;
        b.spend("autoscaling", "DescribeAutoScalingGroups", || {
            group.to_owned()
        })
        .await?;
        self.inner.group_tag(group, key).await
    }

    async fn lifecycle_hooks(&self, group: &str) -> Result<Vec<LifecycleHook>> {
        let b = &self.budget;
        b.spend("autoscaling", "DescribeLifecycleHooks", || group.to_owned())
            .await?;
        self.inner.lifecycle_hooks(group).await
    }

    async fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: LifecycleResult,
    ) -> Result<()> {
        let b = &self.budget;
        b.spend("autoscaling", "CompleteLifecycleAction", || {
            format!("{group} {hook} {instance_id}")
        })
        .await?;
        self.inner
            .complete_lifecycle_action(group, hook, instance_id, result)
            .await
    }

    async fn record_heartbeat(&self, group: &str, hook: &str, instance_id: &str) -> Result<()> {
        let b = &self.budget;
        b.spend("autoscaling", "RecordLifecycleActionHeartbeat", || {
            format!("{group} {hook} {instance_id}")
        })
        .await?;
        self.inner.record_heartbeat(group, hook, instance_id).await
    }

    async fn set_instance_health(&self, instance_id: &str, healthy: bool) -> Result<()> {
        let b = &self.budget;
        b.spend("autoscaling", "SetInstanceHealth", || {
            instance_id.to_owned()
        })
        .await?;
        self.inner.set_instance_health(instance_id, healthy).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::fake::{DEFAULT_ROUTE, FakeCloud};
    use crate::decide::lease::LEASE_TAG;

    /// A budget whose CreateTags bucket renewals have spent down to their reserve.
    async fn exhausted_for_renewals(cloud: &FakeCloud) -> Budgeted<FakeCloud> {
        let ec2 = Budgeted::new(cloud.clone(), Budget::new(0.25));
        let table = cloud.table_of("a");
        let tags = [(LEASE_TAG, "i-a/1/1")];
        loop {
            match spend_as(Priority::Renew, ec2.create_tags(&[table.as_str()], &tags)).await {
                Ok(()) => {}
                Err(CloudError::Deferred { priority, .. }) => {
                    assert_eq!(priority, Priority::Renew);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        ec2
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_is_deferred_while_a_takeover_write_goes_through_at_once() {
        let cloud = FakeCloud::two_zones();
        let ec2 = exhausted_for_renewals(&cloud).await;
        let (a, b) = (cloud.table_of("a"), cloud.table_of("b"));
        let renewal = spend_as(
            Priority::Renew,
            ec2.create_tags(&[a.as_str()], &[(LEASE_TAG, "i-a/1/2")]),
        )
        .await;
        let e = renewal.expect_err("the renewal is skipped");
        assert!(e.is_deferred(), "{e}");
        assert!(e.is_retryable());
        assert!(e.to_string().starts_with("ec2 CreateTags rtb-"), "{e}");
        // The takeover's lease tag and its route write go now: no wait, no refusal.
        let started = Instant::now();
        spend_as(Priority::Takeover, async {
            ec2.create_tags(&[b.as_str()], &[(LEASE_TAG, "i-a/2/3")])
                .await
                .unwrap();
            ec2.replace_route(&b, DEFAULT_ROUTE, &cloud.eni_of("a"))
                .await
                .unwrap();
        })
        .await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn drift_reads_are_deferred_before_confirmations() {
        let cloud = FakeCloud::two_zones();
        let ec2 = Budgeted::new(cloud.clone(), Budget::new(0.25));
        let a = cloud.table_of("a");
        let mut drift = 0;
        while spend_as(Priority::Drift, ec2.describe_route_tables(&[a.as_str()]))
            .await
            .is_ok()
        {
            drift += 1;
        }
        // Drift reads stopped with most of the bucket left: confirmations still go at once.
        let started = Instant::now();
        let mut confirmed = 0;
        while started.elapsed() == Duration::ZERO {
            spend_as(Priority::Confirm, ec2.describe_route_tables(&[a.as_str()]))
                .await
                .unwrap();
            confirmed += 1;
        }
        assert_eq!((drift, confirmed), (10, 13), "share 0.25 of 100: 25 tokens");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_without_a_priority_wait_and_are_never_skipped() {
        let cloud = FakeCloud::two_zones();
        let ec2 = Budgeted::new(cloud.clone(), Budget::new(0.25));
        let eni = cloud.eni_of("a");
        assert_eq!(current(), DEFAULT_PRIORITY);
        let started = Instant::now();
        // DescribeNetworkInterfaces: 50 * 0.25 = 12.5 tokens, 2.5 a second.
        for _ in 0..15 {
            ec2.describe_eni(&eni).await.unwrap();
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1000) && waited <= Duration::from_millis(1300),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_and_drift_reads_go_through_the_quiet_client_the_rest_through_the_main_one() {
        let (main, quiet) = (FakeCloud::two_zones(), FakeCloud::two_zones());
        let ec2 = Budgeted::new(main.clone(), Budget::new(0.25)).with_quiet(quiet.clone());
        let table = main.table_of("a");
        let ids = [table.as_str()];
        for p in Priority::ALL {
            main.clear_calls();
            quiet.clear_calls();
            // The tables of the two fakes have the same IDs: either one answers.
            spend_as(p, ec2.describe_route_tables(&ids)).await.unwrap();
            let (m, q) = (main.calls().len(), quiet.calls().len());
            if p.waits() {
                assert_eq!((m, q), (1, 0), "{p}");
            } else {
                assert_eq!((m, q), (0, 1), "{p}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nested_scopes_take_the_innermost_priority() {
        spend_as(Priority::Takeover, async {
            assert_eq!(current(), Priority::Takeover);
            spend_as(Priority::Confirm, async {
                assert_eq!(current(), Priority::Confirm);
            })
            .await;
            assert_eq!(current(), Priority::Takeover);
        })
        .await;
    }
}
