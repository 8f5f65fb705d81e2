//! Process exit codes: the one place every error kind is mapped to its code.
//!
//! Units, scripts and the packages depend on these numbers (the unit's
//! `RestartPreventExitStatus=2`, the man page's EXIT STATUS, the lab tests): never renumber,
//! only add.
//!
//! | code | [`Exit`]        | commands                    | when |
//! |-----:|-----------------|-----------------------------|------|
//! | 0    | `Ok`            | all                         | done: `run` stopped cleanly (a stop signal, a planned exit), the config is valid, the agent did the command |
//! | 1    | `Other`         | all                         | anything below does not cover: the netlink socket or a signal handler cannot be set up, the IMDS HTTP client cannot be built, the agent's answer cannot be read |
//! | 2    | `Config`        | `run`, `check-config`, any  | bad config file, or bad command line (clap exits 2 itself); restarting cannot fix it, so the unit sets `RestartPreventExitStatus=2` |
//! | 3    | `Imds`          | `run`                       | IMDS answered, but not usefully (refused the token, lacks required metadata), or stayed silent for the whole boot deadline |
//! | 4    | `Boot`          | `run`                       | a boot step failed ([`BootError`]: ENI not found or not claimable, kernel, self-check, routes, lifecycle action); the launch lifecycle action was ABANDONed when there was one |
//! | 5    | `Unreachable`   | `status`, `failback`, `failover`, `drain`, `undrain`, `pause`, `resume` | the agent is not reachable on its control socket: no socket, nobody listening, no permission, no answer in time, the connection broke |
//! | 6    | `Refused`       | the same                    | the agent answered and refused the command (`error <reason>`: wrong zone, self-check failing...) |

use crate::agent::{self, BootError};
use crate::config::ConfigError;
use crate::{control, imds};

/// A process exit code; see the [module](self) for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Other = 1,
    Config = 2,
    Imds = 3,
    Boot = 4,
    /// A control command could not reach the agent.
    Unreachable = 5,
    /// A control command reached the agent, which refused it.
    Refused = 6,
}

impl Exit {
    /// Every code, in order, for the man page.
    pub const ALL: [Exit; 7] = [
        Exit::Ok,
        Exit::Other,
        Exit::Config,
        Exit::Imds,
        Exit::Boot,
        Exit::Unreachable,
        Exit::Refused,
    ];

