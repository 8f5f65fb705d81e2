//! [`Ec2`] over the AWS SDK. Only `tag:<key>` filters and resource IDs are used: they are what
//! every EC2 implementation (and the lab's moto) supports, and all the agent needs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aws_config::SdkConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    AttachmentStatus as SdkAttachmentStatus, AttributeBooleanValue, Filter, InstanceStateName,
    NetworkInterface, NetworkInterfaceStatus, Route as SdkRoute, RouteState as SdkRouteState,
    RouteTable as SdkRouteTable, Tag,
};

use super::{
    Attachment, AttachmentStatus, Call, CloudError, Ec2, Eni, EniStatus, InstanceInfo,
    InstanceState, Result, Route, RouteState, RouteTable, RouteTarget, describe_tags, sdk_error,
};

const SERVICE: &str = "ec2";

/// The real EC2 adapter.
#[derive(Debug, Clone)]
pub struct SdkEc2 {
    client: Client,
}

impl SdkEc2 {
    pub fn new(config: &SdkConfig) -> Self {
        let conf = aws_sdk_ec2::config::Builder::from(config)
            .interceptor(super::timing::Timing)
            .build();
        Self {
            client: Client::from_conf(conf),
        }
    }

    /// The client for housekeeping (lease renewals, drift reads): one attempt, no retries, in
    /// a retry partition of its own. A renewal or drift read EC2 throttles then fails at once
    /// and is tried again next cycle, and its throttling never reaches the adaptive rate
    /// limiter that [`SdkEc2::new`]'s client (takeovers, confirmations) shares.
    pub fn quiet(config: &SdkConfig) -> Self {
        let conf = aws_sdk_ec2::config::Builder::from(config)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
            .retry_partition(aws_sdk_ec2::config::retry::RetryPartition::new(
                "gateway-agent-housekeeping-ec2",
            ))
            .interceptor(super::timing::Timing)
            .build();
        Self {
            client: Client::from_conf(conf),
        }
    }

    /// Wrap an SDK client built elsewhere (its retry and timeout policy is the caller's).
    pub fn from_client(client: Client) -> Self {
        Self { client }
    }
}

fn call(operation: &'static str, resource: impl Into<String>) -> Call {
    Call::new(SERVICE, operation, resource)
}

fn tag_filters(tags: &[(&str, &str)]) -> Vec<Filter> {
    tags.iter()
        .map(|(k, v)| {
            Filter::builder()
                .name(format!("tag:{k}"))
                .values(*v)
                .build()
        })
        .collect()
}

fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect()
}

fn is_v6(destination: &str) -> bool {
    destination.contains(':')
}

/// `Ok(None)` for a "no such resource" answer, the error otherwise.
fn none_if_not_found<T>(err: CloudError) -> Result<Option<T>> {
    if err.is_not_found() {
        Ok(None)
    } else {
        Err(err)
    }
}

impl Ec2 for SdkEc2 {
    async fn describe_eni(&self, id: &str) -> Result<Option<Eni>> {
        let c = call("DescribeNetworkInterfaces", id);
        let out = match self
            .client
            .describe_network_interfaces()
            .network_interface_ids(id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => return none_if_not_found(sdk_error(c, e)),
        };
        out.network_interfaces()
            .iter()
            .find(|n| n.network_interface_id() == Some(id))
            .map(|n| eni(&c, n))
            .transpose()
    }

