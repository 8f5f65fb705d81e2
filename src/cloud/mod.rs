//! The agent's view of EC2 and Auto Scaling: the only module that knows the AWS SDK.
//!
//! Two narrow traits, [`Ec2`] and [`Autoscaling`], list exactly the calls the agent makes (like
//! lifecycled's `AutoscalingClient`: the consumer owns the interface). Their real adapters,
//! [`SdkEc2`] (ec2.rs) and [`SdkAutoscaling`] (autoscaling.rs), translate to and from the SDK;
//! everything that crosses the traits is a plain type of this module, so the decision core and
//! its tests never see an SDK type.
//!
//! Every failure is a [`CloudError`] that names the call and the resource
//! (`ec2 ReplaceRoute rtb-123 0.0.0.0/0 -> eni-456: RequestLimitExceeded: Request limit
//! exceeded.`), keeps AWS's error code ([`CloudError::code`]) and says whether trying again may
//! help ([`CloudError::is_retryable`]). "Not found" answers for a single resource are `Ok(None)`.
//!
//! The SDK itself retries in adaptive mode a few times within a bounded time; the agent's own
//! loops decide what to do after that, re-reading state before they write again. Adaptive mode
//! means that once EC2 throttles, the SDK's client-side rate limiter (one per service and region
//! in the process, shared by every client) delays *all* later calls until the measured rate
//! recovers: after a throttle, any later call may wait a second or two. That is the point
//! (EC2 throttles per account and region, so a fleet backs off together), and callers must not
//! assume a call after a throttle is fast. Housekeeping (lease renewals, drift reads) therefore
//! goes through a client of its own ([`SdkEc2::quiet`]: one attempt, its own retry partition):
//! EC2 throttling a renewal never slows a takeover down.
//!
//! Before any of that, every call spends a token of the agent's own budget ([`budget`],
//! [`budgeted`]): a share of each documented bucket, spent takeovers first.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::http::chain;

pub mod autoscaling;
pub mod budget;
pub mod budgeted;
pub mod ec2;
#[cfg(any(test, feature = "fake-cloud"))]
pub mod fake;
pub mod retry;
mod timing;

pub use autoscaling::SdkAutoscaling;
pub use budget::Priority;
pub use budgeted::{Budget, Budgeted, spend_as};
pub use ec2::SdkEc2;

/// Attempts per call, the first one included. Three retries absorb a short throttling burst
/// (EC2's token buckets refill every second; the backoff below spreads the retries over about a
/// second and a half) or one broken connection. More would hold a takeover inside one call for
/// longer than it is worth: after that the agent's own loop re-reads the state and decides again
/// whether the write is still wanted.
pub const MAX_ATTEMPTS: u32 = 4;
/// First retry delay (the SDK's default is 1 s). A takeover is measured in seconds, so retries
/// start early; the delay doubles (with jitter) per attempt, and adaptive mode's client-side rate
/// limiter slows every later call down while EC2 keeps throttling.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay before a retry, also capping the delay adaptive mode's rate limiter asks for
/// after throttling: the agent renews its lease about once a second, and a retry that waits
/// longer than one renewal is late; the next loop iteration does better with fresh facts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// One attempt. EC2 and Auto Scaling answer the agent's calls in tens to hundreds of
/// milliseconds; an attempt silent for 3 s is stuck (a dead connection, an uplink going bad), and
/// a fresh attempt is faster than waiting on it.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// A whole call, retries and backoff included. Bounds how long the run loop can be stuck in one
/// call, so a stale intent is never written late: after 10 s the loop has new facts.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP (and TLS) connect to the regional endpoint, which is milliseconds away from an instance;
/// a gateway whose uplink is broken must learn it quickly (the SDK's default is 3.1 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// SDK configuration for `region`, with the agent's retry and timeout policy. `endpoint`
/// overrides the API endpoint (the lab's moto); without it `AWS_ENDPOINT_URL` (and the
/// per-service variables) still apply. Credentials come from the default chain: the instance
/// profile through IMDS on a gateway, the environment elsewhere.
pub async fn load(region: &str, endpoint: Option<&str>) -> SdkConfig {
    loader(region, endpoint).load().await
}

