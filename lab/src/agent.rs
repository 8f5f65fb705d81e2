//! One gateway-agent process in an instance's namespace, as systemd runs it from the AMI: its
//! config file, its log, and a `NOTIFY_SOCKET` read for the process's whole life. The lab tests,
//! the fault matrix and the benches all start the agent through [`Agent::spawn`] (usually by
//! way of [`crate::fleet::Fleet`]).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use crate::Lab;
use crate::fleet::Failure;

/// How an agent is started, besides its namespace and config: its name, more config, and how
/// its process is run. Built with the methods, e.g. `Spec::new().extra("[drain]\ngrace_s = 1")`.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// The name of its files under the lab's run directory (`<name>.toml`, `.log`, `.notify`,
    /// `.sock`); [`crate::fleet::Fleet`] names it after its zone when it is `None`.
    pub name: Option<String>,
    /// Appended to the config.
    pub extra: String,
    /// After `run --config <file>` (e.g. `--dry-run`).
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// A command the agent runs under (e.g. setpriv ... --).
    pub wrap: Vec<String>,
}

impl Spec {
    pub fn new() -> Spec {
        Spec::default()
    }

    pub fn name(mut self, name: impl Into<String>) -> Spec {
        self.name = Some(name.into());
        self
    }

    pub fn extra(mut self, extra: impl Into<String>) -> Spec {
        self.extra = extra.into();
        self
    }

    pub fn args(mut self, args: &[&str]) -> Spec {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Spec {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn wrap(mut self, wrap: &[&str]) -> Spec {
        self.wrap.extend(wrap.iter().map(|a| (*a).to_owned()));
        self
    }
}

/// Everything the agent told systemd, in order, with when it arrived. The socket is read for
/// the agent's whole life, as systemd does: an agent whose datagrams bounce takes error paths a
/// real gateway never does, and an unread socket fills after net.unix.max_dgram_qlen datagrams
/// and then blocks the agent's sd_notify.
pub struct Notify {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Notify {
    pub fn bind(path: &Path) -> Result<Notify, Failure> {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path)
            .map_err(|e| Failure(format!("bind {}: {e}", path.display())))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (Arc::clone(&messages), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                    sink.push((Instant::now(), text));
                }
            }
        });
        Ok(Notify {
            path: path.to_owned(),
            messages,
            stop,
        })
    }

    fn received(&self) -> Vec<(Instant, String)> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every datagram, oldest first.
    pub fn all(&self) -> Vec<String> {
        self.received().into_iter().map(|(_, m)| m).collect()
    }

    /// When `READY=1` arrived, if it did.
    pub fn ready_at(&self) -> Option<Instant> {
        self.received()
            .into_iter()
            .find(|(_, m)| m.lines().any(|l| l == "READY=1"))
            .map(|(at, _)| at)
    }

    pub fn ready(&self) -> bool {
        self.ready_at().is_some()
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

impl Drop for Notify {
    fn drop(&mut self) {
        // The reader sees the flag within its read timeout and ends.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A running (or finished) agent process. Dropping it SIGKILLs the process: a SIGTERM would
/// make it hand its routes over, which is no part of a cleanup.
pub struct Agent {
    pub name: String,
    pub child: Child,
    pid: u32,
    pub config: PathBuf,
    pub log_path: PathBuf,
    pub notify: Notify,
    /// Just before the process was started.
    pub started: Instant,
    exited: Option<ExitStatus>,
}

impl Agent {
    /// Writes `config` to `<dir>/<name>.toml` and starts `bin run --config` on it inside network
    /// namespace `ns`, with the lab's instance environment, `RUST_LOG=info`, its output in
    /// `<dir>/<name>.log` and `NOTIFY_SOCKET` at `<dir>/<name>.notify`. Of `spec` it uses the
    /// args, the envs and the wrap.
    pub fn spawn(
        bin: &str,
        ns: &str,
        dir: &Path,
        name: &str,
        config: &str,
        spec: &Spec,
    ) -> Result<Agent, Failure> {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config)
            .map_err(|e| Failure(format!("{}: {e}", config_path.display())))?;
        let notify = Notify::bind(&dir.join(format!("{name}.notify")))?;
        let log_path = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log_path)
            .map_err(|e| Failure(format!("{}: {e}", log_path.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| Failure(format!("{}: {e}", log_path.display())))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(&spec.wrap)
            .args([bin, "run", "--config"])
            .arg(&config_path)
            .args(&spec.args)
            .envs(Lab::instance_env())
            .envs(spec.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("NOTIFY_SOCKET", &notify.path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| Failure(format!("start {bin} in {ns}: {e}")))?;
        // `ip netns exec` (and a wrap such as setpriv) execs: this is the agent's own pid.
        let pid = child.id().unwrap_or(0);
        Ok(Agent {
            name: name.to_owned(),
            child,
            pid,
            config: config_path,
            log_path,
            notify,
            started,
            exited: None,
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn signal(&self, signal: Signal) -> Result<(), Failure> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX));
        nix::sys::signal::kill(pid, signal)
            .map_err(|e| Failure(format!("{signal} to {}: {e}", self.name)))
    }

    /// SIGKILL, as a crash would; waits until the process is gone.
    pub async fn kill(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill().await;
            self.exited = self.child.try_wait().ok().flatten();
        }
    }

    /// How the process ended, if it has.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits until the agent has sent READY=1; its exit first, or `timeout`, is an error.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.notify.ready() {
                return Ok(());
            }
            if let Some(status) = self.try_exit() {
                return Err(Failure(format!(
                    "{} exited ({status}) before READY=1; statuses {:?}",
                    self.name,
                    self.notify.statuses()
                )));
            }
            if Instant::now() >= deadline {
                return Err(Failure(format!(
                    "no READY=1 from {} within {timeout:?}; statuses {:?}",
                    self.name,
                    self.notify.statuses()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the process ends; still running after `timeout` is an error.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, Failure> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exited = Some(status);
                Ok(status)
            }
            Ok(Err(e)) => Err(Failure(format!("waiting for {}: {e}", self.name))),
            Err(_) => Err(Failure(format!(
                "{} still running after {timeout:?}",
                self.name
            ))),
        }
    }
}
