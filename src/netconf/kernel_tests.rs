//! Tests against a real kernel, each in its own throwaway network namespace (run as root).
//!
//! Each test creates `gatest-<pid>-<n>-<nanos>` with `ip netns add` (shelling out to `ip` is
//! fine in tests; the agent itself only speaks netlink), runs the [`NetConf`] code on a
//! dedicated thread that first `setns(2)`s into the namespace and then builds its own
//! current-thread tokio runtime (the netlink socket must be created after the `setns`), and
//! checks the result with `ip -n <ns> -j ...`. A guard deletes the namespace even when the test
//! fails.
//!
//! Sysctls in a `setns`'d thread, as found here (kernel 6.18) and asserted by
//! `sysctls_follow_the_thread_network_namespace`: `/proc/sys/net/...` opened by a thread
//! resolves against **that thread's** network namespace (the sysctl root looks up
//! `current->nsproxy->net_ns`, and proc revalidates cached dentries per namespace), so reading
//! and writing `/proc/sys/net` from the thread that called `setns` sees the new namespace, even
//! after the main thread read the same file in the root namespace. `/proc/self/net` is
//! different: `/proc/self` is the thread-group leader, so it shows the *main thread's*
//! namespace; `/proc/thread-self/net` follows the calling thread. Hence the sysctl code uses
//! plain `std::fs` on the calling thread and never `tokio::fs` (whose blocking-pool threads
//! were not moved).

use std::fs::File;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::{CloneFlags, setns};
use serde_json::Value;

use super::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

const MAC: [u8; 6] = [0x02, 0xa7, 0x00, 0x00, 0x00, 0x01];
const MAC_STR: &str = "02:a7:00:00:00:01";
const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A namespace name plus helpers; cheap to clone into the test thread.
#[derive(Clone)]
struct Ns(String);

impl Ns {
    /// `ip -n <ns> <args>`.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.0];
        all.extend_from_slice(args);
        run(&all)
    }

    /// `ip -n <ns> -j <args>`, parsed.
    fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.ip(&all);
        if out.trim().is_empty() {
            return vec![];
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {all:?}: {e}: {out}"))
    }

    /// Runs a shell script inside the namespace (`ip netns exec`), independent of our code.
    fn sh(&self, script: &str) -> String {
        run(&["ip", "netns", "exec", &self.0, "sh", "-c", script])
    }

    fn sysctl(&self, path: &str) -> String {
        self.sh(&format!("cat /proc/sys/{path}")).trim().to_owned()
    }

    /// A veth pair `name` (with `mac`) / `<name>p` (up).
    fn add_veth(&self, name: &str, mac: &str) {
        let peer = format!("{name}p");
        self.ip(&[
            "link", "add", name, "address", mac, "type", "veth", "peer", "name", &peer,
        ]);
        self.ip(&["link", "set", &peer, "up"]);
    }
}

/// Owns a throwaway network namespace; deletes it on drop, also when the test panics.
struct Netns(Ns);

impl Netns {
    fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("gatest-{}-{n}-{nanos:x}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        Netns(Ns(name))
    }

    fn ns(&self) -> Ns {
        self.0.clone()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0.0])
            .status();
    }
}

/// Runs `body` on a fresh thread inside the namespace, with its own current-thread runtime.
fn in_netns<F, Fut, T>(ns: &Netns, body: F) -> T
where
    F: FnOnce(Ns) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let ns = ns.ns();
    let thread = std::thread::spawn(move || {
        let path = format!("/run/netns/{}", ns.0);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(body(ns))
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

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
        ipv6_forwarding: true,
    }
}

/// A namespace with the "ENI" `eni0` (down, no address) and strict rp_filter, no forwarding.
fn eni_namespace() -> Netns {
    let netns = Netns::new();
    let ns = netns.ns();
    ns.add_veth("eni0", MAC_STR);
    ns.sh("echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter; \
         echo 1 > /proc/sys/net/ipv4/conf/eni0/rp_filter; \
         echo 0 > /proc/sys/net/ipv4/ip_forward; \
         echo 0 > /proc/sys/net/ipv6/conf/all/forwarding");
    netns
}

fn strings(changes: &[Change]) -> Vec<String> {
    changes.iter().map(ToString::to_string).collect()
}

fn table_routes(ns: &Ns) -> Vec<Value> {
    ns.ip_json(&["route", "show", "table", "7700"])
}

fn rules_at(ns: &Ns, pref: u64) -> Vec<Value> {
    ns.ip_json(&["rule", "show"])
        .into_iter()
        .filter(|r| r["priority"].as_u64() == Some(pref))
        .collect()
}

