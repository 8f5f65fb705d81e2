//! [`Autoscaling`] over the AWS SDK.

use aws_config::SdkConfig;
use aws_sdk_autoscaling::Client;

use super::{
    AsgInstance, Autoscaling, Call, CloudError, Health, LifecycleHook, LifecycleResult,
    LifecycleTransition, Result, sdk_error,
};

const SERVICE: &str = "autoscaling";
const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

/// The real Auto Scaling adapter.
#[derive(Debug, Clone)]
pub struct SdkAutoscaling {
    client: Client,
}

impl SdkAutoscaling {
    pub fn new(config: &SdkConfig) -> Self {
        let conf = aws_sdk_autoscaling::config::Builder::from(config)
            .interceptor(super::timing::Timing)
            .build();
        Self {
            client: Client::from_conf(conf),
        }
    }

    /// Wrap an SDK client built elsewhere (its retry and timeout policy is the caller's).
    pub fn from_client(client: Client) -> Self {
        Self { client }
    }
}

fn call(operation: &'static str, resource: impl Into<String>) -> Call {
    Call::new(SERVICE, operation, resource)
}

impl Autoscaling for SdkAutoscaling {
    async fn asg_instance(&self, instance_id: &str) -> Result<Option<AsgInstance>> {
        let c = call("DescribeAutoScalingInstances", instance_id);
        let out = self
            .client
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| sdk_error(c.clone(), e))?;
        let Some(details) = out
            .auto_scaling_instances()
            .iter()
            .find(|d| d.instance_id() == Some(instance_id))
        else {
            return Ok(None);
        };
        let missing = |what| CloudError::Incomplete {
            call: c.clone(),
            missing: what,
        };
        let health = details
            .health_status()
            .ok_or_else(|| missing("health status"))?;
        Ok(Some(AsgInstance {
            group: details
                .auto_scaling_group_name()
                .ok_or_else(|| missing("group name"))?
                .to_string(),
            lifecycle_state: details
                .lifecycle_state()
                .ok_or_else(|| missing("lifecycle state"))?
                .to_string(),
            // AWS answers HEALTHY or UNHEALTHY here (and takes Healthy/Unhealthy when set).
            health: if health.eq_ignore_ascii_case("healthy") {
                Health::Healthy
            } else {
                Health::Unhealthy
            },
        }))
    }

    async fn group_tag(&self, group: &str, key: &str) -> Result<Option<String>> {
        let c = call("DescribeAutoScalingGroups", group);
        let out = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .map_err(|e| sdk_error(c, e))?;
        Ok(out
            .auto_scaling_groups()
            .iter()
            .filter(|g| g.auto_scaling_group_name() == Some(group))
            .flat_map(|g| g.tags())
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value().map(str::to_owned)))
    }

    async fn lifecycle_hooks(&self, group: &str) -> Result<Vec<LifecycleHook>> {
        let c = call("DescribeLifecycleHooks", group);
        let out = self
            .client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(group)
            .send()
            .await
            .map_err(|e| sdk_error(c.clone(), e))?;
        out.lifecycle_hooks()
            .iter()
            .map(|h| {
                let name = h.lifecycle_hook_name().ok_or(CloudError::Incomplete {
                    call: c.clone(),
                    missing: "lifecycle hook name",
                })?;
                let transition = match h.lifecycle_transition() {
                    Some(LAUNCHING) => LifecycleTransition::Launching,
                    Some(TERMINATING) => LifecycleTransition::Terminating,
                    other => LifecycleTransition::Other(other.unwrap_or("").to_string()),
                };
                Ok(LifecycleHook {
                    name: name.to_string(),
                    transition,
                })
            })
            .collect()
    }

    async fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: LifecycleResult,
    ) -> Result<()> {
        self.client
            .complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance_id)
            .lifecycle_action_result(result.as_str())
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    call(
                        "CompleteLifecycleAction",
                        format!("{group} {hook} {instance_id} {}", result.as_str()),
                    ),
                    e,
                )
            })?;
        Ok(())
    }

    async fn record_heartbeat(&self, group: &str, hook: &str, instance_id: &str) -> Result<()> {
        self.client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance_id)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    call(
                        "RecordLifecycleActionHeartbeat",
                        format!("{group} {hook} {instance_id}"),
                    ),
                    e,
                )
            })?;
        Ok(())
    }

    async fn set_instance_health(&self, instance_id: &str, healthy: bool) -> Result<()> {
        let status = if healthy { "Healthy" } else { "Unhealthy" };
        self.client
            .set_instance_health()
            .instance_id(instance_id)
            .health_status(status)
            .should_respect_grace_period(false)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    call("SetInstanceHealth", format!("{instance_id} {status}")),
                    e,
                )
            })?;
        Ok(())
    }
}
