//! Command line: `gateway-agent run | check-config | version`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config;

/// Overrides the default config path when `--config` is not given.
pub const CONFIG_ENV: &str = "GATEWAY_AGENT_CONFIG";

#[derive(Debug, Parser)]
#[command(name = "gateway-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground (what systemd starts).
    Run(ConfigArg),
    /// Check the config file and print every problem, one per line (exit status 2 on error).
    CheckConfig(ConfigArg),
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file [default: $GATEWAY_AGENT_CONFIG, else /etc/gateway-agent/config.toml]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// `--config`, else `$GATEWAY_AGENT_CONFIG`, else [`config::DEFAULT_PATH`].
    pub fn path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subcommands() {
        let cli =
            Cli::try_parse_from(["gateway-agent", "run", "--config", "/tmp/a.toml"]).expect("run");
        let Command::Run(arg) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(arg.path(), PathBuf::from("/tmp/a.toml"));
        assert!(Cli::try_parse_from(["gateway-agent", "check-config"]).is_ok());
        assert!(Cli::try_parse_from(["gateway-agent", "version"]).is_ok());
        assert!(Cli::try_parse_from(["gateway-agent", "bogus"]).is_err());
    }
}
