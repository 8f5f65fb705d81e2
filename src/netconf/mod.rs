//! Kernel network configuration for the persistent ENI: desired state → diff → apply.
//!
//! This is the only module that knows rtnetlink. It is split in two:
//! - this file: the vocabulary ([`Desired`], [`Observed`], [`Change`]) and the **pure**
//!   [`diff`]/[`removals`] functions, table-tested without a kernel;
//! - [`kernel`]: [`NetConf`], which reads the kernel with netlink dumps and `/proc/sys`, and
//!   applies changes with idempotent netlink writes.
//!
//! What the agent owns in the kernel, and how it recognises it:
//! - **link up** and **IPv4 addresses** on the interface with the ENI's MAC. Addresses we do not
//!   want are left alone (they may belong to DHCP, amazon-ec2-net-utils or an operator) and
//!   [`NetConf::remove`] never deletes addresses.
//! - **routes in our table** ([`DEFAULT_TABLE`]), tagged with our route protocol
//!   ([`ROUTE_PROTOCOL`]). A route in that table with our protocol that we no longer want is
//!   deleted; routes there with another protocol are someone else's and are left alone (unless
//!   one sits exactly where a route of ours must go: then our replace overwrites it).
//! - **policy rules** `from <eni address>/32 lookup <table> pref <priority>`. A plain rule at our
//!   priority that looks up our table is ours; rules at any other priority are left alone.
//! - **sysctls**: IPv4/IPv6 forwarding when asked for, and `rp_filter` (see
//!   [`RP_FILTER_LOOSE`] for why and when).
//!
//! Every write is idempotent (route *replace*, "already exists" tolerated for addresses and
//! rules), so a crash half-way through is repaired by the next [`NetConf::reconcile`], and a
//! second reconcile on a configured kernel changes nothing and returns an empty list.

mod kernel;
#[cfg(test)]
mod kernel_tests;

pub use kernel::NetConf;

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// The `rtm_protocol` number stamped on every route (and `FRA_PROTOCOL` on every rule) we add.
///
/// It says "gateway-agent made this" in `ip route show proto 0xa7`, lets us find our own routes
/// among others in the table, and lets a route delete match only ours (the kernel compares the
/// protocol on delete when it is set). 0xa7 (167) is unassigned: the kernel and iproute2 use
/// 0–4 (unspec, redirect, kernel, boot, static — systemd-networkd uses *static* (4) for its
/// static routes and rules, *dhcp* (16) and *ra* (9) for learned ones), 8–18 (gated, ra, mrt,
/// zebra, bird, dnrouted, xorp, ntk, dhcp, mrouted, keepalived), 42 (babel), 99 (openr) and
/// 186–198 (FRR's bgp, isis, ospf, rip, ripng, nhrp, eigrp, ldp, sharp, pbr, static,
/// openfabric, srte).
pub const ROUTE_PROTOCOL: u8 = 0xa7;

/// The default policy-routing table for the ENI.
///
/// amazon-ec2-net-utils puts each secondary interface in table `10000 + device-number` and
/// systemd-networkd's own defaults use main (254)/local (255)/default (253); 7700 collides with
/// neither and is easy to spot in `ip route show table all`.
pub const DEFAULT_TABLE: u32 = 7700;

/// The default priority ("pref") of our `from <eni address> lookup <table>` rules.
///
/// It sits after the kernel's `local` rule (0) and before amazon-ec2-net-utils' per-interface
/// rules (`10000 + device-number`) and the kernel's `main` (32766) and `default` (32767) rules,
/// so traffic sourced from the ENI's addresses takes the ENI's table even when
/// amazon-ec2-net-utils also configured the interface.
pub const DEFAULT_RULE_PRIORITY: u32 = 7700;

