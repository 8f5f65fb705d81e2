//! What the lab tests share: the agent started in an instance's namespace with a real
//! NOTIFY_SOCKET, the scenario, and readers of the lab's API state.
#![allow(dead_code, unused_imports)]

pub use std::os::unix::net::UnixDatagram;
pub use std::path::PathBuf;
pub use std::process::Stdio;
pub use std::sync::{Arc, Mutex};
pub use std::time::Duration;

pub use gateway_lab::{
    Fault, INTERNET_HOST, Instance, Lab, Scenario, ScenarioOptions, WRITE_ACTIONS, wait_for,
};
pub use serde_json::Value;
pub use tokio::process::{Child, Command};

pub const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");
pub const WAIT: Duration = Duration::from_secs(30);

/// How long to wait for a launch, a boot or an exit: [`WAIT`], or 180 s under the `aws` lab
/// profile, where the ASG launches a replacement 30-90 s after it decides and every boot step
/// waits for attachments and lagging reads.
pub fn wait() -> Duration {
    if gateway_lab::aws_profile() {
        Duration::from_secs(180)
    } else {
        WAIT
    }
}

/// Inside the lab's internet, but nobody answers there: a broken uplink as the agent sees it.
pub const SILENT_HOST: &str = "198.51.100.99";

/// Everything the agent told systemd, in order.
pub struct Notify {
    pub path: PathBuf,
    pub messages: Arc<Mutex<Vec<String>>>,
}

impl Notify {
    pub fn new(dir: &str, name: &str) -> Self {
        let path = PathBuf::from(dir).join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push(text);
            }
        });
        Self { path, messages }
    }

    pub fn all(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    pub fn ready(&self) -> bool {
        self.all().iter().any(|m| m.lines().any(|l| l == "READY=1"))
    }

    /// The STATUS= lines, in order.
    pub fn statuses(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|m| m.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_owned))
            .collect()
    }
}

pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
    pub notify: Notify,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_ready(&self) {
        let ready = wait_for(wait(), "READY=1", || async {
            self.notify.ready().then_some(())
        })
        .await;
        if ready.is_err() {
            panic!(
                "no READY=1 within {:?}; statuses {:?}\nlog:\n{}",
                wait(),
                self.notify.statuses(),
                self.log()
            );
        }
    }

    /// The exit code; `None` when a signal ended the process.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        match tokio::time::timeout(wait(), self.child.wait()).await {
            Ok(status) => status.expect("wait").code(),
            Err(_) => panic!(
                "agent still running after {:?}; log:\n{}",
                wait(),
                self.log()
            ),
        }
    }

    /// A failed boot in an ASG: the STATUS= names `reason`, the launch action was ABANDONed,
    /// and the process exited with `code`, or was SIGKILLed with its instance, which the lab
    /// terminates the moment ABANDON lands (as EC2 does, a little later).
    pub async fn assert_abandoned(&mut self, e: &Env, inst: &Instance, code: i32, reason: &str) {
        let exit = self.wait_exit().await;
        let log = self.log();
        assert!(
            exit == Some(code) || exit.is_none(),
            "exit {exit:?}; log:\n{log}"
        );
        assert!(log.contains("boot failed"), "{log}");
        let status = self.notify.statuses().join(" | ");
        assert!(status.contains(reason), "{reason:?} not in {status}");
        assert!(
            status.contains("ABANDONing the launch lifecycle action"),
            "{status}"
        );
        assert_eq!(
            e.lifecycle_result(&inst.instance_id).await.as_deref(),
            Some("ABANDON by CompleteLifecycleAction"),
            "{log}"
        );
    }
}

pub struct Env {
    pub lab: Lab,
    pub sc: Scenario,
}

pub async fn env(opts: ScenarioOptions) -> Env {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the lab tests need root (network namespaces)"
    );
    let mut lab = Lab::start().expect("lab starts");
    let sc = lab.scenario(&opts).await.expect("scenario builds");
    Env { lab, sc }
}

impl Env {
    pub async fn instance(&self, zone: &str) -> Instance {
        self.lab
            .wait_instance(self.sc.zone(zone).az.as_str(), wait())
            .await
            .expect("the ASG launches an instance")
    }

    /// Starts the agent binary inside `inst`'s namespace with `extra` appended to a minimal
    /// config.
    pub fn start_agent(&self, inst: &Instance, name: &str, extra: &str) -> Agent {
        self.start_agent_with(inst, name, extra, &[])
    }

    /// Like [`Self::start_agent`], with extra arguments to `run` (e.g. `--dry-run`).
    pub fn start_agent_with(
        &self,
        inst: &Instance,
        name: &str,
        extra: &str,
        run_args: &[&str],
    ) -> Agent {
        self.start_agent_env(inst, name, extra, run_args, &[], &[])
    }

