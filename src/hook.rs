//! Events: every state change (takeover, hand-back, demotion, drain, route repair, reload) is
//! one structured log record with stable field names (`event`, `zone`, `from`, `to`, `reason`),
//! and optionally runs the operator's hook command (keepalived-style notify).
//!
//! The hook gets argv `<command...> -- <event> <zone> <from> <to> <reason>` (the `--` because
//! zone names come from tags, which anyone allowed to tag can set to `--config=/x`) and an
//! environment of exactly `PATH` ([`HOOK_PATH`]) and `GATEWAY_AGENT_EVENT`, `_ZONE`, `_FROM`,
//! `_TO`, `_REASON` (nothing of the agent's own environment: credentials, `NOTIFY_SOCKET`).
//! It runs without the agent's powers: no capabilities (ambient, inheritable, permitted,
//! effective cleared; the bounding set emptied where the agent may do so), `no_new_privs`, in
//! a process group of its own. It runs detached from the failover path: spawned, bounded by
//! `events.timeout_s`, its whole process group killed past it (and once it has exited, so
//! nothing it started lingers), its stderr kept up to [`MAX_STDERR`] for the log, its failure
//! logged and counted, never waited for by a route change.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tracing::{info, warn};

use crate::config::Events;
use crate::metrics;

/// The hook's whole `PATH`: the system's programs, nothing writable by the agent's user.
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The part of a hook's stderr kept for the log line; the rest is read and dropped, so a
/// chatty hook neither blocks on a full pipe nor grows the agent's memory.
pub const MAX_STDERR: usize = 4096;
/// After the hook exits, its stderr is read this much longer: a child it left behind may hold
/// the pipe open, and is killed with the group.
const STDERR_AFTER_EXIT: Duration = Duration::from_millis(200);

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
        .arg("--")
        .args([e.event, e.zone, e.from, e.to, e.reason])
        .env_clear()
        .env("PATH", HOOK_PATH)
        .env("GATEWAY_AGENT_EVENT", e.event)
        .env("GATEWAY_AGENT_ZONE", e.zone)
        .env("GATEWAY_AGENT_FROM", e.from)
        .env("GATEWAY_AGENT_TO", e.to)
        .env("GATEWAY_AGENT_REASON", e.reason)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    powerless(&mut cmd);
    let timeout = config.timeout();
    let event = e.event.to_owned();
    let program = program.clone();
    tokio::spawn(async move {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(err) => {
                warn!(hook = %program, %event, error = %err, "event hook cannot start");
                metrics::inc("gateway_agent_hook_runs_total", &[("result", "failed")]);
                return;
            }
        };
        // process_group(0): the group's ID is the hook's PID.
        let group = child.id().and_then(|pid| i32::try_from(pid).ok());
        let stderr = child
            .stderr
            .take()
            .map(|err| tokio::spawn(read_capped(err, MAX_STDERR)));
        let waited = tokio::time::timeout(timeout, child.wait()).await;
        kill_group(group);
        let stderr = match stderr {
            Some(reader) => tokio::time::timeout(STDERR_AFTER_EXIT, reader)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        };
        match waited {
            Ok(Ok(status)) if status.success() => {
                metrics::inc("gateway_agent_hook_runs_total", &[("result", "ok")]);
            }
            Ok(Ok(status)) => {
                warn!(hook = %program, %event, %status, stderr = %stderr.trim(), "event hook failed");
                metrics::inc("gateway_agent_hook_runs_total", &[("result", "failed")]);
            }
            Ok(Err(err)) => {
                warn!(hook = %program, %event, error = %err, "event hook failed");
                metrics::inc("gateway_agent_hook_runs_total", &[("result", "failed")]);
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                warn!(hook = %program, %event, timeout_s = timeout.as_secs(), stderr = %stderr.trim(), "event hook timed out; its process group was killed");
                metrics::inc("gateway_agent_hook_runs_total", &[("result", "timeout")]);
            }
        }
    });
}

