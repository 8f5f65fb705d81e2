//! [`NetConf`]: reads and writes the kernel with rtnetlink and `/proc/sys`.
//!
//! Namespaces: the netlink socket belongs to the network namespace of the thread that created
//! it ([`NetConf::new`]); sysctls are read and written with blocking `std::fs` calls **on the
//! calling thread** (never `tokio::fs`, whose blocking pool threads may sit in another
//! namespace), because `/proc/sys/net` resolves against the network namespace of the thread
//! that opens the file (see `kernel_tests::sysctls_follow_the_thread_network_namespace`). In
//! production the whole process lives in one namespace and this makes no difference.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};
use tracing::{debug, warn};

use super::{
    Change, Desired, EniSpec, LINK_POLL_INTERVAL, Link, MacAddr, NetconfError, Observed,
    ObservedRule, Result, Route, Rule, Sysctl, Sysctls, diff, removals,
};

/// The one owner of the agent's rtnetlink connection.
#[derive(Debug, Clone)]
pub struct NetConf {
    handle: Handle,
}

/// rtnetlink's error as the `io::Error` the kernel meant ("File exists (os error 17)").
fn nl_io(err: rtnetlink::Error) -> io::Error {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn is_errno(err: &io::Error, errno: nix::errno::Errno) -> bool {
    err.raw_os_error() == Some(errno as i32)
}

impl NetConf {
    /// Opens a netlink route socket (in the calling thread's network namespace) with strict
    /// checking, so route dumps are filtered by table in the kernel, and spawns its connection
    /// task on the current tokio runtime.
    pub async fn new() -> Result<Self> {
        let (connection, handle, _messages) =
            rtnetlink::new_connection_with_strict_check().map_err(NetconfError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Notifications of changes to links, IPv4 addresses, routes and rules, by anyone (the
    /// network manager reconfiguring a hot-plugged ENI, an operator): one `()` per burst on the
    /// returned channel, so the caller reconciles at once instead of at its next interval.
    pub fn watch_changes() -> Result<tokio::sync::mpsc::Receiver<()>> {
        use futures::StreamExt;
        use rtnetlink::constants::{
            RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_LINK,
        };
        use rtnetlink::sys::AsyncSocket;
        let (mut connection, _handle, mut messages) =
            rtnetlink::new_connection().map_err(NetconfError::Socket)?;
        // Bound with the groups (as rtnetlink's own monitor example does): an unbound socket's
        // memberships receive nothing.
        let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&rtnetlink::sys::SocketAddr::new(0, groups))
            .map_err(NetconfError::Socket)?;
        tokio::spawn(connection);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while messages.next().await.is_some() {
                // A full channel already holds a pending notification: this one joins it.
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                    break;
                }
            }
        });
        Ok(rx)
    }

    /// All links: `(index, name, up, mac)`.
    async fn links(&self) -> Result<Vec<(Link, Option<[u8; 6]>)>> {
        let dump_err = |source| NetconfError::Dump {
            what: "links".to_owned(),
            source,
        };
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| dump_err(nl_io(e)))? {
            let mut name = String::new();
            let mut mac = None;
            for attr in &msg.attributes {
                match attr {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(&bytes[..]).ok(),
                    _ => {}
                }
            }
            let link = Link {
                index: msg.header.index,
                name,
                up: msg.header.flags.contains(LinkFlags::Up),
            };
            links.push((link, mac));
        }
        Ok(links)
    }

    /// The interface with this MAC, if the kernel has one (in this network namespace).
    pub async fn link_by_mac(&self, mac: [u8; 6]) -> Result<Option<Link>> {
        let mut found = self
            .links()
            .await?
            .into_iter()
            .filter(|(_, m)| *m == Some(mac))
            .map(|(link, _)| link);
        let first = found.next();
        if let (Some(first), Some(other)) = (&first, found.next()) {
            // VLAN or macvlan children can copy their parent's MAC; the lowest index is the
            // device itself.
            warn!(
                mac = %MacAddr(mac),
                "several interfaces carry the MAC ({} and {}); using {}",
                first.name, other.name, first.name
            );
        }
        Ok(first)
    }

    /// Waits until an interface with this MAC exists (an ENI shows up a moment after the attach
    /// call returns), polling every [`LINK_POLL_INTERVAL`], for at most `timeout`.
    pub async fn wait_link_by_mac(&self, mac: [u8; 6], timeout: Duration) -> Result<Link> {
        let poll = async {
            loop {
                if let Some(link) = self.link_by_mac(mac).await? {
                    return Ok(link);
                }
                tokio::time::sleep(LINK_POLL_INTERVAL).await;
            }
        };
        match tokio::time::timeout(timeout, poll).await {
            Ok(result) => result,
            Err(_elapsed) => Err(NetconfError::LinkTimeout {
                mac: MacAddr(mac),
                timeout,
            }),
        }
    }

    /// IPv4 addresses on the link.
    async fn addresses(&self, link: &Link) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index);
        request.message_mut().header.family = AddressFamily::Inet;
        request.message_mut().header.index = link.index;
        let mut stream = request.execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| NetconfError::Dump {
            what: format!("addresses of {} (index {})", link.name, link.index),
            source: nl_io(e),
        })? {
            if msg.header.family != AddressFamily::Inet || msg.header.index != link.index {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
            // point-to-point links and the same as IFA_LOCAL elsewhere.
            let mut local = None;
            let mut address = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
                    AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
                    _ => {}
                }
            }
            if let Some(a) = local.or(address) {
                out.push((a, msg.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// IPv4 unicast routes in `table` (any protocol). A table that does not exist yet is empty.
    async fn routes(&self, table: u32, names: &HashMap<u32, String>) -> Result<Vec<Route>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(table)
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::Universe)
            .kind(RouteType::Unspec)
            .build();
        let mut stream = self.handle.route().get(filter).execute();
        let mut out = Vec::new();
        loop {
            let msg = match stream.try_next().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e) => {
                    let source = nl_io(e);
                    // With strict checking, the kernel answers ENOENT for a table that has no
                    // routes yet ("ipv4: FIB table does not exist").
                    if is_errno(&source, nix::errno::Errno::ENOENT) {
                        break;
                    }
                    return Err(NetconfError::Dump {
                        what: format!("routes in table {table}"),
                        source,
                    });
                }
            };
            if let Some(route) = parse_route(&msg, names) {
                // Filter again here: a kernel without strict dump support returns all tables.
                if route.table == table {
                    out.push(route);
                }
            }
        }
        Ok(out)
    }

    /// IPv4 rules that look up `table` or sit at `priority`.
    async fn rules(&self, table: u32, priority: u32) -> Result<Vec<ObservedRule>> {
        let mut stream = self.handle.rule().get(IpVersion::V4).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| NetconfError::Dump {
            what: "IPv4 rules".to_owned(),
            source: nl_io(e),
        })? {
            let rule = parse_rule(&msg);
            if rule.rule.table == table || rule.rule.priority == priority {
                out.push(rule);
            }
        }
        Ok(out)
    }

    /// Reads what the kernel has that matters for `desired`. Fails with
    /// [`NetconfError::LinkNotFound`] when no interface carries the ENI's MAC.
    pub async fn observe(&self, desired: &Desired) -> Result<Observed> {
        let eni = &desired.eni;
        let links = self.links().await?;
        let names: HashMap<u32, String> = links
            .iter()
            .map(|(l, _)| (l.index, l.name.clone()))
            .collect();
        let link = links
            .into_iter()
            .find(|(_, m)| *m == Some(eni.mac))
            .map(|(l, _)| l)
            .ok_or(NetconfError::LinkNotFound {
                mac: MacAddr(eni.mac),
            })?;
        let addresses = self.addresses(&link).await?;
        let routes = self.routes(eni.table, &names).await?;
        let rules = self.rules(eni.table, eni.rule_priority).await?;
        let sysctls = Sysctls {
            ipv4_forwarding: read_sysctl(&Sysctl::ipv4_forwarding())?,
            ipv6_forwarding: read_sysctl(&Sysctl::ipv6_forwarding())?,
            rp_filter_all: read_sysctl(&Sysctl::rp_filter("all"))?,
            rp_filter_link: read_sysctl(&Sysctl::rp_filter(&link.name))?,
        };
        Ok(Observed {
            link,
            addresses,
            routes,
            rules,
            sysctls,
        })
    }

    /// Applies changes in order, each idempotently: a route is written with `NLM_F_REPLACE`, an
    /// address or rule that already exists counts as added, a route or rule already gone counts
    /// as deleted. Stops at the first failure.
    pub async fn apply(&self, changes: &[Change]) -> Result<()> {
        for change in changes {
            debug!(change = %change, "netconf: applying");
            self.apply_one(change)
                .await
                .map_err(|source| match change {
                    Change::SetSysctl { sysctl, value } => NetconfError::SysctlWrite {
                        path: sysctl.path(),
                        value: *value,
                        source,
                    },
                    _ => NetconfError::Apply {
                        change: change.clone(),
                        source,
                    },
                })?;
        }
        Ok(())
    }

    async fn apply_one(&self, change: &Change) -> io::Result<()> {
        use nix::errno::Errno;
        match change {
            Change::SetLinkUp { index, .. } => self
                .handle
                .link()
                .set(LinkUnspec::new_with_index(*index).up().build())
                .execute()
                .await
                .map_err(nl_io),
            Change::AddAddress {
                index,
                address,
                prefix,
                ..
            } => {
                let result = self
                    .handle
                    .address()
                    .add(*index, IpAddr::V4(*address), *prefix)
                    .execute()
                    .await
                    .map_err(nl_io);
                tolerate(result, Errno::EEXIST)
            }
            Change::ReplaceRoute(route) => self
                .handle
                .route()
                .add(route_message(route))
                .replace()
                .execute()
                .await
                .map_err(nl_io),
            Change::DeleteRoute(route) => {
                let result = self
                    .handle
                    .route()
                    .del(route_message(route))
                    .execute()
                    .await
                    .map_err(nl_io);
                tolerate(result, Errno::ESRCH)
            }
            Change::AddRule(rule) => {
                let mut request = self
                    .handle
                    .rule()
                    .add()
                    .v4()
                    .source_prefix(rule.src, rule.src_len)
                    .table_id(rule.table)
                    .priority(rule.priority)
                    // rtnetlink 0.24 leaves the action unset otherwise; the kernel accepts
                    // such a rule and then fails every matching lookup with EINVAL.
                    .action(RuleAction::ToTable);
                let msg = request.message_mut();
                if rule.table > 255 {
                    msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
                }
                msg.attributes
                    .push(RuleAttribute::Protocol(RouteProtocol::from(
                        super::ROUTE_PROTOCOL,
                    )));
                tolerate(request.execute().await.map_err(nl_io), Errno::EEXIST)
            }
            Change::DeleteRule(rule) => {
                let result = self
                    .handle
                    .rule()
                    .del(rule_message(rule))
                    .execute()
                    .await
                    .map_err(nl_io);
                tolerate(result, Errno::ENOENT)
            }
            Change::SetSysctl { sysctl, value } => write_sysctl(sysctl, *value),
        }
    }

    /// observe → diff, applying nothing: what [`Self::reconcile`] would change (dry-run).
    pub async fn plan(&self, desired: &Desired) -> Result<Vec<Change>> {
        let observed = self.observe(desired).await?;
        Ok(diff(desired, &observed))
    }

    /// observe → diff → apply; returns what it changed (empty when the kernel already matched).
    pub async fn reconcile(&self, desired: &Desired) -> Result<Vec<Change>> {
        let observed = self.observe(desired).await?;
        let changes = diff(desired, &observed);
        self.apply(&changes).await?;
        Ok(changes)
    }

    /// Removes our rules and the routes of ours in the ENI's table (drain, shutdown), rules
    /// first. Addresses, link state and sysctls stay. Works when the interface is already gone
    /// (the kernel drops its routes with it, but rules stay). Returns what it removed.
    pub async fn remove(&self, desired: &Desired) -> Result<Vec<Change>> {
        let eni: &EniSpec = &desired.eni;
        let names: HashMap<u32, String> = self
            .links()
            .await?
            .into_iter()
            .map(|(l, _)| (l.index, l.name))
            .collect();
        let routes = self.routes(eni.table, &names).await?;
        let rules = self.rules(eni.table, eni.rule_priority).await?;
        let changes = removals(eni, &routes, &rules);
        self.apply(&changes).await?;
        Ok(changes)
    }
}

