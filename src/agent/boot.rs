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
use tracing::{error, info, warn};

use crate::agent::routes::{self, Batch, LeaseAt};
use crate::cloud::retry::{self, RETRY_BACKOFF, jitter, retry};
use crate::cloud::{Autoscaling, CloudError, Ec2, Eni, RouteTable};
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

/// Why boot failed: one variant per step, in the order they run, each naming the step and its
/// resource and keeping what went wrong as its [`source`](std::error::Error::source). Every
/// one exits 4 ([`crate::exit_code::Exit::Boot`]) after the launch action is ABANDONed.
///
/// Reading the instance's identity from IMDS comes before these steps and is not one of them:
/// without an instance ID there is no lifecycle action to ABANDON, and it exits 3
/// ([`super::Error::Imds`], [`super::Error::ImdsDeadline`]). `READY=1` cannot fail.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// 0. Looking up the launch lifecycle action that waits for this boot.
    #[error("launch lifecycle action: cannot look it up: {source}")]
    LifecycleLookup {
        #[source]
        source: CloudError,
    },
    /// 1. Finding the zone's persistent ENI (configured ID, else tags).
    #[error("persistent ENI of {zone}: {source}")]
    FindEni {
        zone: String,
        #[source]
        source: FindEniError,
    },
    /// 2. Claiming it: detach a dead holder, attach, wait for the kernel's link, source/dest
    ///    check.
    #[error("claim {eni}: {source}")]
    Claim {
        eni: String,
        #[source]
        source: ClaimError,
    },
    /// 3. Configuring the kernel for it (IMDS's view of the ENI, then netlink).
    #[error("kernel config for {eni}: {source}")]
    Kernel {
        eni: String,
        #[source]
        source: KernelError,
    },
    /// 4. The own self-check (uplink targets, units).
    #[error("self-check failed: {source}")]
    SelfCheck {
        #[source]
        source: SelfCheckError,
    },
    /// 5. Reclaiming the zone's route tables (finding them, the lease tag, the route writes).
    #[error("route tables of {zone}: {source}")]
    Reclaim {
        zone: String,
        #[source]
        source: ReclaimError,
    },
    /// 6. Completing the launch lifecycle action with CONTINUE.
    #[error("completing the launch lifecycle action (group {group}, hook {hook}): {source}")]
    CompleteLifecycle {
        group: String,
        hook: String,
        #[source]
        source: CloudError,
    },
}

impl BootError {
    /// Step 6 failed: completing `action` with CONTINUE.
    pub fn completing(action: &super::lifecycle::Action, source: CloudError) -> Self {
        Self::CompleteLifecycle {
            group: action.group.clone(),
            hook: action.hook.clone(),
            source,
        }
    }
}

/// Step 1: why the zone's persistent ENI was not found.
#[derive(Debug, thiserror::Error)]
pub enum FindEniError {
    #[error("{0}")]
    Api(#[from] CloudError),
    /// The ID configured for the zone (`eni.ids`) does not exist.
    #[error("{id} (eni.ids, key {zone:?}) does not exist; fix the ID in the config")]
    NoSuchEni { id: String, zone: String },
    #[error(
        "no ENI is tagged {GROUP_TAG}={group} and {ZONE_TAG}={zone}; tag the zone's \
         persistent ENI so, or set eni.ids in the config"
    )]
    Untagged { group: String, zone: String },
    #[error(
        "{} ENIs are tagged {GROUP_TAG}={group} and {ZONE_TAG}={zone} ({}); keep the tags on \
         one, or set eni.ids in the config",
        ids.len(),
        ids.join(", ")
    )]
    Ambiguous {
        group: String,
        zone: String,
        ids: Vec<String>,
    },
}

