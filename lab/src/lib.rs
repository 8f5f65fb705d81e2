//! The gateway-agent lab: real parts, no cloud.
//!
//! [`Lab::start`] runs `labd` (lab/py/labd.py, in the lab's Python venv), which serves
//! - moto 5.2.5 (EC2 + Auto Scaling) with the mends in lab/py/mends.py, on 127.0.0.1 for the host
//!   and on `198.51.100.2:80` inside the lab's internet namespace for instances;
//! - an IMDSv2 emulator on `169.254.169.254:80` inside every running instance's namespace;
//! - a data plane of network namespaces whose VPC router mirrors every moto route table;
//! - the control API under `/lab/` that this crate wraps.
//!
//! Dropping a [`Lab`] tears everything down (namespaces, veths, processes), also while a failing
//! test unwinds; labd also dies with its parent. [`cleanup_stale`] removes what a killed lab left.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub mod agent;
pub mod container;
pub mod fleet;
mod netns;
pub mod plot;
pub mod report;
pub use netns::{in_netns, netns_list};

/// Where the region, account and credentials the lab answers for are fixed.
pub const REGION: &str = "us-east-1";
/// The internet host every client stream is sent to.
pub const INTERNET_HOST: &str = "198.51.100.1";
/// The EC2/Auto Scaling endpoint as seen from inside an instance.
pub const VPC_ENDPOINT: &str = "http://198.51.100.2";

/// How long labd may take to come up: moto's import and first call take ~2 s on this machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("starting labd ({python} {script}): {source}")]
    Spawn {
        python: String,
        script: String,
        source: std::io::Error,
    },
    #[error("labd did not report ready: {0}")]
    NotReady(String),
    #[error("lab control {method} /lab/{path}: {message}")]
    Control {
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("no running instance in zone {0}")]
    NoInstance(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// The API actions a gateway boot may write with (everything else it calls only reads): what
/// tests and the boot bench count to show a restart writes nothing.
pub const WRITE_ACTIONS: &[&str] = &[
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "ReplaceRoute",
    "CreateRoute",
    "CreateTags",
    "CompleteLifecycleAction",
];

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// What labd reports about itself when it is ready.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Info {
    pub lab_id: String,
    pub pid: u32,
    pub region: String,
    pub account: String,
    /// The API as seen from the host (tests, CLI).
    pub endpoint: String,
    /// The API as seen from instances, over the VPC.
    pub vpc_endpoint: String,
    pub internet_host: String,
    pub namespaces: Namespaces,
    pub run_dir: String,
    /// The lab profile labd runs with (`fast` or `aws`) and every parameter's value.
    #[serde(default)]
    pub profile: Option<Value>,
}

/// The lab profile this process asks for: `GATEWAY_LAB_PROFILE` (`fast` when unset).
pub fn profile() -> String {
    match std::env::var("GATEWAY_LAB_PROFILE") {
        Ok(p) if !p.is_empty() => p,
        _ => "fast".into(),
    }
}

/// Whether this process runs its labs under the `aws` profile.
pub fn aws_profile() -> bool {
    profile() == "aws"
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Namespaces {
    pub router: String,
    pub internet: String,
    pub park: String,
}

/// Options of the standard VPC (see lab/py/scenario.py; the field names are its keywords).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ScenarioOptions {
    pub zones: Vec<String>,
    pub group: String,
    pub capacity: u32,
    pub hooks: bool,
    pub heartbeat_timeout: u32,
    pub default_result: String,
    /// More private route tables per zone, tagged and routed like the zone's main one but
    /// associated with no subnet (0 to 199).
    pub extra_tables: u32,
    /// Managed CIDRs besides 0.0.0.0/0 that every private table of a zone routes to its ENI,
    /// e.g. "10.200.0.0/16" (IPv4, outside the VPC's 10.0.0.0/16).
    pub destinations: Vec<String>,
}

