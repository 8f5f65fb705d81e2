//! How a bad file is reported: a parse error at its `file:line:column`, or every validation
//! problem at once, each as `file: key: what is wrong; how to fix it`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

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

/// The list every section's `validate` adds to: a section never stops at its first problem,
/// and no section stops the next one from being checked, so one `check-config` run shows all.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<Invalid>);

impl Problems {
    pub(super) fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Invalid {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn into_vec(self) -> Vec<Invalid> {
        self.0
    }
}

fn lines(path: &Path, errors: &[Invalid]) -> String {
    let lines: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {e}", path.display()))
        .collect();
    lines.join("\n")
}

/// The `Parse` error for a TOML or type error in `text`, at the position toml points to.
pub(super) fn parse_error(e: &toml::de::Error, text: &str, path: &Path) -> ConfigError {
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
    use super::super::testing::parse;
    use super::*;
    use crate::config::Config;

    #[test]
    fn unknown_key_is_rejected_and_named() {
        let err = parse("version = 1\n[group]\nnmae = \"egress\"\n").expect_err("typo");
        let text = err.to_string();
        assert!(text.starts_with("test.toml:3:1: group.nmae: "), "{text}");
        assert!(text.contains("unknown field `nmae`"), "{text}");
        assert!(text.contains("correct its spelling"), "{text}");
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

    #[test]
    fn unknown_key_in_a_new_table_is_named() {
        let err = parse(&format!(
            "{}[kernel]\ntabel = 5\n",
            super::super::testing::MIN
        ))
        .expect_err("typo");
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

    /// (text, byte offset, line, column).
    #[test]
    fn positions_are_editor_lines_and_columns() {
        let cases: &[(&str, usize, usize, usize)] = &[
            ("", 0, 1, 1),
            ("abc", 2, 1, 3),
            ("a\nbc", 2, 2, 1),
            ("a\nbc", 3, 2, 2),
            ("a\n\nb", 3, 3, 1),
            ("a\nb", 99, 2, 2),
        ];
        for (text, offset, line, column) in cases {
            assert_eq!(
                position(text, *offset),
                (*line, *column),
                "{text:?} at {offset}"
            );
        }
    }

    /// (text, span start, key named).
    #[test]
    fn keys_are_found_from_the_span() {
        let cases: &[(&str, usize, &str)] = &[
            ("version = 1\n", 0, "version"),
            ("[group]\nnmae = 1\n", 8, "group.nmae"),
            ("[group]\nname = 1\n", 15, "group.name"),
            ("[ kernel ]\n", 0, "kernel"),
            ("[[conditional]]\nprobe = 1\n", 16, "conditional.probe"),
            ("[eni]\n\n", 6, "eni"),
            ("\n", 1, "(top level)"),
        ];
        for (text, start, key) in cases {
            assert_eq!(key_at(text, *start..*start), *key, "{text:?} at {start}");
        }
        assert_eq!(
            key_of("missing field `name`", "[group]\n", 0..7),
            "group.name"
        );
        assert_eq!(key_of("missing field `version`", "", 0..0), "version");
    }

    #[test]
    fn every_parse_error_kind_has_a_fix() {
        let cases = [
            ("unknown field `x`", "correct its spelling"),
            ("missing field `x`", "add the key"),
            ("invalid type: string, expected u32", "expected type"),
            ("invalid value: -1, expected u64", "expected type"),
            ("expected `]`", "TOML syntax"),
        ];
        for (message, fix) in cases {
            assert!(fix_for(message).contains(fix), "{message}");
        }
    }
}
