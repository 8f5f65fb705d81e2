//! The installed package under real systemd, in the lab (as root; issue 18).
//!
//! Zone a's instance boots Debian 12 with systemd in a container (`systemd-nspawn -b`, joined to
//! the instance's network namespace: gateway_lab::container) from the smallest root the .deb
//! can be installed on (minbase, systemd and its Depends: packaging/root.sh). The freshly built
//! .deb goes in with `dpkg -i`; the lab's endpoint goes in the config file and its credentials
//! in a drop-in, as an operator would give them. From then on everything goes through
//! `systemctl`, `journalctl` and `gateway-agent` inside the container; zone b's gateway is an
//! agent run by hand, as in the other lab tests, and a client stream in zone a counts what a
//! user would lose.
//!
//! Skipped (with the reason) only when systemd-nspawn cannot run a container on this machine.
//! The packages come from `make package` (`<target>/packages`), built here when absent.

mod support;

use std::path::Path;

use gateway_lab::container::{
    self, CONFIG, Container, DROP_IN, DROP_IN_TEXT, Out, Packages, config,
};
use support::*;

const UNIT: &str = "gateway-agent";
/// What a stream sends per second: a lost packet is 10 ms of outage.
const RATE: u32 = 100;

/// Zone a's gateway running the package under systemd, zone b's run by hand. Fields drop in
/// order: the container goes before the lab it lives in.
struct Gw {
    ct: Container,
    f: Fleet,
    packages: Packages,
}

/// Which package zone a's instance gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Deb,
    /// Into the same Debian with Debian's rpm, `--nodeps` (its database knows no Debian
    /// package): only Debian's mirror is reachable here, so no RPM distribution's root can be
    /// made. What it proves is the .rpm's files and scriptlets against a real systemd.
    Rpm,
}

