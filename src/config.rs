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
//! The defaults live in the constants below and nowhere else.
//!
//! | key               | default                       | meaning                                |
//! |-------------------|-------------------------------|----------------------------------------|
//! | `version`         | required, must be [`VERSION`] | format of this file                    |
//! | `group.name`      | required                      | the gateway group of this instance     |
//! | `imds.endpoint`   | [`DEFAULT_IMDS_ENDPOINT`]     | IMDS base URL (tests point elsewhere)  |
//! | `imds.timeout_ms` | [`DEFAULT_IMDS_TIMEOUT_MS`]   | overall deadline of one IMDS call      |
//! | `log.level`       | [`DEFAULT_LOG_LEVEL`]         | tracing filter; `RUST_LOG` overrides   |

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The only file format this agent reads; bumped when a change could be misread by an old agent.
pub const VERSION: u32 = 1;
/// Where systemd's unit and the packages put the file.
pub const DEFAULT_PATH: &str = "/etc/gateway-agent/config.toml";
/// The link-local IMDS address every EC2 instance answers on (IPv6: `http://[fd00:ec2::254]`).
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// IMDS answers in milliseconds on a healthy instance; 2 s leaves room for a few retries while
/// staying well inside systemd's start timeout.
pub const DEFAULT_IMDS_TIMEOUT_MS: u64 = 2000;
/// Upper bound for `imds.timeout_ms`: beyond a minute a stuck call only hides a broken IMDS.
pub const MAX_IMDS_TIMEOUT_MS: u64 = 60_000;
/// Transitions and identity at `info`; per-probe detail stays at `debug`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    pub group: Group,
    #[serde(default)]
    pub imds: Imds,
    #[serde(default)]
    pub log: Log,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The gateway group tag value: gateways with the same name back each other up.
    pub name: String,
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
}