/// `rp_filter` value for loose reverse-path filtering, written where strict (1) is in force.
///
/// A gateway forwards packets from private subnets: they arrive on the ENI (the zone's route
/// tables point at it) with sources whose reverse route goes out of the *primary* interface, so
/// strict mode (1) drops every one of them. Loose mode (2) still drops sources that are not
/// routable at all (the spoofing protection worth keeping) and drops nothing we carry. The
/// kernel uses max(`conf.all.rp_filter`, `conf.<if>.rp_filter`), so both `all` and the ENI must
/// be off strict; each is raised to 2 only when it is 1 (0 and 2 are left as found, and we never
/// lower a value, so we never weaken filtering more than forwarding needs).
pub const RP_FILTER_LOOSE: u32 = 2;

/// How often [`NetConf::wait_link_by_mac`] looks for the interface: an attached ENI shows up in
/// the kernel within a second or two, so 50 ms polls add little latency for a negligible cost
/// (one link dump per poll).
pub const LINK_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The ENI as the kernel should see it.
#[derive(Debug, Clone, PartialEq)]
pub struct EniSpec {
    /// The ENI's MAC: how we find its interface (names are not stable across attaches).
    pub mac: [u8; 6],
    /// IPv4 addresses with prefix length (the subnet's), e.g. `(10.0.0.50, 24)`.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// The subnet's router (the VPC's `.1`), the next hop of the table's default route.
    pub gateway: Ipv4Addr,
    /// Policy-routing table for the ENI ([`DEFAULT_TABLE`] unless configured).
    pub table: u32,
    /// Priority of the `from <address> lookup <table>` rules ([`DEFAULT_RULE_PRIORITY`]).
    pub rule_priority: u32,
}

/// Everything the agent wants the kernel to hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub eni: EniSpec,
    /// `true`: make sure `net.ipv4.ip_forward` is 1. `false`: not managed (left as found; other
    /// services on the box may rely on it).
    pub ipv4_forwarding: bool,
    /// `true`: make sure `net.ipv6.conf.all.forwarding` is 1. `false`: not managed.
    pub ipv6_forwarding: bool,
}

/// A MAC address, displayed as `02:00:5e:10:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`), whatever the carrier.
    pub up: bool,
}

/// An IPv4 unicast route in a policy table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: Ipv4Addr,
    pub prefix: u8,
    /// Next hop; `None` for an on-link (connected, `scope link`) route.
    pub gateway: Option<Ipv4Addr>,
    /// Preferred source address (`src`), if any.
    pub src: Option<Ipv4Addr>,
    /// Output interface index (0 when the route has none, e.g. multipath).
    pub oif: u32,
    /// Output interface name, for logs (`if#N` when the index is unknown).
    pub dev: String,
    pub table: u32,
    /// `rtm_protocol`: [`ROUTE_PROTOCOL`] for ours.
    pub protocol: u8,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dest, self.prefix)?;
        match self.gateway {
            Some(gw) => write!(f, " via {gw} dev {}", self.dev)?,
            None => write!(f, " dev {} scope link", self.dev)?,
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        write!(f, " table {} proto {:#04x}", self.table, self.protocol)
    }
}

/// A plain IPv4 policy rule: `from <src>/<src_len> lookup <table> pref <priority>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub src: Ipv4Addr,
    pub src_len: u8,
    pub table: u32,
    pub priority: u32,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "from {}/{} lookup {} pref {}",
            self.src, self.src_len, self.table, self.priority
        )
    }
}

/// A rule as dumped from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRule {
    pub rule: Rule,
    /// `false` when the rule has selectors or an action we never set (iif/oif, fwmark, dst, tos,
    /// `not`, an action other than "lookup"): such a rule is never taken for one of ours.
    pub plain: bool,
}

/// A sysctl, named by its path under `/proc/sys` (`net/ipv4/conf/ens6/rp_filter`).
///
/// Displayed the way sysctl(8) names it: `/` becomes `.` and a `.` inside a component (an
/// interface name such as `eth0.100`) becomes `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sysctl(String);

