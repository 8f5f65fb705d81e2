//! The configuration file: strict TOML, checked before anything touches the network.
//!
//! A typo in a key is an error, never a silent default: every table denies unknown keys. Every
//! problem names the file, the key and a fix, so an operator can act on the message alone.
//!
//! ```toml
//! version = 1
//!
//! [group]
//! name = "egress"   # the gateway group tag value shared by this group's gateways
//! ```
//!
//! # Keys and defaults
//!
//! The defaults live in the constants below and nowhere else. Everything but `version` and
//! `group.name` is optional: the zone's ENI and route tables are found by their tags
//! (`gateway-agent:group = <group.name>`, `gateway-agent:zone = <availability zone>`).
//!
//! | key                           | default                          | meaning                                         |
//! |-------------------------------|----------------------------------|-------------------------------------------------|
//! | `version`                     | required, must be [`VERSION`]    | format of this file                             |
//! | `group.name`                  | required                         | the gateway group of this instance              |
//! | `dry_run`                     | `false` (`run --dry-run` sets it) | observe and decide, log the changes, make none (no API write, no kernel change) |
//! | `eni.ids`                     | `{}` (find by tags)              | zone → persistent ENI ID, e.g. `{ "us-east-1a" = "eni-0123" }` |
//! | `eni.device_index`            | [`DEFAULT_DEVICE_INDEX`]         | device index the ENI is attached at             |
//! | `routes.destinations`         | [`DEFAULT_DESTINATIONS`]         | managed destinations (IPv4/IPv6 CIDRs)          |
//! | `routes.tables`               | `{}` (find by tags)              | zone → route table IDs                          |
//! | `kernel.table`                | [`netconf::DEFAULT_TABLE`]       | policy-routing table of the ENI                 |
//! | `kernel.rule_priority`        | [`netconf::DEFAULT_RULE_PRIORITY`] | priority of the `from <eni address>` rules    |
//! | `kernel.ipv4_forwarding`      | `true`                           | set `net.ipv4.ip_forward = 1`                   |
//! | `kernel.ipv6_forwarding`      | `false`                          | set `net.ipv6.conf.all.forwarding = 1`          |
//! | `kernel.reconcile_interval_ms`| [`DEFAULT_RECONCILE_INTERVAL_MS`] | how often kernel drift is repaired             |
//! | `self_check.icmp_targets`     | `[]` (uplink not probed)         | IPv4 addresses that must answer ping            |
//! | `self_check.units`            | `[]`                             | systemd units that must be active               |
//! | `self_check.timeout_ms`       | [`DEFAULT_SELF_CHECK_TIMEOUT_MS`] | wait for one echo reply                        |
//! | `self_check.attempts`         | [`DEFAULT_SELF_CHECK_ATTEMPTS`]  | a target passes if any of this many answers     |
//! | `lifecycle.launch_hook`       | found in the group               | name of the ASG's launch lifecycle hook         |
//! | `lifecycle.heartbeat_interval_s` | [`DEFAULT_HEARTBEAT_INTERVAL_S`] | heartbeat period while boot is in progress  |
//! | `boot.timeout_s`              | [`DEFAULT_BOOT_TIMEOUT_S`]       | the whole boot, IMDS wait included              |
//! | `boot.attach_timeout_s`       | [`DEFAULT_ATTACH_TIMEOUT_S`]     | claim of the ENI until the kernel shows it      |
//! | `aws.endpoint`                | none (`AWS_ENDPOINT_URL`, else AWS) | EC2/Auto Scaling endpoint override          |
//! | `imds.endpoint`               | [`DEFAULT_IMDS_ENDPOINT`]        | IMDS base URL (tests point elsewhere)           |
//! | `imds.timeout_ms`             | [`DEFAULT_IMDS_TIMEOUT_MS`]      | overall deadline of one IMDS call               |
//! | `log.level`                   | [`DEFAULT_LOG_LEVEL`]            | tracing filter; `RUST_LOG` overrides            |
//! | `failover.enabled`            | `true`                           | watch peers, take over a dead peer's zone       |
//! | `failover.probe_interval_ms`  | [`DEFAULT_PROBE_INTERVAL_MS`]    | ICMP probe period per peer (and own targets)    |
//! | `failover.probe_timeout_ms`   | the probe interval               | an echo later than this counts as lost          |
//! | `failover.fall`               | [`DEFAULT_FALL`]                 | consecutive lost probes before "down"           |
//! | `failover.rise`               | [`DEFAULT_RISE`]                 | consecutive answered probes before "up"         |
//! | `failover.confirm`            | `"api"`                          | `"api"`: a death needs API/lease/self-report evidence; `"icmp"`: ICMP alone (opt-in) |
//! | `failover.lease_renew_ms`     | [`DEFAULT_LEASE_RENEW_MS`]       | lease tag renewal and route-table read period   |
//! | `failover.lease_ttl_ms`       | [`DEFAULT_LEASE_TTL_MS`]         | a lease unchanged this long confirms a death    |
//! | `failover.failback`           | `"auto"`                         | `"auto"`: a recovered owner reclaims after the hold-down; `"manual"`: only at boot or by `gateway-agent failback` |
//! | `failover.hold_down_s`        | [`DEFAULT_HOLD_DOWN_S`]          | continuous health before an owner reclaims      |
//! | `failover.damping_max_s`      | [`DEFAULT_DAMPING_MAX_S`]        | cap of the doubling hold-down of a flapping zone |
//! | `failover.health_port`        | [`DEFAULT_HEALTH_PORT`]          | TCP port of `/health` on the ENI address        |
//! | `failover.ring`               | `[]` (zone names sorted)         | successor order of the zones                    |
//! | `conditional[].probe`         | required per rule                | IPv4 address probed from the ENI (rise/fall of `failover`) |
//! | `conditional[].destinations`  | required per rule                | CIDRs routed via this ENI while the probe fails |
//! | `conditional[].tables`        | `[]` (this zone's tables)        | route tables of the rule                        |
//! | `conditional[].name`          | the probe address                | label in logs                                   |
//! | `drain.handover_on_stop`      | `true`                           | SIGTERM hands the routes over before exiting (not with the restart marker) |
//! | `drain.restart_marker`        | [`DEFAULT_RESTART_MARKER`]       | while it exists, SIGTERM moves no route (package upgrade) |
//! | `drain.imds_poll_ms`          | [`DEFAULT_IMDS_POLL_MS`]         | how often IMDS is asked about planned exits     |
//! | `drain.grace_s`               | [`DEFAULT_GRACE_S`]              | forwarding kept after the routes moved          |
//! | `drain.timeout_s`             | [`DEFAULT_DRAIN_TIMEOUT_S`]      | longest drain without a deadline of its own     |
//! | `drain.maintenance_lead_s`    | [`DEFAULT_MAINTENANCE_LEAD_S`]   | drain this long before scheduled maintenance    |
//! | `drain.set_unhealthy`         | `false`                          | a gateway failing its self-check asks its ASG to replace it |
//! | `events.command`              | `[]` (none)                      | hook argv, run as `<argv...> <event> <zone> <from> <to> <reason>` |
//! | `events.timeout_s`            | [`DEFAULT_HOOK_TIMEOUT_S`]       | the hook is killed past this                    |
//! | `metrics.listen`              | [`DEFAULT_METRICS_LISTEN`]       | `/metrics` address; `""` turns it off           |
//! | `control.socket`              | [`crate::control::DEFAULT_SOCKET`] | local Unix socket for `gateway-agent failback` |
//! | `control.group`               | none (root only)                 | a group that may also use the socket (mode 0660) |

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::netconf;

