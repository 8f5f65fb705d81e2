//! Events: every state change (takeover, hand-back, demotion, drain, route repair, reload) is
//! one structured log record with stable field names (`event`, `zone`, `from`, `to`, `reason`),
//! and optionally runs the operator's hook command (keepalived-style notify).
//!
//! The hook gets argv `<command...> <event> <zone> <from> <to> <reason>` and the same values in
//! `GATEWAY_AGENT_EVENT`, `_ZONE`, `_FROM`, `_TO`, `_REASON`. It runs detached from the failover
//! path: spawned, bounded by `events.timeout_s`, killed past it, its failure logged and counted,
//! never waited for by a route change.

use std::process::Stdio;

use tokio::process::Command;
use tracing::{info, warn};

use crate::config::Events;
use crate::metrics;

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// `takeover`, `reclaim`, `failback`, `handover`, `handback`, `demotion`, `drain-start`,
    /// `drain-complete`, `drain-blocked`, `conditional-add`, `conditional-remove`,
    /// `kernel-repair`, `config-reload`.
    pub event: &'a str,
    pub zone: &'a str,
    /// The ENI the routes left (or `-`).
    pub from: &'a str,
    /// The ENI they point at now (or `-`).
    pub to: &'a str,
    pub reason: &'a str,
}

/// Logs the event and, when configured, runs the hook without waiting for it.
pub fn emit(config: &Events, e: &Event<'_>) {
    info!(
        target: "gateway_agent::event",
        event = e.event,
        zone = e.zone,
        from = e.from,
        to = e.to,
        reason = e.reason,
        "event"
    );
    let Some((program, args)) = config.command.split_first() else {
        return;
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .args([e.event, e.zone, e.from, e.to, e.reason])
        .env("GATEWAY_AGENT_EVENT", e.event)
        .env("GATEWAY_AGENT_ZONE", e.zone)
        .env("GATEWAY_AGENT_FROM", e.from)
        .env("GATEWAY_AGENT_TO", e.to)
        .env("GATEWAY_AGENT_REASON", e.reason)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let timeout = config.timeout();
    let event = e.event.to_owned();
    let program = program.clone();
    tokio::spawn(async move {
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(err) => {
                warn!(hook = %program, %event, error = %err, "event hook cannot start");
                metrics::inc("gateway_agent_hook_runs_total", &[("result", "failed")]);
                return;
            }
        };
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => {
                metrics::inc("gateway_agent_hook_runs_total", &[("result", "ok")]);
            }
            Ok(Ok(out)) => {
                warn!(hook = %program, %event, status = %out.status, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "event hook failed");
                metrics::inc("gateway_agent_hook_runs_total", &[("result", "failed")]);
            }
            Ok(Err(err)) => {
                warn!(hook = %program, %event, error = %err, "event hook failed");
                metrics::inc("gateway_agent_hook_runs_total", &[("result", "failed")]);
            }
            Err(_) => {
                // Dropping the future kills the child (kill_on_drop).
                warn!(hook = %program, %event, timeout_s = timeout.as_secs(), "event hook timed out and was killed");
                metrics::inc("gateway_agent_hook_runs_total", &[("result", "timeout")]);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_hook_gets_the_documented_argv_and_environment() {
        let dir = std::env::temp_dir().join(format!("gateway-agent-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let config = Events {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "echo \"$@|$GATEWAY_AGENT_EVENT|$GATEWAY_AGENT_REASON\" > {}",
                    out.display()
                ),
                "hook".into(),
            ],
            timeout_s: 5,
        };
        emit(
            &config,
            &Event {
                event: "takeover",
                zone: "us-east-1b",
                from: "eni-b",
                to: "eni-a",
                reason: "route reads blackhole",
            },
        );
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&out).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            text.trim(),
            "takeover us-east-1b eni-b eni-a route reads blackhole|takeover|route reads blackhole"
        );
        // A hook that hangs is killed at its timeout and never blocks the caller.
        let hang = Events {
            command: vec!["/bin/sleep".into(), "30".into()],
            timeout_s: 1,
        };
        let started = std::time::Instant::now();
        emit(
            &hang,
            &Event {
                event: "x",
                zone: "z",
                from: "-",
                to: "-",
                reason: "r",
            },
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        let _ = std::fs::remove_dir_all(dir);
    }
}
