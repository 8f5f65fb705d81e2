//! Prometheus metrics: a small registry of counters, gauges and histograms, rendered in the
//! text exposition format (version 0.0.4) for `/metrics`.
//!
//! Every metric is declared once in [`DEFS`] with its type and help, so names and units stay
//! consistent (`_total` counters, `_seconds` histograms) and the README's list is this table.
//! Recording never fails and never blocks for long (one mutex, no I/O): metrics must not slow
//! the failover path down.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// (name, type, help). Label names are documented in the help.
pub const DEFS: &[(&str, Type, &str)] = &[
    (
        "gateway_agent_build_info",
        Type::Gauge,
        "Always 1; labels: version.",
    ),
    (
        "gateway_agent_up",
        Type::Gauge,
        "1 once boot completed (READY=1).",
    ),
    (
        "gateway_agent_self_check_healthy",
        Type::Gauge,
        "1 while the own self-check passes (rise/fall applied).",
    ),
    (
        "gateway_agent_draining",
        Type::Gauge,
        "1 while draining (planned exit or `gateway-agent drain`).",
    ),
    (
        "gateway_agent_at_risk",
        Type::Gauge,
        "1 while an advisory notice (rebalance recommendation, system-maintenance event) says this instance may go.",
    ),
    (
        "gateway_agent_untrusted_enis",
        Type::Gauge,
        "ENIs tagged into the group that discovery does not trust: in another VPC, held by an instance outside the group's Auto Scaling groups, or one too many for a zone.",
    ),
    (
        "gateway_agent_standby",
        Type::Gauge,
        "1 while this gateway waits as its zone's standby for the ENI a live instance holds.",
    ),
    (
        "gateway_agent_drain_blocked",
        Type::Gauge,
        "1 while a drain cannot hand its routes to any healthy peer.",
    ),
    (
        "gateway_agent_paused",
        Type::Gauge,
        "1 while automation is paused (`gateway-agent pause`).",
    ),
    (
        "gateway_agent_zones_carried",
        Type::Gauge,
        "Zones whose routes point at this gateway's ENI.",
    ),
    (
        "gateway_agent_routes_held",
        Type::Gauge,
        "Managed routes pointing at this gateway's ENI.",
    ),
    (
        "gateway_agent_peer_up",
        Type::Gauge,
        "1 when the peer answers ICMP (rise/fall), 0 when down; labels: zone.",
    ),
    (
        "gateway_agent_peer_healthy",
        Type::Gauge,
        "1 when the peer's /health says healthy and not draining; labels: zone.",
    ),
    (
        "gateway_agent_probe_rtt_seconds",
        Type::Histogram,
        "ICMP round trip to a peer's ENI; labels: zone.",
    ),
    (
        "gateway_agent_http_refused_total",
        Type::Counter,
        "Connections to /health or /metrics reset unanswered (reason not-allowed: the source is not on the allow-list; busy, busy-source: the connection cap); labels: endpoint, reason.",
    ),
    (
        "gateway_agent_probe_failures_total",
        Type::Counter,
        "Lost ICMP probes to a peer; labels: zone.",
    ),
    (
        "gateway_agent_route_changes_total",
        Type::Counter,
        "Route-table writes made, by what they were; labels: kind (takeover, reclaim, failback, handover, conditional).",
    ),
    (
        "gateway_agent_decisions_total",
        Type::Counter,
        "Decisions completed; labels: kind, zone.",
    ),
    (
        "gateway_agent_handbacks_total",
        Type::Counter,
        "Zones this gateway carried that went back to another gateway; labels: zone.",
    ),
    (
        "gateway_agent_flaps_total",
        Type::Counter,
        "Changes of carrier observed per zone; labels: zone.",
    ),
    (
        "gateway_agent_detection_seconds",
        Type::Histogram,
        "First lost probe of a peer to the decision to take its zone.",
    ),
    (
        "gateway_agent_decision_to_switched_seconds",
        Type::Histogram,
        "Decision to every route of it confirmed by the API.",
    ),
    (
        "gateway_agent_api_call_duration_seconds",
        Type::Histogram,
        "EC2/Auto Scaling calls, retries included; labels: action, result (ok, error).",
    ),
    (
        "gateway_agent_api_errors_total",
        Type::Counter,
        "Failed EC2/Auto Scaling calls (after the SDK's retries); labels: action, code.",
    ),
    (
        "gateway_agent_api_deferred_total",
        Type::Counter,
        "EC2/Auto Scaling calls the agent's own budget (aws.api_share) held back: skipped until the next cycle (renewals, drift reads) or waited for a token (takeovers, hand-backs, confirmations); labels: action, priority, how.",
    ),
    (
        "gateway_agent_imds_errors_total",
        Type::Counter,
        "Failed IMDS polls for planned exits.",
    ),
    (
        "gateway_agent_kernel_repairs_total",
        Type::Counter,
        "Kernel changes made to repair drift.",
    ),
    (
        "gateway_agent_config_reloads_total",
        Type::Counter,
        "SIGHUP reloads; labels: result (applied, rejected).",
    ),
    (
        "gateway_agent_hook_runs_total",
        Type::Counter,
        "Event hook command runs; labels: result (ok, failed, timeout).",
    ),
];

