//! The agent's life: boot (see [`boot`]), then the run loop, then a drain or a clean stop.
//!
//! Boot claims the zone's persistent ENI, configures the kernel, self-checks, reclaims the
//! zone's routes, completes the launch lifecycle action ([`lifecycle`]) and only then sends
//! `READY=1`. The run loop ([`watch`]) watches peers and route tables, takes over a dead peer's
//! zone, lets go when its owner comes back, steps aside when its own self-check fails, keeps
//! conditional routes ([`watch::conditional`]), answers the control socket, applies a SIGHUP reload,
//! repairs kernel drift every `kernel.reconcile_interval_ms` and pets the watchdog.
//!
//! A planned exit ends the loop: a notice in IMDS ([`exit`]: ASG termination, spot
//! interruption, rebalance recommendation, scheduled maintenance) or a SIGTERM. The [`drain`]
//! then hands every route this gateway carries to a healthy peer before it stops forwarding
//! (make-before-break) and completes the termination lifecycle action. A SIGTERM while the
//! restart marker exists (a package upgrade), or with `drain.handover_on_stop = false`, moves
//! no route.

pub mod boot;
pub mod drain;
pub mod exit;
pub mod lifecycle;
pub mod routes;
pub mod watch;

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal as signal_of};
use tokio::time::{Instant, Interval, MissedTickBehavior, interval, interval_at, sleep};
use tracing::{debug, error, info, warn};

use crate::cloud::{self, Autoscaling, Budget, Budgeted, Ec2, LifecycleResult};
use crate::config::Config;
use crate::imds::{self, Identity};
use crate::netconf::{self, NetConf};
use crate::systemd;

/// The EC2 and Auto Scaling adapters the agent runs with: the SDK's, behind its own budget.
type AgentEc2 = Budgeted<cloud::SdkEc2>;
type AgentAsg = Budgeted<cloud::SdkAutoscaling>;

pub use boot::BootError;

