//! What every section's tests share: sections are tested through a whole file, as an operator
//! would write it, so a rule that depends on another section is tested as it really runs.

use std::path::Path;

use super::{Config, ConfigError};

/// The smallest valid file; a case appends its section to it.
pub const MIN: &str = "version = 1\n[group]\nname = \"egress\"\n";

pub fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

/// `MIN` plus `extra`, which must be valid.
pub fn valid(extra: &str) -> Config {
    parse(&format!("{MIN}{extra}\n")).unwrap_or_else(|e| panic!("{extra}: {e}"))
}

/// Every case is `(extra TOML, key named, fragment of the fix)`: `MIN` plus the extra must
/// fail with exactly that one problem.
pub fn each_names_key_and_fix(cases: &[(&str, &str, &str)]) {
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