/// Like [`load`] with fixed credentials instead of the default chain (tests, the lab).
pub async fn load_with_credentials(
    region: &str,
    endpoint: Option<&str>,
    access_key_id: &str,
    secret_access_key: &str,
) -> SdkConfig {
    let credentials = aws_sdk_ec2::config::Credentials::new(
        access_key_id,
        secret_access_key,
        None,
        None,
        "gateway-agent-static",
    );
    loader(region, endpoint)
        .credentials_provider(credentials)
        .load()
        .await
}

fn loader(region: &str, endpoint: Option<&str>) -> aws_config::ConfigLoader {
    let retry = RetryConfig::adaptive()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF);
    let timeouts = TimeoutConfig::builder()
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build();
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .retry_config(retry)
        .timeout_config(timeouts);
    match endpoint {
        Some(url) => loader.endpoint_url(url),
        None => loader,
    }
}

// ---------------------------------------------------------------------------------------------
// Domain types
// ---------------------------------------------------------------------------------------------

/// A network interface (the zone's persistent ENI, or any other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    pub az: String,
    /// Empty when EC2 did not say (discovery then treats it as another VPC's).
    pub vpc_id: String,
    pub subnet_id: String,
    /// Lower-case, colon-separated, as the kernel shows it.
    pub mac: String,
    /// The primary address first.
    pub private_ips: Vec<Ipv4Addr>,
    pub status: EniStatus,
    pub attachment: Option<Attachment>,
    pub source_dest_check: bool,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EniStatus {
    Available,
    InUse,
    Attaching,
    Detaching,
    /// Anything else, as AWS spells it (`associated`, or a status added later).
    Other(String),
}

impl EniStatus {
    /// As AWS spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Available => "available",
            Self::InUse => "in-use",
            Self::Attaching => "attaching",
            Self::Detaching => "detaching",
            Self::Other(s) => s,
        }
    }
}

impl InstanceState {
    /// As AWS spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::ShuttingDown => "shutting-down",
            Self::Terminated => "terminated",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub id: String,
    /// `None` when the holder is not an instance (a service-managed interface).
    pub instance_id: Option<String>,
    pub device_index: u32,
    pub status: AttachmentStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentStatus {
    Attaching,
    Attached,
    Detaching,
    Detached,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: String,
    pub state: InstanceState,
    pub az: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    pub id: String,
    pub vpc_id: String,
    pub tags: BTreeMap<String, String>,
    pub routes: Vec<Route>,
    /// Associated with a subnet or gateway, or the main table: it carries traffic now. A
    /// takeover writes these first.
    pub associated: bool,
}

impl RouteTable {
    /// The route for exactly `destination` (a CIDR as AWS writes it), if any.
    pub fn route(&self, destination: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.destination == destination)
    }

    /// The table as the decision core sees it.
    pub fn fact(&self) -> crate::decide::route::TableFact {
        use crate::decide::route::TableFact;
        TableFact {
            id: self.id.clone(),
            routes: self.routes.iter().map(Route::fact).collect(),
        }
    }
}