/// Pause between identity attempts; each attempt already retries inside its own deadline.
const IMDS_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// While IMDS stays silent, repeat the warning this often, not once a second.
const IMDS_LOG_EVERY: Duration = Duration::from_secs(30);
/// After a failed boot, how long ABANDON may take: the instance is going away, but the ASG
/// should learn it now rather than at the hook's timeout.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(20);
/// A kernel that keeps failing to reconcile is logged once a minute, not every interval.
const RECONCILE_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Imds(#[from] imds::Error),
    #[error(
        "IMDS: no answer within the boot deadline ({0:?}); the instance cannot learn who it is. \
         Check that the instance's metadata service is enabled (HttpEndpoint=enabled) and \
         reachable at imds.endpoint (default http://169.254.169.254; from a container, \
         HttpPutResponseHopLimit must be 2 or more)"
    )]
    ImdsDeadline(Duration),
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    /// Boxed: the steps' sources are large, and this error is returned from small functions.
    #[error("boot failed: {0}")]
    Boot(#[source] Box<BootError>),
    #[error("{0}")]
    Netconf(#[from] netconf::NetconfError),
}

impl From<BootError> for Error {
    fn from(error: BootError) -> Self {
        Self::Boot(Box::new(error))
    }
}

/// Runs until SIGTERM or SIGINT. Returns an error only for what a restart cannot fix by waiting.
/// `/metrics` on `metrics.listen`, until the guard drops; `None` when off or the bind failed.
async fn serve_metrics(config: &Config) -> Option<AbortOnDrop> {
    let addr = config.metrics.addr()?;
    crate::metrics::set("gateway_agent_up", &[], 0.0);
    let served = crate::http::serve(
        addr,
        "/metrics",
        (crate::http::Limits::METRICS, crate::http::Allow::any()),
        |path| match path {
            "/metrics" => crate::http::Response::text(
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::render(),
            ),
            _ => crate::http::Response::not_found(),
        },
    )
    .await;
    match served {
        Ok(task) => Some(AbortOnDrop(task)),
        Err(e) => {
            error!(%addr, error = %e, "cannot serve /metrics");
            None
        }
    }
}

pub async fn run(config: Config, path: std::path::PathBuf) -> Result<(), Error> {
    let started = Instant::now();
    let deadline = started + config.boot.timeout();
    // Handlers go in first: from here on a signal means "stop cleanly", even while IMDS is slow.
    let mut supervisor = Supervisor::new()?;
    let imds = imds::Client::new(&config.imds.endpoint, config.imds.timeout())?;
    if !config.dry_run {
        take_restart_marker(&config);
    }
    // From the start, so that a boot that waits (a standby for its zone's ENI, a slow attach)
    // is seen: gateway_agent_up is 0 and gateway_agent_standby 1 until it completes.
    let _metrics = serve_metrics(&config).await;

    systemd::status("waiting for IMDS");
    let Some(identity) = supervisor
        .drive(tokio::time::timeout_at(deadline, wait_for_identity(&imds)))
        .await
    else {
        return stop();
    };
    let identity = match identity {
        Ok(identity) => identity?,
        Err(_) => {
            let error = Error::ImdsDeadline(config.boot.timeout());
            // Without an instance ID there is no lifecycle action to ABANDON: the hook's
            // DefaultResult applies when its heartbeat timeout runs out.
            systemd::status(&format!("boot failed: {error}"));
            return Err(error);
        }
    };
    log_identity(&config, &identity);

    let sdk = cloud::load(&identity.region, config.aws.endpoint.as_deref()).await;
    // One budget for both adapters: every call spends a token of the agent's own share of
    // the account's buckets, in priority order (cloud::budget).
    let budget = Budget::new(config.aws.api_share.0);
    // Renewals and drift reads go through a client of their own (no retries, its own retry
    // partition): EC2 throttling them never slows a takeover through the adaptive limiter.
    let ec2 = Budgeted::new(cloud::SdkEc2::new(&sdk), std::sync::Arc::clone(&budget))
        .with_quiet(cloud::SdkEc2::quiet(&sdk));
    let asg = Budgeted::new(cloud::SdkAutoscaling::new(&sdk), budget);
    let netconf = NetConf::new().await?;

    systemd::status("looking up the launch lifecycle action");
    let action = match supervisor
        .drive(lifecycle::pending_launch(
            &config, &identity, &asg, deadline,
        ))
        .await
    {
        None => return stop(),
        Some(Ok(action)) => action,
        Some(Err(source)) => return fail(BootError::LifecycleLookup { source }, None, &asg).await,
    };

    let mut action = match action {
        Some(a) if config.dry_run => {
            warn!(group = %a.group, hook = %a.hook, "dry-run: would heartbeat and complete the launch lifecycle action (CONTINUE); it stays open and the hook's default result applies at its timeout");
            None
        }
        other => other,
    };
    let boot = boot::Boot {
        config: &config,
        identity: &identity,
        imds: &imds,
        ec2: &ec2,
        asg: &asg,
        netconf: &netconf,
        deadline,
        writes: 0,
        attached_at: None,
    };
    let heartbeat = config.lifecycle.heartbeat_interval();
    let booted = match supervisor
        .drive(lifecycle::with_heartbeats(
            action.as_ref(),
            &asg,
            heartbeat,
            boot.run(),
        ))
        .await
    {
        None => return stop(),
        Some(Ok(booted)) => booted,
        Some(Err(BootError::Claim {
            eni,
            source: boot::ClaimError::HeldByLive { holder, state },
        })) => {
            let waiting = Standby {
                config: &config,
                identity: &identity,
                imds: &imds,
                ec2: &ec2,
                asg: &asg,
                netconf: &netconf,
                eni: &eni,
            };
            match waiting
                .run(
                    &mut supervisor,
                    action.take().as_ref(),
                    &asg,
                    (holder, state),
                )
                .await
            {
                None => return stop(),
                Some(Ok(booted)) => booted,
                // The launch action was completed on entering standby: nothing to ABANDON.
                Some(Err(e)) => return fail(e, None, &asg).await,
            }
        }
        Some(Err(e)) => return fail(e, action.as_ref(), &asg).await,
    };
    if let Some(action) = &action {
        systemd::status("completing the launch lifecycle action");
        let done = lifecycle::complete(&asg, action, LifecycleResult::Continue, deadline);
        match supervisor.drive(done).await {
            None => return stop(),
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return fail(BootError::completing(action, e), Some(action), &asg).await;
            }
        }
    }
    let status = format!(
        "carrying {} via {} ({} route table(s)); ready in {:.2} s",
        identity.availability_zone,
        booted.eni.id,
        booted.route_tables.len(),
        started.elapsed().as_secs_f64()
    );
    info!(
        eni = %booted.eni.id,
        route_tables = %booted.route_tables.join(","),
        api_writes = booted.writes,
        boot_ms = started.elapsed().as_millis() as u64,
        after_attach_ms = booted.attached_at.map(|at| at.elapsed().as_millis() as u64),
        "boot complete"
    );
    systemd::ready(&status);

    run_loop(
        &mut supervisor,
        (&config, &path),
        &identity,
        (&ec2, &asg),
        &netconf,
        &booted,
    )
    .await;
    stop()
}

