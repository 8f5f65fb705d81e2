#!/usr/bin/env python3
"""Checks that packaging/iam-policy.json allows exactly the AWS API actions the agent calls.

Reads the source every time (no list of actions lives here), so a call added to the code without
its permission, or a permission left behind after a call is removed, fails CI at once instead of
on a gateway at 3 a.m. (AccessDenied) or in a security review (excess privilege).

Where the actions come from, all under src/ outside `#[cfg(test)]` items and `//` comments:
  * `Call::new("ec2" | "autoscaling", "Operation", ...)`;
  * `call("Operation", ...)` in a file that declares `const SERVICE: &str = "ec2"` (or
    "autoscaling"): the per-adapter shorthand of src/cloud/ec2.rs and src/cloud/autoscaling.rs;
  * as a cross-check, every SDK request built there (`.client.describe_route_tables()`) must
    also be wrapped in one of the above, so an unwrapped call cannot slip past this test.

Usage: packaging/check-iam.py [REPO_ROOT]   (default: the repository holding this script)
Exit status: 0 when policy == code, 1 on a mismatch (each one printed with its fix), 2 on bad input.
"""

import json
import re
import sys
from pathlib import Path

SERVICES = {"ec2": "ec2", "autoscaling": "autoscaling"}  # code's service name -> IAM prefix

CALL_NEW = re.compile(r'Call::new\(\s*"([a-z0-9-]+)"\s*,\s*"([A-Za-z0-9]+)"')
SHORT_CALL = re.compile(r'(?<![\w:.])call\(\s*"([A-Za-z0-9]+)"')
SERVICE_CONST = re.compile(r'const\s+SERVICE\s*:\s*&(?:\'static\s+)?str\s*=\s*"([a-z0-9-]+)"')
SDK_REQUEST = re.compile(r'\.client\s*\.\s*([a-z][a-z0-9_]*)\(\s*\)')


def strip_tests_and_comments(text: str) -> str:
    """Drops `//` comment lines and every item after `#[cfg(test)]` (brace-matched): test
    fixtures name calls the agent never makes (e.g. `Call::new("ec2", "ReplaceRoute", ...)` in a
    Display test)."""
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("//")]
    text = "\n".join(lines)
    out, i = [], 0
    while True:
        j = text.find("#[cfg(test)]", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = j + len("#[cfg(test)]")
        brace, semi = text.find("{", k), text.find(";", k)
        if semi >= 0 and (brace < 0 or semi < brace):  # `#[cfg(test)] use x;` or `mod tests;`
            i = semi + 1
            continue
        if brace < 0:
            break
        depth, p = 0, brace
        while p < len(text):
            if text[p] == "{":
                depth += 1
            elif text[p] == "}":
                depth -= 1
                if depth == 0:
                    break
            p += 1
        i = p + 1
    return "".join(out)


def camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def code_actions(src: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Returns {iam action: [where]} and a list of problems found in the code itself."""
    actions: dict[str, list[str]] = {}
    problems = []
    for path in sorted(src.rglob("*.rs")):
        text = strip_tests_and_comments(path.read_text(encoding="utf-8"))
        rel = path.relative_to(src.parent)
        wrapped = set()
        for service, op in CALL_NEW.findall(text):
            if service not in SERVICES:
                problems.append(f"{rel}: Call::new(\"{service}\", \"{op}\"): unknown service "
                                f"\"{service}\"; add its IAM prefix to SERVICES in {Path(__file__).name}")
                continue
            actions.setdefault(f"{SERVICES[service]}:{op}", []).append(str(rel))
            wrapped.add(op)
        const = SERVICE_CONST.search(text)
        shorts = SHORT_CALL.findall(text)
        if shorts and not const:
            problems.append(f"{rel}: call(\"{shorts[0]}\", ...) without `const SERVICE: &str = \"...\"` "
                            "in the file: the service of the call is unknown; declare SERVICE")
        if const:
            service = const.group(1)
            if service not in SERVICES:
                problems.append(f"{rel}: SERVICE = \"{service}\": unknown service; add its IAM "
                                f"prefix to SERVICES in {Path(__file__).name}")
            else:
                for op in shorts:
                    actions.setdefault(f"{SERVICES[service]}:{op}", []).append(str(rel))
                    wrapped.add(op)
        for method in SDK_REQUEST.findall(text):
            if camel(method) not in wrapped:
                problems.append(f"{rel}: SDK request .{method}() is not wrapped in call(\"{camel(method)}\", ...) "
                                f"or Call::new(...): wrap it, so its errors name the call and this check sees it")
    return actions, problems


def policy_actions(policy_path: Path) -> tuple[set[str], set[str], list[str]]:
    try:
        policy = json.loads(policy_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        print(f"check-iam: cannot read {policy_path}: {e}; fix the file (it must be valid JSON)",
              file=sys.stderr)
        sys.exit(2)
    allowed, denied, problems = set(), set(), []
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    for n, st in enumerate(statements):
        sid = st.get("Sid", f"#{n}")
        if "NotAction" in st:
            problems.append(f"{policy_path.name} statement {sid}: NotAction grants everything not "
                            "listed; list the actions explicitly")
        acts = st.get("Action", [])
        acts = [acts] if isinstance(acts, str) else acts
        for a in acts:
            if "*" in a or "?" in a:
                problems.append(f"{policy_path.name} statement {sid}: wildcard action \"{a}\" grants "
                                "calls the agent never makes; list each action")
        (allowed if st.get("Effect") == "Allow" else denied).update(acts)
    return allowed, denied, problems


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    src, policy_path = root / "src", root / "packaging" / "iam-policy.json"
    if not src.is_dir():
        print(f"check-iam: {src} is not a directory; pass the repository root as the argument",
              file=sys.stderr)
        return 2
    actions, problems = code_actions(src)
    allowed, denied, policy_problems = policy_actions(policy_path)
    problems += policy_problems
    if not actions:
        problems.append(f"no AWS call found under {src}: the patterns in {Path(__file__).name} no "
                        "longer match the code; update them (an empty policy check proves nothing)")
    code = set(actions)
    for a in sorted(code - allowed):
        where = ", ".join(sorted(set(actions[a])))
        problems.append(f"missing from the policy: {a} (called in {where}); add it to the matching "
                        f"statement of {policy_path.name} (Describe*/read-only: the \"*\" statement)")
    for a in sorted(allowed - code):
        problems.append(f"not called by the code: {a}; remove it from {policy_path.name} "
                        "(least privilege)")
    for a in sorted(denied - allowed):
        problems.append(f"Deny of {a}, which no statement allows: remove the dead Deny")
    if problems:
        for p in problems:
            print(f"check-iam: {p}", file=sys.stderr)
        print(f"check-iam: FAILED: {len(problems)} problem(s); code calls {len(code)} actions, "
              f"policy allows {len(allowed)}", file=sys.stderr)
        return 1
    print(f"check-iam: OK: {policy_path.name} allows exactly the {len(code)} actions the code calls:")
    for a in sorted(code):
        print(f"  {a}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