impl Route {
    /// The route as the decision core sees it.
    pub fn fact(&self) -> crate::decide::route::RouteFact {
        use crate::decide::route::{RouteFact, Target};
        RouteFact {
            destination: self.destination.clone(),
            target: match &self.target {
                RouteTarget::Eni(id) => Target::Eni(id.clone()),
                other => Target::Other(other.to_string()),
            },
            blackhole: self.state == RouteState::Blackhole,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// An IPv4 or IPv6 CIDR (or, for a prefix-list route, the prefix list's ID).
    pub destination: String,
    pub target: RouteTarget,
    pub state: RouteState,
}

/// Where a route sends traffic. A route to an ENI that is attached to an instance names both;
/// it is reported as [`RouteTarget::Eni`], since that is what the agent writes and compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    Eni(String),
    /// An internet or virtual private gateway, or `local`.
    Gateway(String),
    Instance(String),
    /// Any other target (NAT gateway, transit gateway, peering connection...), by its ID.
    Other(String),
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteState {
    Active,
    /// The target cannot carry traffic (a detached ENI, a stopped instance). A state AWS might
    /// add later is reported as this too: the agent treats an unknown state as not carrying.
    Blackhole,
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eni(id) | Self::Gateway(id) | Self::Instance(id) | Self::Other(id) => {
                f.write_str(id)
            }
            Self::None => f.write_str("nothing"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleHook {
    pub name: String,
    pub transition: LifecycleTransition,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleTransition {
    /// `autoscaling:EC2_INSTANCE_LAUNCHING`
    Launching,
    /// `autoscaling:EC2_INSTANCE_TERMINATING`
    Terminating,
    Other(String),
}

/// An instance as its Auto Scaling group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsgInstance {
    pub group: String,
    /// As AWS spells it: `Pending:Wait`, `InService`, `Terminating:Wait`, ...
    pub lifecycle_state: String,
    pub health: Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// How a lifecycle action ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleResult {
    Continue,
    Abandon,
}

impl LifecycleResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "CONTINUE",
            Self::Abandon => "ABANDON",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The interfaces the agent consumes
// ---------------------------------------------------------------------------------------------

/// The subset of EC2 the agent uses. Tag filters are `(key, value)` pairs, all of which must
/// match; with no filters every resource in the region is returned.
pub trait Ec2 {
    /// `None` when no such ENI exists.
    fn describe_eni(&self, id: &str) -> impl Future<Output = Result<Option<Eni>>> + Send;
    fn find_enis(&self, tags: &[(&str, &str)]) -> impl Future<Output = Result<Vec<Eni>>> + Send;
    /// `None` when no such instance exists (terminated ones stay visible for a while).
    fn describe_instance(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<InstanceInfo>>> + Send;
    /// Attach `eni` to `instance` at `device_index`; returns the attachment ID.
    fn attach_eni(
        &self,
        eni: &str,
        instance: &str,
        device_index: u32,
    ) -> impl Future<Output = Result<String>> + Send;
    /// `force` detaches from an instance that is gone or unresponsive.
    fn detach_eni(
        &self,
        attachment_id: &str,
        force: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    fn set_source_dest_check(
        &self,
        eni: &str,
        enabled: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    fn find_route_tables(
        &self,
        tags: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<RouteTable>>> + Send;
    /// The tables among `ids` that exist (missing ones are left out; no IDs, no tables).
    fn describe_route_tables(
        &self,
        ids: &[&str],
    ) -> impl Future<Output = Result<Vec<RouteTable>>> + Send;
    /// Point an existing route at `eni`. `destination` is an IPv4 or IPv6 CIDR.
    fn replace_route(
        &self,
        route_table: &str,
        destination: &str,
        eni: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Add a route to `eni`; fails with `RouteAlreadyExists` when the destination has one.
    fn create_route(
        &self,
        route_table: &str,
        destination: &str,
        eni: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Remove the route for `destination` (a conditional route that is no longer wanted).
    fn delete_route(
        &self,
        route_table: &str,
        destination: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Add or overwrite tags on EC2 resources (one call for all of them).
    fn create_tags(
        &self,
        resources: &[&str],
        tags: &[(&str, &str)],
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The subset of EC2 Auto Scaling the agent uses.
pub trait Autoscaling {
    /// `None` when the instance is in no Auto Scaling group.
    fn asg_instance(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<AsgInstance>>> + Send;
    /// The value of tag `key` on Auto Scaling group `group`; `None` when the group or the tag
    /// does not exist.
    fn group_tag(
        &self,
        group: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    fn lifecycle_hooks(
        &self,
        group: &str,
    ) -> impl Future<Output = Result<Vec<LifecycleHook>>> + Send;
    fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: LifecycleResult,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Extend the wait of an open lifecycle action by the hook's heartbeat timeout.
    fn record_heartbeat(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Report health to the group at once (the group's grace period is not waited for): an
    /// unhealthy gateway has already handed its routes over and should be replaced.
    fn set_instance_health(
        &self,
        instance_id: &str,
        healthy: bool,
    ) -> impl Future<Output = Result<()>> + Send;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Which call on which resource: `ec2 ReplaceRoute rtb-123 0.0.0.0/0 -> eni-456`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `ec2` or `autoscaling`.
    pub service: &'static str,
    /// The API action, as AWS names it (`ReplaceRoute`).
    pub operation: &'static str,
    /// The resource(s) and arguments that matter, in words.
    pub resource: String,
}

impl Call {
    pub fn new(
        service: &'static str,
        operation: &'static str,
        resource: impl Into<String>,
    ) -> Self {
        Self {
            service,
            operation,
            resource: resource.into(),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.service, self.operation)?;
        if !self.resource.is_empty() {
            write!(f, " {}", self.resource)?;
        }
        Ok(())
    }
}

/// Error codes that mean "slow down": the call did nothing and may be tried again later.
pub const THROTTLING_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
];

/// Error codes of a server-side fault that may clear by itself (also when sent with a 4xx).
const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Codes that mean "no such resource": `Ok(None)` (or an empty list) where a call allows it.
const NOT_FOUND_CODES: &[&str] = &[
    "InvalidNetworkInterfaceID.NotFound",
    "InvalidInstanceID.NotFound",
    "InvalidRouteTableID.NotFound",
];

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// AWS answered with an error.
    #[error(
        "{call}: {}: {}",
        .code.as_deref().unwrap_or("unknown error"),
        .message.as_deref().unwrap_or("(no message)")
    )]
    Api {
        call: Call,
        code: Option<String>,
        message: Option<String>,
        /// HTTP status of the answer.
        status: Option<u16>,
    },
    /// No answer within [`ATTEMPT_TIMEOUT`] / [`OPERATION_TIMEOUT`] (after the SDK's retries).
    #[error("{call}: timed out: {detail}")]
    Timeout { call: Call, detail: String },
    /// The request never reached AWS: DNS, connect, TLS or I/O failure.
    #[error("{call}: cannot reach the API: {detail}")]
    Unreachable { call: Call, detail: String },
    /// An answer came but could not be read.
    #[error("{call}: unreadable answer (HTTP {}): {detail}", status_text(*.status))]
    BadResponse {
        call: Call,
        status: Option<u16>,
        detail: String,
    },
    /// The request could not be built or signed (no credentials, bad input).
    #[error("{call}: cannot send the request: {detail}")]
    Request { call: Call, detail: String },
    /// AWS said yes but left out something the agent needs.
    #[error("{call}: the answer has no {missing}")]
    Incomplete { call: Call, missing: &'static str },
    /// Not sent: the agent's own budget ([`budget`]) keeps the rest of this action's bucket
    /// for more urgent calls. Nothing happened; try again next cycle.
    #[error(
        "{call}: deferred by the agent's own API budget ({priority} calls wait while the bucket \
         is below the reserve kept for more urgent calls; see aws.api_share)"
    )]
    Deferred { call: Call, priority: Priority },
}

fn status_text(status: Option<u16>) -> String {
    status.map_or_else(|| "?".to_string(), |s| s.to_string())
}

pub type Result<T, E = CloudError> = std::result::Result<T, E>;

impl CloudError {
    /// The call and resource this error is about.
    pub fn call(&self) -> &Call {
        match self {
            Self::Api { call, .. }
            | Self::Timeout { call, .. }
            | Self::Unreachable { call, .. }
            | Self::BadResponse { call, .. }
            | Self::Request { call, .. }
            | Self::Incomplete { call, .. }
            | Self::Deferred { call, .. } => call,
        }
    }

    /// AWS's error code (`RouteAlreadyExists`, `InvalidNetworkInterface.InUse`...), when AWS
    /// answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// True when the same call may succeed later unchanged: throttling, a 5xx, a timeout, a
    /// failure to reach the API. False for an answer that will not change by asking again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { code, status, .. } => {
                code.as_deref()
                    .is_some_and(|c| THROTTLING_CODES.contains(&c) || TRANSIENT_CODES.contains(&c))
                    || status.is_some_and(|s| s >= 500)
            }
            Self::Timeout { .. } | Self::Unreachable { .. } | Self::Deferred { .. } => true,
            Self::BadResponse { status, .. } => status.is_none_or(|s| s >= 500),
            Self::Request { .. } | Self::Incomplete { .. } => false,
        }
    }

    /// True for throttling (`RequestLimitExceeded` and kin): back off before the next call.
    pub fn is_throttling(&self) -> bool {
        self.code().is_some_and(|c| THROTTLING_CODES.contains(&c))
    }

    /// True when the agent's own budget held the call back (it never reached AWS).
    pub fn is_deferred(&self) -> bool {
        matches!(self, Self::Deferred { .. })
    }

    /// True when AWS said the resource does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code().is_some_and(|c| NOT_FOUND_CODES.contains(&c))
    }
}

/// Turn an SDK failure into a [`CloudError`] about `call`. Both SDKs share this error type.
pub(crate) fn sdk_error<E>(call: Call, err: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = match &err {
        SdkError::ServiceError(service) => service.err().code().unwrap_or("unknown").to_owned(),
        SdkError::TimeoutError(_) => "timeout".to_owned(),
        SdkError::DispatchFailure(_) => "unreachable".to_owned(),
        _ => "other".to_owned(),
    };
    crate::metrics::inc(
        "gateway_agent_api_errors_total",
        &[("action", call.operation), ("code", code.as_str())],
    );
    match &err {
        SdkError::ServiceError(service) => CloudError::Api {
            call,
            code: service.err().code().map(str::to_string),
            message: service.err().message().map(str::to_string),
            status,
        },
        SdkError::TimeoutError(_) => CloudError::Timeout {
            call,
            detail: chain(&err),
        },
        SdkError::DispatchFailure(failure) if failure.is_timeout() => CloudError::Timeout {
            call,
            detail: chain(&err),
        },
        SdkError::DispatchFailure(failure) if failure.is_user() => CloudError::Request {
            call,
            detail: chain(&err),
        },
        SdkError::DispatchFailure(_) => CloudError::Unreachable {
            call,
            detail: chain(&err),
        },
        SdkError::ConstructionFailure(_) => CloudError::Request {
            call,
            detail: chain(&err),
        },
        // ResponseError, and any kind a later SDK adds: an answer we could not use.
        _ => CloudError::BadResponse {
            call,
            status,
            detail: chain(&err),
        },
    }
}

/// `[("k", "v")]` as `tag:k=v,tag:k2=v2`, for naming a filtered call.
pub(crate) fn describe_tags(tags: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = tags.iter().map(|(k, v)| format!("tag:{k}={v}")).collect();
    if pairs.is_empty() {
        "(all)".to_string()
    } else {
        pairs.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str, status: u16) -> CloudError {
        CloudError::Api {
            call: Call::new("ec2", "ReplaceRoute", "rtb-123 0.0.0.0/0 -> eni-456"),
            code: Some(code.into()),
            message: Some("Request limit exceeded.".into()),
            status: Some(status),
        }
    }

    #[test]
    fn display_names_call_resource_and_code() {
        assert_eq!(
            api("RequestLimitExceeded", 503).to_string(),
            "ec2 ReplaceRoute rtb-123 0.0.0.0/0 -> eni-456: RequestLimitExceeded: \
             Request limit exceeded."
        );
    }

    #[test]
    fn retryable_classification() {
        assert!(api("RequestLimitExceeded", 503).is_retryable());
        assert!(api("Throttling", 400).is_retryable());
        assert!(api("Throttling", 400).is_throttling());
        assert!(api("Unavailable", 503).is_retryable());
        assert!(api("SomethingNew", 500).is_retryable());
        assert!(!api("RouteAlreadyExists", 400).is_retryable());
        assert!(!api("InvalidNetworkInterface.InUse", 400).is_retryable());
        assert!(api("InvalidRouteTableID.NotFound", 400).is_not_found());
        let call = Call::new("autoscaling", "SetInstanceHealth", "i-1 Unhealthy");
        assert!(
            CloudError::Timeout {
                call: call.clone(),
                detail: String::new()
            }
            .is_retryable()
        );
        assert!(
            !CloudError::Incomplete {
                call,
                missing: "attachment ID"
            }
            .is_retryable()
        );
    }
}