/// Step 2: why the ENI could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("{0}")]
    Api(#[from] CloudError),
    #[error("the ENI no longer exists")]
    Gone,
    /// It must not be claimed (in another zone...).
    #[error("{0}")]
    Refused(String),
    /// A live instance holds it: this gateway stands by until it is free.
    #[error("the ENI is held by {holder}, which is {state}: never taken from a live gateway")]
    HeldByLive { holder: String, state: String },
    #[error("EC2 reports an unusable MAC {0:?}")]
    BadMac(String),
    /// Still not attached here at `boot.attach_timeout_s`; `last` is the last step decided.
    #[error("not done within {after:?}: {last}")]
    Timeout { after: Duration, last: String },
    /// Attached, but the kernel did not show the link.
    #[error("{0}")]
    Link(#[from] netconf::NetconfError),
}

/// Step 3: why the kernel could not be configured for the ENI.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{0}")]
    Imds(#[from] imds::Error),
    /// IMDS did not list the freshly attached ENI before the boot deadline.
    #[error("IMDS listing {mac}: not done within {after:?}: not in network/interfaces/macs/")]
    NotInImds { mac: String, after: Duration },
    #[error("{0}")]
    Netconf(#[from] netconf::NetconfError),
}

/// Step 4: why the self-check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    /// The probes could not run at all.
    #[error("{0}")]
    Probe(#[from] probe::Error),
    /// They ran, and these failed until the boot deadline.
    #[error("{}", failed.join("; "))]
    Failed { failed: Vec<String> },
}

/// Step 5: why the zone's route tables could not be reclaimed.
#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    #[error("{0}")]
    Api(#[from] CloudError),
    /// Tables configured for the zone (`routes.tables`) do not exist.
    #[error(
        "{} (routes.tables, key {zone:?}) not found; fix the IDs in the config",
        missing.join(", ")
    )]
    TablesMissing { zone: String, missing: Vec<String> },
    #[error(
        "no route table is tagged {GROUP_TAG}={group} and {ZONE_TAG}={zone}; tag the zone's \
         private route tables so, or list them in routes.tables"
    )]
    Untagged { group: String, zone: String },
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

pub struct Boot<'a, E, A> {
    pub config: &'a Config,
    pub identity: &'a Identity,
    pub imds: &'a imds::Client,
    pub ec2: &'a E,
    pub asg: &'a A,
    pub netconf: &'a NetConf,
    pub deadline: Instant,
    pub writes: u32,
    pub attached_at: Option<Instant>,
}