#[test]
fn first_reconcile_applies_everything_second_changes_nothing() {
    let netns = eni_namespace();
    in_netns(&netns, |ns| async move {
        let nc = NetConf::new().await.expect("netlink socket");
        let link = nc.link_by_mac(MAC).await.unwrap().expect("eni0 by MAC");
        assert_eq!(link.name, "eni0");
        assert!(!link.up);

        let changes = nc.reconcile(&desired()).await.expect("first reconcile");
        assert_eq!(
            strings(&changes),
            vec![
                format!("set link eni0 (index {}) up", link.index),
                "add address 10.0.0.50/24 on eni0".to_owned(),
                "replace route 10.0.0.0/24 dev eni0 scope link src 10.0.0.50 table 7700 proto 0xa7"
                    .to_owned(),
                "replace route 0.0.0.0/0 via 10.0.0.1 dev eni0 table 7700 proto 0xa7".to_owned(),
                "add rule from 10.0.0.50/32 lookup 7700 pref 7700".to_owned(),
                "set sysctl net.ipv4.conf.all.rp_filter = 2".to_owned(),
                "set sysctl net.ipv4.conf.eni0.rp_filter = 2".to_owned(),
                "set sysctl net.ipv4.ip_forward = 1".to_owned(),
                "set sysctl net.ipv6.conf.all.forwarding = 1".to_owned(),
            ]
        );

        // Read back with iproute2, independently of our netlink code.
        let links = ns.ip_json(&["link", "show", "eni0"]);
        let flags = links[0]["flags"].as_array().expect("link flags");
        assert!(flags.iter().any(|f| f == "UP"), "eni0 is up: {links:?}");

        let addrs = ns.ip_json(&["-4", "addr", "show", "dev", "eni0"]);
        let infos = addrs[0]["addr_info"].as_array().expect("addr_info");
        assert!(
            infos
                .iter()
                .any(|a| a["local"] == "10.0.0.50" && a["prefixlen"] == 24),
            "address on eni0: {infos:?}"
        );

        let routes = table_routes(&ns);
        assert_eq!(routes.len(), 2, "routes in table 7700: {routes:?}");
        let default = routes
            .iter()
            .find(|r| r["dst"] == "default")
            .expect("default route");
        assert_eq!(default["gateway"], "10.0.0.1");
        assert_eq!(default["dev"], "eni0");
        // iproute2 prints an unnamed protocol in decimal: 167 = 0xa7.
        assert_eq!(default["protocol"], "167", "{default:?}");
        let subnet = routes
            .iter()
            .find(|r| r["dst"] == "10.0.0.0/24")
            .expect("subnet route");
        assert_eq!(subnet["scope"], "link");
        assert_eq!(subnet["prefsrc"], "10.0.0.50");

        let rules = rules_at(&ns, 7700);
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0]["src"], "10.0.0.50");
        assert_eq!(rules[0]["table"], "7700");

        // The rule really steers traffic (an unset rule action would fail this with EINVAL).
        let get = ns.ip(&["route", "get", "192.0.2.7", "from", "10.0.0.50"]);
        assert!(
            get.contains("via 10.0.0.1 dev eni0") && get.contains("table 7700"),
            "route get: {get}"
        );

        assert_eq!(ns.sysctl("net/ipv4/conf/all/rp_filter"), "2");
        assert_eq!(ns.sysctl("net/ipv4/conf/eni0/rp_filter"), "2");
        assert_eq!(ns.sysctl("net/ipv4/ip_forward"), "1");
        assert_eq!(ns.sysctl("net/ipv6/conf/all/forwarding"), "1");

        let again = nc.reconcile(&desired()).await.expect("second reconcile");
        assert_eq!(strings(&again), Vec::<String>::new());
    });
}

