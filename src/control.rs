//! The local control socket: operators' commands to the running agent.
//!
//! A Unix stream socket (mode 0600: the agent's user and root), one request line per
//! connection, one answer line back: `ok <text>` or `error <text>`. Local only by
//! construction: nothing about control is reachable over the network. Every command is logged
//! with the peer's uid and pid.
//!
//! What a caller may do is decided by its credentials (SO_PEERCRED), not only by who can open
//! the socket: `status` is for everyone who can connect; commands that change something
//! (failback, failover, drain, undrain, pause, resume) are root's, or also `control.group`'s
//! with `control.group_operates = true`. The agent's own user is not root: it is what the event
//! hook runs as.
//!
//! With `control.group` the socket is 0660 and that group's. The agent does not chown it: the
//! unit's `SystemCallFilter=~@privileged` forbids chown. Nor can the socket's directory be
//! prepared beforehand: systemd re-applies the RuntimeDirectory's owner and mode before every
//! command it runs, which would undo a setgid directory made by `ExecStartPre=`. Instead the
//! unit's `ExecStartPost=+gateway-agent prepare-runtime` (run as root, outside the filter, once
//! the agent is READY) waits for the socket and gives it the group ([`prepare`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Where systemd's `RuntimeDirectory=gateway-agent` puts it.
pub const DEFAULT_SOCKET: &str = "/run/gateway-agent/control.sock";
/// A command waits at most this long for the run loop (one cycle, its writes included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to read a request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for the whole exchange: longer than the agent's own bounds, so only
/// an agent that is not running its loops (hung, stopped) runs into it. The kernel accepts
/// connections for such an agent all the same, so without this a command would wait forever.
const CLIENT_TIMEOUT: Duration =
    Duration::from_secs(ANSWER_TIMEOUT.as_secs() + REQUEST_TIMEOUT.as_secs() + 5);

/// The control socket's errors. [`Error::Listen`] is the agent's; the others are a client's,
/// in two kinds the exit codes keep apart ([`crate::exit_code`]): the agent is not reachable
/// ([`Error::is_unreachable`]), or it answered and refused ([`Error::Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent cannot set up its socket.
    #[error("control socket {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not reachable: no socket file, nobody listening on it, or no permission.
    #[error(
        "cannot reach the agent on its control socket {}: {source} (is the agent running? \
         run this as root)",
        path.display()
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not reachable: the connection broke before the answer came.
    #[error("control socket {}: the connection to the agent broke: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not reachable: the agent closed the connection without answering.
    #[error(
        "control socket {}: the agent closed the connection without answering (is it stopping?)",
        path.display()
    )]
    NoAnswer { path: PathBuf },
    /// Not reachable: connected, but no answer in time (the agent is hung or stopped).
    #[error(
        "control socket {}: no answer within {after:?} (is the agent hung? see `systemctl \
         status gateway-agent`)",
        path.display()
    )]
    Timeout { path: PathBuf, after: Duration },
    /// The agent answered `error <reason>`: it did not do it, and says why.
    #[error("the agent refused: {0}")]
    Refused(String),
    /// The agent answered something this client cannot read (another version?).
    #[error("the agent's answer is not {expected}: {answer:.200}")]
    Answer { expected: String, answer: String },
}

impl Error {
    /// The agent never answered: not running, not listening, not ours to reach, hung, or gone
    /// mid-exchange.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Io { .. } | Self::NoAnswer { .. } | Self::Timeout { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Take this gateway's own zone back now (hold-down and `failback = manual` waived; the
    /// own health check still applies). `zone`, when given, must be this gateway's zone.
    Failback {
        zone: Option<String>,
    },
    /// Take zone `zone` now. The own self-check must pass unless `force`; routes pointing at a
    /// third party are never taken.
    Failover {
        zone: String,
        force: bool,
    },
    /// Hand everything over and stay out (maintenance), until `undrain`.
    Drain,
    Undrain,
    /// Keep observing and deciding, but write no route (leases are still renewed).
    Pause,
    Resume,
    /// Everything the agent knows, as one line of JSON.
    Status,
}

const KNOWN: &str =
    "status, failback [ZONE], failover ZONE [--force], drain, undrain, pause, resume";