/// `Ok` for an error that means "already done".
fn tolerate(result: io::Result<()>, errno: nix::errno::Errno) -> io::Result<()> {
    match result {
        Err(e) if is_errno(&e, errno) => Ok(()),
        other => other,
    }
}

fn route_message(route: &Route) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dest, route.prefix)
        .output_interface(route.oif)
        .table_id(route.table)
        .protocol(RouteProtocol::from(route.protocol));
    builder = match route.gateway {
        Some(gw) => builder.gateway(gw),
        None => builder.scope(RouteScope::Link),
    };
    if let Some(src) = route.src {
        builder = builder.pref_source(src);
    }
    let mut msg = builder.build();
    if route.table > 255 {
        msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
    }
    msg
}

fn rule_message(rule: &Rule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.src_len = rule.src_len;
    msg.header.action = RuleAction::ToTable;
    if rule.table > 255 {
        msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
    } else {
        msg.header.table = rule.table as u8;
    }
    msg.attributes.push(RuleAttribute::Table(rule.table));
    msg.attributes.push(RuleAttribute::Priority(rule.priority));
    if rule.src_len > 0 {
        msg.attributes.push(RuleAttribute::Source(rule.src.into()));
    }
    msg
}

fn parse_route(msg: &RouteMessage, names: &HashMap<u32, String>) -> Option<Route> {
    if msg.header.address_family != AddressFamily::Inet || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut route = Route {
        dest: Ipv4Addr::UNSPECIFIED,
        prefix: msg.header.destination_prefix_length,
        gateway: None,
        src: None,
        oif: 0,
        dev: String::new(),
        table: u32::from(msg.header.table),
        protocol: u8::from(msg.header.protocol),
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => route.dest = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(*a),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => route.src = Some(*a),
            RouteAttribute::Oif(i) => route.oif = *i,
            RouteAttribute::Table(t) => route.table = *t,
            _ => {}
        }
    }
    route.dev = names
        .get(&route.oif)
        .cloned()
        .unwrap_or_else(|| format!("if#{}", route.oif));
    Some(route)
}