/// The packages and the root they install on, or why these tests cannot run here (once per
/// process and format: the tests run side by side).
fn prepare(format: Format) -> Option<(Packages, PathBuf)> {
    type Prepared = std::sync::OnceLock<Option<(Packages, PathBuf)>>;
    static DEB: Prepared = std::sync::OnceLock::new();
    static RPM: Prepared = std::sync::OnceLock::new();
    let (cell, extra): (&Prepared, &[&str]) = match format {
        Format::Deb => (&DEB, &[]),
        // The .deb's Depends stand for the .rpm's Requires (the CA store, kill).
        Format::Rpm => (&RPM, &["rpm"]),
    };
    cell.get_or_init(|| {
        // `<target>/debug/gateway-agent`: the packages are under `<target>/packages`.
        let target = Path::new(AGENT)
            .parent()
            .and_then(Path::parent)
            .expect("the agent binary lives in <target>/<profile>/");
        let packages = Packages::find_or_build(target).unwrap();
        let age = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if age(&packages.deb) < age(Path::new(AGENT)) {
            eprintln!(
                "note: {} is older than this build's agent; `make package` for a fresh one",
                packages.deb.display()
            );
        }
        let image = container::image(&packages.deb, extra).unwrap();
        if let Some(why) = container::cannot_run(&image) {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        Some((packages, image))
    })
    .clone()
}

/// `rpm` inside the Debian root: its own database where RPM systems keep it, and past the
/// checks that guard a Debian system's packages (see [`Format::Rpm`]).
const RPM: [&str; 5] = [
    "rpm",
    "--dbpath",
    "/var/lib/rpm",
    "--nodeps",
    "--force-debian",
];

/// A lab with both zones, b's agent READY (unless `peer` is false), and a's instance booted
/// with systemd, the .deb installed and configured with `extra` but the service not started.
async fn gateway(extra: &str, peer: bool) -> Option<Gw> {
    gateway_from(Format::Deb, extra, peer).await
}

async fn gateway_from(format: Format, extra: &str, peer: bool) -> Option<Gw> {
    let caps = ["CAP_NET_ADMIN", "CAP_NET_RAW"];
    gateway_with(format, extra, peer, &caps, ScenarioOptions::default()).await
}

/// Like [`gateway_from`], the container given `capabilities`, the lab's VPC built with `opts`.
async fn gateway_with(
    format: Format,
    extra: &str,
    peer: bool,
    capabilities: &[&str],
    opts: ScenarioOptions,
) -> Option<Gw> {
    let (packages, image) = prepare(format)?;
    let mut f = fleet(opts).await;
    let (ia, ib) = (
        f.instance("a").await.unwrap(),
        f.instance("b").await.unwrap(),
    );
    if peer {
        f.spawn("b", ib, Spec::new()).unwrap();
        f.ready("b").await.unwrap();
    }
    let ns = ia.ns.clone().expect("a running instance has a namespace");
    let name = format!("gw-{}-a", f.lab.lab_id());
    let ct = Container::boot_with(
        &image,
        &ns,
        Path::new(&f.lab.info.run_dir),
        &name,
        capabilities,
    )
    .await
    .unwrap();
    eprintln!("figure: container booted in {:?}", ct.booted_in);
    match format {
        Format::Deb => {
            let deb = ct.copy_in(&packages.deb).unwrap();
            let install = ct.run(&["dpkg", "-i", &deb]).unwrap();
            assert!(install.ok(), "dpkg -i {deb}: {install}");
            // The packaged config is unconfigured on purpose: installed and enabled, not
            // started.
            assert!(install.stderr.contains("not started"), "{install}");
            assert_eq!(ct.show(UNIT, "UnitFileState").unwrap(), "enabled");
        }
        Format::Rpm => {
            let rpm = ct.copy_in(&packages.rpm).unwrap();
            ct.must(&[RPM[0], RPM[1], RPM[2], "--initdb"]).unwrap();
            let mut argv = RPM.to_vec();
            argv.extend(["-i", &rpm]);
            let install = ct.run(&argv).unwrap();
            assert!(install.ok(), "rpm -i {rpm}: {install}");
            // %post made the service's user (systemd-sysusers) and told systemd of the unit.
            ct.must(&["getent", "passwd", "gateway-agent"]).unwrap();
            assert_eq!(ct.show(UNIT, "LoadState").unwrap(), "loaded");
        }
    }
    assert_eq!(ct.show(UNIT, "ActiveState").unwrap(), "inactive");
    ct.write(CONFIG, &config(&f.sc.group, extra)).unwrap();
    ct.write(DROP_IN, DROP_IN_TEXT).unwrap();
    ct.must(&["gateway-agent", "check-config"]).unwrap();
    ct.must(&["systemctl", "daemon-reload"]).unwrap();
    Some(Gw { ct, f, packages })
}

impl Gw {
    /// Everything that tells why a check failed: the unit's status and journal, every hand-run
    /// agent's log.
    fn story(&self) -> String {
        let status = self
            .ct
            .systemctl(&["status", "--no-pager", "-l", UNIT])
            .map(|o| o.stdout)
            .unwrap_or_default();
        let journal = self.ct.journal(&["-u", UNIT]).unwrap_or_default();
        format!(
            "--- systemctl status\n{status}--- journalctl -u {UNIT}\n{journal}\n{}",
            self.f.logs()
        )
    }

    fn systemctl(&self, args: &[&str]) -> Out {
        self.ct.systemctl(args).unwrap()
    }

    fn show(&self, prop: &str) -> String {
        self.ct.show(UNIT, prop).unwrap()
    }

    /// `systemctl start` (which returns once the agent sent READY=1): how long from exec to
    /// READY, by systemd's own clock.
    fn start(&self) -> Duration {
        let out = self.systemctl(&["start", UNIT]);
        assert!(out.ok(), "systemctl start: {out}\n{}", self.story());
        self.ready_time()
    }

    /// From the main process's exec to READY=1, as systemd timed them.
    fn ready_time(&self) -> Duration {
        let us = |prop: &str| self.show(prop).parse::<u64>().unwrap_or(0);
        Duration::from_micros(
            us("ActiveEnterTimestampMonotonic")
                .saturating_sub(us("ExecMainStartTimestampMonotonic")),
        )
    }

    fn main_pid(&self) -> String {
        self.show("MainPID")
    }

    /// The Status: line of `systemctl status`, what an operator sees.
    fn status_line(&self) -> Option<String> {
        let out = self.ct.systemctl(&["status", "--no-pager", UNIT]).ok()?;
        out.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Status: "))
            .map(|s| s.trim_matches('"').to_owned())
    }

    /// Waits until the agent, alone in the lab, has taken over zone b: its routes read
    /// blackhole at the ENI of a gateway that never booted, which is taken once the probe finds
    /// that ENI silent (or reads agree for 2 s).
    async fn took_over_b(&self) {
        let took = wait_for(secs(15), "the takeover of zone b", || async {
            self.status_line().filter(|s| s.contains("took over"))
        })
        .await;
        assert!(took.is_ok(), "{}", self.story());
    }

    /// `gateway-agent <args>` inside, as root.
    fn cli(&self, args: &[&str]) -> Out {
        let mut argv = vec!["gateway-agent"];
        argv.extend_from_slice(args);
        self.ct.run(&argv).unwrap()
    }

    /// The unit's journal as an operator reads it first.
    fn journal(&self) -> String {
        self.ct.journal(&["-u", UNIT]).unwrap()
    }
}

/// An IMDS that refuses every request (403): the agent must get as far as asking it, which
/// takes an HTTP client, and stop on the answer at once.
fn refusing_imds() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    port
}