impl Command {
    pub fn parse(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["failback"] => Ok(Self::Failback { zone: None }),
            ["failback", zone] => Ok(Self::Failback {
                zone: Some((*zone).to_owned()),
            }),
            ["failover", zone] => Ok(Self::Failover {
                zone: (*zone).to_owned(),
                force: false,
            }),
            ["failover", zone, "--force"] => Ok(Self::Failover {
                zone: (*zone).to_owned(),
                force: true,
            }),
            ["drain"] => Ok(Self::Drain),
            ["undrain"] => Ok(Self::Undrain),
            ["pause"] => Ok(Self::Pause),
            ["resume"] => Ok(Self::Resume),
            ["status"] => Ok(Self::Status),
            [] => Err(format!("empty command; known: {KNOWN}")),
            [other, ..] => Err(format!(
                "unknown command or arguments {other:?}; known: {KNOWN}"
            )),
        }
    }

    pub fn line(&self) -> String {
        match self {
            Self::Failback { zone: None } => "failback".into(),
            Self::Failback { zone: Some(z) } => format!("failback {z}"),
            Self::Failover { zone, force: false } => format!("failover {zone}"),
            Self::Failover { zone, force: true } => format!("failover {zone} --force"),
            Self::Drain => "drain".into(),
            Self::Undrain => "undrain".into(),
            Self::Pause => "pause".into(),
            Self::Resume => "resume".into(),
            Self::Status => "status".into(),
        }
    }
}

/// A command for the run loop, and where its answer goes.
pub struct Request {
    pub command: Command,
    pub answer: oneshot::Sender<Result<String, String>>,
}

/// Whether the caller `uid` may run `command`, when the agent runs as `own_uid`.
pub fn permitted(command: &Command, uid: u32, group_operates: bool) -> Result<(), String> {
    let own_uid = nix::unistd::geteuid().as_raw();
    match command {
        Command::Status => Ok(()),
        _ if uid == 0 => Ok(()),
        // The agent's own user is what its hook runs as: never an operator.
        _ if group_operates && uid != own_uid => Ok(()),
        _ => Err(format!(
            "`{}` changes what this gateway does and needs root (uid {uid} may ask `status` only{})",
            command.line(),
            if uid == own_uid {
                ""
            } else {
                "; set control.group_operates = true to let control.group do it"
            }
        )),
    }
}

/// How long `prepare-runtime` waits for the agent's socket (it is made just after READY).
const PREPARE_WAIT: Duration = Duration::from_secs(20);

/// Run as root once the agent is READY (`gateway-agent prepare-runtime`, the unit's
/// `ExecStartPost=+`): waits for the control socket, then gives it `group` (the agent made it
/// 0660). It never follows a link: the directory is the agent's user's, who could plant one.
/// The directory must belong to a user other than root: root's directories (`/run`, `/tmp`) are
/// not this agent's.
pub fn prepare(path: &Path, group: &str) -> Result<(), Error> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let fail = |why: String| Error::Listen {
        path: path.to_owned(),
        source: std::io::Error::other(why),
    };
    let dir = path.parent().ok_or_else(|| {
        fail("control.socket has no directory; give e.g. /run/gateway-agent/control.sock".into())
    })?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| {
        fail(format!(
            "{}: {e}; control.socket's directory must exist (the unit's RuntimeDirectory= makes /run/gateway-agent)",
            dir.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(fail(format!(
            "{} is not a directory (a link?); put control.socket in /run/gateway-agent",
            dir.display()
        )));
    }
    if meta.uid() == 0 {
        return Err(fail(format!(
            "{} is root's: not the agent's to give to group {group:?}; put control.socket in the service's RuntimeDirectory (/run/gateway-agent)",
            dir.display()
        )));
    }
    let gid = gid_of(group).map_err(fail)?;
    let started = std::time::Instant::now();
    loop {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => break,
            Ok(_) => {
                return Err(fail(
                    "not a socket (a link or a file planted there): left alone".into(),
                ));
            }
            Err(_) if started.elapsed() < PREPARE_WAIT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(fail(format!(
                    "no socket after {} s ({e}): is the agent running?",
                    PREPARE_WAIT.as_secs()
                )));
            }
        }
    }
    // lchown: were the socket swapped for a link since, the link's group changes, not a file's.
    std::os::unix::fs::lchown(path, None, Some(gid))
        .map_err(|e| fail(format!("chgrp {}: {e}", path.display())))?;
    Ok(())
}

/// Whether a seccomp filter is on this process (systemd's SystemCallFilter=): then a chown
/// would kill it rather than fail.
fn filtered() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .is_some_and(|v| v.trim() != "0")
    })
}

