//! Command line: `gateway-agent run | check-config | status | failback | failover | drain |
//! undrain | pause | resume | prepare-runtime | version`.

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
    Run(RunArgs),
    /// Check the config file and print every problem, one per line (exit status 2 on error).
    CheckConfig(ConfigArg),
    /// Show who carries which zone, since when and why, the peers, routes and last decisions.
    Status(StatusArgs),
    /// Ask the running agent to take its own zone back now (waives the hold-down and
    /// `failback = "manual"`; the own self-check must still pass).
    Failback(FailbackArgs),
    /// Take a peer's zone now (the own self-check must pass unless --force).
    Failover(FailoverArgs),
    /// Maintenance: hand everything this gateway carries to healthy peers and stay out.
    Drain(Ctl),
    /// End a `drain`: take part again (own zone back after the hold-down, or `failback`).
    Undrain(Ctl),
    /// Keep deciding and logging, but write no route (leases are still renewed).
    Pause(Ctl),
    /// End a `pause`.
    Resume(Ctl),
    /// Run as root before the agent (the unit's ExecStartPre=+): give the control socket's
    /// directory control.group and the setgid bit, so the agent needs no chown (its syscall
    /// filter forbids it). Does nothing without control.group.
    PrepareRuntime(ConfigArg),
    /// Print the version.
    Version,
}

/// How to reach the running agent.
#[derive(Debug, Args)]
pub struct Ctl {
    /// The agent's control socket [default: control.socket of the config, else /run/gateway-agent/control.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the agent's JSON snapshot instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ctl: Ctl,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The zone to take (an availability zone name, e.g. us-east-1b).
    #[arg(long, value_name = "ZONE")]
    pub zone: String,
    /// Take it even though this gateway's own self-check fails.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub ctl: Ctl,
}

#[derive(Debug, Args)]
pub struct FailbackArgs {
    /// Must be this gateway's zone (a guard against running it on the wrong host).
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// The agent's control socket [default: control.socket of the config, else /run/gateway-agent/control.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Observe and decide as usual, log every route, ENI and kernel change it would make, and
    /// make none (the same as `dry_run = true` in the config).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub config: ConfigArg,
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
        assert_eq!(arg.config.path(), PathBuf::from("/tmp/a.toml"));
        assert!(!arg.dry_run);
        let cli = Cli::try_parse_from(["gateway-agent", "run", "--dry-run"]).expect("dry run");
        assert!(matches!(
            cli.command,
            Command::Run(RunArgs { dry_run: true, .. })
        ));
        assert!(Cli::try_parse_from(["gateway-agent", "check-config"]).is_ok());
        assert!(Cli::try_parse_from(["gateway-agent", "version"]).is_ok());
        assert!(Cli::try_parse_from(["gateway-agent", "bogus"]).is_err());
        let cli = Cli::try_parse_from(["gateway-agent", "failback", "--zone", "us-east-1a"])
            .expect("failback");
        let Command::Failback(args) = cli.command else {
            panic!("expected failback");
        };
        assert_eq!(args.zone.as_deref(), Some("us-east-1a"));
        for cmd in ["status", "drain", "undrain", "pause", "resume"] {
            assert!(Cli::try_parse_from(["gateway-agent", cmd]).is_ok(), "{cmd}");
        }
        assert!(Cli::try_parse_from(["gateway-agent", "status", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["gateway-agent", "failover"]).is_err());
        assert!(
            Cli::try_parse_from(["gateway-agent", "failover", "--zone", "z", "--force"]).is_ok()
        );
    }
}
