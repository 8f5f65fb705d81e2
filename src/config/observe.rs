//! `[events]`, `[metrics]`, `[control]` and `[log]`: how operators hear from the agent and
//! talk to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::error::Problems;

/// A notify script that takes longer is stuck; it is killed and the failure logged.
pub const DEFAULT_HOOK_TIMEOUT_S: u64 = 10;
/// Localhost only: metrics are for the node's Prometheus agent, not the network.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9701";
/// Transitions and identity at `info`; per-probe detail stays at `debug`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

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

impl Events {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        if let Some(program) = self.command.first()
            && !Path::new(program).is_absolute()
        {
            problems.fail(
                "events.command",
                format!(
                    "{program:?} is not an absolute path; give the program's full path, e.g. [\"/usr/local/bin/notify\", \"--page\"]"
                ),
            );
        }
        if !(1..=300).contains(&self.timeout_s) {
            problems.fail(
                "events.timeout_s",
                format!(
                    "{} is out of range; use 1 to 300, or remove the key for the default {DEFAULT_HOOK_TIMEOUT_S}",
                    self.timeout_s
                ),
            );
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
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.trim().parse().ok()
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        if !self.listen.trim().is_empty() && self.addr().is_none() {
            problems.fail(
                "metrics.listen",
                format!(
                    "{:?} is not an address:port; give e.g. \"{DEFAULT_METRICS_LISTEN}\", or \"\" to turn /metrics off",
                    self.listen
                ),
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Control {
    pub socket: PathBuf,
    /// A group whose members may use the socket too (mode 0660); none: root only (0600).
    pub group: Option<String>,
    /// The group may also run the commands that change things (failover, drain, pause...);
    /// else it may ask `status` only.
    pub group_operates: bool,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(crate::control::DEFAULT_SOCKET),
            group: None,
            group_operates: false,
        }
    }
}

impl Control {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if self.group_operates && self.group.is_none() {
            problems.fail(
                "control.group_operates",
                "true without control.group: there is no group to let operate; name it in control.group, or remove this key",
            );
        }
        if let Some(g) = &self.group
            && (g.is_empty() || g.contains([':', '/', ' ', '\n']))
        {
            problems.fail(
                "control.group",
                format!(
                    "{g:?} is not a group name; name an existing group, e.g. \"gateway-ops\", or remove the key for root-only access"
                ),
            );
        }
        if !self.socket.is_absolute() {
            problems.fail(
                "control.socket",
                format!(
                    "{:?} is not an absolute path; give e.g. \"{}\", or remove the key for the default",
                    self.socket,
                    crate::control::DEFAULT_SOCKET
                ),
            );
        }
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

impl Log {
    pub(super) fn validate(&self, problems: &mut Problems) {
        // A bare word parses as a filter on a target of that name, which would silently log
        // nothing: accept the level names, or a directive list that has an `=` in it.
        let level = self.level.trim();
        let is_level = ["error", "warn", "info", "debug", "trace", "off"]
            .iter()
            .any(|name| name.eq_ignore_ascii_case(level));
        let is_filter =
            level.contains('=') && tracing_subscriber::EnvFilter::try_new(level).is_ok();
        if !is_level && !is_filter {
            problems.fail(
                "log.level",
                format!(
                    "{:?} is not a log filter; use error, warn, info, debug or trace \
                     (or a filter such as \"info,gateway_agent=debug\")",
                    self.level
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::super::testing::{each_names_key_and_fix, parse, valid};

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
    fn observe_rules_name_key_and_fix() {
        each_names_key_and_fix(&[
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
                "[events]\ntimeout_s = 301",
                "events.timeout_s",
                "use 1 to 300",
            ),
            (
                "[metrics]\nlisten = \"localhost\"",
                "metrics.listen",
                "not an address:port",
            ),
            (
                "[metrics]\nlisten = \"localhost:9701\"",
                "metrics.listen",
                "not an address:port",
            ),
            (
                "[control]\nsocket = \"control.sock\"",
                "control.socket",
                "not an absolute path",
            ),
            (
                "[control]\ngroup = \"\"",
                "control.group",
                "not a group name",
            ),
            (
                "[control]\ngroup = \"gateway ops\"",
                "control.group",
                "not a group name",
            ),
            (
                "[control]\ngroup = \"a:b\"",
                "control.group",
                "not a group name",
            ),
            (
                "[control]\ngroup_operates = true",
                "control.group_operates",
                "without control.group",
            ),
            ("[log]\nlevel = \"loud\"", "log.level", "not a log filter"),
            ("[log]\nlevel = \"\"", "log.level", "not a log filter"),
        ]);
    }

    #[test]
    fn observe_accepts_the_edges() {
        let config = valid(
            "[events]\ncommand = [\"/usr/local/bin/notify\", \"--page\"]\ntimeout_s = 300\n\
             [metrics]\nlisten = \" [::1]:9701 \"\n[control]\ngroup = \"gateway-ops\"\n\
             [log]\nlevel = \" off \"",
        );
        assert_eq!(config.events.timeout(), Duration::from_secs(300));
        assert_eq!(
            config.metrics.addr(),
            Some("[::1]:9701".parse::<SocketAddr>().expect("address"))
        );
        let off = valid("[metrics]\nlisten = \"\"\n[events]\ntimeout_s = 1");
        assert_eq!(off.metrics.addr(), None);
        assert_eq!(off.events.timeout(), Duration::from_secs(1));
    }
}
