//! The fixture of every test, matrix case and bench that runs agents: a lab, its VPC, and the
//! gateways (an instance and its agent) started in its zones, with what they ask of the lab:
//! where a zone's routes point, what the API and the lifecycle hooks saw, every agent's log.
//!
//! Its helpers answer a [`Failure`] rather than panic, so that a bench records a run that went
//! wrong and the matrix a row; a test `unwrap()`s them (a `Failure` prints its logs as they are).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::agent::{Agent, Spec};
use crate::{Fault, Instance, Lab, LabError, Scenario, ScenarioOptions, Zone, wait_for};

/// How long a test waits for a launch, a boot or an exit under the `fast` lab profile.
pub const WAIT: Duration = Duration::from_secs(30);

/// How long to wait for a launch, a boot or an exit: [`WAIT`], or 180 s under the `aws` lab
/// profile, where the ASG launches a replacement 30-90 s after it decides and every boot step
/// waits for attachments and lagging reads.
pub fn wait() -> Duration {
    if crate::aws_profile() {
        Duration::from_secs(180)
    } else {
        WAIT
    }
}

/// The API actions that write a route.
pub const ROUTE_WRITES: &[&str] = &["ReplaceRoute", "CreateRoute", "DeleteRoute"];

/// What went wrong, with the logs that tell why. `Debug` prints the text as it is, so a test's
/// `unwrap()` shows an agent's log line by line.
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

impl From<LabError> for Failure {
    fn from(e: LabError) -> Failure {
        Failure(e.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure(e)
    }
}

impl From<&str> for Failure {
    fn from(e: &str) -> Failure {
        Failure(e.to_owned())
    }
}

impl From<Failure> for String {
    fn from(e: Failure) -> String {
        e.0
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

impl Fault {
    /// `count` calls of `action` (every action with `None`) answered with `kind` (`throttle`,
    /// `5xx`, `stuck-attaching`...); `None`: until cleared.
    pub fn burst(kind: &str, action: Option<&str>, count: Option<u32>) -> Fault {
        Fault {
            action: action.map(str::to_owned),
            kind: kind.to_owned(),
            count,
            latency_ms: 0,
            status: None,
        }
    }

    /// `count` calls of `action` held `ms` milliseconds first; `None`: until cleared.
    pub fn latency(action: &str, ms: u64, count: Option<u32>) -> Fault {
        Fault {
            latency_ms: ms,
            ..Fault::burst("latency", Some(action), count)
        }
    }
}

/// An instance and the agent started in it.
pub struct Gateway {
    pub zone: String,
    pub inst: Instance,
    pub agent: Agent,
    /// Stopped on purpose (killed, drained, terminated with its instance): not a crash.
    pub expect_exit: bool,
}

/// A lab, its VPC, and every gateway whose agent was started in it.
pub struct Fleet {
    pub lab: Lab,
    pub sc: Scenario,
    /// The gateway-agent binary every agent runs.
    pub bin: String,
    /// Appended to every agent's config (after `version` and `[group]`, before the [`Spec`]'s).
    pub extra: String,
    /// Give every agent a control socket of its own (`<run dir>/<name>.sock`): agents side by
    /// side in one lab must not share the default one.
    pub sockets: bool,
    /// Every agent started, oldest first.
    pub gateways: Vec<Gateway>,
    /// How long the scenario took to build.
    pub build_time: Duration,
}

impl Fleet {
    /// A new lab with `opts`'s VPC, and no agent yet (the binary: `gateway-agent`).
    pub async fn new(opts: &ScenarioOptions) -> Result<Fleet> {
        Fleet::new_with_env(&[], opts).await
    }

    /// Like [`Fleet::new`], labd started with `env` (e.g. `GATEWAY_LAB_AWS_LAUNCH_S`).
    pub async fn new_with_env(env: &[(&str, &str)], opts: &ScenarioOptions) -> Result<Fleet> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("the lab needs root (network namespaces)".into());
        }
        let mut lab = Lab::start_with_env(env)?;
        let started = Instant::now();
        let sc = lab.scenario(opts).await?;
        Ok(Fleet {
            lab,
            sc,
            bin: "gateway-agent".into(),
            extra: String::new(),
            sockets: true,
            gateways: Vec::new(),
            build_time: started.elapsed(),
        })
    }