    async fn find_enis(&self, tags: &[(&str, &str)]) -> Result<Vec<Eni>> {
        let c = call("DescribeNetworkInterfaces", describe_tags(tags));
        let items: Vec<NetworkInterface> = self
            .client
            .describe_network_interfaces()
            .set_filters(Some(tag_filters(tags)))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_error(c.clone(), e))?;
        items.iter().map(|n| eni(&c, n)).collect()
    }

    async fn describe_instance(&self, id: &str) -> Result<Option<InstanceInfo>> {
        let c = call("DescribeInstances", id);
        let out = match self
            .client
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => return none_if_not_found(sdk_error(c, e)),
        };
        let Some(instance) = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id))
        else {
            return Ok(None);
        };
        let state = match instance.state().and_then(|s| s.name()) {
            Some(InstanceStateName::Pending) => InstanceState::Pending,
            Some(InstanceStateName::Running) => InstanceState::Running,
            Some(InstanceStateName::ShuttingDown) => InstanceState::ShuttingDown,
            Some(InstanceStateName::Terminated) => InstanceState::Terminated,
            Some(InstanceStateName::Stopping) => InstanceState::Stopping,
            Some(InstanceStateName::Stopped) => InstanceState::Stopped,
            Some(other) => InstanceState::Other(other.as_str().to_string()),
            None => {
                return Err(CloudError::Incomplete {
                    call: c,
                    missing: "instance state",
                });
            }
        };
        let az = instance
            .placement()
            .and_then(|p| p.availability_zone())
            .ok_or_else(|| CloudError::Incomplete {
                call: c.clone(),
                missing: "availability zone",
            })?;
        Ok(Some(InstanceInfo {
            id: id.to_string(),
            state,
            az: az.to_string(),
        }))
    }

    async fn attach_eni(&self, eni: &str, instance: &str, device_index: u32) -> Result<String> {
        let c = call(
            "AttachNetworkInterface",
            format!("{eni} -> {instance} device {device_index}"),
        );
        let index = i32::try_from(device_index).map_err(|_| CloudError::Request {
            call: c.clone(),
            detail: format!("device index {device_index} is out of range"),
        })?;
        let out = self
            .client
            .attach_network_interface()
            .network_interface_id(eni)
            .instance_id(instance)
            .device_index(index)
            .send()
            .await
            .map_err(|e| sdk_error(c.clone(), e))?;
        out.attachment_id()
            .map(str::to_string)
            .ok_or(CloudError::Incomplete {
                call: c,
                missing: "attachment ID",
            })
    }

    async fn detach_eni(&self, attachment_id: &str, force: bool) -> Result<()> {
        let resource = if force {
            format!("{attachment_id} (force)")
        } else {
            attachment_id.to_string()
        };
        self.client
            .detach_network_interface()
            .attachment_id(attachment_id)
            .force(force)
            .send()
            .await
            .map_err(|e| sdk_error(call("DetachNetworkInterface", resource), e))?;
        Ok(())
    }

    async fn set_source_dest_check(&self, eni: &str, enabled: bool) -> Result<()> {
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(eni)
            .source_dest_check(AttributeBooleanValue::builder().value(enabled).build())
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    call(
                        "ModifyNetworkInterfaceAttribute",
                        format!("{eni} SourceDestCheck={enabled}"),
                    ),
                    e,
                )
            })?;
        Ok(())
    }

    async fn find_route_tables(&self, tags: &[(&str, &str)]) -> Result<Vec<RouteTable>> {
        let c = call("DescribeRouteTables", describe_tags(tags));
        let items: Vec<SdkRouteTable> = self
            .client
            .describe_route_tables()
            .set_filters(Some(tag_filters(tags)))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_error(c.clone(), e))?;
        items.iter().map(|t| route_table(&c, t)).collect()
    }

    async fn describe_route_tables(&self, ids: &[&str]) -> Result<Vec<RouteTable>> {
        // No IDs would mean "every table in the region": never what the caller meant.
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match self.route_tables_by_id(ids).await {
            Ok(tables) => Ok(tables),
            // AWS fails the whole call when one ID is unknown: ask for each to keep the others.
            Err(e) if e.is_not_found() && ids.len() > 1 => {
                let mut tables = Vec::with_capacity(ids.len());
                for id in ids {
                    match self.route_tables_by_id(&[id]).await {
                        Ok(found) => tables.extend(found),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(tables)
            }
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn replace_route(&self, route_table: &str, destination: &str, eni: &str) -> Result<()> {
        let req = self
            .client
            .replace_route()
            .route_table_id(route_table)
            .network_interface_id(eni);
        let req = if is_v6(destination) {
            req.destination_ipv6_cidr_block(destination)
        } else {
            req.destination_cidr_block(destination)
        };
        req.send().await.map_err(|e| {
            sdk_error(
                call(
                    "ReplaceRoute",
                    format!("{route_table} {destination} -> {eni}"),
                ),
                e,
            )
        })?;
        Ok(())
    }

    async fn create_route(&self, route_table: &str, destination: &str, eni: &str) -> Result<()> {
        let req = self
            .client
            .create_route()
            .route_table_id(route_table)
            .network_interface_id(eni);
        let req = if is_v6(destination) {
            req.destination_ipv6_cidr_block(destination)
        } else {
            req.destination_cidr_block(destination)
        };
        req.send().await.map_err(|e| {
            sdk_error(
                call(
                    "CreateRoute",
                    format!("{route_table} {destination} -> {eni}"),
                ),
                e,
            )
        })?;
        Ok(())
    }

    async fn delete_route(&self, route_table: &str, destination: &str) -> Result<()> {
        let req = self.client.delete_route().route_table_id(route_table);
        let req = if is_v6(destination) {
            req.destination_ipv6_cidr_block(destination)
        } else {
            req.destination_cidr_block(destination)
        };
        req.send().await.map_err(|e| {
            sdk_error(
                call("DeleteRoute", format!("{route_table} {destination}")),
                e,
            )
        })?;
        Ok(())
    }

    async fn create_tags(&self, resources: &[&str], tags: &[(&str, &str)]) -> Result<()> {
        let sdk_tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
            .collect();
        let words: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.client
            .create_tags()
            .set_resources(Some(resources.iter().map(|r| (*r).to_owned()).collect()))
            .set_tags(Some(sdk_tags))
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    call(
                        "CreateTags",
                        format!("{} {}", resources.join(","), words.join(",")),
                    ),
                    e,
                )
            })?;
        Ok(())
    }
}

