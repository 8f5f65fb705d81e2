#!/usr/bin/env python3
"""Checks packaging/iam-policy.json against AWS's published Service Authorization Reference,
offline, with two independent tools (both ship a copy of the reference; no network is used):

  * parliament: every action, resource ARN and condition key must be documented for the
    actions of its statement, and no finding of any severity is accepted;
  * policy_sentry: the same questions asked of its own database, action by action, so a gap
    in one tool's checks does not pass silently.

check-iam.py checks the policy against the code (which actions, which tag keys); this checks
it against AWS (that each condition can apply at all: a key AWS does not evaluate for an
action makes a StringEquals deny every call, or an IfExists/ForAllValues allow every call).

Usage: packaging/check-iam-reference.py [POLICY]   (run with the venv scripts/setup.sh makes)
Exit status: 0 clean, 1 on findings (each printed with its fix), 2 when a tool is missing.
"""

import json
import re
import sys
from pathlib import Path

try:
    from parliament import analyze_policy_string
    from policy_sentry.querying.actions import get_action_data
except ImportError as e:
    print(f"check-iam-reference: {e}; run scripts/setup.sh (it installs parliament and "
          "policy_sentry into ~/.cache/gateway-agent/iam-venv) and use that venv's python",
          file=sys.stderr)
    sys.exit(2)

OPERATOR_PREFIX = re.compile(r"^(ForAllValues|ForAnyValue):")


def arn_matches(arn: str, pattern: str) -> bool:
    """Whether the policy's resource `arn` (with * wildcards) can name a resource of the
    reference's `pattern` (with ${Placeholders}), field by field."""
    have, want = arn.split(":", 5), pattern.split(":", 5)
    if len(have) != len(want):
        return False
    for h, w in zip(have, want):
        if h == "*" or w.startswith("${"):
            continue
        w_re = "^" + re.sub(r"\\\$\\\{[^}]*\\\}", "[^/]+", re.escape(w)) + "$"
        if not re.match(w_re, h.replace("*", "x")):
            return False
    return True


def key_documented(key: str, documented: list[str]) -> bool:
    if key.lower().startswith("aws:") and not key.lower().startswith(("aws:resourcetag/",
                                                                       "aws:requesttag/",
                                                                       "aws:tagkeys")):
        return True  # global condition keys apply to every action
    for d in documented:
        pattern = "^" + re.sub(r"\\\$\\\{[^}]*\\\}", ".+", re.escape(d)) + "$"
        if re.match(pattern, key, re.IGNORECASE):
            return True
    return False


def sentry_findings(policy: dict) -> list[str]:
    out = []
    statements = policy["Statement"]
    for n, st in enumerate(statements):
        sid = st.get("Sid", f"#{n}")
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        keys = [k for cond in st.get("Condition", {}).values() for k in cond]
        for action in actions:
            service, name = action.split(":", 1)
            rows = get_action_data(service, name).get(service, [])
            if not rows:
                out.append(f"{sid}: {action} is not in the authorization reference; check its spelling")
                continue
            matched = [r for r in rows
                       if any(res == "*" or arn_matches(res, r["resource_arn_format"])
                              for res in resources)]
            if not matched:
                kinds = [r["resource_arn_format"] for r in rows]
                shown = ", ".join(kinds[:4]) + (f" and {len(kinds) - 4} more" if len(kinds) > 4 else "")
                out.append(f"{sid}: {action}: none of {resources} is a resource type it takes "
                           f"({shown}); fix the Resource")
                continue
            for key in keys:
                documented = [k for r in matched for k in r["condition_keys"]]
                if not key_documented(key, documented):
                    out.append(f"{sid}: {action}: condition key {key} is not evaluated for "
                               f"{[r['resource_arn_format'] for r in matched]}; a condition AWS "
                               "never evaluates either denies every call or allows every call: "
                               "remove it or use a documented key")
    return out


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "packaging" / "iam-policy.json"
    text = path.read_text(encoding="utf-8")
    problems = []
    findings = analyze_policy_string(text, include_community_auditors=True).findings
    for f in findings:
        problems.append(f"parliament {f.severity} {f.issue}: {f.title} {f.detail} {f.location}; "
                        "fix the statement (parliament's README explains each issue)")
    problems += [f"policy_sentry: {p}" for p in sentry_findings(json.loads(text))]
    if problems:
        for p in problems:
            print(f"check-iam-reference: {path.name}: {p}", file=sys.stderr)
        print(f"check-iam-reference: FAILED: {len(problems)} finding(s)", file=sys.stderr)
        return 1
    n = len(json.loads(text)["Statement"])
    print(f"check-iam-reference: OK: {path.name}, {n} statements: every action, resource type "
          "and condition key is in AWS's authorization reference (parliament, policy_sentry)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
