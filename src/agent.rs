//! The run loop. For now a skeleton: it learns who it is from IMDS, tells systemd it is ready,
//! and waits to be stopped. It claims no ENI and changes no route or kernel state yet.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal as signal_of};
use tokio::time::{Instant, Interval, MissedTickBehavior, interval, sleep};
use tracing::{info, warn};

use crate::config::Config;
use crate::imds::{self, Identity};
use crate::systemd;

/// Pause between identity attempts; each attempt already retries inside its own deadline.
const IMDS_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// While IMDS stays silent, repeat the warning this often, not once a second.
const IMDS_LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Imds(#[from] imds::Error),
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// Runs until SIGTERM or SIGINT. Returns an error only for what a restart cannot fix by waiting.
pub async fn run(config: Config) -> Result<(), Error> {
    // Handlers go in first: from here on a signal means "stop cleanly", even while IMDS is slow.
    let mut supervisor = Supervisor::new()?;
    let imds = imds::Client::new(&config.imds.endpoint, config.imds.timeout())?;

    systemd::status("waiting for IMDS");
    let Some(identity) = supervisor.drive(wait_for_identity(&imds)).await else {
        return stop();
    };
    let identity = identity?;
    log_identity(&config, &identity);

    systemd::ready("skeleton: identity read; routing not implemented yet");
    info!("skeleton: managing no ENI, routes or kernel state yet; waiting for SIGTERM or SIGINT");
    supervisor.drive(std::future::pending::<()>()).await;
    stop()
}

fn stop() -> Result<(), Error> {
    systemd::stopping();
    info!("stopping; nothing to hand over (this skeleton holds no routes)");
    Ok(())
}

/// Asks IMDS until it answers; only an answer that waiting cannot change ends this with `Err`.
async fn wait_for_identity(imds: &imds::Client) -> Result<Identity, imds::Error> {
    let started = Instant::now();
    let mut last_logged: Option<Instant> = None;
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        match imds.identity().await {
            Ok(identity) => {
                if attempt > 1 {
                    info!(attempt, waited = ?started.elapsed(), "IMDS answered");
                }
                return Ok(identity);
            }
            Err(error) if error.is_transient() => {
                if last_logged.is_none_or(|at| at.elapsed() >= IMDS_LOG_EVERY) {
                    warn!(%error, attempt, waited = ?started.elapsed(), "waiting for IMDS");
                    last_logged = Some(Instant::now());
                }
                sleep(IMDS_RETRY_PAUSE).await;
            }
            Err(error) => return Err(error),
        }
    }
}

fn log_identity(config: &Config, id: &Identity) {
    info!(
        group = %config.group.name,
        instance_id = %id.instance_id,
        region = %id.region,
        zone = %id.availability_zone,
        mac = %id.mac,
        target_lifecycle_state = %id.target_lifecycle_state.as_deref().unwrap_or("(not in an ASG)"),
        interfaces = id.interfaces.len(),
        "identity read from IMDS"
    );
    for i in &id.interfaces {
        info!(
            device_number = i.device_number,
            mac = %i.mac,
            interface_id = %i.interface_id,
            local_ipv4s = ?i.local_ipv4s,
            subnet_id = %i.subnet_id,
            subnet_ipv4_cidr_block = %i.subnet_ipv4_cidr_block.as_deref().unwrap_or("(none)"),
            vpc_id = %i.vpc_id,
            "interface"
        );
    }
}

/// What the agent answers to while it works: stop signals, SIGHUP and the watchdog timer.
struct Supervisor {
    term: Signal,
    int: Signal,
    hup: Signal,
    watchdog: Option<Interval>,
}

impl Supervisor {
    fn new() -> Result<Self, Error> {
        let install =
            |kind, signal| signal_of(kind).map_err(|source| Error::Signal { signal, source });
        let watchdog = systemd::watchdog_interval().map(|period| {
            let mut ticker = interval(period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker
        });
        Ok(Self {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
            watchdog,
        })
    }

    /// Drives `work` while petting the watchdog; `None` if a stop signal came first.
    async fn drive<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            let signal = tokio::select! {
                output = &mut work => return Some(output),
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                // The unit's ExecReload sends SIGHUP, whose default action would kill us.
                _ = self.hup.recv() => {
                    warn!("SIGHUP: reload is not implemented yet; ignoring");
                    continue;
                }
                _ = tick(&mut self.watchdog) => {
                    systemd::watchdog();
                    continue;
                }
            };
            info!(signal, "stop requested");
            return None;
        }
    }
}

async fn tick(watchdog: &mut Option<Interval>) {
    match watchdog {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