impl Default for ScenarioOptions {
    fn default() -> Self {
        Self {
            zones: vec!["a".into(), "b".into()],
            group: "lab".into(),
            capacity: 1,
            hooks: true,
            heartbeat_timeout: 300,
            default_result: "ABANDON".into(),
            extra_tables: 0,
            destinations: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Scenario {
    pub group: String,
    pub vpc_id: String,
    pub internet_gateway_id: String,
    pub public_route_table_id: String,
    pub launch_template_id: String,
    pub zones: Vec<Zone>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Zone {
    pub name: String,
    pub az: String,
    pub public_subnet_id: String,
    pub private_subnet_id: String,
    /// The private subnet's own route table.
    pub route_table_id: String,
    /// Every private route table of the zone: `route_table_id` first, then the extra ones.
    #[serde(default)]
    pub route_table_ids: Vec<String>,
    pub eni_id: String,
    pub eni_ip: String,
    pub eni_mac: String,
    pub asg_name: String,
    pub client_ns: String,
    pub client_ip: String,
}

impl Scenario {
    pub fn zone(&self, name: &str) -> &Zone {
        self.zones
            .iter()
            .find(|z| z.name == name || z.az == name)
            .unwrap_or_else(|| panic!("scenario has no zone {name}"))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Instance {
    pub instance_id: String,
    pub state: String,
    pub az: String,
    pub private_ip: Option<String>,
    pub ns: Option<String>,
    pub asg: Option<String>,
    pub lifecycle_state: Option<String>,
    pub hung: bool,
    pub cuts: Vec<String>,
    /// What the boot spec ([`Lab::set_boot`]) started in this instance, if anything.
    #[serde(default)]
    pub boot: Option<BootInfo>,
}

/// What labd starts in every instance that comes up after it is set, as systemd starts the agent
/// from the AMI. Paths, contents, argv and env values substitute `{instance_id}`, `{zone}` (the
/// AZ), `{ns}`, `{run_dir}` and `{primary_ip}`. The process runs inside the instance's namespace
/// with `NOTIFY_SOCKET` set to a datagram socket labd reads (`READY=1`, `STATUS=...`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BootSpec {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Path template -> content template, written before argv runs.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
}

/// One instance's boot as labd saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BootInfo {
    /// `booting` (waiting for `BOOT_S`), `started` or `failed` (see `error`).
    pub state: String,
    /// How many times the instance booted (a stop/start boots it again).
    pub boots: u32,
    pub pid: Option<u32>,
    pub log: String,
    pub running: bool,
    pub exit_code: Option<i32>,
    /// The instance came up (its namespace), wall-clock seconds.
    pub up_at: Option<f64>,
    pub started_at: Option<f64>,
    pub error: Option<String>,
    pub notify_socket: String,
    /// Every datagram received on `NOTIFY_SOCKET`, oldest first, and when (wall clock).
    pub notify: Vec<String>,
    pub notify_at: Vec<f64>,
    pub ready: bool,
    pub ready_at: Option<f64>,
    /// The last `STATUS=` sent.
    pub status: Option<String>,
    /// The instance is gone (or stopped): the process went with it.
    pub down: bool,
}

/// One route of a route table as the lab's VPC router holds it in its kernel.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct KernelRoute {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub dev: Option<String>,
    pub via: Option<String>,
    pub eni: Option<String>,
}

/// What a client stream measured at the receiving end.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct StreamReport {
    pub id: u64,
    pub rate: f64,
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub longest_gap_ms: f64,
    pub running: bool,
}

/// When each packet of a client stream arrived at the internet host.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StreamTimeline {
    pub id: u64,
    pub rate: f64,
    /// Wall-clock seconds since the Unix epoch (the clock of [`RouteChange::at`]).
    pub started: f64,
    /// Each delivered packet's arrival, in wall-clock seconds, in arrival order.
    pub arrivals: Vec<f64>,
}

/// A route write the lab's API answered with success, timed when its answer left (the kernel
/// mirror already applied): the moment a client's path changed.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RouteChange {
    /// Wall-clock seconds since the Unix epoch.
    pub at: f64,
    /// `ReplaceRoute` or `CreateRoute`.
    pub action: String,
    pub table: Option<String>,
    pub destination: Option<String>,
    /// The ENI, gateway or instance the route now points at.
    pub target: Option<String>,
    /// The writer's address: an instance's primary private IP (agents call the API from their
    /// uplink), or 127.0.0.1 for the lab and tests.
    #[serde(default)]
    pub source: Option<String>,
}

/// An API fault to inject: per action (or every action), a number of times or until cleared.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub action: Option<String>,
    /// `throttle` (RequestLimitExceeded / Throttling), `5xx` (503, or 500 with status),
    /// `lost` (the call takes effect, then its caller gets a 503, as if the answer was lost),
    /// `latency`, or `stuck-attaching` / `stuck-detaching` (on DescribeNetworkInterfaces: every
    /// attached ENI reads that status, as an attachment EC2 never finishes).
    pub kind: String,
    pub count: Option<u32>,
    pub latency_ms: u64,
    pub status: Option<u16>,
}

