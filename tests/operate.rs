//! Operating the agent in the lab (as root): `gateway-agent status` during a takeover,
//! `/metrics` read with Prometheus's own text parser, the event hook, manual control, and a
//! SIGHUP reload with a broken file.

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

const METRICS_PORT: u16 = 9701;

struct Two {
    e: Env,
    a: (Instance, Agent, PathBuf),
    b: (Instance, Agent),
    config_a: PathBuf,
}

/// Both gateways, `extra_a` for a's config only.
async fn two(extra_a: &str) -> Two {
    let e = env(ScenarioOptions::default()).await;
    let dir = e.lab.info.run_dir.clone();
    let (ia, ib) = (e.instance("a").await, e.instance("b").await);
    let sock_a = e.socket_path("agent-a");
    let agent_a = e.start_agent_sock(&ia, "agent-a", extra_a);
    let agent_b = e.start_agent_sock(&ib, "agent-b", "");
    agent_a.wait_ready().await;
    agent_b.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Two {
        config_a: PathBuf::from(format!("{dir}/agent-a.toml")),
        e,
        a: (ia, agent_a, sock_a),
        b: (ib, agent_b),
    }
}

impl Two {
    fn logs(&self) -> String {
        format!(
            "--- a ---\n{}\n--- b ---\n{}",
            self.a.1.log(),
            self.b.1.log()
        )
    }

    /// `gateway-agent <args> --socket <a's socket>`: (exit code, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(AGENT)
            .args(args)
            .arg("--socket")
            .arg(&self.a.2)
            .output()
            .expect("run gateway-agent");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn b_via_a(&self) -> bool {
        let (eni, state) = self.e.route("b", "0.0.0.0/0").await;
        eni == self.e.sc.zone("a").eni_id && state == "active"
    }

    async fn wait_b_via_a(&self) {
        let ok = wait_for(Duration::from_secs(10), "b via a", || async {
            self.b_via_a().await.then_some(())
        })
        .await;
        assert!(ok.is_ok(), "{}", self.logs());
    }

    /// a's /metrics, fetched inside a's namespace (it listens on its loopback only).
    fn metrics(&self) -> String {
        let ns = self.a.0.ns.clone().expect("namespace");
        gateway_lab::in_netns(&ns, || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok::<String, std::io::Error>(text)
        })
        .expect("enter a's namespace")
        .expect("GET /metrics in a's namespace")
    }
}