#[test]
fn drift_is_restored_change_by_change() {
    let netns = eni_namespace();
    in_netns(&netns, |ns| async move {
        let nc = NetConf::new().await.unwrap();
        nc.reconcile(&desired()).await.expect("first reconcile");

        ns.ip(&["route", "del", "default", "table", "7700"]);
        let changes = nc.reconcile(&desired()).await.unwrap();
        assert_eq!(
            strings(&changes),
            ["replace route 0.0.0.0/0 via 10.0.0.1 dev eni0 table 7700 proto 0xa7"]
        );
        assert_eq!(table_routes(&ns).len(), 2);

        ns.ip(&["rule", "del", "pref", "7700"]);
        let changes = nc.reconcile(&desired()).await.unwrap();
        assert_eq!(
            strings(&changes),
            ["add rule from 10.0.0.50/32 lookup 7700 pref 7700"]
        );
        assert_eq!(rules_at(&ns, 7700).len(), 1);

        ns.sh("echo 0 > /proc/sys/net/ipv4/ip_forward");
        let changes = nc.reconcile(&desired()).await.unwrap();
        assert_eq!(strings(&changes), ["set sysctl net.ipv4.ip_forward = 1"]);

        // A stale route of ours (our protocol, a destination we do not want) is deleted.
        ns.ip(&[
            "route",
            "add",
            "172.16.0.0/12",
            "via",
            "10.0.0.1",
            "dev",
            "eni0",
            "table",
            "7700",
            "proto",
            "167",
        ]);
        let changes = nc.reconcile(&desired()).await.unwrap();
        assert_eq!(
            strings(&changes),
            ["delete route 172.16.0.0/12 via 10.0.0.1 dev eni0 table 7700 proto 0xa7"]
        );
        assert_eq!(table_routes(&ns).len(), 2);

        // Taking the link down makes the kernel flush its IPv4 routes (addresses stay).
        ns.ip(&["link", "set", "eni0", "down"]);
        let index = nc.link_by_mac(MAC).await.unwrap().unwrap().index;
        let changes = nc.reconcile(&desired()).await.unwrap();
        assert_eq!(
            strings(&changes),
            [
                format!("set link eni0 (index {index}) up"),
                "replace route 10.0.0.0/24 dev eni0 scope link src 10.0.0.50 table 7700 proto 0xa7"
                    .to_owned(),
                "replace route 0.0.0.0/0 via 10.0.0.1 dev eni0 table 7700 proto 0xa7".to_owned(),
            ]
        );

        assert_eq!(
            strings(&nc.reconcile(&desired()).await.unwrap()),
            Vec::<String>::new()
        );
    });
}

#[test]
fn foreign_state_is_left_alone_and_remove_takes_only_ours() {
    let netns = eni_namespace();
    in_netns(&netns, |ns| async move {
        let nc = NetConf::new().await.unwrap();
        nc.reconcile(&desired()).await.expect("first reconcile");

        // Someone else's address, rule (another priority) and route (another protocol).
        ns.ip(&["addr", "add", "10.0.0.99/24", "dev", "eni0"]);
        ns.ip(&[
            "rule",
            "add",
            "from",
            "10.0.0.50",
            "lookup",
            "7700",
            "pref",
            "7800",
        ]);
        ns.ip(&[
            "route",
            "add",
            "192.168.0.0/16",
            "via",
            "10.0.0.1",
            "dev",
            "eni0",
            "table",
            "7700",
            "proto",
            "static",
        ]);
        let changes = nc.reconcile(&desired()).await.unwrap();
        assert_eq!(strings(&changes), Vec::<String>::new());

        let removed = nc.remove(&desired()).await.expect("remove");
        assert_eq!(
            strings(&removed),
            [
                "delete rule from 10.0.0.50/32 lookup 7700 pref 7700",
                "delete route 0.0.0.0/0 via 10.0.0.1 dev eni0 table 7700 proto 0xa7",
                "delete route 10.0.0.0/24 dev eni0 scope link src 10.0.0.50 table 7700 proto 0xa7",
            ]
        );
        assert!(rules_at(&ns, 7700).is_empty());
        assert_eq!(rules_at(&ns, 7800).len(), 1, "foreign rule stays");
        let routes = table_routes(&ns);
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0]["dst"], "192.168.0.0/16");
        let addrs = ns.ip_json(&["-4", "addr", "show", "dev", "eni0"]);
        let locals: Vec<&Value> = addrs[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| &a["local"])
            .collect();
        assert_eq!(locals, ["10.0.0.50", "10.0.0.99"], "addresses stay");

        assert_eq!(
            strings(&nc.remove(&desired()).await.unwrap()),
            Vec::<String>::new()
        );
    });
}

#[test]
fn remove_works_after_the_interface_is_gone() {
    let netns = eni_namespace();
    in_netns(&netns, |ns| async move {
        let nc = NetConf::new().await.unwrap();
        nc.reconcile(&desired()).await.expect("first reconcile");
        ns.ip(&["link", "del", "eni0"]);
        let err = nc.observe(&desired()).await.expect_err("no ENI");
        assert_eq!(
            err.to_string(),
            "no network interface with MAC 02:a7:00:00:00:01 in this network namespace"
        );
        // The kernel took the routes with the link; the rule is left for us.
        let removed = nc.remove(&desired()).await.expect("remove");
        assert_eq!(
            strings(&removed),
            ["delete rule from 10.0.0.50/32 lookup 7700 pref 7700"]
        );
        assert!(rules_at(&ns, 7700).is_empty());
    });
}