impl Sysctl {
    /// `net.ipv4.ip_forward`.
    pub fn ipv4_forwarding() -> Self {
        Self("net/ipv4/ip_forward".to_owned())
    }

    /// `net.ipv6.conf.all.forwarding`.
    pub fn ipv6_forwarding() -> Self {
        Self("net/ipv6/conf/all/forwarding".to_owned())
    }

    /// `net.ipv4.conf.<iface>.rp_filter` (`iface` may be `all` or `default`).
    pub fn rp_filter(iface: &str) -> Self {
        Self(format!("net/ipv4/conf/{iface}/rp_filter"))
    }

    /// The file to read and write.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/proc/sys").join(&self.0)
    }
}

impl fmt::Display for Sysctl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name: String = self
            .0
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect();
        f.write_str(&name)
    }
}

/// The sysctl values that matter; `None` when the file does not exist (IPv6 disabled, say).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sysctls {
    pub ipv4_forwarding: Option<u32>,
    pub ipv6_forwarding: Option<u32>,
    pub rp_filter_all: Option<u32>,
    /// `net.ipv4.conf.<eni>.rp_filter`.
    pub rp_filter_link: Option<u32>,
}

/// What the kernel holds that matters for one [`Desired`].
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The interface carrying the ENI's MAC.
    pub link: Link,
    /// IPv4 addresses on that interface.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// IPv4 unicast routes in the desired table (any protocol).
    pub routes: Vec<Route>,
    /// IPv4 rules that look up the desired table or sit at the desired priority.
    pub rules: Vec<ObservedRule>,
    pub sysctls: Sysctls,
}

/// One change to the kernel, typed so that it logs as a sentence.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    SetLinkUp {
        index: u32,
        name: String,
    },
    AddAddress {
        index: u32,
        name: String,
        address: Ipv4Addr,
        prefix: u8,
    },
    /// Written with `NLM_F_REPLACE`: creates the route or overwrites the one with the same key.
    ReplaceRoute(Route),
    DeleteRoute(Route),
    AddRule(Rule),
    DeleteRule(Rule),
    SetSysctl {
        sysctl: Sysctl,
        value: u32,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::SetLinkUp { index, name } => write!(f, "set link {name} (index {index}) up"),
            Change::AddAddress {
                name,
                address,
                prefix,
                ..
            } => write!(f, "add address {address}/{prefix} on {name}"),
            Change::ReplaceRoute(route) => write!(f, "replace route {route}"),
            Change::DeleteRoute(route) => write!(f, "delete route {route}"),
            Change::AddRule(rule) => write!(f, "add rule {rule}"),
            Change::DeleteRule(rule) => write!(f, "delete rule {rule}"),
            Change::SetSysctl { sysctl, value } => write!(f, "set sysctl {sysctl} = {value}"),
        }
    }
}

/// Errors, each naming the operation and the object it was applied to.
#[derive(Debug, thiserror::Error)]
pub enum NetconfError {
    #[error("netlink: open a route socket: {}{}", .0, privilege_hint(.0))]
    Socket(#[source] io::Error),
    /// A dump (links, addresses, routes of a table, rules) failed.
    #[error("netlink: dump {what}: {source}{}", privilege_hint(source))]
    Dump {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A netlink write failed; Display reads e.g. "netlink: replace route 0.0.0.0/0 via 10.0.0.1
    /// dev ens6 table 7700 proto 0xa7: Network is unreachable (os error 101)".
    #[error("netlink: {change}: {source}{}", privilege_hint(source))]
    Apply {
        change: Change,
        #[source]
        source: io::Error,
    },
    #[error("sysctl: read {}: {source}", path.display())]
    SysctlRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("sysctl: write {value} to {}: {source}{}", path.display(), privilege_hint(source))]
    SysctlWrite {
        path: PathBuf,
        value: u32,
        #[source]
        source: io::Error,
    },
    #[error("sysctl: {}: unexpected content {content:?}", path.display())]
    SysctlParse { path: PathBuf, content: String },
    #[error("no network interface with MAC {mac} in this network namespace")]
    LinkNotFound { mac: MacAddr },
    #[error("no network interface with MAC {mac} appeared within {timeout:?}")]
    LinkTimeout { mac: MacAddr, timeout: Duration },
}

pub type Result<T, E = NetconfError> = std::result::Result<T, E>;

/// What to do about a refusal: the cause is almost always the process's privileges, and the
/// kernel's "Operation not permitted" names neither which privilege nor where it is granted.
fn privilege_hint(error: &io::Error) -> &'static str {
    use nix::errno::Errno;
    match error.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EPERM | Errno::EACCES) => {
            " (the agent needs CAP_NET_ADMIN: the packaged unit grants it with \
             AmbientCapabilities=; run it as root or with that capability, and in a container \
             give the container CAP_NET_ADMIN too)"
        }
        Some(Errno::EROFS) => {
            " (/proc/sys is read-only here: the unit must not set ProtectKernelTunables=, and a \
             container must give the instance its own network namespace, whose /proc/sys/net \
             is writable)"
        }
        _ => "",
    }
}