/// After a kernel change notification, the pause before the repair it triggers.
const KERNEL_SETTLE: Duration = Duration::from_millis(50);

/// Between standby polls of the ENI: a few reads (the ENI, its holder) every few seconds, for
/// as long as an instance refresh keeps the old gateway (minutes).
const STANDBY_POLL: Duration = Duration::from_secs(5);

/// A new gateway whose zone's ENI a live instance of the zone holds: the gateway it replaces,
/// during an instance refresh that launches before it terminates. It must not take the ENI,
/// and must not ABANDON either (the refresh could then never terminate the old instance).
struct Standby<'a> {
    config: &'a Config,
    identity: &'a Identity,
    imds: &'a imds::Client,
    ec2: &'a AgentEc2,
    asg: &'a AgentAsg,
    netconf: &'a NetConf,
    eni: &'a str,
}

impl Standby<'_> {
    fn boot(&self) -> boot::Boot<'_, AgentEc2, AgentAsg> {
        boot::Boot {
            config: self.config,
            identity: self.identity,
            imds: self.imds,
            ec2: self.ec2,
            asg: self.asg,
            netconf: self.netconf,
            deadline: Instant::now() + self.config.boot.timeout(),
            writes: 0,
            attached_at: None,
        }
    }

    /// Self-check, CONTINUE the launch (so the ASG can go on and retire the holder), READY with
    /// a standby STATUS, then poll the ENI until its holder lets go or dies, and boot from the
    /// claim on. `None` on a stop signal.
    async fn run(
        &self,
        supervisor: &mut Supervisor,
        action: Option<&lifecycle::Action>,
        asg: &AgentAsg,
        (mut holder, mut state): (String, String),
    ) -> Option<Result<boot::Booted, BootError>> {
        let zone = &self.identity.availability_zone;
        crate::metrics::set("gateway_agent_standby", &[], 1.0);
        warn!(%zone, eni = %self.eni, %holder, %state, "standby: the zone's ENI is held by a live instance (the gateway this one replaces); waiting for it to let go, never taking it");
        let mut boot = self.boot();
        systemd::status(&format!("standby for {zone}: self-check"));
        let heartbeat = self.config.lifecycle.heartbeat_interval();
        match supervisor
            .drive(lifecycle::with_heartbeats(
                action,
                asg,
                heartbeat,
                boot.self_check(),
            ))
            .await?
        {
            Ok(()) => {}
            Err(source) => return Some(Err(BootError::SelfCheck { source })),
        }
        if let Some(action) = action {
            systemd::status(&format!(
                "standby for {zone}: completing the launch lifecycle action"
            ));
            let deadline = Instant::now() + self.config.boot.timeout();
            let done = lifecycle::complete(asg, action, LifecycleResult::Continue, deadline);
            if let Err(e) = supervisor.drive(done).await? {
                return Some(Err(BootError::completing(action, e)));
            }
        }
        let say = |holder: &str, state: &str| {
            format!(
                "standby for {zone}: {} held by {holder} ({state}); claiming it once it is free",
                self.eni
            )
        };
        systemd::ready(&say(&holder, &state));
        loop {
            supervisor.drive(sleep(STANDBY_POLL)).await?;
            let boot = self.boot();
            let step = match supervisor.drive(boot.claim_step(self.eni)).await? {
                Ok(step) => step,
                Err(e) => {
                    warn!(eni = %self.eni, error = %e, "standby: cannot read the ENI; trying again");
                    continue;
                }
            };
            match step {
                crate::decide::claim::ClaimStep::Standby {
                    holder: h,
                    state: s,
                } => {
                    if (&h, &s) != (&holder, &state) {
                        info!(eni = %self.eni, holder = %h, state = %s, "standby: the ENI's holder changed");
                        systemd::status(&say(&h, &s));
                        (holder, state) = (h, s);
                    }
                }
                step => {
                    info!(eni = %self.eni, %step, "standby over: the ENI can be claimed");
                    break;
                }
            }
        }
        crate::metrics::set("gateway_agent_standby", &[], 0.0);
        match supervisor.drive(self.boot().run()).await? {
            Ok(booted) => Some(Ok(booted)),
            // Taken by another live instance between the poll and the claim: stand by again.
            Err(BootError::Claim {
                source: boot::ClaimError::HeldByLive { holder, state },
                ..
            }) => Box::pin(self.run(supervisor, None, asg, (holder, state))).await,
            Err(e) => Some(Err(e)),
        }
    }
}