fn parse_rule(msg: &RuleMessage) -> ObservedRule {
    let header = &msg.header;
    let mut rule = Rule {
        src: Ipv4Addr::UNSPECIFIED,
        src_len: header.src_len,
        table: u32::from(header.table),
        priority: 0,
    };
    let mut plain = header.action == RuleAction::ToTable
        && header.dst_len == 0
        && header.tos == 0
        && !header.flags.contains(RuleFlags::Invert);
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Source(IpAddr::V4(a)) => rule.src = *a,
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::Priority(p) => rule.priority = *p,
            // Attributes that only describe the rule, or that the kernel always reports with
            // their "unset" value (-1).
            RuleAttribute::Protocol(_) | RuleAttribute::Source(_) => {}
            RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
            // Anything else is a selector or action parameter we never set.
            _ => plain = false,
        }
    }
    ObservedRule { rule, plain }
}

/// Reads a numeric sysctl on the calling thread; `None` when the file does not exist.
fn read_sysctl(sysctl: &Sysctl) -> Result<Option<u32>> {
    let path = sysctl.path();
    match std::fs::read_to_string(&path) {
        Ok(content) => match content.trim().parse() {
            Ok(value) => Ok(Some(value)),
            Err(_) => Err(NetconfError::SysctlParse { path, content }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetconfError::SysctlRead { path, source }),
    }
}

/// Writes a numeric sysctl on the calling thread.
fn write_sysctl(sysctl: &Sysctl, value: u32) -> io::Result<()> {
    std::fs::write(sysctl.path(), format!("{value}\n"))
}