    /// Every agent killed, the lab reset and `opts`'s VPC built anew (a bench's next run).
    pub async fn rebuild(&mut self, opts: &ScenarioOptions) -> Result<()> {
        self.kill_all().await;
        self.gateways.clear();
        self.lab.reset().await?;
        let started = Instant::now();
        self.sc = self.lab.scenario(opts).await?;
        self.build_time = started.elapsed();
        Ok(())
    }

    pub fn zone(&self, zone: &str) -> &Zone {
        self.sc.zone(zone)
    }

    /// `zone`'s persistent ENI.
    pub fn eni(&self, zone: &str) -> String {
        self.zone(zone).eni_id.clone()
    }

    /// `zone`'s running instance, once the ASG has launched one (within [`wait`]).
    pub async fn instance(&self, zone: &str) -> Result<Instance> {
        self.instance_within(zone, wait()).await
    }

    pub async fn instance_within(&self, zone: &str, timeout: Duration) -> Result<Instance> {
        Ok(self.lab.wait_instance(&self.zone(zone).az, timeout).await?)
    }

    /// The instance the ASG launched in `zone` in place of `old`.
    pub async fn replacement(&self, zone: &str, old: &str, timeout: Duration) -> Result<Instance> {
        let az = self.zone(zone).az.clone();
        // Not `instance_in`: with launch-before-terminate both run at once.
        let found = wait_for(timeout, &format!("{zone}'s replacement"), || async {
            self.lab.instances().await.ok()?.into_iter().find(|i| {
                i.state == "running"
                    && i.az == az
                    && i.ns.is_some()
                    && i.asg.is_some()
                    && i.instance_id != old
            })
        })
        .await;
        Ok(found?)
    }

    /// Waits (within `timeout`) for the instance the ASG launches in `zone` in place of `old`,
    /// starts an agent on it and waits (within [`wait`]) until it is READY.
    pub async fn start_replacement(
        &mut self,
        zone: &str,
        old: &str,
        timeout: Duration,
    ) -> Result<()> {
        let new = self.replacement(zone, old, timeout).await?;
        self.spawn(zone, new, Spec::new())?;
        self.ready(zone).await
    }

    /// Every managed route table, zone by zone.
    pub fn route_tables(&self) -> Vec<String> {
        self.sc
            .zones
            .iter()
            .flat_map(|z| z.route_table_ids.iter().cloned())
            .collect()
    }

    /// A restart marker for the agent named `name`, of this lab alone: the agent accepts one
    /// only directly in /run/gateway-agent (created here when missing), as the unit's
    /// RuntimeDirectory gives it.
    pub fn restart_marker(&self, name: &str) -> PathBuf {
        let _ = std::fs::create_dir_all("/run/gateway-agent");
        PathBuf::from(format!(
            "/run/gateway-agent/{}-{name}.restart",
            self.lab.lab_id()
        ))
    }

    /// Where the agent named `name` listens for commands (with [`Fleet::sockets`]).
    pub fn socket_path(&self, name: &str) -> PathBuf {
        PathBuf::from(&self.lab.info.run_dir).join(format!("{name}.sock"))
    }

    /// Starts an agent on `inst` in `zone`, not waiting for READY; answers its index in
    /// [`Fleet::gateways`]. Unnamed, it is `agent-<zone>`, then `agent-<zone>2`...
    pub fn spawn(&mut self, zone: &str, inst: Instance, spec: Spec) -> Result<usize> {
        let group = self.sc.group.clone();
        self.spawn_in(&group, zone, inst, spec)
    }

