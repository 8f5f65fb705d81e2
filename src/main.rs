use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use gateway_agent::cli::{self, Cli, Command};
use gateway_agent::config::Config;
use gateway_agent::exit_code::Exit;
use gateway_agent::{agent, control};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let exit = match cli.command {
        Command::Version => {
            println!("gateway-agent {}", env!("CARGO_PKG_VERSION"));
            Exit::Ok
        }
        Command::CheckConfig(arg) => check_config(&arg.path()),
        Command::PrepareRuntime(arg) => prepare_runtime(&arg.path()),
        Command::Run(arg) => run(&arg.config.path(), arg.dry_run).await,
        Command::Failback(args) => failback(args).await,
        Command::Status(args) => status(args).await,
        Command::Failover(args) => {
            let command = control::Command::Failover {
                zone: args.zone,
                force: args.force,
            };
            ctl(&args.ctl, &command).await
        }
        Command::Drain(c) => ctl(&c, &control::Command::Drain).await,
        Command::Undrain(c) => ctl(&c, &control::Command::Undrain).await,
        Command::Pause(c) => ctl(&c, &control::Command::Pause).await,
        Command::Resume(c) => ctl(&c, &control::Command::Resume).await,
    };
    exit.into()
}

fn check_config(path: &Path) -> Exit {
    match Config::load(path) {
        Ok(_) => {
            println!("config OK: {}", path.display());
            Exit::Ok
        }
        Err(error) => {
            eprintln!("{error}");
            Exit::from(&error)
        }
    }
}

fn prepare_runtime(path: &Path) -> Exit {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Exit::from(&error);
        }
    };
    let Some(group) = config.control.group.as_deref() else {
        return Exit::Ok;
    };
    match control::prepare(&config.control.socket, group) {
        Ok(()) => {
            println!(
                "control socket {} given to group {group}",
                config.control.socket.display()
            );
            Exit::Ok
        }
        Err(error) => {
            eprintln!("gateway-agent prepare-runtime: {error}");
            Exit::from(&error)
        }
    }
}

/// The socket path is the only thing read from the config: a config broken since the agent
/// started must not stop an operator from talking to the running agent.
fn socket_of(socket: Option<&Path>, config: &cli::ConfigArg) -> std::path::PathBuf {
    socket.map(Path::to_path_buf).unwrap_or_else(|| {
        Config::load(&config.path())
            .map(|c| c.control.socket)
            .unwrap_or_else(|_| control::DEFAULT_SOCKET.into())
    })
}

/// Sends one command: the agent's answer, or why not (said on stderr) and the exit code.
async fn send(socket: &Path, command: &control::Command) -> Result<String, Exit> {
    control::send(socket, command)
        .await
        .map_err(|error| fail(command, &error))
}

/// Says why a control command failed; its exit code.
fn fail(command: &control::Command, error: &control::Error) -> Exit {
    eprintln!("gateway-agent {}: {error}", command.line());
    Exit::from(error)
}

async fn ctl(c: &cli::Ctl, command: &control::Command) -> Exit {
    match send(&socket_of(c.socket.as_deref(), &c.config), command).await {
        Ok(answer) => {
            println!("{answer}");
            Exit::Ok
        }
        Err(exit) => exit,
    }
}

async fn failback(args: cli::FailbackArgs) -> Exit {
    let socket = socket_of(args.socket.as_deref(), &args.config);
    match send(&socket, &control::Command::Failback { zone: args.zone }).await {
        Ok(answer) => {
            println!("{answer}");
            Exit::Ok
        }
        Err(exit) => exit,
    }
}

async fn status(args: cli::StatusArgs) -> Exit {
    let socket = socket_of(args.ctl.socket.as_deref(), &args.ctl.config);
    match send(&socket, &control::Command::Status).await {
        Ok(json) if args.json => {
            println!("{json}");
            Exit::Ok
        }
        Ok(json) => match serde_json::from_str(&json) {
            Ok(v) => {
                print!("{}", gateway_agent::status::render(&v));
                Exit::Ok
            }
            Err(e) => {
                let error = control::Error::Answer {
                    expected: format!("JSON ({e})"),
                    answer: json,
                };
                fail(&control::Command::Status, &error)
            }
        },
        Err(exit) => exit,
    }
}

async fn run(path: &Path, dry_run: bool) -> Exit {
    // The config names the log level, so it is read before logging exists; its errors go to
    // stderr, which systemd also puts in the journal.
    let mut config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Exit::from(&error);
        }
    };
    config.dry_run |= dry_run;
    init_logging(config.log.level.trim());
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %path.display(), "starting");
    match agent::run(config, path.to_path_buf()).await {
        Ok(()) => Exit::Ok,
        Err(error) => {
            tracing::error!("{error}");
            Exit::from(&error)
        }
    }
}

/// `RUST_LOG` wins over `log.level`, for a one-off debug session without editing the config.
fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let registry = tracing_subscriber::registry().with(filter);
    // Under journald, structured fields go to the journal natively; writing stderr as well
    // would log every line twice, since stderr is that same journal stream.
    let journald = stderr_is_journal()
        .then(|| gateway_agent::journal::Layer::new().ok())
        .flatten();
    // Fails only if a subscriber is already set, and then that one keeps logging.
    let _ = match journald {
        Some(journald) => registry.with(journald).try_init(),
        None => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
    };
}

/// systemd sets `JOURNAL_STREAM=dev:inode` for the service's stderr; children inherit the
/// variable, so it counts only if our stderr is still that stream.
fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| expected.to_str() == Some(format!("{}:{}", m.dev(), m.ino()).as_str()))
}