/// The only file format this agent reads; bumped when a change could be misread by an old agent.
pub const VERSION: u32 = 1;
/// Where systemd's unit and the packages put the file.
pub const DEFAULT_PATH: &str = "/etc/gateway-agent/config.toml";
/// The tag key naming a resource's gateway group.
pub const GROUP_TAG: &str = "gateway-agent:group";
/// The tag key naming a resource's availability zone.
pub const ZONE_TAG: &str = "gateway-agent:zone";
/// The link-local IMDS address every EC2 instance answers on (IPv6: `http://[fd00:ec2::254]`).
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// IMDS answers in milliseconds on a healthy instance; 2 s leaves room for a few retries while
/// staying well inside systemd's start timeout.
pub const DEFAULT_IMDS_TIMEOUT_MS: u64 = 2000;
/// Upper bound for `imds.timeout_ms`: beyond a minute a stuck call only hides a broken IMDS.
pub const MAX_IMDS_TIMEOUT_MS: u64 = 60_000;
/// Transitions and identity at `info`; per-probe detail stays at `debug`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Device index 0 is the primary interface; the persistent ENI is the first secondary one.
pub const DEFAULT_DEVICE_INDEX: u32 = 1;
/// Small instance types take 2 to 4 interfaces; 15 is the largest count any type allows.
pub const MAX_DEVICE_INDEX: u32 = 15;
/// A NAT gateway carries the default route; VPN users add their on-premises prefixes.
pub const DEFAULT_DESTINATIONS: &[&str] = &["0.0.0.0/0"];
/// amazon-ec2-net-utils refreshes interfaces every few minutes; repairing within 5 s keeps a
/// lost rule from stranding reply traffic for long, for one netlink dump per interval.
pub const DEFAULT_RECONCILE_INTERVAL_MS: u64 = 5000;
/// One echo round trip on the uplink takes milliseconds; a second means the path is broken.
pub const DEFAULT_SELF_CHECK_TIMEOUT_MS: u64 = 1000;
/// One lost packet must not fail a boot: a target passes if any of three echoes answers.
pub const DEFAULT_SELF_CHECK_ATTEMPTS: u32 = 3;
/// Well under the shortest lifecycle-hook heartbeat timeout AWS allows (30 s).
pub const DEFAULT_HEARTBEAT_INTERVAL_S: u64 = 10;
/// Under the unit's `TimeoutStartSec=300s`, so the agent ABANDONs with a reason before systemd
/// kills it without one.
pub const DEFAULT_BOOT_TIMEOUT_S: u64 = 240;
/// Detaching from a dead holder plus attaching takes 5–20 s on EC2; a minute covers a slow one.
pub const DEFAULT_ATTACH_TIMEOUT_S: u64 = 60;
/// Five probes a second: with `fall` 3 a dead peer is noticed in 0.6–0.8 s, for a few hundred
/// bytes a second of ICMP per peer.
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 200;
/// One lost packet never triggers anything: three in a row do.
pub const DEFAULT_FALL: u32 = 3;
/// A peer must answer three times in a row to count as up again.
pub const DEFAULT_RISE: u32 = 3;
/// One CreateTags and one DescribeRouteTables per gateway per second: a fleet of 20 gateways
/// stays far below EC2's per-account request rates for both (tens per second, sustained).
pub const DEFAULT_LEASE_RENEW_MS: u64 = 1000;
/// Two renewals and some: one slow renewal never confirms a death.
pub const DEFAULT_LEASE_TTL_MS: u64 = 2500;
/// A recovered owner waits this long before it takes its zone back, so a peer that flaps does
/// not drag its zone's traffic along.
pub const DEFAULT_HOLD_DOWN_S: u64 = 30;
/// The hold-down doubles for every recent change of the same zone, up to this.
pub const DEFAULT_DAMPING_MAX_S: u64 = 600;
/// Where the packages' upgrade scripts put the restart marker (systemd's RuntimeDirectory).
pub const DEFAULT_RESTART_MARKER: &str = "/run/gateway-agent/restart";
/// A spot notice gives 120 s; a poll a second costs nothing (IMDS is local).
pub const DEFAULT_IMDS_POLL_MS: u64 = 1000;
/// Packets already on their way to this gateway (route caches, in-flight segments) arrive
/// within a few seconds of the route change.
pub const DEFAULT_GRACE_S: u64 = 5;
/// Under the unit's `TimeoutStopSec=150s`, and under a spot notice's two minutes.
pub const DEFAULT_DRAIN_TIMEOUT_S: u64 = 90;
/// Ten minutes ahead of a scheduled reboot or retirement.
pub const DEFAULT_MAINTENANCE_LEAD_S: u64 = 600;
/// A notify script that takes longer is stuck; it is killed and the failure logged.
pub const DEFAULT_HOOK_TIMEOUT_S: u64 = 10;
/// Localhost only: metrics are for the node's Prometheus agent, not the network.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9701";
/// Next to the kernel table number; any free port works.
pub const DEFAULT_HEALTH_PORT: u16 = 7701;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    /// Observe and decide as usual; log every change instead of making it.
    #[serde(default)]
    pub dry_run: bool,
    pub group: Group,
    #[serde(default)]
    pub eni: Eni,
    #[serde(default)]
    pub routes: Routes,
    #[serde(default)]
    pub kernel: Kernel,
    #[serde(default)]
    pub self_check: SelfCheck,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    #[serde(default)]
    pub boot: Boot,
    #[serde(default)]
    pub aws: Aws,
    #[serde(default)]
    pub imds: Imds,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub failover: Failover,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub drain: Drain,
    #[serde(default)]
    pub events: Events,
    #[serde(default)]
    pub metrics: Metrics,
    /// Conditional routes (`[[conditional]]` tables), in file order.
    #[serde(default)]
    pub conditional: Vec<Conditional>,
}

/// "While `probe` does not answer, route `destinations` in `tables` via this gateway's ENI."
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditional {
    #[serde(default)]
    pub name: Option<String>,
    pub probe: String,
    pub destinations: Vec<String>,
    #[serde(default)]
    pub tables: Vec<String>,
}

impl Conditional {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.probe.clone())
    }

    /// The probe address (validation refused anything else).
    pub fn target(&self) -> Option<Ipv4Addr> {
        self.probe.trim().parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Events {
    pub command: Vec<String>,
    pub timeout_s: u64,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            timeout_s: DEFAULT_HOOK_TIMEOUT_S,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    pub listen: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            listen: DEFAULT_METRICS_LISTEN.to_owned(),
        }
    }
}

