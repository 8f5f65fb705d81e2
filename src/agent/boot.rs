//! The boot path: from "IMDS answered" to "this gateway carries its zone".
//!
//! Steps, each bounded by the boot deadline and reported on `STATUS=`:
//! 1. find the zone's persistent ENI (configured ID, else tags);
//! 2. claim it: detach a dead holder, attach at the configured device index, wait for the
//!    kernel to show the link (by MAC), disable source/dest check;
//! 3. configure the kernel (netconf: read, diff, apply);
//! 4. self-check (uplink targets, units);
//! 5. reclaim the zone's route tables for every managed destination.
//!
//! The lifecycle action is completed by the caller ([`super::run`]), which also heartbeats it
//! while these steps run and ABANDONs it when one of them fails.
//!
//! Each API write is made only when the observed state asks for it, so a second boot on a
//! configured gateway makes no write at all (only reads).

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::time::{Instant, sleep};
use tracing::{info, warn};

use crate::agent::routes::{self, Batch, LeaseAt, Stopped};
use crate::cloud::retry::{self, RETRY_BACKOFF, jitter, retry};
use crate::cloud::{CloudError, Ec2, Eni, RouteTable};
use crate::config::{Config, GROUP_TAG, ZONE_TAG};
use crate::decide::claim::{self, ClaimStep, EniFacts, Holder, SelfFacts};
use crate::decide::lease::{self, LEASE_TAG};
use crate::decide::reclaim::{self, TableFact};
use crate::imds::{self, Identity};
use crate::netconf::{self, Desired, EniSpec, MacAddr, NetConf};
use crate::probe;
use crate::systemd;

