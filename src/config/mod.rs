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
//! The defaults live in constants beside their section (re-exported here, linked below) and
//! nowhere else. Everything but `version` and `group.name` is optional: the zone's ENI and
//! route tables are found by their tags (`gateway-agent:group = <group.name>`,
//! `gateway-agent:zone = <availability zone>`).
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
//! | `kernel.table`                | [`crate::netconf::DEFAULT_TABLE`] | policy-routing table of the ENI                 |
//! | `kernel.rule_priority`        | [`crate::netconf::DEFAULT_RULE_PRIORITY`] | priority of the `from <eni address>` rules    |
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
//! | `aws.insecure_endpoint`      | `false`                          | accept a plain `http://` `aws.endpoint` off loopback (a lab emulator) |
//! | `aws.api_share`               | [`DEFAULT_API_SHARE`]            | share (0 < s <= 1) of each documented EC2/Auto Scaling token bucket this gateway spends; takeover writes may borrow past it |
//! | `imds.endpoint`               | [`DEFAULT_IMDS_ENDPOINT`]        | IMDS base URL (tests point elsewhere)           |
//! | `imds.timeout_ms`             | [`DEFAULT_IMDS_TIMEOUT_MS`]      | overall deadline of one IMDS call               |
//! | `log.level`                   | [`DEFAULT_LOG_LEVEL`]            | tracing filter; `RUST_LOG` overrides            |
//! | `failover.enabled`            | `true`                           | watch peers, take over a dead peer's zone       |
//! | `failover.probe_interval_ms`  | [`DEFAULT_PROBE_INTERVAL_MS`]    | ICMP probe period per peer (and own targets)    |
//! | `failover.probe_timeout_ms`   | the probe interval               | an echo later than this counts as lost          |
//! | `failover.fall`               | [`DEFAULT_FALL`]                 | consecutive lost probes before "down"           |
//! | `failover.rise`               | [`DEFAULT_RISE`]                 | consecutive answered probes before "up"         |
//! | `failover.confirm`            | `"api"`                          | `"api"`: a death needs API/lease/self-report evidence; `"icmp"`: ICMP alone (opt-in) |
//! | `failover.lease_renew_ms`     | [`DEFAULT_LEASE_RENEW_MS`]       | lease renewal and table reads while in trouble  |
//! | `failover.drift_interval_s`   | [`DEFAULT_DRIFT_INTERVAL_S`]     | route-table reads at steady state               |
//! | `failover.lease_ttl_ms`       | [`DEFAULT_LEASE_TTL_MS`]         | a lease unchanged this long confirms a death    |
//! | `failover.failback`           | `"auto"`                         | `"auto"`: a recovered owner reclaims after the hold-down; `"manual"`: only at boot or by `gateway-agent failback` |
//! | `failover.hold_down_s`        | [`DEFAULT_HOLD_DOWN_S`]          | continuous health before an owner reclaims      |
//! | `failover.damping_max_s`      | [`DEFAULT_DAMPING_MAX_S`]        | cap of the doubling hold-down of a flapping zone |
//! | `failover.health_port`        | [`DEFAULT_HEALTH_PORT`]          | TCP port of `/health` on the ENI address        |
//! | `failover.health_allow`      | `[]`                             | networks that may ask `/health` besides the group's peers and loopback |
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
//! | `control.group`               | none (root only)                 | a group that may also use the socket (mode 0660): `status` |
//! | `control.group_operates`      | `false`                          | the group may also run failover, failback, drain, undrain, pause, resume |

//!
//! # Checked once
//!
//! Each section checks itself and adds every problem it finds to one shared list, so a single
//! `check-config` run shows them all. Whatever a check accepts, the section's typed accessor
//! (`Failover::probe_timeout`, `Routes::cidrs`, `Metrics::addr`, ...) turns into a `Duration`,
//! an address or a CIDR: on a [`Config`] from [`Config::load`] or [`Config::parse`] those
//! accessors have no failure case left, so callers need not parse the raw strings and integers
//! themselves.

mod boot;
mod conditional;
mod drain;
mod endpoints;
mod error;
mod failover;
mod group;
mod kernel;
mod observe;
mod self_check;
#[cfg(test)]
mod testing;
mod value;

use std::path::Path;

use serde::Deserialize;

