//! What the lab tests share: the fleet fixture ([`gateway_lab::fleet::Fleet`]) running this
//! build's agent, and readers of an instance's kernel.
#![allow(dead_code, unused_imports)]

pub use std::path::PathBuf;
pub use std::process::Stdio;
pub use std::time::Duration;

pub use gateway_lab::agent::{Agent, Spec};
pub use gateway_lab::fleet::{Failure, Fleet, WAIT, wait};
pub use gateway_lab::{
    Fault, INTERNET_HOST, Instance, Lab, Scenario, ScenarioOptions, WRITE_ACTIONS, wait_for,
};
pub use serde_json::Value;

pub const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");

/// Inside the lab's internet, but nobody answers there: a broken uplink as the agent sees it.
pub const SILENT_HOST: &str = "198.51.100.99";

/// The agent binary the tests run: this build's, or `GATEWAY_AGENT_BIN` (the soak runs the
/// release one).
pub fn agent_bin() -> String {
    std::env::var("GATEWAY_AGENT_BIN").unwrap_or_else(|_| AGENT.to_owned())
}

/// A new lab with `opts`'s VPC, whose agents will run [`agent_bin`].
pub async fn fleet(opts: ScenarioOptions) -> Fleet {
    fleet_with_env(&[], opts).await
}

/// Like [`fleet`], labd started with `env`.
pub async fn fleet_with_env(env: &[(&str, &str)], opts: ScenarioOptions) -> Fleet {
    let mut f = Fleet::new_with_env(env, &opts).await.unwrap();
    f.bin = agent_bin();
    f
}

/// The standard VPC in `zones`.
pub fn zones(zones: &[&str]) -> ScenarioOptions {
    ScenarioOptions {
        zones: zones.iter().map(|z| (*z).to_owned()).collect(),
        ..ScenarioOptions::default()
    }
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub async fn sleep_s(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
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

/// `zone`'s agent's /metrics (HTTP headers and body), fetched inside its namespace: it listens
/// on loopback only, at `port`.
#[allow(dead_code)] // not every test binary asks
pub fn metrics_of(f: &Fleet, zone: &str, port: u16) -> String {
    let ns = f.gateway(zone).inst.ns.clone().expect("namespace");
    gateway_lab::in_netns(&ns, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok::<String, std::io::Error>(text)
    })
    .expect("enter the agent's namespace")
    .expect("GET /metrics in the agent's namespace")
}