    /// Like [`Fleet::spawn`], for a gateway of `group` (one added with [`Lab::add_group`]);
    /// `zone` is only its label here (e.g. `g2-a`: zones of several groups share letters).
    pub fn spawn_in(
        &mut self,
        group: &str,
        zone: &str,
        inst: Instance,
        spec: Spec,
    ) -> Result<usize> {
        let before = self.gateways.iter().filter(|g| g.zone == zone).count();
        let name = spec.name.clone().unwrap_or_else(|| match before {
            0 => format!("agent-{zone}"),
            n => format!("agent-{zone}{}", n + 1),
        });
        let mut config = format!(
            "version = 1\n[group]\nname = \"{}\"\n{}\n{}\n",
            group, self.extra, spec.extra
        );
        if self.sockets {
            config.push_str(&format!(
                "[control]\nsocket = \"{}\"\n",
                self.socket_path(&name).display()
            ));
        }
        let ns = inst
            .ns
            .clone()
            .ok_or_else(|| format!("instance {} has no namespace", inst.instance_id))?;
        let dir = PathBuf::from(&self.lab.info.run_dir);
        let agent = Agent::spawn(&self.bin, &ns, &dir, &name, &config, &spec)?;
        self.gateways.push(Gateway {
            zone: zone.to_owned(),
            inst,
            agent,
            expect_exit: false,
        });
        Ok(self.gateways.len() - 1)
    }

    /// Starts the agent of `zone`'s current instance (waiting for the ASG to launch one).
    pub async fn start(&mut self, zone: &str) -> Result<()> {
        let inst = self.instance(zone).await?;
        self.spawn(zone, inst, Spec::new()).map(drop)
    }

    /// Starts an agent in each of `zones`, then waits until each is READY.
    pub async fn start_all(&mut self, zones: &[&str]) -> Result<()> {
        for z in zones {
            self.start(z).await?;
        }
        for z in zones {
            self.ready(z).await?;
        }
        Ok(())
    }

    /// The newest gateway of `zone`.
    pub fn gateway(&self, zone: &str) -> &Gateway {
        self.gateways
            .iter()
            .rev()
            .find(|g| g.zone == zone)
            .unwrap_or_else(|| panic!("no agent in zone {zone}"))
    }

    pub fn gateway_mut(&mut self, zone: &str) -> &mut Gateway {
        self.gateways
            .iter_mut()
            .rev()
            .find(|g| g.zone == zone)
            .unwrap_or_else(|| panic!("no agent in zone {zone}"))
    }

    /// The agent of `zone`'s newest gateway.
    pub fn agent(&self, zone: &str) -> &Agent {
        &self.gateway(zone).agent
    }

    pub fn agent_mut(&mut self, zone: &str) -> &mut Agent {
        &mut self.gateway_mut(zone).agent
    }

    pub fn instance_id(&self, zone: &str) -> String {
        self.gateway(zone).inst.instance_id.clone()
    }

    /// The primary address of `zone`'s newest gateway (where it calls the API from).
    pub fn primary(&self, zone: &str) -> String {
        self.gateway(zone)
            .inst
            .private_ip
            .clone()
            .expect("a running instance has a primary address")
    }

    pub fn log(&self, zone: &str) -> String {
        self.agent(zone).log()
    }