pub use boot::{
    Boot, DEFAULT_ATTACH_TIMEOUT_S, DEFAULT_BOOT_TIMEOUT_S, DEFAULT_HEARTBEAT_INTERVAL_S, Lifecycle,
};
pub use conditional::Conditional;
pub use drain::{
    DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_GRACE_S, DEFAULT_IMDS_POLL_MS, DEFAULT_MAINTENANCE_LEAD_S,
    DEFAULT_RESTART_MARKER, Drain, OnRebalance,
};
pub use endpoints::{
    ApiShare, Aws, DEFAULT_API_SHARE, DEFAULT_IMDS_ENDPOINT, DEFAULT_IMDS_TIMEOUT_MS, Imds,
    MAX_IMDS_TIMEOUT_MS,
};
pub use error::{ConfigError, Invalid};
pub use failover::{
    Confirm, DEFAULT_DAMPING_MAX_S, DEFAULT_DRIFT_INTERVAL_S, DEFAULT_FALL, DEFAULT_HEALTH_PORT,
    DEFAULT_HOLD_DOWN_S, DEFAULT_LEASE_RENEW_MS, DEFAULT_LEASE_TTL_MS, DEFAULT_PROBE_INTERVAL_MS,
    DEFAULT_RISE, Failback, Failover,
};
pub use group::{
    DEFAULT_DESTINATIONS, DEFAULT_DEVICE_INDEX, Eni, GROUP_TAG, Group, MAX_DEVICE_INDEX, Routes,
    ZONE_TAG,
};
pub use kernel::{DEFAULT_RECONCILE_INTERVAL_MS, Kernel};
pub use observe::{
    Control, DEFAULT_HOOK_TIMEOUT_S, DEFAULT_LOG_LEVEL, DEFAULT_METRICS_LISTEN, Events, Log,
    Metrics,
};
pub use self_check::{DEFAULT_SELF_CHECK_ATTEMPTS, DEFAULT_SELF_CHECK_TIMEOUT_MS, SelfCheck};
pub use value::parse_cidr;

/// The only file format this agent reads; bumped when a change could be misread by an old agent.
pub const VERSION: u32 = 1;
/// Where systemd's unit and the packages put the file.
pub const DEFAULT_PATH: &str = "/etc/gateway-agent/config.toml";

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