/// Listens on `path` (replacing a stale socket) and forwards each command to `tx`. The socket
/// is the agent's user's and root's only (0600), or also `group`'s (0660) when a group is
/// named; `group_operates` lets that group change things too (else it may ask `status`).
pub fn serve(
    path: &Path,
    (group, group_operates): (Option<&str>, bool),
    tx: mpsc::Sender<Request>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let listen = |source| Error::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen)?;
    }
    // A socket file left by a killed agent would make bind fail.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(listen(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(listen)?;
    let mode = match group {
        None => 0o600,
        Some(name) => {
            use std::os::unix::fs::MetadataExt;
            let gid = gid_of(name).map_err(|e| listen(std::io::Error::other(e)))?;
            let made = std::fs::metadata(path).map_err(listen)?.gid();
            if made != gid && filtered() {
                // The filter forbids chown: root gives the group once the agent is READY.
                tracing::info!(group = %name, socket = %path.display(), "control.group: the socket is given its group by `gateway-agent prepare-runtime` (the unit's ExecStartPost=+)");
            } else if made != gid {
                std::os::unix::fs::chown(path, None, Some(gid)).map_err(listen)?;
            }
            0o660
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(listen)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, tx, group_operates).await {
                    warn!(error = %e, "control connection failed");
                }
            });
        }
    }))
}

/// The group's ID from /etc/group (the groups an operator would name live there; no NSS
/// lookup is worth a dependency here).
fn gid_of(name: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group to find group {name:?}: {e}"))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| format!("group {name:?} is not in /etc/group (control.group)"))
}

async fn handle(
    stream: UnixStream,
    tx: mpsc::Sender<Request>,
    group_operates: bool,
) -> std::io::Result<()> {
    let cred = stream.peer_cred().ok();
    let who = cred
        .map(|c| format!("uid {} pid {}", c.uid(), c.pid().unwrap_or(0)))
        .unwrap_or_else(|| "unknown peer".into());
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(4096);
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let answer = match Command::parse(&line) {
        Err(e) => Err(e),
        Ok(command) if cred.is_none() => Err(format!(
            "`{}` refused: the caller's credentials cannot be read",
            command.line()
        )),
        Ok(command)
            if let Err(why) =
                permitted(&command, cred.map_or(u32::MAX, |c| c.uid()), group_operates) =>
        {
            warn!(command = %command.line(), from = %who, "control command refused: not permitted");
            Err(why)
        }
        Ok(command) => {
            info!(command = %command.line(), from = %who, "control command");
            let (answer, rx) = oneshot::channel();
            if tx.send(Request { command, answer }).await.is_err() {
                Err("the agent is stopping".into())
            } else {
                match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err("the agent dropped the command (stopping?)".into()),
                    Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
                }
            }
        }
    };
    let text = match answer {
        Ok(t) => format!("ok {t}\n"),
        Err(t) => format!("error {t}\n"),
    };
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// Sends `command` to the agent listening on `path`; the agent's answer, or why not.
pub async fn send(path: &Path, command: &Command) -> Result<String, Error> {
    send_within(path, command, CLIENT_TIMEOUT).await
}

async fn send_within(path: &Path, command: &Command, limit: Duration) -> Result<String, Error> {
    tokio::time::timeout(limit, exchange(path, command))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                path: path.to_owned(),
                after: limit,
            })
        })
}