#[test]
fn wait_link_by_mac_finds_a_link_moved_in_later() {
    let target = Netns::new();
    let source = Netns::new();
    source.ns().add_veth("late0", "02:a7:00:00:00:02");
    let mover = {
        let (source, target) = (source.ns(), target.ns());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            source.ip(&["link", "set", "late0", "netns", &target.0]);
        })
    };
    let (link, waited) = in_netns(&target, |_| async move {
        let nc = NetConf::new().await.unwrap();
        let mac = [0x02, 0xa7, 0, 0, 0, 0x02];
        assert_eq!(nc.link_by_mac(mac).await.unwrap(), None);
        let start = Instant::now();
        let link = nc
            .wait_link_by_mac(mac, Duration::from_secs(10))
            .await
            .expect("link appears");
        (link, start.elapsed())
    });
    mover.join().expect("mover thread");
    assert_eq!(link.name, "late0");
    assert!(waited >= Duration::from_millis(200), "waited {waited:?}");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}

#[test]
fn wait_link_by_mac_times_out_with_a_clear_error() {
    let netns = Netns::new();
    let (err, waited) = in_netns(&netns, |_| async move {
        let nc = NetConf::new().await.unwrap();
        let start = Instant::now();
        let err = nc
            .wait_link_by_mac([0x02, 0xa7, 0, 0, 0, 0x09], Duration::from_millis(200))
            .await
            .expect_err("nothing appears");
        (err, start.elapsed())
    });
    assert_eq!(
        err.to_string(),
        "no network interface with MAC 02:a7:00:00:00:09 appeared within 200ms"
    );
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2));
}

#[test]
fn apply_error_names_the_operation_and_the_object() {
    let netns = eni_namespace();
    let err = in_netns(&netns, |_| async move {
        let nc = NetConf::new().await.unwrap();
        let route = Route {
            dest: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: Some(GW),
            src: None,
            oif: 9999,
            dev: "if#9999".into(),
            table: DEFAULT_TABLE,
            protocol: ROUTE_PROTOCOL,
        };
        nc.apply(&[Change::ReplaceRoute(route)])
            .await
            .expect_err("no such device")
    });
    assert_eq!(
        err.to_string(),
        "netlink: replace route 0.0.0.0/0 via 10.0.0.1 dev if#9999 table 7700 proto 0xa7: \
         Network is unreachable (os error 101)"
    );
}

#[test]
fn sysctls_follow_the_thread_network_namespace() {
    let netns = Netns::new();
    netns.ns().add_veth("sysx0", "02:a7:00:00:00:03");
    // The root namespace's value, read on this (the test's) thread first, so a cached proc
    // dentry would show up as a wrong answer in the namespace thread.
    let root: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let in_ns = (root + 1) % 3;
    netns.ns().sh(&format!(
        "echo {in_ns} > /proc/sys/net/ipv4/conf/all/rp_filter"
    ));

    let (seen, iface_sysctl, thread_self_dev, self_dev) = in_netns(&netns, |_| async move {
        let read = |p: &str| std::fs::read_to_string(p).unwrap();
        (
            read("/proc/sys/net/ipv4/conf/all/rp_filter"),
            std::fs::metadata("/proc/sys/net/ipv4/conf/sysx0/rp_filter").is_ok(),
            read("/proc/thread-self/net/dev"),
            read("/proc/self/net/dev"),
        )
    });
    assert_eq!(
        seen.trim(),
        in_ns.to_string(),
        "/proc/sys/net follows the thread"
    );
    assert!(
        iface_sysctl,
        "the namespace's interfaces appear under /proc/sys/net"
    );
    assert!(
        thread_self_dev.contains("sysx0"),
        "/proc/thread-self/net follows the thread"
    );
    assert!(
        !self_dev.contains("sysx0"),
        "/proc/self/net is the main thread's namespace"
    );
    // And the root namespace is untouched.
    let after: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(after, root);
}

#[test]
fn anyones_change_to_rules_or_routes_is_notified() {
    let netns = Netns::new();
    netns.ns().add_veth("notx0", "02:a7:00:00:00:04");
    let got = in_netns(&netns, |ns| async move {
        let mut changes = NetConf::watch_changes().expect("subscribe");
        // Someone else (a network manager) adds a rule.
        ns.ip(&[
            "rule", "add", "from", "10.9.9.9", "lookup", "9999", "pref", "9999",
        ]);
        tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .ok()
            .flatten()
    });
    assert_eq!(got, Some(()), "a notification within 5 s");
}
