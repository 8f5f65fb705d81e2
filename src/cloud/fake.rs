//! An in-memory EC2 and Auto Scaling for fast unit tests: [`FakeCloud`].
//!
//! One cloneable handle implements both [`Ec2`] and [`Autoscaling`], so the same value goes
//! wherever the agent wants either. Every call answers at once (no sleeps: tests drive time with
//! tokio's paused clock) and is recorded in a call log ([`FakeCloud::calls`]) named exactly as
//! the real adapters name it in their errors (`ReplaceRoute rtb-… 0.0.0.0/0 -> eni-…`), so a
//! test can count "one ReplaceRoute on this table".
//!
//! It answers the way EC2 does for the calls the agent makes, with the same error codes:
//! a route's state is computed at read time (active only while its ENI is attached to a running
//! instance), attaching an ENI that is in use fails with `InvalidNetworkInterface.InUse`,
//! `CreateRoute` over an existing route with `RouteAlreadyExists`, a lifecycle action that is
//! not open with `ValidationError`, and "no such resource" on a single-resource read is
//! `Ok(None)` as the SDK adapters make it.
//!
//! Where it is simpler than EC2, on purpose:
//! - attachments and detachments finish at once, unless [`FakeCloud::slow_attachments`] holds
//!   them `attaching` / `detaching` until [`FakeCloud::finish_transitions`];
//! - reads are consistent, unless [`FakeCloud::lag_reads`] asks for stale route tables;
//! - `DescribeRouteTables` by IDs is one call that leaves unknown IDs out (the SDK adapter makes
//!   one call per ID after AWS refuses the batch), and none at all for no IDs (as the adapter);
//! - the Auto Scaling group never acts by itself: after a lifecycle action completes, or an
//!   instance is reported unhealthy, the test plays the group's next move
//!   ([`FakeCloud::terminate`], [`FakeCloud::launch`], [`FakeCloud::set_lifecycle_state`]).
//!
//! Faults are scripted per API action ([`FakeCloud::fail_next`], [`FakeCloud::partition`]); a
//! failed call changes nothing (except [`Fault::LostAnswer`], whose whole point is that it did).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    AsgInstance, Attachment, AttachmentStatus, Autoscaling, Call, CloudError, Ec2, Eni, EniStatus,
    Health, InstanceInfo, InstanceState, LifecycleHook, LifecycleResult, LifecycleTransition,
    Result, Route, RouteState, RouteTable, RouteTarget, describe_tags,
};
use crate::config::{DEFAULT_DEVICE_INDEX, GROUP_TAG, ZONE_TAG};

/// The region of every scenario; zones are `us-east-1a`, `us-east-1b`, ...
pub const REGION: &str = "us-east-1";
/// The group name of [`FakeCloud::zones`] and [`FakeCloud::two_zones`], as in the lab.
pub const GROUP: &str = "lab";
pub const VPC_CIDR: &str = "10.0.0.0/16";
/// The route every zone's private table sends to its persistent ENI.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";
/// The lifecycle hooks of every zone's group, named as the lab names them.
pub const LAUNCH_HOOK: &str = "gateway-launch";
pub const TERMINATE_HOOK: &str = "gateway-terminate";

/// The EC2 actions the agent makes, as AWS names them (and as [`Call::operation`] holds them).
pub const EC2_ACTIONS: &[&str] = &[
    "DescribeNetworkInterfaces",
    "DescribeInstances",
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "DescribeRouteTables",
    "ReplaceRoute",
    "CreateRoute",
    "DeleteRoute",
    "CreateTags",
];
/// The Auto Scaling actions the agent makes.
pub const AUTOSCALING_ACTIONS: &[&str] = &[
    "DescribeAutoScalingInstances",
    "DescribeAutoScalingGroups",
    "DescribeLifecycleHooks",
    "CompleteLifecycleAction",
    "RecordLifecycleActionHeartbeat",
    "SetInstanceHealth",
];

const PENDING_WAIT: &str = "Pending:Wait";
const TERMINATING_WAIT: &str = "Terminating:Wait";
const IN_SERVICE: &str = "InService";
/// After a completed action the group moves on by itself on AWS; here it stops there.
const TERMINATING_PROCEED: &str = "Terminating:Proceed";

/// A scripted failure of one call. Codes and statuses are what each service really sends, so
/// [`CloudError::is_retryable`] and [`CloudError::is_throttling`] classify them as in production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// EC2 `RequestLimitExceeded` (HTTP 503), Auto Scaling `Throttling` (400).
    Throttle,
    /// EC2 `Unavailable`, Auto Scaling `ServiceUnavailable` (HTTP 503).
    Unavailable,
    /// EC2 `UnauthorizedOperation`, Auto Scaling `AccessDenied` (HTTP 403): an IAM policy that
    /// lacks the action. Not retryable.
    AccessDenied,
    /// No answer within the SDK's timeouts; the call did nothing.
    Timeout,
    /// The request never reached AWS (one call; see [`FakeCloud::partition`] for an outage).
    Unreachable,
    /// The call took effect but its answer was lost (a timeout): only a fresh read tells it
    /// from [`Fault::Timeout`], which is what idempotent writers must cope with.
    LostAnswer,
    /// Any other answer, e.g. `InvalidNetworkInterface.InUse` with 400.
    Api { code: String, status: u16 },
}

/// One call as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub call: Call,
    /// `None` when it succeeded; otherwise AWS's error code (`RequestLimitExceeded`), or
    /// `timeout` / `unreachable` when no answer came.
    pub error: Option<String>,
}

/// A CompleteLifecycleAction that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    pub result: LifecycleResult,
}

/// A RecordLifecycleActionHeartbeat that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
}

/// A SetInstanceHealth that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub instance_id: String,
    pub healthy: bool,
}

/// The fake cloud. Cloning gives another handle on the same state: keep one in the test and
/// hand another (or a reference) to the code under test.
#[derive(Debug, Clone)]
pub struct FakeCloud {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct Zone {
    letter: String,
    az: String,
    index: u8,
    eni: String,
    table: String,
    asg: String,
    public_subnet: String,
    /// Next host number for a primary interface in the public subnet.
    next_host: u8,
}

#[derive(Debug)]
struct Instance {
    az: String,
    state: InstanceState,
    /// Its Auto Scaling group, while the group lists it.
    asg: Option<String>,
    lifecycle_state: String,
    health: Health,
    tags: BTreeMap<String, String>,
    /// Launch order, so "the zone's instance" is the newest one.
    serial: u32,
}

#[derive(Debug, Default)]
struct State {
    serial: u32,
    group: String,
    vpc_id: String,
    zones: Vec<Zone>,
    enis: BTreeMap<String, Eni>,
    instances: BTreeMap<String, Instance>,
    /// Route states in here are not used: they are computed at read time.
    tables: BTreeMap<String, RouteTable>,
    /// Tags of the resources modelled only by their ID (VPC, subnets, internet gateway).
    others: BTreeMap<String, BTreeMap<String, String>>,
    hooks: BTreeMap<String, Vec<LifecycleHook>>,
    log: Vec<Logged>,
    faults: BTreeMap<&'static str, VecDeque<Fault>>,
    partitioned: BTreeSet<&'static str>,
    lagging_reads: u32,
    before_last_write: Option<BTreeMap<String, RouteTable>>,
    frozen: Option<BTreeMap<String, RouteTable>>,
    /// Tables the next reads answer with, and how many reads: an old state served again.
    replay: Option<(BTreeMap<String, RouteTable>, u32)>,
    slow_attachments: bool,
    completions: Vec<Completion>,
    heartbeats: Vec<Heartbeat>,
    health_reports: Vec<HealthReport>,
}

// ---------------------------------------------------------------------------------------------
// Building scenarios
// ---------------------------------------------------------------------------------------------

impl FakeCloud {
    /// Two zones, `a` and `b`, of group [`GROUP`]: see [`FakeCloud::scenario`].
    pub fn two_zones() -> Self {
        Self::zones(&["a", "b"])
    }

    /// The given zone letters (`["a", "b", "c"]`) of group [`GROUP`].
    pub fn zones(letters: &[&str]) -> Self {
        Self::scenario(GROUP, letters)
    }