/// The network address of `address/prefix` (`10.0.0.50/24` → `10.0.0.0`).
fn network(address: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(u32::from(address) & mask)
}

/// The routes the ENI's table must hold: one on-link route per distinct subnet of the ENI's
/// addresses (so the table answers for its own subnet without falling back to `main`, the way
/// amazon-ec2-net-utils builds its per-interface tables), then the default route via the
/// subnet's router.
pub fn desired_routes(eni: &EniSpec, link: &Link) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    for &(address, prefix) in &eni.addresses {
        if prefix >= 32 {
            continue;
        }
        let dest = network(address, prefix);
        if routes.iter().any(|r| r.dest == dest && r.prefix == prefix) {
            continue;
        }
        routes.push(Route {
            dest,
            prefix,
            gateway: None,
            src: Some(address),
            oif: link.index,
            dev: link.name.clone(),
            table: eni.table,
            protocol: ROUTE_PROTOCOL,
        });
    }
    routes.push(Route {
        dest: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
        gateway: Some(eni.gateway),
        src: None,
        oif: link.index,
        dev: link.name.clone(),
        table: eni.table,
        protocol: ROUTE_PROTOCOL,
    });
    routes
}

/// The rules the ENI needs: traffic sourced from each of its addresses looks up its table.
pub fn desired_rules(eni: &EniSpec) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    for &(address, _) in &eni.addresses {
        let rule = Rule {
            src: address,
            src_len: 32,
            table: eni.table,
            priority: eni.rule_priority,
        };
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    rules
}

/// Is `rule` one of ours (by position), whatever its source?
fn rule_is_ours(eni: &EniSpec, rule: &ObservedRule) -> bool {
    rule.plain && rule.rule.table == eni.table && rule.rule.priority == eni.rule_priority
}

/// Is `route` one of ours (by table and protocol)?
fn route_is_ours(eni: &EniSpec, route: &Route) -> bool {
    route.table == eni.table && route.protocol == ROUTE_PROTOCOL
}