/// A running lab. Dropping it tears the lab down.
pub struct Lab {
    child: Option<Child>,
    pub info: Info,
    http: reqwest::Client,
    scenario: Option<Scenario>,
}

/// The Python interpreter that has moto: `GATEWAY_LAB_PYTHON`, else the venv `make setup` makes.
pub fn python() -> String {
    if let Ok(p) = std::env::var("GATEWAY_LAB_PYTHON") {
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    format!("{home}/.cache/gateway-agent/venv/bin/python")
}

pub fn labd_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py/labd.py")
}

fn short_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:05x}",
        (nanos ^ std::process::id().rotate_left(7)) & 0xfffff
    )
}

impl Lab {
    /// Start a lab that dies with this process.
    pub fn start() -> Result<Lab> {
        Self::spawn(&short_id(), true)
    }

    /// Start a lab that dies with this process, with `env` added to labd's environment (a
    /// profile or a parameter for this lab only, e.g. `GATEWAY_LAB_AWS_ATTACH_S=2..3`).
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Lab> {
        Self::spawn_with_env(&short_id(), true, env)
    }

    /// Start labd; `attached` ties it to this process (tests), otherwise it outlives it (CLI).
    pub fn spawn(lab_id: &str, attached: bool) -> Result<Lab> {
        Self::spawn_with_env(lab_id, attached, &[])
    }

