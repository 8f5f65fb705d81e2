//! A lab instance that runs the installed package under real systemd.
//!
//! [`Container::boot`] boots systemd (`systemd-nspawn -b`) from a debootstrapped Debian 12 root
//! ([`image`]: minbase, systemd and the package's declared dependencies, nothing else) inside
//! an instance's network namespace, so the agent inside sees the instance's IMDS, its uplink
//! and the ENI the lab moves in on attach, exactly as the agents [`crate::agent::Agent`] starts
//! do. Each container writes into its own overlay on the cached root, which stays untouched.
//! Everything afterwards goes the way an operator's does: `dpkg -i`, a config file and a
//! drop-in, `systemctl`, `journalctl`, `gateway-agent status` ([`Container::run`] enters the
//! container with nsenter: there is no machined on the host to ask).
//!
//! What these machines need (found in issue 18): `--keep-unit --register=no` (no systemd on
//! the host to register with), a tmpfs on /run/systemd/nspawn (the host's /run is not one), and
//! `--capability=CAP_NET_ADMIN,CAP_NET_RAW`, without which netlink refuses the agent inside
//! even as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::fleet::Failure;

/// A booted container reaches multi-user.target in about half a second here; the rest is room
/// for a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Where nspawn keeps per-machine state; it must be a tmpfs (see the module doc).
const NSPAWN_STATE: &str = "/run/systemd/nspawn";

type Result<T, E = Failure> = std::result::Result<T, E>;

/// The packages of this checkout as `make package` (packaging/test.sh) leaves them.
#[derive(Debug, Clone)]
pub struct Packages {
    /// `gateway-agent_<version>-1_<arch>.deb`.
    pub deb: PathBuf,
    /// The same build as revision 2: what an upgrade installs.
    pub deb_upgrade: PathBuf,
    pub rpm: PathBuf,
    pub rpm_upgrade: PathBuf,
}

impl Packages {
    /// The packages under `<target dir>/packages`, building them first
    /// (`packaging/test.sh --build-only`, a release build) when there are none.
    /// `GATEWAY_AGENT_PACKAGES` points at another directory holding the same layout.
    pub fn find_or_build(target_dir: &Path) -> Result<Packages> {
        let dir = std::env::var_os("GATEWAY_AGENT_PACKAGES")
            .map_or_else(|| target_dir.join("packages"), PathBuf::from);
        if let Ok(found) = Packages::in_dir(&dir) {
            return Ok(found);
        }
        let script = repo_root().join("packaging/test.sh");
        eprintln!(
            "no packages in {}: building them ({} --build-only)",
            dir.display(),
            script.display()
        );
        let status = Command::new(&script)
            .arg("--build-only")
            .env("CARGO_TARGET_DIR", target_dir)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| Failure(format!("run {}: {e}", script.display())))?;
        if !status.success() {
            return Err(Failure(format!(
                "{} --build-only failed ({status}); run it to see why",
                script.display()
            )));
        }
        Packages::in_dir(&dir)
    }

    fn in_dir(dir: &Path) -> Result<Packages> {
        let one = |dir: &Path, prefix: &str, ext: &str| -> Result<PathBuf> {
            let found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Failure(format!("{}: {e}", dir.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix) && n.ends_with(ext))
                })
                .collect();
            match found.as_slice() {
                [one] => Ok(one.clone()),
                _ => Err(Failure(format!(
                    "expected one {prefix}*{ext} in {}, found {found:?}",
                    dir.display()
                ))),
            }
        };
        let up = dir.join("upgrade");
        Ok(Packages {
            deb: one(dir, "gateway-agent_", ".deb")?,
            deb_upgrade: one(&up, "gateway-agent_", ".deb")?,
            rpm: one(dir, "gateway-agent-", ".rpm")?,
            rpm_upgrade: one(&up, "gateway-agent-", ".rpm")?,
        })
    }
}

/// This checkout (the lab crate lives in `<repo>/lab`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The cached root for `deb` (packaging/root.sh: minbase + systemd + the .deb's Depends, and
/// the Debian packages `extra`); built on first use, which takes a few minutes.
pub fn image(deb: &Path, extra: &[&str]) -> Result<PathBuf> {
    let script = repo_root().join("packaging/root.sh");
    let out = Command::new(&script)
        .arg(deb)
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Failure(format!("run {}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(Failure(format!(
            "{} {} failed ({})",
            script.display(),
            deb.display(),
            out.status
        )));
    }
    let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(PathBuf::from(root))
}