/// Histogram buckets, in seconds: probe RTTs are sub-millisecond to tens of ms, detection and
/// switching hundreds of ms to seconds; one set covers both.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Key = (String, Vec<(String, String)>);

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    values: BTreeMap<Key, f64>,
    histograms: BTreeMap<Key, Histogram>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    debug_assert!(
        DEFS.iter().any(|(n, ..)| *n == name),
        "undeclared metric {name}"
    );
    (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

pub fn inc(name: &str, labels: &[(&str, &str)]) {
    add(name, labels, 1.0);
}

pub fn add(name: &str, labels: &[(&str, &str)], v: f64) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    *r.values.entry(key(name, labels)).or_default() += v;
}

pub fn set(name: &str, labels: &[(&str, &str)], v: f64) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.values.insert(key(name, labels), v);
}

pub fn observe(name: &str, labels: &[(&str, &str)], seconds: f64) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    let h = r.histograms.entry(key(name, labels)).or_default();
    if h.counts.is_empty() {
        h.counts = vec![0; BUCKETS.len()];
    }
    for (i, le) in BUCKETS.iter().enumerate() {
        if seconds <= *le {
            h.counts[i] += 1;
        }
    }
    h.sum += seconds;
    h.count += 1;
}

fn labels_text(labels: &[(String, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole registry in the text exposition format.
pub fn render() -> String {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    for (name, kind, help) in DEFS {
        let kind_text = match kind {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind_text}");
        if *kind == Type::Histogram {
            for ((n, labels), h) in r.histograms.iter().filter(|((n, _), _)| n == name) {
                for (i, le) in BUCKETS.iter().enumerate() {
                    let l = labels_text(labels, Some(("le", format!("{le}"))));
                    let _ = writeln!(out, "{n}_bucket{l} {}", h.counts[i]);
                }
                let l = labels_text(labels, Some(("le", "+Inf".into())));
                let _ = writeln!(out, "{n}_bucket{l} {}", h.count);
                let l = labels_text(labels, None);
                let _ = writeln!(out, "{n}_sum{l} {}", h.sum);
                let _ = writeln!(out, "{n}_count{l} {}", h.count);
            }
        } else {
            for ((n, labels), v) in r.values.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{} {v}", labels_text(labels, None));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        inc("gateway_agent_flaps_total", &[("zone", "z-test\"1")]);
        add("gateway_agent_flaps_total", &[("zone", "z-test\"1")], 2.0);
        set("gateway_agent_zones_carried", &[], 2.0);
        // Other tests in this process observe detections too: compare before and after.
        let value = |text: &str, line: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(line))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let before = render();
        observe("gateway_agent_detection_seconds", &[], 0.7);
        let text = render();
        assert!(
            text.contains("gateway_agent_flaps_total{zone=\"z-test\\\"1\"} 3"),
            "{text}"
        );
        assert!(text.contains("# TYPE gateway_agent_detection_seconds histogram"));
        for (line, delta) in [
            ("gateway_agent_detection_seconds_bucket{le=\"1\"} ", 1),
            ("gateway_agent_detection_seconds_bucket{le=\"0.5\"} ", 0),
            ("gateway_agent_detection_seconds_count ", 1),
        ] {
            assert_eq!(
                value(&text, line),
                value(&before, line) + delta,
                "{line}\n{text}"
            );
        }
        // Every declared name follows the conventions.
        for (name, kind, _) in DEFS {
            assert!(name.starts_with("gateway_agent_"), "{name}");
            if *kind == Type::Counter {
                assert!(name.ends_with("_total"), "{name}");
            }
            if *kind == Type::Histogram {
                assert!(name.ends_with("_seconds"), "{name}");
            }
        }
    }
}
