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

Beyond the action list, the conditions the agent's safety rests on (issue 17), with the tag
keys read from the source too:
  * ec2:CreateTags is allowed for exactly the keys the agent writes (the lease tag and the
    witness tags of src/decide/lease.rs), on route tables in the role's own VPC;
  * the deny that protects the group and zone tags (src/config/group.rs) compares keys without
    regard to case;
  * ec2:ModifyNetworkInterfaceAttribute stands alone, limited to turning the source/dest check
    off (ec2:Attribute, ec2:Attribute/SourceDestCheck);
  * route writes carry an ec2:Vpc condition;
  * autoscaling:SetInstanceHealth stands alone in a statement whose Sid starts with "Optional"
    (drop it when drain.set_unhealthy is off).
packaging/check-iam-reference.py checks the same file against AWS's authorization reference.

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


def const_str(path: Path, name: str) -> str | None:
    m = re.search(rf'const\s+{name}\s*:\s*&(?:\'static\s+)?str\s*=\s*"([^"]+)"', path.read_text(encoding="utf-8"))
    return m.group(1) if m else None


def listed(v) -> list:
    return v if isinstance(v, list) else [v]


def shape_problems(root: Path, policy: dict) -> list[str]:
    """The conditions of the module docstring; each problem names the statement and the fix."""
    out = []
    lease_rs, group_rs = root / "src/decide/lease.rs", root / "src/config/group.rs"
    lease = const_str(lease_rs, "LEASE_TAG")
    m = re.search(r'format!\("(gateway-agent:witness:)\{', lease_rs.read_text(encoding="utf-8"))
    group, zone = const_str(group_rs, "GROUP_TAG"), const_str(group_rs, "ZONE_TAG")
    if not (lease and m and group and zone):
        return [f"cannot find LEASE_TAG, witness_tag in {lease_rs} or GROUP_TAG, ZONE_TAG in "
                f"{group_rs}: update the patterns in {Path(__file__).name}"]
    written = {lease, m.group(1) + "*"}
    statements = listed(policy.get("Statement", []))
    by_action: dict[str, list[dict]] = {}
    for st in statements:
        for a in listed(st.get("Action", [])):
            by_action.setdefault(a, []).append(st)

    def sid(st):
        return st.get("Sid", "?")

    for st in by_action.get("ec2:CreateTags", []):
        cond = st.get("Condition", {})
        if st.get("Effect") == "Allow":
            keys = set(listed(cond.get("ForAllValues:StringLike", {}).get("aws:TagKeys", []))
                       + listed(cond.get("ForAllValues:StringEquals", {}).get("aws:TagKeys", [])))
            if keys != written:
                out.append(f"statement {sid(st)}: ec2:CreateTags allows tag keys {sorted(keys)}; the "
                           f"agent writes exactly {sorted(written)}: list those in "
                           "ForAllValues:StringLike aws:TagKeys")
            if "ec2:Vpc" not in cond.get("ArnLike", {}) and "ec2:Vpc" not in cond.get("ArnEquals", {}):
                out.append(f"statement {sid(st)}: ec2:CreateTags without an ec2:Vpc condition; add "
                           "ArnLike ec2:Vpc = arn:aws:ec2:*:*:vpc/${aws:PrincipalTag/gateway-agent:vpc}")
        else:
            ops = [op for op, c in cond.items() if "aws:TagKeys" in c]
            keys = {k for op in ops for k in listed(cond[op]["aws:TagKeys"])}
            if not {group, zone} <= keys:
                out.append(f"statement {sid(st)}: the deny protects {sorted(keys)}, not "
                           f"{group} and {zone}: list both")
            if not all(op.endswith("IgnoreCase") for op in ops):
                out.append(f"statement {sid(st)}: the deny's operators {ops} are case-sensitive; "
                           "use ForAnyValue:StringEqualsIgnoreCase")
    if not any(st.get("Effect") == "Deny" for st in by_action.get("ec2:CreateTags", [])):
        out.append(f"no statement denies ec2:CreateTags of {group} and {zone}: add it back")
    for st in by_action.get("ec2:ModifyNetworkInterfaceAttribute", []):
        cond = st.get("Condition", {})
        attrs = cond.get("ForAllValues:StringEquals", {}).get("ec2:Attribute")
        value = cond.get("StringEqualsIfExists", {}).get("ec2:Attribute/SourceDestCheck")
        if listed(st.get("Action")) != ["ec2:ModifyNetworkInterfaceAttribute"] or \
                listed(attrs or []) != ["SourceDestCheck"] or value != "false":
            out.append(f"statement {sid(st)}: ec2:ModifyNetworkInterfaceAttribute must stand alone, "
                       "with ForAllValues:StringEquals ec2:Attribute = SourceDestCheck and "
                       "StringEqualsIfExists ec2:Attribute/SourceDestCheck = false (the agent only "
                       "turns the check off)")
    for action in ("ec2:CreateRoute", "ec2:DeleteRoute", "ec2:ReplaceRoute"):
        for st in by_action.get(action, []):
            cond = st.get("Condition", {})
            if "ec2:Vpc" not in cond.get("ArnLike", {}) and "ec2:Vpc" not in cond.get("ArnEquals", {}):
                out.append(f"statement {sid(st)}: {action} without an ec2:Vpc condition; add ArnLike "
                           "ec2:Vpc = arn:aws:ec2:*:*:vpc/${aws:PrincipalTag/gateway-agent:vpc}")
    for st in by_action.get("autoscaling:SetInstanceHealth", []):
        if listed(st.get("Action")) != ["autoscaling:SetInstanceHealth"] or \
                not sid(st).startswith("Optional"):
            out.append(f"statement {sid(st)}: autoscaling:SetInstanceHealth must stand alone in a "
                       "statement whose Sid starts with Optional (it is needed only with "
                       "drain.set_unhealthy = true)")
    return out


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
    problems += shape_problems(root, json.loads(policy_path.read_text(encoding="utf-8")))
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