/// Parses with prometheus_client's text parser (Python, in the lab's venv): the samples as
/// `name{labels} value` lines, or the parser's error.
fn prometheus_parse(body: &str) -> Result<Vec<String>, String> {
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n    for s in f.samples:\n        print(s.name + str(sorted(s.labels.items())) + ' ' + repr(s.value))\n";
    let mut child = std::process::Command::new(gateway_lab::python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn sample(samples: &[String], prefix: &str) -> Option<f64> {
    samples
        .iter()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_metrics_and_hook_tell_the_story_of_a_takeover() {
    let dir = std::env::temp_dir().join(format!("gateway-agent-op-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let events = dir.join("events");
    let t = two(&format!(
        "[events]\ncommand = [\"/bin/sh\", \"-c\", \"echo \\\"$@\\\" >> {}\", \"hook\"]\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"",
        events.display()
    ))
    .await;
    let before = prometheus_parse(t.metrics().split("\r\n\r\n").nth(1).unwrap())
        .expect("the agent's /metrics parses");
    assert_eq!(
        sample(&before, "gateway_agent_up["),
        Some(1.0),
        "{before:?}"
    );
    assert_eq!(
        sample(
            &before,
            "gateway_agent_decisions_total[('kind', 'takeover')"
        ),
        None
    );

    t.e.lab.terminate(&t.b.0.instance_id).await.unwrap();
    t.wait_b_via_a().await;

    // status: who holds b, and why.
    let (code, out, err) = t.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    let eni_a = &t.e.sc.zone("a").eni_id;
    assert!(out.contains(&format!("{eni_a} (this gateway)")), "{out}");
    assert!(out.contains("takeover us-east-1b"), "{out}");
    assert!(out.contains("route reads blackhole"), "{out}");
    let (code, json, _) = t.cli(&["status", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(json.trim()).expect("status --json is JSON");
    assert_eq!(v["role"], "active+holding", "{v}");
    assert_eq!(v["lifecycle_state"], "InService", "{v}");
    let zone_b = v["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == "us-east-1b")
        .unwrap();
    assert_eq!(zone_b["carrier"], eni_a.as_str());
    assert!(
        zone_b["lease"]
            .as_str()
            .unwrap_or("")
            .starts_with(&t.a.0.instance_id),
        "{zone_b}"
    );

    // /metrics: the counters moved.
    let after = prometheus_parse(t.metrics().split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        sample(
            &after,
            "gateway_agent_decisions_total[('kind', 'takeover'), ('zone', 'us-east-1b')]"
        ),
        Some(1.0),
        "{after:?}"
    );
    assert!(
        sample(
            &after,
            "gateway_agent_route_changes_total[('kind', 'takeover')]"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &after,
            "gateway_agent_probe_failures_total[('zone', 'us-east-1b')]"
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(sample(&after, "gateway_agent_zones_carried[]"), Some(2.0));
    assert_eq!(
        sample(&after, "gateway_agent_detection_seconds_count[]"),
        Some(1.0)
    );
    assert!(
        sample(
            &after,
            "gateway_agent_api_call_duration_seconds_count[('action', 'ReplaceRoute'), ('result', 'ok')]"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{after:?}"
    );

    // The hook ran with the documented argv: event zone from to reason.
    let eni_b = &t.e.sc.zone("b").eni_id;
    let ran = wait_for(Duration::from_secs(5), "the hook", || async {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        text.contains(&format!(
            "takeover us-east-1b {eni_b} {eni_a} route reads blackhole"
        ))
        .then_some(text)
    })
    .await;
    assert!(
        ran.is_ok(),
        "{:?}\n{}",
        std::fs::read_to_string(&events),
        t.logs()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_every_write_and_resume_lets_it_happen() {
    let t = two("").await;
    let (code, out, err) = t.cli(&["pause"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("paused"), "{out}");
    let before = t.e.route_writes().await;
    t.e.lab.terminate(&t.b.0.instance_id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(t.e.route_writes().await, before, "{}", t.logs());
    assert!(
        t.a.1
            .log()
            .contains("automation paused: would point routes"),
        "{}",
        t.logs()
    );
    let (code, _, _) = t.cli(&["resume"]);
    assert_eq!(code, 0);
    t.wait_b_via_a().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_and_undrain_by_hand() {
    let t = two("[failover]\nhold_down_s = 1").await;
    let (code, out, err) = t.cli(&["drain"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("carries no zone"), "{out}\n{}", t.logs());
    let (eni, _) = t.e.route("a", "0.0.0.0/0").await;
    assert_eq!(eni, t.e.sc.zone("b").eni_id);
    // Drained means drained: it stays out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (eni, _) = t.e.route("a", "0.0.0.0/0").await;
    assert_eq!(eni, t.e.sc.zone("b").eni_id, "{}", t.logs());
    let (code, _, _) = t.cli(&["undrain"]);
    assert_eq!(code, 0);
    // A refusal exits 6 and says why.
    let (code, _, err) = t.cli(&["failback", "--zone", "us-east-1b"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("the agent refused"), "{err}");
    assert!(err.contains("not this gateway's zone"), "{err}");
    let (code, out, err) = t.cli(&["failback"]);
    assert_eq!(code, 0, "{out}{err}\n{}", t.logs());
    let (eni, _) = t.e.route("a", "0.0.0.0/0").await;
    assert_eq!(eni, t.e.sc.zone("a").eni_id);
}

/// No agent behind the socket (not running): every control command exits 5 and names the
/// socket. Needs no lab.
#[test]
fn control_commands_exit_5_when_no_agent_listens() {
    let sock = std::env::temp_dir().join(format!(
        "gateway-agent-operate-{}-none.sock",
        std::process::id()
    ));
    let commands: [&[&str]; 4] = [
        &["status"],
        &["drain"],
        &["failover", "--zone", "us-east-1b"],
        &["failback"],
    ];
    for args in commands {
        let out = std::process::Command::new(AGENT)
            .args(args)
            .arg("--socket")
            .arg(&sock)
            .output()
            .expect("run gateway-agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {err}");
        assert!(err.contains(&sock.display().to_string()), "{args:?}: {err}");
        assert!(err.contains("cannot reach the agent"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_config_keeps_the_old_one_and_says_why() {
    let t = two("").await;
    let good = std::fs::read_to_string(&t.config_a).unwrap();
    std::fs::write(
        &t.config_a,
        format!("{good}\n[failover]\nhold_down_s = \"soon\"\n"),
    )
    .unwrap();
    let pid = t.a.1.child.id().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
    let said = wait_for(Duration::from_secs(5), "the rejection", || async {
        let s = t.a.1.notify.statuses().join(" | ");
        s.contains("config reload REJECTED").then_some(s)
    })
    .await;
    assert!(said.is_ok(), "{:?}\n{}", t.a.1.notify.statuses(), t.logs());
    assert!(said.unwrap().contains("failover.hold_down_s"));
    // Still running the old config: it still takes over a dead peer.
    t.e.lab.terminate(&t.b.0.instance_id).await.unwrap();
    t.wait_b_via_a().await;
    // A valid file is applied.
    std::fs::write(
        &t.config_a,
        format!("{good}\n[failover]\nhold_down_s = 45\n"),
    )
    .unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
    let applied = wait_for(Duration::from_secs(5), "the reload", || async {
        t.a.1.log().contains("config reloaded").then_some(())
    })
    .await;
    assert!(applied.is_ok(), "{}", t.logs());
}

/// Every API action that changes something (the lab counts the calls).
const MUTATING: &[&str] = &[
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "ReplaceRoute",
    "CreateRoute",
    "DeleteRoute",
    "CreateTags",
    "CompleteLifecycleAction",
    "RecordLifecycleActionHeartbeat",
    "SetInstanceHealth",
];

async fn mutating_calls(e: &Env) -> usize {
    e.api_calls()
        .await
        .iter()
        .filter(|c| MUTATING.contains(&c.as_str()))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_decides_and_logs_but_changes_nothing() {
    let e = env(ScenarioOptions::default()).await;
    // b was a real gateway and died; a's fresh instance runs the agent in dry-run: its ENI is
    // free and both zones' routes are black holes, so a real agent would attach, configure,
    // reclaim a's zone and take b's. Nobody else runs an agent: every write would be a's.
    let ib = e.instance("b").await;
    let mut agent_b = e.start_agent_sock(&ib, "agent-b", "");
    agent_b.wait_ready().await;
    e.lab.terminate(&ib.instance_id).await.unwrap();
    let _ = agent_b.wait_exit().await;
    let ia = e.instance("a").await;
    let ns_a = ia.ns.clone().unwrap();
    let kernel_before = whole_kernel(&ns_a);
    let writes_before = mutating_calls(&e).await;
    let agent_a = e.start_agent_with(
        &ia,
        "agent-a",
        &format!(
            "[control]\nsocket = \"{}\"",
            e.socket_path("agent-a").display()
        ),
        &["--dry-run"],
    );
    agent_a.wait_ready().await;
    let said = wait_for(Duration::from_secs(10), "a's dry-run takeover", || async {
        agent_a
            .log()
            .contains("dry-run: would takeover route")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = agent_a.log();
    assert!(said.is_ok(), "{log}");
    assert!(log.contains("dry-run: would attach"), "{log}");
    assert!(log.contains("dry-run: would reclaim"), "{log}");
    assert!(
        log.contains("dry-run: would heartbeat and complete the launch lifecycle action"),
        "{log}"
    );
    assert_eq!(mutating_calls(&e).await, writes_before, "{log}");
    assert_eq!(whole_kernel(&ns_a), kernel_before, "{log}");
    let (eni, state) = e.route("a", "0.0.0.0/0").await;
    assert_eq!(
        (eni.as_str(), state.as_str()),
        (e.sc.zone("a").eni_id.as_str(), "blackhole")
    );
}

/// Links, addresses, every routing table, rules and forwarding: anything the agent could touch.
fn whole_kernel(ns: &str) -> String {
    [
        ip(ns, &["-j", "link", "show"]),
        // IPv4 only: a fresh namespace's IPv6 link-local setup finishes on its own meanwhile.
        ip(ns, &["-j", "-4", "addr", "show"]),
        ip(ns, &["-j", "-4", "route", "show", "table", "all"]),
        ip(ns, &["-j", "-4", "rule", "show"]),
        gateway_lab::in_netns(ns, || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default()
        })
        .unwrap_or_default(),
    ]
    .join("\n")
}
