//! `gateway-agent-gen OUT_DIR`: writes the man page (`gateway-agent.1`, one page per
//! subcommand as `gateway-agent-<sub>.1`) and bash, zsh and fish completions into `OUT_DIR`,
//! all from the agent's own clap definition, so they cannot drift from the binary.
//!
//! The packages install them (packaging/cargo-metadata.toml); packaging/test.sh runs this.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::{Shell, generate_to};
use gateway_agent::cli::Cli;

const BIN: &str = "gateway-agent";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: gateway-agent-gen OUT_DIR  (writes man pages and completions there)");
        return ExitCode::from(2);
    };
    match write_all(Path::new(&out)) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "gateway-agent-gen: writing into {}: {error}; check that the directory's parent exists and is writable",
                Path::new(&out).display()
            );
            ExitCode::FAILURE
        }
    }
}

fn write_all(out: &Path) -> io::Result<Vec<PathBuf>> {
    let man = out.join("man");
    let completions = out.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;

    let mut cmd = Cli::command().name(BIN).bin_name(BIN);
    // Builds the subcommands' bin names ("gateway-agent run"), which the pages and scripts use.
    cmd.build();
    let mut files = man_pages(&cmd, &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        files.push(generate_to(shell, &mut cmd, BIN, &completions)?);
    }
    Ok(files)
}

/// The main page plus one per subcommand (as git does: `man gateway-agent-check-config`),
/// because the main page lists subcommands without their options.
fn man_pages(cmd: &clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let path = dir.join(format!("{}.1", cmd.get_display_name().unwrap_or(BIN)));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    fs::write(&path, page)?;
    files.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("{BIN}-{}", sub.get_name());
        let sub = sub.clone().name(name.clone()).display_name(name);
        files.extend(man_pages(&sub, dir)?);
    }
    Ok(files)
}