/// The changes that take the kernel from `observed` to `desired`, in the order to apply them:
/// link up, addresses, routes (subnet before default, so the gateway is on-link), rules,
/// rp_filter, forwarding, then deletion of stale routes and rules of ours. Pure; empty when the
/// kernel already matches.
pub fn diff(desired: &Desired, observed: &Observed) -> Vec<Change> {
    let eni = &desired.eni;
    let link = &observed.link;
    let mut changes = Vec::new();

    if !link.up {
        changes.push(Change::SetLinkUp {
            index: link.index,
            name: link.name.clone(),
        });
    }

    for &(address, prefix) in &eni.addresses {
        if !observed.addresses.contains(&(address, prefix)) {
            changes.push(Change::AddAddress {
                index: link.index,
                name: link.name.clone(),
                address,
                prefix,
            });
        }
    }

    let want_routes = desired_routes(eni, link);
    for route in &want_routes {
        if !observed.routes.contains(route) {
            changes.push(Change::ReplaceRoute(route.clone()));
        }
    }

    let want_rules = desired_rules(eni);
    for rule in &want_rules {
        if !observed.rules.iter().any(|o| o.plain && &o.rule == rule) {
            changes.push(Change::AddRule(rule.clone()));
        }
    }

    let sysctls = &observed.sysctls;
    if sysctls.rp_filter_all == Some(1) {
        changes.push(Change::SetSysctl {
            sysctl: Sysctl::rp_filter("all"),
            value: RP_FILTER_LOOSE,
        });
    }
    if sysctls.rp_filter_link == Some(1) {
        changes.push(Change::SetSysctl {
            sysctl: Sysctl::rp_filter(&link.name),
            value: RP_FILTER_LOOSE,
        });
    }
    if desired.ipv4_forwarding && sysctls.ipv4_forwarding != Some(1) {
        changes.push(Change::SetSysctl {
            sysctl: Sysctl::ipv4_forwarding(),
            value: 1,
        });
    }
    if desired.ipv6_forwarding && sysctls.ipv6_forwarding != Some(1) {
        changes.push(Change::SetSysctl {
            sysctl: Sysctl::ipv6_forwarding(),
            value: 1,
        });
    }

    // Stale state of ours: a route of ours whose key (destination) we no longer want (a route
    // with a wanted key but other content is overwritten by the replace above), and a rule at
    // our position for an address the ENI no longer has.
    for route in &observed.routes {
        let wanted_key = want_routes
            .iter()
            .any(|w| w.dest == route.dest && w.prefix == route.prefix);
        if route_is_ours(eni, route) && !wanted_key {
            changes.push(Change::DeleteRoute(route.clone()));
        }
    }
    for rule in &observed.rules {
        if rule_is_ours(eni, rule) && !want_rules.contains(&rule.rule) {
            changes.push(Change::DeleteRule(rule.rule.clone()));
        }
    }

    changes
}