impl Metrics {
    /// `None` when turned off (validation refused anything unparsable).
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.trim().parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Drain {
    pub handover_on_stop: bool,
    pub restart_marker: PathBuf,
    pub imds_poll_ms: u64,
    pub grace_s: u64,
    pub timeout_s: u64,
    pub maintenance_lead_s: u64,
    pub set_unhealthy: bool,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            handover_on_stop: true,
            restart_marker: PathBuf::from(DEFAULT_RESTART_MARKER),
            imds_poll_ms: DEFAULT_IMDS_POLL_MS,
            grace_s: DEFAULT_GRACE_S,
            timeout_s: DEFAULT_DRAIN_TIMEOUT_S,
            maintenance_lead_s: DEFAULT_MAINTENANCE_LEAD_S,
            set_unhealthy: false,
        }
    }
}

impl Drain {
    pub fn imds_poll(&self) -> Duration {
        Duration::from_millis(self.imds_poll_ms)
    }
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_s)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Control {
    pub socket: PathBuf,
    /// A group whose members may use the socket too (mode 0660); none: root only (0600).
    pub group: Option<String>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(crate::control::DEFAULT_SOCKET),
            group: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The gateway group tag value: gateways with the same name back each other up.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Eni {
    /// Zone → ENI ID; a zone not listed finds its ENI by tags.
    pub ids: BTreeMap<String, String>,
    pub device_index: u32,
}

impl Default for Eni {
    fn default() -> Self {
        Self {
            ids: BTreeMap::new(),
            device_index: DEFAULT_DEVICE_INDEX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Routes {
    pub destinations: Vec<String>,
    /// Zone → route table IDs; a zone not listed finds its tables by tags.
    pub tables: BTreeMap<String, Vec<String>>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            destinations: DEFAULT_DESTINATIONS.iter().map(|d| d.to_string()).collect(),
            tables: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kernel {
    pub table: u32,
    pub rule_priority: u32,
    pub ipv4_forwarding: bool,
    pub ipv6_forwarding: bool,
    pub reconcile_interval_ms: u64,
}

impl Default for Kernel {
    fn default() -> Self {
        Self {
            table: netconf::DEFAULT_TABLE,
            rule_priority: netconf::DEFAULT_RULE_PRIORITY,
            ipv4_forwarding: true,
            ipv6_forwarding: false,
            reconcile_interval_ms: DEFAULT_RECONCILE_INTERVAL_MS,
        }
    }
}

impl Kernel {
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_millis(self.reconcile_interval_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfCheck {
    pub icmp_targets: Vec<String>,
    pub units: Vec<String>,
    pub timeout_ms: u64,
    pub attempts: u32,
}

impl Default for SelfCheck {
    fn default() -> Self {
        Self {
            icmp_targets: Vec::new(),
            units: Vec::new(),
            timeout_ms: DEFAULT_SELF_CHECK_TIMEOUT_MS,
            attempts: DEFAULT_SELF_CHECK_ATTEMPTS,
        }
    }
}

impl SelfCheck {
    /// The targets, parsed (validation already refused anything else).
    pub fn targets(&self) -> Vec<Ipv4Addr> {
        self.icmp_targets
            .iter()
            .filter_map(|t| t.trim().parse().ok())
            .collect()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lifecycle {
    pub launch_hook: Option<String>,
    pub heartbeat_interval_s: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            launch_hook: None,
            heartbeat_interval_s: DEFAULT_HEARTBEAT_INTERVAL_S,
        }
    }
}

impl Lifecycle {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Boot {
    pub timeout_s: u64,
    pub attach_timeout_s: u64,
}

impl Default for Boot {
    fn default() -> Self {
        Self {
            timeout_s: DEFAULT_BOOT_TIMEOUT_S,
            attach_timeout_s: DEFAULT_ATTACH_TIMEOUT_S,
        }
    }
}

impl Boot {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    pub fn attach_timeout(&self) -> Duration {
        Duration::from_secs(self.attach_timeout_s)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Aws {
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Imds {
    pub endpoint: String,
    pub timeout_ms: u64,
}

impl Default for Imds {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_IMDS_ENDPOINT.to_owned(),
            timeout_ms: DEFAULT_IMDS_TIMEOUT_MS,
        }
    }
}

impl Imds {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: DEFAULT_LOG_LEVEL.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirm {
    /// A peer that stops answering is dead only when the API, its lease or its own last word
    /// says so too.
    Api,
    /// ICMP silence alone is enough (appliances without an agent); a partition then moves routes.
    Icmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    Auto,
    Manual,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Failover {
    pub enabled: bool,
    pub probe_interval_ms: u64,
    /// `None`: the probe interval.
    pub probe_timeout_ms: Option<u64>,
    pub fall: u32,
    pub rise: u32,
    pub confirm: Confirm,
    pub lease_renew_ms: u64,
    pub lease_ttl_ms: u64,
    pub failback: Failback,
    pub hold_down_s: u64,
    pub damping_max_s: u64,
    pub health_port: u16,
    pub ring: Vec<String>,
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            enabled: true,
            probe_interval_ms: DEFAULT_PROBE_INTERVAL_MS,
            probe_timeout_ms: None,
            fall: DEFAULT_FALL,
            rise: DEFAULT_RISE,
            confirm: Confirm::Api,
            lease_renew_ms: DEFAULT_LEASE_RENEW_MS,
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
            failback: Failback::Auto,
            hold_down_s: DEFAULT_HOLD_DOWN_S,
            damping_max_s: DEFAULT_DAMPING_MAX_S,
            health_port: DEFAULT_HEALTH_PORT,
            ring: Vec::new(),
        }
    }
}

impl Failover {
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms.unwrap_or(self.probe_interval_ms))
    }
    pub fn lease_renew(&self) -> Duration {
        Duration::from_millis(self.lease_renew_ms)
    }
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
    pub fn hold_down(&self) -> Duration {
        Duration::from_secs(self.hold_down_s)
    }
    pub fn damping_max(&self) -> Duration {
        Duration::from_secs(self.damping_max_s)
    }
}

/// A CIDR as AWS writes it, checked: `Err` explains what is wrong and gives the canonical form
/// when only host bits are set.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let Some((addr, len)) = text.split_once('/') else {
        return Err("is not a CIDR (address/prefix length), e.g. \"0.0.0.0/0\"".to_owned());
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("prefix length {len:?} is not 0 to {max}"))?;
    let network = match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    if network != addr {
        return Err(format!(
            "has host bits set; AWS wants the network address: \"{network}/{len}\""
        ));
    }
    Ok((addr, len))
}

/// One problem with one key, phrased as `key: what is wrong; how to fix it`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{}: cannot read the config file: {source}; create it, or point --config or \
         GATEWAY_AGENT_CONFIG at the right file",
        path.display()
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {key}: {message}; {fix}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
        fix: &'static str,
    },
    /// Every problem found, one per line, so a single `check-config` run shows them all.
    #[error("{}", lines(path, errors))]
    Invalid { path: PathBuf, errors: Vec<Invalid> },
}

fn lines(path: &Path, errors: &[Invalid]) -> String {
    let lines: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {e}", path.display()))
        .collect();
    lines.join("\n")
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only labels the errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (line, column) = position(text, span.start);
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                key: key_of(e.message(), text, span),
                message: e.message().trim().to_owned(),
                fix: fix_for(e.message()),
            }
        })?;
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                errors,
            })
        }
    }

    /// Checks what the types cannot: every problem, not just the first.
    pub fn validate(&self) -> Vec<Invalid> {
        let mut errors = Vec::new();
        let mut fail = |key: &str, message: String| {
            errors.push(Invalid {
                key: key.to_owned(),
                message,
            })
        };
        if self.version != VERSION {
            fail(
                "version",
                format!(
                    "unsupported value {}; this agent reads version = {VERSION}",
                    self.version
                ),
            );
        }
        if self.group.name.trim().is_empty() {
            fail(
                "group.name",
                "must not be empty; set it to the gateway group tag value, e.g. name = \"egress\""
                    .to_owned(),
            );
        }
        for (zone, id) in &self.eni.ids {
            if zone.trim().is_empty() {
                fail("eni.ids", "has an empty zone name; key each ENI by its availability zone, e.g. { \"us-east-1a\" = \"eni-0123456789abcdef0\" }".to_owned());
            }
            if !is_aws_id(id, "eni") {
                fail(
                    "eni.ids",
                    format!(
                        "{zone} = {id:?} is not an ENI ID; use the eni-... ID of that zone's persistent ENI, or remove the entry to find it by tags"
                    ),
                );
            }
        }
        if !(1..=MAX_DEVICE_INDEX).contains(&self.eni.device_index) {
            fail(
                "eni.device_index",
                format!(
                    "{} is out of range; use 1 to {MAX_DEVICE_INDEX} (0 is the primary interface), or remove the key for the default {DEFAULT_DEVICE_INDEX}",
                    self.eni.device_index
                ),
            );
        }
        if self.routes.destinations.is_empty() {
            fail(
                "routes.destinations",
                "is empty, so the agent would manage no route; list at least one CIDR, e.g. [\"0.0.0.0/0\"], or remove the key for the default".to_owned(),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for dest in &self.routes.destinations {
            match parse_cidr(dest.trim()) {
                Err(why) => fail("routes.destinations", format!("{dest:?} {why}")),
                Ok(_) if !seen.insert(dest.trim()) => fail(
                    "routes.destinations",
                    format!("{dest:?} is listed twice; remove one"),
                ),
                Ok(_) if dest.trim() != dest => fail(
                    "routes.destinations",
                    format!("{dest:?} has spaces around it; remove them"),
                ),
                Ok((IpAddr::V6(_), _)) if !self.kernel.ipv6_forwarding => fail(
                    "routes.destinations",
                    format!(
                        "{dest:?} is IPv6 but kernel.ipv6_forwarding is false, so this gateway could not carry it; set kernel.ipv6_forwarding = true"
                    ),
                ),
                Ok(_) => {}
            }
        }
        for (zone, tables) in &self.routes.tables {
            if zone.trim().is_empty() {
                fail("routes.tables", "has an empty zone name; key each list by its availability zone, e.g. { \"us-east-1a\" = [\"rtb-0123456789abcdef0\"] }".to_owned());
            }
            if tables.is_empty() {
                fail(
                    "routes.tables",
                    format!(
                        "{zone} = [] lists no route table; list its rtb-... IDs, or remove the entry to find them by tags"
                    ),
                );
            }
            for id in tables {
                if !is_aws_id(id, "rtb") {
                    fail(
                        "routes.tables",
                        format!("{zone}: {id:?} is not a route table ID; use rtb-... IDs"),
                    );
                }
            }
        }
        // 0 is unspec and 253-255 are the kernel's default/main/local tables: sharing them would
        // make our read-diff-apply fight the system's own routes.
        if matches!(self.kernel.table, 0 | 253..=255) {
            fail(
                "kernel.table",
                format!(
                    "{} is reserved by the kernel (0, 253 default, 254 main, 255 local); pick another number, or remove the key for the default {}",
                    self.kernel.table,
                    netconf::DEFAULT_TABLE
                ),
            );
        }
        // 0 is the local rule, 32766/32767 main/default: a rule there would shadow or be shadowed.
        if !(1..=32765).contains(&self.kernel.rule_priority) {
            fail(
                "kernel.rule_priority",
                format!(
                    "{} is out of range; use 1 to 32765 (0 and 32766-32767 are the kernel's), or remove the key for the default {}",
                    self.kernel.rule_priority,
                    netconf::DEFAULT_RULE_PRIORITY
                ),
            );
        }
        if !(100..=3_600_000).contains(&self.kernel.reconcile_interval_ms) {
            fail(
                "kernel.reconcile_interval_ms",
                format!(
                    "{} is out of range; use 100 to 3600000, or remove the key for the default {DEFAULT_RECONCILE_INTERVAL_MS}",
                    self.kernel.reconcile_interval_ms
                ),
            );
        }
        for target in &self.self_check.icmp_targets {
            if target.trim().parse::<Ipv4Addr>().is_err() {
                fail(
                    "self_check.icmp_targets",
                    format!(
                        "{target:?} is not an IPv4 address; give addresses beyond the uplink that must answer ping, e.g. \"1.1.1.1\""
                    ),
                );
            }
        }
        for unit in &self.self_check.units {
            let valid = !unit.is_empty()
                && !unit.contains(char::is_whitespace)
                && !unit.contains('/')
                && unit.rsplit_once('.').is_some_and(|(name, kind)| {
                    !name.is_empty()
                        && [
                            "service", "socket", "target", "mount", "timer", "path", "scope",
                        ]
                        .contains(&kind)
                });
            if !valid {
                fail(
                    "self_check.units",
                    format!(
                        "{unit:?} is not a systemd unit name; give the full name, e.g. \"strongswan.service\""
                    ),
                );
            }
        }
        if !(10..=60_000).contains(&self.self_check.timeout_ms) {
            fail(
                "self_check.timeout_ms",
                format!(
                    "{} is out of range; use 10 to 60000, or remove the key for the default {DEFAULT_SELF_CHECK_TIMEOUT_MS}",
                    self.self_check.timeout_ms
                ),
            );
        }
        if !(1..=20).contains(&self.self_check.attempts) {
            fail(
                "self_check.attempts",
                format!(
                    "{} is out of range; use 1 to 20, or remove the key for the default {DEFAULT_SELF_CHECK_ATTEMPTS}",
                    self.self_check.attempts
                ),
            );
        }
        if let Some(hook) = &self.lifecycle.launch_hook {
            // AWS: 1-255 characters of [A-Za-z0-9\-_\/]
            let ok = (1..=255).contains(&hook.len())
                && hook
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c));
            if !ok {
                fail(
                    "lifecycle.launch_hook",
                    format!(
                        "{hook:?} is not a lifecycle hook name (1-255 letters, digits, -, _ or /); give the hook's name, or remove the key to find the group's launch hook"
                    ),
                );
            }
        }
        // AWS's shortest heartbeat timeout is 30 s: a slower heartbeat could let a hook expire.
        if !(1..=29).contains(&self.lifecycle.heartbeat_interval_s) {
            fail(
                "lifecycle.heartbeat_interval_s",
                format!(
                    "{} is out of range; use 1 to 29 (the shortest hook heartbeat timeout is 30 s), or remove the key for the default {DEFAULT_HEARTBEAT_INTERVAL_S}",
                    self.lifecycle.heartbeat_interval_s
                ),
            );
        }
        if !(10..=7200).contains(&self.boot.timeout_s) {
            fail(
                "boot.timeout_s",
                format!(
                    "{} is out of range; use 10 to 7200 (and keep it under the unit's TimeoutStartSec), or remove the key for the default {DEFAULT_BOOT_TIMEOUT_S}",
                    self.boot.timeout_s
                ),
            );
        }
        if self.boot.attach_timeout_s == 0 || self.boot.attach_timeout_s > self.boot.timeout_s {
            fail(
                "boot.attach_timeout_s",
                format!(
                    "{} is out of range; use 1 to boot.timeout_s ({}), or remove the key for the default {DEFAULT_ATTACH_TIMEOUT_S}",
                    self.boot.attach_timeout_s, self.boot.timeout_s
                ),
            );
        }
        if let Some(endpoint) = &self.aws.endpoint {
            let ok = reqwest::Url::parse(endpoint)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
            if !ok {
                fail(
                    "aws.endpoint",
                    format!(
                        "{endpoint:?} is not an http(s):// URL; remove the key to use AWS's regional endpoints, or give e.g. \"https://ec2.us-east-1.amazonaws.com\""
                    ),
                );
            }
        }
        // IMDS speaks plain HTTP on a link-local address; anything else is a typo.
        let endpoint_ok = reqwest::Url::parse(&self.imds.endpoint)
            .is_ok_and(|url| url.scheme() == "http" && url.host().is_some());
        if !endpoint_ok {
            fail(
                "imds.endpoint",
                format!(
                    "{:?} is not an http:// URL; remove the key to use {DEFAULT_IMDS_ENDPOINT}, \
                     or give an emulator's address such as \"http://127.0.0.1:8080\"",
                    self.imds.endpoint
                ),
            );
        }
        if !(1..=MAX_IMDS_TIMEOUT_MS).contains(&self.imds.timeout_ms) {
            fail(
                "imds.timeout_ms",
                format!(
                    "{} is out of range; use 1 to {MAX_IMDS_TIMEOUT_MS}, or remove the key for \
                     the default {DEFAULT_IMDS_TIMEOUT_MS}",
                    self.imds.timeout_ms
                ),
            );
        }
        let f = &self.failover;
        if !(20..=10_000).contains(&f.probe_interval_ms) {
            fail(
                "failover.probe_interval_ms",
                format!(
                    "{} is out of range; use 20 to 10000, or remove the key for the default {DEFAULT_PROBE_INTERVAL_MS}",
                    f.probe_interval_ms
                ),
            );
        }
        if let Some(t) = f.probe_timeout_ms
            && !(10..=f.probe_interval_ms.max(10) * 5).contains(&t)
        {
            fail(
                "failover.probe_timeout_ms",
                format!(
                    "{t} is out of range; use 10 to 5 × failover.probe_interval_ms ({}), or remove the key to use the probe interval",
                    f.probe_interval_ms * 5
                ),
            );
        }
        for (key, value, default) in [
            ("failover.fall", f.fall, DEFAULT_FALL),
            ("failover.rise", f.rise, DEFAULT_RISE),
        ] {
            // One lost packet must never move a route.
            if !(2..=100).contains(&value) {
                fail(
                    key,
                    format!(
                        "{value} is out of range; use 2 to 100 (one lost probe must never decide anything), or remove the key for the default {default}"
                    ),
                );
            }
        }
        if !(100..=60_000).contains(&f.lease_renew_ms) {
            fail(
                "failover.lease_renew_ms",
                format!(
                    "{} is out of range; use 100 to 60000, or remove the key for the default {DEFAULT_LEASE_RENEW_MS}",
                    f.lease_renew_ms
                ),
            );
        }
        // A TTL under two renewals would confirm the death of a gateway whose one renewal was slow.
        if f.lease_ttl_ms < f.lease_renew_ms.saturating_mul(2) || f.lease_ttl_ms > 600_000 {
            fail(
                "failover.lease_ttl_ms",
                format!(
                    "{} is out of range; use 2 × failover.lease_renew_ms ({}) to 600000, or remove the key for the default {DEFAULT_LEASE_TTL_MS}",
                    f.lease_ttl_ms,
                    f.lease_renew_ms.saturating_mul(2)
                ),
            );
        }
        if f.hold_down_s > 86_400 {
            fail(
                "failover.hold_down_s",
                format!(
                    "{} is out of range; use 0 to 86400, or remove the key for the default {DEFAULT_HOLD_DOWN_S}",
                    f.hold_down_s
                ),
            );
        }
        if (f.hold_down_s <= 86_400 && f.damping_max_s < f.hold_down_s) || f.damping_max_s > 86_400
        {
            fail(
                "failover.damping_max_s",
                format!(
                    "{} is out of range; use failover.hold_down_s ({}) to 86400, or remove the key for the default {DEFAULT_DAMPING_MAX_S}",
                    f.damping_max_s, f.hold_down_s
                ),
            );
        }
        if f.health_port == 0 {
            fail(
                "failover.health_port",
                format!(
                    "0 is not a port; use 1 to 65535, or remove the key for the default {DEFAULT_HEALTH_PORT}"
                ),
            );
        }
        let mut ring_seen = std::collections::BTreeSet::new();
        for zone in &f.ring {
            if zone.trim().is_empty() || zone.trim() != zone {
                fail(
                    "failover.ring",
                    format!(
                        "{zone:?} is not a zone name; list availability zones, e.g. [\"us-east-1a\", \"us-east-1b\"]"
                    ),
                );
            } else if !ring_seen.insert(zone.as_str()) {
                fail(
                    "failover.ring",
                    format!("{zone:?} is listed twice; every zone once, in successor order"),
                );
            }
        }
        for (i, rule) in self.conditional.iter().enumerate() {
            let key = |k: &str| format!("conditional[{i}].{k}");
            if rule.target().is_none() {
                fail(
                    &key("probe"),
                    format!(
                        "{:?} is not an IPv4 address; give the address whose silence activates the rule, e.g. an on-premises host reached over Direct Connect",
                        rule.probe
                    ),
                );
            }
            if rule.destinations.is_empty() {
                fail(
                    &key("destinations"),
                    "is empty; list the CIDRs to route via this gateway while the probe fails"
                        .into(),
                );
            }
            for dest in &rule.destinations {
                if let Err(why) = parse_cidr(dest) {
                    fail(&key("destinations"), format!("{dest:?} {why}"));
                } else if self.routes.destinations.contains(dest) {
                    fail(
                        &key("destinations"),
                        format!(
                            "{dest:?} is also in routes.destinations, which are always routed here; remove it from one of them"
                        ),
                    );
                } else if self.conditional[..i]
                    .iter()
                    .any(|r| r.destinations.contains(dest))
                {
                    fail(
                        &key("destinations"),
                        format!(
                            "{dest:?} is in an earlier conditional rule too; one rule per destination"
                        ),
                    );
                }
            }
            for id in &rule.tables {
                if !is_aws_id(id, "rtb") {
                    fail(
                        &key("tables"),
                        format!(
                            "{id:?} is not a route table ID; use rtb-... IDs, or leave the list empty for this zone's tables"
                        ),
                    );
                }
            }
        }
        let d = &self.drain;
        if !d.restart_marker.is_absolute() {
            fail(
                "drain.restart_marker",
                format!(
                    "{:?} is not an absolute path; remove the key for the default {DEFAULT_RESTART_MARKER} (the packages use it)",
                    d.restart_marker
                ),
            );
        }
        if !(100..=60_000).contains(&d.imds_poll_ms) {
            fail(
                "drain.imds_poll_ms",
                format!(
                    "{} is out of range; use 100 to 60000 (a spot notice gives 120 s), or remove the key for the default {DEFAULT_IMDS_POLL_MS}",
                    d.imds_poll_ms
                ),
            );
        }
        if d.grace_s > 60 {
            fail(
                "drain.grace_s",
                format!(
                    "{} is out of range; use 0 to 60, or remove the key for the default {DEFAULT_GRACE_S}",
                    d.grace_s
                ),
            );
        }
        // The unit gives a stop 150 s; the drain (plus its grace) must end before systemd kills.
        let grace = if d.grace_s > 60 { 0 } else { d.grace_s };
        if !(5..=140).contains(&(d.timeout_s + grace)) {
            fail(
                "drain.timeout_s",
                format!(
                    "{} is out of range; keep drain.timeout_s + drain.grace_s between 5 and 140 (the unit's TimeoutStopSec is 150 s), or remove the key for the default {DEFAULT_DRAIN_TIMEOUT_S}",
                    d.timeout_s
                ),
            );
        }
        if d.maintenance_lead_s > 7 * 86_400 {
            fail(
                "drain.maintenance_lead_s",
                format!(
                    "{} is out of range; use 0 to 604800 (a week), or remove the key for the default {DEFAULT_MAINTENANCE_LEAD_S}",
                    d.maintenance_lead_s
                ),
            );
        }
        if let Some(program) = self.events.command.first()
            && !Path::new(program).is_absolute()
        {
            fail(
                "events.command",
                format!(
                    "{program:?} is not an absolute path; give the program's full path, e.g. [\"/usr/local/bin/notify\", \"--page\"]"
                ),
            );
        }
        if !(1..=300).contains(&self.events.timeout_s) {
            fail(
                "events.timeout_s",
                format!(
                    "{} is out of range; use 1 to 300, or remove the key for the default {DEFAULT_HOOK_TIMEOUT_S}",
                    self.events.timeout_s
                ),
            );
        }
        if !self.metrics.listen.trim().is_empty() && self.metrics.addr().is_none() {
            fail(
                "metrics.listen",
                format!(
                    "{:?} is not an address:port; give e.g. \"{DEFAULT_METRICS_LISTEN}\", or \"\" to turn /metrics off",
                    self.metrics.listen
                ),
            );
        }
        if let Some(g) = &self.control.group
            && (g.is_empty() || g.contains([':', '/', ' ', '\n']))
        {
            fail(
                "control.group",
                format!(
                    "{g:?} is not a group name; name an existing group, e.g. \"gateway-ops\", or remove the key for root-only access"
                ),
            );
        }
        if !self.control.socket.is_absolute() {
            fail(
                "control.socket",
                format!(
                    "{:?} is not an absolute path; give e.g. \"{}\", or remove the key for the default",
                    self.control.socket,
                    crate::control::DEFAULT_SOCKET
                ),
            );
        }
        // A bare word parses as a filter on a target of that name, which would silently log
        // nothing: accept the level names, or a directive list that has an `=` in it.
        let level = self.log.level.trim();
        let is_level = ["error", "warn", "info", "debug", "trace", "off"]
            .iter()
            .any(|name| name.eq_ignore_ascii_case(level));
        let is_filter =
            level.contains('=') && tracing_subscriber::EnvFilter::try_new(level).is_ok();
        if !is_level && !is_filter {
            fail(
                "log.level",
                format!(
                    "{:?} is not a log filter; use error, warn, info, debug or trace \
                     (or a filter such as \"info,gateway_agent=debug\")",
                    self.log.level
                ),
            );
        }
        errors
    }
}