    pub const fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, in one line (the man page's EXIT STATUS).
    pub const fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success",
            Exit::Other => "any other failure (the message names the call or resource)",
            Exit::Config => {
                "bad command line or configuration; the unit does not restart into it (RestartPreventExitStatus=2)"
            }
            Exit::Imds => {
                "IMDS answered, but not usefully (refused the token, lacks required metadata), or stayed silent for the whole boot deadline"
            }
            Exit::Boot => {
                "a boot step failed (the message names it); the launch lifecycle action was abandoned"
            }
            Exit::Unreachable => {
                "a control command could not reach the agent on its control socket"
            }
            Exit::Refused => {
                "a control command reached the agent, which refused it (the reason follows)"
            }
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// `run`, after it returned an error.
impl From<&agent::Error> for Exit {
    fn from(error: &agent::Error) -> Self {
        match error {
            // Not an answer from IMDS: the HTTP client itself could not be built.
            agent::Error::Imds(imds::Error::Client(_)) => Self::Other,
            agent::Error::Imds(_) | agent::Error::ImdsDeadline(_) => Self::Imds,
            agent::Error::Boot(error) => Self::from(error.as_ref()),
            agent::Error::Signal { .. } | agent::Error::Netconf(_) => Self::Other,
        }
    }
}

/// Every boot step's failure is a failed boot.
impl From<&BootError> for Exit {
    fn from(error: &BootError) -> Self {
        match error {
            BootError::LifecycleLookup { .. }
            | BootError::FindEni { .. }
            | BootError::Claim { .. }
            | BootError::Kernel { .. }
            | BootError::SelfCheck { .. }
            | BootError::Reclaim { .. }
            | BootError::CompleteLifecycle { .. } => Self::Boot,
        }
    }
}

/// `check-config`, and `run` before it starts: whatever is wrong with the file.
impl From<&ConfigError> for Exit {
    fn from(_: &ConfigError) -> Self {
        Self::Config
    }
}

/// The control commands.
impl From<&control::Error> for Exit {
    fn from(error: &control::Error) -> Self {
        match error {
            control::Error::Connect { .. }
            | control::Error::Io { .. }
            | control::Error::NoAnswer { .. }
            | control::Error::Timeout { .. } => Self::Unreachable,
            control::Error::Refused(_) => Self::Refused,
            // The agent's own socket setup, and answers this client cannot read.
            control::Error::Listen { .. } | control::Error::Answer { .. } => Self::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::io;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::agent::boot::{ClaimError, FindEniError, KernelError, ReclaimError, SelfCheckError};
    use crate::cloud::{Call, CloudError};
    use crate::netconf::{MacAddr, NetconfError};

    #[test]
    fn the_numbers_never_change() {
        let table = [
            (Exit::Ok, 0),
            (Exit::Other, 1),
            (Exit::Config, 2),
            (Exit::Imds, 3),
            (Exit::Boot, 4),
            (Exit::Unreachable, 5),
            (Exit::Refused, 6),
        ];
        for (exit, code) in table {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
    }

    fn api(action: &'static str) -> CloudError {
        CloudError::Api {
            call: Call::new("ec2", action, "eni-1"),
            code: Some("Unavailable".to_owned()),
            message: None,
            status: Some(503),
        }
    }

    fn sock() -> PathBuf {
        PathBuf::from("/run/gateway-agent/control.sock")
    }

    #[test]
    fn control_commands_tell_unreachable_from_refused() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let cases = [
            (
                control::Error::Connect {
                    path: sock(),
                    source: io::Error::from(io::ErrorKind::NotFound),
                },
                Exit::Unreachable,
            ),
            (
                control::Error::Connect {
                    path: sock(),
                    source: refused,
                },
                Exit::Unreachable,
            ),
            (
                control::Error::Io {
                    path: sock(),
                    source: io::Error::from(io::ErrorKind::ConnectionReset),
                },
                Exit::Unreachable,
            ),
            (control::Error::NoAnswer { path: sock() }, Exit::Unreachable),
            (
                control::Error::Timeout {
                    path: sock(),
                    after: Duration::from_secs(40),
                },
                Exit::Unreachable,
            ),
            (
                control::Error::Refused("us-east-1a is not this gateway's zone".into()),
                Exit::Refused,
            ),
            (
                control::Error::Answer {
                    expected: "JSON".into(),
                    answer: "{".into(),
                },
                Exit::Other,
            ),
            (
                control::Error::Listen {
                    path: sock(),
                    source: io::Error::from(io::ErrorKind::PermissionDenied),
                },
                Exit::Other,
            ),
        ];
        for (error, exit) in &cases {
            assert_eq!(Exit::from(error), *exit, "{error}");
            assert_eq!(
                error.is_unreachable(),
                *exit == Exit::Unreachable,
                "{error}"
            );
            if *exit == Exit::Unreachable {
                assert!(
                    error
                        .to_string()
                        .contains("/run/gateway-agent/control.sock"),
                    "names the socket: {error}"
                );
            }
        }
        assert_ne!(Exit::Unreachable.code(), Exit::Refused.code());
    }

    /// One of each step, with what its message must name.
    fn boot_errors() -> Vec<(BootError, &'static str)> {
        vec![
            (
                BootError::LifecycleLookup {
                    source: api("DescribeAutoScalingInstances"),
                },
                "launch lifecycle action",
            ),
            (
                BootError::FindEni {
                    zone: "us-east-1a".into(),
                    source: FindEniError::Untagged {
                        group: "g".into(),
                        zone: "us-east-1a".into(),
                    },
                },
                "persistent ENI of us-east-1a",
            ),
            (
                BootError::Claim {
                    eni: "eni-1".into(),
                    source: ClaimError::Api(api("DetachNetworkInterface")),
                },
                "claim eni-1: ec2 DetachNetworkInterface",
            ),
            (
                BootError::Kernel {
                    eni: "eni-1".into(),
                    source: KernelError::Netconf(NetconfError::LinkNotFound {
                        mac: MacAddr([2, 0, 0, 0, 0, 1]),
                    }),
                },
                "kernel config for eni-1",
            ),
            (
                BootError::SelfCheck {
                    source: SelfCheckError::Failed {
                        failed: vec!["icmp 192.0.2.1 FAILED".into()],
                    },
                },
                "self-check failed: icmp 192.0.2.1 FAILED",
            ),
            (
                BootError::Reclaim {
                    zone: "us-east-1a".into(),
                    source: ReclaimError::Api(api("ReplaceRoute")),
                },
                "route tables of us-east-1a: ec2 ReplaceRoute",
            ),
            (
                BootError::CompleteLifecycle {
                    group: "asg-a".into(),
                    hook: "launch".into(),
                    source: api("CompleteLifecycleAction"),
                },
                "completing the launch lifecycle action (group asg-a, hook launch)",
            ),
        ]
    }

    #[test]
    fn every_boot_step_exits_4_naming_the_step_and_keeping_its_source() {
        for (error, names) in boot_errors() {
            let text = error.to_string();
            assert!(text.contains(names), "{names:?} not in {text:?}");
            let source = error.source().expect("the step keeps its source");
            assert!(text.ends_with(&source.to_string()), "{text:?}");
            assert_eq!(Exit::from(&error), Exit::Boot, "{text}");
            let run = agent::Error::from(error);
            assert_eq!(Exit::from(&run), Exit::Boot, "{run}");
            assert!(run.to_string().starts_with("boot failed: "), "{run}");
        }
    }

    #[test]
    fn run_errors_map_to_their_codes() {
        let missing = imds::Error::Missing {
            call: "GET /latest/meta-data/instance-id".into(),
        };
        assert_eq!(Exit::from(&agent::Error::Imds(missing)), Exit::Imds);
        assert_eq!(
            Exit::from(&agent::Error::ImdsDeadline(Duration::from_secs(120))),
            Exit::Imds
        );
        let client = reqwest::Client::new()
            .get("not a url")
            .build()
            .expect_err("not a URL");
        assert_eq!(
            Exit::from(&agent::Error::Imds(imds::Error::Client(client))),
            Exit::Other
        );
        let signal = agent::Error::Signal {
            signal: "SIGTERM",
            source: io::Error::other("x"),
        };
        assert_eq!(Exit::from(&signal), Exit::Other);
        let netlink = agent::Error::Netconf(NetconfError::Socket(io::Error::other("x")));
        assert_eq!(Exit::from(&netlink), Exit::Other);
    }

    #[test]
    fn every_config_error_is_2() {
        let error = crate::config::Config::parse("group = ", std::path::Path::new("x.toml"))
            .expect_err("not TOML");
        assert_eq!(Exit::from(&error), Exit::Config);
        let error = crate::config::Config::load(std::path::Path::new("/nonexistent/x.toml"))
            .expect_err("no file");
        assert_eq!(Exit::from(&error), Exit::Config);
    }
}
