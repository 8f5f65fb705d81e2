//! Entering and removing network namespaces from Rust (tests reach IMDS from inside an instance).

use std::process::Command;

/// Run `f` on a fresh thread that has joined network namespace `ns` (from /run/netns).
///
/// A fresh thread, so the caller's own thread never changes namespace, even on a panic.
pub fn in_netns<T, F>(ns: &str, f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> std::io::Result<T> {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| std::io::Error::other(format!("setns {path}: {e}")))?;
        Ok(f())
    })
    .join()
    .map_err(|_| std::io::Error::other(format!("thread in {ns} panicked")))?
}

/// Names of the network namespaces under /run/netns.
pub fn netns_list() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Kill every process in `ns`, then delete it.
pub fn delete(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}