/// How often an attaching or detaching ENI is looked at again: EC2 finishes either in a few
/// seconds, and a DescribeNetworkInterfaces every half second is a negligible load.
const CLAIM_POLL: Duration = Duration::from_millis(500);
/// How often IMDS is asked whether it lists the freshly attached ENI yet.
const IMDS_POLL: Duration = Duration::from_millis(200);
/// How often a failing self-check is repeated while the boot deadline allows: an uplink that is
/// still coming up (DHCP, a VPN tunnel negotiating) gets a few chances.
const SELF_CHECK_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Cloud(#[from] CloudError),
    #[error("{0}")]
    Imds(#[from] imds::Error),
    #[error("{0}")]
    Netconf(#[from] netconf::NetconfError),
    #[error("{0}")]
    Probe(#[from] probe::Error),
    /// The zone's ENI cannot be found, or more than one matches.
    #[error("persistent ENI of {zone}: {reason}")]
    EniDiscovery { zone: String, reason: String },
    /// The ENI exists but must not be claimed (held by a live gateway, wrong zone).
    #[error("claim {eni}: {reason}")]
    ClaimRefused { eni: String, reason: String },
    #[error("route tables of {zone}: {reason}")]
    TableDiscovery { zone: String, reason: String },
    #[error("{what}: not done within {after:?}: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    #[error("self-check failed: {}", failed.join("; "))]
    SelfCheck { failed: Vec<String> },
}

pub type Result<T, E = BootError> = std::result::Result<T, E>;

/// What a successful boot leaves for the run loop.
#[derive(Debug, Clone)]
pub struct Booted {
    pub eni: Eni,
    /// `None` in a dry run that did not find the ENI attached here (nothing to configure).
    pub desired: Option<Desired>,
    pub route_tables: Vec<String>,
    /// The lease epoch this boot claimed the zone with; `None` when nothing had to be written.
    pub epoch: Option<u64>,
    /// API writes this boot made (0 on a restart of a configured gateway).
    pub writes: u32,
    /// When the AttachNetworkInterface call returned, if this boot attached the ENI.
    pub attached_at: Option<Instant>,
}

pub struct Boot<'a, E> {
    pub config: &'a Config,
    pub identity: &'a Identity,
    pub imds: &'a imds::Client,
    pub ec2: &'a E,
    pub netconf: &'a NetConf,
    pub deadline: Instant,
    pub writes: u32,
    pub attached_at: Option<Instant>,
}

impl<E: Ec2 + Sync> Boot<'_, E> {
    pub async fn run(mut self) -> Result<Booted> {
        let zone = self.identity.availability_zone.clone();
        systemd::status(&format!("finding the persistent ENI of {zone}"));
        let eni = self.find_eni().await?;
        info!(eni = %eni.id, zone = %zone, mac = %eni.mac, "persistent ENI found");

        systemd::status(&format!("claiming {}", eni.id));
        let (eni, owned) = self.claim(&eni.id).await?;

        let desired = if owned {
            systemd::status(&format!("configuring the kernel for {}", eni.id));
            Some(self.kernel(&eni).await?)
        } else {
            info!(eni = %eni.id, "dry-run: the ENI is not attached here, so there is no kernel state to compute");
            None
        };

        systemd::status("self-check");
        self.self_check().await?;

        systemd::status(&format!("reclaiming the route tables of {zone}"));
        let (route_tables, epoch) = self.reclaim(&eni.id).await?;
        Ok(Booted {
            eni,
            desired,
            route_tables,
            epoch,
            writes: self.writes,
            attached_at: self.attached_at,
        })
    }

    fn zone(&self) -> &str {
        &self.identity.availability_zone
    }

    fn group_tags(&self) -> [(&str, &str); 2] {
        [
            (GROUP_TAG, self.config.group.name.as_str()),
            (ZONE_TAG, self.zone()),
        ]
    }

    async fn find_eni(&mut self) -> Result<Eni> {
        let zone = self.zone().to_owned();
        let discovery = |reason: String| BootError::EniDiscovery {
            zone: zone.clone(),
            reason,
        };
        if let Some(id) = self.config.eni.ids.get(&zone) {
            return retry(self.deadline, || self.ec2.describe_eni(id))
                .await?
                .ok_or_else(|| {
                    discovery(format!(
                        "{id} (eni.ids, key {zone:?}) does not exist; fix the ID in the config"
                    ))
                });
        }
        let tags = self.group_tags();
        let mut enis = retry(self.deadline, || self.ec2.find_enis(&tags)).await?;
        match enis.len() {
            1 => Ok(enis.remove(0)),
            0 => Err(discovery(format!(
                "no ENI is tagged {GROUP_TAG}={} and {ZONE_TAG}={zone}; tag the zone's \
                 persistent ENI so, or set eni.ids in the config",
                self.config.group.name
            ))),
            _ => Err(discovery(format!(
                "{} ENIs are tagged {GROUP_TAG}={} and {ZONE_TAG}={zone} ({}); keep the tags \
                 on one, or set eni.ids in the config",
                enis.len(),
                self.config.group.name,
                enis.iter()
                    .map(|e| e.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Observe, decide one step, execute, observe again, until the ENI is ours and the kernel
    /// shows it.
    /// The ENI, and whether it is attached here (always, except in a dry run that would have
    /// had to attach it).
    async fn claim(&mut self, eni_id: &str) -> Result<(Eni, bool)> {
        let attach_timeout = self.config.boot.attach_timeout();
        let deadline = self.deadline.min(Instant::now() + attach_timeout);
        let me = SelfFacts {
            instance_id: self.identity.instance_id.clone(),
            az: self.identity.availability_zone.clone(),
            device_index: i32::try_from(self.config.eni.device_index).unwrap_or(1),
        };
        let mut last_step = String::new();
        let eni = loop {
            if Instant::now() >= deadline {
                return Err(BootError::Timeout {
                    what: format!("claim {eni_id}"),
                    after: attach_timeout,
                    last: last_step,
                });
            }
            let eni = retry(deadline, || self.ec2.describe_eni(eni_id))
                .await?
                .ok_or_else(|| BootError::ClaimRefused {
                    eni: eni_id.to_owned(),
                    reason: "the ENI no longer exists".to_owned(),
                })?;
            let holder = match &eni.attachment {
                Some(a) => {
                    let state = match &a.instance_id {
                        Some(id) if *id == me.instance_id => Some("running".to_owned()),
                        Some(id) => retry(deadline, || self.ec2.describe_instance(id))
                            .await?
                            .map(|i| i.state.as_str().to_owned()),
                        None => None,
                    };
                    Some(Holder {
                        instance_id: a.instance_id.clone().unwrap_or_default(),
                        attachment_id: a.id.clone(),
                        instance_state: state,
                        device_index: i32::try_from(a.device_index).unwrap_or(-1),
                    })
                }
                None => None,
            };
            let facts = EniFacts {
                az: eni.az.clone(),
                holder,
                status: eni.status.as_str().to_owned(),
            };
            let step = claim::next_step(&me, &facts);
            if step.to_string() != last_step {
                info!(eni = %eni_id, status = %facts.status, step = %step, "claim");
                last_step = step.to_string();
            }
            match step {
                ClaimStep::Owned => break eni,
                ClaimStep::Attach | ClaimStep::Detach { .. } if self.config.dry_run => {
                    warn!(eni = %eni_id, step = %step, "dry-run: would {step}; not claiming");
                    return Ok((eni, false));
                }
                ClaimStep::Attach => {
                    let device = self.config.eni.device_index;
                    match retry(deadline, || {
                        self.ec2.attach_eni(eni_id, &me.instance_id, device)
                    })
                    .await
                    {
                        Ok(attachment) => {
                            self.writes += 1;
                            self.attached_at = Some(Instant::now());
                            info!(eni = %eni_id, %attachment, device_index = device, "attached");
                        }
                        // Someone else attached it between our read and our write: look again.
                        Err(e) if e.code() == Some("InvalidNetworkInterface.InUse") => {
                            warn!(eni = %eni_id, error = %e, "attach raced; reading again");
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                ClaimStep::Detach {
                    attachment_id,
                    force,
                } => {
                    retry(deadline, || self.ec2.detach_eni(&attachment_id, force)).await?;
                    self.writes += 1;
                    info!(eni = %eni_id, attachment = %attachment_id, force, "detach requested from a dead holder");
                    sleep(CLAIM_POLL).await;
                }
                ClaimStep::Wait { .. } => sleep(CLAIM_POLL).await,
                ClaimStep::Refuse { reason } => {
                    return Err(BootError::ClaimRefused {
                        eni: eni_id.to_owned(),
                        reason,
                    });
                }
            }
        };
        let mac = parse_mac(&eni.mac).ok_or_else(|| BootError::ClaimRefused {
            eni: eni_id.to_owned(),
            reason: format!("EC2 reports an unusable MAC {:?}", eni.mac),
        })?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        systemd::status(&format!(
            "waiting for {} ({}) to appear in the kernel",
            eni.id,
            MacAddr(mac)
        ));
        let link = self.netconf.wait_link_by_mac(mac, remaining).await?;
        info!(eni = %eni.id, interface = %link.name, index = link.index, "ENI is in the kernel");
        if eni.source_dest_check && self.config.dry_run {
            warn!(eni = %eni.id, "dry-run: would disable the source/dest check");
        } else if eni.source_dest_check {
            retry(self.deadline, || {
                self.ec2.set_source_dest_check(&eni.id, false)
            })
            .await?;
            self.writes += 1;
            info!(eni = %eni.id, "source/dest check disabled (the gateway forwards others' packets)");
        }
        Ok((eni, true))
    }

    async fn kernel(&mut self, eni: &Eni) -> Result<Desired> {
        let mac = parse_mac(&eni.mac).unwrap_or_default();
        // IMDS lists a freshly attached interface a moment after EC2 does.
        let interface = loop {
            let interfaces = self.imds.interfaces().await?;
            if let Some(i) = interfaces
                .into_iter()
                .find(|i| parse_mac(&i.mac) == Some(mac))
            {
                break i;
            }
            if Instant::now() + IMDS_POLL >= self.deadline {
                return Err(BootError::Timeout {
                    what: format!("IMDS listing {} ({})", eni.id, eni.mac),
                    after: self.config.boot.timeout(),
                    last: "not in network/interfaces/macs/".to_owned(),
                });
            }
            sleep(IMDS_POLL).await;
        };
        let call = format!(
            "GET /latest/meta-data/network/interfaces/macs/{}/subnet-ipv4-cidr-block",
            interface.mac
        );
        let cidr = interface.subnet_ipv4_cidr_block.clone().unwrap_or_default();
        let (network, prefix) = parse_v4_cidr(&cidr).ok_or_else(|| imds::Error::Invalid {
            call,
            body: cidr.clone(),
            reason: "not an IPv4 subnet CIDR (absent on an IPv6-only subnet)".to_owned(),
        })?;
        // The VPC router is the subnet's first host address, on every AWS subnet.
        let gateway = Ipv4Addr::from(u32::from(network) + 1);
        let desired = Desired {
            eni: EniSpec {
                mac,
                addresses: interface.local_ipv4s.iter().map(|a| (*a, prefix)).collect(),
                gateway,
                table: self.config.kernel.table,
                rule_priority: self.config.kernel.rule_priority,
            },
            ipv4_forwarding: self.config.kernel.ipv4_forwarding,
            ipv6_forwarding: self.config.kernel.ipv6_forwarding,
        };
        if self.config.dry_run {
            let changes = self.netconf.plan(&desired).await?;
            for change in &changes {
                warn!(%change, reason = "boot", "dry-run: kernel would change");
            }
            return Ok(desired);
        }
        let changes = self.netconf.reconcile(&desired).await?;
        for change in &changes {
            info!(%change, reason = "boot", "kernel changed");
        }
        info!(
            changes = changes.len(),
            "kernel configured for {} ({} via {gateway})", eni.id, cidr
        );
        Ok(desired)
    }

    async fn self_check(&mut self) -> Result<()> {
        loop {
            let verdicts = probe::self_check(&self.config.self_check).await?;
            let failed: Vec<String> = verdicts
                .iter()
                .filter(|v| !v.ok)
                .map(ToString::to_string)
                .collect();
            for v in &verdicts {
                info!(probe = %v.probe, ok = v.ok, detail = %v.detail, "self-check");
            }
            if failed.is_empty() {
                if verdicts.is_empty() {
                    info!("self-check: no targets or units configured; nothing to check");
                }
                return Ok(());
            }
            if Instant::now() + SELF_CHECK_RETRY >= self.deadline {
                return Err(BootError::SelfCheck { failed });
            }
            warn!(failed = %failed.join("; "), "self-check failed; trying again");
            sleep(SELF_CHECK_RETRY).await;
        }
    }

    async fn tables(&self) -> Result<Vec<RouteTable>> {
        let zone = self.zone();
        if let Some(ids) = self.config.routes.tables.get(zone) {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let tables = retry(self.deadline, || self.ec2.describe_route_tables(&ids)).await?;
            let missing: Vec<&str> = ids
                .iter()
                .filter(|id| !tables.iter().any(|t| t.id == **id))
                .copied()
                .collect();
            if !missing.is_empty() {
                return Err(BootError::TableDiscovery {
                    zone: zone.to_owned(),
                    reason: format!(
                        "{} (routes.tables, key {zone:?}) not found; fix the IDs in the config",
                        missing.join(", ")
                    ),
                });
            }
            return Ok(tables);
        }
        let tags = self.group_tags();
        let tables = retry(self.deadline, || self.ec2.find_route_tables(&tags)).await?;
        if tables.is_empty() {
            return Err(BootError::TableDiscovery {
                zone: zone.to_owned(),
                reason: format!(
                    "no route table is tagged {GROUP_TAG}={} and {ZONE_TAG}={zone}; tag the \
                     zone's private route tables so, or list them in routes.tables",
                    self.config.group.name
                ),
            });
        }
        Ok(tables)
    }

    /// Read → decide → write, until a read shows nothing left to write. A create that loses a
    /// race (`RouteAlreadyExists`) or a write that fails is settled by the next read. Before
    /// the first route write, the lease tag is written with a larger epoch, so a peer holding
    /// the zone sees the claim and lets go instead of repairing "drift".
    async fn reclaim(&mut self, eni_id: &str) -> Result<(Vec<String>, Option<u64>)> {
        let destinations = &self.config.routes.destinations;
        let mut backoff = RETRY_BACKOFF;
        let mut logged_skips = false;
        let mut epoch = None;
        loop {
            let tables = self.tables().await?;
            let facts: Vec<TableFact> = tables.iter().map(RouteTable::fact).collect();
            let manual = self.config.failover.failback == crate::config::Failback::Manual;
            let (intents, skipped) = reclaim::reclaim(eni_id, destinations, &facts, manual);
            if !logged_skips {
                for s in &skipped {
                    warn!(table = %s.table, destination = %s.destination, reason = %s.reason, "route not managed");
                }
                logged_skips = true;
            }
            let ids: Vec<String> = tables.iter().map(|t| t.id.clone()).collect();
            if intents.is_empty() {
                info!(tables = %ids.join(", "), "every managed route of the zone points at {eni_id}");
                return Ok((ids, epoch));
            }
            if self.config.dry_run {
                for intent in &intents {
                    warn!(%intent, "dry-run: would reclaim");
                }
                return Ok((ids, None));
            }
            let claim = match epoch {
                Some(_) => None,
                None => {
                    let next = lease::claim_epoch(
                        lease::newest(
                            tables
                                .iter()
                                .filter_map(|t| t.tags.get(LEASE_TAG))
                                .map(String::as_str),
                        )
                        .as_ref(),
                    );
                    let value = lease::Lease {
                        holder: self.identity.instance_id.clone(),
                        epoch: next,
                        unix_ms: routes::unix_ms(),
                    }
                    .to_string();
                    Some((next, value))
                }
            };
            let table_ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let batch = Batch {
                label: self.zone(),
                tables: &table_ids,
                lease: claim.as_ref().map(|(_, v)| (v.as_str(), LeaseAt::Before)),
                fresh: Some(&tables),
            };
            let mut last_error = None;
            match routes::execute(self.ec2, &batch, &intents).await {
                Ok(done) => {
                    if let Some((next, _)) = claim {
                        self.writes += 1;
                        epoch = Some(next);
                    }
                    self.writes += u32::try_from(done.written.len()).unwrap_or(u32::MAX);
                    if done.complete() && done.skipped.is_empty() {
                        info!(tables = %ids.join(", "), "every managed route of the zone points at {eni_id}");
                        return Ok((ids, epoch));
                    }
                    for (_, e) in done.failed {
                        if e.is_retryable() || e.code() == Some("RouteAlreadyExists") {
                            last_error = Some(e);
                        } else {
                            return Err(e.into());
                        }
                    }
                }
                Err(stopped) => {
                    let e = match stopped {
                        Stopped::Lease(e) | Stopped::Confirm(e) | Stopped::Reread(e) => e,
                    };
                    if !e.is_retryable() {
                        return Err(e.into());
                    }
                    warn!(error = %e, "reclaim interrupted; reading again");
                    last_error = Some(e);
                }
            }
            if let Some(e) = last_error {
                if Instant::now() + backoff >= self.deadline {
                    return Err(e.into());
                }
                sleep(jitter(backoff)).await;
                backoff = retry::next(backoff);
            }
        }
    }
}

/// `0a:1b:2c:3d:4e:5f` (either case) → bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// An IPv4 subnet CIDR, checked by the same rules as the config's destinations.
fn parse_v4_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    match crate::config::parse_cidr(text.trim()).ok()? {
        (std::net::IpAddr::V4(addr), len) => Some((addr, len)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_cidrs_parse() {
        assert_eq!(
            parse_mac("0A:1b:2c:3d:4e:5f"),
            Some([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f])
        );
        assert_eq!(parse_mac("0a:1b:2c:3d:4e"), None);
        assert_eq!(parse_mac("0a:1b:2c:3d:4e:5f:60"), None);
        assert_eq!(
            parse_v4_cidr("10.0.1.0/24"),
            Some((Ipv4Addr::new(10, 0, 1, 0), 24))
        );
        assert_eq!(parse_v4_cidr("10.0.1.0/33"), None);
    }
}
