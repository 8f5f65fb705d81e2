//! `gateway-agent status`: the running agent's JSON snapshot, rendered for a person at 3 a.m.
//!
//! The agent answers `status` on its control socket with one line of JSON (what `--json`
//! prints unchanged); this module turns it into tables: who carries which zone since when and
//! why, the peers as the probes see them, the route targets, and the last decisions with their
//! evidence. Pure: JSON in, text out.

use std::fmt::Write as _;

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(t) => t.clone(),
        other => other.to_string(),
    }
}

fn yes(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let check = &v["self_check"];
    let _ = writeln!(
        out,
        "gateway {} in {} via {}",
        s(&v["instance_id"]),
        s(&v["zone"]),
        s(&v["eni"])
    );
    let _ = writeln!(
        out,
        "self-check: {} for {} s{} | draining: {} | automation paused: {}",
        if check["healthy"].as_bool() == Some(true) {
            "passing"
        } else {
            "FAILING"
        },
        s(&check["for_s"]),
        match check["detail"].as_str() {
            Some(d) if check["healthy"].as_bool() != Some(true) => format!(" ({d})"),
            _ => String::new(),
        },
        yes(&v["draining"]),
        yes(&v["paused"]),
    );
    let _ = writeln!(
        out,
        "role: {} | ASG lifecycle: {}{}",
        s(&v["role"]),
        s(&v["lifecycle_state"]),
        if v["dry_run"].as_bool() == Some(true) {
            " | DRY-RUN: changes nothing"
        } else {
            ""
        }
    );
    let carries: Vec<String> = v["carries"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "carries: {}",
        if carries.is_empty() {
            "nothing".into()
        } else {
            carries.join(", ")
        }
    );

    let _ = writeln!(out, "\nZONES");
    let _ = writeln!(
        out,
        "{:<14} {:<34} {:>8}  {:<36} note",
        "zone", "carried by", "since", "lease (holder/epoch/ms)"
    );
    for z in v["zones"].as_array().into_iter().flatten() {
        let by = match z["carrier_zone"].as_str() {
            Some(cz) if cz == v["zone"].as_str().unwrap_or_default() => {
                format!("{} (this gateway)", s(&z["carrier"]))
            }
            Some(cz) => format!("{} ({cz})", s(&z["carrier"])),
            None => s(&z["carrier"]),
        };
        let since = z["carrier_since_s"]
            .as_u64()
            .map_or("-".into(), |n| format!("{n} s"));
        let _ = writeln!(
            out,
            "{:<14} {:<34} {:>8}  {:<36} {}",
            s(&z["zone"]),
            by,
            since,
            s(&z["lease"]),
            z["waiting"].as_str().unwrap_or("")
        );
    }

    let _ = writeln!(out, "\nPEERS");
    let _ = writeln!(
        out,
        "{:<14} {:<24} {:<16} {:<8} {:>9}  {:<28} API says",
        "zone", "eni", "address", "icmp", "rtt", "/health"
    );
    for p in v["peers"].as_array().into_iter().flatten() {
        let health = match &p["health"] {
            Value::Null => "no answer".to_owned(),
            h => format!(
                "{}{}, {} ms ago",
                if h["healthy"].as_bool() == Some(true) {
                    "healthy"
                } else {
                    "UNHEALTHY"
                },
                if h["draining"].as_bool() == Some(true) {
                    ", draining"
                } else {
                    ""
                },
                s(&h["age_ms"])
            ),
        };
        let rtt = p["last_rtt_ms"]
            .as_f64()
            .map_or("-".into(), |ms| format!("{ms:.2} ms"));
        let _ = writeln!(
            out,
            "{:<14} {:<24} {:<16} {:<8} {:>9}  {:<28} {}",
            s(&p["zone"]),
            s(&p["eni"]),
            s(&p["ip"]),
            s(&p["icmp"]),
            rtt,
            health,
            p["api_says"].as_str().unwrap_or("")
        );
    }

    let _ = writeln!(out, "\nROUTES");
    for z in v["zones"].as_array().into_iter().flatten() {
        for t in z["tables"].as_array().into_iter().flatten() {
            for r in t["routes"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{:<14} {:<24} {:<18} -> {} ({})",
                    s(&z["zone"]),
                    s(&t["id"]),
                    s(&r["destination"]),
                    s(&r["target"]),
                    s(&r["state"])
                );
            }
        }
    }

    if let Some(rules) = v["conditional"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(out, "\nCONDITIONAL ROUTES");
        for r in rules {
            let _ = writeln!(
                out,
                "{}: probe {} is {}; routes {} {}",
                s(&r["name"]),
                s(&r["probe"]),
                s(&r["target"]),
                r["destinations"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
                if r["active"].as_bool() == Some(true) {
                    "ACTIVE (via this gateway)"
                } else {
                    "inactive"
                }
            );
        }
    }

    let _ = writeln!(out, "\nRECENT DECISIONS (newest last)");
    let decisions = v["decisions"].as_array().cloned().unwrap_or_default();
    if decisions.is_empty() {
        let _ = writeln!(out, "none since the agent started");
    }
    for d in decisions {
        let _ = writeln!(
            out,
            "{} {} {} -> {}: {} ({} routes); evidence: {}",
            crate::events::rfc3339_text(
                i64::try_from(d["at_unix_ms"].as_u64().unwrap_or(0) / 1000).unwrap_or(0)
            ),
            s(&d["kind"]),
            s(&d["zone"]),
            s(&d["target"]),
            s(&d["result"]),
            s(&d["routes"]),
            s(&d["evidence"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_holder_reason_and_peers() {
        let v = serde_json::json!({
            "instance_id": "i-a", "zone": "us-east-1a", "eni": "eni-a",
            "self_check": {"healthy": true, "detail": "passing", "for_s": 12},
            "draining": false, "paused": false, "role": "active+holding", "lifecycle_state": "InService",
            "carries": ["us-east-1a", "us-east-1b"],
            "zones": [
                {"zone": "us-east-1b", "carrier": "eni-a", "carrier_zone": "us-east-1a",
                 "carrier_since_s": 3, "lease": "i-a/4/1795600800000", "recent_changes": 1,
                 "waiting": null,
                 "tables": [{"id": "rtb-b", "routes": [{"destination": "0.0.0.0/0", "target": "eni-a", "state": "active"}]}]}
            ],
            "peers": [{"zone": "us-east-1b", "eni": "eni-b", "ip": "10.0.1.50", "icmp": "down",
                       "last_rtt_ms": null, "health": null, "api_says": "instance i-b is shutting-down"}],
            "decisions": [{"at_unix_ms": 1_795_600_800_000u64, "zone": "us-east-1b", "kind": "takeover",
                           "target": "eni-a", "evidence": "route reads blackhole", "result": "complete", "routes": 1}],
            "conditional": [],
        });
        let text = render(&v);
        assert!(text.contains("eni-a (this gateway)"), "{text}");
        assert!(text.contains("i-a/4/1795600800000"), "{text}");
        assert!(text.contains("instance i-b is shutting-down"), "{text}");
        assert!(
            text.contains("2026-11-25T10:00:00Z takeover us-east-1b -> eni-a: complete (1 routes); evidence: route reads blackhole"),
            "{text}"
        );
        assert!(text.contains("rtb-b"), "{text}");
        assert!(
            text.contains("role: active+holding | ASG lifecycle: InService"),
            "{text}"
        );
        // Whatever the agent sends, rendering never panics.
        let _ = render(&serde_json::json!({}));
        let _ = render(&serde_json::json!([1, 2]));
    }
}