    fn spawn_with_env(lab_id: &str, attached: bool, env: &[(&str, &str)]) -> Result<Lab> {
        let python = python();
        let script = labd_script();
        let mut cmd = Command::new(&python);
        cmd.arg(&script).arg("--lab-id").arg(lab_id);
        cmd.envs(env.iter().copied());
        if attached {
            cmd.arg("--die-with-parent");
        }
        let log = std::fs::create_dir_all(format!("/run/gateway-lab/{lab_id}"))
            .and_then(|()| std::fs::File::create(format!("/run/gateway-lab/{lab_id}/labd.log")));
        let stderr = match log {
            Ok(f) if !attached => Stdio::from(f),
            _ => Stdio::inherit(),
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| LabError::Spawn {
                python: python.clone(),
                script: script.display().to_string(),
                source,
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| LabError::NotReady("no stdout".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if !line.trim().is_empty() => line,
            Ok(_) => {
                let status = child.wait().ok();
                return Err(LabError::NotReady(format!(
                    "labd exited ({status:?}) before it was ready; see its stderr"
                )));
            }
            Err(_) => {
                let _ = child.kill();
                return Err(LabError::NotReady(format!(
                    "no answer within {START_TIMEOUT:?}"
                )));
            }
        };
        let info: Info = serde_json::from_str(line.trim())
            .map_err(|e| LabError::NotReady(format!("bad ready line {line:?}: {e}")))?;
        Ok(Lab {
            child: attached.then_some(child),
            info,
            http: reqwest::Client::new(),
            scenario: None,
        })
    }

    /// Connect to a lab started earlier (by `gwlab up`).
    pub fn connect(info: Info) -> Lab {
        Lab {
            child: None,
            info,
            http: reqwest::Client::new(),
            scenario: None,
        }
    }

    pub fn lab_id(&self) -> &str {
        &self.info.lab_id
    }

    /// The scenario built by [`Lab::scenario`] (or fetched from labd).
    pub fn current_scenario(&self) -> Option<&Scenario> {
        self.scenario.as_ref()
    }

    async fn call(&self, method: &'static str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}/lab/{path}", self.info.endpoint);
        let req = match method {
            "GET" => self.http.get(&url),
            "POST" => self.http.post(&url),
            "PUT" => self.http.put(&url),
            _ => self.http.delete(&url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let err = |message: String| LabError::Control {
            method,
            path: path.to_string(),
            message,
        };
        let resp = req.send().await.map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let value: Value = resp.json().await.map_err(|e| err(e.to_string()))?;
        if !status.is_success() {
            return Err(err(format!("{status}: {}", value["error"])));
        }
        Ok(value)
    }

    async fn call_as<T: for<'de> Deserialize<'de>>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let v = self.call(method, path, body).await?;
        serde_json::from_value(v).map_err(|e| LabError::Control {
            method,
            path: path.to_string(),
            message: format!("unexpected answer: {e}"),
        })
    }

    /// Build the standard VPC: per zone a public and a private subnet, a route table, a persistent
    /// ENI, a client, and an ASG with lifecycle hooks.
    pub async fn scenario(&mut self, opts: &ScenarioOptions) -> Result<Scenario> {
        let body = serde_json::to_value(opts).map_err(|e| LabError::Control {
            method: "POST",
            path: "scenario".into(),
            message: e.to_string(),
        })?;
        let s: Scenario = self.call_as("POST", "scenario", Some(body)).await?;
        self.scenario = Some(s.clone());
        Ok(s)
    }

    /// One more gateway group beside the scenario (which must exist): `opts`'s zones in a VPC
    /// of its own, `10.<vpc_octet>.0.0/16` (1 to 99, distinct per group), with the group's own
    /// tags, ENIs, route tables and Auto Scaling groups. Several groups in one account, sharing
    /// its API buckets (the fleet bench).
    pub async fn add_group(&self, opts: &ScenarioOptions, vpc_octet: u8) -> Result<Scenario> {
        let control = |message: String| LabError::Control {
            method: "POST",
            path: "groups".into(),
            message,
        };
        let mut body = serde_json::to_value(opts).map_err(|e| control(e.to_string()))?;
        body.as_object_mut()
            .ok_or_else(|| control("options are not an object".into()))?
            .insert("vpc_octet".into(), Value::from(vpc_octet));
        self.call_as("POST", "groups", Some(body)).await
    }

    pub async fn fetch_scenario(&mut self) -> Result<Option<Scenario>> {
        let s: Option<Scenario> = self.call_as("GET", "scenario", None).await?;
        self.scenario.clone_from(&s);
        Ok(s)
    }

    pub async fn instances(&self) -> Result<Vec<Instance>> {
        self.call_as("GET", "instances", None).await
    }

    /// The running (or pending) instance of a zone (letter or AZ name), if any.
    pub async fn instance_in(&self, zone: &str) -> Result<Instance> {
        self.instances()
            .await?
            .into_iter()
            .find(|i| {
                i.state == "running" && (i.az == zone || i.az.ends_with(zone)) && i.ns.is_some()
            })
            .ok_or_else(|| LabError::NoInstance(zone.to_string()))
    }

    /// Wait until a zone has a running instance with a namespace, and return it.
    pub async fn wait_instance(&self, zone: &str, timeout: Duration) -> Result<Instance> {
        wait_for(timeout, &format!("an instance in zone {zone}"), || async {
            self.instance_in(zone).await.ok()
        })
        .await
    }

    async fn verb(&self, instance: &str, verb: &str, body: Value) -> Result<Value> {
        self.call("POST", &format!("instances/{instance}/{verb}"), Some(body))
            .await
    }

    /// Terminate through the instance's Auto Scaling group, as a scale-in or an instance
    /// refresh does: the group launches a replacement and its termination hook holds this one in
    /// Terminating:Wait.
    pub async fn terminate_in_group(&self, instance: &str) -> std::result::Result<(), String> {
        self.autoscaling()
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance)
            .should_decrement_desired_capacity(false)
            .send()
            .await
            .map(drop)
            .map_err(|e| format!("TerminateInstanceInAutoScalingGroup {instance}: {e:?}"))
    }
    /// Terminate like `ec2 terminate-instances --skip-os-shutdown` (outside the ASG's own
    /// lifecycle): the instance dies at once, its agent with it (under the aws profile it stays
    /// `shutting-down`, its ENIs attached, for SHUTDOWN_S).
    pub async fn terminate(&self, instance: &str) -> Result<()> {
        self.verb(instance, "terminate", json!({})).await.map(drop)
    }
    /// Terminate like `ec2 terminate-instances`: the OS shuts down first (its services get
    /// SIGTERM), under the aws profile; the same as [`Self::terminate`] under fast.
    pub async fn terminate_graceful(&self, instance: &str) -> Result<()> {
        self.verb(instance, "terminate", json!({"graceful": true}))
            .await
            .map(drop)
    }
    pub async fn stop(&self, instance: &str) -> Result<()> {
        self.verb(instance, "stop", json!({})).await.map(drop)
    }
    pub async fn start_instance(&self, instance: &str) -> Result<()> {
        self.verb(instance, "start", json!({})).await.map(drop)
    }
    /// SIGSTOP every process of the instance and drop its traffic: a hung kernel.
    pub async fn hang(&self, instance: &str) -> Result<()> {
        self.verb(instance, "hang", json!({})).await.map(drop)
    }
    pub async fn unhang(&self, instance: &str) -> Result<()> {
        self.verb(instance, "unhang", json!({})).await.map(drop)
    }
    /// Drop an instance's traffic at the VPC router: `uplink` (primary ENI), `eni` (others).
    pub async fn cut(&self, instance: &str, links: &[&str]) -> Result<()> {
        self.verb(instance, "cut", json!({ "links": links }))
            .await
            .map(drop)
    }
    pub async fn restore(&self, instance: &str, links: &[&str]) -> Result<()> {
        self.verb(instance, "restore", json!({ "links": links }))
            .await
            .map(drop)
    }
    /// Run a command inside an instance (it dies with the instance). Returns its pid and log.
    pub async fn exec(
        &self,
        instance: &str,
        argv: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(u32, String)> {
        let env: serde_json::Map<String, Value> = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
            .collect();
        let v = self
            .verb(instance, "exec", json!({ "argv": argv, "env": env }))
            .await?;
        let pid = v["pid"].as_u64().unwrap_or(0);
        Ok((
            u32::try_from(pid).unwrap_or(0),
            v["log"].as_str().unwrap_or("").to_string(),
        ))
    }
    /// The lab's stand-in for a configured gateway (no agent): links up, forwarding on.
    pub async fn forwarding(&self, instance: &str, enabled: bool) -> Result<()> {
        self.verb(instance, "forwarding", json!({ "enabled": enabled }))
            .await
            .map(drop)
    }
    /// The instance's systemd-networkd (profile flag `NETWORKD`): `status`, `reload` (rewrite
    /// net-utils' files, then `networkctl reload`), `refresh` (reload only if a file changed, as
    /// net-utils' timer does) or `restart`. Answers what was done, the files, networkd's log.
    pub async fn networkd(&self, instance: &str, action: &str) -> Result<Value> {
        self.verb(instance, "networkd", json!({ "action": action }))
            .await
    }
    /// Set IMDS paths under latest/meta-data/ (None removes), e.g. `spot/instance-action`.
    pub async fn imds_set(&self, instance: &str, path: &str, value: Option<&str>) -> Result<()> {
        self.call(
            "PUT",
            &format!("instances/{instance}/imds"),
            Some(json!({ "set": { path: value } })),
        )
        .await
        .map(drop)
    }
    /// IMDS fault mode: `ok`, `refuse`, `500`, `garbage`, plus an added delay.
    pub async fn imds_fault(&self, instance: &str, mode: &str, delay_ms: u64) -> Result<()> {
        self.call(
            "PUT",
            &format!("instances/{instance}/imds"),
            Some(json!({ "fault": { "mode": mode, "delay_ms": delay_ms } })),
        )
        .await
        .map(drop)
    }
    /// Forget every IMDS session token of the instance, as when one expires or IMDS restarts:
    /// the next request with a cached token gets 401.
    pub async fn imds_expire_tokens(&self, instance: &str) -> Result<()> {
        self.call(
            "PUT",
            &format!("instances/{instance}/imds"),
            Some(json!({ "expire_tokens": true })),
        )
        .await
        .map(drop)
    }
    pub async fn inject(&self, fault: &Fault) -> Result<()> {
        let body = json!({
            "action": fault.action, "kind": fault.kind, "count": fault.count,
            "latency_ms": fault.latency_ms, "status": fault.status,
        });
        self.call("PUT", "faults", Some(body)).await.map(drop)
    }
    pub async fn clear_faults(&self) -> Result<()> {
        self.call("DELETE", "faults", None).await.map(drop)
    }
    /// Drop traffic between two addresses in both directions at the VPC router.
    pub async fn partition(&self, a: &str, b: &str) -> Result<()> {
        self.call("POST", "partition", Some(json!({ "a": a, "b": b })))
            .await
            .map(drop)
    }
    pub async fn heal(&self, a: &str, b: &str) -> Result<()> {
        self.call("DELETE", "partition", Some(json!({ "a": a, "b": b })))
            .await
            .map(drop)
    }
    /// Attaches `eni` to `instance` at device index 1, as a gateway holds its zone's ENI.
    pub async fn attach_eni(&self, eni: &str, instance: &str) -> Result<()> {
        self.attach_eni_at(eni, instance, 1).await
    }

    /// Attaches `eni` to `instance` at `device_index`.
    pub async fn attach_eni_at(&self, eni: &str, instance: &str, device_index: i32) -> Result<()> {
        self.ec2()
            .attach_network_interface()
            .network_interface_id(eni)
            .instance_id(instance)
            .device_index(device_index)
            .send()
            .await
            .map_err(|e| LabError::Control {
                method: "POST",
                path: format!("AttachNetworkInterface {eni} to {instance}"),
                message: format!("{e:?}"),
            })?;
        Ok(())
    }
    /// Start a fixed-rate UDP stream from a zone's client to the internet host.
    pub async fn stream_start(&self, zone: &str, rate: u32) -> Result<u64> {
        let v = self
            .call(
                "POST",
                "streams",
                Some(json!({ "zone": zone, "rate": rate })),
            )
            .await?;
        Ok(v["id"].as_u64().unwrap_or(0))
    }
    pub async fn stream_report(&self, id: u64) -> Result<StreamReport> {
        self.call_as("GET", &format!("streams/{id}"), None).await
    }
    pub async fn stream_stop(&self, id: u64) -> Result<StreamReport> {
        self.call_as("POST", &format!("streams/{id}/stop"), None)
            .await
    }
    /// When each packet of the stream arrived so far (also after it stopped).
    pub async fn stream_timeline(&self, id: u64) -> Result<StreamTimeline> {
        self.call_as("GET", &format!("streams/{id}/timeline"), None)
            .await
    }
    /// The routes of a moto route table as the VPC router's kernel has them.
    pub async fn kernel_routes(&self, route_table_id: &str) -> Result<Vec<KernelRoute>> {
        self.call_as("GET", &format!("kernel-routes/{route_table_id}"), None)
            .await
    }
    /// Open and finished lifecycle actions (finished ones with their result and how they ended).
    pub async fn lifecycle(&self) -> Result<Value> {
        self.call("GET", "lifecycle", None).await
    }
    /// Start `spec` in every instance that comes up from now on (those up now are left alone).
    pub async fn set_boot(&self, spec: &BootSpec) -> Result<()> {
        let body = serde_json::to_value(spec).map_err(|e| LabError::Control {
            method: "PUT",
            path: "boot".into(),
            message: e.to_string(),
        })?;
        self.call("PUT", "boot", Some(body)).await.map(drop)
    }
    /// Stop booting new instances (what runs keeps running).
    pub async fn clear_boot(&self) -> Result<()> {
        self.call("DELETE", "boot", None).await.map(drop)
    }
    /// The boot record of an instance (an error if the boot spec never started it).
    pub async fn boot_info(&self, instance: &str) -> Result<BootInfo> {
        self.call_as("GET", &format!("instances/{instance}/boot"), None)
            .await
    }
    /// Run an instance refresh of an Auto Scaling group under `policy` (`launch-before-terminate`
    /// or `terminate-and-launch`; None: the profile's `MAINTENANCE_POLICY`), as
    /// `StartInstanceRefresh` does. Answers the refresh (its `id` is the InstanceRefreshId).
    pub async fn refresh(&self, asg: &str, policy: Option<&str>) -> Result<Value> {
        self.call(
            "POST",
            &format!("groups/{asg}/refresh"),
            Some(json!({ "policy": policy })),
        )
        .await
    }
    /// A rebalance recommendation for the instance (IMDS `events/recommendations/rebalance`);
    /// with Capacity Rebalancing on (profile `CAPACITY_REBALANCE` or the group's attribute) the
    /// group launches a replacement, then terminates this one through its hook.
    pub async fn rebalance(&self, instance: &str) -> Result<Value> {
        self.verb(instance, "rebalance", json!({})).await
    }
    /// The groups' scaling activities (`activities`, oldest first), launches decided but not yet
    /// made (`pending`), replacements (`tasks`) and instance refreshes (`refreshes`).
    pub async fn activities(&self) -> Result<Value> {
        self.call("GET", "activities", None).await
    }
    /// Raw figures: mirror lag samples (ms), API call durations.
    pub async fn stats(&self) -> Result<Value> {
        self.call("GET", "stats", None).await
    }
    /// The actions of every API call so far (the last 20000), oldest first.
    pub async fn api_calls(&self) -> Result<Vec<String>> {
        let stats = self.stats().await?;
        Ok(stats["api_calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .filter_map(|c| c["action"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
    /// Every successful ReplaceRoute/CreateRoute so far (the last 20000), oldest first.
    pub async fn route_changes(&self) -> Result<Vec<RouteChange>> {
        let stats = self.stats().await?;
        serde_json::from_value(stats["route_changes"].clone()).map_err(|e| LabError::Control {
            method: "GET",
            path: "stats".into(),
            message: format!("unexpected route_changes: {e}"),
        })
    }
    /// Reset moto and the data plane to an empty lab.
    pub async fn reset(&mut self) -> Result<()> {
        self.scenario = None;
        self.call("POST", "reset", None).await.map(drop)
    }
    /// Ask a detached labd to tear down and exit.
    pub async fn shutdown(&self) -> Result<()> {
        self.call("POST", "down", None).await.map(drop)
    }

    /// SDK configuration for this lab's EC2 endpoint (host side).
    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new(REGION))
            .endpoint_url(&self.info.endpoint)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "lab", "lab", None, None, "lab",
            ))
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }

    /// Like [`Lab::ec2`] with a retry policy of `attempts` (1: see every error).
    pub fn ec2_with_attempts(&self, attempts: u32) -> aws_sdk_ec2::Client {
        let conf = self
            .ec2()
            .config()
            .to_builder()
            .retry_config(
                aws_sdk_ec2::config::retry::RetryConfig::standard().with_max_attempts(attempts),
            )
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }

    pub fn autoscaling(&self) -> aws_sdk_autoscaling::Client {
        let conf = aws_sdk_autoscaling::Config::builder()
            .behavior_version(aws_sdk_autoscaling::config::BehaviorVersion::latest())
            .region(aws_sdk_autoscaling::config::Region::new(REGION))
            .endpoint_url(&self.info.endpoint)
            .credentials_provider(aws_sdk_autoscaling::config::Credentials::new(
                "lab", "lab", None, None, "lab",
            ))
            .build();
        aws_sdk_autoscaling::Client::from_conf(conf)
    }

    /// Environment for a process inside an instance so the AWS SDK reaches the lab over the VPC.
    pub fn instance_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ENDPOINT_URL", VPC_ENDPOINT),
            ("AWS_ACCESS_KEY_ID", "lab"),
            ("AWS_SECRET_ACCESS_KEY", "lab"),
            ("AWS_REGION", REGION),
        ]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            // labd's teardown takes well under a second; do not hang a test run on a stuck one.
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            cleanup_lab(&self.info.lab_id);
            let _ = std::fs::remove_dir_all(&self.info.run_dir);
        }
    }
}

