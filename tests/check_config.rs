//! `gateway-agent check-config` as an operator runs it: the binary, a file, the exit code and
//! what it prints.

use std::path::PathBuf;
use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");

fn check(name: &str, text: &str) -> (i32, String, String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("gateway-agent-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(AGENT)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run gateway-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
    )
}

#[test]
fn a_minimal_config_is_ok() {
    let (code, stdout, _, path) = check("ok", "version = 1\n[group]\nname = \"egress\"\n");
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("config OK: {}", path.display()));
}

#[test]
fn every_error_is_printed_with_file_key_and_fix() {
    let text = "version = 1\n[group]\nname = \"egress\"\n\
                [routes]\ndestinations = [\"10.0.0.0/33\", \"10.1.2.3/16\"]\n\
                [eni]\ndevice_index = 0\n";
    let (code, _, stderr, path) = check("bad", text);
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    let file = path.display().to_string();
    assert!(
        lines.iter().all(|l| l.starts_with(&format!("{file}: "))),
        "{stderr}"
    );
    assert!(
        lines[0].contains("eni.device_index: 0 is out of range; use 1 to 15"),
        "{stderr}"
    );
    assert!(
        lines[1]
            .contains("routes.destinations: \"10.0.0.0/33\" prefix length \"33\" is not 0 to 32"),
        "{stderr}"
    );
    assert!(
        lines[2].contains("AWS wants the network address: \"10.1.0.0/16\""),
        "{stderr}"
    );
}

#[test]
fn unknown_key_and_missing_group_are_named() {
    let (code, _, stderr, path) = check(
        "typo",
        "version = 1\n[group]\nname = \"egress\"\n[kernel]\nforwarding = true\n",
    );
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with(&format!(
            "{}:5:1: kernel.forwarding: unknown field `forwarding`",
            path.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("remove the key or correct its spelling"),
        "{stderr}"
    );
    let (code, _, stderr, _) = check("nogroup", "version = 1\n");
    assert_eq!(code, 2);
    assert!(stderr.contains("group: missing field `group`"), "{stderr}");
    assert!(stderr.contains("add the key"), "{stderr}");
}

#[test]
fn a_missing_file_says_how_to_point_at_the_right_one() {
    let out = Command::new(AGENT)
        .args([
            "check-config",
            "--config",
            "/nonexistent/gateway-agent.toml",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/gateway-agent.toml: cannot read the config file"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--config or GATEWAY_AGENT_CONFIG"),
        "{stderr}"
    );
}

/// The packaged example config, with the group filled in and every optional key uncommented at
/// its documented default, passes: the example cannot drift from what the agent accepts.
#[test]
fn the_packaged_example_config_is_valid_with_every_key_uncommented() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/config.toml"
    ))
    .expect("packaging/config.toml");
    let filled = example.replace("\nname = \"\"", "\nname = \"egress\"");
    let (code, _, stderr, _) = check("example", &filled);
    assert_eq!(code, 0, "{stderr}");
    let uncommented: String = filled
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest
            }
            _ => l,
        })
        .filter(|l| !l.contains("\"...\"") && !l.contains("\"https://...\""))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(uncommented.contains("\n[self_check]\n"), "{uncommented}");
    let (code, _, stderr, _) = check("example-all", &uncommented);
    assert_eq!(code, 0, "{stderr}\n{uncommented}");
}
