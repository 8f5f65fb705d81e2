#!/usr/bin/env python3
"""Every command that `make test`, `make demo` and the rest of the Makefile run is on this machine.

The list is derived, never written by hand, so a tool someone adds to a script is checked too:
  - the Makefile's recipes (`make -n` of every .PHONY target, the included files' too), parsed
    as shell (shfmt's syntax tree);
  - every script of this repository they run (a command or a `bash`/`python3` argument that is a
    file here), recursively: shell scripts parsed the same way, Python's subprocess calls;
  - the lab and the tests: `Command::new("...")` and `ip netns exec NS <command>` in Rust,
    subprocess lists in lab/py, absolute paths of programs and libraries they name (/usr/...,
    /lib/...); and a `needs-command: NAME...` comment where a command is built at run time.
A command is found when it is a shell builtin or keyword, a function of its script, a binary
this workspace builds, on PATH (with ~/.cargo/bin), or a tool in one of the project's venvs
under the cache. `cargo X` needs `cargo-X` unless X is one of cargo's own commands.

  scripts/check-tools.py            check, print what was found where (exit 1 if any is missing)
  scripts/check-tools.py --list     only print the derived commands and where each is used

scripts/test-setup.sh runs this inside a freshly debootstrapped Debian root after
scripts/setup.sh: the proof that setup installs everything (a developer's machine that already
has a tool cannot hide its absence there).
"""

import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CACHE = os.environ.get("GATEWAY_AGENT_CACHE", os.path.expanduser("~/.cache/gateway-agent"))
# The project's venvs: every `*venv*` under the cache (the lab's, the tools', any added later).
VENVS = sorted(os.path.join(CACHE, d, "bin") for d in (os.listdir(CACHE) if os.path.isdir(CACHE) else [])
               if "venv" in d)

BUILTINS = set("""
. : [ [[ alias bg bind break builtin caller case cd command compgen complete compopt continue
declare dirs disown do done echo elif else enable esac eval exec exit export false fc fg fi for
function getopts hash help history if in jobs kill let local logout mapfile popd printf pushd pwd
read readarray readonly return select set shift shopt source suspend test then time times trap
true type typeset ulimit umask unalias unset until wait while
""".split())
# Cargo's own subcommands (anything else is an external `cargo-<name>`).
CARGO_BUILTIN = set("""
add bench build check clean config doc fetch fix generate-lockfile help info init install
locate-project login logout metadata new owner package pkgid publish remove report run rustc
rustdoc search test tree uninstall update vendor verify-project version yank
""".split())
# Wrappers whose argument after their options is the command they run.
WRAPPERS = {"nice": {"-n"}, "timeout": {"-s", "-k"}, "env": {"-u"}, "xargs": {"-n", "-I", "-P"},
            "exec": set(), "command": set(), "nohup": set(), "stdbuf": set(), "setsid": set()}
# Commands run inside another root: their arguments are not this machine's commands.
ELSEWHERE = {"chroot", "systemd-nspawn", "nsenter"}

uses = {}  # command -> set of places
scanned = set()


def use(cmd, where):
    uses.setdefault(cmd, set()).add(where)


def rel(path):
    return os.path.relpath(path, ROOT)


# --- shell ---------------------------------------------------------------------------------------

def word_text(word):
    """A Word's text; parameter expansions as ${NAME}, command substitutions as $(...)."""
    out = []
    for p in word.get("Parts", []):
        t = p.get("Type")
        if t in ("Lit", "SglQuoted"):
            out.append(p.get("Value", ""))
        elif t == "DblQuoted":
            out.append(word_text(p))
        elif t == "ParamExp":
            out.append("${" + p.get("Param", {}).get("Value", "?") + "}")
        else:
            out.append("$(...)")
    return "".join(out)


def walk(node, found, funcs):
    if isinstance(node, dict):
        if node.get("Type") == "FuncDecl" or ("Name" in node and "Body" in node and "Type" not in node):
            name = node.get("Name", {}).get("Value")
            if name:
                funcs.add(name)
        if node.get("Type") == "CallExpr" and node.get("Args"):
            found.append(([word_text(w) for w in node["Args"]], node.get("Pos", {}).get("Line", 0)))
        for v in node.values():
            walk(v, found, funcs)
    elif isinstance(node, list):
        for v in node:
            walk(v, found, funcs)