async fn exchange(path: &Path, command: &Command) -> Result<String, Error> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{}\n", command.line()).as_bytes())
        .await
        .map_err(io)?;
    let mut line = String::new();
    let read = BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(io)?;
    if read == 0 {
        return Err(Error::NoAnswer {
            path: path.to_owned(),
        });
    }
    let line = line.trim_end();
    match line.split_once(' ') {
        Some(("ok", rest)) => Ok(rest.to_owned()),
        Some(("error", rest)) => Err(Error::Refused(rest.to_owned())),
        _ => Err(Error::Answer {
            expected: "`ok <text>` or `error <text>`".to_owned(),
            answer: format!("{line:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            Command::parse("failback\n"),
            Ok(Command::Failback { zone: None })
        );
        assert_eq!(
            Command::parse("failback us-east-1a"),
            Ok(Command::Failback {
                zone: Some("us-east-1a".into())
            })
        );
        assert!(Command::parse("failback a b").is_err());
        for line in [
            "status",
            "drain",
            "undrain",
            "pause",
            "resume",
            "failover z --force",
            "failover z",
        ] {
            assert_eq!(Command::parse(line).unwrap().line(), line);
        }
        assert!(Command::parse("failover").is_err());
        assert!(Command::parse("failover z --now").is_err());
        assert!(Command::parse("rm -rf /").is_err());
        assert!(Command::parse("").is_err());
    }

    #[tokio::test]
    async fn a_command_reaches_the_loop_and_its_answer_comes_back() {
        let dir =
            std::env::temp_dir().join(format!("gateway-agent-control-{}", std::process::id()));
        let path = dir.join("control.sock");
        let (tx, mut rx) = mpsc::channel(1);
        let _server = serve(&path, (None, false), tx).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // With a group: 0660 and that group (root's group 0 exists everywhere).
        let (tx2, _rx2) = mpsc::channel(1);
        let grouped = dir.join("grouped.sock");
        let _g = serve(&grouped, (Some("root"), false), tx2).unwrap();
        let meta = std::fs::metadata(&grouped).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 0);
        let (tx3, _rx3) = mpsc::channel(1);
        let err = serve(
            &dir.join("x.sock"),
            (Some("no-such-group-here"), false),
            tx3,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not in /etc/group"), "{err}");
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let _ = req.answer.send(match req.command {
                    Command::Failback { zone: Some(z) } => Err(format!("{z} is not mine")),
                    Command::Failback { zone: None } => Ok("done".into()),
                    _ => Err("unexpected".into()),
                });
            }
        });
        let ok = send(&path, &Command::Failback { zone: None })
            .await
            .unwrap();
        assert_eq!(ok, "done");
        let err = send(
            &path,
            &Command::Failback {
                zone: Some("z".into()),
            },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("z is not mine"), "{err}");
        assert!(matches!(err, Error::Refused(_)) && !err.is_unreachable());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn status_is_anyones_changes_are_roots_unless_the_group_may_operate() {
        let me = nix::unistd::geteuid().as_raw();
        let other = if me == 1000 { 1001 } else { 1000 };
        let changes = [
            Command::Failback { zone: None },
            Command::Failover {
                zone: "z".into(),
                force: true,
            },
            Command::Drain,
            Command::Undrain,
            Command::Pause,
            Command::Resume,
        ];
        for c in &changes {
            assert!(permitted(c, 0, false).is_ok(), "root: {c:?}");
            let refused = permitted(c, other, false).unwrap_err();
            assert!(
                refused.contains("needs root") && refused.contains("group_operates"),
                "{refused}"
            );
            assert!(permitted(c, other, true).is_ok(), "group operates: {c:?}");
            if me != 0 {
                // The agent's own user (its hook's) never operates, whatever the config.
                assert!(permitted(c, me, true).is_err(), "own user: {c:?}");
            }
        }
        for uid in [0, other, me, u32::MAX] {
            assert!(permitted(&Command::Status, uid, false).is_ok());
        }
    }

    /// A one-connection agent that reads the request and answers `answer` (nothing: closes).
    fn fake_agent(path: &Path, answer: &'static str) {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await.unwrap();
            write.write_all(answer.as_bytes()).await.unwrap();
        });
    }

    #[tokio::test]
    async fn a_client_tells_an_unreachable_agent_from_a_refusal() {
        let dir = std::env::temp_dir().join(format!(
            "gateway-agent-control-client-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let unreachable = |err: &Error, path: &Path| {
            assert!(err.is_unreachable(), "{err}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "the message names the socket: {err}"
            );
        };
        // No socket file: the agent is not running.
        let none = dir.join("none.sock");
        let err = send(&none, &Command::Status).await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        unreachable(&err, &none);
        // A socket file nobody listens on (a killed agent's): connection refused.
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let err = send(&stale, &Command::Status).await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        unreachable(&err, &stale);
        // Listening, never answering (a hung agent: the kernel still queues connections).
        let hung = dir.join("hung.sock");
        let _hung = std::os::unix::net::UnixListener::bind(&hung).unwrap();
        let err = send_within(&hung, &Command::Status, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        unreachable(&err, &hung);
        // Closes without a word (stopping).
        let closing = dir.join("closing.sock");
        fake_agent(&closing, "");
        let err = send(&closing, &Command::Status).await.unwrap_err();
        assert!(matches!(err, Error::NoAnswer { .. }), "{err}");
        unreachable(&err, &closing);
        // Answers, but not in the protocol: neither unreachable nor a refusal.
        let garbled = dir.join("garbled.sock");
        fake_agent(&garbled, "hello there\n");
        let err = send(&garbled, &Command::Status).await.unwrap_err();
        assert!(matches!(err, Error::Answer { .. }), "{err}");
        assert!(!err.is_unreachable());
        assert!(err.to_string().contains("hello there"), "{err}");
        // Refuses, with its reason.
        let refusing = dir.join("refusing.sock");
        fake_agent(&refusing, "error us-east-1a is not this gateway's zone\n");
        let err = send(&refusing, &Command::Status).await.unwrap_err();
        assert!(matches!(err, Error::Refused(_)) && !err.is_unreachable());
        assert_eq!(
            err.to_string(),
            "the agent refused: us-east-1a is not this gateway's zone"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