    /// Like [`Self::start_agent_with`], with extra environment variables (e.g. LD_PRELOAD)
    /// and a command the agent runs under (`wrap`, e.g. setpriv). `GATEWAY_AGENT_BIN` runs
    /// another build of the agent (the soak uses the release one).
    pub fn start_agent_env(
        &self,
        inst: &Instance,
        name: &str,
        extra: &str,
        run_args: &[&str],
        envs: &[(&str, &str)],
        wrap: &[&str],
    ) -> Agent {
        let dir = &self.lab.info.run_dir;
        let config = format!("{dir}/{name}.toml");
        std::fs::write(
            &config,
            format!(
                "version = 1\n[group]\nname = \"{}\"\n{extra}\n",
                self.sc.group
            ),
        )
        .expect("write config");
        let notify = Notify::new(dir, name);
        let log = PathBuf::from(format!("{dir}/{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let ns = inst
            .ns
            .as_deref()
            .expect("a running instance has a namespace");
        let bin = std::env::var("GATEWAY_AGENT_BIN").unwrap_or_else(|_| AGENT.to_owned());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(wrap)
            .args([bin.as_str(), "run", "--config", &config])
            .args(run_args)
            .envs(Lab::instance_env())
            .envs(envs.iter().copied())
            .env("NOTIFY_SOCKET", &notify.path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .kill_on_drop(true);
        Agent {
            child: cmd.spawn().expect("start gateway-agent"),
            log,
            notify,
        }
    }

    /// Where the agent started as `name` by [`Self::start_agent_sock`] listens for commands.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        PathBuf::from(&self.lab.info.run_dir).join(format!("{name}.sock"))
    }

    /// The agent with its own control socket ([`Self::socket_path`]): agents side by side in
    /// one lab must not share one.
    pub fn start_agent_sock(&self, inst: &Instance, name: &str, extra: &str) -> Agent {
        let socket = self.socket_path(name);
        self.start_agent(
            inst,
            name,
            &format!("{extra}\n[control]\nsocket = \"{}\"\n", socket.display()),
        )
    }

    /// Route writes (ReplaceRoute, CreateRoute, DeleteRoute) the API has seen so far.
    pub async fn route_writes(&self) -> usize {
        self.api_calls()
            .await
            .iter()
            .filter(|c| matches!(c.as_str(), "ReplaceRoute" | "CreateRoute" | "DeleteRoute"))
            .count()
    }

    pub async fn route(&self, zone: &str, dest: &str) -> (String, String) {
        let out = self
            .lab
            .ec2()
            .describe_route_tables()
            .route_table_ids(&self.sc.zone(zone).route_table_id)
            .send()
            .await
            .expect("DescribeRouteTables");
        let route = out
            .route_tables()
            .iter()
            .flat_map(|t| t.routes())
            .find(|r| r.destination_cidr_block() == Some(dest))
            .unwrap_or_else(|| panic!("no route {dest} in zone {zone}"));
        (
            route.network_interface_id().unwrap_or("").to_owned(),
            route
                .state()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
        )
    }

    pub async fn asg_state(&self, instance: &str) -> String {
        let out = self
            .lab
            .autoscaling()
            .describe_auto_scaling_instances()
            .instance_ids(instance)
            .send()
            .await
            .expect("DescribeAutoScalingInstances");
        out.auto_scaling_instances()
            .first()
            .and_then(|i| i.lifecycle_state())
            .unwrap_or("(gone)")
            .to_owned()
    }

    pub async fn lifecycle_result(&self, instance: &str) -> Option<String> {
        let all = self.lab.lifecycle().await.expect("lab lifecycle");
        all["history"]
            .as_array()?
            .iter()
            .find(|h| {
                h["instance_id"] == instance
                    && h["transition"]
                        .as_str()
                        .is_some_and(|t| t.contains("LAUNCHING"))
            })
            .map(|h| {
                format!(
                    "{} by {}",
                    h["result"].as_str().unwrap_or("?"),
                    h["how"].as_str().unwrap_or("?")
                )
            })
    }

    pub async fn api_calls(&self) -> Vec<String> {
        self.lab.api_calls().await.expect("lab stats")
    }

    /// A plain instance (no ASG) in `zone`'s public subnet holding `zone`'s ENI: an old gateway.
    pub async fn old_holder(&self, zone: &str) -> String {
        let id = self.plain_instance(zone).await;
        self.lab
            .ec2()
            .attach_network_interface()
            .network_interface_id(&self.sc.zone(zone).eni_id)
            .instance_id(&id)
            .device_index(1)
            .send()
            .await
            .expect("AttachNetworkInterface to the old holder");
        id
    }

    /// A plain instance (no ASG) in `zone`'s public subnet.
    pub async fn plain_instance(&self, zone: &str) -> String {
        let z = self.sc.zone(zone);
        let ec2 = self.lab.ec2();
        let image = ec2.describe_images().send().await.expect("images").images()[0]
            .image_id()
            .unwrap()
            .to_owned();
        let out = ec2
            .run_instances()
            .image_id(image)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .subnet_id(&z.public_subnet_id)
            .send()
            .await
            .expect("RunInstances");
        out.instances()[0].instance_id().unwrap().to_owned()
    }

    pub async fn eni_holder(&self, zone: &str) -> Option<String> {
        let out = self
            .lab
            .ec2()
            .describe_network_interfaces()
            .network_interface_ids(&self.sc.zone(zone).eni_id)
            .send()
            .await
            .expect("DescribeNetworkInterfaces");
        out.network_interfaces()[0]
            .attachment()
            .and_then(|a| a.instance_id())
            .map(str::to_owned)
    }
}

pub fn ip(ns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// What the agent owns in an instance's kernel, as netlink dumps show it.
pub fn kernel_snapshot(ns: &str) -> String {
    [
        ip(ns, &["-j", "rule", "show"]),
        ip(ns, &["-j", "route", "show", "table", "7700"]),
        ip(ns, &["-j", "-4", "addr", "show"]),
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default(),
    ]
    .join("\n")
}