    /// The lab's VPC (lab/py/scenario.py), in the steady state of a working group: per zone
    /// letter `x` at index `i`, in `us-east-1x`,
    /// - a public subnet `10.0.i.0/24` and the zone's persistent ENI in it (`10.0.i.50`),
    ///   tagged `gateway-agent:group=<group>`, `gateway-agent:zone=us-east-1x`, attached at
    ///   device index 1 to the zone's instance, source/dest check off;
    /// - one private route table, tagged the same and associated with the private subnet
    ///   `10.0.(100+i).0/24`: `10.0.0.0/16 -> local`, `0.0.0.0/0 -> the zone's ENI` (active);
    /// - an Auto Scaling group `<group>-us-east-1x` with hooks [`LAUNCH_HOOK`] and
    ///   [`TERMINATE_HOOK`], and its one running instance, `InService` and healthy.
    ///
    /// Plus the public route table (`0.0.0.0/0 -> igw`), untagged. No lease tag is written yet.
    pub fn scenario(group: &str, letters: &[&str]) -> Self {
        assert!(
            (1..=6).contains(&letters.len()),
            "1 to 6 zones, like the lab"
        );
        let mut s = State {
            group: group.to_owned(),
            ..State::default()
        };
        s.vpc_id = s.id("vpc");
        let vpc = s.vpc_id.clone();
        s.others
            .insert(vpc.clone(), name_tag(&format!("{group}-vpc")));
        let igw = s.id("igw");
        s.others.insert(igw.clone(), BTreeMap::new());
        let public_table = s.id("rtb");
        let mut public = RouteTable {
            id: public_table.clone(),
            vpc_id: vpc.clone(),
            tags: name_tag(&format!("{group}-public")),
            routes: vec![local_route()],
            associated: true,
        };
        public
            .routes
            .push(route(DEFAULT_ROUTE, RouteTarget::Gateway(igw)));
        s.tables.insert(public_table, public);

        for (i, letter) in letters.iter().enumerate() {
            let index = u8::try_from(i).unwrap_or(u8::MAX);
            let az = format!("{REGION}{letter}");
            let public_subnet = s.id("subnet");
            s.others.insert(
                public_subnet.clone(),
                name_tag(&format!("{group}-public-{letter}")),
            );
            let private_subnet = s.id("subnet");
            s.others.insert(
                private_subnet,
                name_tag(&format!("{group}-private-{letter}")),
            );
            let mut zone_tags = name_tag(&format!("{group}-private-{letter}"));
            zone_tags.insert(GROUP_TAG.to_owned(), group.to_owned());
            zone_tags.insert(ZONE_TAG.to_owned(), az.clone());

            let eni = s.id("eni");
            let mut eni_tags = zone_tags.clone();
            eni_tags.insert("Name".to_owned(), format!("{group}-gateway-{letter}"));
            let mac = s.mac();
            s.enis.insert(
                eni.clone(),
                Eni {
                    id: eni.clone(),
                    az: az.clone(),
                    vpc_id: vpc.clone(),
                    subnet_id: public_subnet.clone(),
                    mac,
                    private_ips: vec![Ipv4Addr::new(10, 0, index, 50)],
                    status: EniStatus::Available,
                    attachment: None,
                    source_dest_check: true,
                    tags: eni_tags,
                },
            );

            let table = s.id("rtb");
            s.tables.insert(
                table.clone(),
                RouteTable {
                    id: table.clone(),
                    vpc_id: vpc.clone(),
                    tags: zone_tags,
                    routes: vec![
                        local_route(),
                        route(DEFAULT_ROUTE, RouteTarget::Eni(eni.clone())),
                    ],
                    associated: true,
                },
            );

            let asg = format!("{group}-{az}");
            s.hooks.insert(
                asg.clone(),
                vec![
                    LifecycleHook {
                        name: LAUNCH_HOOK.to_owned(),
                        transition: LifecycleTransition::Launching,
                    },
                    LifecycleHook {
                        name: TERMINATE_HOOK.to_owned(),
                        transition: LifecycleTransition::Terminating,
                    },
                ],
            );
            s.zones.push(Zone {
                letter: (*letter).to_owned(),
                az,
                index,
                eni: eni.clone(),
                table,
                asg,
                public_subnet,
                next_host: 10,
            });

            // A gateway that has booted: its ENI attached, forwarding allowed, action completed.
            let instance = s.launch(letter, IN_SERVICE);
            s.attach(&eni, &instance, DEFAULT_DEVICE_INDEX, false);
            if let Some(e) = s.enis.get_mut(&eni) {
                e.source_dest_check = false;
            }
        }
        Self {
            state: Arc::new(Mutex::new(s)),
        }
    }

    /// Another private route table of `zone` (letter or AZ name), tagged and routed like the
    /// zone's own but associated with no subnet: a zone with many tables.
    /// Someone else's ENI tagged into the group for `zone` (a zone letter, or any AZ name for a
    /// zone the scenario lacks), in the scenario's VPC or in `vpc`: a rogue.
    pub fn add_tagged_eni(&self, zone: &str, vpc: Option<&str>) -> String {
        let mut s = self.lock();
        let az = if zone.len() == 1 {
            format!("{REGION}{zone}")
        } else {
            zone.to_owned()
        };
        let group = s.group.clone();
        let vpc = vpc.map_or_else(|| s.vpc_id.clone(), str::to_owned);
        let id = s.id("eni");
        let mac = s.mac();
        let tags = BTreeMap::from([
            (GROUP_TAG.to_owned(), group),
            (ZONE_TAG.to_owned(), az.clone()),
        ]);
        s.enis.insert(
            id.clone(),
            Eni {
                id: id.clone(),
                az,
                vpc_id: vpc,
                subnet_id: "subnet-rogue".to_owned(),
                mac,
                private_ips: vec![Ipv4Addr::new(10, 0, 9, 99)],
                status: EniStatus::Available,
                attachment: None,
                source_dest_check: true,
                tags,
            },
        );
        id
    }

    /// [`Self::add_tagged_eni`] attached to a running instance in no Auto Scaling group, which
    /// forges the group's tags too: an impostor that would answer probes as a gateway.
    pub fn add_rogue_gateway(&self, zone: &str, vpc: Option<&str>) -> String {
        let eni = self.add_tagged_eni(zone, vpc);
        let mut s = self.lock();
        let instance = s.id("i");
        let serial = s.serial;
        let e = s.enis.get_mut(&eni).expect("just added");
        let tags = e.tags.clone();
        let az = e.az.clone();
        e.status = EniStatus::InUse;
        e.attachment = Some(Attachment {
            id: format!("eni-attach-{}", &instance[2..]),
            instance_id: Some(instance.clone()),
            device_index: 1,
            status: AttachmentStatus::Attached,
        });
        s.instances.insert(
            instance,
            Instance {
                az,
                state: InstanceState::Running,
                asg: None,
                lifecycle_state: String::new(),
                health: Health::Healthy,
                tags,
                serial,
            },
        );
        eni
    }

    pub fn add_table(&self, zone: &str) -> String {
        let mut s = self.lock();
        let (own, vpc) = (s.zone(zone).table.clone(), s.vpc_id.clone());
        let id = s.id("rtb");
        let mut table = s.tables[&own].clone();
        table.id.clone_from(&id);
        table.vpc_id = vpc;
        table.associated = false;
        s.tables.insert(id.clone(), table);
        id
    }

    /// A new instance in `zone`'s group, running, in `Pending:Wait` on the launch hook, with only
    /// its primary interface: the replacement the group launches after a gateway died.
    pub fn launch(&self, zone: &str) -> String {
        self.lock().launch(zone, PENDING_WAIT)
    }
}

/// Route tables as they were at one moment.
#[derive(Debug, Clone)]
pub struct TablesSnapshot(BTreeMap<String, RouteTable>);

fn name_tag(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("Name".to_owned(), name.to_owned())])
}

fn route(destination: &str, target: RouteTarget) -> Route {
    Route {
        destination: destination.to_owned(),
        target,
        state: RouteState::Active,
    }
}

fn local_route() -> Route {
    route(VPC_CIDR, RouteTarget::Gateway("local".to_owned()))
}

impl State {
    /// IDs as AWS's old short form (8 hex digits), which the config's ID check accepts; one
    /// counter for every kind, so no two resources share an ID.
    fn id(&mut self, prefix: &str) -> String {
        self.serial += 1;
        format!("{prefix}-{:08x}", self.serial)
    }

    fn mac(&mut self) -> String {
        self.serial += 1;
        let [a, b, c, d] = self.serial.to_be_bytes();
        format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }

    fn zone(&self, name: &str) -> &Zone {
        self.zones
            .iter()
            .find(|z| z.letter == name || z.az == name)
            .unwrap_or_else(|| panic!("the fake cloud has no zone {name:?}"))
    }

    fn launch(&mut self, zone: &str, lifecycle_state: &str) -> String {
        let (az, asg, subnet, index) = {
            let z = self.zone(zone);
            (
                z.az.clone(),
                z.asg.clone(),
                z.public_subnet.clone(),
                z.index,
            )
        };
        let host = {
            let z = self
                .zones
                .iter_mut()
                .find(|z| z.az == az)
                .expect("zone just found");
            z.next_host = z.next_host.checked_add(1).expect("fewer than 240 launches");
            z.next_host - 1
        };
        let id = self.id("i");
        let serial = self.serial;
        let tags = BTreeMap::from([
            (GROUP_TAG.to_owned(), self.group.clone()),
            (ZONE_TAG.to_owned(), az.clone()),
            ("aws:autoscaling:groupName".to_owned(), asg.clone()),
        ]);
        self.instances.insert(
            id.clone(),
            Instance {
                az: az.clone(),
                state: InstanceState::Running,
                asg: Some(asg),
                lifecycle_state: lifecycle_state.to_owned(),
                health: Health::Healthy,
                tags,
                serial,
            },
        );
        let primary = self.id("eni");
        let mac = self.mac();
        self.enis.insert(
            primary.clone(),
            Eni {
                id: primary.clone(),
                az,
                vpc_id: self.vpc_id.clone(),
                subnet_id: subnet,
                mac,
                private_ips: vec![Ipv4Addr::new(10, 0, index, host)],
                status: EniStatus::Available,
                attachment: None,
                source_dest_check: true,
                tags: BTreeMap::new(),
            },
        );
        self.attach(&primary, &id, 0, false);
        id
    }