def shell_calls(text, what):
    """(argv, line) of every simple command in `text`, and its functions' names."""
    p = subprocess.run(["shfmt", "--to-json"], input=text, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"check-tools: shfmt cannot parse {what}: {p.stderr.strip()}")
    found, funcs = [], set()
    walk(json.loads(p.stdout), found, funcs)
    return found, funcs


def command_of(argv):
    """The command an argv runs (through wrappers), and its arguments; None for none."""
    i = 0
    # Leading assignments (VAR=value cmd).
    while i < len(argv) and re.match(r"^[A-Za-z_]\w*=", argv[i]):
        i += 1
    while i < len(argv):
        cmd = argv[i]
        if cmd in WRAPPERS:
            if cmd == "command" and i + 1 < len(argv) and argv[i + 1] in ("-v", "-V"):
                return (argv[i + 2], []) if i + 2 < len(argv) else (None, [])
            i += 1
            takes = WRAPPERS[cmd]
            while i < len(argv) and (argv[i].startswith("-") or re.match(r"^[A-Za-z_]\w*=", argv[i])):
                i += 2 if argv[i] in takes else 1
            if cmd == "timeout" and i < len(argv) and re.match(r"^[\d.]+[smhd]?$", argv[i]):
                i += 1
            continue
        if cmd == "ip" and argv[i + 1:i + 3] == ["netns", "exec"] and len(argv) > i + 4:
            use("ip", None)
            i += 4
            continue
        return cmd, argv[i + 1:]
    return None, []


def scan_shell(path, text=None, label=None):
    if text is None:
        if path in scanned:
            return
        scanned.add(path)
        text = open(path).read()
    where = label or rel(path)
    if path is not None:
        scan_needs(path, text)
    calls, funcs = shell_calls(text, where)
    for argv, line in calls:
        cmd, args = command_of(argv)
        if cmd is None:
            continue
        place = f"{where}:{line}" if line and not label else where
        if cmd in funcs:
            continue
        if cmd in ELSEWHERE:
            use(cmd, place)
            continue
        if cmd in ("bash", "sh") and args and args[0] == "-c" and len(args) > 1 and "$" not in args[1]:
            scan_shell(None, args[1], f"{place} ({cmd} -c)")
        use(cmd, place)
        if cmd == "cargo":
            sub = next((a for a in args if not a.startswith("-") and not a.startswith("+")), None)
            if sub and sub not in CARGO_BUILTIN and "$" not in sub:
                use(f"cargo-{sub}", place)
        # A script of this repo run directly or through an interpreter.
        for candidate in [cmd] + ([args[0]] if cmd in ("bash", "sh", "python3", "python") and args else []):
            follow(candidate, os.path.dirname(path) if path else ROOT)


def follow(candidate, base):
    """Scans a script of this repository that a command line names."""
    # $HERE/x.py, $ROOT/x.sh, "$(dirname "$0")/x.sh": a file beside the script or in the repo.
    candidate = re.sub(r"^(\$\{\w+\}|\$\(\.\.\.\))/", "", candidate)
    if "$" in candidate or not ("/" in candidate or candidate.endswith((".sh", ".py"))):
        return
    for b in (ROOT, base):
        p = os.path.normpath(os.path.join(b, candidate))
        if os.path.isfile(p) and p.startswith(ROOT + os.sep):
            if p.endswith(".py"):
                scan_python(p)
            elif p.endswith(".sh") or open(p, "rb").read(64).startswith((b"#!/bin/sh", b"#!/usr/bin/env bash", b"#!/bin/bash")):
                scan_shell(p)
            return


# --- Python, Rust --------------------------------------------------------------------------------

# needs-command: shfmt make
CALLERS = r"(?:run|Popen|call|check_call|check_output|_nsenter|execvp?e?)"


def unwrap_list(items):
    """The commands of a subprocess argv literal: its first string, through ip netns exec,
    unshare and sh -c wrappers."""
    out = []
    i = 0
    while i < len(items):
        cmd = items[i]
        if cmd is None:
            break
        out.append(cmd)
        if cmd == "ip" and items[i + 1:i + 3] == ["netns", "exec"]:
            i += 4
            continue
        if cmd in ("unshare", "nice", "timeout"):
            i += 1
            while i < len(items) and items[i] is not None and items[i].startswith("-"):
                i += 1
            continue
        break
    return out