/// Issue 18: on Debian's minbase (no ca-certificates) the agent died before asking IMDS
/// anything ("IMDS: cannot build the HTTP client: builder error"). IMDS is plain HTTP: no CA
/// store may be needed for it. No lab, no root: a process whose CA store is empty.
#[test]
fn imds_needs_no_ca_store() {
    let dir = std::env::temp_dir().join(format!("gateway-agent-noca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[group]\nname = \"lab\"\n[imds]\nendpoint = \"http://127.0.0.1:{}\"\ntimeout_ms = 500\n[control]\nsocket = \"{}\"\n",
            refusing_imds(),
            dir.join("control.sock").display(),
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(AGENT)
        .args(["run", "--config"])
        .arg(&config)
        // Where rustls and OpenSSL look for CA roots: nowhere, as on a minimal image.
        .env("SSL_CERT_FILE", dir.join("no-such-file"))
        .env("SSL_CERT_DIR", dir.join("no-such-dir"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("cannot build the HTTP client"), "{stderr}");
    assert!(stderr.contains("403"), "IMDS was not asked: {stderr}");
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(started.elapsed() < secs(10), "{:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(dir);
}

/// `systemctl start` blocks until READY=1, which comes only once the ENI is claimed and the
/// zone's routes point at it; meanwhile `systemctl status` shows each boot step. The journal
/// reads on its own, its fields are there for machines, and the unit's exposure is the README's.
#[tokio::test(flavor = "multi_thread")]
async fn systemctl_start_is_ready_once_the_zone_is_carried_and_says_each_step() {
    let Some(gw) = gateway("", false).await else {
        return;
    };
    let f = &gw.f;
    let inst = f.instance("a").await.unwrap();
    let eni = f.eni("a");
    // Each boot step held long enough for `systemctl status` to be read during it: IMDS
    // silent at first, then one slow answer per step's own API call.
    f.lab
        .imds_fault(&inst.instance_id, "refuse", 0)
        .await
        .unwrap();
    for action in [
        "DescribeLifecycleHooks",
        "AttachNetworkInterface",
        "CompleteLifecycleAction",
    ] {
        f.lab
            .inject(&Fault::latency(action, 1_500, Some(1)))
            .await
            .unwrap();
    }
    let start = gw.systemctl(&["start", "--no-block", UNIT]);
    assert!(start.ok(), "{start}");
    let mut seen: Vec<String> = Vec::new();
    let mut imds_back = false;
    let began = std::time::Instant::now();
    loop {
        let state = gw.show("ActiveState");
        if let Some(status) = gw.status_line()
            && seen.last() != Some(&status)
        {
            seen.push(status);
        }
        if !imds_back && seen.iter().any(|s| s == "waiting for IMDS") {
            tokio::time::sleep(secs(1)).await;
            f.lab.imds_fault(&inst.instance_id, "ok", 0).await.unwrap();
            imds_back = true;
        }
        if state == "active" {
            break;
        }
        assert!(
            state == "activating" && began.elapsed() < secs(60),
            "state {state} after {:?}; statuses seen: {seen:?}\n{}",
            began.elapsed(),
            gw.story()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("statuses seen in systemctl status: {seen:#?}");
    for step in [
        "waiting for IMDS".to_owned(),
        "looking up the launch lifecycle action".to_owned(),
        format!("claiming {eni}"),
        "completing the launch lifecycle action".to_owned(),
    ] {
        assert!(seen.contains(&step), "{step:?} not in {seen:?}");
    }
    // READY's own STATUS ("carrying us-east-1a via eni-...; ready in ...") lasts only until
    // the agent, alone in the lab, takes over zone b moments later.
    let last = seen.last().unwrap();
    assert!(last.starts_with("carrying us-east-1a"), "{seen:?}");
    // READY came after the claim and the routes, in the journal's own order.
    let journal = gw
        .ct
        .journal(&["-u", UNIT, "-o", "short-monotonic"])
        .unwrap();
    let at = |what: &str| {
        journal
            .lines()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what:?} not in the journal:\n{journal}"))
    };
    assert!(at("attached eni=") < at("every managed route of the zone points at"));
    assert!(at("every managed route of the zone points at") < at("boot complete"));
    assert!(at("boot complete") < at("Started gateway-agent"));
    assert_eq!(
        f.eni_holder("a").await.unwrap(),
        Some(inst.instance_id.clone())
    );
    assert!(f.route_is("a", "a").await.unwrap(), "{}", gw.story());
    assert_eq!(
        f.lifecycle_result(&inst.instance_id, "LAUNCHING")
            .await
            .unwrap()
            .as_deref(),
        Some("CONTINUE by CompleteLifecycleAction")
    );

    // The takeover's event is the structured event the journal must carry.
    gw.took_over_b().await;
    journal_reads_on_its_own(&gw);
    exposure_is_the_readmes(&gw);
}

/// Every line of `journalctl -u gateway-agent` from the agent carries its details in the
/// message; the same details stay in fields for machines (`-o json`).
fn journal_reads_on_its_own(gw: &Gw) {
    let plain = gw.journal();
    if std::env::var_os("GATEWAY_TEST_LOGS").is_some() {
        eprintln!("--- journalctl -u {UNIT}\n{plain}");
    }
    for bare in [
        "]: claim\n",
        "]: kernel changed\n",
        "]: event\n",
        "]: boot failed\n",
    ] {
        assert!(!plain.contains(bare), "a bare {bare:?} line:\n{plain}");
    }
    for line in ["claim eni=", "kernel changed change=", "reason=boot"] {
        assert!(plain.contains(line), "{line:?} not in:\n{plain}");
    }
    let json = gw
        .ct
        .journal(&["-u", UNIT, "-o", "json", "SYSLOG_IDENTIFIER=gateway-agent"])
        .unwrap();
    let mut entries = 0;
    let mut fields = 0;
    for line in json.lines() {
        let entry: Value = serde_json::from_str(line).unwrap();
        let message = entry["MESSAGE"].as_str().unwrap_or_default();
        entries += 1;
        for (key, value) in entry.as_object().unwrap() {
            let Some(name) = key.strip_prefix("F_") else {
                continue;
            };
            fields += 1;
            let value = value.as_str().unwrap_or_default();
            let name = name.to_ascii_lowercase();
            assert!(
                message.contains(&format!("{name}={value}"))
                    || message.contains(&format!("{name}={value:?}")),
                "{key}={value:?} is not in the message {message:?}"
            );
        }
    }
    assert!(
        entries >= 10 && fields >= 10,
        "{entries} entries, {fields} fields:\n{json}"
    );
    assert!(
        json.contains("\"F_EVENT\":\"") || json.contains("\"F_EVENT\" : \""),
        "no structured event in -o json:\n{json}"
    );
}

/// `systemd-analyze security` inside the container: the exposure the README states.
fn exposure_is_the_readmes(gw: &Gw) {
    let readme = std::fs::read_to_string(container::repo_root().join("README.md")).unwrap();
    let stated = readme
        .lines()
        .find(|l| l.starts_with("| `systemd-analyze security` |"))
        .and_then(|l| l.split("exposure ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("README states the exposure in its packaging table")
        .to_owned();
    let out = gw
        .ct
        .must(&["systemd-analyze", "security", "--no-pager", UNIT])
        .unwrap();
    let measured = out
        .stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for gateway-agent.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    eprintln!("figure: systemd-analyze security exposure {measured} (README: {stated})");
    assert_eq!(measured, stated, "{}", out.stdout);
}

/// A start that cannot succeed says why and what to do, where an operator looks first: in a
/// container without CAP_NET_ADMIN netlink refuses the agent even as root (issue 18).
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_start_names_the_cause_and_the_fix() {
    // Without a launch hook: an ABANDONed launch would have the lab terminate the instance,
    // and the container with it, before the journal is read.
    let opts = ScenarioOptions {
        hooks: false,
        ..ScenarioOptions::default()
    };
    let Some(gw) = gateway_with(Format::Deb, "", false, &["CAP_NET_RAW"], opts).await else {
        return;
    };
    let out = gw.systemctl(&["start", UNIT]);
    assert!(!out.ok(), "{out}\n{}", gw.story());
    let journal = gw.journal();
    let failed = journal
        .lines()
        .find(|l| l.contains("boot failed"))
        .unwrap_or_else(|| panic!("no boot failure in the journal:\n{journal}"));
    eprintln!("journal: {failed}");
    assert!(failed.contains("Operation not permitted"), "{failed}");
    assert!(failed.contains("needs CAP_NET_ADMIN"), "{failed}");
    assert!(
        failed.contains("in a container give the container CAP_NET_ADMIN"),
        "{failed}"
    );
    let status = gw.status_line().unwrap_or_default();
    assert!(status.contains("needs CAP_NET_ADMIN"), "{status}");
}

/// A frozen agent (SIGSTOP) stops petting the watchdog: systemd kills it and starts it again,
/// and the zone's traffic keeps flowing meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn the_watchdog_restarts_a_frozen_agent_while_the_zone_keeps_flowing() {
    let Some(gw) = gateway("", true).await else {
        return;
    };
    let ready = gw.start();
    let f = &gw.f;
    // b hears a's /health before anything happens.
    sleep_s(2.0).await;
    let pid = gw.main_pid();
    let restarts = gw.show("NRestarts");
    let writes = f.route_writes().await.unwrap();
    let stream = f.lab.stream_start("a", RATE).await.unwrap();
    sleep_s(1.0).await;
    let frozen = std::time::Instant::now();
    let out = gw.systemctl(&["kill", "--kill-who=main", "--signal=SIGSTOP", UNIT]);
    assert!(out.ok(), "{out}");
    let back = wait_for(
        secs(40),
        "the agent restarted by systemd and READY",
        || async {
            (gw.show("NRestarts") != restarts
                && gw.show("ActiveState") == "active"
                && gw.main_pid() != pid)
                .then_some(())
        },
    )
    .await;
    assert!(back.is_ok(), "{}", gw.story());
    let restart = frozen.elapsed();
    sleep_s(1.0).await;
    let report = f.lab.stream_stop(stream).await.unwrap();
    let journal = gw.journal();
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    // A frozen agent's kernel still forwards: nobody needs to move the zone, and nothing did.
    assert_eq!(report.lost, 0, "{report:?}\n{}", gw.story());
    assert!(f.route_is("a", "a").await.unwrap(), "{}", gw.story());
    let moved = f.route_writes().await.unwrap() - writes;
    eprintln!(
        "figure: watchdog frozen→restarted+READY {:.1} s (WatchdogSec=10s, RestartSec=2s), \
         lost {} of {}, route writes {moved}, first READY {:.0} ms",
        restart.as_secs_f64(),
        report.lost,
        report.sent,
        ready.as_secs_f64() * 1e3
    );
    assert_eq!(moved, 0, "{}", gw.story());
}

/// `systemctl reload`: a valid file is applied (its new event hook runs for the reload
/// itself), a broken one is rejected with its errors in the journal and the old config keeps
/// running in the same process.
#[tokio::test(flavor = "multi_thread")]
async fn systemctl_reload_applies_a_valid_file_and_rejects_a_broken_one() {
    let Some(gw) = gateway("", false).await else {
        return;
    };
    gw.start();
    // Zone b's takeover sets its own STATUS: it must come before the reload's.
    gw.took_over_b().await;
    let pid = gw.main_pid();
    let group = gw.f.sc.group.clone();
    // The hook writes where the unit lets the agent write: its StateDirectory=.
    let hook = "[events]\ncommand = [\"/bin/sh\", \"-c\", \"echo \\\"$@\\\" >> /var/lib/gateway-agent/events\", \"hook\"]";
    gw.ct.write(CONFIG, &config(&group, hook)).unwrap();
    let out = gw.systemctl(&["reload", UNIT]);
    assert!(out.ok(), "{out}");
    let applied = wait_for(secs(10), "the new hook's config-reload event", || async {
        gw.ct
            .sh("cat /var/lib/gateway-agent/events 2>/dev/null")
            .ok()
            .filter(|o| o.stdout.contains("config-reload - - - applied"))
    })
    .await;
    assert!(applied.is_ok(), "{}", gw.story());
    assert_eq!(
        gw.status_line().as_deref(),
        Some("config reloaded from /etc/gateway-agent/config.toml")
    );

    // Two bad values: both named, nothing applied.
    gw.ct
        .write(
            CONFIG,
            &config(&group, "[imds]\ntimeout_ms = 0\n[drain]\ngrace_s = 600"),
        )
        .unwrap();
    let check = gw.cli(&["check-config"]);
    assert_eq!(check.code, 2, "{check}");
    let out = gw.systemctl(&["reload", UNIT]);
    assert!(out.ok(), "{out}");
    let rejected = wait_for(secs(10), "the rejection in the journal", || async {
        let journal = gw.journal();
        journal
            .contains("config reload rejected")
            .then_some(journal)
    })
    .await
    .unwrap_or_else(|_| panic!("{}", gw.story()));
    let line = rejected
        .lines()
        .find(|l| l.contains("config reload rejected"))
        .unwrap();
    assert!(line.contains("imds.timeout_ms"), "{line}");
    assert!(line.contains("drain.grace_s"), "{line}");
    let status = gw.status_line().unwrap_or_default();
    assert!(status.starts_with("config reload REJECTED"), "{status}");
    assert_eq!(gw.show("ActiveState"), "active");
    assert_eq!(gw.main_pid(), pid, "the reload must not restart the agent");
    let status = gw.cli(&["status"]);
    assert!(status.ok(), "{status}");
    assert!(status.stdout.contains(&gw.f.eni("a")), "{status}");
}

/// `systemctl stop`: the zone is handed to the peer before the process ends; the client loses
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn systemctl_stop_hands_the_zone_over_first() {
    let Some(gw) = gateway("[drain]\ngrace_s = 1", true).await else {
        return;
    };
    let ready = gw.start();
    let f = &gw.f;
    sleep_s(2.0).await;
    let stream = f.lab.stream_start("a", RATE).await.unwrap();
    sleep_s(1.0).await;
    let began = std::time::Instant::now();
    let out = gw.systemctl(&["stop", UNIT]);
    let took = began.elapsed();
    assert!(out.ok(), "{out}");
    assert_eq!(gw.show("ActiveState"), "inactive", "{}", gw.story());
    // Checked once the process is gone: the hand-over happened before.
    assert!(f.route_is("a", "b").await.unwrap(), "{}", gw.story());
    sleep_s(1.0).await;
    let report = f.lab.stream_stop(stream).await.unwrap();
    assert_eq!(report.lost, 0, "{report:?}\n{}", gw.story());
    let journal = gw.journal();
    assert!(journal.contains("drain complete"), "{journal}");
    assert_eq!(gw.show("Result"), "success", "{}", gw.story());
    eprintln!(
        "figure: systemctl stop {:.1} s (drain.grace_s = 1), lost {} of {}; READY under systemd {:.0} ms",
        took.as_secs_f64(),
        report.lost,
        report.sent,
        ready.as_secs_f64() * 1e3
    );
}

/// `dpkg -i` of the next revision while the client stream runs: the new package restarts the
/// agent in place (the restart marker), which moves no route and loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_dpkg_upgrade_restarts_in_place_without_a_route_write() {
    upgrade_in_place(Format::Deb).await;
}

/// The same with `rpm -U` of the next release (its %post restarts in place).
#[tokio::test(flavor = "multi_thread")]
async fn an_rpm_upgrade_restarts_in_place_without_a_route_write() {
    upgrade_in_place(Format::Rpm).await;
}

async fn upgrade_in_place(format: Format) {
    let Some(gw) = gateway_from(format, "", true).await else {
        return;
    };
    gw.start();
    let f = &gw.f;
    sleep_s(2.0).await;
    let pid = gw.main_pid();
    let writes = f.route_writes().await.unwrap();
    let (package, mut argv) = match format {
        Format::Deb => (&gw.packages.deb_upgrade, vec!["dpkg", "-i"]),
        Format::Rpm => (&gw.packages.rpm_upgrade, [&RPM[..], &["-U"]].concat()),
    };
    let package = gw.ct.copy_in(package).unwrap();
    argv.push(&package);
    let stream = f.lab.stream_start("a", RATE).await.unwrap();
    sleep_s(1.0).await;
    let began = std::time::Instant::now();
    let out = gw.ct.run(&argv).unwrap();
    let took = began.elapsed();
    assert!(out.ok(), "{}: {out}", argv.join(" "));
    sleep_s(1.0).await;
    let report = f.lab.stream_stop(stream).await.unwrap();
    let version = match format {
        Format::Deb => {
            gw.ct
                .must(&["dpkg-query", "-W", "-f=${Version}", "gateway-agent"])
                .unwrap()
                .stdout
        }
        Format::Rpm => {
            gw.ct
                .must(&[
                    RPM[0],
                    RPM[1],
                    RPM[2],
                    "-q",
                    "--qf",
                    "%{RELEASE}",
                    "gateway-agent",
                ])
                .unwrap()
                .stdout
        }
    };
    assert!(version.ends_with('2'), "{version}");
    assert_eq!(gw.show("ActiveState"), "active", "{}", gw.story());
    assert_ne!(gw.main_pid(), pid, "the upgrade must run the new binary");
    let journal = gw.journal();
    assert!(journal.contains("restart marker present"), "{journal}");
    assert!(
        gw.ct
            .run(&["test", "-e", "/run/gateway-agent/restart"])
            .unwrap()
            .code
            != 0,
        "a marker left behind would skip the hand-over at the next real stop"
    );
    let moved = f.route_writes().await.unwrap() - writes;
    eprintln!(
        "figure: {} upgrade {:.1} s, lost {} of {}, route writes {moved}",
        argv[..argv.len() - 1].join(" "),
        took.as_secs_f64(),
        report.lost,
        report.sent
    );
    assert_eq!(moved, 0, "{}", gw.story());
    assert_eq!(report.lost, 0, "{report:?}\n{}", gw.story());
    assert!(f.route_is("a", "a").await.unwrap());
}

/// `control.group`: an operators' group gets `gateway-agent status` from the service as
/// shipped, and is refused what changes routes.
#[tokio::test(flavor = "multi_thread")]
async fn an_operators_group_gets_status_under_the_shipped_filter() {
    let Some(gw) = gateway("[control]\ngroup = \"adm\"", false).await else {
        return;
    };
    gw.ct
        .write(
            "/etc/systemd/system/gateway-agent.service.d/group.conf",
            "[Service]\nSupplementaryGroups=adm\n",
        )
        .unwrap();
    gw.ct.must(&["systemctl", "daemon-reload"]).unwrap();
    gw.ct
        .must(&["useradd", "--no-create-home", "-G", "adm", "ops"])
        .unwrap();
    gw.start();
    sleep_s(2.0).await;
    assert_eq!(gw.show("ActiveState"), "active", "{}", gw.story());
    assert_eq!(gw.show("NRestarts"), "0", "{}", gw.story());
    let out = gw
        .ct
        .run(&[
            "setpriv",
            "--reuid=ops",
            "--regid=ops",
            "--init-groups",
            "gateway-agent",
            "status",
        ])
        .unwrap();
    assert!(out.ok(), "{out}\n{}", gw.story());
    let refused = gw
        .ct
        .run(&[
            "setpriv",
            "--reuid=ops",
            "--regid=ops",
            "--init-groups",
            "gateway-agent",
            "pause",
        ])
        .unwrap();
    assert!(!refused.ok(), "a group member paused the agent: {refused}");
}
