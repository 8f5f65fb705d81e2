//! # gateway-agent
//!
//! A daemon that runs on every NAT/VPN gateway instance of a VPC, one gateway per availability
//! zone, and keeps each zone's traffic flowing when a gateway fails.
//!
//! ## The problem
//! Each zone's private route tables send their default route (and, for VPN, on-premises
//! prefixes) to that zone's gateway. A route cannot target a load balancer, so it targets a
//! *persistent ENI*: a network interface that outlives instances. Each gateway runs in a
//! single-instance Auto Scaling group; when it dies, the group takes minutes to rebuild it, and
//! meanwhile the route points at a detached ENI: a black hole.
//!
//! ## The life of one gateway
//! 1. **Boot** (systemd `Type=notify`): read identity from IMDSv2; claim the zone's persistent
//!    ENI; configure the kernel (addresses, policy routing, forwarding) with netlink; check its
//!    own uplink; point its zone's routes at its ENI; complete the ASG launch lifecycle action;
//!    `READY=1`.
//! 2. **Run**: probe peer gateways (ICMP and their `/health`) and its own uplink; demote itself
//!    when unhealthy; repair kernel drift; pet the systemd watchdog.
//! 3. **Take over** a dead peer's zone, only when the death is confirmed (the EC2 API says the
//!    instance or ENI is gone, the lease tag the peer renews stopped changing, or the peer's own
//!    last `/health` said so), this gateway is healthy, and it is the peer's designated
//!    successor, so exactly one gateway acts.
//! 4. **Hand back** when the peer recovers: a replaced peer reclaims its own routes at boot; one
//!    that recovers without a reboot takes them back after a hold-down.
//! 5. **Planned exits** (ASG termination, spot interruption, rebalance recommendation, scheduled
//!    maintenance, `systemctl stop`) hand routes to a healthy peer before the gateway stops
//!    forwarding (make-before-break), then complete the termination lifecycle action.
//!
//! ## Where each part is
//! Boot ([`agent::boot`]) and lifecycle actions ([`agent::lifecycle`]); peer failover,
//! hand-back and stepping aside ([`agent::watch`] over the pure rules of [`decide::failover`]
//! and the lease of [`decide::lease`]); planned exits, noticed by [`agent::exit`] from the IMDS
//! notices [`events`] parses and carried out by [`agent::drain`]; conditional routes
//! ([`decide::conditional`]); kernel drift repair ([`netconf`]). For operators: `/health` for
//! peers ([`health`]), the local control socket ([`control`]: status, failback, failover,
//! drain, pause), `gateway-agent status` ([`status`]), Prometheus `/metrics` ([`metrics`]), and
//! state-change events with an optional hook command ([`hook`]).
//!
//! How a zone changes hands, the invariants the code keeps and the module map are in
//! `docs/design.md`.
//!
//! The binary (`src/main.rs`) parses the [`cli`], sets up logging and maps errors to exit codes
//! ([`exit_code`]).

pub mod agent;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod control;
pub mod decide;
pub mod events;
pub mod exit_code;
pub mod health;
pub mod hook;
pub mod http;
pub mod imds;
pub mod journal;
pub mod metrics;
pub mod netconf;
pub mod probe;
pub mod status;
pub mod systemd;