    /// Returns the attachment ID. `slow` leaves it `attaching`.
    fn attach(&mut self, eni: &str, instance: &str, device_index: u32, slow: bool) -> String {
        let id = self.id("eni-attach");
        let e = self.enis.get_mut(eni).expect("ENI exists");
        e.status = if slow {
            EniStatus::Attaching
        } else {
            EniStatus::InUse
        };
        e.attachment = Some(Attachment {
            id: id.clone(),
            instance_id: Some(instance.to_owned()),
            device_index,
            status: if slow {
                AttachmentStatus::Attaching
            } else {
                AttachmentStatus::Attached
            },
        });
        id
    }

    /// What EC2 shows for a route to `target` now.
    fn route_state(&self, target: &RouteTarget) -> RouteState {
        let running = |id: &str| {
            self.instances
                .get(id)
                .is_some_and(|i| i.state == InstanceState::Running)
        };
        let carries = match target {
            RouteTarget::Eni(id) => self
                .enis
                .get(id)
                .and_then(|e| e.attachment.as_ref())
                .filter(|a| a.status == AttachmentStatus::Attached)
                .and_then(|a| a.instance_id.as_deref())
                .is_some_and(running),
            RouteTarget::Instance(id) => running(id),
            RouteTarget::Gateway(_) | RouteTarget::Other(_) => true,
            RouteTarget::None => false,
        };
        if carries {
            RouteState::Active
        } else {
            RouteState::Blackhole
        }
    }

    fn render(&self, table: &RouteTable) -> RouteTable {
        let mut t = table.clone();
        for r in &mut t.routes {
            r.state = self.route_state(&r.target);
        }
        t
    }

    /// The tables a DescribeRouteTables sees: the ones before the last write while reads lag.
    fn visible_tables(&mut self) -> Vec<RouteTable> {
        if let Some((old, n)) = self.replay.take() {
            let tables: Vec<RouteTable> = old.values().map(|t| self.render(t)).collect();
            if n > 1 {
                self.replay = Some((old, n - 1));
            }
            return tables;
        }
        let source = if let Some(frozen) = &self.frozen {
            frozen
        } else if self.lagging_reads > 0 {
            self.lagging_reads -= 1;
            self.before_last_write.as_ref().unwrap_or(&self.tables)
        } else {
            &self.tables
        };
        source.values().map(|t| self.render(t)).collect()
    }

    /// Called before every change of a route table, so lagging reads have the old state.
    fn remember_tables(&mut self) {
        self.before_last_write = Some(self.tables.clone());
    }

    fn table_mut(&mut self, id: &str) -> &mut RouteTable {
        self.tables
            .get_mut(id)
            .unwrap_or_else(|| panic!("the fake cloud has no route table {id}"))
    }

    fn instance_mut(&mut self, id: &str) -> &mut Instance {
        self.instances
            .get_mut(id)
            .unwrap_or_else(|| panic!("the fake cloud has no instance {id}"))
    }

    fn tags_mut(&mut self, id: &str) -> Option<&mut BTreeMap<String, String>> {
        if self.tables.contains_key(id) {
            return self.tables.get_mut(id).map(|t| &mut t.tags);
        }
        if self.enis.contains_key(id) {
            return self.enis.get_mut(id).map(|e| &mut e.tags);
        }
        if self.instances.contains_key(id) {
            return self.instances.get_mut(id).map(|i| &mut i.tags);
        }
        self.others.get_mut(id)
    }

    /// The answer to `call`: a partition or a scripted fault first, else `op`.
    fn answer<T>(&mut self, call: &Call, op: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.partitioned.contains(call.operation) {
            return Err(unreachable(call));
        }
        match self
            .faults
            .get_mut(call.operation)
            .and_then(VecDeque::pop_front)
        {
            None => op(self),
            Some(Fault::LostAnswer) => {
                let _lost = op(self);
                Err(Fault::LostAnswer.error(call))
            }
            Some(fault) => Err(fault.error(call)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Looking and acting, for tests
// ---------------------------------------------------------------------------------------------

impl FakeCloud {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide its own failure behind
        // every later call's poison error.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records and answers one call. The lock is released before the caller's future resolves.
    fn run<T>(&self, call: Call, op: impl FnOnce(&mut State, &Call) -> Result<T>) -> Result<T> {
        let mut s = self.lock();
        let outcome = s.answer(&call, |s| op(s, &call));
        let error = outcome.as_ref().err().map(error_word);
        s.log.push(Logged { call, error });
        outcome
    }

    pub fn group(&self) -> String {
        self.lock().group.clone()
    }

    pub fn vpc_id(&self) -> String {
        self.lock().vpc_id.clone()
    }

    /// `us-east-1a` for `a` (or for `us-east-1a`).
    pub fn az_of(&self, zone: &str) -> String {
        self.lock().zone(zone).az.clone()
    }

    /// The zone's persistent ENI.
    pub fn eni_of(&self, zone: &str) -> String {
        self.lock().zone(zone).eni.clone()
    }

    /// The zone's private route table (the associated one).
    pub fn table_of(&self, zone: &str) -> String {
        self.lock().zone(zone).table.clone()
    }

    /// The zone's Auto Scaling group.
    pub fn asg_of(&self, zone: &str) -> String {
        self.lock().zone(zone).asg.clone()
    }

    /// The zone's newest instance that is not `terminated` (a killed one still counts).
    pub fn instance_of(&self, zone: &str) -> String {
        let s = self.lock();
        let az = &s.zone(zone).az;
        s.instances
            .iter()
            .filter(|(_, i)| &i.az == az && i.state != InstanceState::Terminated)
            .max_by_key(|(_, i)| i.serial)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| panic!("zone {zone} has no instance left"))
    }

    /// The instance dies at once (`terminate-instances --skip-os-shutdown`, the moment after):
    /// `shutting-down`, its ENIs still attached, its group not told yet. Routes to its ENIs
    /// turn blackhole.
    pub fn kill(&self, instance: &str) {
        self.set_instance_state(instance, InstanceState::ShuttingDown);
    }

    /// The end of a termination: `terminated`, its primary interface deleted, every other ENI
    /// detached (`available`), and its group no longer lists it.
    pub fn terminate(&self, instance: &str) {
        let mut s = self.lock();
        let i = s.instance_mut(instance);
        i.state = InstanceState::Terminated;
        i.asg = None;
        i.lifecycle_state.clear();
        s.enis.retain(|_, e| {
            let held = e
                .attachment
                .as_ref()
                .filter(|a| a.instance_id.as_deref() == Some(instance));
            match held {
                Some(a) if a.device_index == 0 => false,
                Some(_) => {
                    e.attachment = None;
                    e.status = EniStatus::Available;
                    true
                }
                None => true,
            }
        });
    }

    /// `stopped`, ENIs still attached.
    pub fn stop(&self, instance: &str) {
        self.set_instance_state(instance, InstanceState::Stopped);
    }

    pub fn set_instance_state(&self, instance: &str, state: InstanceState) {
        self.lock().instance_mut(instance).state = state;
    }

    /// EC2 no longer knows the instance (terminated long ago): DescribeInstances finds nothing.
    pub fn forget(&self, instance: &str) {
        self.lock().instances.remove(instance);
    }

    pub fn instance_state(&self, instance: &str) -> Option<InstanceState> {
        self.lock().instances.get(instance).map(|i| i.state.clone())
    }

    /// The group's view of the instance: `Pending:Wait`, `InService`, `Terminating:Wait`...
    /// (`Terminating:Wait` is what a scale-in starts with.)
    pub fn set_lifecycle_state(&self, instance: &str, state: &str) {
        state.clone_into(&mut self.lock().instance_mut(instance).lifecycle_state);
    }

    /// `None` outside any group.
    pub fn lifecycle_state(&self, instance: &str) -> Option<String> {
        let s = self.lock();
        let i = s.instances.get(instance)?;
        i.asg.as_ref().map(|_| i.lifecycle_state.clone())
    }

    pub fn health_of(&self, instance: &str) -> Option<Health> {
        self.lock().instances.get(instance).map(|i| i.health)
    }

    /// The ENI as DescribeNetworkInterfaces would answer now.
    pub fn eni(&self, id: &str) -> Option<Eni> {
        self.lock().enis.get(id).cloned()
    }

    /// The table as a consistent DescribeRouteTables would answer now.
    pub fn route_table(&self, id: &str) -> Option<RouteTable> {
        let s = self.lock();
        s.tables.get(id).map(|t| s.render(t))
    }

    pub fn route_target(&self, table: &str, destination: &str) -> Option<RouteTarget> {
        self.route_table(table)?
            .route(destination)
            .map(|r| r.target.clone())
    }

    pub fn route_state(&self, table: &str, destination: &str) -> Option<RouteState> {
        self.route_table(table)?.route(destination).map(|r| r.state)
    }

    /// Someone else's write (an operator, a peer): creates or replaces the route, unlogged,
    /// but it is a write for [`FakeCloud::lag_reads`].
    pub fn set_route_target(&self, table: &str, destination: &str, target: RouteTarget) {
        let mut s = self.lock();
        s.remember_tables();
        let t = s.table_mut(table);
        match t.routes.iter_mut().find(|r| r.destination == destination) {
            Some(r) => r.target = target,
            None => t.routes.push(route(destination, target)),
        }
    }

    /// Someone else's DeleteRoute, unlogged.
    pub fn remove_route(&self, table: &str, destination: &str) {
        let mut s = self.lock();
        s.remember_tables();
        s.table_mut(table)
            .routes
            .retain(|r| r.destination != destination);
    }

    /// Someone else's CreateTags on one resource, unlogged (a peer's lease, an operator's edit).
    pub fn set_tag(&self, resource: &str, key: &str, value: &str) {
        let mut s = self.lock();
        if s.tables.contains_key(resource) {
            s.remember_tables();
        }
        s.tags_mut(resource)
            .unwrap_or_else(|| panic!("the fake cloud has no resource {resource}"))
            .insert(key.to_owned(), value.to_owned());
    }

    pub fn tags_of(&self, resource: &str) -> BTreeMap<String, String> {
        self.lock().tags_mut(resource).cloned().unwrap_or_default()
    }

    /// While on, AttachNetworkInterface leaves the ENI `attaching` and a graceful detach leaves
    /// it `detaching` (a forced one is immediate), until [`FakeCloud::finish_transitions`].
    pub fn slow_attachments(&self, on: bool) {
        self.lock().slow_attachments = on;
    }

    /// Every `attaching` ENI becomes `in-use`, every `detaching` one `available`.
    pub fn finish_transitions(&self) {
        for e in self.lock().enis.values_mut() {
            match e.attachment.as_ref().map(|a| &a.status) {
                Some(AttachmentStatus::Attaching) => {
                    e.status = EniStatus::InUse;
                    if let Some(a) = &mut e.attachment {
                        a.status = AttachmentStatus::Attached;
                    }
                }
                Some(AttachmentStatus::Detaching) => {
                    e.status = EniStatus::Available;
                    e.attachment = None;
                }
                _ => {}
            }
        }
    }

    // -- faults --------------------------------------------------------------------------------

    /// The next `n` calls of `action` (`"ReplaceRoute"`) fail with `fault`, then it answers
    /// again. Scripts queue: `fail_next(a, 1, Throttle)` then `fail_next(a, 1, AccessDenied)`
    /// fails the next two calls, in that order. Panics on an action the agent does not make.
    pub fn fail_next(&self, action: &str, n: usize, fault: Fault) {
        let action = known_action(action);
        self.lock()
            .faults
            .entry(action)
            .or_default()
            .extend(std::iter::repeat_n(fault, n));
    }

    /// Every call of `action` fails as unreachable (nothing reaches AWS) until
    /// [`FakeCloud::heal`]. Scripted faults wait: they are not used up by a partition.
    pub fn partition(&self, action: &str) {
        let action = known_action(action);
        self.lock().partitioned.insert(action);
    }

    /// Every action unreachable: the gateway's uplink to the API is cut.
    pub fn partition_all(&self) {
        let mut s = self.lock();
        s.partitioned
            .extend(EC2_ACTIONS.iter().chain(AUTOSCALING_ACTIONS).copied());
    }

    pub fn heal(&self, action: &str) {
        let action = known_action(action);
        self.lock().partitioned.remove(action);
    }

    pub fn heal_all(&self) {
        self.lock().partitioned.clear();
    }

    /// The next `n` DescribeRouteTables (by ID or by tags) answer with the route tables as they
    /// were before the last write to any of them (route or tag, by the agent or by a helper),
    /// the way EC2's eventually consistent reads can; route states are still today's.
    pub fn lag_reads(&self, n: u32) {
        self.lock().lagging_reads = n;
    }

    /// While on, every DescribeRouteTables answers with the route tables as they are now, whatever
    /// is written meanwhile (a read lag longer than the writes of interest); off shows all at once.
    pub fn freeze_reads(&self, on: bool) {
        let mut s = self.lock();
        s.frozen = on.then(|| s.tables.clone());
    }

    /// The route tables as they are now, to serve again later ([`Self::replay_reads`]).
    pub fn tables_now(&self) -> TablesSnapshot {
        TablesSnapshot(self.lock().tables.clone())
    }

    /// The next `n` DescribeRouteTables answer with `old`: reads that went back in time, as
    /// EC2's may (no promise that they only move forward).
    pub fn replay_reads(&self, old: TablesSnapshot, n: u32) {
        self.lock().replay = Some((old.0, n));
    }

    // -- what was called -------------------------------------------------------------------------

    /// Every call made, failed ones included, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().log.iter().map(|l| l.call.clone()).collect()
    }

    /// Every call with its outcome.
    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// Calls of `operation` whose resource names `resource` as a whole word (an ID); `""`
    /// counts them all. `count("ReplaceRoute", &table)` is "ReplaceRoutes on that table".
    pub fn count(&self, operation: &str, resource: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|l| l.call.operation == operation)
            .filter(|l| {
                resource.is_empty()
                    || l.call
                        .resource
                        .split([' ', ','])
                        .any(|word| word == resource)
            })
            .count()
    }

    /// Forget the calls so far (after a test's setup).
    pub fn clear_calls(&self) {
        self.lock().log.clear();
    }

    pub fn completions(&self) -> Vec<Completion> {
        self.lock().completions.clone()
    }

    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        self.lock().heartbeats.clone()
    }