/// `eni-0123abcd` / `rtb-...`: the prefix, a dash, then 8 or 17 hex digits as AWS issues them
/// (moto and older resources use 8 or 17; anything hex from 8 to 17 is accepted).
fn is_aws_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            (8..=17).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit())
        })
}

/// 1-based line and column of byte `offset`, as editors show them.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The dotted key an error is about. A missing key has no span of its own: toml points at the
/// table that lacks it, or at nothing for the top level.
fn key_of(message: &str, text: &str, span: Range<usize>) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match missing {
        Some(field) if span.is_empty() => field.to_owned(),
        Some(field) => format!("{}.{field}", key_at(text, span)),
        None => key_at(text, span),
    }
}

/// The dotted key an error points at, e.g. `group.nmae`: toml reports a byte span, and an
/// operator thinks in keys. Good enough for this file's flat `[table] key = value` shape.
fn key_at(text: &str, span: Range<usize>) -> String {
    let before = text.get(..span.start).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim());
    if line.starts_with('[') {
        return line.trim_matches(['[', ']']).trim().to_owned();
    }
    let key = line.split_once('=').map_or(line, |(k, _)| k).trim();
    match (table, key) {
        (_, "") => table.unwrap_or("(top level)").to_owned(),
        (Some(table), key) => format!("{table}.{key}"),
        (None, key) => key.to_owned(),
    }
}