impl SdkEc2 {
    async fn route_tables_by_id(&self, ids: &[&str]) -> Result<Vec<RouteTable>> {
        let c = call("DescribeRouteTables", ids.join(","));
        let ids: Vec<String> = ids.iter().map(|s| (*s).to_string()).collect();
        let out = self
            .client
            .describe_route_tables()
            .set_route_table_ids(Some(ids))
            .send()
            .await
            .map_err(|e| sdk_error(c.clone(), e))?;
        out.route_tables()
            .iter()
            .map(|t| route_table(&c, t))
            .collect()
    }
}

fn eni(c: &Call, n: &NetworkInterface) -> Result<Eni> {
    let missing = |what| CloudError::Incomplete {
        call: c.clone(),
        missing: what,
    };
    let id = n
        .network_interface_id()
        .ok_or_else(|| missing("network interface ID"))?;
    let bad_ip = |ip: &str| CloudError::Incomplete {
        call: c.clone(),
        missing: if ip.is_empty() {
            "private IP address"
        } else {
            "valid private IP address"
        },
    };
    // The primary address first, then the secondary ones in AWS's order.
    let mut ips: Vec<(bool, &str)> = n
        .private_ip_addresses()
        .iter()
        .filter_map(|a| Some((a.primary().unwrap_or(false), a.private_ip_address()?)))
        .collect();
    if ips.is_empty()
        && let Some(ip) = n.private_ip_address()
    {
        ips.push((true, ip));
    }
    ips.sort_by_key(|(primary, _)| !primary);
    let private_ips = ips
        .into_iter()
        .map(|(_, ip)| ip.parse::<Ipv4Addr>().map_err(|_| bad_ip(ip)))
        .collect::<Result<Vec<_>>>()?;
    let status = match n.status() {
        Some(NetworkInterfaceStatus::Available) => EniStatus::Available,
        Some(NetworkInterfaceStatus::InUse) => EniStatus::InUse,
        Some(NetworkInterfaceStatus::Attaching) => EniStatus::Attaching,
        Some(NetworkInterfaceStatus::Detaching) => EniStatus::Detaching,
        Some(other) => EniStatus::Other(other.as_str().to_string()),
        None => return Err(missing("status")),
    };
    let attachment = match n.attachment() {
        // A detached attachment record is history, not a holder.
        Some(a) if a.status() != Some(&SdkAttachmentStatus::Detached) => Some(Attachment {
            id: a
                .attachment_id()
                .ok_or_else(|| missing("attachment ID"))?
                .to_string(),
            instance_id: a.instance_id().map(str::to_string),
            device_index: a
                .device_index()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| missing("attachment device index"))?,
            status: match a.status() {
                Some(SdkAttachmentStatus::Attaching) => AttachmentStatus::Attaching,
                Some(SdkAttachmentStatus::Attached) => AttachmentStatus::Attached,
                Some(SdkAttachmentStatus::Detaching) => AttachmentStatus::Detaching,
                Some(SdkAttachmentStatus::Detached) => AttachmentStatus::Detached,
                Some(other) => AttachmentStatus::Other(other.as_str().to_string()),
                None => AttachmentStatus::Other(String::new()),
            },
        }),
        _ => None,
    };
    Ok(Eni {
        id: id.to_string(),
        vpc_id: n.vpc_id().unwrap_or_default().to_string(),
        az: n
            .availability_zone()
            .ok_or_else(|| missing("availability zone"))?
            .to_string(),
        subnet_id: n
            .subnet_id()
            .ok_or_else(|| missing("subnet ID"))?
            .to_string(),
        mac: n
            .mac_address()
            .ok_or_else(|| missing("MAC address"))?
            .to_ascii_lowercase(),
        private_ips,
        status,
        attachment,
        // AWS's default for a new interface; every real answer carries it.
        source_dest_check: n.source_dest_check().unwrap_or(true),
        tags: tag_map(n.tag_set()),
    })
}