    pub fn health_reports(&self) -> Vec<HealthReport> {
        self.lock().health_reports.clone()
    }
}

fn known_action(action: &str) -> &'static str {
    EC2_ACTIONS
        .iter()
        .chain(AUTOSCALING_ACTIONS)
        .find(|a| **a == action)
        .copied()
        .unwrap_or_else(|| {
            panic!(
                "the agent makes no {action:?} call; one of {:?}",
                [EC2_ACTIONS, AUTOSCALING_ACTIONS].concat()
            )
        })
}

// ---------------------------------------------------------------------------------------------
// Errors, as AWS answers them
// ---------------------------------------------------------------------------------------------

fn api(call: &Call, code: &str, message: impl Into<String>, status: u16) -> CloudError {
    CloudError::Api {
        call: call.clone(),
        code: Some(code.to_owned()),
        message: Some(message.into()),
        status: Some(status),
    }
}

fn unreachable(call: &Call) -> CloudError {
    CloudError::Unreachable {
        call: call.clone(),
        detail: "dispatch failure: the fake cloud is partitioned".to_owned(),
    }
}

/// EC2's "no such ..." answer for an ID of this kind.
fn not_found(call: &Call, id: &str) -> CloudError {
    let (code, what) = if id.starts_with("eni-attach-") {
        ("InvalidAttachmentID.NotFound", "attachment")
    } else if id.starts_with("eni-") {
        ("InvalidNetworkInterfaceID.NotFound", "networkInterface")
    } else if id.starts_with("i-") {
        ("InvalidInstanceID.NotFound", "instance")
    } else if id.starts_with("rtb-") {
        ("InvalidRouteTableID.NotFound", "routeTable")
    } else {
        ("InvalidID", "resource")
    };
    api(
        call,
        code,
        format!("The {what} ID '{id}' does not exist"),
        400,
    )
}

fn invalid(call: &Call, message: impl Into<String>) -> CloudError {
    api(call, "InvalidParameterValue", message, 400)
}

fn validation(call: &Call, message: impl Into<String>) -> CloudError {
    api(call, "ValidationError", message, 400)
}

impl Fault {
    fn error(&self, call: &Call) -> CloudError {
        let ec2 = call.service == "ec2";
        let (code, message, status) = match self {
            Self::Throttle if ec2 => ("RequestLimitExceeded", "Request limit exceeded.", 503),
            Self::Throttle => ("Throttling", "Rate exceeded", 400),
            Self::Unavailable if ec2 => (
                "Unavailable",
                "The service is unavailable. Please try again shortly.",
                503,
            ),
            Self::Unavailable => ("ServiceUnavailable", "Service Unavailable", 503),
            Self::AccessDenied if ec2 => (
                "UnauthorizedOperation",
                "You are not authorized to perform this operation.",
                403,
            ),
            Self::AccessDenied => (
                "AccessDenied",
                "User is not authorized to perform this action",
                403,
            ),
            Self::Timeout | Self::LostAnswer => {
                return CloudError::Timeout {
                    call: call.clone(),
                    detail: "no answer within the operation timeout (scripted)".to_owned(),
                };
            }
            Self::Unreachable => return unreachable(call),
            Self::Api { code, status } => return api(call, code, "scripted by the test", *status),
        };
        api(call, code, message, status)
    }
}

fn error_word(e: &CloudError) -> String {
    match e {
        CloudError::Api { code, .. } => code.clone().unwrap_or_else(|| "unknown".to_owned()),
        CloudError::Timeout { .. } => "timeout".to_owned(),
        CloudError::Unreachable { .. } => "unreachable".to_owned(),
        other => other.to_string(),
    }
}

/// As the SDK adapters answer a single-resource read of something that does not exist.
fn none_if_not_found<T>(result: Result<Option<T>>) -> Result<Option<T>> {
    match result {
        Err(e) if e.is_not_found() => Ok(None),
        other => other,
    }
}

fn tags_match(have: &BTreeMap<String, String>, want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| have.get(*k).is_some_and(|x| x == v))
}

fn ec2(operation: &'static str, resource: impl Into<String>) -> Call {
    Call::new("ec2", operation, resource)
}

fn autoscaling(operation: &'static str, resource: impl Into<String>) -> Call {
    Call::new("autoscaling", operation, resource)
}

// ---------------------------------------------------------------------------------------------
// The traits
// ---------------------------------------------------------------------------------------------

