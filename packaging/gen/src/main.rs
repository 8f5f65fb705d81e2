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

/// Sections appended to gateway-agent(1), in roff, after the EXIT STATUS section that
/// [`exit_status`] writes from the agent's own table of codes.
const MAIN_PAGE_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/gateway-agent/config.toml\fR
The configuration (TOML). Check it with \fBgateway-agent check-config\fR. The packaged file is
commented and lists where every key is described.
.TP
\fI/run/gateway-agent/restart\fR
While this file exists, SIGTERM makes the agent exit without handing its routes to a peer, so a
restart (package upgrade) changes no route: the new process adopts the state.
.TP
\fI/usr/share/doc/gateway-agent/iam-policy.json\fR
The least-privilege IAM policy for the gateways' instance role.
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBjournalctl\fR(1); the README at https://github.com/gateway-agent/gateway-agent
"#;

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
    if cmd.get_name() == BIN {
        // What clap does not know: exit codes, files, where the rest is documented.
        page.extend_from_slice(exit_status().as_bytes());
        page.extend_from_slice(MAIN_PAGE_EXTRA.as_bytes());
    }
    fs::write(&path, page)?;
    files.push(path);
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        // clap takes &'static names unless its "string" feature is on, and turning that on here
        // would change the agent's own clap build (features unify); a few leaked bytes in a
        // one-shot tool are cheaper.
        let name: &'static str = Box::leak(format!("{BIN}-{}", sub.get_name()).into_boxed_str());
        let sub = sub.clone().name(name).display_name(name);
        files.extend(man_pages(&sub, dir)?);
    }
    Ok(files)
}

/// The EXIT STATUS section, from `gateway_agent::exit_code::Exit`: the page cannot drift
/// from the codes the binary uses.
fn exit_status() -> String {
    let mut out = String::from(".SH \"EXIT STATUS\"\n");
    for e in gateway_agent::exit_code::Exit::ALL {
        out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", e.code(), e.meaning()));
    }
    out
}