/// The changes that take our rules and routes out of the kernel (drain, shutdown): rules first,
/// so no traffic is steered into a table being emptied, then the routes of ours in the table.
/// Addresses, the link and sysctls stay. Pure.
pub fn removals(eni: &EniSpec, routes: &[Route], rules: &[ObservedRule]) -> Vec<Change> {
    let mut changes = Vec::new();
    for rule in rules {
        if rule_is_ours(eni, rule) {
            let change = Change::DeleteRule(rule.rule.clone());
            if !changes.contains(&change) {
                changes.push(change);
            }
        }
    }
    // Least specific first (the default route before the subnet route its gateway relies on),
    // whatever order the kernel dumped them in.
    let mut ours: Vec<&Route> = routes.iter().filter(|r| route_is_ours(eni, r)).collect();
    ours.sort_by_key(|r| (r.prefix, r.dest));
    changes.extend(ours.into_iter().map(|r| Change::DeleteRoute(r.clone())));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn desired() -> Desired {
        Desired {
            eni: EniSpec {
                mac: MAC,
                addresses: vec![(ADDR, 24)],
                gateway: GW,
                table: DEFAULT_TABLE,
                rule_priority: DEFAULT_RULE_PRIORITY,
            },
            ipv4_forwarding: true,
            ipv6_forwarding: false,
        }
    }

    fn link(up: bool) -> Link {
        Link {
            index: 4,
            name: "ens6".into(),
            up,
        }
    }

    fn subnet_route() -> Route {
        Route {
            dest: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 24,
            gateway: None,
            src: Some(ADDR),
            oif: 4,
            dev: "ens6".into(),
            table: DEFAULT_TABLE,
            protocol: ROUTE_PROTOCOL,
        }
    }

    fn default_route() -> Route {
        Route {
            dest: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: Some(GW),
            src: None,
            oif: 4,
            dev: "ens6".into(),
            table: DEFAULT_TABLE,
            protocol: ROUTE_PROTOCOL,
        }
    }

    fn our_rule() -> Rule {
        Rule {
            src: ADDR,
            src_len: 32,
            table: DEFAULT_TABLE,
            priority: DEFAULT_RULE_PRIORITY,
        }
    }

    fn plain(rule: Rule) -> ObservedRule {
        ObservedRule { rule, plain: true }
    }

    fn empty_kernel() -> Observed {
        Observed {
            link: link(false),
            addresses: vec![],
            routes: vec![],
            rules: vec![],
            sysctls: Sysctls {
                ipv4_forwarding: Some(0),
                ipv6_forwarding: Some(0),
                rp_filter_all: Some(1),
                rp_filter_link: Some(1),
            },
        }
    }

    fn configured() -> Observed {
        Observed {
            link: link(true),
            addresses: vec![(ADDR, 24)],
            routes: vec![subnet_route(), default_route()],
            rules: vec![plain(our_rule())],
            sysctls: Sysctls {
                ipv4_forwarding: Some(1),
                ipv6_forwarding: Some(0),
                rp_filter_all: Some(2),
                rp_filter_link: Some(0),
            },
        }
    }

    fn set(sysctl: Sysctl, value: u32) -> Change {
        Change::SetSysctl { sysctl, value }
    }

    #[test]
    fn diff_table() {
        let foreign_addr = (Ipv4Addr::new(10, 0, 0, 99), 24);
        let stale_route = Route {
            dest: Ipv4Addr::new(192, 168, 0, 0),
            prefix: 16,
            ..default_route()
        };
        let foreign_route = Route {
            protocol: 4,
            ..stale_route.clone()
        };
        let other_prio = Rule {
            priority: 7800,
            ..our_rule()
        };
        let stale_rule = Rule {
            src: Ipv4Addr::new(10, 0, 0, 77),
            ..our_rule()
        };

        type Case = (&'static str, Desired, Observed, Vec<Change>);
        let cases: Vec<Case> = vec![
            (
                "empty kernel: everything",
                desired(),
                empty_kernel(),
                vec![
                    Change::SetLinkUp {
                        index: 4,
                        name: "ens6".into(),
                    },
                    Change::AddAddress {
                        index: 4,
                        name: "ens6".into(),
                        address: ADDR,
                        prefix: 24,
                    },
                    Change::ReplaceRoute(subnet_route()),
                    Change::ReplaceRoute(default_route()),
                    Change::AddRule(our_rule()),
                    set(Sysctl::rp_filter("all"), 2),
                    set(Sysctl::rp_filter("ens6"), 2),
                    set(Sysctl::ipv4_forwarding(), 1),
                ],
            ),
            ("fully configured: nothing", desired(), configured(), vec![]),
            (
                "missing default route only: just that",
                desired(),
                Observed {
                    routes: vec![subnet_route()],
                    ..configured()
                },
                vec![Change::ReplaceRoute(default_route())],
            ),
            (
                "route with another gateway: replaced, not deleted",
                desired(),
                Observed {
                    routes: vec![
                        subnet_route(),
                        Route {
                            gateway: Some(Ipv4Addr::new(10, 0, 0, 2)),
                            ..default_route()
                        },
                    ],
                    ..configured()
                },
                vec![Change::ReplaceRoute(default_route())],
            ),
            (
                "foreign address on the ENI: left alone",
                desired(),
                Observed {
                    addresses: vec![(ADDR, 24), foreign_addr],
                    ..configured()
                },
                vec![],
            ),
            (
                "rule with another priority: left alone, ours added",
                desired(),
                Observed {
                    rules: vec![plain(other_prio.clone())],
                    ..configured()
                },
                vec![Change::AddRule(our_rule())],
            ),
            (
                "rule at our place with extra selectors is not ours",
                desired(),
                Observed {
                    rules: vec![ObservedRule {
                        rule: our_rule(),
                        plain: false,
                    }],
                    ..configured()
                },
                vec![Change::AddRule(our_rule())],
            ),
            (
                "stale rule of ours (address gone): deleted",
                desired(),
                Observed {
                    rules: vec![plain(our_rule()), plain(stale_rule.clone())],
                    ..configured()
                },
                vec![Change::DeleteRule(stale_rule)],
            ),
            (
                "stale route of ours: deleted; foreign route in our table: left alone",
                desired(),
                Observed {
                    routes: vec![
                        subnet_route(),
                        default_route(),
                        stale_route.clone(),
                        foreign_route,
                    ],
                    ..configured()
                },
                vec![Change::DeleteRoute(stale_route)],
            ),
            (
                "rp_filter strict on all only: all raised to loose",
                desired(),
                Observed {
                    sysctls: Sysctls {
                        rp_filter_all: Some(1),
                        ..configured().sysctls
                    },
                    ..configured()
                },
                vec![set(Sysctl::rp_filter("all"), 2)],
            ),
            (
                "rp_filter off or unreadable: left alone",
                desired(),
                Observed {
                    sysctls: Sysctls {
                        rp_filter_all: Some(0),
                        rp_filter_link: None,
                        ..configured().sysctls
                    },
                    ..configured()
                },
                vec![],
            ),
            (
                "forwarding not wanted: not touched",
                Desired {
                    ipv4_forwarding: false,
                    ..desired()
                },
                Observed {
                    sysctls: Sysctls {
                        ipv4_forwarding: Some(0),
                        ..configured().sysctls
                    },
                    ..configured()
                },
                vec![],
            ),
            (
                "ipv6 forwarding wanted",
                Desired {
                    ipv6_forwarding: true,
                    ..desired()
                },
                configured(),
                vec![set(Sysctl::ipv6_forwarding(), 1)],
            ),
            (
                "second address in the same subnet: address and rule, no second subnet route",
                Desired {
                    eni: EniSpec {
                        addresses: vec![(ADDR, 24), (Ipv4Addr::new(10, 0, 0, 51), 24)],
                        ..desired().eni
                    },
                    ..desired()
                },
                configured(),
                vec![
                    Change::AddAddress {
                        index: 4,
                        name: "ens6".into(),
                        address: Ipv4Addr::new(10, 0, 0, 51),
                        prefix: 24,
                    },
                    Change::AddRule(Rule {
                        src: Ipv4Addr::new(10, 0, 0, 51),
                        ..our_rule()
                    }),
                ],
            ),
        ];

        for (name, desired, observed, want) in cases {
            assert_eq!(diff(&desired, &observed), want, "case: {name}");
        }
    }

    #[test]
    fn applying_the_diff_converges() {
        // Model the kernel after applying the empty-kernel diff: the diff is then empty.
        let mut observed = empty_kernel();
        for change in diff(&desired(), &observed) {
            match change {
                Change::SetLinkUp { .. } => observed.link.up = true,
                Change::AddAddress {
                    address, prefix, ..
                } => observed.addresses.push((address, prefix)),
                Change::ReplaceRoute(r) => observed.routes.push(r),
                Change::AddRule(r) => observed.rules.push(plain(r)),
                Change::SetSysctl { sysctl, value } => {
                    let s = &mut observed.sysctls;
                    if sysctl == Sysctl::rp_filter("all") {
                        s.rp_filter_all = Some(value);
                    } else if sysctl == Sysctl::rp_filter("ens6") {
                        s.rp_filter_link = Some(value);
                    } else if sysctl == Sysctl::ipv4_forwarding() {
                        s.ipv4_forwarding = Some(value);
                    }
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(diff(&desired(), &observed), vec![]);
    }

    #[test]
    fn removals_take_rules_then_our_routes_only() {
        let foreign = Route {
            protocol: 4,
            dest: Ipv4Addr::new(172, 16, 0, 0),
            prefix: 12,
            ..default_route()
        };
        let other_prio = plain(Rule {
            priority: 7800,
            ..our_rule()
        });
        let got = removals(
            &desired().eni,
            &[subnet_route(), default_route(), foreign],
            &[plain(our_rule()), other_prio],
        );
        assert_eq!(
            got,
            vec![
                Change::DeleteRule(our_rule()),
                Change::DeleteRoute(default_route()),
                Change::DeleteRoute(subnet_route()),
            ]
        );
    }

    #[test]
    fn change_display_reads_like_a_log_line() {
        let cases = [
            (
                Change::SetLinkUp {
                    index: 4,
                    name: "ens6".into(),
                },
                "set link ens6 (index 4) up",
            ),
            (
                Change::AddAddress {
                    index: 4,
                    name: "ens6".into(),
                    address: ADDR,
                    prefix: 24,
                },
                "add address 10.0.0.50/24 on ens6",
            ),
            (
                Change::ReplaceRoute(default_route()),
                "replace route 0.0.0.0/0 via 10.0.0.1 dev ens6 table 7700 proto 0xa7",
            ),
            (
                Change::ReplaceRoute(subnet_route()),
                "replace route 10.0.0.0/24 dev ens6 scope link src 10.0.0.50 table 7700 proto 0xa7",
            ),
            (
                Change::AddRule(our_rule()),
                "add rule from 10.0.0.50/32 lookup 7700 pref 7700",
            ),
            (
                set(Sysctl::ipv4_forwarding(), 1),
                "set sysctl net.ipv4.ip_forward = 1",
            ),
            (
                set(Sysctl::rp_filter("ens6"), 2),
                "set sysctl net.ipv4.conf.ens6.rp_filter = 2",
            ),
            (
                set(Sysctl::rp_filter("eth0.100"), 2),
                "set sysctl net.ipv4.conf.eth0/100.rp_filter = 2",
            ),
        ];
        for (change, want) in cases {
            assert_eq!(change.to_string(), want);
        }
        assert_eq!(
            Sysctl::rp_filter("eth0.100").path(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn error_display_names_operation_and_object() {
        let err = NetconfError::Apply {
            change: Change::ReplaceRoute(default_route()),
            source: io::Error::from_raw_os_error(17),
        };
        assert_eq!(
            err.to_string(),
            "netlink: replace route 0.0.0.0/0 via 10.0.0.1 dev ens6 table 7700 proto 0xa7: \
             File exists (os error 17)"
        );
        let err = NetconfError::LinkTimeout {
            mac: MacAddr(MAC),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(
            err.to_string(),
            "no network interface with MAC 02:00:5e:10:00:01 appeared within 5s"
        );
    }

    #[test]
    fn a_refusal_says_which_privilege_is_missing_and_where_it_is_granted() {
        let err = NetconfError::Apply {
            change: Change::ReplaceRoute(default_route()),
            source: io::Error::from_raw_os_error(1),
        };
        let text = err.to_string();
        assert!(text.contains("Operation not permitted"), "{text}");
        assert!(text.contains("needs CAP_NET_ADMIN"), "{text}");
        assert!(text.contains("AmbientCapabilities="), "{text}");
        let err = NetconfError::SysctlWrite {
            path: PathBuf::from("/proc/sys/net/ipv4/ip_forward"),
            value: 1,
            source: io::Error::from_raw_os_error(30),
        };
        assert!(
            err.to_string().contains("/proc/sys is read-only here"),
            "{err}"
        );
        let err = NetconfError::Socket(io::Error::from_raw_os_error(13));
        assert!(err.to_string().contains("needs CAP_NET_ADMIN"), "{err}");
    }

    #[test]
    fn network_masks_host_bits() {
        assert_eq!(network(ADDR, 24), Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(network(ADDR, 0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(network(ADDR, 32), ADDR);
        assert_eq!(
            network(Ipv4Addr::new(10, 1, 200, 7), 20),
            Ipv4Addr::new(10, 1, 192, 0)
        );
    }
}