impl<E: Ec2 + Sync, A: Autoscaling + Sync> Boot<'_, E, A> {
    #[allow(
        clippy::result_large_err,
        reason = "a boot fails at most once per process; the standby path matches on the error's fields"
    )]
    pub async fn run(mut self) -> Result<Booted> {
        let zone = self.identity.availability_zone.clone();
        systemd::status(&format!("finding the persistent ENI of {zone}"));
        let eni = self.find_eni().await.map_err(|source| BootError::FindEni {
            zone: zone.clone(),
            source,
        })?;
        info!(eni = %eni.id, zone = %zone, mac = %eni.mac, "persistent ENI found");

        systemd::status(&format!("claiming {}", eni.id));
        let (eni, owned) = self
            .claim(&eni.id)
            .await
            .map_err(|source| BootError::Claim {
                eni: eni.id.clone(),
                source,
            })?;

        let desired = if owned {
            systemd::status(&format!("configuring the kernel for {}", eni.id));
            let desired = self
                .kernel(&eni)
                .await
                .map_err(|source| BootError::Kernel {
                    eni: eni.id.clone(),
                    source,
                })?;
            Some(desired)
        } else {
            info!(eni = %eni.id, "dry-run: the ENI is not attached here, so there is no kernel state to compute");
            None
        };

        systemd::status("self-check");
        self.self_check()
            .await
            .map_err(|source| BootError::SelfCheck { source })?;

        systemd::status(&format!("reclaiming the route tables of {zone}"));
        let (route_tables, epoch) =
            self.reclaim(&eni)
                .await
                .map_err(|source| BootError::Reclaim {
                    zone: zone.clone(),
                    source,
                })?;
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

    async fn find_eni(&mut self) -> Result<Eni, FindEniError> {
        let zone = self.zone().to_owned();
        if let Some(id) = self.config.eni.ids.get(&zone) {
            return retry(self.deadline, || self.ec2.describe_eni(id))
                .await?
                .ok_or_else(|| FindEniError::NoSuchEni {
                    id: id.clone(),
                    zone,
                });
        }
        let tags = self.group_tags();
        let mut enis = retry(self.deadline, || self.ec2.find_enis(&tags)).await?;
        // Tags prove nothing: an ENI tagged for this zone in another VPC, or held by a running
        // instance outside the group's Auto Scaling groups, is someone else's, and must not
        // keep this gateway from its own.
        if let Some(vpc) = self
            .identity
            .interfaces
            .iter()
            .find(|i| i.device_number == 0)
            .map(|i| i.vpc_id.clone())
        {
            enis.retain(|e| {
                let here = e.vpc_id == vpc;
                if !here {
                    warn!(eni = %e.id, vpc = %e.vpc_id, own_vpc = %vpc, zone = %zone, "an ENI tagged for this zone lives in another VPC: ignored");
                }
                here
            });
        }
        if enis.len() > 1 {
            let mut kept = Vec::with_capacity(enis.len());
            for e in enis {
                let holder = e.attachment.as_ref().and_then(|a| a.instance_id.clone());
                if let Some(i) = holder.filter(|i| *i != self.identity.instance_id) {
                    let group = &self.config.group.name;
                    let verdict = retry(self.deadline, || async {
                        let mut asgs = std::collections::BTreeMap::new();
                        super::watch::sensors::holder(self.ec2, self.asg, group, &i, &mut asgs)
                            .await
                    })
                    .await?;
                    if let super::watch::sensors::Holder::Stranger(why) = verdict {
                        error!(eni = %e.id, zone = %zone, reason = %why, "an ENI tagged for this zone is held by an instance that is not one of the group's gateways: ignored; untag it");
                        continue;
                    }
                }
                kept.push(e);
            }
            enis = kept;
        }
        let group = self.config.group.name.clone();
        match enis.len() {
            1 => Ok(enis.remove(0)),
            0 => Err(FindEniError::Untagged { group, zone }),
            _ => Err(FindEniError::Ambiguous {
                group,
                zone,
                ids: enis.into_iter().map(|e| e.id).collect(),
            }),
        }
    }

    /// The ENI and what the claim decides on: its status, and its holder's instance state.
    async fn observe_eni(
        &self,
        eni_id: &str,
        me: &SelfFacts,
        deadline: Instant,
    ) -> Result<(Eni, EniFacts), ClaimError> {
        let eni = retry(deadline, || self.ec2.describe_eni(eni_id))
            .await?
            .ok_or(ClaimError::Gone)?;
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
        Ok((eni, facts))
    }

    /// What claiming the ENI would do now, without doing it (a standby's poll).
    pub async fn claim_step(&self, eni_id: &str) -> Result<ClaimStep, ClaimError> {
        let me = self.self_facts();
        let deadline = Instant::now() + self.config.boot.attach_timeout();
        let (_, facts) = self.observe_eni(eni_id, &me, deadline).await?;
        Ok(claim::next_step(&me, &facts))
    }

    fn self_facts(&self) -> SelfFacts {
        SelfFacts {
            instance_id: self.identity.instance_id.clone(),
            az: self.identity.availability_zone.clone(),
            device_index: i32::try_from(self.config.eni.device_index).unwrap_or(1),
        }
    }

    /// Observe, decide one step, execute, observe again, until the ENI is ours and the kernel
    /// shows it.
    /// The ENI, and whether it is attached here (always, except in a dry run that would have
    /// had to attach it).
    async fn claim(&mut self, eni_id: &str) -> Result<(Eni, bool), ClaimError> {
        let attach_timeout = self.config.boot.attach_timeout();
        let deadline = self.deadline.min(Instant::now() + attach_timeout);
        let me = self.self_facts();
        let mut last_step = String::new();
        // State errors already logged (each once).
        let mut said = std::collections::BTreeSet::new();
        let eni = loop {
            if Instant::now() >= deadline {
                return Err(ClaimError::Timeout {
                    after: attach_timeout,
                    last: last_step,
                });
            }
            let (eni, facts) = self.observe_eni(eni_id, &me, deadline).await?;
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
                        // Someone else attached it between our read and our write, or a
                        // detach a lagging read did not show is still in flight: look again.
                        Err(e)
                            if e.code() == Some("InvalidNetworkInterface.InUse")
                                || in_flight(&e) =>
                        {
                            if said.insert(e.code().unwrap_or_default().to_owned()) {
                                warn!(eni = %eni_id, error = %e, "attach raced with another change of the ENI; reading again");
                            }
                            sleep(CLAIM_POLL).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                ClaimStep::Detach {
                    attachment_id,
                    force,
                } => {
                    match retry(deadline, || self.ec2.detach_eni(&attachment_id, force)).await {
                        Ok(()) => {
                            self.writes += 1;
                            info!(eni = %eni_id, attachment = %attachment_id, force, "detach requested from a dead holder");
                        }
                        // The read lagged behind a detach already done or under way (the dying
                        // instance released it): not a failure, look again.
                        Err(e) if in_flight(&e) => {
                            if said.insert(e.code().unwrap_or_default().to_owned()) {
                                warn!(eni = %eni_id, attachment = %attachment_id, error = %e, "detach: the attachment is already going or gone; reading again until it is free");
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                    sleep(CLAIM_POLL).await;
                }
                ClaimStep::Wait { .. } => sleep(CLAIM_POLL).await,
                ClaimStep::Standby { holder, state } => {
                    return Err(ClaimError::HeldByLive { holder, state });
                }
                ClaimStep::Refuse { reason } => return Err(ClaimError::Refused(reason)),
            }
        };
        let mac = parse_mac(&eni.mac).ok_or_else(|| ClaimError::BadMac(eni.mac.clone()))?;
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

    async fn kernel(&mut self, eni: &Eni) -> Result<Desired, KernelError> {
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
                return Err(KernelError::NotInImds {
                    mac: eni.mac.clone(),
                    after: self.config.boot.timeout(),
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

    pub(super) async fn self_check(&mut self) -> Result<(), SelfCheckError> {
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
                return Err(SelfCheckError::Failed { failed });
            }
            warn!(failed = %failed.join("; "), "self-check failed; trying again");
            sleep(SELF_CHECK_RETRY).await;
        }
    }

    async fn tables(&self) -> Result<Vec<RouteTable>, ReclaimError> {
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
                return Err(ReclaimError::TablesMissing {
                    zone: zone.to_owned(),
                    missing: missing.into_iter().map(str::to_owned).collect(),
                });
            }
            return Ok(tables);
        }
        let tags = self.group_tags();
        let tables = retry(self.deadline, || self.ec2.find_route_tables(&tags)).await?;
        if tables.is_empty() {
            return Err(ReclaimError::Untagged {
                group: self.config.group.name.clone(),
                zone: zone.to_owned(),
            });
        }
        Ok(tables)
    }

    /// Read → decide → write, until a read shows nothing left to write. A create that loses a
    /// race (`RouteAlreadyExists`) or a write that fails is settled by the next read. Before
    /// the first route write, the lease tag is written with a larger epoch, so a peer holding
    /// the zone sees the claim and lets go instead of repairing "drift".
    async fn reclaim(&mut self, eni: &Eni) -> Result<(Vec<String>, Option<u64>), ReclaimError> {
        let eni_id = eni.id.as_str();
        let destinations = &self.config.routes.destinations;
        // Only routes via the group's own ENIs (in this VPC) are taken back: the tables' tags
        // say they are ours to manage, not that every ENI in them is a gateway's.
        let group_tag = [(GROUP_TAG, self.config.group.name.as_str())];
        let mut group_enis: Vec<String> = retry(self.deadline, || self.ec2.find_enis(&group_tag))
            .await?
            .into_iter()
            .filter(|e| e.vpc_id == eni.vpc_id)
            .map(|e| e.id)
            .collect();
        group_enis.extend(self.config.eni.ids.values().cloned());
        let mut backoff = RETRY_BACKOFF;
        let mut logged_skips = false;
        let mut epoch = None;
        loop {
            let tables = self.tables().await?;
            let facts: Vec<TableFact> = tables.iter().map(RouteTable::fact).collect();
            let manual = self.config.failover.failback == crate::config::Failback::Manual;
            let (intents, skipped) =
                reclaim::reclaim(eni_id, &group_enis, destinations, &facts, manual);
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
                    let doing = stopped.doing();
                    let e = stopped.into_error();
                    if !e.is_retryable() {
                        return Err(e.into());
                    }
                    warn!(error = %e, doing, "reclaim interrupted; reading again");
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

/// An attach or detach refused because the ENI's attachment is changing or already gone: EC2's
/// reads lag its writes, so the claim reads again instead of giving up.
fn in_flight(e: &CloudError) -> bool {
    matches!(
        e.code(),
        Some("InvalidAttachmentID.NotFound" | "IncorrectState" | "InvalidNetworkInterface.InUse")
    )
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