impl FakeCloud {
    fn route_write(
        &self,
        operation: &'static str,
        table: &str,
        destination: &str,
        eni: &str,
    ) -> Result<()> {
        let c = ec2(operation, format!("{table} {destination} -> {eni}"));
        self.run(c, |s, c| {
            if !s.tables.contains_key(table) {
                return Err(not_found(c, table));
            }
            if !s.enis.contains_key(eni) {
                return Err(not_found(c, eni));
            }
            let existing = s.tables[table].route(destination).map(|r| r.target.clone());
            match (operation, existing) {
                ("CreateRoute", Some(_)) => {
                    return Err(api(
                        c,
                        "RouteAlreadyExists",
                        format!("The route identified by {destination} already exists."),
                        400,
                    ));
                }
                ("ReplaceRoute", None) => {
                    return Err(invalid(
                        c,
                        format!(
                            "There is no route defined for '{destination}' in the route table. \
                             Use CreateRoute instead."
                        ),
                    ));
                }
                (_, Some(RouteTarget::Gateway(g))) if g == "local" => {
                    return Err(invalid(
                        c,
                        format!("cannot replace local route {destination}"),
                    ));
                }
                _ => {}
            }
            s.remember_tables();
            let t = s.table_mut(table);
            let target = RouteTarget::Eni(eni.to_owned());
            match t.routes.iter_mut().find(|r| r.destination == destination) {
                Some(r) => r.target = target,
                None => t.routes.push(route(destination, target)),
            }
            Ok(())
        })
    }
}

impl Ec2 for FakeCloud {
    async fn describe_eni(&self, id: &str) -> Result<Option<Eni>> {
        none_if_not_found(self.run(ec2("DescribeNetworkInterfaces", id), |s, c| {
            s.enis
                .get(id)
                .cloned()
                .map(Some)
                .ok_or_else(|| not_found(c, id))
        }))
    }

    async fn find_enis(&self, tags: &[(&str, &str)]) -> Result<Vec<Eni>> {
        self.run(
            ec2("DescribeNetworkInterfaces", describe_tags(tags)),
            |s, _| {
                Ok(s.enis
                    .values()
                    .filter(|e| tags_match(&e.tags, tags))
                    .cloned()
                    .collect())
            },
        )
    }

    async fn describe_instance(&self, id: &str) -> Result<Option<InstanceInfo>> {
        none_if_not_found(self.run(ec2("DescribeInstances", id), |s, c| {
            let i = s.instances.get(id).ok_or_else(|| not_found(c, id))?;
            Ok(Some(InstanceInfo {
                id: id.to_owned(),
                state: i.state.clone(),
                az: i.az.clone(),
            }))
        }))
    }

    async fn attach_eni(&self, eni: &str, instance: &str, device_index: u32) -> Result<String> {
        let c = ec2(
            "AttachNetworkInterface",
            format!("{eni} -> {instance} device {device_index}"),
        );
        self.run(c, |s, c| {
            let e = s.enis.get(eni).ok_or_else(|| not_found(c, eni))?;
            let i = s
                .instances
                .get(instance)
                .ok_or_else(|| not_found(c, instance))?;
            if e.attachment.is_some() {
                return Err(api(
                    c,
                    "InvalidNetworkInterface.InUse",
                    format!("Interface: [{eni}] in use."),
                    400,
                ));
            }
            if !matches!(i.state, InstanceState::Running | InstanceState::Stopped) {
                return Err(api(
                    c,
                    "IncorrectInstanceState",
                    format!(
                        "The instance '{instance}' is not in a valid state for this operation \
                         ({}).",
                        i.state.as_str()
                    ),
                    400,
                ));
            }
            if e.az != i.az {
                return Err(invalid(
                    c,
                    format!(
                        "The network interface {eni} ({}) and the instance {instance} ({}) are \
                         in different availability zones.",
                        e.az, i.az
                    ),
                ));
            }
            let taken = s.enis.values().any(|other| {
                other.attachment.as_ref().is_some_and(|a| {
                    a.instance_id.as_deref() == Some(instance) && a.device_index == device_index
                })
            });
            if taken {
                return Err(invalid(
                    c,
                    format!(
                        "Instance '{instance}' already has an interface attached at device \
                         index '{device_index}'."
                    ),
                ));
            }
            let slow = s.slow_attachments;
            Ok(s.attach(eni, instance, device_index, slow))
        })
    }

    async fn detach_eni(&self, attachment_id: &str, force: bool) -> Result<()> {
        let resource = if force {
            format!("{attachment_id} (force)")
        } else {
            attachment_id.to_owned()
        };
        self.run(ec2("DetachNetworkInterface", resource), |s, c| {
            let slow = s.slow_attachments && !force;
            let e = s
                .enis
                .values_mut()
                .find(|e| e.attachment.as_ref().is_some_and(|a| a.id == attachment_id))
                .ok_or_else(|| not_found(c, attachment_id))?;
            let a = e.attachment.as_mut().expect("found by its attachment");
            if a.device_index == 0 {
                return Err(api(
                    c,
                    "OperationNotPermitted",
                    "The network interface at device index 0 cannot be detached.",
                    400,
                ));
            }
            if slow {
                a.status = AttachmentStatus::Detaching;
                e.status = EniStatus::Detaching;
            } else {
                e.attachment = None;
                e.status = EniStatus::Available;
            }
            Ok(())
        })
    }

    async fn set_source_dest_check(&self, eni: &str, enabled: bool) -> Result<()> {
        let c = ec2(
            "ModifyNetworkInterfaceAttribute",
            format!("{eni} SourceDestCheck={enabled}"),
        );
        self.run(c, |s, c| {
            s.enis
                .get_mut(eni)
                .ok_or_else(|| not_found(c, eni))?
                .source_dest_check = enabled;
            Ok(())
        })
    }

    async fn find_route_tables(&self, tags: &[(&str, &str)]) -> Result<Vec<RouteTable>> {
        self.run(ec2("DescribeRouteTables", describe_tags(tags)), |s, _| {
            let mut tables = s.visible_tables();
            tables.retain(|t| tags_match(&t.tags, tags));
            Ok(tables)
        })
    }

    async fn describe_route_tables(&self, ids: &[&str]) -> Result<Vec<RouteTable>> {
        // As the SDK adapter: no IDs is no call (EC2 would answer every table in the region).
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.run(ec2("DescribeRouteTables", ids.join(",")), |s, _| {
            let mut tables = s.visible_tables();
            tables.retain(|t| ids.contains(&t.id.as_str()));
            Ok(tables)
        })
    }

    async fn replace_route(&self, route_table: &str, destination: &str, eni: &str) -> Result<()> {
        self.route_write("ReplaceRoute", route_table, destination, eni)
    }

    async fn create_route(&self, route_table: &str, destination: &str, eni: &str) -> Result<()> {
        self.route_write("CreateRoute", route_table, destination, eni)
    }

    async fn delete_route(&self, route_table: &str, destination: &str) -> Result<()> {
        let c = ec2("DeleteRoute", format!("{route_table} {destination}"));
        self.run(c, |s, c| {
            let t = s
                .tables
                .get(route_table)
                .ok_or_else(|| not_found(c, route_table))?;
            match t.route(destination).map(|r| &r.target) {
                None => {
                    return Err(api(
                        c,
                        "InvalidRoute.NotFound",
                        format!(
                            "no route with destination-cidr-block {destination} in route table \
                             {route_table}"
                        ),
                        400,
                    ));
                }
                Some(RouteTarget::Gateway(g)) if g == "local" => {
                    return Err(invalid(
                        c,
                        format!("cannot remove local route {destination}"),
                    ));
                }
                Some(_) => {}
            }
            s.remember_tables();
            s.table_mut(route_table)
                .routes
                .retain(|r| r.destination != destination);
            Ok(())
        })
    }

    async fn create_tags(&self, resources: &[&str], tags: &[(&str, &str)]) -> Result<()> {
        let words: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let c = ec2(
            "CreateTags",
            format!("{} {}", resources.join(","), words.join(",")),
        );
        self.run(c, |s, c| {
            // All or nothing, as EC2: one unknown ID fails the call before any tag is written.
            if let Some(missing) = resources.iter().find(|r| s.tags_mut(r).is_none()) {
                return Err(not_found(c, missing));
            }
            if resources.iter().any(|r| s.tables.contains_key(*r)) {
                s.remember_tables();
            }
            for r in resources {
                let have = s.tags_mut(r).expect("checked above");
                for (k, v) in tags {
                    have.insert((*k).to_owned(), (*v).to_owned());
                }
            }
            Ok(())
        })
    }
}

impl State {
    /// The open lifecycle action of `instance` on `hook`, or Auto Scaling's refusal.
    fn open_action(&self, c: &Call, group: &str, hook: &str, instance: &str) -> Result<()> {
        let no_action = || {
            validation(
                c,
                format!("No active Lifecycle Action found with instance ID {instance}"),
            )
        };
        let transition = self
            .hooks
            .get(group)
            .and_then(|hooks| hooks.iter().find(|h| h.name == hook))
            .map(|h| &h.transition)
            .ok_or_else(|| {
                validation(
                    c,
                    format!("No Lifecycle Hook found with name {hook} for group {group}"),
                )
            })?;
        let i = self
            .instances
            .get(instance)
            .filter(|i| i.asg.as_deref() == Some(group))
            .ok_or_else(no_action)?;
        let waiting = match transition {
            LifecycleTransition::Launching => i.lifecycle_state == PENDING_WAIT,
            LifecycleTransition::Terminating => i.lifecycle_state == TERMINATING_WAIT,
            LifecycleTransition::Other(_) => false,
        };
        if waiting { Ok(()) } else { Err(no_action()) }
    }
}