fn fix_for(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove the key or correct its spelling"
    } else if message.contains("missing field") {
        "add the key; a minimal file is `version = 1`, then `[group]` with `name = \"...\"`"
    } else if message.contains("invalid type") || message.contains("invalid value") {
        "give a value of the expected type (strings in quotes, numbers without)"
    } else {
        "fix the TOML syntax at this position"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse("version = 1\n[group]\nname = \"egress\"\n").expect("valid config");
        assert_eq!(config.group.name, "egress");
        assert_eq!(config.imds, Imds::default());
        assert_eq!(config.imds.timeout(), Duration::from_millis(2000));
        assert_eq!(config.log.level, "info");
    }

    #[test]
    fn unknown_key_is_rejected_and_named() {
        let err = parse("version = 1\n[group]\nnmae = \"egress\"\n").expect_err("typo");
        let text = err.to_string();
        assert!(text.starts_with("test.toml:3:1: group.nmae: "), "{text}");
        assert!(text.contains("unknown field `nmae`"), "{text}");
        assert!(text.contains("correct its spelling"), "{text}");
    }

    #[test]
    fn empty_group_name_is_invalid() {
        let err = parse("version = 1\n[group]\nname = \" \"\n").expect_err("empty name");
        assert_eq!(
            err.to_string(),
            "test.toml: group.name: must not be empty; set it to the gateway group tag value, \
             e.g. name = \"egress\""
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "version = 2\n[group]\nname = \"\"\n[imds]\ntimeout_ms = 0\n";
        let Err(ConfigError::Invalid { errors, .. }) = parse(text) else {
            panic!("expected validation errors");
        };
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["version", "group.name", "imds.timeout_ms"]);
        assert!(errors[0].message.contains("unsupported value 2"));
    }

    #[test]
    fn missing_keys_are_named() {
        let err = parse("version = 1\n[group]\n").expect_err("no name");
        assert!(
            err.to_string()
                .starts_with("test.toml:2:1: group.name: missing field"),
            "{err}"
        );
        let err = parse("[group]\nname = \"egress\"\n").expect_err("no version");
        assert!(
            err.to_string()
                .starts_with("test.toml:1:1: version: missing field"),
            "{err}"
        );
    }

    #[test]
    fn log_level_must_be_a_level_or_a_filter() {
        let config = "version = 1\n[group]\nname = \"egress\"\n[log]\nlevel = ";
        assert!(parse(&format!("{config}\"DEBUG\"")).is_ok());
        assert!(parse(&format!("{config}\"info,gateway_agent=trace\"")).is_ok());
        let err = parse(&format!("{config}\"loud\"")).expect_err("not a level");
        assert!(
            err.to_string()
                .starts_with("test.toml: log.level: \"loud\" is not"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse("version = \"1\"\n[group]\nname = \"egress\"\n").expect_err("type");
        assert!(
            err.to_string().starts_with("test.toml:1:11: version: "),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = std::env::temp_dir().join("gateway-agent-test-no-such-dir/config.toml");
        let err = Config::load(&path).expect_err("missing file");
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string().starts_with(&path.display().to_string()),
            "{err}"
        );
    }

    const MIN: &str = "version = 1\n[group]\nname = \"egress\"\n";

    /// Every validation rule: (extra TOML, key named, fragment of the fix).
    #[test]
    fn every_validation_message_names_key_and_fix() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[eni]\nids = { \"us-east-1a\" = \"vol-123\" }",
                "eni.ids",
                "not an ENI ID",
            ),
            (
                "[eni]\nids = { \"\" = \"eni-0123abcd\" }",
                "eni.ids",
                "empty zone name",
            ),
            (
                "[eni]\ndevice_index = 0",
                "eni.device_index",
                "0 is the primary",
            ),
            (
                "[eni]\ndevice_index = 16",
                "eni.device_index",
                "use 1 to 15",
            ),
            (
                "[routes]\ndestinations = []",
                "routes.destinations",
                "at least one CIDR",
            ),
            (
                "[routes]\ndestinations = [\"10.0.0.0\"]",
                "routes.destinations",
                "is not a CIDR",
            ),
            (
                "[routes]\ndestinations = [\"10.0.0.1/16\"]",
                "routes.destinations",
                "\"10.0.0.0/16\"",
            ),
            (
                "[routes]\ndestinations = [\"10.0.0.0/33\"]",
                "routes.destinations",
                "0 to 32",
            ),
            (
                "[routes]\ndestinations = [\"10.0.0.300/8\"]",
                "routes.destinations",
                "not an IP address",
            ),
            (
                "[routes]\ndestinations = [\"0.0.0.0/0\", \"0.0.0.0/0\"]",
                "routes.destinations",
                "listed twice",
            ),
            (
                "[routes]\ndestinations = [\"::/0\"]",
                "routes.destinations",
                "kernel.ipv6_forwarding = true",
            ),
            (
                "[routes]\ntables = { \"us-east-1a\" = [] }",
                "routes.tables",
                "lists no route table",
            ),
            (
                "[routes]\ntables = { \"us-east-1a\" = [\"eni-0123abcd\"] }",
                "routes.tables",
                "not a route table ID",
            ),
            ("[kernel]\ntable = 254", "kernel.table", "254 main"),
            (
                "[kernel]\nrule_priority = 32766",
                "kernel.rule_priority",
                "use 1 to 32765",
            ),
            (
                "[kernel]\nreconcile_interval_ms = 5",
                "kernel.reconcile_interval_ms",
                "use 100 to",
            ),
            (
                "[self_check]\nicmp_targets = [\"example.com\"]",
                "self_check.icmp_targets",
                "not an IPv4 address",
            ),
            (
                "[self_check]\nunits = [\"strongswan\"]",
                "self_check.units",
                "\"strongswan.service\"",
            ),
            (
                "[self_check]\ntimeout_ms = 0",
                "self_check.timeout_ms",
                "use 10 to",
            ),
            (
                "[self_check]\nattempts = 0",
                "self_check.attempts",
                "use 1 to 20",
            ),
            (
                "[lifecycle]\nlaunch_hook = \"a hook\"",
                "lifecycle.launch_hook",
                "not a lifecycle hook name",
            ),
            (
                "[lifecycle]\nheartbeat_interval_s = 30",
                "lifecycle.heartbeat_interval_s",
                "30 s",
            ),
            (
                "[boot]\ntimeout_s = 5\nattach_timeout_s = 5",
                "boot.timeout_s",
                "use 10 to 7200",
            ),
            (
                "[boot]\nattach_timeout_s = 500",
                "boot.attach_timeout_s",
                "boot.timeout_s (240)",
            ),
            (
                "[aws]\nendpoint = \"ec2.amazonaws.com\"",
                "aws.endpoint",
                "not an http(s):// URL",
            ),
            (
                "[imds]\nendpoint = \"https://169.254.169.254\"",
                "imds.endpoint",
                "not an http:// URL",
            ),
            ("[imds]\ntimeout_ms = 0", "imds.timeout_ms", "out of range"),
            ("[log]\nlevel = \"loud\"", "log.level", "not a log filter"),
            (
                "[failover]\nprobe_interval_ms = 5",
                "failover.probe_interval_ms",
                "use 20 to 10000",
            ),
            (
                "[failover]\nprobe_timeout_ms = 5000",
                "failover.probe_timeout_ms",
                "5 × failover.probe_interval_ms (1000)",
            ),
            (
                "[failover]\nfall = 1",
                "failover.fall",
                "one lost probe must never decide",
            ),
            ("[failover]\nrise = 0", "failover.rise", "use 2 to 100"),
            (
                "[failover]\nlease_renew_ms = 50",
                "failover.lease_renew_ms",
                "use 100 to 60000",
            ),
            (
                "[failover]\nlease_ttl_ms = 1500",
                "failover.lease_ttl_ms",
                "2 × failover.lease_renew_ms (2000)",
            ),
            (
                "[failover]\nhold_down_s = 100000",
                "failover.hold_down_s",
                "use 0 to 86400",
            ),
            (
                "[failover]\nhold_down_s = 60\ndamping_max_s = 30",
                "failover.damping_max_s",
                "failover.hold_down_s (60)",
            ),
            (
                "[failover]\nhealth_port = 0",
                "failover.health_port",
                "0 is not a port",
            ),
            (
                "[failover]\nring = [\"us-east-1a\", \"us-east-1a\"]",
                "failover.ring",
                "listed twice",
            ),
            (
                "[events]\ncommand = [\"notify.sh\"]",
                "events.command",
                "not an absolute path",
            ),
            (
                "[events]\ntimeout_s = 0",
                "events.timeout_s",
                "use 1 to 300",
            ),
            (
                "[metrics]\nlisten = \"localhost\"",
                "metrics.listen",
                "not an address:port",
            ),
            (
                "[drain]\nimds_poll_ms = 10",
                "drain.imds_poll_ms",
                "use 100 to 60000",
            ),
            ("[drain]\ngrace_s = 61", "drain.grace_s", "use 0 to 60"),
            (
                "[drain]\ntimeout_s = 200",
                "drain.timeout_s",
                "TimeoutStopSec is 150 s",
            ),
            (
                "[drain]\nrestart_marker = \"restart\"",
                "drain.restart_marker",
                "not an absolute path",
            ),
            (
                "[control]\nsocket = \"control.sock\"",
                "control.socket",
                "not an absolute path",
            ),
            (
                "[[conditional]]\nprobe = \"on-prem\"\ndestinations = [\"10.1.0.0/16\"]",
                "conditional[0].probe",
                "not an IPv4 address",
            ),
            (
                "[[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = []",
                "conditional[0].destinations",
                "is empty",
            ),
            (
                "[[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\"0.0.0.0/0\"]",
                "conditional[0].destinations",
                "also in routes.destinations",
            ),
            (
                "[[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\"10.1.0.0/16\"]\n\
                 [[conditional]]\nprobe = \"192.0.2.2\"\ndestinations = [\"10.1.0.0/16\"]",
                "conditional[1].destinations",
                "earlier conditional rule",
            ),
            (
                "[[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\"10.1.0.0/16\"]\ntables = [\"10\"]",
                "conditional[0].tables",
                "not a route table ID",
            ),
        ];
        for (extra, key, fix) in cases {
            let text = format!("{MIN}{extra}\n");
            let Err(ConfigError::Invalid { errors, .. }) = parse(&text) else {
                panic!("{extra}: expected a validation error");
            };
            assert_eq!(errors.len(), 1, "{extra}: {errors:?}");
            assert_eq!(errors[0].key, *key, "{extra}");
            assert!(
                errors[0].message.contains(fix),
                "{extra}: {}",
                errors[0].message
            );
        }
    }

    #[test]
    fn a_full_config_parses() {
        let text = format!(
            "{MIN}[eni]\nids = {{ \"us-east-1a\" = \"eni-0123456789abcdef0\" }}\ndevice_index = 2\n\
             [routes]\ndestinations = [\"0.0.0.0/0\", \"10.50.0.0/16\", \"::/0\"]\n\
             tables = {{ \"us-east-1a\" = [\"rtb-0123abcd\"] }}\n\
             [kernel]\ntable = 100\nrule_priority = 100\nipv6_forwarding = true\nreconcile_interval_ms = 1000\n\
             [self_check]\nicmp_targets = [\"1.1.1.1\"]\nunits = [\"strongswan.service\"]\n\
             [lifecycle]\nlaunch_hook = \"gateway-launch\"\nheartbeat_interval_s = 20\n\
             [boot]\ntimeout_s = 120\nattach_timeout_s = 30\n[aws]\nendpoint = \"http://127.0.0.1:5000\"\n"
        );
        let config = parse(&text).expect("valid");
        assert_eq!(config.eni.device_index, 2);
        assert_eq!(config.routes.destinations.len(), 3);
        assert_eq!(config.self_check.targets(), vec![Ipv4Addr::new(1, 1, 1, 1)]);
        assert_eq!(config.boot.attach_timeout(), Duration::from_secs(30));
    }

    #[test]
    fn minimal_config_defaults_are_the_documented_ones() {
        let config = parse(MIN).expect("valid");
        assert_eq!(config.routes.destinations, ["0.0.0.0/0"]);
        assert_eq!(config.eni.device_index, DEFAULT_DEVICE_INDEX);
        assert!(config.eni.ids.is_empty() && config.routes.tables.is_empty());
        assert_eq!(config.kernel.table, netconf::DEFAULT_TABLE);
        assert!(config.kernel.ipv4_forwarding && !config.kernel.ipv6_forwarding);
        assert!(config.self_check.icmp_targets.is_empty());
        assert_eq!(
            config.boot.timeout(),
            Duration::from_secs(DEFAULT_BOOT_TIMEOUT_S)
        );
        let f = &config.failover;
        assert!(f.enabled && f.ring.is_empty());
        assert_eq!(f.probe_interval(), Duration::from_millis(200));
        assert_eq!(f.probe_timeout(), f.probe_interval());
        assert_eq!((f.fall, f.rise), (DEFAULT_FALL, DEFAULT_RISE));
        assert_eq!((f.confirm, f.failback), (Confirm::Api, Failback::Auto));
        assert_eq!(f.lease_ttl(), Duration::from_millis(DEFAULT_LEASE_TTL_MS));
        assert_eq!(f.hold_down(), Duration::from_secs(30));
        assert_eq!(
            config.control.socket,
            PathBuf::from(crate::control::DEFAULT_SOCKET)
        );
        assert!(config.conditional.is_empty());
    }

    #[test]
    fn failover_enums_name_their_values() {
        let err = parse(&format!("{MIN}[failover]\nconfirm = \"ping\"\n")).expect_err("bad enum");
        let text = err.to_string();
        assert!(text.contains("failover.confirm"), "{text}");
        assert!(text.contains("api") && text.contains("icmp"), "{text}");
        let c = parse(&format!(
            "{MIN}[failover]\nconfirm = \"icmp\"\nfailback = \"manual\"\n\
             [[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\"10.1.0.0/16\"]\n"
        ))
        .expect("valid");
        assert_eq!(c.failover.confirm, Confirm::Icmp);
        assert_eq!(c.failover.failback, Failback::Manual);
        assert_eq!(c.conditional[0].label(), "192.0.2.1");
    }

    #[test]
    fn unknown_key_in_a_new_table_is_named() {
        let err = parse(&format!("{MIN}[kernel]\ntabel = 5\n")).expect_err("typo");
        assert!(
            err.to_string()
                .starts_with("test.toml:5:1: kernel.tabel: unknown field"),
            "{err}"
        );
        let err = parse("version = 1\n").expect_err("no group");
        assert!(
            err.to_string()
                .starts_with("test.toml:1:1: group: missing field"),
            "{err}"
        );
    }
}