fn route_table(c: &Call, t: &SdkRouteTable) -> Result<RouteTable> {
    let missing = |what| CloudError::Incomplete {
        call: c.clone(),
        missing: what,
    };
    Ok(RouteTable {
        id: t
            .route_table_id()
            .ok_or_else(|| missing("route table ID"))?
            .to_string(),
        vpc_id: t.vpc_id().ok_or_else(|| missing("VPC ID"))?.to_string(),
        tags: tag_map(t.tags()),
        routes: t.routes().iter().filter_map(route).collect(),
        // A subnet (or gateway) association, or the VPC's main table: traffic flows through it.
        associated: t
            .associations()
            .iter()
            .any(|a| a.main() == Some(true) || a.subnet_id().is_some() || a.gateway_id().is_some()),
    })
}

/// A route as the agent sees it; `None` for a route without any destination.
fn route(r: &SdkRoute) -> Option<Route> {
    let destination = r
        .destination_cidr_block()
        .or(r.destination_ipv6_cidr_block())
        .or(r.destination_prefix_list_id())?
        .to_string();
    let target = if let Some(eni) = r.network_interface_id() {
        RouteTarget::Eni(eni.to_string())
    } else if let Some(instance) = r.instance_id() {
        RouteTarget::Instance(instance.to_string())
    } else if let Some(gateway) = r.gateway_id() {
        RouteTarget::Gateway(gateway.to_string())
    } else if let Some(other) = r
        .nat_gateway_id()
        .or(r.transit_gateway_id())
        .or(r.vpc_peering_connection_id())
        .or(r.egress_only_internet_gateway_id())
        .or(r.local_gateway_id())
        .or(r.carrier_gateway_id())
        .or(r.core_network_arn())
    {
        RouteTarget::Other(other.to_string())
    } else {
        RouteTarget::None
    };
    let state = match r.state() {
        Some(SdkRouteState::Active) => RouteState::Active,
        _ => RouteState::Blackhole,
    };
    Some(Route {
        destination,
        target,
        state,
    })
}