/// SIGKILL to the hook's process group: the hook and whatever it started and left there,
/// even a child that ignores SIGTERM.
fn kill_group(group: Option<i32>) {
    if let Some(pgid) = group.filter(|g| *g > 1) {
        // ESRCH: the group is empty already.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Reads `r` to its end, keeping the first `cap` bytes (as text).
async fn read_capped<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> String {
    let mut kept = Vec::with_capacity(cap.min(1024));
    let mut chunk = [0u8; 4096];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Makes the child drop every capability before it runs the hook.
#[allow(unsafe_code)]
fn powerless(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes raw syscalls
    // (prctl, capset) on stack data: async-signal-safe, no allocation, no lock.
    unsafe {
        cmd.pre_exec(drop_capabilities);
    }
}

/// In the child, before exec: empty the bounding set (root may; the unit's user may not, and
/// needs not: its exec gains nothing from the bounding set under no_new_privs), clear the
/// ambient set, set no_new_privs, then set effective, permitted and inheritable to nothing.
#[allow(unsafe_code)]
fn drop_capabilities() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: plain prctl/capset syscalls with integer arguments or pointers to the stack
    // structs above, laid out as the kernel's __user_cap_header_struct/__user_cap_data_struct.
    unsafe {
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                let errno = std::io::Error::last_os_error().raw_os_error();
                if errno == Some(libc::EINVAL) {
                    break; // past the kernel's last capability
                }
                // EPERM: not ours to drop (no CAP_SETPCAP): see above.
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let none = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &header, none.as_ptr()) != 0 {
            // The shipped unit's SystemCallFilter= denies capset (EPERM, from its
            // SystemCallErrorNumber=). An unprivileged agent's child is safe without it: its
            // ambient set is empty and no_new_privs keeps exec from granting file capabilities,
            // so it runs with nothing permitted or effective; only its inheritable set, inert
            // without file capabilities, is left. Root's child must not run with root's powers.
            if libc::geteuid() == 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory of this test process, and the hook's output file in it.
    fn scratch(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("gateway-agent-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        (dir, out)
    }
    use std::time::Duration;

    #[tokio::test]
    async fn the_hook_gets_the_documented_argv_and_environment() {
        let (dir, out) = scratch("hook");
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
            "-- takeover us-east-1b eni-b eni-a route reads blackhole|takeover|route reads blackhole"
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

    async fn wait_file(path: &std::path::Path) -> String {
        for _ in 0..250 {
            if let Ok(text) = std::fs::read_to_string(path)
                && text.ends_with("END\n")
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the hook never wrote {}", path.display());
    }

    fn event() -> Event<'static> {
        Event {
            event: "takeover",
            zone: "--zone-from-a-tag",
            from: "-",
            to: "-",
            reason: "r",
        }
    }

    /// Tests run as root with every capability: the hook must still see none, and nothing of
    /// this process's environment.
    #[tokio::test]
    async fn the_hook_runs_without_capabilities_or_the_agents_environment() {
        let (dir, out) = scratch("hook-caps");
        let config = Events {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "{{ grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; \
                     echo \"pgid=$(ps -o pgid= $$ | tr -d ' ') pid=$$\"; env; echo END; }} > {}",
                    out.display()
                ),
                "hook".into(),
            ],
            timeout_s: 5,
        };
        assert!(std::env::var_os("PATH").is_some() || std::env::var_os("HOME").is_some());
        emit(&config, &event());
        let text = wait_file(&out).await;
        for line in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let value = text
                .lines()
                .find(|l| l.starts_with(line))
                .unwrap_or_else(|| panic!("{line} missing:\n{text}"));
            assert!(value.ends_with("0000000000000000"), "{value}");
        }
        assert!(text.contains("NoNewPrivs:\t1"), "{text}");
        // Its own process group: the group's ID is its PID.
        let ids = text.lines().find(|l| l.starts_with("pgid=")).unwrap();
        let (pgid, pid) = ids.split_once(' ').unwrap();
        assert_eq!(
            pgid.trim_start_matches("pgid="),
            pid.trim_start_matches("pid="),
            "{ids}"
        );
        // The environment: PATH and the event, and what the shell sets itself.
        let names: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(k))
            .collect();
        let want: std::collections::BTreeSet<&str> = [
            "PATH",
            "GATEWAY_AGENT_EVENT",
            "GATEWAY_AGENT_ZONE",
            "GATEWAY_AGENT_FROM",
            "GATEWAY_AGENT_TO",
            "GATEWAY_AGENT_REASON",
        ]
        .into();
        assert_eq!(names, want, "{text}");
        assert!(text.contains(&format!("PATH={HOOK_PATH}")), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_hook_that_hangs_is_killed_with_everything_it_started() {
        let (dir, out) = scratch("hook-group");
        // A child that ignores SIGTERM and would outlive its parent by half a minute.
        let config = Events {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "sh -c 'trap \"\" TERM HUP; sleep 30' & echo \"$!\" > {out}.pid; echo END >> {out}.pid; cp {out}.pid {out}; sleep 30",
                    out = out.display()
                ),
                "hook".into(),
            ],
            timeout_s: 1,
        };
        emit(&config, &event());
        let text = wait_file(&out).await;
        let child: i32 = text.lines().next().unwrap().trim().parse().unwrap();
        let alive = |pid: i32| {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ")
        };
        assert!(alive(child), "the hook's child runs before the timeout");
        let mut gone = false;
        for _ in 0..150 {
            if !alive(child) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the hook's child {child} outlived the hook's timeout");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn stderr_is_kept_up_to_its_cap_and_drained() {
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let chunk = vec![b'e'; 64 * 1024];
            for _ in 0..16 {
                w.write_all(&chunk).await.unwrap();
            }
        });
        let kept = read_capped(r, MAX_STDERR).await;
        assert_eq!(kept.len(), MAX_STDERR);
        writer
            .await
            .expect("1 MB written: the reader drained it all");
    }
}