/// Poll `probe` every 20 ms until it yields a value or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LabError::Timeout(timeout, what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Remove one lab's namespaces (killing what runs in them). For labs whose labd was killed.
pub fn cleanup_lab(lab_id: &str) -> usize {
    // Containers (tests/systemd.rs) keep their overlays under the lab's run directory.
    container::unmount_under(Path::new(&format!("/run/gateway-lab/{lab_id}")));
    let prefix = format!("gl-{lab_id}-");
    let mut n = 0;
    for ns in netns_list() {
        if ns.starts_with(&prefix) {
            netns::delete(&ns);
            n += 1;
        }
    }
    n
}

/// Remove every lab namespace whose labd is gone. Returns how many namespaces were removed.
pub fn cleanup_stale() -> usize {
    let mut removed = 0;
    let mut ids: Vec<String> = netns_list()
        .into_iter()
        .filter_map(|ns| {
            ns.strip_prefix("gl-")
                .and_then(|r| r.split('-').next())
                .map(String::from)
        })
        .collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let alive = std::fs::read_to_string(format!("/run/gateway-lab/{id}/pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(process_alive);
        if !alive {
            removed += cleanup_lab(&id);
            let _ = std::fs::remove_dir_all(format!("/run/gateway-lab/{id}"));
        }
    }
    removed
}

/// Is `pid` a live process (not gone, not a zombie waiting to be reaped)?
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Percentile (nearest rank) of a sample; 0 for an empty one.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}