def list_items(text):
    """The elements of a list literal's source: strings as strings, anything else as None."""
    items = []
    for m in re.finditer(r'"([^"\\]*)"|\'([^\'\\]*)\'|([^,\s][^,]*)', text):
        if m.group(1) is not None:
            items.append(m.group(1))
        elif m.group(2) is not None:
            items.append(m.group(2))
        else:
            items.append(None)
    return items


def scan_python(path):
    if path in scanned:
        return
    scanned.add(path)
    text = open(path).read()
    for m in re.finditer(r'shutil\.which\(\s*"([\w.+-]+)"', text):
        use(m.group(1), f"{rel(path)}:{text.count(chr(10), 0, m.start()) + 1}")
    for m in re.finditer(CALLERS + r"\(\s*\[([^\]]*)\]", text):
        line = text.count("\n", 0, m.start()) + 1
        for cmd in unwrap_list(list_items(m.group(1))):
            use(cmd, f"{rel(path)}:{line}")
    # A shell script built as "\n".join([...lines...]) (networkd.py's mount namespace setup).
    for m in re.finditer(r'"\\n"\.join\(\s*\[(.*?)\]\s*\)', text, re.S):
        lines = [a or b for a, b in re.findall(r'f?"((?:[^"\\]|\\.)*)"|f?\'((?:[^\'\\]|\\.)*)\'', m.group(1))]
        script = "\n".join(re.sub(r"\{[^}]*\}", "${FORMATTED}", l) for l in lines)
        line = text.count("\n", 0, m.start()) + 1
        scan_shell(None, script, f"{rel(path)}:{line} (script)")
    scan_common(path, text)


def scan_rust(path):
    text = open(path).read()
    for m in re.finditer(r'Command::new\(\s*"([^"]+)"\s*\)', text):
        use(m.group(1), f"{rel(path)}:{text.count(chr(10), 0, m.start()) + 1}")
    for m in re.finditer(r'"netns",\s*"exec",\s*[^,\]]+,\s*"([\w.+-]+)"', text):
        use(m.group(1), f"{rel(path)}:{text.count(chr(10), 0, m.start()) + 1}")
    scan_common(path, text)


def scan_common(path, text):
    for m in re.finditer(r'"(/(?:usr/|lib/|bin/|sbin/)[\w./+-]+)"', text):
        p = m.group(1)
        if re.search(r"/(local|notify)\b", p):
            continue  # examples of a user's own hook program
        use(p, f"{rel(path)}:{text.count(chr(10), 0, m.start()) + 1}")
    scan_needs(path, text)


def scan_needs(path, text):
    """`needs-command: NAME...` comments: commands run by something the scan cannot see (a
    build script, a name built at run time)."""
    for m in re.finditer(r"(?:#|//+)\s*needs-command:\s*([\w .+-]+)", text):
        for cmd in m.group(1).split():
            use(cmd, f"{rel(path)}:{text.count(chr(10), 0, m.start()) + 1} (needs-command)")


def scan_tree(sub, suffix, scan):
    for dirpath, dirs, files in os.walk(os.path.join(ROOT, sub)):
        dirs[:] = [d for d in dirs if d not in ("target", "__pycache__", ".git")]
        for f in sorted(files):
            if f.endswith(suffix):
                scan(os.path.join(dirpath, f))


# --- the Makefile ---------------------------------------------------------------------------------

def makefile_targets():
    targets = []
    files = [os.path.join(ROOT, "Makefile")]
    for f in list(files):
        for inc in re.findall(r"^include\s+(\S+)", open(f).read(), re.M):
            files.append(os.path.join(ROOT, inc))
    for f in files:
        for line in re.findall(r"^\.PHONY:(.*)$", open(f).read(), re.M):
            targets += line.split()
    return sorted(set(targets))