/// Why systemd-nspawn cannot run a container here, if it cannot (checked once per process):
/// the one reason the systemd tests skip rather than fail. A missing binary is not such a
/// reason: scripts/setup.sh installs it.
pub fn cannot_run(image: &Path) -> Option<String> {
    static VERDICT: OnceLock<Option<String>> = OnceLock::new();
    VERDICT
        .get_or_init(|| {
            if let Err(e) = nspawn_state_dir() {
                return Some(e.0);
            }
            // Read-only and without a boot: a probe that leaves the cached root as it was.
            let out = Command::new("systemd-nspawn")
                .args(["-q", "--read-only", "--register=no", "--keep-unit"])
                .args(["--private-network", "--resolv-conf=off", "--timezone=off"])
                .args(["--link-journal=no", "-D"])
                .arg(image)
                .arg("/bin/true")
                .stdin(Stdio::null())
                .output();
            match out {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "systemd-nspawn is not installed: apt-get install systemd-container \
                     (scripts/setup.sh does)"
                ),
                Err(e) => Some(format!("systemd-nspawn cannot be started: {e}")),
                Ok(o) if o.status.success() => None,
                Ok(o) => Some(format!(
                    "systemd-nspawn cannot run a container on this machine ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
            }
        })
        .clone()
}

/// nspawn keeps per-machine state under /run/systemd/nspawn and needs a tmpfs there; mounted
/// once and shared by every container (mounting another over it would hide a running one's).
fn nspawn_state_dir() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(NSPAWN_STATE))
    {
        return Ok(());
    }
    std::fs::create_dir_all(NSPAWN_STATE)
        .map_err(|e| Failure(format!("mkdir {NSPAWN_STATE}: {e}")))?;
    run_host(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "mode=0755",
        "tmpfs",
        NSPAWN_STATE,
    ])
}