impl Config {
    /// Reads, parses and validates the file at `path`, and checks that neither it nor the
    /// event hook's program can be changed by anyone but root or this process's user (either
    /// could steer the agent: the file its routes, the hook whatever it runs).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut trust: Vec<Invalid> = Vec::new();
        if let Some(message) = untrusted(path, "the config file") {
            trust.push(Invalid {
                key: "file".into(),
                message,
            });
        }
        match Self::parse(&text, path) {
            Ok(config) => {
                if let Some(program) = config.events.command.first()
                    && let Some(message) = untrusted(Path::new(program), "the hook program")
                {
                    trust.push(Invalid {
                        key: "events.command".into(),
                        message,
                    });
                }
                if trust.is_empty() {
                    Ok(config)
                } else {
                    Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        errors: trust,
                    })
                }
            }
            Err(ConfigError::Invalid { path, errors }) => {
                trust.extend(errors);
                Err(ConfigError::Invalid {
                    path,
                    errors: trust,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Parses and validates `text`; `path` only labels the errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| error::parse_error(&e, text, path))?;
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

    /// Checks what the types cannot: every problem, not just the first. A section whose check
    /// depends on another is given that one. The call order is the order `check-config` prints
    /// the problems in, which operators and tests rely on: keep it when adding a section.
    pub fn validate(&self) -> Vec<Invalid> {
        let mut problems = error::Problems::default();
        if self.version != VERSION {
            problems.fail(
                "version",
                format!(
                    "unsupported value {}; this agent reads version = {VERSION}",
                    self.version
                ),
            );
        }
        self.group.validate(&mut problems);
        self.eni.validate(&mut problems);
        self.routes.validate(&self.kernel, &mut problems);
        self.kernel.validate(&mut problems);
        self.self_check.validate(&mut problems);
        self.lifecycle.validate(&mut problems);
        self.boot.validate(&mut problems);
        self.aws.validate(&mut problems);
        self.imds.validate(&mut problems);
        self.failover.validate(&mut problems);
        for (i, rule) in self.conditional.iter().enumerate() {
            rule.validate(i, &self.conditional[..i], &self.routes, &mut problems);
        }
        self.drain.validate(&mut problems);
        self.events.validate(&mut problems);
        self.metrics.validate(&mut problems);
        self.control.validate(&mut problems);
        self.log.validate(&mut problems);
        problems.into_vec()
    }
}

/// Why `path` (what it is: `what`) cannot be trusted, if it cannot: owned by someone other
/// than root or this process's user, or writable by its group or others.
fn untrusted(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            return Some(format!(
                "{what} {shown} cannot be examined: {e}; give an existing file"
            ));
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Some(format!(
            "{what} {shown} is owned by uid {}, neither root nor this agent's user (uid {me}): its owner could steer the agent; run chown root {shown}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "{what} {shown} is writable by its group or others (mode {:04o}): anyone who can write it could steer the agent; run chmod go-w {shown}",
            meta.mode() & 0o7777
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::testing::{MIN, parse};
    use super::*;
    use crate::netconf;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse("version = 1\n[group]\nname = \"egress\"\n").expect("valid config");
        assert_eq!(config.group.name, "egress");
        assert_eq!(config.imds, Imds::default());
        assert_eq!(config.imds.timeout(), Duration::from_millis(2000));
        assert_eq!(config.log.level, "info");
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

    /// The accessors a validated config promises cannot fail: one typed value per raw one.
    #[test]
    fn typed_accessors_of_a_valid_config_cover_every_value() {
        let text = format!(
            "{MIN}[routes]\ndestinations = [\"0.0.0.0/0\", \"10.50.0.0/16\"]\n\
             [self_check]\nicmp_targets = [\"1.1.1.1\", \"8.8.8.8\"]\n\
             [events]\ntimeout_s = 7\n[drain]\nmaintenance_lead_s = 120\n\
             [[conditional]]\nprobe = \"192.0.2.1\"\ndestinations = [\"10.1.0.0/16\"]\n"
        );
        let config = parse(&text).expect("valid");
        assert_eq!(
            config.routes.cidrs().len(),
            config.routes.destinations.len()
        );
        assert_eq!(
            config.self_check.targets().len(),
            config.self_check.icmp_targets.len()
        );
        let rule = &config.conditional[0];
        assert!(rule.target().is_some());
        assert_eq!(rule.cidrs().len(), rule.destinations.len());
        assert_eq!(config.events.timeout(), Duration::from_secs(7));
        assert_eq!(config.drain.maintenance_lead(), Duration::from_secs(120));
        assert!(config.metrics.addr().is_some());
    }

    /// Tests run as root, so a file root owns passes the owner rule; another owner is made with
    /// chown.
    #[test]
    fn a_config_or_hook_others_can_write_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("gateway-agent-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hook = dir.join("hook");
        std::fs::write(&hook, "#!/bin/sh\n").unwrap();
        let file = dir.join("config.toml");
        std::fs::write(
            &file,
            format!(
                "version = 1\n[group]\nname = \"egress\"\n[events]\ncommand = [\"{}\"]\n",
                hook.display()
            ),
        )
        .unwrap();
        let set = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let me = nix::unistd::geteuid();
        // (case, config mode, hook mode, hook owner, what the error must say; nothing: valid)
        type Case<'a> = (&'a str, u32, u32, Option<u32>, &'a [&'a str]);
        let cases: &[Case] = &[
            ("both private", 0o600, 0o755, None, &[]),
            (
                "config group-writable",
                0o660,
                0o755,
                None,
                &["file: the config file", "chmod go-w"],
            ),
            (
                "config world-writable",
                0o646,
                0o755,
                None,
                &["file: the config file", "mode 0646"],
            ),
            (
                "hook writable by others",
                0o644,
                0o757,
                None,
                &["events.command: the hook program", "chmod go-w"],
            ),
            (
                "hook owned by another user",
                0o644,
                0o755,
                Some(65534),
                &[
                    "events.command: the hook program",
                    "owned by uid 65534",
                    "chown root",
                ],
            ),
        ];
        for (name, config_mode, hook_mode, hook_owner, want) in cases {
            set(&file, *config_mode);
            set(&hook, *hook_mode);
            nix::unistd::chown(
                &hook,
                Some(nix::unistd::Uid::from_raw(
                    hook_owner.unwrap_or(me.as_raw()),
                )),
                None,
            )
            .unwrap();
            let result = Config::load(&file);
            if want.is_empty() {
                assert!(
                    result.is_ok(),
                    "{name}: {:?}",
                    result.err().map(|e| e.to_string())
                );
            } else {
                let text = result.expect_err(name).to_string();
                for w in *want {
                    assert!(text.contains(w), "{name}: {w:?} not in {text}");
                }
            }
        }
        // A missing hook is named too, beside any other problem of the file.
        std::fs::remove_file(&hook).unwrap();
        set(&file, 0o666);
        let text = Config::load(&file).unwrap_err().to_string();
        assert!(
            text.contains("file: the config file")
                && text.contains("events.command: the hook program"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