impl Autoscaling for FakeCloud {
    async fn asg_instance(&self, instance_id: &str) -> Result<Option<AsgInstance>> {
        self.run(
            autoscaling("DescribeAutoScalingInstances", instance_id),
            |s, _| {
                Ok(s.instances.get(instance_id).and_then(|i| {
                    Some(AsgInstance {
                        group: i.asg.clone()?,
                        lifecycle_state: i.lifecycle_state.clone(),
                        health: i.health,
                    })
                }))
            },
        )
    }

    async fn group_tag(&self, group: &str, key: &str) -> Result<Option<String>> {
        self.run(autoscaling("DescribeAutoScalingGroups", group), |s, _| {
            // Every group of the scenario carries the group tag, as the lab's and the
            // example template's do.
            Ok((s.hooks.contains_key(group) && key == GROUP_TAG).then(|| s.group.clone()))
        })
    }

    async fn lifecycle_hooks(&self, group: &str) -> Result<Vec<LifecycleHook>> {
        self.run(autoscaling("DescribeLifecycleHooks", group), |s, c| {
            s.hooks
                .get(group)
                .cloned()
                .ok_or_else(|| validation(c, format!("Group {group} not found")))
        })
    }

    async fn complete_lifecycle_action(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: LifecycleResult,
    ) -> Result<()> {
        let c = autoscaling(
            "CompleteLifecycleAction",
            format!("{group} {hook} {instance_id} {}", result.as_str()),
        );
        self.run(c, |s, c| {
            s.open_action(c, group, hook, instance_id)?;
            s.completions.push(Completion {
                group: group.to_owned(),
                hook: hook.to_owned(),
                instance_id: instance_id.to_owned(),
                result,
            });
            let i = s.instance_mut(instance_id);
            i.lifecycle_state = match (i.lifecycle_state.as_str(), result) {
                (PENDING_WAIT, LifecycleResult::Continue) => IN_SERVICE,
                _ => TERMINATING_PROCEED,
            }
            .to_owned();
            Ok(())
        })
    }

    async fn record_heartbeat(&self, group: &str, hook: &str, instance_id: &str) -> Result<()> {
        let c = autoscaling(
            "RecordLifecycleActionHeartbeat",
            format!("{group} {hook} {instance_id}"),
        );
        self.run(c, |s, c| {
            s.open_action(c, group, hook, instance_id)?;
            s.heartbeats.push(Heartbeat {
                group: group.to_owned(),
                hook: hook.to_owned(),
                instance_id: instance_id.to_owned(),
            });
            Ok(())
        })
    }