fn run_host(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| Failure(format!("{}: {e}", argv.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Failure(format!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// What a command inside the container printed and how it ended.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn of(o: &Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The package's config file.
pub const CONFIG: &str = "/etc/gateway-agent/config.toml";
/// Where the lab's credentials go, as an operator gives a service its environment.
pub const DROP_IN: &str = "/etc/systemd/system/gateway-agent.service.d/lab.conf";
pub const DROP_IN_TEXT: &str = "[Service]\n# The lab's API takes any key; on EC2 the instance profile \
                                provides them.\nEnvironment=AWS_ACCESS_KEY_ID=lab \
                                AWS_SECRET_ACCESS_KEY=lab\n";

/// The config an operator writes for a lab gateway: the group and the API endpoint as the
/// instance reaches it (on EC2 the regional endpoints are the default), then `extra`.
pub fn config(group: &str, extra: &str) -> String {
    format!(
        // The lab's emulator speaks plain HTTP, which the agent refuses off-host unless told.
        "version = 1\n[group]\nname = \"{group}\"\n[aws]\nendpoint = \"{}\"\ninsecure_endpoint = true\n{extra}\n",
        crate::VPC_ENDPOINT
    )
}

/// A Debian 12 booted with systemd in a lab instance's network namespace.
pub struct Container {
    pub name: String,
    /// The instance's network namespace (under /run/netns).
    pub ns: String,
    dir: PathBuf,
    merged: PathBuf,
    nspawn: Child,
    /// The container's PID 1 as the host sees it.
    leader: i32,
    /// What the container printed on its console (its boot).
    pub console: PathBuf,
    /// Wall-clock time `systemctl` reported the system running.
    pub booted_in: Duration,
    /// Left running when dropped (`gwlab systemd`): the lab's teardown ends it.
    detached: bool,
}

impl Container {
    /// Boots `image` (read-only lower layer; writes go to `<dir>/<name>/upper`) in network
    /// namespace `ns` and waits until systemd reports the system up.
    pub async fn boot(image: &Path, ns: &str, dir: &Path, name: &str) -> Result<Container> {
        Container::boot_with(image, ns, dir, name, &["CAP_NET_ADMIN", "CAP_NET_RAW"]).await
    }

    /// Like [`Container::boot`], granting the container `capabilities` on top of nspawn's
    /// default set (which lacks the two the agent needs).
    pub async fn boot_with(
        image: &Path,
        ns: &str,
        dir: &Path,
        name: &str,
        capabilities: &[&str],
    ) -> Result<Container> {
        if let Some(why) = cannot_run(image) {
            return Err(Failure(why));
        }
        let dir = dir.join(name);
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("root"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(|e| Failure(format!("{}: {e}", d.display())))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.display(),
            upper.display(),
            work.display()
        );
        let target = merged.display().to_string();
        run_host(&["mount", "-t", "overlay", "overlay", "-o", &options, &target])?;
        let console = dir.join("console.log");
        let log = std::fs::File::create(&console)
            .map_err(|e| Failure(format!("{}: {e}", console.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Failure(format!("{}: {e}", console.display())))?;
        let started = Instant::now();
        let nspawn = Command::new("systemd-nspawn")
            .args(["--quiet", "--boot", "--keep-unit", "--register=no"])
            .arg(format!("--machine={name}"))
            .arg("--directory")
            .arg(&merged)
            .arg(format!("--network-namespace-path=/run/netns/{ns}"))
            .args(
                (!capabilities.is_empty())
                    .then(|| format!("--capability={}", capabilities.join(","))),
            )
            // The console is this log; a pty nobody reads would block systemd once it filled.
            .arg("--console=pipe")
            .args(["--resolv-conf=off", "--timezone=off", "--link-journal=no"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Failure(format!("start systemd-nspawn: {e}")))?;
        let mut c = Container {
            name: name.to_owned(),
            ns: ns.to_owned(),
            dir,
            merged,
            leader: 0,
            nspawn,
            console,
            booted_in: Duration::ZERO,
            detached: false,
        };
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if c.leader == 0 {
                c.leader = child_of(c.nspawn.id()).unwrap_or(0);
            }
            if c.leader != 0 {
                let state = c.run(&["systemctl", "is-system-running"])?;
                let state = state.stdout.trim();
                // "degraded": a unit of the base system failed (none the agent needs); the
                // tests read the agent's own unit.
                if state == "running" || state == "degraded" {
                    c.booted_in = started.elapsed();
                    return Ok(c);
                }
            }
            if let Ok(Some(status)) = c.nspawn.try_wait() {
                return Err(Failure(format!(
                    "systemd-nspawn exited ({status}) before the container was up:\n{}",
                    c.console_text()
                )));
            }
            if Instant::now() >= deadline {
                return Err(Failure(format!(
                    "container {name} not up within {BOOT_TIMEOUT:?}:\n{}",
                    c.console_text()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The container's root as the host sees it (its overlay): for putting files in place.
    pub fn root(&self) -> &Path {
        &self.merged
    }

    /// Writes `content` to `path` inside the container (creating its directory).
    pub fn write(&self, path: &str, content: &str) -> Result<()> {
        let host = self.merged.join(path.trim_start_matches('/'));
        if let Some(parent) = host.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure(format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(&host, content).map_err(|e| Failure(format!("{}: {e}", host.display())))
    }

    /// Copies a host file to `/var/tmp/<its name>` inside (systemd mounts a tmpfs over /tmp);
    /// answers that path.
    pub fn copy_in(&self, file: &Path) -> Result<String> {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Failure(format!("{}: no file name", file.display())))?;
        let inside = format!("/var/tmp/{name}");
        let host = self.merged.join(inside.trim_start_matches('/'));
        std::fs::copy(file, &host).map_err(|e| {
            Failure(format!(
                "copy {} to {}: {e}",
                file.display(),
                host.display()
            ))
        })?;
        Ok(inside)
    }

    /// Runs `argv` inside the container (every namespace of its PID 1), as root, with a
    /// login-like PATH and the C.UTF-8 locale.
    pub fn run(&self, argv: &[&str]) -> Result<Out> {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-a", "--"])
            .args(["env", "-i"])
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .args([
                "LC_ALL=C.UTF-8",
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
                "TERM=dumb",
            ])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Failure(format!("nsenter {}: {e}", argv.join(" "))))?;
        Ok(Out::of(&out))
    }

    /// `sh -c script` inside.
    pub fn sh(&self, script: &str) -> Result<Out> {
        self.run(&["sh", "-c", script])
    }

    /// Like [`Container::run`]; anything but exit 0 is a failure that shows the output.
    pub fn must(&self, argv: &[&str]) -> Result<Out> {
        let out = self.run(argv)?;
        if out.ok() {
            Ok(out)
        } else {
            Err(Failure(format!(
                "{} in {}: {out}",
                argv.join(" "),
                self.name
            )))
        }
    }

    /// `systemctl <args>`.
    pub fn systemctl(&self, args: &[&str]) -> Result<Out> {
        let mut argv = vec!["systemctl"];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    /// One property of a unit (`systemctl show -p <prop> --value <unit>`).
    pub fn show(&self, unit: &str, prop: &str) -> Result<String> {
        let out = self.must(&["systemctl", "show", "-p", prop, "--value", unit])?;
        Ok(out.stdout.trim().to_owned())
    }

    /// `journalctl --no-pager <args>`: its output.
    pub fn journal(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["journalctl", "--no-pager"];
        argv.extend_from_slice(args);
        Ok(self.must(&argv)?.stdout)
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The container's PID 1 as the host sees it (`nsenter -t <it> -a` enters the container).
    pub fn leader(&self) -> i32 {
        self.leader
    }

    /// Leaves the container running when this value goes: it lives in the instance's
    /// namespace, so deleting the instance or tearing the lab down ends it (and `gwlab down`
    /// unmounts its overlay).
    pub fn detach(mut self) -> i32 {
        self.detached = true;
        self.leader
    }
}

impl Drop for Container {
    /// Power loss, not a shutdown: a clean poweroff would stop the agent, and that hands its
    /// routes over, which is no part of a cleanup. Killing the PID namespace's init takes
    /// every process of the container with it.
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if self.leader != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.leader),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let target = self.merged.display().to_string();
        // Lazy: a process of the container that lingers a moment cannot keep the overlay.
        let _ = run_host(&["umount", "-l", &target]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first child of `pid` (nspawn's only child is the container's init).
fn child_of(pid: u32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Unmounts every overlay a killed test left under `dir` (a lab's run directory).
pub fn unmount_under(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for point in mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
    {
        let _ = run_host(&["umount", "-l", point]);
    }
}