    /// Every agent's log, oldest agent first.
    pub fn logs(&self) -> String {
        self.gateways
            .iter()
            .map(|g| format!("--- {} ---\n{}", g.agent.name, g.agent.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// With `GATEWAY_TEST_LOGS=1`, prints every agent's log (to read timings after a pass).
    pub fn show_logs(&self) {
        if std::env::var_os("GATEWAY_TEST_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
    }

    /// Waits (within [`wait`]) until `zone`'s newest agent is READY.
    pub async fn ready(&mut self, zone: &str) -> Result<()> {
        self.ready_within(zone, wait()).await
    }

    pub async fn ready_within(&mut self, zone: &str, timeout: Duration) -> Result<()> {
        let ready = self.agent_mut(zone).wait_ready(timeout).await;
        ready.map_err(|e| Failure(format!("{e}\n{}", self.logs())))
    }

    /// Waits (within [`wait`]) until `zone`'s newest agent exits, which it was meant to: its
    /// exit code, `None` when a signal ended it.
    pub async fn wait_exit(&mut self, zone: &str) -> Result<Option<i32>> {
        let g = self.gateway_mut(zone);
        g.expect_exit = true;
        let exit = g.agent.wait_exit(wait()).await;
        match exit {
            Ok(status) => Ok(status.code()),
            Err(e) => Err(Failure(format!("{e}\n{}", self.logs()))),
        }
    }

    /// SIGKILLs `zone`'s newest agent, as a crash would.
    pub async fn kill_agent(&mut self, zone: &str) {
        let g = self.gateway_mut(zone);
        g.expect_exit = true;
        g.agent.kill().await;
    }

    /// SIGKILLs every agent still running.
    pub async fn kill_all(&mut self) {
        for g in &mut self.gateways {
            g.expect_exit = true;
            g.agent.kill().await;
        }
    }

    /// Every agent that has exited unasked since the last call, as `<name> exited unasked: ...`.
    pub fn unasked_exits(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for g in &mut self.gateways {
            if !g.expect_exit
                && let Some(status) = g.agent.try_exit()
            {
                g.expect_exit = true;
                out.push(format!("{} exited unasked: {status}", g.agent.name));
            }
        }
        out
    }

    /// Terminates `zone`'s newest gateway instance, its agent with it; answers the instance id.
    pub async fn terminate(&mut self, zone: &str) -> Result<String> {
        let id = self.instance_id(zone);
        self.gateway_mut(zone).expect_exit = true;
        self.lab.terminate(&id).await?;
        Ok(id)
    }

    /// Stops `zone`'s newest gateway instance, its agent with it; answers the instance id.
    pub async fn stop(&mut self, zone: &str) -> Result<String> {
        let id = self.instance_id(zone);
        self.gateway_mut(zone).expect_exit = true;
        self.lab.stop(&id).await?;
        Ok(id)
    }

    /// `gateway-agent <args> --socket <the socket of the agent named name>`, as an operator runs
    /// it: (exit code, stdout, stderr).
    pub fn cli(&self, name: &str, args: &[&str]) -> Result<(i32, String, String)> {
        let out = std::process::Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(self.socket_path(name))
            .output()
            .map_err(|e| format!("run {}: {e}", self.bin))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    // --- routes -------------------------------------------------------------------------------

    /// `zone`'s own route table as the API has it: destination → (ENI, state).
    pub async fn table(&self, zone: &str) -> Result<BTreeMap<String, (String, String)>> {
        self.table_by_id(&self.zone(zone).route_table_id).await
    }

    /// Route table `table` as the API has it: destination → (ENI, state).
    pub async fn table_by_id(&self, table: &str) -> Result<BTreeMap<String, (String, String)>> {
        let out = self
            .lab
            .ec2()
            .describe_route_tables()
            .route_table_ids(table)
            .send()
            .await
            .map_err(|e| format!("DescribeRouteTables {table}: {e:?}"))?;
        Ok(out
            .route_tables()
            .iter()
            .flat_map(|t| t.routes())
            .filter_map(|r| {
                let eni = r.network_interface_id().unwrap_or("").to_owned();
                let state = r.state().map(|s| s.as_str().to_owned()).unwrap_or_default();
                Some((r.destination_cidr_block()?.to_owned(), (eni, state)))
            })
            .collect())
    }

    /// The lease tag on `zone`'s own table, as the API has it.
    pub async fn lease(&self, zone: &str) -> Result<Option<String>> {
        let table = &self.zone(zone).route_table_id;
        let out = self
            .lab
            .ec2()
            .describe_route_tables()
            .route_table_ids(table)
            .send()
            .await
            .map_err(|e| format!("DescribeRouteTables {table}: {e:?}"))?;
        Ok(out
            .route_tables()
            .iter()
            .flat_map(|t| t.tags())
            .find(|t| t.key() == Some("gateway-agent:lease"))
            .and_then(|t| t.value().map(str::to_owned)))
    }

    /// The route for `dest` in `zone`'s own table: (ENI, state); none is an error.
    pub async fn route(&self, zone: &str, dest: &str) -> Result<(String, String)> {
        self.table(zone)
            .await?
            .remove(dest)
            .ok_or_else(|| Failure(format!("no route {dest} in zone {zone}")))
    }

    /// Route table `table`'s route to `dest`: (ENI, state).
    pub async fn route_in(&self, table: &str, dest: &str) -> Result<(String, String)> {
        self.table_by_id(table)
            .await?
            .remove(dest)
            .ok_or_else(|| Failure(format!("no route {dest} in {table}")))
    }

    /// Whether `zone`'s 0.0.0.0/0 points at `via`'s ENI and is active.
    pub async fn route_is(&self, zone: &str, via: &str) -> Result<bool> {
        let (eni, state) = self.route(zone, "0.0.0.0/0").await?;
        Ok(eni == self.zone(via).eni_id && state == "active")
    }

    /// Waits until `zone`'s 0.0.0.0/0 points at `via`'s ENI and is active, as the API has it.
    pub async fn wait_route(&self, zone: &str, via: &str, timeout: Duration) -> Result<()> {
        let ok = wait_for(timeout, &format!("{zone} routed via {via}"), || async {
            self.route_is(zone, via)
                .await
                .is_ok_and(|yes| yes)
                .then_some(())
        })
        .await;
        if ok.is_ok() {
            return Ok(());
        }
        Err(Failure(format!(
            "{zone}'s route is {:?}, not via {via} ({}) after {timeout:?}\n{}",
            self.route(zone, "0.0.0.0/0").await,
            self.zone(via).eni_id,
            self.logs()
        )))
    }

    /// Where `table` sends 0.0.0.0/0 as the VPC router's kernel has it: the ENI, or `None` for
    /// a black hole.
    pub async fn kernel_via(&self, table: &str) -> Option<String> {
        let routes = self.lab.kernel_routes(table).await.ok()?;
        routes
            .into_iter()
            .find(|r| r.destination == "0.0.0.0/0")
            .filter(|r| r.kind != "blackhole")
            .and_then(|r| r.eni)
    }

    /// Waits until every table of `zone` routes via `via`'s ENI in the VPC router's kernel.
    pub async fn wait_kernel_route(&self, zone: &str, via: &str, timeout: Duration) -> Result<()> {
        let want = self.eni(via);
        let tables = &self.zone(zone).route_table_ids;
        let ok = wait_for(timeout, &format!("{zone} via {via}"), || async {
            for t in tables {
                if self.kernel_via(t).await.as_deref() != Some(want.as_str()) {
                    return None;
                }
            }
            Some(())
        })
        .await;
        ok.map_err(|_| {
            Failure(format!(
                "{zone} not via {via} after {timeout:?}\n{}",
                self.logs()
            ))
        })
    }

    /// Route writes ([`ROUTE_WRITES`]) the API has answered so far.
    pub async fn route_writes(&self) -> Result<usize> {
        Ok(self
            .lab
            .api_calls()
            .await?
            .iter()
            .filter(|c| ROUTE_WRITES.contains(&c.as_str()))
            .count())
    }

    // --- the API's view -----------------------------------------------------------------------

    /// The lifecycle state of `instance` in its group, or `(gone)`.
    pub async fn asg_state(&self, instance: &str) -> Result<String> {
        let out = self
            .lab
            .autoscaling()
            .describe_auto_scaling_instances()
            .instance_ids(instance)
            .send()
            .await
            .map_err(|e| format!("DescribeAutoScalingInstances {instance}: {e:?}"))?;
        Ok(out
            .auto_scaling_instances()
            .first()
            .and_then(|i| i.lifecycle_state())
            .unwrap_or("(gone)")
            .to_owned())
    }

    /// How `instance`'s lifecycle action of `transition` (`LAUNCHING`, `TERMINATING`) ended:
    /// `<result> by <how>`, e.g. `CONTINUE by CompleteLifecycleAction`; `None` while open.
    pub async fn lifecycle_result(
        &self,
        instance: &str,
        transition: &str,
    ) -> Result<Option<String>> {
        let all = self.lab.lifecycle().await?;
        Ok(all["history"].as_array().and_then(|history| {
            history
                .iter()
                .find(|h| {
                    h["instance_id"] == instance
                        && h["transition"]
                            .as_str()
                            .is_some_and(|t| t.contains(transition))
                })
                .map(|h| {
                    format!(
                        "{} by {}",
                        h["result"].as_str().unwrap_or("?"),
                        h["how"].as_str().unwrap_or("?")
                    )
                })
        }))
    }

    /// A plain instance (no ASG) in `zone`'s public subnet.
    pub async fn plain_instance(&self, zone: &str) -> Result<String> {
        let ec2 = self.lab.ec2();
        let images = ec2
            .describe_images()
            .send()
            .await
            .map_err(|e| format!("DescribeImages: {e:?}"))?;
        let image = images
            .images()
            .first()
            .and_then(|i| i.image_id())
            .ok_or("no image")?;
        let out = ec2
            .run_instances()
            .image_id(image)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .subnet_id(&self.zone(zone).public_subnet_id)
            .send()
            .await
            .map_err(|e| format!("RunInstances: {e:?}"))?;
        Ok(out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or("RunInstances answered no instance")?
            .to_owned())
    }

    /// A plain instance (no ASG) in `zone`'s public subnet holding `zone`'s ENI: an old gateway.
    pub async fn old_holder(&self, zone: &str) -> Result<String> {
        let id = self.plain_instance(zone).await?;
        self.attach_eni(zone, &id).await?;
        Ok(id)
    }

    /// A new ENI in `zone`'s private subnet, tagged with nothing: another interface for a
    /// gateway (hot-plugged, it is the network manager's to configure).
    pub async fn spare_eni(&self, zone: &str) -> Result<String> {
        let subnet = &self.zone(zone).private_subnet_id;
        let out = self
            .lab
            .ec2()
            .create_network_interface()
            .subnet_id(subnet)
            .send()
            .await
            .map_err(|e| format!("CreateNetworkInterface in {subnet}: {e:?}"))?;
        Ok(out
            .network_interface()
            .and_then(|n| n.network_interface_id())
            .ok_or("CreateNetworkInterface answered no ENI")?
            .to_owned())
    }

    /// Attaches `zone`'s ENI to `instance` at device index 1, as a gateway holds it.
    pub async fn attach_eni(&self, zone: &str, instance: &str) -> Result<()> {
        Ok(self
            .lab
            .attach_eni(&self.zone(zone).eni_id, instance)
            .await?)
    }

    /// Waits (within `timeout`) until `zone`'s ENI is attached to `instance`.
    pub async fn wait_eni_holder(
        &self,
        zone: &str,
        instance: &str,
        timeout: Duration,
    ) -> Result<()> {
        let what = format!("{zone}'s ENI attached to {instance}");
        let held = wait_for(timeout, &what, || async {
            (self.eni_holder(zone).await.ok().flatten().as_deref() == Some(instance)).then_some(())
        })
        .await;
        held.map_err(|e| Failure(format!("{e}\n{}", self.logs())))
    }

    /// Waits (within `timeout`) until `zone`'s newest agent has sent a STATUS= starting with
    /// `prefix` (e.g. `carrying`).
    pub async fn wait_status(&self, zone: &str, prefix: &str, timeout: Duration) -> Result<()> {
        let what = format!("{zone}'s agent saying {prefix:?}");
        let said = wait_for(timeout, &what, || async {
            self.agent(zone)
                .notify
                .statuses()
                .iter()
                .any(|s| s.starts_with(prefix))
                .then_some(())
        })
        .await;
        said.map_err(|e| Failure(format!("{e}\n{}", self.logs())))
    }

    /// The instance `zone`'s ENI is attached to, if any.
    pub async fn eni_holder(&self, zone: &str) -> Result<Option<String>> {
        let eni = &self.zone(zone).eni_id;
        let out = self
            .lab
            .ec2()
            .describe_network_interfaces()
            .network_interface_ids(eni)
            .send()
            .await
            .map_err(|e| format!("DescribeNetworkInterfaces {eni}: {e:?}"))?;
        Ok(out
            .network_interfaces()
            .first()
            .and_then(|n| n.attachment())
            .and_then(|a| a.instance_id())
            .map(str::to_owned))
    }

    /// A spot interruption notice in `instance`'s IMDS: terminate, two minutes from now.
    pub async fn spot_notice(&self, instance: &str) -> Result<()> {
        let notice = format!(
            r#"{{"action": "terminate", "time": "{}"}}"#,
            rfc3339(unix_secs() + 120)
        );
        Ok(self
            .lab
            .imds_set(instance, "spot/instance-action", Some(&notice))
            .await?)
    }
}

/// Now, in whole unix seconds.
pub fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Now, in unix seconds: the clock of the lab's records ([`crate::RouteChange::at`]).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for unix seconds, as IMDS dates its notices (the SDK's own
/// formatter: the lab does not link the agent).
pub fn rfc3339(secs: i64) -> String {
    use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
    DateTime::from_secs(secs)
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