def scan_makefile():
    for target in makefile_targets():
        p = subprocess.run(["make", "-n", "--no-print-directory", "-C", ROOT, target],
                           capture_output=True, text=True, env=dict(os.environ, MAKEFLAGS=""))
        if p.returncode != 0:
            sys.exit(f"check-tools: make -n {target} failed: {p.stderr.strip()}")
        scan_shell(None, p.stdout, f"make {target}")
        # Scripts it runs: resolve them from the repository root, where make runs them.
        calls, _ = shell_calls(p.stdout, f"make {target}")
        for argv, _ in calls:
            cmd, args = command_of(argv)
            if cmd:
                for candidate in [cmd] + args[:1]:
                    follow(candidate, ROOT)
    use("make", "Makefile")


# --- resolving -------------------------------------------------------------------------------------

def workspace_binaries():
    names = {"gateway-agent", "gwlab", "gateway-agent-gen"}
    for toml in ("Cargo.toml", "lab/Cargo.toml", "packaging/gen/Cargo.toml"):
        p = os.path.join(ROOT, toml)
        if os.path.isfile(p):
            names |= set(re.findall(r'^name\s*=\s*"([^"]+)"', open(p).read(), re.M))
    return names


def resolve(cmd, built):
    """Where `cmd` is, or None; 'builtin' / 'built here' for what needs no install."""
    if cmd in BUILTINS:
        return "builtin"
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(CACHE, "target"))
    if os.path.basename(cmd) in built or cmd.startswith(target + "/") or cmd.startswith("${CARGO_TARGET_DIR}"):
        return "built here"
    if cmd.startswith("$") and not re.match(r"^\$\{\w+\}/bin/", cmd):
        return "dynamic"
    if "/" in cmd:
        m = re.match(r"^\$\{\w+\}/bin/([\w.+-]+)$", cmd)
        if m:  # a venv's tool: $VENV/bin/cfn-lint
            for v in VENVS:
                if os.access(os.path.join(v, m.group(1)), os.X_OK):
                    return os.path.join(v, m.group(1))
            return None
        path = cmd if os.path.isabs(cmd) else os.path.join(ROOT, cmd)
        return path if os.path.exists(path) else None
    path = os.environ.get("PATH", "") + os.pathsep + os.path.expanduser("~/.cargo/bin")
    found = shutil.which(cmd, path=path)
    if found:
        return found
    for v in VENVS:
        if os.access(os.path.join(v, cmd), os.X_OK):
            return os.path.join(v, cmd)
    return None


def main():
    if not shutil.which("shfmt"):
        sys.exit("check-tools: shfmt is not installed (it parses the scripts); run scripts/setup.sh")
    scan_makefile()
    # The lab's scripts (the failover bench runs nat_monitor.sh). Scripts that run elsewhere
    # (ami/scripts on the image builder, the package's maintainer scripts on the installed
    # system) are reached only through what runs them here, which they are not.
    for sub in ("scripts", "lab/scripts"):
        for f in sorted(os.listdir(os.path.join(ROOT, sub))):
            if f.endswith(".sh"):
                scan_shell(os.path.join(ROOT, sub, f))
    scan_tree("lab/py", ".py", scan_python)
    for sub in ("lab/src", "tests", "src"):
        scan_tree(sub, ".rs", scan_rust)
    uses.pop(None, None)
    built = workspace_binaries()
    listing = "--list" in sys.argv[1:]
    missing, dynamic = [], []
    for cmd in sorted(uses):
        places = sorted(p for p in uses[cmd] if p)
        shown = ", ".join(places[:3]) + (f" (+{len(places) - 3})" if len(places) > 3 else "")
        if listing:
            print(f"{cmd:<28} {shown}")
            continue
        where = resolve(cmd, built)
        if where is None:
            missing.append(f"{cmd}  (used by {shown})")
        elif where == "dynamic":
            dynamic.append(cmd)
    if listing:
        return
    checked = len(uses) - len(dynamic)
    if missing:
        print("check-tools: not on this machine: " + str(len(missing)), file=sys.stderr)
        for m in missing:
            print(f"  {m}", file=sys.stderr)
        print("check-tools: scripts/setup.sh must install these (apt, the venvs, cargo install)", file=sys.stderr)
        sys.exit(1)
    print(f"check-tools: all {checked} commands that the Makefile, its scripts, the lab and the tests "
          f"run are here ({len(dynamic)} chosen at run time not checked: {', '.join(dynamic) or 'none'})")


if __name__ == "__main__":
    main()