/// After a failed boot: ABANDON the launch action (so the ASG replaces the instance now),
/// say why on STATUS=, and return the error (the process exits non-zero).
async fn fail(
    error: BootError,
    action: Option<&lifecycle::Action>,
    asg: &AgentAsg,
) -> Result<(), Error> {
    error!(%error, "boot failed");
    let mut status = format!("boot failed: {error}");
    if let Some(action) = action {
        // Said before ABANDON: the ASG may terminate the instance (and us) right after it.
        systemd::status(&format!("{status}; ABANDONing the launch lifecycle action"));
        let deadline = Instant::now() + ABANDON_TIMEOUT;
        match lifecycle::complete(asg, action, LifecycleResult::Abandon, deadline).await {
            Ok(()) => status.push_str("; lifecycle action ABANDONed"),
            Err(e) => {
                error!(error = %e, "cannot ABANDON the launch lifecycle action; the hook's default result will apply");
                status.push_str("; ABANDON failed, the hook's default result will apply");
            }
        }
    }
    systemd::status(&status);
    Err(error.into())
}

/// Watches peers and routes (when failover is on) and repairs kernel drift, until a stop
/// signal.
async fn run_loop<E: Ec2 + Sync, A: Autoscaling + Sync>(
    supervisor: &mut Supervisor,
    (config, path): (&Config, &std::path::Path),
    identity: &Identity,
    (ec2, asg): (&E, &A),
    netconf: &NetConf,
    booted: &boot::Booted,
) {
    let period = config.kernel.reconcile_interval();
    let mut kernel_ticker = interval_at(Instant::now() + period, period);
    kernel_ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut kernel = KernelRepair {
        config,
        netconf,
        booted,
        last_error_log: None,
    };
    crate::metrics::set(
        "gateway_agent_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    crate::metrics::set("gateway_agent_up", &[], 1.0);
    crate::metrics::set("gateway_agent_self_check_healthy", &[], 1.0);
    // A dry run that did not attach the ENI watches from the primary address instead.
    let attached_here = booted.desired.is_some();
    let primary = identity
        .interfaces
        .iter()
        .find(|i| i.device_number == 0)
        .and_then(|i| i.local_ipv4s.first().copied());
    let own_ip = if attached_here {
        booted.eni.private_ips.first().copied()
    } else {
        primary
    };
    let Some(own_ip) = own_ip else {
        warn!(eni = %booted.eni.id, "the ENI has no private address: peers cannot be watched");
        while supervisor.drive(kernel_ticker.tick()).await.is_some() {
            kernel.repair().await;
        }
        return;
    };
    if !config.failover.enabled {
        info!(
            "failover.enabled = false: not watching peers; the own zone and conditional routes are still kept"
        );
    }
    let own = watch::Own {
        instance_id: identity.instance_id.clone(),
        zone: identity.availability_zone.clone(),
        eni: booted.eni.id.clone(),
        ip: own_ip,
        vpc_id: booted.eni.vpc_id.clone(),
    };
    let mut current = std::sync::Arc::new(config.clone());
    let (mut watch, mut events, report) = watch::Watch::new(
        std::sync::Arc::clone(&current),
        ec2,
        asg,
        own.clone(),
        booted.epoch,
    );
    if let Err(e) = watch.start_own_health() {
        error!(error = %e, "cannot run the continuous self-check; this gateway counts as healthy");
    }
    let health_allow = crate::http::Allow::nets(config.failover.health_allow_nets());
    watch.allow_peers(health_allow.clone());
    if !config.failover.enabled {
        // The loop watches no peer, so it learns none; peers still ask this gateway's /health
        // (it may be their successor), so they are looked up once for the allow-list.
        match watch::sensors::discover(ec2, config, &own).await {
            Ok(found) => health_allow.set_hosts(
                found
                    .peers
                    .values()
                    .flatten()
                    .map(|c| c.ip)
                    .chain([own_ip])
                    .map(std::net::IpAddr::V4),
            ),
            Err(e) => {
                warn!(error = %e, "cannot look up the group's gateways: /health answers loopback and failover.health_allow only");
            }
        }
    }
    if let Err(e) = watch.start_conditional() {
        error!(error = %e, "cannot probe the conditional routes' targets; their routes are not managed");
    }
    let _health =
        match crate::health::serve(own_ip, config.failover.health_port, report, health_allow).await
        {
            Ok(task) => Some(AbortOnDrop(task)),
            Err(e) => {
                // Peers then see no /health: they never pick this gateway as a successor, and
                // confirm its death by lease or API only. It still carries its own zone.
                error!(error = %e, "cannot serve /health; peers will not count on this gateway");
                None
            }
        };
    let (control_tx, mut control) = tokio::sync::mpsc::channel(4);
    let _control = match crate::control::serve(
        &config.control.socket,
        (
            config.control.group.as_deref(),
            config.control.group_operates,
        ),
        control_tx,
    ) {
        Ok(task) => Some(AbortOnDrop(task)),
        Err(e) => {
            error!(error = %e, "no control socket: `gateway-agent failback` will not reach this agent");
            None
        }
    };
    let (exit_tx, mut exits) = tokio::sync::mpsc::channel(4);
    let _imds_watch = match imds::Client::new(&config.imds.endpoint, config.imds.timeout()) {
        Ok(client) => Some(AbortOnDrop(exit::watch_imds(
            client,
            config.drain.imds_poll(),
            config.drain.maintenance_lead(),
            exit_tx,
            watch.lifecycle_state(),
        ))),
        Err(e) => {
            error!(error = %e, "cannot watch IMDS for planned exits; only a stop signal drains");
            None
        }
    };
    let mut kernel_changes = match NetConf::watch_changes() {
        Ok(rx) => rx,
        Err(e) => {
            warn!(error = %e, "cannot subscribe to kernel change notifications; repairing every kernel.reconcile_interval_ms only");
            tokio::sync::mpsc::channel(1).1
        }
    };
    // What changed between boot's configuration and the subscription was not notified.
    kernel.repair().await;
    let mut lease_ticker = interval(config.failover.lease_renew());
    lease_ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut soon: Option<Duration> = None;
    // Drained in service for a scheduled event (not by an operator).
    let mut maintenance_drain = false;
    let planned = loop {
        let woke = supervisor
            .drive(async {
                tokio::select! {
                    Some(exit) = exits.recv() => Wake::Exit(exit),
                    _ = lease_ticker.tick() => Wake::Cycle,
                    Some(event) = events.recv() => Wake::Event(event),
                    Some(request) = control.recv() => Wake::Control(request),
                    _ = kernel_ticker.tick() => Wake::Kernel,
                    Some(()) = kernel_changes.recv() => Wake::KernelChanged,
                    _ = sleep(soon.unwrap_or(Duration::from_secs(3600))), if soon.is_some() => Wake::Cycle,
                }
            })
            .await;
        if supervisor.reload_requested {
            supervisor.reload_requested = false;
            if let Some(new) = reload(path, &current) {
                current = std::sync::Arc::new(new);
                watch.reconfigure(std::sync::Arc::clone(&current));
            }
        }
        match woke {
            None => break None,
            Some(Wake::Exit(exit::Notice::Ended(kind))) => {
                use crate::events::Kind;
                match kind {
                    Kind::Maintenance if maintenance_drain => {
                        maintenance_drain = false;
                        watch.set_draining(false);
                        info!(
                            kind = kind.as_str(),
                            "the scheduled event is over and this instance still runs: taking part again (own zone back after the hold-down)"
                        );
                        systemd::status("undrained: the scheduled event is over");
                        emit_notice(
                            &current,
                            &identity.availability_zone,
                            "maintenance-over",
                            "the scheduled event is gone from IMDS",
                        );
                    }
                    Kind::Rebalance | Kind::Advisory => {
                        watch.set_at_risk(None);
                        info!(
                            kind = kind.as_str(),
                            "the advisory notice is gone: no longer the last choice as a successor"
                        );
                    }
                    _ => {}
                }
                continue;
            }
            Some(Wake::Exit(exit::Notice::Announced(exit))) => {
                use crate::config::OnRebalance;
                use crate::events::Kind;
                if exit.kind == Kind::Maintenance {
                    // The instance stops, reboots or retires at the event, and may well not:
                    // hand everything over now, stay up, and take part again if it survives.
                    maintenance_drain = true;
                    watch.set_draining(true);
                    warn!(kind = exit.kind.as_str(), reason = %exit.reason, "scheduled event: handing every zone over before it starts and staying up; taking part again if the instance survives it");
                    systemd::status(&format!("drained for a scheduled event: {}", exit.reason));
                    emit_notice(
                        &current,
                        &identity.availability_zone,
                        "drain-start",
                        &exit.reason,
                    );
                    match supervisor.drive(watch.cycle()).await {
                        None => break None,
                        Some(next) => soon = next,
                    }
                    continue;
                }
                let advice = match (exit.kind, current.drain.on_rebalance) {
                    (Kind::Advisory, _) | (Kind::Rebalance, OnRebalance::Publish) => Some(false),
                    (Kind::Rebalance, OnRebalance::Replace) => Some(true),
                    _ => None,
                };
                let Some(replace) = advice else {
                    break Some(exit);
                };
                // Advice, not an interruption: the gateway stays in service.
                emit_notice(
                    &current,
                    &identity.availability_zone,
                    "at-risk",
                    &exit.reason,
                );
                watch.set_at_risk(Some(exit.reason.clone()));
                if replace
                    && supervisor
                        .drive(watch.request_replacement())
                        .await
                        .is_none()
                {
                    break None;
                }
                continue;
            }
            Some(Wake::Kernel) => {
                kernel.repair().await;
                continue;
            }
            Some(Wake::KernelChanged) => {
                // Let the burst settle (a network manager writes several things in a row), and
                // never more than one repair per pause however busy the kernel is.
                if supervisor.drive(sleep(KERNEL_SETTLE)).await.is_none() {
                    break None;
                }
                while kernel_changes.try_recv().is_ok() {}
                debug!("kernel change notified: reconciling now");
                kernel.repair().await;
                continue;
            }
            Some(Wake::Event(event)) => debug!(?event, "probe state changed: deciding now"),
            Some(Wake::Control(request)) => {
                let Some(answer) = supervisor.drive(watch.command(request.command)).await else {
                    break None;
                };
                let _ = request.answer.send(answer);
                continue;
            }
            Some(Wake::Cycle) => {}
        }
        match supervisor.drive(watch.cycle()).await {
            None => break None,
            Some(next) => soon = next,
        }
    };
    if config.dry_run {
        info!(planned = ?planned.as_ref().map(|e| e.reason.clone()), "dry-run: would drain (hand every carried route to a healthy peer) before leaving; leaving without it");
        return;
    }
    let exit = match planned {
        Some(exit) => exit,
        None if config.drain.restart_marker.exists() => {
            info!(
                marker = %config.drain.restart_marker.display(),
                "restart marker present (package upgrade): exiting without moving any route; the new process adopts them"
            );
            return;
        }
        None if !config.drain.handover_on_stop => {
            info!("drain.handover_on_stop = false: exiting without handing routes over");
            return;
        }
        None => exit::on_stop(),
    };
    let deadline = exit::deadline(&exit, config.drain.timeout());
    drain::run(
        supervisor, config, identity, asg, &mut watch, &exit, deadline,
    )
    .await;
}

/// Runs the events hook for a notice about this gateway.
fn emit_notice(config: &Config, zone: &str, event: &str, reason: &str) {
    crate::hook::emit(
        &config.events,
        &crate::hook::Event {
            event,
            zone,
            from: "-",
            to: "-",
            reason,
        },
    );
}

enum Wake {
    Exit(exit::Notice),
    Cycle,
    Event(watch::Event),
    Control(crate::control::Request),
    Kernel,
    /// The kernel's links, addresses, routes or rules changed (anyone's change).
    KernelChanged,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct KernelRepair<'a> {
    config: &'a Config,
    netconf: &'a NetConf,
    booted: &'a boot::Booted,
    last_error_log: Option<Instant>,
}

impl KernelRepair<'_> {
    async fn repair(&mut self) {
        let Some(desired) = &self.booted.desired else {
            return;
        };
        if self.config.dry_run {
            match self.netconf.plan(desired).await {
                Ok(changes) => {
                    for change in &changes {
                        warn!(%change, "dry-run: kernel would be repaired");
                    }
                }
                Err(e) => warn!(error = %e, "dry-run: cannot read the kernel state"),
            }
            return;
        }
        match self.netconf.reconcile(desired).await {
            Ok(changes) => {
                for change in &changes {
                    warn!(%change, reason = "drift: removed or changed behind the agent's back", "kernel repaired");
                    crate::metrics::inc("gateway_agent_kernel_repairs_total", &[]);
                    crate::hook::emit(
                        &self.config.events,
                        &crate::hook::Event {
                            event: "kernel-repair",
                            zone: "-",
                            from: "-",
                            to: "-",
                            reason: &change.to_string(),
                        },
                    );
                }
                self.last_error_log = None;
            }
            Err(e) => {
                if self
                    .last_error_log
                    .is_none_or(|at| at.elapsed() >= RECONCILE_ERROR_LOG_EVERY)
                {
                    warn!(error = %e, "kernel reconcile failed; retrying every interval");
                    self.last_error_log = Some(Instant::now());
                }
            }
        }
    }
}