    async fn set_instance_health(&self, instance_id: &str, healthy: bool) -> Result<()> {
        let status = if healthy { "Healthy" } else { "Unhealthy" };
        let c = autoscaling("SetInstanceHealth", format!("{instance_id} {status}"));
        self.run(c, |s, c| {
            let i = s
                .instances
                .get_mut(instance_id)
                .filter(|i| i.asg.is_some())
                .ok_or_else(|| {
                    validation(
                        c,
                        format!("No managed instance found for instance ID: {instance_id}"),
                    )
                })?;
            i.health = if healthy {
                Health::Healthy
            } else {
                Health::Unhealthy
            };
            s.health_reports.push(HealthReport {
                instance_id: instance_id.to_owned(),
                healthy,
            });
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni_target(id: &str) -> Option<RouteTarget> {
        Some(RouteTarget::Eni(id.to_owned()))
    }

    #[test]
    fn is_send_sync_and_its_futures_are_send() {
        fn send_sync<T: Send + Sync + Clone + 'static>() {}
        send_sync::<FakeCloud>();
        fn send<F: std::future::Future + Send>(_: F) {}
        let cloud = FakeCloud::two_zones();
        send(cloud.describe_route_tables(&["rtb-1"]));
        send(cloud.complete_lifecycle_action("g", "h", "i-1", LifecycleResult::Continue));
    }

    #[tokio::test]
    async fn scenario_is_what_the_agent_discovers_by_tags() {
        let cloud = FakeCloud::zones(&["a", "b", "c"]);
        let group = cloud.group();
        let tables = cloud.find_route_tables(&[(GROUP_TAG, &group)]).await;
        assert_eq!(tables.expect("read").len(), 3);
        for zone in ["a", "b", "c"] {
            let az = cloud.az_of(zone);
            assert_eq!(az, format!("us-east-1{zone}"));
            let tags = [(GROUP_TAG, group.as_str()), (ZONE_TAG, az.as_str())];
            let enis = cloud.find_enis(&tags).await.expect("read");
            assert_eq!(enis.len(), 1, "one persistent ENI per zone");
            let eni = &enis[0];
            assert_eq!(eni.id, cloud.eni_of(zone));
            assert!(!eni.source_dest_check);
            assert_eq!(eni.status, EniStatus::InUse);
            let attachment = eni.attachment.as_ref().expect("attached");
            assert_eq!(attachment.device_index, DEFAULT_DEVICE_INDEX);
            assert_eq!(
                attachment.instance_id.as_deref(),
                Some(cloud.instance_of(zone).as_str())
            );

            let tables = cloud.find_route_tables(&tags).await.expect("read");
            assert_eq!(tables.len(), 1, "one private table per zone");
            let table = &tables[0];
            assert_eq!(table.id, cloud.table_of(zone));
            assert!(table.associated);
            let default = table.route(DEFAULT_ROUTE).expect("default route");
            assert_eq!(default.target, RouteTarget::Eni(eni.id.clone()));
            assert_eq!(default.state, RouteState::Active);

            let instance = cloud.instance_of(zone);
            let asg = cloud.asg_instance(&instance).await.expect("read");
            assert_eq!(asg.map(|a| a.lifecycle_state), Some(IN_SERVICE.to_owned()));
        }
        // The config's ID check accepts them (8 hex digits).
        assert!(
            cloud
                .eni_of("a")
                .strip_prefix("eni-")
                .is_some_and(|h| h.len() == 8)
        );
    }

    #[tokio::test]
    async fn route_state_follows_the_holder_instance() {
        type Act = fn(&FakeCloud, &str);
        let cases: [(&str, Act, RouteState); 5] = [
            ("alive", |_, _| {}, RouteState::Active),
            ("killed", |c, i| c.kill(i), RouteState::Blackhole),
            ("stopped", |c, i| c.stop(i), RouteState::Blackhole),
            ("terminated", |c, i| c.terminate(i), RouteState::Blackhole),
            (
                "pending",
                |c, i| c.set_instance_state(i, InstanceState::Pending),
                RouteState::Blackhole,
            ),
        ];
        for (name, act, want) in cases {
            let cloud = FakeCloud::two_zones();
            let (table, instance) = (cloud.table_of("a"), cloud.instance_of("a"));
            act(&cloud, &instance);
            let read = cloud.describe_route_tables(&[&table]).await.expect(name);
            let route = read[0].route(DEFAULT_ROUTE).expect(name);
            assert_eq!(route.state, want, "{name}");
            assert_eq!(route.target, RouteTarget::Eni(cloud.eni_of("a")), "{name}");
            // The other zone is untouched.
            assert_eq!(
                cloud.route_state(&cloud.table_of("b"), DEFAULT_ROUTE),
                Some(RouteState::Active),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn terminate_detaches_the_persistent_eni_and_leaves_the_group() {
        let cloud = FakeCloud::two_zones();
        let (old, eni) = (cloud.instance_of("a"), cloud.eni_of("a"));
        cloud.terminate(&old);
        let e = cloud.describe_eni(&eni).await.expect("read").expect("kept");
        assert_eq!((e.status, e.attachment), (EniStatus::Available, None));
        assert_eq!(cloud.asg_instance(&old).await.expect("read"), None);
        let info = cloud.describe_instance(&old).await.expect("read");
        assert_eq!(info.map(|i| i.state), Some(InstanceState::Terminated));
        cloud.forget(&old);
        assert_eq!(cloud.describe_instance(&old).await.expect("read"), None);
        assert_eq!(
            cloud.log().last().and_then(|l| l.error.clone()).as_deref(),
            Some("InvalidInstanceID.NotFound"),
            "EC2 answered not-found; the trait says None"
        );
    }

    #[tokio::test]
    async fn route_writes_change_the_target_and_are_logged() {
        let cloud = FakeCloud::two_zones();
        let (a, b) = (cloud.table_of("a"), cloud.table_of("b"));
        let eni_b = cloud.eni_of("b");

        cloud
            .replace_route(&a, DEFAULT_ROUTE, &eni_b)
            .await
            .expect("replace");
        assert_eq!(cloud.route_target(&a, DEFAULT_ROUTE), eni_target(&eni_b));
        assert_eq!(cloud.count("ReplaceRoute", &a), 1);
        assert_eq!(cloud.count("ReplaceRoute", &b), 0);
        assert_eq!(
            cloud.calls().last().map(ToString::to_string),
            Some(format!("ec2 ReplaceRoute {a} {DEFAULT_ROUTE} -> {eni_b}"))
        );

        type Write = (&'static str, &'static str, &'static str);
        // (operation, table, destination) → the code EC2 answers; "-" for success.
        let cases: [(Write, &str, &str); 7] = [
            (("create", "a", "10.200.0.0/16"), "b", "-"),
            (("create", "a", DEFAULT_ROUTE), "b", "RouteAlreadyExists"),
            (
                ("replace", "a", "192.168.0.0/16"),
                "b",
                "InvalidParameterValue",
            ),
            (("replace", "a", VPC_CIDR), "b", "InvalidParameterValue"),
            (
                ("replace", "rtb-ffffffff", DEFAULT_ROUTE),
                "b",
                "InvalidRouteTableID.NotFound",
            ),
            (
                ("replace", "a", DEFAULT_ROUTE),
                "eni-ffffffff",
                "InvalidNetworkInterfaceID.NotFound",
            ),
            (("delete", "b", "10.9.0.0/16"), "-", "InvalidRoute.NotFound"),
        ];
        for ((op, table, destination), eni, want) in cases {
            let table = if table == "a" || table == "b" {
                cloud.table_of(table)
            } else {
                table.to_owned()
            };
            let eni = if eni == "b" {
                eni_b.clone()
            } else {
                eni.to_owned()
            };
            let result = match op {
                "create" => cloud.create_route(&table, destination, &eni).await,
                "replace" => cloud.replace_route(&table, destination, &eni).await,
                _ => cloud.delete_route(&table, destination).await,
            };
            let got = result.err().map(|e| {
                assert!(!e.is_retryable(), "{op} {destination}: {e}");
                e.code().unwrap_or_default().to_owned()
            });
            assert_eq!(
                got.as_deref().unwrap_or("-"),
                want,
                "{op} {table} {destination}"
            );
        }
        assert_eq!(cloud.route_target(&a, "10.200.0.0/16"), eni_target(&eni_b));
        cloud
            .delete_route(&a, "10.200.0.0/16")
            .await
            .expect("delete");
        assert_eq!(cloud.route_target(&a, "10.200.0.0/16"), None);
    }

    #[tokio::test]
    async fn scripted_faults_are_answered_once_then_clear() {
        // (action, fault, code, retryable, throttling)
        let cases = [
            (
                "ReplaceRoute",
                Fault::Throttle,
                Some("RequestLimitExceeded"),
                true,
                true,
            ),
            (
                "ReplaceRoute",
                Fault::Unavailable,
                Some("Unavailable"),
                true,
                false,
            ),
            (
                "ReplaceRoute",
                Fault::AccessDenied,
                Some("UnauthorizedOperation"),
                false,
                false,
            ),
            ("ReplaceRoute", Fault::Timeout, None, true, false),
            ("ReplaceRoute", Fault::Unreachable, None, true, false),
            (
                "SetInstanceHealth",
                Fault::Throttle,
                Some("Throttling"),
                true,
                true,
            ),
            (
                "SetInstanceHealth",
                Fault::AccessDenied,
                Some("AccessDenied"),
                false,
                false,
            ),
        ];
        for (action, fault, code, retryable, throttling) in cases {
            let cloud = FakeCloud::two_zones();
            let (table, eni_b) = (cloud.table_of("a"), cloud.eni_of("b"));
            let instance = cloud.instance_of("a");
            cloud.fail_next(action, 1, fault.clone());
            let (c, t, e, i) = (&cloud, &table, &eni_b, &instance);
            let call = move || async move {
                if action == "ReplaceRoute" {
                    c.replace_route(t, DEFAULT_ROUTE, e).await
                } else {
                    c.set_instance_health(i, false).await
                }
            };
            let err = call().await.expect_err("scripted");
            let what = format!("{action} {fault:?}");
            assert_eq!(err.code(), code, "{what}");
            assert_eq!(err.is_retryable(), retryable, "{what}");
            assert_eq!(err.is_throttling(), throttling, "{what}");
            assert_eq!(err.call().operation, action, "{what}");
            // A refused call changed nothing.
            assert_eq!(
                cloud.route_target(&table, DEFAULT_ROUTE),
                eni_target(&cloud.eni_of("a"))
            );
            assert!(cloud.health_reports().is_empty(), "{what}");
            call().await.expect("cleared after one");
            assert_eq!(cloud.count(action, ""), 2, "{what}: both calls logged");
            assert!(cloud.log()[0].error.is_some(), "{what}");
            assert_eq!(cloud.log()[1].error, None, "{what}");
        }
    }

    #[tokio::test]
    async fn faults_queue_and_a_lost_answer_still_writes() {
        let cloud = FakeCloud::two_zones();
        let (table, eni_b) = (cloud.table_of("a"), cloud.eni_of("b"));
        cloud.fail_next("ReplaceRoute", 2, Fault::Throttle);
        cloud.fail_next("ReplaceRoute", 1, Fault::LostAnswer);
        for want in ["RequestLimitExceeded", "RequestLimitExceeded"] {
            let e = cloud.replace_route(&table, DEFAULT_ROUTE, &eni_b).await;
            assert_eq!(e.expect_err("scripted").code(), Some(want));
        }
        assert_eq!(
            cloud.route_target(&table, DEFAULT_ROUTE),
            eni_target(&cloud.eni_of("a"))
        );
        let lost = cloud.replace_route(&table, DEFAULT_ROUTE, &eni_b).await;
        assert!(matches!(lost, Err(CloudError::Timeout { .. })), "{lost:?}");
        assert_eq!(
            cloud.route_target(&table, DEFAULT_ROUTE),
            eni_target(&eni_b)
        );
    }

    #[tokio::test]
    async fn partition_fails_one_action_until_healed() {
        let cloud = FakeCloud::two_zones();
        let table = cloud.table_of("a");
        cloud.partition("DescribeRouteTables");
        cloud.fail_next("DescribeRouteTables", 1, Fault::Throttle);
        for _ in 0..3 {
            let e = cloud
                .describe_route_tables(&[&table])
                .await
                .expect_err("cut");
            assert!(matches!(e, CloudError::Unreachable { .. }), "{e}");
            assert!(e.is_retryable());
        }
        // Other actions still answer.
        cloud
            .describe_eni(&cloud.eni_of("a"))
            .await
            .expect("not cut");
        cloud.heal("DescribeRouteTables");
        // The scripted throttle was waiting behind the partition.
        let e = cloud
            .describe_route_tables(&[&table])
            .await
            .expect_err("scripted");
        assert!(e.is_throttling());
        assert_eq!(
            cloud
                .describe_route_tables(&[&table])
                .await
                .expect("healed")
                .len(),
            1
        );

        cloud.partition_all();
        let instance = cloud.instance_of("a");
        assert!(cloud.asg_instance(&instance).await.is_err());
        assert!(cloud.describe_instance(&instance).await.is_err());
        cloud.heal_all();
        assert!(cloud.asg_instance(&instance).await.is_ok());
        let unreachable = cloud
            .log()
            .iter()
            .filter(|l| l.error.as_deref() == Some("unreachable"))
            .count();
        assert_eq!(unreachable, 5);
    }

    #[test]
    #[should_panic(expected = "the agent makes no \"ReplaceRoutes\" call")]
    fn unknown_actions_are_a_test_bug() {
        FakeCloud::two_zones().fail_next("ReplaceRoutes", 1, Fault::Throttle);
    }

    #[tokio::test]
    async fn lagging_reads_answer_the_state_before_the_last_write() {
        let cloud = FakeCloud::two_zones();
        let group = cloud.group();
        let (table, eni_a, eni_b) = (cloud.table_of("a"), cloud.eni_of("a"), cloud.eni_of("b"));
        cloud
            .replace_route(&table, DEFAULT_ROUTE, &eni_b)
            .await
            .expect("write");
        cloud.lag_reads(2);
        let by_id = cloud.describe_route_tables(&[&table]).await.expect("read");
        assert_eq!(
            by_id[0].route(DEFAULT_ROUTE).map(|r| &r.target),
            eni_target(&eni_a).as_ref()
        );
        let by_tags = cloud
            .find_route_tables(&[(GROUP_TAG, &group)])
            .await
            .expect("read");
        let a = by_tags.iter().find(|t| t.id == table).expect("listed");
        assert_eq!(
            a.route(DEFAULT_ROUTE).map(|r| &r.target),
            eni_target(&eni_a).as_ref()
        );
        // Caught up.
        let now = cloud.describe_route_tables(&[&table]).await.expect("read");
        assert_eq!(
            now[0].route(DEFAULT_ROUTE).map(|r| &r.target),
            eni_target(&eni_b).as_ref()
        );

        // Tags lag with the tables they are on.
        cloud
            .create_tags(&[&table], &[("gateway-agent:lease", "i-1/1/0")])
            .await
            .expect("tag");
        cloud.lag_reads(1);
        let stale = cloud.describe_route_tables(&[&table]).await.expect("read");
        assert_eq!(stale[0].tags.get("gateway-agent:lease"), None);
        assert_eq!(
            cloud
                .tags_of(&table)
                .get("gateway-agent:lease")
                .map(String::as_str),
            Some("i-1/1/0")
        );
    }

    #[tokio::test]
    async fn lifecycle_actions_are_recorded_and_checked() {
        // (state the group holds the instance in, hook, result) → accepted, state after
        let cases = [
            (
                PENDING_WAIT,
                LAUNCH_HOOK,
                LifecycleResult::Continue,
                true,
                IN_SERVICE,
            ),
            (
                PENDING_WAIT,
                LAUNCH_HOOK,
                LifecycleResult::Abandon,
                true,
                TERMINATING_PROCEED,
            ),
            (
                TERMINATING_WAIT,
                TERMINATE_HOOK,
                LifecycleResult::Continue,
                true,
                TERMINATING_PROCEED,
            ),
            (
                PENDING_WAIT,
                TERMINATE_HOOK,
                LifecycleResult::Continue,
                false,
                PENDING_WAIT,
            ),
            (
                IN_SERVICE,
                LAUNCH_HOOK,
                LifecycleResult::Continue,
                false,
                IN_SERVICE,
            ),
            (
                PENDING_WAIT,
                "no-such-hook",
                LifecycleResult::Continue,
                false,
                PENDING_WAIT,
            ),
        ];
        for (before, hook, result, accepted, after) in cases {
            let what = format!("{before} {hook} {}", result.as_str());
            let cloud = FakeCloud::two_zones();
            let (group, instance) = (cloud.asg_of("a"), cloud.launch("a"));
            cloud.set_lifecycle_state(&instance, before);

            let heartbeat = cloud.record_heartbeat(&group, hook, &instance).await;
            let completed = cloud
                .complete_lifecycle_action(&group, hook, &instance, result)
                .await;
            assert_eq!(heartbeat.is_ok(), accepted, "{what}: {heartbeat:?}");
            assert_eq!(completed.is_ok(), accepted, "{what}: {completed:?}");
            if let Err(e) = completed {
                assert_eq!(e.code(), Some("ValidationError"), "{what}");
                assert!(!e.is_retryable(), "{what}");
            }
            assert_eq!(
                cloud.lifecycle_state(&instance).as_deref(),
                Some(after),
                "{what}"
            );
            let want: Vec<Completion> = accepted
                .then(|| Completion {
                    group: group.clone(),
                    hook: hook.to_owned(),
                    instance_id: instance.clone(),
                    result,
                })
                .into_iter()
                .collect();
            assert_eq!(cloud.completions(), want, "{what}");
            assert_eq!(cloud.heartbeats().len(), usize::from(accepted), "{what}");
            // An action completes once.
            if accepted {
                assert!(
                    cloud
                        .complete_lifecycle_action(&group, hook, &instance, result)
                        .await
                        .is_err(),
                    "{what}"
                );
            }
        }
    }

    #[tokio::test]
    async fn health_reports_and_hooks() {
        let cloud = FakeCloud::two_zones();
        let (instance, group) = (cloud.instance_of("a"), cloud.asg_of("a"));
        let hooks = cloud.lifecycle_hooks(&group).await.expect("hooks");
        assert_eq!(
            hooks.iter().map(|h| &h.transition).collect::<Vec<_>>(),
            [
                &LifecycleTransition::Launching,
                &LifecycleTransition::Terminating
            ]
        );
        cloud
            .set_instance_health(&instance, false)
            .await
            .expect("report");
        assert_eq!(
            cloud.health_reports(),
            [HealthReport {
                instance_id: instance.clone(),
                healthy: false
            }]
        );
        let asg = cloud
            .asg_instance(&instance)
            .await
            .expect("read")
            .expect("member");
        assert_eq!(asg.health, Health::Unhealthy);
        assert!(cloud.lifecycle_hooks("no-such-group").await.is_err());
    }

    #[tokio::test]
    async fn claiming_the_eni_of_a_dead_holder() {
        let cloud = FakeCloud::two_zones();
        let (old, eni) = (cloud.instance_of("a"), cloud.eni_of("a"));
        cloud.kill(&old);
        let new = cloud.launch("a");
        assert_eq!(cloud.instance_of("a"), new);
        assert_eq!(cloud.lifecycle_state(&new).as_deref(), Some(PENDING_WAIT));

        let in_use = cloud.attach_eni(&eni, &new, 1).await.expect_err("held");
        assert_eq!(in_use.code(), Some("InvalidNetworkInterface.InUse"));
        let held = cloud
            .describe_eni(&eni)
            .await
            .expect("read")
            .expect("exists");
        let attachment = held.attachment.expect("still attached to the dead one");
        assert_eq!(attachment.instance_id.as_deref(), Some(old.as_str()));

        cloud.slow_attachments(true);
        cloud
            .detach_eni(&attachment.id, false)
            .await
            .expect("detach");
        let e = cloud.eni(&eni).expect("exists");
        assert_eq!(e.status, EniStatus::Detaching);
        cloud.finish_transitions();
        let attachment = cloud.attach_eni(&eni, &new, 1).await.expect("attach");
        assert!(attachment.starts_with("eni-attach-"));
        assert_eq!(
            cloud.eni(&eni).map(|e| e.status),
            Some(EniStatus::Attaching)
        );
        assert_eq!(
            cloud.route_state(&cloud.table_of("a"), DEFAULT_ROUTE),
            Some(RouteState::Blackhole)
        );
        cloud.finish_transitions();
        assert_eq!(cloud.eni(&eni).map(|e| e.status), Some(EniStatus::InUse));
        assert_eq!(
            cloud.route_state(&cloud.table_of("a"), DEFAULT_ROUTE),
            Some(RouteState::Active)
        );

        // The primary interface cannot be detached, and its device index is taken.
        let primary = cloud
            .find_enis(&[])
            .await
            .expect("read")
            .into_iter()
            .filter_map(|e| e.attachment)
            .find(|a| a.instance_id.as_deref() == Some(new.as_str()) && a.device_index == 0)
            .expect("primary");
        let refused = cloud
            .detach_eni(&primary.id, true)
            .await
            .expect_err("primary");
        assert_eq!(refused.code(), Some("OperationNotPermitted"));
        let attachment = cloud
            .eni(&eni)
            .and_then(|e| e.attachment)
            .expect("attached");
        cloud
            .detach_eni(&attachment.id, true)
            .await
            .expect("forced, at once");
        let taken = cloud.attach_eni(&eni, &new, 0).await.expect_err("taken");
        assert_eq!(taken.code(), Some("InvalidParameterValue"));
        let elsewhere = cloud.attach_eni(&eni, &cloud.instance_of("b"), 1).await;
        assert_eq!(
            elsewhere.expect_err("other zone").code(),
            Some("InvalidParameterValue")
        );

        cloud
            .set_source_dest_check(&eni, true)
            .await
            .expect("modify");
        assert_eq!(cloud.eni(&eni).map(|e| e.source_dest_check), Some(true));
        assert_eq!(cloud.count("ModifyNetworkInterfaceAttribute", &eni), 1);
    }

    #[tokio::test]
    async fn tags_go_on_any_resource_all_or_nothing() {
        let cloud = FakeCloud::two_zones();
        let (table, eni, instance, vpc) = (
            cloud.table_of("a"),
            cloud.eni_of("a"),
            cloud.instance_of("a"),
            cloud.vpc_id(),
        );
        let tag = [("k", "v")];
        cloud
            .create_tags(&[&table, &eni, &instance, &vpc], &tag)
            .await
            .expect("tag");
        for r in [&table, &eni, &instance, &vpc] {
            assert_eq!(
                cloud.tags_of(r).get("k").map(String::as_str),
                Some("v"),
                "{r}"
            );
        }
        let e = cloud
            .create_tags(&[&table, "rtb-ffffffff"], &[("k", "w")])
            .await
            .expect_err("unknown");
        assert_eq!(e.code(), Some("InvalidRouteTableID.NotFound"));
        assert_eq!(
            cloud.tags_of(&table).get("k").map(String::as_str),
            Some("v")
        );
        assert_eq!(cloud.count("CreateTags", &table), 2);
        assert_eq!(cloud.count("CreateTags", &eni), 1);
    }

    #[tokio::test]
    async fn extra_tables_and_helper_writes() {
        let cloud = FakeCloud::two_zones();
        let extra = cloud.add_table("a");
        let group = cloud.group();
        let az = cloud.az_of("a");
        let tables = cloud
            .find_route_tables(&[(GROUP_TAG, &group), (ZONE_TAG, &az)])
            .await
            .expect("read");
        assert_eq!(tables.len(), 2);
        let t = tables.iter().find(|t| t.id == extra).expect("listed");
        assert!(!t.associated);
        cloud.set_route_target(
            &extra,
            DEFAULT_ROUTE,
            RouteTarget::Other("nat-0123abcd".into()),
        );
        assert_eq!(
            cloud.route_state(&extra, DEFAULT_ROUTE),
            Some(RouteState::Active)
        );
        cloud.remove_route(&extra, DEFAULT_ROUTE);
        assert_eq!(cloud.route_target(&extra, DEFAULT_ROUTE), None);
        cloud.lag_reads(1);
        let stale = cloud.describe_route_tables(&[&extra]).await.expect("read");
        assert!(
            stale[0].route(DEFAULT_ROUTE).is_some(),
            "helpers are writes too"
        );
        assert!(
            cloud
                .describe_route_tables(&[])
                .await
                .expect("nothing")
                .is_empty()
        );
        assert_eq!(cloud.count("DescribeRouteTables", ""), 2, "no IDs, no call");
        assert!(cloud.calls().iter().all(|c| c.operation != "ReplaceRoute"));
    }

    #[tokio::test]
    async fn one_handle_serves_a_spawned_task() {
        let cloud = FakeCloud::two_zones();
        let (table, eni_b) = (cloud.table_of("a"), cloud.eni_of("b"));
        let handle = cloud.clone();
        tokio::spawn(async move { handle.replace_route(&table, DEFAULT_ROUTE, &eni_b).await })
            .await
            .expect("joined")
            .expect("written");
        assert_eq!(cloud.count("ReplaceRoute", ""), 1);
    }
}