/// SIGHUP: the file is read and validated again. A valid one replaces the running config
/// (decision policy, drain, events apply at once; what only a restart can change is named);
/// an invalid one is rejected with every error and the old config keeps running.
fn reload(path: &std::path::Path, old: &Config) -> Option<Config> {
    match Config::load(path) {
        Err(e) => {
            let text = e.to_string();
            error!(errors = %text.replace('\n', " | "), "config reload rejected: the running config stays");
            systemd::status(&format!(
                "config reload REJECTED (the old config keeps running): {}",
                text.lines().next().unwrap_or("")
            ));
            crate::metrics::inc(
                "gateway_agent_config_reloads_total",
                &[("result", "rejected")],
            );
            None
        }
        Ok(mut new) => {
            let restart_only = restart_only_changes(old, &new);
            // `run --dry-run` is not in the file; and leaving dry-run takes a restart.
            new.dry_run = old.dry_run;
            if !restart_only.is_empty() {
                warn!(keys = %restart_only.join(", "), "config reloaded; these changes take effect at the next restart");
            }
            info!(config = %path.display(), "config reloaded");
            systemd::status(&format!("config reloaded from {}", path.display()));
            crate::metrics::inc(
                "gateway_agent_config_reloads_total",
                &[("result", "applied")],
            );
            crate::hook::emit(
                &new.events,
                &crate::hook::Event {
                    event: "config-reload",
                    zone: "-",
                    from: "-",
                    to: "-",
                    reason: &if restart_only.is_empty() {
                        "applied".to_owned()
                    } else {
                        format!("applied; at the next restart: {}", restart_only.join(", "))
                    },
                },
            );
            Some(new)
        }
    }
}

/// Sections and keys a running agent cannot switch to (they shaped the kernel, the sockets or
/// running probes at start).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            out.push(key);
        }
    };
    check(old.group != new.group, "group");
    check(old.dry_run != new.dry_run, "dry_run");
    check(old.eni != new.eni, "eni");
    check(old.routes != new.routes, "routes");
    check(old.kernel != new.kernel, "kernel");
    check(old.self_check != new.self_check, "self_check");
    check(old.aws != new.aws || old.imds != new.imds, "aws/imds");
    check(old.log != new.log, "log");
    check(old.control != new.control, "control");
    check(old.metrics != new.metrics, "metrics");
    check(old.conditional != new.conditional, "conditional");
    let (a, b) = (&old.failover, &new.failover);
    check(
        a.enabled != b.enabled
            || a.probe_interval_ms != b.probe_interval_ms
            || a.probe_timeout_ms != b.probe_timeout_ms
            || a.rise != b.rise
            || a.fall != b.fall
            || a.lease_renew_ms != b.lease_renew_ms
            || a.health_port != b.health_port,
        "failover probes/ports/lease_renew_ms",
    );
    out
}

/// The marker says "the stop before this start was a restart, not an exit". It has done its
/// job once this process runs; left behind, it would make the next real stop skip the drain.
fn take_restart_marker(config: &Config) {
    let marker = &config.drain.restart_marker;
    match std::fs::remove_file(marker) {
        Ok(()) => {
            info!(marker = %marker.display(), "restart marker removed: this start follows an in-place restart")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(marker = %marker.display(), error = %e, "cannot remove the restart marker; the next stop will not hand routes over")
        }
    }
}

fn stop() -> Result<(), Error> {
    systemd::stopping();
    info!("stopped");
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
    /// SIGHUP arrived; the run loop reloads the config when it next wakes.
    reload_requested: bool,
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
            reload_requested: false,
        })
    }

    /// Drives `work` to its end while petting the watchdog. Stop signals are noted and
    /// otherwise ignored: a drain ends at its own deadline, before systemd's stop timeout.
    async fn finish<F: Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = self.term.recv() => info!("SIGTERM while draining: the drain finishes first"),
                _ = self.int.recv() => info!("SIGINT while draining: the drain finishes first"),
                _ = self.hup.recv() => {}
                _ = tick(&mut self.watchdog) => systemd::watchdog(),
            }
        }
    }

    /// Drives `work` while petting the watchdog; `None` if a stop signal came first.
    async fn drive<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            let signal = tokio::select! {
                output = &mut work => return Some(output),
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                // The unit's ExecReload sends SIGHUP, whose default action would kill us. The run
                // loop reloads at its next wake (within a lease period).
                _ = self.hup.recv() => {
                    info!("SIGHUP: reloading the config");
                    self.reload_requested = true;
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
